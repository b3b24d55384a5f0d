//! The layout of the artifact store: where each stage's typed outputs live.
//!
//! The pipeline writes these keys into its working area; the gate copies the
//! ones serving needs into a release (`releases/<id>/`, same layout), and
//! serving reads them from the release production points at. All of them name
//! keys through [`ArtifactKeys`] so the layout is defined once.

/// The artifact keys of one pipeline instance (all products, or one stock code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactKeys {
    /// The stock code, if the run is for one product.
    pub stockcode: Option<String>,
    /// Cleaned transactions (shared by every instance).
    pub transactions: String,
    /// Row-level features.
    pub features: String,
    /// Per-product summary.
    pub summary: String,
    /// Recent contexts per product.
    pub contexts: String,
    /// Train window.
    pub window: String,
    /// Training matrix.
    pub train: String,
    /// Validation matrix.
    pub val: String,
    /// Test matrix.
    pub test: String,
    /// Fitted preprocessor.
    pub preprocessor: String,
    /// Model-matrix column names.
    pub feature_names: String,
    /// Directory of the trained models.
    pub models_dir: String,
    /// The manifest the models stage wrote, awaiting the promotion gate.
    pub candidate: String,
    /// The model manifest inside a release (the models that serve, in
    /// failover order); the working area has only the candidate.
    pub manifest: String,
    /// The gate's decision: which release it wrote and whether it promoted it.
    pub gate_decision: String,
    /// Each product's price response.
    pub response: String,
    /// Each product's weekly sales (price and quantity over time).
    pub history: String,
    /// The gate's JSON report.
    pub gate_report: String,
    /// The gate's HTML report.
    pub gate_html: String,
}

impl ArtifactKeys {
    /// Keys for all products (`None`) or one stock code.
    pub fn new(stockcode: Option<&str>) -> Self {
        let scope = stockcode
            .map(|c| format!("/stockcode={c}"))
            .unwrap_or_default();
        let f = |stage: &str, name: &str| format!("{stage}{scope}/{name}");
        Self {
            stockcode: stockcode.map(str::to_string),
            transactions: "etl/transactions.parquet".into(),
            features: f("features", "features.parquet"),
            summary: f("features", "product_summary.parquet"),
            contexts: f("features", "product_contexts.parquet"),
            window: f("features", "window.json"),
            train: f("split", "train.parquet"),
            val: f("split", "val.parquet"),
            test: f("split", "test.parquet"),
            preprocessor: f("split", "preprocessor.json"),
            feature_names: f("split", "feature_names.json"),
            models_dir: format!("models{scope}"),
            candidate: f("models", "candidate.json"),
            manifest: f("models", "manifest.json"),
            gate_decision: f("gate", "decision.json"),
            response: f("response", "response.json"),
            history: f("response", "history.json"),
            gate_report: f("gate", "report.json"),
            gate_html: f("gate", "report.html"),
        }
    }
}
