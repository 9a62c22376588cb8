"""Session health queries: stale, active, by-project, by-machine, :id/health (§4.3)."""
import pytest

from st_helpers import (BIG_TIMEOUT, assert_error, backdate, create_session, expect,
                        get_session, iso_ago, put_session, session_in_status, tick, uid)

STALE_KEYS = {"session_id", "project_id", "machine_id", "status", "last_heartbeat",
              "time_since_heartbeat", "started_at"}


def _by_id(lst):
    return {s["session_id"]: s for s in lst}


# --- GET /sessions/stale -----------------------------------------------------------------------

def test_stale_default_threshold(client):
    old = create_session(client, docker_slot=2, heartbeat_timeout_s=BIG_TIMEOUT)
    backdate(client, old["session_id"], 400)
    put_session(client, old["session_id"], current_task_id="task-x")
    fresh = create_session(client)
    got = expect(client.get("/sessions/stale"), 200)
    ids = _by_id(got)
    assert fresh["session_id"] not in ids
    item = ids[old["session_id"]]
    assert STALE_KEYS <= set(item)
    assert item["project_id"] == old["project_id"]
    assert item["machine_id"] == old["machine_id"]
    assert item["docker_slot"] == 2
    assert item["current_task_id"] == "task-x"
    assert item["status"] == "active"
    assert item["started_at"] == old["started_at"]
    assert isinstance(item["time_since_heartbeat"], int)
    assert 400 <= item["time_since_heartbeat"] <= 405
    # only active/paused, oldest heartbeat first
    for s in got:
        assert s["status"] in ("active", "paused")
    lhs = [s["last_heartbeat"] for s in got]
    assert lhs == sorted(lhs)


def test_stale_optional_keys_absent(client):
    s = create_session(client)
    backdate(client, s["session_id"], 400)
    item = _by_id(expect(client.get("/sessions/stale"), 200))[s["session_id"]]
    assert "docker_slot" not in item
    assert "current_task_id" not in item


@pytest.mark.parametrize("query,included", [
    ("threshold=500", False),
    ("threshold=350", True),
    ("threshold=0", True),       # zero -> default 300
    ("threshold=", True),        # empty -> default 300
    ("threshold=abc", True),     # non-numeric -> default 300
    ("threshold=399", True),
    ("threshold=3600", False),
    ("foo=bar", True),           # unknown parameters ignored
])
def test_stale_threshold(client, query, included):
    s = create_session(client)
    backdate(client, s["session_id"], 400)
    got = _by_id(expect(client.get("/sessions/stale?" + query), 200))
    assert (s["session_id"] in got) == included


def test_stale_negative_threshold_includes_fresh(client):
    s = create_session(client)
    p = session_in_status(client, "paused")
    got = _by_id(expect(client.get("/sessions/stale?threshold=-5"), 200))
    assert s["session_id"] in got
    assert p["session_id"] in got
    assert got[p["session_id"]]["status"] == "paused"


def test_stale_statuses_and_order(client):
    proj = uid("proj")
    a = create_session(client, project_id=proj)
    backdate(client, a["session_id"], 500)
    b = session_in_status(client, "paused", project_id=proj)
    backdate(client, b["session_id"], 900)
    excluded = []
    for st in ("stalled", "completed", "failed", "archived"):
        x = session_in_status(client, st, project_id=proj)
        put_session(client, x["session_id"], last_heartbeat=iso_ago(1000))
        excluded.append(x["session_id"])
    got = [s for s in expect(client.get("/sessions/stale"), 200) if s["project_id"] == proj]
    assert [s["session_id"] for s in got] == [b["session_id"], a["session_id"]]
    assert got[0]["status"] == "paused"


# --- GET /sessions/active ----------------------------------------------------------------------

def test_active_filters_and_order(client):
    proj = uid("proj")
    m1, m2 = uid("m"), uid("m")
    a = create_session(client, project_id=proj, machine_id=m1, docker_slot=1)
    tick()
    b = create_session(client, project_id=proj, machine_id=m2)
    tick()
    c = create_session(client, project_id=proj, machine_id=m1)
    for st in ("paused", "stalled", "completed", "failed", "archived"):
        session_in_status(client, st, project_id=proj, machine_id=m1)
    got = expect(client.get("/sessions/active", params={"project_id": proj}), 200)
    assert [s["session_id"] for s in got] == [c["session_id"], b["session_id"], a["session_id"]]
    item = got[2]
    assert STALE_KEYS <= set(item)
    assert item["docker_slot"] == 1
    assert "current_task_id" not in item
    assert "docker_slot" not in got[0]
    assert isinstance(item["time_since_heartbeat"], int) and 0 <= item["time_since_heartbeat"] <= 5
    assert item["status"] == "active"
    got = expect(client.get("/sessions/active",
                            params={"project_id": proj, "machine_id": m1}), 200)
    assert [s["session_id"] for s in got] == [c["session_id"], a["session_id"]]
    got = expect(client.get("/sessions/active", params={"machine_id": m2}), 200)
    assert [s["session_id"] for s in got] == [b["session_id"]]


def test_active_unfiltered_only_active_and_ignores_unknown_params(client):
    s = create_session(client)
    got = expect(client.get("/sessions/active?foo=bar&limit=abc"), 200)
    assert all(x["status"] == "active" for x in got)
    assert s["session_id"] in _by_id(got)
    starts = [x["started_at"] for x in got]
    assert starts == sorted(starts, reverse=True)


# --- GET /sessions/by-project/:projectId -------------------------------------------------------

GROUPS = ["active", "paused", "stalled", "completed", "failed"]


def test_by_project_groups_and_stats(client):
    proj = uid("proj")
    made = {st: [] for st in GROUPS + ["archived"]}
    for st in ["active", "active", "paused", "stalled", "completed", "completed", "completed",
               "failed", "archived"]:
        made[st].append(session_in_status(client, st, project_id=proj)["session_id"])
        tick()
    create_session(client)  # another project
    b = expect(client.get(f"/sessions/by-project/{proj}"), 200)
    assert b["project_id"] == proj
    assert set(b["sessions"]) == set(GROUPS)
    for st in GROUPS:
        ids = [s["session_id"] for s in b["sessions"][st]]
        assert ids == list(reversed(made[st])), st  # started_at descending
        for s in b["sessions"][st]:
            assert s["status"] == st
            assert s["project_id"] == proj
            assert "_id" in s and "metadata" in s  # full documents
    stats = b["stats"]
    assert stats == {"total": 9, "active": 2, "paused": 1, "stalled": 1, "completed": 3,
                     "failed": 1}


def test_by_project_unknown(client):
    proj = uid("nothing")
    b = expect(client.get(f"/sessions/by-project/{proj}"), 200)
    assert b == {"project_id": proj, "sessions": {g: [] for g in GROUPS},
                 "stats": {"total": 0, "active": 0, "paused": 0, "stalled": 0, "completed": 0,
                           "failed": 0}}


def test_by_project_percent_decoded(client):
    proj = "p q/" + uid("r")
    s = create_session(client, project_id=proj)
    enc = proj.replace(" ", "%20").replace("/", "%2F")
    b = expect(client.get(f"/sessions/by-project/{enc}"), 200)
    assert b["project_id"] == proj
    assert [x["session_id"] for x in b["sessions"]["active"]] == [s["session_id"]]


def test_by_project_literal_route_wins(client):
    # "by-project" is never an id
    b = expect(client.get("/sessions/by-project/x-" + uid()), 200)
    assert "sessions" in b


# --- GET /sessions/by-machine/:machineId -------------------------------------------------------

def test_by_machine_all_statuses_ordered(client):
    m = uid("m")
    ids = []
    for st in ["active", "paused", "stalled", "completed", "failed", "archived"]:
        ids.append(session_in_status(client, st, machine_id=m)["session_id"])
        tick()
    create_session(client)
    got = expect(client.get(f"/sessions/by-machine/{m}"), 200)
    assert [s["session_id"] for s in got] == list(reversed(ids))
    assert all(s["machine_id"] == m for s in got)
    assert got[0]["status"] == "archived"
    assert got[0] == get_session(client, ids[-1])


def test_by_machine_unknown_is_empty(client):
    assert expect(client.get(f"/sessions/by-machine/{uid('none')}"), 200) == []


# --- GET /sessions/:id/health ------------------------------------------------------------------

HEALTH_KEYS = {"session_id", "project_id", "machine_id", "status", "last_heartbeat", "is_stale",
               "time_since_heartbeat", "recommendations", "started_at"}
ACTIVE_STALE = ["Session may have crashed - no heartbeat received",
                "Consider marking session as stalled or failed",
                "Use POST /sessions/:id/mark-stalled to mark as stalled",
                "Use POST /sessions/:id/mark-failed to mark as failed"]
OVER_10 = "Session has been unresponsive for over 10 minutes"
OVER_15 = "Session is very stale (>15 minutes) - recommend marking as failed"
STALLED = ["Session is in stalled state",
           "Review session logs and consider recovery or cleanup",
           "Use GET /sessions/:id/health to check session health"]
FAILED = ["Session has failed",
          "Use GET /sessions/:id/failure-info for detailed failure analysis",
          "Review error logs and failure reason"]
PAUSED_STALE = ["Paused session has not sent heartbeat",
                "Session may need to be resumed or cleaned up"]
HEALTHY = ["Session is healthy and active"]


def _health(c, sid, q=""):
    return expect(c.get(f"/sessions/{sid}/health" + q), 200)


def test_health_fresh_active(client):
    s = create_session(client)
    h = _health(client, s["session_id"])
    assert HEALTH_KEYS <= set(h)
    assert h["session_id"] == s["session_id"]
    assert h["project_id"] == s["project_id"]
    assert h["machine_id"] == s["machine_id"]
    assert h["status"] == "active"
    assert h["last_heartbeat"] == s["last_heartbeat"]
    assert h["started_at"] == s["started_at"]
    assert h["is_stale"] is False
    assert isinstance(h["time_since_heartbeat"], int) and 0 <= h["time_since_heartbeat"] <= 5
    assert h["recommendations"] == HEALTHY
    for k in ("docker_slot", "current_task_id", "completed_at"):
        assert k not in h


def test_health_optional_fields_present(client):
    s = create_session(client, docker_slot=5)
    put_session(client, s["session_id"], current_task_id="tid-1")
    h = _health(client, s["session_id"])
    assert h["docker_slot"] == 5
    assert h["current_task_id"] == "tid-1"


@pytest.mark.parametrize("ago,expected", [
    (400, ACTIVE_STALE),
    (700, ACTIVE_STALE + [OVER_10]),
    (1000, ACTIVE_STALE + [OVER_10, OVER_15]),
])
def test_health_stale_active(client, ago, expected):
    s = create_session(client)
    backdate(client, s["session_id"], ago)
    h = _health(client, s["session_id"])
    assert h["is_stale"] is True
    assert ago <= h["time_since_heartbeat"] <= ago + 5
    assert h["recommendations"] == expected


def test_health_threshold_query(client):
    s = create_session(client)
    backdate(client, s["session_id"], 400)
    h = _health(client, s["session_id"], "?threshold=1000")
    assert h["is_stale"] is False
    assert h["recommendations"] == HEALTHY
    h = _health(client, s["session_id"], "?threshold=abc")  # default 300
    assert h["is_stale"] is True
    h = _health(client, s["session_id"], "?threshold=0")  # default 300
    assert h["is_stale"] is True
    # unknown parameters ignored
    h = _health(client, s["session_id"], "?threshold=1000&foo=1")
    assert h["is_stale"] is False


def test_health_negative_threshold_makes_fresh_stale(client):
    s = create_session(client)
    h = _health(client, s["session_id"], "?threshold=-10")
    assert h["is_stale"] is True
    assert h["recommendations"] == ACTIVE_STALE


def test_health_stalled(client):
    s = session_in_status(client, "stalled")
    h = _health(client, s["session_id"])
    assert h["status"] == "stalled"
    assert h["recommendations"] == STALLED


def test_health_failed(client):
    s = session_in_status(client, "failed")
    h = _health(client, s["session_id"])
    assert h["recommendations"] == FAILED
    assert h["completed_at"] == s["completed_at"]


def test_health_failed_and_stale_only_failed_recs(client):
    s = create_session(client)
    backdate(client, s["session_id"], 2000)
    expect(client.post(f"/sessions/{s['session_id']}/mark-failed", json={"reason": "x"}), 200)
    h = _health(client, s["session_id"])
    assert h["is_stale"] is True
    assert h["recommendations"] == FAILED


def test_health_paused(client):
    s = session_in_status(client, "paused")
    assert _health(client, s["session_id"])["recommendations"] == []
    backdate(client, s["session_id"], 400)
    h = _health(client, s["session_id"])
    assert h["is_stale"] is True
    assert h["recommendations"] == PAUSED_STALE


@pytest.mark.parametrize("status", ["completed", "archived"])
def test_health_terminal_no_recommendations(client, status):
    s = session_in_status(client, status)
    put_session(client, s["session_id"], last_heartbeat=iso_ago(2000))
    h = _health(client, s["session_id"])
    assert h["is_stale"] is True  # any status
    assert h["recommendations"] == []
    assert h["completed_at"] == s["completed_at"]


def test_health_unknown_is_404(client):
    assert_error(client.get("/sessions/nope-h/health"), 404, "Session with ID nope-h not found")
