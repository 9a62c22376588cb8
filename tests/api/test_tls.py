"""Native TLS (--tls-cert/--tls-key) and the plain redirect listener (--redirect-port).

A self-signed certificate for 127.0.0.1 is generated once per module with openssl; clients
verify the server against it."""
import http.client
import re
import socket
import ssl
import subprocess
import time
import warnings

import pytest
import requests

from st_helpers import assert_error, expect

REDIRECT_RE = re.compile(r"statetrack redirecting http on 127\.0\.0\.1:(\d+) to https port (\d+)")


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(crt), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60)
    return str(crt), str(key)


def tls_args(cert):
    return ["--tls-cert", cert[0], "--tls-key", cert[1]]


@pytest.fixture
def tls_server(start_server, cert):
    return start_server(tls_args(cert), tls_ca=cert[0])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_context(cert, minimum=None, maximum=None, ciphers=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cert[0])
    with warnings.catch_warnings():  # TLS 1.0/1.1 constants are deprecated, which is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def handshake(port, ctx):
    """(protocol version, cipher name) of a completed handshake; raises ssl.SSLError."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return s.version(), s.cipher()[0], s.compression()


def metric(srv, name):
    text = expect_text(srv.client().get("/metrics"))
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def expect_text(r):
    assert r.status_code == 200, r.text[:300]
    return r.text


# --- HTTPS --------------------------------------------------------------------------------------

def test_https_requests_work_with_the_certificate(tls_server, cert):
    assert tls_server.base_url.startswith("https://127.0.0.1:")
    assert any(line.endswith("(https)") for line in tls_server.output()
               if line.startswith("statetrack listening on"))
    c = tls_server.client()
    assert expect(c.get("/health"), 200)["status"] == "ok"
    s = expect(c.post("/sessions", json={"project_id": "p-tls", "machine_id": "m"}), 201)
    assert expect(c.get(f"/api/sessions/{s['session_id']}"), 200)["project_id"] == "p-tls"
    # Without the certificate as trust anchor the client refuses the self-signed server.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_server.base_url + "/health", timeout=10)


def test_hsts_on_every_https_response(tls_server):
    c = tls_server.client()
    anon = tls_server.client(key=None)
    responses = [
        c.get("/health"),
        c.get("/sessions?limit=1"),
        anon.get("/sessions"),                                  # 401
        c.get("/no-such-route"),                                # 404
        c.post("/sessions", json={}),                           # 400
        anon.request("OPTIONS", "/sessions"),                   # 204 preflight
        c.post("/sessions", data=b"x" * 200_000,                # 413, answered by the reader
               headers={"Content-Type": "application/json"}),
    ]
    assert [r.status_code for r in responses] == [200, 200, 401, 404, 400, 204, 413]
    for r in responses:
        assert r.headers.get("Strict-Transport-Security") == "max-age=31536000", \
            (r.status_code, r.headers)


def test_no_hsts_on_plain_http(server):
    r = server.client().get("/health")
    assert r.status_code == 200
    assert "Strict-Transport-Security" not in r.headers


def test_plain_http_to_the_tls_port_gets_no_http_answer(tls_server):
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    assert not data.startswith(b"HTTP/"), data[:200]
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls_server.port}/health", timeout=10)
    # The server is unharmed and counted the failed handshakes.
    assert tls_server.client().get("/health").status_code == 200
    assert metric(tls_server, "statetrack_tls_handshake_failures_total") >= 2


def test_tls_1_1_refused_tls_1_2_accepted(tls_server, cert):
    old = client_context(cert, minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_1,
                         ciphers="DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as e:
        handshake(tls_server.port, old)
    # The server refused the version (an alert from the peer), not the client itself.
    assert e.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", e.value
    # The same client allowed TLS 1.2 connects: the refusal was about the version alone.
    ok = client_context(cert, minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_2,
                        ciphers="DEFAULT:@SECLEVEL=0")
    version, cipher, compression = handshake(tls_server.port, ok)
    assert version == "TLSv1.2"
    assert "GCM" in cipher or "CHACHA20" in cipher, cipher
    assert compression is None
    assert handshake(tls_server.port, client_context(cert))[0] == "TLSv1.3"


def test_tls_1_2_without_aead_ciphers_refused(tls_server, cert):
    cbc_only = client_context(cert, maximum=ssl.TLSVersion.TLSv1_2,
                              ciphers="ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:AES128-SHA:"
                                      "AES256-SHA:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        handshake(tls_server.port, cbc_only)


def test_server_prefers_its_own_cipher_order(tls_server, cert):
    # The client lists AES-256 first; the server's order puts AES-128-GCM first and wins.
    ctx = client_context(cert, maximum=ssl.TLSVersion.TLSv1_2,
                         ciphers="ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256")
    assert handshake(tls_server.port, ctx)[1] == "ECDHE-RSA-AES128-GCM-SHA256"


# --- redirect listener --------------------------------------------------------------------------

def redirect_port_of(srv):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in srv.output():
            m = REDIRECT_RE.search(line)
            if m:
                assert int(m.group(2)) == srv.port
                return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError("no redirect line:\n" + "\n".join(srv.output()))


def raw(port, method, target, host):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        r = conn.getresponse()
        r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def test_redirect_listener_answers_308_to_https(start_server, cert):
    want = free_port()
    srv = start_server(tls_args(cert) + ["--redirect-port", str(want)], tls_ca=cert[0])
    port = redirect_port_of(srv)
    assert port == want
    for method, target in (("GET", "/api/sessions?status=active&limit=5"), ("POST", "/sessions"),
                           ("GET", "/health"), ("DELETE", "/tasks/t-1")):
        status, headers = raw(port, method, target, f"127.0.0.1:{port}")
        assert status == 308, (method, target, status)
        assert headers["location"] == f"https://127.0.0.1:{srv.port}{target}"
        assert "strict-transport-security" not in headers
    # Same host name as asked for, HTTPS port instead of the plain one.
    status, headers = raw(port, "GET", "/health", f"localhost:{port}")
    assert (status, headers["location"]) == (308, f"https://localhost:{srv.port}/health")
    status, headers = raw(port, "GET", "/", "[::1]")
    assert (status, headers["location"]) == (308, f"https://[::1]:{srv.port}/")
    # No usable Host header: nothing to redirect to.
    assert raw(port, "GET", "/health", None)[0] == 400
    assert raw(port, "GET", "/health", "evil.example.com/x")[0] == 400
    # A client following the redirect ends up on the HTTPS API.
    r = requests.get(f"http://127.0.0.1:{port}/health", verify=cert[0], timeout=10)
    assert r.status_code == 200 and r.url.startswith("https://")
    assert r.history and r.history[0].status_code == 308
    assert metric(srv, 'statetrack_http_redirects_total{listener="redirect"}') >= 5


def test_redirect_listener_serves_no_api(start_server, cert):
    srv = start_server(tls_args(cert) + ["--redirect-port", str(free_port())], tls_ca=cert[0])
    port = redirect_port_of(srv)
    r = requests.get(f"http://127.0.0.1:{port}/sessions", headers={"X-API-Key": "x"},
                     allow_redirects=False, timeout=10)
    assert r.status_code == 308
    assert r.content == b""


# --- configuration errors -----------------------------------------------------------------------

def run_serve(binary, tmp_path, *args):
    return subprocess.run([binary, "serve", "--host", "127.0.0.1", "--port", "0", "--db",
                           str(tmp_path / "x.db"), *args], capture_output=True, text=True,
                          timeout=20, cwd=tmp_path, stdin=subprocess.DEVNULL,
                          env={"PATH": "/usr/bin:/bin", "API_KEYS": "k"})


@pytest.mark.parametrize("args,expected", [
    (["--tls-cert", "{crt}"], "--tls-cert needs --tls-key"),
    (["--tls-key", "{key}"], "--tls-key needs --tls-cert"),
    (["--redirect-port", "18443"], "--redirect-port needs --tls-cert"),
    (["--tls-cert", "{crt}", "--tls-key", "{tmp}/missing.pem"], "--tls-key"),
    (["--tls-cert", "{tmp}/missing.pem", "--tls-key", "{key}"], "--tls-cert"),
    (["--tls-cert", "{key}", "--tls-key", "{key}"], "--tls-cert"),
])
def test_bad_tls_configuration_exits_2(statetrack_bin, tmp_path, cert, args, expected):
    args = [a.format(crt=cert[0], key=cert[1], tmp=tmp_path) for a in args]
    p = run_serve(statetrack_bin, tmp_path, *args)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], p.stderr
    assert "listening" not in p.stdout
    assert "created an admin API key" not in p.stdout


def test_key_not_matching_certificate_exits_2(statetrack_bin, tmp_path, cert):
    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(other), "2048"], check=True,
                   capture_output=True, timeout=60)
    p = run_serve(statetrack_bin, tmp_path, "--tls-cert", cert[0], "--tls-key", str(other))
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "does not match" in p.stderr or "key values mismatch" in p.stderr, p.stderr


def test_tls_options_from_the_environment(start_server, cert):
    srv = start_server(env={"STATETRACK_TLS_CERT": cert[0], "STATETRACK_TLS_KEY": cert[1]},
                       tls_ca=cert[0])
    assert srv.base_url.startswith("https://")
    assert expect(srv.client().get("/health"), 200)["status"] == "ok"
    assert_error(srv.client(key=None).get("/sessions"), 401, "API key is missing")
