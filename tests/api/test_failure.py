"""Failure handling: GET /sessions/failed, failure-info, mark-failed, mark-stalled (§4.4)."""
from datetime import timedelta

import pytest

from st_helpers import (assert_error, assert_recent, assert_validation, backdate,
                        create_machine, create_session, create_task, expect, get_machine,
                        get_session, iso, parse_iso, put_session, session_in_status, tick, uid)


def _mark_failed(c, sid, **body):
    body.setdefault("reason", "boom")
    return expect(c.post(f"/sessions/{sid}/mark-failed", json=body), 200)


def _mark_stalled(c, sid, reason="quiet"):
    return expect(c.post(f"/sessions/{sid}/mark-stalled", json={"reason": reason}), 200)


# --- GET /sessions/failed ----------------------------------------------------------------------

def test_failed_list_filters_order_pagination(client):
    proj = uid("proj")
    m1 = uid("m")
    ids = []
    for i in range(4):
        s = create_session(client, project_id=proj, machine_id=m1 if i % 2 == 0 else uid("m"))
        _mark_failed(client, s["session_id"])
        ids.append(s["session_id"])
        tick()
    for st in ("active", "stalled", "completed", "paused"):
        session_in_status(client, st, project_id=proj)
    got = expect(client.get("/sessions/failed", params={"project_id": proj}), 200)
    assert [s["session_id"] for s in got] == list(reversed(ids))  # completed_at desc
    assert all(s["status"] == "failed" for s in got)
    assert "_id" in got[0] and "metadata" in got[0]
    got = expect(client.get("/sessions/failed",
                            params={"project_id": proj, "machine_id": m1}), 200)
    assert [s["session_id"] for s in got] == [ids[2], ids[0]]
    got = expect(client.get("/sessions/failed",
                            params={"project_id": proj, "limit": 2, "offset": 1}), 200)
    assert [s["session_id"] for s in got] == [ids[2], ids[1]]


def test_failed_sorted_by_completed_at_not_creation(client):
    proj = uid("proj")
    a = create_session(client, project_id=proj)
    b = create_session(client, project_id=proj)
    _mark_failed(client, b["session_id"])
    tick()
    _mark_failed(client, a["session_id"])
    got = expect(client.get("/sessions/failed", params={"project_id": proj}), 200)
    assert [s["session_id"] for s in got] == [a["session_id"], b["session_id"]]


def test_failed_default_limit(client):
    proj = uid("proj")
    for _ in range(21):
        _mark_failed(client, create_session(client, project_id=proj)["session_id"])
    assert len(expect(client.get("/sessions/failed", params={"project_id": proj}), 200)) == 20


@pytest.mark.parametrize("query,messages", [
    ("foo=1", ["property foo should not exist"]),
    ("status=failed", ["property status should not exist"]),
    ("limit=101", ["limit must not be greater than 100"]),
    ("limit=0", ["limit must not be less than 1"]),
    ("limit=abc", []),
    ("offset=-1", ["offset must not be less than 0"]),
])
def test_failed_list_validation(client, query, messages):
    assert_validation(client.get("/sessions/failed?" + query), *messages)


# --- GET /sessions/:id/failure-info ------------------------------------------------------------

def test_failure_info_unknown_404(client):
    assert_error(client.get("/sessions/nope-fi/failure-info"), 404,
                 "Session with ID nope-fi not found")


@pytest.mark.parametrize("status", ["active", "paused", "stalled", "completed", "archived"])
def test_failure_info_requires_failed(client, status):
    s = session_in_status(client, status)
    assert_error(client.get(f"/sessions/{s['session_id']}/failure-info"), 400,
                 f"Session is not in failed state (current status: {status})")


def test_failure_info_full(client):
    s = create_session(client, docker_slot=2)
    sid, proj = s["session_id"], s["project_id"]
    t1 = create_task(client, sid, project_id=proj, task_name="first")
    t2 = create_task(client, sid, project_id=proj, task_name="second")
    t3 = create_task(client, sid, project_id=proj, task_name="stuck-a")
    t4 = create_task(client, sid, project_id=proj, task_name="stuck-b")
    create_task(client, sid, project_id=proj, task_name="still-pending")
    expect(client.put(f"/tasks/{t3['task_id']}", json={"status": "in_progress"}), 200)
    expect(client.put(f"/tasks/{t4['task_id']}", json={"status": "in_progress"}), 200)
    expect(client.post(f"/tasks/{t1['task_id']}/complete"), 200)
    tick()
    expect(client.post(f"/tasks/{t2['task_id']}/complete"), 200)
    put_session(client, sid, current_task_id=t3["task_id"])
    failed = _mark_failed(client, sid, reason="OOM",
                          error_details={"error_code": "E42", "detail": {"x": 1}})
    fi = expect(client.get(f"/sessions/{sid}/failure-info"), 200)
    assert fi["session_id"] == sid
    assert fi["project_id"] == proj
    assert fi["machine_id"] == s["machine_id"]
    assert fi["docker_slot"] == 2
    assert fi["status"] == "failed"
    assert fi["failure_reason"] == "OOM"
    assert fi["error_details"] == {"error_code": "E42", "detail": {"x": 1}}
    assert fi["failed_at"] == failed["completed_at"]
    assert fi["last_heartbeat"] == s["last_heartbeat"]
    assert fi["last_successful_task_id"] == t2["task_id"]
    assert fi["last_successful_task_name"] == "second"
    assert fi["current_task_id"] == t3["task_id"]
    assert fi["started_at"] == s["started_at"]
    assert fi["duration_minutes"] == 0
    a = fi["analysis"]
    assert a["is_very_stale"] is False
    assert a["has_stuck_tasks"] is True
    assert a["stuck_task_count"] == 2
    assert a["minutes_since_heartbeat"] == 0
    assert a["recovery_recommendations"] == [
        "Found 2 task(s) stuck in in_progress state",
        "Consider marking stuck tasks as failed or blocked before restarting",
        "Failure reason: OOM",
        "Error code: E42",
        "Check machine logs and system resources before reassigning work",
        "Docker slot 2 may need to be cleaned up or restarted",
        "Consider creating a new session on a different machine for recovery",
        f"Review current task {t3['task_id']} for potential issues",
    ]
    assert fi["session"] == get_session(client, sid)


def test_failure_info_minimal(client):
    s = create_session(client)
    sid = s["session_id"]
    _mark_failed(client, sid, reason="")
    fi = expect(client.get(f"/sessions/{sid}/failure-info"), 200)
    assert fi["failure_reason"] == "Unknown"
    for k in ("error_details", "docker_slot", "current_task_id", "last_successful_task_id",
              "last_successful_task_name"):
        assert k not in fi, k
    a = fi["analysis"]
    assert a["has_stuck_tasks"] is False
    assert a["stuck_task_count"] == 0
    assert a["is_very_stale"] is False
    assert a["recovery_recommendations"] == [
        "Check machine logs and system resources before reassigning work",
        "Consider creating a new session on a different machine for recovery",
    ]


def test_failure_info_very_stale(client):
    s = create_session(client)
    sid = s["session_id"]
    backdate(client, sid, 20 * 60 + 5)
    _mark_failed(client, sid, reason="gone")
    fi = expect(client.get(f"/sessions/{sid}/failure-info"), 200)
    a = fi["analysis"]
    assert a["minutes_since_heartbeat"] == 20
    assert a["is_very_stale"] is True
    assert a["recovery_recommendations"][0] == "Session has been unresponsive for 20 minutes"
    assert a["recovery_recommendations"][1] == "Failure reason: gone"


def test_failure_info_not_very_stale_at_15_minutes(client):
    s = create_session(client)
    sid = s["session_id"]
    backdate(client, sid, 15 * 60 + 20)
    _mark_failed(client, sid, reason="r")
    a = expect(client.get(f"/sessions/{sid}/failure-info"), 200)["analysis"]
    assert a["minutes_since_heartbeat"] == 15
    assert a["is_very_stale"] is False


def test_failure_info_duration_and_failed_at_from_completed_at(client):
    s = create_session(client)
    sid = s["session_id"]
    done = iso(parse_iso(s["started_at"]) + timedelta(minutes=125, seconds=30))
    put_session(client, sid, status="failed", completed_at=done)
    fi = expect(client.get(f"/sessions/{sid}/failure-info"), 200)
    assert fi["failed_at"] == done
    assert fi["duration_minutes"] == 125


def test_failure_info_failed_without_completed_at(client):
    s = create_session(client)
    sid = s["session_id"]
    put_session(client, sid, status="failed")  # PUT does not set completed_at
    fi = expect(client.get(f"/sessions/{sid}/failure-info"), 200)
    assert_recent(fi["failed_at"], 5)
    assert fi["failure_reason"] == "Unknown"
    assert fi["duration_minutes"] == 0


def test_failure_info_reason_from_put_metadata(client):
    s = create_session(client)
    sid = s["session_id"]
    put_session(client, sid, status="failed",
                metadata={"failure_reason": "by hand", "error_details": {"error_code": 7}})
    fi = expect(client.get(f"/sessions/{sid}/failure-info"), 200)
    recs = fi["analysis"]["recovery_recommendations"]
    assert fi["failure_reason"] == "by hand"
    assert "Failure reason: by hand" in recs
    assert "Error code: 7" in recs


# --- POST /sessions/:id/mark-failed ------------------------------------------------------------

@pytest.mark.parametrize("status", ["active", "paused", "stalled", "archived"])
def test_mark_failed_allowed(client, status):
    s = session_in_status(client, status, metadata={"keep": "me"})
    sid = s["session_id"]
    before = get_session(client, sid)
    u = _mark_failed(client, sid, reason="disk full", error_details={"code": 28})
    assert u["status"] == "failed"
    if status == "archived":
        # archived came from completed: completed_at is overwritten by the failure time
        assert parse_iso(u["completed_at"]) >= parse_iso(before["completed_at"])
    assert_recent(u["completed_at"], 5)
    md = u["metadata"]
    assert md["keep"] == "me"
    assert md["failure_reason"] == "disk full"
    assert md["error_details"] == {"code": 28}
    assert_recent(md["failure_timestamp"], 5)
    assert u["last_heartbeat"] == before["last_heartbeat"]
    assert get_session(client, sid) == u


def test_mark_failed_twice_keeps_completed_at_and_old_details(client):
    s = create_session(client)
    sid = s["session_id"]
    first = _mark_failed(client, sid, reason="one", error_details={"a": 1})
    tick()
    second = _mark_failed(client, sid, reason="two")
    assert second["completed_at"] == first["completed_at"]
    assert second["metadata"]["failure_reason"] == "two"
    assert second["metadata"]["error_details"] == {"a": 1}
    assert parse_iso(second["metadata"]["failure_timestamp"]) >= \
        parse_iso(first["metadata"]["failure_timestamp"])
    third = _mark_failed(client, sid, reason="three", error_details={"b": 2})
    assert third["metadata"]["error_details"] == {"b": 2}
    assert third["completed_at"] == first["completed_at"]


def test_mark_failed_empty_reason_allowed(client):
    s = create_session(client)
    u = _mark_failed(client, s["session_id"], reason="")
    assert u["metadata"]["failure_reason"] == ""
    assert "error_details" not in u["metadata"]


def test_mark_failed_completed_refused(client):
    s = session_in_status(client, "completed")
    assert_error(client.post(f"/sessions/{s['session_id']}/mark-failed", json={"reason": "x"}),
                 400, "Cannot mark completed session as failed")
    assert get_session(client, s["session_id"]) == s


def test_mark_failed_does_not_touch_machine(client):
    m = create_machine(client)
    s = create_session(client)
    expect(client.post(f"/machines/{m['machine_id']}/assign-session",
                       json={"session_id": s["session_id"]}), 201)
    _mark_failed(client, s["session_id"])
    assert get_machine(client, m["machine_id"])["active_sessions"] == [s["session_id"]]


def test_mark_failed_unknown_404(client):
    assert_error(client.post("/sessions/nope-mf/mark-failed", json={"reason": "x"}), 404,
                 "Session with ID nope-mf not found")


@pytest.mark.parametrize("payload,messages", [
    ({}, ["reason must be a string"]),
    ({"reason": 5}, ["reason must be a string"]),
    ({"reason": None}, ["reason must be a string"]),
    ({"reason": "x", "error_details": "y"}, ["error_details must be an object"]),
    ({"reason": "x", "error_details": [1]}, ["error_details must be an object"]),
    ({"reason": "x", "status": "failed"}, ["property status should not exist"]),
])
def test_mark_failed_validation(client, payload, messages):
    s = create_session(client)
    assert_validation(client.post(f"/sessions/{s['session_id']}/mark-failed", json=payload),
                      *messages)
    assert get_session(client, s["session_id"])["status"] == "active"
    # schema is checked before existence
    assert_validation(client.post("/sessions/nope-x/mark-failed", json=payload), *messages)


# --- POST /sessions/:id/mark-stalled -----------------------------------------------------------

@pytest.mark.parametrize("status", ["active", "paused", "stalled", "archived"])
def test_mark_stalled_allowed(client, status):
    s = session_in_status(client, status, metadata={"keep": 1})
    sid = s["session_id"]
    before = get_session(client, sid)
    u = _mark_stalled(client, sid, reason="no output")
    assert u["status"] == "stalled"
    assert u["metadata"]["keep"] == 1
    assert u["metadata"]["stalled_reason"] == "no output"
    assert_recent(u["metadata"]["stalled_timestamp"], 5)
    for k in ("last_heartbeat", "started_at", "machine_id", "epoch", "deadline_at"):
        assert u[k] == before[k], k
    assert u.get("completed_at") == before.get("completed_at")
    assert get_session(client, sid) == u


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_mark_stalled_refused(client, status):
    s = session_in_status(client, status)
    assert_error(client.post(f"/sessions/{s['session_id']}/mark-stalled", json={"reason": "x"}),
                 400, f"Cannot mark {status} session as stalled")
    assert get_session(client, s["session_id"]) == s


def test_mark_stalled_unknown_404(client):
    assert_error(client.post("/sessions/nope-ms/mark-stalled", json={"reason": "x"}), 404,
                 "Session with ID nope-ms not found")


@pytest.mark.parametrize("payload,messages", [
    ({}, ["reason must be a string"]),
    ({"reason": 1}, ["reason must be a string"]),
    ({"reason": "x", "extra": 1}, ["property extra should not exist"]),
])
def test_mark_stalled_validation(client, payload, messages):
    s = create_session(client)
    assert_validation(client.post(f"/sessions/{s['session_id']}/mark-stalled", json=payload),
                      *messages)
    assert_validation(client.post("/sessions/nope-y/mark-stalled", json=payload), *messages)
