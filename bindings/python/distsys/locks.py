"""Lease locks with fencing tokens, leader election (``dsys_locks``) and
the in-process cache (``dsys_cache``); see docs/reference/lock.md and
cache.md."""
from __future__ import annotations

import ctypes
import threading
from ctypes import byref, c_int64, c_size_t, c_void_p, sizeof
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from . import _check, _lib, errors
from ._handle import attach, Handle

__all__ = ["Locks", "Lock", "LockHolder", "Election", "Cache", "guarded_put"]


@dataclass
class LockHolder:
    """Who holds a lock: its owner string, fencing token and lease end
    (wall ms)."""

    owner: str
    token: int
    expires_at: int


def _holder(rc: int, info: Any) -> Optional[LockHolder]:
    if rc == -3:  # DSYS_ENOTFOUND: free
        return None
    errors.raise_for(rc)
    return LockHolder(info.owner.decode(), int(info.token), int(info.expires_at))


def _ms(seconds: Any, what: str) -> int:
    return int(round(_check.number(seconds, what) * 1000))


class Lock:
    """A held lock (from :meth:`Locks.acquire`). Renewed automatically
    unless ``manual_renew``; pass :attr:`token` to what the lock protects.
    A context manager: leaving the block releases it."""

    def __init__(self, locks: "Locks", ptr: int) -> None:
        self._locks = locks
        self._ptr: Optional[int] = ptr

    @property
    def token(self) -> int:
        """The fencing token (larger than every earlier one of this name)."""
        return int(_lib.dsys_lock_token(self._ptr)) if self._ptr else 0

    @property
    def held(self) -> bool:
        """True while not lost and its lease is not over."""
        return bool(self._ptr) and bool(_lib.dsys_lock_held(self._ptr))

    def renew(self) -> None:
        """Renew now (LeaseError when someone else took it)."""
        if not self._ptr:
            raise errors.error_class(-11)(-11, "the lock was released")
        errors.raise_for(_lib.dsys_lock_renew(self._ptr))

    def release(self) -> None:
        """Release it (LeaseError if it had been lost). Idempotent."""
        p, self._ptr = self._ptr, None
        if p:
            errors.raise_for(_lib.dsys_lock_release(p))

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.release()
        except errors.DistsysError:
            if exc[0] is None:
                raise

    def __del__(self) -> None:
        if getattr(self, "_ptr", None):
            _lib.dsys_lock_release(self._ptr)


class Election:
    """A candidate campaigning in the background (from
    :meth:`Locks.campaign`); :meth:`resign` (or leaving a ``with`` block)
    stops it and hands the leadership over."""

    def __init__(self, locks: "Locks", name: str, ptr: int) -> None:
        self._locks = locks
        self.name = name
        self._ptr: Optional[int] = ptr

    @property
    def is_leader(self) -> bool:
        """True while this candidate leads."""
        return bool(self._ptr) and bool(_lib.dsys_election_is_leader(self._ptr, None))

    @property
    def token(self) -> int:
        """The leadership's fencing token (0 when not leading)."""
        t = c_int64()
        if self._ptr and _lib.dsys_election_is_leader(self._ptr, byref(t)):
            return int(t.value)
        return 0

    def resign(self) -> None:
        """Stop campaigning; give the leadership up if held. Idempotent."""
        p, self._ptr = self._ptr, None
        if p:
            _lib.dsys_election_resign(p)

    def __enter__(self) -> "Election":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.resign()

    def __del__(self) -> None:
        if getattr(self, "_ptr", None):
            _lib.dsys_election_resign(self._ptr)


class Locks(Handle):
    """The locks of a backend URL: ``memory:``, ``sqlite:///path``,
    ``postgresql://...``, ``etcd://host:port[,host:port...]/prefix``. Release every Lock and resign every Election
    before closing.

    Example::

        with distsys.Locks("sqlite:///tmp/locks.sqlite") as locks:
            with locks.acquire("report", wait=5) as lk:
                distsys.guarded_put(store, "report", {"by": "me"}, lk.token)
    """

    def __init__(self, url: str = "memory:") -> None:
        h = c_void_p()
        errors.raise_for(_lib.dsys_locks_open(byref(h), _check.text(url, "url"), None), url)
        self.url = url
        self._life, self._fin = attach(self, h.value, _lib.dsys_locks_close)

    def acquire(self, name: str, wait: float = 0.0, *, ttl: float = 10.0,
                owner: Optional[str] = None, manual_renew: bool = False,
                unfair: bool = False) -> Lock:
        """Take the lock ``name``, waiting up to ``wait`` seconds (0: try
        once: BusyError when held; else TimedOutError). ``ttl``: the lease
        in seconds (at least 0.1). Waiters take turns (a waiter next in
        line goes first) unless ``unfair``."""
        o = _lib.dsys_lock_options(size=sizeof(_lib.dsys_lock_options), ttl_ms=_ms(ttl, "ttl"),
                                   manual_renew=int(bool(manual_renew)),
                                   owner=_check.opt_text(owner, "owner"),
                                   unfair=int(bool(unfair)))
        lk = c_void_p()
        with self._life as p:
            rc = _lib.dsys_lock_acquire(p, _check.text(name, "name"), _ms(wait, "wait"),
                                        byref(o), byref(lk))
        errors.raise_for(rc, name)
        return Lock(self, int(lk.value or 0))

    def holder(self, name: str) -> Optional[LockHolder]:
        """Who holds ``name`` now, or None when it is free."""
        info = _lib.dsys_lock_info()
        with self._life as p:
            rc = _lib.dsys_lock_holder(p, _check.text(name, "name"), byref(info))
        return _holder(rc, info)

    def campaign(self, name: str, *, ttl: float = 10.0,
                 candidate: Optional[str] = None) -> Election:
        """Campaign for the leadership of ``name`` in the background."""
        o = _lib.dsys_election_options(size=sizeof(_lib.dsys_election_options),
                                       ttl_ms=_ms(ttl, "ttl"),
                                       candidate=_check.opt_text(candidate, "candidate"))
        e = c_void_p()
        with self._life as p:
            rc = _lib.dsys_election_campaign(p, _check.text(name, "name"), byref(o), byref(e))
        errors.raise_for(rc, name)
        return Election(self, name, int(e.value or 0))

    def leader(self, name: str) -> Optional[LockHolder]:
        """The current leader of election ``name`` (any candidate), or None."""
        info = _lib.dsys_lock_info()
        with self._life as p:
            rc = _lib.dsys_election_leader(p, _check.text(name, "name"), byref(info))
        return _holder(rc, info)


def guarded_put(store: Any, key: str, value: Any, token: int) -> None:
    """Write ``value`` (JSON) at ``key`` of a :class:`distsys.Store` unless a
    write with a larger fencing token was made there (LeaseError: the
    caller's lock is stale)."""
    life = store._life
    p = life.enter()
    try:
        rc = _lib.dsys_lock_guarded_put(p, _check.text(key, "key"),
                                        _check.json_text(value, "value"),
                                        _check.integer(token, "token", 1))
    finally:
        life.leave()
    errors.raise_for(rc, key)


class Cache(Handle):
    """An in-process cache of bytes by key: bounded, TTL, LRU, one load for
    concurrent misses, optional stale-while-revalidate and negative caching.

    ``loader(key)`` (given at creation) produces a missing value: bytes, or
    None when the key has no value (remembered ``negative_ttl`` seconds when
    set). An exception from the loader is re-raised to the caller whose get
    ran it (callers that waited on that load get InternalError) and is not
    cached. Without a loader, :meth:`get` only looks up.

    Example::

        cache = distsys.Cache(lambda k: db_read(k), max_bytes=1 << 20, ttl=30)
        v = cache.get("user:42")
        cache.invalidate("user:42")  # its source changed
    """

    def __init__(self, loader: Optional[Callable[[str], Optional[bytes]]] = None, *,
                 max_bytes: int = 0, max_entries: int = 0, ttl: float = 60.0,
                 stale: float = 0.0, negative_ttl: float = 0.0) -> None:
        self._loader = None if loader is None else _check.function(loader, "loader")
        o = _lib.dsys_cache_options(size=sizeof(_lib.dsys_cache_options),
                                    max_bytes=_check.count(max_bytes, "max_bytes", 1 << 62),
                                    max_entries=_check.count(max_entries, "max_entries",
                                                             1 << 62),
                                    ttl_ms=_ms(ttl, "ttl"), stale_ms=_ms(stale, "stale"),
                                    negative_ttl_ms=_ms(negative_ttl, "negative_ttl"))
        h = c_void_p()
        errors.raise_for(_lib.dsys_cache_new(byref(h), byref(o)))
        self._tls = threading.local()
        self._cb = _lib.CACHE_LOAD(self._load)
        self._life, self._fin = attach(self, h.value, _lib.dsys_cache_free, keep=self._cb)

    def _load(self, ud: Any, key: bytes, value: Any, length: Any) -> int:
        try:
            assert self._loader is not None
            v = self._loader(key.decode())
            if v is None:
                return -3  # DSYS_ENOTFOUND
            b = _check.blob(v, "the loader's value")
            block = _lib.libc_malloc(max(len(b), 1))
            if not block:
                return -2  # DSYS_ENOMEM
            ctypes.memmove(block, b, len(b))
            value[0] = block
            length[0] = len(b)
            return 0
        except BaseException as e:  # for the caller whose get() ran it
            self._tls.error = e
            return -31  # DSYS_EINTERNAL

    def get(self, key: str) -> Optional[bytes]:
        """The value of ``key``, loading it on a miss; None when it has none."""
        k = _check.text(key, "key")
        v, ln = c_void_p(), c_size_t()
        self._tls.error = None
        with self._life as p:
            rc = _lib.dsys_cache_get(p, k, self._cb if self._loader else None, None,
                                     byref(v), byref(ln))
        err, self._tls.error = self._tls.error, None
        if rc and err is not None:
            raise err
        if rc == -3:
            return None
        errors.raise_for(rc, key)
        try:
            return ctypes.string_at(int(v.value or 0), ln.value) if ln.value else b""
        finally:
            _lib.dsys_free(v)

    def put(self, key: str, value: bytes) -> None:
        """Store a copy of ``value``, fresh from now."""
        b = _check.blob(value, "value")
        self._call(_lib.dsys_cache_put, _check.text(key, "key"), b, len(b))

    def invalidate(self, key: str) -> None:
        """Drop ``key`` (its source changed)."""
        self._call(_lib.dsys_cache_invalidate, _check.text(key, "key"))

    def clear(self) -> None:
        """Drop every entry."""
        with self._life as p:
            _lib.dsys_cache_clear(p)

    def stats(self) -> Dict[str, int]:
        """Counters: hits, stale_hits, negative_hits, misses, loads,
        load_errors, evictions, invalidations, entries, bytes."""
        s = _lib.dsys_cache_stats()
        with self._life as p:
            _lib.dsys_cache_get_stats(p, byref(s))
        return {name: int(getattr(s, name)) for name, _ in s._fields_}
