#!/usr/bin/env python3
"""Resident memory of the Python bindings over many create/use/close
cycles, per class. Usage:

    DSYS_LIBRARY=<builddir>/.libs/libdistsys.so PYTHONPATH=bindings/python \
        python3 bench/python-memory.py [CYCLES]   (default 100000)

Prints RSS (KiB) after a warm-up and after the cycles. The Python tests run
the same cycles 5,000 times per class and assert the growth stays small.
"""
import gc
import os
import sys
import time

import distsys

SECRET = b"s" * 32


def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def c_store(i):
    with distsys.Store("memory:") as s:
        s.put("k", {"i": i}, metadata={"m": 1})
        s.item("k")
        s.incr("n")
        s.list()
        try:
            s.item("absent")
        except distsys.NotFoundError:
            pass


def c_queue(i):
    with distsys.Queue("memory:") as q:
        jid = q.submit("q", {"i": i})
        j = q.claim("q")
        q.complete(j.id, j.token, {"r": i})
        q.get(jid)
        q.counts()


def c_worker_q():
    return distsys.Queue("memory:")


_Q = None


def c_worker(i):
    # a worker per cycle on one queue: start, run one job, stop
    global _Q
    if _Q is None:
        _Q = distsys.Queue("memory:")
    done = []
    w = distsys.Worker(_Q, lambda j, c: done.append(1) or j.payload, "w",
                       poll_ms=1, prefetch=-1)
    _Q.submit("w", i)
    while not done:
        time.sleep(0.0002)
    w.stop()
    if i % 1000 == 0:
        _Q.purge(0)


def c_registry(i):
    with distsys.Registry("memory", sweep_interval_ms=-1) as r:
        r.register("a", "t", "http://x", tags=["t1"], metadata={"k": i})
        r.lookup("t")
        wid = r.watch(lambda c: None)
        r.unwatch(wid)


def c_balancer(i):
    with distsys.Balancer() as b:
        b.add("a", value=i)
        b.add("b")
        with b.picked():
            pass


def c_breaker(i):
    with distsys.Breaker("b", on_event=lambda *a: None) as b:
        b.guard(lambda: i)
        b.state = "forced-open"
        b.stats()


def c_upstream(i):
    with distsys.Upstream("svc", fail_fast=True) as u:
        u.add("a", "http://127.0.0.1:9")
        u.stats()
        u.totals()
        try:
            u.set_breaker("a", "forced-open")
            u.call()
        except distsys.DistsysError:
            pass


def c_auth(i):
    t = distsys.issue_token(SECRET, {"id": i})
    distsys.verify_token(SECRET, t)
    try:
        distsys.verify_token(SECRET, t + "x")
    except distsys.AuthError:
        pass


_UP = None


def _up():
    global _UP
    if _UP is None:
        _UP = distsys.Upstream("mem", endpoints={"s": "inproc://pymem-service"},
                               retry_budget=False)
    return _UP


def c_service(i):
    # a service per cycle: routes, listen, two requests, drain, free
    with distsys.Service("mem", threads=2) as app:
        app.get("/a/{x}")(lambda req, x: {"x": x, "q": req.query})
        app.post("/b")(lambda req: distsys.HTTPResponse(req.body, 201))
        app.listen("inproc://pymem-service")
        assert _up().call("GET", f"/a/{i}?k=v").status == 200
        assert _up().call("POST", "/b", body=b"x" * 100).status == 201


_SVC = None


def c_service_requests(i):
    # requests on one long-lived service: the request path alone
    global _SVC
    if _SVC is None:
        _SVC = distsys.Service("mem2", threads=2)
        _SVC.get("/r/{x}")(lambda req, x: {"x": x, "h": req.headers.get("x-a")})
        _SVC.listen("inproc://pymem-requests")
        _SVC.up = distsys.Upstream("mem2", endpoints={"s": "inproc://pymem-requests"},
                                   retry_budget=False)
    assert _SVC.up.call("GET", f"/r/{i}", headers={"X-A": "b"}).status == 200


CYCLES = {"Store": c_store, "Queue": c_queue, "Worker": c_worker,
          "Registry": c_registry, "Balancer": c_balancer, "Breaker": c_breaker,
          "Upstream": c_upstream, "auth": c_auth, "Service": c_service,
          "Service requests": c_service_requests}


def measure(name, n, warmup=1000):
    f = CYCLES[name]
    for i in range(warmup):
        f(i)
    gc.collect()
    before = rss_kib()
    for i in range(n):
        f(i)
    gc.collect()
    return before, rss_kib()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    names = sys.argv[2:] or list(CYCLES)
    print(f"libdistsys {distsys.library_version}, {n} cycles per class")
    print(f"{'class':10} {'RSS before':>12} {'RSS after':>12} {'growth':>8} {'seconds':>8}")
    for name in names:
        t0 = time.monotonic()
        b, a = measure(name, n)
        print(f"{name:10} {b:>9} KiB {a:>9} KiB {a - b:>5} KiB {time.monotonic() - t0:8.1f}",
              flush=True)


if __name__ == "__main__":
    main()
