#!/usr/bin/env bash
# Installs the native prerequisites of the workspace, idempotently: what is
# already present is skipped, so a second run takes seconds.
#
#   libtorch 2.13.0  for tch (the MLP trainer)    PyPI torch wheel, CPU libraries only
#   cmake >= 3.28    for lightgbm3 (LightGBM C++)  PyPI cmake
#   libclang         for lightgbm3's bindgen       Debian packages
#   redis-server     for the serving cache tests   Debian package
#
# Big downloads go to a cache outside the clone (PRICE_PREDICTION_CACHE, default
# ~/.cache/price-prediction); .tools/ in the repository holds symlinks to them,
# which .cargo/config.toml points the build at.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }
CACHE="${PRICE_PREDICTION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/price-prediction}"
mkdir -p "$CACHE" .tools

command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup) first"; exit 1; }
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || { log "python3 not found (needed to fetch libtorch and cmake from PyPI)"; exit 1; }

# libtorch: the PyPI torch wheel carries it. The CPU libraries need only the two
# small CUDA runtime packages next to them, not the whole CUDA stack.
TORCH_VENV="$CACHE/torch-venv"
torch_dir() { ls -d "$TORCH_VENV"/lib/python3*/site-packages/torch 2>/dev/null | head -n1; }
if [ -z "$(torch_dir)" ] || [ ! -f "$(torch_dir)/lib/libtorch_cpu.so" ]; then
  log "installing libtorch 2.13.0 (torch wheel from PyPI, ~1.2 GB) into $TORCH_VENV"
  "$PYTHON" -m venv "$TORCH_VENV"
  "$TORCH_VENV/bin/pip" install --quiet --no-deps torch==2.13.0 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
else
  log "libtorch present: $(torch_dir)"
fi
ln -sfn "$(torch_dir)" .tools/libtorch

# cmake >= 3.28 (Debian 12 ships 3.25).
if [ ! -x "$CACHE/cmake-venv/bin/cmake" ]; then
  log "installing cmake from PyPI into $CACHE/cmake-venv"
  "$PYTHON" -m venv "$CACHE/cmake-venv"
  "$CACHE/cmake-venv/bin/pip" install --quiet cmake
else
  log "cmake present: $("$CACHE/cmake-venv/bin/cmake" --version | head -n1)"
fi
ln -sfn "$CACHE/cmake-venv/bin/cmake" .tools/cmake

# Debian packages: libclang (bindgen), redis-server, and headless Chromium
# with its WebDriver (the console's browser test).
missing=()
ldconfig -p 2>/dev/null | grep -q 'libclang-14\|libclang\.so' || missing+=(libclang1-14)
[ -d /usr/lib/llvm-14/lib/clang ] || missing+=(libclang-common-14-dev)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  log "libclang, redis-server and chromium present"
fi

# The artifact-store tests run a real S3-compatible server (s3s-fs) in-process
# on 127.0.0.1, built from crates.io as a dev-dependency: nothing to install.
log "prerequisites ready"
