"""Key-value store (``dsys_store``): JSON values with metadata, versions,
compare-and-swap, atomic increments, TTLs and prefix listing."""
from __future__ import annotations

import json
from ctypes import byref, c_int64, c_size_t, c_void_p, POINTER
from ctypes import sizeof as _sizeof
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import _lib, errors
from ._handle import attach, Handle

__all__ = ["Store", "Item"]


@dataclass(frozen=True)
class Item:
    """One stored item (a copy; the library's block is already freed).

    ``value`` and ``metadata`` are the decoded JSON; ``value_json`` is the
    stored text. Times are wall-clock ms since the epoch (``expires_at`` 0:
    no TTL).
    """

    id: int
    key: str
    value: Any
    value_json: str
    metadata: Dict[str, Any]
    version: int
    created_at: int
    updated_at: int
    expires_at: int

    @staticmethod
    def _from(p: Any) -> "Item":
        it = p.contents
        vj = it.value.decode()
        return Item(it.id, it.key.decode(), json.loads(vj), vj,
                    json.loads(it.metadata.decode()), it.version,
                    it.created_at, it.updated_at, it.expires_at)


def _take_item(p: Any) -> Item:
    try:
        return Item._from(p)
    finally:
        _lib.dsys_item_free(p)


def _enc(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Store(Handle):
    """A key-value store opened by URL.

    ``"memory:"`` is private to this process; ``"sqlite:///abs/file.sqlite"``
    is durable and may be shared by several processes (and with a
    :class:`~distsys.Queue` on the same file).

    Values are any JSON-serializable Python value; metadata is a dict.
    Thread-safe: a Store may be used from many threads; ``close()`` waits
    for calls in progress and then frees the handle. Use it as a context
    manager or call ``close()``; an unreferenced Store is closed by the
    garbage collector.

    Example::

        with distsys.Store("memory:") as s:
            s.put("user:1", {"name": "Ada"})
            assert s.get("user:1").value == {"name": "Ada"}
    """

    def __init__(self, url: str = "memory:", *, full_sync: bool = False,
                 max_value: int = 0) -> None:
        o = _lib.dsys_store_options(size=_sizeof(_lib.dsys_store_options),
                                    full_sync=int(full_sync),
                                    max_value=max_value)
        h = c_void_p()
        rc = _lib.dsys_store_open(byref(h), url.encode(), byref(o))
        errors.raise_for(rc, f"opening {url!r}")
        self.url = url
        self._life, self._fin = attach(self, h.value, _lib.dsys_store_close)

    # -- lifetime --

    def __repr__(self) -> str:
        return f"<distsys.Store {self.url!r}{' closed' if self.closed else ''}>"

    def _check(self, rc: int, p: int) -> None:
        if rc:
            detail = _lib.dsys_store_errmsg(p)
            errors.raise_for(rc, detail.decode() if detail else None)

    def _write(self, f: Any, key: str, value: Any, metadata: Optional[Dict[str, Any]],
               ttl_ms: int, expected_version: int) -> Item:
        w = _lib.dsys_store_write(
            size=_sizeof(_lib.dsys_store_write),
            metadata=None if metadata is None else _enc(metadata),
            ttl_ms=ttl_ms, expected_version=expected_version)
        out = _lib.item_p()
        p = self._life.enter()
        try:
            self._check(f(p, key.encode(), _enc(value), byref(w), byref(out)), p)
        finally:
            self._life.leave()
        return _take_item(out)

    # -- operations --
    def get(self, key: str) -> Item:
        """The item at key. Raises NotFoundError when absent or expired."""
        out = _lib.item_p()
        p = self._life.enter()
        try:
            self._check(_lib.dsys_store_get(p, key.encode(), byref(out)), p)
        finally:
            self._life.leave()
        return _take_item(out)

    def get_by_id(self, item_id: int) -> Item:
        """The item with this numeric id. Raises NotFoundError."""
        out = _lib.item_p()
        p = self._life.enter()
        try:
            self._check(_lib.dsys_store_get_by_id(p, item_id, byref(out)), p)
        finally:
            self._life.leave()
        return _take_item(out)

    def put(self, key: str, value: Any, *, metadata: Optional[Dict[str, Any]] = None,
            ttl_ms: int = 0) -> Item:
        """Insert or replace; returns the stored item (version +1)."""
        return self._write(_lib.dsys_store_put, key, value, metadata, ttl_ms, 0)

    def create(self, key: str, value: Any, *, metadata: Optional[Dict[str, Any]] = None,
               ttl_ms: int = 0) -> Item:
        """Insert only if absent (atomic across processes); AlreadyExistsError."""
        return self._write(_lib.dsys_store_create, key, value, metadata, ttl_ms, 0)

    def update(self, key: str, value: Any, *, metadata: Optional[Dict[str, Any]] = None,
               ttl_ms: int = 0, expected_version: int = 0) -> Item:
        """Replace an existing value. With expected_version > 0 it is a
        compare-and-swap (ConflictError on mismatch); NotFoundError if absent.
        metadata None keeps the current metadata."""
        return self._write(_lib.dsys_store_update, key, value, metadata, ttl_ms,
                           expected_version)

    def delete(self, key: str, expected_version: int = 0) -> None:
        """Delete (NotFoundError; ConflictError with a stale expected_version)."""
        p = self._life.enter()
        try:
            self._check(_lib.dsys_store_delete(p, key.encode(), expected_version), p)
        finally:
            self._life.leave()

    def incr(self, key: str, delta: int = 1) -> int:
        """Atomically add delta to an integer value (created as delta)."""
        r = c_int64()
        p = self._life.enter()
        try:
            self._check(_lib.dsys_store_incr(p, key.encode(), delta, byref(r)), p)
        finally:
            self._life.leave()
        return r.value

    def list(self, prefix: str = "", cursor: Optional[str] = None,
             limit: int = 100) -> Tuple[List[Item], Optional[str]]:
        """One page of items with the key prefix, in key order, and the
        cursor of the next page (None after the last page)."""
        arr = POINTER(_lib.item_p)()
        n = c_size_t()
        nxt = c_void_p()
        p = self._life.enter()
        try:
            self._check(_lib.dsys_store_list(
                p, prefix.encode(), None if cursor is None else cursor.encode(),
                limit, byref(arr), byref(n), byref(nxt)), p)
        finally:
            self._life.leave()
        try:
            items = [Item._from(arr[i]) for i in range(n.value)]
        finally:
            _lib.dsys_item_list_free(arr, n.value)
            next_cursor = _lib.take_string(nxt.value)
        return items, next_cursor

    def scan(self, prefix: str = "", page: int = 100) -> Iterator[Item]:
        """Iterate over every item with the key prefix, page by page."""
        cursor: Optional[str] = None
        while True:
            items, cursor = self.list(prefix, cursor, page)
            yield from items
            if cursor is None:
                return

    def purge_expired(self) -> int:
        """Remove expired items now; returns how many."""
        n = c_size_t()
        p = self._life.enter()
        try:
            self._check(_lib.dsys_store_purge_expired(p, byref(n)), p)
        finally:
            self._life.leave()
        return n.value

    def __getitem__(self, key: str) -> Any:
        """``store[key]``: the value (NotFoundError, a LookupError, if absent)."""
        return self.get(key).value

    def __setitem__(self, key: str, value: Any) -> None:
        """``store[key] = value``: put."""
        self.put(key, value)

    def __delitem__(self, key: str) -> None:
        """``del store[key]``: delete."""
        self.delete(key)

    def __contains__(self, key: str) -> bool:
        """``key in store``."""
        try:
            self.get(key)
        except errors.error_class(-3):
            return False
        return True
