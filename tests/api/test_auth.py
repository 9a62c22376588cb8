"""Authentication (contract §1.5 and the decided statetrack key model)."""
import json
import re
import subprocess
import time

import pytest

from conftest import API_KEY, SECOND_KEY
from st_helpers import (PROTECTED_ROUTES, db_for, assert_error, concrete, expect, poll, raw_request,
                        uid)

KEY_RE = re.compile(r"st_[A-Za-z0-9]{40}(?![A-Za-z0-9])")

ALL_PROTECTED = PROTECTED_ROUTES + [("GET", "/metrics")]


def _send(c, method, path, **kw):
    if method in ("POST", "PUT", "DELETE"):
        kw.setdefault("json", {})
    return c.request(method, path, **kw)


@pytest.mark.parametrize("method,path", ALL_PROTECTED, ids=[f"{m} {p}" for m, p in ALL_PROTECTED])
def test_missing_key_is_401(anon, method, path):
    r = _send(anon, method, concrete(path))
    assert_error(r, 401, "API key is missing")


@pytest.mark.parametrize("method,path", ALL_PROTECTED, ids=[f"{m} {p}" for m, p in ALL_PROTECTED])
def test_wrong_key_is_401(anon, method, path):
    r = _send(anon, method, concrete(path), headers={"X-API-Key": "wrong-key"})
    assert_error(r, 401, "Invalid API key")


@pytest.mark.parametrize("method,path", ALL_PROTECTED, ids=[f"{m} {p}" for m, p in ALL_PROTECTED])
def test_wrong_bearer_is_401(anon, method, path):
    r = _send(anon, method, concrete(path), headers={"Authorization": "Bearer wrong-key"})
    assert_error(r, 401, "Invalid API key")


@pytest.mark.parametrize("key", [API_KEY, SECOND_KEY])
@pytest.mark.parametrize("form", ["x-api-key", "bearer"])
def test_valid_keys_accepted(server, prefix, key, form):
    c = server.client(prefix, key=key, auth=form)
    assert isinstance(expect(c.get("/sessions?limit=1"), 200), list)


def test_auth_checked_before_validation_and_lookup(anon):
    # invalid body, unknown ids: still 401 first (§2 order: rate limit -> key -> schema -> logic)
    assert_error(anon.post("/sessions", json={"bogus": 1}), 401, "API key is missing")
    assert_error(anon.post("/tasks/nope/fail", json={}), 401, "API key is missing")
    assert_error(anon.get("/sessions/nope"), 401, "API key is missing")
    assert_error(anon.get("/sessions?limit=abc"), 401, "API key is missing")


def test_unknown_route_is_404_not_401(anon):
    assert_error(anon.get("/nope"), 404, f"Cannot GET {anon.prefix}/nope")


# (headers, expected status, expected 401 message)
PRECEDENCE = [
    ({"Authorization": "Bearer wrong", "X-API-Key": API_KEY}, 401, "Invalid API key"),
    ({"Authorization": f"Bearer {API_KEY}", "X-API-Key": "wrong"}, 200, None),
    ({"Authorization": "Bearer ", "X-API-Key": API_KEY}, 200, None),
    ({"Authorization": "Bearer"}, 401, "API key is missing"),
    ({"Authorization": "Bearer "}, 401, "API key is missing"),
    ({"Authorization": f"bearer {API_KEY}"}, 401, "API key is missing"),
    ({"Authorization": f"bearer {API_KEY}", "X-API-Key": API_KEY}, 200, None),
    ({"Authorization": "Basic dGVzdDp0ZXN0", "X-API-Key": API_KEY}, 200, None),
    ({"Authorization": API_KEY}, 401, "API key is missing"),
    ({"Authorization": API_KEY, "X-API-Key": SECOND_KEY}, 200, None),
    ({"Authorization": f"Bearer  {API_KEY}"}, 401, "Invalid API key"),
    ({"Authorization": "", "X-API-Key": API_KEY}, 200, None),
    ({"X-API-Key": ""}, 401, "API key is missing"),
    ({"X-API-Key": API_KEY.upper()}, 401, "Invalid API key"),
    ({"X-API-Key": API_KEY[:-1]}, 401, "Invalid API key"),
    ({"X-API-Key": API_KEY + "4"}, 401, "Invalid API key"),
    ({"X-API-Key": f"{API_KEY},{SECOND_KEY}"}, 401, "Invalid API key"),
    ({"x-api-key": API_KEY}, 200, None),
    ({"X-Api-Key": SECOND_KEY}, 200, None),
    ({"authorization": f"Bearer {SECOND_KEY}"}, 200, None),
    ({"Authorization": f"Bearer {SECOND_KEY}", "X-API-Key": ""}, 200, None),
    ({"X-API-Key": f"  {API_KEY}  "}, 200, None),            # header values are trimmed
    ({"Authorization": f"Bearer {API_KEY}  "}, 200, None),
]


@pytest.mark.parametrize("headers,status,message", PRECEDENCE,
                         ids=[repr(h) for h, _, _ in PRECEDENCE])
def test_key_presentation_rules(server, prefix, headers, status, message):
    st, hdrs, data = raw_request(server.base_url, "GET", prefix + "/sessions?limit=1", headers)
    assert st == status, (st, data[:300])
    assert "x-request-id" in hdrs
    if status == 401:
        b = json.loads(data)
        assert b["message"] == message
        assert b["error"] == "Unauthorized"
        assert b["error_code"] == "unauthorized"
        assert b["request_id"] == hdrs["x-request-id"]


def test_401_envelope(anon):
    r = anon.get("/sessions?x=1")
    b = assert_error(r, 401, "API key is missing")
    assert b["path"] == anon.prefix + "/sessions?x=1"


def test_keys_never_echoed_in_error(anon):
    r = anon.get("/sessions", headers={"X-API-Key": "secret-wrong-key-xyz"})
    assert_error(r, 401, "Invalid API key")
    assert "secret-wrong-key-xyz" not in r.text


def test_configured_keys_do_not_trigger_admin_bootstrap(server):
    assert not any("admin API key" in line for line in server.all_output())


# --- admin key bootstrap -----------------------------------------------------------------------

def _admin_key(srv):
    lines = [l for l in srv.output() if "admin API key" in l]  # stdout
    assert len(lines) == 1, f"expected one 'admin API key' line, got {lines}"
    m = KEY_RE.search(lines[0])
    assert m, f"no st_ key in {lines[0]!r}"
    return m.group(0)


def test_no_keys_bootstraps_admin_key(start_server, tmp_path):
    db = tmp_path / "boot.db"
    srv = start_server(env={"API_KEYS": None}, db_path=db)
    key = _admin_key(srv)
    expect(srv.client(key=key).get("/sessions?limit=1"), 200)
    expect(srv.client(key=key, auth="bearer").get("/sessions?limit=1"), 200)
    assert_error(srv.client(key=API_KEY).get("/sessions"), 401, "Invalid API key")
    assert_error(srv.client(key=None).get("/sessions"), 401, "API key is missing")
    # no development bypass: a protected write without a key is refused as well
    assert_error(srv.client(key=None).post("/sessions", json={"project_id": "p",
                                                               "machine_id": "m"}),
                 401, "API key is missing")
    # health stays public
    expect(srv.client(key=None).get("/health"), 200)
    # the key is printed once, and only the admin-key line carries it
    assert sum(key in l for l in srv.all_output()) == 1
    assert srv.stop() == 0

    # Restart on the same database: the stored key still works and no new key is made.
    srv2 = start_server(env={"API_KEYS": None}, db_path=db)
    assert not any("admin API key" in l for l in srv2.all_output())
    expect(srv2.client(key=key).get("/sessions?limit=1"), 200)
    assert_error(srv2.client(key="st_" + "A" * 40).get("/sessions"), 401, "Invalid API key")


def test_empty_api_keys_variable_also_bootstraps(start_server):
    srv = start_server(env={"API_KEYS": ""})
    key = _admin_key(srv)
    expect(srv.client(key=key).get("/sessions?limit=1"), 200)
    assert_error(srv.client(key=None).get("/sessions"), 401, "API key is missing")


# --- keys subcommand ---------------------------------------------------------------------------

def _keys(binary, *args, check=True):
    p = subprocess.run([binary, "keys", *args], capture_output=True, text=True, timeout=30)
    if check:
        assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p


def _create_key(binary, db, name):
    p = _keys(binary, "create", "--db", db_for(db), "--name", name)
    keys = KEY_RE.findall(p.stdout)
    assert len(keys) == 1, f"expected one st_ key on stdout: {p.stdout!r}"
    return keys[0]


def _list_line(binary, db, name):
    p = _keys(binary, "list", "--db", db_for(db))
    lines = [l for l in p.stdout.splitlines() if name in l]
    assert len(lines) == 1, p.stdout
    return p.stdout, lines[0]


def test_cli_created_key_works_and_revocation_applies(start_server, statetrack_bin):
    srv = start_server()
    db = srv.db_path
    name = uid("ci-key")
    key = _create_key(statetrack_bin, db, name)
    c = srv.client(key=key)
    poll(lambda: c.get("/sessions?limit=1").status_code == 200, 5,
         desc="DB-created key accepted")
    expect(srv.client(key=key, auth="bearer").get("/machines"), 200)
    # environment keys keep working beside database keys
    expect(srv.client(key=API_KEY).get("/sessions?limit=1"), 200)

    out, line = _list_line(statetrack_bin, db, name)
    assert key not in out, "keys list must never print a full key"
    fields = re.split(r"\s+", line.strip())
    prefix = next((f for f in fields if len(f) >= 4 and key.startswith(f) and f != key), None)
    assert prefix, f"no key prefix shown in {line!r}"

    t0 = time.monotonic()
    _keys(statetrack_bin, "revoke", "--db", db_for(db), prefix)
    poll(lambda: c.get("/sessions?limit=1").status_code == 401, 10,
         desc="revoked key rejected")
    took = time.monotonic() - t0
    assert took <= 3, f"revocation took {took:.1f}s to take effect (expected about 1 s)"
    assert_error(c.get("/sessions?limit=1"), 401, "Invalid API key")
    expect(srv.client(key=API_KEY).get("/sessions?limit=1"), 200)


def test_cli_revoke_by_id(start_server, statetrack_bin):
    srv = start_server()
    db = srv.db_path
    name_a, name_b = uid("key-a"), uid("key-b")
    key_a = _create_key(statetrack_bin, db, name_a)
    key_b = _create_key(statetrack_bin, db, name_b)
    assert key_a != key_b
    ca, cb = srv.client(key=key_a), srv.client(key=key_b)
    poll(lambda: ca.get("/sessions?limit=1").status_code == 200, 5, desc="key a accepted")
    poll(lambda: cb.get("/sessions?limit=1").status_code == 200, 5, desc="key b accepted")
    _, line = _list_line(statetrack_bin, db, name_a)
    key_id = next(f for f in re.split(r"\s+", line.strip()) if f.isdigit())
    t0 = time.monotonic()
    _keys(statetrack_bin, "revoke", "--db", db_for(db), key_id)
    poll(lambda: ca.get("/sessions?limit=1").status_code == 401, 10, desc="key a revoked")
    took = time.monotonic() - t0
    assert took <= 3, f"revocation took {took:.1f}s to take effect (expected about 1 s)"
    # the other key is untouched
    expect(cb.get("/sessions?limit=1"), 200)


def test_cli_revoke_unknown_fails(tmp_path, statetrack_bin):
    db = tmp_path / "k.db"
    _create_key(statetrack_bin, db, "one")
    p = _keys(statetrack_bin, "revoke", "--db", db_for(db), "st_doesnotexist", check=False)
    assert p.returncode != 0


def test_cli_created_key_usable_after_start(start_server, statetrack_bin, tmp_path):
    """A key created before the server starts, on a DB with no env keys, is the only key."""
    db = tmp_path / "pre.db"
    key = _create_key(statetrack_bin, db, "pre")
    srv = start_server(env={"API_KEYS": None}, db_path=db)
    assert not any("admin API key" in l for l in srv.all_output())
    expect(srv.client(key=key).get("/sessions?limit=1"), 200)
    assert_error(srv.client(key=API_KEY).get("/sessions"), 401, "Invalid API key")
