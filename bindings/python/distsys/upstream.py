"""Calling a service by name with all the library's resilience
(``dsys_upstream``): discovery, balancing, per-endpoint breakers, outlier
detection, per-try timeouts, retries with backoff and a retry budget."""
from __future__ import annotations

import asyncio
import itertools
import json as _json
import threading
from ctypes import (POINTER, byref, c_char_p, c_int32, c_size_t, c_void_p,
                    sizeof, string_at)
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _check, _lib, errors
from ._handle import attach, Handle
from .registry import Registry
from .resilience import BREAKER_STATES, policy_number

__all__ = ["Upstream", "Response", "EndpointStats"]


@dataclass(frozen=True)
class Response:
    """The final reply of a call (any HTTP status), and what it took."""

    status: int
    headers: Dict[str, str]
    body: bytes
    attempts: int
    endpoint: str

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return _json.loads(self.body)

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300


@dataclass(frozen=True)
class EndpointStats:
    """Statistics of one endpoint (a subset of dsys_endpoint_stats)."""

    id: str
    url: str
    weight: int
    usable: bool
    healthy: bool
    ejected: bool
    breaker_state: str
    requests: int
    successes: int
    failures: int
    in_flight: int
    breaker_rejections: int
    p50_us: int
    p90_us: int
    p99_us: int


def _build_call(method: str, path: str, body: Optional[Union[bytes, str]],
                json: Any, headers: Optional[Mapping[str, str]]) -> Tuple[Any, Any]:
    """The dsys_call of one request, and the buffers it points into (keep
    them alive until the call returns)."""
    if headers is not None and not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping, not {type(headers).__name__}")
    hdrs = {_check.text(k, "header name"): _check.text(v, f"header {k!r}")
            for k, v in (headers or {}).items()}
    if json is not None:
        if body is not None:
            raise TypeError("give body or json, not both")
        body = _check.json_text(json, "json")
        if not any(k.lower() == b"content-type" for k in hdrs):
            hdrs[b"Content-Type"] = b"application/json"
    data = None if body is None else _check.blob(body, "body")
    harr = (_lib.dsys_header * max(1, len(hdrs)))(
        *[_lib.dsys_header(k, v) for k, v in hdrs.items()])
    c = _lib.dsys_call(size=sizeof(_lib.dsys_call),
                       method=_check.text(method, "method"),
                       path=_check.text(path, "path"), headers=harr,
                       nheaders=len(hdrs), body=data,
                       body_len=len(data) if data else 0)
    return c, (harr, data)


_Pending = Dict[int, Tuple[asyncio.AbstractEventLoop, "asyncio.Future[Response]", str]]


def _completer(pending: _Pending, lock: threading.Lock) -> Callable[..., None]:
    """The completion callback of acall (dsys_upstream_fn)."""

    def run(err: int, reply: Optional[int], res: Any, ud: Optional[int]) -> None:
        # On a library thread, GIL taken by ctypes. The reply is copied and
        # freed here; only Python objects cross to the event loop.
        with lock:
            entry = pending.pop(ud or 0, None)
        out: Any
        try:
            if err:
                what = entry[2] if entry else "call"
                if res:
                    what += (f"; {res.contents.attempts} attempt(s), last endpoint "
                             f"{res.contents.endpoint.decode() or '-'}")
                out = errors.error_class(err)(err, what)
            else:
                out = _take_reply(reply or 0, res.contents)
        except BaseException as e:  # never into C
            out = e
        if entry is None:
            return
        try:
            entry[0].call_soon_threadsafe(_settle, entry[1], out)
        except RuntimeError:  # the loop was closed meanwhile: nobody waits
            pass

    return run


def _settle(fut: "asyncio.Future[Response]", out: Any) -> None:
    """On the event loop: complete the awaiting future (unless cancelled)."""
    if fut.done():
        return
    if isinstance(out, BaseException):
        fut.set_exception(out)
    else:
        fut.set_result(out)


def _take_reply(r: int, res: Any) -> Response:
    """Copy a dsys_reply into a Response and free it."""
    try:
        n = c_size_t()
        bp = _lib.dsys_reply_body(r, byref(n))
        data = string_at(bp, n.value) if bp and n.value else b""
        out_h: Dict[str, str] = {}
        for i in range(_lib.dsys_reply_header_count(r)):
            k, v = c_char_p(), c_char_p()
            if not _lib.dsys_reply_header_at(r, i, byref(k), byref(v)):
                out_h.setdefault((k.value or b"").decode("latin-1"),
                                 (v.value or b"").decode("latin-1"))
        return Response(_lib.dsys_reply_status(r), out_h, data,
                        res.attempts, res.endpoint.decode())
    finally:
        _lib.dsys_reply_free(r)


class Upstream(Handle):
    """Calls one service through the library: endpoints from a
    :class:`Registry` (kept current by a watch) and/or static ones, a
    balancing policy, a circuit breaker per endpoint, passive outlier
    detection (and active health checks with ``health_check=True``), a
    per-try timeout, retries (refused connections at once on another
    endpoint; after sending only for idempotent methods or with an
    Idempotency-Key header) and a retry budget.

    ``call()`` blocks the calling thread with the GIL released; many
    threads may call at once. A reply with any status is a
    :class:`Response`; transport failures raise (UnavailableError,
    BreakerOpenError, ConnRefusedError, TimedOutError, ...).

    The Upstream keeps its Registry alive; closing the Registry closes it.

    Example::

        with distsys.Upstream("data", endpoints={"d1": "http://127.0.0.1:4002"}) as up:
            r = up.call("GET", "/api/data")
            print(r.status, r.json())
    """

    def __init__(self, service: str = "upstream", *,
                 registry: Optional[Registry] = None,
                 endpoints: Optional[Mapping[str, str]] = None,
                 policy: str = "round_robin", fail_fast: bool = False,
                 seed: int = 0, health_check: bool = False,
                 health_path: Optional[str] = None,
                 max_attempts: int = 0, per_try_timeout_ms: int = 0,
                 deadline_ms: int = 0, backoff_base_ms: int = 0,
                 backoff_cap_ms: int = 0, retry_statuses: Optional[List[int]] = None,
                 retry_budget: bool = True,
                 breaker_minimum_calls: int = 0,
                 breaker_failure_rate_pct: int = 0,
                 breaker_open_wait_ms: int = 0) -> None:
        statuses = None
        if retry_statuses is not None:
            if isinstance(retry_statuses, (str, bytes)) or not isinstance(retry_statuses, Sequence):
                raise TypeError("retry_statuses must be a sequence of int, "
                                f"not {type(retry_statuses).__name__}")
            statuses = (c_int32 * max(1, len(retry_statuses)))(
                *[_check.integer(s, "retry_statuses[]", 100, 599) for s in retry_statuses])
        if registry is not None and not isinstance(registry, Registry):
            raise TypeError(f"registry must be a distsys.Registry, not {type(registry).__name__}")
        ro = _lib.dsys_retry_options(
            size=sizeof(_lib.dsys_retry_options),
            max_attempts=_check.count(max_attempts, "max_attempts"),
            per_try_timeout_ms=_check.integer(per_try_timeout_ms, "per_try_timeout_ms"),
            deadline_ms=_check.integer(deadline_ms, "deadline_ms"),
            backoff_base_ms=_check.integer(backoff_base_ms, "backoff_base_ms"),
            backoff_cap_ms=_check.integer(backoff_cap_ms, "backoff_cap_ms"),
            retry_statuses=statuses,
            n_retry_statuses=0 if retry_statuses is None else len(retry_statuses),
            budget_off=0 if retry_budget else 1)
        bo = _lib.dsys_breaker_options(
            size=sizeof(_lib.dsys_breaker_options),
            minimum_calls=_check.count(breaker_minimum_calls, "breaker_minimum_calls"),
            failure_rate_pct=_check.count(breaker_failure_rate_pct,
                                          "breaker_failure_rate_pct", 100),
            open_wait_ms=_check.integer(breaker_open_wait_ms, "breaker_open_wait_ms"))
        o = _lib.dsys_upstream_options(
            size=sizeof(_lib.dsys_upstream_options),
            service=_check.text(service, "service"),
            policy=policy_number(policy), when_none=int(bool(fail_fast)),
            seed=_check.count(seed, "seed", (1 << 64) - 1),
            health_check=int(bool(health_check)),
            health_path=_check.opt_text(health_path, "health_path"),
            breaker=POINTER(_lib.dsys_breaker_options)(bo),
            retry=POINTER(_lib.dsys_retry_options)(ro))
        self.service = service
        self.registry = registry
        self._pending: _Pending = {}
        self._plock = threading.Lock()
        self._ids = itertools.count(1)
        # One completion callback for every acall, held until the C
        # upstream is freed (dsys_upstream_free waits for calls in flight),
        # so no callback object is freed while C may still run it. It
        # refers to the pending table, not to self (no cycle through C).
        self._done_cb = _lib.UPSTREAM_FN(_completer(self._pending, self._plock))
        keep = (registry, ro, bo, statuses, self._done_cb)
        parent = None
        if registry is not None:
            parent = registry._life
            o.registry = parent.enter()
        try:
            h = c_void_p()
            errors.raise_for(_lib.dsys_upstream_new(byref(h), byref(o)),
                             f"service {service!r}")
            self._life, self._fin = attach(self, h.value, _lib.dsys_upstream_free,
                                           parent=parent, keep=keep)
        finally:
            if parent is not None:
                parent.leave()
        if endpoints is not None and not isinstance(endpoints, Mapping):
            raise TypeError(f"endpoints must be a mapping of id -> url, not "
                            f"{type(endpoints).__name__}")
        for eid, url in (endpoints or {}).items():
            self.add(eid, url)

    def __len__(self) -> int:
        """Number of endpoints."""
        with self._life as p:
            return int(_lib.dsys_upstream_count(p))

    def add(self, id: str, url: str, weight: int = 1) -> None:
        """Add a static endpoint (AlreadyExistsError)."""
        self._call(_lib.dsys_upstream_add, _check.text(id, "id"),
                   _check.text(url, "url"), _check.count(weight, "weight"))

    def remove(self, id: str) -> None:
        """Remove an endpoint (NotFoundError)."""
        self._call(_lib.dsys_upstream_remove, _check.text(id, "id"))

    def call(self, method: str = "GET", path: str = "/", *,
             body: Optional[Union[bytes, str]] = None, json: Any = None,
             headers: Optional[Mapping[str, str]] = None) -> Response:
        """Call the service and wait for the final reply (see the class
        docstring for retries). ``json`` is serialized and sent with
        ``Content-Type: application/json``."""
        c, keep = _build_call(method, path, body, json, headers)
        reply = c_void_p()
        res = _lib.dsys_upstream_result(size=sizeof(_lib.dsys_upstream_result))
        with self._life as p:
            rc = _lib.dsys_upstream_call_ex(p, byref(c), byref(reply), byref(res))
        errors.raise_for(rc, f"{self.service} {method} {path}; "
                             f"{res.attempts} attempt(s), last endpoint "
                             f"{res.endpoint.decode() or '-'}")
        return _take_reply(reply.value or 0, res)

    async def acall(self, method: str = "GET", path: str = "/", *,
                    body: Optional[Union[bytes, str]] = None, json: Any = None,
                    headers: Optional[Mapping[str, str]] = None) -> Response:
        """``await up.acall(...)``: :meth:`call` for asyncio. The call runs
        in the library (its client thread or event loop, retries as
        timers); no thread waits for it. Its completion is handed to the
        awaiting event loop with ``loop.call_soon_threadsafe``. Cancelling
        the awaiting task abandons the result (the call itself finishes in
        the library)."""
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[Response]" = loop.create_future()
        c, keep = _build_call(method, path, body, json, headers)
        key = next(self._ids)
        with self._plock:
            self._pending[key] = (loop, fut, f"{self.service} {method} {path}")
        with self._life as p:
            rc = _lib.dsys_upstream_send(p, byref(c), self._done_cb, key)
        if rc:  # the callback never runs
            with self._plock:
                self._pending.pop(key, None)
            errors.raise_for(rc, f"{self.service} {method} {path}")
        return await fut

    def stats(self) -> List[EndpointStats]:
        """Per-endpoint statistics."""
        arr = POINTER(_lib.dsys_endpoint_stats)()
        n = c_size_t()
        self._call(_lib.dsys_upstream_stats, byref(arr), byref(n))
        try:
            return [EndpointStats(
                s.id.decode(), s.url.decode(), s.weight, bool(s.usable),
                bool(s.healthy), bool(s.ejected),
                BREAKER_STATES.get(s.breaker_state, str(s.breaker_state)),
                s.requests, s.successes, s.failures, s.in_flight,
                s.breaker_rejections, s.p50_us, s.p90_us, s.p99_us)
                for s in (arr[i] for i in range(n.value))]
        finally:
            _lib.dsys_free(arr)

    def totals(self) -> Dict[str, int]:
        """Service-level totals (calls, replies, errors, attempts, retries,
        picks, panic_picks, unavailable, breaker_rejected, endpoints,
        p50_us, p90_us, p99_us)."""
        t = _lib.dsys_upstream_totals()
        self._call(_lib.dsys_upstream_totals_get, byref(t))
        return {n: getattr(t, n) for n, _ in t._fields_}

    def set_breaker(self, id: str, state: str) -> None:
        """Force one endpoint's breaker state ("forced-open", "closed", ...)."""
        nums = {v: k for k, v in BREAKER_STATES.items()}
        _check.choice(state, "state", list(nums))
        self._call(_lib.dsys_upstream_breaker_set, _check.text(id, "id"), nums[state])
