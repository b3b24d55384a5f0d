//! The fault-injection suite (`cargo xtask faults`; also part of `cargo
//! test`). Each case breaks something — the gate, the process, the lock, the
//! release files, the S3 stand-in, Redis, the disk — and checks that nothing
//! is lost and production is unchanged (or switched exactly as asked).
//!
//! Small synthetic data throughout; the real CLI binary where a process must
//! die, the serving library in-process otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use lineage::{ArtifactStore, LocalStore, Releases};
use serve::{App, CacheConfig, ReloadOutcome, ServeConfig, StoreSource, WorkLimits};
use testkit::{
    Kill, RedisServer, S3TestServer, Scenario, call, call_raw, fast_cli_args, fast_params, get,
};

/// `cargo xtask ARGS` (the smoke budget for `pipeline`).
fn xtask(args: &[&str], extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args);
    if args.first() == Some(&"pipeline") {
        cmd.args(fast_cli_args());
    }
    cmd.args(extra).env_remove("RUST_LOG").output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A pipeline process whose log says when each stage starts.
fn spawn_pipeline(raw: &Path, out: &Path, extra: &[&str]) -> Kill {
    let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["pipeline", "--raw"])
        .arg(raw)
        .arg("--out")
        .arg(out)
        .args(fast_cli_args())
        .args(extra)
        .env("RUST_LOG", "lineage=info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Kill(child)
}

/// Reads the child's log until `stage` starts running; false if it exited first.
fn wait_for_stage(child: &mut Child, stage: &str) -> bool {
    let Some(stderr) = child.stderr.as_mut() else {
        return false;
    };
    let needle = format!("stage={stage} ");
    let mut reader = BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {
                if line.contains("will run") && line.contains(&needle) {
                    return true;
                }
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn serve_config(dir: &Path) -> ServeConfig {
    let mut c = ServeConfig::new(dir.to_string_lossy());
    c.cache = CacheConfig::Off;
    c
}

/// The `/v1` body of every product, as bytes, from a freshly loaded server.
fn answers(dir: &Path, codes: &[String]) -> Vec<Vec<u8>> {
    let app = App::load(&serve_config(dir)).unwrap();
    let router = app.router();
    runtime().block_on(async {
        let mut out = Vec::new();
        for code in codes {
            let (status, _, body) = call_raw(
                &router,
                get(&format!("/v1/predict-price/{code}?num_price_bins=20")),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{}", text(&body));
            out.push(body);
        }
        out
    })
}

fn codes(scenario: &Scenario) -> Vec<String> {
    scenario
        .data
        .products
        .iter()
        .map(|p| p.stock_code.clone())
        .collect()
}

/// Another export of the same shop: new data for a new candidate.
fn new_export(scenario: &Scenario, invoices: usize) -> PathBuf {
    testkit::write_synthetic(
        scenario.dir(),
        "new.csv",
        &etl::synth::SynthConfig {
            seed: 7,
            n_invoices: invoices,
            ..Default::default()
        },
    )
    .unwrap()
    .0
}

#[test]
fn a_blocked_run_after_a_good_one_changes_nothing_production_serves() {
    let scenario = Scenario::new(500);
    let out = scenario.dir().join("run");
    let o = xtask(
        &[
            "pipeline",
            "--raw",
            scenario.raw.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let codes = codes(&scenario);
    let before = answers(&out, &codes);
    let pointer = std::fs::read(out.join("production.json")).unwrap();

    // A changed seed with the gate enforced at a threshold nothing meets.
    let o = xtask(
        &[
            "pipeline",
            "--raw",
            scenario.raw.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[
            "--set",
            "models.seed=43",
            "--set",
            "gate.override=false",
            "--set",
            "gate.max_abs_mean_outcome_difference=0.0",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).contains("promotion gate failed"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(out.join("production.json")).unwrap(), pointer);
    // A server started afresh answers every product byte for byte as before.
    assert_eq!(answers(&out, &codes), before);

    // Both releases are listed with their verdicts (the small data drifts, so
    // the first went through by the smoke runs' override).
    let listed = xtask(&["releases", "--out", out.to_str().unwrap()], &[]);
    let listing = text(&listed.stdout);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(
        listing.contains("PRODUCTION") && listing.contains("fairness"),
        "{listing}"
    );
    let json = xtask(&["releases", "--out", out.to_str().unwrap(), "--json"], &[]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let verdicts: Vec<&str> = json["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            match (
                r["verdict"]["passed"].as_bool(),
                r["verdict"]["overridden"].as_bool(),
            ) {
                (Some(true), _) => "passed",
                (_, Some(true)) => "overridden",
                _ => "blocked",
            }
        })
        .collect();
    assert_eq!(verdicts.len(), 2, "{json}");
    assert_ne!(verdicts[0], "blocked");
    assert_eq!(verdicts[1], "blocked");
    assert_eq!(json["production"]["release"], json["releases"][0]["id"]);
}

#[test]
fn sigkill_in_each_stage_leaves_production_serving_and_a_rerun_completes() {
    let scenario = Scenario::new(600);
    let out = scenario.dir().join("run");
    let o = xtask(
        &[
            "pipeline",
            "--raw",
            scenario.raw.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let codes = codes(&scenario);
    let before = answers(&out, &codes);
    let pointer = std::fs::read(out.join("production.json")).unwrap();
    let raw = new_export(&scenario, 700);

    for stage in ["etl", "features", "split", "models", "response", "gate"] {
        let mut child = spawn_pipeline(&raw, &out, &[]);
        assert!(
            wait_for_stage(&mut child.0, stage),
            "the run ended before {stage} started"
        );
        child.0.kill().unwrap(); // SIGKILL
        let _ = child.0.wait();
        assert_eq!(
            std::fs::read(out.join("production.json")).unwrap(),
            pointer,
            "killed in {stage}: production moved"
        );
        assert_eq!(answers(&out, &codes), before, "killed in {stage}");
    }

    // The next run finishes what the killed ones left, and the gate (here
    // overridden, as in every smoke run) moves production to the new release.
    let o = xtask(
        &[
            "pipeline",
            "--raw",
            raw.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let store = LocalStore::new(&out).unwrap();
    let releases = Releases::new(&store, None);
    let now = releases.production().unwrap().unwrap();
    let old: lineage::Pointer = serde_json::from_slice(&pointer).unwrap();
    assert_ne!(now.release, old.release);
    assert_eq!(now.previous.as_deref(), Some(old.release.as_str()));
    releases
        .verify(&releases.info(&now.release).unwrap())
        .unwrap();
    // Incomplete releases of killed gates are garbage; gc removes them and
    // keeps production and its predecessor.
    let o = xtask(&["gc", "--keep", "0", "--out", out.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let left: Vec<String> = releases.list().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&now.release) && left.contains(&old.release));
    assert_eq!(
        std::fs::read_dir(out.join("releases")).unwrap().count(),
        2,
        "no incomplete release directory is left"
    );
}

#[test]
fn a_second_run_on_a_locked_store_fails_at_once_naming_the_holder() {
    let scenario = Scenario::new(600);
    let out = scenario.dir().join("run");
    let mut first = spawn_pipeline(&scenario.raw, &out, &[]);
    assert!(wait_for_stage(&mut first.0, "features"));
    let holder = format!("pid {}", first.0.id());

    let started = Instant::now();
    let o = xtask(
        &[
            "pipeline",
            "--raw",
            scenario.raw.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(started.elapsed() < Duration::from_secs(10), "it waited");
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("run lock") && err.contains(&holder), "{err}");
    assert!(
        err.contains("cargo xtask pipeline") && err.contains("since"),
        "{err}"
    );
    for args in [
        vec!["promote", "0123456789abcdef", "--reason", "x"],
        vec!["rollback", "--reason", "x"],
        vec!["gc", "--keep", "1"],
    ] {
        let mut args = args;
        args.extend(["--out", out.to_str().unwrap()]);
        let o = xtask(&args, &[]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&holder), "{args:?}: {err}");
    }
    // The holder crashes: the kernel drops its lock, and the next run goes.
    first.0.kill().unwrap();
    let _ = first.0.wait();
    let o = xtask(
        &[
            "pipeline",
            "--raw",
            scenario.raw.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn an_s3_lease_blocks_a_second_holder_and_lapses_when_its_holder_dies() {
    let server = S3TestServer::start("bkt").unwrap();
    let store = server.store("bkt", "shop").unwrap();
    let lock = store.lock("first", Duration::from_secs(60)).unwrap();
    let err = store
        .lock("second", Duration::from_secs(60))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`first`") && err.contains("since"), "{err}");
    drop(lock);
    let again = store.lock("third", Duration::from_secs(60)).unwrap();
    drop(again);
    assert!(
        !store.exists(lineage::LEASE_KEY).unwrap(),
        "released leases are deleted"
    );

    // A holder that died without releasing: its lease names it until it lapses.
    let mut dead = lineage::LockHolder::current("crashed run");
    dead.expires_at_unix_ms = Some(lineage::runlock::now_unix_ms() + 2000);
    store
        .put(lineage::LEASE_KEY, &serde_json::to_vec(&dead).unwrap())
        .unwrap();
    let err = store
        .lock("next", Duration::from_secs(60))
        .unwrap_err()
        .to_string();
    assert!(err.contains("crashed run"), "{err}");
    std::thread::sleep(Duration::from_millis(2100));
    let taken = store.lock("next", Duration::from_secs(60)).unwrap();
    assert_eq!(taken.holder().command, "next");
    // A live holder renews (every third of its lease): with a 1 s lease, it
    // still holds after 3 s.
    drop(taken);
    let live = store.lock("renewing", Duration::from_secs(1)).unwrap();
    std::thread::sleep(Duration::from_millis(3000));
    let err = store
        .lock("late", Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("renewing"), "{err}");
    drop(live);
}

#[test]
fn corrupted_or_truncated_release_files_are_refused_and_a_bad_hot_reload_keeps_the_old_release() {
    let scenario = Scenario::new(500);
    let store = scenario.promoted("run");
    let dir = store.root().to_path_buf();
    let releases = Releases::new(&store, None);
    let a = releases.production().unwrap().unwrap();
    let code = scenario.top_product();
    let uri = format!("/v2/recommendation/{code}?num_price_bins=9");

    let rt = runtime();
    let app = App::load(&serve_config(&dir)).unwrap();
    let router = app.router();
    let (status, headers, before) = rt.block_on(call(&router, get(&uri)));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-release"], a.release.as_str());

    // A new release, promoted, with its contexts file truncated on disk.
    let mut p = fast_params();
    p.set("models.seed", 5).unwrap();
    scenario.run(&store, p).unwrap();
    let b = releases.production().unwrap().unwrap();
    assert_ne!(a.release, b.release);
    let contexts = dir
        .join("releases")
        .join(&b.release)
        .join("features/product_contexts.parquet");
    let bytes = std::fs::read(&contexts).unwrap();
    std::fs::write(&contexts, &bytes[..bytes.len() / 2]).unwrap();

    // Hot reload refuses it; the old release keeps answering the same.
    let outcome = rt.block_on(app.reload());
    let ReloadOutcome::Refused(refused) = outcome else {
        panic!("expected a refusal, got {outcome:?}")
    };
    assert_eq!(refused.release, b.release);
    assert!(
        refused.reason.contains("product_contexts.parquet"),
        "{}",
        refused.reason
    );
    let (status, headers, after) = rt.block_on(call(&router, get(&uri)));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-release"], a.release.as_str());
    assert_eq!(after, before);
    let (_, _, health) = rt.block_on(call(&router, get("/health")));
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["release"], a.release.as_str());
    assert_eq!(health["reload"]["refused"]["release"], b.release.as_str());

    // A fresh server will not start on it, and says which file is wrong.
    let err = App::load(&serve_config(&dir)).unwrap_err();
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(chain.contains("product_contexts.parquet"), "{chain}");
    // Nobody can promote a corrupt release either (here: re-promote after a rollback).
    pipeline::rollback(&store, None, "B is corrupt").unwrap();
    let err = pipeline::promote(&store, None, &b.release, "try again")
        .unwrap_err()
        .to_string();
    assert!(err.contains("product_contexts.parquet"), "{err}");
    // Back on A: the refusal is cleared.
    assert_eq!(rt.block_on(app.reload()), ReloadOutcome::Unchanged);
    let (_, _, health) = rt.block_on(call(&router, get("/health")));
    assert_eq!(health["status"], "ok");

    // A corrupted model file: that model is skipped with the reason, the next serves.
    let model = dir
        .join("releases")
        .join(&a.release)
        .join("models/mlp/model.json");
    let mut bytes = std::fs::read(&model).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&model, bytes).unwrap();
    let app = App::load(&serve_config(&dir)).unwrap();
    let health = app.recommender().health();
    assert_eq!(health.model, "lightgbm");
    assert!(health.skipped[0].reason.contains("models/mlp/model.json"));
}

/// A store that calls back when a key with `prefix` is first written.
struct Tripwire<S> {
    inner: S,
    prefix: &'static str,
    on_trip: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl<S: ArtifactStore> ArtifactStore for Tripwire<S> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, key: &str, bytes: &[u8]) -> lineage::Result<String> {
        if key.starts_with(self.prefix)
            && let Some(trip) = self.on_trip.lock().unwrap().take()
        {
            trip();
        }
        self.inner.put(key, bytes)
    }
    fn get(&self, key: &str) -> lineage::Result<Vec<u8>> {
        self.inner.get(key)
    }
    fn hash(&self, key: &str) -> lineage::Result<Option<String>> {
        self.inner.hash(key)
    }
    fn list(&self, prefix: &str) -> lineage::Result<Vec<String>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> lineage::Result<()> {
        self.inner.delete(key)
    }
    fn lock(&self, command: &str, lease: Duration) -> lineage::Result<lineage::RunLock> {
        self.inner.lock(command, lease)
    }
}

#[test]
fn the_s3_stand_in_stopped_mid_run_or_at_serving_start_loses_nothing() {
    let scenario = Scenario::new(500);
    let server = Arc::new(Mutex::new(S3TestServer::start("shop").unwrap()));
    let s3 = server.lock().unwrap().store("shop", "prices").unwrap();
    let mut config = scenario.config(&s3, fast_params());
    config.lease = Duration::from_secs(2);
    pipeline::run(&config).unwrap();
    let root = server.lock().unwrap().root().join("shop/prices");
    let pointer = std::fs::read(root.join("production.json")).unwrap();
    let code = scenario.top_product();

    // Serving from S3 in place.
    let rt = runtime();
    let source = Arc::new(StoreSource::new(Box::new(
        server.lock().unwrap().store("shop", "prices").unwrap(),
    )));
    let app = App::from_source(&serve_config(Path::new("unused")), source.clone()).unwrap();
    let router = app.router();
    let uri = format!("/v1/predict-price/{code}?num_price_bins=9");
    let (_, _, before) = rt.block_on(call_raw(&router, get(&uri)));

    // A new run; the server stops while the models stage writes.
    let raw = new_export(&scenario, 600);
    let stopper = server.clone();
    let tripwire = Tripwire {
        inner: server.lock().unwrap().store("shop", "prices").unwrap(),
        prefix: "models/",
        on_trip: Mutex::new(Some(Box::new(move || stopper.lock().unwrap().stop()))),
    };
    let mut config = pipeline::PipelineConfig::new(raw.clone(), &tripwire, fast_params());
    config.lease = Duration::from_secs(2);
    let started = Instant::now();
    let err = pipeline::run(&config).unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the failure took {:?}",
        started.elapsed()
    );
    assert!(err.contains("s3://shop/prices"), "{err}");
    assert_eq!(
        std::fs::read(root.join("production.json")).unwrap(),
        pointer
    );

    // While S3 is down: a reload check fails, the loaded release keeps
    // answering, and a server that starts now fails with a clear error.
    assert!(matches!(
        rt.block_on(app.reload()),
        ReloadOutcome::PointerUnreadable(_)
    ));
    let (status, _, during) = rt.block_on(call_raw(&router, get(&uri)));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(during, before);
    let started = Instant::now();
    let err = App::from_source(&serve_config(Path::new("unused")), source.clone()).unwrap_err();
    let err = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(err.contains("s3://shop/prices"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );

    // S3 is back; the dead run's lease lapses (2 s) and the rerun completes.
    server.lock().unwrap().restart().unwrap();
    let s3 = server.lock().unwrap().store("shop", "prices").unwrap();
    let mut config = pipeline::PipelineConfig::new(raw, &s3, fast_params());
    config.lease = Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match pipeline::run(&config) {
            Ok(_) => break,
            Err(e) if e.to_string().contains("run lock") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_ne!(
        std::fs::read(root.join("production.json")).unwrap(),
        pointer
    );
    assert!(matches!(
        rt.block_on(app.reload()),
        ReloadOutcome::Swapped(_)
    ));
}

#[test]
fn redis_killed_under_load_fails_no_request() {
    let scenario = Scenario::new(400);
    let store = scenario.promoted("run");
    let mut redis = RedisServer::start().unwrap();
    let mut config = ServeConfig::new(store.root().to_string_lossy());
    config.request_timeout = Duration::from_secs(10);
    config.cache = CacheConfig::Redis {
        url: redis.url.clone(),
        timeout: Duration::from_millis(50),
    };
    config.cache_prefix = "faults:".into();
    // Enough slots that nothing is shed: this case is about Redis.
    config.work = WorkLimits {
        max_concurrent: 8,
        max_waiting: 64,
        retry_after_secs: 1,
    };
    let rt = runtime();
    let app = rt
        .block_on(async { tokio::task::spawn_blocking(move || App::load(&config)).await })
        .unwrap()
        .unwrap();
    let router = app.router();
    let code = scenario.top_product();
    let statuses = rt.block_on(async {
        let load = {
            let router = router.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for round in 0..50 {
                    if round == 15 {
                        // Redis dies mid-load.
                        redis.stop();
                    }
                    let mut handles = Vec::new();
                    for i in 0..8 {
                        let router = router.clone();
                        let uri = format!(
                            "/v1/predict-price/{code}?num_price_bins={}",
                            2 + (round * 8 + i) % 20
                        );
                        handles.push(tokio::spawn(async move {
                            let (s, h, _) = call_raw(&router, get(&uri)).await;
                            (
                                s,
                                h.get("x-cache")
                                    .map(|v| v.to_str().unwrap_or("").to_string()),
                            )
                        }));
                    }
                    for h in handles {
                        statuses.push(h.await.unwrap());
                    }
                }
                statuses
            })
        };
        load.await.unwrap()
    });
    assert_eq!(statuses.len(), 400);
    let failed: Vec<_> = statuses
        .iter()
        .filter(|(s, _)| *s != StatusCode::OK)
        .collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        statuses.iter().any(|(_, c)| c.as_deref() == Some("hit")),
        "hits before the kill"
    );
    assert!(
        statuses.iter().any(|(_, c)| c.as_deref() == Some("error")),
        "errors after it"
    );
}

/// A size-limited directory: a tmpfs of `bytes` (needs root), unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, bytes: u64) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_bytes(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_full_disk_fails_the_run_cleanly_and_production_keeps_serving() {
    let scenario = Scenario::new(400);
    // How much a promoted store takes, measured on ordinary disk.
    let probe = scenario.promoted("probe");
    let need = dir_bytes(probe.root());
    let mount_point = scenario.dir().join("disk");
    // Room for the first run and a third of a second one.
    let Some(disk) = SmallDisk::mount(&mount_point, need + need / 3 + (256 << 10)) else {
        // Without root no tmpfs can be mounted: emulate a full disk with a
        // per-process file-size limit (writes past it fail with EFBIG).
        return full_disk_by_rlimit(&scenario);
    };
    let out = disk.dir.join("run");
    let o = xtask(
        &[
            "pipeline",
            "--raw",
            scenario.raw.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let codes = codes(&scenario);
    let before = answers(&out, &codes);
    let pointer = std::fs::read(out.join("production.json")).unwrap();

    let raw = new_export(&scenario, 500);
    let o = xtask(
        &[
            "pipeline",
            "--raw",
            raw.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(std::fs::read(out.join("production.json")).unwrap(), pointer);
    assert_eq!(answers(&out, &codes), before);
    let temp_files: Vec<PathBuf> = walk(&out)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        })
        .collect();
    assert!(temp_files.is_empty(), "a failed write left {temp_files:?}");

    // The operator grows the disk: the rerun completes and promotes.
    let grown = Command::new("mount")
        .args(["-o", &format!("remount,size={}", 4 * need + (1 << 20))])
        .arg(&disk.dir)
        .status()
        .unwrap();
    assert!(grown.success());
    let o = xtask(
        &[
            "pipeline",
            "--raw",
            raw.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_ne!(std::fs::read(out.join("production.json")).unwrap(), pointer);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The disk-full case without root: the second run's process may not write
/// files over 64 KiB (SIGXFSZ ignored, so writes fail with EFBIG).
fn full_disk_by_rlimit(scenario: &Scenario) {
    eprintln!("tmpfs cannot be mounted here: emulating a full disk with RLIMIT_FSIZE");
    let out = scenario.dir().join("limited");
    let o = xtask(
        &[
            "pipeline",
            "--raw",
            scenario.raw.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let pointer = std::fs::read(out.join("production.json")).unwrap();
    let raw = new_export(scenario, 500);
    let mut args = vec![
        "pipeline".to_string(),
        "--raw".into(),
        raw.to_string_lossy().into_owned(),
        "--out".into(),
        out.to_string_lossy().into_owned(),
    ];
    args.extend(fast_cli_args());
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 64; exec '{}' {}",
            env!("CARGO_BIN_EXE_xtask"),
            quoted.join(" ")
        ))
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("File too large"), "{err}");
    assert_eq!(std::fs::read(out.join("production.json")).unwrap(), pointer);
}
