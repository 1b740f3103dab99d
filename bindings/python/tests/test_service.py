"""distsys.Service: routes, requests, responses, errors, built-in routes,
metrics, registration, drain, signals, GC of callbacks."""
import gc
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

import distsys


def call(url, method="GET", path="/", body=None, headers=None, timeout=5):
    """(status, headers dict (lower-case names), body bytes)."""
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def jcall(url, *a, **kw):
    st, h, b = call(url, *a, **kw)
    return st, json.loads(b) if b else None


@pytest.fixture
def app():
    a = distsys.Service("items", threads=2)
    yield a
    a.stop(drain_ms=1000)


def test_routes_params_query_headers_body(app):
    seen = {}

    @app.get("/items/{id}")
    def get_item(req, id):
        seen["req"] = req
        return {"id": id, "q": req.query, "ql": req.query_list,
                "h": req.headers["X-Thing"], "h2": req.header("x-thing"),
                "path": req.path, "method": req.method}

    @app.post("/items")
    def create(req):
        data = req.json()
        return distsys.HTTPResponse.json({"got": data}, 201, {"Location": "/items/1"})

    @app.route("PUT", "/files/{name:path}")
    def put_file(req, name):
        return {"name": name, "len": len(req.body), "rid": req.id}

    @app.get("/kw/{a}/{b}")
    def takes_kwargs(req, **params):
        return params

    @app.get("/plain/:x")
    def colon_style(req):
        return req.params["x"]

    url = app.listen()
    assert url.startswith("http://127.0.0.1:") and app.urls == [url]
    st, b = jcall(url, path="/items/a%20b?x=1&x=2&y=", headers={"X-Thing": "t"})
    assert st == 200
    assert b == {"id": "a b", "q": {"x": "1", "y": ""},
                 "ql": [["x", "1"], ["x", "2"], ["y", ""]], "h": "t", "h2": "t",
                 "path": "/items/a b", "method": "GET"}
    # the request is only valid while its handler runs
    with pytest.raises(distsys.InvalidStateError):
        seen["req"].path
    st, h, raw = call(url, "POST", "/items", body=b'{"n": 1}')
    assert st == 201 and json.loads(raw) == {"got": {"n": 1}}
    assert h["location"] == "/items/1" and h["content-type"] == "application/json"
    assert "x-request-id" in h
    st, b = jcall(url, "PUT", "/files/a/b/c.txt", body=b"\0" * 10,
                  headers={"X-Request-Id": "abc123"})
    assert (st, b) == (200, {"name": "a/b/c.txt", "len": 10, "rid": "abc123"})
    assert jcall(url, path="/kw/1/2") == (200, {"a": "1", "b": "2"})
    st, h, raw = call(url, path="/plain/z")
    assert (st, raw) == (200, b"z") and h["content-type"].startswith("text/plain")
    assert call(url, path="/nope")[0] == 404
    assert call(url, "DELETE", "/items")[0] == 405


def test_return_values_and_errors(app, caplog):
    @app.get("/none")
    def none(req):
        return None

    @app.get("/bytes")
    def raw(req):
        return b"\x00\x01"

    @app.get("/tuple")
    def tup(req):
        return {"a": 1}, 202, {"X-A": "b"}

    @app.get("/http-error")
    def herr(req):
        raise distsys.HTTPError(409, "taken", "conflict")

    @app.get("/boom")
    def boom(req):
        raise RuntimeError("secret detail")

    @app.post("/json")
    def needs_json(req):
        return req.json()

    @app.get("/bad-return")
    def bad(req):
        return {"x": object()}

    url = app.listen()
    st, h, b = call(url, path="/none")
    assert (st, b) == (204, b"")
    st, h, b = call(url, path="/bytes")
    assert (st, b, h["content-type"]) == (200, b"\x00\x01", "application/octet-stream")
    st, h, b = call(url, path="/tuple")
    assert (st, json.loads(b), h["x-a"]) == (202, {"a": 1}, "b")
    assert jcall(url, path="/http-error") == (409, {"error": "taken", "code": "conflict"})
    with caplog.at_level("ERROR", logger="distsys"):
        st, b = jcall(url, path="/boom")
    assert (st, b) == (500, {"error": "internal error", "code": "internal"})
    assert "secret detail" not in json.dumps(b)
    assert any("boom" in r.getMessage() and r.exc_info for r in caplog.records)
    st, b = jcall(url, "POST", "/json", body=b"{not json")
    assert st == 400 and b["code"] == "bad_json"
    assert jcall(url, path="/bad-return")[0] == 500
    # the service still works after all that
    assert call(url, path="/none")[0] == 204


def test_streaming(app):
    closed = threading.Event()

    @app.get("/stream")
    def stream(req):
        def gen():
            try:
                for i in range(5):
                    yield f"line {i}\n"
            finally:
                closed.set()
        return distsys.HTTPResponse.stream(gen(), content_type="text/plain")

    url = app.listen()
    st, h, b = call(url, path="/stream")
    assert st == 200 and b == b"".join(f"line {i}\n".encode() for i in range(5))
    assert h.get("transfer-encoding") == "chunked" and closed.is_set()


def test_health_ready_metrics(app):
    state = {"db": True}

    @app.ready_check
    def database():
        return state["db"]

    hits = app.metrics.counter("items_hits_total", "hits", {"kind": "a"})
    lat = app.metrics.histogram("items_work_seconds", "work", buckets=[0.1, 1])

    @app.get("/work")
    def work(req):
        hits.inc()
        with lat.time():
            pass
        return "ok"

    url = app.listen()
    st, b = jcall(url, path="/health")
    assert st == 200 and b["status"] == "healthy" and b["service"] == "items"
    assert jcall(url, path="/ready") == (200, {"status": "ready", "service": "items"})
    state["db"] = False
    st, b = jcall(url, path="/ready")
    assert st == 503 and b["status"] == "not ready" and "database" in b["error"]
    state["db"] = RuntimeError
    for _ in range(3):
        call(url, path="/work")
    assert hits.value == 3 and lat.count == 3
    st, h, text = call(url, path="/metrics")
    text = text.decode()
    assert st == 200 and h["content-type"].startswith("text/plain; version=0.0.4")
    assert 'items_hits_total{kind="a"} 3' in text
    assert 'items_work_seconds_bucket{le="0.1"} 3' in text
    assert 'dsys_http_requests_total{route="/work",method="GET",status="200"} 3' in text
    assert "process_resident_memory_bytes" in text
    with pytest.raises(distsys.DsysTypeError):
        app.metrics.gauge("items_hits_total", "now a gauge", {"kind": "a"})
    with pytest.raises(TypeError):
        hits.inc("1")


def test_user_route_overrides_builtin_health():
    with distsys.Service("x") as a:
        @a.get("/health")
        def mine(req):
            return {"mine": True}
        url = a.listen()
        assert jcall(url, path="/health") == (200, {"mine": True})


def test_bad_routes_and_state():
    with distsys.Service("x") as a:
        with pytest.raises(TypeError, match="handler must be callable"):
            a.add_route("GET", "/a", 5)
        with pytest.raises(ValueError, match="method must be one of"):
            a.route("FETCH", "/a")
        with pytest.raises(ValueError, match="start with"):
            a.get("nope")
        with pytest.raises(ValueError):
            a.get("/{x:path}/more")
        with pytest.raises(distsys.InvalidStateError):
            a.url
        a.listen()
        with pytest.raises(distsys.InvalidStateError, match="before listen"):
            a.get("/late")(lambda req: None)
    with pytest.raises(TypeError, match="threads must be int"):
        distsys.Service("x", threads="4")
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.Service("x").listen("https://127.0.0.1:0")  # no certificate


def test_concurrent_handlers_and_drain():
    # libmicrohttpd binds a connection to the server thread that accepted
    # it, and a thread busy in a handler accepts nothing: each client
    # starts once the previous one is in its handler, so the four land on
    # the four threads and are in their handlers at once.
    a = distsys.Service("slow", threads=4)
    started = threading.Semaphore(0)
    gate = threading.Event()

    @a.get("/slow")
    def slow(req):
        started.release()
        gate.wait(10)  # releases the GIL: the other handlers run meanwhile
        return "done"

    url = a.listen()
    results = []

    def client():
        results.append(call(url, path="/slow", timeout=15)[0])

    ts = [threading.Thread(target=client) for _ in range(4)]
    for t in ts:
        t.start()
        assert started.acquire(timeout=5), "a handler did not start"
    assert a.inflight == 4
    stopper = threading.Thread(target=lambda: results.append(a.stop(drain_ms=10000)))
    stopper.start()

    # stop() waits for the four handlers (they wait for the gate)
    stopper.join(0.3)
    assert stopper.is_alive() and not a.closed
    gate.set()
    stopper.join(10)
    for t in ts:
        t.join(5)
    assert sorted(results, key=str) == [200] * 4 + [True]
    assert a.closed and a.stop() is True
    with pytest.raises(distsys.ClosedError):
        a.urls


def test_stop_from_handler_is_refused(app):
    errs = []

    @app.get("/stop")
    def stop(req):
        try:
            app.stop()
        except distsys.InvalidStateError as e:
            errs.append(e)
        return "x"

    url = app.listen()
    assert call(url, path="/stop")[0] == 200 and len(errs) == 1


def test_callbacks_survive_gc():
    a = distsys.Service("gc")

    def make(i):
        return lambda req: {"i": i}

    for i in range(20):
        a.add_route("GET", f"/r{i}", make(i))
    url = a.listen()
    gc.collect()
    assert [jcall(url, path=f"/r{i}")[1]["i"] for i in range(20)] == list(range(20))
    del a
    gc.collect()  # the finalizer stops the server, then frees the callbacks
    with pytest.raises(OSError):
        call(url, path="/r0", timeout=2)


def test_register_heartbeat_deregister():
    with distsys.Registry("memory") as reg:
        a = distsys.Service("itemsvc")
        a.get("/x")(lambda req: "x")
        url = a.listen()
        r = a.register(reg, heartbeat_ms=50, tags=["py"])
        inst = reg.lookup("itemsvc")
        assert [(i.url, i.tags) for i in inst] == [(url, ["py"])]
        assert inst[0].id == "itemsvc-" + url.rsplit(":", 1)[1]
        deadline = time.monotonic() + 5
        while r.stats()["heartbeats"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert r.stats()["heartbeats"] >= 2 and r.stats()["registered"] == 1
        a.stop()
        assert reg.lookup("itemsvc", healthy_only=False) == []
        assert r.closed


SERVE = r"""
import sys, time, distsys
app = distsys.Service("sig", threads=2)
@app.get("/slow")
def slow(req):
    print("in-handler", flush=True)
    time.sleep(0.5)
    return "finished"
clean = app.serve_forever("http://127.0.0.1:0", drain_ms=5000)
print("stopped clean" if clean else "stopped cut", flush=True)
"""


def test_serve_forever_drains_on_sigterm(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", SERVE], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        line = p.stdout.readline()
        assert line.startswith("listening "), line + p.stderr.read()
        url = line.split()[1]
        out = {}
        t = threading.Thread(target=lambda: out.update(r=call(url, path="/slow")))
        t.start()
        assert p.stdout.readline().strip() == "in-handler"
        p.send_signal(signal.SIGTERM)
        t.join(10)
        assert out["r"][0] == 200 and out["r"][2] == b"finished"
        assert p.wait(10) == 0
        assert p.stdout.read().strip() == "stopped clean"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


SERVE_KILL_FROM_THREAD = r"""
import signal, sys, threading, distsys
app = distsys.Service("sig", threads=2)
@app.get("/stop")
def stop(req):
    # a process-wide signal may land on any thread that does not block it:
    # here, deterministically, on one of the server's threads
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
    return "signalled"
clean = app.serve_forever("http://127.0.0.1:0", drain_ms=5000)
print("stopped clean" if clean else "stopped cut", flush=True)
"""


def test_serve_forever_stops_on_a_signal_taken_by_another_thread():
    """The main thread must wake although the signal's C handler ran on a
    server thread (before: it slept in Event.wait, never interrupted)."""
    p = subprocess.Popen([sys.executable, "-c", SERVE_KILL_FROM_THREAD], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        line = p.stdout.readline()
        assert line.startswith("listening "), line + p.stderr.read()
        st, _, body = call(line.split()[1], path="/stop")
        assert (st, body) == (200, b"signalled")
        assert p.wait(10) == 0
        assert p.stdout.read().strip() == "stopped clean"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _pki(d):
    """A throwaway CA, a server/client certificate it signs, and a rogue
    self-signed one (openssl command line)."""
    k = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ext = d / "svc.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    cmds = [
        ["req", "-x509", *k, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=py-test-ca"],
        ["req", *k, "-keyout", "svc.key", "-out", "svc.csr", "-subj", "/CN=svc"],
        ["x509", "-req", "-in", "svc.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "svc.pem", "-days", "2", "-extfile", "svc.ext"],
        ["req", "-x509", *k, "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2",
         "-subj", "/CN=rogue"],
    ]
    for c in cmds:
        subprocess.run(["openssl", *c], cwd=d, check=True, capture_output=True)
    return {n: str(d / n) for n in ("ca.pem", "svc.pem", "svc.key", "rogue.pem", "rogue.key")}


def test_https_and_mutual_tls(tmp_path):
    import ssl
    f = _pki(tmp_path)
    with distsys.Service("tls", tls_cert_file=f["svc.pem"], tls_key_file=f["svc.key"],
                         tls_client_ca_file=f["ca.pem"]) as app:
        app.get("/who")(lambda req: {"ok": True})
        url = app.listen("https://127.0.0.1:0")
        assert url.startswith("https://127.0.0.1:")
        u = urllib.parse.urlsplit(url)

        def get(cert):
            ctx = ssl.create_default_context(cafile=f["ca.pem"])
            if cert:
                ctx.load_cert_chain(f[cert + ".pem"], f[cert + ".key"])
            c = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=5)
            try:
                c.request("GET", "/who")
                r = c.getresponse()
                return r.status, r.read()
            finally:
                c.close()

        assert get("svc") == (200, b'{"ok":true}')
        assert get(None)[0] == 403       # no client certificate
        assert get("rogue")[0] == 403    # one the CA did not sign
    with pytest.raises(distsys.IoError):
        distsys.Service("x", tls_cert_file=str(tmp_path / "missing.pem"),
                        tls_key_file=f["svc.key"]).listen("https://127.0.0.1:0")


def test_service_collected_inside_its_own_handler():
    # The handler drops the last reference to its Service: the finalizer
    # runs on the handler's thread, where freeing the server would wait
    # for that very handler; it is freed on a helper thread instead, and
    # the callbacks stay alive until it is.
    import weakref
    holder = [distsys.Service("self", threads=2)]
    ref = weakref.ref(holder[0])

    def drop(req):
        holder.clear()  # the last reference: collected here
        return "bye"

    holder[0].add_route("GET", "/drop", drop)
    url = holder[0].listen()
    st, _, body = call(url, path="/drop", timeout=10)
    assert (st, body) == (200, b"bye")
    assert ref() is None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            call(url, path="/drop", timeout=1)
        except OSError:
            break  # the server is gone
        time.sleep(0.05)
    else:
        pytest.fail("the server still answers 10 s after its Service was collected")
