//! The `serve` binary: starts on a store's production release, answers over
//! TCP with a Redis cache, follows the production pointer on SIGHUP, refuses
//! bad configuration with a clear error, and `--cache-clear` removes only its
//! own keys. Uses the Redis at `REDIS_URL` (`.ci/run` starts one) or starts a
//! private redis-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{Kill, RedisServer, Scenario, fast_params, free_port, http_get, redis_command};

/// The shared Redis of `.ci/run`, or a private one.
fn redis() -> (String, u16, Option<RedisServer>) {
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            let port = url
                .trim_end_matches('/')
                .rsplit(':')
                .next()
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or(6379);
            (url, port, None)
        }
        Err(_) => {
            let server = RedisServer::start().expect("redis-server (scripts/setup.sh installs it)");
            (server.url.clone(), server.port, Some(server))
        }
    }
}

#[test]
fn the_server_binary_serves_with_redis_reloads_on_sighup_and_clears_only_its_keys() {
    let scenario = Scenario::new(600);
    let store = scenario.promoted("run");
    let artifacts = store.root().to_path_buf();
    let (redis_url, redis_port, _private) = redis();
    let prefix = format!("serve-binary-test-{}:", std::process::id());
    let foreign = format!("another-service-{}", std::process::id());
    redis_command(redis_port, &["SET", &foreign, "1"]).unwrap();

    let port = free_port();
    let serve = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_serve"));
        c.arg("--artifacts")
            .arg(&artifacts)
            .args(["--redis-url", &redis_url, "--cache-prefix", &prefix])
            .args(["--reload-interval-secs", "3600"])
            .args(extra)
            .env("RUST_LOG", "warn");
        c
    };
    let server = Kill(
        serve(&["--port", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    testkit::wait_for_ping(port, 30);
    let code = &scenario.data.products[0].stock_code;
    let uri = format!("/v1/predict-price/{code}?num_price_bins=10");
    let first = http_get(port, &uri).unwrap();
    assert_eq!(
        (first.status, first.header("x-cache")),
        (200, Some("miss")),
        "{}",
        first.body
    );
    let release = first.header("x-release").unwrap().to_string();
    let rows: serde_json::Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 10);
    let mut hit = false;
    for _ in 0..100 {
        if http_get(port, &uri).unwrap().header("x-cache") == Some("hit") {
            hit = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(hit, "second request never hit Redis");
    assert_eq!(
        http_get(port, "/v1/predict-price/NOPE1?num_price_bins=10")
            .unwrap()
            .status,
        404
    );

    // A new release is promoted; SIGHUP makes the server check the pointer
    // at once (the interval is an hour), and answers carry the new release.
    let mut params = fast_params();
    params.set("models.seed", 7).unwrap();
    scenario.run(&store, params).unwrap();
    let promoted = lineage::Releases::new(&store, None)
        .production()
        .unwrap()
        .unwrap()
        .release;
    assert_ne!(promoted, release);
    let hup = Command::new("kill")
        .args(["-HUP", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let started = Instant::now();
    loop {
        let a = http_get(port, &uri).unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        if a.header("x-release") == Some(promoted.as_str()) {
            // A new release never reads the old release's cache entries.
            assert_eq!(a.header("x-cache"), Some("miss"));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "SIGHUP did not reload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let health: serde_json::Value =
        serde_json::from_str(&http_get(port, "/health").unwrap().body).unwrap();
    assert_eq!(health["release"], promoted.as_str());
    assert_eq!(health["status"], "ok");

    let out = serve(&["--cache-clear"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("redis cache entries"), "{said}");
    assert_eq!(
        redis_command(redis_port, &["EXISTS", &foreign]).unwrap(),
        ":1\r\n"
    );
    redis_command(redis_port, &["DEL", &foreign]).unwrap();
    assert_eq!(
        http_get(port, &uri).unwrap().header("x-cache"),
        Some("miss")
    );
}

#[test]
fn bad_configuration_is_a_clear_error_not_a_panic() {
    let scenario = Scenario::new(300);
    let store = scenario.promoted("run");
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_serve"));
        c.arg("--artifacts")
            .arg(store.root())
            .args(["--port", &free_port().to_string()])
            .args(args)
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "error");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    for (env, args, needle) in [
        (vec![("CORS_ORIGINS", "*")], vec![], "CORS_ORIGINS: `*`"),
        (
            vec![("CORS_ORIGINS", "https://ok.example,shop.example/path")],
            vec![],
            "shop.example/path",
        ),
        (
            vec![],
            vec!["--reload-interval-secs", "0"],
            "RELOAD_INTERVAL_SECS",
        ),
        (vec![], vec!["--max-concurrent", "0"], "MAX_CONCURRENT"),
        (
            vec![("PRICE_API_KEYS", "team:owner:00")],
            vec![],
            "role `owner`",
        ),
        (
            vec![],
            vec!["--api-keys", "/nonexistent/keys.toml"],
            "/nonexistent/keys.toml",
        ),
    ] {
        let out = run(&env, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{env:?} {args:?}: {err}");
        assert!(err.contains(needle), "{env:?} {args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A store without a production release says what to do.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_serve"))
        .arg("--artifacts")
        .arg(empty.path())
        .args(["--port", &free_port().to_string()])
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no production release"), "{err}");
}

#[test]
fn json_request_logs_name_the_route_status_model_release_and_key_holder() {
    use std::io::{BufRead, Write};
    let scenario = Scenario::new(300);
    let store = scenario.promoted("run");
    let port = free_port();
    // The key's hash, as an operator computes it.
    let mut hasher = Command::new(env!("CARGO_BIN_EXE_serve"))
        .arg("--hash-api-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    hasher
        .stdin
        .take()
        .unwrap()
        .write_all(b"secret-key\n")
        .unwrap();
    let out = hasher.wait_with_output().unwrap();
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(hash, serve::auth::hash_key("secret-key"));

    let mut child = Command::new(env!("CARGO_BIN_EXE_serve"))
        .arg("--artifacts")
        .arg(store.root())
        .args([
            "--port",
            &port.to_string(),
            "--log-format",
            "json",
            "--no-cache",
        ])
        .env_remove("REDIS_URL")
        .env("PRICE_API_KEYS", format!("pricing:read:{hash}"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = Kill(child);
    testkit::wait_for_ping(port, 30);
    let code = &scenario.data.products[0].stock_code;
    let uri = format!("/v2/recommendation/{code}");
    let denied = http_get(port, &uri).unwrap();
    assert_eq!(denied.status, 401, "{}", denied.body);
    {
        use std::io::{Read, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET {uri} HTTP/1.1\r\nHost: localhost\r\nx-api-key: secret-key\r\nx-request-id: trace-7\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    }
    drop(server);
    let lines: Vec<serde_json::Value> = std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let requests: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "serve::request" && l["path"] == uri.as_str())
        .collect();
    assert_eq!(requests.len(), 2, "{lines:#?}");
    assert_eq!(requests[0]["status"], 401);
    assert_eq!(requests[0]["key"], "-");
    let ok = requests[1];
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["request_id"], "trace-7");
    assert_eq!(ok["route"], "/v2/recommendation/{stockcode}");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["cache"], "off");
    assert_eq!(ok["key"], "pricing");
    assert!(ok["model"].as_str().is_some_and(|m| m != "-"), "{ok}");
    assert!(
        ok["release"].as_str().is_some_and(|r| r.len() == 16),
        "{ok}"
    );
    assert!(ok["latency_ms"].as_f64().is_some_and(|l| l > 0.0), "{ok}");
}
