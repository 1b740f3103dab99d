"""Exceptions generated from the library's own error table.

At import, every code from 0 down to ``-(dsys_err_count() - 1)`` gets a
subclass of :class:`DistsysError`, named from the code's symbolic name
(``dsys_err_name``) by this rule:

1. drop the ``DSYS_E`` prefix: ``DSYS_ENOTFOUND`` -> ``NOTFOUND``;
2. split it into words and CamelCase them. Compound names are split with the
   table :data:`WORDS` (``NOTFOUND`` -> ``NotFound``, ``CONNREFUSED`` ->
   ``ConnRefused``); a few terse names are spelled out there too
   (``INVAL`` -> ``InvalidArgument``, ``EXIST`` -> ``AlreadyExists``,
   ``BREAKER`` -> ``BreakerOpen``). Any other name is capitalized as one
   word (a code added to the library later, ``DSYS_EFOO``, becomes
   ``FooError`` without a change here);
3. append ``Error``;
4. if the result is the name of a Python built-in (``TypeError`` for
   ``DSYS_ETYPE``), prefix ``Dsys``: ``DsysTypeError``. No class shadows a
   built-in exception; ``DSYS_ETIMEDOUT`` is ``TimedOutError`` (not
   ``TimeoutError``) and ``DSYS_ECONNREFUSED`` is ``ConnRefusedError``.

A few classes also derive from the matching built-in, so generic handlers
work: ``InvalidArgumentError`` and ``BadJsonError`` are ``ValueError``\\ s,
``NotFoundError`` is a ``LookupError``, ``DsysTypeError`` a ``TypeError``.

Every exception carries ``code`` (the negative number), ``name``
(``"DSYS_ENOTFOUND"``), ``message`` (``dsys_strerror``) and ``detail`` (the
handle's detailed message, when there is one).
"""
from __future__ import annotations

import builtins
from typing import Dict, Optional, Tuple, Type

from . import _lib

__all__ = ["DistsysError", "error_class", "error_classes", "WORDS",
           "class_name_for"]

#: How compound or terse error names are turned into words (rule step 2).
WORDS: Dict[str, str] = {
    "INVAL": "InvalidArgument", "NOMEM": "NoMemory", "NOTFOUND": "NotFound",
    "EXIST": "AlreadyExists", "TIMEDOUT": "TimedOut",
    "CONNREFUSED": "ConnRefused", "CONNRESET": "ConnReset",
    "PROTO": "Protocol", "TOOBIG": "TooBig", "NOTSUP": "NotSupported",
    "STATE": "InvalidState", "AGAIN": "TryAgain", "BADJSON": "BadJson",
    "UNAVAIL": "Unavailable", "BREAKER": "BreakerOpen",
    "RATELIMIT": "RateLimited", "ADDRINUSE": "AddrInUse",
    "PERM": "PermissionDenied", "HTTP": "Http", "DB": "Db", "IO": "Io",
    "URL": "Url", "NOSPC": "NoSpace",
}

_BUILTIN_BASES: Dict[str, Tuple[type, ...]] = {
    "DSYS_EINVAL": (ValueError,), "DSYS_EBADJSON": (ValueError,),
    "DSYS_ENOTFOUND": (LookupError,), "DSYS_ETYPE": (TypeError,),
}


class DistsysError(Exception):
    """Base of every error raised by the library.

    Attributes:
        code: the negative DSYS_E... code.
        name: its symbolic name, e.g. ``"DSYS_ENOTFOUND"``.
        message: the library's message for the code (``dsys_strerror``).
        detail: extra detail (e.g. the store's last SQLite message), or None.
    """

    code: int = -31
    name: str = "DSYS_EINTERNAL"

    def __init__(self, code: Optional[int] = None,
                 detail: Optional[str] = None) -> None:
        if code is None:
            code = type(self).code
        self.code = code
        self.name = _lib.dsys_err_name(code).decode()
        self.message = _lib.dsys_strerror(code).decode()
        self.detail = detail or None
        text = f"{self.name}: {self.message}"
        if self.detail:
            text += f" ({self.detail})"
        super().__init__(text)

    def __reduce__(self) -> Tuple[Type["DistsysError"], Tuple[int, Optional[str]]]:  # picklable (multiprocessing)
        return (error_class(self.code), (self.code, self.detail))


def class_name_for(err_name: str) -> str:
    """The exception class name for a symbolic error name (see the rule)."""
    suffix = err_name[6:] if err_name.startswith("DSYS_E") else err_name
    words = WORDS.get(suffix, suffix.capitalize())
    cls = words + "Error"
    if hasattr(builtins, cls):
        cls = "Dsys" + cls
    return cls


def _generate() -> Tuple[Dict[int, Type[DistsysError]], Dict[str, Type[DistsysError]]]:
    by_code: Dict[int, Type[DistsysError]] = {}
    by_name: Dict[str, Type[DistsysError]] = {}
    for i in range(1, _lib.dsys_err_count()):
        code = -i
        ename = _lib.dsys_err_name(code).decode()
        cname = class_name_for(ename)
        doc = f"{ename} ({code}): {_lib.dsys_strerror(code).decode()}."
        bases = (DistsysError,) + _BUILTIN_BASES.get(ename, ())
        cls = type(cname, bases, {"code": code, "name": ename, "__doc__": doc,
                                  "__module__": __name__})
        by_code[code] = cls
        by_name[cname] = cls
    return by_code, by_name


_BY_CODE, _BY_NAME = _generate()
globals().update(_BY_NAME)
__all__ += sorted(_BY_NAME)


def error_class(code: int) -> Type[DistsysError]:
    """The exception class of a code (DistsysError for an unknown code)."""
    return _BY_CODE.get(code, DistsysError)


def error_classes() -> Dict[str, Type[DistsysError]]:
    """All generated classes by class name."""
    return dict(_BY_NAME)


def raise_for(code: int, detail: Optional[str] = None) -> None:
    """Raise the exception of a nonzero code (internal helper)."""
    if code:
        raise error_class(code)(code, detail)


# Names a type checker can see (assigned above from the library's table).
InvalidArgumentError: Type[DistsysError]
NoMemoryError: Type[DistsysError]
NotFoundError: Type[DistsysError]
AlreadyExistsError: Type[DistsysError]
ConflictError: Type[DistsysError]
TimedOutError: Type[DistsysError]
ConnRefusedError: Type[DistsysError]
ConnResetError: Type[DistsysError]
ProtocolError: Type[DistsysError]
HttpError: Type[DistsysError]
ClosedError: Type[DistsysError]
BusyError: Type[DistsysError]
IoError: Type[DistsysError]
TooBigError: Type[DistsysError]
NotSupportedError: Type[DistsysError]
InvalidStateError: Type[DistsysError]
TryAgainError: Type[DistsysError]
CanceledError: Type[DistsysError]
BadJsonError: Type[DistsysError]
AuthError: Type[DistsysError]
LeaseError: Type[DistsysError]
UnavailableError: Type[DistsysError]
BreakerOpenError: Type[DistsysError]
RateLimitedError: Type[DistsysError]
AddrInUseError: Type[DistsysError]
PermissionDeniedError: Type[DistsysError]
DbError: Type[DistsysError]
StoppedError: Type[DistsysError]
ResolveError: Type[DistsysError]
RangeError: Type[DistsysError]
InternalError: Type[DistsysError]
BudgetError: Type[DistsysError]
DsysTypeError: Type[DistsysError]
SchemeError: Type[DistsysError]
UrlError: Type[DistsysError]
