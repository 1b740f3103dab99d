"""Durable job queue (``dsys_queue``) and worker pools (``dsys_worker``)."""
from __future__ import annotations

import asyncio
import json
import threading
from ctypes import (POINTER, byref, c_char_p, c_int, c_int64, c_size_t,
                    c_void_p, sizeof)
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from . import _check, _handle, _lib, errors
from ._handle import attach, callback_scope, handling, Handle

__all__ = ["Queue", "Job", "JobContext", "Worker", "JobFailed", "JOB_STATES"]

#: Job state names by number (dsys_job_state).
JOB_STATES: Dict[int, str] = {i: _lib.dsys_job_state_name(i).decode()
                              for i in range(1, 7)}

_EINTERNAL = -31


def _dec(s: Optional[bytes]) -> Optional[str]:
    return None if s is None else s.decode()


@dataclass(frozen=True)
class Job:
    """A job (a copy). ``payload``/``result`` are decoded JSON; ``state`` is
    one of "waiting", "delayed", "active", "completed", "failed",
    "canceled". Times are wall-clock ms since the epoch (0 = unset)."""

    id: int
    queue: str
    payload: Any
    state: str
    priority: int
    attempts: int
    max_attempts: int
    token: int
    worker: Optional[str]
    lease_until: int
    progress: int
    progress_msg: Optional[str]
    result: Any
    error: Optional[str]
    idempotency_key: Optional[str]
    created_at: int
    run_at: int
    finished_at: int

    @staticmethod
    def _from(p: Any) -> "Job":
        j = p.contents
        res = j.result
        return Job(j.id, j.queue.decode(), json.loads(j.payload.decode()),
                   JOB_STATES.get(j.state, "unknown"), j.priority, j.attempts,
                   j.max_attempts, j.token, _dec(j.worker), j.lease_until,
                   j.progress, _dec(j.progress_msg),
                   None if res is None else json.loads(res.decode()),
                   _dec(j.error), _dec(j.idempotency_key), j.created_at,
                   j.run_at, j.finished_at)


def _take_job(p: Any) -> Job:
    try:
        return Job._from(p)
    finally:
        _lib.dsys_job_free(p)


def _names(queues: Union[str, Sequence[str]]) -> Any:
    names = [_check.text(queues, "queues")] if isinstance(queues, str) \
        else _check.texts(queues, "queues")
    if not names:
        raise errors.error_class(-1)(-1, "no queue names")
    arr = (c_char_p * len(names))(*names)
    return arr, len(names)


class Queue(Handle):
    """A durable job queue opened by URL (``"memory:"`` or
    ``"sqlite:///abs/file.sqlite"``, shareable by several processes).

    Thread-safe. ``close()`` first stops every :class:`Worker` started on
    this queue, then waits for calls in progress, then frees the handle.

    Example::

        with distsys.Queue("memory:") as q:
            jid = q.submit("emails", {"to": "ada@example.com"})
            job = q.claim("emails", worker="me")
            q.complete(job.id, job.token, {"sent": True})
    """

    def __init__(self, url: str = "memory:", *, full_sync: bool = False,
                 max_batch: int = 0) -> None:
        o = _lib.dsys_queue_options(size=sizeof(_lib.dsys_queue_options),
                                    full_sync=int(bool(full_sync)),
                                    max_batch=_check.integer(max_batch, "max_batch", *_check.INT32))
        h = c_void_p()
        errors.raise_for(_lib.dsys_queue_open(byref(h), _check.text(url, "url"), byref(o)),
                         f"opening {url!r}")
        self.url = url
        self._life, self._fin = attach(self, h.value, _lib.dsys_queue_close)

    def close(self) -> None:
        """Stop this queue's workers, then close (idempotent). Raises
        InvalidStateError when called from one of its workers' handlers."""
        if any(ql is self._life for _, ql in handling()):
            raise errors.error_class(-16)(-16, "Queue.close() from its own worker's handler")
        self._fin()

    def __repr__(self) -> str:
        return f"<distsys.Queue {self.url!r}{' closed' if self.closed else ''}>"

    def submit(self, queue: str, payload: Any = None, *, priority: int = 0,
               delay_ms: int = 0, max_attempts: int = 0,
               backoff_base_ms: int = 0, backoff_cap_ms: int = 0,
               idempotency_key: Optional[str] = None) -> int:
        """Submit a job (payload: any JSON-serializable value); returns its
        id. With an idempotency key, a repeat returns the existing job's id.
        Zero options take the library defaults (3 attempts, 1 s base and
        60 s cap of backoff)."""
        o = _lib.dsys_submit_options(
            size=sizeof(_lib.dsys_submit_options),
            priority=_check.integer(priority, "priority", *_check.INT32),
            delay_ms=_check.integer(delay_ms, "delay_ms"),
            max_attempts=_check.integer(max_attempts, "max_attempts", *_check.INT32),
            backoff_base_ms=_check.integer(backoff_base_ms, "backoff_base_ms"),
            backoff_cap_ms=_check.integer(backoff_cap_ms, "backoff_cap_ms"),
            idempotency_key=_check.opt_text(idempotency_key, "idempotency_key"))
        jid = c_int64()
        self._call(_lib.dsys_queue_submit, _check.text(queue, "queue"),
                   _check.json_text(payload, "payload"),
                   byref(o), byref(jid), None)
        return jid.value

    def claim(self, queues: Union[str, Sequence[str]], worker: str = "",
              lease_ms: int = 30000) -> Optional[Job]:
        """Claim the next ready job of these queues under a lease; None when
        nothing is ready. Finish it with complete/fail/release using
        ``job.id`` and ``job.token``."""
        arr, n = _names(queues)
        out = _lib.job_p()
        with self._life as p:
            rc = _lib.dsys_queue_claim(p, arr, n, _check.text(worker, "worker"),
                                       _check.integer(lease_ms, "lease_ms"),
                                       byref(out))
        if rc == -17:  # DSYS_EAGAIN: nothing ready
            return None
        errors.raise_for(rc)
        return _take_job(out)

    async def aclaim(self, queues: Union[str, Sequence[str]], worker: str = "",
                     lease_ms: int = 30000) -> Optional[Job]:
        """``await q.aclaim(...)``: :meth:`claim` for asyncio (None when
        nothing is ready). The claim, a SQLite transaction that may wait
        on the database's lock, runs on the loop's default executor, so
        the event loop never blocks on it; to wait for jobs as they come,
        use a :class:`Worker` with an ``async def`` handler."""
        _names(queues)
        _check.text(worker, "worker")
        _check.integer(lease_ms, "lease_ms")
        return await asyncio.get_running_loop().run_in_executor(
            None, self.claim, queues, worker, lease_ms)

    def heartbeat(self, job_id: int, token: int, lease_ms: int = 30000) -> None:
        """Extend the lease (LeaseError when the lease was lost)."""
        self._call(_lib.dsys_queue_heartbeat, _check.integer(job_id, "job_id"),
                   _check.integer(token, "token"),
                   _check.integer(lease_ms, "lease_ms"))

    def progress(self, job_id: int, token: int, percent: int,
                 message: Optional[str] = None) -> None:
        """Store progress 0-100 and an optional message."""
        self._call(_lib.dsys_queue_progress, _check.integer(job_id, "job_id"),
                   _check.integer(token, "token"),
                   _check.integer(percent, "percent", 0, 100),
                   _check.opt_text(message, "message"))

    def complete(self, job_id: int, token: int, result: Any = None) -> None:
        """Complete a claimed job with a JSON-serializable result."""
        self._call(_lib.dsys_queue_complete, _check.integer(job_id, "job_id"),
                   _check.integer(token, "token"), _check.json_text(result, "result"))

    def fail(self, job_id: int, token: int, error: str = "failed") -> bool:
        """Fail this attempt; returns True if the job was dead-lettered."""
        dead = c_int()
        self._call(_lib.dsys_queue_fail, _check.integer(job_id, "job_id"),
                   _check.integer(token, "token"), _check.text(error, "error"),
                   byref(dead))
        return bool(dead.value)

    def release(self, job_id: int, token: int) -> None:
        """Give a claimed job back (this attempt is not counted)."""
        self._call(_lib.dsys_queue_release, _check.integer(job_id, "job_id"),
                   _check.integer(token, "token"))

    def cancel(self, job_id: int) -> None:
        """Cancel a waiting, delayed or active job (InvalidStateError if done)."""
        self._call(_lib.dsys_queue_cancel, _check.integer(job_id, "job_id"))

    def get(self, job_id: int) -> Job:
        """A job by id (NotFoundError)."""
        out = _lib.job_p()
        self._call(_lib.dsys_queue_get, _check.integer(job_id, "job_id"), byref(out))
        return _take_job(out)

    def counts(self, queue: Optional[str] = None) -> Dict[str, int]:
        """Jobs by state name, for one queue or all."""
        c = _lib.dsys_job_counts()
        self._call(_lib.dsys_queue_counts, _check.opt_text(queue, "queue"), byref(c))
        return {n: getattr(c, n) for n, _ in c._fields_}

    def list_dead(self, queue: Optional[str] = None, after_id: int = 0,
                  limit: int = 100) -> List[Job]:
        """Dead-lettered (failed) jobs with id > after_id, in id order."""
        arr = POINTER(_lib.job_p)()
        n = c_size_t()
        self._call(_lib.dsys_queue_list_dead, _check.opt_text(queue, "queue"),
                   _check.integer(after_id, "after_id"),
                   _check.integer(limit, "limit", 1, 1000), byref(arr), byref(n))
        try:
            return [Job._from(arr[i]) for i in range(n.value)]
        finally:
            _lib.dsys_job_list_free(arr, n.value)

    def dead(self, queue: Optional[str] = None, page: int = 100) -> Iterator[Job]:
        """Iterate over every dead-lettered job in id order, ``page`` jobs
        per library call (:meth:`list_dead` page by page)."""
        _check.opt_text(queue, "queue")
        _check.integer(page, "page", 1, 1000)

        def pages() -> Iterator[Job]:
            after = 0
            while True:
                jobs = self.list_dead(queue, after, page)
                yield from jobs
                if len(jobs) < page:
                    return
                after = jobs[-1].id

        return pages()

    def replay(self, job_id: int) -> None:
        """Make a failed or canceled job waiting again (attempts reset)."""
        self._call(_lib.dsys_queue_replay, _check.integer(job_id, "job_id"))

    def purge(self, older_than_ms: int) -> int:
        """Delete finished jobs older than this; returns how many."""
        n = c_int64()
        self._call(_lib.dsys_queue_purge,
                   _check.integer(older_than_ms, "older_than_ms"), byref(n))
        return n.value

    def worker(self, handler: "Handler", queues: Union[str, Sequence[str]],
               **kw: Any) -> "Worker":
        """Start a :class:`Worker` on this queue (same arguments)."""
        return Worker(self, handler, queues, **kw)


class JobContext:
    """What a handler may do with its running job. Valid only while the
    handler runs (afterwards every method raises InvalidStateError)."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: int) -> None:
        self._ctx: Optional[int] = ctx

    def _p(self) -> int:
        if self._ctx is None:
            raise errors.error_class(-16)(-16, "job context used after the handler returned")
        return self._ctx

    def progress(self, percent: int, message: Optional[str] = None) -> None:
        """Report progress 0-100 (stored with the job; LeaseError if lost)."""
        errors.raise_for(_lib.dsys_job_ctx_progress(
            self._p(), _check.integer(percent, "percent", 0, 100),
            _check.opt_text(message, "message")))

    @property
    def stopping(self) -> bool:
        """True when the handler should give up (worker stopping in release
        mode, or the lease was lost). Raise ``distsys.CanceledError`` to
        release the job back to the queue in release mode."""
        return bool(_lib.dsys_job_ctx_stopping(self._p()))


#: A handler: called as handler(job, ctx); its return value (JSON-
#: serializable) becomes the job's result; an exception fails the attempt
#: with the exception's message.
Handler = Callable[[Job, JobContext], Any]


class JobFailed(Exception):
    """Raise in a worker handler to fail the attempt with exactly this
    message as the job's error (other exceptions store
    ``"ExcType: message"``)."""


def _trampoline(handler: Handler, lives: List[Any],
                loop: Optional[asyncio.AbstractEventLoop]) -> Any:
    """The C handler: runs on a library worker thread (ctypes takes the GIL).
    Never lets an exception escape into C (which would complete the job).
    With a loop, the handler is a coroutine function run on that loop
    (handed over with call_soon_threadsafe by run_coroutine_threadsafe);
    the library thread waits for it with the GIL released, so the job's
    lease and context stay valid meanwhile."""

    def run(ctx: int, jobp: Any, ud: Any) -> int:
        try:
            with callback_scope():
                h = handling()
                # lives is filled just after dsys_worker_start returns: a
                # handler may already run before that
                h.append((lives[0], lives[1]) if len(lives) == 2 else (None, None))
                c = JobContext(ctx)
                try:
                    try:
                        if loop is None:
                            result = handler(Job._from(jobp), c)
                        else:
                            result = asyncio.run_coroutine_threadsafe(
                                handler(Job._from(jobp), c), loop).result()
                        data = _check.json_text(result, "the handler's result")
                    except errors.DistsysError as e:
                        _lib.dsys_job_ctx_set_error(ctx, str(e).encode("utf-8", "replace"))
                        return e.code
                    except JobFailed as e:
                        _lib.dsys_job_ctx_set_error(ctx, str(e).encode("utf-8", "replace"))
                        return _EINTERNAL
                    except BaseException as e:  # noqa: B902 - all become failures
                        msg = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                        _lib.dsys_job_ctx_set_error(ctx, msg.encode("utf-8", "replace"))
                        return _EINTERNAL
                    rc = _lib.dsys_job_ctx_set_result(ctx, data)
                    if rc:
                        _lib.dsys_job_ctx_set_error(
                            ctx, f"result rejected: {_lib.dsys_strerror(rc).decode()}".encode())
                    return int(rc)
                finally:
                    c._ctx = None
                    h.pop()
        except BaseException:
            return _EINTERNAL

    return _lib.JOB_HANDLER(run)


_STOP_MODES = {"finish": 0, "release": 1}


class Worker:
    """A pool of library threads running ``handler(job, ctx)`` for jobs of
    the given queues.

    Threading: the handler runs on the library's worker threads, never on
    the thread that created the Worker; ctypes takes the GIL for it, so at
    most one handler runs Python code at a time (I/O and sleeps overlap).
    The value it returns (JSON-serializable) is the job's result; any
    exception fails the attempt with ``"ExcType: message"`` as the job's
    error and never reaches the process. Raising ``distsys.CanceledError``
    while :attr:`JobContext.stopping` in release mode gives the job back.

    ``stop()`` (or ``close()``, the context manager, the queue's close, or
    garbage collection) stops claiming, waits for running handlers (the GIL
    is released while waiting) and frees the pool; after it returns no
    handler runs. It must not be called from the worker's own handler
    (InvalidStateError). The Worker keeps its Queue alive.

    An ``async def`` handler runs on an asyncio event loop (``loop=``, or
    the loop running when the Worker is created): the library thread that
    claimed the job hands it over with ``call_soon_threadsafe`` and waits,
    GIL released, for the coroutine; ``await worker.astop()`` (or ``async
    with``) stops it from that loop (plain ``stop()`` there would wait for
    itself: InvalidStateError).

    Example::

        def square(job, ctx):
            ctx.progress(50, "multiplying")
            return {"square": job.payload["n"] ** 2}

        with distsys.Worker(q, square, "squares", threads=2):
            ...
    """

    def __init__(self, queue: Queue, handler: Handler,
                 queues: Union[str, Sequence[str]], *, threads: int = 1,
                 lease_ms: int = 0, poll_ms: int = 0,
                 worker_id: Optional[str] = None, prefetch: int = 0,
                 loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        if not isinstance(queue, Queue):
            raise TypeError(f"queue must be a distsys.Queue, not {type(queue).__name__}")
        _check.function(handler, "handler")
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        if asyncio.iscoroutinefunction(handler):
            if loop is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    raise errors.error_class(-16)(
                        -16, "an async handler needs an event loop: create the "
                             "Worker inside it or pass loop=") from None
            self._loop = loop
        elif loop is not None:
            raise TypeError("loop= is for async def handlers only")
        arr, n = _names(queues)
        lives: List[Any] = []
        cb = _trampoline(handler, lives, self._loop)
        o = _lib.dsys_worker_options(
            size=sizeof(_lib.dsys_worker_options), queues=arr, nqueues=n,
            threads=_check.count(threads, "threads"),
            lease_ms=_check.integer(lease_ms, "lease_ms"),
            poll_ms=_check.integer(poll_ms, "poll_ms"),
            worker_id=_check.opt_text(worker_id, "worker_id"),
            handler=cb, prefetch=_check.integer(prefetch, "prefetch", *_check.INT32))
        self.queue = queue
        self.queues = list(queues) if not isinstance(queues, str) else [queues]
        keep = (cb, queue, handler)
        with queue._life as qp:
            h = c_void_p()
            errors.raise_for(_lib.dsys_worker_start(byref(h), qp, byref(o)))
            self._id = _lib.dsys_worker_id(h.value).decode()
            mode: List[int] = [0]
            self._mode = mode

            aloop = self._loop

            def free(p: int, keep: Any = keep, mode: List[int] = mode) -> None:
                if _handle.in_callback() or (aloop is not None and _on_loop(aloop)):
                    # On a library thread (the GC ran inside a callback):
                    # stopping here could wait for ourselves. A helper
                    # thread stops it, holding what C may still use.
                    threading.Thread(target=_stop, args=(p, mode[0], keep),
                                     daemon=True).start()
                else:
                    _stop(p, mode[0], keep)

            self._life, self._fin = attach(self, h.value, free,
                                           parent=queue._life, keep=keep)
            lives.extend((self._life, queue._life))

    @property
    def id(self) -> str:
        """The worker id stored on claimed jobs."""
        return str(self._id)

    def stop(self, mode: str = "finish") -> None:
        """Stop: "finish" lets running handlers finish; "release" also makes
        ``ctx.stopping`` true so handlers can give their job back.
        Idempotent."""
        _check.choice(mode, "mode", list(_STOP_MODES))
        if any(wl is self._life for wl, _ in handling()):
            raise errors.error_class(-16)(-16, "Worker.stop() from its own handler")
        if self._loop is not None and not self._life.closed and _on_loop(self._loop):
            # stop waits for handlers that need this very loop to finish
            raise errors.error_class(-16)(
                -16, "Worker.stop() on the event loop of its async handler: "
                     "use 'await worker.astop()' or 'async with'")
        self._mode[0] = _STOP_MODES[mode]
        self._fin()

    def close(self) -> None:
        """Same as ``stop("finish")``."""
        self.stop()

    async def astop(self, mode: str = "finish") -> None:
        """:meth:`stop` for asyncio: waits in a helper thread, so the
        event loop keeps running the async handlers being finished."""
        _check.choice(mode, "mode", list(_STOP_MODES))
        await asyncio.get_running_loop().run_in_executor(None, self._stop_off_loop, mode)

    def _stop_off_loop(self, mode: str) -> None:
        self._mode[0] = _STOP_MODES[mode]
        self._fin()

    async def __aenter__(self) -> "Worker":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.astop()

    @property
    def stopped(self) -> bool:
        """True once stopped."""
        return self._life.closed

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<distsys.Worker {self._id!r} on {self.queues}{' stopped' if self.stopped else ''}>"


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _stop(p: int, mode: int, keep: Any) -> None:
    _lib.dsys_worker_stop(p, mode)  # releases the GIL while it waits
