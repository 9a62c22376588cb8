"""Black-box API test fixtures: start the real statetrack binary, talk HTTP to it, stop it.

The binary comes from $STATETRACK_BIN (default: <repo>/build/debug/statetrack). It is copied to
a temporary directory once per test session, so a rebuild running at the same time never trips
over a busy executable. Every server listens on 127.0.0.1 with --port 0 and a temporary SQLite
file; stdout is drained in a background thread so tests can read the JSON log lines.

With ST_BACKEND=postgres and ST_PG_CONNINFO (a libpq keyword string for a running cluster, e.g.
from scripts/pg-cluster.sh) the same suite runs on PostgreSQL: each database path becomes a fresh
database on that cluster (st_helpers.db_for), dropped when the session ends.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from st_helpers import ON_POSTGRES, PG_BASE, db_for, drop_pg_databases

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "build" / "debug" / "statetrack"

API_KEY = "test-api-key-123"
SECOND_KEY = "second-key-456"
API_KEYS = f"{API_KEY},{SECOND_KEY}"

PREFIXES = ["", "/api"]
PREFIX_IDS = ["root", "api"]

LISTEN_RE = re.compile(r"statetrack listening on 127\.0\.0\.1:(\d+)( \(https\))?")
START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 15

# A sanitizer report on a server's stderr fails the test during which it appeared, even when
# the server is SIGKILLed afterwards or keeps running (the shared server): a sanitizer build
# (asan, tsan) is run with halt_on_error, and an exit code alone misses killed servers.
SANITIZER_RE = re.compile(
    r"WARNING: ThreadSanitizer|ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error: ")
_SERVERS = []  # every Server started in this session, checked after each test

# Variables the server reads; never inherit them from the caller's environment.
_SCRUBBED = {
    "API_KEYS", "PORT", "LOG_LEVEL", "LOG_FORMAT", "NODE_ENV", "RATE_LIMIT_DEFAULT",
    "RATE_LIMIT_HEARTBEAT", "RATE_LIMIT_WINDOW_MS", "REQUEST_TIMEOUT_MS",
    "DISABLE_BACKGROUND_JOBS", "MONGODB_URI", "MONGODB_DB",
}


# Set for every server unless a test overrides it (None removes it): the suite sends many
# deliberate 401s from 127.0.0.1, which the failed-authentication throttle would otherwise
# turn into 429s for every later request. tests/api/test_edges.py tests the throttle itself.
_HARNESS_ENV = {"STATETRACK_AUTH_FAILURE_LIMIT": "0"}


def _clean_env():
    return {k: v for k, v in os.environ.items()
            if k not in _SCRUBBED and not k.startswith("STATETRACK_")}


class Server:
    """One running statetrack process."""

    def __init__(self, binary, db_path, extra_args, env, workdir, tls_ca=None):
        self.binary = binary
        self.tls_ca = tls_ca     # CA file clients verify an HTTPS server against
        self.db_path = db_for(db_path)  # the --db value: a file, or a connection string
        self.extra_args = list(extra_args)
        self.workdir = str(workdir)
        self.lines = []          # every stdout line, in order
        self.err_lines = []      # every stderr line
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.port = None
        self.scheme = "http"     # "https" when the ready line says so
        self.returncode = None
        self._checked = 0        # stderr lines already checked for sanitizer reports
        full_env = _clean_env()
        full_env["API_KEYS"] = API_KEYS
        full_env["LOG_FORMAT"] = "json"
        full_env.update(_HARNESS_ENV)
        for k, v in (env or {}).items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
        self.env = full_env
        self.argv = [binary, "serve", "--host", "127.0.0.1", "--port", "0",
                     "--db", self.db_path, *self.extra_args]
        self.proc = subprocess.Popen(
            self.argv, env=full_env, cwd=self.workdir, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            errors="replace")
        self._t_out = threading.Thread(target=self._drain_stdout, daemon=True)
        self._t_err = threading.Thread(target=self._drain_stderr, daemon=True)
        self._t_out.start()
        self._t_err.start()
        _SERVERS.append(self)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                rc = self.proc.poll()
                if rc is None:
                    self.proc.kill()
                    self.proc.wait(5)
                self._t_out.join(2)
                self._t_err.join(2)
                pytest.fail(
                    f"statetrack did not report listening within {START_TIMEOUT_S}s "
                    f"(exit code {rc}); argv={self.argv}\n--- stdout ---\n"
                    + "\n".join(self.lines) + "\n--- stderr ---\n" + "\n".join(self.err_lines))
        self.base_url = f"{self.scheme}://127.0.0.1:{self.port}"

    def _drain_stdout(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self._lock:
                self.lines.append(line)
            if self.port is None:
                m = LISTEN_RE.search(line)
                if m:
                    if m.group(2):
                        self.scheme = "https"
                    self.port = int(m.group(1))
                    self._ready.set()

    def _drain_stderr(self):
        for line in self.proc.stderr:
            with self._lock:
                self.err_lines.append(line.rstrip("\n"))

    # --- output inspection -------------------------------------------------------------
    def output(self):
        with self._lock:
            return list(self.lines)

    def all_output(self):
        with self._lock:
            return list(self.lines) + list(self.err_lines)

    def json_lines(self):
        out = []
        for line in self.output():
            s = line.strip()
            if not s.startswith("{"):
                continue
            try:
                obj = json.loads(s)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def wait_for_log(self, predicate, timeout=5.0):
        """Poll the JSON log until predicate(entry) holds for some entry; return the matches."""
        deadline = time.monotonic() + timeout
        while True:
            hits = [e for e in self.json_lines() if predicate(e)]
            if hits or time.monotonic() > deadline:
                return hits
            time.sleep(0.05)

    # --- lifecycle ---------------------------------------------------------------------
    @property
    def running(self):
        return self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM and wait; returns the exit code (None if it did not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self.returncode = None
                self._join()
                return None
        self.returncode = self.proc.returncode
        self._join()
        return self.returncode

    def kill(self):
        """SIGKILL, no grace."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.returncode = self.proc.returncode
        self._join()
        return self.returncode

    def _join(self):
        self._t_out.join(5)
        self._t_err.join(5)

    def new_sanitizer_report(self):
        """The stderr since the last call if it holds a sanitizer report, else None."""
        with self._lock:
            lines = self.err_lines[self._checked:]
            self._checked = len(self.err_lines)
        if any(SANITIZER_RE.search(line) for line in lines):
            return "\n".join(lines[-200:])
        return None

    def client(self, prefix="", key=API_KEY, auth="x-api-key"):
        return Client(self.base_url, prefix=prefix, key=key, auth=auth, verify=self.tls_ca)


_MISSING = object()


class Client:
    """requests.Session bound to a server and a path prefix ("" or "/api")."""

    def __init__(self, base_url, prefix="", key=API_KEY, auth="x-api-key", verify=None):
        self.base_url = base_url
        self.prefix = prefix
        self.verify = verify  # per request: a Session's verify loses to REQUESTS_CA_BUNDLE
        self.s = requests.Session()
        if key is not None:
            if auth == "bearer":
                self.s.headers["Authorization"] = f"Bearer {key}"
            else:
                self.s.headers["X-API-Key"] = key

    def url(self, path):
        return self.base_url + self.prefix + path

    def request(self, method, path, json=_MISSING, **kw):
        if json is not _MISSING:
            kw["json"] = json
        kw.setdefault("timeout", 30)
        if self.verify is not None:
            kw.setdefault("verify", self.verify)
        return self.s.request(method, self.url(path), **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, json=_MISSING, **kw):
        return self.request("POST", path, json=json, **kw)

    def put(self, path, json=_MISSING, **kw):
        return self.request("PUT", path, json=json, **kw)

    def delete(self, path, json=_MISSING, **kw):
        return self.request("DELETE", path, json=json, **kw)


@pytest.fixture(autouse=True)
def _no_sanitizer_reports():
    """Fail the test if any server printed a sanitizer report while it ran."""
    yield
    reports = []
    for srv in list(_SERVERS):
        exited = not srv.running
        if exited:
            srv._join()  # whatever it printed before exiting
        r = srv.new_sanitizer_report()
        if r:
            reports.append(f"{srv.argv}:\n{r}")
        if exited:
            _SERVERS.remove(srv)
    if reports:
        pytest.fail("sanitizer report from the server:\n" + "\n\n".join(reports),
                    pytrace=False)


# --- backend ---------------------------------------------------------------------------------

def pytest_configure(config):
    if ON_POSTGRES and not PG_BASE:
        pytest.exit("ST_BACKEND=postgres needs ST_PG_CONNINFO (see scripts/pg-cluster.sh)", 2)


def pytest_report_header(config):
    return f"statetrack backend: {'postgres (' + PG_BASE + ')' if ON_POSTGRES else 'sqlite'}"


@pytest.fixture(scope="session", autouse=True)
def _pg_databases():
    """On PostgreSQL: drop every database the session created."""
    yield
    if ON_POSTGRES:
        drop_pg_databases()


# --- binary ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def statetrack_bin(tmp_path_factory):
    src = Path(os.environ.get("STATETRACK_BIN", str(DEFAULT_BIN)))
    if not src.is_file():
        pytest.fail(f"statetrack binary not found at {src} (build it or set STATETRACK_BIN)")
    dst = tmp_path_factory.mktemp("bin") / "statetrack"
    shutil.copy2(src, dst)
    return str(dst)


# --- servers ---------------------------------------------------------------------------------

DEFAULT_SERVER_ARGS = ["--rate-limit-default", "0", "--rate-limit-heartbeat", "0",
                       "--sweep-interval-s", "1"]


@pytest.fixture(scope="session")
def server(statetrack_bin, tmp_path_factory):
    """The shared server: rate limits off, sweeps every second."""
    d = tmp_path_factory.mktemp("shared")
    srv = Server(statetrack_bin, d / "st.db", DEFAULT_SERVER_ARGS, {}, d)
    yield srv
    rc = srv.stop()
    assert rc == 0, f"shared server exit code {rc} after SIGTERM (expected 0)\n" + \
        "\n".join(srv.err_lines[-50:])


@pytest.fixture
def start_server(statetrack_bin, tmp_path):
    """Factory: start_server(extra_args=[], env={}, db_path=None, tls_ca=None) -> Server.

    An environment value of None removes the variable. With --tls-cert the server's base_url
    is https and its clients verify against tls_ca. Servers still running at teardown get
    SIGTERM and must exit 0 within 15 s."""
    started = []
    counter = [0]

    def _start(extra_args=(), env=None, db_path=None, tls_ca=None):
        counter[0] += 1
        wd = tmp_path / f"srv{counter[0]}"
        wd.mkdir()
        db = db_path if db_path is not None else wd / "st.db"
        srv = Server(statetrack_bin, db, extra_args, env or {}, wd, tls_ca=tls_ca)
        started.append(srv)
        return srv

    yield _start
    failures = []
    for srv in started:
        if srv.running:
            rc = srv.stop()
            if rc != 0:
                failures.append(f"{srv.argv}: exit code {rc} after SIGTERM (expected 0)\n"
                                "--- stderr (last 40 lines) ---\n" + "\n".join(srv.err_lines[-40:]))
    assert not failures, "\n".join(failures)


# --- clients ---------------------------------------------------------------------------------

@pytest.fixture(params=PREFIXES, ids=PREFIX_IDS)
def prefix(request):
    return request.param


@pytest.fixture
def client(server, prefix):
    """Authenticated client on the shared server, once per prefix ("" and "/api")."""
    return server.client(prefix)


@pytest.fixture
def rc(server):
    """Authenticated client on the shared server, root prefix only."""
    return server.client("")


@pytest.fixture
def anon(server, prefix):
    """Client without any key, once per prefix."""
    return server.client(prefix, key=None)


@pytest.fixture
def api(server, prefix):
    """api(path) -> absolute URL on the shared server under the current prefix."""
    return lambda path: server.base_url + prefix + path
