//! End to end: the `price-lambda` binary against a fake Lambda runtime API on
//! loopback, fed real API Gateway event payloads; its answers equal the local
//! server's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(Default)]
struct Runtime {
    events: Mutex<VecDeque<(String, String)>>,
    responses: Mutex<Vec<(String, Value)>>,
    errors: Mutex<Vec<String>>,
}

async fn next(State(rt): State<Arc<Runtime>>) -> (HeaderMap, String) {
    loop {
        let popped = rt.events.lock().unwrap().pop_front();
        if let Some((id, body)) = popped {
            let mut h = HeaderMap::new();
            h.insert("lambda-runtime-aws-request-id", id.parse().unwrap());
            h.insert(
                "lambda-runtime-deadline-ms",
                "4102444800000".parse().unwrap(),
            );
            h.insert(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:price"
                    .parse()
                    .unwrap(),
            );
            h.insert("lambda-runtime-trace-id", "Root=1-0-0".parse().unwrap());
            return (h, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn response(State(rt): State<Arc<Runtime>>, Path(id): Path<String>, body: String) {
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    rt.responses.lock().unwrap().push((id, value));
}

async fn error(State(rt): State<Arc<Runtime>>, body: String) {
    rt.errors.lock().unwrap().push(body);
}

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/lambda")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rest_event(path: &str, query: &[(&str, &str)]) -> String {
    let mut e = fixture("apigw-rest-request.json");
    let stage = e["requestContext"]["stage"].as_str().unwrap().to_string();
    e["path"] = json!(path);
    e["httpMethod"] = json!("GET");
    e["pathParameters"] = json!({"proxy": &path[1..]});
    let q: serde_json::Map<String, Value> = query
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let mq: serde_json::Map<String, Value> = query
        .iter()
        .map(|(k, v)| (k.to_string(), json!([v])))
        .collect();
    e["queryStringParameters"] = Value::Object(q);
    e["multiValueQueryStringParameters"] = Value::Object(mq);
    e["requestContext"]["path"] = json!(format!("/{stage}{path}"));
    e["requestContext"]["httpMethod"] = json!("GET");
    e["body"] = Value::Null;
    e.to_string()
}

fn http_event(path: &str, query: &str) -> String {
    let mut e = fixture("apigw-http-v2-request.json");
    e["rawPath"] = json!(path);
    e["rawQueryString"] = json!(query);
    e["requestContext"]["http"]["path"] = json!(path);
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_binary_answers_api_gateway_events_like_the_server() {
    // Production artifacts from a smoke pipeline run on synthetic data.
    let scenario = testkit::Scenario::new(600);
    let artifacts = scenario.promoted("run").root().to_path_buf();
    let code = scenario.data.products[0].stock_code.clone();

    let rt = Arc::new(Runtime::default());
    rt.events.lock().unwrap().extend([
        (
            "req-rest".to_string(),
            rest_event(
                &format!("/v1/predict-price/{code}"),
                &[("num_price_bins", "15")],
            ),
        ),
        (
            "req-http".to_string(),
            http_event(&format!("/v1/predict-price/{code}"), "num_price_bins=15"),
        ),
        (
            "req-bad".to_string(),
            http_event(&format!("/v1/predict-price/{code}"), "unitprice_min=-1"),
        ),
    ]);
    let api = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(error))
        .with_state(rt.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, api).await.unwrap() });

    let _child = testkit::Kill(
        std::process::Command::new(env!("CARGO_BIN_EXE_price-lambda"))
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "price")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/price")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("PRICE_ARTIFACTS", &artifacts)
            .env_remove("REDIS_URL")
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rt.responses.lock().unwrap().len() < 3 {
        assert!(
            rt.errors.lock().unwrap().is_empty(),
            "{:?}",
            rt.errors.lock().unwrap()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no answers from the binary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The local server's answer to the same request.
    let app = serve::App::load(&serve::ServeConfig::new(artifacts.to_string_lossy())).unwrap();
    let local = app
        .router()
        .oneshot(
            axum::http::Request::get(format!("/v1/predict-price/{code}?num_price_bins=15"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let expected: Value =
        serde_json::from_slice(&local.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(expected.as_array().unwrap().len(), 15);

    let responses = rt.responses.lock().unwrap().clone();
    for (id, answer) in &responses {
        let status = answer["statusCode"].as_u64().unwrap();
        let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        match id.as_str() {
            "req-rest" | "req-http" => {
                assert_eq!(status, 200, "{id}: {answer}");
                assert_eq!(body, expected, "{id}");
                // REST answers carry headers as multiValueHeaders.
                let model = answer["headers"]["x-model"]
                    .as_str()
                    .or(answer["multiValueHeaders"]["x-model"][0].as_str());
                assert_eq!(model, Some("mlp"), "{id}: {answer}");
            }
            _ => {
                assert_eq!(status, 400, "{id}: {answer}");
                assert_eq!(body["parameter"], "unitprice_min");
            }
        }
    }
}
