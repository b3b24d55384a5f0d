//! The Lambda router driven with real event payloads (API Gateway REST, HTTP
//! API v2, Function URL): the same answers as the local server, errors as JSON,
//! and S3 artifacts staged to local disk once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::http::StatusCode;
use http_body_util::BodyExt;
use lineage::{ArtifactStore, Releases};
use serde_json::{Value, json};
use serve::{App, ServeConfig};
use testkit::{S3TestServer, call, get, serving_fixture};
use tower::ServiceExt;

#[derive(Clone, Copy, Debug)]
enum Kind {
    RestApi,
    HttpApi,
    FunctionUrl,
}

const ALL: [Kind; 3] = [Kind::RestApi, Kind::HttpApi, Kind::FunctionUrl];

fn fixture(kind: Kind) -> Value {
    let name = match kind {
        Kind::RestApi => "apigw-rest-request.json",
        Kind::HttpApi => "apigw-http-v2-request.json",
        Kind::FunctionUrl => "function-url-request.json",
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/lambda")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A real event payload of `kind`, rewritten to `method path?query` with `body`.
fn event(
    kind: Kind,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: Option<&str>,
) -> String {
    let mut e = fixture(kind);
    let params: serde_json::Map<String, Value> = query
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let multi: serde_json::Map<String, Value> = query
        .iter()
        .map(|(k, v)| (k.to_string(), json!([v])))
        .collect();
    let raw_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let body = body.map_or(Value::Null, |b| Value::String(b.into()));
    match kind {
        Kind::RestApi => {
            let stage = e["requestContext"]["stage"].as_str().unwrap().to_string();
            e["path"] = json!(path);
            e["httpMethod"] = json!(method);
            e["pathParameters"] = json!({"proxy": &path[1..]});
            e["queryStringParameters"] = if params.is_empty() {
                Value::Null
            } else {
                Value::Object(params)
            };
            e["multiValueQueryStringParameters"] = if multi.is_empty() {
                Value::Null
            } else {
                Value::Object(multi)
            };
            e["requestContext"]["path"] = json!(format!("/{stage}{path}"));
            e["requestContext"]["httpMethod"] = json!(method);
            e["body"] = body;
        }
        Kind::HttpApi | Kind::FunctionUrl => {
            e["rawPath"] = json!(path);
            e["rawQueryString"] = json!(raw_query);
            e["queryStringParameters"] = if params.is_empty() {
                Value::Null
            } else {
                Value::Object(params)
            };
            e["requestContext"]["http"]["method"] = json!(method);
            e["requestContext"]["http"]["path"] = json!(path);
            e["body"] = body;
            if let Some(h) = e["headers"].as_object_mut() {
                h.remove("content-length");
                h.insert("content-type".into(), json!("application/json"));
            }
        }
    }
    e.to_string()
}

async fn invoke(router: &axum::Router, event: &str) -> (StatusCode, axum::http::HeaderMap, Value) {
    let request = lambda_http::request::from_str(event).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    (parts.status, parts.headers, json)
}

fn app() -> App {
    App::load(&ServeConfig::new(serving_fixture().dir.to_string_lossy())).unwrap()
}

fn product() -> String {
    serving_fixture().data().products[1].stock_code.clone()
}

#[tokio::test]
async fn every_event_kind_gets_the_local_servers_answer() {
    let app = app();
    let server = app.router();
    let lambda = lambda::lambda_router(&app);
    let code = product();
    let path = format!("/v1/predict-price/{code}");
    let (_, _, expected) = call(
        &server,
        get(&format!("{path}?num_price_bins=12&country=France")),
    )
    .await;
    assert_eq!(expected.as_array().unwrap().len(), 12);
    for kind in ALL {
        let e = event(
            kind,
            "GET",
            &path,
            &[("num_price_bins", "12"), ("country", "France")],
            None,
        );
        let (status, headers, body) = invoke(&lambda, &e).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}: {body}");
        assert_eq!(body, expected, "{kind:?}");
        assert_eq!(headers["x-model"], "mlp", "{kind:?}");
    }
}

#[tokio::test]
async fn invocations_and_errors_through_events() {
    let app = app();
    let lambda = lambda::lambda_router(&app);
    let code = product();
    for kind in ALL {
        let body = format!(r#"{{"stockcode": "{code}", "num_price_bins": 4}}"#);
        let (status, _, rows) = invoke(
            &lambda,
            &event(kind, "POST", "/invocations", &[], Some(&body)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{kind:?}: {rows}");
        assert_eq!(rows.as_array().unwrap().len(), 4);

        let bad = event(
            kind,
            "GET",
            &format!("/v1/predict-price/{code}"),
            &[("num_price_bins", "5000")],
            None,
        );
        let (status, _, err) = invoke(&lambda, &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{kind:?}");
        assert_eq!(err["parameter"], "num_price_bins");

        let unknown = event(kind, "GET", "/v1/predict-price/99999ZZ", &[], None);
        let (status, _, err) = invoke(&lambda, &unknown).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{kind:?}");
        assert!(err["error"].as_str().unwrap().contains("99999ZZ"));
    }
}

#[tokio::test]
async fn the_console_and_its_routes_through_events() {
    let app = app();
    let lambda = lambda::lambda_router(&app);
    for kind in ALL {
        let (status, _, page) = invoke(
            &lambda,
            &event(kind, "GET", "/v2/products", &[("q", "heart")], None),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{kind:?}: {page}");
        // The search finds the product; its place in the ranking is the
        // model's (by expected uplift), not this test's.
        assert!(
            page["products"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["stockcode"] == "85123A")),
            "{kind:?}: {page}"
        );
        let (status, _, spec) =
            invoke(&lambda, &event(kind, "GET", "/openapi.json", &[], None)).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}");
        assert!(spec["paths"]["/v2/recommendation/{stockcode}"].is_object());
        let request = lambda_http::request::from_str(&event(kind, "GET", "/", &[], None)).unwrap();
        let response = lambda.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{kind:?}");
        let html = response.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&html).contains("<title>Pricing console</title>"),
            "{kind:?}"
        );
    }
}

/// Copies a local store's production pointer and its release to `remote`.
fn publish(local: &lineage::LocalStore, remote: &dyn ArtifactStore) -> lineage::Pointer {
    let pointer = Releases::new(local, None).production().unwrap().unwrap();
    for key in pointer.files.keys() {
        let full = Releases::key_in(&pointer.release, key);
        remote.put(&full, &local.get(&full).unwrap()).unwrap();
    }
    let info_key = Releases::key_in(&pointer.release, "release.json");
    remote
        .put(&info_key, &local.get(&info_key).unwrap())
        .unwrap();
    remote
        .put("production.json", &local.get("production.json").unwrap())
        .unwrap();
    pointer
}

#[test]
fn s3_releases_are_staged_once_by_id_and_serve_the_same_answers() {
    let s3 = S3TestServer::start("models").unwrap();
    let remote = s3.store("models", "prod/price").unwrap();
    let local = lineage::LocalStore::new(&serving_fixture().dir).unwrap();
    let pointer = publish(&local, &remote);
    let tmp = tempfile::tempdir().unwrap();
    let dir = lambda::stage_release(&remote, &pointer, tmp.path()).unwrap();
    assert_eq!(
        dir.file_name().unwrap().to_string_lossy(),
        format!("release-{}", pointer.release)
    );
    assert!(dir.join(".complete").exists());
    let staged = recommend::Recommender::load(&lineage::LocalStore::new(&dir).unwrap()).unwrap();
    let original = recommend::Recommender::load(&local).unwrap();
    assert_eq!(staged.release(), pointer.release);
    let request = recommend::PriceRequest::new(product()).bins(9);
    assert_eq!(
        staged.recommend(&request).unwrap(),
        original.recommend(&request).unwrap()
    );
    // A second cold start finds the copy complete: nothing is read again.
    let model_key = Releases::key_in(&pointer.release, "models/lightgbm/model.json");
    let model = remote.get(&model_key).unwrap();
    remote.delete(&model_key).unwrap();
    assert_eq!(
        lambda::stage_release(&remote, &pointer, tmp.path()).unwrap(),
        dir
    );
    // A file that does not match the pointer fails loudly, and nothing of
    // the bad copy is served.
    let other = tempfile::tempdir().unwrap();
    let mut corrupt = model.clone();
    corrupt.push(b' ');
    remote.put(&model_key, &corrupt).unwrap();
    let err = lambda::stage_release(&remote, &pointer, other.path()).unwrap_err();
    assert!(
        err.to_string().contains("models/lightgbm/model.json"),
        "{err}"
    );
    assert!(
        !other
            .path()
            .join(format!("release-{}/.complete", pointer.release))
            .exists()
    );
    remote.put(&model_key, &model).unwrap();

    // Another release is staged in a directory of its own, and the older
    // release's directory is removed.
    let mut moved = pointer.clone();
    moved.release = "0123456789abcdef".into();
    for key in pointer.files.keys() {
        let bytes = remote
            .get(&Releases::key_in(&pointer.release, key))
            .unwrap();
        remote
            .put(&Releases::key_in(&moved.release, key), &bytes)
            .unwrap();
    }
    let next = lambda::stage_release(&remote, &moved, tmp.path()).unwrap();
    assert_ne!(next, dir);
    assert!(
        !dir.exists(),
        "the older release's staging directory is removed"
    );
    assert!(next.join(".complete").exists());
}
