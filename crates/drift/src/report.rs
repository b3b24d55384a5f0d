//! The gate report: JSON with Evidently's structure, and one self-contained
//! HTML file (inline SVG charts drawn with plotters; no scripts, no CDN).

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Attributions, DriftError, DriftReport, FairnessReport, Result};

/// The fairness check of one candidate model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFairness {
    /// The model.
    pub model: String,
    /// Its fairness report.
    pub report: FairnessReport,
}

/// Everything the promotion gate decided on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    /// What was compared (e.g. file names or windows).
    pub title: String,
    /// Data drift.
    pub drift: DriftReport,
    /// Fairness of each candidate model, in priority order (empty for a
    /// drift-only report).
    pub fairness: Vec<ModelFairness>,
    /// The models that pass, in priority order: the promoted manifest's.
    pub promoted_models: Vec<String>,
    /// Models held back, with the reason.
    pub held_back: Vec<String>,
    /// The model whose attributions are shown (the one that will serve).
    pub attributed_model: Option<String>,
    /// Its attributions.
    pub attributions: Option<Attributions>,
    /// Whether the gate passes.
    pub passed: bool,
    /// Why it fails (empty when it passes).
    pub failures: Vec<String>,
    /// The gate failed and the candidate was promoted anyway by an explicit
    /// override.
    pub overridden: bool,
}

fn fairness_reason(f: &FairnessReport) -> String {
    match f.criterion {
        crate::FairnessCriterion::MeanOutcomeDifference => format!(
            "mean outcome difference {:+.4} exceeds ±{} (observed outcomes differ by {:+.4})",
            f.mean_outcome_difference, f.threshold, f.actual_outcome_difference
        ),
        crate::FairnessCriterion::ExcessMeanOutcomeDifference => format!(
            "predictions differ by {:+.4} between groups, observed outcomes by {:+.4}: excess {:+.4} exceeds ±{}",
            f.mean_outcome_difference,
            f.actual_outcome_difference,
            f.excess_outcome_difference,
            f.threshold
        ),
    }
}

impl GateReport {
    /// Builds the report and decides. A drift-only report (no fairness)
    /// fails on dataset drift; a gate report also fails when no candidate
    /// model passes the fairness check, and holds back the ones that fail.
    pub fn new(
        title: &str,
        drift: DriftReport,
        fairness: Vec<ModelFairness>,
        attributions: Option<(String, Attributions)>,
    ) -> Self {
        let mut failures = Vec::new();
        if drift.dataset_drift {
            failures.push(format!(
                "data drift: {} of {} columns drifted ({:.0}% ≥ {:.0}%): {}",
                drift.number_of_drifted_columns,
                drift.number_of_columns,
                drift.share_of_drifted_columns * 100.0,
                drift.drift_share * 100.0,
                drift.drifted_columns().join(", ")
            ));
        }
        let promoted_models: Vec<String> = fairness
            .iter()
            .filter(|m| m.report.acceptable)
            .map(|m| m.model.clone())
            .collect();
        let held_back: Vec<String> = fairness
            .iter()
            .filter(|m| !m.report.acceptable)
            .map(|m| format!("{}: fairness: {}", m.model, fairness_reason(&m.report)))
            .collect();
        if !fairness.is_empty() && promoted_models.is_empty() {
            failures.push(format!(
                "fairness: no candidate model passes ({})",
                held_back.join("; ")
            ));
        }
        let (attributed_model, attributions) = match attributions {
            Some((m, a)) => (Some(m), Some(a)),
            None => (None, None),
        };
        Self {
            title: title.into(),
            passed: failures.is_empty(),
            failures,
            drift,
            fairness,
            promoted_models,
            held_back,
            attributed_model,
            attributions,
            overridden: false,
        }
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self).map_err(|e| DriftError::Io(e.to_string()))?;
        v.push(b'\n');
        Ok(v)
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn plot_err<E: std::fmt::Debug>(e: E) -> DriftError {
    DriftError::Io(format!("drawing a chart: {e:?}"))
}

/// Reference-vs-current shares of one column as an SVG bar chart.
fn histogram_svg(c: &crate::ColumnDrift) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 240)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let n = c.bins.len().max(1);
        let top = c
            .reference_shares
            .iter()
            .chain(&c.current_shares)
            .copied()
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..n as f64, 0f64..top)
            .map_err(plot_err)?;
        let labels = c.bins.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n.min(8))
            .x_label_formatter(&|v| {
                labels
                    .get(*v as usize)
                    .map(|s| s.chars().take(14).collect())
                    .unwrap_or_default()
            })
            .y_desc("share")
            .draw()
            .map_err(plot_err)?;
        let reference = RGBColor(70, 110, 180);
        let current = RGBColor(220, 120, 50);
        chart
            .draw_series(c.reference_shares.iter().enumerate().map(|(i, v)| {
                Rectangle::new(
                    [(i as f64 + 0.05, 0.0), (i as f64 + 0.5, *v)],
                    reference.filled(),
                )
            }))
            .map_err(plot_err)?
            .label("reference")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], reference.filled())
            });
        chart
            .draw_series(c.current_shares.iter().enumerate().map(|(i, v)| {
                Rectangle::new(
                    [(i as f64 + 0.5, 0.0), (i as f64 + 0.95, *v)],
                    current.filled(),
                )
            }))
            .map_err(plot_err)?
            .label("current")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], current.filled()));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Mean |Shapley value| of the top features as a horizontal bar chart.
fn attribution_svg(a: &Attributions, k: usize) -> Result<String> {
    let top = a.top(k);
    let mut svg = String::new();
    {
        let height = 40 + 26 * top.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (640, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let max = top.iter().map(|t| t.1).fold(0.0f64, f64::max).max(1e-9) * 1.1;
        let names: Vec<String> = top.iter().map(|t| t.0.to_string()).collect();
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(180)
            .build_cartesian_2d(0f64..max, 0f64..top.len() as f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(top.len().max(1))
            .y_label_formatter(&|v| {
                let i = top.len().saturating_sub(1 + *v as usize);
                names.get(i).cloned().unwrap_or_default()
            })
            .x_desc("mean |Shapley value| (log1p quantity)")
            .draw()
            .map_err(plot_err)?;
        let n = top.len();
        chart
            .draw_series(top.iter().enumerate().map(|(i, (_, v))| {
                let y = (n - 1 - i) as f64;
                Rectangle::new(
                    [(0.0, y + 0.15), (*v, y + 0.85)],
                    RGBColor(90, 150, 90).filled(),
                )
            }))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// One self-contained HTML page: verdict, drift table and per-column
/// histograms, the fairness table, and the attribution chart.
pub fn render_html(report: &GateReport) -> Result<String> {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str(&format!("<title>{}</title>", esc(&report.title)));
    h.push_str("<style>body{font-family:sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.bad{color:#b00;font-weight:bold}.ok{color:#070;font-weight:bold}.charts{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}figcaption{font-size:13px}</style></head><body>");
    h.push_str(&format!("<h1>{}</h1>", esc(&report.title)));
    // A drift-only report (no model evaluated) states the drift verdict.
    let decides_promotion = !report.fairness.is_empty();
    if report.passed {
        if decides_promotion {
            h.push_str(&format!(
                "<p class=\"ok\">Gate passed: promoted {}.</p>",
                esc(&report.promoted_models.join(", "))
            ));
        } else {
            h.push_str("<p class=\"ok\">No dataset drift.</p>");
        }
        if !report.held_back.is_empty() {
            h.push_str("<p>Held back:</p><ul>");
            for m in &report.held_back {
                h.push_str(&format!("<li>{}</li>", esc(m)));
            }
            h.push_str("</ul>");
        }
    } else {
        h.push_str(if report.overridden {
            "<p class=\"bad\">Gate failed; the candidate was promoted anyway by an explicit override (gate.override, recorded in pipeline.lock.json).</p><ul>"
        } else if decides_promotion {
            "<p class=\"bad\">Gate failed: the model is not promoted.</p><ul>"
        } else {
            "<p class=\"bad\">Dataset drift detected.</p><ul>"
        });
        for f in &report.failures {
            h.push_str(&format!("<li>{}</li>", esc(f)));
        }
        h.push_str("</ul>");
    }
    let d = &report.drift;
    h.push_str(&format!(
        "<h2>Data drift</h2><p>{} of {} columns drifted (share {:.3}; dataset drift at ≥ {}): <b>{}</b></p>",
        d.number_of_drifted_columns,
        d.number_of_columns,
        d.share_of_drifted_columns,
        d.drift_share,
        if d.dataset_drift { "dataset drift" } else { "no dataset drift" }
    ));
    h.push_str("<table><tr><th>column</th><th>type</th><th>test</th><th>threshold</th><th>score</th><th>drifted</th><th>reference rows</th><th>current rows</th></tr>");
    for c in &d.columns {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.6}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.column),
            c.column_type,
            c.stattest_name,
            c.threshold,
            c.score,
            if c.drifted { "bad" } else { "ok" },
            if c.drifted { "yes" } else { "no" },
            c.reference_rows,
            c.current_rows
        ));
    }
    h.push_str("</table><h3>Reference vs current</h3><div class=\"charts\">");
    for c in &d.columns {
        h.push_str(&format!(
            "<figure>{}<figcaption>{} — {} {:.4}{}</figcaption></figure>",
            histogram_svg(c)?,
            esc(&c.column),
            c.stattest_name,
            c.score,
            if c.drifted { " (drift)" } else { "" }
        ));
    }
    h.push_str("</div>");
    if !report.fairness.is_empty() {
        h.push_str("<h2>Fairness (is_registered: registered = privileged)</h2><table><tr><th>model</th><th>group</th><th>rows</th><th>MSE (log1p)</th><th>MAE (units)</th><th>RMSLE</th><th>mean prediction (log1p)</th></tr>");
        for m in &report.fairness {
            for g in [&m.report.privileged, &m.report.unprivileged] {
                h.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
                    esc(&m.model), esc(&g.group), g.rows, g.mse, g.mae, g.rmsle, g.mean_prediction
                ));
            }
        }
        h.push_str("</table><table><tr><th>model</th><th>mean outcome difference (guest − registered)</th><th>observed difference</th><th>excess</th><th>criterion</th><th>MAE gap (units)</th><th>verdict</th></tr>");
        for m in &report.fairness {
            let f = &m.report;
            h.push_str(&format!(
                "<tr><td>{}</td><td>{:+.4}</td><td>{:+.4}</td><td>{:+.4}</td><td>{:?} within ±{}</td><td>{:+.4}</td><td class=\"{}\">{}</td></tr>",
                esc(&m.model),
                f.mean_outcome_difference,
                f.actual_outcome_difference,
                f.excess_outcome_difference,
                f.criterion,
                f.threshold,
                f.mae_gap,
                if f.acceptable { "ok" } else { "bad" },
                if f.acceptable { "acceptable" } else { "not acceptable" }
            ));
        }
        h.push_str("</table>");
    }
    if let Some(a) = &report.attributions {
        h.push_str(&format!(
            "<h2>Feature attributions ({})</h2><p>Sampled Shapley values over {} rows, {} permutations each.</p>{}",
            esc(report.attributed_model.as_deref().unwrap_or("")),
            a.rows,
            a.permutations,
            attribution_svg(a, 15)?
        ));
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Column, DriftParams, detect};

    #[test]
    fn the_html_report_is_self_contained_and_charts_every_column() {
        let r: Vec<f64> = (0..500).map(|i| (i % 37) as f64).collect();
        let c: Vec<f64> = r.iter().map(|v| v * 1.5).collect();
        let reference = vec![
            Column::numerical("price", r.clone()),
            Column::categorical("country", (0..500).map(|i| format!("c{}", i % 3)).collect()),
        ];
        let current = vec![
            Column::numerical("price", c),
            Column::categorical("country", (0..500).map(|i| format!("c{}", i % 4)).collect()),
        ];
        let drift = detect(&reference, &current, &DriftParams::default()).unwrap();
        let report = GateReport::new("test <report>", drift, Vec::new(), None);
        assert!(!report.passed);
        let html = render_html(&report).unwrap();
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(html.contains("test &lt;report&gt;"));
        assert!(html.contains("Dataset drift detected"));
        // Nothing fetched from elsewhere: no scripts, stylesheets or images by URL.
        for needle in ["<script", "<link", "src=\"http", "href=\"http", "@import"] {
            assert!(!html.contains(needle), "{needle}");
        }
        let json: serde_json::Value = serde_json::from_slice(&report.to_json().unwrap()).unwrap();
        assert_eq!(json["drift"]["columns"][0]["column"], "price");
        assert_eq!(json["drift"]["columns"][0]["stattest"], "ks");
        assert_eq!(json["drift"]["dataset_drift"], true);
    }
}
