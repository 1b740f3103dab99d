"""The examples in examples/python run end to end."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
EX = os.path.join(ROOT, "examples", "python")


def run(args, **kw):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "bindings", "python")
    return subprocess.run([sys.executable] + args, env=env, capture_output=True,
                          text=True, timeout=90, **kw)


def test_queue_worker_two_processes(tmp_path):
    db = str(tmp_path / "jobs.sqlite")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "bindings", "python"))
    # the worker starts first and waits; another process submits
    w = subprocess.Popen([sys.executable, os.path.join(EX, "queue_worker.py"),
                          "work", db, "12", "3"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    s = run([os.path.join(EX, "queue_worker.py"), "submit", db, "12"])
    assert s.returncode == 0, s.stderr
    assert s.stdout.count("submitted job") == 12
    out, err = w.communicate(timeout=90)
    assert w.returncode == 0, err
    for i in range(1, 13):
        assert f"'square': {i * i}" in out
    # resubmitting is idempotent
    s = run([os.path.join(EX, "queue_worker.py"), "submit", db, "12"])
    assert s.returncode == 0
    import distsys
    with distsys.Queue("sqlite://" + db) as q:
        assert q.counts("squares") == {"waiting": 0, "delayed": 0, "active": 0,
                                       "completed": 12, "failed": 0, "canceled": 0}


def test_upstream_client_against_data_service(tmp_path, builddir):
    datad = os.path.join(builddir, "daemons", "dsys-datad")
    if not os.path.exists(datad):
        if os.environ.get("DSYS_BUILDDIR"):
            pytest.fail(f"{datad} not built")
        pytest.skip("dsys-datad not available (set DSYS_BUILDDIR)")
    p = subprocess.Popen([datad, "--listen", "http://127.0.0.1:0", "--db",
                          str(tmp_path / "data.sqlite"), "--log-level", "error"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().strip()
        assert line.startswith("listening "), line
        url = line.split()[1]
        bad = "http://127.0.0.1:9"  # refused: retried on the live endpoint
        r = run([os.path.join(EX, "upstream_client.py"), "--url", bad, "--url", url,
                 "/api/data", "/api/data/data-1"])
        assert r.returncode == 0, r.stderr
        assert "GET /api/data -> 200" in r.stdout
        assert "GET /api/data/data-1 -> 200" in r.stdout
        assert "static-1" in r.stdout
    finally:
        p.terminate()
        p.wait(10)


JOBS = [
    {"type": "factorial", "data": {"operands": [10]}},
    {"type": "computation", "data": {"operation": "add", "operands": [1, 2.5, 3]}},
    {"type": "average", "data": {"operands": [1, 2]}},
    {"type": "subtract", "data": {"operands": [5]}},
    {"type": "power", "data": {"operands": [2, 10]}},
    {"type": "fibonacci", "data": {"operands": [90]}},
    {"type": "primeCheck", "data": {"operands": [1000000007]}},
    {"type": "sumOfSquares", "data": {"operands": [3, 4]}},
    {"type": "matrixMultiply", "data": {"operands": [[[1, 2], [3, 4]], [[5], [6]]]}},
]
# refused by the API at submit time: put on the queue directly, as a
# client bypassing the service could
BAD_JOBS = [
    {"type": "divide", "data": {"operands": [1, 0]}},
    {"type": "matrixMultiply", "data": {"operands": [[[1, 2]], [[1, 2]]]}},
    {"type": "sqrt", "data": {"operands": [4]}},
    {"type": "factorial", "data": {"operands": [2.5]}},
]


def _computed(builddir, db, workers):
    binary = os.path.join(builddir, "daemons", "dsys-computed")
    if not os.path.exists(binary):
        pytest.fail(f"{binary} not built")
    p = subprocess.Popen([binary, "--listen", "http://127.0.0.1:0", "--db", db,
                          "--workers", str(workers), "--log-level", "error"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if not line.startswith("listening "):
        p.kill()
        p.wait()
        pytest.fail(f"dsys-computed did not start: {line} {p.stderr.read()}")
    return p, line.split()[1]


def _http(url, method="GET", body=None):
    import json
    import urllib.request
    req = urllib.request.Request(url, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _outcomes(url, ids):
    import time
    deadline = time.monotonic() + 60
    while True:
        js = [_http(f"{url}/api/compute/job/{i}") for i in ids]
        if all(j["status"] in ("completed", "failed") for j in js):
            break
        assert time.monotonic() < deadline, js
        time.sleep(0.05)
    return [(j["status"], j["error"], j["result"] and (j["result"]["operation"], j["result"]["result"]))
            for j in js], js


def test_compute_worker_runs_computed_jobs_like_the_c_workers(tmp_path, builddir):
    """The same jobs, submitted through dsys-computed's API: run by the
    Python worker (daemon started with --workers 0) and by the daemon's own
    C workers; the outcomes must be the same."""
    pdb, cdb = str(tmp_path / "py.sqlite"), str(tmp_path / "c.sqlite")
    procs = []
    try:
        pd, purl = _computed(builddir, pdb, 0)
        procs.append(pd)
        cd, curl_ = _computed(builddir, cdb, 1)
        procs.append(cd)
        import distsys
        pids = [_http(f"{purl}/api/compute/job", "POST", j)["jobId"] for j in JOBS]
        cids = [_http(f"{curl_}/api/compute/job", "POST", j)["jobId"] for j in JOBS]
        for db, ids in ((pdb, pids), (cdb, cids)):
            with distsys.Queue("sqlite://" + db) as q:
                ids += [str(q.submit("compute", dict(j, traceparent=""), max_attempts=1))
                        for j in BAD_JOBS]
        w = run([os.path.join(EX, "compute_worker.py"), "--db", pdb,
                 "--jobs", str(len(JOBS) + len(BAD_JOBS)), "--name", "py-worker"])
        assert w.returncode == 0, w.stderr
        py, pjobs = _outcomes(purl, pids)
        c, _ = _outcomes(curl_, cids)
        assert py == c
        assert py[0] == ("completed", None, ("factorial", 3628800))
        assert py[len(JOBS)][:2] == ("failed", "Division by zero is not allowed")
        assert all(j["worker"] == "py-worker" for j in pjobs)
        assert pjobs[0]["result"]["service"] == "py-worker"
        assert pjobs[0]["result"]["computedAt"].endswith("Z")
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
