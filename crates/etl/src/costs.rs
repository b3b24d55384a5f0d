//! Unit costs per product: an optional input of the pipeline
//! (`data.unit_costs`), so recommendations can maximise profit.

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::*;

use crate::{EtlError, Result};

fn normalise(header: &str) -> String {
    header
        .trim_start_matches('\u{feff}')
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

const CODE_NAMES: [&str; 3] = ["stockcode", "sku", "productcode"];
const COST_NAMES: [&str; 3] = ["unitcost", "cost", "costprice"];

/// Reads unit costs from a CSV (`StockCode,UnitCost`, headers matched
/// ignoring case and punctuation) or a parquet file (columns `stock_code`
/// and `unit_cost`). Every cost must be a finite number ≥ 0, every stock
/// code given once; errors name the file, line and column.
pub fn read_unit_costs(path: &Path) -> Result<BTreeMap<String, f64>> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| EtlError::Io {
        path: file.clone(),
        source: e,
    })?;
    let rows: Vec<(u64, String, String)> = if bytes.starts_with(b"PAR1") {
        let df = crate::read_parquet(&bytes)?;
        let col = |names: &[&str]| -> Result<Vec<Option<String>>> {
            let name = df
                .get_column_names()
                .into_iter()
                .find(|n| names.contains(&normalise(n).as_str()))
                .ok_or_else(|| missing(&file, names))?
                .clone();
            let s = df.column(&name)?.cast(&DataType::String)?;
            Ok(s.str()?.iter().map(|v| v.map(str::to_string)).collect())
        };
        let codes = col(&CODE_NAMES)?;
        let costs = col(&COST_NAMES)?;
        codes
            .into_iter()
            .zip(costs)
            .enumerate()
            .map(|(i, (c, v))| (i as u64 + 1, c.unwrap_or_default(), v.unwrap_or_default()))
            .collect()
    } else {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(bytes.as_slice());
        let headers = reader
            .headers()
            .map_err(|e| EtlError::Csv {
                file: file.clone(),
                message: e.to_string(),
            })?
            .clone();
        let find = |names: &[&str]| {
            headers
                .iter()
                .position(|h| names.contains(&normalise(h).as_str()))
                .ok_or_else(|| missing(&file, names))
        };
        let (ci, vi) = (find(&CODE_NAMES)?, find(&COST_NAMES)?);
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| EtlError::Csv {
                file: file.clone(),
                message: e.to_string(),
            })?;
            let line = record.position().map_or(0, csv::Position::line);
            rows.push((
                line,
                record.get(ci).unwrap_or("").to_string(),
                record.get(vi).unwrap_or("").to_string(),
            ));
        }
        rows
    };
    let mut out = BTreeMap::new();
    for (line, code, cost) in rows {
        let bad = |column: &str, value: &str, problem: &str| EtlError::InvalidField {
            file: file.clone(),
            line,
            column: column.to_string(),
            value: value.chars().take(80).collect(),
            problem: problem.to_string(),
        };
        let code = code.trim();
        if code.is_empty() {
            return Err(bad("stock_code", code, "empty stock code"));
        }
        let value: f64 = cost
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| bad("unit_cost", &cost, "not a finite cost >= 0"))?;
        if out.insert(code.to_string(), value).is_some() {
            return Err(bad("stock_code", code, "given more than once"));
        }
    }
    Ok(out)
}

fn missing(file: &str, names: &[&str]) -> EtlError {
    EtlError::Csv {
        file: file.to_string(),
        message: format!("no column named like any of {names:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_costs_parse_and_bad_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("costs.csv");
        std::fs::write(&path, "Stock Code,Unit Cost\n85123A,1.20\n22423,4\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let costs = read_unit_costs(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(costs.get("85123A"), Some(&1.2));
        assert_eq!(costs.len(), 2);
        std::fs::write(&path, "StockCode,UnitCost\n85123A,1.20\n22423,-4\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let err = read_unit_costs(&path).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("unit_cost"), "{err}");
        std::fs::write(&path, "StockCode,Price\n85123A,1.20\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(read_unit_costs(&path).is_err());
    }
}
