//! The statistical tests of Evidently's default data-drift preset, each a
//! port of the Evidently / scipy / numpy code it names, so scores agree with a
//! Python run to floating-point precision.

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};

/// Two-sample Kolmogorov–Smirnov test (`scipy.stats.ks_2samp`, two-sided,
/// `method="auto"`): returns `(statistic, p_value)`.
///
/// With both samples of at most 10,000 values the p-value is exact (the
/// probability that a uniformly random lattice path leaves the band
/// `|x/n1 − y/n2| < D`, computed forward over the lattice). Beyond that scipy
/// uses `kstwo.sf(D, round(n1·n2/(n1+n2)))`; this uses the Kolmogorov limit
/// with Stephens' small-sample correction instead, which agrees to about 1e-3.
pub fn ks_2samp(a: &[f64], b: &[f64]) -> (f64, f64) {
    let (mut x, mut y) = (a.to_vec(), b.to_vec());
    x.sort_by(f64::total_cmp);
    y.sort_by(f64::total_cmp);
    let (n1, n2) = (x.len(), y.len());
    if n1 == 0 || n2 == 0 {
        return (f64::NAN, f64::NAN);
    }
    // D = max |F1 − F2| over all observed values (scipy's searchsorted form).
    let (mut i, mut j) = (0usize, 0usize);
    let mut d: f64 = 0.0;
    while i < n1 || j < n2 {
        let v = match (x.get(i), y.get(j)) {
            (Some(&p), Some(&q)) => p.min(q),
            (Some(&p), None) => p,
            (None, Some(&q)) => q,
            (None, None) => break,
        };
        while i < n1 && x[i] <= v {
            i += 1;
        }
        while j < n2 && y[j] <= v {
            j += 1;
        }
        d = d.max((i as f64 / n1 as f64 - j as f64 / n2 as f64).abs());
    }
    let g = gcd(n1, n2);
    if n1.max(n2) <= 10_000 {
        let lcm = (n1 / g) as f64 * n2 as f64;
        let h = (d * lcm).round();
        let d_exact = h / lcm;
        if h == 0.0 {
            return (d_exact, 1.0);
        }
        let p = 1.0 - prob_inside_band(n1, n2, g, h as u64);
        return (d_exact, p.clamp(0.0, 1.0));
    }
    let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
    let en = (m * n / (m + n)).round().sqrt();
    let lambda = (en + 0.12 + 0.11 / en) * d;
    (d, kolmogorov_sf(lambda).clamp(0.0, 1.0))
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Probability that a uniformly random monotone lattice path from (0, 0) to
/// (m, n) stays strictly inside `|x·n − y·m| < h·g`.
fn prob_inside_band(m: usize, n: usize, g: usize, h: u64) -> f64 {
    let limit = i128::from(h) * g as i128;
    let inside =
        |x: usize, y: usize| ((x as i128 * n as i128) - (y as i128 * m as i128)).abs() < limit;
    // p[y] holds the probability of reaching (x, y) inside the band; before
    // column x is filled it holds column x − 1. From (x, y) the next step goes
    // right with probability (m − x)/(m + n − x − y), up otherwise.
    let mut p = vec![0.0f64; n + 1];
    for x in 0..=m {
        for y in 0..=n {
            let from_left = if x == 0 {
                if y == 0 { 1.0 } else { 0.0 }
            } else {
                p[y] * (m - (x - 1)) as f64 / (m + n - (x - 1) - y) as f64
            };
            let from_below = if y == 0 {
                0.0
            } else {
                p[y - 1] * (n - (y - 1)) as f64 / (m + n - x - (y - 1)) as f64
            };
            p[y] = if inside(x, y) {
                from_left + from_below
            } else {
                0.0
            };
        }
    }
    p[n]
}

/// Kolmogorov's limiting survival function Q(λ) = 2 Σ (−1)^{k−1} e^{−2k²λ²}.
fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda < 0.2 {
        return 1.0;
    }
    let mut sum = 0.0;
    for k in 1..=100 {
        let k = k as f64;
        let term = (-2.0 * k * k * lambda * lambda).exp();
        sum += if k as i64 % 2 == 1 { term } else { -term };
        if term < 1e-16 {
            break;
        }
    }
    2.0 * sum
}

/// Evidently's chi-square test: expected counts are the reference's category
/// counts scaled to the current size; `scipy.stats.chisquare` p-value with
/// k − 1 degrees of freedom. `counts` are (reference, current) per category.
pub fn chi_square_p(counts: &[(f64, f64)]) -> f64 {
    let n_ref: f64 = counts.iter().map(|c| c.0).sum();
    let n_cur: f64 = counts.iter().map(|c| c.1).sum();
    if counts.len() < 2 || n_ref == 0.0 {
        return 1.0;
    }
    let k_norm = n_cur / n_ref;
    let stat: f64 = counts
        .iter()
        .map(|&(r, c)| {
            let e = r * k_norm;
            (c - e).powi(2) / e
        })
        .sum();
    if !stat.is_finite() {
        return 0.0;
    }
    match ChiSquared::new((counts.len() - 1) as f64) {
        Ok(chi) => chi.sf(stat),
        Err(_) => f64::NAN,
    }
}

/// Evidently's two-proportion z-test: the share of the smallest category in
/// each sample; two-sided p = 2·(1 − Φ(|z|)). `ref_hits`/`cur_hits` count that
/// category among `n_ref`/`n_cur` values.
pub fn z_test_p(ref_hits: f64, n_ref: f64, cur_hits: f64, n_cur: f64) -> f64 {
    let (p1, p2) = (ref_hits / n_ref, cur_hits / n_cur);
    let pooled = (p1 * n_ref + p2 * n_cur) / (n_ref + n_cur);
    let z = (p1 - p2) / (pooled * (1.0 - pooled) * (1.0 / n_ref + 1.0 / n_cur)).sqrt();
    if !z.is_finite() {
        // Identical single-category samples: Evidently reports p = 1.
        return if p1 == p2 { 1.0 } else { 0.0 };
    }
    match Normal::new(0.0, 1.0) {
        Ok(normal) => 2.0 * (1.0 - normal.cdf(z.abs())),
        Err(_) => f64::NAN,
    }
}

/// `scipy.stats.wasserstein_distance(a, b) / max(np.std(a), 0.001)`:
/// Evidently's normed Wasserstein distance (reference = `a`).
pub fn wasserstein_normed(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let mean = a.iter().sum::<f64>() / n;
    let std = (a.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    wasserstein(a, b) / std.max(0.001)
}

/// The first Wasserstein distance between two empirical distributions,
/// ∫ |F_a − F_b| dx (scipy's `wasserstein_distance` without weights).
pub fn wasserstein(a: &[f64], b: &[f64]) -> f64 {
    let (mut x, mut y) = (a.to_vec(), b.to_vec());
    x.sort_by(f64::total_cmp);
    y.sort_by(f64::total_cmp);
    let mut all: Vec<f64> = x.iter().chain(y.iter()).copied().collect();
    all.sort_by(f64::total_cmp);
    let (mut i, mut j) = (0usize, 0usize);
    let mut total = 0.0;
    for w in all.windows(2) {
        while i < x.len() && x[i] <= w[0] {
            i += 1;
        }
        while j < y.len() && y[j] <= w[0] {
            j += 1;
        }
        let fa = i as f64 / x.len() as f64;
        let fb = j as f64 / y.len() as f64;
        total += (fa - fb).abs() * (w[1] - w[0]);
    }
    total
}

/// `scipy.spatial.distance.jensenshannon(p, q)` (natural log): both are
/// normalised to sum 1 first.
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    let rel = |a: f64, b: f64| {
        if a > 0.0 && b > 0.0 {
            a * (a / b).ln()
        } else if a == 0.0 && b >= 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    };
    let mut js = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let (a, b) = (a / sp, b / sq);
        let m = (a + b) / 2.0;
        js += rel(a, m) + rel(b, m);
    }
    (js / 2.0).max(0.0).sqrt()
}

/// `np.histogram_bin_edges(data, bins="sturges")`.
pub fn sturges_edges(data: &[f64]) -> Vec<f64> {
    let lo = data.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = data.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo == hi {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    };
    let ptp = data.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        - data.iter().copied().fold(f64::INFINITY, f64::min);
    let width = ptp / ((data.len() as f64).log2() + 1.0);
    let bins = if width > 0.0 {
        ((hi - lo) / width).ceil() as usize
    } else {
        1
    };
    let bins = bins.max(1);
    // np.linspace(lo, hi, bins + 1)
    let step = (hi - lo) / bins as f64;
    (0..=bins)
        .map(|i| if i == bins { hi } else { lo + i as f64 * step })
        .collect()
}

/// `np.histogram(data, edges)[0]` for evenly spaced edges (numpy's fast path,
/// including its corrections at bin boundaries; the last bin is closed).
pub fn histogram(data: &[f64], edges: &[f64]) -> Vec<f64> {
    let bins = edges.len() - 1;
    let (first, last) = (edges[0], edges[bins]);
    let norm = bins as f64 / (last - first);
    let mut counts = vec![0.0; bins];
    for &v in data {
        if v < first || v > last {
            continue;
        }
        let mut k = ((v - first) * norm) as usize;
        if k == bins {
            k -= 1;
        }
        if v < edges[k] {
            k = k.saturating_sub(1);
        } else if k + 1 < bins && v >= edges[k + 1] {
            k += 1;
        }
        counts[k] += 1.0;
    }
    counts
}

/// Evidently's `feel_zeroes`: empty shares become a tiny positive value.
pub fn fill_zeroes(shares: &mut [f64]) {
    let min_nonzero = shares
        .iter()
        .copied()
        .filter(|v| *v != 0.0)
        .fold(f64::INFINITY, f64::min);
    if !min_nonzero.is_finite() {
        return;
    }
    let fill = if min_nonzero <= 0.0001 {
        min_nonzero / 1e6
    } else {
        0.0001
    };
    for v in shares.iter_mut().filter(|v| **v == 0.0) {
        *v = fill;
    }
}
