#!/usr/bin/env bash
# Keeps a cached cargo target dir from growing without bound: every change of
# a dependency's features or version builds each test and binary executable
# again under a new hash, and cargo never deletes the old one (a debug target
# dir once reached 51 GB). This removes, in each profile's deps/, every
# executable that a newer build of the same name supersedes. Libraries are
# left alone (two versions of a crate can both be live). "Newest" is by
# modification time, so a build switched back to an older configuration
# relinks its executable once. Idempotent; a build rebuilds anything it still
# needs.
set -euo pipefail

target="${CARGO_TARGET_DIR:-$HOME/.cache/price-prediction/target}"
for deps in "$target"/debug/deps "$target"/release/deps; do
  [ -d "$deps" ] || continue
  before=$(du -sm "$deps" | cut -f1)
  find "$deps" -maxdepth 1 -type f -executable -regextype posix-extended \
    -regex '.*/[^/.]+-[0-9a-f]{16}' -printf '%T@ %f\n' |
    sort -n |
    awk '{ name = $2; sub(/-[0-9a-f]+$/, "", name);
           if (name in newest) print newest[name]; newest[name] = $2 }' |
    (cd "$deps" && xargs -r rm -f --)
  after=$(du -sm "$deps" | cut -f1)
  echo "[prune] $deps: ${before} MB -> ${after} MB"
done
