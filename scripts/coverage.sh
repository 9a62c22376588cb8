#!/usr/bin/env bash
# Line coverage of src/ with clang source-based coverage: unit, storage and black-box API
# suites all run against instrumented binaries (the server writes its profile when it exits
# after SIGTERM), the storage and API suites on SQLite and on a throwaway PostgreSQL cluster
# (scripts/pg-cluster.sh, stopped on exit). Prints the llvm-cov summary; the report lands in build/coverage/coverage.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
./scripts/install-deps.sh
cmake --preset coverage >/dev/null
cmake --build --preset coverage -j "$(nproc)"
prof=$root/build/coverage/profiles
rm -rf "$prof"
mkdir -p "$prof"
export LLVM_PROFILE_FILE=$prof/%p-%m.profraw
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
start_test_cluster
ctest --test-dir build/coverage -L 'unit|storage' -j "$(nproc)" --output-on-failure
STATETRACK_BIN=$root/build/coverage/statetrack /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/api
ST_BACKEND=postgres STATETRACK_BIN=$root/build/coverage/statetrack /usr/bin/python3 -m pytest -q \
  -p no:cacheprovider tests/api
llvm-profdata-14 merge -sparse "$prof"/*.profraw -o build/coverage/merged.profdata
objects=(build/coverage/statetrack)
for t in build/coverage/tests/unit_tests build/coverage/tests/storage_tests; do
  [ -x "$t" ] && objects+=(-object "$t")
done
llvm-cov-14 report "${objects[@]}" -instr-profile=build/coverage/merged.profdata \
  -ignore-filename-regex='(tests|/usr)/' "$root/src" | tee build/coverage/coverage.txt
