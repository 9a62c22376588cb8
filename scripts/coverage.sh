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
pg_dir=$(mktemp -d /tmp/statetrack-cov-pg.XXXXXX)
pg_port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap './scripts/pg-cluster.sh stop "$pg_dir" >/dev/null 2>&1 || true' EXIT
ST_PG_CONNINFO=$(./scripts/pg-cluster.sh start "$pg_dir" "$pg_port")
export ST_PG_CONNINFO
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
