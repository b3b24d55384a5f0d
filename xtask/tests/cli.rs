//! The `cargo xtask` binary end to end: exit codes, messages, skipping, and
//! recovery from SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Runs the CLI; `pipeline` and `status` get the smoke budget
/// (`pipeline::SMOKE_SETTINGS`: a full pipeline takes seconds in a debug
/// build, and the gate is overridden because a 3-epoch MLP fails the fairness
/// check; tests/tests/gate.rs tests the gate itself).
fn xtask(args: &[&str], cwd: &Path) -> Output {
    let fast = matches!(
        args.first(),
        Some(&"pipeline") | Some(&"status") | Some(&"schedule")
    );
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .args(if fast {
            testkit::fast_cli_args()
        } else {
            Vec::new()
        })
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn synth(dir: &Path, invoices: usize) -> PathBuf {
    testkit::write_synthetic(
        dir,
        "raw.csv",
        &etl::synth::SynthConfig {
            n_invoices: invoices,
            ..Default::default()
        },
    )
    .unwrap()
    .0
}

/// Rewrites `raw.csv` with another seed (a changed source file).
fn synth_seeded(dir: &Path, invoices: usize, seed: u64) -> PathBuf {
    testkit::write_synthetic(
        dir,
        "raw.csv",
        &etl::synth::SynthConfig {
            n_invoices: invoices,
            seed,
            ..Default::default()
        },
    )
    .unwrap()
    .0
}

fn lock_outs(out: &Path) -> serde_json::Value {
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("pipeline.lock.json")).unwrap()).unwrap();
    let mut outs = serde_json::Map::new();
    for (_, stage) in lock["stages"].as_object().unwrap() {
        for (k, v) in stage["outs"].as_object().unwrap() {
            outs.insert(k.clone(), v.clone());
        }
    }
    serde_json::Value::Object(outs)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p))
            } else {
                out.push(p)
            }
        }
    }
    out
}

#[test]
fn pipeline_runs_then_skips_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let raw = synth(dir.path(), 400);
    let out = dir.path().join("out");
    let (raw_s, out_s) = (raw.to_str().unwrap(), out.to_str().unwrap());
    let first = xtask(&["pipeline", "--raw", raw_s, "--out", out_s], dir.path());
    assert!(first.status.success(), "{}", text(&first.stderr));
    let stdout = text(&first.stdout);
    assert!(
        stdout.contains("etl")
            && stdout.contains("ran")
            && stdout.contains("dropped: cancellation"),
        "{stdout}"
    );
    let second = xtask(&["pipeline", "--raw", raw_s, "--out", out_s], dir.path());
    let stdout = text(&second.stdout);
    assert!(second.status.success());
    assert_eq!(stdout.matches("skipped").count(), 7, "{stdout}"); // 6 rows + the total line
    assert!(stdout.contains("production serves release"), "{stdout}");
    // `status` on this run's store, with extra arguments.
    let status_with = |extra: &[&str]| {
        let mut args = vec!["status", "--raw", raw_s, "--out", out_s];
        args.extend_from_slice(extra);
        xtask(&args, dir.path())
    };
    let status = status_with(&[]);
    assert!(
        text(&status.stdout).contains("pipeline is up to date"),
        "{}",
        text(&status.stdout)
    );
    let changed = status_with(&["--set", "preprocess.scaling=\"none\""]);
    let s = text(&changed.stdout);
    assert!(
        s.contains("split: stale") && s.contains("preprocess.scaling"),
        "{s}"
    );
    // Stale is a non-zero exit (like `dvc status -q`); up to date is 0.
    assert!(status.status.success());
    assert_eq!(changed.status.code(), Some(1), "{}", text(&changed.stderr));
    let as_json = status_with(&["--json", "--set", "preprocess.scaling=\"none\""]);
    let stages: serde_json::Value = serde_json::from_slice(&as_json.stdout).unwrap();
    assert!(
        stages
            .as_array()
            .unwrap()
            .iter()
            .any(|st| st["stage"] == "split" && st["stale"] == true),
        "{stages}"
    );
    // A misspelt key is an error naming the closest valid one.
    let typo = status_with(&["--set", "gate.overide=true"]);
    let err = text(&typo.stderr);
    assert_eq!(typo.status.code(), Some(1), "{err}");
    assert!(
        err.contains("unknown key `gate.overide`") && err.contains("did you mean `gate.override`"),
        "{err}"
    );
    // The effective params say where each value came from.
    let params = xtask(
        &["params", "--set", "split.train_fraction=0.6", "--json"],
        dir.path(),
    );
    let p: serde_json::Value = serde_json::from_slice(&params.stdout).unwrap();
    assert_eq!(p["split.train_fraction"]["value"], 0.6);
    assert_eq!(p["split.train_fraction"]["source"], "--set");
    assert_eq!(p["split.val_fraction"]["source"], "default");
    let metrics = xtask(&["metrics", "--out", out_s, "--json"], dir.path());
    let m: serde_json::Value = serde_json::from_slice(&metrics.stdout).unwrap();
    assert!(m["etl"]["rows_in"].as_u64().unwrap() > 0);
    assert!(m["split"]["metrics"]["rows"].as_array().unwrap().len() == 3);
    for model in ["mlp", "lightgbm", "svr", "elastic_net", "baseline"] {
        for part in ["val", "test"] {
            for metric in ["mse_log", "rmsle", "mae"] {
                let v = m["models"]["metrics"][model][part][metric].as_f64();
                assert!(
                    v.is_some_and(f64::is_finite),
                    "{model}.{part}.{metric}: {:?}",
                    m["models"]["metrics"][model]
                );
            }
        }
    }
}

#[test]
fn malformed_csv_exits_nonzero_naming_file_line_and_column_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "missing.csv",
            "InvoiceNo,StockCode,Quantity,InvoiceDate,CustomerID,Country\n1,85123A,1,2010-12-01 08:26:00,1,UK\n",
            vec!["missing.csv", "line 1", "unit_price"],
        ),
        (
            "baddate.csv",
            "InvoiceNo,StockCode,Quantity,InvoiceDate,UnitPrice\n1,85123A,1,2010-12-01 08:26:00,1.0\n2,85123A,1,yesterday,1.0\n",
            vec!["baddate.csv", "line 3", "InvoiceDate"],
        ),
        (
            "badqty.csv",
            "InvoiceNo,StockCode,Quantity,InvoiceDate,UnitPrice\n1,85123A,1,2010-12-01 08:26:00,1.0\n2,85123A,1,2010-12-01 08:26:00,1.0\n3,85123A,lots,2010-12-01 08:26:00,1.0\n",
            vec!["badqty.csv", "line 4", "Quantity"],
        ),
    ];
    for (name, csv, needles) in cases {
        let raw = dir.path().join(name);
        std::fs::write(&raw, csv).unwrap();
        let out = dir.path().join(format!("out-{name}"));
        let o = xtask(
            &[
                "pipeline",
                "--raw",
                raw.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert!(!o.status.success());
        let err = text(&o.stderr);
        for n in needles {
            assert!(err.contains(n), "{name}: `{n}` not in {err}");
        }
        // Nothing but the store's run lock file (not an artifact).
        let written: Vec<PathBuf> = files_under(&out)
            .into_iter()
            .filter(|f| !f.ends_with(".run.lock"))
            .collect();
        assert!(written.is_empty(), "{name}: wrote {written:?}");
    }
}

#[test]
fn missing_raw_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = xtask(
        &["pipeline", "--raw", "nope.csv.gz", "--out", "o"],
        dir.path(),
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("nope.csv.gz") && text(&o.stderr).contains("cargo xtask data")
    );
}

#[test]
fn bench_process_times_whole_runs_alternating_with_another_build() {
    let dir = tempfile::tempdir().unwrap();
    let raw = synth(dir.path(), 300);
    let bench = |against: &str| {
        xtask(
            &[
                "bench",
                "process",
                "--raw",
                raw.to_str().unwrap(),
                "--runs",
                "2",
                "--against",
                against,
            ],
            dir.path(),
        )
    };
    // Against itself: two rows of medians and their ratio.
    let o = bench(env!("CARGO_BIN_EXE_xtask"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let row = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no `{name}` row in {out}"))
            .to_string()
    };
    for name in ["this build", "against"] {
        let wall: f64 = row(name)
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no wall time in {}", row(name)));
        assert!(wall > 0.0 && wall < 60.0, "{}", row(name));
        assert!(row(name).contains("MiB"), "{}", row(name));
    }
    assert!(
        out.contains("wall ratio (this build / against ") && out.contains("x as fast"),
        "{out}"
    );
    // A build that is not there is an error before anything runs.
    let o = bench("no-such-xtask");
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--against no-such-xtask: no such file"));
}

#[test]
fn sigkill_mid_run_then_rerun_gives_the_same_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let raw = synth(dir.path(), 6000);
    let raw_s = raw.to_str().unwrap();
    let reference = dir.path().join("reference");
    let o = xtask(
        &[
            "pipeline",
            "--until",
            "split",
            "--raw",
            raw_s,
            "--out",
            reference.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let expected = lock_outs(&reference);

    let victim = dir.path().join("victim");
    let victim_s = victim.to_str().unwrap();
    let mut killed_mid_run = 0;
    for delay_ms in [30u64, 150, 400, 900, 1500] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args([
                "pipeline", "--force", "--until", "split", "--raw", raw_s, "--out", victim_s,
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        child.kill().unwrap(); // SIGKILL on Unix
        let _ = child.wait();
    }
    assert!(
        killed_mid_run > 0,
        "every run finished before it could be killed"
    );
    let o = xtask(
        &[
            "pipeline", "--until", "split", "--raw", raw_s, "--out", victim_s,
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(lock_outs(&victim), expected);
    for (key, hash) in expected.as_object().unwrap() {
        let bytes = std::fs::read(victim.join(key)).unwrap();
        assert_eq!(
            blake3::hash(&bytes).to_hex().to_string(),
            hash.as_str().unwrap(),
            "{key}"
        );
    }
}

#[test]
fn drift_compares_two_exports_through_etl_and_features() {
    let dir = tempfile::tempdir().unwrap();
    let reference = synth(dir.path(), 600);
    let csv = std::fs::read_to_string(&reference).unwrap();
    // The current export: every price × 1.5.
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    let price = header.split(',').position(|c| c == "UnitPrice").unwrap();
    let mut current = vec![header.to_string()];
    for line in lines {
        let mut f: Vec<String> = line.split(',').map(str::to_string).collect();
        if !line.contains('"')
            && let Ok(p) = f[price].parse::<f64>()
        {
            f[price] = format!("{:.2}", p * 1.5);
        }
        current.push(f.join(","));
    }
    let current_path = dir.path().join("current.csv");
    std::fs::write(&current_path, current.join("\n") + "\n").unwrap();
    let html = dir.path().join("report.html");
    let out = xtask(
        &[
            "drift",
            "--reference",
            reference.to_str().unwrap(),
            "--current",
            current_path.to_str().unwrap(),
            "--json",
            "--html",
            html.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let drifted: Vec<&str> = report["drift"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["drifted"] == true)
        .map(|c| c["column"].as_str().unwrap())
        .collect();
    assert!(drifted.contains(&"unit_price"), "{drifted:?}");
    assert!(drifted.contains(&"log1p_price"), "{drifted:?}");
    assert!(!drifted.contains(&"quantity"), "{drifted:?}");
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));

    // The same export on both sides: nothing drifts.
    let same = xtask(
        &[
            "drift",
            "--reference",
            reference.to_str().unwrap(),
            "--current",
            reference.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(same.status.success());
    assert!(
        text(&same.stdout).contains("0 of 8 columns drifted"),
        "{}",
        text(&same.stdout)
    );

    let missing = xtask(
        &["drift", "--reference", "nope.csv", "--current", "nope.csv"],
        dir.path(),
    );
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("nope.csv"),
        "{}",
        text(&missing.stderr)
    );
}

#[test]
fn backtest_scores_recommendations_against_known_demand() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "backtest",
            "--seeds",
            "1",
            "--shapes",
            "semi_log",
            "--products",
            "24",
            "--json",
        ])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let scores: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let market = &scores[0];
    assert_eq!(market["products"], 24);
    // Week basis: most of the available uplift; the line basis (which
    // cannot see that price changes the number of orders) does worse.
    let median = market["median"].as_f64().unwrap();
    assert!(median >= 0.8, "week-basis median {median}");
    assert!(market["median_line"].as_f64().unwrap() < median, "{market}");
    assert!(market["median_profit"].as_f64().unwrap() >= 0.8, "{market}");
    // The out-of-sample level is about right, and the elasticity band is
    // not wildly overconfident (nominal 80 %).
    let ratio = market["test_level_ratio"].as_f64().unwrap();
    assert!((0.75..=1.33).contains(&ratio), "test level ratio {ratio}");
    let coverage = market["elasticity_coverage"].as_f64().unwrap();
    assert!(coverage >= 0.5, "elasticity band coverage {coverage}");
}

#[test]
fn data_from_a_workbook_gives_the_same_transactions_as_its_csv() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for out in ["gen.csv", "gen.xlsx"] {
        let o = xtask(
            &["gen", "--out", out, "--seed", "7", "--invoices", "300"],
            d,
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    // The workbook inside a zip, as the UCI site serves it.
    {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::fs::File::create(d.join("uci.zip")).unwrap());
        zip.start_file(
            "online_retail_II.xlsx",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zip.write_all(&std::fs::read(d.join("gen.xlsx")).unwrap())
            .unwrap();
        zip.finish().unwrap();
    }
    let tx = |file: &str| {
        let raw = etl::read_raw_file(&d.join(file)).unwrap();
        etl::clean(&raw, &etl::EtlParams::default()).unwrap().0
    };
    let expected = tx("gen.csv");
    for (from, dest) in [
        ("gen.xlsx", "from-xlsx.csv.gz"),
        ("uci.zip", "from-zip.csv.gz"),
    ] {
        let o = xtask(&["data", "--from", from, "--dest", dest], d);
        let out = text(&o.stdout);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(
            out.contains("`Year 2009`") && out.contains("`Year 2010`"),
            "{out}"
        );
        let got = tx(dest);
        assert!(
            got.dataframe().equals_missing(expected.dataframe()),
            "{from}: the transactions differ from the CSV's"
        );
    }
}

/// The outcomes recorded under `schedule/runs/`, oldest first. Only committed
/// records count: a record still being written is a hidden temp file (`.tmp-*`)
/// until its rename, and would otherwise sort first and be counted early.
fn schedule_outcomes(out: &Path) -> Vec<String> {
    let dir = out.join("schedule/runs");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|p| {
            let r: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            r["outcome"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn the_schedule_skips_unchanged_runs_promotes_changed_ones_and_a_kill_leaves_production() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = synth(d, 300);
    let out = d.join("store");
    let (raw_s, out_s) = (raw.to_str().unwrap(), out.to_str().unwrap());
    let every_second = [
        "schedule",
        "--cron",
        "* * * * * *",
        "--raw",
        raw_s,
        "--out",
        out_s,
    ];

    // A first run promotes; a second tick with nothing changed is skipped.
    let o = xtask(&[&every_second[..], &["--max-runs", "2"]].concat(), d);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", text(&o.stderr));
    assert!(
        stdout.contains("run 1 promoted") && stdout.contains("run 2 skipped"),
        "{stdout}"
    );

    // The source changed: the next tick runs and promotes the new release.
    synth_seeded(d, 300, 99);
    let o = xtask(&[&every_second[..], &["--max-runs", "1"]].concat(), d);
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("run 1 promoted"),
        "{stdout}{}",
        text(&o.stderr)
    );
    assert_eq!(schedule_outcomes(&out), ["promoted", "skipped", "promoted"]);

    // Killed mid-run: the record says `started`, production is unchanged.
    let production = std::fs::read(out.join("production.json")).unwrap();
    synth_seeded(d, 300, 123);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(every_second)
        .args(testkit::fast_cli_args())
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while schedule_outcomes(&out).len() < 4 {
        assert!(std::time::Instant::now() < deadline, "no run started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(schedule_outcomes(&out)[3], "started");
    assert_eq!(
        std::fs::read(out.join("production.json")).unwrap(),
        production
    );
}
