"""Live event streams (docs/API.md "Events: history and live streams"): the WebSocket
(GET /events) and server-sent events (GET /events/stream) transports, their filters, resuming
with `since` / Last-Event-ID (after a dropped connection and across a restart), resync when the
log no longer holds what is asked, events made by the sweep, authentication (keys, single-use
tickets, revocation), keepalives, and the limits (slow consumers, client message rate and size).

Every read has a timeout. The reference for "what should have arrived" is either the session
timelines (GET /sessions/:id/events) or, on a server of the test's own, an unfiltered read of
the whole log, which must be exactly seq 1..N (the log is gap-free)."""
import asyncio
import base64
import json
import os
import random
import re
import socket
import struct
import subprocess
import threading
import time
from urllib.parse import urlencode, urlsplit

import pytest
import websockets
import websockets.exceptions

from conftest import API_KEY, Server
from st_helpers import (ISO_RE, assert_error, assert_recent, create_machine, create_session,
                        create_task, expect, now_utc, parse_iso, poll, put_session, raw_request,
                        session_events, uid)

NO_LIMITS = ["--rate-limit-default", "0", "--rate-limit-heartbeat", "0"]
# An SSE stream notices a client that went away only when it next writes; with a 1 s keepalive
# that is within a second, so the servers of these tests stop promptly after their clients
# closed (test_sigterm_with_open_streams_exits_promptly covers streams still open at SIGTERM).
FAST = [*NO_LIMITS, "--stream-keepalive-s", "1"]
EVENT_KEYS = {"type", "seq", "event_type", "occurred_at", "data"}
OPTIONAL_EVENT_KEYS = {"project_id", "session_id", "task_id", "machine_id"}
READ_S = 10  # default bound on waiting for something a stream must deliver


# --- a synchronous WebSocket client (websockets 10.x has only the asyncio API) -----------------

_loop = None
_loop_lock = threading.Lock()


def _aloop():
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, daemon=True, name="ws-loop").start()
        return _loop


def _run(coro, timeout):
    return asyncio.run_coroutine_threadsafe(coro, _aloop()).result(timeout)


_open_clients = []  # closed after every test (see _close_clients)


def _ws_url(srv, prefix, path, params):
    u = srv.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    return u + prefix + path + (("?" + urlencode(params)) if params else "")


class WS:
    """One WebSocket connection to an event stream. recv() returns the next JSON message, None
    once the connection is closed (close_code then says how), and raises TimeoutError."""

    def __init__(self, srv, params=None, key=API_KEY, headers=None, prefix="", path="/events",
                 **kw):
        hdrs = {"X-API-Key": key} if key is not None else {}
        hdrs.update(headers or {})
        self.url = _ws_url(srv, prefix, path, params)
        kw.setdefault("ping_interval", None)  # the server pings; we only answer
        kw.setdefault("max_size", None)
        kw.setdefault("close_timeout", 2)

        async def _connect():
            return await websockets.connect(self.url, extra_headers=hdrs, open_timeout=10, **kw)
        self.ws = _run(_connect(), 15)
        _open_clients.append(self)

    def send(self, obj):
        text = obj if isinstance(obj, str) else json.dumps(obj)
        _run(self.ws.send(text), 10)

    def recv(self, timeout=READ_S):
        async def _r():
            return await asyncio.wait_for(self.ws.recv(), timeout)
        try:
            text = _run(_r(), timeout + 5)
        except websockets.exceptions.ConnectionClosed:
            return None
        except (asyncio.TimeoutError, TimeoutError):
            raise TimeoutError(f"no WebSocket message within {timeout}s on {self.url}")
        return json.loads(text)

    def quiet(self, seconds):
        """Assert that nothing arrives for `seconds`."""
        try:
            m = self.recv(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message on {self.url}: {m}")

    def sync(self):
        """A ping/pong round trip: the server has set up the subscription once this returns."""
        self.send({"type": "ping"})
        m = self.recv()
        assert m == {"type": "pong"}, m

    def wait_closed(self, timeout=READ_S):
        """Read until the server closes; returns the messages that came before."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.url} still open after {timeout}s; got "
                                     f"{_brief(out)}")
            try:
                m = self.recv(left)
            except TimeoutError:
                continue
            if m is None:
                return out
            out.append(m)

    @property
    def close_code(self):
        return self.ws.close_code

    @property
    def open(self):
        return self.ws.open

    def abort(self):
        """Drop the connection without a close handshake."""
        async def _abort():
            self.ws.transport.abort()
            await asyncio.wait_for(self.ws.wait_closed(), 3)
        try:
            _run(_abort(), 5)
        except Exception:  # noqa: BLE001 - best effort
            pass

    def close(self):
        if self.ws.closed:
            return
        try:
            _run(asyncio.wait_for(self.ws.close(), 3), 5)
        except Exception:  # noqa: BLE001 - best effort
            pass


def _brief(items):
    """Messages / frames summarised for an assertion message."""
    out = []
    for m in items:
        d = m.get("data") if "id" in m or "event" in m else m
        if isinstance(d, dict) and d.get("type") == "event":
            out.append(f"{d['seq']}:{d['event_type']}")
        else:
            out.append(m)
    return out


def ws_rejected(srv, params=None, key=API_KEY, headers=None, prefix=""):
    """The HTTP status of a refused WebSocket handshake (fails if it was accepted)."""
    try:
        w = WS(srv, params=params, key=key, headers=headers, prefix=prefix)
    except websockets.exceptions.InvalidStatusCode as e:
        return e.status_code
    w.close()
    raise AssertionError(f"WebSocket handshake to {w.url} was accepted")


# --- a server-sent events client over a plain socket (receive buffer under our control) --------

class SSE:
    """One SSE request. For a 200 the frames are read with next(); otherwise status/json hold
    the error response."""

    def __init__(self, srv, params=None, key=API_KEY, headers=None, prefix="",
                 path="/events/stream", rcvbuf=None, timeout=READ_S):
        u = urlsplit(srv.base_url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((u.hostname, u.port))
        self.target = prefix + path + (("?" + urlencode(params)) if params else "")
        lines = [f"GET {self.target} HTTP/1.1", f"Host: {u.hostname}:{u.port}",
                 "Accept: text/event-stream"]
        if key is not None:
            lines.append(f"X-API-Key: {key}")
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        self.closed = False
        _open_clients.append(self)
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if self.closed:
                raise AssertionError(f"connection closed before a response head: {self.buf!r}")
            self._more(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        hl = head.decode("latin-1").split("\r\n")
        self.status = int(hl[0].split()[1])
        self.headers = {}
        for line in hl[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.json = None
        if self.status != 200:
            n = int(self.headers.get("content-length", "0"))
            while len(self.buf) < n and not self.closed:
                self._more(deadline)
            self.json = json.loads(self.buf[:n]) if n else None
            self.close()

    def _more(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"nothing more on {self.target}")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(f"nothing more on {self.target}")
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
        self.buf += chunk

    def next(self, timeout=READ_S):
        """The next frame as a dict (keys: id, event, data (parsed JSON), retry, comments); None
        once the server has closed the stream. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            i = self.buf.find(b"\n\n")
            if i >= 0:
                raw, self.buf = self.buf[:i], self.buf[i + 2:]
                return _parse_frame(raw.decode())
            if self.closed:
                assert not self.buf.strip(), f"stream closed inside a frame: {self.buf[:200]!r}"
                return None
            self._more(deadline)

    def next_event_frame(self, timeout=READ_S):
        """The next frame that is not a comment or the retry hint (None when closed)."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.next(max(0.01, deadline - time.monotonic()))
            if f is None or "event" in f or "data" in f:
                return f

    def quiet(self, seconds):
        try:
            f = self.next_event_frame(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame on {self.target}: {f}")

    def wait_closed(self, timeout=READ_S):
        out = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.target} still open after {timeout}s; got "
                                     f"{_brief(out)}")
            try:
                f = self.next(left)
            except TimeoutError:
                continue
            if f is None:
                return out
            out.append(f)

    def close(self):
        try:
            # RST instead of FIN: the server's next write (a keepalive) fails at once
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass


def _parse_frame(text):
    f = {}
    for line in text.split("\n"):
        if line.startswith(":"):
            f.setdefault("comments", []).append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            f["data"] = f["data"] + "\n" + value if "data" in f else value
        else:
            f[name] = value
    if "data" in f:
        f["data"] = json.loads(f["data"])
    return f


def sse_open(srv, params=None, **kw):
    s = SSE(srv, params=params, **kw)
    assert s.status == 200, (s.status, s.json)
    assert s.headers.get("content-type", "").startswith("text/event-stream"), s.headers
    first = s.next()
    assert first == {"retry": "2000"}, first
    return s


@pytest.fixture(autouse=True)
def _close_clients(start_server):
    """Closes this test's stream clients before its servers stop."""
    yield
    while _open_clients:
        _open_clients.pop().close()


# --- reading events ----------------------------------------------------------------------------

def take(stream, n, timeout=READ_S):
    """Exactly the next n events (the JSON objects) from an SSE or WebSocket stream; fails on a
    control message or when the stream closes."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(out)} of {n} events within {timeout}s: "
                                 f"{[(e['seq'], e['event_type']) for e in out]}")
        try:
            e = _next_event(stream, left)
        except TimeoutError:
            continue
        out.append(e)
    return out


def take_until(stream, pred, timeout=READ_S):
    """Events until (and including) the first for which pred(event) holds."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the awaited event did not arrive within {timeout}s; got "
                                 f"{[(e['seq'], e['event_type']) for e in out][-20:]}")
        try:
            e = _next_event(stream, left)
        except TimeoutError:
            continue
        out.append(e)
        if pred(e):
            return out


def _next_event(stream, timeout):
    if isinstance(stream, SSE):
        f = stream.next_event_frame(timeout)
        assert f is not None, f"SSE stream {stream.target} closed"
        assert f.get("event") not in ("error", "resync"), f"control frame: {f}"
        e = f["data"]
        assert f["id"] == str(e["seq"]), f
        assert f["event"] == e["event_type"], f
        return e
    m = stream.recv(timeout)
    assert m is not None, f"WebSocket {stream.url} closed ({stream.close_code})"
    assert m.get("type") == "event", f"control message: {m}"
    return m


def seqs(events):
    return [e["seq"] for e in events]


def assert_event_shape(e):
    assert EVENT_KEYS <= set(e) <= EVENT_KEYS | OPTIONAL_EVENT_KEYS, e
    assert e["type"] == "event"
    assert isinstance(e["seq"], int) and e["seq"] >= 1, e
    assert ISO_RE.match(e["occurred_at"]), e
    assert isinstance(e["data"], dict), e


def history_as_stream(h):
    """A GET /sessions/:id/events entry in the shape of a stream event."""
    e = {k: v for k, v in h.items() if k not in ("type",)}
    e["type"] = "event"
    e["event_type"] = h["type"]
    return e


def history_of(c, sids, upto=None):
    """Every event of these sessions (their timelines), by seq, as stream events."""
    by_seq = {}
    for sid in sids:
        for h in session_events(c, sid):
            by_seq[h["seq"]] = history_as_stream(h)
    return [by_seq[s] for s in sorted(by_seq) if upto is None or s <= upto]


def matches(e, f):
    """The server's filter, in Python (docs/API.md)."""
    for k in ("project_id", "session_id", "machine_id"):
        if f.get(k) is not None and e.get(k, "") != f[k]:
            return False
    types = f.get("types") or []
    if not types:
        return True
    for t in types:
        if t.endswith(".*") and len(t) >= 2:
            if e["event_type"].startswith(t[:-1]):
                return True
        elif t == e["event_type"]:
            return True
    return False


def query_of(f):
    q = {k: v for k, v in f.items() if k != "types"}
    if f.get("types"):
        q["types"] = ",".join(f["types"])
    return q


def fence(c, tag="fence"):
    """A marker event: creates a session in a project of its own; returns that project."""
    proj = uid(tag)
    create_session(c, project_id=proj, heartbeat_timeout_s=600)
    return proj


def read_whole_log(srv, until_project):
    """Unfiltered since=0 read on a server of the test's own, up to the fence session."""
    s = sse_open(srv, {"since": 0})
    try:
        ev = take_until(s, lambda e: e.get("project_id") == until_project, 30)
    finally:
        s.close()
    assert seqs(ev) == list(range(1, len(ev) + 1)), "the log must be gap-free from seq 1"
    return ev


def _metric(c, name):
    r = c.get("/metrics")
    assert r.status_code == 200, r.text[:300]
    m = re.search(rf"^{re.escape(name)}(?:\{{\}})? (\S+)$", r.text, re.M)
    return float(m.group(1)) if m else None


# --- keys (tests/api/test_auth.py does the same) -----------------------------------------------

KEY_RE = re.compile(r"st_[A-Za-z0-9]{40}(?![A-Za-z0-9])")


def _keys(binary, *args):
    p = subprocess.run([binary, "keys", *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p


def _db_key(binary, db, name):
    """Creates a database key; returns (key, prefix shown by `keys list`)."""
    keys = KEY_RE.findall(_keys(binary, "create", "--db", str(db), "--name", name).stdout)
    assert len(keys) == 1
    key = keys[0]
    lines = [l for l in _keys(binary, "list", "--db", str(db)).stdout.splitlines() if name in l]
    assert len(lines) == 1, lines
    prefix = next((f for f in re.split(r"\s+", lines[0].strip())
                   if len(f) >= 4 and key.startswith(f) and f != key), None)
    assert prefix, lines
    return key, prefix


# --- the module's server ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(statetrack_bin, tmp_path_factory):
    """This module's own shared server (overrides conftest's for client/rc/anon too): rate
    limits off, sweeps every second, keepalive every second. Stream connections do not touch
    the suite's shared server, so an open stream cannot delay or break its shutdown."""
    d = tmp_path_factory.mktemp("events")
    srv = Server(statetrack_bin, d / "st.db", [*FAST, "--sweep-interval-s", "1"], {}, d)
    yield srv
    while _open_clients:
        _open_clients.pop().close()
    try:
        poll(lambda: _metric(srv.client(), "statetrack_event_subscribers") == 0, 5,
             desc="every stream of the module server ended")
    finally:
        rc = srv.stop()
    assert rc == 0, f"events module server exit code {rc} after SIGTERM\n" + \
        "\n".join(srv.err_lines[-20:])


# Tickets issued when the module starts, redeemed by its last test once they have expired.
_early = {}


@pytest.fixture(scope="module", autouse=True)
def _early_tickets(server):
    c = server.client()
    _early["t0"] = time.monotonic()
    _early["tickets"] = [expect(c.post("/events/ticket"), 201)["ticket"] for _ in range(2)]
    yield


# ===============================================================================================
# wire format and request validation
# ===============================================================================================

def test_sse_frames_match_the_session_timeline(server, client, prefix):
    proj = uid("proj")
    s = create_session(client, project_id=proj, heartbeat_timeout_s=600)
    sid = s["session_id"]
    put_session(client, sid, metadata={"a": 1})
    hist = [history_as_stream(h) for h in session_events(client, sid)]
    assert len(hist) == 2
    stream = sse_open(server, {"session_id": sid, "since": hist[0]["seq"] - 1}, prefix=prefix)
    frames = [stream.next(), stream.next()]
    for f, h in zip(frames, hist):
        assert set(f) == {"id", "event", "data"}, f
        assert f["id"] == str(h["seq"]) and f["event"] == h["event_type"]
        assert_event_shape(f["data"])
        assert f["data"] == h
    assert frames[0]["data"]["data"] == s
    assert frames[0]["data"]["project_id"] == proj
    assert frames[0]["data"]["machine_id"] == s["machine_id"]
    # then live
    put_session(client, sid, status="paused")
    live = take(stream, 1)[0]
    assert live["event_type"] == "session.updated" and live["data"]["status"] == "paused"
    assert live["seq"] > hist[-1]["seq"]
    assert_recent(live["occurred_at"])
    stream.quiet(0.3)


def test_ws_messages_match_the_session_timeline(server, client, prefix):
    s = create_session(client, heartbeat_timeout_s=600)
    sid = s["session_id"]
    t = create_task(client, sid, project_id=s["project_id"])
    hist = [history_as_stream(h) for h in session_events(client, sid)]
    ws = WS(server, {"session_id": sid, "since": hist[0]["seq"] - 1}, prefix=prefix)
    got = take(ws, len(hist))
    assert got == hist
    for e in got:
        assert_event_shape(e)
    task_ev = [e for e in got if e["event_type"] == "task.created"]
    assert len(task_ev) == 1 and task_ev[0]["task_id"] == t["task_id"]
    assert task_ev[0]["data"] == t
    expect(client.post(f"/tasks/{t['task_id']}/start"), 200)
    live = take_until(ws, lambda e: e["event_type"] == "task.started")
    assert live[-1]["data"]["status"] == "in_progress"
    assert all(e["seq"] > hist[-1]["seq"] for e in live)


def test_bearer_key_opens_both_transports(server, prefix):
    ws = WS(server, {"project_id": uid("none")}, key=None,
            headers={"Authorization": f"Bearer {API_KEY}"}, prefix=prefix)
    ws.sync()
    s = SSE(server, {"project_id": uid("none")}, key=None,
            headers={"Authorization": f"Bearer {API_KEY}"}, prefix=prefix)
    assert s.status == 200 and s.next() == {"retry": "2000"}


def test_plain_get_on_the_websocket_route_is_400(client):
    b = assert_error(client.get("/events"), 400)
    assert "WebSocket" in b["message"] and "/events/stream" in b["message"], b


@pytest.mark.parametrize("query,message", [
    ("foo=1", "property foo should not exist"),
    ("since=-1", "since must be a non-negative integer (an event seq)"),
    ("since=abc", "since must be a non-negative integer (an event seq)"),
    ("since=1.5", "since must be a non-negative integer (an event seq)"),
    ("since=", "since must be a non-negative integer (an event seq)"),
    ("project_id=a&after=3", "property after should not exist"),
])
def test_bad_stream_query_is_400(server, client, prefix, query, message):
    assert_error(client.get(f"/events/stream?{query}"), 400, messages=[message])
    assert ws_rejected(server, dict(p.split("=", 1) for p in query.split("&")),
                       prefix=prefix) == 400


def test_sse_bad_last_event_id_is_400(client):
    assert_error(client.get("/events/stream", headers={"Last-Event-ID": "x7"}), 400,
                 messages=["Last-Event-ID must be an event seq"])


def test_ws_control_messages(server, rc):
    proj = uid("proj")
    ws = WS(server, {"project_id": proj})
    ws.sync()
    ws.send("not json")
    m = ws.recv()
    assert m["type"] == "error" and m["code"] == "bad_message", m
    assert isinstance(m["message"], str) and isinstance(m["last_seq"], int), m
    for bad in ([1, 2], {"kind": "ping"}, {"type": 5}):
        ws.send(bad)
        m = ws.recv()
        assert m["type"] == "error" and m["code"] == "bad_message", (bad, m)
    ws.send({"type": "dance"})
    m = ws.recv()
    assert m["type"] == "error" and m["code"] == "unknown_type", m
    for bad in ({"project_id": 5}, {"types": "session.*"}, {"types": [1]}, {"since": -1},
                {"since": "3"}, {"since": 1.5}, {"session_id": ["x"]}):
        ws.send({"type": "subscribe", **bad})
        m = ws.recv()
        assert m["type"] == "error" and m["code"] == "bad_subscription", (bad, m)
    # the connection and its subscription survive bad messages
    s = create_session(rc, project_id=proj)
    e = take(ws, 1)[0]
    assert e["session_id"] == s["session_id"]
    ws.send({"type": "unsubscribe"})
    assert ws.recv() == {"type": "unsubscribed"}
    create_session(rc, project_id=proj)
    ws.quiet(0.5)
    ws.sync()
    # subscribing again without since starts from now
    ws.send({"type": "subscribe", "project_id": proj})
    m = ws.recv()
    assert m["type"] == "subscribed" and isinstance(m["after_seq"], int), m
    s3 = create_session(rc, project_id=proj)
    e = take(ws, 1)[0]
    assert e["session_id"] == s3["session_id"] and e["seq"] > m["after_seq"]
    assert ws.open


# ===============================================================================================
# 1. filters
# ===============================================================================================

FILTERS = [
    lambda v: {"project_id": v["A"]},
    lambda v: {"session_id": v["s1"]},
    lambda v: {"machine_id": v["M1"]},
    lambda v: {"types": ["session.*"]},
    lambda v: {"types": ["task.created", "machine.*"]},
    lambda v: {"project_id": v["A"], "types": ["session.*"]},
    lambda v: {"machine_id": v["M1"], "types": ["machine.registered", "session.stalled"]},
    lambda v: {"types": ["session.reactivated"]},
    lambda v: {"types": ["session"]},          # neither a type nor a prefix: nothing
    lambda v: {"project_id": "nobody"},
]


def _filter_workload(c, v, phase):
    if phase == 1:
        v["M1"] = create_machine(c)["machine_id"]
        v["M2"] = create_machine(c)["machine_id"]
        v["A"], v["B"] = uid("projA"), uid("projB")
        v["s1"] = create_session(c, project_id=v["A"], machine_id=v["M1"],
                                 heartbeat_timeout_s=600)["session_id"]
        v["s2"] = create_session(c, project_id=v["A"], machine_id=v["M2"],
                                 heartbeat_timeout_s=600)["session_id"]
        v["s3"] = create_session(c, project_id=v["B"], machine_id=v["M1"],
                                 heartbeat_timeout_s=600)["session_id"]
        put_session(c, v["s1"], metadata={"phase": 1})
        t = create_task(c, v["s1"], project_id=v["A"])
        expect(c.post(f"/tasks/{t['task_id']}/start"), 200)
    else:
        expect(c.post(f"/machines/{v['M1']}/assign-session", json={"session_id": v["s3"]}), 201)
        expect(c.post(f"/sessions/{v['s2']}/mark-stalled", json={"reason": "x"}), 200)
        expect(c.post(f"/sessions/{v['s2']}/heartbeat"), 200)
        t = create_task(c, v["s3"], project_id=v["B"])
        expect(c.post(f"/tasks/{t['task_id']}/fail", json={"error_message": "boom"}), 200)
        put_session(c, v["s1"], metadata={"phase": 2})
        expect(c.put(f"/machines/{v['M2']}", json={"status": "maintenance"}), 200)
        expect(c.delete(f"/sessions/{v['s1']}"), 204)


def test_filters_over_sse_and_websocket(start_server):
    srv = start_server(FAST)
    c = srv.client()
    v = {}
    _filter_workload(c, v, 1)
    filters = [f(v) for f in FILTERS]
    streams = []  # (filter, kind, stream)
    for f in filters:
        streams.append((f, "sse", sse_open(srv, {**query_of(f), "since": 0})))
        streams.append((f, "ws-query", WS(srv, {**query_of(f), "since": 0})))
        w = WS(srv, {"project_id": "nothing-yet"})
        w.send({"type": "subscribe", **f, "since": 0})
        m = w.recv()
        assert m == {"type": "subscribed", "after_seq": 0}, m
        streams.append((f, "ws-subscribe", w))
    _filter_workload(c, v, 2)   # live, while the streams are open
    end = fence(c)
    log = read_whole_log(srv, end)
    kinds = {e["event_type"] for e in log}
    assert {"machine.registered", "session.created", "session.updated", "task.created",
            "task.started", "machine.session_assigned", "session.stalled",
            "session.reactivated", "task.failed", "machine.updated",
            "session.completed"} <= kinds, kinds
    for f, kind, st in streams:
        expected = [e for e in log if matches(e, f)]
        got = take(st, len(expected))
        assert got == expected, (f, kind, seqs(got), seqs(expected))
    # nothing beyond what matches: each stream stays silent
    deadline = time.monotonic() + 0.7
    for f, kind, st in streams:
        st.quiet(max(0.01, deadline - time.monotonic()))
    # sanity: the filters are not all trivially empty or everything
    counts = [len([e for e in log if matches(e, f)]) for f in filters]
    assert counts[-1] == 0 and counts[-2] == 0, counts
    assert all(0 < n < len(log) for n in counts[:-2]), counts


def test_ws_resubscribe_changes_the_filter_mid_stream(server, rc):
    a, b = uid("projA"), uid("projB")
    ws = WS(server, {"project_id": a, "types": "session.created"})
    ws.sync()
    b1 = create_session(rc, project_id=b, heartbeat_timeout_s=600)
    a1 = create_session(rc, project_id=a, heartbeat_timeout_s=600)
    b2 = create_session(rc, project_id=b, heartbeat_timeout_s=600)
    a2 = create_session(rc, project_id=a, heartbeat_timeout_s=600)
    got = take(ws, 2)
    assert [e["session_id"] for e in got] == [a1["session_id"], a2["session_id"]]
    # switch to project B without since: continues from where the stream is
    ws.send({"type": "subscribe", "project_id": b})
    m = ws.recv()
    assert m["type"] == "subscribed", m
    after = m["after_seq"]
    assert after >= got[-1]["seq"], (after, got)
    a3 = create_session(rc, project_id=a, heartbeat_timeout_s=600)
    b3 = create_session(rc, project_id=b, heartbeat_timeout_s=600)
    put_session(rc, b1["session_id"], metadata={"x": 1})
    got = take(ws, 2)
    assert [(e["session_id"], e["event_type"]) for e in got] == [
        (b3["session_id"], "session.created"), (b1["session_id"], "session.updated")]
    assert all(e["seq"] > after for e in got)
    ws.quiet(0.3)
    # back to A with since: restarts from there (A's session events after b1 was created)
    b1_seq = session_events(rc, b1["session_id"])[0]["seq"]
    ws.send({"type": "subscribe", "project_id": a, "types": ["session.*"], "since": b1_seq})
    m = ws.recv()
    assert m == {"type": "subscribed", "after_seq": b1_seq}, m
    got = take(ws, 3)
    assert [e["session_id"] for e in got] == [a1["session_id"], a2["session_id"],
                                              a3["session_id"]]
    assert seqs(got) == sorted(seqs(got))
    ws.quiet(0.3)
    # narrow to one session and one type
    ws.send({"type": "subscribe", "session_id": a3["session_id"], "types": ["session.updated"]})
    assert ws.recv()["type"] == "subscribed"
    put_session(rc, a1["session_id"], metadata={"y": 1})
    put_session(rc, a3["session_id"], metadata={"y": 2})
    e = take(ws, 1)[0]
    assert e["session_id"] == a3["session_id"] and e["data"]["metadata"] == {"y": 2}
    ws.quiet(0.3)
    # b2 was never delivered: it came before the switch to B, and the switch does not rewind
    assert b2["session_id"] not in {e["session_id"] for e in got}


def test_types_prefix_and_list_in_the_sse_query(server, rc):
    proj = uid("proj")
    st = sse_open(server, {"project_id": proj, "types": "task.*,session.updated"})
    s = create_session(rc, project_id=proj, heartbeat_timeout_s=600)
    t = create_task(rc, s["session_id"], project_id=proj)
    expect(rc.post(f"/tasks/{t['task_id']}/start"), 200)
    expect(rc.post(f"/tasks/{t['task_id']}/complete"), 200)
    end = create_session(rc, project_id=proj, heartbeat_timeout_s=600)
    put_session(rc, end["session_id"], metadata={"end": True})
    hist = history_of(rc, [s["session_id"], end["session_id"]])
    expected = [e for e in hist if e["event_type"].startswith("task.")
                or e["event_type"] == "session.updated"]
    got = take_until(st, lambda e: e["session_id"] == end["session_id"])
    assert got == expected, (seqs(got), seqs(expected))
    assert [e["event_type"] for e in got if e["event_type"].startswith("task.")] == [
        "task.created", "task.started", "task.completed"]


# ===============================================================================================
# 2. resuming after a dropped connection while changes keep happening
# ===============================================================================================

def _writer(srv, proj, other, sids, stop, errors, limit=2000):
    def run():
        c = srv.client()
        i = 0
        try:
            while not stop.is_set() and i < limit:
                s = create_session(c, project_id=proj, heartbeat_timeout_s=600)
                sids.append(s["session_id"])
                put_session(c, s["session_id"], metadata={"i": i})
                create_session(c, project_id=other, heartbeat_timeout_s=600)
                if i % 3 == 0:
                    create_task(c, s["session_id"], project_id=proj)
                i += 1
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_resume_after_dropped_connections_while_writing(start_server, transport):
    srv = start_server(FAST)
    c = srv.client()
    proj, other = uid("proj"), uid("other")
    sids, stop, errors = [], threading.Event(), []
    rnd = random.Random(7)
    t = _writer(srv, proj, other, sids, stop, errors)
    got, last, drops = [], 0, 0

    def connect(last):
        if transport == "ws":
            return WS(srv, {"project_id": proj, "since": last})
        if drops == 0:
            return sse_open(srv, {"project_id": proj, "since": last})
        return sse_open(srv, {"project_id": proj}, headers={"Last-Event-ID": str(last)})

    try:
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            st = connect(last)
            part = take(st, rnd.randint(1, 12), 15)
            got += part
            last = part[-1]["seq"]
            if transport == "ws":
                st.abort()
            else:
                st.close()
            drops += 1
            time.sleep(rnd.uniform(0, 0.15))  # changes keep coming while we are away
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    assert drops >= 5, drops
    end = create_session(c, project_id=proj, heartbeat_timeout_s=600)
    st = connect(last)
    got += take_until(st, lambda e: e["session_id"] == end["session_id"], 30)
    expected = history_of(c, sids + [end["session_id"]])
    assert seqs(got) == seqs(expected), "gap or duplicate across reconnects"
    assert got == expected
    assert len(got) > 3 * drops


# ===============================================================================================
# 3. resuming across a server restart
# ===============================================================================================

def test_sigterm_with_open_streams_exits_promptly(start_server):
    """Streams still open at SIGTERM end with the server: exit 0, without waiting out the
    drain timeout (which is for requests in flight, and a stream never finishes)."""
    # default 30 s keepalive: idle streams write nothing; a short drain bounds the wait
    srv = start_server([*NO_LIMITS, "--drain-timeout-s", "4"])
    c = srv.client()
    proj = uid("proj")
    sses = [sse_open(srv, {"project_id": proj}) for _ in range(2)]
    ws = WS(srv, {"project_id": proj})
    ws.sync()
    create_session(c, project_id=proj)
    for st in (*sses, ws):
        take(st, 1)
    t0 = time.monotonic()
    rc = srv.stop()
    took = time.monotonic() - t0
    assert rc == 0, f"exit code {rc} after SIGTERM with open streams:\n" + \
        "\n".join(srv.err_lines[-5:])
    assert took < 3, f"SIGTERM took {took:.1f}s with open event streams (drain timeout 4 s)"
    for st in sses:
        st.wait_closed(2)
    ws.wait_closed(2)


def test_resume_across_a_server_restart(start_server, tmp_path):
    db = tmp_path / "restart.db"
    srv = start_server(FAST, db_path=db)
    c = srv.client()
    proj = uid("proj")
    sids = [create_session(c, project_id=proj, heartbeat_timeout_s=600)["session_id"]
            for _ in range(3)]
    ws = WS(srv, {"project_id": proj, "since": 0})
    sse = sse_open(srv, {"project_id": proj, "since": 0})
    first_ws, first_sse = take(ws, 3), take(sse, 3)
    assert first_ws == first_sse
    last = first_ws[-1]["seq"]
    # the subscribers go away; more changes happen before the tracker goes down
    ws.abort()
    sse.close()
    put_session(c, sids[0], metadata={"before": "stop"})
    assert srv.stop() == 0
    srv2 = start_server(FAST, db_path=db)
    c2 = srv2.client()
    put_session(c2, sids[1], status="paused")
    sids.append(create_session(c2, project_id=proj, heartbeat_timeout_s=600)["session_id"])
    create_task(c2, sids[3], project_id=proj)
    create_session(c2, heartbeat_timeout_s=600)  # another project
    expected = [e for e in history_of(c2, sids) if e["seq"] > last]
    assert len(expected) >= 4, seqs(expected)
    ws2 = WS(srv2, {"project_id": proj, "since": last})
    sse2 = sse_open(srv2, {"project_id": proj}, headers={"Last-Event-ID": str(last)})
    assert take(ws2, len(expected)) == expected
    assert take(sse2, len(expected)) == expected
    ws2.quiet(0.3)
    sse2.quiet(0.1)
    # and the streams are live on the new process
    put_session(c2, sids[3], metadata={"after": "restart"})
    e1, e2 = take(ws2, 1)[0], take(sse2, 1)[0]
    assert e1 == e2 == history_of(c2, [sids[3]])[-1]
    assert e1["seq"] > expected[-1]["seq"]


# ===============================================================================================
# 4. resync
# ===============================================================================================

@pytest.mark.parametrize("ring", [None, 16], ids=["default-ring", "ring-16"])
def test_resync_when_the_log_no_longer_holds_since(start_server, ring):
    args = [*FAST, "--event-retention-count", "10", "--retention-interval-s", "1"]
    if ring:
        args += ["--event-ring-capacity", str(ring)]
    srv = start_server(args)
    c = srv.client()
    first = create_session(c, heartbeat_timeout_s=600)
    assert session_events(c, first["session_id"])[0]["seq"] == 1
    for _ in range(39):
        create_session(c, heartbeat_timeout_s=600)
    head = 40
    poll(lambda: session_events(c, first["session_id"]) == [], 10, 0.2,
         desc="seq 1 pruned from the event log")
    # since=1: events 2.. are gone from the log -> resync, then the stream ends
    sse = sse_open(srv, {"since": 1})
    frames = sse.wait_closed(5)
    assert [f.get("event") for f in frames] == ["resync"], frames
    d = frames[0]["data"]
    assert d["type"] == "resync" and d["code"] == "resync", d
    assert isinstance(d["message"], str) and d["message"], d
    assert d["last_seq"] == 1, d
    ws = WS(srv, {"since": 1})
    msgs = ws.wait_closed(5)
    assert [m["type"] for m in msgs] == ["resync"], msgs
    assert msgs[0]["code"] == "resync" and msgs[0]["last_seq"] == 1, msgs
    assert ws.close_code == 1000
    # the same through a subscribe message on an open connection
    ws = WS(srv, {"project_id": uid("none")})
    ws.sync()
    ws.send({"type": "subscribe", "since": 0})
    msgs = ws.wait_closed(5)
    assert [m["type"] for m in msgs] == ["subscribed", "resync"], msgs
    # a since the log still reaches works
    sse = sse_open(srv, {"since": head - 3})
    assert seqs(take(sse, 3)) == [head - 2, head - 1, head]
    sse.quiet(0.2)


def test_resync_when_since_is_beyond_the_head(start_server):
    srv = start_server(FAST)
    c = srv.client()
    for _ in range(3):
        create_session(c, heartbeat_timeout_s=600)
    sse = sse_open(srv, {"since": 1000})
    frames = sse.wait_closed(5)
    assert [f.get("event") for f in frames] == ["resync"], frames
    assert frames[0]["data"]["code"] == "resync" and frames[0]["data"]["type"] == "resync"
    sse = sse_open(srv, {}, headers={"Last-Event-ID": "4"})
    assert [f.get("event") for f in sse.wait_closed(5)] == ["resync"]
    ws = WS(srv, {"since": 4})
    msgs = ws.wait_closed(5)
    assert [m["type"] for m in msgs] == ["resync"] and msgs[0]["code"] == "resync", msgs
    assert ws.close_code == 1000
    # exactly the head is fine: nothing yet, then live
    ws = WS(srv, {"since": 3})
    ws.sync()
    create_session(c, heartbeat_timeout_s=600)
    assert seqs(take(ws, 1)) == [4]


# ===============================================================================================
# 5. events made by the sweep
# ===============================================================================================

def test_sweep_stall_and_heartbeat_revival_are_streamed(server, rc):
    """The shared server sweeps every second."""
    proj = uid("proj")
    ws = WS(server, {"project_id": proj})
    ws.sync()
    sse = sse_open(server, {"project_id": proj, "types": "session.stalled,session.reactivated"})
    s = create_session(rc, project_id=proj, heartbeat_timeout_s=1)
    sid = s["session_id"]
    got = take(ws, 2, 8)
    assert [e["event_type"] for e in got] == ["session.created", "session.stalled"], got
    stalled = got[1]
    assert stalled["session_id"] == sid and stalled["data"]["status"] == "stalled"
    assert parse_iso(stalled["occurred_at"]) > parse_iso(s["deadline_at"])
    hb = expect(rc.post(f"/sessions/{sid}/heartbeat"), 200)
    assert hb["status"] == "active"
    revived = take(ws, 1)[0]
    assert revived["event_type"] == "session.reactivated"
    assert revived["data"]["status"] == "active"
    assert revived["data"]["last_heartbeat"] == hb["last_heartbeat"]
    assert take(sse, 2) == [stalled, revived]
    expect(rc.put(f"/sessions/{sid}", json={"status": "paused"}), 200)  # stop further stalls


# ===============================================================================================
# 6. authentication: keys, tickets
# ===============================================================================================

def _upgrade_headers():
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}


def test_ws_upgrade_without_or_with_a_bad_key_is_401(server, prefix):
    assert ws_rejected(server, key=None, prefix=prefix) == 401
    assert ws_rejected(server, key="wrong-key", prefix=prefix) == 401
    assert ws_rejected(server, key=None, headers={"Authorization": "Bearer nope"},
                       prefix=prefix) == 401
    assert ws_rejected(server, params={"ticket": "tk_" + "a" * 40}, key=None,
                       prefix=prefix) == 401
    # the refusal is the usual envelope
    status, hdrs, body = raw_request(server.base_url, "GET", prefix + "/events",
                                     headers={"Host": "x", **_upgrade_headers()})
    assert status == 401, (status, body)
    b = json.loads(body)
    assert b["statusCode"] == 401 and b["error_code"] == "unauthorized", b
    assert b["message"] == "API key is missing"
    assert "upgrade" not in {k.lower() for k in hdrs}, hdrs


def test_sse_401_envelope(anon):
    assert_error(anon.get("/events/stream"), 401, "API key is missing")
    assert_error(anon.get("/events/stream", headers={"X-API-Key": "wrong"}), 401,
                 "Invalid API key")
    assert_error(anon.get("/events/stream?ticket=tk_nope"), 401, "Invalid or expired ticket")
    assert_error(anon.get("/events/stream?ticket=st_notaticket&since=0"), 401,
                 "Invalid or expired ticket")
    assert_error(anon.post("/events/ticket"), 401, "API key is missing")


def test_tickets_are_single_use_and_never_logged(server, client, anon, prefix):
    proj = uid("proj")
    r = expect(client.post("/events/ticket"), 201)
    assert set(r) == {"ticket", "expires_at"}, r
    tk = r["ticket"]
    assert tk.startswith("tk_") and len(tk) > 20, tk
    assert API_KEY not in tk
    exp = parse_iso(r["expires_at"])
    left = (exp - now_utc()).total_seconds()
    assert 25 <= left <= 31, left
    # WebSocket with a ticket, no key
    ws = WS(server, {"ticket": tk, "project_id": proj}, key=None, prefix=prefix)
    ws.sync()
    s = create_session(client, project_id=proj)
    assert take(ws, 1)[0]["session_id"] == s["session_id"]
    # used: refused on both transports
    assert ws_rejected(server, {"ticket": tk}, key=None, prefix=prefix) == 401
    assert_error(anon.get("/events/stream", params={"ticket": tk}), 401,
                 "Invalid or expired ticket")
    # SSE with another ticket
    tk2 = expect(client.post("/events/ticket"), 201)["ticket"]
    assert tk2 != tk
    sse = sse_open(server, {"project_id": proj, "ticket": tk2, "since": 0}, key=None,
                   prefix=prefix)
    assert take(sse, 1)[0]["session_id"] == s["session_id"]
    assert ws_rejected(server, {"ticket": tk2}, key=None, prefix=prefix) == 401
    # a ticket opens streams only
    assert_error(anon.get("/sessions", params={"ticket": tk2}), 401, "API key is missing")
    tk3 = expect(client.post("/events/ticket"), 201)["ticket"]
    assert_error(anon.get("/sessions", params={"ticket": tk3}), 401, "API key is missing")
    sse3 = sse_open(server, {"ticket": tk3, "project_id": proj}, key=None, prefix=prefix)
    sse3.close()
    # the access log masks them; no log line carries a ticket
    hits = server.wait_for_log(
        lambda e: "ticket=[REDACTED]" in e.get("message", "")
        and e.get("context", {}).get("status_code") == 401, 5)
    assert hits, "no access-log line for the refused ticket request"
    time.sleep(0.2)
    for line in server.all_output():
        for t in (tk, tk2, tk3):
            assert t not in line, f"ticket in a log line: {line}"
            assert t[3:] not in line, f"ticket body in a log line: {line}"


# ===============================================================================================
# 7. keepalive
# ===============================================================================================

def test_keepalive_comments_and_pings(start_server):
    srv = start_server(FAST)
    sse = sse_open(srv, {"project_id": uid("idle")})
    ws = WS(srv, {"project_id": uid("idle")})
    ws.sync()
    t0 = time.monotonic()
    comments = []
    while time.monotonic() - t0 < 3.5:
        f = sse.next(3)
        assert f is not None, "idle SSE stream closed"
        assert set(f) == {"comments"}, f
        comments += f["comments"]
    assert comments.count("keepalive") >= 2, comments
    assert set(comments) == {"keepalive"}, comments
    # the WebSocket client answered the server's pings all along: still open
    assert time.monotonic() - t0 > 3
    assert ws.open, ws.close_code
    ws.sync()
    c = srv.client()
    end = fence(c)
    sse2 = sse_open(srv, {"project_id": end, "since": 0})
    assert take(sse2, 1)[0]["project_id"] == end


def _raw_ws_handshake(srv, target):
    u = urlsplit(srv.base_url)
    sock = socket.create_connection((u.hostname, u.port), timeout=10)
    hdrs = {"Host": f"{u.hostname}:{u.port}", "X-API-Key": API_KEY, **_upgrade_headers()}
    req = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    sock.sendall((req + "\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, buf
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


def _read_frames(sock, buf, seconds):
    """Opcodes of the frames the server sends in `seconds` (never answering); 'EOF' at close."""
    out = []
    deadline = time.monotonic() + seconds
    while True:
        while len(buf) >= 2:
            op, ln = buf[0] & 0x0F, buf[1] & 0x7F
            hl = 2
            if ln == 126:
                if len(buf) < 4:
                    break
                ln, hl = struct.unpack(">H", buf[2:4])[0], 4
            elif ln == 127:
                if len(buf) < 10:
                    break
                ln, hl = struct.unpack(">Q", buf[2:10])[0], 10
            if len(buf) < hl + ln:
                break
            out.append((op, buf[hl:hl + ln]))
            buf = buf[hl + ln:]
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return out
        except OSError:
            chunk = b""
        if not chunk:
            out.append(("EOF", b""))
            return out
        buf += chunk


def test_ws_peer_that_never_answers_pings_is_closed(start_server):
    srv = start_server(FAST)
    sock, rest = _raw_ws_handshake(srv, "/events?project_id=" + uid("idle"))
    try:
        t0 = time.monotonic()
        frames = _read_frames(sock, rest, 8)
        took = time.monotonic() - t0
    finally:
        sock.close()
    ops = [op for op, _ in frames]
    assert 0x9 in ops, f"the server never pinged: {ops}"
    assert ops[-1] == "EOF" or ops[-1] == 0x8, f"silent peer not closed within 8 s: {ops}"
    assert took <= 5, f"closed only after {took:.1f}s (keepalive 1 s: expected about 2 s)"


# ===============================================================================================
# 8. slow consumers, revocation, client message limits
# ===============================================================================================

BIG = "x" * 60_000  # metadata that makes each session event about 60 KB


def _flood(c, proj, n):
    for i in range(n):
        create_session(c, project_id=proj, heartbeat_timeout_s=600, metadata={"blob": BIG, "i": i})


def test_sse_slow_consumer_is_cut_and_can_resume(start_server):
    srv = start_server([*FAST, "--event-max-lag", "16"])
    c = srv.client()
    proj = uid("proj")
    sse = sse_open(srv, {"project_id": proj}, rcvbuf=4096)
    _flood(c, proj, 80)  # ~5 MB while the subscriber reads nothing
    got, ctrl = [], None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        f = sse.next_event_frame(10)
        if f is None:
            break
        if f.get("event") == "error":
            ctrl = f
            continue
        assert ctrl is None, f"a frame after the error: {f}"
        got.append(f["data"])
    assert sse.closed, "the slow SSE stream was not cut"
    assert len(got) < 80, "a subscriber 80 events behind with max-lag 16 was not cut"
    assert ctrl is not None, "cut without an error event"
    d = ctrl["data"]
    assert d["type"] == "error" and d["code"] == "slow_consumer", d
    assert isinstance(d["message"], str) and d["message"], d
    hist = history_of(c, [e["session_id"] for e in got]) if got else []
    assert got == hist[:len(got)], "what arrived before the cut is not a prefix of the log"
    last = got[-1]["seq"] if got else 0
    assert d["last_seq"] >= last, d
    assert (_metric(c, "statetrack_event_subscribers_cut_total") or 0) >= 1
    # the documented way back: resume with since=<last seq>, reading promptly
    sse2 = sse_open(srv, {"project_id": proj}, headers={"Last-Event-ID": str(last)})
    rest = []
    while len(got) + len(rest) < 80:
        f = sse2.next_event_frame(10)
        assert f is not None, "resumed stream closed"
        assert f.get("event") not in ("error", "resync"), \
            f"resuming with since=<last seq> was refused again: {f['data']}"
        rest.append(f["data"])
    assert [e["data"]["metadata"]["i"] for e in got + rest] == list(range(80))


def test_ws_slow_consumer_is_cut(start_server):
    srv = start_server([*NO_LIMITS, "--event-max-lag", "16"])
    c = srv.client()
    proj = uid("proj")
    u = urlsplit(srv.base_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((u.hostname, u.port))
    ws = WS(srv, {"project_id": proj}, sock=sock, max_queue=1, read_limit=4096)
    ws.sync()
    _flood(c, proj, 80)
    msgs = ws.wait_closed(20)
    events = [m for m in msgs if m["type"] == "event"]
    ctrl = [m for m in msgs if m["type"] != "event"]
    assert len(events) < 80, "a subscriber 80 events behind with max-lag 16 was not cut"
    assert [m.get("code") for m in ctrl] == ["slow_consumer"], ctrl
    assert msgs[-1] is ctrl[0], "events after the error"
    assert [e["data"]["metadata"]["i"] for e in events] == list(range(len(events)))
    assert ws.close_code == 1000, ws.close_code


def test_resume_far_behind_within_retention_is_not_cut(start_server):
    """A client that was away for more than --event-max-lag events but still within the
    retained log resumes with since=<last seq> (docs: "resumes with since=<last seq>")."""
    srv = start_server([*FAST, "--event-max-lag", "16"])
    c = srv.client()
    proj = uid("proj")
    for _ in range(40):
        create_session(c, project_id=proj, heartbeat_timeout_s=600)
    ws = WS(srv, {"project_id": proj, "since": 0})
    first = ws.recv()
    assert first is not None and first["type"] == "event", \
        f"since=0 with 40 retained events: {first} (close {ws.close_code})"
    assert seqs([first] + take(ws, 39)) == list(range(1, 41))


def test_revoked_key_closes_open_streams(start_server, statetrack_bin):
    srv = start_server(FAST)
    key, prefix = _db_key(statetrack_bin, srv.db_path, uid("stream-key"))
    kc = srv.client(key=key)
    poll(lambda: kc.get("/sessions?limit=1").status_code == 200, 5, desc="DB key accepted")
    proj = uid("proj")
    sse = sse_open(srv, {"project_id": proj}, key=key)
    ws = WS(srv, {"project_id": proj}, key=key)
    ws.sync()
    tk = expect(kc.post("/events/ticket"), 201)["ticket"]
    sse_t = sse_open(srv, {"project_id": proj, "ticket": tk}, key=None)
    env_sse = sse_open(srv, {"project_id": proj})      # an environment key: unaffected
    s = create_session(srv.client(), project_id=proj)
    for st in (sse, ws, sse_t, env_sse):
        assert take(st, 1)[0]["session_id"] == s["session_id"]
    t0 = time.monotonic()
    _keys(statetrack_bin, "revoke", "--db", str(srv.db_path), prefix)
    frames = sse.wait_closed(9)
    took = time.monotonic() - t0
    assert [f.get("event") for f in frames if "comments" not in f] == ["error"], frames
    assert frames[-1]["data"]["code"] == "key_revoked", frames
    assert frames[-1]["data"]["type"] == "error"
    assert took <= 7, f"key_revoked after {took:.1f}s"
    msgs = ws.wait_closed(max(1, 9 - (time.monotonic() - t0)))
    assert [(m["type"], m.get("code")) for m in msgs] == [("error", "key_revoked")], msgs
    assert ws.close_code == 1008, ws.close_code
    frames = sse_t.wait_closed(max(1, 9 - (time.monotonic() - t0)))
    assert [f["data"]["code"] for f in frames if "data" in f] == ["key_revoked"], frames
    # the environment-key stream is still live; the revoked key opens nothing any more
    s2 = create_session(srv.client(), project_id=proj)
    assert take(env_sse, 1)[0]["session_id"] == s2["session_id"]
    assert SSE(srv, {}, key=key).status == 401
    assert ws_rejected(srv, key=key) == 401


def test_ws_more_than_20_messages_a_second_closes_1008(server):
    ws = WS(server, {"project_id": uid("none")})
    for _ in range(25):
        try:
            ws.send({"type": "ping"})
        except websockets.exceptions.ConnectionClosed:
            break
    msgs = ws.wait_closed(5)
    assert 0 < len(msgs) <= 20 and all(m == {"type": "pong"} for m in msgs), msgs
    assert ws.close_code == 1008, \
        f"close code {ws.close_code} ({ws.ws.close_reason!r}); expected 1008 policy violation"


def test_ws_20_messages_a_second_are_fine(server):
    ws = WS(server, {"project_id": uid("none")})
    for _ in range(3):
        t0 = time.monotonic()
        for _ in range(15):
            ws.send({"type": "ping"})
        for _ in range(15):
            assert ws.recv() == {"type": "pong"}
        time.sleep(max(0, 1.05 - (time.monotonic() - t0)))
    assert ws.open


def test_ws_oversized_client_message_closes_1009(server):
    ws = WS(server, {"project_id": uid("none")})
    ws.sync()
    ws.send(json.dumps({"type": "ping", "pad": "x" * 16 * 1024}))
    msgs = ws.wait_closed(5)
    assert msgs == [], msgs
    assert ws.close_code == 1009, ws.close_code
    # just under the limit is fine
    ws = WS(server, {"project_id": uid("none")})
    ws.send(json.dumps({"type": "ping", "pad": "x" * 16000}))
    assert ws.recv() == {"type": "pong"}


# ===============================================================================================
# 9. a burst of concurrent writes reaches several subscribers exactly once, in order
# ===============================================================================================

def test_concurrent_burst_reaches_every_subscriber_exactly_once(start_server):
    srv = start_server(FAST)
    c = srv.client()
    subs = [WS(srv, {"since": 0}) for _ in range(3)]
    subs += [sse_open(srv, {"since": 0}) for _ in range(2)]
    for w in subs[:3]:
        w.sync()
    poll(lambda: _metric(c, "statetrack_event_subscribers") == 5, 5,
         desc="5 subscribers counted")
    errors = []

    def burst(k):
        wc = srv.client()
        try:
            for i in range(15):
                s = create_session(wc, project_id=f"burst-{k}", heartbeat_timeout_s=600)
                t = create_task(wc, s["session_id"], project_id=f"burst-{k}")
                expect(wc.post(f"/tasks/{t['task_id']}/start"), 200)
                put_session(wc, s["session_id"], metadata={"k": k, "i": i})
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=burst, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    end = fence(c)
    results = [take_until(s, lambda e: e.get("project_id") == end, 30) for s in subs]
    ref = results[0]
    assert seqs(ref) == list(range(1, len(ref) + 1)), "gap, duplicate or disorder"
    for r in results[1:]:
        assert r == ref
    created = [e for e in ref if e["event_type"] == "session.created"]
    assert len(created) == 6 * 15 + 1
    assert len([e for e in ref if e["event_type"] == "task.started"]) == 6 * 15
    for s in subs:
        s.quiet(0.2)
    for s in subs:
        s.close()
    poll(lambda: _metric(c, "statetrack_event_subscribers") == 0, 5,
         desc="subscribers gauge back to 0")


# ===============================================================================================
# last: the tickets issued when this module started have expired
# ===============================================================================================

def test_zz_expired_ticket_is_401(server):
    wait = 31 - (time.monotonic() - _early["t0"])
    if wait > 0:
        time.sleep(wait)
    tk_ws, tk_sse = _early["tickets"]
    assert ws_rejected(server, {"ticket": tk_ws}, key=None) == 401
    anon = server.client(key=None)
    assert_error(anon.get("/events/stream", params={"ticket": tk_sse}), 401,
                 "Invalid or expired ticket")
