"""Recovery: recoverable list, prepare-recovery, recover, recovery-history (§4.6)."""
import pytest

from st_helpers import (NUMBER_MSG, assert_error, assert_recent, assert_validation, backdate,
                        create_session, create_task, expect, get_session, iso_ago, ms_between,
                        parse_iso,
                        put_session, session_in_status, tick, uid)

MAX_MSG = "Maximum recovery attempts (3) reached for this session"


def _recover(c, sid, body=None, status=200):
    kw = {} if body is None else {"json": body}
    return expect(c.post(f"/sessions/{sid}/recover", **kw), status)


def _prepare(c, sid):
    return expect(c.post(f"/sessions/{sid}/prepare-recovery"), 200)


def _exhaust(c, sid):
    for _ in range(3):
        _recover(c, sid)


# --- GET /sessions/recoverable -----------------------------------------------------------------

REC_KEYS = {"session_id", "project_id", "status", "machine_id", "recovery_attempts",
            "last_heartbeat", "minutes_since_heartbeat", "can_recover"}


def _recoverable(c, proj, **params):
    return expect(c.get("/sessions/recoverable", params={"project_id": proj, **params}), 200)


def test_recoverable_lists_failed_and_stalled(client):
    proj = uid("proj")
    f = create_session(client, project_id=proj, docker_slot=3)
    put_session(client, f["session_id"], current_task_id="t-9")
    backdate(client, f["session_id"], 600)
    f = expect(client.post(f"/sessions/{f['session_id']}/mark-failed", json={"reason": "x"}), 200)
    st = session_in_status(client, "stalled", project_id=proj)
    for other in ("active", "paused", "completed", "archived"):
        session_in_status(client, other, project_id=proj)
    got = _recoverable(client, proj)
    assert [x["session_id"] for x in got] == [f["session_id"], st["session_id"]]  # oldest first
    a, b = got
    assert REC_KEYS <= set(a)
    assert a["status"] == "failed"
    assert a["project_id"] == proj and a["machine_id"] == f["machine_id"]
    assert a["docker_slot"] == 3
    assert a["current_task_id"] == "t-9"
    assert a["recovery_attempts"] == 0
    assert a["last_heartbeat"] == f["last_heartbeat"]
    assert a["failed_at"] == f["completed_at"]
    assert a["minutes_since_heartbeat"] == 10
    assert a["can_recover"] is True
    assert "recovery_blocked_reason" not in a
    assert b["status"] == "stalled"
    for k in ("failed_at", "docker_slot", "current_task_id", "recovery_blocked_reason"):
        assert k not in b, k
    assert b["minutes_since_heartbeat"] == 0


def test_recoverable_at_limit_still_listed(client):
    proj = uid("proj")
    s = create_session(client, project_id=proj)
    sid = s["session_id"]
    _exhaust(client, sid)
    expect(client.post(f"/sessions/{sid}/mark-failed", json={"reason": "again"}), 200)
    got = _recoverable(client, proj)
    assert len(got) == 1
    assert got[0]["recovery_attempts"] == 3
    assert got[0]["can_recover"] is False
    assert got[0]["recovery_blocked_reason"] == "Maximum recovery attempts reached"


def test_recoverable_age_filters(client):
    proj = uid("proj")
    old = session_in_status(client, "stalled", project_id=proj)
    put_session(client, old["session_id"], last_heartbeat=iso_ago(30 * 60))
    new = session_in_status(client, "stalled", project_id=proj)
    put_session(client, new["session_id"], last_heartbeat=iso_ago(2 * 60))
    ids = lambda lst: [x["session_id"] for x in lst]  # noqa: E731
    assert ids(_recoverable(client, proj)) == [old["session_id"], new["session_id"]]
    assert ids(_recoverable(client, proj, max_age_minutes=10)) == [new["session_id"]]
    assert ids(_recoverable(client, proj, min_age_minutes=10)) == [old["session_id"]]
    assert ids(_recoverable(client, proj, min_age_minutes=0)) == \
        [old["session_id"], new["session_id"]]
    assert ids(_recoverable(client, proj, min_age_minutes=5, max_age_minutes=60)) == \
        [old["session_id"]]
    assert _recoverable(client, proj, min_age_minutes=40) == []


def test_recoverable_machine_filter(client):
    proj, m = uid("proj"), uid("m")
    a = session_in_status(client, "failed", project_id=proj, machine_id=m)
    session_in_status(client, "failed", project_id=proj)
    got = _recoverable(client, proj, machine_id=m)
    assert [x["session_id"] for x in got] == [a["session_id"]]


@pytest.mark.parametrize("query,messages", [
    ("session_id=x", ["property session_id should not exist"]),
    ("limit=5", ["property limit should not exist"]),
    ("max_age_minutes=0", ["max_age_minutes must not be less than 1"]),
    ("min_age_minutes=-1", ["min_age_minutes must not be less than 0"]),
    ("max_age_minutes=abc", [f"max_age_minutes {NUMBER_MSG}"]),
    ("min_age_minutes=abc", [f"min_age_minutes {NUMBER_MSG}"]),
])
def test_recoverable_validation(client, query, messages):
    assert_validation(client.get("/sessions/recoverable?" + query), *messages)


# --- POST /sessions/:id/prepare-recovery -------------------------------------------------------

def test_prepare_recovery_response_and_checkpoint(client):
    s = create_session(client, docker_slot=2, metadata={"user": "x"})
    sid = s["session_id"]
    put_session(client, sid, current_task_id="task-7")
    failed = expect(client.post(f"/sessions/{sid}/mark-failed", json={"reason": "r"}), 200)
    md_before = failed["metadata"]
    p = _prepare(client, sid)
    assert p["session_id"] == sid
    assert p["status"] == "failed"
    assert p["last_task_id"] == "task-7"
    assert p["machine_id"] == s["machine_id"]
    assert p["docker_slot"] == 2
    assert p["recovery_attempts"] == 0
    assert_recent(p["recovery_checkpoint_at"], 5)
    assert p["metadata"] == md_before
    g = get_session(client, sid)
    assert g["status"] == "failed"  # unchanged
    assert g["epoch"] == 1          # only recover bumps the epoch
    rec = g["metadata"]["recovery"]
    assert rec["recovery_attempts"] == 0
    assert rec["last_checkpoint_at"] == p["recovery_checkpoint_at"]
    assert len(rec["recovery_checkpoints"]) == 1
    cp = rec["recovery_checkpoints"][0]
    assert cp["captured_at"] == p["recovery_checkpoint_at"]
    assert cp["status"] == "failed"
    assert cp["machine_id"] == s["machine_id"]
    assert cp["docker_slot"] == 2
    assert cp["current_task_id"] == "task-7"
    assert cp["last_heartbeat"] == s["last_heartbeat"]
    assert cp["metadata_snapshot"] == md_before
    # user metadata survives
    assert g["metadata"]["user"] == "x"
    assert g["metadata"]["failure_reason"] == "r"


def test_prepare_recovery_optional_keys_absent(client):
    s = session_in_status(client, "stalled")
    p = _prepare(client, s["session_id"])
    assert "last_task_id" not in p
    assert "docker_slot" not in p
    assert p["status"] == "stalled"
    assert p["metadata"] == s["metadata"]


def test_prepare_recovery_checkpoints_append_and_snapshot_excludes_recovery(client):
    s = session_in_status(client, "failed")
    sid = s["session_id"]
    p1 = _prepare(client, sid)
    tick()
    p2 = _prepare(client, sid)
    assert "recovery" in p2["metadata"]  # the pre-call metadata, returned as is
    rec = get_session(client, sid)["metadata"]["recovery"]
    assert [c["captured_at"] for c in rec["recovery_checkpoints"]] == \
        [p1["recovery_checkpoint_at"], p2["recovery_checkpoint_at"]]
    assert rec["last_checkpoint_at"] == p2["recovery_checkpoint_at"]
    for cp in rec["recovery_checkpoints"]:
        assert "recovery" not in cp["metadata_snapshot"]


def test_prepare_after_recover_keeps_history(client):
    s = session_in_status(client, "failed")
    sid = s["session_id"]
    r = _recover(client, sid, {"new_machine_id": "m2"})
    p = _prepare(client, sid)
    assert p["recovery_attempts"] == 1
    assert p["status"] == "active"
    rec = get_session(client, sid)["metadata"]["recovery"]
    assert rec["recovery_attempts"] == 1
    assert rec["last_recovery_at"] == r["metadata"]["recovery"]["last_recovery_at"]
    assert len(rec["recovery_history"]) == 1
    assert rec["last_checkpoint_at"] == p["recovery_checkpoint_at"]
    h = expect(client.get(f"/sessions/{sid}/recovery-history"), 200)
    assert h["total_attempts"] == 1


@pytest.mark.parametrize("status", ["active", "paused", "stalled", "failed", "archived"])
def test_prepare_allowed_statuses(client, status):
    s = session_in_status(client, status)
    p = _prepare(client, s["session_id"])
    assert p["status"] == status
    assert get_session(client, s["session_id"])["status"] == status


def test_prepare_refused_for_completed(client):
    s = session_in_status(client, "completed")
    assert_error(client.post(f"/sessions/{s['session_id']}/prepare-recovery"), 400,
                 "Cannot prepare recovery for completed sessions")


def test_prepare_refused_at_limit(client):
    s = create_session(client)
    _exhaust(client, s["session_id"])
    assert_error(client.post(f"/sessions/{s['session_id']}/prepare-recovery"), 400, MAX_MSG)


def test_prepare_unknown_404_and_body_ignored(client):
    assert_error(client.post("/sessions/nope-pr/prepare-recovery"), 404,
                 "Session with ID nope-pr not found")
    s = session_in_status(client, "failed")
    expect(client.post(f"/sessions/{s['session_id']}/prepare-recovery", json={"bogus": 1}), 200)


# --- POST /sessions/:id/recover ----------------------------------------------------------------

def test_recover_full(client):
    s = create_session(client, docker_slot=1)
    sid = s["session_id"]
    t = create_task(client, sid)
    failed = expect(client.post(f"/sessions/{sid}/mark-failed", json={"reason": "x"}), 200)
    cp = _prepare(client, sid)
    tick()
    r = _recover(client, sid, {"new_machine_id": "machine-3", "new_docker_slot": 4,
                               "resume_from_task_id": t["task_id"]})
    assert r["status"] == "active"
    assert r["machine_id"] == "machine-3"
    assert r["docker_slot"] == 4
    assert r["current_task_id"] == t["task_id"]
    assert parse_iso(r["last_heartbeat"]) > parse_iso(s["last_heartbeat"])
    assert_recent(r["last_heartbeat"], 5)
    assert r["completed_at"] == failed["completed_at"]  # not cleared
    assert r["epoch"] == 2
    assert r["metadata"]["failure_reason"] == "x"
    rec = r["metadata"]["recovery"]
    assert rec["recovery_attempts"] == 1
    assert_recent(rec["last_recovery_at"], 5)
    assert len(rec["recovery_history"]) == 1
    att = rec["recovery_history"][0]
    assert att["success"] is True
    assert att["attempted_at"] == rec["last_recovery_at"]
    assert att["new_machine_id"] == "machine-3"
    assert att["new_docker_slot"] == 4
    assert att["resumed_from_task_id"] == t["task_id"]
    assert len(rec["recovery_checkpoints"]) == 1
    assert rec["recovery_checkpoints"][0]["captured_at"] == cp["recovery_checkpoint_at"]
    g = get_session(client, sid)
    assert g == r
    assert ms_deadline(g) == g["heartbeat_timeout_s"] * 1000


def ms_deadline(s):
    return ms_between(s["last_heartbeat"], s["deadline_at"])


def test_recover_without_body(client):
    s = session_in_status(client, "stalled", docker_slot=2)
    sid = s["session_id"]
    r = _recover(client, sid)
    assert r["status"] == "active"
    assert r["machine_id"] == s["machine_id"]
    assert r["docker_slot"] == 2
    assert "current_task_id" not in r
    att = r["metadata"]["recovery"]["recovery_history"][0]
    assert att["success"] is True
    for k in ("new_machine_id", "new_docker_slot", "resumed_from_task_id"):
        assert k not in att, k  # unsupplied values are omitted
    assert r["metadata"]["recovery"]["recovery_checkpoints"] == []


def test_recover_with_empty_json_body_and_empty_machine(client):
    s = session_in_status(client, "failed")
    sid = s["session_id"]
    r = expect(client.post(f"/sessions/{sid}/recover", data=b"",
                           headers={"Content-Type": "application/json"}), 200)
    assert r["status"] == "active"
    r = _recover(client, sid, {"new_machine_id": ""})
    assert r["machine_id"] == s["machine_id"]  # empty string does not change the machine


def test_recover_epoch_and_attempts_count_up(client):
    s = session_in_status(client, "failed")
    sid = s["session_id"]
    for n in (1, 2, 3):
        r = _recover(client, sid, {"new_machine_id": f"m{n}"})
        assert r["epoch"] == 1 + n
        assert r["metadata"]["recovery"]["recovery_attempts"] == n
        assert len(r["metadata"]["recovery"]["recovery_history"]) == n
    assert_error(client.post(f"/sessions/{sid}/recover", json={}), 400, MAX_MSG)
    g = get_session(client, sid)
    assert g["epoch"] == 4
    assert g["machine_id"] == "m3"


@pytest.mark.parametrize("status", ["active", "paused", "stalled", "failed", "archived"])
def test_recover_allowed_statuses(client, status):
    s = session_in_status(client, status)
    r = _recover(client, s["session_id"])
    assert r["status"] == "active"
    assert r["metadata"]["recovery"]["recovery_attempts"] == 1


def test_recover_order_of_checks(client):
    # 404 session first
    assert_error(client.post("/sessions/nope-rc/recover", json={"resume_from_task_id": "x"}),
                 404, "Session with ID nope-rc not found")
    # completed before task checks
    done = session_in_status(client, "completed")
    assert_error(client.post(f"/sessions/{done['session_id']}/recover",
                             json={"resume_from_task_id": "no-such-task"}),
                 400, "Cannot recover completed sessions")
    # task checks before the attempt limit
    s = session_in_status(client, "failed")
    sid = s["session_id"]
    own = create_task(client, sid)
    other = create_task(client, create_session(client)["session_id"])
    _exhaust(client, sid)
    assert_error(client.post(f"/sessions/{sid}/recover",
                             json={"resume_from_task_id": "no-such-task"}),
                 404, "Task with ID no-such-task not found")
    assert_error(client.post(f"/sessions/{sid}/recover",
                             json={"resume_from_task_id": other["task_id"]}),
                 400, f"Task {other['task_id']} does not belong to session {sid}")
    assert_error(client.post(f"/sessions/{sid}/recover",
                             json={"resume_from_task_id": own["task_id"]}), 400, MAX_MSG)
    assert_error(client.post(f"/sessions/{sid}/recover"), 400, MAX_MSG)


def test_recover_task_errors_do_not_consume_attempts(client):
    s = session_in_status(client, "failed")
    sid = s["session_id"]
    other = create_task(client, create_session(client)["session_id"])
    assert_error(client.post(f"/sessions/{sid}/recover",
                             json={"resume_from_task_id": other["task_id"]}),
                 400, f"Task {other['task_id']} does not belong to session {sid}")
    assert_error(client.post(f"/sessions/{sid}/recover", json={"resume_from_task_id": "zz"}),
                 404, "Task with ID zz not found")
    g = get_session(client, sid)
    assert g["status"] == "failed"
    assert g["epoch"] == 1
    assert "recovery" not in g["metadata"]


def test_recover_completed_refused(client):
    s = session_in_status(client, "completed")
    assert_error(client.post(f"/sessions/{s['session_id']}/recover"), 400,
                 "Cannot recover completed sessions")
    assert get_session(client, s["session_id"]) == s


@pytest.mark.parametrize("payload,messages", [
    ({"new_docker_slot": "2"}, [f"new_docker_slot {NUMBER_MSG}"]),
    ({"new_machine_id": 5}, ["new_machine_id must be a string"]),
    ({"resume_from_task_id": 5}, ["resume_from_task_id must be a string"]),
    ({"session_id": "x"}, ["property session_id should not exist"]),
])
def test_recover_validation(client, payload, messages):
    s = session_in_status(client, "failed")
    assert_validation(client.post(f"/sessions/{s['session_id']}/recover", json=payload),
                      *messages)
    assert get_session(client, s["session_id"])["status"] == "failed"
    assert_validation(client.post("/sessions/nope-rv/recover", json=payload), *messages)


# --- GET /sessions/:id/recovery-history --------------------------------------------------------

def test_recovery_history_empty(client):
    s = session_in_status(client, "paused")
    h = expect(client.get(f"/sessions/{s['session_id']}/recovery-history"), 200)
    assert h["session_id"] == s["session_id"]
    assert h["total_attempts"] == 0
    assert h["successful_attempts"] == 0
    assert h["failed_attempts"] == 0
    assert h["attempts"] == []
    assert "last_recovery_at" not in h
    assert h["current_status"] == "paused"


def test_recovery_history_after_recoveries(client):
    s = session_in_status(client, "failed")
    sid = s["session_id"]
    _recover(client, sid, {"new_machine_id": "machine-2"})
    expect(client.post(f"/sessions/{sid}/mark-failed", json={"reason": "again"}), 200)
    r2 = _recover(client, sid, {"new_machine_id": "machine-3", "new_docker_slot": 2})
    h = expect(client.get(f"/sessions/{sid}/recovery-history"), 200)
    assert h["total_attempts"] == 2
    assert h["successful_attempts"] == 2
    assert h["failed_attempts"] == 0
    assert [a["new_machine_id"] for a in h["attempts"]] == ["machine-2", "machine-3"]
    assert h["attempts"][1]["new_docker_slot"] == 2
    assert all(a["success"] is True for a in h["attempts"])
    assert h["attempts"] == r2["metadata"]["recovery"]["recovery_history"]
    assert h["last_recovery_at"] == r2["metadata"]["recovery"]["last_recovery_at"]
    assert h["current_status"] == "active"


def test_recovery_history_unknown_404(client):
    assert_error(client.get("/sessions/nope-rh/recovery-history"), 404,
                 "Session with ID nope-rh not found")
