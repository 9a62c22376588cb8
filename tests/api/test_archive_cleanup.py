"""Archive, purge, cleanup and the archived list (§4.5)."""
import pytest

from st_helpers import (SESSION_ENUM_MSG, NUMBER_MSG, age_sessions_in_db, assert_error,
                        assert_recent, assert_validation, create_machine, create_session,
                        create_task, expect, get_machine, get_session, get_task, put_session,
                        session_in_status, tick, uid)

ARCHIVE_MSG = ('Cannot archive session with status "{}". Only completed, failed, or already '
               'archived sessions can be archived.')
PURGE_MSG = ('Cannot purge session with status "{}". Only completed, failed, or archived '
             'sessions can be purged.')
CONFIRM_MSG = "Confirmation required to permanently delete session. Set confirm=true."


# --- POST /sessions/:id/archive ----------------------------------------------------------------

@pytest.mark.parametrize("status", ["completed", "failed", "archived"])
def test_archive_allowed(client, status):
    s = session_in_status(client, status)
    sid = s["session_id"]
    t = create_task(client, sid)
    u = expect(client.post(f"/sessions/{sid}/archive"), 200)
    assert u["status"] == "archived"
    assert u["completed_at"] == s["completed_at"]
    assert "archived" not in u and "archived_at" not in u
    assert get_session(client, sid) == u
    assert get_task(client, t["task_id"]) == t


@pytest.mark.parametrize("status", ["active", "paused", "stalled"])
def test_archive_refused(client, status):
    s = session_in_status(client, status)
    assert_error(client.post(f"/sessions/{s['session_id']}/archive"), 400,
                 ARCHIVE_MSG.format(status))
    assert get_session(client, s["session_id"])["status"] == status


def test_archive_ignores_body(client):
    s = session_in_status(client, "completed")
    u = expect(client.post(f"/sessions/{s['session_id']}/archive", json={"bogus": 1}), 200)
    assert u["status"] == "archived"


def test_archive_unknown_404(client):
    assert_error(client.post("/sessions/nope-ar/archive"), 404,
                 "Session with ID nope-ar not found")


# --- DELETE /sessions/:id/purge ----------------------------------------------------------------

@pytest.mark.parametrize("status", ["completed", "failed", "archived"])
def test_purge_deletes_session_and_its_tasks(client, status):
    s = session_in_status(client, status)
    sid = s["session_id"]
    tasks = [create_task(client, sid)["task_id"] for _ in range(3)]
    other = create_session(client)
    other_task = create_task(client, other["session_id"])
    b = expect(client.delete(f"/sessions/{sid}/purge", json={"confirm": True}), 200)
    assert b["session_id"] == sid
    assert b["tasks_deleted"] == 3
    assert b["purged"] is True
    assert_recent(b["purged_at"], 5)
    assert_error(client.get(f"/sessions/{sid}"), 404, f"Session with ID {sid} not found")
    for tid in tasks:
        assert_error(client.get(f"/tasks/{tid}"), 404, f"Task with ID {tid} not found")
    assert get_task(client, other_task["task_id"]) == other_task
    assert expect(client.get("/tasks", params={"session_id": sid}), 200) == []
    # gone for good
    assert_error(client.delete(f"/sessions/{sid}/purge", json={"confirm": True}), 404,
                 f"Session with ID {sid} not found")


def test_purge_without_tasks(client):
    s = session_in_status(client, "completed")
    b = expect(client.delete(f"/sessions/{s['session_id']}/purge", json={"confirm": True}), 200)
    assert b["tasks_deleted"] == 0


@pytest.mark.parametrize("status", ["active", "paused", "stalled"])
def test_purge_refused_for_live_sessions(client, status):
    s = session_in_status(client, status)
    t = create_task(client, s["session_id"])
    assert_error(client.delete(f"/sessions/{s['session_id']}/purge", json={"confirm": True}),
                 400, PURGE_MSG.format(status))
    assert get_session(client, s["session_id"])["status"] == status
    assert get_task(client, t["task_id"]) == t


def test_purge_order_of_checks(client):
    # confirm=false is checked before existence
    assert_error(client.delete("/sessions/nope-pg/purge", json={"confirm": False}), 400,
                 CONFIRM_MSG)
    assert_error(client.delete("/sessions/nope-pg/purge", json={"confirm": True}), 404,
                 "Session with ID nope-pg not found")
    live = create_session(client)
    assert_error(client.delete(f"/sessions/{live['session_id']}/purge",
                               json={"confirm": False}), 400, CONFIRM_MSG)
    done = session_in_status(client, "completed")
    assert_error(client.delete(f"/sessions/{done['session_id']}/purge",
                               json={"confirm": False}), 400, CONFIRM_MSG)
    assert get_session(client, done["session_id"]) == done


@pytest.mark.parametrize("payload,messages", [
    (None, ["confirm must be a boolean value"]),
    ({}, ["confirm must be a boolean value"]),
    ({"confirm": "true"}, ["confirm must be a boolean value"]),
    ({"confirm": 1}, ["confirm must be a boolean value"]),
    ({"confirm": None}, ["confirm must be a boolean value"]),
    ({"confirm": True, "force": True}, ["property force should not exist"]),
])
def test_purge_validation(client, payload, messages):
    s = session_in_status(client, "completed")
    kw = {} if payload is None else {"json": payload}
    assert_validation(client.delete(f"/sessions/{s['session_id']}/purge", **kw), *messages)
    assert get_session(client, s["session_id"]) == s
    # schema before existence
    assert_validation(client.delete("/sessions/nope-pv/purge", **kw), *messages)


def test_purge_leaves_machine_bookkeeping(client):
    m = create_machine(client)
    s = create_session(client)
    sid = s["session_id"]
    expect(client.post(f"/machines/{m['machine_id']}/assign-session", json={"session_id": sid}),
           201)
    expect(client.delete(f"/sessions/{sid}"), 204)
    expect(client.delete(f"/sessions/{sid}/purge", json={"confirm": True}), 200)
    assert get_machine(client, m["machine_id"])["active_sessions"] == [sid]


# --- POST /sessions/cleanup: validation and the no-match case (shared server) -------------------

@pytest.mark.parametrize("payload,messages", [
    ({}, [f"older_than_days {NUMBER_MSG}", "statuses must be an array"]),
    ({"older_than_days": 6, "statuses": []}, ["older_than_days must be at least 7"]),
    ({"older_than_days": 0, "statuses": []}, ["older_than_days must be at least 7"]),
    ({"older_than_days": "30", "statuses": []}, [f"older_than_days {NUMBER_MSG}"]),
    ({"older_than_days": 30}, ["statuses must be an array"]),
    ({"older_than_days": 30, "statuses": "completed"}, ["statuses must be an array"]),
    ({"older_than_days": 30, "statuses": ["bogus"]},
     [f"each value in statuses must be one of the following values: {SESSION_ENUM_MSG}"]),
    ({"older_than_days": 30, "statuses": [], "dry_run": "yes"},
     ["dry_run must be a boolean value"]),
    ({"older_than_days": 30, "statuses": [], "archive": 1}, ["archive must be a boolean value"]),
    ({"older_than_days": 30, "statuses": [], "project_id": "p"},
     ["property project_id should not exist"]),
])
def test_cleanup_validation(client, payload, messages):
    assert_validation(client.post("/sessions/cleanup", json=payload), *messages)


def _check_cleanup_shape(b, operation, statuses):
    for k in ("sessions_affected", "tasks_deleted", "breakdown_by_status", "operation",
              "estimated_space_freed_bytes", "completed_at", "sessions_skipped"):
        assert k in b, k
    assert b["operation"] == operation
    assert set(b["breakdown_by_status"]) == set(statuses)
    assert b["estimated_space_freed_bytes"] == \
        2048 * b["sessions_affected"] + 1024 * b["tasks_deleted"]
    assert_recent(b["completed_at"], 5)


@pytest.mark.parametrize("extra,operation", [
    ({}, "archive"),
    ({"dry_run": True}, "dry_run"),
    ({"dry_run": False, "archive": True}, "archive"),
    ({"archive": False}, "delete"),
    ({"archive": False, "dry_run": True}, "dry_run"),
])
def test_cleanup_nothing_old_enough(client, extra, operation):
    """Every session on the shared server is younger than 7 days."""
    statuses = ["completed", "failed", "archived"]
    s = session_in_status(client, "completed")
    b = expect(client.post("/sessions/cleanup",
                           json={"older_than_days": 7, "statuses": statuses, **extra}), 200)
    _check_cleanup_shape(b, operation, statuses)
    assert b["sessions_affected"] == 0
    assert b["tasks_deleted"] == 0
    assert b["sessions_skipped"] == 0
    assert b["breakdown_by_status"] == {"completed": 0, "failed": 0, "archived": 0}
    assert b["estimated_space_freed_bytes"] == 0
    assert get_session(client, s["session_id"]) == s


def test_cleanup_empty_statuses_matches_nothing(client):
    b = expect(client.post("/sessions/cleanup", json={"older_than_days": 7, "statuses": []}), 200)
    assert b["sessions_affected"] == 0
    assert b["breakdown_by_status"] == {}


# --- POST /sessions/cleanup with old sessions (own server; created_at aged in the database) -----

@pytest.fixture
def aged(start_server, tmp_path):
    """Seed: A completed (2 tasks), B failed (1), C active (1), D archived (0), E paused (0) all
    created 10 days ago; Y completed (1 task) created now. Returns (server, ids, task ids)."""
    db = tmp_path / "aged.db"
    srv = start_server(db_path=db)
    c = srv.client()
    ids = {}
    tasks = {}
    for name, status, ntasks in [("A", "completed", 2), ("B", "failed", 1), ("C", "active", 1),
                                 ("D", "archived", 0), ("E", "paused", 0),
                                 ("Y", "completed", 1)]:
        s = session_in_status(c, status)
        if status == "active":
            put_session(c, s["session_id"], heartbeat_timeout_s=604800)
        ids[name] = s["session_id"]
        tasks[name] = [create_task(c, s["session_id"])["task_id"] for _ in range(ntasks)]
    assert srv.stop() == 0
    age_sessions_in_db(db, [ids[n] for n in "ABCDE"], 10)
    srv2 = start_server(db_path=db)
    return srv2, ids, tasks


def _snapshot(c, ids, tasks):
    return ({n: get_session(c, sid) for n, sid in ids.items()},
            {n: [get_task(c, t) for t in ts] for n, ts in tasks.items()})


def test_cleanup_dry_run_reports_without_changing(aged):
    srv, ids, tasks = aged
    c = srv.client()
    before = _snapshot(c, ids, tasks)
    statuses = ["completed", "failed", "active", "archived", "paused", "stalled"]
    b = expect(c.post("/sessions/cleanup", json={"older_than_days": 7, "statuses": statuses,
                                                 "dry_run": True}), 200)
    _check_cleanup_shape(b, "dry_run", statuses)
    assert b["sessions_affected"] == 3      # A, B, D
    assert b["sessions_skipped"] == 2       # C (active), E (paused)
    assert b["tasks_deleted"] == 3          # 2 + 1 + 0, also reported in dry runs
    bd = b["breakdown_by_status"]
    assert (bd["completed"], bd["failed"], bd["archived"], bd["stalled"]) == (1, 1, 1, 0)
    assert b["estimated_space_freed_bytes"] == 2048 * 3 + 1024 * 3
    assert _snapshot(c, ids, tasks) == before
    # threshold: 10-day-old sessions are not older than 11 days
    b = expect(c.post("/sessions/cleanup", json={"older_than_days": 11, "statuses": statuses,
                                                 "dry_run": True}), 200)
    assert b["sessions_affected"] == 0 and b["sessions_skipped"] == 0 and b["tasks_deleted"] == 0
    b = expect(c.post("/sessions/cleanup", json={"older_than_days": 9,
                                                 "statuses": ["completed"], "dry_run": True}), 200)
    assert b["sessions_affected"] == 1 and b["breakdown_by_status"] == {"completed": 1}
    assert b["tasks_deleted"] == 2


def test_cleanup_archive_mode(aged):
    srv, ids, tasks = aged
    c = srv.client()
    before, before_tasks = _snapshot(c, ids, tasks)
    statuses = ["completed", "failed", "active", "archived"]
    b = expect(c.post("/sessions/cleanup", json={"older_than_days": 7, "statuses": statuses}), 200)
    _check_cleanup_shape(b, "archive", statuses)
    assert b["sessions_affected"] == 3
    assert b["sessions_skipped"] == 1
    assert b["tasks_deleted"] == 3          # counted although archive mode deletes none
    bd = b["breakdown_by_status"]
    assert (bd["completed"], bd["failed"], bd["archived"]) == (1, 1, 1)
    after, after_tasks = _snapshot(c, ids, tasks)
    for n in "ABD":
        assert after[n]["status"] == "archived", n
        assert after[n]["completed_at"] == before[n]["completed_at"], n
    assert after["C"] == before["C"]        # non-terminal match skipped, untouched
    assert after["E"] == before["E"]
    assert after["Y"] == before["Y"]        # too young
    assert after_tasks == before_tasks      # archive mode deletes no task
    # nothing is left half-done: a second run only re-archives
    b = expect(c.post("/sessions/cleanup", json={"older_than_days": 7,
                                                 "statuses": ["completed", "failed"]}), 200)
    assert b["sessions_affected"] == 0
    assert b["breakdown_by_status"] == {"completed": 0, "failed": 0}


def test_cleanup_delete_mode(aged):
    srv, ids, tasks = aged
    c = srv.client()
    before, before_tasks = _snapshot(c, ids, tasks)
    statuses = ["completed", "failed", "active"]
    b = expect(c.post("/sessions/cleanup", json={"older_than_days": 7, "statuses": statuses,
                                                 "archive": False}), 200)
    _check_cleanup_shape(b, "delete", statuses)
    assert b["sessions_affected"] == 2
    assert b["sessions_skipped"] == 1
    assert b["tasks_deleted"] == 3
    assert (b["breakdown_by_status"]["completed"], b["breakdown_by_status"]["failed"]) == (1, 1)
    for n in "AB":
        assert_error(c.get(f"/sessions/{ids[n]}"), 404, f"Session with ID {ids[n]} not found")
        for t in tasks[n]:
            assert_error(c.get(f"/tasks/{t}"), 404, f"Task with ID {t} not found")
    after, after_tasks = ({n: get_session(c, ids[n]) for n in "CDEY"},
                          {n: [get_task(c, t) for t in tasks[n]] for n in "CDEY"})
    for n in "CDEY":
        assert after[n] == before[n], n
        assert after_tasks[n] == before_tasks[n], n


def test_cleanup_delete_mode_archived(aged):
    srv, ids, tasks = aged
    c = srv.client()
    b = expect(c.post("/sessions/cleanup", json={"older_than_days": 7, "statuses": ["archived"],
                                                 "archive": False}), 200)
    assert b["sessions_affected"] == 1 and b["sessions_skipped"] == 0
    assert b["breakdown_by_status"] == {"archived": 1}
    assert_error(c.get(f"/sessions/{ids['D']}"), 404)
    expect(c.get(f"/sessions/{ids['A']}"), 200)


# --- GET /sessions/archived --------------------------------------------------------------------

def test_archived_list_order_and_filters(client):
    proj = uid("proj")
    m = uid("m")
    a = session_in_status(client, "archived", project_id=proj, machine_id=m)
    tick()
    b = session_in_status(client, "archived", project_id=proj)
    session_in_status(client, "completed", project_id=proj)
    session_in_status(client, "failed", project_id=proj)
    got = expect(client.get("/sessions/archived", params={"project_id": proj}), 200)
    assert [s["session_id"] for s in got] == [b["session_id"], a["session_id"]]
    assert all(s["status"] == "archived" for s in got)
    assert "_id" in got[0] and "metadata" in got[0]
    tick()
    put_session(client, a["session_id"], metadata={"touched": True})  # bumps updated_at
    got = expect(client.get("/sessions/archived", params={"project_id": proj}), 200)
    assert [s["session_id"] for s in got] == [a["session_id"], b["session_id"]]
    got = expect(client.get("/sessions/archived", params={"project_id": proj, "machine_id": m}),
                 200)
    assert [s["session_id"] for s in got] == [a["session_id"]]
    got = expect(client.get("/sessions/archived",
                            params={"project_id": proj, "limit": 1, "offset": 1}), 200)
    assert [s["session_id"] for s in got] == [b["session_id"]]
    # unknown parameters are ignored
    got = expect(client.get("/sessions/archived", params={"project_id": proj, "foo": "x"}), 200)
    assert len(got) == 2


def test_archived_default_limit_and_clamp(rc):
    proj = uid("proj")
    for _ in range(101):
        session_in_status(rc, "archived", project_id=proj)
    assert len(expect(rc.get("/sessions/archived", params={"project_id": proj}), 200)) == 20
    assert len(expect(rc.get("/sessions/archived",
                             params={"project_id": proj, "limit": 500}), 200)) == 100
    assert len(expect(rc.get("/sessions/archived",
                             params={"project_id": proj, "limit": 100, "offset": 100}), 200)) == 1


@pytest.mark.parametrize("query", ["limit=0", "limit=-5", "limit=abc", "offset=-1", "offset=x"])
def test_archived_invalid_paging(client, query):
    b = assert_error(client.get("/sessions/archived?" + query), 400)
    assert b["error_code"] == "validation_error"
