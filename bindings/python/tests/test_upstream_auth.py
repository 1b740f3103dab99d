import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import distsys


class _H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"server": self.server.name, "path": self.path}).encode()
        code = self.server.status
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(n)
        body = json.dumps({"echo": json.loads(data),
                           "ctype": self.headers.get("Content-Type")}).encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def servers():
    out = []
    for name in ("s1", "s2"):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        srv.name, srv.status = name, 200
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        out.append(srv)
    yield out
    for s in out:
        s.shutdown()
        s.server_close()


def url(s):
    return f"http://127.0.0.1:{s.server_address[1]}"


def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def test_static_endpoints_round_robin_and_json(servers):
    with distsys.Upstream("svc", endpoints={"a": url(servers[0]),
                                             "b": url(servers[1])}) as up:
        assert len(up) == 2
        names = [up.call("GET", "/x").json()["server"] for _ in range(4)]
        assert sorted(names) == ["s1", "s1", "s2", "s2"]
        r = up.call("POST", "/p", json={"k": 1})
        assert r.status == 201 and r.json() == {"echo": {"k": 1}, "ctype": "application/json"}
        assert r.attempts == 1 and r.endpoint in ("a", "b")
        assert r.headers.get("Content-Length")
        t = up.totals()
        assert t["calls"] == 5 and t["replies"] == 5
        st = {s.id: s for s in up.stats()}
        assert st["a"].successes + st["b"].successes == 5


def test_refused_endpoint_is_retried_elsewhere(servers):
    with distsys.Upstream("svc", endpoints={"dead": closed_port_url(),
                                             "live": url(servers[0])},
                          max_attempts=3) as up:
        for _ in range(4):
            r = up.call("POST", "/p", json=1)  # not idempotent: refused is still retried
            assert r.status == 201 and r.endpoint == "live"
        assert up.totals()["retries"] >= 1


def test_errors(servers):
    with distsys.Upstream("svc", fail_fast=True) as up:
        with pytest.raises(distsys.UnavailableError):
            up.call()
        up.add("only", closed_port_url())
        with pytest.raises(distsys.ConnRefusedError) as ei:
            up.call()
        assert "svc GET /" in str(ei.value)
        with pytest.raises(distsys.AlreadyExistsError):
            up.add("only", "http://x")
        up.set_breaker("only", "forced-open")
        with pytest.raises((distsys.BreakerOpenError, distsys.UnavailableError)):
            up.call()
        up.remove("only")
        with pytest.raises(distsys.NotFoundError):
            up.remove("only")
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.Upstream(policy="nope")
    servers[0].status = 503
    with distsys.Upstream("svc", endpoints={"a": url(servers[0])},
                          max_attempts=2, backoff_base_ms=1) as up:
        r = up.call()
        assert r.status == 503 and not r.ok and r.attempts == 2


def test_registry_discovery_and_closing_order(servers):
    reg = distsys.Registry("memory", sweep_interval_ms=50)
    reg.register("d1", "data", url(servers[0]))
    up = distsys.Upstream("data", registry=reg)
    assert up.call().json()["server"] == "s1"
    reg.register("d2", "data", url(servers[1]))
    deadline = time.monotonic() + 5
    while len(up) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(up) == 2
    reg.close()  # closes the upstream first
    assert up.closed
    with pytest.raises(distsys.ClosedError):
        up.call()
    up.close()
    # GC order: drop the registry reference first; the upstream keeps it
    reg = distsys.Registry("memory")
    reg.register("d1", "data", url(servers[0]))
    up = distsys.Upstream("data", registry=reg)
    del reg
    import gc
    gc.collect()
    assert up.call().status == 200
    del up
    gc.collect()


def test_password_hash_and_verify():
    h = distsys.hash_password("correct horse")
    assert h.startswith("$y$")
    assert distsys.verify_password("correct horse", h)
    assert not distsys.verify_password("wrong", h)
    assert not distsys.verify_password("x", "not-a-hash")
    b = distsys.hash_password("pw", prefix="$2b$")
    assert b.startswith("$2b$") and distsys.verify_password("pw", b)
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.hash_password("pw", prefix="$nope$")
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.hash_password("x" * 2000)


def test_tokens():
    key = b"k" * 32
    t = distsys.issue_token(key, {"id": "u1", "email": "a@b.c", "roles": ["x"]})
    c = distsys.verify_token(key, t)
    assert c["id"] == "u1" and c["roles"] == ["x"] and c["exp"] - c["iat"] == 86400
    with pytest.raises(distsys.AuthError):
        distsys.verify_token(b"z" * 32, t)
    with pytest.raises(distsys.AuthError):
        distsys.verify_token(key, t, alg="HS512")  # algorithm must match
    with pytest.raises(distsys.AuthError):
        distsys.verify_token(key, t[:-3] + "abc")
    with pytest.raises(distsys.AuthError):
        distsys.verify_token(key, "garbage")
    # alg "none" forged token is refused
    import base64
    def b64(d):
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    forged = b64({"alg": "none", "typ": "JWT"}) + "." + b64({"id": "admin", "exp": 4102444800}) + "."
    with pytest.raises(distsys.AuthError):
        distsys.verify_token(key, forged)
    t5 = distsys.issue_token(key, {"id": 1}, alg="HS384", lifetime_s=1)
    assert distsys.verify_token(key, t5, alg="HS384")["id"] == 1
    time.sleep(2.1)
    with pytest.raises(distsys.AuthError):
        distsys.verify_token(key, t5, alg="HS384")
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.issue_token(b"short", {})
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.issue_token(key, {}, alg="RS256")
    with pytest.raises(TypeError):
        distsys.issue_token(key, {"x": object()})
