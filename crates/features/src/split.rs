//! The split stage: time-ordered train / validation / test model matrices.

use ndarray::{Array1, Array2};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::preprocess::{PreprocessParams, Preprocessor};
use crate::table::{FeatureRow, FeatureTable};
use crate::{FeatureError, Result, TrainWindow};

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
        let df = DataFrame::new(self.len(), cols)?;
        Ok(etl::write_parquet(&df)?)
    }

    /// Reads parquet bytes written by [`DesignMatrix::to_parquet`].
    pub fn from_parquet(bytes: &[u8]) -> Result<Self> {
        let df = etl::read_parquet(bytes)?;
        let names: Vec<String> = df
            .get_column_names()
            .iter()
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
        let n = df.height();
        let mut x = Array2::zeros((n, n_feat));
        for (j, name) in names[..n_feat].iter().enumerate() {
            let col = df.column(name)?.f64()?;
            for (i, v) in col.iter().enumerate() {
                x[[i, j]] = v.ok_or_else(|| {
                    FeatureError::Artifact(format!("null in design-matrix column `{name}`"))
                })?;
            }
        }
        let y: Vec<f64> = df
            .column("target")?
            .f64()?
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect();
        Ok(Self {
            feature_names: names[..n_feat].to_vec(),
            x,
            y: Array1::from_vec(y),
            stock_code: df
                .column("stock_code")?
                .str()?
                .iter()
                .map(|s| s.unwrap_or("").to_string())
                .collect(),
            ts: df
                .column("invoice_date")?
                .datetime()?
                .physical()
                .iter()
                .map(|v| v.unwrap_or(0))
                .collect(),
        })
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

/// The output of the split stage.
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

/// Splits a feature table at the window's boundaries, fits the preprocessor on
/// the training part and transforms all three parts.
pub fn split(
    table: &FeatureTable,
    window: &TrainWindow,
    params: &PreprocessParams,
) -> Result<SplitParts> {
    let rows = table.rows()?;
    let ts = table.timestamps()?;
    let target = table.numeric("target")?;
    let parts = window.partition(ts);
    if parts[0].is_empty() {
        return Err(FeatureError::NoData("the training part is empty".into()));
    }
    let pick = |idx: &[usize]| -> (Vec<FeatureRow<'_>>, Vec<f64>) {
        (
            idx.iter().map(|&i| rows[i]).collect(),
            idx.iter().map(|&i| target[i]).collect(),
        )
    };
    let (train_rows, train_y) = pick(&parts[0]);
    let preprocessor = Preprocessor::fit(&train_rows, &train_y, params)?;
    let make = |idx: &[usize], x: Array2<f64>, y: Vec<f64>| DesignMatrix {
        feature_names: preprocessor.feature_names.clone(),
        x,
        y: Array1::from_vec(y),
        stock_code: idx
            .iter()
            .map(|&i| rows[i].stock_code.to_string())
            .collect(),
        ts: idx.iter().map(|&i| ts[i]).collect(),
    };
    let train = make(
        &parts[0],
        preprocessor.transform_train(&train_rows, &train_y),
        train_y.clone(),
    );
    let (val_rows, val_y) = pick(&parts[1]);
    let val = make(&parts[1], preprocessor.transform(&val_rows), val_y);
    let (test_rows, test_y) = pick(&parts[2]);
    let test = make(&parts[2], preprocessor.transform(&test_rows), test_y);

    let mean = |y: &Array1<f64>| {
        if y.is_empty() {
            0.0
        } else {
            y.mean().unwrap_or(0.0)
        }
    };
    let unseen = |m: &DesignMatrix| {
        if m.is_empty() {
            0.0
        } else {
            m.stock_code
                .iter()
                .filter(|c| !preprocessor.stock_code.stats.contains_key(c.as_str()))
                .count() as f64
                / m.len() as f64
        }
    };
    let report = SplitReport {
        rows: [train.len() as u64, val.len() as u64, test.len() as u64],
        target_mean: [mean(&train.y), mean(&val.y), mean(&test.y)],
        n_features: preprocessor.n_features() as u64,
        encoded_stock_codes: preprocessor.stock_code.stats.len() as u64,
        encoded_countries: preprocessor.countries.len() as u64,
        unseen_stock_code_share: [unseen(&val), unseen(&test)],
    };
    Ok(SplitParts {
        train,
        val,
        test,
        preprocessor,
        report,
    })
}
