"""asyncio: Upstream.acall (dsys_upstream_send, completion handed to the
loop with call_soon_threadsafe) and Worker with async def handlers."""
import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import distsys


@pytest.fixture
def slow_service():
    app = distsys.Service("slow", threads=8)

    @app.get("/sleep/{ms}")
    def sleep(req, ms):
        time.sleep(int(ms) / 1000)
        return {"slept": int(ms), "thread": threading.get_ident()}

    @app.post("/echo")
    def echo(req):
        return req.json()

    app.listen()
    yield app
    app.stop(drain_ms=1000)


def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def _own_threads():
    """Python threads, but the test server's (one per connection)."""
    return sum(1 for t in threading.enumerate()
               if "process_request_thread" not in t.name)


class _Together(BaseHTTPRequestHandler):
    """Answers once six requests are in at once (a thread per connection:
    libmicrohttpd's pool may serve connections one after the other)."""

    protocol_version = "HTTP/1.1"
    barrier = threading.Barrier(6, timeout=10)

    def do_GET(self):
        try:
            body = json.dumps({"n": self.barrier.wait()}).encode()
            status = 200
        except threading.BrokenBarrierError:
            body, status = b"{}", 500
        time.sleep(0.2)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_acall_runs_calls_concurrently_without_threads(slow_service):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Together)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    together = f"http://127.0.0.1:{srv.server_address[1]}"

    async def main():
        with distsys.Upstream("t", endpoints={"t": together}) as t_up, \
                distsys.Upstream("slow", endpoints={"a": slow_service.url}) as up:
            threads_before = _own_threads()
            ticks = 0
            done = asyncio.Event()

            async def ticker():
                nonlocal ticks
                while not done.is_set():
                    ticks += 1
                    await asyncio.sleep(0.01)

            tt = asyncio.ensure_future(ticker())
            rs = await asyncio.gather(*[t_up.acall("GET", "/") for _ in range(6)])
            done.set()
            await tt
            assert _own_threads() - threads_before <= 1  # no thread per call
            r = await up.acall("POST", "/echo", json={"a": [1, 2]})
            return rs, r, ticks

    try:
        rs, r, ticks = asyncio.run(main())
    finally:
        srv.shutdown()
        srv.server_close()
    # the six were in flight together (the server's barrier broke otherwise)
    assert [x.status for x in rs] == [200] * 6
    assert sorted(x.json()["n"] for x in rs) == list(range(6))
    # and the loop kept running meanwhile (they took >= 200 ms)
    assert ticks >= 2, ticks
    assert r.status == 200 and r.json() == {"a": [1, 2]} and r.endpoint == "a"


def test_acall_errors_and_cancel(slow_service):
    async def main():
        with distsys.Upstream("x", endpoints={"dead": closed_port_url()},
                              max_attempts=2, backoff_base_ms=1) as up:
            with pytest.raises(distsys.ConnRefusedError) as ei:
                await up.acall("GET", "/")
            assert "attempt(s)" in str(ei.value)
        with distsys.Upstream("none", fail_fast=True) as up:
            with pytest.raises(distsys.UnavailableError):
                await up.acall("GET", "/")  # refused at once: no callback
            with pytest.raises(TypeError):
                await up.acall(5, "/")
        with distsys.Upstream("slow", endpoints={"a": slow_service.url}) as up:
            t = asyncio.ensure_future(up.acall("GET", "/sleep/200"))
            await asyncio.sleep(0.05)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            # the abandoned call completes in the library; the next one works
            r = await up.acall("GET", "/sleep/1")
            assert r.status == 200
            return up.totals()["calls"]

    assert asyncio.run(main()) == 2


def test_async_worker_handlers_run_on_the_loop():
    async def main():
        loop = asyncio.get_running_loop()
        with distsys.Queue("memory:") as q:
            ran_on = set()

            async def handler(job, ctx):
                ran_on.add(threading.get_ident())
                await asyncio.sleep(0.05)
                ctx.progress(50)
                if job.payload == "bad":
                    raise ValueError("no")
                return {"double": job.payload * 2}

            ids = [q.submit("a", i) for i in range(4)] + [q.submit("a", "bad", max_attempts=1)]
            async with distsys.Worker(q, handler, "a", threads=4, poll_ms=10) as w:
                with pytest.raises(distsys.InvalidStateError, match="astop"):
                    w.stop()
                deadline = loop.time() + 10
                while loop.time() < deadline:
                    states = [q.get(i).state for i in ids]
                    if all(s in ("completed", "failed") for s in states):
                        break
                    await asyncio.sleep(0.02)
            assert w.stopped
            jobs = [q.get(i) for i in ids]
            assert [j.result for j in jobs[:4]] == [{"double": i * 2} for i in range(4)]
            assert jobs[4].state == "failed" and jobs[4].error == "ValueError: no"
            assert ran_on == {threading.get_ident()}

    asyncio.run(main())


def test_async_handler_needs_a_loop():
    async def h(job, ctx):
        return None

    with distsys.Queue() as q:
        with pytest.raises(distsys.InvalidStateError, match="event loop"):
            distsys.Worker(q, h, "a")
        lp = asyncio.new_event_loop()
        try:
            with pytest.raises(TypeError, match="loop= is for async"):
                distsys.Worker(q, lambda j, c: None, "a", loop=lp)
        finally:
            lp.close()


def test_aclaim():
    async def main():
        with distsys.Queue("memory:") as q:
            assert await q.aclaim("a") is None
            jid = q.submit("a", {"n": 1})
            job = await q.aclaim(["a", "b"], worker="w1", lease_ms=5000)
            assert job.id == jid and job.payload == {"n": 1} and job.worker == "w1"
            q.complete(job.id, job.token, 1)
            with pytest.raises(TypeError):
                await q.aclaim("a", worker=1)
            return q.get(jid).state

    assert asyncio.run(main()) == "completed"
