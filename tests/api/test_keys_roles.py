"""Least-privilege API keys: roles (admin, write, read, machine), project scope, expiry, the
/keys administration routes and the CLI, rotation, revocation of open streams, and a walk over
every route of the served OpenAPI document (so a new route cannot escape it)."""
import hashlib
import re
import sqlite3
import subprocess
import time

import pytest

import test_events as ev
from conftest import API_KEY, Server
from st_helpers import (assert_error, create_session, create_task, db_for, expect, is_conninfo,
                        poll, psql, uid)

KEY_RE = re.compile(r"st_[A-Za-z0-9]{40}(?![A-Za-z0-9])")
FAST = [*ev.NO_LIMITS, "--stream-keepalive-s", "1"]
ALL_ROLES = {"admin", "write", "read", "machine"}


@pytest.fixture(scope="module")
def server(statetrack_bin, tmp_path_factory):
    """This module's own server (streams never touch the suite's shared one)."""
    d = tmp_path_factory.mktemp("keys")
    srv = Server(statetrack_bin, d / "st.db", FAST, {}, d)
    yield srv
    while ev._open_clients:
        ev._open_clients.pop().close()
    rc = srv.stop()
    assert rc == 0, f"keys module server exit code {rc}\n" + "\n".join(srv.err_lines[-20:])


@pytest.fixture(autouse=True)
def _close_streams():
    yield
    while ev._open_clients:
        ev._open_clients.pop().close()


def new_key(srv, role, **fields):
    """A key created through POST /api/keys with the environment (admin) key: (key, document)."""
    body = {"name": uid(f"k-{role}"), "role": role, **fields}
    doc = expect(srv.client("/api").post("/keys", json=body), 201)
    assert KEY_RE.fullmatch(doc["key"]), doc
    return doc["key"], doc


def as_key(srv, key, prefix="/api"):
    return srv.client(prefix, key=key)


def fill(path, value="no-such-id"):
    return re.sub(r"\{[^}]*\}", value, path)


def send(c, method, path, **kw):
    if method in ("POST", "PUT", "DELETE", "PATCH"):
        kw.setdefault("json", {})
    return c.request(method, path, **kw)


# --- the route walk ------------------------------------------------------------------------------

def _operations(srv):
    doc = expect(srv.client("", key=None).get("/api/docs-json"), 200)
    ops = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch"):
                ops.append((method.upper(), path, op))
    assert len(ops) >= 60, len(ops)
    return ops


@pytest.mark.parametrize("prefix", ["", "/api"], ids=["root", "api"])
def test_route_walk_401_without_key_403_without_the_right(server, prefix):
    ops = _operations(server)
    keys = {role: new_key(server, role, **({"machine_id": uid("walk-m")} if role == "machine"
                                           else {}))[0]
            for role in ("write", "read", "machine")}
    anon = server.client(prefix, key=None)
    open_to_all = []
    for method, path, op in ops:
        need = op.get("x-required-role")
        assert need in ("public", "read", "write", "admin"), (method, path, op.get("x-required-role"))
        target = fill(path)
        if path.startswith("/api/docs"):
            if prefix:
                continue  # the documentation lives under /api only
            target = path
        if need == "public":
            assert not op.get("security"), (method, path)
            r = send(anon, method, target)
            assert r.status_code not in (401, 403), (method, path, r.status_code)
            continue
        # no key: 401, before anything else
        assert_error(send(anon, method, target), 401, "API key is missing")
        allowed = set(op["x-allowed-roles"])
        assert "admin" in allowed, (method, path)
        expected = {"read": {"read", "write", "admin"}, "write": {"write", "admin"},
                    "admin": {"admin"}}[need]
        assert allowed - {"machine"} == expected, (method, path, allowed)
        lacking = [r for r in ("write", "read", "machine") if r not in allowed]
        if not lacking:
            open_to_all.append((method, path))
        for role in lacking:
            r = send(as_key(server, keys[role], prefix), method, target)
            b = assert_error(r, 403)
            assert b["error_code"] == "forbidden", b
            assert need in b["message"] or "admin key" in b["message"], b
    # the only routes every role may call are the event streams and their tickets
    assert sorted(p for _, p in open_to_all) == ["/events", "/events/stream", "/events/ticket"]
    # health is public
    for p in ("/health", "/health/live", "/health/ready"):
        assert anon.get(p).status_code == 200


def test_openapi_states_the_required_role(server):
    ops = {(m, p): op for m, p, op in _operations(server)}
    assert ops[("POST", "/keys")]["x-required-role"] == "admin"
    assert ops[("POST", "/sessions/cleanup")]["x-required-role"] == "admin"
    assert ops[("DELETE", "/sessions/{id}/purge")]["x-required-role"] == "admin"
    assert ops[("GET", "/sessions")]["x-required-role"] == "read"
    assert ops[("POST", "/sessions/{id}/heartbeat")]["x-required-role"] == "write"
    assert "machine" in ops[("POST", "/sessions/{id}/heartbeat")]["x-allowed-roles"]
    assert "machine" not in ops[("GET", "/sessions")]["x-allowed-roles"]
    assert ops[("GET", "/health")]["x-required-role"] == "public"
    assert "403" in ops[("GET", "/sessions")]["responses"]


# --- roles -------------------------------------------------------------------------------------

def test_env_keys_stay_admin(server):
    c = server.client("/api")
    expect(c.get("/keys"), 200)
    expect(c.post("/sessions/cleanup", json={"older_than_days": 30, "statuses": ["completed"],
                                             "dry_run": True}), 200)


def test_read_and_write_roles(server):
    read, _ = new_key(server, "read")
    write, _ = new_key(server, "write")
    admin = server.client("/api")
    s = create_session(admin)
    r, w = as_key(server, read), as_key(server, write)
    expect(r.get(f"/sessions/{s['session_id']}"), 200)
    b = assert_error(r.post(f"/sessions/{s['session_id']}/heartbeat"), 403)
    assert "write" in b["message"]
    expect(w.post(f"/sessions/{s['session_id']}/heartbeat"), 200)
    s2 = create_session(w)
    expect(w.get(f"/sessions/{s2['session_id']}"), 200)
    assert_error(w.post("/sessions/cleanup", json={"older_than_days": 30,
                                                   "statuses": ["completed"]}), 403,
                 "This route needs an admin key")
    assert_error(w.delete(f"/sessions/{s2['session_id']}/purge", json={"confirm": True}), 403)
    assert_error(w.get("/keys"), 403, "This route needs an admin key")


def test_machine_key_is_confined_to_its_machine(server):
    mine, other = uid("mine"), uid("other")
    key, doc = new_key(server, "machine", machine_id=mine)
    assert doc["machine_id"] == mine and doc["role"] == "machine"
    m = as_key(server, key)
    admin = server.client("/api")
    # its machine: register and heartbeat; any other machine: 403
    expect(m.post("/machines", json={"machine_id": mine, "hostname": "h", "docker_slots": [1]}),
           201)
    expect(m.post(f"/machines/{mine}/heartbeat"), 200)
    assert_error(m.post("/machines", json={"machine_id": other, "hostname": "h",
                                           "docker_slots": [1]}), 403)
    expect(admin.post("/machines", json={"machine_id": other, "hostname": "h",
                                         "docker_slots": [1]}), 201)
    assert_error(m.post(f"/machines/{other}/heartbeat"), 403)
    assert_error(m.put(f"/machines/{mine}", json={"status": "maintenance"}), 403)
    assert_error(m.delete(f"/machines/{mine}"), 403)
    # sessions on its machine: create, heartbeat, update; elsewhere: 403
    s = create_session(m, machine_id=mine)
    assert_error(m.post("/sessions", json={"project_id": "p", "machine_id": other}), 403)
    expect(m.post(f"/sessions/{s['session_id']}/heartbeat"), 200)
    expect(m.put(f"/sessions/{s['session_id']}", json={"metadata": {"step": 2}}), 200)
    theirs = create_session(admin, machine_id=other)
    assert_error(m.post(f"/sessions/{theirs['session_id']}/heartbeat"), 403)
    assert_error(m.put(f"/sessions/{theirs['session_id']}", json={"metadata": {}}), 403)
    # tasks of its sessions only
    t = create_task(m, s["session_id"], project_id=s["project_id"])
    expect(m.post(f"/tasks/{t['task_id']}/start"), 200)
    expect(m.put(f"/tasks/{t['task_id']}", json={"metadata": {"x": 1}}), 200)
    expect(m.post(f"/tasks/{t['task_id']}/complete"), 200)
    assert_error(m.post("/tasks", json={"session_id": theirs["session_id"],
                                        "project_id": theirs["project_id"], "task_name": "x"}),
                 403)
    t2 = create_task(admin, theirs["session_id"], project_id=theirs["project_id"])
    assert_error(m.put(f"/tasks/{t2['task_id']}", json={"metadata": {}}), 403)
    assert_error(m.post(f"/tasks/{t2['task_id']}/fail", json={"error_message": "x"}), 403)
    # nothing else: no reads, no other writes
    assert_error(m.get("/sessions"), 403)
    assert_error(m.get(f"/sessions/{s['session_id']}"), 403)
    assert_error(m.get("/machines"), 403)
    assert_error(m.delete(f"/sessions/{s['session_id']}"), 403)
    assert_error(m.post(f"/sessions/{s['session_id']}/mark-failed", json={"reason": "x"}), 403)
    assert_error(m.delete(f"/tasks/{t['task_id']}"), 403)


def test_machine_key_streams_only_its_machine(server):
    mine, other = uid("mine"), uid("other")
    key, _ = new_key(server, "machine", machine_id=mine)
    admin = server.client("/api")
    proj = uid("proj")
    ws = ev.WS(server, {"project_id": proj}, key=key)
    ws.sync()
    sse = ev.sse_open(server, {"project_id": proj}, key=key)
    create_session(admin, project_id=proj, machine_id=other)
    s = create_session(admin, project_id=proj, machine_id=mine)
    for st in (ws, sse):
        e = ev.take(st, 1)[0]
        assert e["session_id"] == s["session_id"] and e["machine_id"] == mine, e
    # a subscribe message cannot widen the scope
    ws.send({"type": "subscribe", "machine_id": other, "since": 0})
    assert ws.recv()["type"] == "subscribed"
    ws.quiet(1.5)


# --- project scope -----------------------------------------------------------------------------

def test_project_scope_filters_lists_and_refuses_objects_outside(server):
    a, b, c = uid("pa"), uid("pb"), uid("pc")
    admin = server.client("/api")
    sa = create_session(admin, project_id=a)
    sb = create_session(admin, project_id=b)
    sc = create_session(admin, project_id=c)
    ta = create_task(admin, sa["session_id"], project_id=a)
    tb = create_task(admin, sb["session_id"], project_id=b)
    key, doc = new_key(server, "write", projects=[a, c])
    assert doc["projects"] == [a, c]
    w = as_key(server, key)

    ids = {x["session_id"] for x in expect(w.get("/sessions", params={"limit": 100}), 200)}
    assert sa["session_id"] in ids and sc["session_id"] in ids and sb["session_id"] not in ids
    assert expect(w.get("/sessions", params={"project_id": b}), 200) == []
    active = {x["session_id"] for x in expect(w.get("/sessions/active"), 200)}
    assert sb["session_id"] not in active and sa["session_id"] in active
    by_machine = expect(w.get(f"/sessions/by-machine/{sb['machine_id']}"), 200)
    assert by_machine == []
    tasks = {x["task_id"] for x in expect(w.get("/tasks", params={"limit": 100}), 200)}
    assert ta["task_id"] in tasks and tb["task_id"] not in tasks

    expect(w.get(f"/sessions/{sa['session_id']}"), 200)
    for path in (f"/sessions/{sb['session_id']}", f"/sessions/{sb['session_id']}/tasks",
                 f"/sessions/{sb['session_id']}/events", f"/sessions/by-project/{b}",
                 f"/tasks/{tb['task_id']}"):
        assert_error(w.get(path), 403)
    expect(w.get(f"/sessions/by-project/{a}"), 200)
    # writes
    assert_error(w.post(f"/sessions/{sb['session_id']}/heartbeat"), 403)
    assert_error(w.put(f"/sessions/{sb['session_id']}", json={"metadata": {}}), 403)
    assert_error(w.post("/sessions", json={"project_id": b, "machine_id": "m"}), 403)
    assert_error(w.post("/tasks", json={"session_id": sb["session_id"], "project_id": b,
                                        "task_name": "x"}), 403)
    assert_error(w.post("/tasks", json={"session_id": sa["session_id"], "project_id": b,
                                        "task_name": "x"}), 403)
    assert_error(w.post(f"/tasks/{tb['task_id']}/start"), 403)
    expect(w.post(f"/sessions/{sa['session_id']}/heartbeat"), 200)
    created = create_session(w, project_id=c)
    assert created["project_id"] == c
    create_task(w, sa["session_id"], project_id=a)
    # machines belong to no project: readable, not changeable
    expect(w.get("/machines"), 200)
    assert_error(w.post("/machines", json={"machine_id": uid("m"), "hostname": "h",
                                           "docker_slots": [1]}), 403)
    # not through assign-session either, even for a session in its own projects
    m = uid("m")
    expect(admin.post("/machines", json={"machine_id": m, "hostname": "h", "docker_slots": [1]}),
           201)
    assert_error(w.post(f"/machines/{m}/assign-session", json={"session_id": sa["session_id"]}),
                 403)
    assert expect(admin.get(f"/machines/{m}"), 200)["active_sessions"] == []


def test_project_scope_limits_events_live_and_replayed(server):
    a, b = uid("pa"), uid("pb")
    admin = server.client("/api")
    key, _ = new_key(server, "read", projects=[a])
    r = as_key(server, key)
    ws = ev.WS(server, {}, key=key)
    ws.sync()
    sse = ev.sse_open(server, {}, key=key)
    tk = expect(r.post("/events/ticket"), 201)["ticket"]
    sse_t = ev.sse_open(server, {"ticket": tk}, key=None)
    create_session(admin, project_id=b)
    sa = create_session(admin, project_id=a)
    create_session(admin, project_id=b)
    fence = create_session(admin, project_id=a)
    for st in (ws, sse, sse_t):
        got = ev.take(st, 2)
        assert [e["session_id"] for e in got] == [sa["session_id"], fence["session_id"]], got
    # replay from the start of the log (since=0 / Last-Event-ID): in-scope events only
    replay = ev.sse_open(server, {"since": 0}, key=key)
    seen = ev.take_until(replay, lambda e: e["session_id"] == fence["session_id"])
    assert seen and all(e.get("project_id") == a for e in seen), \
        {e.get("project_id") for e in seen}
    ws2 = ev.WS(server, {}, key=key)
    ws2.send({"type": "subscribe", "project_id": b, "since": 0})
    assert ws2.recv()["type"] == "subscribed"
    ws2.quiet(1.5)


# --- expiry, rotation, revocation ----------------------------------------------------------------

def test_expired_key_is_401(server):
    key, doc = new_key(server, "read", expires_in_s=2)
    assert doc["expires_at"] is not None
    c = as_key(server, key)
    expect(c.get("/sessions", params={"limit": 1}), 200)
    poll(lambda: c.get("/sessions").status_code == 401, 6, desc="key expired")
    assert_error(c.get("/sessions"), 401, "API key has expired")
    listed = {k["id"]: k for k in expect(server.client("/api").get("/keys"), 200)}
    assert listed[doc["id"]]["status"] == "expired"
    assert_error(server.client("/api").post("/keys", json={
        "name": "x", "role": "read", "expires_at": "2001-01-01T00:00:00.000Z"}), 400)


def test_rotate_without_grace(server):
    key, doc = new_key(server, "write", projects=[uid("p")])
    admin = server.client("/api")
    r = expect(admin.post(f"/keys/{doc['id']}/rotate", json={}), 201)
    new = r["key"]
    assert KEY_RE.fullmatch(new) and new != key
    assert (r["name"], r["role"], r["projects"]) == (doc["name"], doc["role"], doc["projects"])
    assert r["previous"]["id"] == doc["id"] and r["previous"]["status"] == "revoked"
    assert "key" not in r["previous"]
    assert_error(as_key(server, key).get("/sessions"), 401, "Invalid API key")
    expect(as_key(server, new).get("/sessions"), 200)
    # a revoked key cannot be rotated again
    assert_error(admin.post(f"/keys/{doc['id']}/rotate", json={}), 400)


def test_rotate_with_grace(server):
    key, doc = new_key(server, "read")
    r = expect(server.client("/api").post(f"/keys/{doc['id']}/rotate", json={"grace_s": 2}), 201)
    old, new = as_key(server, key), as_key(server, r["key"])
    assert r["previous"]["status"] == "active" and r["previous"]["expires_at"]
    expect(old.get("/sessions"), 200)
    expect(new.get("/sessions"), 200)
    poll(lambda: old.get("/sessions").status_code == 401, 6, desc="old key expired")
    expect(new.get("/sessions"), 200)
    assert_error(server.client("/api").post(f"/keys/{doc['id']}/rotate",
                                            json={"grace_s": -1}), 400)


def test_revoke_takes_effect_at_once_and_closes_streams(server):
    key, doc = new_key(server, "write")
    c = as_key(server, key)
    proj = uid("proj")
    sse = ev.sse_open(server, {"project_id": proj}, key=key)
    ws = ev.WS(server, {"project_id": proj}, key=key)
    ws.sync()
    s = create_session(c, project_id=proj)
    for st in (sse, ws):
        assert ev.take(st, 1)[0]["session_id"] == s["session_id"]
    t0 = time.monotonic()
    b = expect(server.client("/api").delete(f"/keys/{doc['id']}"), 200)
    assert b["status"] == "revoked" and b["revoked_at"]
    assert_error(c.get("/sessions"), 401, "Invalid API key")  # the very next request
    frames = sse.wait_closed(5)
    assert frames and frames[-1]["data"]["code"] == "key_revoked", frames
    msgs = ws.wait_closed(5)
    assert [m.get("code") for m in msgs] == ["key_revoked"], msgs
    assert ws.close_code == 1008
    took = time.monotonic() - t0
    assert took < 3, f"streams closed {took:.1f}s after the revocation"
    # revoking again is harmless; unknown keys are 404
    expect(server.client("/api").delete(f"/keys/{doc['id']}"), 200)
    assert_error(server.client("/api").delete("/keys/999999999"), 404)


def test_list_never_shows_the_key_or_its_hash(server):
    key, doc = new_key(server, "machine", machine_id=uid("m"), projects=[uid("p")])
    r = server.client("/api").get("/keys")
    listed = expect(r, 200)
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert key not in r.text and key[11:] not in r.text and digest not in r.text
    item = next(k for k in listed if k["id"] == doc["id"])
    assert set(item) == {"id", "prefix", "name", "role", "machine_id", "projects", "created_at",
                         "last_used_at", "expires_at", "revoked_at", "status"}, item
    assert key.startswith(item["prefix"]) and len(item["prefix"]) < len(key)
    assert item["last_used_at"] is None
    as_key(server, key).post(f"/machines/{doc['machine_id']}/heartbeat")
    item = next(k for k in expect(server.client("/api").get("/keys"), 200)
                if k["id"] == doc["id"])
    assert item["last_used_at"] is not None


@pytest.mark.parametrize("body,fragment", [
    ({"role": "read"}, "name"),
    ({"name": "x", "role": "root"}, "role"),
    ({"name": "x", "role": "machine"}, "machine_id"),
    ({"name": "x", "role": "write", "machine_id": "m"}, "machine_id"),
    ({"name": "x", "role": "admin", "projects": ["p"]}, "admin"),
    ({"name": "x", "role": "read", "projects": ["p", "p"]}, "unique"),
    ({"name": "x", "role": "read", "projects": [""]}, "projects"),
    ({"name": "x", "role": "read", "bogus": 1}, "bogus"),
    ({"name": "x", "role": "read", "expires_in_s": 0}, "expires_in_s"),
])
def test_create_validation_is_400(server, body, fragment):
    b = assert_error(server.client("/api").post("/keys", json=body), 400)
    text = " ".join(b["message"]) if isinstance(b["message"], list) else b["message"]
    assert fragment in text, b


# --- the CLI and migration ---------------------------------------------------------------------

def _cli(binary, *args, check=True):
    p = subprocess.run([binary, "keys", *args], capture_output=True, text=True, timeout=30)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def test_cli_create_list_rotate_with_scope(start_server, statetrack_bin):
    srv = start_server(FAST)
    db = srv.db_path
    mach, proj = uid("m"), uid("p")
    p = _cli(statetrack_bin, "create", "--db", db, "--name", "agent", "--role", "machine",
             "--machine-id", mach, "--projects", proj, "--expires-in-s", "3600")
    (key,) = KEY_RE.findall(p.stdout)
    c = srv.client(key=key)
    poll(lambda: c.post("/sessions", json={"project_id": proj, "machine_id": mach}).status_code
         == 201, 5, desc="machine key accepted")
    assert_error(c.post("/sessions", json={"project_id": uid("x"), "machine_id": mach}), 403)
    out = _cli(statetrack_bin, "list", "--db", db).stdout
    assert key not in out
    line = next(l for l in out.splitlines() if key[:11] in l)
    assert "machine" in line and mach in line and proj in line and "active" in line, line
    bad = _cli(statetrack_bin, "create", "--db", db, "--role", "machine", check=False)
    assert bad.returncode == 2 and "machine_id" in bad.stderr
    bad = _cli(statetrack_bin, "create", "--db", db, "--role", "admin", "--projects", "a",
               check=False)
    assert bad.returncode == 2
    p = _cli(statetrack_bin, "rotate", "--db", db, key[:11])
    (new,) = KEY_RE.findall(p.stdout)
    poll(lambda: c.get("/sessions").status_code == 401, 5, desc="rotated key refused")
    n = srv.client(key=new)
    expect(n.post(f"/machines/{mach}/heartbeat"), 404)  # allowed (its machine), not registered
    assert_error(n.get("/sessions"), 403)


def test_existing_database_migrates(start_server, statetrack_bin, tmp_path):
    """A database from before the key columns (schema version 1) gains them on start."""
    db_path = tmp_path / "old.db"
    db = db_for(db_path)
    p = subprocess.run([statetrack_bin, "migrate", "--db", db], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    key = KEY_RE.findall(_cli(statetrack_bin, "create", "--db", db, "--role", "write").stdout)[0]
    downgrade = ["ALTER TABLE api_keys DROP COLUMN machine_id",
                 "ALTER TABLE api_keys DROP COLUMN projects",
                 "ALTER TABLE api_keys DROP COLUMN expires_at",
                 "DELETE FROM schema_migrations WHERE version = 2"]
    if is_conninfo(db):
        for stmt in downgrade:
            psql(db, stmt)
    else:
        conn = sqlite3.connect(str(db_path))
        for stmt in downgrade:
            conn.execute(stmt)
        conn.commit()
        conn.close()
    srv = start_server(FAST, db_path=db_path)
    expect(srv.client(key=key).get("/sessions"), 200)
    assert_error(srv.client(key=key).get("/api/keys"), 403)
    _, doc = new_key(srv, "read", expires_in_s=60, projects=[uid("p")])
    assert doc["expires_at"] and doc["projects"]
