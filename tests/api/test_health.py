"""Health endpoints (contract §4.1, §10): public, shapes, thresholds."""
import os
import platform
import time

import pytest
import requests

from st_helpers import (ISO_RE, UUID4_RE, assert_recent, create_session, expect, put_session,
                        poll)

HEALTH_PATHS = ["/health", "/health/ready", "/health/live", "/health/detailed", "/health/system"]


@pytest.mark.parametrize("path", HEALTH_PATHS)
def test_health_routes_are_public(anon, path):
    r = anon.get(path)
    b = expect(r, 200)
    assert isinstance(b, dict)
    assert r.headers["Content-Type"].replace(" ", "").lower() == "application/json;charset=utf-8"
    assert UUID4_RE.match(r.headers.get("X-Request-Id", ""))


@pytest.mark.parametrize("path", HEALTH_PATHS)
@pytest.mark.parametrize("headers", [
    {"X-API-Key": "definitely-wrong"},
    {"Authorization": "Bearer definitely-wrong"},
    {"X-API-Key": "test-api-key-123"},
], ids=["bad-x-api-key", "bad-bearer", "good-key"])
def test_health_ignores_keys(anon, path, headers):
    expect(anon.get(path, headers=headers), 200)


@pytest.mark.parametrize("path", HEALTH_PATHS)
def test_health_ignores_query_string(anon, path):
    expect(anon.get(path + "?foo=bar&limit=abc&threshold=-1"), 200)


def test_health_via_plain_requests(api):
    r = requests.get(api("/health"), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_health_shape(anon):
    b = expect(anon.get("/health"), 200)
    assert {"status", "timestamp", "uptime", "database", "latency"} <= set(b)
    assert b["status"] == "ok"
    assert_recent(b["timestamp"], 5)
    assert isinstance(b["uptime"], (int, float)) and not isinstance(b["uptime"], bool)
    assert b["uptime"] > 0
    assert b["database"] == "connected"
    assert isinstance(b["latency"], int) and not isinstance(b["latency"], bool)
    assert b["latency"] >= 0


def test_health_uptime_increases(anon):
    a = expect(anon.get("/health"), 200)["uptime"]
    time.sleep(0.05)
    b = expect(anon.get("/health/live"), 200)["uptime"]
    assert b > a


def test_health_ready_shape(anon):
    b = expect(anon.get("/health/ready"), 200)
    assert {"ready", "timestamp", "database"} <= set(b)
    assert b["ready"] is True
    assert b["database"] == "connected"
    assert_recent(b["timestamp"], 5)


def test_health_live_shape(anon):
    b = expect(anon.get("/health/live"), 200)
    assert {"alive", "timestamp", "uptime"} <= set(b)
    assert b["alive"] is True
    assert_recent(b["timestamp"], 5)
    assert isinstance(b["uptime"], (int, float)) and b["uptime"] > 0


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def test_health_detailed_shape(anon):
    b = expect(anon.get("/health/detailed"), 200)
    assert {"status", "timestamp", "uptime", "database", "metrics", "checks"} <= set(b)
    assert_recent(b["timestamp"], 5)
    assert _is_num(b["uptime"]) and b["uptime"] > 0
    db = b["database"]
    assert db["status"] == "connected"
    assert _is_int(db["latency"]) and 0 <= db["latency"] < 10000
    m = b["metrics"]
    for k in ("uptime", "memoryUsage", "cpuUsage", "activeSessionCount", "errorRate",
              "averageResponseTime", "databaseLatency", "version"):
        assert k in m, k
    mu = m["memoryUsage"]
    for k in ("heapUsed", "heapTotal", "external", "rss"):
        assert _is_int(mu[k]) and mu[k] >= 0, (k, mu[k])
    assert mu["rss"] > 0
    assert _is_num(mu["percentage"]) and 0 <= mu["percentage"]
    assert round(mu["percentage"], 2) == mu["percentage"]
    assert _is_int(m["cpuUsage"]["user"]) and _is_int(m["cpuUsage"]["system"])
    assert _is_int(m["activeSessionCount"]) and m["activeSessionCount"] >= 0
    assert _is_num(m["errorRate"]) and _is_num(m["averageResponseTime"])
    assert _is_int(m["databaseLatency"])
    assert isinstance(m["version"], str) and m["version"]
    checks = b["checks"]
    assert set(checks) >= {"memory", "database", "responseTime"}
    for v in checks.values():
        assert v in ("ok", "warning", "critical")
    # The verdict follows the checks (§10.4).
    vals = set(checks.values())
    if "critical" in vals:
        assert b["status"] == "unhealthy"
    elif "warning" in vals:
        assert b["status"] == "degraded"
    else:
        assert b["status"] == "ok"
    # Memory check thresholds.
    p = mu["percentage"]
    assert checks["memory"] == ("critical" if p > 90 else "warning" if p > 75 else "ok")
    # Database check thresholds.
    lat = db["latency"]
    assert checks["database"] == ("critical" if lat > 1000 else "warning" if lat > 500 else "ok")


def _active_count(c):
    return expect(c.get("/health/detailed"), 200)["metrics"]["activeSessionCount"]


def test_health_detailed_active_session_count_tracks_sessions(rc):
    """activeSessionCount = sessions in active, paused or stalled (§10.4)."""
    base = _active_count(rc)
    s = create_session(rc)
    sid = s["session_id"]
    poll(lambda: _active_count(rc) == base + 1, 5, desc="active +1 after create")
    put_session(rc, sid, status="paused")
    assert _active_count(rc) == base + 1
    expect(rc.post(f"/sessions/{sid}/mark-stalled", json={"reason": "x"}), 200)
    assert _active_count(rc) == base + 1
    expect(rc.delete(f"/sessions/{sid}"), 204)
    poll(lambda: _active_count(rc) == base, 5, desc="active back after completion")


def test_health_system_shape(anon):
    b = expect(anon.get("/health/system"), 200)
    keys = {"uptime", "nodeVersion", "platform", "arch", "cpus", "totalMemory", "freeMemory",
            "heapUsed", "heapTotal", "external", "rss"}
    assert keys <= set(b)
    assert _is_num(b["uptime"]) and b["uptime"] > 0
    assert isinstance(b["nodeVersion"], str) and b["nodeVersion"]
    assert b["platform"] == "linux"
    expected_arch = {"x86_64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine(), platform.machine())
    assert b["arch"] == expected_arch
    logical = {os.cpu_count(), len(os.sched_getaffinity(0))}
    assert b["cpus"] in logical
    for k in ("totalMemory", "freeMemory", "heapUsed", "heapTotal", "external", "rss"):
        assert _is_int(b[k]) and b[k] >= 0, (k, b[k])
    assert 0 < b["freeMemory"] <= b["totalMemory"]
    with open("/proc/meminfo") as f:
        total_kib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    assert abs(b["totalMemory"] - total_kib // 1024) <= 2, "totalMemory must be MiB"
    assert 0 < b["rss"] < b["totalMemory"]


def test_health_is_fast(anon):
    t0 = time.monotonic()
    expect(anon.get("/health"), 200)
    assert time.monotonic() - t0 < 0.5
    t0 = time.monotonic()
    for _ in range(10):
        expect(anon.get("/health"), 200)
    assert (time.monotonic() - t0) / 10 < 0.1


def test_health_timestamps_are_iso_ms(anon):
    for p in ("/health", "/health/ready", "/health/live", "/health/detailed"):
        assert ISO_RE.match(expect(anon.get(p), 200)["timestamp"])
