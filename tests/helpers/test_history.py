#!/usr/bin/python3
"""Unit tests of the history checker (history.py) on small hand-made
histories: it must pass a good one and catch a lost write, a gap in a
key's version chain, a write applied twice, a lost or unfinished job, a
wrong result, a duplicate completion and a completion by another
instance than the job's result names. Speaks TAP."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import history  # noqa: E402

n = 0
fail = 0


def t(ok, what):
    global n, fail
    n += 1
    print("%s %d - %s" % ("ok" if ok else "not ok", n, what))
    fail |= not ok


def w(key, wid, base, status=200):
    return {"op": "write", "key": key, "wid": wid, "base": base,
            "version": base + 1 if status == 200 else None, "status": status}


def sub(job, expect, status=202):
    return {"op": "submit", "jobId": job, "expect": expect, "status": status}


good_ops = [w("a", "w1", 1), w("a", "w2", 2), w("a", "x", 2, 412), w("a", "w3", 3, 0),
            w("b", "v1", 1), sub("1", 3), sub("2", 5), sub(None, 7, 503)]
good_finals = {"a": (4, ["w1", "w2", "w3"]), "b": (2, ["v1"])}
good_jobs = {"1": {"status": "completed", "result": {"result": 3, "service": "compute-1"}},
             "2": {"status": "completed", "result": {"result": 5, "service": "compute-2"}}}
logs = {"compute-1": "x INFO  compute-1: job 1 completed jobId=1 traceId= attempt=1\n",
        "compute-2": ("x INFO  compute-2: job 2 completed jobId=2 attempt=1\n"
                      "x INFO  compute-3: job 2 completed jobId=2 attempt=1\n")}
good_comp = {"1": {"compute-1": 1}, "2": {"compute-2": 1}}
comp = history.completions(logs)
t(comp["1"] == {"compute-1": 1} and comp["2"] == {"compute-2": 2},
  "completions are counted per job and instance from the logs: %r" % comp)
stale = {"compute-2": ("x INFO  compute-2: job 2 completed jobId=2 attempt=1\n"
                       "x WARN  worker: job 2: recording outcome: lease lost\n"),
         "compute-3": "x INFO  compute-3: job 2 completed jobId=2 attempt=2\n"}
comp = history.completions(stale)
t(comp["2"] == {"compute-2": 0, "compute-3": 1}, "a refused (stale) completion is not counted: %r" % comp)

comp = history.completions({"compute-2": "x WARN  worker: job 2: recording outcome: lease lost\n"})
t(comp["2"] == {"compute-2": 0}, "a refused release (no completion) counts as none: %r" % comp)

bad = history.check_history(good_ops, good_finals, good_jobs, good_comp)
t(bad == [], "a good history passes (an unknown-outcome write may be applied): %r" % bad)


def catches(label, word, ops=good_ops, finals=good_finals, jobs=good_jobs, comp=good_comp, unc=()):
    bad = history.check_history(ops, finals, jobs, comp, set(unc))
    t(any(word in b for b in bad), "%s is caught: %r" % (label, bad))


catches("a lost acknowledged write", "acknowledged write w2 (key a, version 3) is lost",
        finals={"a": (3, ["w1", "w3"]), "b": (2, ["v1"])})
catches("an acknowledged write at another version", "w2", finals={"a": (4, ["w2", "w1", "w3"]), "b": (2, ["v1"])})
catches("a gap in a key's version chain", "version 5 but 3 writes",
        finals={"a": (5, ["w1", "w2", "w3"]), "b": (2, ["v1"])})
catches("a write applied twice", "applied twice", finals={"a": (5, ["w1", "w2", "w3", "w3"]), "b": (2, ["v1"])})
catches("a lost key", "key b is gone", finals={"a": (4, ["w1", "w2", "w3"])})
catches("a lost job", "acknowledged job 2 is lost", jobs={"1": good_jobs["1"]})
catches("a job that never completed", "job 2 is waiting",
        jobs={"1": good_jobs["1"], "2": {"status": "waiting"}})
catches("a wrong result", "job 1: result 4", jobs={"1": {"status": "completed", "result": {
    "result": 4, "service": "compute-1"}}, "2": good_jobs["2"]})
catches("a duplicate completion (one instance twice)", "job 2: accepted completions",
        comp={"1": {"compute-1": 1}, "2": {"compute-2": 2}})
catches("a duplicate completion (two instances)", "job 2: accepted completions",
        comp={"1": {"compute-1": 1}, "2": {"compute-2": 1, "compute-3": 1}})
catches("a completion by another instance than the result's", "completed by 'compute-2'",
        comp={"1": {"compute-1": 1}, "2": {"compute-3": 1}})
bad = history.check_history(good_ops, good_finals, good_jobs,
                            {"1": {"compute-1": 1}, "2": {"compute-2": 1, "dead-1": 1}}, {"dead-1"})
t(bad == [], "a completion logged on a killed host (outcome unknown) is not held against it: %r" % bad)
# the database lost while recording a completion (a switchover): the
# outcome is unknown; applied all the same when the job's result says so
lost = {"compute-2": ("x INFO  compute-2: job 2 completed jobId=2 attempt=1\n"
                      "x WARN  worker: job 2: recording outcome: no healthy endpoint available\n")}
unknown = set()
comp = history.completions(dict(logs, **lost), unknown)
bad = history.check_history(good_ops, good_finals, good_jobs, comp, (), unknown)
t(unknown == {("2", "compute-2")} and bad == [],
  "a completion whose recording failed otherwise than by the token is unknown, "
  "accepted when the result names it: %r %r" % (unknown, bad))
lost["compute-3"] = "x INFO  compute-3: job 2 completed jobId=2 attempt=2\n"
good3 = dict(good_jobs, **{"2": {"status": "completed", "result": {"result": 5, "service": "compute-3"}}})
unknown = set()
bad = history.check_history(good_ops, good_finals, good3, history.completions(dict(logs, **lost), unknown), (), unknown)
t(bad == [], "not applied (another instance completed the job after the lease): not counted: %r" % bad)
unknown = set()
history.completions(stale, unknown)
t(unknown == set(), "the token's refusal is no unknown outcome: %r" % unknown)
print("1..%d" % n)
sys.exit(fail)
