"""Argument validation shared by the whole public API (internal).

ctypes turns a wrong Python type into ``AttributeError`` (``5 .encode()``)
or ``ctypes.ArgumentError``, and silently truncates integers stored in
struct fields. Every public function converts its arguments here instead,
so that a wrong type raises ``TypeError`` and a bad value ``ValueError``
(``InvalidArgumentError`` is one), each naming the argument.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional, Sequence, Union

from . import errors

_EINVAL = -1
INT64 = (-(1 << 63), (1 << 63) - 1)
UINT32 = (0, (1 << 32) - 1)
INT32 = (-(1 << 31), (1 << 31) - 1)

PathArg = Union[str, "os.PathLike[str]", bytes]


def _tname(v: Any) -> str:
    return type(v).__name__


def text(v: Any, what: str) -> bytes:
    """A str argument as UTF-8 bytes for C. A NUL byte raises
    InvalidArgumentError: C would see only the part before it."""
    if not isinstance(v, str):
        raise TypeError(f"{what} must be str, not {_tname(v)}")
    b = v.encode()
    if b"\0" in b:
        errors.raise_for(_EINVAL, f"{what} contains a NUL byte")
    return b


def opt_text(v: Any, what: str) -> Optional[bytes]:
    """As :func:`text`, with None passed through (C's NULL)."""
    return None if v is None else text(v, what)


def texts(v: Any, what: str) -> "list[bytes]":
    """A sequence of str (a lone str is not taken as its characters)."""
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise TypeError(f"{what} must be a sequence of str, not {_tname(v)}")
    return [text(x, f"{what}[{i}]") for i, x in enumerate(v)]


def blob(v: Any, what: str) -> bytes:
    """bytes, bytearray, memoryview or str (encoded as UTF-8)."""
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise TypeError(f"{what} must be bytes or str, not {_tname(v)}")


def integer(v: Any, what: str, lo: Optional[int] = INT64[0],
            hi: Optional[int] = INT64[1]) -> int:
    """An int in [lo, hi] (bool is refused: ``True`` as a count is a bug)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{what} must be int, not {_tname(v)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        lo_s = "" if lo is None else f"{lo} <= "
        hi_s = "" if hi is None else f" <= {hi}"
        # InvalidArgumentError is a ValueError, like the library's own checks
        errors.raise_for(_EINVAL, f"{what} must be {lo_s}{what}{hi_s}, got {v}")
    return v


def count(v: Any, what: str, hi: Optional[int] = UINT32[1]) -> int:
    """A non-negative int (sizes, counts, milliseconds)."""
    return integer(v, what, 0, hi)


def number(v: Any, what: str) -> float:
    """An int or float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{what} must be a number, not {_tname(v)}")
    return float(v)


def json_text(v: Any, what: str, ascii: bool = True) -> bytes:
    """A JSON-serializable value as compact JSON bytes (ascii False: UTF-8
    text instead of \\u escapes)."""
    try:
        return json.dumps(v, separators=(",", ":"), ensure_ascii=ascii).encode()
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON-serializable: {e}") from None


def json_object(v: Any, what: str) -> Optional[bytes]:
    """None or a dict (JSON object) as JSON bytes."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise TypeError(f"{what} must be a dict, not {_tname(v)}")
    return json_text(v, what)


def function(v: Any, what: str) -> Callable[..., Any]:
    """A callable."""
    if not callable(v):
        raise TypeError(f"{what} must be callable, not {_tname(v)}")
    return v  # type: ignore[no-any-return]


def choice(v: Any, what: str, allowed: Sequence[str]) -> str:
    """One of a fixed set of names."""
    if not isinstance(v, str):
        raise TypeError(f"{what} must be str, not {_tname(v)}")
    if v not in allowed:
        errors.raise_for(_EINVAL, f"{what} must be one of {sorted(allowed)}, got {v!r}")
    return v


def path(v: Any, what: str) -> bytes:
    """A file path (str, bytes or os.PathLike) as bytes."""
    if not isinstance(v, (str, bytes, os.PathLike)):
        raise TypeError(f"{what} must be a path (str, bytes or os.PathLike), "
                        f"not {_tname(v)}")
    b = os.fsencode(v)
    if b"\0" in b:
        errors.raise_for(_EINVAL, f"{what} contains a NUL byte")
    return b
