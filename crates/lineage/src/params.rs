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

    /// The whole table (for typed deserialisation of its sections).
    pub fn table(&self) -> &toml::Table {
        &self.table
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

/// Parses one `KEY=VALUE` assignment, as `--set` takes it: the value is
/// TOML (`0.5`, `true`, `"grid"`, `["mlp"]`), and text that is not TOML is a
/// string (`--set tuning.tuner=grid`). The key is trimmed and must be
/// non-empty dotted words.
///
/// ```
/// let (k, v) = lineage::params::assignment("tuning.tuner=grid").unwrap();
/// assert_eq!((k, v.as_str()), ("tuning.tuner", Some("grid")));
/// let (_, v) = lineage::params::assignment("split.train_fraction = 0.6").unwrap();
/// assert_eq!(v.as_float(), Some(0.6));
/// ```
pub fn assignment(text: &str) -> Result<(&str, toml::Value)> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| LineageError::Params(format!("{text:?}: expected KEY=VALUE")))?;
    let key = key.trim();
    if key.is_empty()
        || key.split('.').any(|part| {
            part.is_empty() || !part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
    {
        return Err(LineageError::Params(format!(
            "{text:?}: the key must be dotted words such as `gate.override`"
        )));
    }
    let value = value.trim();
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    Ok((key, parsed))
}

/// Where an effective parameter came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamSource {
    /// The compiled-in defaults (no params file, or the file leaves it out).
    Default,
    /// The params file.
    File,
    /// A `--set KEY=VALUE` on the command line.
    Set,
}

impl ParamSource {
    /// How `xtask params` prints it.
    pub fn label(self) -> &'static str {
        match self {
            ParamSource::Default => "default",
            ParamSource::File => "file",
            ParamSource::Set => "--set",
        }
    }
}

/// The closest of `known` to `key` (edit distance, at most a third of the
/// key's length, and at least 2), for "did you mean" messages.
pub fn closest<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (key.chars().count() / 3).max(2);
    known
        .into_iter()
        .map(|k| (strsim::levenshtein(key, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, k)| (*d, *k))
        .map(|(_, k)| k)
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "true or false",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

impl Params {
    /// Every leaf key (dotted) with its value; an empty table is a leaf (an
    /// open map, such as `gate.stattest`).
    pub fn leaves(&self) -> BTreeMap<String, &toml::Value> {
        fn walk<'a>(
            prefix: &str,
            table: &'a toml::Table,
            out: &mut BTreeMap<String, &'a toml::Value>,
        ) {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(t) if !t.is_empty() => walk(&key, t, out),
                    v => {
                        out.insert(key, v);
                    }
                }
            }
        }
        let mut out = BTreeMap::new();
        walk("", &self.table, &mut out);
        out
    }

    /// Checks every key of `self` against `schema` (the compiled-in
    /// defaults): an unknown key is an error naming it and the closest known
    /// key; a value of another type than the default's is an error naming
    /// the key and the type wanted (an integer is accepted for a number).
    /// Keys under an open map of the schema (an empty table) are accepted.
    pub fn check_against(&self, schema: &Params, origin: &str) -> Result<()> {
        let known = schema.leaves();
        for (key, value) in self.leaves() {
            let open = known
                .iter()
                .any(|(k, v)| v.as_table().is_some() && key.starts_with(&format!("{k}.")));
            if open {
                continue;
            }
            let Some(default) = known.get(&key) else {
                let hint = closest(&key, known.keys().map(String::as_str))
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_else(|| "; `cargo xtask params` lists the valid keys".to_string());
                return Err(LineageError::Params(format!(
                    "{origin}: unknown key `{key}`{hint}"
                )));
            };
            let compatible = matches!(
                (default, value),
                (toml::Value::String(_), toml::Value::String(_))
                    | (toml::Value::Integer(_), toml::Value::Integer(_))
                    | (
                        toml::Value::Float(_),
                        toml::Value::Float(_) | toml::Value::Integer(_)
                    )
                    | (toml::Value::Boolean(_), toml::Value::Boolean(_))
                    | (toml::Value::Array(_), toml::Value::Array(_))
                    | (toml::Value::Table(_), toml::Value::Table(_))
                    | (toml::Value::Datetime(_), toml::Value::Datetime(_))
            );
            if !compatible {
                return Err(LineageError::Params(format!(
                    "{origin}: `{key}` must be {} (default {default}), found {value}",
                    type_name(default)
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Params {
        Params::from_toml_str(
            "[gate]\noverride = false\np_value_threshold = 0.05\nstattest = {}\n[split]\nmethod = \"fraction\"\ntrain_fraction = 0.7\n",
        )
        .unwrap()
    }

    #[test]
    fn unknown_keys_name_the_closest_valid_one() {
        let mut p = Params::default();
        p.set("gate.overide", true).unwrap();
        let e = p.check_against(&schema(), "--set").unwrap_err().to_string();
        assert!(
            e.contains("unknown key `gate.overide`") && e.contains("did you mean `gate.override`"),
            "{e}"
        );
        let mut p = Params::default();
        p.set("nothing.like.it", 1).unwrap();
        let e = p
            .check_against(&schema(), "params.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("params.toml") && e.contains("cargo xtask params"),
            "{e}"
        );
    }

    #[test]
    fn values_keep_the_defaults_type_and_open_maps_accept_any_key() {
        let mut p = Params::default();
        p.set("split.train_fraction", 1).unwrap(); // an integer is a number
        p.set("gate.stattest.unit_price", "ks").unwrap();
        p.check_against(&schema(), "x").unwrap();
        let mut p = Params::default();
        p.set("gate.override", "yes").unwrap();
        let e = p.check_against(&schema(), "--set").unwrap_err().to_string();
        assert!(e.contains("`gate.override` must be true or false"), "{e}");
        let mut p = Params::default();
        p.set("split.method", 2).unwrap();
        assert!(p.check_against(&schema(), "x").is_err());
    }

    #[test]
    fn assignments_parse_toml_values_and_fall_back_to_strings() {
        let (k, v) = assignment(" gate.override = true").unwrap();
        assert_eq!((k, v.as_bool()), ("gate.override", Some(true)));
        let (_, v) = assignment("models.priority=[\"mlp\", \"svr\"]").unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(2));
        let (_, v) = assignment("data.raw=/tmp/a b.csv").unwrap();
        assert_eq!(v.as_str(), Some("/tmp/a b.csv"));
        for bad in ["novalue", "=1", "a..b=1", "a b=1", "a.=1"] {
            assert!(assignment(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn closest_needs_a_near_key() {
        let known = ["models.seed", "models.priority", "gate.override"];
        assert_eq!(closest("models.sed", known), Some("models.seed"));
        assert_eq!(closest("zzz", known), None);
    }
}
