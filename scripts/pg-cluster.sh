#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for tests and benchmarks: initdb in DIR, loopback only
# (127.0.0.1 and a unix socket in DIR), fsync on, trust authentication for the postgres user.
# Runs as the postgres user when started as root (initdb refuses root).
#
#   scripts/pg-cluster.sh start DIR PORT   -> prints the base connection string on stdout
#   scripts/pg-cluster.sh stop DIR         -> fast shutdown, then removes DIR (KEEP=1 keeps it)
#
# PG_OPTS adds server options (e.g. PG_OPTS="-c synchronous_commit=remote_apply").
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=${1:-}
dir=${2:-}

usage() {
  echo "usage: $0 start DIR PORT | stop DIR" >&2
  exit 2
}
[ -n "$cmd" ] && [ -n "$dir" ] || usage

as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case "$cmd" in
  start)
    port=${3:-}
    [ -n "$port" ] || usage
    [ -x "$PG_BIN/initdb" ] || { echo "$0: $PG_BIN/initdb not found (install postgresql-15)" >&2; exit 2; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    chmod 700 "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_pg "$PG_BIN/initdb" --no-sync -A trust -U postgres -E UTF8 --locale=C.UTF-8 \
        -D "$dir/data" >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    # shellcheck disable=SC2086
    as_pg "$PG_BIN/pg_ctl" -w -t 60 -D "$dir/data" -l "$dir/server.log" \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=400 ${PG_OPTS:-}" \
      start >/dev/null ||
      { tail -20 "$dir/server.log" >&2; exit 1; }
    echo "host=127.0.0.1 port=$port user=postgres dbname=postgres"
    ;;
  stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_pg "$PG_BIN/pg_ctl" -w -t 60 -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
    fi
    [ "${KEEP:-0}" = 1 ] || rm -rf "$dir"
    ;;
  *)
    usage
    ;;
esac
