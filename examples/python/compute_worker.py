#!/usr/bin/env python3
"""compute_worker: a Python worker for the jobs dsys-computed queues.

    compute_worker.py --db FILE [--threads N] [--name NAME] [--jobs N]

dsys-computed (POST /api/compute/job) puts jobs on the durable queue
"compute" of its SQLite file with the payload {"type", "data":
{"operation"?, "operands", "delayMs"?}, "traceparent"}; this program runs
them beside (or instead of) the daemon's own workers (start it with
--workers 0 for Python only) and stores the result the daemon's workers
store: {"operation", "result", "service", "computedAt"}, so GET
/api/compute/job/ID shows it. Runs until SIGTERM/SIGINT (then finishes
the jobs in hand), or until --jobs jobs were handled.
"""
from __future__ import annotations

import argparse
import datetime
import math
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import distsys

QUEUE = "compute"
OPERATIONS = ("add", "subtract", "multiply", "divide", "power", "factorial",
              "fibonacci", "primeCheck", "sumOfSquares", "average",
              "matrixMultiply")


class BadJob(distsys.JobFailed):
    """A job that cannot run: it fails with exactly this message (as in C)."""


def _numbers(ops: Any) -> List[float]:
    if not isinstance(ops, list) or not ops:
        raise BadJob("Operands must be a non-empty array of numbers")
    for i, v in enumerate(ops):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BadJob(f"Operand at index {i} is not a number")
    return [float(v) for v in ops]


def _one_int(ops: Any, what: str) -> int:
    if not isinstance(ops, list) or len(ops) != 1:
        raise BadJob(f"{what} requires exactly 1 operand: [n]")
    v = ops[0]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != math.floor(v):
        raise BadJob(f"{what} requires a non-negative integer")
    if v > 2 ** 53:
        raise BadJob(f"{what} supports integers up to 2^53")
    return int(v)


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _matrix(m: Any, name: str) -> List[List[float]]:
    if not isinstance(m, list) or not m or not isinstance(m[0], list) or not m[0]:
        raise BadJob(f"Matrix {name} must be a non-empty array of non-empty rows")
    cols = len(m[0])
    out = []
    for i, row in enumerate(m):
        if not isinstance(row, list) or len(row) != cols:
            raise BadJob(f"Matrix {name} rows must all have {cols} numbers")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise BadJob(f"Matrix {name} element [{i}][{j}] is not a number")
        out.append([float(v) for v in row])
    return out


def _num(r: float) -> Any:
    """As the C service prints numbers: integral values within 2^53 as ints."""
    if not math.isfinite(r):
        raise BadJob("Result is not a finite number (overflow)")
    return int(r) if r == math.floor(r) and abs(r) <= 2 ** 53 else r


def compute(op: Optional[str], ops: Any) -> Any:
    """The result of one operation, the same as dsys-computed's."""
    if op not in OPERATIONS:
        raise BadJob("Invalid operation")
    if op == "matrixMultiply":
        if not isinstance(ops, list) or len(ops) != 2:
            raise BadJob("Matrix multiplication requires exactly 2 operands: [A, B]")
        a, b = _matrix(ops[0], "A"), _matrix(ops[1], "B")
        if len(a[0]) != len(b):
            raise BadJob(f"Matrix dimensions mismatch: {len(a)}x{len(a[0])} cannot "
                         f"multiply {len(b)}x{len(b[0])}")
        return [[_num(sum(x * y for x, y in zip(row, col))) for col in zip(*b)] for row in a]
    if op in ("factorial", "fibonacci", "primeCheck"):
        n = _one_int(ops, {"factorial": "Factorial", "fibonacci": "Fibonacci",
                           "primeCheck": "Prime check"}[op])
        if op == "primeCheck":
            return _is_prime(n)
        if op == "factorial":
            if n > 170:
                raise BadJob("Factorial too large (max 170)")
            return _num(float(math.prod(float(i) for i in range(2, n + 1))))
        if n > 1476:
            raise BadJob("Fibonacci result overflows (max n is 1476)")
        a_, b_ = 0.0, 1.0
        for _ in range(n):
            a_, b_ = b_, a_ + b_
        return _num(a_)
    xs = _numbers(ops)
    if op == "add":
        return _num(sum(xs))
    if op == "average":
        return _num(sum(xs) / len(xs))
    if op == "subtract":
        r = -xs[0] if len(xs) == 1 else xs[0]
        for x in xs[1:]:
            r -= x
        return _num(r)
    if op == "multiply":
        return _num(math.prod(xs))
    if op == "divide":
        if len(xs) < 2:
            raise BadJob("Division requires at least 2 operands")
        r = xs[0]
        for x in xs[1:]:
            if x == 0:
                raise BadJob("Division by zero is not allowed")
            r /= x
        return _num(r)
    if op == "power":
        if len(xs) != 2:
            raise BadJob("Power requires exactly 2 operands: [base, exponent]")
        if xs[1] < 0 or xs[1] != math.floor(xs[1]):
            raise BadJob("Exponent must be a non-negative integer")
        try:
            return _num(math.pow(xs[0], xs[1]))
        except OverflowError:
            raise BadJob("Result is not a finite number (overflow)") from None
    return _num(sum(x * x for x in xs))  # sumOfSquares


def run_job(job: distsys.Job, ctx: distsys.JobContext, name: str) -> Dict[str, Any]:
    """One job in dsys-computed's format (a worker handler)."""
    p: Dict[str, Any] = job.payload if isinstance(job.payload, dict) else {}
    d = p.get("data")
    data: Dict[str, Any] = d if isinstance(d, dict) else {}
    op = p.get("type")
    if op == "computation":
        op = data.get("operation")
    delay = data.get("delayMs", 0)
    if isinstance(delay, int) and not isinstance(delay, bool) and 0 < delay <= 60000:
        waited = 0
        while waited < delay:
            if ctx.stopping:
                raise distsys.CanceledError()  # released back to the queue
            ctx.progress(waited * 90 // delay, "waiting")
            time.sleep(0.1)
            waited += 100
    ctx.progress(90, "computing")
    if "operands" not in data:
        raise BadJob("Operation and operands are required")
    result = compute(op if isinstance(op, str) else None, data["operands"])
    ctx.progress(100, "done")
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"operation": op, "result": result, "service": name,
            "computedAt": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--db", required=True, help="dsys-computed's SQLite file (--db)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="compute-python")
    ap.add_argument("--jobs", type=int, default=0, help="exit after this many jobs (0: run)")
    a = ap.parse_args(argv)
    done = threading.Event()
    handled = [0]
    lock = threading.Lock()

    def handler(job: distsys.Job, ctx: distsys.JobContext) -> Dict[str, Any]:
        try:
            return run_job(job, ctx, a.name)
        finally:
            with lock:
                handled[0] += 1
                if a.jobs and handled[0] >= a.jobs:
                    done.set()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: done.set())
    with distsys.Queue(f"sqlite://{a.db}") as q:
        with distsys.Worker(q, handler, QUEUE, threads=a.threads, worker_id=a.name,
                            poll_ms=50):
            print(f"working on {a.db} queue {QUEUE}", flush=True)
            done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
