#!/usr/bin/env python3
"""A durable job queue shared by two processes on one SQLite file.

    queue_worker.py submit FILE N          submit N jobs {"n": i} to "squares"
    queue_worker.py work FILE N [THREADS]  work until N jobs are completed,
                                           print each result, exit 0

Run "submit" in one terminal and "work" in another (in either order): the
worker's handler runs on the library's threads; an exception in it fails
that job (it is retried with backoff, then dead-lettered), never the
process. Set DSYS_LIBRARY to a built libdistsys.so if it is not installed.
"""
import sys
import time
from typing import Dict, List

import distsys

QUEUE = "squares"


def square(job: distsys.Job, ctx: distsys.JobContext) -> Dict[str, int]:
    n = job.payload.get("n") if isinstance(job.payload, dict) else None
    if not isinstance(n, int):
        raise ValueError('payload must be {"n": <int>}')
    ctx.progress(50, "multiplying")
    return {"n": n, "square": n * n}


def submit(url: str, n: int) -> int:
    with distsys.Queue(url) as q:
        for i in range(1, n + 1):
            # resubmitting is harmless: the key names the job
            jid = q.submit(QUEUE, {"n": i}, idempotency_key=f"job-{i}")
            print(f"submitted job {jid}", flush=True)
    return 0


def work(url: str, n: int, threads: int) -> int:
    with distsys.Queue(url) as q:
        with distsys.Worker(q, square, QUEUE, threads=threads, poll_ms=20) as w:
            print(f"worker {w.id} waiting for {n} completed jobs", flush=True)
            deadline = time.monotonic() + 60
            while q.counts(QUEUE)["completed"] < n:
                if time.monotonic() > deadline:
                    print("timed out", file=sys.stderr)
                    return 1
                time.sleep(0.05)
        # the worker has stopped; print what it did
        for jid in range(1, 10 ** 9):
            try:
                job = q.get(jid)
            except distsys.NotFoundError:
                break
            if job.state == "completed":
                print(f"job {job.id}: {job.result}")
            elif job.state == "failed":
                print(f"job {job.id} failed: {job.error}")
    return 0


def main(argv: List[str]) -> int:
    if len(argv) < 4 or argv[1] not in ("submit", "work"):
        print(__doc__, file=sys.stderr)
        return 2
    url = "sqlite://" + argv[2]
    n = int(argv[3])
    try:
        if argv[1] == "submit":
            return submit(url, n)
        return work(url, n, int(argv[4]) if len(argv) > 4 else 2)
    except distsys.DistsysError as e:
        print(f"{argv[0]}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
