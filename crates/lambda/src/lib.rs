//! The AWS Lambda entry point (issue 5, not built yet).
//!
//! Purpose: run the `serve` router under lambda_http, copying artifacts to /tmp
//! once per cold start; no logic of its own.
