//! `cargo xtask fuzz --seconds N`: runs each cargo-fuzz target of `fuzz/`
//! for N seconds on its corpus (`fuzz/corpus/<target>`, kept in the repo),
//! and prints each target's executions, rate, corpus size and verdict.
//! Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`);
//! libFuzzer's findings go to `fuzz/artifacts/<target>/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The targets, in the order they run.
pub const TARGETS: [&str; 3] = ["csv_rows", "request_params", "params_toml"];

/// One `cargo xtask fuzz` invocation.
pub struct Fuzz {
    /// Seconds per target.
    pub seconds: u64,
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
    /// libFuzzer jobs per target (parallel processes).
    pub jobs: usize,
    /// Minimise each corpus afterwards (edge set cover, seeds kept).
    pub minimize: bool,
}

/// What one target's run reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The target.
    pub target: String,
    /// Executions libFuzzer reported (`Done N runs`, or the last status line).
    pub executions: u64,
    /// Wall seconds.
    pub seconds: f64,
    /// Whether it ended without a crash, leak, timeout or out-of-memory.
    pub clean: bool,
}

/// The run counts of a libFuzzer log's `Done N runs in S second(s)` lines
/// (one per worker).
fn done_runs(log: &str) -> impl Iterator<Item = u64> + '_ {
    log.lines().filter_map(|l| {
        l.trim()
            .strip_prefix("Done ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    })
}

/// The executions of a libFuzzer log: its `Done N runs in S second(s)` line
/// or, failing that, the largest `#N` status line.
pub fn executions(log: &str) -> u64 {
    if let Some(n) = done_runs(log).last() {
        return n;
    }
    log.lines()
        .filter_map(|l| {
            l.strip_prefix('#')
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0)
}

fn fuzz_dir() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .join("fuzz");
    if !dir.join("Cargo.toml").exists() {
        bail!("{} has no Cargo.toml", dir.display());
    }
    Ok(dir)
}

fn cargo_fuzz(dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir).args(["+nightly", "fuzz"]);
    cmd
}

/// Where the fuzz build goes: beside the workspace's target dir.
fn target_dir() -> Option<String> {
    std::env::var("CARGO_TARGET_DIR")
        .ok()
        .map(|t| format!("{t}/fuzz"))
}

impl Fuzz {
    /// Builds the targets, runs each, prints a table; fails if any target
    /// found a crash.
    pub fn run(&self) -> Result<()> {
        let dir = fuzz_dir()?;
        let targets: Vec<&str> = if self.targets.is_empty() {
            TARGETS.to_vec()
        } else {
            for t in &self.targets {
                if !TARGETS.contains(&t.as_str()) {
                    bail!(
                        "unknown fuzz target `{t}` (targets: {})",
                        TARGETS.join(", ")
                    );
                }
            }
            self.targets.iter().map(String::as_str).collect()
        };
        let mut build = cargo_fuzz(&dir);
        build.args(["build", "--sanitizer", "none"]);
        if let Some(t) = target_dir() {
            build.args(["--target-dir", &t]);
        }
        let status = build
            .status()
            .context("running `cargo +nightly fuzz build` (rustup toolchain install nightly; cargo install cargo-fuzz)")?;
        if !status.success() {
            bail!("cargo fuzz build failed ({status})");
        }
        let mut outcomes = Vec::new();
        for target in targets {
            outcomes.push(self.run_target(&dir, target)?);
        }
        println!(
            "{:<16} {:>14} {:>9} {:>12} {:>8} result",
            "target", "executions", "seconds", "exec/s", "corpus"
        );
        for o in &outcomes {
            let corpus = std::fs::read_dir(dir.join("corpus").join(&o.target))
                .map(|d| d.count())
                .unwrap_or(0);
            println!(
                "{:<16} {:>14} {:>9.0} {:>12.0} {:>8} {}",
                o.target,
                o.executions,
                o.seconds,
                o.executions as f64 / o.seconds.max(1e-9),
                corpus,
                if o.clean {
                    "no crash"
                } else {
                    "CRASH (see fuzz/artifacts)"
                }
            );
        }
        if outcomes.iter().any(|o| !o.clean) {
            bail!("a fuzz target crashed");
        }
        Ok(())
    }

    fn run_target(&self, dir: &Path, target: &str) -> Result<Outcome> {
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let log_path = std::env::temp_dir().join(format!("fuzz-{target}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = cargo_fuzz(dir);
        cmd.args(["run", "--sanitizer", "none"]);
        if let Some(t) = target_dir() {
            cmd.args(["--target-dir", &t]);
        }
        cmd.arg(target)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={}", self.seconds))
            .arg("-max_len=65536")
            .arg("-rss_limit_mb=4096")
            .arg("-print_final_stats=1");
        if self.jobs > 1 {
            cmd.arg(format!("-jobs={}", self.jobs))
                .arg(format!("-workers={}", self.jobs));
        }
        eprintln!(
            "fuzzing {target} for {} s (log: {})",
            self.seconds,
            log_path.display()
        );
        let started = Instant::now();
        let status = cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        let seconds = started.elapsed().as_secs_f64();
        let mut text = std::fs::read_to_string(&log_path)?;
        // With -jobs, each worker logs to fuzz-<n>.log in the working directory.
        for n in 0..self.jobs.max(1) {
            if let Ok(worker) = std::fs::read_to_string(dir.join(format!("fuzz-{n}.log"))) {
                text.push_str(&worker);
                let _ = std::fs::remove_file(dir.join(format!("fuzz-{n}.log")));
            }
        }
        if self.minimize {
            minimize(target, &corpus)?;
        }
        Ok(Outcome {
            target: target.to_string(),
            executions: worker_total(&text, self.jobs),
            seconds,
            clean: status.success(),
        })
    }
}

/// Replaces `corpus` by the smallest subset libFuzzer finds that covers the
/// same edges (`-set_cover_merge=1 -use_counters=0`: edges, not hit counts,
/// so the corpus stays small enough for the repository), keeping every
/// hand-written seed (a name that is not a 40-digit hash).
fn minimize(target: &str, corpus: &Path) -> Result<()> {
    let binary = PathBuf::from(target_dir().unwrap_or_else(|| "fuzz/target".into()))
        .join("x86_64-unknown-linux-gnu/release")
        .join(target);
    let merged = tempfile::tempdir()?;
    let status = Command::new(&binary)
        .arg("-set_cover_merge=1")
        .arg("-use_counters=0")
        .arg(merged.path())
        .arg(corpus)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("merging the {target} corpus failed ({status})");
    }
    for entry in std::fs::read_dir(corpus)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let hashed = name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if hashed {
            std::fs::remove_file(&path)?;
        }
    }
    for entry in std::fs::read_dir(merged.path())? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, corpus.join(name))?;
        }
    }
    Ok(())
}

/// With one job, the log's executions; with several, each worker's `Done`
/// lines summed.
fn worker_total(log: &str, jobs: usize) -> u64 {
    if jobs <= 1 {
        return executions(log);
    }
    done_runs(log).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_come_from_the_done_line_else_the_last_status() {
        let log = "#2\tINITED cov: 10 ft: 10 corp: 3/300b exec/s: 0 rss: 30Mb\n\
                   #4096\tpulse  cov: 50 ft: 80 corp: 9/1Kb exec/s: 2048 rss: 40Mb\n\
                   Done 1234567 runs in 601 second(s)\n";
        assert_eq!(executions(log), 1_234_567);
        let killed = "#2\tINITED cov: 10\n#524288\tpulse  cov: 50\n#131072\tNEW cov: 51\n";
        assert_eq!(executions(killed), 524_288);
        assert_eq!(executions("nothing"), 0);
        let two = "Done 10 runs in 1 second(s)\nDone 32 runs in 1 second(s)\n";
        assert_eq!(worker_total(two, 2), 42);
        assert_eq!(worker_total(two, 1), 32);
    }
}
