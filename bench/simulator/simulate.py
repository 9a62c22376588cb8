#!/usr/bin/env python3
"""Fleet simulator: thousands of agents against a real statetrack, then an audit of every stall.

It starts the server (pinned to one CPU), creates one session per simulated agent and drives
them all from one asyncio loop (pinned to another CPU) over a small pool of HTTP/1.1 keep-alive
connections (its own minimal client; stdlib only):

  normal agents   heartbeat every interval +- jitter until the end
  crash agents    stop for good at a random moment spread over the run
  blip agents     lose the network once or twice for 1..timeout/2 s, capped so that the silence
                  since the last acknowledged heartbeat stays below timeout - margin
  input agents    switch to awaiting_input (no heartbeats) for longer than the timeout, then
                  resume with PUT status=active, once or twice

Half-way (--restart-at) the server gets SIGTERM, stays down for --restart-downtime seconds and
is started again on the same database and port; agents retry failed requests like real ones.

At the end every session's event timeline is read back and audited: false positives (a
session.stalled while its agent was alive), premature stalls (before deadline), true positives,
missed crashes, detection latency (stall occurred_at - last acknowledged heartbeat), heartbeat
success, request counts, mass-stall incidents. A human summary goes to stdout, then one JSON
line. Exit code 0 when the bounds hold, 1 when they are violated, 2 when the run was invalid
(server did not start, simulator fell behind, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import collections
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# ----------------------------------------------------------------------------------------------
# small helpers


_day_cache: dict[str, int] = {}


def iso_ms(s: str) -> int:
    """'2026-01-20T12:00:00.000Z' -> epoch milliseconds (fast path for the server's format)."""
    day = s[:10]
    base = _day_cache.get(day)
    if base is None:
        base = calendar.timegm((int(s[0:4]), int(s[5:7]), int(s[8:10]), 0, 0, 0, 0, 0, 0)) * 1000
        _day_cache[day] = base
    ms = int(s[20:23]) if len(s) > 20 and s[19] == "." else 0
    return base + ((int(s[11:13]) * 60 + int(s[14:16])) * 60 + int(s[17:19])) * 1000 + ms


def ms_iso(ms: float) -> str:
    ms = int(round(ms))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    v = sorted(values)
    k = max(1, math.ceil(p / 100.0 * len(v)))
    return v[k - 1]


def r3(x):
    return None if x is None else round(x, 3)


async def sleep_until(t_wall: float) -> None:
    d = t_wall - time.time()
    if d > 0:
        await asyncio.sleep(d)


# ----------------------------------------------------------------------------------------------
# minimal HTTP/1.1 keep-alive client over asyncio streams


class RequestFailed(Exception):
    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class _Slot:
    __slots__ = ("reader", "writer")

    def __init__(self):
        self.reader = None
        self.writer = None

    def close(self):
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
        self.reader = self.writer = None


class Pool:
    """N connection slots shared by every agent; a request takes a slot, (re)connects if needed."""

    def __init__(self, host: str, port: int, size: int, key: str):
        self.host, self.port, self.key = host, port, key
        self.slots: asyncio.Queue[_Slot] = asyncio.Queue()
        for _ in range(size):
            self.slots.put_nowait(_Slot())
        self.connects = 0
        self.requests = 0
        self.queue_wait: list[float] = []

    async def request(self, method: str, path: str, body: bytes | None, timeout: float):
        t_q = time.monotonic()
        slot = await self.slots.get()
        self.queue_wait.append(time.monotonic() - t_q)
        self.requests += 1
        try:
            async with asyncio.timeout(timeout):
                return await self._do(slot, method, path, body)
        except TimeoutError:
            slot.close()
            raise RequestFailed("timeout")
        except ConnectionRefusedError as e:
            slot.close()
            raise RequestFailed("refused", str(e))
        except asyncio.IncompleteReadError as e:
            slot.close()
            raise RequestFailed("eof", str(e))
        except (ConnectionError, OSError) as e:
            slot.close()
            raise RequestFailed("reset", repr(e))
        except RequestFailed:
            slot.close()
            raise
        finally:
            self.slots.put_nowait(slot)

    async def _do(self, slot: _Slot, method: str, path: str, body: bytes | None):
        if slot.reader is not None and slot.reader.at_eof():
            slot.close()  # the server closed this idle keep-alive connection
        if slot.writer is None:
            slot.reader, slot.writer = await asyncio.open_connection(self.host, self.port)
            self.connects += 1
        body = body or b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"X-API-Key: {self.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        slot.writer.write(head + body)
        await slot.writer.drain()
        raw = await slot.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise RequestFailed("protocol", lines[0])
        status = int(parts[1])
        headers = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await slot.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await slot.reader.readuntil(b"\r\n")
                    break
                chunks.append(await slot.reader.readexactly(size))
                await slot.reader.readexactly(2)
            data = b"".join(chunks)
        else:
            data = await slot.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0":
            slot.close()
        return status, data


# ----------------------------------------------------------------------------------------------
# the server process


class Server:
    def __init__(self, args, workdir: str, binary: str, key: str):
        self.args, self.workdir, self.binary, self.key = args, workdir, binary, key
        self.db = os.path.join(workdir, "statetrack.db")
        self.port = args.port
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.logs: list[str] = []

    def _cmd(self) -> list[str]:
        a = self.args
        cmd = [self.binary, "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--db", self.db, "--sweep-interval-s", str(a.sweep),
               "--rate-limit-default", "0", "--rate-limit-heartbeat", "0",
               "--restart-grace-s", str(a.restart_grace), "--log-level", a.server_log_level]
        if a.server_cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(a.server_cpu)] + cmd
        return cmd

    async def start(self, timeout: float = 30.0) -> float:
        """Starts the server; returns the wall time at which it said it was listening."""
        self.starts += 1
        log = os.path.join(self.workdir, f"server-{self.starts}.log")
        self.logs.append(log)
        env = dict(os.environ, API_KEYS=self.key)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(self._cmd(), stdout=out, stderr=subprocess.STDOUT,
                                         env=env, cwd=self.workdir)
        deadline = time.time() + timeout
        pat = re.compile(rb"statetrack listening on [^\s:]+:(\d+)")
        while time.time() < deadline:
            with open(log, "rb") as f:
                m = pat.search(f.read())
            if m:
                self.port = int(m.group(1))
                return time.time()
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.01)
        with open(log, "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace")
        raise RuntimeError(f"server did not start (rc={self.proc.poll()}): {tail}")

    async def stop(self, timeout: float = 30.0) -> tuple[int | None, float]:
        """SIGTERM and wait; returns (exit code, seconds it took)."""
        if self.proc is None or self.proc.poll() is not None:
            return (self.proc.poll() if self.proc else None), 0.0
        t = time.time()
        self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None and time.time() - t < timeout:
            await asyncio.sleep(0.01)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            return None, time.time() - t
        return self.proc.returncode, time.time() - t

    def cpu_seconds(self) -> float | None:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except Exception:
            return None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ----------------------------------------------------------------------------------------------
# agents


class Agent:
    __slots__ = ("idx", "kind", "sid", "crash_at", "blips", "inputs", "points", "last_ok_send",
                 "last_ack_ms", "crashed_at", "hb_ok", "hb_fail", "blip_log", "input_log",
                 "anomalies", "timeline", "waiting")

    def __init__(self, idx: int, kind: str):
        self.idx, self.kind = idx, kind
        self.sid = None
        self.crash_at = None  # wall time
        self.blips: list[tuple[float, float]] = []  # (wall start, silence s)
        self.inputs: list[tuple[float, float]] = []  # (wall start, wait s)
        self.points: list[tuple[int, str]] = []  # (server ms, c=create h=heartbeat w=wait r=resume)
        self.last_ok_send = 0.0  # wall time the last acknowledged heartbeat (or create/resume) left
        self.last_ack_ms = None  # server last_heartbeat of the last acknowledged heartbeat
        self.crashed_at = None
        self.hb_ok = 0
        self.hb_fail = 0
        self.blip_log: list[dict] = []
        self.input_log: list[dict] = []
        self.anomalies: list[str] = []
        self.timeline: list[dict] = []
        self.waiting = False


class Sim:
    def __init__(self, args):
        self.a = args
        self.rng = random.Random(args.seed)
        self.jrng = random.Random(args.seed + 1)
        self.key = "sim-" + hashlib.sha256(str(args.seed).encode()).hexdigest()[:24]
        self.stop = False
        self.agents: list[Agent] = []
        self.fail_kinds = collections.Counter()
        self.fail_times: list[float] = []
        self.hb_latency: list[float] = []
        self.lateness: list[float] = []
        self.loop_lag: list[float] = []
        self.hb_attempts = 0
        self.hb_ok = 0
        self.blip_suppressed = 0
        self.put_ok = 0
        self.other_status = collections.Counter()
        self.incidents_seen: list[dict] = []
        self.restart: dict = {}
        self.t0 = 0.0
        self.pool: Pool | None = None
        self.server: Server | None = None

    # -- schedule ---------------------------------------------------------------------------

    def interval_draw(self) -> float:
        a = self.a
        return a.interval * (1.0 + self.jrng.uniform(-a.jitter, a.jitter))

    def plan(self):
        a, rng = self.a, self.rng
        n = a.sessions
        n_crash = round(n * a.crash_fraction)
        n_blip = round(n * a.blip_fraction)
        n_input = round(n * a.input_fraction)
        if n_crash + n_blip + n_input > n:
            raise SystemExit("crash + blip + input fractions exceed 1")
        kinds = ["crash"] * n_crash + ["blip"] * n_blip + ["input"] * n_input
        kinds += ["normal"] * (n - len(kinds))
        rng.shuffle(kinds)
        self.agents = [Agent(i, k) for i, k in enumerate(kinds)]
        # Crashes are spread uniformly (sorted, evenly stratified) over [crash_start, duration]
        # so the mass-stall brake cannot trip by design.
        crashers = [ag for ag in self.agents if ag.kind == "crash"]
        lo, hi = a.crash_start, a.duration
        for i, ag in enumerate(crashers):
            ag.crash_at = lo + (hi - lo) * (i + rng.random()) / max(1, len(crashers))
        rng.shuffle(crashers)  # decouple crash time from agent index
        times = sorted(ag.crash_at for ag in crashers)
        for ag, t in zip(crashers, times):
            ag.crash_at = t
        for ag in self.agents:
            if ag.kind == "blip":
                k = rng.choice((1, 2))
                t = rng.uniform(5, a.duration / k)
                for _ in range(k):
                    ag.blips.append((t, rng.uniform(1.0, a.timeout / 2.0)))
                    t += a.timeout + rng.uniform(0, a.duration / 2)
                ag.blips = [b for b in ag.blips if b[0] < a.duration - 2] or ag.blips[:1]
            elif ag.kind == "input":
                k = rng.choice((1, 2))
                t = rng.uniform(5, max(6, a.duration / (2 * k)))
                for _ in range(k):
                    w = rng.uniform(a.input_min * a.timeout, a.input_max * a.timeout)
                    if t + w > a.duration - 2 and ag.inputs:
                        break
                    ag.inputs.append((t, w))
                    t += w + rng.uniform(a.timeout, a.duration / 3)

    # -- requests with agent-like retries -----------------------------------------------------

    def _backoff(self, k: int) -> float:
        return min(self.a.retry_max, 0.1 * (2 ** min(k, 10))) * self.jrng.uniform(0.5, 1.0)

    async def create(self, ag: Agent):
        body = json.dumps({"project_id": "sim", "machine_id": f"sim-m{ag.idx % 50:02d}",
                           "heartbeat_timeout_s": self.a.timeout,
                           "metadata": {"sim_kind": ag.kind, "sim_idx": ag.idx}}).encode()
        k = 0
        while True:
            t = time.time()
            try:
                st, data = await self.pool.request("POST", "/api/sessions", body,
                                                   self.a.request_timeout)
                if st == 201:
                    d = json.loads(data)
                    ag.sid = d["session_id"]
                    ag.points.append((iso_ms(d["created_at"]), "c"))
                    ag.last_ok_send = t
                    return
                self.other_status[f"create {st}"] += 1
            except RequestFailed as e:
                self.fail_kinds["create " + e.kind] += 1
            k += 1
            await asyncio.sleep(self._backoff(k))

    async def heartbeat(self, ag: Agent) -> bool:
        path = f"/api/sessions/{ag.sid}/heartbeat"
        k = 0
        while not self.stop:
            t = time.time()
            self.hb_attempts += 1
            try:
                st, data = await self.pool.request("POST", path, b"{}", self.a.request_timeout)
            except RequestFailed as e:
                self.fail_kinds["heartbeat " + e.kind] += 1
                self.fail_times.append(t)
                ag.hb_fail += 1
                k += 1
                await asyncio.sleep(self._backoff(k))
                if self.crash_due(ag):
                    return False  # it died while retrying (e.g. while the server was down)
                continue
            if st == 200:
                self.hb_latency.append(time.time() - t)
                self.hb_ok += 1
                ag.hb_ok += 1
                d = json.loads(data)
                ms = iso_ms(d["last_heartbeat"])
                ag.points.append((ms, "h"))
                ag.last_ok_send = t
                ag.last_ack_ms = ms
                msg = d.get("message", "")
                if d.get("status") != "active" or msg != "Heartbeat updated successfully":
                    ag.anomalies.append(f"{ms_iso(ms)} heartbeat reply status={d.get('status')} "
                                        f"message={msg!r}")
                if d.get("directive", "continue") != "continue":
                    ag.anomalies.append(f"{ms_iso(ms)} directive={d.get('directive')}")
                return True
            self.other_status[f"heartbeat {st}"] += 1
            self.fail_times.append(t)
            ag.hb_fail += 1
            if st < 500 and st != 429:
                ag.anomalies.append(f"{ms_iso(t * 1000)} heartbeat answered {st}: {data[:200]!r}")
            k += 1
            await asyncio.sleep(self._backoff(k))
            if self.crash_due(ag):
                return False
        return False

    def crash_due(self, ag: Agent) -> bool:
        now = time.time()
        if ag.kind == "crash" and now >= self.t0 + ag.crash_at:
            ag.crashed_at = now
            return True
        return False

    async def put_status(self, ag: Agent, status: str) -> bool:
        path = f"/api/sessions/{ag.sid}"
        body = json.dumps({"status": status}).encode()
        k = 0
        while not self.stop:
            t = time.time()
            try:
                st, data = await self.pool.request("PUT", path, body, self.a.request_timeout)
            except RequestFailed as e:
                self.fail_kinds["put " + e.kind] += 1
                k += 1
                await asyncio.sleep(self._backoff(k))
                continue
            if st == 200:
                self.put_ok += 1
                d = json.loads(data)
                ms = iso_ms(d["updated_at"])
                ag.points.append((ms, "w" if status == "awaiting_input" else "r"))
                if status == "active":
                    ag.last_ok_send = t
                if d.get("status") != status:
                    ag.anomalies.append(f"{ms_iso(ms)} PUT {status} answered status "
                                        f"{d.get('status')}")
                return True
            self.other_status[f"put {st}"] += 1
            k += 1
            await asyncio.sleep(self._backoff(k))
        return False

    # -- one agent ------------------------------------------------------------------------------

    async def run_agent(self, ag: Agent):
        a = self.a
        await self.create(ag)
        nxt = time.time() + self.jrng.uniform(0.2, a.interval)
        while not self.stop:
            await sleep_until(nxt)
            if self.stop:
                return
            now = time.time()
            self.lateness.append(now - nxt)
            if self.crash_due(ag):
                return  # never comes back
            if ag.inputs and now >= self.t0 + ag.inputs[0][0]:
                _, wait = ag.inputs.pop(0)
                ag.waiting = True
                await self.put_status(ag, "awaiting_input")
                w0 = time.time()
                await asyncio.sleep(wait)
                await self.put_status(ag, "active")
                ag.waiting = False
                ag.input_log.append({"start": w0, "wait_s": round(time.time() - w0, 3)})
                nxt = time.time() + self.interval_draw()
                continue
            if ag.blips and now >= self.t0 + ag.blips[0][0]:
                _, silence = ag.blips.pop(0)
                # The network is gone from now on. Cap it so that the silence since the last
                # acknowledged heartbeat stays below timeout - margin: an honest server must
                # never stall this agent.
                cap = ag.last_ok_send + a.timeout - a.blip_margin - now
                eff = max(0.0, min(silence, cap))
                self.blip_suppressed += 1
                ag.blip_log.append({"start": now, "drawn_s": round(silence, 3),
                                    "silence_s": round(eff, 3),
                                    "since_last_ack_s": round(now - ag.last_ok_send, 3)})
                await asyncio.sleep(eff)
            if not await self.heartbeat(ag):
                return
            nxt = ag.last_ok_send + self.interval_draw()

    # -- side tasks -----------------------------------------------------------------------------

    async def lag_monitor(self):
        while not self.stop:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            self.loop_lag.append(time.monotonic() - t - 0.05)

    async def incident_poller(self):
        while not self.stop:
            await asyncio.sleep(2.0)
            await self.poll_incidents()

    async def poll_incidents(self):
        try:
            st, data = await self.pool.request("GET", "/api/incidents", None, 5.0)
            if st == 200:
                inc = json.loads(data).get("incidents", [])
                if inc:
                    self.incidents_seen.append({"seen_at": ms_iso(time.time() * 1000),
                                                "incidents": inc})
        except RequestFailed:
            pass

    async def restart_server(self):
        a = self.a
        await sleep_until(self.t0 + a.restart_at - 1.0)
        # A sentinel session, created just before the restart, tells the grace end exactly.
        sentinel = Agent(-1, "sentinel")
        await self.create(sentinel)
        await sleep_until(self.t0 + a.restart_at)
        r = self.restart
        r["sigterm_at"] = time.time()
        rc, took = await self.server.stop()
        r["old_exit_code"] = rc
        r["drain_s"] = round(took, 3)
        r["exited_at"] = time.time()
        await asyncio.sleep(a.restart_downtime)
        r["listening_at"] = await self.server.start()
        r["down_s"] = round(r["listening_at"] - r["sigterm_at"], 3)
        # The grace end, from the sentinel's deadline once the restart grace has moved it. The
        # server applies the grace asynchronously after it starts listening, so poll for the
        # change (and record how long after "listening" it was seen).
        before = sentinel.points[0][0] + a.timeout * 1000
        t_end = time.time() + 10.0
        while time.time() < t_end:
            try:
                st, data = await self.pool.request("GET", f"/api/sessions/{sentinel.sid}", None,
                                                   5.0)
                if st == 200:
                    d = json.loads(data)
                    dl = iso_ms(d["deadline_at"])
                    if dl != before:
                        r["grace_end_ms"] = dl
                        r["grace_seen_after_listening_s"] = round(
                            time.time() - r["listening_at"], 3)
                        break
            except RequestFailed:
                pass
            await asyncio.sleep(0.005)
        # take the sentinel out of the picture (it is no agent)
        try:
            await self.pool.request("PUT", f"/api/sessions/{sentinel.sid}",
                                    b'{"status":"completed"}', 5.0)
        except RequestFailed:
            pass
        r["sentinel"] = sentinel.sid

    async def fetch_timeline(self, ag: Agent, sem: asyncio.Semaphore):
        async with sem:
            after, events = 0, []
            for attempt in range(50):
                try:
                    st, data = await self.pool.request(
                        "GET", f"/api/sessions/{ag.sid}/events?after={after}&limit=1000", None,
                        10.0)
                except RequestFailed:
                    await asyncio.sleep(0.2)
                    continue
                if st != 200:
                    ag.anomalies.append(f"timeline answered {st}")
                    await asyncio.sleep(0.2)
                    continue
                d = json.loads(data)
                events.extend(d["events"])
                if len(d["events"]) < 1000:
                    break
                after = d["next_after"]
            ag.timeline = events

    # -- the run ----------------------------------------------------------------------------------

    async def run(self) -> dict:
        a = self.a
        self.plan()
        self.pool = Pool("127.0.0.1", self.server.port, a.connections, self.key)
        tasks = [asyncio.create_task(self.lag_monitor())]
        self.t0 = time.time()
        agent_tasks = [asyncio.create_task(self.run_agent(ag)) for ag in self.agents]
        tasks.append(asyncio.create_task(self.incident_poller()))
        restart_task = None
        if a.restart_at > 0:
            restart_task = asyncio.create_task(self.restart_server())
        cpu0 = time.process_time()
        await sleep_until(self.t0 + a.duration)
        if restart_task:
            await restart_task
        # the last crashes need timeout + sweep to be detected; everyone else keeps working
        await sleep_until(self.t0 + a.duration + a.timeout + a.sweep + a.tail)
        self.t_snapshot = time.time()
        server_cpu = self.server.cpu_seconds()
        sem = asyncio.Semaphore(16)
        await asyncio.gather(*(self.fetch_timeline(ag, sem) for ag in self.agents))
        await self.poll_incidents()
        self.t_end = time.time()
        self.stop = True
        for t in agent_tasks + tasks:
            t.cancel()
        await asyncio.gather(*agent_tasks, *tasks, return_exceptions=True)
        self.sim_cpu = time.process_time() - cpu0
        self.server_cpu_second_process = server_cpu
        return self.analyse()

    # -- the audit --------------------------------------------------------------------------------

    def analyse(self) -> dict:
        a = self.a
        T = a.timeout * 1000
        bound_ms = (a.timeout + a.sweep + 1.0) * 1000
        r = self.restart
        sigterm_ms = r.get("sigterm_at", float("inf")) * 1000
        listening_ms = r.get("listening_at", float("inf")) * 1000
        grace_end = r.get("grace_end_ms")
        fps, premature, anomalies, missed = [], [], [], []
        lat_all, lat_checked, lat_grace = [], [], []
        grace_late = []
        over_bound = []  # detections (outside the grace) slower than the bound
        over_bound_grace = 0  # ... of which the deadline fell inside the restart grace
        tp = 0
        stalls_by_kind = collections.Counter()
        gaps = collections.defaultdict(float)  # max liveness gap per kind, outside the restart
        late_silences = []  # simulator's own silences > timeout outside the restart
        h_mismatch = 0
        for ag in self.agents:
            if ag.sid is None:
                anomalies.append({"agent": ag.idx, "kind": ag.kind, "problem": "never created"})
                continue
            stalls = [e for e in ag.timeline if e["type"] == "session.stalled"]
            stalls_by_kind[ag.kind] += len(stalls)
            # simulator honesty: liveness gaps (heartbeat/create/resume to the next one)
            pts = ag.points
            for (p0, k0), (p1, _) in zip(pts, pts[1:]):
                if k0 == "w":
                    continue
                spans_restart = p0 < listening_ms + 5000 and p1 > sigterm_ms
                if spans_restart:
                    continue
                gaps[ag.kind] = max(gaps[ag.kind], (p1 - p0) / 1000)
                if p1 - p0 > T:
                    late_silences.append({"session_id": ag.sid, "kind": ag.kind,
                                          "from": ms_iso(p0), "to": ms_iso(p1),
                                          "gap_s": (p1 - p0) / 1000})
            detection = None
            for e in stalls:
                s = iso_ms(e["occurred_at"])
                dl = iso_ms(e["data"]["deadline_at"]) if e["data"].get("deadline_at") else None
                lhb = iso_ms(e["data"]["last_heartbeat"])
                # the last liveness point the agent had acknowledged before the stall
                prior = [p for p in pts if p[0] <= s]
                live = [p for p in prior if p[1] in "chr"]
                last_live = live[-1][0] if live else None
                in_wait = bool(prior) and prior[-1][1] == "w"
                early = (dl is not None and s <= dl) or s < lhb + T or (
                    last_live is not None and s < last_live + T)
                alive = ag.kind != "crash" or ag.crashed_at is None or s < ag.crashed_at * 1000
                if early:
                    premature.append(self.describe(ag, e, "stalled before its deadline"))
                if alive:
                    why = ("stalled while awaiting_input" if in_wait
                           else "stalled while its agent was alive")
                    fps.append(self.describe(ag, e, why))
                    continue
                if detection is None:
                    detection = (s, e)
                else:
                    anomalies.append(self.describe(ag, e, "second stall after the crash"))
            if ag.kind != "crash":
                continue
            if ag.crashed_at is None:
                anomalies.append({"session_id": ag.sid, "problem": "crash agent never crashed"})
                continue
            after = [e for e in ag.timeline if e["type"] == "session.reactivated"
                     and iso_ms(e["occurred_at"]) > ag.crashed_at * 1000]
            if after:
                anomalies.append(self.describe(ag, after[0], "reactivated after the crash"))
            if detection is None:
                missed.append(self.describe(ag, None, "crash never detected"))
                continue
            tp += 1
            s, e = detection
            H = ag.last_ack_ms if ag.last_ack_ms is not None else pts[0][0]
            if iso_ms(e["data"]["last_heartbeat"]) != H:
                h_mismatch += 1
            lat = (s - H) / 1000
            lat_all.append(lat)
            held = (grace_end is not None and H < sigterm_ms
                    and grace_end <= s <= grace_end + bound_ms - T)
            if held:
                lat_grace.append({"session_id": ag.sid, "latency_s": lat,
                                  "after_grace_end_s": (s - grace_end) / 1000,
                                  "last_ack": ms_iso(H), "stalled": e["occurred_at"]})
            else:
                lat_checked.append(lat)
                if lat * 1000 > bound_ms:
                    x = self.describe(ag, e, f"detected {lat:.3f}s after the last "
                                             f"acknowledged heartbeat")
                    if grace_end is not None and H >= listening_ms - 1000 and H + T < grace_end:
                        # acknowledged after the restart, deadline before the grace end, stalled
                        # only at the grace end: the grace held a session it had no reason to
                        x["note"] = ("heartbeat after the restart moved deadline_at before the "
                                     "grace end, stall waited for the grace end")
                        over_bound_grace += 1
                    over_bound.append(x)
                if (grace_end is not None and H < sigterm_ms and s >= listening_ms
                        and s > grace_end + bound_ms - T):
                    grace_late.append(self.describe(ag, e, "stalled late after the grace end"))
        n_crash = sum(1 for ag in self.agents if ag.kind == "crash")
        lags = self.loop_lag or [0.0]
        fail_total = len(self.fail_times)
        fail_restart = sum(1 for t in self.fail_times
                           if sigterm_ms / 1000 - 1 <= t <= listening_ms / 1000 + 10)
        p99 = pct(lat_checked, 99)
        checks = {
            "zero_false_positives": not fps,
            "zero_premature_stalls": not premature,
            "every_crash_detected": not missed and tp == n_crash,
            "latency_p99_within_bound": p99 is not None and p99 <= bound_ms / 1000,
            "grace_held_detected_by_grace_end_plus_sweep": not grace_late,
            "no_mass_stall_incident": not self.incidents_seen and not self.log_says_brake(),
            "server_exit_codes_zero": r.get("old_exit_code", 0) == 0
                                      and getattr(self, "final_exit_code", 0) == 0,
        }
        validity = {
            "simulator_silences_over_timeout": len(late_silences),
            "loop_lag_max_s": r3(max(lags)),
            "grace_end_known": grace_end is not None or a.restart_at <= 0,
        }
        valid = not late_silences and validity["grace_end_known"]
        return {
            "params": {k: getattr(a, k) for k in (
                "sessions", "timeout", "interval", "jitter", "sweep", "duration",
                "crash_fraction", "blip_fraction", "input_fraction", "restart_at",
                "restart_downtime", "restart_grace", "blip_margin", "connections", "seed")},
            "agents": dict(collections.Counter(ag.kind for ag in self.agents)),
            "false_positives": len(fps),
            "premature_stalls": len(premature),
            "true_positives": tp,
            "crashes": n_crash,
            "missed_crashes": len(missed),
            "latency_bound_s": bound_ms / 1000,
            "latency_s": {"n": len(lat_checked), "p50": r3(pct(lat_checked, 50)),
                          "p95": r3(pct(lat_checked, 95)), "p99": r3(p99),
                          "max": r3(max(lat_checked) if lat_checked else None),
                          "min": r3(min(lat_checked) if lat_checked else None)},
            "grace_held": {"n": len(lat_grace),
                           "latency_max_s": r3(max((g["latency_s"] for g in lat_grace),
                                                   default=None)),
                           "after_grace_end_max_s": r3(max((g["after_grace_end_s"]
                                                            for g in lat_grace), default=None))},
            "latency_all_p99_s": r3(pct(lat_all, 99)),
            "detections_over_bound": len(over_bound),
            "detections_over_bound_deadline_inside_grace": over_bound_grace,
            "stall_last_heartbeat_differs_from_last_ack": h_mismatch,
            "stalls_by_kind": dict(stalls_by_kind),
            "heartbeats": {"attempted": self.hb_attempts, "ok": self.hb_ok,
                           "success_rate": r3(self.hb_ok / max(1, self.hb_attempts)),
                           "failed": fail_total, "failed_around_restart": fail_restart,
                           "failed_elsewhere": fail_total - fail_restart,
                           "success_rate_outside_restart": r3(
                               self.hb_ok / max(1, self.hb_attempts - fail_restart)),
                           "blips": self.blip_suppressed,
                           "rate_per_s": r3(self.hb_ok / max(1e-9, self.t_snapshot - self.t0)),
                           "latency_ms": {"p50": r3(1000 * (pct(self.hb_latency, 50) or 0)),
                                          "p99": r3(1000 * (pct(self.hb_latency, 99) or 0)),
                                          "max": r3(1000 * max(self.hb_latency or [0]))}},
            "failures_by_kind": dict(self.fail_kinds),
            "unexpected_statuses": dict(self.other_status),
            "requests": self.pool.requests,
            "connects": self.pool.connects,
            "put_ok": self.put_ok,
            "max_liveness_gap_s": {k: r3(v) for k, v in gaps.items()},
            "blip_silence_max_s": r3(max((b["since_last_ack_s"] + b["silence_s"]
                                          for ag in self.agents for b in ag.blip_log),
                                         default=None)),
            "input_wait_s": {"n": sum(len(ag.input_log) for ag in self.agents),
                             "min": r3(min((i["wait_s"] for ag in self.agents
                                            for i in ag.input_log), default=None)),
                             "max": r3(max((i["wait_s"] for ag in self.agents
                                            for i in ag.input_log), default=None))},
            "restart": {k: (ms_iso(v * 1000) if k.endswith("_at") else v)
                        for k, v in r.items() if not k.endswith("_ms")}
                       | ({"grace_end": ms_iso(grace_end)} if grace_end else {})
                       | {"grace_given_to": self.log_grace_count()},
            "incidents": self.incidents_seen,
            "mass_stall_in_log": self.log_says_brake(),
            "simulator": {"loop_lag_p99_s": r3(pct(lags, 99)), "loop_lag_max_s": r3(max(lags)),
                          "send_lateness_p99_s": r3(pct(self.lateness, 99)),
                          "send_lateness_max_s": r3(max(self.lateness or [0])),
                          "pool_wait_p99_ms": r3(1000 * (pct(self.pool.queue_wait, 99) or 0)),
                          "cpu_s": r3(self.sim_cpu),
                          "wall_s": r3(self.t_end - self.t0)},
            "server_cpu_s_second_process": r3(self.server_cpu_second_process),
            "checks": checks,
            "validity": validity,
            "valid": valid,
            "passed": valid and all(checks.values()),
            "details": {"false_positives": fps[:20], "premature": premature[:20],
                        "missed": missed[:20], "over_bound": over_bound[:20],
                        "grace_late": grace_late[:20],
                        "anomalies": anomalies[:20],
                        "agent_anomalies": [f"{ag.sid} ({ag.kind}): {x}" for ag in self.agents
                                            for x in ag.anomalies][:40],
                        "simulator_late_silences": late_silences[:20],
                        "grace_held_sample": lat_grace[:5]},
        }

    def describe(self, ag: Agent, e: dict | None, problem: str) -> dict:
        out = {"problem": problem, "session_id": ag.sid, "kind": ag.kind}
        if e is not None:
            d = e.get("data", {})
            out["event"] = {"seq": e.get("seq"), "type": e["type"],
                            "occurred_at": e["occurred_at"],
                            "last_heartbeat": d.get("last_heartbeat"),
                            "deadline_at": d.get("deadline_at")}
            s = iso_ms(e["occurred_at"])
            before = [p for p in ag.points if p[0] <= s][-4:]
            after = [p for p in ag.points if p[0] > s][:2]
            out["agent_points_before"] = [(ms_iso(p), k) for p, k in before]
            out["agent_points_after"] = [(ms_iso(p), k) for p, k in after]
            if before:
                out["silence_at_stall_s"] = (s - before[-1][0]) / 1000
                # True means the simulated agent itself broke the timeout (simulator's fault, the
                # run is then marked invalid); False on a false positive means a server bug.
                out["agent_silent_longer_than_timeout"] = (
                    before[-1][1] in "chr" and s - before[-1][0] > self.a.timeout * 1000)
            out["expected"] = ("no stall: the agent was alive" if "alive" in problem
                               or "awaiting" in problem else
                               f"stall after deadline ({self.a.timeout}s after the last "
                               f"liveness point)")
        if ag.crashed_at:
            out["crashed_at"] = ms_iso(ag.crashed_at * 1000)
            out["last_ack"] = ms_iso(ag.last_ack_ms) if ag.last_ack_ms else None
        if ag.blip_log:
            out["blips"] = [{**b, "start": ms_iso(b["start"] * 1000)} for b in ag.blip_log]
        if ag.input_log:
            out["inputs"] = [{**i, "start": ms_iso(i["start"] * 1000)} for i in ag.input_log]
        out["timeline"] = [(x["seq"], x["type"], x["occurred_at"],
                            x.get("data", {}).get("status"),
                            x.get("data", {}).get("last_heartbeat"),
                            x.get("data", {}).get("deadline_at")) for x in ag.timeline]
        return out

    def _logs(self) -> str:
        out = []
        for p in self.server.logs:
            try:
                with open(p, errors="replace") as f:
                    out.append(f.read())
            except OSError:
                pass
        return "\n".join(out)

    def log_says_brake(self) -> bool:
        return "mass-stall brake engaged" in self._logs()

    def log_grace_count(self):
        m = re.findall(r'restart grace given to overdue sessions.*?"sessions":(\d+)', self._logs())
        return int(m[-1]) if m else 0


# ----------------------------------------------------------------------------------------------


def summary(res: dict) -> str:
    p, L = res["params"], res["latency_s"]
    hb, r, s = res["heartbeats"], res["restart"], res["simulator"]
    lines = [
        f"statetrack fleet simulation: {p['sessions']} sessions, timeout {p['timeout']} s, "
        f"interval {p['interval']:.2f} s +-{int(p['jitter'] * 100)}%, sweep {p['sweep']} s, "
        f"{p['duration']} s, seed {p['seed']}",
        f"  agents: {res['agents']}",
        (f"  restart: none" if not r.get("sigterm_at") else
         f"  restart: SIGTERM at {r.get('sigterm_at')} (exit {r.get('old_exit_code')}, drain "
        f"{r.get('drain_s')} s), listening again at {r.get('listening_at')} "
        f"(down {r.get('down_s')} s), grace end {r.get('grace_end')} (applied <= "
        f"{r.get('grace_seen_after_listening_s')} s after listening), grace given to "
        f"{r.get('grace_given_to')} sessions"),
        f"  false positives: {res['false_positives']}   premature stalls: "
        f"{res['premature_stalls']}",
        f"  crashes: {res['crashes']}, detected: {res['true_positives']}, missed: "
        f"{res['missed_crashes']}",
        f"  detection latency (stall - last acked heartbeat), n={L['n']}: p50 {L['p50']} s, "
        f"p95 {L['p95']} s, p99 {L['p99']} s, max {L['max']} s, min {L['min']} s "
        f"(bound {res['latency_bound_s']} s); over the bound: {res['detections_over_bound']} "
        f"({res['detections_over_bound_deadline_inside_grace']} with a post-restart deadline "
        f"inside the grace)",
        f"  held by the restart grace: {res['grace_held']['n']} crashes, stalled at most "
        f"{res['grace_held']['after_grace_end_max_s']} s after the grace end "
        f"(latency up to {res['grace_held']['latency_max_s']} s)",
        f"  heartbeats: {hb['ok']}/{hb['attempted']} ok ({hb['success_rate']}), "
        f"{hb['rate_per_s']}/s, failed {hb['failed']} ({hb['failed_around_restart']} around "
        f"the restart, {hb['failed_elsewhere']} elsewhere; success outside the restart "
        f"{hb['success_rate_outside_restart']}), latency p50 "
        f"{hb['latency_ms']['p50']} ms p99 {hb['latency_ms']['p99']} ms max "
        f"{hb['latency_ms']['max']} ms",
        f"  failures: {res['failures_by_kind']}  unexpected statuses: "
        f"{res['unexpected_statuses']}",
        f"  requests: {res['requests']} ({res['connects']} connects); stalls by kind: "
        f"{res['stalls_by_kind']}",
        f"  max liveness gap outside the restart: {res['max_liveness_gap_s']} s; blip silence "
        f"max {res['blip_silence_max_s']} s; input waits {res['input_wait_s']}",
        f"  mass-stall incident: {'YES' if res['incidents'] or res['mass_stall_in_log'] else 'no'}",
        f"  simulator: loop lag p99 {s['loop_lag_p99_s']} s max {s['loop_lag_max_s']} s, send "
        f"lateness p99 {s['send_lateness_p99_s']} s max {s['send_lateness_max_s']} s, cpu "
        f"{s['cpu_s']} s over {s['wall_s']} s; server cpu (2nd process) "
        f"{res['server_cpu_s_second_process']} s",
        f"  checks: " + ", ".join(f"{k}={'ok' if v else 'FAIL'}" for k, v in res["checks"].items()),
        f"  valid run: {res['valid']}   RESULT: {'PASS' if res['passed'] else 'FAIL'}",
    ]
    d = res["details"]
    for name in ("false_positives", "premature", "missed", "over_bound", "grace_late", "anomalies",
                 "agent_anomalies", "simulator_late_silences"):
        if d[name]:
            lines.append(f"  -- {name} (first {len(d[name])}):")
            for x in d[name]:
                lines.append("     " + json.dumps(x))
    return "\n".join(lines)


def parse_args(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(here, "..", "..", "build", "release",
                                                  "statetrack"))
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--timeout", type=int, default=10, help="heartbeat_timeout_s per session")
    ap.add_argument("--interval", type=float, default=None, help="default: timeout / 3")
    ap.add_argument("--jitter", type=float, default=0.5, help="uniform +- fraction of interval")
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of traffic")
    ap.add_argument("--crash-fraction", type=float, default=0.1)
    ap.add_argument("--crash-start", type=float, default=5.0, help="earliest crash (s)")
    ap.add_argument("--blip-fraction", type=float, default=0.1)
    ap.add_argument("--blip-margin", type=float, default=1.0,
                    help="a blip ends at least this long before the deadline of the last ack")
    ap.add_argument("--input-fraction", type=float, default=0.1)
    ap.add_argument("--input-min", type=float, default=1.2, help="wait, in timeouts")
    ap.add_argument("--input-max", type=float, default=2.5, help="wait, in timeouts")
    ap.add_argument("--restart-at", type=float, default=None,
                    help="seconds into the run to SIGTERM and restart (default: duration/2; "
                         "0 = no restart)")
    ap.add_argument("--restart-downtime", type=float, default=8.0,
                    help="seconds between the old process's exit and the new start")
    ap.add_argument("--restart-grace", type=int, default=15, help="server --restart-grace-s")
    ap.add_argument("--sweep", type=int, default=1, help="server --sweep-interval-s")
    ap.add_argument("--tail", type=float, default=5.0,
                    help="extra wait after duration + timeout + sweep")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--port", type=int, default=0, help="0 = the server picks one")
    ap.add_argument("--connections", type=int, default=48, help="client connection pool")
    ap.add_argument("--request-timeout", type=float, default=5.0)
    ap.add_argument("--retry-max", type=float, default=1.0, help="retry back-off cap (s)")
    ap.add_argument("--server-cpu", default="0", help="taskset CPU list for the server; "
                    "'' = no pinning")
    ap.add_argument("--client-cpu", default="1", help="CPU list for the simulator; '' = none")
    ap.add_argument("--server-log-level", default="warn")
    ap.add_argument("--workdir", default=None, help="default: a new temp dir")
    ap.add_argument("--keep", action="store_true", help="keep the workdir even on success")
    a = ap.parse_args(argv)
    if a.interval is None:
        a.interval = a.timeout / 3.0
    if a.restart_at is None:
        a.restart_at = a.duration / 2.0
    a.server_cpu = a.server_cpu or None
    return a


def wait_for_binary(path: str, limit: float = 300.0) -> None:
    t = time.time()
    while not (os.path.isfile(path) and os.access(path, os.X_OK)):
        if time.time() - t > limit:
            raise SystemExit(f"binary {path} not found")
        print(f"waiting for {path} ...", file=sys.stderr)
        time.sleep(5)


async def amain(a) -> int:
    bin_path = os.path.abspath(a.bin)
    wait_for_binary(bin_path)
    workdir = a.workdir or tempfile.mkdtemp(prefix="statetrack-sim-")
    os.makedirs(workdir, exist_ok=True)
    # A private copy: a rebuild of build/release during the run cannot change the binary under
    # us, and the restart starts exactly the same one.
    binary = os.path.join(workdir, "statetrack")
    for _ in range(60):
        try:
            shutil.copy2(bin_path, binary)
            break
        except OSError:
            time.sleep(2)
    with open(binary, "rb") as f:
        bin_sha = hashlib.sha256(f.read()).hexdigest()[:16]
    version = subprocess.run([binary, "version"], capture_output=True, text=True).stdout.strip()
    if a.client_cpu:
        try:
            os.sched_setaffinity(0, {int(c) for c in a.client_cpu.split(",")})
        except (OSError, ValueError) as e:
            print(f"cannot pin the simulator to CPU {a.client_cpu}: {e}", file=sys.stderr)
    sim = Sim(a)
    sim.server = Server(a, workdir, binary, sim.key)
    code = 2
    try:
        await sim.server.start()
        print(f"server {version} ({bin_sha}) listening on 127.0.0.1:{sim.server.port}; "
              f"workdir {workdir}", file=sys.stderr)
        res = await sim.run()
        rc, _ = await sim.server.stop()
        sim.final_exit_code = rc
        res["checks"]["server_exit_codes_zero"] = (res["restart"].get("old_exit_code", 0) == 0
                                                   and rc == 0)
        res["passed"] = res["valid"] and all(res["checks"].values())
        res["binary"] = {"path": bin_path, "sha256_16": bin_sha, "version": version}
        res["workdir"] = workdir
        print(summary(res))
        print(json.dumps(res, separators=(",", ":")))
        code = 0 if res["passed"] else (2 if not res["valid"] else 1)
    finally:
        sim.server.kill()
        if code == 0 and not a.keep and a.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"workdir kept: {workdir}", file=sys.stderr)
    return code


def main() -> int:
    a = parse_args()
    try:
        return asyncio.run(amain(a))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
