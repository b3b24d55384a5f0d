//! Every model on synthetic data: save → load → predict round-trips exactly,
//! models beat or match the baseline where they should, tuning helps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use models::tuning::TunerConfig;
use models::{
    BaselineParams, DesignMatrix, ElasticNetParams, GbmParams, ModelKind, Regressor, SvrParams,
    TrainConfig, evaluate, load_model,
};
use ndarray::{Array1, Array2};

fn parts() -> features::SplitParts {
    let data = etl::synth::generate(&etl::synth::SynthConfig {
        n_invoices: 1500,
        noise: false,
        ..Default::default()
    });
    let raw = etl::read_raw_bytes(data.csv.as_bytes(), "s.csv").unwrap();
    let (tx, _) = etl::clean(&raw, &etl::EtlParams::default()).unwrap();
    let out = features::build_features(&tx, &features::FeatureParams::default(), None).unwrap();
    features::split(
        &out.table,
        &out.window,
        &features::PreprocessParams::default(),
    )
    .unwrap()
}

fn round_trip(model: &dyn Regressor, m: &DesignMatrix) {
    let before = model.predict_matrix(m).unwrap();
    let files = model.to_files().unwrap();
    let back = load_model(model.kind(), &files).unwrap();
    let after = back.predict_matrix(m).unwrap();
    assert_eq!(
        before,
        after,
        "{} predictions changed after save/load",
        model.kind().name()
    );
    assert_eq!(
        back.to_files().unwrap(),
        files,
        "{} files are not stable",
        model.kind().name()
    );
    assert!(before.iter().all(|v| v.is_finite()));
}

#[test]
fn baseline_elastic_net_svr_and_lightgbm_round_trip_exactly() {
    let p = parts();
    round_trip(&BaselineParams::default().fit(&p.train).unwrap(), &p.val);
    round_trip(&ElasticNetParams::default().fit(&p.train).unwrap(), &p.val);
    round_trip(
        &SvrParams {
            max_train_rows: 300,
            ..Default::default()
        }
        .fit(&p.train)
        .unwrap(),
        &p.val,
    );
    round_trip(
        &GbmParams {
            num_iterations: 30,
            ..Default::default()
        }
        .fit(&p.train, Some(&p.val))
        .unwrap(),
        &p.val,
    );
}

#[test]
fn svr_batch_predictions_match_linfa_row_by_row() {
    let p = parts();
    let svr = SvrParams {
        max_train_rows: 400,
        ..Default::default()
    }
    .fit(&p.train)
    .unwrap();
    // More rows than one block, and a short last block.
    let x = ndarray::concatenate(ndarray::Axis(0), &[p.val.x.view(), p.test.x.view()]).unwrap();
    assert!(x.nrows() > 700, "{}", x.nrows());
    let fast = svr.predict(x.view()).unwrap();
    let reference = svr.predict_reference(x.view()).unwrap();
    let worst = fast
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-9, "largest difference {worst}");
    assert!(reference.iter().any(|v| (v - reference[0]).abs() > 1e-3));
    // The same after a save and load.
    let back = load_model(ModelKind::Svr, &svr.to_files().unwrap()).unwrap();
    assert_eq!(back.predict(x.view()).unwrap(), fast);
}

#[test]
fn lightgbm_beats_the_per_product_baseline_on_synthetic_data() {
    let p = parts();
    let base = evaluate(&BaselineParams::default().fit(&p.train).unwrap(), &p.test).unwrap();
    let gbm = evaluate(
        &GbmParams::default().fit(&p.train, Some(&p.val)).unwrap(),
        &p.test,
    )
    .unwrap();
    assert!(
        gbm.rmsle < base.rmsle,
        "lightgbm {} vs baseline {}",
        gbm.rmsle,
        base.rmsle
    );
}

#[test]
fn a_model_refuses_a_matrix_of_the_wrong_width() {
    let p = parts();
    let m = ElasticNetParams::default().fit(&p.train).unwrap();
    let x = Array2::<f64>::zeros((2, 3));
    assert!(
        m.predict(x.view())
            .unwrap_err()
            .to_string()
            .contains("3 columns")
    );
}

#[test]
fn invalid_hyper_parameters_are_rejected() {
    assert!(
        ElasticNetParams {
            alpha: -1.0,
            ..Default::default()
        }
        .validate()
        .is_err()
    );
    assert!(
        SvrParams {
            c: 0.0,
            ..Default::default()
        }
        .validate()
        .is_err()
    );
    assert!(
        GbmParams {
            bagging_fraction: 1.5,
            ..Default::default()
        }
        .validate()
        .is_err()
    );
    assert!(
        models::MlpParams {
            hidden_layers: 9,
            ..Default::default()
        }
        .validate()
        .is_err()
    );
}

#[test]
fn a_corrupt_model_file_is_an_error_not_a_panic() {
    let p = parts();
    let m = ElasticNetParams::default().fit(&p.train).unwrap();
    let mut files = m.to_files().unwrap();
    files.insert("model.json".into(), b"{not json".to_vec());
    assert!(load_model(ModelKind::ElasticNet, &files).is_err());
    let mut files = m.to_files().unwrap();
    files.clear();
    assert!(load_model(ModelKind::ElasticNet, &files).is_err());
    assert!(load_model(ModelKind::Mlp, &files).is_err());
}

/// A linear dataset with a known answer: y = x·w + small noise.
fn linear_data(n: usize, seed: u64) -> (DesignMatrix, Vec<f64>) {
    let w = vec![1.5, -2.0, 0.5, 0.0, 3.0];
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    let x = Array2::from_shape_fn((n, w.len()), |_| next());
    let y: Array1<f64> = x
        .rows()
        .into_iter()
        .map(|r| r.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + 0.01 * next())
        .collect();
    (
        DesignMatrix {
            feature_names: (0..w.len()).map(|i| format!("x{i}")).collect(),
            x,
            y,
            stock_code: vec!["P".into(); n],
            ts: (0..n as i64).collect(),
        },
        w,
    )
}

#[test]
fn tuning_improves_on_default_hyper_params_with_a_known_answer() {
    let (train, w) = linear_data(600, 1);
    let (val, _) = linear_data(300, 2);
    let (test, _) = linear_data(300, 3);
    // The default penalty (alpha = 0.01) shrinks the coefficients; the data want almost none.
    let default = ElasticNetParams::default().fit(&train).unwrap();
    let default_val = evaluate(&default, &val).unwrap().mse_log;
    let cfg = TrainConfig {
        tuner: TunerConfig::ego(4, 6, 3),
        ..Default::default()
    };
    let tuned = models::tune_and_fit(ModelKind::ElasticNet, &cfg, &train, &val, &test).unwrap();
    assert!(
        tuned.val.mse_log < default_val * 0.5,
        "tuned {} vs default {}",
        tuned.val.mse_log,
        default_val
    );
    let study = tuned.study.unwrap();
    assert_eq!(study.trials.len(), 10);
    // And the tuned model recovers the known coefficients.
    let coef = tuned.model.to_files().unwrap();
    let m = models::ElasticNetModel::from_files(&coef).unwrap();
    for (got, want) in m.weights().iter().zip(&w) {
        assert!((got - want).abs() < 0.05, "{got} vs {want}");
    }
}

mod mlp {
    use super::*;
    use models::MlpParams;

    fn small() -> MlpParams {
        MlpParams {
            hidden_layers: 2,
            units: 16,
            max_epochs: 4,
            batch_size: 128,
            use_cuda: false,
            ..Default::default()
        }
    }

    #[test]
    fn mlp_round_trips_and_pure_rust_inference_matches_torch() {
        let p = parts();
        let model = small().fit(&p.train, &p.val, None).unwrap();
        round_trip(&model, &p.val);
        // tch computed the best validation loss with its own forward pass; the
        // pure-Rust forward pass must give the same loss.
        let rust_loss = evaluate(&model, &p.val).unwrap().mse_log;
        let torch_loss = model.training().best_val_loss;
        assert!(
            (rust_loss - torch_loss).abs() < 1e-4 * torch_loss.max(1.0),
            "rust {rust_loss} torch {torch_loss}"
        );
    }

    #[test]
    fn mlp_with_batch_norm_round_trips() {
        let p = parts();
        let model = MlpParams {
            batch_norm: true,
            dropout: 0.2,
            ..small()
        }
        .fit(&p.train, &p.val, None)
        .unwrap();
        round_trip(&model, &p.val);
        let rust_loss = evaluate(&model, &p.val).unwrap().mse_log;
        assert!((rust_loss - model.training().best_val_loss).abs() < 1e-4 * rust_loss.max(1.0));
    }

    #[test]
    fn mlp_training_is_deterministic_on_cpu() {
        let p = parts();
        let a = small().fit(&p.train, &p.val, None).unwrap();
        let b = small().fit(&p.train, &p.val, None).unwrap();
        assert_eq!(a.weights_file(), b.weights_file());
    }

    #[test]
    fn warm_start_continues_from_saved_weights() {
        let p = parts();
        let a = small().fit(&p.train, &p.val, None).unwrap();
        let b = MlpParams {
            max_epochs: 1,
            ..small()
        }
        .fit(&p.train, &p.val, Some(&a))
        .unwrap();
        let la = evaluate(&a, &p.val).unwrap().mse_log;
        let lb = evaluate(&b, &p.val).unwrap().mse_log;
        assert!(
            lb < la * 1.5,
            "warm start lost the trained weights: {lb} vs {la}"
        );
        let other = MlpParams {
            units: 8,
            ..small()
        };
        assert!(other.fit(&p.train, &p.val, Some(&a)).is_err());
    }
}
