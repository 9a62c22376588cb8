"""Shared helpers for the black-box API tests: ids, time, error-envelope checks, builders,
and the storage backend under test (SQLite files, or databases on a PostgreSQL cluster)."""
import http.client
import itertools
import os
import re
import sqlite3
import subprocess
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
UUID4_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
OID_RE = re.compile(r"^[0-9a-f]{24}$")

SESSION_STATUSES = ["active", "paused", "completed", "failed", "stalled", "archived"]
TASK_STATUSES = ["pending", "in_progress", "completed", "failed", "blocked"]
MACHINE_STATUSES = ["online", "offline", "maintenance"]
SESSION_ENUM_MSG = "active, paused, completed, failed, stalled, archived, awaiting_input"
TASK_ENUM_MSG = "pending, in_progress, completed, failed, blocked"
MACHINE_ENUM_MSG = "online, offline, maintenance"

NUMBER_MSG = "must be a number conforming to the specified constraints"

REASON = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large",
    429: "rate_limit_exceeded", 500: "Internal Server Error", 503: "Service Unavailable",
    504: "Gateway Timeout",
}
CODE = {
    400: "validation_error", 401: "unauthorized", 404: "not_found", 409: "conflict",
    413: "payload_too_large", 429: "rate_limit_exceeded",
}

BIG_TIMEOUT = 604800  # keeps the stall sweep away from sessions whose heartbeat we back-date


def uid(tag="t"):
    return f"{tag}-{uuid.uuid4().hex[:12]}"


# --- time --------------------------------------------------------------------------------------

def now_utc():
    return datetime.now(timezone.utc)


def parse_iso(s):
    assert isinstance(s, str) and ISO_RE.match(s), f"not an ISO-8601 ms UTC timestamp: {s!r}"
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def iso(dt):
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{dt.microsecond // 1000:03d}Z"


def iso_ago(seconds):
    return iso(now_utc() - timedelta(seconds=seconds))


def assert_recent(s, tolerance_s=10):
    t = parse_iso(s)
    delta = abs((now_utc() - t).total_seconds())
    assert delta <= tolerance_s, f"timestamp {s} is {delta:.1f}s away from now"
    return t


def ms_between(a, b):
    """b - a in milliseconds, for two ISO strings."""
    return round((parse_iso(b) - parse_iso(a)).total_seconds() * 1000)


def poll(fn, timeout=10.0, interval=0.1, desc="condition"):
    """Call fn() until it returns a truthy value; return it. Fail after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {desc}; last={last!r}")
        time.sleep(interval)


def tick():
    """Let the server clock advance past the current millisecond."""
    time.sleep(0.01)


# --- responses ---------------------------------------------------------------------------------

def body(resp):
    try:
        return resp.json()
    except ValueError:
        raise AssertionError(f"{resp.request.method} {resp.url}: non-JSON body "
                             f"{resp.status_code}: {resp.text[:300]!r}")


def expect(resp, status):
    """Assert the status code and return the parsed JSON body (None for empty bodies)."""
    assert resp.status_code == status, (
        f"{resp.request.method} {resp.url}: expected {status}, got {resp.status_code}: "
        f"{resp.text[:500]}")
    if not resp.content:
        return None
    return body(resp)


def assert_error(resp, status, message=None, contains=None, messages=None):
    """Check the error envelope (§1.7.3) and optionally the message.

    message: exact string message; contains: substring of a string message;
    messages: list of strings that must all appear in an array message."""
    b = expect(resp, status)
    assert isinstance(b, dict), b
    assert b.get("statusCode") == status, b
    assert b.get("error") == REASON[status], b
    if status in CODE:
        assert b.get("error_code") == CODE[status], b
    else:
        assert isinstance(b.get("error_code"), str) and b["error_code"], b
    rid = resp.headers.get("X-Request-Id")
    assert rid, f"no X-Request-Id header on {status}"
    assert b.get("request_id") == rid, (b.get("request_id"), rid)
    assert ISO_RE.match(b.get("timestamp", "")), b
    assert "stack" not in b, b
    split = urlsplit(resp.request.url)
    raw = split.path + (("?" + split.query) if split.query else "")
    assert b.get("path") == raw, (b.get("path"), raw)
    msg = b.get("message")
    if message is not None:
        assert msg == message, f"message {msg!r} != {message!r}"
    if contains is not None:
        assert isinstance(msg, str) and contains in msg, f"{contains!r} not in {msg!r}"
    if messages is not None:
        assert isinstance(msg, list), f"validation message must be an array: {msg!r}"
        for m in messages:
            assert m in msg, f"{m!r} not among {msg!r}"
    return b


def assert_validation(resp, *messages):
    """Schema-validation 400: message and details are arrays holding the given messages."""
    b = assert_error(resp, 400, messages=list(messages))
    assert isinstance(b["message"], list) and b["message"], b
    assert all(isinstance(m, str) for m in b["message"]), b
    assert b.get("details") == b["message"], b
    return b


def raw_request(base_url, method, target, headers=None, body_bytes=None):
    """Send a request with an exact request-target (no client-side URL normalisation)."""
    u = urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        hdrs = dict(headers or {})
        if body_bytes is not None:
            hdrs.setdefault("Content-Length", str(len(body_bytes)))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body_bytes:
            conn.send(body_bytes)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


# --- builders ----------------------------------------------------------------------------------

def create_session(c, project_id=None, machine_id=None, **fields):
    b = {"project_id": project_id or uid("proj"), "machine_id": machine_id or uid("mach")}
    b.update(fields)
    return expect(c.post("/sessions", json=b), 201)


def get_session(c, sid):
    return expect(c.get(f"/sessions/{sid}"), 200)


def put_session(c, sid, **fields):
    return expect(c.put(f"/sessions/{sid}", json=fields), 200)


def backdate(c, sid, seconds_ago):
    """Move last_heartbeat into the past with a timeout long enough that no sweep stalls it."""
    return put_session(c, sid, last_heartbeat=iso_ago(seconds_ago),
                       heartbeat_timeout_s=BIG_TIMEOUT)


def session_in_status(c, status, **fields):
    """Create a session and bring it to `status` through the usual endpoints."""
    s = create_session(c, **fields)
    sid = s["session_id"]
    if status == "active":
        return s
    if status == "paused":
        return put_session(c, sid, status="paused")
    if status == "stalled":
        return expect(c.post(f"/sessions/{sid}/mark-stalled", json={"reason": "test"}), 200)
    if status == "failed":
        return expect(c.post(f"/sessions/{sid}/mark-failed", json={"reason": "test"}), 200)
    if status == "completed":
        expect(c.delete(f"/sessions/{sid}"), 204)
        return get_session(c, sid)
    if status == "archived":
        expect(c.delete(f"/sessions/{sid}"), 204)
        return expect(c.post(f"/sessions/{sid}/archive"), 200)
    raise ValueError(status)


def create_task(c, session_id, project_id=None, task_name=None, **fields):
    b = {"session_id": session_id, "project_id": project_id or uid("proj"),
         "task_name": task_name or uid("task")}
    b.update(fields)
    return expect(c.post("/tasks", json=b), 201)


def get_task(c, tid):
    return expect(c.get(f"/tasks/{tid}"), 200)


def create_machine(c, machine_id=None, hostname=None, docker_slots=(1, 2, 3), **fields):
    b = {"machine_id": machine_id or uid("m"), "hostname": hostname or uid("host"),
         "docker_slots": list(docker_slots)}
    b.update(fields)
    return expect(c.post("/machines", json=b), 201)


def get_machine(c, mid):
    return expect(c.get(f"/machines/{mid}"), 200)


# --- the storage backend under test ------------------------------------------------------------
#
# ST_BACKEND=postgres (with ST_PG_CONNINFO, a libpq keyword string for the cluster) runs the
# suite on PostgreSQL: every database path a test uses (tmp_path / "x.db") names a fresh database
# on that cluster instead, created on first use and dropped when the session ends, so a test that
# restarts a server on "the same file" gets the same database.

ON_POSTGRES = os.environ.get("ST_BACKEND", "sqlite") == "postgres"
PG_BASE = os.environ.get("ST_PG_CONNINFO", "")
PSQL = os.environ.get("ST_PSQL", "psql")

_pg_lock = threading.Lock()
_pg_dbs = {}                 # resolved path -> database name
_pg_counter = itertools.count(1)


def is_conninfo(db):
    s = str(db)
    return s.startswith(("postgres://", "postgresql://")) or re.match(r"^\s*[a-z_]+\s*=", s) is not None


def pg_conninfo(base, dbname):
    """`base` pointing at database `dbname` (a repeated keyword: libpq keeps the last)."""
    return f"{base} dbname={dbname}"


def psql(conninfo, sql):
    """Runs SQL through psql; returns the rows as lists of strings (NULL -> "")."""
    p = subprocess.run([PSQL, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-F", "\x1f", "-R", "\x1e",
                        "-d", conninfo, "-c", sql], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"psql failed ({p.returncode}): {sql}\n{p.stderr}")
    out = p.stdout
    if out.endswith("\n"):
        out = out[:-1]
    return [r.split("\x1f") for r in out.split("\x1e") if r != ""]


def create_pg_database(base, prefix="st_api"):
    name = f"{prefix}_{os.getpid()}_{next(_pg_counter)}"
    psql(pg_conninfo(base, "postgres"), f"CREATE DATABASE {name}")
    return name


def drop_pg_database(base, name):
    try:
        psql(pg_conninfo(base, "postgres"), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    except (RuntimeError, subprocess.SubprocessError):
        pass


def db_for(path):
    """The --db value for a test's database path: the path itself on SQLite; on PostgreSQL the
    connection string of the database standing for that path (created on first use)."""
    if not ON_POSTGRES or is_conninfo(path):
        return str(path)
    key = os.path.realpath(str(path))
    with _pg_lock:
        name = _pg_dbs.get(key)
        if name is None:
            name = create_pg_database(PG_BASE)
            _pg_dbs[key] = name
    return pg_conninfo(PG_BASE, name)


def drop_pg_databases():
    with _pg_lock:
        names = list(_pg_dbs.values())
        _pg_dbs.clear()
    for n in names:
        drop_pg_database(PG_BASE, n)


# --- database seeding (the only white-box step: created_at cannot be set through the API) ------

def age_sessions_in_db(db_path, session_ids, days):
    """Move created_at of the given sessions `days` into the past. The server must be stopped."""
    db = db_for(db_path)
    if is_conninfo(db):
        ids = ",".join("'" + str(s).replace("'", "''") + "'" for s in session_ids)
        rows = psql(db, f"UPDATE sessions SET created_at = created_at - {int(days * 86400000)} "
                        f"WHERE session_id IN ({ids}) RETURNING session_id")
        assert len(rows) == len(set(session_ids)), f"sessions missing from the database: {rows}"
        return
    conn = sqlite3.connect(str(db_path))
    try:
        cols = {r[1]: (r[2] or "").upper() for r in conn.execute("PRAGMA table_info(sessions)")}
        assert "created_at" in cols and "session_id" in cols, cols
        for sid in session_ids:
            row = conn.execute("SELECT created_at FROM sessions WHERE session_id = ?",
                               (sid,)).fetchone()
            assert row is not None, f"session {sid} not in the database"
            v = row[0]
            if isinstance(v, int):
                # epoch milliseconds (or seconds if the value is small)
                scale = 1000 if v > 10**11 else 1
                nv = v - int(days * 86400 * scale)
            else:
                nv = iso(parse_iso(v) - timedelta(days=days))
            conn.execute("UPDATE sessions SET created_at = ? WHERE session_id = ?", (nv, sid))
        conn.commit()
    finally:
        conn.close()


# --- the contract's route table (§2): (method, path, success status) ---------------------------

ROUTES = [
    ("GET", "/health", 200),
    ("GET", "/health/ready", 200),
    ("GET", "/health/live", 200),
    ("GET", "/health/detailed", 200),
    ("GET", "/health/system", 200),
    ("POST", "/sessions", 201),
    ("GET", "/sessions", 200),
    ("GET", "/sessions/:id", 200),
    ("PUT", "/sessions/:id", 200),
    ("DELETE", "/sessions/:id", 204),
    ("POST", "/sessions/:id/heartbeat", 200),
    ("GET", "/sessions/stale", 200),
    ("GET", "/sessions/active", 200),
    ("GET", "/sessions/by-project/:projectId", 200),
    ("GET", "/sessions/by-machine/:machineId", 200),
    ("GET", "/sessions/:id/health", 200),
    ("GET", "/sessions/failed", 200),
    ("GET", "/sessions/:id/failure-info", 200),
    ("POST", "/sessions/:id/mark-failed", 200),
    ("POST", "/sessions/:id/mark-stalled", 200),
    ("POST", "/sessions/:id/archive", 200),
    ("DELETE", "/sessions/:id/purge", 200),
    ("POST", "/sessions/cleanup", 200),
    ("GET", "/sessions/archived", 200),
    ("GET", "/sessions/recoverable", 200),
    ("POST", "/sessions/:id/prepare-recovery", 200),
    ("POST", "/sessions/:id/recover", 200),
    ("GET", "/sessions/:id/recovery-history", 200),
    ("POST", "/tasks", 201),
    ("GET", "/tasks", 200),
    ("GET", "/tasks/:id", 200),
    ("PUT", "/tasks/:id", 200),
    ("DELETE", "/tasks/:id", 204),
    ("POST", "/tasks/:id/start", 200),
    ("POST", "/tasks/:id/complete", 200),
    ("POST", "/tasks/:id/fail", 200),
    ("GET", "/sessions/:id/tasks", 200),
    ("GET", "/machines/available", 200),
    ("GET", "/machines", 200),
    ("GET", "/machines/:id", 200),
    ("POST", "/machines", 201),
    ("PUT", "/machines/:id", 200),
    ("DELETE", "/machines/:id", 204),
    ("POST", "/machines/:id/assign-session", 201),
    ("POST", "/machines/:id/release-session", 201),
    ("POST", "/machines/:id/heartbeat", 200),
]
assert len(ROUTES) == 46

PROTECTED_ROUTES = [(m, p) for m, p, _ in ROUTES if not p.startswith("/health")]
assert len(PROTECTED_ROUTES) == 41


def concrete(path, value="no-such-id"):
    """Fill every :param of a contract path with `value`."""
    return re.sub(r":[A-Za-z]+", value, path)


# --- event timelines ---------------------------------------------------------------------------

def session_events(c, sid, page=1000):
    """The whole timeline of a session (GET /sessions/:id/events, every page), oldest first."""
    out = []
    after = 0
    while True:
        b = expect(c.get(f"/sessions/{sid}/events", params={"after": after, "limit": page}), 200)
        out.extend(b["events"])
        if not b["events"]:
            return out
        after = b["next_after"]


def db_events(db_path, types=None):
    """Events straight from the outbox, SQLite or PostgreSQL (read-only; safe while the server runs).

    The only way to see global events (incident.*, machine.offline) that belong to no session.
    Returns dicts with seq, type, occurred_at (ms), session_id, machine_id and parsed data."""
    import json
    db = db_for(db_path)
    if is_conninfo(db):
        rows = [(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5]) for r in psql(
            db, "SELECT seq, type, occurred_at, session_id, machine_id, data FROM events ORDER BY seq")]
    else:
        uri = "file:" + str(db_path) + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=10)
        try:
            rows = conn.execute(
                "SELECT seq, type, occurred_at, session_id, machine_id, data FROM events ORDER BY seq"
            ).fetchall()
        finally:
            conn.close()
    out = []
    for seq, typ, occ, sid, mid, data in rows:
        if types is not None and typ not in types:
            continue
        out.append({"seq": seq, "type": typ, "occurred_at": occ, "session_id": sid,
                    "machine_id": mid, "data": json.loads(data) if data else None})
    return out
