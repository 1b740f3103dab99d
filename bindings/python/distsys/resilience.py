"""Load balancer (``dsys_balancer``) and circuit breaker (``dsys_breaker``)."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from ctypes import byref, c_int32, c_uint64, c_void_p, sizeof
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, TypeVar

from . import _check, _lib, errors
from ._handle import attach, callback_scope, Handle

__all__ = ["Balancer", "Pick", "Breaker", "BreakerStats", "POLICIES",
           "BREAKER_STATES"]

log = logging.getLogger("distsys")
T = TypeVar("T")

#: Balancing policy names ("round_robin", ...), by number.
POLICIES: Dict[int, str] = {}
for _i in range(16):
    _n = _lib.dsys_lb_policy_name(_i)
    if _n is None:
        break
    POLICIES[_i] = _n.decode()

#: Breaker state names by number.
BREAKER_STATES: Dict[int, str] = {i: _lib.dsys_breaker_state_name(i).decode()
                                  for i in range(5)}
_STATE_NUM = {v: k for k, v in BREAKER_STATES.items()}


def policy_number(name: str) -> int:
    """The number of a policy name (InvalidArgumentError if unknown)."""
    v = c_int32()
    errors.raise_for(_lib.dsys_lb_policy_parse(_check.text(name, "policy"), byref(v)),
                     f"policy {name!r}; known: {', '.join(POLICIES.values())}")
    return v.value


@dataclass
class Pick:
    """An endpoint chosen by :meth:`Balancer.pick`; release it when the
    request ends (or use ``with balancer.picked() as p``)."""

    id: str
    value: Any
    panic: bool
    _raw: Any = None


class Balancer(Handle):
    """Picks one endpoint among a set with a policy: "round_robin",
    "weighted_round_robin", "least_request", "random", "ring_hash",
    "maglev". Each endpoint has an id, a weight, an availability flag and an
    optional Python value returned with picks. When none is available it
    panics (picks among all, ``pick.panic`` True) or, with
    ``fail_fast=True``, raises UnavailableError.

    Thread-safe; no callbacks.

    Example::

        with distsys.Balancer("round_robin") as b:
            b.add("a"); b.add("b")
            with b.picked() as p:
                print(p.id)
    """

    def __init__(self, policy: str = "round_robin", *, fail_fast: bool = False,
                 seed: int = 0, ring_vnodes: int = 0, maglev_size: int = 0) -> None:
        o = _lib.dsys_balancer_options(
            size=sizeof(_lib.dsys_balancer_options), policy=policy_number(policy),
            when_none=int(bool(fail_fast)),
            ring_vnodes=_check.count(ring_vnodes, "ring_vnodes"),
            maglev_size=_check.count(maglev_size, "maglev_size"),
            seed=_check.count(seed, "seed", (1 << 64) - 1))
        h = c_void_p()
        errors.raise_for(_lib.dsys_balancer_new(byref(h), byref(o)))
        self.policy = policy
        self._values: Dict[str, Any] = {}
        self._life, self._fin = attach(self, h.value, _lib.dsys_balancer_free)

    def __len__(self) -> int:
        """Number of endpoints."""
        with self._life as p:
            return int(_lib.dsys_balancer_count(p))

    def add(self, id: str, weight: int = 1, value: Any = None) -> None:
        """Add an endpoint (AlreadyExistsError for a known id)."""
        self._call(_lib.dsys_balancer_add, _check.text(id, "id"),
                   _check.count(weight, "weight"), None)
        self._values[id] = value

    def remove(self, id: str) -> None:
        """Remove an endpoint (NotFoundError)."""
        self._call(_lib.dsys_balancer_remove, _check.text(id, "id"))
        self._values.pop(id, None)

    def set_weight(self, id: str, weight: int) -> None:
        """Change an endpoint's weight (1..10000)."""
        self._call(_lib.dsys_balancer_set_weight, _check.text(id, "id"),
                   _check.count(weight, "weight"))

    def set_available(self, id: str, available: bool) -> None:
        """Mark an endpoint available or not."""
        self._call(_lib.dsys_balancer_set_available, _check.text(id, "id"),
                   int(bool(available)))

    def reset(self) -> None:
        """Restart the rotation at the first endpoint."""
        self._call(_lib.dsys_balancer_reset)

    def pick(self, key: Optional[bytes | str] = None,
             exclude: Optional[str] = None) -> Pick:
        """Pick an endpoint (key: for the hashing policies). Call
        :meth:`release` when the request ends."""
        k = None if key is None else _check.blob(key, "key")
        r = _lib.dsys_pick_result()
        self._call(_lib.dsys_balancer_pick, k, len(k) if k else 0,
                   _check.opt_text(exclude, "exclude"), byref(r))
        pid = r.id.decode()
        return Pick(pid, self._values.get(pid), bool(r.panic), r)

    def release(self, pick: Pick) -> None:
        """End a picked request (idempotent per Pick)."""
        raw, pick._raw = pick._raw, None
        if raw is None:
            return
        with self._life as p:
            _lib.dsys_balancer_release(p, byref(raw))

    @contextmanager
    def picked(self, key: Optional[bytes | str] = None,
               exclude: Optional[str] = None) -> Iterator[Pick]:
        """``with b.picked() as p:`` picks and releases at the end."""
        pk = self.pick(key, exclude)
        try:
            yield pk
        finally:
            self.release(pk)

    def endpoint(self, id: str) -> Dict[str, int]:
        """Figures of one endpoint: weight, available, active, picks."""
        i = _lib.dsys_balancer_endpoint_info()
        self._call(_lib.dsys_balancer_endpoint, _check.text(id, "id"), byref(i))
        return {"weight": i.weight, "available": bool(i.available),
                "active": i.active, "picks": i.picks}


@dataclass(frozen=True)
class BreakerStats:
    """Counters of a breaker (see dsys_breaker_stats)."""

    state: str
    window_calls: int
    window_failures: int
    window_slow: int
    calls: int
    failures: int
    slow_calls: int
    rejected: int
    transitions: int


class Breaker(Handle):
    """A circuit breaker. States: "closed", "open", "half-open",
    "forced-open", "disabled".

    Options (zero means the library default): ``window_size`` (calls, or
    seconds with ``time_window=True``), ``minimum_calls``,
    ``failure_rate_pct``, ``slow_rate_pct``, ``slow_call_us``,
    ``failures_n`` / ``failures_window_ms`` (N failures within T),
    ``open_wait_ms``, ``half_open_calls``. ``on_event(name, from, to)`` is
    called on state changes, on the thread whose call caused them; an
    exception in it is logged and ignored.

    Example::

        b = distsys.Breaker(minimum_calls=5, failure_rate_pct=50)
        with b.call():          # raises BreakerOpenError when open
            do_request()        # an exception here records a failure
    """

    def __init__(self, name: str = "", *, time_window: bool = False,
                 window_size: int = 0, minimum_calls: int = 0,
                 failure_rate_pct: int = 0, slow_rate_pct: int = 0,
                 slow_call_us: int = 0, failures_n: int = 0,
                 failures_window_ms: int = 0, open_wait_ms: int = 0,
                 half_open_calls: int = 0,
                 on_event: Optional[Callable[[str, str, str], None]] = None) -> None:
        cb = None
        if on_event is not None:
            _check.function(on_event, "on_event")

            handler = on_event

            def run(ud: Any, nm: Optional[bytes], frm: int, to: int) -> None:
                try:
                    with callback_scope():
                        handler((nm or b"").decode(), BREAKER_STATES.get(frm, str(frm)),
                                 BREAKER_STATES.get(to, str(to)))
                except BaseException:
                    log.exception("distsys: exception in a breaker on_event callback")

            cb = _lib.BREAKER_EVENT(run)
        o = _lib.dsys_breaker_options(
            size=sizeof(_lib.dsys_breaker_options), name=_check.text(name, "name"),
            window_type=int(bool(time_window)),
            window_size=_check.count(window_size, "window_size"),
            minimum_calls=_check.count(minimum_calls, "minimum_calls"),
            failure_rate_pct=_check.count(failure_rate_pct, "failure_rate_pct", 100),
            slow_rate_pct=_check.count(slow_rate_pct, "slow_rate_pct", 100),
            slow_call_us=_check.integer(slow_call_us, "slow_call_us"),
            failures_n=_check.count(failures_n, "failures_n"),
            failures_window_ms=_check.integer(failures_window_ms, "failures_window_ms"),
            open_wait_ms=_check.integer(open_wait_ms, "open_wait_ms"),
            half_open_calls=_check.count(half_open_calls, "half_open_calls"))
        if cb is not None:
            o.on_event = cb
        h = c_void_p()
        errors.raise_for(_lib.dsys_breaker_new(byref(h), byref(o)))
        self.name = name
        self._life, self._fin = attach(self, h.value, _lib.dsys_breaker_free,
                                       keep=cb)

    def acquire(self) -> int:
        """Ask permission; returns a permit for :meth:`record`. Raises
        BreakerOpenError when the breaker rejects the call."""
        v = c_uint64()
        with self._life as p:
            rc = _lib.dsys_breaker_acquire(p, byref(v))
        errors.raise_for(rc, self.name or None)
        return v.value

    def record(self, permit: int, ok: Optional[bool], duration_us: int = 0) -> None:
        """Record a permitted call: ok True (success), False (failure) or
        None (ignored: releases the permit without counting)."""
        res = 2 if ok is None else (0 if ok else 1)
        with self._life as p:
            rc = _lib.dsys_breaker_record(
                p, _check.count(permit, "permit", (1 << 64) - 1), res,
                _check.integer(duration_us, "duration_us"))
        errors.raise_for(rc)

    @contextmanager
    def call(self) -> Iterator[int]:
        """Acquire, run the block, record success or (on an exception,
        which is re-raised) failure, with the block's duration."""
        permit = self.acquire()
        t0 = time.monotonic_ns()
        try:
            yield permit
        except BaseException:
            self.record(permit, False, (time.monotonic_ns() - t0) // 1000)
            raise
        self.record(permit, True, (time.monotonic_ns() - t0) // 1000)

    def guard(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Call ``fn(*args, **kw)`` through the breaker."""
        with self.call():
            return fn(*args, **kw)

    @property
    def state(self) -> str:
        """The current state name (may move open -> half-open)."""
        with self._life as p:
            return BREAKER_STATES[_lib.dsys_breaker_state_get(p)]

    @state.setter
    def state(self, name: str) -> None:
        """Force a state by name ("forced-open", "disabled", "closed", ...)."""
        _check.choice(name, "state", list(_STATE_NUM))
        with self._life as p:
            rc = _lib.dsys_breaker_set_state(p, _STATE_NUM[name])
        errors.raise_for(rc)

    def stats(self) -> BreakerStats:
        """A copy of the counters."""
        s = _lib.dsys_breaker_stats()
        with self._life as p:
            errors.raise_for(_lib.dsys_breaker_stats_get(p, byref(s)))
        return BreakerStats(BREAKER_STATES.get(s.state, str(s.state)),
                            s.window_calls, s.window_failures, s.window_slow,
                            s.calls, s.failures, s.slow_calls, s.rejected,
                            s.transitions)
