//! The features and split stages on synthetic data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use etl::synth::{SynthConfig, generate};
use features::{
    DesignMatrix, FeatureParams, PreprocessParams, PriceRef, ProductSummary, build_features,
    price_features, split,
};

fn outputs() -> features::FeatureOutputs {
    let data = generate(&SynthConfig {
        n_invoices: 1500,
        ..Default::default()
    });
    let raw = etl::read_raw_bytes(data.csv.as_bytes(), "s.csv").unwrap();
    let (tx, _) = etl::clean(&raw, &etl::EtlParams::default()).unwrap();
    build_features(&tx, &FeatureParams::default(), None).unwrap()
}

#[test]
fn parts_are_in_time_order_and_cover_every_row() {
    let out = outputs();
    let parts = split(&out.table, &out.window, &PreprocessParams::default()).unwrap();
    let max = |m: &DesignMatrix| *m.ts.iter().max().unwrap();
    let min = |m: &DesignMatrix| *m.ts.iter().min().unwrap();
    assert!(max(&parts.train) < min(&parts.val));
    assert!(max(&parts.val) < min(&parts.test));
    assert_eq!(
        parts.train.len() + parts.val.len() + parts.test.len(),
        out.table.len()
    );
    let share = parts.train.len() as f64 / out.table.len() as f64;
    assert!((0.65..0.75).contains(&share), "train share {share}");
    assert!(parts.train.x.iter().all(|v| v.is_finite()));
}

#[test]
fn the_preprocessor_is_fitted_on_training_rows_only() {
    let out = outputs();
    let parts = split(&out.table, &out.window, &PreprocessParams::default()).unwrap();
    let pre = &parts.preprocessor;
    let price = pre.numeric.iter().find(|c| c.name == "unit_price").unwrap();
    let ts = out.table.timestamps().unwrap();
    let prices = out.table.numeric("unit_price").unwrap();
    let train: Vec<f64> = prices
        .iter()
        .zip(ts)
        .filter(|(_, t)| **t < out.window.train_end)
        .map(|(p, _)| *p)
        .collect();
    let mean = train.iter().sum::<f64>() / train.len() as f64;
    assert!((price.center - mean).abs() < 1e-9);
    // Standard scaling: the training column has mean 0, std 1.
    let j = pre
        .feature_names
        .iter()
        .position(|n| n == "unit_price")
        .unwrap();
    let col = parts.train.x.column(j);
    assert!(col.mean().unwrap().abs() < 1e-9);
    assert!((col.std(0.0) - 1.0).abs() < 1e-9);
}

#[test]
fn stock_code_encoding_is_cross_fitted_on_train() {
    let out = outputs();
    let parts = split(&out.table, &out.window, &PreprocessParams::default()).unwrap();
    let pre = &parts.preprocessor;
    let j = pre
        .feature_names
        .iter()
        .position(|n| n == "stock_code_te")
        .unwrap();
    let (c, s) = pre.stock_code_scale;
    let full: Vec<f64> = parts
        .train
        .stock_code
        .iter()
        .map(|code| (pre.stock_code.encode(code) - c) / s)
        .collect();
    let differs = parts
        .train
        .x
        .column(j)
        .iter()
        .zip(&full)
        .filter(|(a, b)| (*a - *b).abs() > 1e-12)
        .count();
    assert!(
        differs > parts.train.len() / 2,
        "training rows use out-of-fold encodings"
    );
    // Validation rows use the full training fit.
    for (i, code) in parts.val.stock_code.iter().enumerate().take(50) {
        assert!((parts.val.x[[i, j]] - (pre.stock_code.encode(code) - c) / s).abs() < 1e-12);
    }
}

#[test]
fn artifacts_round_trip() {
    let out = outputs();
    let parts = split(&out.table, &out.window, &PreprocessParams::default()).unwrap();
    let back = DesignMatrix::from_parquet(&parts.val.to_parquet().unwrap()).unwrap();
    assert_eq!(back, parts.val);
    let pre = features::Preprocessor::from_json(&parts.preprocessor.to_json().unwrap()).unwrap();
    assert_eq!(pre, parts.preprocessor);
    let summary = ProductSummary::from_parquet(&out.summary.to_parquet().unwrap()).unwrap();
    assert_eq!(summary.rows.len(), out.summary.rows.len());
    for (a, b) in summary.rows.iter().zip(&out.summary.rows) {
        assert_eq!(a.stock_code, b.stock_code);
        assert_eq!(a.price_median, b.price_median);
    }
}

#[test]
fn serving_can_rebuild_a_row_from_the_summary_and_contexts() {
    let out = outputs();
    let rows = out.contexts.table.rows().unwrap();
    for row in rows.iter().take(100) {
        let s = out.summary.get(row.stock_code).unwrap();
        let reference = PriceRef {
            max: s.ref_price_max,
            mean: s.ref_price_mean,
            median: s.ref_price_median,
        };
        let (rel_max, rel_mean, rel_median, sq, lp) = price_features(row.unit_price, &reference);
        assert_eq!(
            (rel_max, rel_mean, rel_median, sq, lp),
            (
                row.price_rel_max,
                row.price_rel_mean,
                row.price_rel_median,
                row.price_squared,
                row.log1p_price
            )
        );
        assert_eq!(s.popularity, row.product_popularity);
    }
    // Contexts hold at most `recent_contexts` rows per product, the latest ones.
    let codes = out.contexts.table.stock_codes().unwrap();
    let first = codes[0];
    assert!(
        codes.iter().filter(|c| **c == first).count() <= FeatureParams::default().recent_contexts
    );
}

#[test]
fn invalid_split_params_are_rejected_with_a_message() {
    let data = generate(&SynthConfig {
        n_invoices: 50,
        ..Default::default()
    });
    let raw = etl::read_raw_bytes(data.csv.as_bytes(), "s.csv").unwrap();
    let (tx, _) = etl::clean(&raw, &etl::EtlParams::default()).unwrap();
    let p = FeatureParams {
        split: features::SplitRule::Fraction {
            train: 0.9,
            val: 0.2,
        },
        ..Default::default()
    };
    assert!(
        build_features(&tx, &p, None)
            .unwrap_err()
            .to_string()
            .contains("train + val < 1")
    );
    let p = FeatureParams {
        split: features::SplitRule::Date {
            train_end: "2011-13-01".into(),
            val_end: "2011-12-01".into(),
        },
        ..Default::default()
    };
    assert!(
        build_features(&tx, &p, None)
            .unwrap_err()
            .to_string()
            .contains("YYYY-MM-DD")
    );
}

#[test]
fn the_feature_table_file_leaves_out_derived_columns_and_reading_restores_them() {
    let out = outputs();
    let table = &out.table;
    let bytes = table.to_parquet().unwrap();
    let stored = etl::read_parquet(&bytes).unwrap();
    for name in features::DERIVED_FEATURES {
        assert!(stored.get_column_index(name).is_none(), "{name} stored");
    }
    let back = features::FeatureTable::from_parquet(&bytes).unwrap();
    assert!(back.dataframe().equals_missing(table.dataframe()));
    // A file written with every column (before they were left out) reads the same.
    let full = etl::write_parquet(table.dataframe()).unwrap();
    let old = features::FeatureTable::from_parquet(&full).unwrap();
    assert!(old.dataframe().equals_missing(table.dataframe()));
    // The derived columns are what their names say.
    let col = |n: &str| table.numeric(n).unwrap();
    let df = table.dataframe();
    let quantity = df.column("quantity").unwrap().i64().unwrap();
    let customer = df.column("customer_id").unwrap().i64().unwrap();
    let price = col("unit_price");
    assert!(customer.null_count() > 0 && customer.null_count() < table.len());
    for (i, &p) in price.iter().enumerate() {
        assert_eq!(col("price_squared")[i], p * p);
        assert_eq!(col("log1p_price")[i], p.ln_1p());
        assert_eq!(col("target")[i], (quantity.get(i).unwrap() as f64).ln_1p());
        let registered = if customer.get(i).is_some() { 1.0 } else { 0.0 };
        assert_eq!(col("is_registered")[i], registered);
        assert!((1.0..=12.0).contains(&col("month")[i]));
        assert!((0.0..=6.0).contains(&col("day_of_week")[i]));
    }
    // The columns keep their order: ids, then the numeric features.
    let names: Vec<&str> = df.get_column_names().iter().map(|n| n.as_str()).collect();
    let expected: Vec<&str> = features::ID_COLUMNS
        .iter()
        .chain(features::NUMERIC_FEATURES.iter())
        .copied()
        .collect();
    assert_eq!(names, expected);
}
