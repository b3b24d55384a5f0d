//! The dataset as the UCI site distributes it: an `.xlsx` workbook (Online
//! Retail: one sheet; Online Retail II: one sheet per year), possibly inside
//! a `.zip`. [`workbook_to_csv`] converts it to the CSV the pipeline reads:
//! the header of the first sheet, then every sheet's rows in order, dates as
//! `YYYY-MM-DD HH:MM:SS`, whole numbers without a decimal point.
//! [`csv_to_workbook`] is the inverse (the generator's `.xlsx` output, and
//! the tests' way to build a workbook with real Excel types).

use std::io::{Cursor, Read};
use std::path::Path;

use calamine::{Data, Reader, Xlsx};

use crate::{EtlError, Result};

/// What a conversion read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkbookSummary {
    /// Sheets read, in order, with their data rows.
    pub sheets: Vec<(String, usize)>,
}

impl WorkbookSummary {
    /// Data rows of all sheets.
    pub fn rows(&self) -> usize {
        self.sheets.iter().map(|(_, n)| n).sum()
    }
}

fn bad(file: &str, message: impl Into<String>) -> EtlError {
    EtlError::Workbook {
        file: file.to_string(),
        message: message.into(),
    }
}

/// Whether `path` names a workbook or a zip this module reads.
pub fn is_workbook(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("xlsx" | "zip"))
}

/// The `.xlsx` bytes of `path`: the file itself, or the one workbook inside
/// a `.zip` (at most `max_bytes` once decompressed).
fn workbook_bytes(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let file = path.display().to_string();
    let io = |source| EtlError::Io {
        path: file.clone(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    let is_zip = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
    if !is_zip {
        return Ok(bytes);
    }
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| bad(&file, format!("not a zip archive: {e}")))?;
    let names: Vec<String> = archive.file_names().map(str::to_string).collect();
    let workbooks: Vec<&String> = names
        .iter()
        .filter(|n| n.to_ascii_lowercase().ends_with(".xlsx") && !n.starts_with("__MACOSX"))
        .collect();
    let name = match workbooks.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(bad(
                &file,
                format!("no .xlsx inside (entries: {})", names.join(", ")),
            ));
        }
        many => {
            return Err(bad(
                &file,
                format!(
                    "more than one .xlsx inside ({}); unzip it and pass one",
                    many.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    };
    let entry = archive
        .by_name(&name)
        .map_err(|e| bad(&file, format!("{name}: {e}")))?;
    let mut out = Vec::new();
    entry
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(io)?;
    if out.len() as u64 > max_bytes {
        return Err(EtlError::TooLarge {
            file: format!("{file}:{name}"),
            max_bytes,
        });
    }
    Ok(out)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Days from Excel's epoch (1899-12-30, in the 1900 date system) to 1970-01-01.
const EXCEL_UNIX_DAYS: f64 = 25_569.0;

fn cell(file: &str, sheet: &str, row: usize, col: usize, value: &Data) -> Result<String> {
    Ok(match value {
        Data::Empty => String::new(),
        Data::String(s) => s.clone(),
        Data::Int(i) => i.to_string(),
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        Data::Float(f) => format!("{f}"),
        Data::Bool(b) => b.to_string(),
        Data::DateTime(dt) => {
            // Whole seconds, as the exports record them.
            let secs = ((dt.as_f64() - EXCEL_UNIX_DAYS) * 86_400.0).round() as i64;
            crate::format_micros(secs * 1_000_000)
        }
        Data::DateTimeIso(s) | Data::DurationIso(s) => s.clone(),
        Data::Error(e) => {
            return Err(bad(
                file,
                format!(
                    "sheet `{sheet}`, row {}, column {}: cell error {e:?}",
                    row + 1,
                    col + 1
                ),
            ));
        }
    })
}

fn normalised(header: &[String]) -> Vec<String> {
    header
        .iter()
        .map(|h| {
            h.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_lowercase()
        })
        .collect()
}

/// Converts a workbook (`.xlsx`, or a `.zip` holding one) to CSV text: every
/// sheet with data, in order, under the first sheet's header. Sheets whose
/// header differs are an error naming them; empty sheets are skipped.
pub fn workbook_to_csv(path: &Path, max_bytes: u64) -> Result<(Vec<u8>, WorkbookSummary)> {
    let file = path.display().to_string();
    let bytes = workbook_bytes(path, max_bytes)?;
    let mut book: Xlsx<_> = Xlsx::new(Cursor::new(bytes))
        .map_err(|e| bad(&file, format!("not an .xlsx workbook: {e}")))?;
    let mut out: Vec<u8> = Vec::new();
    let mut header: Option<(String, Vec<String>)> = None;
    let mut summary = WorkbookSummary { sheets: Vec::new() };
    for sheet in book.sheet_names() {
        let range = book
            .worksheet_range(&sheet)
            .map_err(|e| bad(&file, format!("sheet `{sheet}`: {e}")))?;
        let mut rows = range.rows().enumerate();
        let Some((_, first)) = rows.next() else {
            continue;
        };
        let this: Vec<String> = first
            .iter()
            .enumerate()
            .map(|(c, v)| cell(&file, &sheet, 0, c, v))
            .collect::<Result<_>>()?;
        match &header {
            None => {
                let line: Vec<String> = this.iter().map(|h| csv_field(h)).collect();
                out.extend_from_slice(line.join(",").as_bytes());
                out.push(b'\n');
                header = Some((sheet.clone(), this.clone()));
            }
            Some((first_sheet, h)) if normalised(h) != normalised(&this) => {
                return Err(bad(
                    &file,
                    format!(
                        "sheet `{sheet}` has the header [{}], sheet `{first_sheet}` has [{}]",
                        this.join(", "),
                        h.join(", ")
                    ),
                ));
            }
            Some(_) => {}
        }
        let mut n = 0;
        for (r, row) in rows {
            if row.iter().all(|v| matches!(v, Data::Empty)) {
                continue;
            }
            let fields: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, v)| cell(&file, &sheet, r, c, v).map(|s| csv_field(&s)))
                .collect::<Result<_>>()?;
            out.extend_from_slice(fields.join(",").as_bytes());
            out.push(b'\n');
            n += 1;
            if out.len() as u64 > max_bytes {
                return Err(EtlError::TooLarge {
                    file: file.clone(),
                    max_bytes,
                });
            }
        }
        summary.sheets.push((sheet.clone(), n));
    }
    if header.is_none() {
        return Err(EtlError::Empty { file });
    }
    Ok((out, summary))
}

/// Writes CSV text as an `.xlsx` workbook with Excel's own types, its rows
/// split evenly over `sheets` sheets named like Online Retail II's: numbers
/// as numbers, `InvoiceDate` as a date-time with a date format, text as text.
pub fn csv_to_workbook(csv: &[u8], path: &Path, sheets: usize) -> Result<()> {
    use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
    let file = path.display().to_string();
    let xl = |e: rust_xlsxwriter::XlsxError| bad(&file, e.to_string());
    let mut reader = csv::Reader::from_reader(csv);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| bad(&file, e.to_string()))?
        .iter()
        .map(String::from)
        .collect();
    let records: Vec<csv::StringRecord> = reader
        .records()
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(&file, e.to_string()))?;
    let dates = Format::new().set_num_format("yyyy-mm-dd hh:mm:ss");
    let mut book = Workbook::new();
    let per_sheet = records.len().div_ceil(sheets.max(1)).max(1);
    for (i, part) in records.chunks(per_sheet).enumerate() {
        let sheet = book.add_worksheet();
        sheet.set_name(format!("Year {}", 2009 + i)).map_err(xl)?;
        for (c, h) in header.iter().enumerate() {
            sheet.write_string(0, c as u16, h).map_err(xl)?;
        }
        for (r, record) in part.iter().enumerate() {
            let row = r as u32 + 1;
            for (c, value) in record.iter().enumerate() {
                let col = c as u16;
                let is_date = header
                    .get(c)
                    .is_some_and(|h| h.eq_ignore_ascii_case("InvoiceDate"));
                if value.is_empty() {
                    continue;
                } else if is_date {
                    let dt = ExcelDateTime::parse_from_str(value).map_err(xl)?;
                    sheet
                        .write_datetime_with_format(row, col, &dt, &dates)
                        .map_err(xl)?;
                } else if let Ok(n) = value.parse::<f64>() {
                    // Numeric-looking cells are numbers in the UCI workbook
                    // (stock code 71053, customer 17850).
                    sheet.write_number(row, col, n).map_err(xl)?;
                } else {
                    sheet.write_string(row, col, value).map_err(xl)?;
                }
            }
        }
    }
    book.save(path).map_err(xl)
}
