"""Machines (§3.3, §4.8) and the machine/session bookkeeping of §5."""
import threading

import pytest

from st_helpers import (ISO_RE, MACHINE_ENUM_MSG, NUMBER_MSG, OID_RE, assert_error,
                        assert_recent, assert_validation, create_machine, create_session, expect,
                        get_machine, get_session, parse_iso, put_session, session_in_status,
                        tick, uid)

MACHINE_KEYS = {"_id", "__v", "machine_id", "hostname", "docker_slots", "active_sessions",
                "status", "last_heartbeat", "metadata", "created_at", "updated_at"}


def assert_machine_doc(m):
    assert MACHINE_KEYS <= set(m), MACHINE_KEYS - set(m)
    assert OID_RE.match(m["_id"]) and m["__v"] == 0
    for k in ("last_heartbeat", "created_at", "updated_at"):
        assert ISO_RE.match(m[k]), (k, m[k])
    assert isinstance(m["docker_slots"], list)
    assert isinstance(m["active_sessions"], list)
    assert isinstance(m["metadata"], dict)


def _assign(c, mid, sid, slot=None):
    body = {"session_id": sid}
    if slot is not None:
        body["docker_slot"] = slot
    return c.post(f"/machines/{mid}/assign-session", json=body)


def _release(c, mid, sid):
    return c.post(f"/machines/{mid}/release-session", json={"session_id": sid})


# --- POST /machines ----------------------------------------------------------------------------

def test_register(client):
    mid, host = uid("m"), uid("host")
    r = client.post("/machines", json={"machine_id": mid, "hostname": host,
                                       "docker_slots": [3, 1, 2]})
    m = expect(r, 201)
    assert_machine_doc(m)
    assert m["machine_id"] == mid and m["hostname"] == host
    assert m["docker_slots"] == [3, 1, 2]  # stored order
    assert m["active_sessions"] == []
    assert m["status"] == "online"
    assert m["metadata"] == {}
    assert_recent(m["last_heartbeat"], 5)
    assert get_machine(client, mid) == m


def test_register_metadata_and_empty_slots(client):
    m = create_machine(client, docker_slots=[], metadata={"gpu": "a100", "x": {}})
    assert m["docker_slots"] == []
    assert m["metadata"] == {"gpu": "a100", "x": {}}


def test_register_null_metadata_is_empty_object(client):
    m = create_machine(client, metadata=None)
    assert m["metadata"] == {}
    assert get_machine(client, m["machine_id"])["metadata"] == {}


def test_register_slots_coerced(client):
    m = create_machine(client, docker_slots=["2", 3])
    assert m["docker_slots"] == [2, 3]
    assert all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in m["docker_slots"])


def test_register_duplicate_409(client):
    m = create_machine(client)
    assert_error(client.post("/machines", json={"machine_id": m["machine_id"], "hostname": "h",
                                                "docker_slots": [1]}),
                 409, f"Machine with ID {m['machine_id']} already exists")
    assert get_machine(client, m["machine_id"]) == m
    # the conflict comes before the integer check
    assert_error(client.post("/machines", json={"machine_id": m["machine_id"], "hostname": "h",
                                                "docker_slots": [1.5]}),
                 409, f"Machine with ID {m['machine_id']} already exists")
    # schema errors come before the conflict
    assert_validation(client.post("/machines", json={"machine_id": m["machine_id"],
                                                     "hostname": "h"}),
                      "docker_slots must be an array")


def test_register_fractional_slot_400(client):
    mid = uid("m")
    assert_error(client.post("/machines", json={"machine_id": mid, "hostname": "h",
                                                "docker_slots": [1.5]}),
                 400, "Docker slots must be positive integers")
    assert_error(client.get(f"/machines/{mid}"), 404)


@pytest.mark.parametrize("payload,messages", [
    ({}, ["machine_id must be a string", "hostname must be a string",
          "docker_slots must be an array"]),
    ({"machine_id": 1, "hostname": "h", "docker_slots": []}, ["machine_id must be a string"]),
    ({"machine_id": "M", "hostname": None, "docker_slots": []}, ["hostname must be a string"]),
    ({"machine_id": "M", "hostname": "h", "docker_slots": "1,2"},
     ["docker_slots must be an array"]),
    ({"machine_id": "M", "hostname": "h", "docker_slots": [1, 1]},
     ["All docker_slots's elements must be unique"]),
    ({"machine_id": "M", "hostname": "h", "docker_slots": [0]},
     ["each value in docker_slots must not be less than 1"]),
    ({"machine_id": "M", "hostname": "h", "docker_slots": [2, -1]},
     ["each value in docker_slots must not be less than 1"]),
    ({"machine_id": "M", "hostname": "h", "docker_slots": ["abc"]},
     [f"each value in docker_slots {NUMBER_MSG}"]),
    ({"machine_id": "M", "hostname": "h", "docker_slots": [], "metadata": "x"},
     ["metadata must be an object"]),
    ({"machine_id": "M", "hostname": "h", "docker_slots": [], "status": "offline"},
     ["property status should not exist"]),
    ({"machine_id": "M", "hostname": "h", "docker_slots": [], "active_sessions": []},
     ["property active_sessions should not exist"]),
])
def test_register_validation(client, payload, messages):
    mid = uid("m")
    payload = {k: (mid if v == "M" else v) for k, v in payload.items()}
    assert_validation(client.post("/machines", json=payload), *messages)
    assert_error(client.get(f"/machines/{mid}"), 404)


@pytest.mark.parametrize("field", ["machine_id", "hostname"])
def test_register_empty_required_string_400(client, field):
    body = {"machine_id": uid("m"), "hostname": "h", "docker_slots": [1], field: ""}
    assert_error(client.post("/machines", json=body), 400)


# --- GET /machines, GET /machines/:id ----------------------------------------------------------

def test_list_order_and_filters(client):
    host = uid("host")
    a = create_machine(client, hostname=host)
    b = create_machine(client, hostname=host)
    c = create_machine(client, hostname=host)
    expect(client.put(f"/machines/{b['machine_id']}", json={"status": "maintenance"}), 200)
    create_machine(client)
    got = expect(client.get("/machines", params={"hostname": host}), 200)
    assert [m["machine_id"] for m in got] == [a["machine_id"], b["machine_id"], c["machine_id"]]
    for m in got:
        assert_machine_doc(m)
    got = expect(client.get("/machines", params={"hostname": host, "status": "online"}), 200)
    assert [m["machine_id"] for m in got] == [a["machine_id"], c["machine_id"]]
    got = expect(client.get("/machines", params={"status": "maintenance"}), 200)
    assert b["machine_id"] in [m["machine_id"] for m in got]
    assert all(m["status"] == "maintenance" for m in got)
    every = [m["machine_id"] for m in expect(client.get("/machines"), 200)]
    pos = [every.index(x["machine_id"]) for x in (a, b, c)]
    assert pos == sorted(pos)  # insertion order, no pagination


@pytest.mark.parametrize("query,messages", [
    ("status=busy", [f"status must be one of the following values: {MACHINE_ENUM_MSG}"]),
    ("limit=5", ["property limit should not exist"]),
    ("machine_id=x", ["property machine_id should not exist"]),
])
def test_list_validation(client, query, messages):
    assert_validation(client.get("/machines?" + query), *messages)


def test_get_unknown_404(client):
    assert_error(client.get("/machines/nope-m"), 404, "Machine with ID nope-m not found")


# --- PUT /machines/:id -------------------------------------------------------------------------

def test_put_fields_and_heartbeat_bump(client):
    m = create_machine(client, docker_slots=[1, 2], metadata={"a": 1, "b": 2})
    mid = m["machine_id"]
    tick()
    u = expect(client.put(f"/machines/{mid}", json={"docker_slots": [4, 2, 9],
                                                    "metadata": {"c": 3}}), 200)
    assert u["docker_slots"] == [4, 2, 9]
    assert u["metadata"] == {"c": 3}  # replaced wholesale
    assert u["status"] == "online"
    assert parse_iso(u["last_heartbeat"]) > parse_iso(m["last_heartbeat"])
    assert u["hostname"] == m["hostname"]
    assert get_machine(client, mid) == u
    tick()
    u2 = expect(client.put(f"/machines/{mid}", json={}), 200)  # even an empty body
    assert parse_iso(u2["last_heartbeat"]) > parse_iso(u["last_heartbeat"])
    assert u2["docker_slots"] == [4, 2, 9] and u2["metadata"] == {"c": 3}


@pytest.mark.parametrize("path", [["online", "offline"], ["maintenance", "online"],
                                  ["offline", "maintenance"]])
def test_put_status_any(client, path):
    m = create_machine(client)
    for st in path:
        assert expect(client.put(f"/machines/{m['machine_id']}", json={"status": st}),
                      200)["status"] == st


def test_put_slot_errors(client):
    m = create_machine(client, docker_slots=[1, 2])
    mid = m["machine_id"]
    assert_error(client.put(f"/machines/{mid}", json={"docker_slots": [1.5]}), 400,
                 "Docker slots must be positive integers")
    assert_validation(client.put(f"/machines/{mid}", json={"docker_slots": [3, 3]}),
                      "All docker_slots's elements must be unique")
    assert_validation(client.put(f"/machines/{mid}", json={"docker_slots": [0]}),
                      "each value in docker_slots must not be less than 1")
    assert get_machine(client, mid)["docker_slots"] == [1, 2]


def test_put_slot_in_use_guard(client):
    m = create_machine(client, docker_slots=[1, 2, 3])
    mid = m["machine_id"]
    s = create_session(client)
    expect(_assign(client, mid, s["session_id"], 2), 201)
    assert_error(client.put(f"/machines/{mid}", json={"docker_slots": [1, 3]}), 400,
                 f"Cannot remove docker slot 2 - currently in use by session {s['session_id']}")
    assert get_machine(client, mid)["docker_slots"] == [1, 2, 3]
    u = expect(client.put(f"/machines/{mid}", json={"docker_slots": [2, 5]}), 200)
    assert u["docker_slots"] == [2, 5]
    # once released, the slot may go
    expect(_release(client, mid, s["session_id"]), 201)
    expect(client.put(f"/machines/{mid}", json={"docker_slots": [5]}), 200)


@pytest.mark.parametrize("payload,messages", [
    ({"hostname": "x"}, ["property hostname should not exist"]),
    ({"machine_id": "x"}, ["property machine_id should not exist"]),
    ({"status": "busy"}, [f"status must be one of the following values: {MACHINE_ENUM_MSG}"]),
    ({"metadata": "x"}, ["metadata must be an object"]),
    ({"docker_slots": "x"}, ["docker_slots must be an array"]),
])
def test_put_validation(client, payload, messages):
    m = create_machine(client)
    assert_validation(client.put(f"/machines/{m['machine_id']}", json=payload), *messages)
    assert get_machine(client, m["machine_id"]) == m
    assert_validation(client.put("/machines/nope-pm", json=payload), *messages)


def test_put_unknown_404(client):
    assert_error(client.put("/machines/nope-put", json={"status": "offline"}), 404,
                 "Machine with ID nope-put not found")


# --- DELETE /machines/:id ----------------------------------------------------------------------

def test_delete_marks_offline(client):
    m = create_machine(client)
    mid = m["machine_id"]
    s = create_session(client)
    expect(_assign(client, mid, s["session_id"]), 201)
    before = get_machine(client, mid)
    r = client.delete(f"/machines/{mid}")
    assert r.status_code == 204 and r.content == b""
    g = get_machine(client, mid)
    assert g["status"] == "offline"
    assert g["active_sessions"] == before["active_sessions"]
    assert g["last_heartbeat"] == before["last_heartbeat"]
    assert client.delete(f"/machines/{mid}").status_code == 204  # repeatable
    assert get_machine(client, mid)["status"] == "offline"


def test_delete_unknown_404(client):
    assert_error(client.delete("/machines/nope-del"), 404, "Machine with ID nope-del not found")


# --- POST /machines/:id/assign-session ---------------------------------------------------------

def test_assign_auto_slots_in_stored_order(client):
    m = create_machine(client, docker_slots=[3, 1, 2])
    mid = m["machine_id"]
    sessions = [create_session(client, docker_slot=99) for _ in range(4)]
    got_slots = []
    prev_hb = m["last_heartbeat"]
    for s in sessions[:3]:
        tick()
        r = _assign(client, mid, s["session_id"])
        u = expect(r, 201)
        assert_machine_doc(u)
        assert parse_iso(u["last_heartbeat"]) > parse_iso(prev_hb)
        prev_hb = u["last_heartbeat"]
        g = get_session(client, s["session_id"])
        assert g["machine_id"] == mid
        got_slots.append(g["docker_slot"])
    assert got_slots == [3, 1, 2]
    assert get_machine(client, mid)["active_sessions"] == [s["session_id"] for s in sessions[:3]]
    assert_error(_assign(client, mid, sessions[3]["session_id"]), 409,
                 f"No available docker slots on machine {mid} - all 3 slots are occupied")
    assert get_session(client, sessions[3]["session_id"])["docker_slot"] == 99


def test_assign_explicit_slot(client):
    m = create_machine(client, docker_slots=[1, 2])
    mid = m["machine_id"]
    a, b = create_session(client), create_session(client)
    u = expect(_assign(client, mid, a["session_id"], 2), 201)
    assert u["active_sessions"] == [a["session_id"]]
    assert get_session(client, a["session_id"])["docker_slot"] == 2
    assert_error(_assign(client, mid, b["session_id"], 2), 409,
                 f"Docker slot 2 is already occupied by session {a['session_id']}")
    assert_error(_assign(client, mid, b["session_id"], 7), 400,
                 f"Docker slot 7 is not available on machine {mid}")
    # auto pick skips the used slot
    expect(_assign(client, mid, b["session_id"]), 201)
    assert get_session(client, b["session_id"])["docker_slot"] == 1


def test_assign_slot_coerced_from_string(client):
    m = create_machine(client, docker_slots=[1, 2])
    s = create_session(client)
    expect(_assign(client, m["machine_id"], s["session_id"], "2"), 201)
    assert get_session(client, s["session_id"])["docker_slot"] == 2


def test_assign_no_slots_keeps_session_slot(client):
    m = create_machine(client, docker_slots=[])
    s = create_session(client, docker_slot=5)
    u = expect(_assign(client, m["machine_id"], s["session_id"]), 201)
    assert u["active_sessions"] == [s["session_id"]]
    g = get_session(client, s["session_id"])
    assert g["machine_id"] == m["machine_id"]
    assert g["docker_slot"] == 5


def test_assign_session_status_not_checked(client):
    m = create_machine(client)
    s = session_in_status(client, "completed")
    expect(_assign(client, m["machine_id"], s["session_id"]), 201)


def test_assign_rule_order(client):
    m = create_machine(client, docker_slots=[1])
    mid = m["machine_id"]
    s = create_session(client)
    # 1. unknown machine (even with an unknown session)
    assert_error(_assign(client, "nope-mach", "nope-sess"), 404,
                 "Machine with ID nope-mach not found")
    # 3. unknown session
    assert_error(_assign(client, mid, "nope-sess"), 404, "Session with ID nope-sess not found")
    # 2. machine not online comes before the session lookup
    for st in ("offline", "maintenance"):
        expect(client.put(f"/machines/{mid}", json={"status": st}), 200)
        assert_error(_assign(client, mid, "nope-sess"), 400,
                     f"Cannot assign session to machine {mid} - machine status is {st}")
    expect(client.put(f"/machines/{mid}", json={"status": "online"}), 200)
    expect(_assign(client, mid, s["session_id"]), 201)
    # 4. already assigned comes before slot checks
    assert_error(_assign(client, mid, s["session_id"], 42), 409,
                 f"Session {s['session_id']} is already assigned to machine {mid}")
    assert_error(_assign(client, mid, s["session_id"]), 409,
                 f"Session {s['session_id']} is already assigned to machine {mid}")
    assert get_machine(client, mid)["active_sessions"] == [s["session_id"]]


def test_assign_does_not_remove_from_previous_machine(client):
    m1 = create_machine(client)
    m2 = create_machine(client)
    s = create_session(client)
    expect(_assign(client, m1["machine_id"], s["session_id"]), 201)
    expect(_assign(client, m2["machine_id"], s["session_id"]), 201)
    assert get_machine(client, m1["machine_id"])["active_sessions"] == [s["session_id"]]
    assert get_machine(client, m2["machine_id"])["active_sessions"] == [s["session_id"]]
    assert get_session(client, s["session_id"])["machine_id"] == m2["machine_id"]


def test_assign_occupancy_definitions_differ(client):
    """Auto pick counts every session in active_sessions; explicit-slot conflicts need the
    session to still name this machine (§5)."""
    m = create_machine(client, docker_slots=[1, 2])
    mid = m["machine_id"]
    a = create_session(client)
    expect(_assign(client, mid, a["session_id"], 1), 201)
    # a is assigned to another machine: it now names that one but stays in mid's list
    other = create_machine(client, docker_slots=[])  # no slots: a keeps slot 1
    expect(_assign(client, other["machine_id"], a["session_id"]), 201)
    assert a["session_id"] in get_machine(client, mid)["active_sessions"]
    b = create_session(client)
    expect(_assign(client, mid, b["session_id"]), 201)
    assert get_session(client, b["session_id"])["docker_slot"] == 2  # slot 1 counted as used
    c = create_session(client)
    expect(_assign(client, mid, c["session_id"], 1), 201)  # explicit: no conflict with a
    assert get_session(client, c["session_id"])["docker_slot"] == 1


@pytest.mark.parametrize("payload,messages", [
    ({}, ["session_id must be a string"]),
    ({"session_id": 5}, ["session_id must be a string"]),
    ({"session_id": "s", "docker_slot": 0}, ["docker_slot must not be less than 1"]),
    ({"session_id": "s", "docker_slot": "abc"}, [f"docker_slot {NUMBER_MSG}"]),
    ({"session_id": "s", "slot": 1}, ["property slot should not exist"]),
])
def test_assign_validation_before_lookup(client, payload, messages):
    m = create_machine(client)
    assert_validation(client.post(f"/machines/{m['machine_id']}/assign-session", json=payload),
                      *messages)
    assert_validation(client.post("/machines/nope-av/assign-session", json=payload), *messages)
    assert get_machine(client, m["machine_id"])["active_sessions"] == []


# --- POST /machines/:id/release-session --------------------------------------------------------

def test_release(client):
    m = create_machine(client, docker_slots=[1, 2])
    mid = m["machine_id"]
    a, b = create_session(client), create_session(client)
    expect(_assign(client, mid, a["session_id"]), 201)
    before = expect(_assign(client, mid, b["session_id"]), 201)
    sess_before = get_session(client, a["session_id"])
    tick()
    u = expect(_release(client, mid, a["session_id"]), 201)
    assert_machine_doc(u)
    assert u["active_sessions"] == [b["session_id"]]
    assert parse_iso(u["last_heartbeat"]) > parse_iso(before["last_heartbeat"])
    assert get_machine(client, mid) == u
    # the session keeps machine_id and docker_slot
    assert get_session(client, a["session_id"]) == sess_before
    assert_error(_release(client, mid, a["session_id"]), 400,
                 f"Session {a['session_id']} is not assigned to machine {mid}")


def test_release_purged_session(client):
    m = create_machine(client)
    mid = m["machine_id"]
    s = create_session(client)
    sid = s["session_id"]
    expect(_assign(client, mid, sid), 201)
    expect(client.delete(f"/sessions/{sid}"), 204)
    expect(client.delete(f"/sessions/{sid}/purge", json={"confirm": True}), 200)
    u = expect(_release(client, mid, sid), 201)  # the session itself is not looked up
    assert u["active_sessions"] == []


def test_release_errors(client):
    assert_error(_release(client, "nope-rm", "x"), 404, "Machine with ID nope-rm not found")
    m = create_machine(client)
    assert_error(_release(client, m["machine_id"], "never"), 400,
                 f"Session never is not assigned to machine {m['machine_id']}")
    assert_validation(client.post(f"/machines/{m['machine_id']}/release-session", json={}),
                      "session_id must be a string")
    assert_validation(client.post("/machines/nope-rm/release-session", json={"x": 1}),
                      "property x should not exist")


# --- POST /machines/:id/heartbeat --------------------------------------------------------------

@pytest.mark.parametrize("start,end,message", [
    ("online", "online", "Heartbeat updated successfully"),
    ("offline", "online", "Heartbeat updated and machine brought back online"),
    ("maintenance", "maintenance", "Heartbeat updated successfully"),
])
def test_machine_heartbeat(client, start, end, message):
    m = create_machine(client)
    mid = m["machine_id"]
    if start != "online":
        expect(client.put(f"/machines/{mid}", json={"status": start}), 200)
    before = get_machine(client, mid)
    tick()
    b = expect(client.post(f"/machines/{mid}/heartbeat", json={"ignored": True}), 200)
    assert {"machine_id", "status", "last_heartbeat", "message"} <= set(b)
    assert b["machine_id"] == mid
    assert b["status"] == end
    assert b["message"] == message
    assert parse_iso(b["last_heartbeat"]) > parse_iso(before["last_heartbeat"])
    g = get_machine(client, mid)
    assert g["status"] == end
    assert g["last_heartbeat"] == b["last_heartbeat"]


def test_machine_heartbeat_unknown_404(client):
    assert_error(client.post("/machines/nope-hb/heartbeat"), 404,
                 "Machine with ID nope-hb not found")


# --- GET /machines/available -------------------------------------------------------------------

AVAIL_KEYS = {"machine_id", "hostname", "status", "total_slots", "occupied_slots",
              "available_slots", "available_slot_numbers", "active_sessions", "last_heartbeat"}


def _available(c):
    return expect(c.get("/machines/available"), 200)


def test_available_slot_math_from_sessions(client):
    m = create_machine(client, docker_slots=[1, 2, 3, 4])
    mid = m["machine_id"]
    create_session(client, machine_id=mid, docker_slot=2)            # active, counted
    session_in_status(client, "paused", machine_id=mid, docker_slot=3)   # not active
    create_session(client, machine_id=mid)                           # active, no slot
    session_in_status(client, "completed", machine_id=mid, docker_slot=4)
    create_session(client, machine_id=mid, docker_slot=9)            # active, unknown slot
    items = {x["machine_id"]: x for x in _available(client)}
    a = items[mid]
    assert AVAIL_KEYS <= set(a)
    assert a["hostname"] == m["hostname"]
    assert a["status"] == "online"
    assert a["total_slots"] == 4
    assert a["occupied_slots"] == 2
    assert a["available_slot_numbers"] == [1, 3, 4]
    assert a["available_slots"] == 3
    assert a["active_sessions"] == []  # derived from sessions, not from assignments
    assert a["last_heartbeat"] == m["last_heartbeat"]


def test_available_uses_active_sessions_array_and_stored_order(client):
    m = create_machine(client, docker_slots=[5, 3, 1])
    mid = m["machine_id"]
    s = create_session(client)
    expect(_assign(client, mid, s["session_id"]), 201)  # gets slot 5
    a = {x["machine_id"]: x for x in _available(client)}[mid]
    assert a["available_slot_numbers"] == [3, 1]
    assert a["occupied_slots"] == 1
    assert a["active_sessions"] == [s["session_id"]]
    # pausing the session frees the slot in this view although it stays assigned
    put_session(client, s["session_id"], status="paused")
    a = {x["machine_id"]: x for x in _available(client)}[mid]
    assert a["available_slot_numbers"] == [5, 3, 1]
    assert a["occupied_slots"] == 0
    assert a["active_sessions"] == [s["session_id"]]


def test_available_only_online_and_sorted(client):
    on = create_machine(client, docker_slots=[1])
    off = create_machine(client)
    maint = create_machine(client)
    expect(client.delete(f"/machines/{off['machine_id']}"), 204)
    expect(client.put(f"/machines/{maint['machine_id']}", json={"status": "maintenance"}), 200)
    items = _available(client)
    ids = [x["machine_id"] for x in items]
    assert on["machine_id"] in ids
    assert off["machine_id"] not in ids and maint["machine_id"] not in ids
    assert all(x["status"] == "online" for x in items)
    keys = [(-x["available_slots"], x["machine_id"]) for x in items]
    assert keys == sorted(keys)


def test_available_tie_break_by_machine_id(client):
    base = uid("tie")
    # same number of free slots, created in reverse id order
    ms = [create_machine(client, machine_id=f"{base}-{s}", docker_slots=[1, 2])
          for s in ("c", "a", "b")]
    items = [x["machine_id"] for x in _available(client) if x["machine_id"].startswith(base)]
    assert items == sorted(m["machine_id"] for m in ms)


# --- concurrency -------------------------------------------------------------------------------

def _concurrently(n, fn):
    results = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        results[i] = fn(i)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_register_same_id(server, prefix):
    mid = uid("race")
    rs = _concurrently(6, lambda i: server.client(prefix).post(
        "/machines", json={"machine_id": mid, "hostname": f"h{i}", "docker_slots": [1]}))
    codes = sorted(r.status_code for r in rs)
    assert codes == [201] + [409] * 5, codes
    for r in rs:
        if r.status_code == 409:
            assert r.json()["message"] in (f"Machine with ID {mid} already exists",
                                           "Duplicate entry")
    assert len([m for m in expect(server.client(prefix).get("/machines"), 200)
                if m["machine_id"] == mid]) == 1


def test_concurrent_assign_same_session(server, prefix):
    c = server.client(prefix)
    m = create_machine(c, docker_slots=[1, 2, 3, 4, 5, 6])
    s = create_session(c)
    mid, sid = m["machine_id"], s["session_id"]
    rs = _concurrently(6, lambda i: server.client(prefix).post(
        f"/machines/{mid}/assign-session", json={"session_id": sid}))
    codes = sorted(r.status_code for r in rs)
    assert codes == [201] + [409] * 5, codes
    for r in rs:
        if r.status_code == 409:
            assert r.json()["message"] in (
                f"Session {sid} is already assigned to machine {mid}",
                f"Failed to assign session {sid} to machine {mid} - concurrent modification "
                "detected")
    assert get_machine(c, mid)["active_sessions"] == [sid]


def test_concurrent_auto_assign_gives_distinct_slots(server, prefix):
    c = server.client(prefix)
    m = create_machine(c, docker_slots=list(range(1, 7)))
    mid = m["machine_id"]
    sids = [create_session(c)["session_id"] for _ in range(8)]
    rs = _concurrently(8, lambda i: server.client(prefix).post(
        f"/machines/{mid}/assign-session", json={"session_id": sids[i]}))
    codes = sorted(r.status_code for r in rs)
    assert codes == [201] * 6 + [409] * 2, codes
    won = [sids[i] for i, r in enumerate(rs) if r.status_code == 201]
    slots = sorted(get_session(c, sid)["docker_slot"] for sid in won)
    assert slots == [1, 2, 3, 4, 5, 6]
    assert sorted(get_machine(c, mid)["active_sessions"]) == sorted(won)
    for i, r in enumerate(rs):
        if r.status_code == 409:
            assert r.json()["message"] in (
                f"No available docker slots on machine {mid} - all 6 slots are occupied",
                f"Failed to assign session {sids[i]} to machine {mid} - concurrent modification "
                "detected")
