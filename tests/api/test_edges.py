"""Edges of the service: CORS allow-list (--cors-origins), security headers on every response,
and the failed-authentication throttle (--auth-failure-limit)."""
import http.client
import json
import socket
import subprocess

import pytest
import requests

from conftest import API_KEY
from st_helpers import assert_error, expect, poll

ALLOWED = "https://app.example.com"
OTHER_ALLOWED = "http://localhost:5173"
METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE"


def vary(r):
    return {v.strip().lower() for v in r.headers.get("Vary", "").split(",") if v.strip()}


# --- CORS ----------------------------------------------------------------------------------------

@pytest.fixture
def cors_server(start_server):
    return start_server(["--cors-origins", f" {ALLOWED} , {OTHER_ALLOWED}"])


def test_allowed_origin_is_echoed_with_vary(cors_server):
    c = cors_server.client()
    for origin in (ALLOWED, OTHER_ALLOWED):
        for r in (c.get("/health", headers={"Origin": origin}),
                  c.get("/sessions?limit=1", headers={"Origin": origin}),
                  cors_server.client(key=None).get("/sessions", headers={"Origin": origin})):
            assert r.headers.get("Access-Control-Allow-Origin") == origin, r.headers
            assert "origin" in vary(r), r.headers


def test_other_origins_get_no_allow_header(cors_server):
    c = cors_server.client()
    for origin in ("https://evil.example.com", "https://app.example.com.evil.net",
                   "http://app.example.com", "https://app.example.com:8443", "null"):
        r = c.get("/sessions?limit=1", headers={"Origin": origin})
        assert r.status_code == 200
        assert "Access-Control-Allow-Origin" not in r.headers, (origin, r.headers)
        assert "origin" in vary(r)  # the answer depends on Origin, so caches must know
    r = c.get("/health")  # same-origin or non-browser client: no Origin header at all
    assert "Access-Control-Allow-Origin" not in r.headers


def test_preflight_from_allowed_origin(cors_server):
    r = cors_server.client(key=None).request("OPTIONS", "/sessions/abc/heartbeat", headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key,content-type"})
    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert r.headers["Access-Control-Allow-Methods"] == METHODS
    assert r.headers["Access-Control-Allow-Headers"].replace(" ", "") == "x-api-key,content-type"
    assert {"origin", "access-control-request-headers"} <= vary(r)


def test_preflight_from_other_origin_allows_nothing(cors_server):
    r = cors_server.client(key=None).request("OPTIONS", "/sessions", headers={
        "Origin": "https://evil.example.com", "Access-Control-Request-Method": "DELETE",
        "Access-Control-Request-Headers": "x-api-key"})
    assert r.status_code == 204
    for h in ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
              "Access-Control-Allow-Headers"):
        assert h not in r.headers, r.headers


def test_star_restores_the_reference_behaviour(start_server):
    srv = start_server(["--cors-origins", "*"])
    c = srv.client()
    for r in (c.get("/health"), c.get("/sessions?limit=1", headers={"Origin": ALLOWED}),
              srv.client(key=None).get("/sessions"), c.get("/nope")):
        assert r.headers.get("Access-Control-Allow-Origin") == "*", r.headers
        assert "origin" not in vary(r)
    r = srv.client(key=None).request("OPTIONS", "/sessions", headers={
        "Origin": "https://anything.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key,content-type"})
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Allow-Methods"] == METHODS
    assert r.headers["Access-Control-Allow-Headers"].replace(" ", "") == "x-api-key,content-type"


def test_cors_origins_from_the_environment(start_server):
    srv = start_server(env={"STATETRACK_CORS_ORIGINS": ALLOWED})
    r = srv.client().get("/health", headers={"Origin": ALLOWED})
    assert r.headers.get("Access-Control-Allow-Origin") == ALLOWED


@pytest.mark.parametrize("value", ["https://app.example.com/", "app.example.com",
                                   "*,https://app.example.com", "ftp://x.example",
                                   "https://app.example.com/path"])
def test_bad_cors_origins_exit_2(statetrack_bin, tmp_path, value):
    p = subprocess.run([statetrack_bin, "serve", "--host", "127.0.0.1", "--port", "0", "--db",
                        str(tmp_path / "x.db"), "--cors-origins", value],
                       capture_output=True, text=True, timeout=20, cwd=tmp_path,
                       stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "API_KEYS": "k"})
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--cors-origins" in lines[0], p.stderr


# --- security headers ----------------------------------------------------------------------------

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def test_security_headers_on_every_response(server, client, anon):
    created = client.post("/sessions", json={"project_id": "p-edge", "machine_id": "m"})
    responses = [
        client.get("/health"), client.get("/health/detailed"), created,
        client.get(f"/sessions/{created.json()['session_id']}"),
        client.get("/metrics"), server.client("").get("/api/docs-json"),
        anon.get("/sessions"),                                      # 401
        client.get("/sessions/no-such-session"),                    # 404
        client.get("/no-such-route"),                               # 404 unmatched
        client.post("/sessions", json={"bogus": 1}),                # 400
        anon.request("OPTIONS", "/sessions"),                       # 204
        client.delete(f"/sessions/{created.json()['session_id']}"),  # 204
        client.post("/sessions", data=b"{" * 200_000,               # 413 from the reader
                    headers={"Content-Type": "application/json"}),
    ]
    assert [r.status_code for r in responses] == \
        [200, 200, 201, 200, 200, 200, 401, 404, 404, 400, 204, 204, 413]
    for r in responses:
        for name, value in SECURITY_HEADERS.items():
            assert r.headers.get(name) == value, (r.request.method, r.url, name, r.headers)
        assert r.headers.get("Cache-Control") == "no-store", (r.url, r.headers)


def test_docs_page_keeps_its_own_cache_policy(server):
    r = server.client("", key=None).get("/api/docs")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value
    assert r.headers.get("Cache-Control") != "no-store"
    assert "no-store" not in r.headers.get("Cache-Control", "")


# --- failed-authentication throttle --------------------------------------------------------------

def metrics_of(srv):
    r = srv.client().get("/metrics")
    assert r.status_code == 200, r.text[:200]
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#") and "{" not in line.split(" ")[0]:
            name, value = line.split(" ")[:2]
            out[name] = float(value)
    return out


def from_address(srv, source_ip, path, key=None):
    """GET from another loopback source address (the throttle is per client address)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10,
                                      source_address=(source_ip, 0))
    try:
        headers = {"X-API-Key": key} if key else {}
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_default_throttle_after_20_failures(start_server):
    srv = start_server(env={"STATETRACK_AUTH_FAILURE_LIMIT": None})  # the built-in default
    anon = srv.client(key=None)
    good = srv.client()
    before = metrics_of(srv)
    for i in range(20):
        bad = srv.client(key=f"wrong-{i}")
        assert_error(bad.get("/sessions"), 401, "Invalid API key")
    # The 21st request from this address is refused, even with a valid key.
    for c in (good, srv.client(auth="bearer"), anon):
        b = assert_error(c.get("/sessions"), 429)
        assert b["message"] == "Too many failed authentication attempts; retry later"
    r = good.get("/api/machines")
    assert r.status_code == 429
    assert 55 <= int(r.headers["Retry-After"]) <= 60, r.headers
    # Public and unknown routes are not authenticated, so not throttled.
    assert good.get("/health").status_code == 200
    assert good.get("/no-such-route").status_code == 404
    # Another client address is not affected, and sees the counters.
    status, _, data = from_address(srv, "127.0.0.2", "/metrics", API_KEY)
    assert status == 200, data
    text = data.decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith(("statetrack_auth_failures_total ",
                                  "statetrack_auth_throttled_total "))}
    assert values["statetrack_auth_failures_total"] - \
        before["statetrack_auth_failures_total"] == 20
    assert values["statetrack_auth_throttled_total"] - \
        before["statetrack_auth_throttled_total"] == 4
    warns = srv.wait_for_log(lambda e: e.get("message", "").startswith(
        "client address throttled after repeated failed authentication"))
    assert len(warns) == 1, warns
    assert warns[0]["level"] == "WARN"
    assert warns[0]["context"]["client_ip"] == "127.0.0.1"


def test_throttle_limit_is_configurable_and_per_address(start_server):
    srv = start_server(["--auth-failure-limit", "3"])
    for _ in range(3):
        status, _, _ = from_address(srv, "127.0.0.3", "/sessions", "wrong")
        assert status == 401
    status, headers, body = from_address(srv, "127.0.0.3", "/sessions", API_KEY)
    assert status == 429, body
    assert json.loads(body)["error_code"] == "rate_limit_exceeded"
    assert int(headers["Retry-After"]) >= 55
    # Missing keys count as failures too.
    for _ in range(3):
        assert from_address(srv, "127.0.0.4", "/sessions")[0] == 401
    assert from_address(srv, "127.0.0.4", "/sessions", API_KEY)[0] == 429
    # 127.0.0.1 made no failed attempt.
    assert expect(srv.client().get("/sessions?limit=1"), 200) == []


def test_successes_do_not_count(start_server):
    srv = start_server(["--auth-failure-limit", "3"])
    c = srv.client()
    for _ in range(10):
        assert c.get("/sessions?limit=1").status_code == 200
    for _ in range(2):
        assert srv.client(key="wrong").get("/sessions").status_code == 401
    assert c.get("/sessions?limit=1").status_code == 200


def test_zero_disables_the_throttle(start_server):
    srv = start_server(["--auth-failure-limit", "0"])
    for _ in range(30):
        assert srv.client(key="wrong").get("/sessions").status_code == 401
    assert srv.client().get("/sessions?limit=1").status_code == 200
    assert metrics_of(srv)["statetrack_auth_throttled_total"] == 0
    assert metrics_of(srv)["statetrack_auth_failures_total"] == 30


# --- connection limit (--max-connections) -------------------------------------------------------

def _rejected_total(c):
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("statetrack_http_connections_rejected_total"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("statetrack_http_connections_rejected_total is missing")


def _answer(sock):
    """The status line a request on `sock` got, or None when the server closed it unanswered."""
    try:
        data = sock.recv(4096)
    except (ConnectionResetError, BrokenPipeError, socket.timeout):
        return None
    return data.split(b"\r\n", 1)[0] if data else None


def test_connection_limit_holds_under_a_burst_then_frees_up(start_server):
    limit, burst = 8, 40
    srv = start_server(["--max-connections", str(limit)])
    # Every connection is made before the server has served any, so that they reach it as one
    # burst; each then sends a request and stays open (keep-alive).
    socks = []
    try:
        for _ in range(burst):
            socks.append(socket.create_connection(("127.0.0.1", srv.port), timeout=10))
        for s in socks:
            try:
                s.sendall(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
            except (ConnectionResetError, BrokenPipeError):
                pass  # already closed by the server: refused
        answers = [_answer(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    served = [a for a in answers if a is not None]
    assert served == [b"HTTP/1.1 200 OK"] * limit, answers
    # Once those are closed (the server notices within moments), new connections are served
    # again, and every refusal was counted.
    c = srv.client()

    def rejected():
        try:
            return _rejected_total(c)
        except requests.ConnectionError:
            return None  # still at the limit: this connection was refused too

    assert poll(rejected, timeout=5, desc="a connection served again") >= burst - limit
    for _ in range(limit + 2):
        expect(c.get("/health/live"), 200)
