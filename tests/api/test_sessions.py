"""Sessions CRUD, list and heartbeat (contract §3.1, §4.2)."""
import threading

import pytest

from st_helpers import (ISO_RE, NUMBER_MSG, OID_RE, SESSION_ENUM_MSG, SESSION_STATUSES,
                        UUID4_RE, assert_error, assert_recent, assert_validation,
                        create_machine, create_session, create_task, expect, get_machine,
                        get_session, get_task, iso_ago, ms_between, now_utc, parse_iso,
                        put_session, session_in_status, tick, uid)

DOC_KEYS = {"_id", "session_id", "project_id", "machine_id", "status", "last_heartbeat",
            "started_at", "metadata", "created_at", "updated_at", "__v",
            "heartbeat_timeout_s", "deadline_at", "epoch"}


def assert_session_doc(s):
    assert DOC_KEYS <= set(s), DOC_KEYS - set(s)
    assert OID_RE.match(s["_id"]), s["_id"]
    assert s["__v"] == 0
    assert UUID4_RE.match(s["session_id"])
    assert s["status"] in SESSION_STATUSES
    for k in ("last_heartbeat", "started_at", "created_at", "updated_at", "deadline_at"):
        assert ISO_RE.match(s[k]), (k, s[k])
    assert isinstance(s["metadata"], dict)
    assert isinstance(s["epoch"], int) and s["epoch"] >= 1
    assert isinstance(s["heartbeat_timeout_s"], int)
    assert ms_between(s["last_heartbeat"], s["deadline_at"]) == s["heartbeat_timeout_s"] * 1000


# --- POST /sessions ----------------------------------------------------------------------------

def test_create_minimal(client):
    p, m = uid("proj"), uid("mach")
    r = client.post("/sessions", json={"project_id": p, "machine_id": m})
    s = expect(r, 201)
    assert r.headers["Content-Type"].replace(" ", "").lower() == "application/json;charset=utf-8"
    assert_session_doc(s)
    assert s["project_id"] == p and s["machine_id"] == m
    assert s["status"] == "active"
    assert s["metadata"] == {}
    assert s["started_at"] == s["last_heartbeat"] == s["created_at"] == s["updated_at"]
    assert_recent(s["started_at"], 5)
    for absent in ("completed_at", "docker_slot", "current_task_id"):
        assert absent not in s
    assert s["heartbeat_timeout_s"] == 300
    assert s["epoch"] == 1
    assert ms_between(s["last_heartbeat"], s["deadline_at"]) == 300_000


def test_create_full_and_get_roundtrip(client):
    meta = {"vscode_version": "1.85.0", "nested": {"a": {}, "b": [1, {"c": None}, "x"]},
            "empty": {}, "n": 1.5, "t": True}
    s = create_session(client, docker_slot=2, metadata=meta, heartbeat_timeout_s=60)
    assert s["docker_slot"] == 2
    assert s["metadata"] == meta
    assert s["heartbeat_timeout_s"] == 60
    assert ms_between(s["last_heartbeat"], s["deadline_at"]) == 60_000
    g = get_session(client, s["session_id"])
    assert g == s


def test_create_ids_are_unique(client):
    a, b = create_session(client), create_session(client)
    assert a["session_id"] != b["session_id"]
    assert a["_id"] != b["_id"]


@pytest.mark.parametrize("slot", [0, -3, 2.5, 1000000])
def test_create_docker_slot_any_finite_number(client, slot):
    s = create_session(client, docker_slot=slot)
    assert s["docker_slot"] == slot
    assert get_session(client, s["session_id"])["docker_slot"] == slot


def test_create_null_metadata_becomes_empty_object(client):
    s = create_session(client, metadata=None)
    assert s["metadata"] == {}


@pytest.mark.parametrize("t", [1, 604800])
def test_create_heartbeat_timeout_bounds_accepted(client, t):
    s = create_session(client, heartbeat_timeout_s=t)
    assert s["heartbeat_timeout_s"] == t
    assert ms_between(s["last_heartbeat"], s["deadline_at"]) == t * 1000


@pytest.mark.parametrize("t", [0, -1, 604801, "60", 1.5, True])
def test_create_heartbeat_timeout_invalid(client, t):
    b = assert_validation(client.post("/sessions", json={
        "project_id": "p", "machine_id": "m", "heartbeat_timeout_s": t}))
    assert any("heartbeat_timeout_s" in m for m in b["message"]), b["message"]


@pytest.mark.parametrize("payload,messages", [
    ({}, ["project_id must be a string", "machine_id must be a string"]),
    ({"project_id": 123, "machine_id": "m"}, ["project_id must be a string"]),
    ({"project_id": "p", "machine_id": None}, ["machine_id must be a string"]),
    ({"project_id": "p", "machine_id": ["m"]}, ["machine_id must be a string"]),
    ({"project_id": "p", "machine_id": "m", "docker_slot": "1"}, [f"docker_slot {NUMBER_MSG}"]),
    ({"project_id": "p", "machine_id": "m", "docker_slot": True}, [f"docker_slot {NUMBER_MSG}"]),
    ({"project_id": "p", "machine_id": "m", "metadata": "x"}, ["metadata must be an object"]),
    ({"project_id": "p", "machine_id": "m", "metadata": [1]}, ["metadata must be an object"]),
    ({"project_id": "p", "machine_id": "m", "session_id": "x"},
     ["property session_id should not exist"]),
    ({"project_id": "p", "machine_id": "m", "status": "paused"},
     ["property status should not exist"]),
    ({"project_id": "p", "machine_id": "m", "started_at": "2026-01-01T00:00:00.000Z"},
     ["property started_at should not exist"]),
    ({"project_id": "p", "machine_id": "m", "epoch": 5}, ["property epoch should not exist"]),
    ({"foo": 1}, ["property foo should not exist", "project_id must be a string",
                  "machine_id must be a string"]),
], ids=lambda v: repr(v)[:60] if isinstance(v, dict) else None)
def test_create_validation(client, payload, messages):
    assert_validation(client.post("/sessions", json=payload), *messages)


@pytest.mark.parametrize("payload", [
    {"project_id": "", "machine_id": "m"},
    {"project_id": "p", "machine_id": ""},
])
def test_create_empty_required_string_is_400(client, payload):
    b = assert_error(client.post("/sessions", json=payload), 400)
    assert b["error_code"] == "validation_error"


@pytest.mark.parametrize("raw", [b"[]", b'[{"project_id":"p","machine_id":"m"}]'])
def test_create_array_body_is_400(client, raw):
    r = client.post("/sessions", data=raw, headers={"Content-Type": "application/json"})
    assert_error(r, 400)


def test_create_does_not_touch_machine(client):
    m = create_machine(client)
    create_session(client, machine_id=m["machine_id"], docker_slot=1)
    assert get_machine(client, m["machine_id"])["active_sessions"] == []


# --- GET /sessions/:id -------------------------------------------------------------------------

@pytest.mark.parametrize("sid", ["invalid-id-123", "00000000-0000-4000-8000-000000000000",
                                 "65aa0c1f2b3c4d5e6f708192"])
def test_get_unknown_is_404(client, sid):
    assert_error(client.get(f"/sessions/{sid}"), 404, f"Session with ID {sid} not found")


def test_get_percent_decoded_id(client):
    assert_error(client.get("/sessions/a%20b"), 404, "Session with ID a b not found")
    assert_error(client.get("/sessions/a%2Fb"), 404, "Session with ID a/b not found")


@pytest.mark.parametrize("status", SESSION_STATUSES)
def test_get_any_status(client, status):
    s = session_in_status(client, status)
    assert get_session(client, s["session_id"])["status"] == status


# --- GET /sessions -----------------------------------------------------------------------------

def _ids(lst):
    return [s["session_id"] for s in lst]


def test_list_filters_and_order(client):
    p = uid("proj")
    m1, m2 = uid("m"), uid("m")
    a = create_session(client, project_id=p, machine_id=m1)
    tick()
    b = create_session(client, project_id=p, machine_id=m2)
    tick()
    c = create_session(client, project_id=p, machine_id=m1)
    put_session(client, c["session_id"], status="paused")
    other = create_session(client, machine_id=m1)

    got = expect(client.get("/sessions", params={"project_id": p}), 200)
    assert _ids(got) == [c["session_id"], b["session_id"], a["session_id"]]
    for s in got:
        assert_session_doc(s)
    got = expect(client.get("/sessions", params={"project_id": p, "machine_id": m1}), 200)
    assert _ids(got) == [c["session_id"], a["session_id"]]
    got = expect(client.get("/sessions", params={"project_id": p, "status": "paused"}), 200)
    assert _ids(got) == [c["session_id"]]
    got = expect(client.get("/sessions", params={"machine_id": m1}), 200)
    assert _ids(got) == [other["session_id"], c["session_id"], a["session_id"]]
    got = expect(client.get("/sessions", params={"project_id": p, "status": "failed"}), 200)
    assert got == []


def test_list_pagination_and_default_limit(client):
    p = uid("proj")
    ids = []
    for _ in range(22):
        ids.append(create_session(client, project_id=p)["session_id"])
        tick()
    ids.reverse()  # newest first
    got = expect(client.get("/sessions", params={"project_id": p}), 200)
    assert _ids(got) == ids[:20]
    got = expect(client.get("/sessions", params={"project_id": p, "limit": 5, "offset": 3}), 200)
    assert _ids(got) == ids[3:8]
    got = expect(client.get("/sessions", params={"project_id": p, "limit": 100}), 200)
    assert _ids(got) == ids
    got = expect(client.get("/sessions", params={"project_id": p, "offset": 21}), 200)
    assert _ids(got) == ids[21:]
    got = expect(client.get("/sessions", params={"project_id": p, "offset": 50}), 200)
    assert got == []
    got = expect(client.get("/sessions", params={"project_id": p, "limit": 1}), 200)
    assert _ids(got) == ids[:1]


def test_list_includes_archived(client):
    p = uid("proj")
    s = session_in_status(client, "archived", project_id=p)
    got = expect(client.get("/sessions", params={"project_id": p}), 200)
    assert _ids(got) == [s["session_id"]]
    got = expect(client.get("/sessions", params={"project_id": p, "status": "archived"}), 200)
    assert _ids(got) == [s["session_id"]]


@pytest.mark.parametrize("query,messages", [
    ("limit=101", ["limit must not be greater than 100"]),
    ("limit=200", ["limit must not be greater than 100"]),
    ("limit=500", ["limit must not be greater than 100"]),
    ("limit=0", ["limit must not be less than 1"]),
    ("limit=-1", ["limit must not be less than 1"]),
    ("limit=abc", []),
    ("limit=1.5", []),
    ("limit=", []),
    ("offset=-1", ["offset must not be less than 0"]),
    ("offset=abc", []),
    ("offset=0.5", []),
    ("status=bogus", [f"status must be one of the following values: {SESSION_ENUM_MSG}"]),
    ("status=Active", [f"status must be one of the following values: {SESSION_ENUM_MSG}"]),
    ("status=active&status=paused", []),
    ("project_id=a&project_id=b", []),
    ("foo=bar", ["property foo should not exist"]),
    ("session_id=x", ["property session_id should not exist"]),
])
def test_list_query_validation(client, query, messages):
    r = client.get("/sessions?" + query)
    b = assert_validation(r, *messages)
    if "limit=" in query and not messages:
        assert any("limit" in m for m in b["message"]), b["message"]
    if "offset=" in query and not messages:
        assert any("offset" in m for m in b["message"]), b["message"]


def test_list_limit_bounds_ok(client):
    for q in ("limit=1", "limit=100", "offset=0", "limit=100&offset=0"):
        assert isinstance(expect(client.get("/sessions?" + q), 200), list)


# --- PUT /sessions/:id -------------------------------------------------------------------------

def test_put_status_free_and_no_completed_at(client):
    s = create_session(client)
    sid = s["session_id"]
    for st in ["paused", "completed", "active", "failed", "stalled", "archived", "active"]:
        u = put_session(client, sid, status=st)
        assert u["status"] == st
        assert "completed_at" not in u
        assert get_session(client, sid)["status"] == st


def test_put_reactivates_completed_session(client):
    s = session_in_status(client, "completed")
    u = put_session(client, s["session_id"], status="active")
    assert u["status"] == "active"
    assert u["completed_at"] == s["completed_at"]


def test_put_fields_and_followup_get(client):
    s = create_session(client, metadata={"a": 1, "b": {"x": 1}})
    sid = s["session_id"]
    tick()
    u = put_session(client, sid, docker_slot=4, current_task_id="task-1",
                    metadata={"b": {"y": 2}, "c": 3})
    assert u["docker_slot"] == 4
    assert u["current_task_id"] == "task-1"
    assert u["metadata"] == {"a": 1, "b": {"y": 2}, "c": 3}  # shallow merge
    assert parse_iso(u["updated_at"]) > parse_iso(s["updated_at"])
    for k in ("session_id", "project_id", "machine_id", "started_at", "created_at", "_id",
              "last_heartbeat", "status", "epoch", "heartbeat_timeout_s", "deadline_at"):
        assert u[k] == s[k], k
    assert get_session(client, sid) == u


def test_put_empty_body_only_bumps_updated_at(client):
    s = create_session(client, docker_slot=1, metadata={"k": "v"})
    tick()
    u = put_session(client, s["session_id"])
    assert parse_iso(u["updated_at"]) > parse_iso(s["updated_at"])
    assert {k: v for k, v in u.items() if k != "updated_at"} == \
        {k: v for k, v in s.items() if k != "updated_at"}


def test_put_null_clears_optional_fields(client):
    s = create_session(client, docker_slot=3)
    sid = s["session_id"]
    put_session(client, sid, current_task_id="t-1")
    u = put_session(client, sid, docker_slot=None, current_task_id=None)
    assert "docker_slot" not in u
    assert "current_task_id" not in u
    g = get_session(client, sid)
    assert "docker_slot" not in g and "current_task_id" not in g


def test_put_null_metadata_is_no_change(client):
    s = create_session(client, metadata={"keep": 1})
    u = put_session(client, s["session_id"], metadata=None)
    assert u["metadata"] == {"keep": 1}
    assert get_session(client, s["session_id"])["metadata"] == {"keep": 1}


def test_put_nested_empty_objects_preserved(client):
    s = create_session(client)
    u = put_session(client, s["session_id"], metadata={"a": {}, "b": {"c": {}}})
    assert u["metadata"] == {"a": {}, "b": {"c": {}}}
    assert get_session(client, s["session_id"])["metadata"] == {"a": {}, "b": {"c": {}}}


def test_put_last_heartbeat_and_completed_at(client):
    s = create_session(client, heartbeat_timeout_s=100000)
    sid = s["session_id"]
    lh = iso_ago(3600)
    ca = iso_ago(60)
    u = put_session(client, sid, last_heartbeat=lh, completed_at=ca, status="completed")
    assert u["last_heartbeat"] == lh
    assert u["completed_at"] == ca
    assert u["status"] == "completed"
    # deadline_at follows the new heartbeat
    assert ms_between(u["last_heartbeat"], u["deadline_at"]) == 100000 * 1000
    g = get_session(client, sid)
    assert g["last_heartbeat"] == lh and g["completed_at"] == ca
    # the heartbeat suite's scenario: completed via PUT -> heartbeat refused
    assert_error(client.post(f"/sessions/{sid}/heartbeat"), 400,
                 "Cannot update heartbeat for completed session")


def test_put_heartbeat_timeout_moves_deadline(client):
    s = create_session(client)
    u = put_session(client, s["session_id"], heartbeat_timeout_s=7200)
    assert u["heartbeat_timeout_s"] == 7200
    assert u["last_heartbeat"] == s["last_heartbeat"]
    assert ms_between(u["last_heartbeat"], u["deadline_at"]) == 7200 * 1000
    assert get_session(client, s["session_id"])["deadline_at"] == u["deadline_at"]


@pytest.mark.parametrize("field", ["last_heartbeat", "completed_at"])
@pytest.mark.parametrize("value", ["not-a-date", "2026-13-45T00:00:00.000Z", "yesterday", ""])
def test_put_invalid_date_is_400(client, field, value):
    s = create_session(client)
    assert_validation(client.put(f"/sessions/{s['session_id']}", json={field: value}),
                      f"{field} must be a valid ISO 8601 date string")
    assert get_session(client, s["session_id"]) == s


@pytest.mark.parametrize("field", ["last_heartbeat", "completed_at"])
def test_put_date_non_string_is_400(client, field):
    s = create_session(client)
    b = assert_validation(client.put(f"/sessions/{s['session_id']}", json={field: 12345}))
    assert any(field in m for m in b["message"])


@pytest.mark.parametrize("payload,messages", [
    ({"session_id": "x"}, ["property session_id should not exist"]),
    ({"project_id": "x"}, ["property project_id should not exist"]),
    ({"machine_id": "x"}, ["property machine_id should not exist"]),
    ({"started_at": "2026-01-01T00:00:00.000Z"}, ["property started_at should not exist"]),
    ({"created_at": "2026-01-01T00:00:00.000Z"}, ["property created_at should not exist"]),
    ({"epoch": 3}, ["property epoch should not exist"]),
    ({"deadline_at": "2026-01-01T00:00:00.000Z"}, ["property deadline_at should not exist"]),
    ({"status": "bogus"}, [f"status must be one of the following values: {SESSION_ENUM_MSG}"]),
    ({"docker_slot": "2"}, [f"docker_slot {NUMBER_MSG}"]),
    ({"current_task_id": 5}, ["current_task_id must be a string"]),
    ({"metadata": "x"}, ["metadata must be an object"]),
    ({"heartbeat_timeout_s": 0}, []),
    ({"heartbeat_timeout_s": 604801}, []),
])
def test_put_validation(client, payload, messages):
    s = create_session(client)
    assert_validation(client.put(f"/sessions/{s['session_id']}", json=payload), *messages)
    assert get_session(client, s["session_id"]) == s


def test_put_unknown_is_404_after_validation(client):
    assert_error(client.put("/sessions/nope-123", json={"status": "paused"}), 404,
                 "Session with ID nope-123 not found")
    assert_validation(client.put("/sessions/nope-123", json={"bogus": 1}),
                      "property bogus should not exist")


# --- DELETE /sessions/:id ----------------------------------------------------------------------

@pytest.mark.parametrize("status", SESSION_STATUSES)
def test_soft_delete_from_any_status(client, status):
    s = session_in_status(client, status)
    sid = s["session_id"]
    r = client.delete(f"/sessions/{sid}")
    assert r.status_code == 204, r.text
    assert r.content == b""
    g = get_session(client, sid)
    assert g["status"] == "completed"
    assert_recent(g["completed_at"], 5)


def test_soft_delete_refreshes_completed_at_and_keeps_tasks(client):
    s = create_session(client)
    sid = s["session_id"]
    t = create_task(client, sid)
    expect(client.post(f"/tasks/{t['task_id']}/start"), 200)
    expect(client.delete(f"/sessions/{sid}"), 204)
    first = get_session(client, sid)["completed_at"]
    tick()
    expect(client.delete(f"/sessions/{sid}"), 204)
    second = get_session(client, sid)["completed_at"]
    assert parse_iso(second) > parse_iso(first)
    assert get_task(client, t["task_id"])["status"] == "in_progress"
    assert get_session(client, sid)["current_task_id"] == t["task_id"]


def test_soft_delete_unknown_is_404(client):
    assert_error(client.delete("/sessions/nope-del"), 404, "Session with ID nope-del not found")


# --- POST /sessions/:id/heartbeat --------------------------------------------------------------

def test_heartbeat_active(client):
    s = create_session(client, heartbeat_timeout_s=120)
    sid = s["session_id"]
    tick()
    r = client.post(f"/sessions/{sid}/heartbeat")
    b = expect(r, 200)
    assert {"session_id", "status", "last_heartbeat", "message"} <= set(b)
    assert b["session_id"] == sid
    assert b["status"] == "active"
    assert b["message"] == "Heartbeat updated successfully"
    assert parse_iso(b["last_heartbeat"]) > parse_iso(s["last_heartbeat"])
    assert_recent(b["last_heartbeat"], 5)
    g = get_session(client, sid)
    assert g["last_heartbeat"] == b["last_heartbeat"]
    assert ms_between(g["last_heartbeat"], g["deadline_at"]) == 120_000
    assert g["epoch"] == 1
    assert g["started_at"] == s["started_at"]


def test_heartbeat_body_ignored(client):
    s = create_session(client, metadata={"a": 1})
    sid = s["session_id"]
    b = expect(client.post(f"/sessions/{sid}/heartbeat",
                           json={"metadata": {"b": 2}, "status": "paused", "bogus": True}), 200)
    assert b["status"] == "active"
    g = get_session(client, sid)
    assert g["metadata"] == {"a": 1}
    assert g["status"] == "active"


def test_heartbeat_empty_json_body(client):
    s = create_session(client)
    r = client.post(f"/sessions/{s['session_id']}/heartbeat", data=b"",
                    headers={"Content-Type": "application/json"})
    expect(r, 200)


def test_heartbeat_paused_stays_paused(client):
    s = session_in_status(client, "paused")
    b = expect(client.post(f"/sessions/{s['session_id']}/heartbeat"), 200)
    assert b["status"] == "paused"
    assert b["message"] == "Heartbeat updated successfully"
    assert get_session(client, s["session_id"])["status"] == "paused"


def test_heartbeat_archived_stays_archived(client):
    s = session_in_status(client, "archived")
    b = expect(client.post(f"/sessions/{s['session_id']}/heartbeat"), 200)
    assert b["status"] == "archived"
    assert b["message"] == "Heartbeat updated successfully"
    g = get_session(client, s["session_id"])
    assert g["status"] == "archived"
    assert g["last_heartbeat"] == b["last_heartbeat"]


def test_heartbeat_reactivates_stalled(client):
    s = session_in_status(client, "stalled")
    sid = s["session_id"]
    b = expect(client.post(f"/sessions/{sid}/heartbeat"), 200)
    assert b["status"] == "active"
    assert "reactivated" in b["message"]
    assert b["message"] == "Heartbeat updated and session reactivated from stalled state"
    assert get_session(client, sid)["status"] == "active"
    b2 = expect(client.post(f"/sessions/{sid}/heartbeat"), 200)
    assert b2["message"] == "Heartbeat updated successfully"


def test_heartbeat_reactivates_session_stalled_by_put(client):
    s = create_session(client)
    put_session(client, s["session_id"], status="stalled")
    b = expect(client.post(f"/sessions/{s['session_id']}/heartbeat"), 200)
    assert b["status"] == "active"
    assert b["message"] == "Heartbeat updated and session reactivated from stalled state"


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_heartbeat_refused_for_terminal(client, status):
    s = session_in_status(client, status)
    sid = s["session_id"]
    assert_error(client.post(f"/sessions/{sid}/heartbeat"), 400,
                 f"Cannot update heartbeat for {status} session")
    g = get_session(client, sid)
    assert g["last_heartbeat"] == s["last_heartbeat"]
    assert g["status"] == status


def test_heartbeat_unknown_is_404(client):
    assert_error(client.post("/sessions/nope-hb/heartbeat"), 404,
                 "Session with ID nope-hb not found")


def test_heartbeat_after_put_backdated(client):
    s = create_session(client)
    sid = s["session_id"]
    put_session(client, sid, last_heartbeat=iso_ago(100))
    b = expect(client.post(f"/sessions/{sid}/heartbeat"), 200)
    assert_recent(b["last_heartbeat"], 5)
    g = get_session(client, sid)
    assert ms_between(g["last_heartbeat"], g["deadline_at"]) == 300_000
    assert parse_iso(g["deadline_at"]) > now_utc()


# --- concurrency -------------------------------------------------------------------------------

def test_concurrent_metadata_merges_lose_no_key(server, prefix):
    c0 = server.client(prefix)
    s = create_session(c0)
    sid = s["session_id"]
    errors = []

    def worker(i):
        c = server.client(prefix)
        for j in range(5):
            r = c.put(f"/sessions/{sid}", json={"metadata": {f"k{i}_{j}": j}})
            if r.status_code != 200:
                errors.append(r.text)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    md = get_session(c0, sid)["metadata"]
    assert md == {f"k{i}_{j}": j for i in range(8) for j in range(5)}
