#!/usr/bin/env bash
# One command to run every test suite: installs what is missing, builds, then runs
#   1. unit tests (no network, no database)             ctest -L unit
#   2. storage conformance suite                         ctest -L storage
#   3. black-box API suite against the real binary       pytest tests/api
#   4. the same unit and API suites in an address + undefined-behaviour sanitizer build
# Set ST_SKIP_ASAN=1 to skip phase 4 while iterating locally.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
PY=/usr/bin/python3   # Debian's interpreter, which has python3-pytest/requests/websockets

phase() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

phase "dependencies"
./scripts/install-deps.sh

jobs=$(nproc)

phase "debug build"
cmake --preset debug >/dev/null
cmake --build --preset debug -j "$jobs"

phase "unit tests"
ctest --test-dir build/debug -L unit --output-on-failure -j "$jobs"

phase "storage conformance tests"
ctest --test-dir build/debug -L storage --output-on-failure

phase "API tests (debug build)"
STATETRACK_BIN="$root/build/debug/statetrack" "$PY" -m pytest -q -p no:cacheprovider tests/api

if [ "${ST_SKIP_ASAN:-0}" != 1 ]; then
  phase "address + undefined-behaviour sanitizer build"
  cmake --preset asan >/dev/null
  cmake --build --preset asan -j "$jobs"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  phase "unit + storage tests (sanitizers)"
  ctest --test-dir build/asan -L 'unit|storage' --output-on-failure -j "$jobs"
  phase "API tests (sanitizers)"
  STATETRACK_BIN="$root/build/asan/statetrack" "$PY" -m pytest -q -p no:cacheprovider tests/api
fi

phase "all suites passed"
