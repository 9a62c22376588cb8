#!/usr/bin/env bash
# One command to run every test suite: installs what is missing, builds, then runs
#   1. unit tests (no network, no database)             ctest -L unit
#   2. storage conformance suite, SQLite and PostgreSQL  ctest -L storage
#   3. black-box API suite against the real binary       pytest tests/api
#   4. the same API suite on PostgreSQL, with the PostgreSQL-only cases (several instances,
#      outage, failover)                                 ST_BACKEND=postgres pytest tests/api
#   5. the same unit and API suites in an address + undefined-behaviour sanitizer build
# PostgreSQL runs in a throwaway cluster this script starts (scripts/pg-cluster.sh: the postgres
# user, a temporary directory, loopback only) and stops on exit, whatever happens.
# and, before building, checks the Prometheus alert rules (promtool) and the Grafana dashboard's
# queries; tests/api/test_monitoring.py checks both against the metrics the server exports.
# Set ST_SKIP_ASAN=1 to skip phase 5 while iterating locally.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

phase "dependencies"
./scripts/install-deps.sh

jobs=$(nproc)

phase "alert rules and dashboard (promtool)"
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)
# Every dashboard query must parse: check them as recording rules, Grafana variables filled in.
dash_rules=$(mktemp --suffix=.yml)
"$PY" - deploy/grafana/statetrack-dashboard.json >"$dash_rules" <<'PYEOF'
import json, sys
d = json.load(open(sys.argv[1]))
print("groups:\n  - name: dashboard\n    rules:")
for p in d["panels"]:
    for i, t in enumerate(p.get("targets", [])):
        e = t["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")
        print(f"      - record: dashboard:panel{p['id']}:{i}\n        expr: {json.dumps(e)}")
PYEOF
promtool check rules "$dash_rules"
rm -f "$dash_rules"

phase "debug build"
cmake --preset debug >/dev/null
cmake --build --preset debug -j "$jobs"

phase "unit tests"
ctest --test-dir build/debug -L unit --output-on-failure -j "$jobs"

phase "throwaway PostgreSQL cluster"
start_test_cluster

phase "storage conformance tests (SQLite and PostgreSQL)"
run_storage_tests build/debug

phase "API tests (debug build)"
STATETRACK_BIN="$root/build/debug/statetrack" "$PY" -m pytest -q -p no:cacheprovider tests/api

phase "API tests on PostgreSQL (debug build)"
pg_junit=$(mktemp --suffix=.xml)
ST_BACKEND=postgres STATETRACK_BIN="$root/build/debug/statetrack" "$PY" -m pytest -q \
  -p no:cacheprovider --junitxml="$pg_junit" tests/api
# The PostgreSQL-only cases (several instances, outage, failover) skip themselves elsewhere;
# here every one of them must have run and passed.
"$PY" - "$pg_junit" <<'PYEOF'
import sys
import xml.etree.ElementTree as ET
cases = [c for c in ET.parse(sys.argv[1]).iter("testcase")
         if "test_postgres_cluster" in (c.get("classname") or "")]
bad = [c.get("name") for c in cases
       if any(ch.tag in ("skipped", "failure", "error") for ch in c)]
if not cases or bad:
    sys.exit(f"PostgreSQL cluster cases did not all run: {len(cases)} found, not passed: {bad}")
print(f"{len(cases)} PostgreSQL cluster cases ran and passed")
PYEOF
rm -f "$pg_junit"

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
  phase "fuzzing (each target for ${ST_FUZZ_SECONDS:-20} s from its seed corpus)"
  fuzz_work=$(mktemp -d)
  for target in build/asan/tests/fuzz/*_fuzz; do
    name=$(basename "$target" _fuzz)
    mkdir -p "$fuzz_work/$name"
    cp -r "tests/fuzz/corpus/$name/." "$fuzz_work/$name/"
    if ! "$target" -max_total_time="${ST_FUZZ_SECONDS:-20}" -timeout=10 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="$fuzz_work/$name-" "$fuzz_work/$name" \
      > "$fuzz_work/$name.log" 2>&1; then
      tail -n 60 "$fuzz_work/$name.log"
      echo "fuzz target $name failed; the input is in $fuzz_work" >&2
      exit 1
    fi
    echo "$name: $(grep -E '^stat::number_of_executed_units' "$fuzz_work/$name.log" | awk '{print $2}') executions, no crash"
  done
  rm -rf "$fuzz_work"
fi

phase "all suites passed"
