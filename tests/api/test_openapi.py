"""OpenAPI document and Swagger page (contract §12.3)."""
import re

import pytest

from st_helpers import ROUTES, expect

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

# The contract's 46 routes, written out once more in OpenAPI style (the test compares both ways).
EXPECTED = {
    ("GET", "/health"), ("GET", "/health/ready"), ("GET", "/health/live"),
    ("GET", "/health/detailed"), ("GET", "/health/system"),
    ("POST", "/sessions"), ("GET", "/sessions"), ("GET", "/sessions/{}"),
    ("PUT", "/sessions/{}"), ("DELETE", "/sessions/{}"), ("POST", "/sessions/{}/heartbeat"),
    ("GET", "/sessions/stale"), ("GET", "/sessions/active"),
    ("GET", "/sessions/by-project/{}"), ("GET", "/sessions/by-machine/{}"),
    ("GET", "/sessions/{}/health"), ("GET", "/sessions/failed"),
    ("GET", "/sessions/{}/failure-info"), ("POST", "/sessions/{}/mark-failed"),
    ("POST", "/sessions/{}/mark-stalled"), ("POST", "/sessions/{}/archive"),
    ("DELETE", "/sessions/{}/purge"), ("POST", "/sessions/cleanup"),
    ("GET", "/sessions/archived"), ("GET", "/sessions/recoverable"),
    ("POST", "/sessions/{}/prepare-recovery"), ("POST", "/sessions/{}/recover"),
    ("GET", "/sessions/{}/recovery-history"),
    ("POST", "/tasks"), ("GET", "/tasks"), ("GET", "/tasks/{}"), ("PUT", "/tasks/{}"),
    ("DELETE", "/tasks/{}"), ("POST", "/tasks/{}/start"), ("POST", "/tasks/{}/complete"),
    ("POST", "/tasks/{}/fail"), ("GET", "/sessions/{}/tasks"),
    ("GET", "/machines/available"), ("GET", "/machines"), ("GET", "/machines/{}"),
    ("POST", "/machines"), ("PUT", "/machines/{}"), ("DELETE", "/machines/{}"),
    ("POST", "/machines/{}/assign-session"), ("POST", "/machines/{}/release-session"),
    ("POST", "/machines/{}/heartbeat"),
}
assert len(EXPECTED) == 46
# the explicit list and the route table used elsewhere agree
assert EXPECTED == {(m, re.sub(r":[A-Za-z]+", "{}", p)) for m, p, _ in ROUTES}
SUCCESS = {(m, re.sub(r":[A-Za-z]+", "{}", p)): code for m, p, code in ROUTES}
# Routes statetrack adds to the contract (additive; documented like the others).
ADDITIONAL = {("GET", "/metrics"), ("POST", "/sessions/{}/directive"), ("GET", "/sessions/{}/events"),
              ("GET", "/incidents"), ("POST", "/incidents/mass-stall/clear"),
              ("GET", "/events"), ("GET", "/events/stream"), ("POST", "/events/ticket")}
# Operator routes (src/api/admin.cpp).
ADDITIONAL |= {("GET", "/admin/log-level"), ("PUT", "/admin/log-level")}
# API key administration (src/api/keys.cpp).
ADDITIONAL |= {("POST", "/keys"), ("GET", "/keys"), ("POST", "/keys/{}/rotate"),
               ("DELETE", "/keys/{}")}


def _norm(path):
    return re.sub(r"\{[^}]*\}", "{}", path)


@pytest.fixture(scope="module")
def doc(server):
    c = server.client("", key=None)
    r = c.get("/api/docs-json")
    d = expect(r, 200)
    assert r.headers["Content-Type"].startswith("application/json")
    return d


def _operations(doc):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, op


def test_docs_json_is_public_openapi3(doc):
    assert str(doc.get("openapi", "")).startswith("3.")
    assert isinstance(doc.get("info", {}).get("title"), str)
    assert isinstance(doc["info"].get("version"), str)
    assert isinstance(doc.get("paths"), dict)


def test_docs_paths_cover_exactly_the_46_routes(doc):
    got = {(m, _norm(p)) for m, p, _ in _operations(doc)}
    missing = (EXPECTED | ADDITIONAL) - got
    extra = got - EXPECTED - ADDITIONAL
    assert not missing and not extra, (
        f"missing from the OpenAPI document: {sorted(missing)}; "
        f"operations that are neither contract routes nor known additions: {sorted(extra)}")
    assert sum(1 for _ in _operations(doc)) == 46 + len(ADDITIONAL)


def test_docs_path_parameters_declared(doc):
    for m, p, op in _operations(doc):
        names = re.findall(r"\{([^}]+)\}", p)
        params = list(op.get("parameters", [])) + \
            list(doc["paths"][p].get("parameters", []))
        declared = set()
        for prm in params:
            if "$ref" in prm:
                ref = prm["$ref"].split("/")[-1]
                prm = doc.get("components", {}).get("parameters", {}).get(ref, {})
            if prm.get("in") == "path":
                declared.add(prm.get("name"))
        for n in names:
            assert n in declared, f"{m} {p}: path parameter {n} not declared"


def test_every_operation_documents_its_success_response(doc):
    for m, p, op in _operations(doc):
        if (m, _norm(p)) not in SUCCESS:
            continue  # reported by test_docs_paths_cover_exactly_the_46_routes
        code = SUCCESS[(m, _norm(p))]
        responses = op.get("responses", {})
        assert str(code) in responses, f"{m} {p}: no {code} response ({list(responses)})"
        resp = responses[str(code)]
        if "$ref" in resp:
            resp = doc["components"]["responses"][resp["$ref"].split("/")[-1]]
        if code == 204:
            continue
        content = resp.get("content", {})
        assert "application/json" in content, f"{m} {p}: {code} has no JSON content"
        assert content["application/json"].get("schema"), f"{m} {p}: {code} has no schema"


def test_security_matches_authentication(doc):
    glob = doc.get("security")
    schemes = doc.get("components", {}).get("securitySchemes", {})
    assert schemes, "no security schemes declared"
    kinds = {(s.get("type"), s.get("scheme"), s.get("in"), (s.get("name") or "").lower())
             for s in schemes.values()}
    assert any(k[0] == "http" and k[1] == "bearer" for k in kinds), kinds
    assert any(k[0] == "apiKey" and k[2] == "header" and k[3] == "x-api-key" for k in kinds), kinds
    for m, p, op in _operations(doc):
        effective = op["security"] if "security" in op else glob
        if p.startswith("/health"):
            assert not effective, f"{m} {p} is public but lists security {effective}"
        else:
            assert effective, f"{m} {p} requires a key but lists no security"


def test_swagger_ui_page(server):
    r = server.client("", key=None).get("/api/docs")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert "<html" in r.text.lower()
