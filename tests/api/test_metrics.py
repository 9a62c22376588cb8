"""GET /metrics: Prometheus text exposition (statetrack addition)."""
import re

import pytest

from st_helpers import assert_error, create_session, expect, poll, put_session

SAMPLE_RE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})?'
    r' (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)( -?[0-9]+)?$')


def parse(text):
    samples = []
    types = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples.append((m.group(1), labels, float(m.group(3))))
    return samples, types


def scrape(c):
    r = c.get("/metrics")
    assert r.status_code == 200, r.text[:300]
    ct = r.headers["Content-Type"].replace(" ", "")
    assert ct.startswith("text/plain") and "version=0.0.4" in ct, ct
    return parse(r.text)


def total(samples, name, **labels):
    return sum(v for n, lab, v in samples
               if n == name and all(lab.get(k) == x for k, x in labels.items()))


def test_metrics_requires_key(anon):
    assert_error(anon.get("/metrics"), 401, "API key is missing")


def test_metrics_families_present(client):
    samples, types = scrape(client)
    names = {n for n, _, _ in samples}
    for n in ("statetrack_http_requests_total", "statetrack_http_request_duration_seconds_bucket",
              "statetrack_store_commit_batch_size_bucket"):
        assert n in names, n
    assert types.get("statetrack_http_requests_total") == "counter"
    assert types.get("statetrack_http_request_duration_seconds") == "histogram"
    assert types.get("statetrack_store_commit_batch_size") == "histogram"
    assert types.get("statetrack_sessions") == "gauge"
    statuses = {lab.get("status") for n, lab, _ in samples if n == "statetrack_sessions"}
    assert "active" in statuses, statuses


def test_histograms_are_consistent(client):
    samples, _ = scrape(client)
    for fam in ("statetrack_http_request_duration_seconds", "statetrack_store_commit_batch_size"):
        buckets = [(lab, v) for n, lab, v in samples if n == fam + "_bucket"]
        assert buckets, fam
        assert any(lab.get("le") == "+Inf" for lab, _ in buckets), fam
        inf = sum(v for lab, v in buckets if lab.get("le") == "+Inf")
        assert inf == total(samples, fam + "_count"), fam
        assert fam + "_sum" in {n for n, _, _ in samples}


def test_request_counter_increases(client):
    before, _ = scrape(client)
    for _ in range(5):
        expect(client.get("/health"), 200)
    after, _ = scrape(client)
    delta = total(after, "statetrack_http_requests_total") - \
        total(before, "statetrack_http_requests_total")
    assert delta >= 5


def test_commit_batches_counted(client):
    before, _ = scrape(client)
    for _ in range(3):
        create_session(client)
    after, _ = scrape(client)
    assert total(after, "statetrack_store_commit_batch_size_count") > \
        total(before, "statetrack_store_commit_batch_size_count")


def test_sessions_gauge_tracks_statuses(start_server):
    srv = start_server(["--disable-background-jobs"])
    c = srv.client()
    a = create_session(c)
    create_session(c)
    p = create_session(c)
    put_session(c, p["session_id"], status="paused")
    expect(c.delete(f"/sessions/{a['session_id']}"), 204)

    def counts():
        s, _ = scrape(c)
        return {st: total(s, "statetrack_sessions", status=st)
                for st in ("active", "paused", "completed", "failed", "stalled", "archived")}
    poll(lambda: counts() == {"active": 1, "paused": 1, "completed": 1, "failed": 0,
                              "stalled": 0, "archived": 0}, 6, desc="sessions gauge")


@pytest.mark.parametrize("pfx", ["/api"])
def test_metrics_alias(server, pfx):
    r = server.client(pfx).get("/metrics")
    assert r.status_code == 200
    assert "statetrack_http_requests_total" in r.text
