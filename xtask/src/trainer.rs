//! The MLP trainer beside the task runner.
//!
//! The MLP trains in a process of its own (`price-mlp-train`, crate
//! `mlp-train`), so this one never loads libtorch. `cargo xtask` builds only
//! the xtask package, so commands that may fit models first build the trainer
//! into the same target directory (a no-op when it is current).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use pipeline::Stage;

/// Whether a run that stops after `until` (all stages when `None`) reaches
/// the models stage.
pub fn trains(until: Option<Stage>) -> bool {
    until.is_none_or(|u| u >= Stage::Models)
}

/// Builds the trainer when running under cargo and the trainer is not named
/// by `PRICE_MLP_TRAINER`; returns its path when built here, for child
/// processes (they inherit it and skip the build).
pub fn ensure() -> Result<Option<PathBuf>> {
    if std::env::var_os(models::TRAINER_ENV).is_some() {
        return Ok(None);
    }
    // Outside cargo (an installed binary), the trainer is expected beside it.
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(None);
    };
    let built = std::env::current_exe()?.with_file_name(models::TRAINER_BIN);
    // From the workspace root, whatever the caller's directory: cargo reads
    // `.cargo/config.toml` (where libtorch is) from where it runs.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--package", "mlp-train", "--bin"])
        .arg(models::TRAINER_BIN);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    // Quiet when it is only a freshness check; the first build (libtorch's
    // bindings: a few minutes) shows its progress.
    if built.is_file() {
        cmd.arg("--quiet");
    } else {
        eprintln!(
            "building the MLP trainer ({}, the one program that links libtorch)",
            models::TRAINER_BIN
        );
    }
    let status = cmd.status().context("building the MLP trainer")?;
    if !status.success() {
        bail!(
            "building the MLP trainer ({}) failed: {status}",
            models::TRAINER_BIN
        );
    }
    if !built.is_file() {
        bail!(
            "built the MLP trainer, but it is not beside this binary at {} \
             (is CARGO_TARGET_DIR the same for both?)",
            built.display()
        );
    }
    Ok(Some(built))
}
