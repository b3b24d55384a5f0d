//! `cargo xtask bench scale --rows 0.5M,2M,10M`: how the stages' cost grows
//! with the data. For each size the seeded generator writes a market
//! (products and customers growing with the rows, as in the UCI data: about
//! 140 rows per product and 125 per customer), then each stage runs as its
//! own `xtask pipeline --until STAGE` process (the stages before it are
//! fresh and skipped), so each stage gets its own wall time and peak RSS
//! (`VmHWM`, sampled every 20 ms). Prints a table, the exponent of a
//! least-squares line through log(cost) against log(rows) per stage (1 is
//! linear), and writes a log-log plot as SVG.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pipeline::Stage;

/// One `cargo xtask bench scale` invocation.
pub struct ScaleBench {
    /// Row counts (`500k`, `2M`, `10000`).
    pub rows: Vec<String>,
    /// Last stage measured.
    pub until: Stage,
    /// Where the generated data and stores go (kept).
    pub dir: PathBuf,
    /// The SVG plot.
    pub svg: PathBuf,
    /// The MLP trainer the stage processes use (built by this run).
    pub trainer: Option<PathBuf>,
}

/// Parses `500k`, `0.5M`, `2M`, `10000`.
pub fn parse_rows(text: &str) -> Result<usize> {
    let t = text.trim();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('m' | 'M') => (&t[..t.len() - 1], 1e6),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .with_context(|| format!("--rows {text:?}: expected a count such as 500k or 2M"))?;
    if !(v.is_finite() && v > 0.0) || v * mult < 1000.0 {
        bail!("--rows {text:?}: at least 1000 rows");
    }
    Ok((v * mult).round() as usize)
}

/// The exponent `b` of `cost = a · rows^b`, by least squares on logs.
pub fn growth_exponent(points: &[(f64, f64)]) -> Option<f64> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// One stage at one size.
#[derive(Debug, Clone)]
struct Cell {
    rows: usize,
    stage: Stage,
    seconds: f64,
    peak_mib: f64,
}

/// Runs `cmd`, sampling the child's `VmHWM` (and, while it has children
/// of its own, its resident memory plus theirs); wall time and peak RSS.
fn measure(cmd: &mut Command) -> Result<(f64, f64)> {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).spawn()?;
    let pid = child.id();
    let mut peak: f64 = 0.0;
    let status = loop {
        if let Some(hwm) = crate::bench_serve::peak_rss_mib(pid) {
            peak = peak.max(hwm);
        }
        // The stage's own children (the MLP trainer) count too: their
        // resident memory now, added to the stage's.
        let children: f64 = crate::bench_serve::child_pids(pid)
            .into_iter()
            .filter_map(crate::bench_serve::rss_mib)
            .sum();
        if children > 0.0
            && let Some(rss) = crate::bench_serve::rss_mib(pid)
        {
            peak = peak.max(rss + children);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        bail!(
            "{} ({status}{})",
            cmd.get_args()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            if status.code().is_none() {
                "; killed: out of memory?"
            } else {
                ""
            }
        );
    }
    Ok((started.elapsed().as_secs_f64(), peak))
}

impl ScaleBench {
    /// Generates, runs, prints the table and the fit, writes the plot.
    pub fn run(&self) -> Result<()> {
        let sizes: Vec<usize> = self
            .rows
            .iter()
            .map(|r| parse_rows(r))
            .collect::<Result<_>>()?;
        let stages: Vec<Stage> = Stage::ALL
            .into_iter()
            .take_while(|s| *s != self.until)
            .chain([self.until])
            .collect();
        std::fs::create_dir_all(&self.dir)?;
        let me = std::env::current_exe()?;
        let mut cells = Vec::new();
        let mut failed = Vec::new();
        outln!(
            "bench scale: stages {}, each its own process; data under {}",
            stages
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", "),
            self.dir.display()
        );
        for &rows in &sizes {
            let raw = self.generate(rows)?;
            let store = self.dir.join(format!("store-{rows}"));
            if store.exists() {
                std::fs::remove_dir_all(&store)?;
            }
            for &stage in &stages {
                let mut cmd = Command::new(&me);
                if let Some(trainer) = &self.trainer {
                    cmd.env(models::TRAINER_ENV, trainer);
                }
                let measured = measure(
                    cmd.arg("pipeline")
                        .arg("--raw")
                        .arg(&raw)
                        .arg("--out")
                        .arg(&store)
                        .args(["--until", stage.name()]),
                );
                // A stage that fails (out of memory: SIGKILL) ends this size;
                // the sizes measured so far are still reported.
                let (seconds, peak_mib) = match measured {
                    Ok(m) => m,
                    Err(e) => {
                        outln!("{rows:>11} rows  {:<9} FAILED: {e:#}", stage.name());
                        failed.push(format!("{} at {rows} rows", stage.name()));
                        break;
                    }
                };
                outln!(
                    "{rows:>11} rows  {:<9} {seconds:>8.2} s  peak RSS {peak_mib:>8.0} MiB",
                    stage.name()
                );
                cells.push(Cell {
                    rows,
                    stage,
                    seconds,
                    peak_mib,
                });
            }
        }
        outln!("\ngrowth exponent b of cost = a·rows^b (1 = linear), least squares on logs:");
        for &stage in &stages {
            let of = |f: fn(&Cell) -> f64| -> Vec<(f64, f64)> {
                cells
                    .iter()
                    .filter(|c| c.stage == stage)
                    .map(|c| (c.rows as f64, f(c)))
                    .collect()
            };
            let fmt = |b: Option<f64>| b.map_or_else(|| "-".to_string(), |b| format!("{b:.2}"));
            outln!(
                "  {:<9} time {}  peak RSS {}",
                stage.name(),
                fmt(growth_exponent(&of(|c| c.seconds))),
                fmt(growth_exponent(&of(|c| c.peak_mib)))
            );
        }
        let svg = plot(&cells, &stages, &sizes);
        lineage::write_atomic(&self.svg, svg.as_bytes())?;
        outln!("plot: {}", self.svg.display());
        if !failed.is_empty() {
            bail!("failed: {}", failed.join(", "));
        }
        Ok(())
    }

    /// The market of `rows` rows (reused when already written).
    fn generate(&self, rows: usize) -> Result<PathBuf> {
        let path = self.dir.join(format!("rows-{rows}.csv.gz"));
        if path.exists() {
            return Ok(path);
        }
        let started = Instant::now();
        // About 3.64 lines per invoice in the generator.
        let data = etl::synth::generate(&etl::synth::SynthConfig {
            seed: 42,
            n_invoices: (rows as f64 / 3.64).round() as usize,
            n_products: (rows / 140).clamp(40, 50_000),
            n_customers: (rows / 125).clamp(200, 500_000),
            ..Default::default()
        });
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, data.csv.as_bytes())?;
        lineage::write_atomic(&path, &enc.finish()?)?;
        outln!(
            "{rows:>11} rows  generated {} rows, {} products in {:.1} s",
            data.rows,
            data.products.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(path)
    }
}

/// A log-log plot of seconds against rows, one line per stage.
fn plot(cells: &[Cell], stages: &[Stage], sizes: &[usize]) -> String {
    let (w, h, m) = (640.0, 400.0, 60.0);
    let xs: Vec<f64> = sizes.iter().map(|&r| (r as f64).log10()).collect();
    let ys: Vec<f64> = cells.iter().map(|c| c.seconds.max(1e-3).log10()).collect();
    let (x0, x1) = bounds(&xs);
    let (y0, y1) = bounds(&ys);
    let px = |x: f64| m + (x - x0) / (x1 - x0) * (w - 2.0 * m);
    let py = |y: f64| h - m - (y - y0) / (y1 - y0) * (h - 2.0 * m);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><title>Stage wall time against rows (log-log)</title><rect width="100%" height="100%" fill="white"/><line x1="{m}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{m}" y1="{m}" x2="{m}" y2="{}" stroke="black"/><text x="{}" y="{}" text-anchor="middle">rows (log scale)</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">seconds (log scale)</text>"#,
        h - m,
        w - m,
        h - m,
        h - m,
        w / 2.0,
        h - 15.0,
        h / 2.0,
        h / 2.0
    );
    for &r in sizes {
        let x = px((r as f64).log10());
        let _ = write!(
            s,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            h - m + 16.0,
            label_rows(r)
        );
    }
    // Seconds ticks at the powers of ten inside the range.
    for e in (y0.ceil() as i32)..=(y1.floor() as i32) {
        let y = py(f64::from(e));
        let label = if e < 0 {
            format!("{}", 10f64.powi(e))
        } else {
            format!("{}", 10i64.pow(e.unsigned_abs()))
        };
        let _ = write!(
            s,
            r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label} s</text>"##,
            m,
            w - m,
            m - 4.0,
            y + 4.0
        );
    }
    let dashes = ["", "6 3", "2 3", "8 3 2 3", "1 2", "10 4"];
    let colours = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    ];
    // Each line's name at its last point, moved apart so none overlap.
    let mut labels: Vec<(f64, usize)> = Vec::new();
    for (i, &stage) in stages.iter().enumerate() {
        let pts: Vec<(f64, f64)> = cells
            .iter()
            .filter(|c| c.stage == stage)
            .map(|c| (px((c.rows as f64).log10()), py(c.seconds.max(1e-3).log10())))
            .collect();
        let points: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5" stroke-dasharray="{}"/>"#,
            points.join(" "),
            colours[i % colours.len()],
            dashes[i % dashes.len()],
        );
        if let Some(&(_, y)) = pts.last() {
            labels.push((y, i));
        }
    }
    labels.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut last = f64::NEG_INFINITY;
    for (y, i) in labels {
        let y = y.max(last + 13.0);
        last = y;
        let _ = write!(
            s,
            r#"<text x="{}" y="{:.1}" fill="{}">{}</text>"#,
            w - m + 4.0,
            y + 4.0,
            colours[i % colours.len()],
            stages[i].name()
        );
    }
    s.push_str("</svg>\n");
    s
}

fn bounds(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    }
}

fn label_rows(r: usize) -> String {
    if r >= 1_000_000 {
        format!("{}M", r as f64 / 1e6)
    } else {
        format!("{}k", r as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_with_suffixes() {
        assert_eq!(parse_rows("500k").ok(), Some(500_000));
        assert_eq!(parse_rows("0.5M").ok(), Some(500_000));
        assert_eq!(parse_rows("2M").ok(), Some(2_000_000));
        assert_eq!(parse_rows("12000").ok(), Some(12_000));
        assert!(parse_rows("10").is_err());
        assert!(parse_rows("lots").is_err());
        assert!(parse_rows("-1M").is_err());
    }

    #[test]
    fn growth_exponent_recovers_the_power() {
        let lin: Vec<(f64, f64)> = [1e5, 1e6, 1e7].iter().map(|&x| (x, 3e-6 * x)).collect();
        assert!((growth_exponent(&lin).unwrap_or(0.0) - 1.0).abs() < 1e-9);
        let sq: Vec<(f64, f64)> = [1e5, 1e6].iter().map(|&x| (x, x * x)).collect();
        assert!((growth_exponent(&sq).unwrap_or(0.0) - 2.0).abs() < 1e-9);
        assert_eq!(growth_exponent(&[(1e5, 1.0)]), None);
    }

    #[test]
    fn plot_is_an_svg_with_a_line_per_stage() {
        let cells = vec![
            Cell {
                rows: 1000,
                stage: Stage::Etl,
                seconds: 0.1,
                peak_mib: 10.0,
            },
            Cell {
                rows: 10000,
                stage: Stage::Etl,
                seconds: 1.0,
                peak_mib: 100.0,
            },
        ];
        let s = plot(&cells, &[Stage::Etl], &[1000, 10000]);
        assert!(s.starts_with("<svg") && s.contains("<polyline") && s.contains(">etl<"));
        // Ticks at the powers of ten: 0.1 s and 1 s.
        assert!(s.contains(">0.1 s<") && s.contains(">1 s<"), "{s}");
        // Two stages ending at the same point get labels apart.
        let mut both = cells.clone();
        both.extend(cells.iter().map(|c| Cell {
            stage: Stage::Features,
            ..c.clone()
        }));
        let s = plot(&both, &[Stage::Etl, Stage::Features], &[1000, 10000]);
        let label_y = |name: &str| -> f64 {
            let end = s.find(&format!(">{name}</text>")).unwrap();
            let start = s[..end].rfind("<text").unwrap();
            let tag = &s[start..end];
            let y = tag.split(" y=\"").nth(1).unwrap();
            y[..y.find('"').unwrap()].parse().unwrap()
        };
        assert!((label_y("etl") - label_y("features")).abs() >= 13.0, "{s}");
    }
}
