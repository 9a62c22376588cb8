"""Durability: acknowledged changes survive SIGKILL; graceful SIGTERM drains and exits 0."""
import threading
import time

import requests

from st_helpers import (create_machine, create_session, create_task, expect, get_machine,
                        get_session, get_task, poll)

THREADS = 4
ROUNDS = 25
QUIET = ["--disable-background-jobs", "--rate-limit-default", "0", "--rate-limit-heartbeat", "0"]


def test_acknowledged_writes_survive_sigkill(start_server, tmp_path):
    db = tmp_path / "dur.db"
    srv = start_server(QUIET, db_path=db)
    setup = srv.client()
    sessions = [create_session(setup, heartbeat_timeout_s=3600)["session_id"]
                for _ in range(THREADS)]
    acked = {sid: {"hb": None, "meta": {}, "seq": None} for sid in sessions}
    made_tasks, made_machines = [], []
    errors = []

    def worker(idx):
        try:
            c = srv.client()
            sid = sessions[idx]
            for i in range(ROUNDS):
                hb = expect(c.post(f"/sessions/{sid}/heartbeat"), 200)
                acked[sid]["hb"] = hb["last_heartbeat"]
                key = f"k{i}"
                u = expect(c.put(f"/sessions/{sid}", json={"metadata": {key: f"{idx}-{i}",
                                                                        "seq": i}}), 200)
                acked[sid]["meta"][key] = f"{idx}-{i}"
                acked[sid]["seq"] = i
                assert u["metadata"]["seq"] == i
                if i % 5 == 0:
                    made_tasks.append(create_task(c, sid, task_name=f"t{idx}-{i}"))
                if idx == 0 and i % 10 == 0:
                    made_machines.append(create_machine(c))
        except Exception as e:  # pragma: no cover - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # one more acknowledged change, then kill with no grace at once
    last = expect(setup.put(f"/sessions/{sessions[0]}", json={"status": "paused",
                                                              "metadata": {"final": True}}), 200)
    srv.kill()
    assert srv.returncode == -9

    srv2 = start_server(QUIET, db_path=db)
    c = srv2.client()
    for sid in sessions:
        g = get_session(c, sid)
        assert g["last_heartbeat"] == acked[sid]["hb"], sid
        for k, v in acked[sid]["meta"].items():
            assert g["metadata"].get(k) == v, (sid, k)
        assert g["metadata"]["seq"] == ROUNDS - 1
    g0 = get_session(c, sessions[0])
    assert g0["status"] == "paused"
    assert g0["metadata"]["final"] is True
    assert g0 == last
    for t in made_tasks:
        assert get_task(c, t["task_id"]) == t
    for m in made_machines:
        assert get_machine(c, m["machine_id"]) == m


def test_sigkill_right_after_create(start_server, tmp_path):
    db = tmp_path / "dur2.db"
    srv = start_server(QUIET, db_path=db)
    c = srv.client()
    s = create_session(c, metadata={"x": 1})
    srv.kill()
    srv2 = start_server(QUIET, db_path=db)
    assert get_session(srv2.client(), s["session_id"]) == s


def test_graceful_restart_keeps_everything(start_server, tmp_path):
    db = tmp_path / "restart.db"
    srv = start_server(QUIET[1:], db_path=db)
    c = srv.client()
    s = create_session(c, docker_slot=1, metadata={"a": {"b": []}})
    sid = s["session_id"]
    t = create_task(c, sid)
    expect(c.post(f"/tasks/{t['task_id']}/start"), 200)
    m = create_machine(c, docker_slots=[1, 2])
    expect(c.post(f"/machines/{m['machine_id']}/assign-session", json={"session_id": sid}), 201)
    expect(c.post(f"/sessions/{sid}/mark-failed", json={"reason": "r"}), 200)
    expect(c.post(f"/sessions/{sid}/recover", json={"new_machine_id": "m2"}), 200)
    before = (get_session(c, sid), get_task(c, t["task_id"]), get_machine(c, m["machine_id"]))
    assert srv.stop() == 0
    srv2 = start_server(QUIET[1:], db_path=db)
    c2 = srv2.client()
    after = (get_session(c2, sid), get_task(c2, t["task_id"]), get_machine(c2, m["machine_id"]))
    assert after == before
    assert after[0]["epoch"] == 2
    # ids keep working for new writes after the restart
    expect(c2.post(f"/sessions/{sid}/heartbeat"), 200)


def test_sigterm_drains_in_flight_requests(start_server, tmp_path):
    db = tmp_path / "drain.db"
    srv = start_server(QUIET, db_path=db)
    acked = []
    stop = threading.Event()

    def writer():
        c = srv.client()
        while not stop.is_set():
            try:
                r = c.post("/sessions", json={"project_id": "drain", "machine_id": "m"},
                           timeout=5)
            except requests.RequestException:
                return
            if r.status_code != 201:
                return
            acked.append(r.json())

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    poll(lambda: len(acked) >= 30, timeout=15, interval=0.01, desc="30 acknowledged creates")
    rc = srv.stop()
    stop.set()
    for t in threads:
        t.join(10)
    assert rc == 0, f"exit code {rc} after SIGTERM under load"
    srv2 = start_server(QUIET, db_path=db)
    c = srv2.client()
    for s in list(acked):
        assert get_session(c, s["session_id"]) == s


def test_sigterm_with_idle_keepalive_connection_exits_promptly(start_server):
    srv = start_server(QUIET)
    c = srv.client()
    expect(c.get("/health"), 200)  # leaves an idle keep-alive connection open
    t0 = time.monotonic()
    assert srv.stop() == 0
    assert time.monotonic() - t0 < 5, "SIGTERM waited on an idle connection"
