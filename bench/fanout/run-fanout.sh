#!/usr/bin/env bash
# The event fan-out benchmark against a fresh server it starts itself: a release build, a
# throw-away SQLite database in a temporary directory, 127.0.0.1 and a free port, rate limits
# off, one API key given through the environment. The official measurement is
#
#   bench/fanout/run-fanout.sh
#
# (5,000 subscribers, 10 changes/s, a 60 s steady phase then a 20 s reconnect phase in which
# 10% of the subscribers drop, stay away 1 s and resume with since=<last seq>). Arguments go to
# the tool and override those defaults (`fanout --help`), e.g. a quick check:
#
#   bench/fanout/run-fanout.sh --subscribers 200 --duration 20 --reconnect-duration 10
#
# Environment:
#   BUILD        build directory holding statetrack and bench/fanout, relative to the
#                repository or absolute (default build/release; needs -DST_BUILD_BENCH=ON,
#                the release preset's default)
#   PIN=1        pin the server to CPU $SERVER_CPU (0) and the tool to CPU $CLIENT_CPU (1);
#                default: no pinning, the server runs its usual one I/O thread per core
#   SERVER_ARGS  extra `statetrack serve` options
#   TIMEOUT      hard limit on the tool in seconds (default 900)
#   OUT          also append the JSON line to this file
#   KEEP_LOG=1   print the whole server log at the end
# Exit status: the tool's (0 bounds met, 1 bounds violated, 2 set-up failure or abort).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD="${BUILD:-$ROOT/build/release}"
[[ "$BUILD" = /* ]] || BUILD="$ROOT/$BUILD"
SERVER="$BUILD/statetrack"
TOOL="$BUILD/bench/fanout"
for f in "$SERVER" "$TOOL"; do
  if [[ ! -x "$f" ]]; then
    echo "run-fanout: $f is missing; build the statetrack and fanout targets first" >&2
    exit 2
  fi
done

SERVER_PIN=()
CLIENT_PIN=()
if [[ "${PIN:-0}" == 1 ]]; then
  SERVER_PIN=(taskset -c "${SERVER_CPU:-0}")
  CLIENT_PIN=(taskset -c "${CLIENT_CPU:-1}")
fi

# Every subscriber is a descriptor on both sides.
HARD="$(ulimit -Hn)"
[[ "$HARD" == unlimited ]] && HARD=1048576
ulimit -n "$HARD" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
if (($(ulimit -n) < 12000)); then
  echo "run-fanout: the descriptor limit is $(ulimit -n); 5,000 subscribers need about 12,000" >&2
fi

KEY="st_fanout_$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
TMP="$(mktemp -d)"
SPID=""
TPID=""
# shellcheck disable=SC2317  # run by the traps
cleanup() {
  local rc=$?
  if [[ -n "$TPID" ]] && kill -0 "$TPID" 2>/dev/null; then
    kill -TERM "$TPID" 2>/dev/null || true
    wait "$TPID" 2>/dev/null || true
  fi
  if [[ -n "$SPID" ]] && kill -0 "$SPID" 2>/dev/null; then
    kill -TERM "$SPID" 2>/dev/null || true
    for _ in $(seq 150); do
      kill -0 "$SPID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SPID" 2>/dev/null; then
      echo "run-fanout: the server did not stop within 15 s of SIGTERM; killing it" >&2
      kill -KILL "$SPID" 2>/dev/null || true
    fi
    wait "$SPID" 2>/dev/null || true
  fi
  if [[ "${KEEP_LOG:-0}" == 1 ]]; then
    echo "--- server log ---" >&2
    cat "$TMP/server.log" >&2 || true
  elif grep -qv "listening on" "$TMP/server.log" 2>/dev/null; then
    echo "--- server log (warnings and errors, last 20 lines) ---" >&2
    grep -v "listening on" "$TMP/server.log" | tail -20 >&2
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Limits that matter for 5,000 streams: --max-connections (default 10000) caps simultaneous
# connections, the server raises its own descriptor limit; --event-max-lag / ring capacity are
# far above what a steady stream needs. Access logs (info) would cost CPU per handshake.
# shellcheck disable=SC2086
env API_KEYS="$KEY" "${SERVER_PIN[@]}" "$SERVER" serve --host 127.0.0.1 --port 0 \
  --db "$TMP/fanout.db" --rate-limit-default 0 --rate-limit-heartbeat 0 \
  --max-connections 20000 --log-level warn ${SERVER_ARGS:-} >"$TMP/server.log" 2>&1 &
SPID=$!

for _ in $(seq 200); do
  grep -q "listening on" "$TMP/server.log" 2>/dev/null && break
  kill -0 "$SPID" 2>/dev/null || break
  sleep 0.05
done
if ! grep -q "listening on" "$TMP/server.log"; then
  echo "run-fanout: the server did not start" >&2
  exit 2
fi
PORT="$(sed -n 's/^statetrack listening on .*:\([0-9][0-9]*\)$/\1/p' "$TMP/server.log" | head -1)"
if [[ -z "$PORT" ]]; then
  echo "run-fanout: cannot read the port from the server's output" >&2
  exit 2
fi

# In the background so that a signal to this script is handled at once (progress lines go to
# stderr as they come, the report to stdout at the end).
FANOUT_KEY="$KEY" timeout -k 10 "${TIMEOUT:-900}" "${CLIENT_PIN[@]}" "$TOOL" \
  --url "ws://127.0.0.1:$PORT/api/events" --server-pid "$SPID" "$@" \
  >"$TMP/report.txt" &
TPID=$!
set +e
wait "$TPID"
rc=$?
set -e
TPID=""
cat "$TMP/report.txt"
if ((rc == 124)); then
  echo "run-fanout: the tool did not finish within TIMEOUT=${TIMEOUT:-900} s" >&2
  rc=2
fi
if [[ -n "${OUT:-}" ]]; then
  grep '^{"tool":"fanout"' "$TMP/report.txt" >>"$OUT" || true
fi
if ! kill -0 "$SPID" 2>/dev/null; then
  echo "run-fanout: the server exited during the run" >&2
  SPID=""
  [[ $rc == 0 ]] && rc=1
fi
exit "$rc"
