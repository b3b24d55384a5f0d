//! Request logs and Prometheus metrics.
//!
//! Every request gets an id (the client's `x-request-id` when it is a
//! plausible one, else a fresh one), echoed in the answer's `x-request-id`,
//! and one structured log line (target `serve::request`: method, path, route,
//! status, latency, cache, model, release, key name, request id; JSON with
//! `serve --log-format json`). `/metrics` renders request counts and latency
//! histograms by route and status, cache outcomes, failovers, refused keys,
//! load shedding and the release being served.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::App;

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The route template that answered (set on the response by the router;
/// `MatchedPath` is a shared string, so this copies no text).
#[derive(Debug, Clone)]
pub(crate) struct RouteName(pub MatchedPath);

/// The key's holder, when access control identified one.
#[derive(Debug, Clone)]
pub(crate) struct KeyName(pub String);

/// The service's metrics (one registry per [`App`], so tests do not share).
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    cache: IntCounterVec,
    failovers: IntCounterVec,
    denied: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers the metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered"),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from request to response headers",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
            &["route", "status"],
        )?;
        let cache = IntCounterVec::new(
            Opts::new(
                "price_cache_requests_total",
                "Recommendations by cache outcome (x-cache)",
            ),
            &["cache"],
        )?;
        let failovers = IntCounterVec::new(
            Opts::new(
                "price_failovers_total",
                "Requests on which a model failed and a backup answered, by failed model",
            ),
            &["model"],
        )?;
        let denied = IntCounterVec::new(
            Opts::new(
                "http_auth_denied_total",
                "Requests refused by access control",
            ),
            &["reason"],
        )?;
        for c in [&requests, &cache, &failovers, &denied] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            cache,
            failovers,
            denied,
        })
    }

    /// Counts a request refused by access control.
    pub(crate) fn denied(&self, reason: &str) {
        self.denied.with_label_values(&[reason]).inc();
    }

    fn record(&self, route: &str, method: &Method, status: StatusCode, secs: f64, r: &Response) {
        let status = status.as_str();
        self.requests
            .with_label_values(&[route, method.as_str(), status])
            .inc();
        self.latency
            .with_label_values(&[route, status])
            .observe(secs);
        if let Some(cache) = header(r, "x-cache") {
            self.cache.with_label_values(&[cache]).inc();
        }
        if let Some(failed) = header(r, "x-failover") {
            for model in failed.split(',') {
                self.failovers.with_label_values(&[model]).inc();
            }
        }
    }

    /// The Prometheus text exposition, with the service's own gauges.
    pub fn render(&self, app: &App) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics; a
        // failure would show as a missing family, not a broken page.
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        let mut text = String::from_utf8_lossy(&out).into_owned();
        let admission = app.admission();
        let h = app.recommender().health();
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        text.push_str(&format!(
            "# HELP price_shed_requests_total Requests refused with 503 at the limit of uncached work\n\
             # TYPE price_shed_requests_total counter\nprice_shed_requests_total {}\n\
             # HELP price_computed_total Uncached recommendations computed\n\
             # TYPE price_computed_total counter\nprice_computed_total {}\n\
             # HELP price_computing Uncached recommendations being computed now\n\
             # TYPE price_computing gauge\nprice_computing {}\n\
             # HELP price_release_info The release being served (value 1)\n\
             # TYPE price_release_info gauge\nprice_release_info{{release=\"{}\",model=\"{}\",model_version=\"{}\"}} 1\n\
             # HELP price_products Products the release can price\n\
             # TYPE price_products gauge\nprice_products {}\n",
            admission.shed_count(),
            admission.admitted_count(),
            admission.running(),
            esc(&h.release),
            esc(&h.model),
            esc(&h.model_version),
            h.products,
        ));
        text
    }
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A request id: the client's when it is short and plain, else 16 random hex digits.
fn request_id(request: &Request) -> HeaderValue {
    request
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty()
                && b.len() <= 64
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
        })
        .cloned()
        .unwrap_or_else(|| {
            let id = format!("{:016x}", rand::random::<u64>());
            HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("unknown"))
        })
}

/// Inner layer (per route): tells the outer layer which route answered.
pub(crate) async fn tag_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(RouteName(route));
    }
    response
}

/// Outer layer: request id, one log line, metrics.
pub(crate) async fn observe(State(app): State<App>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&request);
    request.headers_mut().insert(REQUEST_ID, id.clone());
    request
        .extensions_mut()
        .insert(crate::Deadline(app.inner.config.request_timeout));
    let method = request.method().clone();
    // The path is kept only when the log line will be written.
    let logging = tracing::enabled!(target: "serve::request", tracing::Level::INFO);
    let path = if logging {
        request.uri().path().to_string()
    } else {
        String::new()
    };
    let mut response = next.run(request).await;
    let secs = started.elapsed().as_secs_f64();
    let status = response.status();
    let route = response.extensions().get::<RouteName>().cloned();
    let route = route.as_ref().map_or("unmatched", |r| r.0.as_str());
    app.inner
        .metrics
        .record(route, &method, status, secs, &response);
    if logging {
        let key = response.extensions().get::<KeyName>().map(|k| k.0.clone());
        tracing::info!(
            target: "serve::request",
            request_id = id.to_str().unwrap_or(""),
            method = %method,
            path = %path,
            route = %route,
            status = status.as_u16(),
            latency_ms = secs * 1e3,
            cache = header(&response, "x-cache").unwrap_or("-"),
            model = header(&response, "x-model").unwrap_or("-"),
            release = header(&response, "x-release").unwrap_or("-"),
            key = key.as_deref().unwrap_or("-"),
            "request"
        );
    }
    response.headers_mut().insert(REQUEST_ID, id);
    response
}
