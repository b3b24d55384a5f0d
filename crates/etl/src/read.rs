//! Reading a raw export: decompression, CSV parsing, header normalisation.

use std::io::{Read, Seek};
use std::path::Path;

use crate::{EtlError, Result};

mod blocks;
mod records;
mod split;

use blocks::parse_csv;

/// The fields of a transactions export, in canonical snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Column {
    /// `InvoiceNo` / `Invoice`.
    InvoiceNo,
    /// `StockCode`.
    StockCode,
    /// `Description` (optional).
    Description,
    /// `Quantity`.
    Quantity,
    /// `InvoiceDate`.
    InvoiceDate,
    /// `UnitPrice` / `Price`.
    UnitPrice,
    /// `CustomerID` / `Customer ID` (optional).
    CustomerId,
    /// `Country` (optional).
    Country,
}

impl Column {
    /// All fields.
    pub const ALL: [Column; 8] = [
        Column::InvoiceNo,
        Column::StockCode,
        Column::Description,
        Column::Quantity,
        Column::InvoiceDate,
        Column::UnitPrice,
        Column::CustomerId,
        Column::Country,
    ];

    /// The canonical snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Column::InvoiceNo => "invoice_no",
            Column::StockCode => "stock_code",
            Column::Description => "description",
            Column::Quantity => "quantity",
            Column::InvoiceDate => "invoice_date",
            Column::UnitPrice => "unit_price",
            Column::CustomerId => "customer_id",
            Column::Country => "country",
        }
    }

    /// Header spellings accepted, after lower-casing and removing everything
    /// but letters and digits.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Column::InvoiceNo => &["invoiceno", "invoice", "invoicenumber", "invoiceid"],
            Column::StockCode => &["stockcode", "sku", "productcode"],
            Column::Description => &["description", "productdescription"],
            Column::Quantity => &["quantity", "qty"],
            Column::InvoiceDate => &["invoicedate", "date", "invoicedatetime"],
            Column::UnitPrice => &["unitprice", "price"],
            Column::CustomerId => &["customerid", "customer", "customerno"],
            Column::Country => &["country"],
        }
    }

    /// Whether the pipeline cannot work without this column.
    pub fn required(self) -> bool {
        !matches!(
            self,
            Column::Description | Column::CustomerId | Column::Country
        )
    }

    fn from_header(header: &str) -> Option<Column> {
        let norm: String = header
            .trim_start_matches('\u{feff}')
            .chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect();
        Column::ALL
            .into_iter()
            .find(|c| c.aliases().contains(&norm.as_str()))
    }
}

/// One column of a parsed export, as text, interned: each distinct value is
/// stored once and rows hold its index. Exports repeat values heavily (541,909
/// UCI rows have ~26,000 invoices, ~4,000 stock codes, ~23,000 timestamps), so
/// a whole export fits in a fraction of its text size, and work per distinct
/// value (parsing a date, matching a pattern) is done once.
#[derive(Debug, Clone, Default)]
pub struct TextColumn {
    values: Vec<Box<str>>,
    ids: Vec<u32>,
}

impl TextColumn {
    /// The value of row `row`.
    pub fn get(&self, row: usize) -> &str {
        &self.values[self.ids[row] as usize]
    }

    /// The values, row by row.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.ids.iter().map(|&i| &*self.values[i as usize])
    }

    /// The distinct values.
    pub fn distinct(&self) -> &[Box<str>] {
        &self.values
    }

    /// Each row's index into [`TextColumn::distinct`].
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Builds a [`TextColumn`]. Fields are looked up by their bytes, so only a
/// value seen for the first time is checked to be UTF-8; fields of up to 15
/// bytes (codes, numbers, most countries) are keyed by one integer, with no
/// string comparison.
#[derive(Default)]
struct Interner {
    column: TextColumn,
    /// Values numbered before the first of `column.values` (a parser
    /// thread hands its new values on after each block and keeps only
    /// their keys).
    handed_on: usize,
    short: crate::hash::HashMap<u128, u32>,
    long: crate::hash::HashMap<Box<[u8]>, u32>,
    /// The last field pushed and its id: the lines of an invoice repeat
    /// its number, date, customer and country, so most fields of those
    /// columns are the one above them and need no lookup.
    last: Option<(Option<u128>, u32)>,
    /// The bytes of the last field pushed, where it was too long for a key.
    last_long: Vec<u8>,
}

/// A field of up to 15 bytes as one integer: the bytes (little-endian),
/// then the length in the top byte.
///
/// Built from two overlapping loads and shifts, not by copying the field
/// into a zeroed array: the copy is a variable-length `memcpy` whose small
/// stores the 16-byte load after it cannot forward from, and that stall
/// was most of the reader's interning time.
fn short_key(bytes: &[u8]) -> Option<u128> {
    let n = bytes.len();
    let value = match n {
        0 => 0,
        1..=3 => {
            // First, middle and last byte: for n <= 3 they are all the bytes.
            let (first, mid, last) = (bytes[0], bytes[n / 2], bytes[n - 1]);
            u128::from(first) | u128::from(mid) << (8 * (n / 2)) | u128::from(last) << (8 * (n - 1))
        }
        4..=7 => {
            let lo = bytes
                .first_chunk::<4>()
                .map_or(0, |b| u32::from_le_bytes(*b));
            let hi = bytes
                .last_chunk::<4>()
                .map_or(0, |b| u32::from_le_bytes(*b));
            // The two loads overlap where n < 8; the shared bytes are equal.
            u128::from(lo) | u128::from(hi) << (8 * (n - 4))
        }
        8..=15 => {
            let lo = bytes
                .first_chunk::<8>()
                .map_or(0, |b| u64::from_le_bytes(*b));
            let hi = bytes
                .last_chunk::<8>()
                .map_or(0, |b| u64::from_le_bytes(*b));
            u128::from(lo) | u128::from(hi) << (8 * (n - 8))
        }
        _ => return None,
    };
    Some(value | (n as u128) << 120)
}

/// Why a value could not be interned.
#[derive(Debug)]
enum PushError {
    Utf8(std::str::Utf8Error),
    TooMany,
}

impl Interner {
    /// Appends a field.
    fn push(&mut self, bytes: &[u8]) -> std::result::Result<(), PushError> {
        let key = short_key(bytes);
        let id = match self.last {
            Some((last, id)) if last == key && (key.is_some() || self.last_long == bytes) => id,
            _ => {
                let id = match self.find(key, bytes) {
                    Some(id) => id,
                    None => {
                        let value = std::str::from_utf8(bytes).map_err(PushError::Utf8)?;
                        self.insert(key, value.into())?
                    }
                };
                if key.is_none() {
                    self.last_long.clear();
                    self.last_long.extend_from_slice(bytes);
                }
                self.last = Some((key, id));
                id
            }
        };
        self.column.ids.push(id);
        Ok(())
    }

    /// The id of `value`, numbering it if it is new (no row is appended).
    fn intern(&mut self, value: Box<str>) -> std::result::Result<u32, PushError> {
        let key = short_key(value.as_bytes());
        match self.find(key, value.as_bytes()) {
            Some(id) => Ok(id),
            None => self.insert(key, value),
        }
    }

    /// The id of a value seen before (`key` is its [`short_key`]).
    fn find(&self, key: Option<u128>, bytes: &[u8]) -> Option<u32> {
        match key {
            Some(k) => self.short.get(&k),
            None => self.long.get(bytes),
        }
        .copied()
    }

    /// Numbers a value not seen before.
    fn insert(
        &mut self,
        key: Option<u128>,
        value: Box<str>,
    ) -> std::result::Result<u32, PushError> {
        let id = u32::try_from(self.handed_on + self.column.values.len())
            .map_err(|_| PushError::TooMany)?;
        match key {
            Some(k) => self.short.insert(k, id),
            None => self.long.insert(value.as_bytes().into(), id),
        };
        self.column.values.push(value);
        Ok(id)
    }
}

/// A parsed export: every field still text (interned), columns mapped to
/// [`Column`]s, and the line each row starts on (for error messages).
#[derive(Debug, Clone)]
pub struct RawTable {
    /// The file name used in error messages.
    pub file: String,
    /// (field, header as written, its column).
    columns: Vec<(Column, String, TextColumn)>,
    /// 1-based line on which each data row starts.
    lines: Vec<u32>,
}

impl RawTable {
    /// Number of data rows.
    pub fn height(&self) -> usize {
        self.lines.len()
    }

    /// The header as written in the file for a field, if present.
    pub fn header(&self, column: Column) -> Option<&str> {
        self.columns
            .iter()
            .find(|(c, _, _)| *c == column)
            .map(|(_, h, _)| h.as_str())
    }

    /// The text values of a field, if the column is present.
    pub fn strings(&self, column: Column) -> Option<&TextColumn> {
        self.columns
            .iter()
            .find(|(c, _, _)| *c == column)
            .map(|(_, _, t)| t)
    }

    /// The 1-based line on which data row `row` (0-based) starts, honouring
    /// quoted fields that contain line breaks.
    pub fn line_of_row(&self, row: usize) -> u64 {
        self.lines.get(row).map_or(0, |&l| u64::from(l))
    }

    /// An [`EtlError::InvalidField`] for data row `row` of `column`.
    pub fn field_error(&self, row: usize, column: Column, value: &str, problem: &str) -> EtlError {
        EtlError::InvalidField {
            file: self.file.clone(),
            line: self.line_of_row(row),
            column: self.header(column).unwrap_or(column.name()).to_string(),
            value: value.chars().take(80).collect(),
            problem: problem.to_string(),
        }
    }
}

/// The default bound on a (decompressed) export: 4 GiB.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;

/// Reads a CSV or gzip-compressed CSV file (detected by content, not name),
/// of at most [`DEFAULT_MAX_DECOMPRESSED_BYTES`] once decompressed.
pub fn read_raw_file(path: &Path) -> Result<RawTable> {
    read_raw_file_limited(path, DEFAULT_MAX_DECOMPRESSED_BYTES)
}

/// [`read_raw_file`] with a bound on the decompressed size: a larger input
/// (a gzip bomb, or the wrong file) is an error as soon as the bound is
/// passed. The file is streamed (decompressed, cut into blocks of whole
/// records and parsed on every core), so memory holds the interned columns
/// and a few blocks, never the whole text.
pub fn read_raw_file_limited(path: &Path, max_bytes: u64) -> Result<RawTable> {
    let file = path.display().to_string();
    let io = |e| EtlError::Io {
        path: file.clone(),
        source: e,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(io)?;
    f.rewind().map_err(io)?;
    let reader = std::io::BufReader::with_capacity(1 << 16, f);
    if magic[..n] == [0x1f, 0x8b] {
        parse_csv(
            flate2::bufread::MultiGzDecoder::new(reader),
            &file,
            max_bytes,
        )
    } else {
        parse_csv(reader, &file, max_bytes)
    }
}

/// The csv crate's reader as reading an export uses it (no header row,
/// records of any width): the header is read with it, and the block cutter
/// and the record splitter are tested against it.
fn csv_reader(bytes: &[u8]) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes)
}

fn too_large(file: &str, max_bytes: u64) -> EtlError {
    EtlError::TooLarge {
        file: file.to_string(),
        max_bytes,
    }
}

/// Parses CSV bytes (gzip is detected by its magic number). `file` names the
/// source in error messages.
pub fn read_raw_bytes(bytes: &[u8], file: &str) -> Result<RawTable> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        parse_csv(
            flate2::read::MultiGzDecoder::new(bytes),
            file,
            DEFAULT_MAX_DECOMPRESSED_BYTES,
        )
    } else {
        parse_csv(bytes, file, DEFAULT_MAX_DECOMPRESSED_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_fields_share_an_id_and_no_two_different_fields_do() {
        let fields: [&[u8]; 9] = [
            b"",
            b"A",
            b"A\0",
            b"85123A",
            b"exactly15bytes!",
            b"exactly16bytes!!",
            b"a description longer than fifteen bytes",
            b"85123A",
            b"exactly16bytes!!",
        ];
        let mut interner = Interner::default();
        for f in fields {
            interner.push(f).unwrap_or_else(|e| panic!("{e:?}"));
        }
        let col = interner.column;
        assert_eq!(col.ids(), [0, 1, 2, 3, 4, 5, 6, 3, 5]);
        let back: Vec<&[u8]> = col.iter().map(str::as_bytes).collect();
        assert_eq!(back, fields);
    }

    #[test]
    fn a_short_key_is_the_bytes_then_the_length() {
        let text = b"0123456789abcdef\x80\xff\x00\x7f";
        for start in 0..4 {
            for n in 0..=16 {
                let bytes = &text[start..start + n];
                let mut expected = [0u8; 16];
                expected[..n.min(15)].copy_from_slice(&bytes[..n.min(15)]);
                expected[15] = n as u8;
                let expected = (n < 16).then(|| u128::from_le_bytes(expected));
                assert_eq!(short_key(bytes), expected, "{bytes:?}");
            }
        }
    }

    #[test]
    fn a_field_that_is_not_utf8_is_an_error_even_after_valid_ones() {
        let mut interner = Interner::default();
        assert!(interner.push(b"caf\xc3\xa9").is_ok());
        assert!(interner.push(b"caf\xe9").is_err());
        assert!(interner.push(b"a long field that ends badly \xff").is_err());
        assert_eq!(interner.column.len(), 1);
    }
}
