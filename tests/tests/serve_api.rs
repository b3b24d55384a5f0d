//! The HTTP API over real artifacts of a smoke pipeline run: the original's
//! `/v1` rows, the `/v2` recommendation, health, CORS, every bad input → the
//! right 4xx with a JSON error, and failover to a backup model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use serve::{App, CacheConfig, ServeConfig};
use testkit::{call, copy_dir, get, production_release, serving_fixture};

fn app(config: ServeConfig) -> App {
    App::load(&config).unwrap()
}

fn default_app() -> App {
    app(ServeConfig::new(serving_fixture().dir.to_string_lossy()))
}

/// The best-selling synthetic product (always in the artifacts).
fn product() -> String {
    let data = serving_fixture().data();
    data.products
        .iter()
        .max_by(|a, b| a.base_quantity.total_cmp(&b.base_quantity))
        .unwrap()
        .stock_code
        .clone()
}

/// The candidate prices of a `/v2` answer's curve, in order.
fn curve_prices(rec: &Value) -> Vec<f64> {
    rec["curve"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["unit_price"].as_f64().unwrap())
        .collect()
}

#[tokio::test]
async fn v1_returns_the_original_rows_with_one_optimal_price_in_the_grid() {
    let router = default_app().router();
    let code = product();
    let (status, headers, body) = call(&router, get(&format!("/v1/predict-price/{code}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows = body.as_array().unwrap();
    assert_eq!(rows.len(), 100);
    let fields = [
        "stockcode",
        "unit_price",
        "quantity",
        "quantity_min",
        "quantity_max",
        "predicted_sales",
        "optimal_unit_price",
        "max_predicted_sales",
    ];
    for row in rows {
        let obj = row.as_object().unwrap();
        assert_eq!(obj.len(), fields.len());
        for f in &fields[1..] {
            let v = obj[*f].as_f64().unwrap_or_else(|| panic!("{f} in {row}"));
            assert!(v.is_finite() && v >= 0.0, "{f} = {v}");
        }
        assert_eq!(obj["stockcode"], Value::String(code.clone()));
        let (q, lo, hi) = (
            obj["quantity_min"].as_f64().unwrap(),
            obj["quantity"].as_f64().unwrap(),
            obj["quantity_max"].as_f64().unwrap(),
        );
        assert!(q <= hi, "p10 {q} above p90 {hi}");
        assert!(lo >= 0.0);
        let sales = obj["unit_price"].as_f64().unwrap() * obj["quantity"].as_f64().unwrap();
        assert!((sales - obj["predicted_sales"].as_f64().unwrap()).abs() < 1e-9);
    }
    let optimal: Vec<f64> = rows
        .iter()
        .map(|r| r["optimal_unit_price"].as_f64().unwrap())
        .collect();
    assert!(
        optimal.windows(2).all(|w| w[0] == w[1]),
        "one optimal price"
    );
    // The recommendation is one of the rows (the price whose uplift over
    // the current price is best at the response's decision quantile), and
    // `max_predicted_sales` is that row's predicted sales.
    let chosen = rows
        .iter()
        .find(|r| r["unit_price"].as_f64() == Some(optimal[0]))
        .unwrap_or_else(|| panic!("the optimal price {} is not a row", optimal[0]));
    assert_eq!(
        chosen["predicted_sales"].as_f64(),
        rows[0]["max_predicted_sales"].as_f64()
    );
    // The curve is weekly demand (the default basis) and never rises with price.
    let quantities: Vec<f64> = rows
        .iter()
        .map(|r| r["quantity"].as_f64().unwrap())
        .collect();
    assert!(
        quantities.windows(2).all(|w| w[1] <= w[0] + 1e-9),
        "{quantities:?}"
    );
    let prices: Vec<f64> = rows
        .iter()
        .map(|r| r["unit_price"].as_f64().unwrap())
        .collect();
    assert!(prices.windows(2).all(|w| w[0] < w[1]), "increasing grid");
    assert!(optimal[0] >= prices[0] && optimal[0] <= prices[99]);
    assert_eq!(headers["x-model"], "mlp");
    assert_eq!(headers["x-cache"], "miss");
    assert!(!headers["x-model-version"].is_empty());
}

#[tokio::test]
async fn v2_reports_grid_model_and_cache_status_and_honours_parameters() {
    let router = default_app().router();
    let code = product();
    let uri = format!(
        "/v2/recommendation/{code}?unitprice_min=1.0&unitprice_max=3.0&num_price_bins=21&country=France&customerid=12345"
    );
    let (status, _, first) = call(&router, get(&uri)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["cache"], "miss");
    assert_eq!(first["curve"].as_array().unwrap().len(), 21);
    assert_eq!(first["grid"]["unitprice_min"], 1.0);
    assert_eq!(first["grid"]["unitprice_max"], 3.0);
    assert_eq!(first["grid"]["rule"], "as requested");
    assert_eq!(first["model"], "mlp");
    assert!(first["failovers"].as_array().unwrap().is_empty());
    assert!(first["contexts"].as_u64().unwrap() > 0);
    // The cache write happens in the background.
    let mut second = Value::Null;
    for _ in 0..50 {
        second = call(&router, get(&uri)).await.2;
        if second["cache"] == "hit" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(second["cache"], "hit");
    assert_eq!(second["curve"], first["curve"]);
    // Cache-Control: no-cache recomputes, with the same answer.
    let req = Request::get(&uri)
        .header("cache-control", "no-cache")
        .body(Body::empty())
        .unwrap();
    let (_, headers, third) = call(&router, req).await;
    assert_eq!(headers["x-cache"], "bypass");
    assert_eq!(third["curve"], first["curve"]);
    // Default grid: the product's 5th-95th observed price percentiles.
    let (_, _, auto) = call(&router, get(&format!("/v2/recommendation/{code}"))).await;
    assert!(
        auto["grid"]["rule"]
            .as_str()
            .unwrap()
            .contains("5th-95th percentile"),
        "{}",
        auto["grid"]
    );
}

#[tokio::test]
async fn invocations_answers_like_v1() {
    let router = default_app().router();
    let code = product();
    let (_, _, v1) = call(
        &router,
        get(&format!("/v1/predict-price/{code}?num_price_bins=10")),
    )
    .await;
    let req = Request::post("/invocations")
        .header("content-type", "application/json")
        .body(Body::from(format!(
            r#"{{"stockcode": "{code}", "num_price_bins": 10}}"#
        )))
        .unwrap();
    let (status, _, body) = call(&router, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, v1);
}

#[tokio::test]
async fn ping_and_health() {
    let router = default_app().router();
    let (status, _, body) = call(&router, get("/ping")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, headers, body) = call(&router, get("/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["model"], "mlp");
    assert_eq!(
        body["backups"],
        serde_json::json!(["lightgbm", "svr", "elastic_net"])
    );
    assert_eq!(
        headers["x-model-version"].to_str().ok(),
        body["model_version"].as_str()
    );
    assert_eq!(body["cache"], "memory");
}

#[tokio::test]
async fn every_bad_input_gets_the_right_4xx_with_a_json_error() {
    let mut config = ServeConfig::new(serving_fixture().dir.to_string_lossy());
    config.body_limit = 1024;
    let router = app(config).router();
    let code = product();
    let cases: Vec<(String, StatusCode, Option<&str>)> = vec![
        (
            "/v1/predict-price/99999ZZ".into(),
            StatusCode::NOT_FOUND,
            Some("stockcode"),
        ),
        (
            "/v2/recommendation/99999ZZ".into(),
            StatusCode::NOT_FOUND,
            Some("stockcode"),
        ),
        (
            "/v1/predict-price/85123A%2A".into(),
            StatusCode::BAD_REQUEST,
            Some("stockcode"),
        ),
        (
            "/v1/predict-price/..%2F..%2Fetc".into(),
            StatusCode::BAD_REQUEST,
            Some("stockcode"),
        ),
        (
            "/v1/predict-price/ABCDEFGHIJKLMNOPQRS".into(),
            StatusCode::BAD_REQUEST,
            Some("stockcode"),
        ),
        (
            format!("/v1/predict-price/{code}?unitprice_min=abc"),
            StatusCode::BAD_REQUEST,
            Some("unitprice_min"),
        ),
        (
            format!("/v1/predict-price/{code}?unitprice_max=NaN"),
            StatusCode::BAD_REQUEST,
            Some("unitprice_max"),
        ),
        (
            format!("/v1/predict-price/{code}?unitprice_min=inf"),
            StatusCode::BAD_REQUEST,
            Some("unitprice_min"),
        ),
        (
            format!("/v1/predict-price/{code}?unitprice_min=-2"),
            StatusCode::BAD_REQUEST,
            Some("unitprice_min"),
        ),
        (
            format!("/v1/predict-price/{code}?unitprice_min=5&unitprice_max=2"),
            StatusCode::BAD_REQUEST,
            Some("unitprice_min"),
        ),
        (
            format!("/v1/predict-price/{code}?num_price_bins=1"),
            StatusCode::BAD_REQUEST,
            Some("num_price_bins"),
        ),
        (
            format!("/v1/predict-price/{code}?num_price_bins=1001"),
            StatusCode::BAD_REQUEST,
            Some("num_price_bins"),
        ),
        (
            format!("/v1/predict-price/{code}?num_price_bins=ten"),
            StatusCode::BAD_REQUEST,
            Some("num_price_bins"),
        ),
        (
            format!("/v1/predict-price/{code}?customerid=x1"),
            StatusCode::BAD_REQUEST,
            Some("customerid"),
        ),
        (
            format!("/v1/predict-price/{code}?country=%3Cscript%3E"),
            StatusCode::BAD_REQUEST,
            Some("country"),
        ),
        (
            format!("/v1/predict-price/{code}?bins=10"),
            StatusCode::BAD_REQUEST,
            Some("query"),
        ),
        (
            format!("/v2/recommendation/{code}?unitprice_max=0"),
            StatusCode::BAD_REQUEST,
            Some("unitprice_max"),
        ),
        (
            format!("/v2/recommendation/{code}?current_price=-1"),
            StatusCode::BAD_REQUEST,
            Some("current_price"),
        ),
        ("/v3/anything".into(), StatusCode::NOT_FOUND, None),
        ("/v1/predict-price/".into(), StatusCode::NOT_FOUND, None),
    ];
    for (uri, expected, parameter) in cases {
        let (status, _, body) = call(&router, get(&uri)).await;
        assert_eq!(status, expected, "{uri}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{uri}: {body}"
        );
        assert_eq!(body["parameter"].as_str(), parameter, "{uri}: {body}");
        assert_eq!(body["status"].as_u64(), Some(u64::from(expected.as_u16())));
    }

    let post = |body: Body| {
        Request::post("/invocations")
            .header("content-type", "application/json")
            .body(body)
            .unwrap()
    };
    let bodies: Vec<(Body, StatusCode, &str)> = vec![
        (Body::from("{not json"), StatusCode::BAD_REQUEST, "body"),
        (Body::from("[1, 2]"), StatusCode::BAD_REQUEST, "body"),
        (
            Body::from(r#"{"unitprice_min": 1}"#),
            StatusCode::BAD_REQUEST,
            "stockcode",
        ),
        (
            Body::from(format!(r#"{{"stockcode": "{code}", "num_price_bins": 0}}"#)),
            StatusCode::BAD_REQUEST,
            "num_price_bins",
        ),
        (
            Body::from(format!(
                r#"{{"stockcode": "{code}", "unitprice_min": [1]}}"#
            )),
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            Body::from(r#"{"stockcode": "99999ZZ"}"#),
            StatusCode::NOT_FOUND,
            "stockcode",
        ),
        (
            Body::from(format!(
                r#"{{"stockcode": "{code}", "pad": "{}"}}"#,
                "x".repeat(4096)
            )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
        ),
    ];
    for (body, expected, parameter) in bodies {
        let (status, _, json) = call(&router, post(body)).await;
        assert_eq!(status, expected, "{json}");
        assert_eq!(json["parameter"].as_str(), Some(parameter), "{json}");
    }

    let (status, _, body) = call(
        &router,
        Request::delete("/ping").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert!(body["error"].as_str().is_some());
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let mut config = ServeConfig::new(serving_fixture().dir.to_string_lossy());
    config.cors_origins = vec!["https://shop.example".into()];
    let router = app(config).router();
    let with_origin = |origin: &str| {
        Request::get("/ping")
            .header("origin", origin)
            .body(Body::empty())
            .unwrap()
    };
    let (_, headers, _) = call(&router, with_origin("https://shop.example")).await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://shop.example"
    );
    let (_, headers, _) = call(&router, with_origin("https://evil.example")).await;
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_corrupted_primary_model_is_skipped_and_answers_say_which_model_served() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&serving_fixture().dir, dir.path()).unwrap();
    let (release, _) = production_release(&lineage::LocalStore::new(dir.path()).unwrap());
    let weights = release.join("models/mlp/weights.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&weights, bytes).unwrap();

    let mut config = ServeConfig::new(dir.path().to_string_lossy());
    config.cache = CacheConfig::Off;
    let router = app(config).router();
    let (status, headers, body) =
        call(&router, get(&format!("/v1/predict-price/{}", product()))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-model"], "lightgbm");
    assert_eq!(headers["x-cache"], "off");
    assert_eq!(body.as_array().unwrap().len(), 100);
    let (_, _, health) = call(&router, get("/health")).await;
    assert_eq!(health["model"], "lightgbm");
    let skipped = health["skipped_at_load"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["kind"], "mlp");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("weights.safetensors"),
        "{health}"
    );
}

#[tokio::test]
async fn library_answer_equals_the_api_answer() {
    let app = default_app();
    let code = product();
    let rec = app
        .recommender()
        .recommend(&recommend::PriceRequest::new(code.clone()).bins(30))
        .unwrap();
    let (_, _, body) = call(
        &app.router(),
        get(&format!("/v1/predict-price/{code}?num_price_bins=30")),
    )
    .await;
    assert_eq!(body, serde_json::to_value(rec.legacy_rows()).unwrap());
}

#[tokio::test]
async fn every_served_curve_is_non_increasing_in_price() {
    let app = default_app();
    let recommender = app.recommender();
    let data = serving_fixture().data();
    let mut checked = 0;
    for p in &data.products {
        if !recommender.knows(&p.stock_code) {
            continue;
        }
        for request in [
            recommend::PriceRequest::new(p.stock_code.clone()).basis(recommend::Basis::Week),
            recommend::PriceRequest::new(p.stock_code.clone()).basis(recommend::Basis::Line),
            // Beyond the prices it sold at: extrapolated, still monotone.
            recommend::PriceRequest::new(p.stock_code.clone())
                .price_range(0.01, 200.0)
                .bins(400),
        ] {
            let rec = recommender.recommend(&request).unwrap();
            for w in rec.curve.windows(2) {
                assert!(
                    w[1].quantity <= w[0].quantity + 1e-9
                        && w[1].weekly_units <= w[0].weekly_units + 1e-9
                        && w[1].line_quantity <= w[0].line_quantity + 1e-9,
                    "{}: demand rises from {} to {}",
                    p.stock_code,
                    w[0].unit_price,
                    w[1].unit_price
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 3 * data.products.len() / 2, "checked {checked}");
}

#[tokio::test]
async fn v2_says_current_price_uplift_bounds_and_elasticity() {
    let app = default_app();
    let router = app.router();
    let code = product();
    let (status, _, rec) = call(
        &router,
        get(&format!("/v2/recommendation/{code}?num_price_bins=60")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rec}");
    let current = rec["current_price"].as_f64().unwrap();
    assert!(current > 0.0);
    assert_eq!(rec["current_price_source"], "latest sales");
    assert_eq!(rec["basis"], "week");
    assert_eq!(rec["objective"], "revenue");
    let e = &rec["elasticity"]["current"];
    assert!(e["lo"].as_f64().unwrap() <= e["value"].as_f64().unwrap());
    assert!(e["value"].as_f64().unwrap() <= e["hi"].as_f64().unwrap());
    assert!(e["hi"].as_f64().unwrap() <= 0.0);
    let u = &rec["uplift"]["absolute"];
    assert!(u["lo"].as_f64().unwrap() <= u["hi"].as_f64().unwrap());
    let band = &rec["band"];
    assert_eq!(band["nominal"], 0.8);
    for p in rec["curve"].as_array().unwrap() {
        assert!(p["weekly_units_lo"].as_f64().unwrap() <= p["weekly_units"].as_f64().unwrap());
        assert!(p["weekly_units"].as_f64().unwrap() <= p["weekly_units_hi"].as_f64().unwrap());
    }

    // Profit with a unit cost, a ±5 % bound on the change, 0.05 steps.
    let (status, _, rec) = call(
        &router,
        get(&format!(
            "/v2/recommendation/{code}?objective=profit&unit_cost={:.2}&max_change=0.05&price_ending=0.05",
            current * 0.5
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rec}");
    let price = rec["optimal_unit_price"].as_f64().unwrap();
    assert!(
        (price - current).abs() <= 0.05 * current + 1e-9,
        "{price} vs {current}"
    );
    assert_eq!(((price * 100.0).round() as i64) % 5, 0, "{price}");
    assert_eq!(rec["unit_cost_source"], "request");
    for p in rec["curve"].as_array().unwrap() {
        let (pr, profit) = (
            p["unit_price"].as_f64().unwrap(),
            p["weekly_profit"].as_f64().unwrap(),
        );
        let units = p["weekly_units"].as_f64().unwrap();
        assert!((profit - (pr - current * 0.5) * units).abs() < 1e-6);
    }
    // max_change alone: the grid is the allowed range around the current
    // price, the current price is one of its prices, and an answer on the
    // grid's edge names the bound.
    let (status, _, rec) = call(
        &router,
        get(&format!("/v2/recommendation/{code}?max_change=0.1")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rec}");
    let (lo, hi) = (
        rec["grid"]["unitprice_min"].as_f64().unwrap(),
        rec["grid"]["unitprice_max"].as_f64().unwrap(),
    );
    // The grid as searched: the range's whole pence, rounded inward, which
    // are the curve's first and last prices.
    let whole_pence = |x: f64| ((x * 100.0).round() / 100.0 - x).abs() < 1e-12;
    assert!(
        lo >= 0.9 * current - 1e-9 && lo < 0.9 * current + 0.01 && whole_pence(lo),
        "{lo} for a lower bound of {}",
        0.9 * current
    );
    assert!(
        hi <= 1.1 * current + 1e-9 && hi > 1.1 * current - 0.01 && whole_pence(hi),
        "{hi} for an upper bound of {}",
        1.1 * current
    );
    let prices = curve_prices(&rec);
    assert_eq!(prices.len(), 100);
    assert_eq!((prices[0], prices[99]), (lo, hi));
    assert_eq!(rec["grid"]["num_price_bins"], 100);
    assert!(prices.contains(&current), "{current} not in {prices:?}");
    let price = rec["optimal_unit_price"].as_f64().unwrap();
    assert!(rec["at_grid_edge"].is_null(), "{rec}");
    if price == lo || price == hi {
        assert_eq!(rec["active_bound"], "max_change", "{rec}");
    }
    // The shop's own current price, from its catalogue: the answer, the
    // grid around it and the "keep the price" candidate follow it.
    let given = ((current * 1.13) * 100.0).round() / 100.0;
    let (status, _, rec) = call(
        &router,
        get(&format!(
            "/v2/recommendation/{code}?max_change=0.1&current_price={given}"
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rec}");
    assert_eq!(rec["current_price"].as_f64(), Some(given), "{rec}");
    assert_eq!(rec["current_price_source"], "request");
    let prices = curve_prices(&rec);
    assert!(prices.contains(&given), "{given} not in {prices:?}");
    let (lo, hi) = (prices[0], prices[prices.len() - 1]);
    assert!(
        lo >= 0.9 * given - 1e-9 && hi <= 1.1 * given + 1e-9,
        "{lo}..{hi} around {given}"
    );
    let price = rec["optimal_unit_price"].as_f64().unwrap();
    let uplift = rec["uplift"]["absolute"]["value"].as_f64().unwrap();
    if price == given {
        assert!(uplift.abs() < 1e-9, "{rec}");
    }
    // A minimum margin above what the grid allows is a clear 400.
    let (status, _, err) = call(
        &router,
        get(&format!(
            "/v2/recommendation/{code}?unit_cost={:.2}&min_margin=0.9&unitprice_max={:.2}",
            current,
            current * 1.5
        )),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["parameter"], "min_margin");
    // Profit without any cost is a 400 naming the parameter.
    let (status, _, err) = call(
        &router,
        get(&format!("/v2/recommendation/{code}?objective=profit")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["parameter"], "objective");
}
