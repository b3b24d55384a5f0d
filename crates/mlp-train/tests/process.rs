//! The trainer binary as the models crate drives it: frames on its pipes.

use std::io::BufReader;
use std::process::{Command, Stdio};

use mlp_wire::{Matrix, Reply, TrainRequest};

/// y = 0.5·x0 − 0.25·x1 on a small grid.
fn matrix(rows: usize) -> Matrix {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..rows {
        let (a, b) = ((i % 17) as f32 / 17.0, (i % 5) as f32 / 5.0);
        x.extend([a, b]);
        y.push(0.5 * a - 0.25 * b);
    }
    Matrix {
        rows,
        cols: 2,
        x,
        y,
    }
}

fn params(seed: u64) -> serde_json::Value {
    serde_json::json!({
        "hidden_layers": 1, "units": 8, "dropout": 0.0, "batch_norm": false,
        "optimizer": "adam", "learning_rate": 0.01, "weight_decay": 0.0,
        "batch_size": 32, "max_epochs": 5, "patience": 3, "seed": seed,
        "use_cuda": false, "activation": "relu"
    })
}

#[test]
fn serves_requests_in_turn_survives_a_bad_one_and_exits_when_input_closes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_price-mlp-train"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap());
    let good = TrainRequest {
        params: params(7),
        train: matrix(400),
        val: matrix(100),
        warm_start: None,
    };
    let mut ask = |req: &TrainRequest| {
        mlp_wire::write_request(&mut input, req).unwrap();
        mlp_wire::read_reply(&mut output).unwrap()
    };
    let Reply::Trained(first) = ask(&good) else {
        panic!("the good request failed")
    };
    assert_eq!(first.training.rows, 400);
    assert!(first.training.epochs >= 1 && first.training.best_epoch <= first.training.epochs);
    assert!(first.training.best_val_loss.is_finite());
    assert!(first.weights.len() > 8 * 2 * 4, "weights of the 2-8-1 net");

    // Missing hyper-parameters: a failed reply, and the trainer goes on.
    let bad = TrainRequest {
        params: serde_json::json!({"units": 8}),
        ..good.clone()
    };
    let Reply::Failed(reason) = ask(&bad) else {
        panic!("a request without hyper-parameters trained")
    };
    assert!(reason.contains("hyper-parameters"), "{reason}");

    // The same request again gives the same weights (seeded per request),
    // and a warm start from them trains too.
    let Reply::Trained(again) = ask(&good) else {
        panic!("the trainer stopped serving after a failed request")
    };
    assert_eq!(again.weights, first.weights);
    let warm = TrainRequest {
        warm_start: Some(first.weights.clone()),
        params: params(8),
        ..good.clone()
    };
    let Reply::Trained(warmed) = ask(&warm) else {
        panic!("warm start failed")
    };
    assert!(warmed.training.best_val_loss <= first.training.best_val_loss * 1.5);

    drop(input);
    assert!(child.wait().unwrap().success());
}

#[test]
fn arguments_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_price-mlp-train"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("standard input"));
}
