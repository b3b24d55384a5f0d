//! The price-recommendation HTTP API (issue 5, not built yet).
//!
//! Purpose: an axum router over the recommendation library — `/v1/predict-price`
//! compatible with the original client, a richer `/v2` endpoint, health and
//! SageMaker-style routes — with a Redis cache (in-process fallback). The only
//! crate that knows about HTTP.
