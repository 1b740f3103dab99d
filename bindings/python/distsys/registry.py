"""Service registry (``dsys_registry``)."""
from __future__ import annotations

import json
import logging
import threading
from ctypes import POINTER, byref, c_char_p, c_size_t, c_uint64, c_void_p, sizeof, create_string_buffer
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import _check, _lib, errors
from ._handle import attach, callback_scope, Handle

__all__ = ["Registry", "Instance", "Change", "CHANGE_KINDS"]

log = logging.getLogger("distsys")

#: Change kind names by number (dsys_registry_change_kind).
CHANGE_KINDS: Dict[int, str] = {0: "registered", 1: "deregistered",
                                2: "unhealthy", 3: "healthy", 4: "reaped",
                                5: "resync"}


@dataclass(frozen=True)
class Instance:
    """A registered service instance (a copy)."""

    id: str
    type: str
    url: str
    name: str = ""
    tags: List[str] = field(default_factory=list)
    metadata: Dict[str, Any] = field(default_factory=dict)
    weight: int = 1
    healthy: bool = True
    registered_ms: int = 0
    last_heartbeat_ms: int = 0


@dataclass(frozen=True)
class Change:
    """One registry change, passed to watch callbacks."""

    index: int
    kind: str
    id: str
    type: str


def _instances(arr: Any, n: int) -> List[Instance]:
    out = []
    for i in range(n):
        x = arr[i]
        out.append(Instance(
            x.id.decode(), x.type.decode(), x.url.decode(),
            x.name.decode() if x.name else x.id.decode(),
            [x.tags[k].decode() for k in range(x.ntags)],
            json.loads(x.metadata.decode()) if x.metadata else {},
            x.weight, x.health == 0, x.registered_ms, x.last_heartbeat_ms))
    return out


class Registry(Handle):
    """A service registry.

    ``backend`` is "memory" (this handle only), "sqlite" (``target`` is a
    file shared by every process that opens it) or a registry daemon URL
    ("http://host:port"). Instances whose last heartbeat is older than
    ``ttl_ms`` are unhealthy; after ``reap_ms`` they are removed.

    ``identity`` (an :class:`Identity`) is presented to a registry daemon
    on register, heartbeat and deregister; a daemon started with
    ``--identity-public-key`` refuses writes without it (AuthError) or with
    another instance's (PermissionDeniedError). Closing the
    Identity first closes this Registry.

    Thread-safe. Watch callbacks run on library threads (or the thread whose
    call made the change) with the GIL taken by ctypes; an exception in one
    is logged on the "distsys" logger and otherwise ignored. ``close()``
    first closes Upstreams that discover through this registry.

    Example::

        with distsys.Registry("memory") as r:
            r.register("data-1", "data", "http://127.0.0.1:4002")
            print([i.url for i in r.lookup("data")])
    """

    def __init__(self, backend: str = "memory", target: Optional[str] = None,
                 *, ttl_ms: int = 0, reap_ms: int = 0,
                 sweep_interval_ms: int = 0, identity: Optional[Any] = None) -> None:
        o = _lib.dsys_registry_options(
            size=sizeof(_lib.dsys_registry_options),
            ttl_ms=_check.integer(ttl_ms, "ttl_ms"),
            reap_ms=_check.integer(reap_ms, "reap_ms"),
            sweep_interval_ms=_check.integer(sweep_interval_ms, "sweep_interval_ms"))
        b_backend = _check.text(backend, "backend")
        b_target = _check.opt_text(target, "target")
        h = c_void_p()
        err = create_string_buffer(512)
        from .identity import Identity  # here: identity imports nothing of ours
        if identity is not None and not isinstance(identity, Identity):
            raise TypeError("identity must be a distsys.Identity, not "
                            f"{type(identity).__name__}")
        # the credential's handle must outlive the registry: it is the parent
        parent = identity._life if identity is not None else None
        if parent is not None:
            o.identity = parent.enter()
        try:
            rc = _lib.dsys_registry_open(byref(h), b_backend, b_target,
                                         byref(o), err, len(err))
            errors.raise_for(rc, err.value.decode() or f"backend {backend!r}")
            self.backend = backend
            self.identity = identity
            self._watches: Dict[int, Any] = {}
            self._wlock = threading.Lock()
            # the watch callbacks stay alive until the registry is freed
            self._life, self._fin = attach(self, h.value, _lib.dsys_registry_close,
                                           parent=parent, keep=(self._watches, identity))
        finally:
            if parent is not None:
                parent.leave()

    def _call(self, f: Any, *args: Any) -> None:
        with self._life as p:
            rc = f(p, *args)
            if rc:
                m = _lib.dsys_registry_errmsg(p)
                errors.raise_for(rc, m.decode() if m else None)

    def register(self, id: str, type: str, url: str, *, name: Optional[str] = None,
                 tags: Sequence[str] = (), metadata: Optional[Dict[str, Any]] = None,
                 weight: int = 1) -> None:
        """Register (or replace) an instance."""
        btags = _check.texts(tags, "tags")
        tag_arr = (c_char_p * max(1, len(btags)))(*btags)
        inst = _lib.dsys_instance(
            id=_check.text(id, "id"), type=_check.text(type, "type"),
            url=_check.text(url, "url"), name=_check.opt_text(name, "name"),
            tags=tag_arr, ntags=len(btags),
            metadata=_check.json_object(metadata, "metadata"),
            weight=_check.count(weight, "weight"))
        self._call(_lib.dsys_registry_register, byref(inst))

    def heartbeat(self, id: str) -> None:
        """Refresh an instance's heartbeat (NotFoundError if unknown)."""
        self._call(_lib.dsys_registry_heartbeat, _check.text(id, "id"))

    def deregister(self, id: str) -> None:
        """Remove an instance (NotFoundError if unknown)."""
        self._call(_lib.dsys_registry_deregister, _check.text(id, "id"))

    def lookup(self, type: Optional[str] = None, healthy_only: bool = True) -> List[Instance]:
        """Instances of a service type (None: all), ordered by id."""
        arr = POINTER(_lib.dsys_instance)()
        n = c_size_t()
        self._call(_lib.dsys_registry_lookup, _check.opt_text(type, "type"),
                   int(bool(healthy_only)),
                   byref(arr), byref(n))
        try:
            return _instances(arr, n.value)
        finally:
            _lib.dsys_free(arr)

    def get(self, id: str) -> Instance:
        """One instance by id (NotFoundError)."""
        arr = POINTER(_lib.dsys_instance)()
        self._call(_lib.dsys_registry_get, _check.text(id, "id"), byref(arr))
        try:
            return _instances(arr, 1)[0]
        finally:
            _lib.dsys_free(arr)

    @property
    def index(self) -> int:
        """The current change index."""
        v = c_uint64()
        self._call(_lib.dsys_registry_index, byref(v))
        return v.value

    def wait(self, after: int, timeout_ms: int) -> Optional[int]:
        """Block (GIL released) until the index exceeds ``after``; returns
        the new index, or None on timeout."""
        v = c_uint64()
        try:
            self._call(_lib.dsys_registry_wait,
                       _check.count(after, "after", (1 << 64) - 1),
                       _check.integer(timeout_ms, "timeout_ms"), byref(v))
        except errors.error_class(-6):
            return None
        return v.value

    def sweep(self) -> None:
        """Record TTL transitions now and deliver pending changes."""
        self._call(_lib.dsys_registry_sweep)

    def watch(self, callback: Callable[[Change], None]) -> int:
        """Call ``callback(change)`` for every change from now on; returns a
        watch id for :meth:`unwatch`."""
        _check.function(callback, "callback")

        def run(ud: Any, cp: Any) -> None:
            try:
                with callback_scope():
                    c = cp.contents
                    callback(Change(c.index, CHANGE_KINDS.get(c.kind, str(c.kind)),
                                    c.id.decode(), c.type.decode()))
            except BaseException:
                log.exception("distsys: exception in a registry watch callback")

        cb = _lib.WATCH_FN(run)
        wid = c_uint64()
        self._call(_lib.dsys_registry_watch, cb, None, byref(wid))
        with self._wlock:
            self._watches[wid.value] = cb
        return wid.value

    def unwatch(self, watch_id: int) -> None:
        """Stop a watch; after this returns its callback no longer runs."""
        self._call(_lib.dsys_registry_unwatch,
                   _check.count(watch_id, "watch_id", (1 << 64) - 1))
        with self._wlock:
            self._watches.pop(watch_id, None)
