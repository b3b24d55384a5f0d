//! Parquet reading and writing for every artifact of the pipeline.
//!
//! The writer is polars' own file writer (`polars-parquet`, the crate that
//! polars' `ParquetWriter` wraps), driven so that it does less work for the
//! same format:
//! - the columns of a row group are encoded and compressed on every core,
//!   eagerly (polars' writer hands the file writer lazy pages, so encoding
//!   and compression run on the one thread that writes the file);
//! - float columns are written plain: polars tries a dictionary on every
//!   column, hashing a float column to estimate its cardinality, and then
//!   drops the dictionary for the prices, ratios and standardised values
//!   these artifacts hold.
//!
//! The rest is as polars writes it: LZ4 (raw) pages, min/max/null-count
//! statistics, row groups of [`ROW_GROUP_ROWS`] rows, the arrow schema in
//! the footer. Any parquet reader reads the files; equal frames give equal
//! bytes.

use std::io::Cursor;

use polars::prelude::*;
use polars_parquet::read::ParquetError;
use polars_parquet::write::{
    CompressedPage, CompressionOptions, Compressor, DynIter, DynStreamingIterator, Encoding,
    FileWriter, ParquetType, StatisticsOptions, Version, WriteOptions, array_to_columns,
    fallible_streaming_iterator, get_dtype_encoding, to_parquet_schema,
};

use crate::Result;

/// Rows per row group (polars' default).
pub const ROW_GROUP_ROWS: usize = 512 * 512;

/// Writes a frame to parquet bytes (equal frames give equal bytes).
pub fn write_parquet(df: &DataFrame) -> Result<Vec<u8>> {
    let mut writer = ParquetChunkWriter::new(Vec::new(), df.schema())?;
    writer.write(df)?;
    writer.finish()
}

/// Reads a frame from parquet bytes.
pub fn read_parquet(bytes: &[u8]) -> Result<DataFrame> {
    Ok(ParquetReader::new(Cursor::new(bytes)).finish()?)
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
                ArrowDataType::Float32 | ArrowDataType::Float64 => vec![Encoding::Plain],
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

    /// Appends the rows of `df` (of the writer's schema) as row groups of
    /// at most [`ROW_GROUP_ROWS`] rows.
    pub fn write(&mut self, df: &DataFrame) -> Result<()> {
        let mut offset = 0;
        while offset < df.height() {
            let len = ROW_GROUP_ROWS.min(df.height() - offset);
            let mut part = df.slice(offset as i64, len);
            part.rechunk_mut();
            for batch in part.iter_chunks(CompatLevel::newest(), false) {
                let rows = batch.len() as u64;
                let columns = batch.columns();
                let pages = crate::map_on_every_core(columns.len(), 1, |i| {
                    encode_column(
                        &columns[i],
                        &self.fields[i],
                        &self.encodings[i],
                        self.options,
                    )
                })
                .into_iter()
                .collect::<PolarsResult<Vec<_>>>()?;
                let leaves: Vec<Vec<CompressedPage>> = pages.into_iter().flatten().collect();
                let group = DynIter::new(leaves.iter().map(|leaf| {
                    Ok(DynStreamingIterator::new(
                        fallible_streaming_iterator::convert(leaf.iter().map(Ok)),
                    ))
                }));
                self.file.write(rows, group)?;
            }
            offset += len;
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
fn encode_column(
    array: &ArrayRef,
    field: &ParquetType,
    encodings: &[Encoding],
    options: WriteOptions,
) -> PolarsResult<Vec<Vec<CompressedPage>>> {
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
    fn floats_are_written_plain_and_strings_with_a_dictionary() {
        let bytes = write_parquet(&frame(1000, 0)).unwrap_or_else(|e| panic!("{e}"));
        let meta = polars_parquet::read::read_metadata(&mut Cursor::new(&bytes))
            .unwrap_or_else(|e| panic!("{e}"));
        let dictionary = |name: &str| {
            meta.row_groups[0]
                .parquet_columns()
                .iter()
                .find(|c| c.descriptor().path_in_schema[0].as_str() == name)
                .map(|c| c.dictionary_page_offset().is_some())
        };
        assert_eq!(dictionary("price"), Some(false));
        assert_eq!(dictionary("code"), Some(true));
    }
}
