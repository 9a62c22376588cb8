"""Global HTTP behaviour: error envelope, unknown routes, body parsing, size limit, request ids,
CORS (contract §1.1-§1.4, §1.7, §9.1)."""
import json
import uuid

import pytest

from conftest import API_KEY
from st_helpers import (ISO_RE, UUID4_RE, assert_error, assert_recent, assert_validation,
                        create_machine, create_session, create_task, expect, raw_request, uid)


# --- unknown routes ----------------------------------------------------------------------------

UNKNOWN = [
    ("GET", "/nope"),
    ("GET", "/nope?x=1&y=two"),
    ("PATCH", "/sessions/abc"),
    ("DELETE", "/sessions"),
    ("PUT", "/sessions"),
    ("POST", "/sessions/abc"),
    ("GET", "/sessions/a/b/c"),
    ("POST", "/health"),
    ("DELETE", "/machines"),
    ("PATCH", "/tasks/x"),
    ("GET", "/tasks/x/start"),
    ("GET", "/machines/x/heartbeat"),
    ("POST", "/sessions/x/tasks"),
    ("GET", "/projects"),
]


@pytest.mark.parametrize("method,path", UNKNOWN, ids=[f"{m} {p}" for m, p in UNKNOWN])
def test_unknown_route_404(anon, method, path):
    r = anon.request(method, path)
    b = assert_error(r, 404, f"Cannot {method} {anon.prefix}{path}")
    assert b["path"] == anon.prefix + path


@pytest.mark.parametrize("path", ["/api", "/api/api/sessions", "/apisessions", "/API/nope"])
def test_unknown_prefix_paths_404(server, path):
    c = server.client("")
    assert_error(c.get(path), 404, f"Cannot GET {path}")


def test_unknown_route_with_key_still_404(client):
    assert_error(client.get("/nope"), 404, f"Cannot GET {client.prefix}/nope")


@pytest.mark.parametrize("path", ["/sessions/stale", "/sessions/active", "/sessions/failed",
                                  "/sessions/archived", "/sessions/recoverable",
                                  "/machines/available"])
def test_literal_segments_are_not_ids(client, path):
    assert isinstance(expect(client.get(path), 200), list)


def test_invalid_percent_escape_is_400(server, prefix):
    st, hdrs, data = raw_request(server.base_url, "GET", prefix + "/sessions/%zz",
                                 {"X-API-Key": API_KEY})
    assert st == 400, data
    b = json.loads(data)
    assert b["statusCode"] == 400 and b["error"] == "Bad Request"
    assert b["error_code"] == "validation_error"
    assert b["request_id"] == hdrs["x-request-id"]


# --- body parsing ------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b'{"project_id": ', b"{bad json}", b'{"a":1,}', b"42",
                                 b'"just a string"', b"true", b"null", b"\xff\xfe"])
def test_malformed_json_400(client, raw):
    r = client.post("/sessions", data=raw, headers={"Content-Type": "application/json"})
    b = assert_error(r, 400)
    assert b["error_code"] == "validation_error"
    assert isinstance(b["message"], str) and b["message"]


def test_empty_json_body_is_empty_object(client):
    r = client.post("/sessions", data=b"", headers={"Content-Type": "application/json"})
    assert_validation(r, "project_id must be a string", "machine_id must be a string")


def test_json_with_charset(client):
    body = json.dumps({"project_id": "p", "machine_id": "m"}).encode()
    r = client.post("/sessions", data=body,
                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert expect(r, 201)["project_id"] == "p"


def test_other_content_type_leaves_body_empty(client):
    body = json.dumps({"project_id": "p", "machine_id": "m"}).encode()
    r = client.post("/sessions", data=body, headers={"Content-Type": "text/plain"})
    assert_validation(r, "project_id must be a string", "machine_id must be a string")


def test_urlencoded_form_is_parsed(client):
    p = uid("proj")
    r = client.post("/sessions", data={"project_id": p, "machine_id": "m"})
    s = expect(r, 201)
    assert s["project_id"] == p and s["machine_id"] == "m"
    r = client.post("/sessions", data={"project_id": p, "machine_id": "m", "docker_slot": "1"})
    assert_validation(r, "docker_slot must be a number conforming to the specified constraints")


def test_non_finite_numbers_rejected_or_never_echoed(client):
    r = client.post("/sessions", data=b'{"project_id":"p","machine_id":"m","docker_slot":1e400}',
                    headers={"Content-Type": "application/json"})
    assert_error(r, 400)
    r = client.post("/sessions", data=b'{"project_id":"p","machine_id":"m","metadata":{"x":1e400}}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code in (201, 400), r.text

    def strict(v):
        raise AssertionError(f"server emitted non-JSON number {v}")
    json.loads(r.text, parse_constant=strict)


def test_unicode_roundtrip(client):
    meta = {"emoji": "🚀", "cjk": "状态", "esc": "a\"b\\c\n\t", "ctl": "\u0001"}
    s = create_session(client, project_id="проект-" + uid(), metadata=meta)
    assert s["metadata"] == meta
    assert expect(client.get(f"/sessions/{s['session_id']}"), 200)["metadata"] == meta


# --- size limit --------------------------------------------------------------------------------

def _body_of_size(n):
    """A valid session-create JSON body of exactly n bytes."""
    base = {"project_id": "p", "machine_id": "m", "metadata": {"pad": ""}}
    overhead = len(json.dumps(base, separators=(",", ":")).encode())
    base["metadata"]["pad"] = "x" * (n - overhead)
    raw = json.dumps(base, separators=(",", ":")).encode()
    assert len(raw) == n
    return raw


def test_body_at_limit_accepted(client):
    r = client.post("/sessions", data=_body_of_size(102400),
                    headers={"Content-Type": "application/json"})
    s = expect(r, 201)
    assert len(s["metadata"]["pad"]) > 100000


@pytest.mark.parametrize("size", [102401, 150 * 1024, 2 * 1024 * 1024])
def test_body_over_limit_413(client, size):
    r = client.post("/sessions", data=_body_of_size(size),
                    headers={"Content-Type": "application/json"})
    b = assert_error(r, 413)
    assert b["error"] == "Payload Too Large"
    assert b["error_code"] == "payload_too_large"
    assert isinstance(b["message"], str)


def test_chunked_body_over_limit_413(client):
    raw = _body_of_size(200 * 1024)

    def gen():
        for i in range(0, len(raw), 8192):
            yield raw[i:i + 8192]
    r = client.post("/sessions", data=gen(), headers={"Content-Type": "application/json"})
    assert_error(r, 413)


def test_oversized_put_413_leaves_session(client):
    s = create_session(client)
    raw = json.dumps({"metadata": {"pad": "y" * 120000}}).encode()
    r = client.put(f"/sessions/{s['session_id']}", data=raw,
                   headers={"Content-Type": "application/json"})
    assert_error(r, 413)
    assert expect(client.get(f"/sessions/{s['session_id']}"), 200) == s


def test_server_healthy_after_413(client):
    client.post("/sessions", data=_body_of_size(300 * 1024),
                headers={"Content-Type": "application/json"})
    expect(client.get("/health"), 200)
    create_session(client)


# --- envelope ----------------------------------------------------------------------------------

def test_validation_envelope(client):
    r = client.post("/sessions?x=1", json={"foo": 1, "project_id": 5, "machine_id": "m"})
    b = assert_validation(r, "property foo should not exist", "project_id must be a string")
    assert set(b) >= {"statusCode", "error", "error_code", "message", "details", "request_id",
                      "timestamp", "path"}
    assert b["error"] == "Bad Request"
    assert b["path"] == f"{client.prefix}/sessions?x=1"
    assert_recent(b["timestamp"], 5)
    assert r.headers["Content-Type"].replace(" ", "").lower() == "application/json;charset=utf-8"


def test_business_400_message_is_string(client):
    s = create_session(client)
    expect(client.delete(f"/sessions/{s['session_id']}"), 204)
    b = assert_error(client.post(f"/sessions/{s['session_id']}/heartbeat"), 400,
                     "Cannot update heartbeat for completed session")
    assert b["error_code"] == "validation_error"


def test_404_envelope(client):
    b = assert_error(client.get("/sessions/missing-1?threshold=5"), 404,
                     "Session with ID missing-1 not found")
    assert "not found" in b["message"]
    assert b["path"] == f"{client.prefix}/sessions/missing-1?threshold=5"


def test_409_envelope(client):
    m = create_machine(client)
    b = assert_error(client.post("/machines", json={"machine_id": m["machine_id"],
                                                    "hostname": "h", "docker_slots": []}), 409)
    assert b["error"] == "Conflict" and b["error_code"] == "conflict"


# --- request ids -------------------------------------------------------------------------------

def _rid(r):
    rid = r.headers.get("X-Request-Id")
    assert rid and UUID4_RE.match(rid), f"X-Request-Id {rid!r} on {r.status_code}"
    return rid


def test_request_id_on_every_kind_of_response(client, anon):
    s = create_session(client)
    sid = s["session_id"]
    t = create_task(client, sid)
    responses = [
        client.get("/health"),                                            # 200 public
        client.get(f"/sessions/{sid}"),                                   # 200
        client.post("/sessions", json={"project_id": "p", "machine_id": "m"}),  # 201
        client.delete(f"/tasks/{t['task_id']}"),                           # 204
        client.post("/sessions", json={}),                                # 400
        anon.get("/sessions"),                                            # 401
        client.get("/sessions/nope"),                                     # 404 resource
        anon.get("/nope"),                                                # 404 route
    ]
    expected = [200, 200, 201, 204, 400, 401, 404, 404]
    assert [r.status_code for r in responses] == expected
    ids = [_rid(r) for r in responses]
    assert len(set(ids)) == len(ids)
    for r in responses:
        if r.status_code >= 400:
            assert r.json()["request_id"] == r.headers["X-Request-Id"]


def test_request_ids_are_fresh(client):
    ids = {_rid(client.get("/health")) for _ in range(20)}
    assert len(ids) == 20


def test_client_request_id_echoed(client, anon):
    mine = str(uuid.uuid4())
    r = client.get("/health", headers={"X-Request-Id": mine})
    assert r.headers["X-Request-Id"] == mine
    mine2 = str(uuid.uuid4())
    r = anon.get("/sessions", headers={"X-Request-Id": mine2})
    b = assert_error(r, 401, "API key is missing")
    assert b["request_id"] == mine2
    mine3 = str(uuid.uuid4())
    r = client.get("/sessions/nope-rid", headers={"X-Request-Id": mine3})
    assert assert_error(r, 404)["request_id"] == mine3


@pytest.mark.parametrize("bad", ["abc", "not-a-uuid", "123", "x" * 300,
                                 "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}",
                                 "6ba7b8109dad11d180b400c04fd430c8zz"])
def test_invalid_client_request_id_replaced(client, bad):
    r = client.get("/sessions/nope-rid2", headers={"X-Request-Id": bad})
    b = assert_error(r, 404)
    assert r.headers["X-Request-Id"] != bad
    assert UUID4_RE.match(r.headers["X-Request-Id"])
    assert b["request_id"] == r.headers["X-Request-Id"]


# --- CORS (default: no cross-origin access; allow-list and "*" in test_edges.py) --------------

def test_no_cors_header_by_default(client, anon):
    h = {"Origin": "https://example.com"}
    for r in (client.get("/health", headers=h), client.get("/sessions?limit=1", headers=h),
              anon.get("/sessions", headers=h), anon.get("/nope", headers=h),
              client.post("/sessions", json={}, headers=h)):
        assert "Access-Control-Allow-Origin" not in r.headers, (r.status_code, r.headers)


def test_cors_preflight_allows_nothing_by_default(anon):
    r = anon.request("OPTIONS", "/sessions", headers={
        "Origin": "https://example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key,content-type",
    })
    assert r.status_code == 204, r.text
    for h in ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
              "Access-Control-Allow-Headers"):
        assert h not in r.headers, (h, r.headers)
    assert r.content == b""


def test_cors_preflight_on_parametrised_route(anon):
    r = anon.request("OPTIONS", "/sessions/abc/heartbeat", headers={
        "Origin": "https://example.com", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204
    assert "Access-Control-Allow-Origin" not in r.headers


# --- success conventions -----------------------------------------------------------------------

def test_success_bodies_have_no_envelope(client):
    s = create_session(client)
    assert "data" not in s and "statusCode" not in s
    g = expect(client.get(f"/sessions/{s['session_id']}"), 200)
    assert g["session_id"] == s["session_id"]
    for k in ("created_at", "updated_at", "started_at", "last_heartbeat"):
        assert ISO_RE.match(g[k])
