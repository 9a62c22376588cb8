"""PostgreSQL only (ST_BACKEND=postgres): what running statetrack as several stateless instances
on one PostgreSQL database has to guarantee, seen from outside.

* several instances, one database: a change made through one is read through the others at
  once; its event reaches the event streams of every instance (LISTEN/NOTIFY); concurrent
  sweeps on all instances stall each overdue session once, with one event; concurrent
  conflicting writes through different instances lose nothing and break no lifecycle rule;
* a database outage mid-load: 503 with Retry-After within the bounded time, never a hang or a
  crash; /health/ready not ready while /health/live stays 200 and /health/detailed says why;
  full service within 5 s of the database coming back; nothing acknowledged is lost;
* failover: a primary with a synchronous streaming standby (pg_basebackup -R), a multi-host
  connection string with target_session_attrs=read-write, load through statetrack, the primary
  killed and the standby promoted: the service continues and keeps every acknowledged write.

The outage and failover tests run their own throwaway clusters (scripts/pg-cluster.sh), so the
shared one of the rest of the suite is never stopped.
"""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

import test_session_safety as safety
from conftest import API_KEY
from st_helpers import (ON_POSTGRES, PG_BASE, create_pg_database, create_session, db_events,
                        drop_pg_database, expect, get_session, pg_conninfo, poll, psql,
                        session_events, uid)

pytestmark = pytest.mark.skipif(not ON_POSTGRES, reason="PostgreSQL only (ST_BACKEND=postgres)")

REPO = Path(__file__).resolve().parents[2]
PG_CLUSTER = REPO / "scripts" / "pg-cluster.sh"
PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
NO_LIMITS = ["--rate-limit-default", "0", "--rate-limit-heartbeat", "0"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_pg(cmd):
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


class Cluster:
    """A throwaway cluster of this test's own (scripts/pg-cluster.sh), in a directory the
    postgres user can reach."""

    def __init__(self, opts=""):
        self.dir = tempfile.mkdtemp(prefix="st-pg-test-")
        self.port = free_port()
        self.opts = opts
        self.conninfo = None

    @property
    def data(self):
        return os.path.join(self.dir, "data")

    def start(self):
        env = dict(os.environ, PG_OPTS=self.opts)
        p = subprocess.run([str(PG_CLUSTER), "start", self.dir, str(self.port)], env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        self.conninfo = p.stdout.strip()
        return self.conninfo

    def pg_ctl(self, *args, check=True):
        p = subprocess.run(as_pg([f"{PG_BIN}/pg_ctl", "-D", self.data, *args]),
                           capture_output=True, text=True, timeout=120)
        if check:
            assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p

    def stop(self, mode="fast"):
        self.pg_ctl("-w", "-m", mode, "stop", check=False)

    def remove(self):
        self.stop("immediate")
        subprocess.run([str(PG_CLUSTER), "stop", self.dir], capture_output=True, timeout=120)
        shutil.rmtree(self.dir, ignore_errors=True)

    def conn(self, dbname):
        return pg_conninfo(self.conninfo, dbname)


@pytest.fixture
def cluster_factory():
    made = []

    def make(opts=""):
        c = Cluster(opts)
        made.append(c)
        return c

    yield make
    for c in made:
        c.remove()


@pytest.fixture
def shared_db():
    """A fresh database on the suite's cluster, for several instances at once."""
    name = create_pg_database(PG_BASE, "st_multi")
    yield pg_conninfo(PG_BASE, name)
    drop_pg_database(PG_BASE, name)


def start_instances(start_server, conninfo, n, extra=()):
    return [start_server([*NO_LIMITS, *extra], db_path=conninfo) for _ in range(n)]


class RoundRobin:
    """Looks like one server to a workload that asks it for clients, but hands out clients of
    each instance in turn: the workload's workers spread over every instance."""

    def __init__(self, servers):
        self.servers = servers
        self.i = 0
        self.lock = threading.Lock()

    def client(self, *a, **kw):
        with self.lock:
            s = self.servers[self.i % len(self.servers)]
            self.i += 1
        return s.client(*a, **kw)


# --- several instances, one database ----------------------------------------------------------

def test_a_change_through_one_instance_is_read_through_the_others_at_once(start_server, shared_db):
    a, b, c = start_instances(start_server, shared_db, 3)
    ca, cb, cc = a.client(), b.client(), c.client()
    for _ in range(20):
        s = create_session(ca, metadata={"n": 1})
        sid = s["session_id"]
        # no polling: the read right after the acknowledged write must see it
        assert get_session(cb, sid)["metadata"] == {"n": 1}
        hb = expect(cb.post(f"/sessions/{sid}/heartbeat"), 200)
        assert get_session(cc, sid)["last_heartbeat"] == hb["last_heartbeat"]
        expect(cc.put(f"/sessions/{sid}", json={"status": "paused", "metadata": {"m": 2}}), 200)
        got = get_session(ca, sid)
        assert got["status"] == "paused" and got["metadata"] == {"n": 1, "m": 2}
    machine = uid("m")
    expect(ca.post("/machines", json={"machine_id": machine, "hostname": "h",
                                      "docker_slots": [1, 2]}), 201)
    assert expect(cc.get(f"/machines/{machine}"), 200)["hostname"] == "h"


def _read_sse(url, out, ready, stop, errors):
    try:
        _read_sse_lines(url, out, ready, stop)
    except Exception as exc:  # noqa: BLE001 - reported by the test thread
        errors.append(repr(exc))
        ready.set()


def _read_sse_lines(url, out, ready, stop):
    with requests.get(url, headers={"X-API-Key": API_KEY}, stream=True, timeout=(5, 30)) as r:
        assert r.status_code == 200, r.text
        current = {}
        # chunk_size=1: lines as they arrive, not once 512 bytes have
        for line in r.iter_lines(chunk_size=1, decode_unicode=True):
            if line.startswith("retry:"):
                ready.set()  # the subscription is positioned at the head of the log
            elif line.startswith("id:"):
                current["id"] = int(line[3:].strip())
            elif line.startswith("data:"):
                current["data"] = json.loads(line[5:].strip())
            elif line == "" and current:
                out.append(current)
                current = {}
            if stop.is_set():
                return


def test_events_reach_the_streams_of_every_instance(start_server, shared_db):
    servers = start_instances(start_server, shared_db, 3, ["--stream-keepalive-s", "1"])
    probe = servers[0].client().get("/api/events/stream", timeout=5, stream=True)
    probe.close()
    if probe.status_code == 404:
        pytest.skip("no SSE endpoint in this build")
    streams = []
    stop = threading.Event()
    threads = []
    errors = []
    for srv in servers:
        out, ready = [], threading.Event()
        t = threading.Thread(target=_read_sse, args=(srv.base_url + "/api/events/stream", out,
                                                     ready, stop, errors), daemon=True)
        t.start()
        assert ready.wait(10) and not errors, f"event stream did not open: {errors}"
        streams.append(out)
        threads.append(t)
    # changes made through the first instance only
    c = servers[0].client()
    sids = [create_session(c)["session_id"] for _ in range(5)]
    expect(c.post(f"/sessions/{sids[0]}/mark-failed", json={"reason": "x"}), 200)

    def created_everywhere():
        for out in streams:
            seen = {e["data"].get("session_id") for e in list(out)
                    if e["data"].get("event_type") == "session.created"}
            if not set(sids) <= seen:
                return False
        return True

    poll(created_everywhere, 10, desc="every instance's stream got every session.created")
    poll(lambda: all(any(e["data"].get("event_type") == "session.failed" for e in list(o))
                     for o in streams), 10, desc="session.failed on every stream")
    stop.set()
    # every stream saw the same seqs in increasing order (no gap, no duplicate)
    for out in streams:
        ids = [e["id"] for e in out]
        assert ids == sorted(set(ids)), ids
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"gap in {ids}"
    firsts = {tuple(e["id"] for e in out[:6]) for out in streams}
    assert len(firsts) == 1, firsts


def test_concurrent_sweeps_on_all_instances_stall_each_session_once(start_server, shared_db):
    servers = start_instances(start_server, shared_db, 3,
                              ["--sweep-interval-s", "1", "--stall-brake-min", "0",
                               "--restart-grace-s", "0"])
    sids = []
    for i in range(45):
        c = servers[i % 3].client()
        sids.append(create_session(c, heartbeat_timeout_s=1)["session_id"])
    c = servers[0].client()
    poll(lambda: all(get_session(c, s)["status"] == "stalled" for s in sids), 20,
         desc="every session stalled")
    time.sleep(2.5)  # more sweeps on every instance: nothing may happen twice
    stalled = [e for e in db_events(shared_db, {"session.stalled"}) if e["session_id"] in sids]
    assert sorted(e["session_id"] for e in stalled) == sorted(sids), \
        "each session must be stalled exactly once (one event each)"
    for sid in sids[:10]:
        types = [e["type"] for e in session_events(c, sid)]
        assert types == ["session.created", "session.stalled"], types


def test_concurrent_metadata_merges_through_instances_lose_no_key(start_server, shared_db):
    servers = start_instances(start_server, shared_db, 3)
    sid = create_session(servers[0].client())["session_id"]
    errors = []

    def worker(w):
        cl = servers[w % 3].client()
        for i in range(15):
            r = cl.put(f"/sessions/{sid}", json={"metadata": {f"w{w}_{i}": i}})
            if r.status_code != 200:
                errors.append(r.text)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    meta = get_session(servers[1].client(), sid)["metadata"]
    assert len(meta) == 9 * 15, f"lost {9 * 15 - len(meta)} keys"


def _batch_retries(srv):
    text = srv.client().get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("statetrack_store_batch_retries_total"))


SESSIONS, WORKERS, ROUNDS = 12, 8, 8


def test_heartbeats_of_the_same_sessions_through_every_instance_all_land_without_deadlock(
        start_server, shared_db):
    """Behind a load balancer each agent's heartbeats reach any instance, so every instance's
    write batches hold heartbeats of the same sessions at the same time. Every heartbeat is
    acknowledged, no batch has to be run again (a deadlock costs a second), and each session
    keeps the newest acknowledged heartbeat. (The storage suite's
    HeartbeatBatchesOfTwoInstancesOverTheSameSessionsLoseNothing makes the batches big enough
    for locks taken one write at a time to deadlock; over HTTP they are mostly smaller.)"""
    servers = start_instances(start_server, shared_db, 2)
    sids = [create_session(servers[0].client())["session_id"] for _ in range(SESSIONS)]
    errors = []
    acknowledged = {sid: [] for sid in sids}
    lock = threading.Lock()

    def worker(w):
        cl = servers[w % 2].client()
        order = sids if w % 4 < 2 else sids[::-1]
        for _ in range(ROUNDS):
            for sid in order:
                r = cl.post(f"/sessions/{sid}/heartbeat", json={})
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text}")
                    continue
                with lock:
                    acknowledged[sid].append(r.json()["last_heartbeat"])

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert sum(len(v) for v in acknowledged.values()) == WORKERS * ROUNDS * SESSIONS
    assert [_batch_retries(s) for s in servers] == [0, 0]
    for sid in sids:
        stored = get_session(servers[1].client(), sid)["last_heartbeat"]
        assert stored == max(acknowledged[sid]), sid


def test_conflicting_transitions_through_different_instances_never_corrupt_state(
        start_server, shared_db):
    """The lost-transition hammer of test_session_safety, spread over three instances: every
    acknowledged transition is in the history, in an order consistent with what the clients
    saw, and the history obeys the lifecycle rules."""
    servers = start_instances(start_server, shared_db, 3, ["--sweep-interval-s", "1"])
    c = servers[0].client()
    seed = int(time.time())
    t0 = time.monotonic()
    created = create_session(c, heartbeat_timeout_s=1)
    creation = safety.Call("create", t0, time.monotonic(), 201, created, None)
    calls = [creation] + safety._hammer(RoundRobin(servers), created["session_id"], seed)
    events, doc = safety._stable_timeline(c, created["session_id"])
    counts = safety._check_history(calls, events, doc,
                                   f"(seed {seed}; {len(calls)} requests, {len(events)} events)")
    print("hammer over 3 instances:", counts)
    assert counts["session.failed"] >= 1 and counts["hb_ok"] >= 50, counts


# --- command line --------------------------------------------------------------------------------

def test_migrate_and_keys_commands_work_on_postgres(statetrack_bin, shared_db):
    p = subprocess.run([statetrack_bin, "migrate", "--db", shared_db], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "applied migration 1" in p.stdout, (p.stdout, p.stderr)
    p = subprocess.run([statetrack_bin, "migrate", "--db", shared_db], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "up to date" in p.stdout, (p.stdout, p.stderr)
    assert psql(shared_db, "SELECT count(*) FROM schema_migrations") == [["2"]]
    p = subprocess.run([statetrack_bin, "keys", "create", "--name", "pgkey", "--db", shared_db],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("st_"), (p.stdout, p.stderr)
    p = subprocess.run([statetrack_bin, "backup", "/tmp/never", "--db", shared_db],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "pg_dump" in p.stderr, (p.stdout, p.stderr)


def test_the_connection_password_never_reaches_output(start_server, shared_db, statetrack_bin):
    secret = "s3cret-" + uid("pw")
    db = shared_db + f" password={secret}"  # trust authentication ignores it
    srv = start_server([*NO_LIMITS, "--log-level", "debug"], db_path=db)
    expect(srv.client().get("/sessions?limit=1"), 200)
    srv.stop()
    assert not any(secret in line for line in srv.all_output())
    assert any("dbname=" in line for line in srv.all_output()), "the start line names the db"
    # an unreachable database: the error names the database, not the password
    p = subprocess.run([statetrack_bin, "serve", "--port", "0", "--db-timeout-ms", "300", "--db",
                        f"host=127.0.0.1 port={free_port()} dbname=x password={secret}"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "cannot open database" in p.stderr and secret not in p.stderr + p.stdout


# --- database outage ------------------------------------------------------------------------

class Load:
    """Creates sessions continuously; records every request's timing, status and headers."""

    def __init__(self, srv, workers=4):
        self.srv = srv
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results = []  # (t0, t1, status, retry_after, session_id)
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self):
        cl = self.srv.client()
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                r = cl.post("/sessions", json={"project_id": "load", "machine_id": "m"},
                            timeout=30)
                status, ra = r.status_code, r.headers.get("Retry-After")
                sid = r.json().get("session_id") if status == 201 else None
            except requests.RequestException as exc:
                status, ra, sid = repr(exc), None, None
            with self.lock:
                self.results.append((t0, time.monotonic(), status, ra, sid))
            if status != 201:
                time.sleep(0.05)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(40)
        return list(self.results)


def test_database_outage_gives_503_then_service_resumes_by_itself(start_server, cluster_factory):
    cl = cluster_factory()
    base = cl.start()
    psql(pg_conninfo(base, "postgres"), "CREATE DATABASE st")
    timeout_ms = 2000
    srv = start_server([*NO_LIMITS, "--db-timeout-ms", str(timeout_ms)], db_path=cl.conn("st"))
    c = srv.client()
    load = Load(srv).start()
    time.sleep(1.5)

    stopped_at = time.monotonic()
    cl.stop("fast")
    time.sleep(0.3)
    ready = srv.client().get("/health/ready")
    live = srv.client().get("/health/live")
    detailed = srv.client().get("/health/detailed").json()
    # the outage as a client sees it
    t0 = time.monotonic()
    r = c.post("/sessions", json={"project_id": "p", "machine_id": "m"}, timeout=30)
    took = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert r.headers.get("Retry-After"), r.headers
    assert took <= timeout_ms / 1000 + 1.5, f"a request waited {took:.1f}s during the outage"
    assert r.json()["statusCode"] == 503 and "retry" in r.json()["message"].lower()
    expect(c.get("/sessions?limit=1"), 503)
    assert live.status_code == 200 and live.json()["alive"] is True
    assert ready.json()["ready"] is False
    assert detailed["status"] == "unhealthy"
    assert detailed["database"]["status"] == "disconnected", detailed["database"]
    assert detailed["checks"]["database"] == "critical"
    if "reason" in detailed["database"]:
        assert detailed["database"]["reason"], detailed["database"]
    time.sleep(3)  # long enough for the circuit to open: requests now fail at once
    t0 = time.monotonic()
    expect(c.get("/sessions?limit=1"), 503)
    assert time.monotonic() - t0 < 0.5, "with the circuit open a request must fail at once"
    assert srv.running

    cl.start()
    back = time.monotonic()
    poll(lambda: c.post("/sessions", json={"project_id": "p", "machine_id": "m"},
                        timeout=10).status_code == 201, 10, interval=0.05,
         desc="writes succeed again")
    resumed = time.monotonic() - back
    assert resumed <= 5.0, f"service resumed {resumed:.1f}s after the database came back"
    poll(lambda: srv.client().get("/health/ready").json()["ready"] is True, 5,
         desc="ready again")
    time.sleep(0.5)
    results = load.finish()

    outage = [x for x in results if x[0] > stopped_at + 0.2 and x[1] < back]
    assert outage, "the load made no request during the outage"
    assert all(x[2] == 503 and x[3] for x in outage), \
        {str(x[2]) for x in outage if x[2] != 503}
    worst = max(x[1] - x[0] for x in outage)
    assert worst <= timeout_ms / 1000 + 1.5, f"a request took {worst:.1f}s during the outage"
    acked = [x[4] for x in results if x[2] == 201]
    assert len(acked) > 10
    after = [x for x in results if x[0] > back + resumed and x[2] == 201]
    assert after, "the load did not resume"
    # nothing acknowledged is lost (the commit came before the 201)
    missing = [sid for sid in acked if c.get(f"/sessions/{sid}").status_code != 200]
    assert not missing, f"{len(missing)} acknowledged sessions are gone"
    assert srv.running


# --- failover ---------------------------------------------------------------------------------

def test_failover_to_a_promoted_standby_keeps_the_service_and_acknowledged_writes(
        start_server, cluster_factory):
    # Synchronous replication: a commit is acknowledged once the standby has it, so losing
    # the primary loses nothing acknowledged (docs/DEPLOYMENT.md).
    # (Synchronous only once the standby runs: before that every commit would wait for it.)
    primary = cluster_factory("-c wal_level=replica -c max_wal_senders=5 -c hot_standby=on "
                              "-c synchronous_commit=on")
    base = primary.start()
    psql(pg_conninfo(base, "postgres"), "CREATE DATABASE st")
    standby = cluster_factory("-c hot_standby=on")
    os.makedirs(standby.dir, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(standby.dir, "postgres", "postgres")
    p = subprocess.run(as_pg([f"{PG_BIN}/pg_basebackup", "-h", "127.0.0.1", "-p",
                              str(primary.port), "-U", "postgres", "-D", standby.data, "-R",
                              "-X", "stream", "--checkpoint=fast"]),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    standby.start()
    psql(pg_conninfo(base, "postgres"), "ALTER SYSTEM SET synchronous_standby_names = '*'")
    psql(pg_conninfo(base, "postgres"), "SELECT pg_reload_conf()")
    poll(lambda: psql(pg_conninfo(base, "postgres"),
                      "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
         == [["1"]], 20, desc="the standby streams synchronously")

    multi = (f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} user=postgres "
             f"dbname=st target_session_attrs=read-write connect_timeout=2")
    srv = start_server([*NO_LIMITS, "--db-timeout-ms", "3000"], db_path=multi)
    c = srv.client()
    load = Load(srv).start()
    time.sleep(2)

    primary.stop("immediate")  # the primary dies
    killed = time.monotonic()
    time.sleep(1)
    standby.pg_ctl("-w", "promote")
    promoted = time.monotonic()
    poll(lambda: c.post("/sessions", json={"project_id": "p", "machine_id": "m"},
                        timeout=10).status_code == 201, 15, interval=0.1,
         desc="writes succeed on the promoted standby")
    resumed = time.monotonic() - promoted
    time.sleep(1)
    results = load.finish()
    assert srv.running

    assert any(x[2] == 201 and x[0] < killed for x in results)
    assert any(x[2] == 201 and x[0] > promoted for x in results), "service did not continue"
    during = [x for x in results if killed < x[0] < promoted]
    assert all(x[2] in (201, 503) for x in during), {str(x[2]) for x in during}
    print(f"failover: service back {resumed:.2f}s after promotion")
    acked = [x[4] for x in results if x[2] == 201]
    missing = [sid for sid in acked if c.get(f"/sessions/{sid}").status_code != 200]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged sessions lost in failover"
    expect(c.get("/health/ready"), 200)
