//! Parquet reading and writing for every artifact of the pipeline.
//!
//! The writer is polars' own file writer (`polars-parquet`, the crate that
//! polars' `ParquetWriter` wraps), driven so that it does less work for the
//! same format:
//! - the columns of a row group are encoded and compressed on every core,
//!   eagerly (polars' writer hands the file writer lazy pages, so encoding
//!   and compression run on the one thread that writes the file);
//! - dictionaries are built here (`dictionary`): string columns from
//!   their views, float columns by their bits where the values repeat
//!   (plain where they do not), instead of polars-parquet's cardinality
//!   estimate and hash group-by over every row.
//!
//! The rest is as polars writes it: LZ4 (raw) pages, min/max/null-count
//! statistics, row groups of [`ROW_GROUP_ROWS`] rows, the arrow schema in
//! the footer. Any parquet reader reads the files; equal frames give equal
//! bytes.
//!
//! A stage that writes some of its input's columns unchanged (the features
//! table repeats seven of the transactions' columns) reads that input with
//! [`read_parquet_keeping_pages`] and writes with [`write_parquet_reusing`]:
//! a column whose values, type and row groups equal the input's is written
//! by copying the input's encoded pages, which are the bytes encoding it
//! again would give.

use std::io::Cursor;

use polars::prelude::*;
use polars_parquet::read::ParquetError;
use polars_parquet::write::{
    CompressedPage, CompressionOptions, Compressor, DynIter, DynStreamingIterator, Encoding,
    FileWriter, ParquetType, StatisticsOptions, Version, WriteOptions, array_to_columns,
    fallible_streaming_iterator, get_dtype_encoding, to_parquet_schema,
};

use polars_arrow::array::{Array, DictionaryArray, PrimitiveArray, Utf8ViewArray};
use polars_arrow::bitmap::Bitmap;
use polars_arrow::datatypes::IntegerType;

use crate::hash::HashMap;
use crate::{Result, StringCodes, StringDictionary};

/// Rows per row group (polars' default).
pub const ROW_GROUP_ROWS: usize = 512 * 512;

/// Writes a frame to parquet bytes (equal frames give equal bytes).
pub fn write_parquet(df: &DataFrame) -> Result<Vec<u8>> {
    write_parquet_coded(df, |_| None)
}

/// [`write_parquet`] (the same bytes), numbering the values of each string
/// column that `codes` gives [`StringCodes`] for (by name) from its codes
/// instead of its views.
pub fn write_parquet_coded<'c>(
    df: &DataFrame,
    codes: impl Fn(&str) -> Option<&'c StringCodes>,
) -> Result<Vec<u8>> {
    let mut writer = ParquetChunkWriter::new(Vec::new(), df.schema())?;
    let codes: Vec<Option<&StringCodes>> = df
        .columns()
        .iter()
        .map(|c| codes(c.name().as_str()).filter(|codes| codes.len() == df.height()))
        .collect();
    writer.write_with(df, &vec![None; df.width()], &codes)?;
    writer.finish()
}

/// Reads a frame from parquet bytes.
pub fn read_parquet(bytes: &[u8]) -> Result<DataFrame> {
    Ok(ParquetReader::new(Cursor::new(bytes)).finish()?)
}

/// Writes a frame to parquet bytes, copying the encoded pages of every
/// column that `source` holds with equal values, type and row groups
/// instead of encoding it again: the same bytes as [`write_parquet`] where
/// `source` was written by it, less work.
pub fn write_parquet_reusing(df: &DataFrame, source: &EncodedColumns) -> Result<Vec<u8>> {
    let mut writer = ParquetChunkWriter::new(Vec::new(), df.schema())?;
    let reuse = writer.reusable(df, source);
    writer.write_with(df, &reuse, &vec![None; df.width()])?;
    writer.finish()
}

/// The rows of each row group of a table of `rows` rows, as written here.
fn row_group_sizes(rows: usize) -> Vec<usize> {
    (0..rows)
        .step_by(ROW_GROUP_ROWS)
        .map(|start| ROW_GROUP_ROWS.min(rows - start))
        .collect()
}

/// The column chunks of a parquet file as they are encoded, with the
/// columns they decode to: what [`write_parquet_reusing`] copies.
pub struct EncodedColumns {
    rows_per_group: Vec<usize>,
    columns: HashMap<String, EncodedColumn>,
}

/// Whether two columns are views of the same memory, chunk by chunk
/// (values, string data and validity), so equal without comparing their
/// values: a table's column taken from another table shares its buffers.
/// `false` does not mean unequal.
fn same_memory(a: &Column, b: &Column) -> bool {
    let (Some(a), Some(b)) = (a.as_series(), b.as_series()) else {
        return false;
    };
    a.len() == b.len()
        && a.chunks().len() == b.chunks().len()
        && a.chunks()
            .iter()
            .zip(b.chunks())
            .all(|(x, y)| same_array(x.as_ref(), y.as_ref()))
}

/// [`same_memory`] for one chunk: flat arrays of the data stages' types.
fn same_array(x: &dyn Array, y: &dyn Array) -> bool {
    fn same<T>(a: &[T], b: &[T]) -> bool {
        std::ptr::eq(a, b)
    }
    fn primitive<T: polars_arrow::types::NativeType>(x: &dyn Array, y: &dyn Array) -> Option<bool> {
        let x = x.as_any().downcast_ref::<PrimitiveArray<T>>()?;
        let y = y.as_any().downcast_ref::<PrimitiveArray<T>>()?;
        Some(same(&x.values()[..], &y.values()[..]))
    }
    let same_validity = match (x.validity(), y.validity()) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            let ((a, a_offset, a_len), (b, b_offset, b_len)) = (a.as_slice(), b.as_slice());
            same(a, b) && a_offset == b_offset && a_len == b_len
        }
        _ => false,
    };
    let same_values = if let (Some(x), Some(y)) = (
        x.as_any().downcast_ref::<Utf8ViewArray>(),
        y.as_any().downcast_ref::<Utf8ViewArray>(),
    ) {
        same(&x.views()[..], &y.views()[..]) && same(&x.data_buffers()[..], &y.data_buffers()[..])
    } else {
        primitive::<i64>(x, y)
            .or_else(|| primitive::<f64>(x, y))
            .or_else(|| primitive::<i32>(x, y))
            .unwrap_or(false)
    };
    x.len() == y.len() && x.dtype() == y.dtype() && same_validity && same_values
}

/// One column of [`EncodedColumns`].
struct EncodedColumn {
    /// Its values, as decoded.
    column: Column,
    field: ParquetType,
    compression: polars_parquet::parquet::compression::Compression,
    /// Per row group, the column chunk's pages (a dictionary page first).
    pages: Vec<Vec<CompressedPage>>,
}

impl EncodedColumns {
    /// Keeps only the columns `keep` accepts (by name), freeing the rest.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.columns.retain(|name, _| keep(name));
    }
}

impl std::fmt::Debug for EncodedColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.columns.keys().collect();
        names.sort();
        f.debug_struct("EncodedColumns")
            .field("rows_per_group", &self.rows_per_group)
            .field("columns", &names)
            .finish()
    }
}

/// Reads a frame from parquet bytes, keeping each column's encoded pages
/// for [`write_parquet_reusing`]. Only flat columns are kept.
pub fn read_parquet_keeping_pages(bytes: Vec<u8>) -> Result<(DataFrame, EncodedColumns)> {
    let mut df = read_parquet(&bytes)?;
    df.rechunk_mut();
    let pages = encoded_columns(bytes, &df)?;
    Ok((df, pages))
}

/// The encoded pages of each column of the parquet file `bytes`, paired
/// with the columns of `df` of the same names, which must be what the file
/// decodes to (the frame it was written from or read as): what
/// [`write_parquet_reusing`] copies where a column it writes equals one of
/// them. Only flat columns are kept.
pub fn encoded_columns(bytes: Vec<u8>, df: &DataFrame) -> Result<EncodedColumns> {
    let meta = polars_parquet::read::read_metadata(&mut Cursor::new(&bytes))?;
    let buffer = polars_buffer::Buffer::from_vec(bytes);
    let fields = meta.schema().fields();
    let mut columns: HashMap<String, EncodedColumn> = HashMap::default();
    let flat = fields
        .iter()
        .all(|f| matches!(f, ParquetType::PrimitiveType(_)))
        && meta
            .row_groups
            .iter()
            .all(|g| g.parquet_columns().len() == fields.len());
    if flat {
        for (i, field) in fields.iter().enumerate() {
            let name = field.name();
            let Ok(column) = df.column(name) else {
                continue;
            };
            let mut pages = Vec::with_capacity(meta.row_groups.len());
            let mut compression = None;
            for group in &meta.row_groups {
                let chunk = &group.parquet_columns()[i];
                compression = Some(chunk.compression());
                pages.push(column_chunk_pages(chunk, &buffer)?);
            }
            let Some(compression) = compression else {
                continue;
            };
            columns.insert(
                name.to_string(),
                EncodedColumn {
                    column: column.clone(),
                    field: field.clone(),
                    compression,
                    pages,
                },
            );
        }
    }
    let rows_per_group = meta.row_groups.iter().map(|g| g.num_rows()).collect();
    Ok(EncodedColumns {
        rows_per_group,
        columns,
    })
}

/// The pages of one column chunk, as a writer takes them.
fn column_chunk_pages(
    chunk: &polars_parquet::read::ColumnChunkMetadata,
    file: &polars_buffer::Buffer<u8>,
) -> PolarsResult<Vec<CompressedPage>> {
    let mut reader = polars_parquet::parquet::read::get_page_iterator(
        chunk,
        Cursor::new(file.clone()),
        Vec::new(),
        usize::MAX,
    )?;
    let mut pages = Vec::new();
    if let Some(dict) = reader.read_dict()? {
        pages.push(CompressedPage::Dict(dict));
    }
    for page in reader {
        let mut page = page?;
        if let CompressedPage::Data(data) = &mut page {
            // A flat column's page holds one value (or null) per row.
            data.num_rows = Some(data.num_values());
        }
        pages.push(page);
    }
    if pages.is_empty() {
        return Err(PolarsError::ComputeError(
            format!(
                "parquet column chunk `{}` has no pages",
                chunk.descriptor().path_in_schema.join(".")
            )
            .into(),
        ));
    }
    Ok(pages)
}

/// Writes one parquet file from frames of one schema, appended in turn, so
/// a table too large to hold whole is written a chunk at a time.
pub struct ParquetChunkWriter<W: std::io::Write> {
    file: FileWriter<W>,
    fields: Vec<ParquetType>,
    encodings: Vec<Vec<Encoding>>,
    options: WriteOptions,
}

impl<W: std::io::Write> ParquetChunkWriter<W> {
    /// A writer of frames with `schema` into `out`.
    pub fn new(out: W, schema: &Schema) -> Result<Self> {
        let arrow = schema.to_arrow(CompatLevel::newest());
        let parquet = to_parquet_schema(&arrow)?;
        let fields = parquet.fields().to_vec();
        let encodings = arrow
            .iter_values()
            .map(|field| match field.dtype {
                ArrowDataType::Float32 => vec![Encoding::Plain],
                ref other => get_dtype_encoding(other),
            })
            .collect();
        let options = WriteOptions {
            statistics: StatisticsOptions::default(),
            version: Version::V1,
            compression: CompressionOptions::Lz4Raw,
            data_page_size: None,
        };
        Ok(Self {
            file: FileWriter::new_with_parquet_schema(out, arrow, parquet, options),
            fields,
            encodings,
            options,
        })
    }

    /// Per column of `df`, the column of `source` whose pages it can copy:
    /// same name, type, values and row groups, encoded as this writer
    /// encodes (its parquet field and codec).
    fn reusable<'s>(
        &self,
        df: &DataFrame,
        source: &'s EncodedColumns,
    ) -> Vec<Option<&'s EncodedColumn>> {
        let same_groups = source.rows_per_group == row_group_sizes(df.height());
        df.columns()
            .iter()
            .zip(&self.fields)
            .map(|(column, field)| {
                source.columns.get(column.name().as_str()).filter(|kept| {
                    same_groups
                        && kept.field == *field
                        && kept.compression == self.options.compression.into()
                        && kept.column.dtype() == column.dtype()
                        && (same_memory(&kept.column, column) || kept.column.equals_missing(column))
                })
            })
            .collect()
    }

    /// Appends the rows of `df` (of the writer's schema) as row groups of
    /// at most [`ROW_GROUP_ROWS`] rows.
    pub fn write(&mut self, df: &DataFrame) -> Result<()> {
        self.write_with(df, &vec![None; df.width()], &vec![None; df.width()])
    }

    /// [`ParquetChunkWriter::write`], copying the pages of the columns that
    /// `reuse` names (those of row group `g` for the `g`-th group written)
    /// and numbering string columns from the `codes` given (of `df`'s rows).
    fn write_with(
        &mut self,
        df: &DataFrame,
        reuse: &[Option<&EncodedColumn>],
        codes: &[Option<&StringCodes>],
    ) -> Result<()> {
        // Each row group's rows, first row and columns.
        let mut groups: Vec<(u64, usize, Vec<ArrayRef>)> = Vec::new();
        let mut offset = 0;
        for len in row_group_sizes(df.height()) {
            let mut part = df.slice(offset as i64, len);
            part.rechunk_mut();
            let mut first = offset;
            for batch in part.iter_chunks(CompatLevel::newest(), false) {
                groups.push((batch.len() as u64, first, batch.columns().to_vec()));
                first += batch.len();
            }
            offset += len;
        }
        let width = self.fields.len();
        let kept = |group: usize, i: usize| {
            reuse
                .get(i)
                .copied()
                .flatten()
                .and_then(|c| c.pages.get(group))
        };
        // Every column of every row group encoded on every core at once (no
        // wait for a group's slowest column), then written in order.
        let (fields, encodings, options) = (&self.fields, &self.encodings, self.options);
        let mut encoded = crate::map_on_every_core(groups.len() * width, 1, |task| {
            let (group, i) = (task / width, task % width);
            let (_, first, arrays) = &groups[group];
            match (kept(group, i), arrays.get(i)) {
                (Some(_), _) => Ok(Vec::new()),
                (None, Some(array)) => {
                    let coded = codes.get(i).copied().flatten().map(|c| (c, *first));
                    encode_column(array, coded, &fields[i], &encodings[i], options)
                }
                (None, None) => Err(PolarsError::ComputeError(
                    format!("row group {group} has no column {i}").into(),
                )),
            }
        })
        .into_iter();
        for (group, (rows, _, _)) in groups.iter().enumerate() {
            let pages = encoded
                .by_ref()
                .take(width)
                .collect::<PolarsResult<Vec<_>>>()?;
            let leaves: Vec<&[CompressedPage]> = pages
                .iter()
                .enumerate()
                .flat_map(|(i, leaves)| match kept(group, i) {
                    Some(copied) => vec![copied.as_slice()],
                    None => leaves.iter().map(Vec::as_slice).collect(),
                })
                .collect();
            let pages = DynIter::new(leaves.iter().map(|leaf| {
                Ok(DynStreamingIterator::new(
                    fallible_streaming_iterator::convert(leaf.iter().map(Ok)),
                ))
            }));
            self.file.write(*rows, pages)?;
        }
        Ok(())
    }

    /// Writes the footer and returns the output.
    pub fn finish(mut self) -> Result<W> {
        self.file.end(None)?;
        Ok(self.file.into_inner())
    }
}

/// Encodes and compresses one column of a row group: its pages, per leaf.
/// `coded`: the column's codes and the group's first row among them.
fn encode_column(
    array: &ArrayRef,
    coded: Option<(&StringCodes, usize)>,
    field: &ParquetType,
    encodings: &[Encoding],
    options: WriteOptions,
) -> PolarsResult<Vec<Vec<CompressedPage>>> {
    let keyed: ArrayRef;
    let (array, encodings) = match dictionary(array, coded, encodings)? {
        Prepared::AsIs => (array, encodings),
        Prepared::Plain => (array, &[Encoding::Plain][..]),
        Prepared::Dictionary(d) => {
            keyed = d;
            (&keyed, encodings)
        }
    };
    array_to_columns(array, field.clone(), options, encodings)?
        .into_iter()
        .map(|pages| {
            let pages = pages.map(|page| {
                page.map_err(|e| ParquetError::FeatureNotSupported(format!("encoding a page: {e}")))
            });
            Compressor::new_from_vec(pages, options.compression, Vec::new())
                .map(|page| page.map_err(PolarsError::from))
                .collect()
        })
        .collect()
}

/// A column as it goes to the page encoder.
enum Prepared {
    /// As it is.
    AsIs,
    /// As it is, its values plain.
    Plain,
    /// Dictionary-encoded: keys into its distinct values.
    Dictionary(ArrayRef),
}

/// Whether a dictionary is worth it: not where the distinct values are more
/// than 3/4 of over 128 rows (polars-parquet's rule, on its estimate of the
/// count; here the count is exact).
fn worth_a_dictionary(distinct: usize, rows: usize) -> bool {
    rows <= 128 || distinct as f64 / rows as f64 <= 0.75
}

/// A column to be written with a dictionary, as its keys and distinct
/// values, found here instead of by polars-parquet, for the same format:
/// values in the order first seen, missing values as missing keys, plain
/// values where a dictionary is not worth it.
/// - Strings are numbered from their views ([`StringDictionary`]) instead
///   of hashing each row's string; the pages are the ones polars writes.
/// - Floats (polars would hash them to estimate their count and then
///   usually drop the dictionary) are numbered by their bits with one
///   integer hash per row, after the first rows show few distinct values:
///   the features' prices, ratios and per-customer figures repeat, and a
///   dictionary stores them in a fraction of the bytes that LZ4 would
///   otherwise compress; continuous values (standardised model inputs)
///   stay plain after 1,024 rows.
/// - Strings with codes ([`StringCodes`]) are numbered from them.
fn dictionary(
    array: &ArrayRef,
    coded: Option<(&StringCodes, usize)>,
    encodings: &[Encoding],
) -> PolarsResult<Prepared> {
    if encodings != [Encoding::RleDictionary] {
        return Ok(Prepared::AsIs);
    }
    let any = array.as_any();
    if let Some(strings) = any.downcast_ref::<Utf8ViewArray>() {
        let StringDictionary { ids, values } = match coded {
            Some((codes, first)) => codes
                .dictionary(strings, first, None)
                .map_err(|e| PolarsError::ComputeError(e.to_string().into()))?,
            None => StringDictionary::of(&[strings], None),
        };
        if !worth_a_dictionary(values.len(), strings.len()) {
            return Ok(Prepared::Plain);
        }
        let values = Utf8ViewArray::from_slice_values(values).boxed();
        return keyed(ids, strings.validity(), values);
    }
    if let Some(floats) = any.downcast_ref::<PrimitiveArray<f64>>() {
        let Some((ids, values)) = float_dictionary(floats) else {
            return Ok(Prepared::Plain);
        };
        let values = PrimitiveArray::from_vec(values).boxed();
        return keyed(ids, floats.validity(), values);
    }
    Ok(Prepared::AsIs)
}

/// A dictionary column of `values`, a key per row (masked by `validity`).
fn keyed(ids: Vec<u32>, validity: Option<&Bitmap>, values: ArrayRef) -> PolarsResult<Prepared> {
    let keys = PrimitiveArray::new(ArrowDataType::UInt32, ids.into(), validity.cloned());
    let dtype =
        ArrowDataType::Dictionary(IntegerType::UInt32, Box::new(values.dtype().clone()), false);
    Ok(Prepared::Dictionary(
        DictionaryArray::<u32>::try_new(dtype, keys, values)?.boxed(),
    ))
}

/// The keys (0 where missing) and distinct values (first seen first, by
/// bits) of a float column, or `None` where a dictionary is not worth it.
fn float_dictionary(floats: &PrimitiveArray<f64>) -> Option<(Vec<u32>, Vec<f64>)> {
    const SAMPLE: usize = 1024;
    let rows = floats.len();
    let limit = if rows <= 128 { rows } else { rows * 3 / 4 };
    let validity = floats.validity().filter(|v| v.unset_bits() > 0);
    let mut ids = Vec::with_capacity(rows);
    let mut seen: HashMap<u64, u32> = HashMap::default();
    let mut values = Vec::new();
    let mut last: Option<(u64, u32)> = None;
    for (row, value) in floats.values().iter().enumerate() {
        if row == SAMPLE && rows > 128 && values.len() * 4 > SAMPLE * 3 {
            return None;
        }
        if validity.is_some_and(|v| !v.get_bit(row)) {
            ids.push(0);
            continue;
        }
        let bits = value.to_bits();
        let id = match last {
            Some((last_bits, id)) if last_bits == bits => id,
            _ => *seen.entry(bits).or_insert_with(|| {
                values.push(*value);
                (values.len() - 1) as u32
            }),
        };
        if values.len() > limit {
            return None;
        }
        last = Some((bits, id));
        ids.push(id);
    }
    Some((ids, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(rows: usize, offset: usize) -> DataFrame {
        let idx = |i: usize| i + offset;
        let dates = Int64Chunked::from_vec(
            "ts".into(),
            (0..rows)
                .map(|i| 1_291_191_960_000_000 + idx(i) as i64)
                .collect(),
        )
        .into_datetime(TimeUnit::Microseconds, None)
        .into_series();
        df!(
            "code" => (0..rows).map(|i| format!("P{}", idx(i) % 7)).collect::<Vec<_>>(),
            "note" => (0..rows).map(|i| (idx(i) % 3 != 0).then_some("a longer description")).collect::<Vec<_>>(),
            "qty" => (0..rows).map(|i| idx(i) as i64).collect::<Vec<_>>(),
            "price" => (0..rows).map(|i| 1.0 + (idx(i) % 5) as f64 * 0.25).collect::<Vec<_>>(),
            "customer" => (0..rows).map(|i| (idx(i) % 4 != 0).then_some(idx(i) as i64)).collect::<Vec<_>>(),
        )
        .and_then(|mut df| df.with_column(dates.into_column()).map(|df| df.clone()))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_written_frame_reads_back_equal_and_the_bytes_are_deterministic() {
        let df = frame(1000, 0);
        let bytes = write_parquet(&df).unwrap_or_else(|e| panic!("{e}"));
        let back = read_parquet(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(back.equals_missing(&df), "{back}\n{df}");
        assert_eq!(write_parquet(&df).unwrap_or_else(|e| panic!("{e}")), bytes);
    }

    #[test]
    fn columns_share_memory_only_when_taken_from_one_another() {
        let df = frame(1000, 0);
        let copy = frame(1000, 0);
        let sliced = df.slice(1, 999);
        for name in ["code", "note", "qty", "price", "customer", "ts"] {
            let column = df.column(name).unwrap_or_else(|e| panic!("{e}"));
            let taken = df
                .select([name])
                .unwrap_or_else(|e| panic!("{e}"))
                .column(name)
                .unwrap_or_else(|e| panic!("{e}"))
                .clone();
            assert!(same_memory(column, &taken), "{name}");
            // Equal values in other memory, and a view of other rows.
            let equal = copy.column(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(!same_memory(column, equal), "{name}");
            assert!(column.equals_missing(equal), "{name}");
            let other_rows = sliced.column(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(!same_memory(&column.slice(0, 999), other_rows), "{name}");
            assert!(same_memory(&column.slice(1, 999), other_rows), "{name}");
        }
    }

    #[test]
    fn chunks_append_as_row_groups_and_read_back_as_one_table() {
        let (a, b) = (
            frame(ROW_GROUP_ROWS + 10, 0),
            frame(500, ROW_GROUP_ROWS + 10),
        );
        let mut writer =
            ParquetChunkWriter::new(Vec::new(), a.schema()).unwrap_or_else(|e| panic!("{e}"));
        writer.write(&a).unwrap_or_else(|e| panic!("{e}"));
        writer.write(&b).unwrap_or_else(|e| panic!("{e}"));
        let bytes = writer.finish().unwrap_or_else(|e| panic!("{e}"));
        let whole = frame(ROW_GROUP_ROWS + 510, 0);
        let back = read_parquet(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(back.equals_missing(&whole));
        let meta = polars_parquet::read::read_metadata(&mut Cursor::new(&bytes))
            .unwrap_or_else(|e| panic!("{e}"));
        let groups: Vec<usize> = meta.row_groups.iter().map(|g| g.num_rows()).collect();
        assert_eq!(groups, [ROW_GROUP_ROWS, 10, 500]);
    }

    #[test]
    fn repeating_floats_and_strings_get_a_dictionary_continuous_floats_do_not() {
        let rows = 5000;
        let df = df!(
            "code" => (0..rows).map(|i| format!("P{}", i % 7)).collect::<Vec<_>>(),
            "unique" => (0..rows).map(|i| format!("a value longer than twelve {i}")).collect::<Vec<_>>(),
            // Repeats, with the values a dictionary must keep apart by bits.
            "price" => (0..rows).map(|i| [1.25, -0.0, 0.0, f64::NAN, f64::INFINITY][i % 5]).collect::<Vec<_>>(),
            "missing" => (0..rows).map(|i| (i % 3 != 0).then_some((i % 4) as f64)).collect::<Vec<_>>(),
            "continuous" => (0..rows).map(|i| (i as f64).sqrt()).collect::<Vec<_>>(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let bytes = write_parquet(&df).unwrap_or_else(|e| panic!("{e}"));
        let back = read_parquet(&bytes).unwrap_or_else(|e| panic!("{e}"));
        for name in ["code", "unique", "missing", "continuous"] {
            let (a, b) = (df.column(name).unwrap(), back.column(name).unwrap());
            assert!(a.equals_missing(b), "{name}");
        }
        let bits = |df: &DataFrame| -> Vec<u64> {
            let prices = df.column("price").unwrap().f64().unwrap();
            prices.into_no_null_iter().map(f64::to_bits).collect()
        };
        assert_eq!(bits(&back), bits(&df), "-0.0, 0.0 and NaN kept apart");
        let meta = polars_parquet::read::read_metadata(&mut Cursor::new(&bytes))
            .unwrap_or_else(|e| panic!("{e}"));
        let dictionary = |name: &str| {
            meta.row_groups[0]
                .parquet_columns()
                .iter()
                .find(|c| c.descriptor().path_in_schema[0].as_str() == name)
                .map(|c| c.dictionary_page_offset().is_some())
        };
        assert_eq!(dictionary("code"), Some(true));
        assert_eq!(dictionary("price"), Some(true));
        assert_eq!(dictionary("missing"), Some(true));
        assert_eq!(dictionary("unique"), Some(false));
        assert_eq!(dictionary("continuous"), Some(false));
    }

    #[test]
    fn columns_equal_to_the_sources_are_copied_with_the_bytes_of_a_fresh_write() {
        let rows = ROW_GROUP_ROWS + 700;
        let source = frame(rows, 0);
        let bytes = write_parquet(&source).unwrap_or_else(|e| panic!("{e}"));
        let (read, kept) = read_parquet_keeping_pages(bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(read.equals_missing(&source));
        assert_eq!(kept.rows_per_group, [ROW_GROUP_ROWS, 700]);

        // Four columns as they were (nulls, dates, floats, strings), one
        // changed, one new, in another order.
        let mut changed = source
            .column("qty")
            .unwrap_or_else(|e| panic!("{e}"))
            .clone();
        changed = (changed.as_materialized_series() * 2).into_column();
        let new = Column::new(
            "extra".into(),
            (0..rows).map(|i| (i % 9) as f64).collect::<Vec<_>>(),
        );
        let kept_column = |name: &str| read.column(name).unwrap_or_else(|e| panic!("{e}")).clone();
        let df = DataFrame::new(
            rows,
            vec![
                kept_column("price"),
                changed,
                new,
                kept_column("code"),
                kept_column("customer"),
                kept_column("ts"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let writer =
            ParquetChunkWriter::new(Vec::new(), df.schema()).unwrap_or_else(|e| panic!("{e}"));
        let copied: Vec<bool> = writer
            .reusable(&df, &kept)
            .iter()
            .map(Option::is_some)
            .collect();
        assert_eq!(copied, [true, false, false, true, true, true]);
        let reused = write_parquet_reusing(&df, &kept).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reused, write_parquet(&df).unwrap_or_else(|e| panic!("{e}")));
        let back = read_parquet(&reused).unwrap_or_else(|e| panic!("{e}"));
        assert!(back.equals_missing(&df));

        // Other row groups (fewer rows): nothing is copied.
        let fewer = df.slice(0, rows - 1);
        assert!(writer.reusable(&fewer, &kept).iter().all(Option::is_none));
        assert_eq!(
            write_parquet_reusing(&fewer, &kept).unwrap_or_else(|e| panic!("{e}")),
            write_parquet(&fewer).unwrap_or_else(|e| panic!("{e}"))
        );
    }

    #[test]
    fn a_float_column_that_turns_continuous_late_is_written_plain() {
        // 1,024 repeating values, then all distinct: more than 3/4 distinct.
        let values: Vec<f64> = (0..10_000)
            .map(|i| if i < 1024 { (i % 2) as f64 } else { i as f64 })
            .collect();
        let df = df!("x" => &values).unwrap_or_else(|e| panic!("{e}"));
        let bytes = write_parquet(&df).unwrap_or_else(|e| panic!("{e}"));
        let meta = polars_parquet::read::read_metadata(&mut Cursor::new(&bytes))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            meta.row_groups[0].parquet_columns()[0]
                .dictionary_page_offset()
                .is_none()
        );
        let back = read_parquet(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(back.equals(&df));
    }
}
