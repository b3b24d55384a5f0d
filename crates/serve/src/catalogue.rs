//! The catalogue: every product ranked by expected uplift, search, weekly
//! sales history, and the serving release with its gate report.
//!
//! The ranking is each product's `/v2` answer at the default request
//! (revenue, the observed price range, no bounds): the same library call,
//! so the console never computes a price twice. It is computed once per
//! release, in the background when a release starts serving, and shared by
//! every ranking, search and CSV request.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use recommend::{Estimate, PriceRequest, Recommender};
use serde::Serialize;
use tokio::sync::OnceCell;
use utoipa::{IntoParams, ToSchema};

use crate::{ApiError, ApiErrorBody, App, insert};

/// One product of the ranking.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RankedProduct {
    /// Stock code.
    pub stockcode: String,
    /// Most frequent description.
    pub description: String,
    /// Sales lines, all time.
    pub lines: f64,
    /// The product's current price (its latest list price).
    pub current_price: Option<f64>,
    /// The recommended price at the default request.
    pub recommended_price: Option<f64>,
    /// Expected gain of the recommended price over the current one, in the
    /// objective's unit per week (revenue), with its 80 % band.
    pub uplift: Option<Estimate>,
    /// The same as a share of the current value.
    pub uplift_relative: Option<Estimate>,
    /// Expected revenue per week at the recommended price.
    pub weekly_revenue: Option<f64>,
    /// The bound that limits the answer, if any (`grid_min`, `grid_max`, ...).
    pub active_bound: Option<String>,
    /// `min` or `max` when the optimum is at the grid's edge: the data cannot
    /// say what happens beyond it.
    pub at_grid_edge: Option<String>,
    /// The model that answered.
    pub model: Option<String>,
    /// Why the product could not be priced (it is listed, not dropped).
    pub error: Option<String>,
}

/// Every product's default answer, for one release.
#[derive(Debug)]
pub struct Ranking {
    release: String,
    rows: Vec<RankedProduct>,
    computed_ms: f64,
}

impl Ranking {
    /// Prices every product at the default request, on half the cores, so
    /// requests keep being answered while it runs (at start and after each
    /// release swap).
    pub fn compute(recommender: &Recommender) -> Self {
        let started = Instant::now();
        let products: Vec<_> = recommender.products().collect();
        let threads = (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2)
            .clamp(1, products.len().max(1));
        let chunk = products.len().div_ceil(threads).max(1);
        let rows: Vec<RankedProduct> = std::thread::scope(|s| {
            let handles: Vec<_> = products
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|p| rank_one(recommender, p))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| match h.join() {
                    Ok(rows) => rows,
                    // A panic in the library is a bug; the rows of that
                    // chunk are missing, and the log says so.
                    Err(_) => {
                        tracing::error!("a ranking thread panicked");
                        Vec::new()
                    }
                })
                .collect()
        });
        let computed_ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::info!(
            release = recommender.release(),
            products = rows.len(),
            computed_ms,
            "ranking computed"
        );
        Self {
            release: recommender.release().to_string(),
            rows,
            computed_ms,
        }
    }
}

fn rank_one(recommender: &Recommender, p: &recommend::Product<'_>) -> RankedProduct {
    let mut row = RankedProduct {
        stockcode: p.stockcode.to_string(),
        description: p.description.to_string(),
        lines: p.lines,
        current_price: None,
        recommended_price: None,
        uplift: None,
        uplift_relative: None,
        weekly_revenue: None,
        active_bound: None,
        at_grid_edge: None,
        model: None,
        error: None,
    };
    match recommender.recommend(&PriceRequest::new(p.stockcode)) {
        Ok(rec) => {
            row.weekly_revenue = rec
                .curve
                .iter()
                .find(|c| c.unit_price == rec.optimal_unit_price)
                .map(|c| c.weekly_revenue);
            row.current_price = Some(rec.current_price);
            row.recommended_price = Some(rec.optimal_unit_price);
            row.uplift = Some(rec.uplift.absolute);
            row.uplift_relative = Some(rec.uplift.relative);
            row.active_bound = rec.active_bound;
            row.at_grid_edge = rec.at_grid_edge;
            row.model = Some(rec.model);
        }
        Err(e) => row.error = Some(e.to_string()),
    }
    row
}

/// One release's ranking, once computed.
type ReleaseRanking = (String, Arc<OnceCell<Arc<Ranking>>>);

/// The ranking of the release being served, computed at most once per
/// release (later callers wait for the first).
#[derive(Default)]
pub(crate) struct RankingSlot {
    slot: Mutex<Option<ReleaseRanking>>,
}

impl App {
    /// The ranking of the release serving now (computed on first use, or
    /// already by [`App::spawn_reloader`]).
    pub async fn ranking(&self) -> Result<Arc<Ranking>, ApiError> {
        let recommender = self.recommender();
        let cell = {
            let mut slot = self
                .inner
                .ranking
                .slot
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match &*slot {
                Some((release, cell)) if release == recommender.release() => cell.clone(),
                _ => {
                    let cell = Arc::new(OnceCell::new());
                    *slot = Some((recommender.release().to_string(), cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_try_init(|| async move {
            tokio::task::spawn_blocking(move || Arc::new(Ranking::compute(&recommender)))
                .await
                .map_err(|e| ApiError::internal(format!("ranking task failed: {e}")))
        })
        .await
        .cloned()
    }

    /// Starts computing the ranking of the release serving now, in the
    /// background, so the console's first request does not wait.
    pub fn warm_ranking(&self) {
        let app = self.clone();
        tokio::spawn(async move {
            if let Err(e) = app.ranking().await {
                tracing::warn!(error = %e.message, "computing the ranking");
            }
        });
    }
}

/// How `/v2/products` sorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// Expected uplift per week (default).
    Uplift,
    /// Expected uplift as a share of the current value.
    UpliftRelative,
    /// Stock code.
    Stockcode,
    /// Description.
    Description,
    /// Sales lines.
    Lines,
    /// Current price.
    CurrentPrice,
    /// Recommended price.
    RecommendedPrice,
}

impl SortKey {
    const ALL: [(&'static str, SortKey); 7] = [
        ("uplift", SortKey::Uplift),
        ("uplift_relative", SortKey::UpliftRelative),
        ("stockcode", SortKey::Stockcode),
        ("description", SortKey::Description),
        ("lines", SortKey::Lines),
        ("current_price", SortKey::CurrentPrice),
        ("recommended_price", SortKey::RecommendedPrice),
    ];
}

/// Query of `/v2/products` and `/v2/products.csv`.
#[derive(Debug, Clone, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by the OpenAPI derive; `parse_query` reads the query
pub struct ProductsQuery {
    /// Words that must all appear in the stock code or the description
    /// (case-insensitive); an exact stock code is listed first.
    q: Option<String>,
    /// `uplift` (default), `uplift_relative`, `stockcode`, `description`,
    /// `lines`, `current_price`, `recommended_price`.
    #[param(value_type = Option<SortKey>)]
    sort: Option<String>,
    /// `desc` (default for numbers) or `asc` (default for text).
    #[param(value_type = Option<String>, pattern = "^(asc|desc)$")]
    order: Option<String>,
    /// `true`: only optima at the grid's edge; `false`: only interior ones.
    edge: Option<bool>,
    /// Only products with at least this many sales lines (thin data makes
    /// large, uncertain uplifts).
    min_lines: Option<f64>,
    /// Page, from 1 (JSON only).
    #[param(minimum = 1)]
    page: Option<usize>,
    /// Products per page, 1..=1000, default 50 (JSON only).
    #[param(minimum = 1, maximum = 1000)]
    per_page: Option<usize>,
}

struct Parsed {
    words: Vec<String>,
    exact: Option<String>,
    sort: SortKey,
    desc: bool,
    edge: Option<bool>,
    min_lines: f64,
    page: usize,
    per_page: usize,
}

fn bad(parameter: &str, message: String) -> ApiError {
    ApiError::with_parameter(StatusCode::BAD_REQUEST, message, parameter)
}

fn parse_query(query: Option<&str>) -> Result<Parsed, ApiError> {
    let mut p = Parsed {
        words: Vec::new(),
        exact: None,
        sort: SortKey::Uplift,
        desc: true,
        edge: None,
        min_lines: 0.0,
        page: 1,
        per_page: 50,
    };
    let mut order: Option<bool> = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let number = |max: usize| -> Result<usize, ApiError> {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| bad(&k, format!("`{v}` is not a whole number in 1..={max}")))
        };
        match k.as_ref() {
            "q" => {
                p.words = v.split_whitespace().map(str::to_lowercase).collect();
                p.exact = Some(v.trim().to_string()).filter(|s| !s.is_empty());
            }
            "sort" => {
                p.sort = SortKey::ALL
                    .iter()
                    .find(|(name, _)| *name == v)
                    .map(|(_, key)| *key)
                    .ok_or_else(|| {
                        let names: Vec<&str> = SortKey::ALL.iter().map(|(n, _)| *n).collect();
                        bad("sort", format!("`{v}` is not one of {}", names.join(", ")))
                    })?;
            }
            "order" => {
                order = Some(match v.as_ref() {
                    "desc" => true,
                    "asc" => false,
                    _ => return Err(bad("order", format!("`{v}` is not asc or desc"))),
                });
            }
            "edge" => {
                p.edge = Some(match v.as_ref() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("edge", format!("`{v}` is not true or false"))),
                });
            }
            "min_lines" => {
                p.min_lines = v
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n >= 0.0)
                    .ok_or_else(|| bad("min_lines", format!("`{v}` is not a number ≥ 0")))?;
            }
            "page" => p.page = number(usize::MAX)?,
            "per_page" => p.per_page = number(1000)?,
            other => {
                return Err(bad(
                    other,
                    format!(
                        "unknown parameter `{}` (known: q, sort, order, edge, min_lines, page, per_page)",
                        other.chars().take(40).collect::<String>()
                    ),
                ));
            }
        }
    }
    p.desc = order.unwrap_or(!matches!(p.sort, SortKey::Stockcode | SortKey::Description));
    Ok(p)
}

/// The rows matching the query, sorted.
fn select<'a>(ranking: &'a Ranking, p: &Parsed) -> Vec<&'a RankedProduct> {
    let mut rows: Vec<&RankedProduct> = ranking
        .rows
        .iter()
        .filter(|r| {
            let text = format!("{} {}", r.stockcode, r.description).to_lowercase();
            p.words.iter().all(|w| text.contains(w.as_str()))
        })
        .filter(|r| p.edge.is_none_or(|edge| r.at_grid_edge.is_some() == edge))
        .filter(|r| r.lines >= p.min_lines)
        .collect();
    let num = |r: &RankedProduct| -> Option<f64> {
        match p.sort {
            SortKey::Uplift => r.uplift.map(|u| u.value),
            SortKey::UpliftRelative => r.uplift_relative.map(|u| u.value),
            SortKey::Lines => Some(r.lines),
            SortKey::CurrentPrice => r.current_price,
            SortKey::RecommendedPrice => r.recommended_price,
            SortKey::Stockcode | SortKey::Description => None,
        }
    };
    rows.sort_by(|a, b| {
        let ord = match p.sort {
            SortKey::Stockcode => a.stockcode.cmp(&b.stockcode),
            SortKey::Description => a.description.cmp(&b.description),
            _ => match (num(a), num(b)) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                // Unpriced products go last whatever the order.
                (Some(_), None) => return std::cmp::Ordering::Less,
                (None, Some(_)) => return std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            },
        };
        let ord = if p.desc { ord.reverse() } else { ord };
        ord.then_with(|| a.stockcode.cmp(&b.stockcode))
    });
    if let Some(code) = &p.exact
        && let Some(i) = rows
            .iter()
            .position(|r| r.stockcode.eq_ignore_ascii_case(code))
    {
        let row = rows.remove(i);
        rows.insert(0, row);
    }
    rows
}

/// A page of the ranking.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductsPage {
    /// The release that priced them.
    pub release: String,
    /// Products matching the query.
    pub total: usize,
    /// This page (from 1).
    pub page: usize,
    /// Products per page.
    pub per_page: usize,
    /// Pages in all.
    pub pages: usize,
    /// The sort key.
    pub sort: SortKey,
    /// `asc` or `desc`.
    pub order: String,
    /// What the ranking assumes.
    pub basis: String,
    /// Milliseconds it took to price every product (once per release).
    pub computed_ms: f64,
    /// The products of this page.
    pub products: Vec<RankedProduct>,
}

const BASIS: &str = "each product's /v2 answer at the default request: revenue objective, observed price range, no bounds";

fn release_header(release: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    insert(&mut h, "x-release", release);
    h
}

/// Products ranked by expected uplift; search by code or description words.
#[utoipa::path(get, path = "/v2/products", tag = "catalogue", params(ProductsQuery),
    responses(
        (status = 200, description = "A page of products", body = ProductsPage),
        (status = 400, description = "A parameter is invalid", body = ApiErrorBody),
        (status = 401, description = "An API key is required", body = ApiErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ("cookie" = []), ()))]
pub(crate) async fn products(
    State(app): State<App>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let p = parse_query(query.as_deref())?;
    let ranking = app.ranking().await?;
    let rows = select(&ranking, &p);
    let total = rows.len();
    let pages = total.div_ceil(p.per_page).max(1);
    let products = rows
        .into_iter()
        .skip((p.page - 1).saturating_mul(p.per_page))
        .take(p.per_page)
        .cloned()
        .collect();
    let page = ProductsPage {
        release: ranking.release.clone(),
        total,
        page: p.page,
        per_page: p.per_page,
        pages,
        sort: p.sort,
        order: if p.desc { "desc" } else { "asc" }.into(),
        basis: BASIS.into(),
        computed_ms: ranking.computed_ms,
        products,
    };
    Ok((release_header(&ranking.release), axum::Json(page)).into_response())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The ranking as CSV (every matching product, no paging).
#[utoipa::path(get, path = "/v2/products.csv", tag = "catalogue", params(ProductsQuery),
    responses(
        (status = 200, description = "Every matching product", content_type = "text/csv", body = String),
        (status = 400, description = "A parameter is invalid", body = ApiErrorBody),
        (status = 401, description = "An API key is required", body = ApiErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ("cookie" = []), ()))]
pub(crate) async fn products_csv(
    State(app): State<App>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let p = parse_query(query.as_deref())?;
    let ranking = app.ranking().await?;
    let num = |x: Option<f64>| x.map(|v| format!("{v}")).unwrap_or_default();
    let mut out = String::from(
        "stockcode,description,lines,current_price,recommended_price,uplift,uplift_lo,uplift_hi,uplift_relative,weekly_revenue,active_bound,at_grid_edge,model,error\n",
    );
    for r in select(&ranking, &p) {
        let fields = [
            csv_field(&r.stockcode),
            csv_field(&r.description),
            format!("{}", r.lines),
            num(r.current_price),
            num(r.recommended_price),
            num(r.uplift.map(|u| u.value)),
            num(r.uplift.map(|u| u.lo)),
            num(r.uplift.map(|u| u.hi)),
            num(r.uplift_relative.map(|u| u.value)),
            num(r.weekly_revenue),
            csv_field(r.active_bound.as_deref().unwrap_or("")),
            csv_field(r.at_grid_edge.as_deref().unwrap_or("")),
            csv_field(r.model.as_deref().unwrap_or("")),
            csv_field(r.error.as_deref().unwrap_or("")),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    let mut headers = release_header(&ranking.release);
    headers.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    insert(
        &mut headers,
        "content-disposition",
        &format!(
            "attachment; filename=\"price-ranking-{}.csv\"",
            ranking.release
        ),
    );
    Ok((headers, out).into_response())
}

/// One week of a product's sales.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryWeek {
    /// The Monday starting the week (UTC date).
    pub week_start: String,
    /// The same, ms since the Unix epoch.
    pub week_start_ms: i64,
    /// The week's list price (90th percentile of its line prices).
    pub list_price: f64,
    /// Average price paid (units-weighted).
    pub avg_price: f64,
    /// Units sold.
    pub units: f64,
    /// Order lines.
    pub orders: f64,
}

/// A product's weekly sales.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryAnswer {
    /// Stock code.
    pub stockcode: String,
    /// Description.
    pub description: String,
    /// The release it comes from.
    pub release: String,
    /// Weeks with sales, oldest first.
    pub weeks: Vec<HistoryWeek>,
}

/// The civil date (proleptic Gregorian) of a day count since 1970-01-01.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A product's weekly sales history (price and quantity over time).
#[utoipa::path(get, path = "/v2/products/{stockcode}/history", tag = "catalogue",
    params(("stockcode" = String, Path, description = "Stock code")),
    responses(
        (status = 200, description = "Weekly sales", body = HistoryAnswer),
        (status = 401, description = "An API key is required", body = ApiErrorBody),
        (status = 404, description = "Unknown product, or a release without histories", body = ApiErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ("cookie" = []), ()))]
pub(crate) async fn history(
    State(app): State<App>,
    Path(stockcode): Path<String>,
) -> Result<Response, ApiError> {
    let recommender = app.recommender();
    let not_found =
        |message: String| ApiError::with_parameter(StatusCode::NOT_FOUND, message, "stockcode");
    let product = recommender
        .products()
        .find(|p| p.stockcode == stockcode)
        .ok_or_else(|| {
            not_found(format!(
                "unknown stock code `{}`",
                stockcode.chars().take(40).collect::<String>()
            ))
        })?;
    if !recommender.has_history() {
        return Err(not_found(format!(
            "release {} carries no sales histories (made before they were added; run the pipeline again)",
            recommender.release()
        )));
    }
    let weeks = recommender
        .history(&stockcode)
        .map(|h| {
            (0..h.week_start_ms.len())
                .map(|i| {
                    let (y, m, d) = civil(h.week_start_ms[i].div_euclid(86_400_000));
                    HistoryWeek {
                        week_start: format!("{y:04}-{m:02}-{d:02}"),
                        week_start_ms: h.week_start_ms[i],
                        list_price: h.list_price[i],
                        avg_price: h.avg_price[i],
                        units: h.units[i],
                        orders: h.orders[i],
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let answer = HistoryAnswer {
        stockcode: product.stockcode.to_string(),
        description: product.description.to_string(),
        release: recommender.release().to_string(),
        weeks,
    };
    Ok((release_header(recommender.release()), axum::Json(answer)).into_response())
}

/// The gate's verdict on the release being served.
#[derive(Debug, Serialize, ToSchema)]
pub struct GateSummary {
    /// Whether every check passed.
    pub passed: bool,
    /// Whether a person overrode a failed gate.
    pub overridden: bool,
    /// The checks that failed.
    pub failures: Vec<String>,
}

/// The release being served.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseAnswer {
    /// Release id.
    pub release: String,
    /// The model that answers first.
    pub model: String,
    /// Its backups, in failover order.
    pub backups: Vec<String>,
    /// The model set's version.
    pub model_version: String,
    /// Products it can price.
    pub products: usize,
    /// Whether it carries weekly sales histories.
    pub history: bool,
    /// The gate's verdict, when the release carries its report.
    pub gate: Option<GateSummary>,
    /// Where the gate's report is (HTML), when there is one.
    pub gate_report: Option<String>,
}

/// The release being served and its gate verdict.
#[utoipa::path(get, path = "/v2/release", tag = "catalogue",
    responses(
        (status = 200, description = "The release", body = ReleaseAnswer),
        (status = 401, description = "An API key is required", body = ApiErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ("cookie" = []), ()))]
pub(crate) async fn release(State(app): State<App>) -> Result<Response, ApiError> {
    let recommender = app.recommender();
    let h = recommender.health();
    let gate = recommender.gate_report().and_then(|r| {
        let v: serde_json::Value = serde_json::from_slice(&r.json).ok()?;
        Some(GateSummary {
            passed: v.get("passed")?.as_bool()?,
            overridden: v
                .get("overridden")
                .and_then(|o| o.as_bool())
                .unwrap_or(false),
            failures: v
                .get("failures")
                .and_then(|f| f.as_array())
                .map(|f| {
                    f.iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
    });
    let answer = ReleaseAnswer {
        release: h.release.clone(),
        model: h.model,
        backups: h.backups,
        model_version: h.model_version,
        products: h.products,
        history: recommender.has_history(),
        gate_report: gate.as_ref().map(|_| "/v2/release/gate-report".to_string()),
        gate,
    };
    Ok((release_header(&h.release), axum::Json(answer)).into_response())
}

fn no_report(recommender: &Recommender) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("release {} carries no gate report", recommender.release()),
    )
}

/// The gate's report of the release serving now, as `content_type`: the
/// HTML or the JSON the gate wrote.
fn gate_report(
    app: &App,
    content_type: &'static str,
    pick: fn(&recommend::GateReport) -> &Vec<u8>,
) -> Result<Response, ApiError> {
    let recommender = app.recommender();
    let report = recommender
        .gate_report()
        .ok_or_else(|| no_report(&recommender))?;
    let mut headers = release_header(recommender.release());
    headers.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(content_type),
    );
    Ok((headers, pick(report).clone()).into_response())
}

/// The gate's report of the release being served (HTML, self-contained).
#[utoipa::path(get, path = "/v2/release/gate-report", tag = "catalogue",
    responses(
        (status = 200, description = "The report", content_type = "text/html", body = String),
        (status = 401, description = "An API key is required", body = ApiErrorBody),
        (status = 404, description = "The release has no report", body = ApiErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ("cookie" = []), ()))]
pub(crate) async fn gate_report_html(State(app): State<App>) -> Result<Response, ApiError> {
    gate_report(&app, "text/html; charset=utf-8", |r| &r.html)
}

/// The gate's report of the release being served (JSON, as the gate wrote it).
#[utoipa::path(get, path = "/v2/release/gate-report.json", tag = "catalogue",
    responses(
        (status = 200, description = "The report", body = Object),
        (status = 401, description = "An API key is required", body = ApiErrorBody),
        (status = 404, description = "The release has no report", body = ApiErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ("cookie" = []), ()))]
pub(crate) async fn gate_report_json(State(app): State<App>) -> Result<Response, ApiError> {
    gate_report(&app, "application/json", |r| &r.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(15_309), (2011, 12, 1));
        assert_eq!(civil(-1), (1969, 12, 31));
        assert_eq!(civil(11_016), (2000, 2, 29));
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let e = parse_query(Some("sort=price")).err().unwrap();
        assert_eq!(e.parameter.as_deref(), Some("sort"));
        let e = parse_query(Some("per_page=0")).err().unwrap();
        assert_eq!(e.parameter.as_deref(), Some("per_page"));
        let e = parse_query(Some("colour=red")).err().unwrap();
        assert_eq!(e.parameter.as_deref(), Some("colour"));
        let p = parse_query(Some("q=Heart++Holder&sort=stockcode")).unwrap();
        assert_eq!(p.words, vec!["heart", "holder"]);
        assert!(!p.desc);
    }
}
