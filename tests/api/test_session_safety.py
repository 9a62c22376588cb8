"""Session safety (docs/SESSION_LIFECYCLE.md): deadlines and heartbeat replies, epochs
(fencing tokens), directives, awaiting_input, the event timeline, restart grace, the mass-stall
brake, the machine-offline cascade, the consistency check, and no lost transitions under
concurrency. Everything here is additive: requests without the new fields behave as the contract
says (the other test files cover that)."""
import json
import random
import re
import threading
import time
from datetime import timedelta

import pytest

from st_helpers import (ISO_RE, assert_error, assert_recent, assert_validation, create_machine,
                        create_session, create_task, db_events, expect, get_machine, get_session,
                        get_task, iso, ms_between, now_utc, parse_iso, poll, put_session,
                        session_events, session_in_status, tick, uid)

HB_KEYS = {"session_id", "status", "last_heartbeat", "message", "deadline_at", "directive",
           "epoch", "heartbeat_interval_s", "next_heartbeat_due"}
HB_OK = "Heartbeat updated successfully"
NO_LIMITS = ["--rate-limit-default", "0", "--rate-limit-heartbeat", "0"]
HB_REVIVED = "Heartbeat updated and session reactivated from stalled state"


# --- helpers -----------------------------------------------------------------------------------

def _hb(c, sid, **fields):
    kw = {"json": fields} if fields else {}
    return c.post(f"/sessions/{sid}/heartbeat", **kw)


def _recover(c, sid, **fields):
    return expect(c.post(f"/sessions/{sid}/recover", json=fields), 200)


def _mark_failed(c, sid, reason="boom"):
    return expect(c.post(f"/sessions/{sid}/mark-failed", json={"reason": reason}), 200)


def _mark_stalled(c, sid, reason="quiet"):
    return expect(c.post(f"/sessions/{sid}/mark-stalled", json={"reason": reason}), 200)


def _types(events):
    return [e["type"] for e in events]


def assert_stale_epoch(resp, current_epoch):
    """409 stale_epoch: the error envelope plus the stop directive and the current epoch."""
    assert resp.status_code == 409, (
        f"{resp.request.method} {resp.url}: expected 409 stale_epoch, got {resp.status_code}: "
        f"{resp.text[:500]}")
    b = resp.json()
    assert b.get("statusCode") == 409, b
    assert b.get("error") == "Conflict", b
    assert b.get("error_code") == "stale_epoch", b
    assert b.get("directive") == "stop", b
    assert b.get("current_epoch") == current_epoch, b
    assert isinstance(b.get("message"), str) and b["message"], b
    rid = resp.headers.get("X-Request-Id")
    assert rid and b.get("request_id") == rid, (b.get("request_id"), rid)
    assert ISO_RE.match(b.get("timestamp", "")), b
    assert "stack" not in b, b
    return b


def _recovered_elsewhere(c, **create_fields):
    """A session that agent A owned (epoch 1) and an operator recovered onto machine B."""
    s = create_session(c, **create_fields)
    r = _recover(c, s["session_id"], new_machine_id=uid("machine-b"))
    assert r["epoch"] == 2
    return r


def _metric(c, name):
    """Value of an unlabelled sample in GET /metrics (None when absent)."""
    r = c.get("/metrics")
    assert r.status_code == 200, r.text[:300]
    m = re.search(rf"^{re.escape(name)}(?:\{{\}})? (\S+)$", r.text, re.M)
    return float(m.group(1)) if m else None


def _status(c, sid):
    return get_session(c, sid)["status"]


# --- session document and heartbeat reply ------------------------------------------------------

def test_new_session_carries_liveness_and_ownership_fields(client):
    s = create_session(client)
    assert s["heartbeat_timeout_s"] == 300
    assert s["epoch"] == 1
    assert s["directive"] == "continue"
    assert ms_between(s["last_heartbeat"], s["deadline_at"]) == 300_000
    for absent in ("directive_reason", "input_timeout_s", "awaiting_since", "input_overdue_at"):
        assert absent not in s, absent
    assert get_session(client, s["session_id"]) == s


@pytest.mark.parametrize("timeout,interval", [(1, 1), (2, 1), (3, 1), (5, 1), (10, 3),
                                              (300, 100), (604800, 201600)])
def test_heartbeat_reply_deadline_and_interval(client, timeout, interval):
    s = create_session(client, heartbeat_timeout_s=timeout)
    sid = s["session_id"]
    tick()
    b = expect(_hb(client, sid), 200)
    assert set(b) == HB_KEYS, set(b) ^ HB_KEYS
    assert b["session_id"] == sid
    assert b["status"] == "active"
    assert b["message"] == HB_OK
    assert b["directive"] == "continue"
    assert b["epoch"] == 1
    assert_recent(b["last_heartbeat"], 5)
    assert ms_between(b["last_heartbeat"], b["deadline_at"]) == timeout * 1000
    assert b["heartbeat_interval_s"] == interval
    assert ms_between(b["last_heartbeat"], b["next_heartbeat_due"]) == interval * 1000
    g = get_session(client, sid)
    assert g["last_heartbeat"] == b["last_heartbeat"]
    assert g["deadline_at"] == b["deadline_at"]


def test_heartbeat_extend_s_moves_the_deadline_only_when_longer(client):
    s = create_session(client, heartbeat_timeout_s=60)
    sid = s["session_id"]
    b = expect(_hb(client, sid, extend_s=3600), 200)
    assert ms_between(b["last_heartbeat"], b["deadline_at"]) == 3600 * 1000
    # the recommended interval follows the configured timeout, not the extension
    assert b["heartbeat_interval_s"] == 20
    g = get_session(client, sid)
    assert g["deadline_at"] == b["deadline_at"]
    assert g["heartbeat_timeout_s"] == 60  # an extension is not a new timeout
    b = expect(_hb(client, sid, extend_s=10), 200)  # shorter than the timeout: no effect
    assert ms_between(b["last_heartbeat"], b["deadline_at"]) == 60 * 1000
    b = expect(_hb(client, sid, extend_s=604800), 200)
    assert ms_between(b["last_heartbeat"], b["deadline_at"]) == 604800 * 1000
    b = expect(_hb(client, sid), 200)  # the next plain heartbeat is back to the timeout
    assert ms_between(b["last_heartbeat"], b["deadline_at"]) == 60 * 1000


def test_heartbeat_with_current_epoch_and_both_fields(client):
    s = create_session(client, heartbeat_timeout_s=30)
    b = expect(_hb(client, s["session_id"], epoch=1, extend_s=120), 200)
    assert b["epoch"] == 1
    assert ms_between(b["last_heartbeat"], b["deadline_at"]) == 120_000


@pytest.mark.parametrize("field,value", [
    ("epoch", "1"), ("epoch", 1.5), ("epoch", 0), ("epoch", -1), ("epoch", True), ("epoch", [1]),
    ("epoch", {"n": 1}),
    ("extend_s", "60"), ("extend_s", 2.5), ("extend_s", 0), ("extend_s", -5),
    ("extend_s", 604801), ("extend_s", False),
])
def test_heartbeat_bad_epoch_or_extend_is_400_and_changes_nothing(client, field, value):
    s = create_session(client)
    sid = s["session_id"]
    tick()
    b = assert_validation(_hb(client, sid, **{field: value}))
    assert any(field in m for m in b["message"]), b["message"]
    assert get_session(client, sid) == s


def test_heartbeat_check_order_404_then_409_then_400(client):
    # unknown session: 404 even with a (necessarily meaningless) epoch
    assert_error(_hb(client, "nope-order", epoch=7), 404, "Session with ID nope-order not found")
    # a failed session at epoch 2: a stale epoch is 409 before the terminal-status 400
    r = _recovered_elsewhere(client)
    sid = r["session_id"]
    failed = _mark_failed(client, sid)
    assert_stale_epoch(_hb(client, sid, epoch=1), 2)
    assert_error(_hb(client, sid, epoch=2), 400, "Cannot update heartbeat for failed session")
    assert_error(_hb(client, sid), 400, "Cannot update heartbeat for failed session")
    assert get_session(client, sid) == failed
    # completed (soft delete) at epoch 1
    done = session_in_status(client, "completed")
    assert_stale_epoch(_hb(client, done["session_id"], epoch=5), 1)
    assert_error(_hb(client, done["session_id"], epoch=1), 400,
                 "Cannot update heartbeat for completed session")


# --- fencing -----------------------------------------------------------------------------------

def test_recovered_elsewhere_old_owner_is_told_to_stop_and_changes_nothing(client):
    ma = create_machine(client)
    s = create_session(client, machine_id=ma["machine_id"], heartbeat_timeout_s=600)
    sid = s["session_id"]
    expect(client.post(f"/machines/{ma['machine_id']}/assign-session",
                       json={"session_id": sid}), 201)
    a = expect(_hb(client, sid, epoch=1), 200)  # agent A owns it
    assert a["epoch"] == 1
    mb = create_machine(client)
    r = _recover(client, sid, new_machine_id=mb["machine_id"])
    assert r["epoch"] == 2 and r["machine_id"] == mb["machine_id"]
    before = get_session(client, sid)
    tick()
    # A wakes up: 409, stop, the current epoch; nothing changes
    assert_stale_epoch(_hb(client, sid, epoch=1), 2)
    assert_stale_epoch(_hb(client, sid, epoch=1, extend_s=3600), 2)
    assert get_session(client, sid) == before
    # B, the new owner, heartbeats normally
    tick()
    b = expect(_hb(client, sid, epoch=2), 200)
    assert b["epoch"] == 2 and b["status"] == "active" and b["message"] == HB_OK
    assert parse_iso(b["last_heartbeat"]) > parse_iso(before["last_heartbeat"])
    # A keeps being refused; an epoch from the future is refused too
    after_b = get_session(client, sid)
    assert_stale_epoch(_hb(client, sid, epoch=1), 2)
    assert_stale_epoch(_hb(client, sid, epoch=3), 2)
    assert get_session(client, sid) == after_b
    # an old client without epoch still works
    assert expect(_hb(client, sid), 200)["epoch"] == 2


def test_stale_epoch_does_not_revive_a_stalled_session(client):
    r = _recovered_elsewhere(client, heartbeat_timeout_s=600)
    sid = r["session_id"]
    stalled = _mark_stalled(client, sid)
    assert_stale_epoch(_hb(client, sid, epoch=1), 2)
    assert get_session(client, sid) == stalled
    assert "session.reactivated" not in _types(session_events(client, sid))
    b = expect(_hb(client, sid, epoch=2), 200)
    assert b["status"] == "active" and b["message"] == HB_REVIVED


def test_fencing_on_task_creation(client):
    r = _recovered_elsewhere(client)
    sid = r["session_id"]
    body = {"session_id": sid, "project_id": r["project_id"], "task_name": "fenced"}
    assert_stale_epoch(client.post("/tasks", json={**body, "epoch": 1}), 2)
    assert expect(client.get(f"/sessions/{sid}/tasks"), 200)["stats"]["total"] == 0
    t = expect(client.post("/tasks", json={**body, "epoch": 2}), 201)
    assert t["session_id"] == sid and t["status"] == "pending"
    expect(client.post("/tasks", json=body), 201)  # old client
    assert expect(client.get(f"/sessions/{sid}/tasks"), 200)["stats"]["total"] == 2
    # unknown session stays 404 with an epoch
    assert_error(client.post("/tasks", json={**body, "session_id": "nope-ts", "epoch": 1}), 404,
                 "Session with ID nope-ts not found")


def test_fencing_on_task_update_start_complete_fail(client):
    r = _recovered_elsewhere(client)
    sid = r["session_id"]
    t1 = create_task(client, sid, project_id=r["project_id"])
    t2 = create_task(client, sid, project_id=r["project_id"])
    t3 = create_task(client, sid, project_id=r["project_id"])
    id1, id2, id3 = t1["task_id"], t2["task_id"], t3["task_id"]

    # PUT /tasks/:id
    assert_stale_epoch(client.put(f"/tasks/{id1}", json={"status": "blocked", "epoch": 1}), 2)
    assert get_task(client, id1) == t1
    u = expect(client.put(f"/tasks/{id1}", json={"status": "blocked", "epoch": 2}), 200)
    assert u["status"] == "blocked"

    # POST /tasks/:id/start
    sess_before = get_session(client, sid)
    assert_stale_epoch(client.post(f"/tasks/{id2}/start", json={"epoch": 1}), 2)
    assert get_task(client, id2) == t2
    assert get_session(client, sid) == sess_before  # current_task_id not set either
    st = expect(client.post(f"/tasks/{id2}/start", json={"epoch": 2}), 200)
    assert st["status"] == "in_progress"
    assert get_session(client, sid)["current_task_id"] == id2

    # POST /tasks/:id/complete
    assert_stale_epoch(client.post(f"/tasks/{id2}/complete", json={"epoch": 1}), 2)
    assert get_task(client, id2)["status"] == "in_progress"
    assert get_session(client, sid)["current_task_id"] == id2
    assert expect(client.post(f"/tasks/{id2}/complete", json={"epoch": 2}), 200)["status"] == \
        "completed"
    assert "current_task_id" not in get_session(client, sid)

    # POST /tasks/:id/fail
    expect(client.post(f"/tasks/{id3}/start"), 200)  # old client: no body at all
    assert_stale_epoch(client.post(f"/tasks/{id3}/fail",
                                   json={"error_message": "late", "epoch": 1}), 2)
    g = get_task(client, id3)
    assert g["status"] == "in_progress" and "error_message" not in g
    f = expect(client.post(f"/tasks/{id3}/fail", json={"error_message": "real", "epoch": 2}), 200)
    assert f["status"] == "failed" and f["error_message"] == "real"

    # no task event was appended by a refused request
    events = session_events(client, sid)
    started = [e for e in events if e["type"] == "task.started"]
    assert [e["task_id"] for e in started] == [id2, id3]


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/tasks/{tid}/start", {"epoch": "2"}),
    ("POST", "/tasks/{tid}/complete", {"epoch": 0}),
    ("POST", "/tasks/{tid}/fail", {"error_message": "x", "epoch": "2"}),
    ("PUT", "/tasks/{tid}", {"epoch": 1.5}),
    ("POST", "/tasks", {"epoch": "2"}),
])
def test_task_epoch_wrong_type_is_400(client, method, path, body):
    s = create_session(client)
    t = create_task(client, s["session_id"])
    full = dict(body)
    if path == "/tasks":
        full.update(session_id=s["session_id"], project_id="p", task_name="n")
    r = client.request(method, path.format(tid=t["task_id"]), json=full)
    b = assert_validation(r)
    assert any("epoch" in m for m in b["message"]), b["message"]
    assert get_task(client, t["task_id"]) == t


def test_fencing_on_release_session(client):
    m = create_machine(client)
    mid = m["machine_id"]
    s = create_session(client, machine_id=mid)
    sid = s["session_id"]
    expect(client.post(f"/machines/{mid}/assign-session", json={"session_id": sid}), 201)
    r = _recover(client, sid)  # in place: still holds its slot, now at epoch 2
    assert r["epoch"] == 2
    held = get_machine(client, mid)
    assert held["active_sessions"] == [sid]
    assert_stale_epoch(client.post(f"/machines/{mid}/release-session",
                                   json={"session_id": sid, "epoch": 1}), 2)
    assert get_machine(client, mid) == held
    rel = expect(client.post(f"/machines/{mid}/release-session",
                             json={"session_id": sid, "epoch": 2}), 201)
    assert rel["active_sessions"] == []
    # old clients (no epoch) are unaffected
    s2 = create_session(client, machine_id=mid)
    expect(client.post(f"/machines/{mid}/assign-session",
                       json={"session_id": s2["session_id"]}), 201)
    expect(client.post(f"/machines/{mid}/release-session",
                       json={"session_id": s2["session_id"]}), 201)
    assert get_machine(client, mid)["active_sessions"] == []


# --- recover moves release the old slot --------------------------------------------------------

def test_recover_onto_another_machine_frees_the_old_slot_at_once(client):
    ma = create_machine(client, docker_slots=[1])
    mb = create_machine(client, docker_slots=[1])
    s = create_session(client, machine_id=ma["machine_id"])
    sid = s["session_id"]
    expect(client.post(f"/machines/{ma['machine_id']}/assign-session",
                       json={"session_id": sid}), 201)
    _mark_failed(client, sid)
    r = _recover(client, sid, new_machine_id=mb["machine_id"])
    assert r["machine_id"] == mb["machine_id"] and r["epoch"] == 2
    assert get_machine(client, ma["machine_id"])["active_sessions"] == []
    # ... so the old machine's only slot can be handed out again right away
    other = create_session(client, machine_id=ma["machine_id"])
    got = expect(client.post(f"/machines/{ma['machine_id']}/assign-session",
                             json={"session_id": other["session_id"]}), 201)
    assert got["active_sessions"] == [other["session_id"]]
    # the release is on the moved session's timeline, written by the recovery's transaction
    events = session_events(client, sid)
    types = _types(events)
    assert types.count("machine.session_released") == 1, types
    rel = events[types.index("machine.session_released")]
    rec = events[types.index("session.recovered")]
    assert rel["machine_id"] == ma["machine_id"] and rel["session_id"] == sid
    assert abs(rel["seq"] - rec["seq"]) == 1, (rel, rec)  # nothing committed in between
    assert types.index("session.failed") < types.index("machine.session_released")


def test_recover_onto_another_slot_frees_the_old_entry(client):
    m = create_machine(client, docker_slots=[1, 2])
    mid = m["machine_id"]
    s = create_session(client, machine_id=mid)
    sid = s["session_id"]
    expect(client.post(f"/machines/{mid}/assign-session",
                       json={"session_id": sid, "docker_slot": 1}), 201)
    r = _recover(client, sid, new_docker_slot=2)
    assert r["docker_slot"] == 2 and r["machine_id"] == mid
    assert get_machine(client, mid)["active_sessions"] == []


def test_recover_in_place_leaves_machines_alone(client):
    m = create_machine(client, docker_slots=[1, 2])
    mid = m["machine_id"]
    s = create_session(client, machine_id=mid)
    sid = s["session_id"]
    expect(client.post(f"/machines/{mid}/assign-session",
                       json={"session_id": sid, "docker_slot": 2}), 201)
    before = get_machine(client, mid)
    _mark_failed(client, sid)
    _recover(client, sid)
    assert get_machine(client, mid) == before
    _recover(client, sid, new_machine_id=mid, new_docker_slot=2)  # same machine, same slot
    assert get_machine(client, mid) == before
    assert "machine.session_released" not in _types(session_events(client, sid))


# --- directives --------------------------------------------------------------------------------

def test_directive_reaches_the_agent_in_its_next_heartbeat(client):
    s = create_session(client, heartbeat_timeout_s=120)
    sid = s["session_id"]
    tick()
    d = expect(client.post(f"/sessions/{sid}/directive",
                           json={"directive": "pause", "reason": "maintenance window"}), 200)
    assert d["session_id"] == sid
    assert d["directive"] == "pause" and d["directive_reason"] == "maintenance window"
    assert d["status"] == "active"  # advice only: the agent reports its own status
    assert d["epoch"] == 1
    assert parse_iso(d["updated_at"]) > parse_iso(s["updated_at"])
    assert get_session(client, sid) == d
    b = expect(_hb(client, sid), 200)
    assert b["directive"] == "pause" and b["directive_reason"] == "maintenance window"
    assert set(b) == HB_KEYS | {"directive_reason"}
    assert b["status"] == "active"
    # stop without a reason: the old reason is gone
    d = expect(client.post(f"/sessions/{sid}/directive", json={"directive": "stop"}), 200)
    assert d["directive"] == "stop" and "directive_reason" not in d
    b = expect(_hb(client, sid, epoch=1), 200)
    assert b["directive"] == "stop" and "directive_reason" not in b
    d = expect(client.post(f"/sessions/{sid}/directive", json={"directive": "continue"}), 200)
    assert expect(_hb(client, sid), 200)["directive"] == "continue"
    changes = [e for e in session_events(client, sid) if e["type"] == "session.directive_changed"]
    assert [e["data"]["directive"] for e in changes] == ["pause", "stop", "continue"]
    assert changes[0]["data"]["directive_reason"] == "maintenance window"
    assert changes[0]["session_id"] == sid


def test_directive_survives_recovery_and_is_told_to_the_new_owner(client):
    s = create_session(client)
    sid = s["session_id"]
    expect(client.post(f"/sessions/{sid}/directive",
                       json={"directive": "pause", "reason": "r"}), 200)
    r = _recover(client, sid, new_machine_id="elsewhere")
    assert r["directive"] == "pause"
    b = expect(_hb(client, sid, epoch=2), 200)
    assert b["directive"] == "pause" and b["epoch"] == 2


@pytest.mark.parametrize("payload", [
    {}, {"reason": "x"}, {"directive": "halt"}, {"directive": "STOP"}, {"directive": 1},
    {"directive": None}, {"directive": "stop", "foo": 1}, {"directive": "stop", "reason": 5},
    {"directive": "stop", "epoch": 1},
], ids=repr)
def test_directive_validation(client, payload):
    s = create_session(client)
    assert_validation(client.post(f"/sessions/{s['session_id']}/directive", json=payload))
    assert get_session(client, s["session_id"]) == s


def test_directive_unknown_session_is_404(client):
    assert_error(client.post("/sessions/nope-dir/directive", json={"directive": "stop"}), 404,
                 "Session with ID nope-dir not found")


# --- awaiting_input ----------------------------------------------------------------------------

def test_awaiting_input_and_paused_are_never_stalled(rc):
    """Shared server: sweeps every second."""
    waiting = create_session(rc, heartbeat_timeout_s=1)
    w = put_session(rc, waiting["session_id"], status="awaiting_input")
    assert w["status"] == "awaiting_input"
    assert_recent(w["awaiting_since"], 5)
    old = put_session(rc, create_session(rc, heartbeat_timeout_s=1)["session_id"],
                      status="awaiting_input", last_heartbeat=iso(now_utc() - timedelta(days=3)))
    paused = create_session(rc, heartbeat_timeout_s=1)
    put_session(rc, paused["session_id"], status="paused")
    control = create_session(rc, heartbeat_timeout_s=1)
    poll(lambda: _status(rc, control["session_id"]) == "stalled", 8, desc="control stalled")
    time.sleep(1.5)  # at least one more sweep
    assert get_session(rc, waiting["session_id"]) == w
    assert get_session(rc, old["session_id"]) == old
    assert _status(rc, paused["session_id"]) == "paused"
    # heartbeats are accepted while waiting and leave the status alone
    b = expect(_hb(rc, waiting["session_id"], epoch=1), 200)
    assert b["status"] == "awaiting_input" and b["message"] == HB_OK
    g = get_session(rc, waiting["session_id"])
    assert g["status"] == "awaiting_input" and g["last_heartbeat"] == b["last_heartbeat"]
    assert g["awaiting_since"] == w["awaiting_since"]
    for sid in (waiting["session_id"], old["session_id"]):
        assert "session.stalled" not in _types(session_events(rc, sid))


def test_input_timeout_escalates_once_and_keeps_waiting(rc):
    s = create_session(rc, heartbeat_timeout_s=600, input_timeout_s=1)
    assert s["input_timeout_s"] == 1
    assert "input_overdue_at" not in s
    sid = s["session_id"]
    w = put_session(rc, sid, status="awaiting_input")
    g = poll(lambda: (lambda x: x if "input_overdue_at" in x else None)(get_session(rc, sid)),
             timeout=6, desc="input_overdue_at")
    assert g["status"] == "awaiting_input"
    assert ms_between(w["awaiting_since"], g["input_overdue_at"]) >= 1000
    assert_recent(g["input_overdue_at"], 5)
    time.sleep(2.2)  # two more sweeps: still one escalation
    g2 = get_session(rc, sid)
    assert g2["status"] == "awaiting_input"
    assert g2["input_overdue_at"] == g["input_overdue_at"]
    events = session_events(rc, sid)
    overdue = [e for e in events if e["type"] == "session.input_overdue"]
    assert len(overdue) == 1, _types(events)
    assert overdue[0]["session_id"] == sid
    assert overdue[0]["data"]["status"] == "awaiting_input"
    assert "session.stalled" not in _types(events)
    # answering the human ends the wait
    assert put_session(rc, sid, status="active")["status"] == "active"
    assert expect(_hb(rc, sid), 200)["status"] == "active"


def test_input_timeout_set_by_put_and_cleared_with_null(rc):
    a = create_session(rc, heartbeat_timeout_s=600)
    put_session(rc, a["session_id"], status="awaiting_input")
    u = put_session(rc, a["session_id"], input_timeout_s=1)
    assert u["input_timeout_s"] == 1
    b = create_session(rc, heartbeat_timeout_s=600, input_timeout_s=1)
    put_session(rc, b["session_id"], status="awaiting_input")
    cleared = put_session(rc, b["session_id"], input_timeout_s=None)
    assert "input_timeout_s" not in cleared
    poll(lambda: "input_overdue_at" in get_session(rc, a["session_id"]), 6,
         desc="escalation of the session whose input timeout was set by PUT")
    time.sleep(1.2)
    g = get_session(rc, b["session_id"])
    assert g["status"] == "awaiting_input" and "input_overdue_at" not in g
    assert "session.input_overdue" not in _types(session_events(rc, b["session_id"]))


def test_input_timeout_does_not_fire_for_other_statuses(rc):
    s = create_session(rc, heartbeat_timeout_s=600, input_timeout_s=1)
    control = create_session(rc, heartbeat_timeout_s=600, input_timeout_s=1)
    put_session(rc, control["session_id"], status="awaiting_input")
    poll(lambda: "input_overdue_at" in get_session(rc, control["session_id"]), 6,
         desc="control escalated")
    time.sleep(1.2)
    g = get_session(rc, s["session_id"])
    assert g["status"] == "active" and "input_overdue_at" not in g


@pytest.mark.parametrize("value", [0, 604801, "5", 1.5, True])
def test_input_timeout_validation(client, value):
    b = assert_validation(client.post("/sessions", json={
        "project_id": "p", "machine_id": "m", "input_timeout_s": value}))
    assert any("input_timeout_s" in m for m in b["message"]), b["message"]
    s = create_session(client)
    assert_validation(client.put(f"/sessions/{s['session_id']}",
                                 json={"input_timeout_s": value}))
    assert get_session(client, s["session_id"]) == s


@pytest.mark.parametrize("from_status", ["awaiting_input", "paused", "stalled"])
def test_resuming_gives_a_full_timeout_from_that_moment(rc, from_status):
    s = create_session(rc, heartbeat_timeout_s=2)
    sid = s["session_id"]
    put_session(rc, sid, status=from_status)
    time.sleep(2.5)  # the old deadline is long gone
    assert _status(rc, sid) == from_status
    before = now_utc()
    a = put_session(rc, sid, status="active")
    assert a["status"] == "active"
    assert a["last_heartbeat"] == s["last_heartbeat"]  # no heartbeat was invented
    assert parse_iso(a["deadline_at"]) >= before + timedelta(seconds=2) - timedelta(
        milliseconds=1)
    assert ms_between(a["updated_at"], a["deadline_at"]) >= 2000
    # not stalled for the time it legitimately did not heartbeat ...
    end = time.monotonic() + 1.2
    while time.monotonic() < end:
        assert _status(rc, sid) == "active"
        time.sleep(0.1)
    # ... but stalled once the new deadline passes in silence
    poll(lambda: _status(rc, sid) == "stalled", 6, desc="stalled after the fresh timeout")


# --- the event timeline ------------------------------------------------------------------------

def test_event_timeline_of_a_whole_lifecycle(client):
    m = create_machine(client)
    mid = m["machine_id"]
    s = create_session(client, machine_id=mid, heartbeat_timeout_s=600)
    sid, proj = s["session_id"], s["project_id"]
    put_session(client, sid, metadata={"k": 1})
    expect(_hb(client, sid), 200)                       # changes no status: no event
    expect(_hb(client, sid, epoch=1, extend_s=900), 200)  # neither does this one
    _mark_stalled(client, sid)
    revived = expect(_hb(client, sid), 200)            # stalled -> active
    assert revived["message"] == HB_REVIVED
    expect(client.post(f"/sessions/{sid}/directive", json={"directive": "pause"}), 200)
    expect(client.post(f"/machines/{mid}/assign-session", json={"session_id": sid}), 201)
    t = create_task(client, sid, project_id=proj)
    tid = t["task_id"]
    expect(client.post(f"/tasks/{tid}/start"), 200)
    expect(client.post(f"/tasks/{tid}/complete"), 200)
    _mark_failed(client, sid)
    assert_error(_hb(client, sid), 400)                # refused: no event
    expect(client.post(f"/sessions/{sid}/prepare-recovery"), 200)
    rec = _recover(client, sid)
    assert_stale_epoch(_hb(client, sid, epoch=1), 2)    # refused: no event
    expect(client.post(f"/machines/{mid}/release-session",
                       json={"session_id": sid, "epoch": 2}), 201)
    expect(client.delete(f"/sessions/{sid}"), 204)
    expect(client.post(f"/sessions/{sid}/archive"), 200)
    expect(client.delete(f"/sessions/{sid}/purge", json={"confirm": True}), 200)

    b = expect(client.get(f"/sessions/{sid}/events"), 200)
    assert set(b) == {"session_id", "events", "next_after"}
    assert b["session_id"] == sid
    ev = b["events"]
    # session.updated also follows the changes a task or slot makes to the session; the rest
    # is exactly this, in this order (heartbeats and refused requests append nothing)
    assert [t for t in _types(ev) if t != "session.updated"] == [
        "session.created", "session.stalled", "session.reactivated",
        "session.directive_changed", "machine.session_assigned", "task.created",
        "task.started", "task.completed", "session.failed", "session.recovery_prepared",
        "session.recovered", "machine.session_released", "session.completed",
        "session.archived", "session.deleted",
    ], _types(ev)
    assert _types(ev)[1] == "session.updated"  # the PUT
    seqs = [e["seq"] for e in ev]
    assert all(isinstance(x, int) for x in seqs)
    assert all(a < b_ for a, b_ in zip(seqs, seqs[1:])), seqs
    assert b["next_after"] == seqs[-1]
    for e in ev:
        assert {"seq", "type", "occurred_at", "data"} <= set(e), e
        assert set(e) <= {"seq", "type", "occurred_at", "project_id", "session_id", "task_id",
                          "machine_id", "data"}, e
        assert e["session_id"] == sid, e
        assert isinstance(e["data"], dict)
        assert_recent(e["occurred_at"], 60)
        if e["type"].startswith("session."):
            assert e["project_id"] == proj
            assert e["data"]["session_id"] == sid
        if e["type"].startswith("task."):
            assert e["task_id"] == tid and e["data"]["task_id"] == tid
            assert e["project_id"] == proj
        if e["type"].startswith("machine."):
            assert e["machine_id"] == mid
    by_type = {}
    for e in ev:
        by_type.setdefault(e["type"], e)
    # the documents in the events are the states the API returned
    assert by_type["session.created"]["data"] == s
    assert by_type["session.updated"]["data"]["metadata"] == {"k": 1}
    assert by_type["session.stalled"]["data"]["status"] == "stalled"
    assert by_type["session.reactivated"]["data"]["status"] == "active"
    assert by_type["session.reactivated"]["data"]["last_heartbeat"] == revived["last_heartbeat"]
    assert by_type["session.directive_changed"]["data"]["directive"] == "pause"
    assert by_type["task.started"]["data"]["status"] == "in_progress"
    assert by_type["task.completed"]["data"]["status"] == "completed"
    assert by_type["session.failed"]["data"]["status"] == "failed"
    assert by_type["session.recovered"]["data"] == rec
    assert by_type["session.recovered"]["data"]["epoch"] == 2
    assert by_type["session.completed"]["data"]["status"] == "completed"
    assert by_type["session.archived"]["data"]["status"] == "archived"
    # the session is gone, its history is not
    assert_error(client.get(f"/sessions/{sid}"), 404)


def test_events_paging(client):
    s = create_session(client, heartbeat_timeout_s=600)
    sid = s["session_id"]
    for i in range(5):
        put_session(client, sid, metadata={"i": i})
    allb = expect(client.get(f"/sessions/{sid}/events"), 200)
    assert len(allb["events"]) == 6
    seqs = [e["seq"] for e in allb["events"]]
    p1 = expect(client.get(f"/sessions/{sid}/events", params={"limit": 2}), 200)
    assert [e["seq"] for e in p1["events"]] == seqs[:2]
    assert p1["next_after"] == seqs[1]
    p2 = expect(client.get(f"/sessions/{sid}/events",
                           params={"after": p1["next_after"], "limit": 3}), 200)
    assert [e["seq"] for e in p2["events"]] == seqs[2:5]
    assert p2["next_after"] == seqs[4]
    p3 = expect(client.get(f"/sessions/{sid}/events",
                           params={"after": p2["next_after"], "limit": 1000}), 200)
    assert [e["seq"] for e in p3["events"]] == seqs[5:]
    end = expect(client.get(f"/sessions/{sid}/events", params={"after": seqs[-1]}), 200)
    assert end["events"] == [] and end["next_after"] == seqs[-1]
    # after= need not be one of this session's seqs
    mid = expect(client.get(f"/sessions/{sid}/events", params={"after": seqs[2] + 0}), 200)
    assert [e["seq"] for e in mid["events"]] == seqs[3:]
    assert session_events(client, sid) == allb["events"]
    # limit defaults to 100
    for i in range(100):
        put_session(client, sid, metadata={"j": i})
    assert len(expect(client.get(f"/sessions/{sid}/events"), 200)["events"]) == 100
    assert len(session_events(client, sid)) == 106


@pytest.mark.parametrize("query", ["after=-1", "after=abc", "after=1.5", "limit=0", "limit=1001",
                                   "limit=abc", "limit=2.5", "limit=-3"])
def test_events_query_validation(client, query):
    s = create_session(client)
    b = assert_error(client.get(f"/sessions/{s['session_id']}/events?{query}"), 400)
    assert b["error_code"] == "validation_error"


def test_events_limit_bounds_accepted(client):
    s = create_session(client)
    for q in ("limit=1", "limit=1000", "after=0", "after=999999999"):
        expect(client.get(f"/sessions/{s['session_id']}/events?{q}"), 200)


def test_events_unknown_session_is_404(client):
    assert_error(client.get("/sessions/nope-ev/events"), 404, "Session with ID nope-ev not found")


def test_heartbeats_append_no_events_unless_they_revive(client):
    s = create_session(client, heartbeat_timeout_s=600)
    sid = s["session_id"]
    for _ in range(10):
        expect(_hb(client, sid), 200)
    put_session(client, sid, status="paused")
    expect(_hb(client, sid), 200)
    put_session(client, sid, status="awaiting_input")
    expect(_hb(client, sid), 200)
    assert _types(session_events(client, sid)) == ["session.created", "session.updated",
                                                   "session.updated"]


# --- restart grace -----------------------------------------------------------------------------

def test_restart_grace_postpones_stalls_after_downtime(start_server, tmp_path):
    db = tmp_path / "grace.db"
    a = start_server([*NO_LIMITS, "--disable-background-jobs"], db_path=db)
    ca = a.client()
    s = create_session(ca, heartbeat_timeout_s=1)
    sid = s["session_id"]
    far = create_session(ca, heartbeat_timeout_s=600)
    paused = put_session(ca, create_session(ca, heartbeat_timeout_s=1)["session_id"],
                         status="paused")
    time.sleep(2)  # its deadline passes while the tracker is up but not sweeping ...
    assert a.stop() == 0  # ... and then the tracker goes down

    t_before = now_utc()
    m0 = time.monotonic()
    b = start_server([*NO_LIMITS, "--sweep-interval-s", "1", "--restart-grace-s", "4"],
                     db_path=db)
    t_after = now_utc()
    cb = b.client()

    def graced():
        g = get_session(cb, sid)
        return g if parse_iso(g["deadline_at"]) > parse_iso(s["deadline_at"]) else None
    g = poll(graced, timeout=3, interval=0.05, desc="restart grace applied")
    dl = parse_iso(g["deadline_at"])
    assert t_before + timedelta(seconds=4) - timedelta(milliseconds=50) <= dl, (g, t_before)
    assert dl <= t_after + timedelta(seconds=4) + timedelta(milliseconds=500), (g, t_after)
    assert g["status"] == "active"
    assert g["last_heartbeat"] == s["last_heartbeat"]  # no heartbeat was invented
    # a deadline already later than the grace is not moved; a paused session is untouched
    assert get_session(cb, far["session_id"]) == far
    assert get_session(cb, paused["session_id"]) == paused

    while time.monotonic() - m0 < 2.5:
        assert _status(cb, sid) == "active", "stalled during the restart grace"
        time.sleep(0.1)
    poll(lambda: _status(cb, sid) == "stalled", timeout=8, desc="stalled after the grace")
    elapsed = time.monotonic() - m0
    assert 3.5 <= elapsed <= 7.5, f"stalled {elapsed:.1f}s after start (grace 4s, sweep 1s)"


def test_reconnecting_agent_is_not_stalled_after_restart(start_server, tmp_path):
    db = tmp_path / "grace2.db"
    a = start_server([*NO_LIMITS, "--disable-background-jobs"], db_path=db)
    s = create_session(a.client(), heartbeat_timeout_s=1)
    time.sleep(1.5)
    assert a.stop() == 0
    b = start_server([*NO_LIMITS, "--sweep-interval-s", "1", "--restart-grace-s", "2"],
                     db_path=db)
    cb = b.client()
    time.sleep(0.5)  # the agent notices the tracker is back, and heartbeats again
    end = time.monotonic() + 3.5  # well past the grace
    while time.monotonic() < end:
        assert expect(_hb(cb, s["session_id"]), 200)["message"] == HB_OK
        time.sleep(0.25)
    assert _status(cb, s["session_id"]) == "active"
    assert "session.stalled" not in _types(session_events(cb, s["session_id"]))


# --- the mass-stall brake ----------------------------------------------------------------------

def _silent_batch(c, n, due_in_s=2.0, project=None):
    """n active sessions that all become overdue at the same instant (one sweep sees them all).

    Each gets the same explicit last_heartbeat in the past and a timeout that puts the common
    deadline `due_in_s` from now."""
    project = project or uid("proj")
    base = now_utc() - timedelta(seconds=30)
    lh = iso(base)
    timeout = 30 + int(due_in_s)
    ids = []
    for _ in range(n):
        s = create_session(c, project_id=project, heartbeat_timeout_s=600)
        u = put_session(c, s["session_id"], last_heartbeat=lh, heartbeat_timeout_s=timeout)
        ids.append(u["session_id"])
    return ids


def _incidents(c):
    b = expect(c.get("/incidents"), 200)
    assert set(b) == {"incidents"}, b
    return b["incidents"]


def _statuses(c, ids):
    return {sid: _status(c, sid) for sid in ids}


def assert_incident(inc, overdue, active, cleared=False):
    assert set(inc) == {"type", "since", "overdue_sessions", "active_sessions",
                        "cleared_by_operator"}, inc
    assert inc["type"] == "mass_stall"
    assert_recent(inc["since"], 30)
    assert inc["overdue_sessions"] == overdue, inc
    assert inc["active_sessions"] == active, inc
    assert inc["cleared_by_operator"] is cleared


def test_mass_stall_brake_holds_then_resolves_when_heartbeats_return(start_server):
    srv = start_server([*NO_LIMITS, "--sweep-interval-s", "1"])  # brake: share 0.5, min 10
    c = srv.client()
    assert _incidents(c) == []
    assert expect(c.get("/health/detailed"), 200)["incident"] is None
    assert_error(c.post("/incidents/mass-stall/clear"), 404)
    healthy = [create_session(c, heartbeat_timeout_s=600)["session_id"] for _ in range(2)]
    ids = _silent_batch(c, 12)
    incs = poll(lambda: _incidents(c), timeout=8, desc="mass-stall incident")
    assert len(incs) == 1
    assert_incident(incs[0], overdue=12, active=14)
    # nothing was stalled
    assert set(_statuses(c, ids).values()) == {"active"}
    h = expect(c.get("/health/detailed"), 200)
    assert h["incident"] == incs[0]
    assert h["status"] in ("degraded", "unhealthy"), h["status"]
    poll(lambda: _metric(c, "statetrack_mass_stall_braking") == 1, 3, desc="braking gauge 1")
    poll(lambda: _metric(c, "statetrack_mass_stall_incidents_total") == 1, 3,
         desc="incident counter 1")
    time.sleep(2.2)  # two more sweeps: still braking, still one incident
    assert set(_statuses(c, ids).values()) == {"active"}
    assert len(_incidents(c)) == 1
    assert _incidents(c)[0]["since"] == incs[0]["since"]
    assert _metric(c, "statetrack_mass_stall_incidents_total") == 1
    opened = db_events(srv.db_path, {"incident.mass_stall"})
    assert len(opened) == 1, opened
    assert not opened[0]["session_id"]  # global, not per session
    assert opened[0]["data"]["overdue_sessions"] == 12
    for sid in ids:
        assert "session.stalled" not in _types(session_events(c, sid))

    # most agents come back (they were only unreachable): the brake lets go, and the two
    # that stay silent are stalled by the same sweep that resolves the incident
    back, dead = ids[:10], ids[10:]
    replies = {}

    def come_back(sid):
        replies[sid] = _hb(srv.client(), sid, extend_s=600)
    threads = [threading.Thread(target=come_back, args=(sid,)) for sid in back]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for sid in back:
        b = expect(replies[sid], 200)
        # (a sweep that ran while they were coming back may have stalled a few of them once
        # fewer than the minimum remained overdue; their heartbeat revives them)
        assert b["status"] == "active" and b["message"] in (HB_OK, HB_REVIVED), b
    poll(lambda: _incidents(c) == [], timeout=6, desc="incident resolved")
    assert _statuses(c, dead) == {sid: "stalled" for sid in dead}
    assert set(_statuses(c, back + healthy).values()) == {"active"}
    assert expect(c.get("/health/detailed"), 200)["incident"] is None
    poll(lambda: _metric(c, "statetrack_mass_stall_braking") == 0, 3, desc="braking gauge 0")
    assert _metric(c, "statetrack_mass_stall_incidents_total") == 1
    resolved = db_events(srv.db_path, {"incident.resolved"})
    assert len(resolved) == 1, resolved
    stalled_ev = [e for sid in dead for e in session_events(c, sid)
                  if e["type"] == "session.stalled"]
    assert len(stalled_ev) == 2
    assert all(e["seq"] < resolved[0]["seq"] for e in stalled_ev)
    assert_error(c.post("/incidents/mass-stall/clear"), 404)


def test_mass_stall_operator_clear_lets_the_next_sweep_stall(start_server):
    srv = start_server([*NO_LIMITS, "--sweep-interval-s", "1"])
    c = srv.client()
    assert_error(c.post("/incidents/mass-stall/clear"), 404)
    ids = _silent_batch(c, 12)
    inc = poll(lambda: _incidents(c), timeout=8, desc="mass-stall incident")[0]
    assert_incident(inc, overdue=12, active=12)
    cleared = expect(c.post("/incidents/mass-stall/clear"), 200)
    assert_incident(cleared, overdue=12, active=12, cleared=True)
    assert cleared["since"] == inc["since"]
    poll(lambda: set(_statuses(c, ids).values()) == {"stalled"}, timeout=6,
         desc="all overdue sessions stalled after the operator's clear")
    poll(lambda: _incidents(c) == [], timeout=3, desc="incident closed")
    poll(lambda: _metric(c, "statetrack_mass_stall_braking") == 0, 3, desc="braking gauge 0")
    assert len(db_events(srv.db_path, {"incident.resolved"})) == 1
    assert len(db_events(srv.db_path, {"incident.mass_stall"})) == 1
    assert_error(c.post("/incidents/mass-stall/clear"), 404)
    for sid in ids:
        assert _types(session_events(c, sid)).count("session.stalled") == 1


def test_brake_disabled_with_min_zero(start_server):
    srv = start_server([*NO_LIMITS, "--sweep-interval-s", "1", "--stall-brake-min", "0"])
    c = srv.client()
    ids = _silent_batch(c, 12)
    poll(lambda: set(_statuses(c, ids).values()) == {"stalled"}, timeout=8,
         desc="all stalled without the brake")
    assert _incidents(c) == []
    assert db_events(srv.db_path, {"incident.mass_stall", "incident.resolved"}) == []
    assert _metric(c, "statetrack_mass_stall_incidents_total") == 0
    assert _metric(c, "statetrack_mass_stall_braking") == 0


def test_fewer_overdue_than_the_minimum_are_stalled_normally(start_server):
    srv = start_server([*NO_LIMITS, "--sweep-interval-s", "1"])
    c = srv.client()
    ids = _silent_batch(c, 4)  # every active session is overdue, but only 4 < 10
    poll(lambda: set(_statuses(c, ids).values()) == {"stalled"}, timeout=8,
         desc="all four stalled")
    assert _incidents(c) == []
    assert _metric(c, "statetrack_mass_stall_incidents_total") == 0


def test_brake_share_is_configurable(start_server):
    # 12 overdue of 16 active: 0.75 of them. Over the default 0.5, under 0.8.
    srv = start_server([*NO_LIMITS, "--sweep-interval-s", "1", "--stall-brake-share", "0.8"])
    c = srv.client()
    healthy = [create_session(c, heartbeat_timeout_s=600)["session_id"] for _ in range(4)]
    ids = _silent_batch(c, 12)
    poll(lambda: set(_statuses(c, ids).values()) == {"stalled"}, timeout=8,
         desc="all stalled: under the configured share")
    assert _incidents(c) == []
    assert set(_statuses(c, healthy).values()) == {"active"}


# --- machine offline cascade -------------------------------------------------------------------

def test_machine_offline_cascade_details(start_server):
    """Complements test_jobs.py::test_machine_offline_stalls_its_active_sessions_with_one_cause:
    every active session naming the machine (assigned or not) is stalled by the same transaction
    that takes the machine offline; waiting/paused ones are left alone; one event lists them."""
    srv = start_server([*NO_LIMITS, "--sweep-interval-s", "1",
                        "--machine-offline-after-s", "1"])
    c = srv.client()
    m = create_machine(c)
    mid = m["machine_id"]
    assigned = create_session(c, machine_id=mid, heartbeat_timeout_s=600)
    expect(c.post(f"/machines/{mid}/assign-session",
                  json={"session_id": assigned["session_id"]}), 201)
    unassigned = create_session(c, machine_id=mid, heartbeat_timeout_s=600)
    waiting = put_session(c, create_session(c, machine_id=mid, heartbeat_timeout_s=600)
                          ["session_id"], status="awaiting_input")
    paused = put_session(c, create_session(c, machine_id=mid, heartbeat_timeout_s=600)
                         ["session_id"], status="paused")
    failed = _mark_failed(c, create_session(c, machine_id=mid)["session_id"])
    poll(lambda: get_machine(c, mid)["status"] == "offline", 8, desc="machine offline")
    gm = get_machine(c, mid)
    a = get_session(c, assigned["session_id"])
    u = get_session(c, unassigned["session_id"])
    for s in (a, u):
        assert s["status"] == "stalled"
        assert s["metadata"]["stalled_reason"] == f"machine {mid} went offline"
        assert s["epoch"] == 1
    assert a["last_heartbeat"] == assigned["last_heartbeat"]
    assert u["last_heartbeat"] == unassigned["last_heartbeat"]
    # one transaction: one instant for the machine and both sessions
    assert a["updated_at"] == u["updated_at"] == gm["updated_at"]
    assert get_session(c, waiting["session_id"]) == waiting
    assert get_session(c, paused["session_id"]) == paused
    assert get_session(c, failed["session_id"]) == failed
    offline = [e for e in db_events(srv.db_path, {"machine.offline"}) if e["machine_id"] == mid]
    assert len(offline) == 1, offline
    assert sorted(offline[0]["data"]["affected_sessions"]) == sorted(
        [assigned["session_id"], unassigned["session_id"]])
    for sid in (assigned["session_id"], unassigned["session_id"]):
        assert "session.stalled" not in _types(session_events(c, sid))
    # an agent that is in fact alive revives its session with its next heartbeat
    b = expect(_hb(c, unassigned["session_id"], epoch=1), 200)
    assert b["status"] == "active" and b["message"] == HB_REVIVED


# --- consistency check -------------------------------------------------------------------------

def test_consistency_check_repairs_tasks_and_slots_of_ended_sessions(start_server):
    srv = start_server([*NO_LIMITS, "--consistency-interval-s", "1"])
    c = srv.client()
    m = create_machine(c, docker_slots=[1, 2, 3, 4, 5])
    mid = m["machine_id"]

    def assigned_session(**fields):
        s = create_session(c, machine_id=mid, **fields)
        expect(c.post(f"/machines/{mid}/assign-session", json={"session_id": s["session_id"]}),
               201)
        return s

    def running_task(sid):
        t = create_task(c, sid)
        expect(c.post(f"/tasks/{t['task_id']}/start"), 200)
        return t["task_id"]

    # completed by soft delete, which touches neither tasks nor machines
    done = assigned_session()
    t_done = running_task(done["session_id"])
    t_pending = create_task(c, done["session_id"])["task_id"]
    t_finished = running_task(done["session_id"])
    expect(c.post(f"/tasks/{t_finished}/complete"), 200)
    expect(c.delete(f"/sessions/{done['session_id']}"), 204)
    # failed
    failed = create_session(c)
    t_failed = running_task(failed["session_id"])
    _mark_failed(c, failed["session_id"])
    # archived
    archived = create_session(c)
    t_archived = running_task(archived["session_id"])
    expect(c.delete(f"/sessions/{archived['session_id']}"), 204)
    expect(c.post(f"/sessions/{archived['session_id']}/archive"), 200)
    # purged while still holding a slot
    purged = assigned_session()
    expect(c.delete(f"/sessions/{purged['session_id']}"), 204)
    expect(c.delete(f"/sessions/{purged['session_id']}/purge", json={"confirm": True}), 200)
    # controls: live sessions keep their tasks and slots
    live = assigned_session()
    t_live = running_task(live["session_id"])
    resting = assigned_session()
    put_session(c, resting["session_id"], status="paused")
    stalled = create_session(c)
    t_stalled = running_task(stalled["session_id"])
    _mark_stalled(c, stalled["session_id"])

    def repaired():
        return (get_task(c, t_done)["status"] == "failed"
                and get_task(c, t_failed)["status"] == "failed"
                and get_task(c, t_archived)["status"] == "failed"
                and len(get_machine(c, mid)["active_sessions"]) == 2)
    poll(repaired, timeout=8, desc="consistency repairs")

    for tid, sid in ((t_done, done["session_id"]), (t_failed, failed["session_id"]),
                     (t_archived, archived["session_id"])):
        t = get_task(c, tid)
        assert t["status"] == "failed"
        assert isinstance(t.get("error_message"), str) and sid in t["error_message"], t
        assert_recent(t["completed_at"], 15)
    assert get_task(c, t_pending)["status"] == "pending"
    assert get_task(c, t_finished)["status"] == "completed"
    assert get_task(c, t_live)["status"] == "in_progress"
    assert get_task(c, t_stalled)["status"] == "in_progress"
    assert sorted(get_machine(c, mid)["active_sessions"]) == sorted(
        [live["session_id"], resting["session_id"]])
    # the sessions themselves are not changed by the repair
    assert get_session(c, done["session_id"])["status"] == "completed"
    assert get_session(c, failed["session_id"])["status"] == "failed"
    # each repair is on the session's timeline, as the event a user would have caused
    ev = session_events(c, done["session_id"])
    assert [e["task_id"] for e in ev if e["type"] == "task.failed"] == [t_done]
    rel = [e for e in ev if e["type"] == "machine.session_released"]
    assert len(rel) == 1 and rel[0]["machine_id"] == mid
    assert ev.index(rel[0]) > _types(ev).index("session.completed")
    assert any(e["type"] == "machine.session_released" and e["machine_id"] == mid
               for e in session_events(c, purged["session_id"]))
    # a freed slot is usable again
    again = create_session(c, machine_id=mid)
    expect(c.post(f"/machines/{mid}/assign-session", json={"session_id": again["session_id"]}),
           201)
    # and the next runs find nothing more to do
    time.sleep(1.5)
    assert get_task(c, t_live)["status"] == "in_progress"
    assert len(get_machine(c, mid)["active_sessions"]) == 3


# --- no lost transitions under concurrency ------------------------------------------------------

RUN_S = 12.0
TRANSITION_EVENT = {"fail": "session.failed", "stall": "session.stalled",
                    "recover": "session.recovered", "put": "session.updated"}
EPOCH_RULE_TYPES = {"session.created", "session.updated", "session.stalled", "session.failed",
                    "session.recovered", "session.reactivated"}


class Call:
    __slots__ = ("kind", "t0", "t1", "code", "body", "sent", "error")

    def __init__(self, kind, t0, t1, code, body, sent, error=None):
        self.kind, self.t0, self.t1, self.code = kind, t0, t1, code
        self.body, self.sent, self.error = body, sent, error

    def __repr__(self):
        b = self.body
        if isinstance(b, dict):
            b = {k: b.get(k) for k in ("status", "epoch", "updated_at", "last_heartbeat",
                                       "message", "current_epoch", "error_code") if k in b}
        return (f"<{self.kind} {self.code} sent={self.sent} t=[{self.t0:.3f},{self.t1:.3f}] "
                f"{b}>")


def _hammer(srv, sid, seed):
    """Run the concurrent workload; return the list of Calls (every request, with timing).

    Chaos phases (everything at once) alternate with quiet phases: the PUT worker resumes
    the session (status active, a fresh 1 s timeout) and everyone else holds still, so the
    sweeper gets to stall it, sometimes just as the next chaos phase starts."""
    calls = []
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + RUN_S
    known_epoch = [1]
    plan = random.Random(seed)
    quiet = []
    t = start + plan.uniform(1.0, 2.0)
    while t < stop_at - 1.5:
        q = plan.uniform(1.6, 2.6)
        quiet.append((t, t + q))
        t += q + plan.uniform(1.0, 2.0)

    def quiet_window(now):
        return next(((a, b) for a, b in quiet if a <= now < b), None)

    def hold_if_quiet():
        w = quiet_window(time.monotonic())
        if w:
            time.sleep(max(0.0, w[1] - time.monotonic()))

    def record(cl, kind, method, path, body):
        t0 = time.monotonic()
        try:
            kw = {"timeout": 10}
            if body is not None:
                kw["json"] = body
            r = cl.request(method, path, **kw)
            t1 = time.monotonic()
            try:
                parsed = r.json() if r.content else None
            except ValueError:
                parsed = r.text
            call = Call(kind, t0, t1, r.status_code, parsed, body)
        except Exception as exc:  # noqa: BLE001 - recorded and reported by the test
            call = Call(kind, t0, time.monotonic(), None, None, body, error=repr(exc))
        with lock:
            calls.append(call)
            if call.code == 200 and isinstance(call.body, dict) and \
                    isinstance(call.body.get("epoch"), int):
                known_epoch[0] = max(known_epoch[0], call.body["epoch"])
        return call

    def heartbeater(rnd, with_epoch):
        cl = srv.client()
        while time.monotonic() < stop_at:
            hold_if_quiet()
            body = None
            if with_epoch:
                e = known_epoch[0]
                if e > 1 and rnd.random() < 0.35:
                    e = rnd.randint(1, e - 1)  # an old owner waking up
                body = {"epoch": e}
            record(cl, "hb", "POST", f"/sessions/{sid}/heartbeat", body)
            time.sleep(rnd.uniform(0.0, 0.08) if rnd.random() < 0.93 else rnd.uniform(0.3, 1.0))

    def periodic(rnd, kind, lo, hi, make):
        cl = srv.client()
        time.sleep(rnd.uniform(0, hi))
        i = 0
        while time.monotonic() < stop_at:
            hold_if_quiet()
            method, path, body = make(rnd, i)
            record(cl, kind, method, path, body)
            i += 1
            time.sleep(rnd.uniform(lo, hi))

    def putter(rnd):
        cl = srv.client()
        statuses = ["active", "active", "active", "paused", "awaiting_input", "stalled",
                    "failed"]
        i = 0
        resumed = set()
        while time.monotonic() < stop_at:
            w = quiet_window(time.monotonic())
            if w and w in resumed:
                time.sleep(max(0.0, w[1] - time.monotonic()))
                continue
            status = "active" if w else rnd.choice(statuses)
            if w:
                resumed.add(w)
            record(cl, "put", "PUT", f"/sessions/{sid}",
                   {"status": status, "metadata": {"put": i}})
            i += 1
            time.sleep(rnd.uniform(0.1, 0.5))

    def recoverer(rnd):
        cl = srv.client()
        for n, frac in enumerate((0.22, 0.5, 0.78)):
            wait = start + RUN_S * frac + rnd.uniform(-0.5, 0.5) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            hold_if_quiet()
            body = {"new_machine_id": f"machine-{n}"} if n % 2 == 0 else {}
            record(cl, "recover", "POST", f"/sessions/{sid}/recover", body)

    workers = [
        (heartbeater, (random.Random(seed + 1), False)),
        (heartbeater, (random.Random(seed + 2), False)),
        (heartbeater, (random.Random(seed + 3), True)),
        (heartbeater, (random.Random(seed + 4), True)),
        (periodic, (random.Random(seed + 5), "fail", 0.2, 0.9,
                    lambda r, i: ("POST", f"/sessions/{sid}/mark-failed",
                                  {"reason": f"fail-{i}"}))),
        (periodic, (random.Random(seed + 6), "stall", 0.2, 0.9,
                    lambda r, i: ("POST", f"/sessions/{sid}/mark-stalled",
                                  {"reason": f"stall-{i}"}))),
        (putter, (random.Random(seed + 7),)),
        (recoverer, (random.Random(seed + 8),)),
    ]
    threads = [threading.Thread(target=fn, args=args, daemon=True) for fn, args in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RUN_S + 30)
    assert not any(t.is_alive() for t in threads), "workload threads did not finish"
    return calls


def _stable_timeline(c, sid):
    """The timeline and the session document, read so that no sweep changed one in between."""
    for _ in range(10):
        before = session_events(c, sid)
        doc = get_session(c, sid)
        after = session_events(c, sid)
        if before == after:
            return after, doc
    raise AssertionError("the timeline kept changing while the session was idle")


def _check_history(calls, events, doc, ctx=""):
    """Check a recorded workload against the session's timeline; return counts for the caller.

    calls: every request made (Call), the creation included (kind "create"); events: the
    session's whole timeline; doc: the session document read after the workload."""
    created = next(x for x in calls if x.kind == "create")
    sid = created.body["session_id"]

    # --- every request got a well-formed answer -------------------------------------------
    broken = [x for x in calls if x.code is None]
    assert not broken, f"requests without an answer {ctx}: {broken[:5]}"
    allowed = {"create": {201}, "hb": {200, 400, 409}, "fail": {200}, "stall": {200, 400},
               "put": {200}, "recover": {200}}
    odd = [x for x in calls if x.code not in allowed[x.kind]]
    assert not odd, f"unexpected status codes {ctx}: {odd[:5]}"

    # --- the timeline itself ---------------------------------------------------------------
    seqs = [e["seq"] for e in events]
    assert all(a < b for a, b in zip(seqs, seqs[1:])), f"seq not increasing {ctx}"
    assert events[0]["type"] == "session.created" and events[0]["data"] == created.body
    unknown = {e["type"] for e in events} - EPOCH_RULE_TYPES
    assert not unknown, f"unexpected event types {unknown} {ctx}"
    for e in events:
        assert e["session_id"] == sid and e["data"]["session_id"] == sid

    # --- every acknowledged transition is in the timeline, as its own event ---------------
    # (matched on the returned document's updated_at, status and epoch; the metadata, which
    # carries each request's own reason or marker, keeps the keys unique)
    def doc_key(typ, d):
        if typ == "session.reactivated":
            return (typ, d["last_heartbeat"], d["status"], d["epoch"])
        return (typ, d["updated_at"], d["status"], d["epoch"],
                json.dumps(d.get("metadata"), sort_keys=True))

    by_key = {}
    for e in events:
        by_key.setdefault(doc_key(e["type"], e["data"]), []).append(e)
    anchors = [(events[0]["seq"], created.t0, created.t1, created)]  # (seq, start, end, call)
    matched = {events[0]["seq"]}
    acked = [x for x in calls if x.code == 200 and
             (x.kind in TRANSITION_EVENT or
              (x.kind == "hb" and x.body.get("message") == HB_REVIVED))]
    for x in sorted(acked, key=lambda x: x.t1):
        key = doc_key("session.reactivated" if x.kind == "hb" else TRANSITION_EVENT[x.kind],
                      x.body)
        free = [e for e in by_key.get(key, []) if e["seq"] not in matched]
        assert free, (f"acknowledged {x.kind} is missing from the timeline (overwritten or "
                      f"lost) {ctx}: {x}")
        e = free[0]
        matched.add(e["seq"])
        anchors.append((e["seq"], x.t0, x.t1, x))
    n_events = {t: sum(1 for e in events if e["type"] == t) for t in EPOCH_RULE_TYPES}
    n_matched = {t: sum(1 for e in events if e["seq"] in matched and e["type"] == t)
                 for t in EPOCH_RULE_TYPES}
    for t in ("session.failed", "session.recovered", "session.updated", "session.reactivated"):
        assert n_matched[t] == n_events[t], (
            f"{n_events[t] - n_matched[t]} {t} events no acknowledged request explains {ctx}")

    # --- their order agrees with what the clients saw -------------------------------------
    anchors.sort(key=lambda a: a[0])
    for i, (sa, a0, a1, wa) in enumerate(anchors):
        for sb, b0, b1, wb in anchors[i + 1:]:
            # b committed after a (higher seq), so b cannot have finished before a started
            assert not (b1 < a0), (f"event order contradicts completion order {ctx}:\n"
                                   f"  seq {sa}: {wa}\n  seq {sb}: {wb}")

    # --- the history obeys the lifecycle rules ---------------------------------------------
    state_after = {}
    prev = events[0]["data"]
    state_after[events[0]["seq"]] = prev
    recovered_seqs = []
    sweeper_stalls = 0
    for e in events[1:]:
        d, t = e["data"], e["type"]
        where = f"seq {e['seq']} {t} after {prev['status']}@{prev['epoch']} {ctx}"
        if t == "session.recovered":
            assert d["epoch"] == prev["epoch"] + 1, f"epoch must grow by one: {where}"
            assert prev["status"] != "completed" and d["status"] == "active", where
            recovered_seqs.append(e["seq"])
        else:
            assert d["epoch"] == prev["epoch"], f"epoch changed without a recovery: {where}"
        if t == "session.reactivated":
            assert prev["status"] == "stalled", f"heartbeat revived a non-stalled session: {where}"
            assert d["status"] == "active", where
        elif t == "session.failed":
            assert prev["status"] != "completed" and d["status"] == "failed", where
        elif t == "session.stalled":
            assert prev["status"] not in ("completed", "failed"), f"stalled a {where}"
            assert d["status"] == "stalled", where
            if e["seq"] not in matched:  # the sweeper
                sweeper_stalls += 1
                assert prev["status"] == "active", f"sweeper stalled a non-active session: {where}"
                assert parse_iso(d["deadline_at"]) < parse_iso(e["occurred_at"]), (
                    f"sweeper stalled before the deadline: {where} {d['deadline_at']}")
        elif t == "session.updated":
            if d["status"] == "active" and prev["status"] != "active":
                assert ms_between(d["updated_at"], d["deadline_at"]) >= \
                    d["heartbeat_timeout_s"] * 1000, f"resumed without a full timeout: {where}"
        prev = d
        state_after[e["seq"]] = d
    assert (doc["status"], doc["epoch"]) == (prev["status"], prev["epoch"]), (
        f"the session is not in the state its last event recorded {ctx}", doc, prev)

    # --- every heartbeat (and refusal) agrees with the history around it ------------------
    # A request committed after every anchored event that finished before it started and
    # before every anchored event that started after it finished: it saw the state after one
    # of the events in between (sweeper stalls included).
    anchor_bounds = [(s, a0, a1) for s, a0, a1, _ in anchors]
    ordered = [e["seq"] for e in events]

    def window_of(x):
        lo = max((s for s, a0, a1 in anchor_bounds if a1 < x.t0), default=ordered[0])
        hi = min((s for s, a0, a1 in anchor_bounds if a0 > x.t1), default=float("inf"))
        window = [state_after[s] for s in ordered if lo <= s < hi]
        assert window, (x, lo, hi)
        return lo, hi, [(w["status"], w["epoch"]) for w in window]

    for x in (x for x in calls if x.kind == "stall" and x.code == 400):
        _, _, seen = window_of(x)
        m = re.fullmatch(r"Cannot mark (failed|completed) session as stalled",
                         x.body.get("message", ""))
        assert m, x
        assert any(st == m.group(1) for st, _ in seen), (
            f"mark-stalled refused as {m.group(1)} but the history says {seen}: {x} {ctx}")

    counts = {"hb_ok": 0, "hb_409": 0, "hb_400": 0, "sweeper_stalls": sweeper_stalls,
              **{t: n for t, n in n_events.items()}}
    for x in (x for x in calls if x.kind == "hb"):
        lo, hi, seen = window_of(x)
        sent = (x.sent or {}).get("epoch")
        b = x.body
        if x.code == 200:
            counts["hb_ok"] += 1
            if sent is not None:
                assert b["epoch"] == sent, f"heartbeat with epoch {sent} answered {x} {ctx}"
            if b["message"] == HB_OK:
                assert (b["status"], b["epoch"]) in seen and b["status"] in (
                    "active", "paused", "awaiting_input"), (
                    f"heartbeat reply contradicts the history: {x} saw {seen} {ctx}")
            # an acknowledged heartbeat is not undone by a later write's stale read (a
            # recovery sets its own last_heartbeat, so the check stops at one)
            lh = parse_iso(b["last_heartbeat"])
            for s_ in ordered:
                if s_ < hi or any(lo <= r <= s_ for r in recovered_seqs):
                    continue
                assert parse_iso(state_after[s_]["last_heartbeat"]) >= lh, (
                    f"seq {s_} carries a last_heartbeat older than the acknowledged {x} {ctx}")
        elif x.code == 409:
            counts["hb_409"] += 1
            assert b["error_code"] == "stale_epoch" and b["directive"] == "stop", x
            assert sent is not None and sent < b["current_epoch"], (
                f"409 for an epoch that was not older than the current one: {x} {ctx}")
            assert b["current_epoch"] in {ep for _, ep in seen}, (
                f"409 names an epoch the session did not have then: {x} saw {seen} {ctx}")
        else:
            counts["hb_400"] += 1
            m = re.fullmatch(r"Cannot update heartbeat for (failed|completed) session",
                             b.get("message", ""))
            assert m, x
            ok = [(st, ep) for st, ep in seen
                  if st == m.group(1) and (sent is None or ep == sent)]
            assert ok, f"heartbeat refused as {m.group(1)} but the history says {seen}: {x} {ctx}"
    return counts


def test_no_transition_is_lost_under_concurrent_hammering(start_server):
    """One session, hammered at once by heartbeats (with and without epochs, some stale),
    mark-failed, mark-stalled, PUT status changes, three recoveries and the sweeper. Every
    acknowledged transition must be in the recorded history, in an order consistent with what
    the clients saw, and the history must obey the lifecycle rules."""
    srv = start_server([*NO_LIMITS, "--sweep-interval-s", "1"])
    c = srv.client()
    seed = random.randrange(1 << 30)
    t0 = time.monotonic()
    created = create_session(c, heartbeat_timeout_s=1)
    creation = Call("create", t0, time.monotonic(), 201, created, None)
    calls = [creation] + _hammer(srv, created["session_id"], seed)
    events, doc = _stable_timeline(c, created["session_id"])
    counts = _check_history(calls, events, doc,
                            f"(seed {seed}; {len(calls)} requests, {len(events)} events)")
    print("hammer:", counts)
    recovers = sorted((x for x in calls if x.kind == "recover"), key=lambda x: x.t1)
    assert [x.body["epoch"] for x in recovers] == [2, 3, 4], recovers
    assert doc["epoch"] == 4
    # the workload really raced: failures, refusals and fenced heartbeats all happened
    assert counts["session.failed"] >= 1 and counts["session.stalled"] >= 1, counts
    assert counts["hb_400"] >= 1 and counts["hb_409"] >= 1 and counts["hb_ok"] >= 50, counts


# --- the checker itself must catch lost transitions (synthetic histories, no server) ---------

def _synthetic(*steps):
    """Build (calls, events, doc) from steps (kind, t0, t1, code, status, epoch, message).

    kind "event:<type>" appends an event without a request (what a buggy server might write);
    transitions append their event and return the document; heartbeats append no event unless
    they revive."""
    sid = "00000000-0000-4000-8000-000000000001"
    ms = [0]

    def doc(status, epoch, meta):
        ms[0] += 1
        t = iso(now_utc().replace(microsecond=0) + timedelta(milliseconds=ms[0]))
        return {"session_id": sid, "status": status, "epoch": epoch, "updated_at": t,
                "last_heartbeat": t, "deadline_at": iso(parse_iso(t) + timedelta(seconds=1)),
                "heartbeat_timeout_s": 1, "metadata": meta}

    created = doc("active", 1, {})
    calls = [Call("create", 0.0, 0.01, 201, created, None)]
    events = [{"seq": 1, "type": "session.created", "session_id": sid, "data": created,
               "occurred_at": created["updated_at"]}]
    evtype = {"fail": "session.failed", "stall": "session.stalled", "put": "session.updated",
              "recover": "session.recovered"}
    for i, (kind, t0, t1, code, status, epoch, extra) in enumerate(steps):
        d = doc(status, epoch, {"step": i})
        if kind.startswith("event:"):
            events.append({"seq": len(events) + 1, "type": kind[6:], "session_id": sid,
                           "data": d, "occurred_at": d["updated_at"]})
            continue
        if kind == "hb":
            sent = {"epoch": extra} if isinstance(extra, int) else None
            if code == 200:
                body = {"session_id": sid, "status": status, "epoch": epoch,
                        "last_heartbeat": d["last_heartbeat"],
                        "message": extra if isinstance(extra, str) else HB_OK}
            elif code == 409:
                body = {"error_code": "stale_epoch", "directive": "stop",
                        "current_epoch": epoch, "message": "stale"}
            else:
                body = {"message": f"Cannot update heartbeat for {status} session"}
            calls.append(Call("hb", t0, t1, code, body, sent))
            if code == 200 and body["message"] == HB_REVIVED:
                events.append({"seq": len(events) + 1, "type": "session.reactivated",
                               "session_id": sid, "data": d, "occurred_at": d["updated_at"]})
            continue
        calls.append(Call(kind, t0, t1, code, d, {}))
        if code == 200 and not extra == "lost":
            events.append({"seq": len(events) + 1, "type": evtype[kind], "session_id": sid,
                           "data": d, "occurred_at": d["updated_at"]})
    last = events[-1]["data"]
    return calls, events, {"status": last["status"], "epoch": last["epoch"]}


def test_history_checker_accepts_a_consistent_history():
    calls, events, doc = _synthetic(
        ("stall", 1.0, 1.1, 200, "stalled", 1, None),
        ("hb", 1.2, 1.3, 200, "active", 1, HB_REVIVED),
        ("fail", 1.4, 1.5, 200, "failed", 1, None),
        ("hb", 1.6, 1.7, 400, "failed", 1, None),
        ("recover", 1.8, 1.9, 200, "active", 2, None),
        ("hb", 2.0, 2.1, 409, "active", 2, 1),
        ("hb", 2.0, 2.1, 200, "active", 2, 2),
    )
    _check_history(calls, events, doc)


REJECTED_HISTORIES = {
    # the reference's race: a heartbeat read `stalled`, mark-failed committed, and the
    # heartbeat then wrote `active` over it
    "heartbeat_revives_a_failed_session": (
        [("stall", 1.0, 1.1, 200, "stalled", 1, None),
         ("fail", 1.2, 1.3, 200, "failed", 1, None),
         ("hb", 1.15, 1.4, 200, "active", 1, HB_REVIVED)],
        "revived a non-stalled session"),
    # the same without an event: a heartbeat reports `active` right after an acknowledged
    # mark-failed with nothing in between
    "heartbeat_silently_overwrites_failed": (
        [("fail", 1.0, 1.1, 200, "failed", 1, None),
         ("hb", 1.2, 1.3, 200, "active", 1, None)],
        "heartbeat reply contradicts the history"),
    "mark_failed_lost": (
        [("fail", 1.0, 1.1, 200, "failed", 1, "lost"),
         ("put", 1.2, 1.3, 200, "active", 1, None)],
        "acknowledged fail is missing from the timeline"),
    "order_reversed": (
        [("put", 1.5, 1.6, 200, "paused", 1, None),
         ("fail", 1.0, 1.1, 200, "failed", 1, None)],
        "event order contradicts completion order"),
    "stale_409_for_current_epoch": (
        [("hb", 1.0, 1.1, 409, "active", 1, 1)],
        "not older than the current one"),
    "epoch_moves_without_recovery": (
        [("event:session.stalled", 0, 0, 0, "stalled", 2, None)],
        "epoch changed without a recovery"),
}


@pytest.mark.parametrize("case", sorted(REJECTED_HISTORIES))
def test_history_checker_rejects_lost_transitions(case):
    steps, why = REJECTED_HISTORIES[case]
    calls, events, doc = _synthetic(*steps)
    with pytest.raises(AssertionError, match=why):
        _check_history(calls, events, doc)
