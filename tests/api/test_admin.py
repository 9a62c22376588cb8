"""Operator surfaces: the log level changed at run time (GET/PUT /admin/log-level, SIGUSR1 and
SIGUSR2), and docs/configuration.md agreeing with the binary."""
import re
import signal
import subprocess
from pathlib import Path

import pytest

from st_helpers import assert_error, expect, poll, uid

REPO = Path(__file__).resolve().parents[2]
KEY_RE = re.compile(r"st_[A-Za-z0-9]{40}")


def level_lines(srv):
    return [e for e in srv.json_lines() if e.get("message", "").startswith("log level set to ")]


def wait_level_lines(srv, n):
    return poll(lambda: (lambda ls: ls if len(ls) >= n else None)(level_lines(srv)), 5,
                desc=f"{n} log-level lines")


def warn_access_lines(srv, path):
    return [e for e in srv.json_lines()
            if e.get("level") == "WARN" and e.get("message", "").startswith(f"GET {path} 404")]


# --- GET / PUT /admin/log-level ----------------------------------------------------------------

@pytest.mark.parametrize("pfx", ["", "/api"])
def test_get_and_put_log_level(start_server, pfx):
    srv = start_server()
    c = srv.client(pfx)
    assert expect(c.get("/admin/log-level"), 200) == {"level": "info"}
    assert expect(c.put("/admin/log-level", json={"level": "debug"}), 200) == {"level": "debug"}
    assert expect(c.get("/admin/log-level"), 200) == {"level": "debug"}
    (line,) = wait_level_lines(srv, 1)
    assert line["level"] == "INFO"
    assert line["message"] == "log level set to debug"
    assert line["context"]["from"] == "info" and line["context"]["to"] == "debug"
    assert line["context"]["by"] == "api"
    assert line["context"]["key_id"].startswith("env:")


def test_level_takes_effect_at_once(start_server):
    srv = start_server()
    c = srv.client()
    c.get("/missing-a")
    poll(lambda: warn_access_lines(srv, "/missing-a"), 5, desc="WARN line at level info")
    expect(c.put("/admin/log-level", json={"level": "error"}), 200)
    c.get("/missing-b")
    expect(c.put("/admin/log-level", json={"level": "warn"}), 200)
    c.get("/missing-c")
    poll(lambda: warn_access_lines(srv, "/missing-c"), 5, desc="WARN line at level warn")
    assert warn_access_lines(srv, "/missing-b") == [], "a WARN line was written at level error"
    # Both changes were logged although INFO lines were off in between.
    lines = wait_level_lines(srv, 2)
    assert [(e["context"]["from"], e["context"]["to"]) for e in lines] == \
        [("info", "error"), ("error", "warn")]


def test_initial_level_from_configuration(start_server):
    srv = start_server(["--log-level", "warn"])
    assert expect(srv.client().get("/admin/log-level"), 200) == {"level": "warn"}


@pytest.mark.parametrize("body", [{"level": "loud"}, {"level": "WARN "}, {}, {"level": 3},
                                  {"level": "debug", "extra": 1}])
def test_put_rejects_bad_bodies(start_server, body):
    srv = start_server()
    c = srv.client()
    assert_error(c.put("/admin/log-level", json=body), 400)
    assert expect(c.get("/admin/log-level"), 200) == {"level": "info"}


def test_put_rejects_malformed_json(rc):
    r = rc.put("/admin/log-level", data=b"{level", headers={"Content-Type": "application/json"})
    assert_error(r, 400)


def test_admin_routes_need_a_key(anon):
    assert_error(anon.get("/admin/log-level"), 401, "API key is missing")
    assert_error(anon.put("/admin/log-level", json={"level": "debug"}), 401, "API key is missing")
    assert_error(anon.put("/admin/log-level", json={"level": "debug"},
                          headers={"X-API-Key": "wrong"}), 401, "Invalid API key")


def test_admin_routes_need_an_admin_key(start_server, statetrack_bin):
    srv = start_server()
    keys = {}
    for role in ("read", "write", "admin"):
        p = subprocess.run([statetrack_bin, "keys", "create", "--db", srv.db_path, "--name",
                            uid(role), "--role", role], capture_output=True, text=True,
                           timeout=30)
        assert p.returncode == 0, p.stderr
        (keys[role],) = KEY_RE.findall(p.stdout)
    for role in ("read", "write"):
        c = srv.client(key=keys[role])
        poll(lambda: c.get("/sessions?limit=1").status_code == 200, 5, desc="key accepted")
        assert_error(c.get("/admin/log-level"), 403, "This route needs an admin key")
        assert_error(c.put("/admin/log-level", json={"level": "debug"}), 403)
    admin = srv.client(key=keys["admin"])
    poll(lambda: admin.get("/admin/log-level").status_code == 200, 5, desc="admin key accepted")
    assert expect(admin.put("/admin/log-level", json={"level": "warn"}), 200) == {"level": "warn"}


def test_admin_routes_in_the_openapi_document(server):
    d = expect(server.client("", key=None).get("/api/docs-json"), 200)
    item = d["paths"]["/admin/log-level"]
    assert set(item) >= {"get", "put"}
    for op in (item["get"], item["put"]):
        assert op["security"]
        schema = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/LogLevel"}
    level = d["components"]["schemas"]["LogLevel"]
    assert level["properties"]["level"]["enum"] == ["debug", "info", "warn", "error"]


# --- signals ------------------------------------------------------------------------------------

def level_of(srv):
    return expect(srv.client().get("/admin/log-level"), 200)["level"]


def signal_and_wait(srv, sig, expected, lines_before):
    srv.proc.send_signal(sig)
    wait_level_lines(srv, lines_before + 1)
    assert level_of(srv) == expected


def test_sigusr1_raises_and_sigusr2_lowers_verbosity(start_server):
    srv = start_server(["--log-level", "warn"])
    steps = [(signal.SIGUSR1, "info"), (signal.SIGUSR1, "debug"), (signal.SIGUSR1, "debug"),
             (signal.SIGUSR2, "info"), (signal.SIGUSR2, "warn"), (signal.SIGUSR2, "error"),
             (signal.SIGUSR2, "error")]
    for i, (sig, expected) in enumerate(steps):
        signal_and_wait(srv, sig, expected, i)
    lines = level_lines(srv)
    assert [e["context"]["by"] for e in lines] == \
        ["SIGUSR1"] * 3 + ["SIGUSR2"] * 4
    assert [e["context"]["to"] for e in lines] == [to for _, to in steps]
    assert all(e["level"] == "INFO" for e in lines)
    assert srv.running
    assert srv.stop() == 0


# --- operator documents agree with the binary ---------------------------------------------------

def test_configuration_md_matches_help_markdown(statetrack_bin):
    p = subprocess.run([statetrack_bin, "serve", "--help-markdown"], capture_output=True,
                       text=True, timeout=20, env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    doc = (REPO / "docs" / "configuration.md").read_text()
    table = doc[doc.index("| flag |"):]
    assert table.strip() == p.stdout.strip(), \
        "docs/configuration.md is stale: regenerate its table with `statetrack serve --help-markdown`"
    for flag in ("--tls-cert", "--tls-key", "--redirect-port", "--cors-origins",
                 "--auth-failure-limit"):
        assert f"`{flag}`" in table
