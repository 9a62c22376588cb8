"""Rate limiting (contract §8): per endpoint and client address, before auth."""
import uuid

import pytest

from st_helpers import assert_error, create_session, expect, poll

RL_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
THROTTLED = "ThrottlerException: Too Many Requests"


def limited(start_server, default=3, heartbeat=5, window_ms=60000):
    return start_server(["--rate-limit-default", str(default),
                         "--rate-limit-heartbeat", str(heartbeat),
                         "--rate-limit-window-ms", str(window_ms),
                         "--disable-background-jobs"])


def assert_rl(r, limit, remaining):
    assert r.headers.get("X-RateLimit-Limit") == str(limit), dict(r.headers)
    assert r.headers.get("X-RateLimit-Remaining") == str(remaining), dict(r.headers)
    reset = int(r.headers["X-RateLimit-Reset"])
    assert 1 <= reset <= 60
    return reset


def assert_429(r, max_retry=60):
    b = assert_error(r, 429, THROTTLED)
    assert b["error"] == "rate_limit_exceeded"
    assert b["error_code"] == "rate_limit_exceeded"
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= max_retry
    for h in RL_HEADERS:
        assert h not in r.headers, f"{h} must not be sent on a 429"
    return retry


@pytest.mark.parametrize("pfx", ["", "/api"])
def test_limit_headers_then_429(start_server, pfx):
    srv = limited(start_server)
    c = srv.client(pfx)
    resets = []
    for remaining in (2, 1, 0):
        r = c.get("/sessions")
        expect(r, 200)
        resets.append(assert_rl(r, 3, remaining))
    assert resets[0] == 60
    assert resets == sorted(resets, reverse=True)
    r = c.get("/sessions")
    assert assert_429(r) == 60
    # blocked requests keep failing and are not counted
    for _ in range(3):
        assert_429(c.get("/sessions"))


def test_buckets_are_per_endpoint(start_server):
    srv = limited(start_server)
    c = srv.client()
    for _ in range(3):
        expect(c.get("/sessions"), 200)
    assert_429(c.get("/sessions"))
    s = expect(c.post("/sessions", json={"project_id": "p", "machine_id": "m"}), 201)
    assert_rl(c.post("/sessions", json={"project_id": "p", "machine_id": "m"}), 3, 1)
    r = c.post(f"/sessions/{s['session_id']}/heartbeat")
    expect(r, 200)
    assert_rl(r, 5, 4)
    r = c.get("/sessions/invalid-id")
    assert_error(r, 404, "Session with ID invalid-id not found")
    assert_rl(r, 3, 2)
    expect(c.get("/sessions/active"), 200)
    expect(c.get("/tasks"), 200)
    expect(c.get("/machines"), 200)
    assert_429(c.get("/sessions"))


def test_parametrised_route_shares_one_bucket(start_server):
    srv = limited(start_server)
    c = srv.client()
    for i in range(3):
        r = c.get(f"/sessions/id-{i}")
        assert_error(r, 404)
        assert_rl(r, 3, 2 - i)
    assert_429(c.get("/sessions/id-99"))


def test_prefix_alias_shares_the_endpoint_bucket(start_server):
    srv = limited(start_server)
    root, api = srv.client(""), srv.client("/api")
    expect(root.get("/sessions"), 200)
    assert_rl(api.get("/sessions"), 3, 1)
    assert_rl(root.get("/sessions"), 3, 0)
    assert_429(api.get("/sessions"))
    assert_429(root.get("/sessions"))


def test_rate_limit_runs_before_auth(start_server):
    srv = limited(start_server)
    anon = srv.client(key=None)
    for remaining in (2, 1, 0):
        r = anon.get("/sessions")
        assert_error(r, 401, "API key is missing")
        assert_rl(r, 3, remaining)
    assert_429(anon.get("/sessions"))  # 429, not 401
    assert_429(srv.client().get("/sessions"))  # same client address, same bucket


def test_validation_failures_count(start_server):
    srv = limited(start_server)
    c = srv.client()
    for remaining in (2, 1, 0):
        r = c.get("/sessions?limit=abc")
        assert_error(r, 400)
        assert_rl(r, 3, remaining)
    assert_429(c.get("/sessions"))


def test_heartbeat_has_its_own_limit(start_server):
    srv = limited(start_server, default=10, heartbeat=5)
    c = srv.client()
    ids = [create_session(c)["session_id"] for _ in range(2)]
    for i in range(5):
        r = c.post(f"/sessions/{ids[i % 2]}/heartbeat")
        expect(r, 200)
        assert_rl(r, 5, 4 - i)
    assert_429(c.post(f"/sessions/{ids[0]}/heartbeat"))
    assert_429(c.post("/sessions/unknown/heartbeat"))
    r = c.get("/sessions")
    expect(r, 200)
    assert_rl(r, 10, 9)


def test_health_docs_and_unknown_routes_not_limited(start_server):
    srv = limited(start_server, default=2)
    c = srv.client()
    for p in ("/health", "/health/ready", "/health/live", "/health/detailed", "/health/system",
              "/api/health"):
        for _ in range(4):
            r = c.get(p)
            expect(r, 200)
            assert "X-RateLimit-Limit" not in r.headers
    for _ in range(4):
        assert_error(c.get("/nope"), 404, "Cannot GET /nope")
    for _ in range(4):
        expect(c.get("/api/docs-json"), 200)


def test_block_ends_after_window(start_server):
    srv = limited(start_server, default=2, window_ms=1500)
    c = srv.client()
    expect(c.get("/sessions"), 200)
    expect(c.get("/sessions"), 200)
    retry = assert_429(c.get("/sessions"), max_retry=2)
    assert retry == 2  # 1.5 s rounded up
    r = poll(lambda: (lambda x: x if x.status_code == 200 else None)(c.get("/sessions")),
             timeout=6, interval=0.1, desc="block to end")
    # the first request after the block starts a fresh count
    assert r.headers["X-RateLimit-Remaining"] == "1"
    assert int(r.headers["X-RateLimit-Reset"]) <= 2


def test_limits_from_environment(start_server):
    srv = start_server(["--disable-background-jobs"],
                       env={"RATE_LIMIT_DEFAULT": "2", "RATE_LIMIT_HEARTBEAT": "1",
                            "RATE_LIMIT_WINDOW_MS": "60000"})
    c = srv.client()
    s = create_session(c)
    r = c.get("/sessions")
    assert_rl(r, 2, 1)
    expect(c.get("/sessions"), 200)
    assert_429(c.get("/sessions"))
    r = c.post(f"/sessions/{s['session_id']}/heartbeat")
    assert_rl(r, 1, 0)
    assert_429(c.post(f"/sessions/{s['session_id']}/heartbeat"))


def test_default_limits_are_100_and_120(start_server):
    srv = start_server(["--disable-background-jobs"])
    c = srv.client()
    s = create_session(c)
    for i in range(100):
        r = c.get("/sessions?limit=1")
        assert r.status_code == 200, (i, r.status_code)
    assert r.headers["X-RateLimit-Limit"] == "100"
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert_429(c.get("/sessions?limit=1"))
    for i in range(120):
        r = c.post(f"/sessions/{s['session_id']}/heartbeat")
        assert r.status_code == 200, (i, r.status_code)
    assert r.headers["X-RateLimit-Limit"] == "120"
    assert_429(c.post(f"/sessions/{s['session_id']}/heartbeat"))


def test_zero_disables_limits(rc):
    """The shared server runs with --rate-limit-default 0 --rate-limit-heartbeat 0."""
    s = create_session(rc)
    for i in range(130):
        assert rc.get("/sessions?limit=1").status_code == 200, i
        assert rc.post(f"/sessions/{s['session_id']}/heartbeat").status_code == 200, i


def test_429_gets_one_warn_access_line(start_server):
    srv = limited(start_server, default=1)
    c = srv.client()
    expect(c.get("/sessions"), 200)
    rid = str(uuid.uuid4())
    r = c.get("/sessions", headers={"X-Request-Id": rid})
    assert_429(r)
    assert r.headers["X-Request-Id"] == rid

    def is_access(e):
        return (e.get("context") or {}).get("request_id") == rid and \
            str(e.get("message", "")).startswith("GET /sessions 429 - ")
    lines = srv.wait_for_log(is_access)
    assert len(lines) == 1, lines
    assert lines[0]["level"] == "WARN"
