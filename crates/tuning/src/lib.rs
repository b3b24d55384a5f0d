//! Hyper-parameter search (issue 3, not built yet).
//!
//! Purpose: a mixed search space (log-scaled floats, ints, categoricals),
//! egobox-ego Bayesian optimisation over it with a grid-search fallback when EGO
//! fails or is not wanted, and an Optuna-like trials record of every evaluation.
