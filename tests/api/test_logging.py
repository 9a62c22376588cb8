"""JSON logs on stdout (contract §9.3): one access line per request, levels by status class,
no secrets."""
import re
import uuid

from conftest import API_KEY, SECOND_KEY
from st_helpers import ISO_RE, create_session, expect, uid

LEVELS = {"ERROR", "WARN", "INFO", "DEBUG"}
ACCESS_RE = re.compile(r"^(GET|POST|PUT|DELETE|PATCH|OPTIONS|HEAD) (\S+) (\d{3}) - "
                       r"\d+(\.\d+)?ms$")


def _access_lines(server, rid):
    def is_access(e):
        ctx = e.get("context") or {}
        return ctx.get("request_id") == rid and ACCESS_RE.match(str(e.get("message", "")))
    return server.wait_for_log(is_access, timeout=5)


def _send(client, method, path, **kw):
    rid = str(uuid.uuid4())
    headers = dict(kw.pop("headers", {}))
    headers["X-Request-Id"] = rid
    r = client.request(method, path, headers=headers, **kw)
    assert r.headers["X-Request-Id"] == rid
    return r, rid


def test_access_line_for_success(server, client):
    r, rid = _send(client, "GET", "/health?probe=1")
    assert r.status_code == 200
    lines = _access_lines(server, rid)
    assert len(lines) == 1, lines
    e = lines[0]
    assert e["message"].startswith(f"GET {client.prefix}/health?probe=1 200 - ")
    assert e["level"] == "INFO"
    ctx = e["context"]
    assert ctx["method"] == "GET"
    assert ctx["path"].startswith(f"{client.prefix}/health")
    assert ctx["status_code"] == 200
    assert isinstance(ctx["duration_ms"], (int, float)) and ctx["duration_ms"] >= 0
    assert ISO_RE.match(e["timestamp"])


def test_access_line_for_created(server, client):
    r, rid = _send(client, "POST", "/sessions", json={"project_id": "p", "machine_id": "m"})
    assert r.status_code == 201
    (e,) = _access_lines(server, rid)
    assert e["level"] == "INFO"
    assert e["context"]["status_code"] == 201
    assert e["message"].startswith(f"POST {client.prefix}/sessions 201 - ")


def test_401_logged_as_warn(server, anon):
    r, rid = _send(anon, "GET", "/sessions")
    assert r.status_code == 401
    lines = _access_lines(server, rid)
    assert len(lines) == 1, lines
    assert lines[0]["level"] == "WARN"
    assert "401" in lines[0]["message"]
    assert lines[0]["context"]["status_code"] == 401


def test_unknown_route_logged_as_warn(server, anon):
    r, rid = _send(anon, "GET", "/nope-log")
    assert r.status_code == 404
    (e,) = _access_lines(server, rid)
    assert e["level"] == "WARN"
    assert e["message"].startswith(f"GET {anon.prefix}/nope-log 404 - ")


def test_validation_error_logged_as_warn(server, client):
    r, rid = _send(client, "POST", "/sessions", json={"bogus": 1})
    assert r.status_code == 400
    (e,) = _access_lines(server, rid)
    assert e["level"] == "WARN"
    assert e["context"]["status_code"] == 400


def test_every_json_line_has_required_keys(server, client):
    expect(client.get("/health"), 200)
    entries = server.json_lines()
    assert entries
    for e in entries:
        assert ISO_RE.match(str(e.get("timestamp", ""))), e
        assert e.get("level") in LEVELS, e
        assert isinstance(e.get("message"), str), e


def test_secrets_and_bodies_never_logged(server, client, anon):
    marker = uid("secret-body-marker")
    wrong_key = uid("wrong-key-marker")
    s = create_session(client, metadata={"token": marker})
    expect(client.put(f"/sessions/{s['session_id']}", json={"metadata": {"x": marker}}), 200)
    r1, rid1 = _send(anon, "GET", "/sessions", headers={"Authorization": f"Bearer {wrong_key}"})
    r2, rid2 = _send(anon, "GET", "/sessions", headers={"X-API-Key": wrong_key})
    r3, rid3 = _send(server.client(client.prefix, key=SECOND_KEY, auth="bearer"), "GET",
                     "/sessions?limit=1")
    assert (r1.status_code, r2.status_code, r3.status_code) == (401, 401, 200)
    for rid in (rid1, rid2, rid3):
        assert _access_lines(server, rid)
    everything = "\n".join(server.all_output())
    for secret in (API_KEY, SECOND_KEY, wrong_key, marker):
        assert secret not in everything, f"{secret!r} leaked into the server output"
