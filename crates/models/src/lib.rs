//! Price-response regressors (issue 3, not built yet).
//!
//! Purpose: predict ln(1 + quantity) from price and context with a tch MLP
//! (primary) and LightGBM, SVR and Elastic Net backups behind one `Fit`/`Predict`
//! trait, each with a validated params struct and a stable file format; a
//! per-product median baseline; and the production manifest plus the failover
//! loader that serving walks in priority order.
