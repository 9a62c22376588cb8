#!/usr/bin/env python3
"""Turns a statetrack /metrics scrape (before and after a load run) into per-route latency
percentiles and checks the production-readiness thresholds.

usage: report.py BEFORE.prom AFTER.prom WRK_JSON_LINES...  -> markdown on stdout, exit 1 if a
threshold is violated.
"""
import json
import re
import sys

SERIES = re.compile(r'^statetrack_http_request_duration_seconds_bucket\{method="([^"]+)",route="([^"]+)",le="([^"]+)"\} (\S+)$')
COUNT = re.compile(r'^statetrack_http_requests_total\{method="([^"]+)",route="([^"]+)",status_class="([^"]+)"\} (\S+)$')

# Checklist §1.1 targets (seconds) for p95.
READ_TARGET, WRITE_TARGET, HEARTBEAT_TARGET = 0.5, 2.0, 1.0


def parse(path):
    buckets, counts = {}, {}
    with open(path) as f:
        for line in f:
            m = SERIES.match(line.strip())
            if m:
                key = (m[1], m[2])
                le = float("inf") if m[3] == "+Inf" else float(m[3])
                buckets.setdefault(key, []).append((le, float(m[4])))
                continue
            m = COUNT.match(line.strip())
            if m:
                counts[(m[1], m[2], m[3])] = float(m[4])
    return buckets, counts


def quantile(cum, q):
    """cum: sorted [(le, cumulative count)]; linear interpolation inside the bucket."""
    total = cum[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in cum:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            span = c - prev_c
            frac = 0 if span == 0 else (rank - prev_c) / span
            return prev_le + (le - prev_le) * frac
        prev_le, prev_c = le, c
    return prev_le


def main():
    before_b, before_c = parse(sys.argv[1])
    after_b, after_c = parse(sys.argv[2])
    failures = []
    rows = []
    for key, cum in sorted(after_b.items()):
        cum = sorted(cum)
        base = dict(sorted(before_b.get(key, [])))
        delta = [(le, c - base.get(le, 0.0)) for le, c in cum]
        n = delta[-1][1]
        if n < 1:
            continue
        method, route = key
        errors5 = after_c.get((method, route, "5xx"), 0) - before_c.get((method, route, "5xx"), 0)
        p50, p95, p99 = (quantile(delta, q) for q in (0.5, 0.95, 0.99))
        target = HEARTBEAT_TARGET if route.endswith("/heartbeat") else READ_TARGET if method == "GET" else WRITE_TARGET
        ok = p95 is not None and p95 <= target
        if not ok:
            failures.append(f"{method} {route}: p95 {p95:.4f}s > {target}s")
        rows.append(f"| {method} {route} | {int(n)} | {p50*1000:.2f} | {p95*1000:.2f} | {p99*1000:.2f} | {int(errors5)} | {target*1000:.0f} | {'ok' if ok else 'FAIL'} |")
    print("| route | requests | p50 ms | p95 ms | p99 ms | 5xx | p95 target ms | |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    total = errors = 0
    for path in sys.argv[3:]:
        with open(path) as f:
            for line in f:
                if line.startswith("WRKJSON "):
                    d = json.loads(line[8:])
                    total += d["requests"]
                    errors += d["non2xx"] + d["err_connect"] + d["err_read"] + d["err_write"] + d["err_timeout"]
    rate = 100.0 * errors / total if total else 0.0
    print(f"\nrequests {total}, errors {errors} ({rate:.3f} %), error-rate threshold 1 %")
    if rate > 1.0:
        failures.append(f"error rate {rate:.3f} % > 1 %")
    if failures:
        print("\nTHRESHOLDS VIOLATED:\n- " + "\n- ".join(failures))
        return 1
    print("\nall thresholds met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
