//! Hashes the source of each stage crate so the lock file records a code
//! version that changes whenever a stage's implementation changes.

use std::path::{Path, PathBuf};

include!("../../build-support/torch_rpath.rs");

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
    emit_torch_rpath();
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let crates = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
    for (krates, var) in [
        (&["etl"][..], "ETL_SRC_HASH"),
        (&["features"][..], "FEATURES_SRC_HASH"),
        (&["models", "tuning"][..], "MODELS_SRC_HASH"),
    ] {
        let mut hasher = blake3::Hasher::new();
        for krate in krates {
            let src = crates.join(krate).join("src");
            println!("cargo:rerun-if-changed={}", src.display());
            let mut files = Vec::new();
            collect(&src, &mut files);
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
