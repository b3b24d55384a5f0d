//! Replays every input of the fuzz corpora (`fuzz/corpus/<target>/`, kept in
//! the repo and grown by `cargo xtask fuzz`) through the same checks the
//! cargo-fuzz targets run, on stable: a fuzz finding, once its input is in a
//! corpus, stays fixed.

#[path = "../../fuzz/src/lib.rs"]
mod fuzz_checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its fuzz check", path.display());
        inputs += 1;
    }
    assert!(inputs >= 2, "{target}: the corpus has {inputs} inputs");
}

#[test]
fn csv_rows_corpus() {
    replay("csv_rows", fuzz_checks::csv_rows);
}

#[test]
fn request_params_corpus() {
    replay("request_params", fuzz_checks::request_params);
}

#[test]
fn params_toml_corpus() {
    replay("params_toml", fuzz_checks::params_toml);
}
