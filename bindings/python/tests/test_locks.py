"""Locks, elections and the cache from Python (distsys.locks)."""
import os
import pathlib
import subprocess
import tempfile
import threading
import time

import pytest

import distsys


def test_lock_rules(tmp_path):
    with distsys.Locks(f"sqlite://{tmp_path}/locks.sqlite") as locks:
        with locks.acquire("res", ttl=5, owner="alpha") as a:
            assert a.held and a.token > 0
            h = locks.holder("res")
            assert h is not None and h.owner == "alpha" and h.token == a.token
            with pytest.raises(distsys.BusyError):
                locks.acquire("res")
            t0 = time.monotonic()
            with pytest.raises(distsys.TimedOutError):
                locks.acquire("res", wait=0.2)
            assert time.monotonic() - t0 < 2
            first = a.token
        assert locks.holder("res") is None
        with locks.acquire("res") as b:
            assert b.token > first
        with pytest.raises(TypeError):
            locks.acquire(42)  # type: ignore[arg-type]
        with pytest.raises(distsys.InvalidArgumentError):
            locks.acquire("res", ttl=0.01)


def test_lock_excludes_threads():
    with distsys.Locks("memory:") as locks:
        inside, overlaps, done = [0], [0], [0]
        guard = threading.Lock()

        def worker():
            for _ in range(30):
                with locks.acquire("hot", wait=10):
                    with guard:
                        inside[0] += 1
                        if inside[0] > 1:
                            overlaps[0] += 1
                    time.sleep(0.0005)
                    with guard:
                        inside[0] -= 1
                        done[0] += 1

        ts = [threading.Thread(target=worker) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert done[0] == 120 and overlaps[0] == 0


def test_guarded_put_refuses_stale_tokens():
    with distsys.Store("memory:") as store, distsys.Locks("memory:") as locks:
        old = locks.acquire("res")
        t_old = old.token
        old.release()
        with locks.acquire("res") as new:
            distsys.guarded_put(store, "item", {"by": "new"}, new.token)
        with pytest.raises(distsys.LeaseError):
            distsys.guarded_put(store, "item", {"by": "old"}, t_old)
        assert store["item"] == {"by": "new"}


def test_election_hands_over():
    with distsys.Locks("memory:") as locks:
        one = locks.campaign("grp", ttl=0.3, candidate="one")
        assert one.is_leader and one.token > 0
        two = locks.campaign("grp", ttl=0.3, candidate="two")
        assert not two.is_leader
        leader = locks.leader("grp")
        assert leader is not None and leader.owner == "one"
        one.resign()
        deadline = time.monotonic() + 3
        while not two.is_leader and time.monotonic() < deadline:
            time.sleep(0.01)
        assert two.is_leader
        two.resign()
        assert locks.leader("grp") is None


def test_cache_loads_once_and_invalidates():
    calls = []
    source = {"a": b"1"}

    def load(key):
        calls.append(key)
        time.sleep(0.05)
        return source.get(key)

    with distsys.Cache(load, max_bytes=1 << 20, ttl=60, negative_ttl=60) as cache:
        got = []
        ts = [threading.Thread(target=lambda: got.append(cache.get("a"))) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert got == [b"1"] * 6 and calls == ["a"]  # one load for six misses
        assert cache.get("missing") is None and cache.get("missing") is None
        assert calls.count("missing") == 1  # remembered "not found"
        source["a"] = b"2"
        assert cache.get("a") == b"1"
        cache.invalidate("a")
        assert cache.get("a") == b"2"
        st = cache.stats()
        assert st["loads"] == 3 and st["invalidations"] == 1 and st["negative_hits"] == 1


def test_cache_loader_errors_reach_the_caller():
    def load(key):
        raise KeyError(key)

    with distsys.Cache(load) as cache:
        with pytest.raises(KeyError):
            cache.get("x")
        assert cache.stats()["load_errors"] == 1
    with distsys.Cache() as plain:
        assert plain.get("x") is None
        plain.put("x", b"v")
        assert plain.get("x") == b"v"
        with pytest.raises(TypeError):
            plain.put("x", 3)  # type: ignore[arg-type]


def test_locks_on_etcd():
    """The same rules on a real 3-member etcd (scripts/etcd-local), and an
    election through it."""
    script = pathlib.Path(__file__).resolve().parents[3] / "scripts" / "etcd-local"
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = tempfile.mkdtemp(prefix="dsys-py-etcd.", dir=base)
    try:
        eps = subprocess.run([str(script), "start", d, "--members", "3"], check=True,
                             capture_output=True, text=True, timeout=60).stdout.strip()
        url = f"etcd://{eps}/py-test/locks"
        with distsys.Locks(url) as locks:
            with locks.acquire("res", ttl=5, owner="alpha") as a:
                h = locks.holder("res")
                assert h is not None and h.owner == "alpha" and h.token == a.token
                with pytest.raises(distsys.BusyError):
                    locks.acquire("res")
                first = a.token
            assert locks.holder("res") is None
            with locks.acquire("res", wait=2) as b:
                assert b.token > first
            e = locks.campaign("py", ttl=1, candidate="one")
            deadline = time.monotonic() + 5
            while not e.is_leader and time.monotonic() < deadline:
                time.sleep(0.02)
            assert e.is_leader
            e.resign()
    finally:
        subprocess.run([str(script), "stop", d], capture_output=True, timeout=60)
        subprocess.run(["rm", "-rf", d])
