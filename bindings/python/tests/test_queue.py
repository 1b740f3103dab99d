import gc
import threading
import time

import pytest

import distsys


def wait_for(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_submit_claim_complete_fail():
    with distsys.Queue("memory:") as q:
        a = q.submit("q", {"n": 1})
        b = q.submit("q", {"n": 2}, priority=5)
        assert q.submit("q", {"n": 3}, idempotency_key="k") == q.submit("q", {}, idempotency_key="k")
        j = q.claim("q", worker="w1")
        assert j.id == b and j.state == "active" and j.payload == {"n": 2}
        q.progress(j.id, j.token, 50, "half")
        q.complete(j.id, j.token, {"ok": True})
        assert q.get(b).result == {"ok": True} and q.get(b).state == "completed"
        j = q.claim(["q"])
        assert j.id == a
        with pytest.raises(distsys.LeaseError):
            q.complete(j.id, j.token + 1)
        assert q.fail(j.id, j.token, "boom") is False
        assert q.get(a).error == "boom"
        assert q.counts("q")["completed"] == 1
        assert q.claim("none") is None


def test_dead_letter_and_replay():
    with distsys.Queue() as q:
        jid = q.submit("d", 1, max_attempts=1)
        j = q.claim("d")
        assert q.fail(j.id, j.token, "bad") is True
        dead = q.list_dead("d")
        assert [x.id for x in dead] == [jid] and dead[0].state == "failed"
        q.replay(jid)
        assert q.get(jid).state == "waiting"
        q.cancel(jid)
        with pytest.raises(distsys.InvalidStateError):
            q.cancel(jid)


def test_bad_input():
    with distsys.Queue() as q:
        with pytest.raises(distsys.InvalidArgumentError):
            q.submit("", 1)
        with pytest.raises(distsys.InvalidArgumentError):
            q.claim([])
        with pytest.raises(distsys.NotFoundError):
            q.get(12345)
        with pytest.raises(TypeError):
            q.submit("q", {1, 2})
        with pytest.raises(TypeError):
            distsys.Worker(q, "not callable", "q")
    with pytest.raises(distsys.SchemeError):
        distsys.Queue("bogus://x")


def test_worker_runs_handlers_and_failures_become_failed_jobs():
    seen = []
    threads = set()

    def handler(job, ctx):
        threads.add(threading.get_ident())
        ctx.progress(10, "start")
        if job.payload.get("boom"):
            raise RuntimeError("exploded on purpose")
        if job.payload.get("bad_result"):
            return {1, 2}  # not JSON-serializable
        seen.append(job.payload["n"])
        return {"sq": job.payload["n"] ** 2}

    with distsys.Queue() as q:
        ids = [q.submit("w", {"n": i}) for i in range(20)]
        bad = q.submit("w", {"boom": True}, max_attempts=1)
        badres = q.submit("w", {"bad_result": True}, max_attempts=1)
        with distsys.Worker(q, handler, "w", threads=3, poll_ms=10) as w:
            assert w.id
            assert wait_for(lambda: q.counts("w")["completed"] == 20 and
                            q.counts("w")["failed"] == 2)
        assert threading.get_ident() not in threads
        assert sorted(seen) == list(range(20))
        assert q.get(ids[3]).result == {"sq": 9}
        assert q.get(bad).error == "RuntimeError: exploded on purpose"
        assert "TypeError" in q.get(badres).error


def test_stop_releases_gil_while_handler_runs():
    started = threading.Event()
    finished = []

    def slow(job, ctx):
        started.set()
        time.sleep(0.3)  # needs the GIL back after the sleep
        finished.append(job.id)
        return None

    with distsys.Queue() as q:
        jid = q.submit("s", 1)
        w = distsys.Worker(q, slow, "s", poll_ms=10)
        assert started.wait(10)
        t0 = time.monotonic()
        w.stop()  # must not deadlock: waits with the GIL released
        assert time.monotonic() - t0 < 5
        assert finished == [jid]
        assert q.get(jid).state == "completed"


def test_release_mode_gives_job_back():
    started = threading.Event()

    def h(job, ctx):
        started.set()
        while not ctx.stopping:
            time.sleep(0.01)
        raise distsys.CanceledError()

    with distsys.Queue() as q:
        jid = q.submit("r", 1)
        w = distsys.Worker(q, h, "r", poll_ms=10)
        assert started.wait(10)
        w.stop("release")
        j = q.get(jid)
        assert j.state == "waiting" and j.attempts == 0


def test_stop_from_own_handler_is_refused():
    out = []

    def h(job, ctx):
        try:
            w.stop()
        except distsys.InvalidStateError as e:
            out.append("refused")
        try:
            q.close()
        except distsys.InvalidStateError:
            out.append("queue refused")
        return 1

    q = distsys.Queue()
    w = distsys.Worker(q, h, "x", poll_ms=10)
    q.submit("x", 1)
    assert wait_for(lambda: len(out) == 2)
    q.close()  # stops w first
    assert w.stopped and out == ["refused", "queue refused"]


def test_context_is_invalid_after_handler():
    kept = []

    def h(job, ctx):
        kept.append(ctx)

    with distsys.Queue() as q:
        q.submit("c", 1)
        with distsys.Worker(q, h, "c", poll_ms=10):
            assert wait_for(lambda: kept)
    with pytest.raises(distsys.InvalidStateError):
        kept[0].progress(1)


def test_freeing_in_any_order():
    # queue closed while its worker runs
    q = distsys.Queue()
    w = distsys.Worker(q, lambda j, c: None, "a", poll_ms=5)
    q.submit("a", 1)
    q.close()
    assert w.stopped
    w.stop()
    w.close()
    with pytest.raises(distsys.ClosedError):
        distsys.Worker(q, lambda j, c: None, "a")
    # worker dropped without stop: the GC stops it; queue keeps working
    q = distsys.Queue()
    done = []
    w = distsys.Worker(q, lambda j, c: done.append(1), "a", poll_ms=5)
    q.submit("a", 1)
    assert wait_for(lambda: done)
    del w
    gc.collect()
    q.submit("a", 2)
    time.sleep(0.1)
    assert len(done) == 1
    q.close()
    # queue reference dropped first: the worker keeps it alive
    q = distsys.Queue()
    w = distsys.Worker(q, lambda j, c: done.append(2), "b", poll_ms=5)
    q.submit("b", 1)
    del q
    gc.collect()
    assert wait_for(lambda: 2 in done)
    w.queue.submit("b", 2)
    assert wait_for(lambda: done.count(2) == 2)
    del w
    gc.collect()


def test_worker_shared_sqlite_file(dbfile):
    url = "sqlite://" + dbfile
    with distsys.Queue(url) as q1, distsys.Queue(url) as q2:
        ids = [q1.submit("f", i) for i in range(5)]
        with distsys.Worker(q2, lambda j, c: j.payload * 10, "f", poll_ms=10):
            assert wait_for(lambda: q1.counts("f")["completed"] == 5)
        assert [q1.get(i).result for i in ids] == [0, 10, 20, 30, 40]
