//! Quality gates (issue 4, not built yet).
//!
//! Purpose: Evidently-style per-column data-drift tests (KS, chi-square, z-test,
//! normed Wasserstein, Jensen-Shannon, chosen as Evidently's default preset
//! does), fairness between registered and guest customers, Shapley-value
//! attributions, and the JSON/HTML report behind the promotion gate.
