import gc
import threading
import time

import pytest

import distsys


def test_balancer_round_robin_and_values():
    with distsys.Balancer("round_robin") as b:
        for i in "abc":
            b.add(i, value={"url": f"http://{i}"})
        assert len(b) == 3
        ids = []
        for _ in range(6):
            with b.picked() as p:
                ids.append(p.id)
                assert p.value == {"url": f"http://{p.id}"} and not p.panic
        assert ids == ["a", "b", "c", "a", "b", "c"]
        b.set_available("a", False)
        assert {b.pick().id for _ in range(4)} == {"b", "c"}
        p = b.pick(exclude="b")
        assert p.id == "c"
        assert b.endpoint("c")["active"] >= 1
        b.release(p)
        b.release(p)  # idempotent
        b.remove("b")
        with pytest.raises(distsys.NotFoundError):
            b.remove("b")
        with pytest.raises(distsys.AlreadyExistsError):
            b.add("a")


def test_balancer_hashing_panic_and_fail_fast():
    with distsys.Balancer("ring_hash") as b:
        for i in range(5):
            b.add(f"e{i}")
        first = b.pick("user-42").id
        assert all(b.pick(b"user-42").id == first for _ in range(10))
    with distsys.Balancer(fail_fast=True) as b:
        with pytest.raises(distsys.UnavailableError):
            b.pick()
        b.add("x")
        b.set_available("x", False)
        with pytest.raises(distsys.UnavailableError):
            b.pick()
    with distsys.Balancer() as b:
        b.add("x")
        b.set_available("x", False)
        assert b.pick().panic


def test_balancer_bad_input():
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.Balancer("no_such_policy")
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.Balancer("maglev", maglev_size=100)  # not a prime
    with distsys.Balancer() as b:
        with pytest.raises(distsys.InvalidArgumentError):
            b.add("")
        with pytest.raises(distsys.InvalidArgumentError):
            b.add("x" * 300)
        with pytest.raises(distsys.InvalidArgumentError):
            b.add("y", weight=20000)
    b.close()
    with pytest.raises(distsys.ClosedError):
        b.pick()


def test_breaker_opens_half_opens_and_closes():
    events = []
    b = distsys.Breaker("dep", minimum_calls=4, window_size=10,
                        failure_rate_pct=50, open_wait_ms=100,
                        half_open_calls=2,
                        on_event=lambda n, f, t: events.append((n, f, t)))
    for _ in range(4):
        with pytest.raises(ZeroDivisionError):
            with b.call():
                1 / 0
    assert b.state == "open"
    with pytest.raises(distsys.BreakerOpenError):
        b.guard(lambda: 1)
    time.sleep(0.15)
    assert b.guard(lambda: 7) == 7
    assert b.state == "half-open"
    assert b.guard(lambda: 8) == 8
    assert b.state == "closed"
    assert events[0] == ("dep", "closed", "open")
    assert ("dep", "half-open", "closed") in events
    s = b.stats()
    assert s.failures == 4 and s.rejected == 1 and s.state == "closed"
    b.state = "forced-open"
    with pytest.raises(distsys.BreakerOpenError):
        b.acquire()
    b.state = "disabled"
    b.record(b.acquire(), None)
    with pytest.raises(ValueError):
        b.state = "sideways"
    b.close()
    b.close()


def test_breaker_callback_exception_is_contained(caplog):
    def bad(n, f, t):
        raise RuntimeError("callback bug")
    with distsys.Breaker(on_event=bad) as b:
        b.state = "forced-open"
        assert b.state == "forced-open"
    assert "callback bug" in caplog.text


def test_breaker_bad_input():
    with pytest.raises(distsys.InvalidArgumentError):
        distsys.Breaker(failure_rate_pct=500)
    with pytest.raises(TypeError):
        distsys.Breaker(on_event=3)


def test_registry_register_lookup_watch(dbfile):
    changes = []
    with distsys.Registry("sqlite", dbfile, ttl_ms=200, reap_ms=5000,
                          sweep_interval_ms=50) as r:
        wid = r.watch(changes.append)
        i0 = r.index
        r.register("d1", "data", "http://127.0.0.1:1", tags=["a", "b"],
                   metadata={"zone": "z1"}, weight=3)
        r.register("d2", "data", "http://127.0.0.1:2")
        assert r.index > i0
        got = r.lookup("data")
        assert [x.id for x in got] == ["d1", "d2"]
        assert got[0].tags == ["a", "b"] and got[0].metadata == {"zone": "z1"}
        assert got[0].weight == 3 and got[0].healthy
        assert r.get("d2").url == "http://127.0.0.1:2"
        # another handle on the file sees them
        with distsys.Registry("sqlite", dbfile) as r2:
            assert len(r2.lookup("data")) == 2
        time.sleep(0.35)  # d1, d2 miss their TTL
        r.heartbeat("d1")
        assert [x.id for x in r.lookup("data")] == ["d1"]
        assert len(r.lookup("data", healthy_only=False)) == 2
        r.deregister("d2")
        with pytest.raises(distsys.NotFoundError):
            r.get("d2")
        with pytest.raises(distsys.NotFoundError):
            r.heartbeat("d2")
        assert r.wait(r.index, 50) is None
        r.sweep()
        r.unwatch(wid)
        n = len(changes)
        r.register("d3", "data", "http://x")
        r.sweep()
        assert len(changes) == n
    kinds = [c.kind for c in changes]
    assert "registered" in kinds and "deregistered" in kinds and "unhealthy" in kinds


def test_registry_bad_input_and_callback_errors(caplog):
    with pytest.raises(distsys.NotSupportedError):
        distsys.Registry("nosuchbackend")
    with distsys.Registry() as r:
        with pytest.raises(distsys.InvalidArgumentError):
            r.register("", "t", "u")
        with pytest.raises(distsys.InvalidArgumentError):
            r.register("i", "t", "u", weight=99999)

        def bad(c):
            raise ValueError("watch bug")
        r.watch(bad)
        r.register("i", "t", "http://u")
        r.sweep()
    assert "watch bug" in caplog.text
