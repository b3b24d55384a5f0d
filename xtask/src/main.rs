//! `cargo xtask`: the project's task runner.
//!
//! - `pipeline` runs the DAG (skipping up-to-date stages), like `dvc repro`;
//!   its gate writes a release and promotes it only when it passes.
//! - `releases`, `promote`, `rollback`, `gc` manage releases and the
//!   production pointer.
//! - `faults` runs the fault-injection suite.
//! - `status` says which stages are stale and why, like `dvc status`.
//! - `metrics` shows every stage's metrics, like `dvc metrics show`.
//! - `data` puts the raw dataset where the pipeline looks by default.
//! - `gen` writes a synthetic dataset with a known price response.
//! - `bench` times the stages on a dataset and prints medians; `bench serve`
//!   load-tests the HTTP API on real artifacts (latency percentiles, req/s).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use lineage::{ArtifactStore, Params};
use pipeline::{PipelineConfig, Stage};

/// `println!` that ends the process quietly when stdout is closed
/// (`cargo xtask metrics | head`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            return Err(e.into());
        }
    }};
}

mod backtest;
mod bench_process;
mod bench_scale;
mod bench_serve;
mod fuzz;
mod schedule;
mod trainer;

/// SHA-256 of the reference copy of the UCI Online Retail CSV.gz.
const REFERENCE_SHA256: &str = "ae0b5894e9c29449be61ad4ba9ec868083138431cfd5d8a51b2ab68659c4d508";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Price-prediction pipeline tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level filter (e.g. `info`, `pipeline=debug`); RUST_LOG also works.
    #[arg(
        long,
        global = true,
        env = "RUST_LOG",
        default_value = "warn,egobox_gp=error,egobox_ego=error"
    )]
    log: String,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Artifact store: a directory or `s3://bucket/prefix`.
    #[arg(long, default_value = "run")]
    out: String,
    /// Parameters file (the compiled-in defaults when absent and not given).
    #[arg(long)]
    params: Option<PathBuf>,
    /// Raw transactions export (CSV or CSV.gz); default: `data.raw` in params.
    #[arg(long)]
    raw: Option<PathBuf>,
    /// Run the product stages for one stock code (the original's main_stockcode).
    #[arg(long)]
    stockcode: Option<String>,
    /// Override a param, e.g. `--set split.train_fraction=0.6` (TOML value).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

/// mimalloc, not glibc's malloc: the data stages allocate and free column
/// buffers of megabytes, which glibc maps and unmaps each time (a fifth of
/// the data stages' cycles went to page faults); mimalloc reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline; stages whose deps, params and code are unchanged are skipped.
    Pipeline {
        #[command(flatten)]
        common: Common,
        /// Re-run every stage.
        #[arg(long)]
        force: bool,
        /// Stop after this stage (etl, features, split, models, response, gate).
        #[arg(long)]
        until: Option<String>,
    },
    /// Refit the production models on new data (MLP warm-started) and replace
    /// each only if it is not worse on the new validation window.
    Retrain {
        #[command(flatten)]
        common: Common,
    },
    /// Which stages are stale, and why; exits 1 when any is (like `dvc status -q`).
    Status {
        #[command(flatten)]
        common: Common,
        /// Print JSON: `[{stage, stale, reasons}]`.
        #[arg(long)]
        json: bool,
    },
    /// Serve the production release: the HTTP API and the pricing console
    /// (the `serve` binary's options; built with the pipeline, so one build
    /// gives both).
    Serve(serve::cli::Args),
    /// Run the pipeline at every tick of a cron schedule (the original's weekly
    /// retrain), promoting through the gate; each run is recorded under
    /// `schedule/runs/` in the store (started, skipped, promoted, unchanged,
    /// blocked, failed).
    Schedule {
        #[command(flatten)]
        common: Common,
        /// Cron expression, seconds first, UTC: `0 0 3 * * Mon` is Mondays at 03:00.
        #[arg(long, default_value = "0 0 3 * * Mon")]
        cron: String,
        /// Stop after this many runs (default: run until SIGTERM).
        #[arg(long)]
        max_runs: Option<usize>,
    },
    /// Drive the release server flat out (closed-loop clients, 1 request in 10
    /// uncached) and sample its RSS every second.
    Soak {
        /// Artifacts of a pipeline run (directory or s3://bucket/prefix).
        #[arg(long, default_value = "run")]
        out: String,
        /// Duration in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Concurrent closed-loop clients (at most the server's computation
        /// slots plus its wait queue, so none is shed).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Port for the server.
        #[arg(long, default_value_t = 5098)]
        port: u16,
        /// Use this Redis as the server's cache.
        #[arg(long)]
        redis_url: Option<String>,
    },
    /// The effective params (defaults, params file, --set) and where each came from.
    Params {
        #[command(flatten)]
        common: Common,
        /// Print JSON: `{key: {value, source}}`.
        #[arg(long)]
        json: bool,
    },
    /// Show all stage metrics.
    Metrics {
        /// Artifact store: a directory or `s3://bucket/prefix`.
        #[arg(long, default_value = "run")]
        out: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put the raw dataset where the pipeline looks by default.
    Data {
        /// Copy from this file (offline): CSV, CSV.gz, or the UCI site's .xlsx / .zip (converted).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Destination (default: `data.raw` in params).
        #[arg(long)]
        dest: Option<PathBuf>,
    },
    /// Write a synthetic dataset with a known price response.
    Gen {
        /// Output file (`.gz` → gzip-compressed, `.xlsx` → a workbook as the UCI site ships it).
        #[arg(long)]
        out: PathBuf,
        /// RNG seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Number of invoices.
        #[arg(long, default_value_t = 2000)]
        invoices: usize,
        /// Number of products.
        #[arg(long, default_value_t = 40)]
        products: usize,
        /// Leave out cancellations, postage and other dirt.
        #[arg(long)]
        clean: bool,
    },
    /// Data drift between two raw exports (Evidently's default tests), through
    /// the same etl and features code as the pipeline.
    Drift {
        /// The reference export (what the model learned from).
        #[arg(long)]
        reference: PathBuf,
        /// The current export (this week's data).
        #[arg(long)]
        current: PathBuf,
        /// Print the JSON report instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write the self-contained HTML report here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Params file (default: ./params.toml, else the compiled-in defaults).
        #[arg(long)]
        params: Option<PathBuf>,
        /// Override a param, e.g. `--set gate.drift_share=0.3`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// List releases: their gate verdicts, models, metrics and dates, which
    /// one serves, and the history of production moves.
    Releases {
        /// Artifact store: a directory or `s3://bucket/prefix`.
        #[arg(long, default_value = "run")]
        out: String,
        /// The releases of one product's models instead of all products'.
        #[arg(long)]
        stockcode: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move production to a release (recorded, with the reason).
    Promote {
        /// The release id (see `cargo xtask releases`).
        id: String,
        /// Why (recorded with the move).
        #[arg(long)]
        reason: String,
        /// Artifact store: a directory or `s3://bucket/prefix`.
        #[arg(long, default_value = "run")]
        out: String,
        /// The pointer of one product's models instead of all products'.
        #[arg(long)]
        stockcode: Option<String>,
    },
    /// Move production back to the release that served before the current one.
    Rollback {
        /// Why (recorded with the move).
        #[arg(long)]
        reason: String,
        /// Artifact store: a directory or `s3://bucket/prefix`.
        #[arg(long, default_value = "run")]
        out: String,
        /// The pointer of one product's models instead of all products'.
        #[arg(long)]
        stockcode: Option<String>,
    },
    /// Remove old releases: keeps the newest N, the production release and
    /// its predecessor; removes incomplete ones left by killed runs.
    Gc {
        /// Newest releases to keep (besides production and its predecessor).
        #[arg(long)]
        keep: usize,
        /// Artifact store: a directory or `s3://bucket/prefix`.
        #[arg(long, default_value = "run")]
        out: String,
        /// The releases of one product's models instead of all products'.
        #[arg(long)]
        stockcode: Option<String>,
    },
    /// Score recommendations against synthetic markets with known demand
    /// (share of the available uplift captured, per product and as medians).
    Backtest {
        /// Generator seeds.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        seeds: Vec<u64>,
        /// Demand shapes (constant_elasticity, semi_log, kinked, saturating), or all.
        #[arg(long, value_delimiter = ',', default_value = "all")]
        shapes: Vec<String>,
        /// Products per market.
        #[arg(long, default_value_t = 36)]
        products: usize,
        /// Weeks of sales per market.
        #[arg(long, default_value_t = 52)]
        weeks: u32,
        /// Keep each market's data and store under this directory.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print JSON (per product) instead of the table.
        #[arg(long)]
        json: bool,
        /// Override a param for every market, e.g. `--set
        /// response.decision_quantile=0.2` (TOML value).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Let the recommender infer each product's current price from its
        /// latest sales lines instead of being told the shop's price, as a
        /// request without `current_price` does.
        #[arg(long)]
        infer_current_price: bool,
    },
    /// Run the cargo-fuzz targets (CSV rows, request parameters, params) on
    /// their corpora in `fuzz/corpus` (nightly and cargo-fuzz needed).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (csv_rows, request_params, params_toml).
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Parallel libFuzzer processes per target.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Minimise each corpus afterwards (the inputs that cover its edges,
        /// and the hand-written seeds), to keep it small.
        #[arg(long)]
        minimize: bool,
    },
    /// Run the fault-injection suite (small synthetic data; also part of `cargo test`).
    Faults {
        /// Only the cases whose name contains this.
        filter: Option<String>,
    },
    /// Load the production model the way serving will, and say which one and why.
    LoadModel {
        /// Artifact store: a directory or `s3://bucket/prefix`.
        #[arg(long, default_value = "run")]
        out: String,
        /// Prefer this product's own models.
        #[arg(long)]
        stockcode: Option<String>,
    },
    /// Time the data stages (`bench`), the HTTP API (`bench serve`) or the
    /// stages' growth with the data (`bench scale`).
    Bench {
        /// What to benchmark: `data` (etl + features, in this process),
        /// `process` (`pipeline --until` as whole processes on a fresh output
        /// dir, timed from outside; with `--against` or `--against-command`,
        /// alternating with another build or another system's command),
        /// `serve` (the API under load) or `scale` (each
        /// stage up to `--until` at each of `--rows`).
        #[arg(default_value = "data")]
        target: String,
        /// `serve`: artifacts of a pipeline run (directory or s3://bucket/prefix).
        #[arg(long, default_value = "run")]
        out: String,
        /// `serve`: port of the server under test.
        #[arg(long, default_value_t = 5099)]
        port: u16,
        /// `serve`: duration of the cached throughput phase in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// `serve`: concurrent connections (throughput phase; overload: clients).
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// `serve`: uncached (sequential) requests.
        #[arg(long, default_value_t = 500)]
        requests: usize,
        /// `serve`: use this Redis as the cache instead of the in-process one.
        #[arg(long)]
        redis_url: Option<String>,
        /// `serve`: `latency`, `overload` (200 clients, uncached 1000-bin
        /// requests, /ping probed), `reload` (promote another release
        /// under load), `sweep` (/v2 for every product: monotone curves,
        /// where optima sit), `console` (the page's first render in a
        /// cold headless Chromium; `--requests` loads per view) or `scale`
        /// (1, 2, 4 processes sharing `--redis-url`; cached and uncached
        /// throughput).
        #[arg(long, default_value = "latency")]
        mode: String,
        /// `scale`: the row counts, e.g. `0.5M,2M,10M`.
        #[arg(long, value_delimiter = ',', default_value = "100k,500k,2M")]
        rows: Vec<String>,
        /// `scale`: where the generated data and stores go.
        #[arg(long, default_value = "target/bench-scale")]
        scale_dir: PathBuf,
        /// `scale`: the plot (SVG).
        #[arg(long, default_value = "target/bench-scale/scale.svg")]
        svg: PathBuf,
        /// `serve --mode scale`: the process counts, e.g. `1,2,4`.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        processes: Vec<usize>,
        /// `serve --mode reload`: the server's pointer check interval, seconds.
        #[arg(long, default_value_t = 1.0)]
        reload_interval_secs: f64,
        /// `serve --mode overload`: candidate prices per request.
        #[arg(long, default_value_t = 1000)]
        bins: usize,
        /// `serve`: the serve binary to run (default: the one built beside xtask).
        #[arg(long)]
        serve_binary: Option<PathBuf>,
        /// `serve --mode sweep`: extra query parameters of every request,
        /// e.g. `max_change=0.1&objective=profit`.
        #[arg(long, default_value = "")]
        query: String,
        /// `serve --mode console`: the product to open (default: the best seller).
        #[arg(long)]
        product: Option<String>,
        /// `serve --mode console`: save screenshots of both views here.
        #[arg(long)]
        shots: Option<PathBuf>,
        /// Dataset (default: `data.raw` in params).
        #[arg(long)]
        raw: Option<PathBuf>,
        /// Timed runs (after one warm-up).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Last stage to time.
        #[arg(long, default_value = "features")]
        until: String,
        /// `process`: another build of xtask, run alternately with this one
        /// (say the build before a change), for a ratio measured side by side.
        #[arg(long)]
        against: Option<PathBuf>,
        /// `process`: another system's command for the same work (run by
        /// `sh -c`, in the working directory it names with `cd`), run
        /// alternately with this build and timed the same way: say the
        /// original Python pipeline's ETL.
        #[arg(long)]
        against_command: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` installs its own log subscriber (text or JSON, its own filter).
    if !matches!(cli.command, Command::Serve(_)) {
        let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping a cause whose text the message before it
/// already contains (library errors often include their source's text).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Whether a command may fit models (and so needs the MLP trainer).
fn needs_trainer(command: &Command) -> Result<bool> {
    let until = |u: Option<&str>| -> Result<bool> {
        Ok(trainer::trains(u.map(str::parse::<Stage>).transpose()?))
    };
    Ok(match command {
        Command::Pipeline { until: u, .. } => until(u.as_deref())?,
        Command::Bench {
            target, until: u, ..
        } => target != "serve" && until(Some(u))?,
        Command::Retrain { .. } | Command::Schedule { .. } | Command::Backtest { .. } => true,
        _ => false,
    })
}

fn run(command: Command) -> Result<()> {
    let trainer = if needs_trainer(&command)? {
        trainer::ensure()?
    } else {
        None
    };
    match command {
        Command::Pipeline {
            common,
            force,
            until,
        } => cmd_pipeline(&common, force, until.as_deref()),
        Command::Status { common, json } => cmd_status(&common, json),
        Command::Params { common, json } => cmd_params(&common, json),
        Command::Serve(args) => cmd_serve(args),
        Command::Soak {
            out,
            seconds,
            concurrency,
            port,
            redis_url,
        } => bench_serve::soak(&bench_serve::ServeBench {
            artifacts: out,
            port,
            uncached_requests: 0,
            seconds,
            concurrency,
            redis_url,
            mode: "soak".into(),
            reload_interval_secs: 30.0,
            bins: 100,
            serve_binary: None,
            query: String::new(),
            product: None,
            shots: None,
            processes: Vec::new(),
        }),
        Command::Schedule {
            common,
            cron,
            max_runs,
        } => schedule::run(&common, &cron, max_runs),
        Command::Retrain { common } => cmd_retrain(&common),
        Command::Fuzz {
            seconds,
            targets,
            jobs,
            minimize,
        } => fuzz::Fuzz {
            seconds,
            targets,
            jobs,
            minimize,
        }
        .run(),
        Command::Metrics { out, json } => cmd_metrics(&out, json),
        Command::Drift {
            reference,
            current,
            json,
            html,
            params,
            overrides,
        } => cmd_drift(
            &reference,
            &current,
            json,
            html.as_deref(),
            params.as_deref(),
            &overrides,
        ),
        Command::Data { from, dest } => cmd_data(from.as_deref(), dest),
        Command::Gen {
            out,
            seed,
            invoices,
            products,
            clean,
        } => cmd_gen(&out, seed, invoices, products, clean),
        Command::Bench {
            target,
            out,
            port,
            seconds,
            concurrency,
            requests,
            redis_url,
            mode,
            reload_interval_secs,
            bins,
            serve_binary,
            query,
            product,
            shots,
            processes,
            rows,
            scale_dir,
            svg,
            raw,
            runs,
            until,
            against,
            against_command,
        } => match target.as_str() {
            "data" => cmd_bench(raw, runs, &until),
            "process" => bench_process::ProcessBench {
                raw: bench_input(raw)?.1,
                runs,
                until: until.parse()?,
                against,
                against_command,
                trainer,
            }
            .run(),
            "scale" => bench_scale::ScaleBench {
                rows,
                until: until.parse()?,
                dir: scale_dir,
                svg,
                trainer,
            }
            .run(),
            "serve" => bench_serve::run(&bench_serve::ServeBench {
                artifacts: out,
                port,
                uncached_requests: requests,
                seconds,
                concurrency: concurrency.max(1),
                redis_url,
                mode,
                reload_interval_secs,
                bins,
                serve_binary,
                query,
                product,
                shots,
                processes,
            }),
            other => bail!("unknown bench `{other}` (expected data, process, serve or scale)"),
        },
        Command::LoadModel { out, stockcode } => cmd_load_model(&out, stockcode.as_deref()),
        Command::Releases {
            out,
            stockcode,
            json,
        } => cmd_releases(&out, stockcode.as_deref(), json),
        Command::Promote {
            id,
            reason,
            out,
            stockcode,
        } => {
            let store = lineage::open_store(&out)?;
            let p = pipeline::promote(store.as_ref(), stockcode.as_deref(), &id, &reason)?;
            outln!(
                "production now serves release {} (was {})",
                p.release,
                p.previous.as_deref().unwrap_or("nothing")
            );
            Ok(())
        }
        Command::Rollback {
            reason,
            out,
            stockcode,
        } => {
            let store = lineage::open_store(&out)?;
            let p = pipeline::rollback(store.as_ref(), stockcode.as_deref(), &reason)?;
            outln!(
                "production rolled back to release {} (from {})",
                p.release,
                p.previous.as_deref().unwrap_or("nothing")
            );
            Ok(())
        }
        Command::Gc {
            keep,
            out,
            stockcode,
        } => {
            let store = lineage::open_store(&out)?;
            let removed = pipeline::gc(store.as_ref(), stockcode.as_deref(), keep)?;
            if removed.is_empty() {
                outln!("nothing to remove");
            }
            for id in removed {
                outln!("removed release {id}");
            }
            Ok(())
        }
        Command::Faults { filter } => cmd_faults(filter.as_deref()),
        Command::Backtest {
            seeds,
            shapes,
            products,
            weeks,
            out,
            json,
            set,
            infer_current_price,
        } => {
            let shapes = if shapes.iter().any(|s| s == "all") {
                etl::synth::market::DemandShape::ALL.to_vec()
            } else {
                shapes
                    .iter()
                    .map(|s| s.parse().map_err(anyhow::Error::msg))
                    .collect::<Result<Vec<_>>>()?
            };
            backtest::run(&backtest::Backtest {
                seeds,
                shapes,
                products: products.max(1),
                weeks: weeks.max(8),
                out,
                json,
                set,
                infer_current_price,
            })?;
            Ok(())
        }
    }
}

fn cmd_releases(out: &str, stockcode: Option<&str>, as_json: bool) -> Result<()> {
    let store = lineage::open_store(out)?;
    let releases = lineage::Releases::new(store.as_ref(), stockcode);
    let list = releases.list()?;
    let production = releases.production()?;
    let history = releases.history()?;
    if as_json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "production": production,
                "releases": list,
                "history": history,
            }))?
        );
        return Ok(());
    }
    if list.is_empty() {
        bail!(
            "no releases in {}: run `cargo xtask pipeline --out {out}` first",
            store.location()
        );
    }
    let serving = production.as_ref().map(|p| p.release.as_str());
    let previous = production.as_ref().and_then(|p| p.previous.as_deref());
    outln!(
        "{:<18} {:<20} {:<8} {:<10} {:<12} {:<40} role",
        "release",
        "created (UTC)",
        "source",
        "verdict",
        "model ver.",
        "models (test RMSLE)"
    );
    for r in &list {
        let models: Vec<String> = r.summary["models"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|e| {
                        format!(
                            "{} {:.3}",
                            e["model"].as_str().unwrap_or("?"),
                            e["test_rmsle"].as_f64().unwrap_or(f64::NAN)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let role = if Some(r.id.as_str()) == serving {
            "PRODUCTION"
        } else if Some(r.id.as_str()) == previous {
            "previous"
        } else {
            ""
        };
        outln!(
            "{:<18} {:<20} {:<8} {:<10} {:<12} {:<40} {role}",
            r.id,
            lineage::runlock::format_unix(r.created_at_unix).trim_end_matches(" UTC"),
            r.source,
            r.verdict.label(),
            r.summary["model_version"].as_str().unwrap_or("-"),
            models.join(", ")
        );
        for f in &r.verdict.failures {
            outln!("{:<18}   gate: {f}", "");
        }
    }
    if !history.is_empty() {
        outln!("\nproduction history:");
        for e in &history {
            outln!(
                "  {}  {} -> {}  by {}: {}",
                lineage::runlock::format_unix(e.at_unix_ms / 1000),
                e.from.as_deref().unwrap_or("(nothing)"),
                e.to,
                e.actor,
                e.reason
            );
        }
    }
    Ok(())
}

/// Runs the fault-injection suite (`xtask/tests/faults.rs`) with cargo.
fn cmd_faults(filter: Option<&str>) -> Result<()> {
    // The suite's pipelines train the MLP: its (debug) trainer beside the
    // test binaries, which `cargo test --package xtask` does not build.
    cargo_build("mlp-train", models::TRAINER_BIN, false, true)?;
    let mut cmd = std::process::Command::new(cargo());
    cmd.args(["test", "--package", "xtask", "--test", "faults", "--"]);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    cmd.arg("--nocapture");
    let status = cmd.status().context("running cargo test")?;
    if !status.success() {
        bail!("the fault-injection suite failed ({status})");
    }
    Ok(())
}

/// The cargo running this task (`$CARGO`), else `cargo` from `PATH`.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Builds binary `bin` of `package` (release or debug profile), from the
/// workspace root: cargo reads `.cargo/config.toml` (where libtorch is)
/// from where it runs, whatever the caller's directory.
fn cargo_build(package: &str, bin: &str, release: bool, quiet: bool) -> Result<()> {
    let mut cmd = std::process::Command::new(cargo());
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["build", "--package", package, "--bin", bin]);
    if release {
        cmd.arg("--release");
    }
    if quiet {
        cmd.arg("--quiet");
    }
    let status = cmd
        .status()
        .with_context(|| format!("building {bin} (cargo build -p {package})"))?;
    if !status.success() {
        bail!("building {bin} (cargo build -p {package}) failed: {status}");
    }
    Ok(())
}

fn load_params(common_params: Option<&Path>, overrides: &[String]) -> Result<Params> {
    Ok(load_params_with_sources(common_params, overrides)?.0)
}

/// The effective params: the compiled-in defaults, overlaid by the params
/// file (`--params`, else `./params.toml` if present), overlaid by each
/// `--set`; every key is checked against the defaults (an unknown key is an
/// error naming the closest valid one, a value of the wrong type names the
/// type wanted). Also says where each key's value came from.
fn load_params_with_sources(
    common_params: Option<&Path>,
    overrides: &[String],
) -> Result<(Params, BTreeMap<String, lineage::ParamSource>)> {
    let file = match common_params {
        Some(p) => Some(p.to_path_buf()),
        None if Path::new("params.toml").exists() => Some(PathBuf::from("params.toml")),
        None => {
            tracing::info!(
                "no params.toml here: using the compiled-in defaults (`cargo xtask params` prints them)"
            );
            None
        }
    };
    let from_file = file.as_deref().map(Params::load).transpose()?;
    let origin = file.as_ref().map(|p| p.display().to_string());
    Ok(pipeline::params::effective(
        origin.as_deref().zip(from_file.as_ref()),
        overrides,
    )?)
}

/// `cargo xtask serve`: the server of the `serve` binary, in this build.
fn cmd_serve(args: serve::cli::Args) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve::cli::run(args))?;
    Ok(())
}

/// `cargo xtask params`: the effective params and where each came from.
fn cmd_params(common: &Common, json: bool) -> Result<()> {
    let (params, sources) = load_params_with_sources(common.params.as_deref(), &common.overrides)?;
    let leaves = params.leaves();
    if json {
        let out: serde_json::Map<String, serde_json::Value> = leaves
            .iter()
            .map(|(k, v)| {
                let value = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
                let source = sources.get(k).map_or("default", |s| s.label());
                (
                    k.clone(),
                    serde_json::json!({"value": value, "source": source}),
                )
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let width = leaves.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in &leaves {
        let source = sources.get(k).map_or("default", |s| s.label());
        outln!("{k:<width$} = {v}    # {source}");
    }
    Ok(())
}

impl Common {
    /// What a pipeline command works on, in this order (a bad param fails
    /// before the store is opened): the effective params, the raw export
    /// (`--raw`, else `data.raw`; checked to exist when `check_raw`), and the
    /// store `--out` names.
    fn open(&self, check_raw: bool) -> Result<(Params, PathBuf, Box<dyn ArtifactStore>)> {
        let params = load_params(self.params.as_deref(), &self.overrides)?;
        let raw = raw_path(self.raw.clone(), &params)?;
        if check_raw {
            check_raw_exists(&raw)?;
        }
        let store = lineage::open_store(&self.out)?;
        Ok((params, raw, store))
    }
}

fn raw_path(raw: Option<PathBuf>, params: &Params) -> Result<PathBuf> {
    match raw {
        Some(r) => Ok(r),
        None => Ok(PathBuf::from(
            params
                .opt_str("data.raw")?
                .unwrap_or("data/online_retail.csv.gz"),
        )),
    }
}

fn check_raw_exists(raw: &Path) -> Result<()> {
    if !raw.exists() {
        bail!(
            "raw data {} not found: pass --raw PATH, or run `cargo xtask data --from PATH` to put a copy there",
            raw.display()
        );
    }
    Ok(())
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn cmd_pipeline(common: &Common, force: bool, until: Option<&str>) -> Result<()> {
    let (params, raw, store) = common.open(true)?;
    let mut config = PipelineConfig::new(raw, store.as_ref(), params);
    config.force = force;
    config.until = until.map(str::parse::<Stage>).transpose()?;
    config.stockcode = common.stockcode.clone();
    config.progress = true;
    config.command = "cargo xtask pipeline".into();
    let summary = pipeline::run(&config)?;
    outln!(
        "{:<22} {:<8} {:>10} {:>10} {:>10}",
        "stage",
        "status",
        "rows in",
        "rows out",
        "time"
    );
    for s in &summary.stages {
        outln!(
            "{:<22} {:<8} {:>10} {:>10} {:>10}",
            s.name,
            if s.ran { "ran" } else { "skipped" },
            s.report.rows_in,
            s.report.rows_out,
            fmt_secs(s.elapsed)
        );
        for r in &s.reasons {
            outln!("{:<22}   because {r}", "");
        }
        if s.name == "etl"
            && let Some(dropped) = s.report.metrics.get("dropped").and_then(|d| d.as_object())
        {
            let parts: Vec<String> = dropped.iter().map(|(k, v)| format!("{k} {v}")).collect();
            outln!("{:<22}   dropped: {}", "", parts.join(", "));
        }
    }
    outln!(
        "total {} ({} ran, {} skipped); artifacts in {}",
        fmt_secs(summary.elapsed),
        summary.stages.iter().filter(|s| s.ran).count(),
        summary.stages.iter().filter(|s| !s.ran).count(),
        store.location()
    );
    if let Some(p) =
        lineage::Releases::new(store.as_ref(), common.stockcode.as_deref()).production()?
    {
        outln!(
            "production serves release {} (moved by {}: {})",
            p.release,
            p.actor,
            p.reason
        );
    }
    Ok(())
}

fn cmd_retrain(common: &Common) -> Result<()> {
    let (params, raw, store) = common.open(true)?;
    let mut config = PipelineConfig::new(raw, store.as_ref(), params);
    config.stockcode = common.stockcode.clone();
    config.progress = true;
    config.command = "cargo xtask retrain".into();
    let report = pipeline::retrain(&config)?;
    for d in &report.decisions {
        outln!(
            "{:<12} {:<8} production val MSE(log) {:>8} refit {:.4}: {}",
            d.kind.name(),
            if d.replaced { "replaced" } else { "kept" },
            d.production_val_mse_log
                .map_or("-".to_string(), |v| format!("{v:.4}")),
            d.candidate_val_mse_log,
            d.reason
        );
    }
    outln!(
        "model version {} -> {}; release {} {}",
        report.model_version.0,
        report.model_version.1,
        report.release.as_deref().unwrap_or("-"),
        if report.promoted {
            "promoted to production"
        } else {
            "not promoted"
        }
    );
    Ok(())
}

fn cmd_status(common: &Common, json: bool) -> Result<()> {
    let (params, raw, store) = common.open(false)?;
    let mut config = PipelineConfig::new(raw, store.as_ref(), params);
    config.stockcode = common.stockcode.clone();
    let statuses = pipeline::status(&config)?;
    let stale = statuses.iter().filter(|s| !s.reasons.is_empty()).count();
    if json {
        let out: Vec<serde_json::Value> = statuses
            .iter()
            .map(|s| {
                serde_json::json!({
                    "stage": s.name,
                    "stale": !s.reasons.is_empty(),
                    "reasons": s.reasons,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_status(&statuses)?;
    }
    if stale > 0 {
        bail!("{stale} stage(s) stale: `cargo xtask pipeline` would run them");
    }
    Ok(())
}

fn print_status(statuses: &[pipeline::StageStatus]) -> Result<()> {
    let mut stale = 0;
    for s in statuses {
        if s.reasons.is_empty() {
            outln!("{}: up to date", s.name);
        } else {
            stale += 1;
            outln!("{}: stale", s.name);
            for r in &s.reasons {
                outln!("    {r}");
            }
        }
    }
    if stale == 0 {
        outln!("pipeline is up to date");
    }
    Ok(())
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            out.push((prefix.to_string(), v.to_string()));
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}.{i}"), v, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn cmd_metrics(out: &str, as_json: bool) -> Result<()> {
    let store = lineage::open_store(out)?;
    let metrics = pipeline::metrics(store.as_ref())?;
    if metrics.is_empty() {
        bail!(
            "no metrics in {}: run `cargo xtask pipeline --out {out}` first",
            store.location()
        );
    }
    if as_json {
        let map: serde_json::Map<String, serde_json::Value> = metrics.into_iter().collect();
        outln!("{}", serde_json::to_string_pretty(&map)?);
        return Ok(());
    }
    for (stage, value) in metrics {
        outln!("{stage}:");
        let mut rows = Vec::new();
        flatten("", &value, &mut rows);
        for (k, v) in rows {
            outln!("  {k:<48} {v}");
        }
    }
    Ok(())
}

fn cmd_load_model(out: &str, stockcode: Option<&str>) -> Result<()> {
    let store = lineage::open_store(out)?;
    // A product's own production release first, then the all-products one.
    let mut scopes = Vec::new();
    if let Some(code) = stockcode {
        scopes.push(Some(code));
    }
    scopes.push(None);
    for scope in scopes {
        let releases = lineage::Releases::new(store.as_ref(), scope);
        let Some(pointer) = releases.production()? else {
            outln!(
                "no production release for {}",
                scope.map_or("all products".to_string(), |c| format!("stock code {c}"))
            );
            continue;
        };
        let release = releases.open(&pointer);
        let key = pipeline::ArtifactKeys::new(scope).manifest;
        let loaded = models::load_from_store(&release, &[key.as_str()])?;
        for s in &loaded.skipped {
            outln!("skipped {}: {}", s.kind.name(), s.reason);
        }
        outln!(
            "serving {} from release {} (model version {}): test RMSLE {:.4}, MAE {:.3}",
            loaded.entry.kind.name(),
            pointer.release,
            loaded.manifest.model_version,
            loaded.entry.test.rmsle,
            loaded.entry.test.mae
        );
        return Ok(());
    }
    bail!(
        "nothing in production at {}: run `cargo xtask pipeline --out {out}`",
        store.location()
    )
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", sha2::Sha256::digest(&bytes)))
}

fn cmd_data(from: Option<&Path>, dest: Option<PathBuf>) -> Result<()> {
    let params = load_params(None, &[])?;
    let dest = raw_path(dest, &params)?;
    let Some(from) = from else {
        bail!(
            "downloading is not implemented: download the Online Retail dataset (UCI id 352, \
             or Online Retail II, id 502) and run `cargo xtask data --from PATH` with the \
             .zip, the .xlsx inside it, or a CSV / CSV.gz export"
        );
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if etl::is_workbook(from) {
        // The UCI site's .xlsx (inside a .zip): converted to the CSV(.gz)
        // the pipeline reads.
        let (csv, summary) = etl::workbook_to_csv(from, etl::DEFAULT_MAX_DECOMPRESSED_BYTES)?;
        let raw = etl::read_raw_bytes(&csv, &from.display().to_string())
            .with_context(|| format!("checking the CSV converted from {}", from.display()))?;
        let gzip = dest
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
        let bytes = if gzip {
            use std::io::Write as _;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&csv)?;
            enc.finish()?
        } else {
            csv
        };
        lineage::write_atomic(&dest, &bytes)?;
        let sheets: Vec<String> = summary
            .sheets
            .iter()
            .map(|(name, n)| format!("`{name}` {n} rows"))
            .collect();
        outln!(
            "converted {} ({}) to {} ({} data rows)",
            from.display(),
            sheets.join(", "),
            dest.display(),
            raw.height()
        );
        return Ok(());
    }
    let raw = etl::read_raw_file(from).with_context(|| format!("checking {}", from.display()))?;
    let bytes = std::fs::read(from)?;
    lineage::write_atomic(&dest, &bytes)?;
    let hash = sha256_file(&dest)?;
    let verdict = if hash == REFERENCE_SHA256 {
        "matches the reference UCI Online Retail copy"
    } else {
        "differs from the reference UCI copy (your own export?)"
    };
    outln!(
        "copied {} ({} data rows) to {}\nsha256 {hash}: {verdict}",
        from.display(),
        raw.height(),
        dest.display()
    );
    Ok(())
}

/// Features of every row of a raw export, through the pipeline's etl and features code.
fn features_of(path: &Path, params: &Params) -> Result<features::FeatureTable> {
    check_raw_exists(path)?;
    let raw = etl::read_raw_file(path)?;
    let typed = pipeline::PipelineParams::from_params(params)?;
    let (tx, _) = etl::clean(&raw, &typed.etl)?;
    let out = features::build_features(&tx, &typed.feature_params(), None)?;
    Ok(out.table)
}

fn cmd_drift(
    reference: &Path,
    current: &Path,
    as_json: bool,
    html: Option<&Path>,
    params: Option<&Path>,
    overrides: &[String],
) -> Result<()> {
    let params = load_params(params, overrides)?;
    let gp = pipeline::PipelineParams::from_params(&params)?.gate_params();
    let columns = |path: &Path| -> Result<Vec<drift::Column>> {
        let table = features_of(path, &params).with_context(|| format!("{}", path.display()))?;
        let rows: Vec<usize> = (0..table.len()).collect();
        Ok(pipeline::gate::feature_columns(
            &table,
            &rows,
            &gp.numerical_columns,
            &gp.categorical_columns,
        )?)
    };
    let (r, c) = (columns(reference)?, columns(current)?);
    let report = drift::detect(&r, &c, &gp.drift)?;
    let title = format!(
        "Data drift: {} (reference) vs {} (current)",
        reference.display(),
        current.display()
    );
    let gate = drift::GateReport::new(&title, report, Vec::new(), None);
    if let Some(path) = html {
        lineage::write_atomic(path, drift::render_html(&gate)?.as_bytes())?;
    }
    if as_json {
        outln!("{}", String::from_utf8_lossy(&gate.to_json()?).trim_end());
        return Ok(());
    }
    outln!("{title}");
    outln!(
        "{:<22} {:<6} {:<32} {:>9} {:>12}  drift",
        "column",
        "type",
        "test",
        "threshold",
        "score"
    );
    for col in &gate.drift.columns {
        outln!(
            "{:<22} {:<6} {:<32} {:>9} {:>12.6}  {}",
            col.column,
            col.column_type,
            col.stattest_name,
            col.threshold,
            col.score,
            if col.drifted { "DRIFT" } else { "-" }
        );
    }
    let d = &gate.drift;
    outln!(
        "{} of {} columns drifted (share {:.3}, dataset drift at >= {}): {}",
        d.number_of_drifted_columns,
        d.number_of_columns,
        d.share_of_drifted_columns,
        d.drift_share,
        if d.dataset_drift {
            "DATASET DRIFT"
        } else {
            "no dataset drift"
        }
    );
    if let Some(path) = html {
        outln!("HTML report: {}", path.display());
    }
    Ok(())
}

fn cmd_gen(out: &Path, seed: u64, invoices: usize, products: usize, clean: bool) -> Result<()> {
    let data = etl::synth::generate(&etl::synth::SynthConfig {
        seed,
        n_invoices: invoices,
        n_products: products,
        noise: !clean,
        ..Default::default()
    });
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    if out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("xlsx"))
    {
        // As the UCI site ships Online Retail II: a workbook, one sheet per year.
        let tmp = out.with_extension("xlsx.tmp");
        etl::csv_to_workbook(data.csv.as_bytes(), &tmp, 2)?;
        std::fs::rename(&tmp, out)?;
    } else {
        let bytes = if out.extension().is_some_and(|e| e == "gz") {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(data.csv.as_bytes())?;
            enc.finish()?
        } else {
            data.csv.into_bytes()
        };
        lineage::write_atomic(out, &bytes)?;
    }
    outln!(
        "wrote {} rows ({} products, {} dirty rows) to {}",
        data.rows,
        data.products.len(),
        data.dirty_rows,
        out.display()
    );
    Ok(())
}

/// The default params and the export a data benchmark reads (`--raw`, else
/// `data.raw`), checked to exist.
fn bench_input(raw: Option<PathBuf>) -> Result<(Params, PathBuf)> {
    let params = load_params(None, &[])?;
    let raw = raw_path(raw, &params)?;
    check_raw_exists(&raw)?;
    Ok((params, raw))
}

fn cmd_bench(raw: Option<PathBuf>, runs: usize, until: &str) -> Result<()> {
    let (params, raw) = bench_input(raw)?;
    let until: Stage = until.parse()?;
    let runs = runs.max(1);
    let dir = tempfile::tempdir()?;
    let store = lineage::LocalStore::new(dir.path())?;
    let mut per_stage: Vec<(String, Vec<f64>)> = Vec::new();
    let mut totals = Vec::new();
    let mut skip_totals = Vec::new();
    outln!(
        "bench: {} ({} runs + 1 warm-up, stages up to {})",
        raw.display(),
        runs,
        until.name()
    );
    for i in 0..=runs {
        let mut config =
            PipelineConfig::new(raw.clone(), &store as &dyn ArtifactStore, params.clone());
        config.force = true;
        config.until = Some(until);
        let summary = pipeline::run(&config)?;
        let started = Instant::now();
        config.force = false;
        let again = pipeline::run(&config)?;
        let skip = started.elapsed();
        if again.stages.iter().any(|s| s.ran) {
            bail!("a second run with nothing changed re-ran a stage");
        }
        if i == 0 {
            continue;
        }
        let mut total = 0.0;
        for s in &summary.stages {
            let secs = s.elapsed.as_secs_f64();
            total += secs;
            match per_stage.iter_mut().find(|(n, _)| *n == s.name) {
                Some((_, v)) => v.push(secs),
                None => per_stage.push((s.name.clone(), vec![secs])),
            }
        }
        totals.push(total);
        skip_totals.push(skip.as_secs_f64());
    }
    for (name, mut v) in per_stage {
        outln!("  {name:<10} median {:.3} s", features::median(&mut v));
    }
    outln!(
        "  {:<10} median {:.3} s (min {:.3} s)",
        "total",
        features::median(&mut totals.clone()),
        totals.iter().copied().fold(f64::INFINITY, f64::min)
    );
    outln!(
        "  {:<10} median {:.3} s (all stages skipped)",
        "no-op run",
        features::median(&mut skip_totals)
    );
    Ok(())
}
