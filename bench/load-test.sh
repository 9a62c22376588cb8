#!/usr/bin/env bash
# The checklist's load scenario against a real statetrack: seed sessions, ramp up connections,
# then sustained mixed load (heartbeats, reads, lists, updates, creates, tasks, machines); then
# per-route p50/p95/p99 from the server's own latency histograms and the thresholds of the
# production-readiness checklist (p95 read < 500 ms, heartbeat < 1 s, writes < 2 s; errors < 1 %).
#
# usage: bench/load-test.sh                 (builds nothing; uses build/release/statetrack)
# env:   BIN, PORT (18090), SEED (2000), RAMP ("8 16 32 64"), RAMP_SECS (5), CONNS (64),
#        DURATION (60), SERVER_CPU (0), CLIENT_CPU (1), OUT (bench/results/load-<stamp>)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/release/statetrack}
PORT=${PORT:-18090}
SEED=${SEED:-2000}
RAMP=${RAMP:-"8 16 32 64"}
RAMP_SECS=${RAMP_SECS:-5}
CONNS=${CONNS:-64}
DURATION=${DURATION:-60}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-bench/results/load-$(date -u +%Y%m%dT%H%M%SZ)}
KEY=load-test-key-$RANDOM$RANDOM
mkdir -p "$OUT"
DB="$OUT/load.db"
BASE=http://127.0.0.1:$PORT

API_KEYS=$KEY taskset -c "$SERVER_CPU" "$BIN" serve --host 127.0.0.1 --port "$PORT" --db "$DB" \
  --rate-limit-default 0 --rate-limit-heartbeat 0 > "$OUT/server.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "$BASE/health/live" >/dev/null && break; sleep 0.1; done

curl -sf -X POST "$BASE/api/machines" -H "X-API-Key: $KEY" -H 'Content-Type: application/json' \
  -d '{"machine_id":"load-machine","hostname":"load-host","docker_slots":[1,2,3,4]}' >/dev/null
echo "seeding $SEED sessions"
/usr/bin/python3 - "$BASE" "$KEY" "$SEED" > "$OUT/ids.txt" <<'PY'
import json, sys, urllib.request
base, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    body = json.dumps({"project_id": f"load-{i % 20}", "machine_id": "load-machine",
                       "metadata": {"agent": "load", "n": i}}).encode()
    req = urllib.request.Request(base + "/api/sessions", data=body, method="POST",
                                 headers={"X-API-Key": key, "Content-Type": "application/json"})
    print(json.load(urllib.request.urlopen(req))["session_id"])
PY

curl -sf "$BASE/metrics" -H "X-API-Key: $KEY" > "$OUT/before.prom"
export API_KEY=$KEY IDS_FILE=$OUT/ids.txt MACHINE_ID=load-machine
for c in $RAMP; do
  echo "ramp: $c connections for ${RAMP_SECS}s"
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$c" -d"${RAMP_SECS}s" --latency -s bench/load/mixed.lua "$BASE" > "$OUT/ramp-$c.txt"
  grep -E 'Requests/sec' "$OUT/ramp-$c.txt"
done
echo "sustained: $CONNS connections for ${DURATION}s"
taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s bench/load/mixed.lua "$BASE" > "$OUT/sustained.txt"
grep -E 'Requests/sec|Latency' "$OUT/sustained.txt"
curl -sf "$BASE/metrics" -H "X-API-Key: $KEY" > "$OUT/after.prom"
/usr/bin/python3 bench/load/report.py "$OUT/before.prom" "$OUT/after.prom" "$OUT"/ramp-*.txt "$OUT/sustained.txt" | tee "$OUT/report.md"
