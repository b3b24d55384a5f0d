//! Stages 2 and 3 of the pipeline.
//!
//! **features** ([`build_features`]) turns cleaned [`etl::Transactions`] into
//! row-level features without leaking the future, plus the artifacts serving
//! needs: a [`ProductSummary`] (one row per product) and [`ProductContexts`]
//! (each product's most recent sales contexts), and the [`TrainWindow`] that
//! fixes where training data ends.
//!
//! **split** ([`split`]) cuts the feature table in time order
//! (train < validation < test), fits a [`Preprocessor`] on the training rows
//! only and makes one [`DesignMatrix`] per part; [`split_parquet`], what the
//! stage runs, writes each part as parquet a chunk of rows at a time, so no
//! model matrix is ever whole in memory.
//!
//! Price features are computed by one function, [`price_features`], in training
//! and at serving time, so the two cannot drift apart.
//!
//! ```
//! use etl::synth::{SynthConfig, generate};
//! let data = generate(&SynthConfig { n_invoices: 300, ..Default::default() });
//! let raw = etl::read_raw_bytes(data.csv.as_bytes(), "synthetic.csv").unwrap();
//! let (tx, _) = etl::clean(&raw, &etl::EtlParams::default()).unwrap();
//! let out = features::build_features(&tx, &features::FeatureParams::default(), None).unwrap();
//! let parts = features::split(&out.table, &out.window, &features::PreprocessParams::default()).unwrap();
//! assert_eq!(parts.train.x.ncols(), parts.preprocessor.feature_names.len());
//! ```

mod engineer;
mod par;
mod preprocess;
mod split;
mod table;

pub use engineer::{
    FeatureFiles, FeatureOutputs, FeatureParams, FeatureReport, PriceRef, SplitRule, TrainWindow,
    build_feature_files, build_features, median, price_features,
};
pub use preprocess::{
    NumericColumn, PreprocessParams, Preprocessor, Scaling, TargetEncoding, Transform,
};
pub use split::{DesignMatrix, SplitFiles, SplitParts, SplitReport, split, split_parquet};
pub use table::{
    DERIVED_FEATURES, FeatureRow, FeatureTable, ID_COLUMNS, NUMERIC_FEATURES, ProductContexts,
    ProductSummary, RowSource, SummaryRow, derived_features,
};

/// Errors of the features and split stages.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// Invalid parameters.
    #[error("params: {0}")]
    Params(String),
    /// The input has nothing to work with.
    #[error("no data: {0}")]
    NoData(String),
    /// An artifact does not have the expected shape.
    #[error("artifact: {0}")]
    Artifact(String),
    /// From the etl crate (reading transactions).
    #[error(transparent)]
    Etl(#[from] etl::EtlError),
    /// From polars.
    #[error("polars: {0}")]
    Polars(#[from] polars::error::PolarsError),
    /// JSON (de)serialisation.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result alias of this crate.
pub type Result<T, E = FeatureError> = std::result::Result<T, E>;
