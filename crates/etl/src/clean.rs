//! Field parsing, validation and cleaning.

use std::collections::BTreeMap;

use crate::hash::{HashMap, HashSet};

use chrono::NaiveDateTime;
use polars::prelude::{IdxCa, IdxSize, Int64Chunked, NamedFrom, Series};
use polars_arrow::bitmap::MutableBitmap;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::read::{Column, RawTable, TextColumn};
use crate::{EtlError, Result, StringCodes, Transactions};

/// Parameters of the etl stage (`[etl]` in params.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtlParams {
    /// Stock codes matching this regex are products; others (postage, fees,
    /// vouchers, manual adjustments) are dropped as non-products.
    pub product_code_pattern: String,
    /// Stock codes dropped even if they match the pattern (the original's list).
    pub excluded_stock_codes: Vec<String>,
    /// Rows dated before this day (`YYYY-MM-DD`) are dropped as implausible.
    pub min_date: String,
    /// Rows dated on or after this day (`YYYY-MM-DD`) are dropped as implausible.
    pub max_date: String,
    /// Rows priced above this (a typo, or a fee booked as a product) are dropped.
    pub max_unit_price: f64,
    /// Rows with more units than this are dropped.
    pub max_quantity: i64,
    /// Largest (decompressed) export accepted, in bytes.
    pub max_decompressed_bytes: u64,
}

impl Default for EtlParams {
    fn default() -> Self {
        Self {
            product_code_pattern: r"^([0-9]{5}[A-Za-z]{0,2}|DCGS[0-9A-Za-z]+)$".into(),
            excluded_stock_codes: ["B", "CRUK", "C2", "D", "S", "M", "m"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            min_date: "1990-01-01".into(),
            max_date: "2100-01-01".into(),
            max_unit_price: 100_000.0,
            max_quantity: 1_000_000,
            max_decompressed_bytes: crate::read::DEFAULT_MAX_DECOMPRESSED_BYTES,
        }
    }
}

impl EtlParams {
    /// The plausible-date window as microseconds `[min, max)`.
    fn date_window(&self) -> Result<(i64, i64)> {
        let day = |name: &str, s: &str| -> Result<i64> {
            chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .map(|d| {
                    d.and_time(chrono::NaiveTime::MIN)
                        .and_utc()
                        .timestamp_micros()
                })
                .map_err(|e| {
                    EtlError::Params(format!("{name} {s:?} is not a YYYY-MM-DD date: {e}"))
                })
        };
        let (lo, hi) = (
            day("min_date", &self.min_date)?,
            day("max_date", &self.max_date)?,
        );
        if lo >= hi {
            return Err(EtlError::Params(format!(
                "min_date {} is not before max_date {}",
                self.min_date, self.max_date
            )));
        }
        Ok((lo, hi))
    }

    /// Checks the bounds, so a typo fails before any data is read.
    pub fn validate(&self) -> Result<()> {
        self.date_window()?;
        if !(self.max_unit_price.is_finite() && self.max_unit_price > 0.0) {
            return Err(EtlError::Params(format!(
                "max_unit_price must be a positive number, found {}",
                self.max_unit_price
            )));
        }
        if self.max_quantity <= 0 {
            return Err(EtlError::Params(format!(
                "max_quantity must be positive, found {}",
                self.max_quantity
            )));
        }
        if self.max_decompressed_bytes == 0 {
            return Err(EtlError::Params(
                "max_decompressed_bytes must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Why a row was dropped; each row is counted under its first reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Invoice number starts with `C`.
    Cancellation,
    /// Quantity ≤ 0 (returns, write-offs).
    NonPositiveQuantity,
    /// Price ≤ 0 (free items, bad-debt adjustments).
    NonPositivePrice,
    /// Not a product: postage, fees, vouchers, manual lines.
    NonProductCode,
    /// Dated outside `[min_date, max_date)`.
    DateOutOfRange,
    /// Priced above `max_unit_price`.
    PriceOutOfRange,
    /// More units than `max_quantity`.
    QuantityOutOfRange,
}

impl DropReason {
    /// The snake_case name used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Cancellation => "cancellation",
            DropReason::NonPositiveQuantity => "non_positive_quantity",
            DropReason::NonPositivePrice => "non_positive_price",
            DropReason::NonProductCode => "non_product_code",
            DropReason::DateOutOfRange => "date_out_of_range",
            DropReason::PriceOutOfRange => "price_out_of_range",
            DropReason::QuantityOutOfRange => "quantity_out_of_range",
        }
    }

    /// Every reason, in the order rows are checked.
    pub const ALL: [DropReason; 7] = [
        DropReason::Cancellation,
        DropReason::NonPositiveQuantity,
        DropReason::NonPositivePrice,
        DropReason::DateOutOfRange,
        DropReason::QuantityOutOfRange,
        DropReason::PriceOutOfRange,
        DropReason::NonProductCode,
    ];
}

/// What the etl stage saw and did; becomes its metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EtlReport {
    /// Data rows read.
    pub rows_in: u64,
    /// Rows kept.
    pub rows_out: u64,
    /// Rows dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Optional fields that were empty or unparsable, by `column:problem`.
    pub optional_field_issues: BTreeMap<String, u64>,
    /// The most frequent non-product stock codes dropped (code, rows).
    pub top_non_product_codes: Vec<(String, u64)>,
    /// The date format recognised.
    pub date_format: String,
    /// First and last invoice date kept.
    pub date_min: String,
    /// Last invoice date kept.
    pub date_max: String,
    /// Distinct products kept.
    pub products: u64,
    /// Distinct registered customers kept.
    pub customers: u64,
    /// Distinct countries kept.
    pub countries: u64,
}

const DATE_FORMATS: [&str; 6] = [
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%d/%m/%Y %H:%M",
    "%m/%d/%Y %H:%M:%S",
];

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Calendar fields of a timestamp in microseconds since the epoch:
/// `(year, month 1-12, day 1-31, day of week 0 = Monday)`.
///
/// ```
/// // 2010-12-01 08:26:00 was a Wednesday.
/// assert_eq!(etl::civil_from_micros(1_291_191_960_000_000), (2010, 12, 1, 2));
/// ```
pub fn civil_from_micros(us: i64) -> (i32, u32, u32, u32) {
    let days = us.div_euclid(86_400_000_000);
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let dow = (days + 3).rem_euclid(7);
    (y as i32, m as u32, d as u32, dow as u32)
}

/// Microseconds since the epoch of midnight on a date.
pub fn micros_from_civil(y: i32, m: u32, d: u32) -> i64 {
    days_from_civil(i64::from(y), i64::from(m), i64::from(d)) * 86_400_000_000
}

fn digits(b: &[u8]) -> Option<i64> {
    let mut v = 0i64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

/// Fast path for `YYYY-MM-DD HH:MM:SS` (the dataset's format): microseconds since epoch.
fn parse_iso_fast(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (h, mi, se) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let max_day = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > max_day || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(((days * 24 + h) * 60 + mi) * 60_000_000 + se * 1_000_000)
}

fn parse_date(s: &str, format: &str) -> Option<i64> {
    let s = s.trim();
    if format == DATE_FORMATS[0]
        && let Some(v) = parse_iso_fast(s)
    {
        return Some(v);
    }
    NaiveDateTime::parse_from_str(s, format)
        .ok()
        .map(|dt| dt.and_utc().timestamp_micros())
}

/// Formats microseconds since epoch as `YYYY-MM-DD HH:MM:SS`.
pub fn format_micros(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| d.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn parse_integral(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Ok(v) = t.parse::<i64>() {
        return Some(v);
    }
    let f: f64 = t.parse().ok()?;
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
        Some(f as i64)
    } else {
        None
    }
}

fn parse_price(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// A date column's timestamps per distinct value (row `i`'s is
/// `by_id[ids[i]]`: no column of every row's, most of which cleaning
/// would copy again), and the format that parsed them.
struct DateColumn {
    by_id: Vec<i64>,
    format: &'static str,
}

/// The first format in [`DATE_FORMATS`] that parses every row (each distinct
/// value is parsed once); otherwise an error at the row where the format
/// that got furthest failed.
fn parse_dates(raw: &RawTable, col: &TextColumn) -> Result<DateColumn> {
    let mut best: Option<(usize, &'static str)> = None; // (first bad row, format)
    for format in DATE_FORMATS {
        let parsed: Vec<Option<i64>> = col
            .distinct()
            .iter()
            .map(|v| parse_date(v, format))
            .collect();
        match col
            .ids()
            .iter()
            .position(|&id| parsed[id as usize].is_none())
        {
            None => {
                let by_id = parsed.into_iter().map(Option::unwrap_or_default).collect();
                return Ok(DateColumn { by_id, format });
            }
            Some(row) => {
                if best.is_none_or(|(n, _)| row > n) {
                    best = Some((row, format));
                }
            }
        }
    }
    let (row, _) = best.unwrap_or((0, DATE_FORMATS[0]));
    let value = if col.is_empty() { "" } else { col.get(row) };
    Err(raw.field_error(
        row,
        Column::InvoiceDate,
        value,
        &format!(
            "not a date/time in any accepted format ({})",
            DATE_FORMATS.join(", ")
        ),
    ))
}

/// Distinct values among the kept rows' ids of `values` (two ids can
/// share a value once trimmed).
fn distinct_kept(ids: &[u32], values: &[&str]) -> u64 {
    let mut seen = vec![false; values.len()];
    for &id in ids {
        seen[id as usize] = true;
    }
    let kept: HashSet<&str> = values
        .iter()
        .zip(seen)
        .filter_map(|(v, s)| s.then_some(*v))
        .collect();
    kept.len() as u64
}

/// The string column whose row `i` is `values[ids[i]]`, and its codes: the
/// distinct values (two ids can hold one value, once trimmed) are built
/// once and gathered (long strings are shared, not copied), and each row's
/// key is its value's place among them.
fn gather<T>(name: &str, values: &[T], mut ids: Vec<u32>) -> Result<(Series, StringCodes)>
where
    T: Copy + std::hash::Hash + Eq,
    Series: NamedFrom<Vec<T>, [T]>,
{
    let distinct = crate::dictionary::merge_equal(values, &mut ids);
    let count = distinct.len();
    let distinct = Series::new(name.into(), distinct);
    // polars' row index is u32 (`IdxSize`) in this build, as the ids are.
    let ids: Vec<IdxSize> = ids;
    let keys = IdxCa::from_vec(name.into(), ids);
    let column = distinct.take(&keys)?;
    Ok((column, StringCodes::new(keys, count)?))
}

/// A customer id field, parsed.
#[derive(Debug, Clone, Copy)]
enum Customer {
    Id(i64),
    Missing,
    Unparsable,
}

fn required_str(raw: &RawTable, column: Column) -> Result<&TextColumn> {
    raw.strings(column).ok_or_else(|| EtlError::MissingColumn {
        file: raw.file.clone(),
        column: column.name(),
        accepted: column.aliases().join(", "),
        found: String::new(),
    })
}

/// `parse` applied to each distinct value of a column once.
fn per_distinct<'a, T>(col: &'a TextColumn, parse: impl Fn(&'a str) -> T) -> Vec<T> {
    col.distinct().iter().map(|v| parse(v)).collect()
}

/// Validates every field, drops non-sales rows and returns the typed table
/// with a report of what was dropped and why.
pub fn clean(raw: &RawTable, params: &EtlParams) -> Result<(Transactions, EtlReport)> {
    params.validate()?;
    let (date_lo, date_hi) = params.date_window()?;
    let pattern = Regex::new(&params.product_code_pattern)
        .map_err(|e| EtlError::Params(format!("product_code_pattern: {e}")))?;
    let excluded: HashSet<&str> = params
        .excluded_stock_codes
        .iter()
        .map(|s| s.as_str())
        .collect();

    let n = raw.height();
    let invoice = required_str(raw, Column::InvoiceNo)?;
    let stock = required_str(raw, Column::StockCode)?;
    let qty_s = required_str(raw, Column::Quantity)?;
    let price_s = required_str(raw, Column::UnitPrice)?;
    let date_s = required_str(raw, Column::InvoiceDate)?;
    let desc_s = raw.strings(Column::Description);
    let cust_s = raw.strings(Column::CustomerId);
    let country_s = raw.strings(Column::Country);

    let dates = parse_dates(raw, date_s)?;
    // Work per distinct value, not per row: the row loop only looks up.
    let quantities = per_distinct(qty_s, parse_integral);
    let prices = per_distinct(price_s, parse_price);
    let invoices = per_distinct(invoice, str::trim);
    let stocks = per_distinct(stock, |sc| {
        let sc = sc.trim();
        (sc, !excluded.contains(sc) && pattern.is_match(sc))
    });
    let customers = cust_s.map(|c| {
        per_distinct(c, |t| {
            let t = t.trim();
            if t.is_empty() {
                Customer::Missing
            } else {
                parse_integral(t).map_or(Customer::Unparsable, Customer::Id)
            }
        })
    });
    // Output strings per distinct value; a missing column is one value.
    let countries: Vec<Option<&str>> = match country_s {
        Some(c) => per_distinct(c, |v| Some(v.trim()).filter(|v| !v.is_empty())),
        None => vec![None],
    };
    let descriptions: Vec<Option<&str>> = match desc_s {
        Some(d) => per_distinct(d, |v| Some(v.trim()).filter(|v| !v.is_empty())),
        None => vec![None],
    };
    let id_of = |col: Option<&TextColumn>, row: usize| col.map_or(0, |c| c.ids()[row]);

    let mut report = EtlReport {
        rows_in: n as u64,
        date_format: dates.format.to_string(),
        ..Default::default()
    };
    let mut dropped = [0u64; DropReason::ALL.len()];
    let mut non_product: HashMap<&str, u64> = HashMap::default();
    let (mut customer_missing, mut customer_unparsable) = (0u64, 0u64);
    let (mut country_missing, mut description_missing) = (0u64, 0u64);

    // Kept rows: text columns as ids of distinct values, the rest typed.
    let mut keep_invoice: Vec<u32> = Vec::with_capacity(n);
    let mut keep_stock: Vec<u32> = Vec::with_capacity(n);
    let mut keep_desc: Vec<u32> = Vec::with_capacity(n);
    let mut keep_qty = Vec::with_capacity(n);
    let mut keep_ts = Vec::with_capacity(n);
    let mut keep_price = Vec::with_capacity(n);
    // Customer ids as values and validity (guests are null), as polars
    // holds them.
    let mut keep_cust: Vec<i64> = Vec::with_capacity(n);
    let mut keep_cust_valid = MutableBitmap::with_capacity(n);
    // Which distinct customer fields the kept rows use.
    let mut customer_fields_kept = vec![false; cust_s.map_or(0, |c| c.distinct().len())];
    let mut keep_country: Vec<u32> = Vec::with_capacity(n);

    for row in 0..n {
        let inv = invoices[invoice.ids()[row] as usize];
        if inv.is_empty() {
            return Err(raw.field_error(row, Column::InvoiceNo, "", "empty invoice number"));
        }
        let (sc, is_product) = stocks[stock.ids()[row] as usize];
        if sc.is_empty() {
            return Err(raw.field_error(row, Column::StockCode, "", "empty stock code"));
        }
        let qty = quantities[qty_s.ids()[row] as usize].ok_or_else(|| {
            raw.field_error(
                row,
                Column::Quantity,
                qty_s.get(row),
                "not an integer quantity",
            )
        })?;
        let price = prices[price_s.ids()[row] as usize].ok_or_else(|| {
            raw.field_error(
                row,
                Column::UnitPrice,
                price_s.get(row),
                "not a finite number",
            )
        })?;
        let customer = match (cust_s, &customers) {
            (Some(c), Some(parsed)) => match parsed[c.ids()[row] as usize] {
                Customer::Id(id) => Some(id),
                Customer::Missing => {
                    customer_missing += 1;
                    None
                }
                Customer::Unparsable => {
                    customer_unparsable += 1;
                    None
                }
            },
            _ => {
                customer_missing += 1;
                None
            }
        };
        let country = id_of(country_s, row);
        if countries[country as usize].is_none() {
            country_missing += 1;
        }
        let desc = id_of(desc_s, row);
        if descriptions[desc as usize].is_none() {
            description_missing += 1;
        }
        let ts = dates.by_id[date_s.ids()[row] as usize];

        let reason = if inv.starts_with(['C', 'c']) {
            Some(DropReason::Cancellation)
        } else if qty <= 0 {
            Some(DropReason::NonPositiveQuantity)
        } else if price <= 0.0 {
            Some(DropReason::NonPositivePrice)
        } else if !(date_lo..date_hi).contains(&ts) {
            Some(DropReason::DateOutOfRange)
        } else if qty > params.max_quantity {
            Some(DropReason::QuantityOutOfRange)
        } else if price > params.max_unit_price {
            Some(DropReason::PriceOutOfRange)
        } else if !is_product {
            *non_product.entry(sc).or_default() += 1;
            Some(DropReason::NonProductCode)
        } else {
            None
        };
        if let Some(r) = reason {
            dropped[r as usize] += 1;
            continue;
        }
        keep_invoice.push(invoice.ids()[row]);
        keep_stock.push(stock.ids()[row]);
        keep_desc.push(desc);
        keep_qty.push(qty);
        keep_ts.push(ts);
        keep_price.push(price);
        keep_cust.push(customer.unwrap_or_default());
        keep_cust_valid.push(customer.is_some());
        if let (Some(c), Some(_)) = (cust_s, customer) {
            customer_fields_kept[c.ids()[row] as usize] = true;
        }
        keep_country.push(country);
    }

    for (name, count) in [
        ("customer_id:missing", customer_missing),
        ("customer_id:unparsable", customer_unparsable),
        ("country:missing", country_missing),
        ("description:missing", description_missing),
    ] {
        if count > 0 {
            report.optional_field_issues.insert(name.into(), count);
        }
    }
    for r in DropReason::ALL {
        report.dropped.insert(r.name().into(), dropped[r as usize]);
    }
    let mut codes: Vec<(String, u64)> = non_product
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    codes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    codes.truncate(20);
    report.top_non_product_codes = codes;
    report.rows_out = keep_invoice.len() as u64;
    if let (Some(min), Some(max)) = (keep_ts.iter().min(), keep_ts.iter().max()) {
        report.date_min = format_micros(*min);
        report.date_max = format_micros(*max);
    }
    let stock_codes: Vec<&str> = stocks.iter().map(|(sc, _)| *sc).collect();
    let countries: Vec<&str> = countries
        .iter()
        .map(|c| c.unwrap_or("Unspecified"))
        .collect();
    report.products = distinct_kept(&keep_stock, &stock_codes);
    report.countries = distinct_kept(&keep_country, &countries);
    // Distinct ids among the kept rows' distinct fields ("17850" and
    // "17850.0" are one customer).
    report.customers = customers
        .iter()
        .flatten()
        .zip(&customer_fields_kept)
        .filter_map(|(c, &kept)| match c {
            Customer::Id(id) if kept => Some(*id),
            _ => None,
        })
        .collect::<HashSet<_>>()
        .len() as u64;

    // The four gathers are independent: two on each core.
    let ((invoice_no, stock_code), (description, country)) = crate::join(
        || {
            (
                gather("invoice_no", &invoices, keep_invoice),
                gather("stock_code", &stock_codes, keep_stock),
            )
        },
        || {
            (
                gather("description", &descriptions, keep_desc),
                gather("country", &countries, keep_country),
            )
        },
    );
    let ((invoice_no, invoice_codes), (stock_code, stock_codes)) = (invoice_no?, stock_code?);
    let ((description, description_codes), (country, country_codes)) = (description?, country?);
    let tx = Transactions::from_string_series(
        [invoice_no, stock_code, description],
        keep_qty,
        keep_ts,
        keep_price,
        Int64Chunked::from_vec_validity(
            "customer_id".into(),
            keep_cust,
            Some(keep_cust_valid.freeze()),
        ),
        country,
    )?
    .with_codes(vec![
        ("invoice_no", invoice_codes),
        ("stock_code", stock_codes),
        ("description", description_codes),
        ("country", country_codes),
    ])?;
    Ok((tx, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StringDictionary;

    #[test]
    fn iso_fast_path_agrees_with_chrono() {
        for s in [
            "2010-12-01 08:26:00",
            "2011-02-28 23:59:59",
            "2012-02-29 00:00:00",
        ] {
            let slow = NaiveDateTime::parse_from_str(s, DATE_FORMATS[0])
                .map(|d| d.and_utc().timestamp_micros())
                .ok();
            assert_eq!(parse_iso_fast(s), slow, "{s}");
        }
        assert_eq!(parse_iso_fast("2011-02-29 00:00:00"), None);
        assert_eq!(parse_iso_fast("2011-13-01 00:00:00"), None);
    }

    #[test]
    fn civil_round_trip() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2010, 12, 1), (2011, 12, 9)] {
            let us = micros_from_civil(y, m, d);
            let (y2, m2, d2, _) = civil_from_micros(us);
            assert_eq!((y, m, d), (y2, m2, d2));
        }
        assert_eq!(civil_from_micros(0).3, 3, "1970-01-01 was a Thursday");
    }

    #[test]
    fn the_codes_of_cleaned_columns_number_them_as_their_strings_do() {
        // Values equal once trimmed, a missing description, a dropped row
        // whose values come first, a long description.
        let csv = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n\
            C1,85123A,GONE,-1,2011-01-01 08:00:00,2.5,1,UK\n\
            2, 85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2011-01-01 08:00:00,2.5,17850,UK\n\
            2,85123A ,,6,2011-01-01 08:00:00,2.5,17850, UK\n\
            3,71053,WHITE METAL LANTERN ,6,2011-01-02 08:00:00,3.4,,France\n\
            3 ,85123A,WHITE HANGING HEART T-LIGHT HOLDER,2,2011-01-02 08:00:00,2.5,,UK\n";
        let raw = crate::read_raw_bytes(csv.as_bytes(), "t.csv").unwrap_or_else(|e| panic!("{e}"));
        let (tx, _) = clean(&raw, &EtlParams::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tx.len(), 4);
        for name in ["invoice_no", "stock_code", "description", "country"] {
            let column = tx
                .dataframe()
                .column(name)
                .unwrap_or_else(|e| panic!("{e}"));
            let chunks: Vec<_> = column
                .str()
                .unwrap_or_else(|e| panic!("{e}"))
                .downcast_iter()
                .collect();
            let codes = tx
                .codes(name)
                .unwrap_or_else(|| panic!("no codes for {name}"));
            for missing in [None, Some("")] {
                let got = codes
                    .dictionary(chunks[0], 0, missing)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(got, StringDictionary::of(&chunks, missing), "{name}");
            }
        }
        let stock = tx.codes("stock_code").unwrap_or_else(|| panic!("no codes"));
        let keys: Vec<_> = stock.keys().into_no_null_iter().collect();
        assert_eq!(keys[0], keys[1], "\" 85123A\" and \"85123A \" are one code");
        assert_ne!(keys[0], keys[2]);
    }

    #[test]
    fn integral_parsing_accepts_float_spelling() {
        assert_eq!(parse_integral("17850.0"), Some(17850));
        assert_eq!(parse_integral(" 6 "), Some(6));
        assert_eq!(parse_integral("6.5"), None);
        assert_eq!(parse_integral("six"), None);
    }
}
