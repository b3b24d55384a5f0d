//! The split stage: time-ordered train / validation / test model matrices.

use std::ops::Range;

use ndarray::{Array1, Array2};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::preprocess::{PreprocessParams, Preprocessor, TargetEncoding};
use crate::table::{FeatureTable, RowSource};
use crate::{FeatureError, Result, TrainWindow};

/// Rows per chunk (and parquet row group) when [`split_parquet`] writes a part.
const CHUNK_ROWS: usize = 1 << 18;

/// A model matrix with its target and row identifiers. Parquet columns: one
/// float column per feature name, then `target` (ln(1 + quantity)),
/// `stock_code` and `invoice_date`.
#[derive(Debug, Clone, PartialEq)]
pub struct DesignMatrix {
    /// Column names of `x`.
    pub feature_names: Vec<String>,
    /// Features, one row per sales line.
    pub x: Array2<f64>,
    /// ln(1 + quantity).
    pub y: Array1<f64>,
    /// Product of each row.
    pub stock_code: Vec<String>,
    /// Invoice time of each row (μs).
    pub ts: Vec<i64>,
}

impl DesignMatrix {
    /// Rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Parquet bytes.
    pub fn to_parquet(&self) -> Result<Vec<u8>> {
        Ok(etl::write_parquet(&self.to_frame()?)?)
    }

    /// The frame [`DesignMatrix::to_parquet`] writes.
    fn to_frame(&self) -> Result<DataFrame> {
        let mut cols: Vec<polars::prelude::Column> =
            Vec::with_capacity(self.feature_names.len() + 3);
        for (j, name) in self.feature_names.iter().enumerate() {
            cols.push(Series::new(name.as_str().into(), self.x.column(j).to_vec()).into());
        }
        cols.push(Series::new("target".into(), self.y.to_vec()).into());
        cols.push(
            Series::new(
                "stock_code".into(),
                self.stock_code
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>(),
            )
            .into(),
        );
        cols.push(
            Int64Chunked::from_vec("invoice_date".into(), self.ts.clone())
                .into_datetime(TimeUnit::Microseconds, None)
                .into_series()
                .into(),
        );
        Ok(DataFrame::new(self.len(), cols)?)
    }

    /// Reads parquet bytes written by [`DesignMatrix::to_parquet`].
    pub fn from_parquet(bytes: &[u8]) -> Result<Self> {
        Ok(Self::from_parquet_sample(bytes, usize::MAX)?.0)
    }

    /// Reads at most `max_rows` rows of parquet bytes written by
    /// [`DesignMatrix::to_parquet`], evenly spaced through the file. Rows are
    /// in time order, so the sample is stratified in time: every stretch of
    /// weeks keeps its share of rows. The file is read one column at a time,
    /// so beyond the sample only one column is in memory at once. Returns the
    /// matrix and the rows in the file.
    pub fn from_parquet_sample(bytes: &[u8], max_rows: usize) -> Result<(Self, usize)> {
        let reader = || ParquetReader::new(std::io::Cursor::new(bytes));
        let names: Vec<String> = reader()
            .schema()?
            .iter_names()
            .map(|s| s.to_string())
            .collect();
        let n_feat = names
            .len()
            .checked_sub(3)
            .filter(|_| {
                names.ends_with(&["target".into(), "stock_code".into(), "invoice_date".into()])
            })
            .ok_or_else(|| {
                FeatureError::Artifact(format!("not a design matrix: columns {names:?}"))
            })?;
        let n = reader().num_rows()?;
        // Row i of the sample is row ⌊i·n/m⌋ of the file.
        let pick: Option<Vec<usize>> = (n > max_rows).then(|| {
            (0..max_rows)
                .map(|i| (i as u128 * n as u128 / max_rows as u128) as usize)
                .collect()
        });
        let m = pick.as_ref().map_or(n, Vec::len);
        let column = |name: &str| -> Result<polars::prelude::Column> {
            let df = reader()
                .with_columns(Some(vec![name.to_string()]))
                .finish()?;
            Ok(df.column(name)?.clone())
        };
        fn sample<T: Clone>(all: Vec<T>, pick: Option<&Vec<usize>>) -> Vec<T> {
            match pick {
                Some(idx) => idx.iter().map(|&i| all[i].clone()).collect(),
                None => all,
            }
        }
        let floats = |name: &str| -> Result<Vec<f64>> {
            let col = column(name)?;
            let all = col
                .f64()?
                .iter()
                .map(|v| {
                    v.ok_or_else(|| {
                        FeatureError::Artifact(format!("null in design-matrix column `{name}`"))
                    })
                })
                .collect::<Result<Vec<f64>>>()?;
            Ok(sample(all, pick.as_ref()))
        };
        let mut x = Array2::zeros((m, n_feat));
        for (j, name) in names[..n_feat].iter().enumerate() {
            x.column_mut(j).assign(&Array1::from_vec(floats(name)?));
        }
        let y = floats("target")?;
        let codes = column("stock_code")?;
        let codes = codes.str()?;
        let stock_code: Vec<String> = match &pick {
            Some(idx) => idx
                .iter()
                .map(|&i| codes.get(i).unwrap_or("").to_string())
                .collect(),
            None => codes.iter().map(|s| s.unwrap_or("").to_string()).collect(),
        };
        let dates = column("invoice_date")?;
        let ts = sample(
            dates
                .datetime()?
                .physical()
                .iter()
                .map(|v| v.unwrap_or(0))
                .collect(),
            pick.as_ref(),
        );
        Ok((
            Self {
                feature_names: names[..n_feat].to_vec(),
                x,
                y: Array1::from_vec(y),
                stock_code,
                ts,
            },
            n,
        ))
    }
}

/// What the split stage reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    /// Rows in train, validation and test.
    pub rows: [u64; 3],
    /// Mean target per part.
    pub target_mean: [f64; 3],
    /// Model-matrix columns.
    pub n_features: u64,
    /// Stock codes with a target encoding.
    pub encoded_stock_codes: u64,
    /// Countries with their own column.
    pub encoded_countries: u64,
    /// Share of validation and test rows whose stock code was not in training.
    pub unseen_stock_code_share: [f64; 2],
}

/// The output of [`split`]: the parts as matrices in memory.
#[derive(Debug, Clone)]
pub struct SplitParts {
    /// Training rows (stock-code encoding cross-fitted).
    pub train: DesignMatrix,
    /// Validation rows.
    pub val: DesignMatrix,
    /// Test rows.
    pub test: DesignMatrix,
    /// Fitted on `train`.
    pub preprocessor: Preprocessor,
    /// Metrics.
    pub report: SplitReport,
}

/// The output of [`split_parquet`]: the parts as the parquet bytes
/// [`DesignMatrix::to_parquet`] would write (read them back with
/// [`DesignMatrix::from_parquet`]).
#[derive(Debug, Clone)]
pub struct SplitFiles {
    /// Training rows.
    pub train: Vec<u8>,
    /// Validation rows.
    pub val: Vec<u8>,
    /// Test rows.
    pub test: Vec<u8>,
    /// Fitted on the training rows.
    pub preprocessor: Preprocessor,
    /// Metrics.
    pub report: SplitReport,
}

/// Which rows go to which part, the preprocessor fitted on the training part
/// and its cross-fitted stock-code encoders: what [`split`] and
/// [`split_parquet`] both build their parts from, a range of rows at a time.
struct Plan<'a> {
    src: RowSource<'a>,
    ts: &'a [i64],
    target: &'a [f64],
    /// Row indices of train, validation and test, in time order.
    parts: [Vec<usize>; 3],
    preprocessor: Preprocessor,
    /// Encoder of each training fold (by position in the training part).
    folds: Vec<TargetEncoding>,
}

impl<'a> Plan<'a> {
    fn new(
        table: &'a FeatureTable,
        window: &TrainWindow,
        params: &PreprocessParams,
    ) -> Result<Self> {
        let src = table.row_source()?;
        let ts = table.timestamps()?;
        let target = table.numeric("target")?;
        let parts = window.partition(ts);
        let train = &parts[0];
        if train.is_empty() {
            return Err(FeatureError::NoData("the training part is empty".into()));
        }
        let train_y: Vec<f64> = train.iter().map(|&i| target[i]).collect();
        let row = |j: usize| src.row(train[j]);
        let preprocessor = Preprocessor::fit_with(train.len(), row, &train_y, params)?;
        let folds = preprocessor.fold_encoders(train.len(), row, &train_y);
        Ok(Self {
            src,
            ts,
            target,
            parts,
            preprocessor,
            folds,
        })
    }

    /// The model matrix of positions `range` of part `part` (0 train, 1
    /// validation, 2 test).
    fn matrix(&self, part: usize, range: Range<usize>) -> DesignMatrix {
        let idx = &self.parts[part][range.clone()];
        let rows = idx.iter().zip(range).map(|(&i, pos)| {
            let r = self.src.row(i);
            let encoder = if part == 0 {
                &self.folds[pos % self.folds.len()]
            } else {
                &self.preprocessor.stock_code
            };
            (r, encoder.encode(r.stock_code))
        });
        DesignMatrix {
            feature_names: self.preprocessor.feature_names.clone(),
            x: self.preprocessor.transform_with(rows, idx.len()),
            y: idx.iter().map(|&i| self.target[i]).collect(),
            stock_code: idx
                .iter()
                .map(|&i| self.src.row(i).stock_code.to_string())
                .collect(),
            ts: idx.iter().map(|&i| self.ts[i]).collect(),
        }
    }

    /// The whole of a part in memory.
    fn whole(&self, part: usize) -> DesignMatrix {
        self.matrix(part, 0..self.parts[part].len())
    }

    /// A part as parquet bytes, written `chunk` rows at a time: the model
    /// matrix is never whole in memory.
    fn parquet(&self, part: usize, chunk: usize) -> Result<Vec<u8>> {
        let n = self.parts[part].len();
        let chunk = chunk.max(1);
        let first = self.matrix(part, 0..n.min(chunk)).to_frame()?;
        if n <= chunk {
            return Ok(etl::write_parquet(&first)?);
        }
        let mut writer = etl::ParquetChunkWriter::new(Vec::new(), first.schema())?;
        writer.write(&first)?;
        drop(first);
        for start in (chunk..n).step_by(chunk) {
            let chunk = self.matrix(part, start..(start + chunk).min(n));
            writer.write(&chunk.to_frame()?)?;
        }
        Ok(writer.finish()?)
    }

    fn report(&self) -> SplitReport {
        let mean = |idx: &[usize]| {
            if idx.is_empty() {
                0.0
            } else {
                idx.iter().map(|&i| self.target[i]).sum::<f64>() / idx.len() as f64
            }
        };
        let unseen = |idx: &[usize]| {
            if idx.is_empty() {
                0.0
            } else {
                idx.iter()
                    .filter(|&&i| {
                        !self
                            .preprocessor
                            .stock_code
                            .stats
                            .contains_key(self.src.row(i).stock_code)
                    })
                    .count() as f64
                    / idx.len() as f64
            }
        };
        let [train, val, test] = &self.parts;
        SplitReport {
            rows: [train.len() as u64, val.len() as u64, test.len() as u64],
            target_mean: [mean(train), mean(val), mean(test)],
            n_features: self.preprocessor.n_features() as u64,
            encoded_stock_codes: self.preprocessor.stock_code.stats.len() as u64,
            encoded_countries: self.preprocessor.countries.len() as u64,
            unseen_stock_code_share: [unseen(val), unseen(test)],
        }
    }
}

/// Splits a feature table at the window's boundaries, fits the preprocessor on
/// the training part and transforms all three parts, in memory.
pub fn split(
    table: &FeatureTable,
    window: &TrainWindow,
    params: &PreprocessParams,
) -> Result<SplitParts> {
    let plan = Plan::new(table, window, params)?;
    Ok(SplitParts {
        train: plan.whole(0),
        val: plan.whole(1),
        test: plan.whole(2),
        report: plan.report(),
        preprocessor: plan.preprocessor,
    })
}

/// [`split`] straight to parquet, each part written in chunks of rows (one
/// thread per part), so no model matrix is ever whole in memory: what the
/// split stage runs, at any number of rows.
pub fn split_parquet(
    table: &FeatureTable,
    window: &TrainWindow,
    params: &PreprocessParams,
) -> Result<SplitFiles> {
    split_parquet_in_chunks(table, window, params, CHUNK_ROWS)
}

fn split_parquet_in_chunks(
    table: &FeatureTable,
    window: &TrainWindow,
    params: &PreprocessParams,
    chunk: usize,
) -> Result<SplitFiles> {
    let plan = Plan::new(table, window, params)?;
    let (train, val, test) = std::thread::scope(|s| {
        let val = s.spawn(|| plan.parquet(1, chunk));
        let test = s.spawn(|| plan.parquet(2, chunk));
        let train = plan.parquet(0, chunk);
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Vec<u8>>>| {
            h.join().unwrap_or_else(|_| {
                Err(FeatureError::Artifact(
                    "a split writer thread panicked".into(),
                ))
            })
        };
        (train, join(val), join(test))
    });
    Ok(SplitFiles {
        train: train?,
        val: val?,
        test: test?,
        report: plan.report(),
        preprocessor: plan.preprocessor,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parquet_in_chunks_holds_the_same_matrices_as_the_split_in_memory() {
        let data = etl::synth::generate(&etl::synth::SynthConfig {
            n_invoices: 400,
            ..Default::default()
        });
        let raw = etl::read_raw_bytes(data.csv.as_bytes(), "s.csv").unwrap();
        let (tx, _) = etl::clean(&raw, &etl::EtlParams::default()).unwrap();
        let out = crate::build_features(&tx, &crate::FeatureParams::default(), None).unwrap();
        let params = PreprocessParams::default();
        let whole = split(&out.table, &out.window, &params).unwrap();
        assert!(whole.train.len() > 300, "{}", whole.train.len());
        // Chunks of 97 rows: many row groups per part, a short last one.
        let files = split_parquet_in_chunks(&out.table, &out.window, &params, 97).unwrap();
        assert_eq!(files.preprocessor, whole.preprocessor);
        assert_eq!(files.report, whole.report);
        for (bytes, matrix) in [
            (&files.train, &whole.train),
            (&files.val, &whole.val),
            (&files.test, &whole.test),
        ] {
            assert_eq!(&DesignMatrix::from_parquet(bytes).unwrap(), matrix);
        }
        let frame = etl::read_parquet(&files.train).unwrap();
        assert_eq!(frame.height(), whole.train.len());
    }

    #[test]
    fn a_sample_is_evenly_spaced_in_time_and_keeps_whole_rows() {
        let n = 1000;
        let m = DesignMatrix {
            feature_names: vec!["a".into(), "b".into()],
            x: Array2::from_shape_fn((n, 2), |(i, j)| (i * 10 + j) as f64),
            y: (0..n).map(|i| i as f64 * 0.5).collect(),
            stock_code: (0..n).map(|i| format!("P{i}")).collect(),
            ts: (0..n as i64).map(|i| 1_000 + i * 60).collect(),
        };
        let bytes = m.to_parquet().unwrap();
        let (all, rows) = DesignMatrix::from_parquet_sample(&bytes, n).unwrap();
        assert_eq!((&all, rows), (&m, n));
        let (s, rows) = DesignMatrix::from_parquet_sample(&bytes, 300).unwrap();
        assert_eq!((s.len(), rows), (300, n));
        for (k, &t) in s.ts.iter().enumerate() {
            // Row k of the sample is row ⌊k·n/300⌋: every tenth of the file
            // (of time) keeps a tenth of the sample.
            let i = k * n / 300;
            assert_eq!(t, m.ts[i]);
            assert_eq!(s.x.row(k), m.x.row(i));
            assert_eq!((s.y[k], &s.stock_code[k]), (m.y[i], &m.stock_code[i]));
        }
    }
}
