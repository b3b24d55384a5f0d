//! `params.toml`: the pipeline's parameters, addressed by dotted keys.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{LineageError, Result};

/// The parsed `params.toml`. Stages read values by dotted key
/// (`split.train_fraction`), and the lock file records the values each stage read.
///
/// ```
/// let p = lineage::Params::from_toml_str("[split]\ntrain_fraction = 0.7\n").unwrap();
/// assert_eq!(p.f64("split.train_fraction").unwrap(), 0.7);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    table: toml::Table,
}

impl Params {
    /// Parses TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| LineageError::Params(e.to_string()))?;
        Ok(Self { table })
    }

    /// Reads and parses a params file; errors name the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LineageError::io(path, e))?;
        Self::from_toml_str(&text)
            .map_err(|e| LineageError::Params(format!("{}: {e}", path.display())))
    }

    /// The value at a dotted key, if present.
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        let mut parts = key.split('.');
        let first = parts.next()?;
        let mut value = self.table.get(first)?;
        for part in parts {
            value = value.as_table()?.get(part)?;
        }
        Some(value)
    }

    /// Sets the value at a dotted key, creating tables on the way.
    pub fn set(&mut self, key: &str, value: impl Into<toml::Value>) -> Result<()> {
        let parts: Vec<&str> = key.split('.').collect();
        let (last, head) = parts
            .split_last()
            .ok_or_else(|| LineageError::Params("empty key".into()))?;
        let mut table = &mut self.table;
        for part in head {
            let entry = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry.as_table_mut().ok_or_else(|| {
                LineageError::Params(format!("`{part}` in `{key}` is not a table"))
            })?;
        }
        table.insert(last.to_string(), value.into());
        Ok(())
    }

    fn required(&self, key: &str) -> Result<&toml::Value> {
        self.get(key)
            .ok_or_else(|| LineageError::Params(format!("missing required key `{key}`")))
    }

    fn type_error(key: &str, want: &str, got: &toml::Value) -> LineageError {
        LineageError::Params(format!("`{key}` must be {want}, found `{got}`"))
    }

    /// A float (integers are accepted).
    pub fn f64(&self, key: &str) -> Result<f64> {
        let v = self.required(key)?;
        v.as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .ok_or_else(|| Self::type_error(key, "a number", v))
    }

    /// An integer.
    pub fn i64(&self, key: &str) -> Result<i64> {
        let v = self.required(key)?;
        v.as_integer()
            .ok_or_else(|| Self::type_error(key, "an integer", v))
    }

    /// A non-negative integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let i = self.i64(key)?;
        usize::try_from(i)
            .map_err(|_| LineageError::Params(format!("`{key}` must be >= 0, found {i}")))
    }

    /// A string.
    pub fn str(&self, key: &str) -> Result<&str> {
        let v = self.required(key)?;
        v.as_str()
            .ok_or_else(|| Self::type_error(key, "a string", v))
    }

    /// An optional string (absent or empty string gives `None`).
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let s = v
                    .as_str()
                    .ok_or_else(|| Self::type_error(key, "a string", v))?;
                Ok(if s.is_empty() { None } else { Some(s) })
            }
        }
    }

    /// The values of `keys` as JSON, for the lock file. A key that is a table
    /// contributes the whole table; an absent key is recorded as `null`.
    pub fn snapshot(&self, keys: &[String]) -> BTreeMap<String, serde_json::Value> {
        keys.iter()
            .map(|k| {
                let v = self
                    .get(k)
                    .and_then(|v| serde_json::to_value(v).ok())
                    .unwrap_or(serde_json::Value::Null);
                (k.clone(), v)
            })
            .collect()
    }
}
