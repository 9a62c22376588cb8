"""Tasks (§3.2, §4.7) including every cell of the PUT transition table."""
import threading

import pytest

from st_helpers import (ISO_RE, OID_RE, TASK_ENUM_MSG, TASK_STATUSES, UUID4_RE,
                        assert_error, assert_recent, assert_validation, create_session,
                        create_task, expect, get_session, get_task, parse_iso,
                        session_in_status, tick, uid)

TASK_KEYS = {"_id", "__v", "task_id", "session_id", "project_id", "task_name", "status",
             "metadata", "created_at", "updated_at"}


def assert_task_doc(t):
    assert TASK_KEYS <= set(t), TASK_KEYS - set(t)
    assert OID_RE.match(t["_id"]) and t["__v"] == 0
    assert UUID4_RE.match(t["task_id"])
    assert t["status"] in TASK_STATUSES
    for k in ("created_at", "updated_at", "started_at", "completed_at"):
        if k in t:
            assert ISO_RE.match(t[k]), (k, t[k])
    assert isinstance(t["metadata"], dict)


@pytest.fixture
def sess(client):
    return create_session(client)


def _put(c, tid, **fields):
    return c.put(f"/tasks/{tid}", json=fields)


def task_in_status(c, sid, status):
    t = create_task(c, sid)
    tid = t["task_id"]
    path = {"pending": [], "in_progress": ["in_progress"], "blocked": ["blocked"],
            "completed": ["completed"], "failed": ["in_progress", "failed"]}[status]
    for st in path:
        t = expect(_put(c, tid, status=st), 200)
    assert t["status"] == status
    return t


# --- POST /tasks -------------------------------------------------------------------------------

def test_create_minimal(client, sess):
    r = client.post("/tasks", json={"session_id": sess["session_id"], "project_id": "p1",
                                    "task_name": "Build"})
    t = expect(r, 201)
    assert_task_doc(t)
    assert t["session_id"] == sess["session_id"]
    assert t["project_id"] == "p1"
    assert t["task_name"] == "Build"
    assert t["status"] == "pending"
    assert t["metadata"] == {}
    for k in ("started_at", "completed_at", "error_message", "github_issue_id"):
        assert k not in t, k
    assert t["created_at"] == t["updated_at"]
    assert_recent(t["created_at"], 5)
    assert get_task(client, t["task_id"]) == t


def test_create_full(client, sess):
    meta = {"a": {"b": []}, "e": {}}
    t = create_task(client, sess["session_id"], github_issue_id="gh-42", metadata=meta)
    assert t["github_issue_id"] == "gh-42"
    assert t["metadata"] == meta
    assert get_task(client, t["task_id"]) == t


def test_create_does_not_modify_session_and_project_not_checked(client, sess):
    create_task(client, sess["session_id"], project_id="some-other-project")
    assert get_session(client, sess["session_id"]) == sess


@pytest.mark.parametrize("status", ["completed", "failed", "archived"])
def test_create_on_terminal_session_allowed(client, status):
    s = session_in_status(client, status)
    t = create_task(client, s["session_id"])
    assert t["status"] == "pending"


def test_create_unknown_session_404(client):
    assert_error(client.post("/tasks", json={"session_id": "nope-s", "project_id": "p",
                                             "task_name": "n"}),
                 404, "Session with ID nope-s not found")


def test_create_empty_session_id_404(client):
    assert_error(client.post("/tasks", json={"session_id": "", "project_id": "p",
                                             "task_name": "n"}),
                 404, "Session with ID  not found")


@pytest.mark.parametrize("field", ["project_id", "task_name"])
def test_create_empty_required_string_400(client, sess, field):
    b = {"session_id": sess["session_id"], "project_id": "p", "task_name": "n", field: ""}
    assert_error(client.post("/tasks", json=b), 400)


@pytest.mark.parametrize("payload,messages", [
    ({}, ["session_id must be a string", "project_id must be a string",
          "task_name must be a string"]),
    ({"project_id": "p", "task_name": "n"}, ["session_id must be a string"]),
    ({"session_id": "S", "task_name": 1}, ["project_id must be a string",
                                            "task_name must be a string"]),
    ({"session_id": "S", "project_id": "p", "task_name": "n", "github_issue_id": 5},
     ["github_issue_id must be a string"]),
    ({"session_id": "S", "project_id": "p", "task_name": "n", "metadata": "x"},
     ["metadata must be an object"]),
    ({"session_id": "S", "project_id": "p", "task_name": "n", "task_id": "x"},
     ["property task_id should not exist"]),
    ({"session_id": "S", "project_id": "p", "task_name": "n", "status": "completed"},
     ["property status should not exist"]),
])
def test_create_validation_before_lookup(client, sess, payload, messages):
    payload = {k: (sess["session_id"] if v == "S" else v) for k, v in payload.items()}
    assert_validation(client.post("/tasks", json=payload), *messages)
    # with an unknown session the schema error still wins
    if "session_id" in payload:
        payload["session_id"] = "nope-" + uid()
        assert_validation(client.post("/tasks", json=payload), *messages)


# --- GET /tasks --------------------------------------------------------------------------------

def test_list_filters_order_pagination(client):
    s1 = create_session(client)
    s2 = create_session(client)
    proj = uid("proj")
    ids = []
    for i in range(5):
        ids.append(create_task(client, s1["session_id"], project_id=proj)["task_id"])
        tick()
    other = create_task(client, s2["session_id"], project_id=proj)
    expect(client.post(f"/tasks/{ids[1]}/start"), 200)
    got = expect(client.get("/tasks", params={"session_id": s1["session_id"]}), 200)
    assert [t["task_id"] for t in got] == list(reversed(ids))
    for t in got:
        assert_task_doc(t)
    got = expect(client.get("/tasks", params={"project_id": proj}), 200)
    assert [t["task_id"] for t in got] == [other["task_id"]] + list(reversed(ids))
    got = expect(client.get("/tasks", params={"session_id": s1["session_id"],
                                              "status": "in_progress"}), 200)
    assert [t["task_id"] for t in got] == [ids[1]]
    got = expect(client.get("/tasks", params={"project_id": proj, "status": "pending",
                                              "session_id": s2["session_id"]}), 200)
    assert [t["task_id"] for t in got] == [other["task_id"]]
    got = expect(client.get("/tasks", params={"session_id": s1["session_id"], "limit": 2,
                                              "offset": 1}), 200)
    assert [t["task_id"] for t in got] == [ids[3], ids[2]]


def test_list_default_limit_and_no_upper_bound(client, sess):
    for _ in range(25):
        create_task(client, sess["session_id"])
    sid = sess["session_id"]
    assert len(expect(client.get("/tasks", params={"session_id": sid}), 200)) == 20
    assert len(expect(client.get("/tasks", params={"session_id": sid, "limit": 500}), 200)) == 25
    assert len(expect(client.get("/tasks", params={"session_id": sid, "offset": 20}), 200)) == 5


@pytest.mark.parametrize("query,messages", [
    ("limit=0", ["limit must not be less than 1"]),
    ("limit=-2", ["limit must not be less than 1"]),
    ("limit=abc", []),
    ("offset=-1", ["offset must not be less than 0"]),
    ("status=done", [f"status must be one of the following values: {TASK_ENUM_MSG}"]),
    ("foo=1", ["property foo should not exist"]),
    ("task_name=x", ["property task_name should not exist"]),
])
def test_list_validation(client, query, messages):
    b = assert_validation(client.get("/tasks?" + query), *messages)
    name = query.split("=")[0]
    assert any(name in m for m in b["message"]), b["message"]


# --- GET /tasks/:id ----------------------------------------------------------------------------

def test_get_unknown_404(client):
    assert_error(client.get("/tasks/nope-t"), 404, "Task with ID nope-t not found")


# --- PUT /tasks/:id: the transition table ------------------------------------------------------

ALLOWED = {
    "pending": {"in_progress", "blocked", "completed"},
    "in_progress": {"pending", "blocked", "completed", "failed"},
    "blocked": {"pending", "in_progress"},
    "completed": set(),
    "failed": {"pending"},
}
CELLS = [(f, t) for f in TASK_STATUSES for t in TASK_STATUSES]


@pytest.mark.parametrize("frm,to", CELLS, ids=[f"{f}->{t}" for f, t in CELLS])
def test_put_transition_table(client, sess, frm, to):
    t = task_in_status(client, sess["session_id"], frm)
    tid = t["task_id"]
    r = _put(client, tid, status=to)
    if to in ALLOWED[frm]:
        u = expect(r, 200)
        assert u["status"] == to
        assert get_task(client, tid) == u
    else:
        assert_error(r, 400, f"Invalid status transition from {frm} to {to}")
        assert get_task(client, tid) == t


def test_put_timestamps(client, sess):
    t = create_task(client, sess["session_id"])
    tid = t["task_id"]
    u = expect(_put(client, tid, status="in_progress"), 200)
    assert_recent(u["started_at"], 5)
    assert "completed_at" not in u
    u2 = expect(_put(client, tid, status="failed"), 200)
    assert_recent(u2["completed_at"], 5)
    assert u2["started_at"] == u["started_at"]
    u3 = expect(_put(client, tid, status="pending"), 200)  # clears nothing
    assert u3["started_at"] == u["started_at"]
    assert u3["completed_at"] == u2["completed_at"]
    tick()
    u4 = expect(_put(client, tid, status="in_progress"), 200)  # pending -> in_progress again
    assert parse_iso(u4["started_at"]) > parse_iso(u["started_at"])


def test_put_blocked_to_in_progress_does_not_set_started_at(client, sess):
    t = create_task(client, sess["session_id"])
    expect(_put(client, t["task_id"], status="blocked"), 200)
    u = expect(_put(client, t["task_id"], status="in_progress"), 200)
    assert "started_at" not in u


def test_put_pending_to_completed_sets_completed_at(client, sess):
    t = create_task(client, sess["session_id"])
    u = expect(_put(client, t["task_id"], status="completed"), 200)
    assert_recent(u["completed_at"], 5)
    assert "started_at" not in u


def test_put_other_fields_and_metadata_merge(client, sess):
    t = create_task(client, sess["session_id"], metadata={"a": 1, "b": {"x": 1}})
    tid = t["task_id"]
    tick()
    u = expect(_put(client, tid, github_issue_id="gh-1", error_message="oops",
                    metadata={"b": {"y": 2}, "c": 3}), 200)
    assert u["github_issue_id"] == "gh-1"
    assert u["error_message"] == "oops"
    assert u["metadata"] == {"a": 1, "b": {"y": 2}, "c": 3}
    assert u["status"] == "pending"
    assert parse_iso(u["updated_at"]) > parse_iso(t["updated_at"])
    assert get_task(client, tid) == u
    u2 = expect(_put(client, tid, metadata=None), 200)
    assert u2["metadata"] == u["metadata"]


def test_put_empty_body(client, sess):
    t = create_task(client, sess["session_id"])
    u = expect(client.put(f"/tasks/{t['task_id']}", json={}), 200)
    assert u["status"] == "pending"
    assert u["task_name"] == t["task_name"]


def test_put_does_not_touch_session_current_task(client, sess):
    sid = sess["session_id"]
    t = create_task(client, sid)
    expect(client.post(f"/tasks/{t['task_id']}/start"), 200)
    assert get_session(client, sid)["current_task_id"] == t["task_id"]
    expect(_put(client, t["task_id"], status="completed"), 200)
    assert get_session(client, sid)["current_task_id"] == t["task_id"]


@pytest.mark.parametrize("payload,messages", [
    ({"status": "done"}, [f"status must be one of the following values: {TASK_ENUM_MSG}"]),
    ({"task_name": "x"}, ["property task_name should not exist"]),
    ({"session_id": "x"}, ["property session_id should not exist"]),
    ({"completed_at": "2026-01-01T00:00:00.000Z"}, ["property completed_at should not exist"]),
    ({"error_message": 5}, ["error_message must be a string"]),
    ({"github_issue_id": 5}, ["github_issue_id must be a string"]),
    ({"metadata": [1]}, ["metadata must be an object"]),
])
def test_put_validation(client, sess, payload, messages):
    t = create_task(client, sess["session_id"])
    assert_validation(client.put(f"/tasks/{t['task_id']}", json=payload), *messages)
    assert get_task(client, t["task_id"]) == t
    assert_validation(client.put("/tasks/nope-pv", json=payload), *messages)


def test_put_unknown_404(client):
    assert_error(client.put("/tasks/nope-put", json={"status": "in_progress"}), 404,
                 "Task with ID nope-put not found")


# --- DELETE /tasks/:id -------------------------------------------------------------------------

@pytest.mark.parametrize("status", TASK_STATUSES)
def test_delete_soft_completes(client, sess, status):
    t = task_in_status(client, sess["session_id"], status)
    r = client.delete(f"/tasks/{t['task_id']}")
    assert r.status_code == 204 and r.content == b""
    g = get_task(client, t["task_id"])
    assert g["status"] == "completed"
    assert_recent(g["completed_at"], 5)


def test_delete_keeps_session_current_task(client, sess):
    sid = sess["session_id"]
    t = create_task(client, sid)
    expect(client.post(f"/tasks/{t['task_id']}/start"), 200)
    expect(client.delete(f"/tasks/{t['task_id']}"), 204)
    assert get_session(client, sid)["current_task_id"] == t["task_id"]


def test_delete_unknown_404(client):
    assert_error(client.delete("/tasks/nope-del"), 404, "Task with ID nope-del not found")


# --- POST /tasks/:id/start ---------------------------------------------------------------------

def test_start(client, sess):
    sid = sess["session_id"]
    t = create_task(client, sid)
    tick()
    u = expect(client.post(f"/tasks/{t['task_id']}/start"), 200)
    assert u["status"] == "in_progress"
    assert_recent(u["started_at"], 5)
    assert u["task_id"] == t["task_id"]
    assert get_task(client, t["task_id"]) == u
    s = get_session(client, sid)
    assert s["current_task_id"] == t["task_id"]
    assert parse_iso(s["updated_at"]) > parse_iso(sess["updated_at"])


def test_start_ignores_body(client, sess):
    t = create_task(client, sess["session_id"])
    expect(client.post(f"/tasks/{t['task_id']}/start", json={"status": "failed"}), 200)


@pytest.mark.parametrize("status", ["in_progress", "completed", "failed", "blocked"])
def test_start_requires_pending(client, sess, status):
    t = task_in_status(client, sess["session_id"], status)
    assert_error(client.post(f"/tasks/{t['task_id']}/start"), 400,
                 f"Cannot start task in {status} state. Task must be pending.")
    assert get_task(client, t["task_id"]) == t
    assert "current_task_id" not in get_session(client, sess["session_id"])


def test_start_unknown_404(client):
    assert_error(client.post("/tasks/nope-st/start"), 404, "Task with ID nope-st not found")


# --- POST /tasks/:id/complete ------------------------------------------------------------------

@pytest.mark.parametrize("status", ["pending", "in_progress", "blocked"])
def test_complete_allowed(client, sess, status):
    t = task_in_status(client, sess["session_id"], status)
    u = expect(client.post(f"/tasks/{t['task_id']}/complete"), 200)
    assert u["status"] == "completed"
    assert_recent(u["completed_at"], 5)
    assert get_task(client, t["task_id"]) == u


def test_complete_clears_session_current_task(client, sess):
    sid = sess["session_id"]
    t = create_task(client, sid)
    expect(client.post(f"/tasks/{t['task_id']}/start"), 200)
    expect(client.post(f"/tasks/{t['task_id']}/complete"), 200)
    s = get_session(client, sid)
    assert "current_task_id" not in s


def test_complete_other_task_keeps_current_task(client, sess):
    sid = sess["session_id"]
    a = create_task(client, sid)
    b = create_task(client, sid)
    expect(client.post(f"/tasks/{a['task_id']}/start"), 200)
    expect(client.post(f"/tasks/{b['task_id']}/complete"), 200)
    assert get_session(client, sid)["current_task_id"] == a["task_id"]


@pytest.mark.parametrize("status,message", [
    ("completed", "Task is already completed"),
    ("failed", "Cannot complete a failed task"),
])
def test_complete_refused(client, sess, status, message):
    t = task_in_status(client, sess["session_id"], status)
    assert_error(client.post(f"/tasks/{t['task_id']}/complete"), 400, message)
    assert get_task(client, t["task_id"]) == t


def test_complete_unknown_404(client):
    assert_error(client.post("/tasks/nope-co/complete"), 404, "Task with ID nope-co not found")


# --- POST /tasks/:id/fail ----------------------------------------------------------------------

@pytest.mark.parametrize("status", ["pending", "in_progress", "blocked"])
def test_fail_allowed(client, sess, status):
    t = task_in_status(client, sess["session_id"], status)
    u = expect(client.post(f"/tasks/{t['task_id']}/fail", json={"error_message": "segfault"}),
               200)
    assert u["status"] == "failed"
    assert u["error_message"] == "segfault"
    assert_recent(u["completed_at"], 5)
    assert get_task(client, t["task_id"]) == u


def test_fail_clears_session_current_task(client, sess):
    sid = sess["session_id"]
    t = create_task(client, sid)
    expect(client.post(f"/tasks/{t['task_id']}/start"), 200)
    expect(client.post(f"/tasks/{t['task_id']}/fail", json={"error_message": "x"}), 200)
    assert "current_task_id" not in get_session(client, sid)


def test_fail_other_task_keeps_current_task(client, sess):
    sid = sess["session_id"]
    a = create_task(client, sid)
    b = create_task(client, sid)
    expect(client.post(f"/tasks/{a['task_id']}/start"), 200)
    expect(client.post(f"/tasks/{b['task_id']}/fail", json={"error_message": "x"}), 200)
    assert get_session(client, sid)["current_task_id"] == a["task_id"]


@pytest.mark.parametrize("status,message", [
    ("completed", "Cannot fail a completed task"),
    ("failed", "Task is already failed"),
])
def test_fail_refused(client, sess, status, message):
    t = task_in_status(client, sess["session_id"], status)
    assert_error(client.post(f"/tasks/{t['task_id']}/fail", json={"error_message": "x"}), 400,
                 message)
    assert get_task(client, t["task_id"]) == t


def test_fail_unknown_404(client):
    assert_error(client.post("/tasks/nope-fa/fail", json={"error_message": "x"}), 404,
                 "Task with ID nope-fa not found")


@pytest.mark.parametrize("payload,messages", [
    ({}, ["error_message must be a string", "error_message should not be empty"]),
    ({"error_message": ""}, ["error_message should not be empty"]),
    ({"error_message": None}, ["error_message should not be empty"]),
    ({"error_message": 3}, ["error_message must be a string"]),
    ({"error_message": "x", "status": "failed"}, ["property status should not exist"]),
])
def test_fail_validation_before_lookup(client, sess, payload, messages):
    t = create_task(client, sess["session_id"])
    assert_validation(client.post(f"/tasks/{t['task_id']}/fail", json=payload), *messages)
    assert get_task(client, t["task_id"]) == t
    assert_validation(client.post("/tasks/nope/fail", json=payload), *messages)


# --- GET /sessions/:id/tasks -------------------------------------------------------------------

def test_session_tasks_groups_and_stats(client, sess):
    sid = sess["session_id"]
    made = {st: [] for st in TASK_STATUSES}
    for st in ["pending", "in_progress", "completed", "completed", "failed", "blocked",
               "pending", "completed"]:
        made[st].append(task_in_status(client, sid, st)["task_id"])
        tick()
    create_task(client, create_session(client)["session_id"])  # other session
    b = expect(client.get(f"/sessions/{sid}/tasks"), 200)
    assert b["session_id"] == sid
    assert set(b["tasks"]) == set(TASK_STATUSES)
    for st in TASK_STATUSES:
        assert [t["task_id"] for t in b["tasks"][st]] == list(reversed(made[st])), st
        for t in b["tasks"][st]:
            assert_task_doc(t)
            assert t["status"] == st
    assert b["stats"] == {"total": 8, "pending": 2, "in_progress": 1, "completed": 3,
                          "failed": 1, "blocked": 1, "completion_percentage": 38}  # 37.5 -> 38


def test_session_tasks_empty(client, sess):
    b = expect(client.get(f"/sessions/{sess['session_id']}/tasks"), 200)
    assert b == {"session_id": sess["session_id"],
                 "tasks": {st: [] for st in TASK_STATUSES},
                 "stats": {"total": 0, "pending": 0, "in_progress": 0, "completed": 0,
                           "failed": 0, "blocked": 0, "completion_percentage": 0}}


@pytest.mark.parametrize("done,total,pct", [(1, 8, 13), (2, 3, 67), (1, 6, 17), (1, 3, 33),
                                            (2, 5, 40), (1, 2, 50), (3, 3, 100)])
def test_session_tasks_percentage_rounding(client, sess, done, total, pct):
    sid = sess["session_id"]
    for i in range(total):
        t = create_task(client, sid)
        if i < done:
            expect(client.post(f"/tasks/{t['task_id']}/complete"), 200)
    stats = expect(client.get(f"/sessions/{sid}/tasks"), 200)["stats"]
    assert stats["total"] == total and stats["completed"] == done
    assert stats["completion_percentage"] == pct


def test_session_tasks_unknown_404(client):
    assert_error(client.get("/sessions/nope-tk/tasks"), 404, "Session with ID nope-tk not found")


def test_no_nested_task_routes(client, sess):
    sid = sess["session_id"]
    assert_error(client.post(f"/sessions/{sid}/tasks", json={"title": "x"}), 404,
                 f"Cannot POST {client.prefix}/sessions/{sid}/tasks")
    assert_error(client.put(f"/sessions/{sid}/tasks/abc", json={}), 404,
                 f"Cannot PUT {client.prefix}/sessions/{sid}/tasks/abc")


def test_concurrent_task_metadata_merges_lose_no_key(server, prefix):
    c0 = server.client(prefix)
    t = create_task(c0, create_session(c0)["session_id"])
    tid = t["task_id"]
    errors = []

    def worker(i):
        c = server.client(prefix)
        for j in range(5):
            r = c.put(f"/tasks/{tid}", json={"metadata": {f"k{i}_{j}": j}})
            if r.status_code != 200:
                errors.append(r.text)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    assert get_task(c0, tid)["metadata"] == {f"k{i}_{j}": j for i in range(6) for j in range(5)}
