//! `cargo xtask bench process`: the data stages as a user runs them, timed
//! from outside. Each run is one `xtask pipeline --until STAGE` process on a
//! fresh output directory; its wall time is taken from the spawn to its
//! exit, its CPU time and minor page faults from what the kernel adds to
//! this process's children's counts when it is reaped (`/proc/self/stat`),
//! its peak RSS from `VmHWM`, sampled on a thread of its own
//! ([`crate::bench_serve::peak_rss_mib`]). With
//! `--against BINARY` (another build of xtask) the two alternate run for
//! run, so the machine's drift (the same binary's median went from 0.295
//! to 0.469 s over two hours on this VM) reaches both alike; the ratio is
//! the figure to quote. `--against-command CMD` does the same with another
//! system's command for the same work (the original Python pipeline's ETL,
//! say), run by `sh -c` and timed the same way.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pipeline::Stage;

/// One `cargo xtask bench process` invocation.
pub struct ProcessBench {
    /// The export the pipeline reads.
    pub raw: PathBuf,
    /// Timed runs of each build (after one warm-up each).
    pub runs: usize,
    /// Last stage run.
    pub until: Stage,
    /// Another xtask build, run alternately with this one.
    pub against: Option<PathBuf>,
    /// Another system's command (`sh -c`), run alternately with this build.
    pub against_command: Option<String>,
    /// The MLP trainer the runs use when they reach the models stage.
    pub trainer: Option<PathBuf>,
}

/// What one run cost.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    wall: f64,
    /// User + system seconds (`None` without `/proc`).
    cpu: Option<f64>,
    /// Minor page faults (`None` without `/proc`).
    faults: Option<u64>,
    /// Peak resident memory, MiB (`None` when never sampled).
    peak_mib: Option<f64>,
}

/// What one timed run starts.
#[derive(Debug, Clone, PartialEq)]
enum Contender {
    /// An xtask build: `pipeline --until STAGE` on a fresh output dir.
    Xtask(PathBuf),
    /// Another system's command line, run by `sh -c`.
    Shell(String),
}

impl ProcessBench {
    /// Runs the benchmark and prints medians per build (and their ratio).
    pub fn run(&self) -> Result<()> {
        let mut builds = vec![(
            "this build".to_string(),
            Contender::Xtask(std::env::current_exe().context("finding this xtask binary")?),
        )];
        if let Some(other) = &self.against {
            if !other.is_file() {
                bail!("--against {}: no such file", other.display());
            }
            builds.push((
                format!("against {}", other.display()),
                Contender::Xtask(other.clone()),
            ));
        }
        if let Some(command) = &self.against_command {
            if command.trim().is_empty() {
                bail!("--against-command: the command is empty");
            }
            builds.push((
                format!("against `{command}`"),
                Contender::Shell(command.clone()),
            ));
        }
        let runs = self.runs.max(1);
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("run");
        let log = dir.path().join("stderr.log");
        outln!(
            "bench process: pipeline --until {} on {}, a fresh output dir each run, {} runs per build (+1 warm-up){}",
            self.until.name(),
            self.raw.display(),
            runs,
            if builds.len() > 1 {
                ", alternating"
            } else {
                ""
            }
        );
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); builds.len()];
        for run in 0..=runs {
            for (i, (_, contender)) in builds.iter().enumerate() {
                let sample = self.once(contender, &out, &log)?;
                if run > 0 {
                    samples[i].push(sample);
                }
            }
        }
        outln!(
            "  {:<44} {:>18} {:>10} {:>13} {:>10}",
            "build",
            "wall median (min)",
            "CPU",
            "minor faults",
            "peak RSS"
        );
        let mut walls = Vec::new();
        for ((name, _), s) in builds.iter().zip(&samples) {
            let wall = median(s.iter().map(|x| x.wall));
            let min = s.iter().map(|x| x.wall).fold(f64::INFINITY, f64::min);
            let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".into(), f);
            outln!(
                "  {:<44} {:>18} {:>10} {:>13} {:>10}",
                name,
                format!("{wall:.3} s ({min:.3})"),
                opt(median_of(s.iter().map(|x| x.cpu)), &|c| format!("{c:.3} s")),
                opt(
                    median_of(s.iter().map(|x| x.faults.map(|f| f as f64))),
                    &|f| format!("{f:.0}")
                ),
                opt(median_of(s.iter().map(|x| x.peak_mib)), &|m| format!(
                    "{m:.0} MiB"
                )),
            );
            walls.push(wall);
        }
        if let Some((this, others)) = walls.split_first() {
            for ((name, _), other) in builds.iter().skip(1).zip(others) {
                outln!(
                    "  wall ratio (this build / {name}): {:.3}, {:.1}x as fast",
                    this / other,
                    other / this
                );
            }
        }
        Ok(())
    }

    /// One run of `contender` (an xtask build on a fresh `out`).
    fn once(&self, contender: &Contender, out: &Path, log: &Path) -> Result<Sample> {
        if out.exists() {
            std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
        }
        let (mut cmd, what) = match contender {
            Contender::Xtask(binary) => {
                let mut cmd = Command::new(binary);
                if let Some(trainer) = &self.trainer {
                    cmd.env(models::TRAINER_ENV, trainer);
                }
                cmd.arg("pipeline")
                    .arg("--raw")
                    .arg(&self.raw)
                    .arg("--out")
                    .arg(out)
                    .args(["--until", self.until.name()]);
                (cmd, binary.display().to_string())
            }
            Contender::Shell(line) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(line);
                (cmd, format!("`{line}`"))
            }
        };
        let before = children_usage();
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let pid = child.id();
        let done = AtomicBool::new(false);
        let (status, peak_mib) = std::thread::scope(|s| {
            let sampler = s.spawn(|| {
                let mut peak: Option<f64> = None;
                while !done.load(Ordering::Relaxed) {
                    if let Some(mib) = tree_peak_mib(pid) {
                        peak = Some(peak.map_or(mib, |p| p.max(mib)));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                peak
            });
            let status = child.wait();
            done.store(true, Ordering::Relaxed);
            (status, sampler.join().ok().flatten())
        });
        let wall = started.elapsed().as_secs_f64();
        let status = status.with_context(|| format!("waiting for {what}"))?;
        if !status.success() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            bail!(
                "{what} failed ({status}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let after = children_usage();
        let (cpu, faults) = match (before, after) {
            (Some(b), Some(a)) => (Some(a.cpu - b.cpu), Some(a.faults.saturating_sub(b.faults))),
            _ => (None, None),
        };
        Ok(Sample {
            wall,
            cpu,
            faults,
            peak_mib,
        })
    }
}

/// The largest peak resident memory (`VmHWM`, MiB) of `pid` and its
/// descendants now: another system's command runs under `sh`, which forks
/// the program that does the work.
fn tree_peak_mib(pid: u32) -> Option<f64> {
    let mut peak = crate::bench_serve::peak_rss_mib(pid);
    for child in crate::bench_serve::child_pids(pid) {
        if let Some(mib) = tree_peak_mib(child) {
            peak = Some(peak.map_or(mib, |p| p.max(mib)));
        }
    }
    peak
}

/// The CPU time and minor faults of this process's reaped children.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Usage {
    cpu: f64,
    faults: u64,
}

fn children_usage() -> Option<Usage> {
    parse_children_usage(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// `cminflt`, `cutime` and `cstime` of a `/proc/PID/stat` line (fields 11,
/// 16 and 17; times in clock ticks of 1/100 s, the unit `/proc` reports on
/// every Linux architecture). The command name may hold spaces and
/// parentheses, so fields are counted after the last `)`.
fn parse_children_usage(stat: &str) -> Option<Usage> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Usage {
        faults: field(11)?,
        cpu: (field(16)? + field(17)?) as f64 / 100.0,
    })
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    features::median(&mut v)
}

/// The median of the values that are there (`None` when none is).
fn median_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| median(v.into_iter()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_usage_is_read_after_the_command_name() {
        // A command name with a space and a parenthesis; cminflt 4321,
        // cutime 150, cstime 25.
        let stat = "1234 (x (y) z) S 1 1234 1234 0 -1 4194304 100 4321 0 0 7 3 150 25 20 0 1 0";
        assert_eq!(
            parse_children_usage(stat),
            Some(Usage {
                faults: 4321,
                cpu: 1.75
            })
        );
        assert_eq!(parse_children_usage("1234 (x) S 1 2"), None);
        assert_eq!(parse_children_usage("no parenthesis"), None);
    }

    /// Another system's command is timed like a build, and its failure is
    /// reported with what it printed, not timed.
    #[test]
    fn another_systems_command_is_timed_and_its_failure_named() {
        let dir = tempfile::tempdir().unwrap();
        let bench = ProcessBench {
            raw: dir.path().join("unused.csv"),
            runs: 1,
            until: Stage::Features,
            against: None,
            against_command: None,
            trainer: None,
        };
        let (out, log) = (dir.path().join("run"), dir.path().join("log"));
        std::fs::create_dir(&out).unwrap();
        let sample = bench
            .once(&Contender::Shell("sleep 0.05".into()), &out, &log)
            .unwrap();
        assert!(sample.wall >= 0.05, "{sample:?}");
        // The work is done by `sh`'s child (`; true` keeps `sh` from
        // exec-ing it): its 100 MiB are in the peak, not only `sh`'s own.
        let big = "python3 -c 'b = b\"x\" * (100 << 20); import time; time.sleep(0.2)'; true";
        let sample = bench
            .once(&Contender::Shell(big.into()), &out, &log)
            .unwrap();
        assert!(sample.peak_mib.is_some_and(|m| m >= 100.0), "{sample:?}");
        assert!(!out.exists(), "the output dir is fresh for every run");
        let err = bench
            .once(
                &Contender::Shell("echo no such file >&2; exit 3".into()),
                &out,
                &log,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
    }

    #[test]
    fn this_process_has_a_stat_line() {
        assert!(children_usage().is_some());
    }

    #[test]
    fn a_median_of_nothing_is_none() {
        assert_eq!(median_of([None, None].into_iter()), None);
        assert_eq!(
            median_of([Some(3.0), None, Some(1.0), Some(2.0)].into_iter()),
            Some(2.0)
        );
    }
}
