"""Lifetime of C handles (internal).

Each Python object owning a C handle keeps a :class:`Life`. Calls enter and
leave it; ``close()`` (explicit, by a context manager, by a parent's close,
or by the garbage collector through ``weakref.finalize``) marks it closed so
new calls raise ClosedError, closes dependents first (a Worker before its
Queue, an Upstream before its Registry), waits until calls in progress on
other threads have returned, and only then frees the C handle. Closing twice
is a no-op. Dependents hold a strong reference to what they depend on, so
the garbage collector can never free a parent first.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import errors

_tls = threading.local()


def in_callback() -> bool:
    """True on a thread that is running a library callback right now."""
    return getattr(_tls, "depth", 0) > 0


class callback_scope:
    """Marks the current thread as running a library callback."""

    __slots__ = ()

    def __enter__(self) -> None:
        _tls.depth = getattr(_tls, "depth", 0) + 1

    def __exit__(self, *exc: Any) -> None:
        _tls.depth -= 1


class Life:
    """One C handle's lifetime. ``with life as p:`` holds the handle (p, the
    C pointer) for the duration of a call: close() waits for it to end."""

    __slots__ = ("ptr", "cond", "busy", "closed", "children", "__weakref__")

    def __init__(self, ptr: int) -> None:
        self.ptr: Optional[int] = ptr
        self.cond = threading.Condition(threading.Lock())
        self.busy = 0
        self.closed = False
        # finalizers of dependents (weakref.finalize objects), by id
        self.children: Dict[int, Callable[[], Any]] = {}

    def enter(self) -> int:
        with self.cond:
            if self.closed:
                raise errors.error_class(-11)(-11, "handle is closed")
            self.busy += 1
            return self.ptr  # type: ignore[return-value]

    def leave(self) -> None:
        with self.cond:
            self.busy -= 1
            if not self.busy:
                self.cond.notify_all()

    def __enter__(self) -> int:
        return self.enter()

    def __exit__(self, *exc: Any) -> None:
        self.leave()

    def add_child(self, fin: Callable[[], Any]) -> None:
        with self.cond:
            if self.closed:
                raise errors.error_class(-11)(-11, "parent is closed")
            self.children[id(fin)] = fin

    def drop_child(self, fin: Callable[[], Any]) -> None:
        with self.cond:
            self.children.pop(id(fin), None)

    def shutdown(self, free: Callable[[int], None]) -> None:
        """Close: refuse new calls, close dependents, drain, free."""
        with self.cond:
            if self.closed:
                return
            self.closed = True
            kids = list(self.children.values())
            self.children.clear()
        for k in kids:
            k()
        with self.cond:
            while self.busy:
                self.cond.wait()
            p, self.ptr = self.ptr, None
        if p:
            free(p)


def _final(life: Life, free: Callable[[int], None], parent: Optional[Life],
           me: List[Any], keep: Any) -> None:
    # keep: objects (ctypes callbacks, buffers, parents) that must stay
    # alive until the C handle is freed. Dropped when this returns.
    life.shutdown(free)
    if parent is not None and me:
        parent.drop_child(me[0])


def attach(owner: Any, ptr: Optional[int], free: Callable[[int], None],
           parent: Optional[Life] = None,
           keep: Any = None) -> "Tuple[Life, weakref.finalize]":
    """Give owner a Life for ptr (the handle a successful open returned,
    never NULL) and a finalizer that frees it exactly once."""
    if not ptr:
        raise errors.error_class(-31)(-31, "the library returned a NULL handle")
    life = Life(ptr)
    me: List[Any] = []
    fin = weakref.finalize(owner, _final, life, free, parent, me, keep)
    me.append(fin)
    if parent is not None:
        try:
            parent.add_child(fin)
        except BaseException:
            fin()
            raise
    return life, fin


def handling() -> List[Tuple[Optional["Life"], Optional["Life"]]]:
    """(worker Life, queue Life) pairs whose handler runs on this thread."""
    h = getattr(_tls, "handling", None)
    if h is None:
        h = _tls.handling = []
    return h


class Handle:
    """Base of the classes that own a library handle: ``close()``,
    ``closed``, use as a context manager, and ``_call()``, which holds the
    handle while a library function runs and raises for its error code.
    Subclasses set ``self._life, self._fin = attach(...)``."""

    _life: Life
    _fin: Callable[[], None]

    def close(self) -> None:
        """Free the library handle (idempotent); calls in progress on other
        threads finish first."""
        self._fin()

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._life.closed

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, f: Any, *args: Any) -> None:
        with self._life as p:
            rc = f(p, *args)
        errors.raise_for(rc)
