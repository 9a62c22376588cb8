#!/usr/bin/env bash
# Style and static analysis: clang-format (must be a no-op) and clang-tidy (no findings) over
# src/ and tests/, using the debug build's compile_commands.json.
set -euo pipefail
cd "$(dirname "$0")/.."
files=$(git ls-files 'src/*.cpp' 'src/*.hpp' 'tests/*.cpp' 'tests/*.hpp' 'bench/*.cpp')
echo "clang-format: checking $(echo "$files" | wc -l) files"
clang-format-14 --dry-run --Werror $files
cmake --preset debug >/dev/null
cmake --build --preset debug -j "$(nproc)" >/dev/null
echo "clang-tidy: src/ (this takes a few minutes)"
rc=0
out=$(git ls-files 'src/*.cpp' | xargs -P "$(nproc)" -n 1 clang-tidy-14 -p build/debug --quiet 2>&1) || rc=$?
echo "$out" | grep -v -E '^[0-9]+ warnings? generated|^Suppressed|^Use -header-filter' || true
if [ "$rc" -ne 0 ]; then
  echo "clang-tidy: findings above" >&2
  exit 1
fi
echo "clang-tidy: clean"
