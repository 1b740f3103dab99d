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
