"""Key-value store (``dsys_store``): JSON values with metadata, versions,
compare-and-swap, atomic increments, TTLs and prefix listing."""
from __future__ import annotations

import json
from ctypes import byref, c_int64, c_size_t, c_void_p, POINTER
from ctypes import sizeof as _sizeof
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, MutableMapping

from . import _check, _lib, errors
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


_ENOTFOUND = -3
_MISSING: Any = object()


class Store(Handle, MutableMapping[str, Any]):
    """A key-value store opened by URL, and a ``MutableMapping`` of key ->
    value.

    ``"memory:"`` is private to this process; ``"sqlite:///abs/file.sqlite"``
    is durable and may be shared by several processes (and with a
    :class:`~distsys.Queue` on the same file).

    Keys are non-empty str; values are any JSON-serializable Python value;
    metadata is a dict. As a mapping: ``store[key]`` (KeyError when absent
    or expired), ``store[key] = value``, ``del store[key]``, ``key in
    store``, ``len(store)``, iteration over the keys in key order (paged
    through the library's list cursor, so any size works) and the usual
    ``get``, ``pop``, ``setdefault``, ``update``, ``keys``, ``items``,
    ``values``. The richer calls return :class:`Item` (metadata, version,
    times): :meth:`item`, :meth:`put`, :meth:`put_many`, :meth:`create`, :meth:`replace`
    (compare-and-swap), :meth:`delete`, :meth:`incr`, :meth:`list`,
    :meth:`scan`.

    Thread-safe: a Store may be used from many threads; ``close()`` waits
    for calls in progress and then frees the handle. Use it as a context
    manager or call ``close()``; an unreferenced Store is closed by the
    garbage collector.

    Example::

        with distsys.Store("memory:") as s:
            s["user:1"] = {"name": "Ada"}
            assert s["user:1"] == {"name": "Ada"}
            item = s.item("user:1")          # value, metadata, version...
            s.replace("user:1", {"name": "Ada L."}, expected_version=item.version)
    """

    def __init__(self, url: str = "memory:", *, full_sync: bool = False,
                 max_value: int = 0) -> None:
        o = _lib.dsys_store_options(size=_sizeof(_lib.dsys_store_options),
                                    full_sync=int(bool(full_sync)),
                                    max_value=_check.count(max_value, "max_value", None))
        h = c_void_p()
        rc = _lib.dsys_store_open(byref(h), _check.text(url, "url"), byref(o))
        errors.raise_for(rc, f"opening {url!r}")
        self.url = url
        self._life, self._fin = attach(self, h.value, _lib.dsys_store_close)

    # -- lifetime --

    def __repr__(self) -> str:
        return f"<distsys.Store {self.url!r}{' closed' if self.closed else ''}>"

    def _run(self, f: Any, *args: Any) -> None:
        """Call f(handle, *args); raise with the store's detailed message."""
        with self._life as p:
            rc = f(p, *args)
            if rc:
                detail = _lib.dsys_store_errmsg(p)
                errors.raise_for(rc, detail.decode() if detail else None)

    def _write(self, f: Any, key: str, value: Any, metadata: Optional[Dict[str, Any]],
               ttl_ms: int, expected_version: int) -> Item:
        w = _lib.dsys_store_write(
            size=_sizeof(_lib.dsys_store_write),
            metadata=_check.json_object(metadata, "metadata"),
            ttl_ms=_check.integer(ttl_ms, "ttl_ms"),
            expected_version=_check.integer(expected_version, "expected_version"))
        out = _lib.item_p()
        self._run(f, _check.text(key, "key"), _check.json_text(value, "value"),
                  byref(w), byref(out))
        return _take_item(out)

    # -- operations returning items --

    def item(self, key: str) -> Item:
        """The item at key (value, metadata, version, times). Raises
        NotFoundError (a LookupError) when absent or expired."""
        out = _lib.item_p()
        self._run(_lib.dsys_store_get, _check.text(key, "key"), byref(out))
        return _take_item(out)

    def get_by_id(self, item_id: int) -> Item:
        """The item with this numeric id. Raises NotFoundError."""
        out = _lib.item_p()
        self._run(_lib.dsys_store_get_by_id, _check.integer(item_id, "item_id"),
                  byref(out))
        return _take_item(out)

    def put(self, key: str, value: Any, *, metadata: Optional[Dict[str, Any]] = None,
            ttl_ms: int = 0) -> Item:
        """Insert or replace; returns the stored item (version +1). A TTL
        of 0 means none."""
        return self._write(_lib.dsys_store_put, key, value, metadata, ttl_ms, 0)

    def put_many(self, entries: Any) -> List[Item]:
        """Insert or replace several items, all or none, in one transaction
        (at most 1000 per call); returns the stored items in order.
        ``entries`` is a mapping of key -> value, or an iterable of
        ``(key, value)`` or ``(key, value, metadata, ttl_ms)`` tuples. A
        key given twice ends with the later value. On error nothing is
        stored and the exception's message names the failing entry."""
        rows: List[Tuple[Any, ...]]
        if isinstance(entries, Mapping):
            rows = [(k, v, None, 0) for k, v in entries.items()]
        else:
            rows = []
            for i, e in enumerate(entries):
                if not isinstance(e, tuple) or len(e) not in (2, 4):
                    raise TypeError(f"entries[{i}] must be a (key, value) or "
                                    f"(key, value, metadata, ttl_ms) tuple")
                rows.append(e if len(e) == 4 else (e[0], e[1], None, 0))
        n = len(rows)
        arr = (_lib.dsys_store_entry * max(n, 1))()
        for i, (k, v, m, t) in enumerate(rows):
            arr[i] = _lib.dsys_store_entry(
                _check.text(k, f"entries[{i}] key"), _check.json_text(v, f"entries[{i}] value"),
                _check.json_object(m, f"entries[{i}] metadata"),
                _check.integer(t, f"entries[{i}] ttl_ms"))
        out = (_lib.item_p * max(n, 1))()
        failed = c_size_t(n)
        with self._life as p:
            rc = _lib.dsys_store_put_many(p, arr, n, out, byref(failed))
            if rc:
                where = (f"entry {failed.value} ({rows[failed.value][0]!r})"
                         if failed.value < n else "the transaction")
                detail = _lib.dsys_store_errmsg(p)
                errors.raise_for(rc, f"put_many: {where}" +
                                 (f": {detail.decode()}" if detail else ""))
        return [_take_item(out[i]) for i in range(n)]

    def create(self, key: str, value: Any, *, metadata: Optional[Dict[str, Any]] = None,
               ttl_ms: int = 0) -> Item:
        """Insert only if absent (atomic across processes); AlreadyExistsError."""
        return self._write(_lib.dsys_store_create, key, value, metadata, ttl_ms, 0)

    def replace(self, key: str, value: Any, *, metadata: Optional[Dict[str, Any]] = None,
                ttl_ms: int = 0, expected_version: int = 0) -> Item:
        """Replace an existing value. With expected_version > 0 it is a
        compare-and-swap (ConflictError on mismatch); NotFoundError if absent.
        metadata None keeps the current metadata; ttl_ms 0 removes a TTL."""
        return self._write(_lib.dsys_store_update, key, value, metadata, ttl_ms,
                           expected_version)

    def delete(self, key: str, expected_version: int = 0) -> None:
        """Delete (NotFoundError; ConflictError with a stale expected_version)."""
        self._run(_lib.dsys_store_delete, _check.text(key, "key"),
                  _check.integer(expected_version, "expected_version"))

    def incr(self, key: str, delta: int = 1) -> int:
        """Atomically add delta to an integer value (created as delta)."""
        r = c_int64()
        self._run(_lib.dsys_store_incr, _check.text(key, "key"),
                  _check.integer(delta, "delta"), byref(r))
        return r.value

    def list(self, prefix: str = "", cursor: Optional[str] = None,
             limit: int = 100) -> Tuple[List[Item], Optional[str]]:
        """One page of items with the key prefix, in key order, and the
        cursor of the next page (None after the last page). limit is
        1..1000."""
        arr = POINTER(_lib.item_p)()
        n = c_size_t()
        nxt = c_void_p()
        self._run(_lib.dsys_store_list, _check.text(prefix, "prefix"),
                  _check.opt_text(cursor, "cursor"),
                  _check.integer(limit, "limit", 1, 1000),
                  byref(arr), byref(n), byref(nxt))
        try:
            items = [Item._from(arr[i]) for i in range(n.value)]
        finally:
            _lib.dsys_item_list_free(arr, n.value)
            next_cursor = _lib.take_string(nxt.value)
        return items, next_cursor

    def scan(self, prefix: str = "", page: int = 100) -> Iterator[Item]:
        """Iterate over every item with the key prefix in key order, page
        by page (``page`` items per library call). Items added or removed
        meanwhile after the current page are seen or not, never twice."""
        _check.text(prefix, "prefix")
        _check.integer(page, "page", 1, 1000)
        return self._scan(prefix, page)

    def _scan(self, prefix: str, page: int) -> Iterator[Item]:
        cursor: Optional[str] = None
        while True:
            items, cursor = self.list(prefix, cursor, page)
            yield from items
            if cursor is None:
                return

    def purge_expired(self) -> int:
        """Remove expired items now; returns how many."""
        n = c_size_t()
        self._run(_lib.dsys_store_purge_expired, byref(n))
        return n.value

    # -- the MutableMapping protocol --

    def __getitem__(self, key: str) -> Any:
        """``store[key]``: the value; KeyError when absent or expired."""
        try:
            return self.item(key).value
        except errors.error_class(_ENOTFOUND):
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: Any) -> None:
        """``store[key] = value``: put (no TTL; metadata kept as given by
        :meth:`put`: none)."""
        self.put(key, value)

    def __delitem__(self, key: str) -> None:
        """``del store[key]``: delete; KeyError when absent."""
        try:
            self.delete(key)
        except errors.error_class(_ENOTFOUND):
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        """``key in store`` (False for a key that is not a str)."""
        if not isinstance(key, str):
            return False
        try:
            self.item(key)
        except errors.error_class(_ENOTFOUND):
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        """The keys in key order, one page of the list cursor at a time."""
        return (it.key for it in self._scan("", 1000))

    def __len__(self) -> int:
        """Number of live items (counts them page by page: O(n))."""
        return sum(1 for _ in self)

    def get(self, key: str, default: Any = None) -> Any:
        """The value at key, or default when absent (Mapping.get)."""
        _check.text(key, "key")
        try:
            return self[key]
        except KeyError:
            return default

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove key and return its value (KeyError or default when absent).
        The read and the delete are one compare-and-swap: a concurrent
        writer makes it retry, so the value returned is the one removed."""
        while True:
            try:
                it = self.item(key)
            except errors.error_class(_ENOTFOUND):
                if default is _MISSING:
                    raise KeyError(key) from None
                return default
            try:
                self.delete(key, it.version)
                return it.value
            except errors.error_class(_ENOTFOUND):
                continue
            except errors.ConflictError:
                continue

    def clear(self) -> None:
        """Delete every item (page by page)."""
        while True:
            items, _ = self.list("", None, 1000)
            if not items:
                return
            for it in items:
                try:
                    self.delete(it.key)
                except errors.error_class(_ENOTFOUND):
                    pass

    # A Store is a handle: equal only to itself (Mapping's __eq__ would
    # compare whole contents, and make the object unhashable).
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def setdefault(self, key: str, default: Any = None) -> Any:
        """The value at key; when absent, store default (atomically, with
        :meth:`create`) and return it."""
        while True:
            try:
                return self[key]
            except KeyError:
                pass
            try:
                self.create(key, default)
                return default
            except errors.AlreadyExistsError:
                continue
