import gc
import threading

import pytest

import distsys


def test_crud_and_versions():
    with distsys.Store("memory:") as s:
        it = s.put("k", {"a": [1, 2]}, metadata={"m": 1})
        assert it.version == 1 and it.value == {"a": [1, 2]} and it.metadata == {"m": 1}
        it2 = s.put("k", "two")
        assert it2.version == 2 and it2.id == it.id
        assert s.item("k").value == "two"
        assert s.get_by_id(it.id).key == "k"
        with pytest.raises(distsys.AlreadyExistsError):
            s.create("k", 1)
        with pytest.raises(distsys.ConflictError):
            s.replace("k", 3, expected_version=1)
        assert s.replace("k", 3, expected_version=2).version == 3
        s.delete("k")
        with pytest.raises(distsys.NotFoundError):
            s.item("k")
        assert "k" not in s
        s["x"] = [1]
        assert s["x"] == [1] and "x" in s
        del s["x"]
        with pytest.raises(LookupError):
            s["x"]


def test_incr_list_scan(dbfile):
    with distsys.Store("sqlite://" + dbfile) as s:
        assert s.incr("c") == 1 and s.incr("c", 41) == 42
        s.put("c", "text")
        with pytest.raises(distsys.DsysTypeError):
            s.incr("c")
        for i in range(25):
            s.put(f"p:{i:02d}", i)
        page, cur = s.list("p:", limit=10)
        assert [x.value for x in page] == list(range(10)) and cur
        assert [x.value for x in s.scan("p:", page=7)] == list(range(25))
    # another handle on the same file sees the data
    with distsys.Store("sqlite://" + dbfile) as s2:
        assert s2.item("p:03").value == 3


def test_put_many(dbfile):
    with distsys.Store("sqlite://" + dbfile) as s:
        s.put("old", 0)
        items = s.put_many([("a", {"n": 1}), ("b", [2], {"tag": "b"}, 5000), ("old", 3)])
        assert [(i.key, i.version) for i in items] == [("a", 1), ("b", 1), ("old", 2)]
        assert items[1].metadata == {"tag": "b"} and items[1].expires_at > 0
        assert s["a"] == {"n": 1} and s["old"] == 3
        assert [i.value for i in s.put_many({"m1": 1, "m2": 2})] == [1, 2]
        # all or none: the bad entry is named, nothing of the call stored
        with pytest.raises(distsys.InvalidArgumentError, match=r"entry 1 \('x'\)"):
            s.put_many([("c", 1), ("x", 1, None, -1)])
        assert "c" not in s
        with pytest.raises(distsys.InvalidArgumentError):
            s.put_many([])
        with pytest.raises(distsys.InvalidArgumentError):
            s.put_many({f"k{i}": i for i in range(1001)})
        with pytest.raises(TypeError, match=r"entries\[0\] must be"):
            s.put_many(["a"])
        with pytest.raises(TypeError, match="not JSON-serializable"):
            s.put_many([("k", object())])


def test_bad_input():
    with distsys.Store() as s:
        with pytest.raises(distsys.InvalidArgumentError):
            s.put("", 1)
        with pytest.raises(TypeError):
            s.put("k", object())  # not JSON-serializable
        with pytest.raises(TypeError, match="metadata must be a dict"):
            s.put("k", 1, metadata=[1])
        with pytest.raises(distsys.InvalidArgumentError):
            s.list(limit=100000)
    with pytest.raises(distsys.SchemeError):
        distsys.Store("nosuch://x")
    with pytest.raises((distsys.UrlError, distsys.InvalidArgumentError)):
        distsys.Store("")


def test_ttl():
    import time
    with distsys.Store() as s:
        s.put("t", 1, ttl_ms=50)
        assert s.item("t").expires_at > 0
        time.sleep(0.12)
        with pytest.raises(distsys.NotFoundError):
            s.item("t")


def test_close_twice_use_after_close_and_gc():
    s = distsys.Store()
    s.put("a", 1)
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(distsys.ClosedError):
        s.item("a")
    s = distsys.Store()
    s.put("a", 1)
    del s
    gc.collect()


def test_close_while_other_threads_call():
    s = distsys.Store()
    stop = threading.Event()
    errs = []

    def hammer():
        i = 0
        while not stop.is_set():
            try:
                s.put(f"k{i % 10}", i)
                i += 1
            except distsys.ClosedError:
                return
            except Exception as e:  # pragma: no cover
                errs.append(e)
                return

    ts = [threading.Thread(target=hammer) for _ in range(4)]
    for t in ts:
        t.start()
    import time
    time.sleep(0.1)
    s.close()
    stop.set()
    for t in ts:
        t.join()
    assert not errs
