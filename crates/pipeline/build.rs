//! Hashes the source of each stage crate so the lock file records a code
//! version that changes whenever a stage's implementation changes.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let crates = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
    // Source paths (relative to crates/) whose content is each stage's code.
    for (sources, var) in [
        (&["etl/src"][..], "ETL_SRC_HASH"),
        (&["features/src"][..], "FEATURES_SRC_HASH"),
        (
            &["models/src", "mlp-train/src", "tuning/src"][..],
            "MODELS_SRC_HASH",
        ),
        (&["drift/src", "pipeline/src/gate.rs"][..], "GATE_SRC_HASH"),
    ] {
        let mut hasher = blake3::Hasher::new();
        for source in sources {
            let src = crates.join(source);
            println!("cargo:rerun-if-changed={}", src.display());
            let mut files = Vec::new();
            if src.is_file() {
                files.push(src.clone());
            } else {
                collect(&src, &mut files);
            }
            files.sort();
            for f in &files {
                if let Ok(rel) = f.strip_prefix(&crates) {
                    hasher.update(rel.to_string_lossy().as_bytes());
                }
                hasher.update(&std::fs::read(f).unwrap_or_default());
            }
        }
        println!("cargo:rustc-env={var}={}", hasher.finalize().to_hex());
    }
}
