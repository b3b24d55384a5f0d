//! The pricing console and what it stands on: the page driven in headless
//! Chromium (search, product view, objective change, ranking, screenshots),
//! every route's real answers validated against `/openapi.json`, access
//! control with missing, wrong and revoked keys, request ids and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use serve::auth::hash_key;
use serve::{App, AuthConfig, ServeConfig, ServerLimits};
use testkit::{Browser, call, call_raw, get, serving_fixture};

const CODE: &str = "85123A";

fn config() -> ServeConfig {
    ServeConfig::new(serving_fixture().dir.to_string_lossy())
}

fn app(config: ServeConfig) -> App {
    App::load(&config).unwrap()
}

/// Serves `app` on a loopback port for the rest of the test.
async fn listen(app: &App) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = app.router();
    tokio::spawn(async move {
        serve::serve(
            listener,
            router,
            ServerLimits::default(),
            std::future::pending(),
        )
        .await
    });
    port
}

fn screenshots_dir() -> PathBuf {
    std::env::var_os("CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console"))
}

async fn v2(app: &App, query: &str) -> Value {
    let (status, _, body) = call(
        &app.router(),
        get(&format!("/v2/recommendation/{CODE}{query}")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn text(browser: &Browser, css: &str) -> String {
    browser
        .wait_for(css, 10)
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn attr(browser: &Browser, css: &str, name: &str) -> Option<String> {
    browser
        .wait_for(css, 10)
        .await
        .unwrap()
        .attr(name)
        .await
        .unwrap()
}

async fn count(browser: &Browser, css: &str) -> usize {
    browser
        .client
        .find_all(fantoccini::Locator::Css(css))
        .await
        .unwrap()
        .len()
}

/// Waits until the product view has rendered an answer whose objective
/// caption contains `caption`.
async fn wait_product(browser: &Browser, caption: &str) {
    for _ in 0..200 {
        let ready = browser
            .client
            .execute(
                "const v = document.getElementById('product-view'); \
                 return v.dataset.state === 'ready' && !v.hidden && \
                 document.getElementById('objective-caption').textContent;",
                vec![],
            )
            .await
            .unwrap();
        if ready.as_str().is_some_and(|c| c.contains(caption)) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the product view never showed `{caption}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_finds_a_product_shows_its_curves_and_follows_the_objective() {
    let app = app(config());
    let port = listen(&app).await;
    let base = format!("http://127.0.0.1:{port}");
    let products = app.recommender().health().products;
    let browser = Browser::start(1280, 1000).await.unwrap();
    let c = &browser.client;

    // The ranking view (the landing page) lists every product.
    c.goto(&format!("{base}/")).await.unwrap();
    browser
        .wait_for("#ranking-view[data-state=ready]", 20)
        .await
        .unwrap();
    assert_eq!(
        attr(&browser, "#ranking-table", "data-total").await,
        Some(products.to_string())
    );
    assert_eq!(
        count(&browser, "#ranking-table tr[data-code]").await,
        products
    );
    browser
        .screenshot(&screenshots_dir().join("ranking-desktop.png"))
        .await
        .unwrap();

    // Search "heart", open 85123A.
    let search = browser.wait_for("#search", 5).await.unwrap();
    search.send_keys("heart").await.unwrap();
    browser
        .wait_for("#search-form button[type=submit]", 5)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let link = browser
        .wait_for(&format!("#search-results a[href='#/product/{CODE}']"), 10)
        .await
        .unwrap();
    assert!(link.text().await.unwrap().contains("HEART"));
    link.click().await.unwrap();
    wait_product(&browser, "Revenue").await;

    // The curves are drawn, with their band and the two price markers.
    for chart in ["demand-chart", "objective-chart"] {
        assert_eq!(
            count(&browser, &format!("#{chart} svg path[data-series]")).await,
            1
        );
        assert_eq!(
            count(&browser, &format!("#{chart} svg polygon[data-band]")).await,
            1
        );
        assert_eq!(
            count(&browser, &format!("#{chart} svg line[data-marker]")).await,
            2
        );
    }
    let points = attr(&browser, "#demand-chart svg path[data-series]", "d")
        .await
        .unwrap();
    let expected = v2(&app, "").await;
    let n_curve = expected["curve"].as_array().unwrap().len();
    assert_eq!(
        points.matches('L').count() + 1,
        n_curve,
        "one vertex per grid price"
    );

    // The recommended price shown is the /v2 answer's.
    let shown: f64 = attr(&browser, "#recommended-price", "data-value")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(shown, expected["optimal_unit_price"].as_f64().unwrap());
    assert_eq!(
        text(&browser, "#recommended-price").await,
        format!("£{:.2}", shown)
    );
    let url = browser
        .wait_for("#url-v2", 5)
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(url, format!("{base}/v2/recommendation/{CODE}"));
    // The sales history is drawn once it arrives.
    browser
        .wait_for("#history-chart svg rect", 10)
        .await
        .unwrap();
    // The whole page: a tall window for the screenshot.
    c.set_window_size(1280, 2300).await.unwrap();
    browser
        .screenshot(&screenshots_dir().join("product-desktop.png"))
        .await
        .unwrap();
    c.set_window_size(1280, 1000).await.unwrap();

    // Profit with a unit cost, from the catalogue's current price: the
    // answer updates to the /v2 answer for them.
    let objective = browser.wait_for("#objective", 5).await.unwrap();
    objective.select_by_value("profit").await.unwrap();
    let cost = browser.wait_for("#unit_cost", 5).await.unwrap();
    cost.clear().await.unwrap();
    cost.send_keys("1.5").await.unwrap();
    let current = browser.wait_for("#current_price", 5).await.unwrap();
    current.clear().await.unwrap();
    current.send_keys("2.5").await.unwrap();
    browser
        .wait_for("#controls button[type=submit]", 5)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_product(&browser, "Profit").await;
    let profit = v2(&app, "?objective=profit&unit_cost=1.5&current_price=2.5").await;
    let shown: f64 = attr(&browser, "#recommended-price", "data-value")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(shown, profit["optimal_unit_price"].as_f64().unwrap());
    assert_eq!(
        attr(&browser, "#unit-cost", "data-value").await.as_deref(),
        Some("1.5")
    );
    assert_eq!(
        attr(&browser, "#current-price", "data-value")
            .await
            .as_deref(),
        Some("2.5")
    );
    let url = browser
        .wait_for("#url-v1", 5)
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        url,
        format!("{base}/v1/predict-price/{CODE}?objective=profit&unit_cost=1.5&current_price=2.5")
    );

    // A phone-width window shows the same answer, laid out in one column.
    c.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    browser
        .screenshot(&screenshots_dir().join("product-phone.png"))
        .await
        .unwrap();
    let columns = c
        .execute(
            "return getComputedStyle(document.querySelector('.layout')).gridTemplateColumns.split(' ').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(columns.as_u64(), Some(1));

    // Keyboard: the controls are reachable by Tab (no focus trap, labels).
    let labelled = c
        .execute(
            "return [...document.querySelectorAll('#controls input, #controls select')].every(e => document.querySelector(`label[for=${e.id}]`))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(labelled.as_bool(), Some(true), "every control has a label");
    eprintln!("console screenshots in {}", screenshots_dir().display());
    browser.close().await;
}

/// The response schema the description gives for `method path status`.
fn response_schema<'a>(
    spec: &'a Value,
    method: &str,
    path: &str,
    status: u16,
) -> Option<&'a Value> {
    let r = &spec["paths"][path][method]["responses"][status.to_string()];
    if r.is_null() {
        return None;
    }
    Some(
        r["content"]
            .as_object()
            .and_then(|c| c.values().next())
            .map_or(&Value::Null, |c| &c["schema"]),
    )
}

fn content_types(spec: &Value, method: &str, path: &str, status: u16) -> Vec<String> {
    spec["paths"][path][method]["responses"][status.to_string()]["content"]
        .as_object()
        .map(|c| c.keys().cloned().collect())
        .unwrap_or_default()
}

fn validate(spec: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let schema = response_schema(spec, method, path, status)
        .unwrap_or_else(|| panic!("{method} {path} {status} is not in the description"));
    let mut schema = schema.clone();
    schema["components"] = spec["components"].clone();
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{method} {path} {status}: schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: the answer does not match the description:\n{}",
        errors.join("\n")
    );
}

#[tokio::test]
async fn every_route_answers_as_its_openapi_description_says() {
    let app = app(config());
    let router = app.router();
    let (status, _, spec) = call(&router, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let sid = serving_fixture().data().products[1].stock_code.clone();

    // (method, template, uri, body, status)
    let invocation = serde_json::json!({"stockcode": CODE, "num_price_bins": 5}).to_string();
    let cases: Vec<(&str, &str, String, Option<String>, u16)> = vec![
        ("get", "/ping", "/ping".into(), None, 200),
        ("get", "/health", "/health".into(), None, 200),
        (
            "get",
            "/v1/predict-price/{stockcode}",
            format!("/v1/predict-price/{CODE}"),
            None,
            200,
        ),
        (
            "get",
            "/v1/predict-price/{stockcode}",
            format!("/v1/predict-price/{CODE}?num_price_bins=x"),
            None,
            400,
        ),
        (
            "get",
            "/v1/predict-price/{stockcode}",
            "/v1/predict-price/NOPE".into(),
            None,
            404,
        ),
        (
            "get",
            "/v2/recommendation/{stockcode}",
            format!("/v2/recommendation/{CODE}"),
            None,
            200,
        ),
        (
            "get",
            "/v2/recommendation/{stockcode}",
            format!(
                "/v2/recommendation/{sid}?objective=profit&unit_cost=0.5&max_change=0.1&price_ending=99&basis=week&min_margin=0.2"
            ),
            None,
            200,
        ),
        (
            "get",
            "/v2/recommendation/{stockcode}",
            format!("/v2/recommendation/{CODE}?objective=loss"),
            None,
            400,
        ),
        (
            "get",
            "/v2/recommendation/{stockcode}",
            "/v2/recommendation/NOPE".into(),
            None,
            404,
        ),
        (
            "post",
            "/invocations",
            "/invocations".into(),
            Some(invocation),
            200,
        ),
        (
            "post",
            "/invocations",
            "/invocations".into(),
            Some("{not json".into()),
            400,
        ),
        (
            "post",
            "/invocations",
            "/invocations".into(),
            Some(format!(
                "{{\"stockcode\":\"{CODE}\",\"pad\":\"{}\"}}",
                "x".repeat(20_000)
            )),
            413,
        ),
        (
            "get",
            "/v2/products",
            "/v2/products?q=heart&sort=lines".into(),
            None,
            200,
        ),
        (
            "get",
            "/v2/products",
            "/v2/products?sort=price".into(),
            None,
            400,
        ),
        (
            "get",
            "/v2/products.csv",
            "/v2/products.csv".into(),
            None,
            200,
        ),
        (
            "get",
            "/v2/products.csv",
            "/v2/products.csv?order=up".into(),
            None,
            400,
        ),
        (
            "get",
            "/v2/products/{stockcode}/history",
            format!("/v2/products/{CODE}/history"),
            None,
            200,
        ),
        (
            "get",
            "/v2/products/{stockcode}/history",
            "/v2/products/NOPE/history".into(),
            None,
            404,
        ),
        ("get", "/v2/release", "/v2/release".into(), None, 200),
        (
            "get",
            "/v2/release/gate-report",
            "/v2/release/gate-report".into(),
            None,
            200,
        ),
        (
            "get",
            "/v2/release/gate-report.json",
            "/v2/release/gate-report.json".into(),
            None,
            200,
        ),
        ("get", "/", "/".into(), None, 200),
        (
            "get",
            "/assets/{file}",
            "/assets/console.js".into(),
            None,
            200,
        ),
        ("get", "/assets/{file}", "/assets/nope.js".into(), None, 404),
        ("get", "/login", "/login".into(), None, 200),
        ("post", "/login", "/login".into(), Some("key=x".into()), 200),
        (
            "post",
            "/logout",
            "/logout".into(),
            Some(String::new()),
            303,
        ),
        ("get", "/openapi.json", "/openapi.json".into(), None, 200),
        ("get", "/docs", "/docs".into(), None, 200),
        ("get", "/metrics", "/metrics".into(), None, 200),
        // Access control is off here: admin operations are refused.
        (
            "post",
            "/admin/reload",
            "/admin/reload".into(),
            Some(String::new()),
            403,
        ),
        (
            "post",
            "/admin/cache/clear",
            "/admin/cache/clear".into(),
            Some(String::new()),
            403,
        ),
    ];
    let mut seen = BTreeSet::new();
    for (method, template, uri, body, expected) in cases {
        let request = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(&uri)
            .header(
                "content-type",
                if template == "/login" {
                    "application/x-www-form-urlencoded"
                } else {
                    "application/json"
                },
            )
            .body(body.map_or_else(Body::empty, Body::from))
            .unwrap();
        let (status, headers, bytes) = call_raw(&router, request).await;
        assert_eq!(
            status.as_u16(),
            expected,
            "{method} {uri}: {}",
            String::from_utf8_lossy(&bytes)
        );
        seen.insert(format!("{method} {template}"));
        let content_type = headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let documented = content_types(&spec, method, template, expected);
        if expected == 303 {
            assert!(
                response_schema(&spec, method, template, 303).is_some(),
                "{method} {template} 303"
            );
            continue;
        }
        assert!(
            documented
                .iter()
                .any(|d| content_type.starts_with(d.as_str())),
            "{method} {uri}: content type {content_type} is not one of {documented:?}"
        );
        if content_type.starts_with("application/json") {
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            validate(&spec, method, template, expected, &body);
        }
    }
    // Every documented operation was exercised.
    let documented: BTreeSet<String> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| format!("{m} {path}"))
        })
        .collect();
    assert_eq!(documented, seen, "documented operations vs exercised ones");
    // The error shape is one schema, used by every error answer.
    assert!(spec["components"]["schemas"]["ApiErrorBody"].is_object());
    // The docs page lists every path.
    let (_, _, docs) = call_raw(&router, get("/docs")).await;
    let docs = String::from_utf8(docs).unwrap();
    for path in spec["paths"].as_object().unwrap().keys() {
        assert!(
            docs.contains(&path.replace('&', "&amp;")),
            "{path} missing from /docs"
        );
    }
}

#[tokio::test]
async fn the_ranking_lists_every_product_and_the_csv_matches() {
    let app = app(config());
    let router = app.router();
    let products = app.recommender().health().products;
    let (status, _, page) = call(&router, get("/v2/products?per_page=1000")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"].as_u64(), Some(products as u64));
    let rows = page["products"].as_array().unwrap();
    assert_eq!(rows.len(), products);
    // Sorted by expected uplift, largest first; every row priced.
    let uplifts: Vec<f64> = rows
        .iter()
        .map(|r| {
            assert!(r["error"].is_null(), "{r}");
            r["uplift"]["value"].as_f64().unwrap()
        })
        .collect();
    assert!(uplifts.windows(2).all(|w| w[0] >= w[1]), "{uplifts:?}");
    // Each row is that product's /v2 answer at the default request.
    let top = &rows[0];
    let code = top["stockcode"].as_str().unwrap();
    let (_, _, answer) = call(&router, get(&format!("/v2/recommendation/{code}"))).await;
    assert_eq!(top["recommended_price"], answer["optimal_unit_price"]);
    assert_eq!(top["uplift"], answer["uplift"]["absolute"]);
    // Paging and search.
    let (_, _, p2) = call(&router, get("/v2/products?per_page=7&page=2")).await;
    assert_eq!(p2["products"][0]["stockcode"], rows[7]["stockcode"]);
    let (_, _, found) = call(&router, get("/v2/products?q=heart%20holder")).await;
    assert_eq!(found["products"][0]["stockcode"].as_str(), Some(CODE));
    let (_, _, busy) = call(&router, get("/v2/products?min_lines=100&per_page=1000")).await;
    let busy = busy["products"].as_array().unwrap();
    assert!(!busy.is_empty() && busy.len() < products, "{}", busy.len());
    assert!(busy.iter().all(|r| r["lines"].as_f64().unwrap() >= 100.0));
    let (_, _, exact) = call(&router, get(&format!("/v2/products?q={CODE}"))).await;
    assert_eq!(exact["products"][0]["stockcode"].as_str(), Some(CODE));
    // The CSV has every product, in the same order.
    let (status, headers, csv) = call_raw(&router, get("/v2/products.csv")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let csv = String::from_utf8(csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), products + 1);
    assert!(lines[0].starts_with("stockcode,description,"));
    assert!(lines[1].starts_with(&format!("{code},")));
}

fn keyed_config() -> ServeConfig {
    let mut c = config();
    c.auth = AuthConfig::from_toml(
        &format!(
            "[[keys]]\nname = \"team\"\nsha256 = \"{}\"\n\n[[keys]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"admin\"\n\n[[keys]]\nname = \"former\"\nsha256 = \"{}\"\nrevoked = true\n",
            hash_key("team-key"),
            hash_key("ops-key"),
            hash_key("former-key"),
        ),
        "test keys",
    )
    .unwrap();
    c
}

fn with_header(method: &str, uri: &str, name: &str, value: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(name, value)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn api_keys_missing_wrong_revoked_and_admin() {
    let app = app(keyed_config());
    let router = app.router();
    let uri = format!("/v2/recommendation/{CODE}");

    let (status, _, body) = call(&router, get("/ping")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );

    let (status, headers, body) = call(&router, get(&uri)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"].as_str().unwrap().contains("required"),
        "{body}"
    );
    assert!(headers.contains_key("www-authenticate"));

    let (status, _, body) = call(&router, with_header("GET", &uri, "x-api-key", "guess")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"].as_str().unwrap().contains("not valid"),
        "{body}"
    );

    let (status, _, body) = call(
        &router,
        with_header("GET", &uri, "authorization", "Bearer former-key"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("`former` was revoked"),
        "{body}"
    );

    for (name, value) in [
        ("authorization", "Bearer team-key"),
        ("x-api-key", "team-key"),
    ] {
        let (status, _, body) = call(&router, with_header("GET", &uri, name, value)).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
    }

    // Every route but /ping needs a key: the console, metrics, docs too.
    for path in ["/", "/metrics", "/openapi.json", "/v2/products", "/health"] {
        let (status, _, _) = call_raw(&router, get(path)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }

    // State changes need an admin key.
    let (status, _, body) = call(
        &router,
        with_header("POST", "/admin/cache/clear", "x-api-key", "team-key"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["error"].as_str().unwrap().contains("`team`"), "{body}");
    let (status, _, body) = call(
        &router,
        with_header("POST", "/admin/cache/clear", "x-api-key", "ops-key"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["removed"].as_u64().is_some());
    let (status, _, body) = call(
        &router,
        with_header("POST", "/admin/reload", "authorization", "Bearer ops-key"),
    )
    .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("unchanged"))
    );

    // A person at the console gets the login form, and a cookie from it.
    let (status, _, page) = call_raw(&router, with_header("GET", "/", "accept", "text/html")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        String::from_utf8(page)
            .unwrap()
            .contains("<form method=post action=\"/login\">")
    );
    let login = |key: &str| {
        Request::builder()
            .method("POST")
            .uri("/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!("key={key}")))
            .unwrap()
    };
    let (status, _, page) = call_raw(&router, login("former-key")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8(page).unwrap().contains("was revoked"));
    let (status, headers, _) = call_raw(&router, login("team-key")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let (status, _, body) = call(&router, with_header("GET", "/v2/release", "cookie", pair)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Refusals are counted by reason.
    let (_, _, metrics) = call_raw(
        &router,
        with_header("GET", "/metrics", "x-api-key", "team-key"),
    )
    .await;
    let metrics = String::from_utf8(metrics).unwrap();
    for reason in ["missing", "wrong", "revoked", "forbidden"] {
        assert!(
            metrics.contains(&format!("http_auth_denied_total{{reason=\"{reason}\"}}")),
            "{reason} not counted:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn requests_carry_ids_and_are_counted_in_metrics() {
    let app = app(config());
    let router = app.router();
    let uri = format!("/v2/recommendation/{CODE}?num_price_bins=9");
    let (_, headers, _) = call_raw(
        &router,
        with_header("GET", &uri, "x-request-id", "order-42"),
    )
    .await;
    assert_eq!(headers["x-request-id"], "order-42");
    let (_, headers, _) = call_raw(&router, get(&uri)).await;
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 16, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    // A header that is not a plain id is replaced.
    let (_, headers, _) =
        call_raw(&router, with_header("GET", &uri, "x-request-id", "a b<c>")).await;
    assert_ne!(headers["x-request-id"], "a b<c>");
    let (_, _, _) = call_raw(&router, get("/nope")).await;

    let (status, headers, metrics) = call_raw(&router, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let metrics = String::from_utf8(metrics).unwrap();
    let release = app.recommender().release().to_string();
    for line in [
        "http_requests_total{method=\"GET\",route=\"/v2/recommendation/{stockcode}\",status=\"200\"} 3".to_string(),
        "http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1".to_string(),
        "http_request_duration_seconds_bucket{route=\"/v2/recommendation/{stockcode}\",status=\"200\",le=\"+Inf\"} 3".to_string(),
        "price_cache_requests_total{cache=\"miss\"}".to_string(),
        format!("price_release_info{{release=\"{release}\""),
        "price_shed_requests_total 0".to_string(),
    ] {
        assert!(metrics.contains(&line), "missing `{line}` in\n{metrics}");
    }
}
