//! Every drift statistic against reference values from Python on the same
//! fixed samples. The values were produced by `tests/data/reference_values.py`
//! (kept beside this file) with scipy 1.17.1 and numpy 2.4.6: `ks_2samp`,
//! `chisquare`, `norm.cdf`, `wasserstein_distance`, `jensenshannon`, and
//! Evidently's own formulas (expected counts scaled from the reference for
//! chi-square; its two-proportion z statistic; its `get_binned_data` with
//! Sturges bins and zero filling) written out in numpy.

#![allow(clippy::unwrap_used)]

use drift::stattest;
use drift::{Column, DriftParams, StatTest, detect};

fn seq(n: usize, mul: usize, modulo: usize, div: f64, off: f64) -> Vec<f64> {
    (0..n)
        .map(|i| ((i * mul) % modulo) as f64 / div + off)
        .collect()
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-6,
        "{what}: got {got:.12}, scipy says {want:.12}"
    );
}

#[test]
fn ks_statistic_and_exact_p_value_match_scipy() {
    let a = seq(60, 37, 101, 10.0, 0.0);
    let b = seq(45, 53, 97, 10.0, 2.5);
    let (d, p) = stattest::ks_2samp(&a, &b);
    close(d, 0.25, "KS statistic, unequal sizes");
    close(p, 0.06906911466386682, "KS p-value, unequal sizes");

    let c = seq(50, 29, 89, 7.0, 0.0);
    let e = seq(50, 31, 83, 7.0, 2.0);
    let (d, p) = stattest::ks_2samp(&c, &e);
    close(d, 0.18, "KS statistic, equal sizes");
    close(p, 0.3959398631708505, "KS p-value, equal sizes");

    let big1 = seq(700, 61, 1009, 50.0, 0.0);
    let big2 = seq(900, 67, 1013, 50.0, 0.9);
    let (d, p) = stattest::ks_2samp(&big1, &big2);
    close(d, 0.050793650793650794, "KS statistic, 700 vs 900");
    close(p, 0.25205671008866654, "KS p-value, 700 vs 900");
}

#[test]
fn chi_square_and_z_test_p_values_match_scipy() {
    let counts = [(30.0, 40.0), (50.0, 35.0), (20.0, 25.0), (10.0, 20.0)];
    close(
        stattest::chi_square_p(&counts),
        0.0008302477024172393,
        "chi-square p-value",
    );
    close(
        stattest::z_test_p(120.0, 400.0, 150.0, 380.0),
        0.005438436947928782,
        "z-test p-value",
    );
}

#[test]
fn normed_wasserstein_and_jensen_shannon_match_scipy() {
    let a = seq(60, 37, 101, 10.0, 0.0);
    let b = seq(45, 53, 97, 10.0, 2.5);
    close(
        stattest::wasserstein_normed(&a, &b),
        0.7065292091464822,
        "normed Wasserstein",
    );

    let big1 = seq(700, 61, 1009, 50.0, 0.0);
    let big2: Vec<f64> = seq(900, 67, 1013, 50.0, 0.9)
        .iter()
        .map(|v| v * 1.3)
        .collect();
    let all: Vec<f64> = big1.iter().chain(&big2).copied().collect();
    let edges = stattest::sturges_edges(&all);
    assert_eq!(edges.len(), 13, "numpy's Sturges edges");
    let mut r: Vec<f64> = stattest::histogram(&big1, &edges)
        .iter()
        .map(|v| v / 700.0)
        .collect();
    let mut c: Vec<f64> = stattest::histogram(&big2, &edges)
        .iter()
        .map(|v| v / 900.0)
        .collect();
    stattest::fill_zeroes(&mut r);
    stattest::fill_zeroes(&mut c);
    close(
        stattest::jensen_shannon(&r, &c),
        0.3217069097871071,
        "Jensen-Shannon, binned numbers",
    );

    let mut r = vec![0.3, 0.5, 0.2, 0.0];
    let mut c = vec![0.25, 0.45, 0.25, 0.05];
    stattest::fill_zeroes(&mut r);
    stattest::fill_zeroes(&mut c);
    close(
        stattest::jensen_shannon(&r, &c),
        0.1420882457160473,
        "Jensen-Shannon, categories",
    );
}

#[test]
fn tests_are_chosen_as_evidentlys_default_preset() {
    let p = DriftParams::default();
    let small_num = Column::numerical("x", seq(500, 37, 101, 10.0, 0.0));
    let few_values = Column::numerical("k", (0..500).map(|i| (i % 4) as f64).collect());
    let binary = Column::numerical("b", (0..500).map(|i| (i % 2) as f64).collect());
    let cat = Column::categorical("c", (0..500).map(|i| format!("c{}", i % 7)).collect());
    let big_num = Column::numerical("x", seq(5000, 37, 1001, 10.0, 0.0));
    let big_cat = Column::categorical("c", (0..5000).map(|i| format!("c{}", i % 7)).collect());
    let big_few = Column::numerical("k", (0..5000).map(|i| (i % 4) as f64).collect());
    let cases = [
        (small_num, StatTest::Ks),
        (few_values, StatTest::ChiSquare),
        (binary, StatTest::ZTest),
        (cat, StatTest::ChiSquare),
        (big_num, StatTest::Wasserstein),
        (big_cat, StatTest::JensenShannon),
        (big_few, StatTest::JensenShannon),
    ];
    for (col, want) in cases {
        let r = detect(std::slice::from_ref(&col), std::slice::from_ref(&col), &p).unwrap();
        assert_eq!(r.columns[0].stattest, want, "{}", col.name);
        assert!(!r.columns[0].drifted, "identical data must not drift");
        assert!(!r.dataset_drift);
    }
}

#[test]
fn dataset_drift_needs_the_configured_share_and_nan_is_dropped() {
    let base = seq(3000, 37, 1001, 10.0, 0.0);
    let shifted: Vec<f64> = base.iter().map(|v| v * 1.5).collect();
    let mut with_nan = base.clone();
    with_nan.extend([f64::NAN, f64::INFINITY]);
    let reference = vec![
        Column::numerical("price", base.clone()),
        Column::numerical("other", base.clone()),
        Column::numerical("third", base.clone()),
    ];
    let current = vec![
        Column::numerical("price", shifted),
        Column::numerical("other", with_nan),
        Column::numerical("third", base.clone()),
    ];
    let r = detect(&reference, &current, &DriftParams::default()).unwrap();
    assert_eq!(r.drifted_columns(), vec!["price"]);
    assert_eq!(r.columns[1].current_rows, 3000, "non-finite values dropped");
    assert!(!r.dataset_drift, "1 of 3 < 0.5");
    let strict = DriftParams {
        drift_share: 0.3,
        ..Default::default()
    };
    assert!(detect(&reference, &current, &strict).unwrap().dataset_drift);
    let missing = detect(&reference, &current[..1], &DriftParams::default());
    assert!(missing.unwrap_err().to_string().contains("other"));
}
