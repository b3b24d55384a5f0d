//! The MLP trainer beside the task runner.
//!
//! The MLP trains in a process of its own (`price-mlp-train`, crate
//! `mlp-train`), so this one never loads libtorch. `cargo xtask` builds only
//! the xtask package, so commands that may fit models first build the trainer
//! into the same target directory (a no-op when it is current).

use std::path::PathBuf;

use anyhow::{Result, bail};
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
    if std::env::var_os("CARGO").is_none() {
        return Ok(None);
    }
    let built = std::env::current_exe()?.with_file_name(models::TRAINER_BIN);
    // Quiet when it is only a freshness check; the first build (libtorch's
    // bindings: a few minutes) shows its progress.
    let quiet = built.is_file();
    if !quiet {
        eprintln!(
            "building the MLP trainer ({}, the one program that links libtorch)",
            models::TRAINER_BIN
        );
    }
    crate::cargo_build(
        "mlp-train",
        models::TRAINER_BIN,
        !cfg!(debug_assertions),
        quiet,
    )?;
    if !built.is_file() {
        bail!(
            "built the MLP trainer, but it is not beside this binary at {} \
             (is CARGO_TARGET_DIR the same for both?)",
            built.display()
        );
    }
    Ok(Some(built))
}
