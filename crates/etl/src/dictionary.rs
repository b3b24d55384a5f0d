//! The distinct values of a string column, found from its views.
//!
//! A string column (arrow's `Utf8View`) stores each row as a 16-byte view:
//! strings of up to 12 bytes inline, longer ones as a buffer and offset.
//! The columns of this pipeline are built by gathering from their distinct
//! values (cleaning) or decoded from a parquet dictionary, so equal long
//! strings share one place in one buffer and equal rows have equal views.
//! [`StringDictionary::of`] therefore numbers the rows by view (a 16-byte
//! integer key, no string hashed or compared per row) and then merges the
//! distinct views that hold equal strings (equal strings stored twice, or
//! in the buffers of different chunks), so the result is exact whatever the
//! layout: the distinct strings in the order first seen, and each row's
//! index into them, as hashing every row's string would give.

use crate::hash::HashMap;
use crate::{EtlError, Result};
use polars::prelude::{ChunkAgg, IdxCa};
use polars_arrow::array::{Array, Utf8ViewArray, View};

/// A string column's distinct values, first seen first, and each row's
/// index into them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringDictionary<'a> {
    /// Per row, the index of its value in `values` (0 for a missing value
    /// when missing values are left out: mask it with the column's
    /// validity).
    pub ids: Vec<u32>,
    /// The distinct values, in the order first seen.
    pub values: Vec<&'a str>,
}

impl<'a> StringDictionary<'a> {
    /// The dictionary of the rows of `chunks`, in turn. A missing value
    /// counts as `missing` where that is given (and is numbered where first
    /// seen, like any value); otherwise it is left out of `values`.
    pub fn of(chunks: &[&'a Utf8ViewArray], missing: Option<&'a str>) -> Self {
        let rows = chunks.iter().map(|c| c.len()).sum();
        let mut ids = Vec::with_capacity(rows);
        // First pass: one id per distinct view. A long string's view names
        // a buffer of its own chunk, so its key carries the chunk (1-based);
        // an inline view is its value, whatever the chunk.
        let mut by_view: HashMap<(u32, u128), u32> = HashMap::default();
        let mut view_values: Vec<&'a str> = Vec::new();
        let mut missing_id: Option<u32> = None;
        let mut last: Option<((u32, u128), u32)> = None;
        for (chunk, array) in (1u32..).zip(chunks) {
            let views = array.views();
            let validity = array.validity().filter(|v| v.unset_bits() > 0);
            for (row, view) in views.iter().enumerate() {
                if validity.is_some_and(|v| !v.get_bit(row)) {
                    let id = match missing {
                        None => 0,
                        Some(value) => *missing_id.get_or_insert_with(|| {
                            view_values.push(value);
                            (view_values.len() - 1) as u32
                        }),
                    };
                    ids.push(id);
                    continue;
                }
                let key = if view.length <= View::MAX_INLINE_SIZE {
                    (0, view.as_u128())
                } else {
                    (chunk, view.as_u128())
                };
                if let Some((last_key, id)) = last
                    && last_key == key
                {
                    ids.push(id);
                    continue;
                }
                let id = *by_view.entry(key).or_insert_with(|| {
                    view_values.push(array.value(row));
                    (view_values.len() - 1) as u32
                });
                last = Some((key, id));
                ids.push(id);
            }
        }
        // Second pass, over the distinct views only: merge those that hold
        // equal strings.
        Self::merged(ids, view_values)
    }

    /// The dictionary of rows numbered `ids` into `numbered` (first seen
    /// first), merging the numbers that hold equal strings and keeping the
    /// order in which each string was first seen.
    fn merged(mut ids: Vec<u32>, numbered: Vec<&'a str>) -> Self {
        let values = merge_equal(&numbered, &mut ids);
        Self { ids, values }
    }
}

/// The distinct values of `numbered`, in the order first seen, with `ids`
/// (indices into `numbered`) renumbered into them: numbers that hold equal
/// values become one.
pub(crate) fn merge_equal<T: Copy + std::hash::Hash + Eq>(
    numbered: &[T],
    ids: &mut [u32],
) -> Vec<T> {
    let mut by_value: HashMap<T, u32> =
        HashMap::with_capacity_and_hasher(numbered.len(), Default::default());
    let mut values: Vec<T> = Vec::with_capacity(numbered.len());
    let remap: Vec<u32> = numbered
        .iter()
        .map(|&value| {
            *by_value.entry(value).or_insert_with(|| {
                values.push(value);
                (values.len() - 1) as u32
            })
        })
        .collect();
    if values.len() < numbered.len() {
        for id in ids {
            *id = remap[*id as usize];
        }
    }
    values
}

/// A string column's rows as keys of its distinct strings (equal keys for
/// equal strings, unequal for unequal), as cleaning finds them: the
/// column's [`StringDictionary`] of any range of rows then follows from the
/// keys with one array lookup per row, no hashing
/// ([`StringCodes::dictionary`]). Only valid for the column it was made
/// with; a missing row's key is ignored.
#[derive(Debug, Clone)]
pub struct StringCodes {
    keys: IdxCa,
    count: usize,
}

impl StringCodes {
    /// Codes of `keys`, each below `count`, one per row of the column, equal
    /// exactly where the rows' strings are equal (missing rows aside).
    pub fn new(keys: IdxCa, count: usize) -> Result<Self> {
        let rows = keys.len();
        let keys = keys.rechunk().into_owned();
        if keys.null_count() > 0 || keys.max().is_some_and(|k| k as usize >= count) {
            return Err(EtlError::Schema(format!(
                "string codes: {rows} keys, some missing or not below {count}"
            )));
        }
        Ok(Self { keys, count })
    }

    /// Rows described.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no rows are described.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The rows' keys.
    pub fn keys(&self) -> &IdxCa {
        &self.keys
    }

    /// [`StringDictionary::of`]`(&[column], missing)`, where `column` holds
    /// the rows from `offset` on of the column these codes describe.
    pub fn dictionary<'a>(
        &self,
        column: &'a Utf8ViewArray,
        offset: usize,
        missing: Option<&'a str>,
    ) -> Result<StringDictionary<'a>> {
        let keys = self
            .keys
            .cont_slice()
            .ok()
            .and_then(|keys| keys.get(offset..offset + column.len()))
            .ok_or_else(|| {
                EtlError::Schema(format!(
                    "string codes of {} rows, asked for rows {offset}..{}",
                    self.keys.len(),
                    offset + column.len()
                ))
            })?;
        let validity = column.validity().filter(|v| v.unset_bits() > 0);
        // Per key (and one more slot: a missing value counted as
        // `missing`), its number in this range, first seen first: in an
        // array over every key where the range has about as many rows as
        // there are keys, otherwise (a row group of a large table) in a
        // map of the keys seen, so the cost follows the range.
        const UNSEEN: u32 = u32::MAX;
        let mut local = Slots::new(self.count + 1, keys.len());
        let mut numbered: Vec<&'a str> = Vec::new();
        let mut ids = Vec::with_capacity(keys.len());
        for (row, &key) in keys.iter().enumerate() {
            let (slot, value) = if validity.is_some_and(|v| !v.get_bit(row)) {
                match missing {
                    None => {
                        ids.push(0);
                        continue;
                    }
                    Some(value) => (self.count, value),
                }
            } else {
                (key as usize, "")
            };
            let id = local.get(slot);
            if *id == UNSEEN {
                *id = numbered.len() as u32;
                numbered.push(if slot == self.count {
                    value
                } else {
                    column.value(row)
                });
            }
            ids.push(*id);
        }
        // Keys are distinct strings; only a missing value counted as a
        // string can equal one of them.
        Ok(if *local.get(self.count) == UNSEEN {
            StringDictionary {
                ids,
                values: numbered,
            }
        } else {
            StringDictionary::merged(ids, numbered)
        })
    }
}

/// A number per slot, `u32::MAX` until set: an array over every slot, or a
/// map of the slots used where they are many more than the rows.
enum Slots {
    Dense(Vec<u32>),
    Sparse(HashMap<usize, u32>),
}

impl Slots {
    fn new(slots: usize, rows: usize) -> Self {
        if slots <= rows.saturating_mul(2).max(1024) {
            Self::Dense(vec![u32::MAX; slots])
        } else {
            Self::Sparse(HashMap::with_capacity_and_hasher(
                rows.min(slots),
                Default::default(),
            ))
        }
    }

    fn get(&mut self, slot: usize) -> &mut u32 {
        match self {
            Self::Dense(numbers) => &mut numbers[slot],
            Self::Sparse(numbers) => numbers.entry(slot).or_insert(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::{ChunkTake, IdxCa, IdxSize, NewChunkedArray, StringChunked};
    use polars_arrow::array::MutableBinaryViewArray;

    /// Hashing every row's string: what the dictionary must equal.
    fn by_string<'a>(
        chunks: &[&'a Utf8ViewArray],
        missing: Option<&'a str>,
    ) -> StringDictionary<'a> {
        let mut seen: HashMap<&str, u32> = HashMap::default();
        let mut out = StringDictionary {
            ids: Vec::new(),
            values: Vec::new(),
        };
        for value in chunks.iter().flat_map(|c| c.iter()) {
            let Some(value) = value.or(missing) else {
                out.ids.push(0);
                continue;
            };
            let id = *seen.entry(value).or_insert_with(|| {
                out.values.push(value);
                (out.values.len() - 1) as u32
            });
            out.ids.push(id);
        }
        out
    }

    fn column(values: &[Option<&str>]) -> Utf8ViewArray {
        let mut out = MutableBinaryViewArray::<str>::new();
        for v in values {
            out.push(*v);
        }
        out.into()
    }

    const LONG: &str = "WHITE HANGING HEART T-LIGHT HOLDER";

    #[test]
    fn equal_strings_stored_apart_or_in_other_chunks_get_one_id() {
        // Every push of a long string stores it again: equal strings, unequal
        // views. The second chunk has buffers of its own.
        let a = column(&[
            Some(LONG),
            Some("85123A"),
            None,
            Some(LONG),
            Some(""),
            Some("85123A"),
        ]);
        let b = column(&[
            Some("POSTAGE"),
            Some(LONG),
            None,
            Some("85123A"),
            Some(LONG),
        ]);
        for missing in [None, Some(""), Some("Unknown")] {
            let got = StringDictionary::of(&[&a, &b], missing);
            assert_eq!(got, by_string(&[&a, &b], missing), "{missing:?}");
        }
        let got = StringDictionary::of(&[&a, &b], None);
        assert_eq!(got.values, [LONG, "85123A", "", "POSTAGE"]);
        assert_eq!(got.ids, [0, 1, 0, 0, 2, 1, 3, 0, 0, 1, 0]);
    }

    #[test]
    fn shared_views_and_gathered_rows_match_hashing_every_string() {
        // Gathering from distinct values shares each long string's place.
        let distinct =
            StringChunked::from_slice("v".into(), &[LONG, "A", "a much longer value than twelve"]);
        let rows: Vec<IdxSize> = (0..500).map(|i| (i * 7 + i / 3) % 3).collect();
        let gathered = distinct
            .take(&IdxCa::from_vec("i".into(), rows))
            .unwrap_or_else(|e| panic!("{e}"));
        let chunks: Vec<&Utf8ViewArray> = gathered.downcast_iter().collect();
        let places: crate::hash::HashSet<(u32, u32)> = chunks[0]
            .views()
            .iter()
            .filter(|v| v.length > View::MAX_INLINE_SIZE)
            .map(|v| (v.buffer_idx, v.offset))
            .collect();
        assert_eq!(places.len(), 2, "each long string stored once");
        let gathered = chunks[0];
        let got = StringDictionary::of(&[gathered], None);
        assert_eq!(got, by_string(&[gathered], None));
        assert_eq!(got.values.len(), 3);
    }

    /// A column of `rows` random values among `distinct` (some long, one
    /// empty), some missing, and its codes (keys by value).
    fn coded_column(rows: usize, distinct: usize, seed: u64) -> (Utf8ViewArray, StringCodes) {
        let names: Vec<String> = (0..distinct)
            .map(|i| match i % 3 {
                0 => format!("{i}"),
                1 => format!("{LONG} {i}"),
                _ if i == 2 => String::new(),
                _ => format!("x{i}"),
            })
            .collect();
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let picks: Vec<Option<usize>> = (0..rows)
            .map(|_| (next() % 10 != 0).then(|| next() % distinct))
            .collect();
        let values: Vec<Option<&str>> =
            picks.iter().map(|p| p.map(|i| names[i].as_str())).collect();
        let keys: Vec<IdxSize> = picks.iter().map(|p| p.unwrap_or(0) as IdxSize).collect();
        let codes = StringCodes::new(IdxCa::from_vec("k".into(), keys), distinct)
            .unwrap_or_else(|e| panic!("{e}"));
        (column(&values), codes)
    }

    #[test]
    fn codes_give_the_dictionary_of_any_range_as_hashing_every_string() {
        // The last two have many more keys than rows (a map of the keys).
        for (rows, distinct, seed) in [
            (1, 3, 1),
            (50, 3, 2),
            (700, 40, 3),
            (3000, 400, 4),
            (300, 5000, 5),
            (3000, 20000, 6),
        ] {
            let (whole, codes) = coded_column(rows, distinct, seed);
            for (start, len) in [
                (0, rows),
                (0, rows / 2),
                (rows / 3, rows - rows / 3),
                (rows, 0),
            ] {
                let part = whole.clone().sliced(start, len);
                for missing in [None, Some(""), Some("x5"), Some("absent")] {
                    let got = codes
                        .dictionary(&part, start, missing)
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(
                        got,
                        by_string(&[&part], missing),
                        "rows {start}+{len} of {rows}, {missing:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn codes_refuse_keys_out_of_range_and_rows_they_do_not_have() {
        let keys = IdxCa::from_vec("k".into(), vec![0, 3, 1]);
        assert!(StringCodes::new(keys.clone(), 3).is_err());
        let codes = StringCodes::new(keys, 4).unwrap_or_else(|e| panic!("{e}"));
        let four = column(&[Some("a"), Some("b"), Some("c"), Some("d")]);
        assert!(codes.dictionary(&four, 0, None).is_err());
        assert!(codes.dictionary(&four.sliced(0, 2), 2, None).is_err());
    }

    #[test]
    fn an_all_missing_or_empty_column_has_no_values() {
        let a = column(&[None, None]);
        assert_eq!(
            StringDictionary::of(&[&a], None),
            StringDictionary {
                ids: vec![0, 0],
                values: vec![]
            }
        );
        assert_eq!(StringDictionary::of(&[&a], Some("")).values, [""]);
        assert_eq!(StringDictionary::of(&[], None).ids, Vec::<u32>::new());
    }
}
