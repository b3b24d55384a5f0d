//! `cargo xtask schedule --cron "0 0 3 * * Mon"`: the original's weekly
//! Prefect flow. At each tick: nothing changed → a `skipped` run; else the
//! pipeline runs, and its gate promotes (`promoted`), blocks (`blocked`), or
//! the run fails (`failed`). Every run is recorded in the store under
//! `schedule/runs/<start ms>.json`, first as `started`, then with its outcome,
//! so a run killed mid-way stays visible as `started`. One run at a time
//! (runs are sequential, and the pipeline takes the store's run lock, so a
//! manual run at the same time fails fast instead of interleaving). A failed
//! run does not stop the schedule. SIGTERM or Ctrl-C between runs stops it at
//! once; during a run, it stops the process: every artifact write is atomic
//! and production moves only in the gate's last step, so production is
//! either untouched or the run's gate had already decided.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{SecondsFormat, Utc};
use lineage::{ArtifactKeys, ArtifactStore, Releases};
use pipeline::PipelineConfig;
use serde::Serialize;

use crate::Common;

/// The record of one scheduled run.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// When the tick fired (RFC 3339, UTC).
    pub started_at: String,
    /// When it ended (absent while it runs).
    pub finished_at: Option<String>,
    /// `started`, `skipped`, `promoted`, `unchanged`, `blocked` or `failed`.
    pub outcome: String,
    /// The release production named before the run.
    pub production_before: Option<String>,
    /// The release production names after it.
    pub production_after: Option<String>,
    /// Stages that ran.
    pub stages_ran: usize,
    /// Why (the error of a failed run, the gate's verdict of a blocked one).
    pub message: String,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn put_record(store: &dyn ArtifactStore, key: &str, record: &RunRecord) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(record)?;
    bytes.push(b'\n');
    store.put(key, &bytes)?;
    Ok(())
}

/// One tick: skip, or run the pipeline and say what its gate did.
fn run_once(common: &Common) -> Result<RunRecord> {
    let (params, raw, store) = common.open(true)?;
    let mut config = PipelineConfig::new(raw, store.as_ref(), params);
    config.stockcode = common.stockcode.clone();
    config.command = "cargo xtask schedule".into();
    let scope = common.stockcode.as_deref();
    let production = || -> Result<Option<String>> {
        Ok(Releases::new(store.as_ref(), scope)
            .production()?
            .map(|p| p.release))
    };
    let started = now();
    let key = format!("schedule/runs/{}.json", Utc::now().timestamp_millis());
    let mut record = RunRecord {
        started_at: started,
        finished_at: None,
        outcome: "started".into(),
        production_before: production()?,
        production_after: None,
        stages_ran: 0,
        message: String::new(),
    };
    let stale = pipeline::status(&config)?
        .iter()
        .filter(|s| !s.reasons.is_empty())
        .count();
    if stale == 0 && record.production_before.is_some() {
        record.outcome = "skipped".into();
        record.message = "nothing changed since the last run (source, params, code)".into();
        record.production_after = record.production_before.clone();
        record.finished_at = Some(now());
        put_record(store.as_ref(), &key, &record)?;
        return Ok(record);
    }
    put_record(store.as_ref(), &key, &record)?;
    let decision_key = ArtifactKeys::new(scope).gate_decision;
    let decision = || store.get(&decision_key).ok();
    let decision_before = decision();
    match pipeline::run(&config) {
        Ok(summary) => {
            record.stages_ran = summary.stages.iter().filter(|s| s.ran).count();
            record.production_after = production()?;
            record.outcome = if record.production_after != record.production_before {
                "promoted"
            } else {
                "unchanged"
            }
            .into();
        }
        Err(e) => {
            record.production_after = production()?;
            let after = decision();
            let blocked = after.is_some()
                && after != decision_before
                && after
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .is_some_and(|d| d["promoted"] == false);
            record.outcome = if blocked { "blocked" } else { "failed" }.into();
            record.message = format!("{:#}", anyhow::Error::new(e));
        }
    }
    record.finished_at = Some(now());
    put_record(store.as_ref(), &key, &record)?;
    Ok(record)
}

/// Runs the pipeline at every tick of `cron` (seconds first, UTC), at most
/// `max_runs` times (forever when `None`).
pub fn run(common: &Common, cron: &str, max_runs: Option<usize>) -> Result<()> {
    let schedule = cron::Schedule::from_str(cron).with_context(|| {
        format!("--cron {cron:?}: six or seven fields, seconds first (\"0 0 3 * * Mon\")")
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async {
            #[cfg(unix)]
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
        };
        tokio::pin!(stop);
        let mut runs = 0usize;
        loop {
            if max_runs.is_some_and(|m| runs >= m) {
                outln!("schedule: {runs} runs done");
                return Ok(());
            }
            let next = schedule
                .upcoming(Utc)
                .next()
                .context("the cron expression has no upcoming time")?;
            outln!("schedule: next run at {}", next.to_rfc3339_opts(SecondsFormat::Secs, true));
            let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                () = tokio::time::sleep(wait) => {},
                () = &mut stop => {
                    outln!("schedule: stopping (no run in progress)");
                    return Ok(());
                }
            }
            let job = {
                let common = common.clone();
                tokio::task::spawn_blocking(move || run_once(&common))
            };
            tokio::select! {
                done = job => {
                    runs += 1;
                    match done? {
                        Ok(r) => outln!(
                            "schedule: run {runs} {} (production {}){}",
                            r.outcome,
                            r.production_after.as_deref().unwrap_or("none"),
                            if r.message.is_empty() { String::new() } else { format!(": {}", r.message) }
                        ),
                        // A run that could not even start (unreadable
                        // source, store down): logged, the schedule goes on.
                        Err(e) => outln!("schedule: run {runs} failed to start: {e:#}"),
                    }
                }
                () = &mut stop => {
                    outln!("schedule: stopping during a run; its record stays `started`, production is as its gate left it");
                    std::process::exit(143);
                }
            }
        }
    })
}
