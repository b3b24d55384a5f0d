//! The `serve` binary: starts on pipeline artifacts, answers over TCP with a
//! Redis cache, and `--cache-clear` removes only its own keys. Uses the Redis
//! at `REDIS_URL` (`.ci/run` starts one) or starts a private redis-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One RESP command with arguments; returns the raw first reply line.
fn redis(port: u16, args: &[&str]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

/// `GET path` over HTTP/1.1; returns status, the x-cache header and the body.
fn http_get(port: u16, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let cache = head
        .lines()
        .find_map(|l| l.strip_prefix("x-cache: "))
        .unwrap_or("")
        .to_string();
    (status, cache, body.to_string())
}

#[test]
fn the_server_binary_serves_with_redis_and_clears_only_its_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let data = etl::synth::generate(&etl::synth::SynthConfig {
        n_invoices: 600,
        ..Default::default()
    });
    let raw = tmp.path().join("raw.csv");
    std::fs::write(&raw, &data.csv).unwrap();
    let artifacts = tmp.path().join("run");
    let store = lineage::LocalStore::new(&artifacts).unwrap();
    pipeline::run(&pipeline::PipelineConfig::new(
        raw,
        &store,
        pipeline::smoke_params(),
    ))
    .unwrap();

    // Redis: the shared one of .ci/run, or a private one.
    let (redis_url, redis_port, _private) = match std::env::var("REDIS_URL") {
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
            let port = free_port();
            let child = Command::new("redis-server")
                .args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                ])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server (scripts/setup.sh installs it)");
            let started = Instant::now();
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(started.elapsed() < Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(20));
            }
            (
                format!("redis://127.0.0.1:{port}/"),
                port,
                Some(Kill(child)),
            )
        }
    };
    let prefix = format!("serve-binary-test-{}:", std::process::id());
    let foreign = format!("another-service-{}", std::process::id());
    redis(redis_port, &["SET", &foreign, "1"]);

    let port = free_port();
    let serve = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_serve"));
        c.arg("--artifacts")
            .arg(&artifacts)
            .args(["--redis-url", &redis_url, "--cache-prefix", &prefix])
            .args(extra)
            .env("RUST_LOG", "warn");
        c
    };
    let started = Instant::now();
    let _server = Kill(
        serve(&["--port", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "server not listening"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let code = &data.products[0].stock_code;
    let uri = format!("/v1/predict-price/{code}?num_price_bins=10");
    let (status, cache, body) = http_get(port, &uri);
    assert_eq!((status, cache.as_str()), (200, "miss"), "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 10);
    let mut hit = false;
    for _ in 0..100 {
        if http_get(port, &uri).1 == "hit" {
            hit = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(hit, "second request never hit Redis");
    let (status, _, body) = http_get(port, "/v1/predict-price/NOPE1?num_price_bins=10");
    assert_eq!(status, 404, "{body}");

    let out = serve(&["--cache-clear"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("removed 1 redis cache entries"), "{said}");
    assert_eq!(redis(redis_port, &["EXISTS", &foreign]), ":1\r\n");
    redis(redis_port, &["DEL", &foreign]);
    assert_eq!(http_get(port, &uri).1, "miss");
}
