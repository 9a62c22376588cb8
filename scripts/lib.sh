# shellcheck shell=bash
# Shared by the test scripts (test.sh, tsan.sh, coverage.sh): source it from the repository root.

PY=/usr/bin/python3   # Debian's interpreter, which has python3-pytest/requests/websockets

phase() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

# Starts a throwaway PostgreSQL 15 cluster (scripts/pg-cluster.sh: the postgres user, a temporary
# directory, loopback only) on a free port, stops and removes it when the script exits however it
# exits, and exports its connection string as ST_PG_CONNINFO.
start_test_cluster() {
  pg_dir=$(mktemp -d /tmp/statetrack-pg.XXXXXX)
  local port
  port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  trap './scripts/pg-cluster.sh stop "$pg_dir" >/dev/null 2>&1 || true' EXIT
  ST_PG_CONNINFO=$(./scripts/pg-cluster.sh start "$pg_dir" "$port")
  export ST_PG_CONNINFO
  echo "PostgreSQL 15 at $ST_PG_CONNINFO (data in $pg_dir)"
}

# The storage conformance suite of build directory $1 on both backends. The PostgreSQL cases
# skip themselves when there is no cluster; here they must have run.
run_storage_tests() {
  local log
  log=$(mktemp)
  ctest --test-dir "$1" -L storage --output-on-failure -j "$(nproc)" | tee "$log"
  if grep -q "Skipped" "$log" || ! grep -q "/postgres " "$log"; then
    echo "the PostgreSQL storage cases did not run" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}
