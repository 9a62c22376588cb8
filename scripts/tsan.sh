#!/usr/bin/env bash
# ThreadSanitizer run: builds the `tsan` preset and runs against it
#   1. unit tests                                         ctest -L unit
#   2. storage conformance suite, SQLite and PostgreSQL   ctest -L storage
#   3. black-box API suite on SQLite                      pytest tests/api
#   4. the API suite on PostgreSQL (cluster cases too)    ST_BACKEND=postgres pytest tests/api
# Any ThreadSanitizer report fails the run: halt_on_error makes the process exit (66) at the
# first report, which fails its ctest case or, for a server, the test that started it; the API
# harness (tests/api/conftest.py) also fails a test when a server printed a report on stderr,
# which catches servers that are SIGKILLed afterwards. No suppressions file: every report so
# far was fixed in the code (docs/TESTING.md lists them, with the result).
# Too slow for scripts/test.sh on 2 cores (about 4 min to build cold, 7 min to run): run it
# after changes to threads, the stores, the event hub or the scheduler.
#
# ST_TSAN_API=focused runs only the API files that exercise concurrency (session safety, event
# streams, durability under concurrent writers, the PostgreSQL cluster cases) instead of all.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

phase "dependencies"
./scripts/install-deps.sh

jobs=$(nproc)
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"

phase "thread sanitizer build"
cmake --preset tsan >/dev/null
cmake --build --preset tsan -j "$jobs"

phase "unit tests (tsan)"
ctest --test-dir build/tsan -L unit --output-on-failure -j "$jobs"

phase "throwaway PostgreSQL cluster"
start_test_cluster

phase "storage conformance tests (tsan, SQLite and PostgreSQL)"
run_storage_tests build/tsan

api=(tests/api)
if [ "${ST_TSAN_API:-all}" = focused ]; then
  api=(tests/api/test_session_safety.py tests/api/test_events.py tests/api/test_durability.py)
fi

phase "API tests (tsan, SQLite)"
STATETRACK_BIN="$root/build/tsan/statetrack" "$PY" -m pytest -q -p no:cacheprovider "${api[@]}"

phase "API tests (tsan, PostgreSQL)"
if [ "${ST_TSAN_API:-all}" = focused ]; then
  api+=(tests/api/test_postgres_cluster.py)
fi
ST_BACKEND=postgres STATETRACK_BIN="$root/build/tsan/statetrack" "$PY" -m pytest -q \
  -p no:cacheprovider "${api[@]}"

phase "thread sanitizer: no reports"
