#!/usr/bin/env bash
# Keeps a cached cargo target dir from growing without bound: every change of
# a dependency's features or version builds each test and binary executable
# again under a new hash, and cargo never deletes the old one (a debug target
# dir here reached 48 GB and filled the disk mid-run). This removes, in each
# profile's deps/, every executable that a newer build of the same target
# supersedes: same name and same crate root (the first source file of its
# dep-info `.d` file), so a library's unit tests and a binary of the same
# name are told apart. A binary and its own unit tests (same name, same root)
# are not, nor are two feature sets of one binary: the next build relinks the
# one removed (measured: ~10 s for the four such here). Libraries are left
# alone (two versions of a crate can both be live). "Newer" is by
# modification time. Idempotent; a build rebuilds anything it still needs.
set -euo pipefail

target="${CARGO_TARGET_DIR:-$HOME/.cache/price-prediction/target}"
for deps in "$target"/debug/deps "$target"/release/deps; do
  [ -d "$deps" ] || continue
  before=$(du -sm "$deps" | cut -f1)
  find "$deps" -maxdepth 1 -type f -executable -regextype posix-extended \
    -regex '.*/[^/.]+-[0-9a-f]{16}' -printf '%T@ %f\n' |
    sort -n |
    while read -r _ exe; do
      # The crate root: the first `.rs` file the executable was built from.
      root=$(sed -n '1{s/^[^:]*://;p;q}' "$deps/$exe.d" 2>/dev/null |
        tr ' ' '\n' | grep -m1 '\.rs$' || true)
      [ -n "$root" ] && echo "$exe $root"
    done |
    awk '{ name = $1; sub(/-[0-9a-f]+$/, "", name); key = name " " $2;
           if (key in newest) print newest[key]; newest[key] = $1 }' |
    (cd "$deps" && xargs -r rm -fv -- | sed 's/^removed /[prune] removed /')
  after=$(du -sm "$deps" | cut -f1)
  echo "[prune] $deps: ${before} MB -> ${after} MB"
done
