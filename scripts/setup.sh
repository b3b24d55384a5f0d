#!/usr/bin/env bash
# Installs the native prerequisites the workspace needs, idempotently: anything
# already present is skipped, so running it again costs seconds.
#
# Tools go under .tools/ in the repository (git-ignored) unless TOOLS_DIR is set.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup) first"; exit 1; }

# The artifact-store tests run a real S3-compatible server (s3s-fs) in-process
# on 127.0.0.1, built from crates.io as a dev-dependency: nothing to install.
log "rust toolchain: $(cargo --version)"
log "prerequisites ready"
