"""deploy/: the Prometheus alert rules and the Grafana dashboard only use metrics the server
really exports, every alert is complete and links an existing runbook section, and the
statetrack_ready gauge follows the database. (promtool checks syntax and alert behaviour in
scripts/test.sh.)"""
import json
import re
import time
from pathlib import Path

import pytest

from st_helpers import ON_POSTGRES, create_session, expect

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "statetrack-dashboard.json"
RUNBOOKS = REPO / "docs" / "RUNBOOKS.md"

NAME_RE = re.compile(r"\b((?:statetrack|process)_[a-z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exported_names(client):
    """Every sample name /metrics exposes (histograms with their suffixes)."""
    create_session(client)  # so that the commit histograms have samples
    r = client.get("/metrics")
    assert r.status_code == 200, r.text[:200]
    names = set()
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names.update(name + s for s in HISTOGRAM_SUFFIXES)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(d):
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def alert_blocks(text):
    """(name, block text) per `- alert:` rule of the rules file."""
    parts = re.split(r"^\s*- alert:\s*", text, flags=re.M)[1:]
    return [(p.split("\n", 1)[0].strip(), p) for p in parts]


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def test_alerts_and_dashboard_use_only_exported_metrics(rc, dashboard):
    exported = exported_names(rc)
    used = {}
    for title, expr in dashboard_exprs(dashboard):
        for n in NAME_RE.findall(expr):
            used.setdefault(n, f"dashboard panel {title!r}")
    for path in (ALERTS, ALERTS_TEST):
        for n in NAME_RE.findall(path.read_text()):
            used.setdefault(n, path.name)
    assert used, "no metric names found in deploy/"
    missing = {n: where for n, where in used.items() if n not in exported}
    assert not missing, f"metrics used in deploy/ but not exported by the server: {missing}"
    # The checklist's signals are all covered by the rules.
    text = ALERTS.read_text()
    for n in ("statetrack_http_requests_total", "statetrack_http_request_duration_seconds_bucket",
              "statetrack_ready", "statetrack_store_failed_commits_total",
              "statetrack_sessions_stalled_total", "statetrack_job_failures_total"):
        assert n in text, n
    assert 'up{job="statetrack"} == 0' in text


def test_the_names_check_can_fail(rc):
    exported = exported_names(rc)
    assert "statetrack_http_requests_total" in exported
    assert "statetrack_http_request_duration_seconds_bucket" in exported
    assert "statetrack_no_such_metric_total" not in exported


def test_every_alert_is_complete_and_links_a_runbook():
    text = ALERTS.read_text()
    blocks = alert_blocks(text)
    names = [n for n, _ in blocks]
    assert len(names) == len(set(names)) >= 7, names
    anchors = {slug(m.group(1)) for m in re.finditer(r"^#{2,3} (.+)$", RUNBOOKS.read_text(), re.M)}
    for name, block in blocks:
        assert re.search(r"^\s+expr:", block, re.M), name
        assert re.search(r"^\s+severity: (critical|warning)\s*$", block, re.M), name
        assert re.search(r"^\s+summary:", block, re.M), name
        assert re.search(r"^\s+description:", block, re.M), name
        m = re.search(r'^\s+runbook_url: "docs/RUNBOOKS\.md#([a-z0-9-]+)"', block, re.M)
        assert m, f"{name}: no runbook_url into docs/RUNBOOKS.md"
        assert m.group(1) == name.lower(), (name, m.group(1))
        assert m.group(1) in anchors, f"{name}: docs/RUNBOOKS.md has no section #{m.group(1)}"


def test_dashboard_model(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    titles = [p["title"] for p in dashboard["panels"]]
    for want in ("Request rate by route", "Error rate", "p50 / p95 / p99", "Sessions by status",
                 "Commit batch size", "Commit latency", "Writer queue depth", "Job runs",
                 "Job failures", "Open connections", "CPU", "memory"):
        assert any(want.lower() in t.lower() for t in titles), (want, titles)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_ready_gauge_follows_the_database(start_server):
    srv = start_server()
    c = srv.client()

    def ready():
        for line in c.get("/metrics").text.splitlines():
            if line.startswith("statetrack_ready "):
                return float(line.split()[1])
        return None

    assert ready() == 1.0
    assert expect(c.get("/health/ready"), 200)["ready"] is True


def _samples(client, name):
    """{labels text: value} of every sample of `name` on /metrics."""
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, value = line.rsplit(" ", 1)
            out[key[len(name):]] = float(value)
    return out


def test_state_changes_are_counted_by_event_type(start_server):
    srv = start_server()
    c = srv.client()
    before = _samples(c, "statetrack_events_total")
    sid = create_session(c)["session_id"]
    expect(c.put(f"/api/sessions/{sid}", json={"metadata": {"k": 1}}), 200)
    expect(c.post(f"/api/sessions/{sid}/mark-failed", json={"reason": "test"}), 200)
    created, updated, failed = ('{type="session.created"}', '{type="session.updated"}',
                                '{type="session.failed"}')

    def counted():
        now = _samples(c, "statetrack_events_total")
        return {k: now.get(k, 0) - before.get(k, 0) for k in (created, updated, failed)}

    deadline = time.monotonic() + 5  # the count is taken as the event log is read, just after commit
    while counted() != {created: 1, updated: 1, failed: 1} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted() == {created: 1, updated: 1, failed: 1}


@pytest.mark.skipif(not ON_POSTGRES, reason="PostgreSQL only (ST_BACKEND=postgres)")
def test_reader_pool_use_is_exported(start_server):
    srv = start_server(["--db-pool-size", "3"])
    c = srv.client()
    create_session(c)
    pool = _samples(c, "statetrack_store_pool_connections")
    assert set(pool) == {'{state="busy"}', '{state="idle"}', '{state="waiting"}'}, pool
    assert pool['{state="busy"}'] + pool['{state="idle"}'] == 3
    assert pool['{state="waiting"}'] >= 0
