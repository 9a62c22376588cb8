"""Background sweeps (contract §11 with statetrack's per-session timeouts and flags)."""
import time

from st_helpers import (create_machine, create_session, expect, get_machine, get_session,
                        iso_ago, parse_iso, poll, put_session)


def _status(c, sid):
    return get_session(c, sid)["status"]


def test_silent_session_is_stalled_after_its_timeout(rc):
    """Shared server: --sweep-interval-s 1."""
    t0 = time.monotonic()
    s = create_session(rc, heartbeat_timeout_s=1, metadata={"k": "v"})
    sid = s["session_id"]
    g = poll(lambda: (lambda x: x if x["status"] == "stalled" else None)(get_session(rc, sid)),
             timeout=8, interval=0.1, desc="session to be stalled")
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.9, f"stalled too early ({elapsed:.2f}s < timeout)"
    assert g["metadata"] == {"k": "v"}  # no stalled_reason written by the sweep
    assert g["last_heartbeat"] == s["last_heartbeat"]
    assert "completed_at" not in g
    assert parse_iso(g["updated_at"]) > parse_iso(s["updated_at"])
    # a heartbeat brings it back
    b = expect(rc.post(f"/sessions/{sid}/heartbeat"), 200)
    assert b["status"] == "active"
    assert b["message"] == "Heartbeat updated and session reactivated from stalled state"


def test_heartbeating_session_is_never_stalled(rc):
    s = create_session(rc, heartbeat_timeout_s=2)
    sid = s["session_id"]
    control = create_session(rc, heartbeat_timeout_s=2)
    end = time.monotonic() + 5
    while time.monotonic() < end:
        b = expect(rc.post(f"/sessions/{sid}/heartbeat"), 200)
        assert b["status"] == "active"
        assert b["message"] == "Heartbeat updated successfully"
        time.sleep(0.3)
    assert _status(rc, sid) == "active"
    assert _status(rc, control["session_id"]) == "stalled"


def test_paused_session_is_never_swept(rc):
    p = create_session(rc, heartbeat_timeout_s=1)
    put_session(rc, p["session_id"], status="paused")
    control = create_session(rc, heartbeat_timeout_s=1)
    poll(lambda: _status(rc, control["session_id"]) == "stalled", 8, desc="control stalled")
    # one more sweep interval after the control was stalled
    time.sleep(1.5)
    assert _status(rc, p["session_id"]) == "paused"


def test_terminal_sessions_are_not_swept(rc):
    ids = {}
    for st in ("completed", "failed", "archived"):
        s = create_session(rc, heartbeat_timeout_s=1)
        put_session(rc, s["session_id"], status=st)
        ids[st] = s["session_id"]
    control = create_session(rc, heartbeat_timeout_s=1)
    poll(lambda: _status(rc, control["session_id"]) == "stalled", 8, desc="control stalled")
    time.sleep(1.2)
    for st, sid in ids.items():
        assert _status(rc, sid) == st


def test_longer_timeout_is_respected(rc):
    short = create_session(rc, heartbeat_timeout_s=1)
    long_ = create_session(rc, heartbeat_timeout_s=30)
    poll(lambda: _status(rc, short["session_id"]) == "stalled", 8, desc="short stalled")
    time.sleep(1.2)
    assert _status(rc, long_["session_id"]) == "active"


def test_backdated_heartbeat_with_short_timeout_is_swept(rc):
    s = create_session(rc)
    put_session(rc, s["session_id"], last_heartbeat=iso_ago(400))
    poll(lambda: _status(rc, s["session_id"]) == "stalled", 5, desc="backdated session stalled")


def test_timeout_raised_by_put_prevents_stall(rc):
    s = create_session(rc, heartbeat_timeout_s=2)
    put_session(rc, s["session_id"], heartbeat_timeout_s=600)
    control = create_session(rc, heartbeat_timeout_s=2)
    poll(lambda: _status(rc, control["session_id"]) == "stalled", 8, desc="control stalled")
    time.sleep(1.2)
    assert _status(rc, s["session_id"]) == "active"


def test_machine_goes_offline_without_heartbeat(start_server):
    srv = start_server(["--sweep-interval-s", "1", "--machine-offline-after-s", "2"])
    c = srv.client()
    t0 = time.monotonic()
    quiet = create_machine(c)
    maint = create_machine(c)
    expect(c.put(f"/machines/{maint['machine_id']}", json={"status": "maintenance"}), 200)
    alive = create_machine(c)

    def beat_and_check():
        expect(c.post(f"/machines/{alive['machine_id']}/heartbeat"), 200)
        return get_machine(c, quiet["machine_id"])["status"] == "offline"
    poll(beat_and_check, timeout=10, interval=0.3, desc="silent machine offline")
    assert time.monotonic() - t0 >= 1.9, "machine taken offline before its threshold"
    g = get_machine(c, quiet["machine_id"])
    assert g["last_heartbeat"] == quiet["last_heartbeat"]
    assert g["active_sessions"] == []
    # the heartbeating machine and the maintenance machine were never taken offline
    assert get_machine(c, alive["machine_id"])["status"] == "online"
    assert get_machine(c, maint["machine_id"])["status"] == "maintenance"
    time.sleep(1.2)  # one more sweep
    assert get_machine(c, maint["machine_id"])["status"] == "maintenance"
    b = expect(c.post(f"/machines/{quiet['machine_id']}/heartbeat"), 200)
    assert b["status"] == "online"
    assert b["message"] == "Heartbeat updated and machine brought back online"


def test_machine_offline_stalls_its_active_sessions_with_one_cause(start_server):
    """A silent machine takes its active sessions with it: they are stalled with the machine
    as the stated cause, in one transaction, and one machine.offline event lists them."""
    srv = start_server(["--sweep-interval-s", "1", "--machine-offline-after-s", "1"])
    c = srv.client()
    m = create_machine(c)
    s = create_session(c, heartbeat_timeout_s=600, machine_id=m["machine_id"])
    paused = create_session(c, heartbeat_timeout_s=600, machine_id=m["machine_id"])
    expect(c.put(f"/sessions/{paused['session_id']}", json={"status": "paused"}), 200)
    elsewhere = create_session(c, heartbeat_timeout_s=600)
    expect(c.post(f"/machines/{m['machine_id']}/assign-session",
                  json={"session_id": s["session_id"]}), 201)
    poll(lambda: get_machine(c, m["machine_id"])["status"] == "offline", 8,
         desc="machine offline")
    # Slot bookkeeping is untouched (contract §5); the session is stalled with the cause.
    assert get_machine(c, m["machine_id"])["active_sessions"] == [s["session_id"]]
    stalled = get_session(c, s["session_id"])
    assert stalled["status"] == "stalled"
    assert stalled["metadata"]["stalled_reason"] == f"machine {m['machine_id']} went offline"
    assert get_session(c, paused["session_id"])["status"] == "paused"
    assert get_session(c, elsewhere["session_id"])["status"] == "active"
    # No per-session stall event: the session's own timeline ends with its assignment.
    events = expect(c.get(f"/sessions/{s['session_id']}/events"), 200)["events"]
    assert "session.stalled" not in [e["type"] for e in events]


def test_disable_background_jobs(start_server):
    srv = start_server(["--disable-background-jobs", "--sweep-interval-s", "1",
                        "--machine-offline-after-s", "1"])
    c = srv.client()
    s = create_session(c, heartbeat_timeout_s=1)
    m = create_machine(c)
    time.sleep(3.5)
    assert get_session(c, s["session_id"])["status"] == "active"
    assert get_machine(c, m["machine_id"])["status"] == "online"


def test_stall_survives_restart_and_sweeps_resume(start_server, tmp_path):
    db = tmp_path / "sweep.db"
    srv = start_server(["--disable-background-jobs"], db_path=db)
    c = srv.client()
    s = create_session(c, heartbeat_timeout_s=1)
    assert srv.stop() == 0
    srv2 = start_server(["--sweep-interval-s", "1", "--restart-grace-s", "0"], db_path=db)
    c2 = srv2.client()
    poll(lambda: _status(c2, s["session_id"]) == "stalled", 8,
         desc="session stalled by the restarted server")
