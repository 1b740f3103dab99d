"""Store as a MutableMapping, paging iterators, and argument validation
(TypeError / ValueError naming the argument, never AttributeError or
ctypes.ArgumentError)."""
import collections.abc
import ctypes

import pytest

import distsys


def test_store_is_a_mutable_mapping():
    with distsys.Store("memory:") as s:
        assert isinstance(s, collections.abc.MutableMapping)
        assert len(s) == 0 and list(s) == []
        s["b"] = 2
        s["a"] = {"x": 1}
        assert s["a"] == {"x": 1}
        assert "a" in s and "zz" not in s and 5 not in s
        with pytest.raises(KeyError) as ei:
            s["zz"]
        assert ei.value.args == ("zz",)
        with pytest.raises(KeyError):
            del s["zz"]
        assert s.get("zz") is None and s.get("zz", 7) == 7 and s.get("b") == 2
        assert list(s.keys()) == ["a", "b"]
        assert dict(s.items()) == {"a": {"x": 1}, "b": 2}
        assert sorted(s.values(), key=str) == [2, {"x": 1}]
        s.update({"c": 3}, d=4)
        assert dict(s) == {"a": {"x": 1}, "b": 2, "c": 3, "d": 4}
        assert s.pop("c") == 3 and "c" not in s
        assert s.pop("c", "gone") == "gone"
        with pytest.raises(KeyError):
            s.pop("c")
        assert s.setdefault("e", [1]) == [1] and s.setdefault("e", [2]) == [1]
        k, v = s.popitem()
        assert k == "a" and v == {"x": 1}
        assert len(s) == 3
        s.clear()
        assert len(s) == 0
        # the richer calls stay: versions and CAS
        it = s.put("k", 1, metadata={"m": True})
        assert s.item("k").metadata == {"m": True}
        with pytest.raises(distsys.ConflictError):
            s.replace("k", 2, expected_version=it.version + 1)
        assert s.replace("k", 2, expected_version=it.version).version == 2
        # a handle: equal to itself only, hashable
        with distsys.Store("memory:") as t:
            assert s == s and s != t and len({s, t}) == 2


def test_iteration_pages_through_the_cursor(dbfile):
    with distsys.Store("sqlite://" + dbfile) as s:
        # more than one page of the library's list (1000 per call)
        s.update({f"k{i:05d}": i for i in range(2345)})
        keys = list(s)
        assert len(keys) == 2345 and keys == sorted(keys)
        assert len(s) == 2345
        assert [it.value for it in s.scan("k000", page=3)] == list(range(100))
        it = s.scan("k01", page=7)
        assert iter(it) is it and next(it).key == "k01000"


def test_queue_dead_iterates_pages():
    with distsys.Queue("memory:") as q:
        ids = [q.submit("q", i, max_attempts=1) for i in range(7)]
        for _ in ids:
            job = q.claim("q")
            assert q.fail(job.id, job.token, "boom")
        assert [j.id for j in q.dead("q", page=3)] == ids
        assert list(q.dead("other")) == []


@pytest.mark.parametrize("call, message", [
    (lambda s: s.put(5, 1), "key must be str, not int"),
    (lambda s: s.item(None), "key must be str, not NoneType"),
    (lambda s: s.put("k", 1, ttl_ms="10"), "ttl_ms must be int, not str"),
    (lambda s: s.put("k", object()), "value is not JSON-serializable"),
    (lambda s: s.incr("k", 1.5), "delta must be int, not float"),
    (lambda s: s.list(prefix=b"x"), "prefix must be str, not bytes"),
    (lambda s: s.delete("k", expected_version="1"), "expected_version must be int"),
])
def test_store_type_errors(call, message):
    with distsys.Store() as s:
        s["k"] = 0
        with pytest.raises(TypeError, match=message):
            call(s)


def test_value_errors_are_invalid_argument_errors():
    with distsys.Store() as s:
        with pytest.raises(ValueError, match="limit must be 1 <= limit <= 1000"):
            s.list(limit=0)
        with pytest.raises(distsys.InvalidArgumentError, match="NUL"):
            s["a\0b"] = 1
    with pytest.raises(ValueError, match="state must be one of"):
        distsys.Breaker().state = "ajar"
    with distsys.Queue() as q:
        with pytest.raises(ValueError, match="percent must be 0 <= percent <= 100"):
            q.progress(1, 1, 101)


def _every_wrong_type_call():
    q = distsys.Queue()
    r = distsys.Registry()
    b = distsys.Balancer()
    up = distsys.Upstream("x")
    calls = [
        lambda: distsys.Store(123),
        lambda: q.submit(1, {}),
        lambda: q.submit("q", {}, priority="high"),
        lambda: q.claim(["q", 2]),
        lambda: q.claim("q", worker=3),
        lambda: q.get("7"),
        lambda: q.counts(queue=5),
        lambda: distsys.Worker(q, "not callable", "q"),
        lambda: distsys.Worker("not a queue", lambda j, c: None, "q"),
        lambda: distsys.Worker(q, lambda j, c: None, "q", threads="2"),
        lambda: r.register("i", "t", 5),
        lambda: r.register("i", "t", "http://x", tags="a,b"),
        lambda: r.register("i", "t", "http://x", metadata=[1]),
        lambda: r.heartbeat(b"i"),
        lambda: r.lookup(type=1),
        lambda: r.wait("0", 10),
        lambda: r.watch(None),
        lambda: distsys.Registry("memory", identity="tok"),
        lambda: b.add(1),
        lambda: b.add("a", weight="2"),
        lambda: b.pick(key=12),
        lambda: distsys.Balancer(seed="1"),
        lambda: distsys.Breaker(minimum_calls="5"),
        lambda: distsys.Breaker(on_event=3),
        lambda: up.add("a", None),
        lambda: up.call(1, "/"),
        lambda: up.call("GET", "/", headers={"a": 1}),
        lambda: up.call("GET", "/", headers=[("a", "b")]),
        lambda: up.call("GET", "/", body=1),
        lambda: distsys.Upstream("x", registry="reg"),
        lambda: distsys.Upstream("x", per_try_timeout_ms=1.5),
        lambda: distsys.Upstream(None),
        lambda: distsys.hash_password(None),
        lambda: distsys.verify_password("a", 1),
        lambda: distsys.issue_token(1, {}),
        lambda: distsys.issue_token("s" * 32, [1]),
        lambda: distsys.verify_token("s" * 32, 5),
        lambda: distsys.identity_issue(3, "i", "s"),
        lambda: distsys.identity_issue("/nonexistent", "i", "s", lifetime_s="1"),
    ]
    return calls, (q, r, b, up)


def test_wrong_types_raise_type_error_across_the_api():
    calls, handles = _every_wrong_type_call()
    try:
        for i, c in enumerate(calls):
            with pytest.raises(TypeError) as ei:
                c()
            # the message names what was wrong, and it is not ctypes' own
            assert not isinstance(ei.value, ctypes.ArgumentError), i
            assert " must be " in str(ei.value) or "JSON" in str(ei.value), (i, ei.value)
    finally:
        for h in reversed(handles):
            h.close()
