"""Writing an HTTP service in Python on the library's server
(``dsys_server``): decorator routes, requests and responses, ``/health``,
``/ready`` and ``/metrics``, registration with a registry, graceful drain.

Threading model: handlers run on the server's threads (libmicrohttpd's
pool, ``threads`` of them), never on the thread that started the service.
ctypes takes the GIL for each call, so one handler at a time runs Python
code; a handler that waits (I/O, ``Upstream.call``, ``time.sleep``, the
store) releases the GIL and lets the others run. A connection is served by
the server thread that accepted it: a handler that blocks holds that
thread and every connection it serves, so size ``threads`` for the
blocking the handlers do. Everything the library
hands a handler is valid only while it runs: a :class:`Request` raises
InvalidStateError when used after its handler returned.
"""
from __future__ import annotations

import inspect
import json as _json
import logging
import os
import re
import signal
import threading
import time
import weakref
from ctypes import (byref, c_char_p, c_double, c_size_t, c_uint64,
                    c_void_p, sizeof, string_at)
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sequence, Tuple, Union)
from urllib.parse import parse_qsl

from . import _check, _lib, errors
from ._handle import attach, callback_scope, Handle, in_callback
from .registry import Registry

__all__ = ["Service", "App", "Request", "Response", "HTTPError", "Metrics",
           "Counter", "Gauge", "Histogram", "Registration"]

log = logging.getLogger("distsys")

_EINVAL, _ESTATE, _ECLOSED = -1, -16, -11
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "*")
_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}$")


class HTTPError(Exception):
    """Raise in a handler to answer ``status`` with the JSON error body
    ``{"error": message, "code": code}`` (the library's error format)."""

    def __init__(self, status: int, message: str = "", code: Optional[str] = None) -> None:
        self.status = _check.integer(status, "status", 100, 599)
        self.message = message or f"HTTP {status}"
        self.code = code
        super().__init__(f"{status} {self.message}")


class _Headers(Mapping[str, str]):
    """Request headers: a read-only, case-insensitive mapping (the first
    value of a repeated header; :meth:`getall` for every value)."""

    __slots__ = ("_d", "_all")

    def __init__(self, pairs: List[Tuple[str, str]]) -> None:
        self._all = pairs
        self._d: Dict[str, str] = {}
        for k, v in pairs:
            self._d.setdefault(k.lower(), v)

    def __getitem__(self, name: str) -> str:
        return self._d[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._d

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def getall(self, name: str) -> List[str]:
        """Every value of a header, in order."""
        n = name.lower()
        return [v for k, v in self._all if k.lower() == n]

    def __repr__(self) -> str:
        return f"Headers({self._all!r})"


def _s(b: Optional[bytes]) -> str:
    return "" if b is None else b.decode("utf-8", "replace")


class Request:
    """One request, read from the library while its handler runs.

    Attributes are read on first use and cached: ``method``, ``path``
    (percent-decoded, without the query), ``target`` (raw), ``params``
    (route parameters), ``query`` (first value per name; ``query_list``
    for all pairs), ``headers`` (case-insensitive), ``body`` (bytes),
    ``text``, :meth:`json`, ``id`` (X-Request-Id), ``trace_id``,
    ``traceparent`` (send it on calls made for this request),
    ``remote_addr``.
    """

    __slots__ = ("_p", "_cache", "params")

    def __init__(self, p: int, params: Dict[str, str]) -> None:
        self._p: Optional[int] = p
        self._cache: Dict[str, Any] = {}
        #: route parameters by name ({id} in the pattern), decoded
        self.params = params

    def _ptr(self) -> int:
        if self._p is None:
            raise errors.error_class(_ESTATE)(
                _ESTATE, "Request used after its handler returned")
        return self._p

    def _str(self, name: str, f: Any) -> str:
        p = self._ptr()
        c = self._cache
        if name not in c:
            c[name] = _s(f(p))
        return c[name]  # type: ignore[no-any-return]

    @property
    def method(self) -> str:
        """"GET", "POST", ..."""
        return self._str("method", _lib.dsys_request_method)

    @property
    def path(self) -> str:
        """The percent-decoded path without the query."""
        return self._str("path", _lib.dsys_request_path)

    @property
    def target(self) -> str:
        """The raw request target, e.g. "/a%20b?x=1"."""
        return self._str("target", _lib.dsys_request_target)

    @property
    def query_string(self) -> str:
        """The raw query string without "?"."""
        return self._str("query_string", _lib.dsys_request_query)

    @property
    def query_list(self) -> List[Tuple[str, str]]:
        """Every decoded (name, value) pair of the query, in order."""
        self._ptr()
        if "query_list" not in self._cache:
            self._cache["query_list"] = parse_qsl(self.query_string,
                                                  keep_blank_values=True)
        return self._cache["query_list"]  # type: ignore[no-any-return]

    @property
    def query(self) -> Dict[str, str]:
        """The query as a dict: the first value of each name."""
        self._ptr()
        if "query" not in self._cache:
            d: Dict[str, str] = {}
            for k, v in self.query_list:
                d.setdefault(k, v)
            self._cache["query"] = d
        return self._cache["query"]  # type: ignore[no-any-return]

    @property
    def headers(self) -> _Headers:
        """The request headers (case-insensitive mapping)."""
        p = self._ptr()
        if "headers" not in self._cache:
            pairs = []
            for i in range(_lib.dsys_request_header_count(p)):
                k, v = c_char_p(), c_char_p()
                if not _lib.dsys_request_header_at(p, i, byref(k), byref(v)):
                    pairs.append((_s(k.value), _s(v.value)))
            self._cache["headers"] = _Headers(pairs)
        return self._cache["headers"]  # type: ignore[no-any-return]

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """One header (first value), without reading them all."""
        v = _lib.dsys_request_header(self._ptr(), _check.text(name, "name"))
        return default if v is None else _s(v)

    @property
    def body(self) -> bytes:
        """The request body."""
        p = self._ptr()
        if "body" not in self._cache:
            n = c_size_t()
            bp = _lib.dsys_request_body(p, byref(n))
            self._cache["body"] = string_at(bp, n.value) if bp and n.value else b""
        return self._cache["body"]  # type: ignore[no-any-return]

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (invalid bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON; an empty or malformed body raises
        HTTPError(400), so the client gets a 400 answer."""
        try:
            return _json.loads(self.body)
        except ValueError as e:
            raise HTTPError(400, f"request body is not JSON: {e}", "bad_json") from None

    @property
    def id(self) -> str:
        """The request id (X-Request-Id, echoed on the response)."""
        return self._str("id", _lib.dsys_request_id)

    @property
    def trace_id(self) -> str:
        """The 32-hex W3C trace id."""
        return self._str("trace_id", _lib.dsys_request_trace_id)

    @property
    def traceparent(self) -> str:
        """The traceparent to send on calls made for this request."""
        return self._str("traceparent", _lib.dsys_request_traceparent)

    @property
    def remote_addr(self) -> str:
        """The client address ("127.0.0.1", "unix", "inproc")."""
        return self._str("remote_addr", _lib.dsys_request_remote_addr)

    def __repr__(self) -> str:
        if self._p is None:
            return "<distsys.Request (finished)>"
        return f"<distsys.Request {self.method} {self.target}>"


class Response:
    """An answer: ``status``, ``headers``, and a body (bytes), or a
    stream of chunks (:meth:`stream`).

    A handler may also return a plain value, converted as follows: a dict
    or list -> JSON 200; str -> text/plain; bytes -> application/
    octet-stream; None -> 204; ``(value, status)`` or ``(value, status,
    headers)`` -> that value with that status and headers.
    """

    __slots__ = ("status", "headers", "body", "content_type", "chunks")

    def __init__(self, body: Union[bytes, str] = b"", status: int = 200,
                 headers: Optional[Mapping[str, str]] = None,
                 content_type: Optional[str] = None) -> None:
        self.status = _check.integer(status, "status", 100, 599)
        if headers is not None and not isinstance(headers, Mapping):
            raise TypeError(f"headers must be a mapping, not {type(headers).__name__}")
        self.headers: Dict[str, str] = dict(headers or {})
        self.content_type: Optional[str]
        if isinstance(body, str):
            self.body = body.encode()
            self.content_type = content_type or "text/plain; charset=utf-8"
        else:
            self.body = _check.blob(body, "body")
            self.content_type = content_type
        self.chunks: Optional[Iterable[Union[bytes, str]]] = None

    @classmethod
    def json(cls, data: Any, status: int = 200,
             headers: Optional[Mapping[str, str]] = None) -> "Response":
        """A JSON answer (``application/json``)."""
        return cls(_check.json_text(data, "data", ascii=False), status, headers,
                   "application/json")

    @classmethod
    def stream(cls, chunks: Iterable[Union[bytes, str]], status: int = 200,
               content_type: str = "application/octet-stream",
               headers: Optional[Mapping[str, str]] = None) -> "Response":
        """A streamed answer (chunked): the headers are sent at once, then
        each chunk as the iterable yields it, on the handler's thread
        (a long stream holds one server thread). Writes never block: what
        the client has not read yet is queued in memory, so a producer
        faster than the client grows memory. A client that goes away ends
        the iteration (the generator is closed)."""
        r = cls(b"", status, headers, content_type)
        if not isinstance(chunks, Iterable):
            raise TypeError(f"chunks must be iterable, not {type(chunks).__name__}")
        r.chunks = chunks
        return r

    def __repr__(self) -> str:
        return f"<distsys.Response {self.status} {self.content_type}>"


_Handler = Callable[..., Any]


def _to_response(v: Any) -> Response:
    if isinstance(v, Response):
        return v
    if isinstance(v, tuple):
        if len(v) not in (2, 3):
            raise TypeError("a handler's tuple is (value, status) or (value, status, headers)")
        r = _to_response(v[0])
        r.status = _check.integer(v[1], "status", 100, 599)
        if len(v) == 3:
            r.headers.update(v[2])
        return r
    if v is None:
        return Response(b"", 204)
    if isinstance(v, (str, bytes, bytearray, memoryview)):
        return Response(v if isinstance(v, str) else bytes(v), 200, None,
                        None if isinstance(v, str) else "application/octet-stream")
    return Response.json(v)


def _send(p: int, r: Response, started: List[bool]) -> None:
    """Answer; started[0] becomes True once the library owns the answer
    (after that, the request must not be answered again)."""
    for k, v in r.headers.items():
        errors.raise_for(_lib.dsys_response_header(
            p, _check.text(k, "header name"), _check.text(str(v), f"header {k}")))
    ct = None if r.content_type is None else r.content_type.encode()
    started[0] = True
    if r.chunks is None:
        rc = _lib.dsys_respond(p, r.status, ct, r.body, len(r.body))
        if rc not in (0, _ECLOSED):  # ECLOSED: the server stopped; released anyway
            errors.raise_for(rc)
        return
    errors.raise_for(_lib.dsys_respond_stream(p, r.status, ct))
    it = iter(r.chunks)
    try:
        for chunk in it:
            b = _check.blob(chunk, "stream chunk")
            if b and _lib.dsys_stream_write(p, b, len(b)) == _ECLOSED:
                break  # the client went away or the server stops
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
        _lib.dsys_stream_end(p)


def _pattern(pattern: str) -> Tuple[bytes, List[str], Optional[str]]:
    """Translate "/items/{id}" (or the library's "/items/:id") into the
    library's pattern; returns it, the parameter names, and the name the
    trailing rest-of-path parameter ("{name:path}" or "*") is given."""
    _check.text(pattern, "pattern")
    if not pattern.startswith("/"):
        errors.raise_for(_EINVAL, f"pattern must start with '/': {pattern!r}")
    segs = pattern.split("/")
    out, names, rest = [], [], None
    for i, seg in enumerate(segs):
        m = _PARAM.match(seg)
        last = i == len(segs) - 1
        if m and m.group(2):
            if not last:
                errors.raise_for(_EINVAL, f"{{{m.group(1)}:path}} must be the last segment")
            out.append("*")
            rest = m.group(1)
        elif m:
            out.append(":" + m.group(1))
            names.append(m.group(1))
        elif seg.startswith(":"):
            out.append(seg)
            names.append(seg[1:])
        elif seg == "*" and last:
            out.append("*")
            rest = "*"
        else:
            if "{" in seg or "}" in seg:
                errors.raise_for(_EINVAL, f"bad route segment {seg!r} in {pattern!r}")
            out.append(seg)
    return "/".join(out).encode(), names, rest


def _kwargs_for(fn: _Handler, names: Sequence[str]) -> List[str]:
    """The route parameters to pass to fn as keyword arguments: those its
    signature names (all of them when it takes **kwargs)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    ps = sig.parameters
    if any(p.kind == p.VAR_KEYWORD for p in ps.values()):
        return list(names)
    return [n for n in names if n in ps and ps[n].kind in (
        inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]


# ---- metrics ----

class _Series:
    __slots__ = ("_m", "_h")

    def __init__(self, m: "Metrics", h: int) -> None:
        self._m, self._h = m, h

    def _run(self, f: Any, *a: Any) -> Any:
        with self._m._life:
            return f(self._h, *a)


class Counter(_Series):
    """A counter series (monotonic); updates are lock-free atomics in C."""

    __slots__ = ()

    def inc(self, n: int = 1) -> None:
        """Add n (>= 0)."""
        self._run(_lib.dsys_counter_add, _check.count(n, "n", (1 << 64) - 1))

    @property
    def value(self) -> int:
        """The current value."""
        return int(self._run(_lib.dsys_counter_value))


class Gauge(_Series):
    """A gauge series."""

    __slots__ = ()

    def set(self, v: float) -> None:
        """Set the value."""
        self._run(_lib.dsys_gauge_set, _check.number(v, "v"))

    def add(self, v: float) -> None:
        """Add v (may be negative)."""
        self._run(_lib.dsys_gauge_add, _check.number(v, "v"))

    @property
    def value(self) -> float:
        """The current value."""
        return float(self._run(_lib.dsys_gauge_value))


class Histogram(_Series):
    """A histogram series."""

    __slots__ = ()

    def observe(self, v: float) -> None:
        """Record one observation."""
        self._run(_lib.dsys_histogram_observe, _check.number(v, "v"))

    def time(self) -> "_Timer":
        """``with h.time():`` observes the block's duration in seconds."""
        return _Timer(self)

    @property
    def count(self) -> int:
        """Number of observations."""
        n = c_uint64()
        self._run(_lib.dsys_histogram_read, 0, None, byref(n), None)
        return n.value

    @property
    def sum(self) -> float:
        """Sum of the observations."""
        s = c_double()
        self._run(_lib.dsys_histogram_read, 0, None, None, byref(s))
        return s.value


class _Timer:
    __slots__ = ("_h", "_t0")

    def __init__(self, h: Histogram) -> None:
        self._h, self._t0 = h, 0.0

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self._h.observe(time.perf_counter() - self._t0)


class Metrics(Handle):
    """A metrics registry (``dsys_metrics``), rendered in the Prometheus
    text format. A :class:`Service` has one (``service.metrics``) that
    also holds the per-route request counts and latencies of its server
    and the process figures, served at ``GET /metrics``.

    ``counter``/``gauge``/``histogram`` resolve one series (family name +
    label values), creating it on first use; keep the returned object and
    update it (lock-free in C). A family's type, help and label names are
    fixed by its first use (DsysTypeError when they differ later).
    """

    def __init__(self) -> None:
        h = c_void_p()
        errors.raise_for(_lib.dsys_metrics_new(byref(h)))
        self._life, self._fin = attach(self, h.value, _lib.dsys_metrics_free)

    def _resolve(self, f: Any, name: str, help: str,
                 labels: Optional[Mapping[str, str]], *extra: Any) -> int:
        if labels is not None and not isinstance(labels, Mapping):
            raise TypeError(f"labels must be a mapping, not {type(labels).__name__}")
        items = list((labels or {}).items())
        names = (c_char_p * max(1, len(items)))(
            *[_check.text(k, "label name") for k, _ in items])
        values = (c_char_p * max(1, len(items)))(
            *[_check.text(v, f"label {k}") for k, v in items])
        out = c_void_p()
        self._call(f, _check.text(name, "name"), _check.text(help, "help"),
                   *extra, names, values, len(items), byref(out))
        return out.value or 0

    def counter(self, name: str, help: str = "",
                labels: Optional[Mapping[str, str]] = None) -> Counter:
        """A counter series (name by convention ends in ``_total``)."""
        return Counter(self, self._resolve(_lib.dsys_metrics_counter, name, help, labels))

    def gauge(self, name: str, help: str = "",
              labels: Optional[Mapping[str, str]] = None) -> Gauge:
        """A gauge series."""
        return Gauge(self, self._resolve(_lib.dsys_metrics_gauge, name, help, labels))

    def histogram(self, name: str, help: str = "",
                  labels: Optional[Mapping[str, str]] = None,
                  buckets: Optional[Sequence[float]] = None) -> Histogram:
        """A histogram series; buckets: increasing upper bounds (None: the
        library's latency buckets in seconds, 0.5 ms to 10 s)."""
        arr = None
        n = 0
        if buckets is not None:
            bs = [_check.number(b, "buckets[]") for b in buckets]
            arr = (c_double * max(1, len(bs)))(*bs)
            n = len(bs)
        return Histogram(self, self._resolve(_lib.dsys_metrics_histogram, name,
                                             help, labels, arr, n))

    def render(self) -> str:
        """Every series in the Prometheus text format 0.0.4."""
        out = c_void_p()
        self._call(_lib.dsys_metrics_render, byref(out), None)
        return _lib.take_string(out.value) or ""


# ---- registration ----

class Registration(Handle):
    """Keeps one instance registered in a :class:`Registry` (usually a
    registry daemon): registers it, heartbeats every ``heartbeat_ms`` on a
    library thread, registers again after the registry forgot it, and
    deregisters on ``close()``. Made by :meth:`Service.register`; closing
    the Registry first closes it."""

    def __init__(self, registry: Registry, id: str, type: str, url: str, *,
                 name: Optional[str] = None, tags: Sequence[str] = (),
                 metadata: Optional[Dict[str, Any]] = None, weight: int = 1,
                 heartbeat_ms: int = 0, retry_ms: int = 0,
                 require_registered: bool = False) -> None:
        if not isinstance(registry, Registry):
            raise TypeError(f"registry must be a distsys.Registry, not {_type_name(registry)}")
        btags = _check.texts(tags, "tags")
        tag_arr = (c_char_p * max(1, len(btags)))(*btags)
        inst = _lib.dsys_instance(
            id=_check.text(id, "id"), type=_check.text(type, "type"),
            url=_check.text(url, "url"), name=_check.opt_text(name, "name"),
            tags=tag_arr, ntags=len(btags),
            metadata=_check.json_object(metadata, "metadata"),
            weight=_check.count(weight, "weight"))
        o = _lib.dsys_registration_options(
            size=sizeof(_lib.dsys_registration_options),
            heartbeat_ms=_check.integer(heartbeat_ms, "heartbeat_ms"),
            retry_ms=_check.integer(retry_ms, "retry_ms"),
            require_registered=int(bool(require_registered)))
        self.registry, self.id = registry, id
        parent = registry._life
        rp = parent.enter()
        try:
            h = c_void_p()
            errors.raise_for(_lib.dsys_registration_start(byref(h), rp, byref(inst),
                                                          byref(o)),
                             f"registering {id!r}")
            self._life, self._fin = attach(self, h.value, _lib.dsys_registration_stop,
                                           parent=parent, keep=registry)
        finally:
            parent.leave()

    def stats(self) -> Dict[str, int]:
        """registrations, heartbeats, failures, registered (0/1), last_error."""
        s = _lib.dsys_registration_stats()
        self._call(_lib.dsys_registration_stats_get, byref(s))
        return {n: getattr(s, n) for n, _ in s._fields_}


def _type_name(v: Any) -> str:
    return type(v).__name__


# ---- the service ----

ReadyCheck = Callable[[], Any]


class Service:
    """An HTTP service on the library's server.

    Example::

        app = distsys.Service("items")

        @app.get("/items/{id}")
        def get_item(req: distsys.Request, id: str):
            return {"id": id}

        app.serve_forever("http://127.0.0.1:8080")   # until SIGTERM/SIGINT

    Routes: ``@app.route(method, pattern)`` or ``@app.get``, ``post``,
    ``put``, ``delete``, ``patch``; a pattern has literal segments,
    ``{name}`` segments (also the library's ``:name``) and an optional
    trailing ``{name:path}`` (or ``*``) matching the rest. Routes are
    tried in the order added and must all be added before the first
    :meth:`listen`. A handler is called as ``handler(request, **params)``
    with the route parameters its signature names; what it returns
    becomes the answer (see :class:`Response`). ``HTTPError`` answers its
    status; any other exception answers 500 ``{"error": "internal error",
    "code": "internal"}``, is logged on the "distsys" logger with its
    traceback, and never reaches C.

    Built in (unless you route the same method and path yourself):
    ``GET /health`` (200 ``{"status": "healthy", "service": name}``),
    ``GET /ready`` (200, or 503 with the reason while a :meth:`ready_check`
    fails or the service drains) and ``GET /metrics`` (Prometheus text:
    per-route request counts and latencies, process figures, and every
    series added through :attr:`metrics`).

    Options: ``threads`` (server threads, default: CPU count, at least
    2), ``max_body`` (bytes, default 1 MiB; larger: 413), ``access_log``,
    ``idle_timeout_s``, ``request_timeout_s``, ``header_timeout_s``,
    ``max_connections``; TLS as in C: an ``https://`` URL with
    ``tls_cert_file`` and ``tls_key_file``, plus ``tls_client_ca_file``
    for mutual TLS.

    Lifetime: :meth:`stop` (or ``close()``, the context manager,
    :meth:`serve_forever` on a signal, garbage collection, or interpreter
    exit; note that handlers defined beside a module-level service reach
    it through their globals, so such a service lives until one of the
    others) first
    deregisters, then stops accepting, lets requests in flight finish for
    up to ``drain_ms``, answers what is left with 503, and frees the
    server; after it returns no handler runs. The callbacks given to C
    are held until then.
    """

    def __init__(self, name: str = "service", *, threads: int = 0,
                 max_body: int = 0, access_log: bool = False,
                 max_connections: int = 0, idle_timeout_s: int = 0,
                 request_timeout_s: int = 0, header_timeout_s: int = 0,
                 tls_cert_file: Optional[_check.PathArg] = None,
                 tls_key_file: Optional[_check.PathArg] = None,
                 tls_client_ca_file: Optional[_check.PathArg] = None,
                 metrics: bool = True) -> None:
        tls = [None if f is None else _check.path(f, n) for f, n in (
            (tls_cert_file, "tls_cert_file"), (tls_key_file, "tls_key_file"),
            (tls_client_ca_file, "tls_client_ca_file"))]
        o = _lib.dsys_server_options(
            size=sizeof(_lib.dsys_server_options),
            max_body=_check.count(max_body, "max_body", None),
            threads=_check.count(threads, "threads"),
            max_connections=_check.count(max_connections, "max_connections"),
            idle_timeout_s=_check.count(idle_timeout_s, "idle_timeout_s"),
            access_log=int(bool(access_log)), name=_check.text(name, "name"),
            request_timeout_s=_check.count(request_timeout_s, "request_timeout_s"),
            tls_cert_file=tls[0], tls_key_file=tls[1], tls_client_ca_file=tls[2],
            header_timeout_s=_check.count(header_timeout_s, "header_timeout_s"))
        self.name = name
        #: the service's metrics registry (also served at GET /metrics)
        self.metrics = Metrics()
        self._callbacks: List[Any] = []   # every CFUNCTYPE given to C
        self._routes: List[Tuple[str, bytes]] = []
        self._ready_checks: List[ReadyCheck] = []
        self._registrations: List[Registration] = []
        self._listening = False
        self._draining = False
        self._stop_event = threading.Event()
        # serve_forever's wake-up pipe (write end), under _wake_lock
        self._wake_w: Optional[int] = None
        self._wake_lock = threading.RLock()
        self._lock = threading.RLock()
        self._with_metrics = bool(metrics)
        self._t0 = time.monotonic()
        h = c_void_p()
        errors.raise_for(_lib.dsys_server_new(byref(h), byref(o)), f"service {name!r}")
        with self.metrics._life as mp:
            # the server uses the metrics registry: it is the parent
            keep = (self._callbacks, self.metrics)
            self._life, self._fin = attach(
                self, h.value, _server_freer(keep), parent=self.metrics._life,
                keep=keep)
            if self._with_metrics:
                errors.raise_for(_lib.dsys_server_metrics(h.value, mp))
                errors.raise_for(_lib.dsys_metrics_process(mp))

    # -- routes --

    def route(self, method: str, pattern: str) -> Callable[[_Handler], _Handler]:
        """Decorator: route ``method`` ("GET", ..., or "*") and ``pattern``
        to the function (which is returned unchanged)."""
        m = _check.text(method, "method").decode().upper()
        if m not in _METHODS:
            errors.raise_for(_EINVAL, f"method must be one of {list(_METHODS)}, got {method!r}")
        cpat, names, rest = _pattern(pattern)

        def deco(fn: _Handler) -> _Handler:
            self.add_route(m, pattern, fn, _parsed=(cpat, names, rest))
            return fn

        return deco

    def get(self, pattern: str) -> Callable[[_Handler], _Handler]:
        """``@app.get(pattern)``: route GET (HEAD requests take GET routes)."""
        return self.route("GET", pattern)

    def post(self, pattern: str) -> Callable[[_Handler], _Handler]:
        """``@app.post(pattern)``."""
        return self.route("POST", pattern)

    def put(self, pattern: str) -> Callable[[_Handler], _Handler]:
        """``@app.put(pattern)``."""
        return self.route("PUT", pattern)

    def delete(self, pattern: str) -> Callable[[_Handler], _Handler]:
        """``@app.delete(pattern)``."""
        return self.route("DELETE", pattern)

    def patch(self, pattern: str) -> Callable[[_Handler], _Handler]:
        """``@app.patch(pattern)``."""
        return self.route("PATCH", pattern)

    def add_route(self, method: str, pattern: str, fn: _Handler, *,
                  _parsed: Optional[Tuple[bytes, List[str], Optional[str]]] = None) -> None:
        """Route without a decorator (InvalidStateError after listen)."""
        _check.function(fn, "handler")
        m = _check.text(method, "method").decode().upper()
        cpat, names, rest = _parsed or _pattern(pattern)
        all_names = names + ([rest] if rest else [])
        kw = _kwargs_for(fn, all_names)
        cname = {n: (b"*" if n == rest else n.encode()) for n in all_names}
        cb = _lib.HANDLER_FN(_trampoline(fn, all_names, kw, cname))
        with self._lock:
            with self._life as p:
                rc = _lib.dsys_server_route(p, m.encode(), cpat, cb, None)
                if rc == _ESTATE:
                    errors.raise_for(rc, "routes must be added before listen()")
                errors.raise_for(rc, f"route {m} {pattern}")
            self._callbacks.append(cb)
            self._routes.append((m, cpat))

    def ready_check(self, fn: ReadyCheck) -> ReadyCheck:
        """Decorator: a readiness check run by ``GET /ready``. It returns
        True or None when ready, False or a reason (str) when not; an
        exception counts as not ready (its message is the reason)."""
        _check.function(fn, "ready check")
        self._ready_checks.append(fn)
        return fn

    def _builtins(self) -> None:
        # The routes' callbacks live as long as the server; a strong
        # reference to self from them would keep the Service from ever
        # being collected (the finalizer holds the callbacks).
        me = weakref.ref(self)
        name, t0 = self.name, self._t0

        def health(req: Request) -> Any:
            return {"status": "healthy", "service": name,
                    "uptime": round(time.monotonic() - t0, 3)}

        def ready(req: Request) -> Any:
            svc = me()
            why = "stopping" if svc is None else svc._not_ready()
            if why is None:
                return {"status": "ready", "service": name}
            return ({"status": "not ready", "service": name, "error": why}, 503)

        for path, fn in ((b"/health", health), (b"/ready", ready)):
            if ("GET", path) not in self._routes:
                self.add_route("GET", path.decode(), fn)
        if self._with_metrics and ("GET", b"/metrics") not in self._routes:
            # (the second handle's enter may raise: the first is left then too)
            with self._life as p, self.metrics._life as mp:
                errors.raise_for(_lib.dsys_metrics_mount(p, mp))

    def _not_ready(self) -> Optional[str]:
        if self._draining:
            return "draining"
        for chk in list(self._ready_checks):
            try:
                r = chk()
            except Exception as e:  # a failing check is an answer, not a crash
                return f"{getattr(chk, '__name__', 'check')}: {type(e).__name__}: {e}"
            if r is False:
                return f"{getattr(chk, '__name__', 'check')} failed"
            if isinstance(r, str):
                return r
        return None

    # -- running --

    def listen(self, url: str = "http://127.0.0.1:0") -> str:
        """Start serving on ``url`` (may be called for several URLs:
        http://, https://, unix://, inproc://; port 0 picks a free port)
        and return the bound URL. Handlers may run as soon as it returns."""
        b = _check.text(url, "url")
        with self._lock:
            if not self._listening:
                self._builtins()
            with self._life as p:
                rc = _lib.dsys_server_listen(p, b)
                self._listening = True
                errors.raise_for(rc, f"listening on {url}")
        return self.urls[-1]

    @property
    def urls(self) -> List[str]:
        """The bound URLs, in the order of :meth:`listen` calls."""
        out: List[str] = []
        with self._life as p:
            while True:
                u = _lib.dsys_server_url(p, len(out))
                if u is None:
                    return out
                out.append(u.decode())

    @property
    def url(self) -> str:
        """The first bound URL (InvalidStateError before listen)."""
        u = self.urls
        if not u:
            raise errors.error_class(_ESTATE)(_ESTATE, "not listening")
        return u[0]

    @property
    def inflight(self) -> int:
        """Requests received and not yet answered."""
        with self._life as p:
            return int(_lib.dsys_server_inflight(p))

    def register(self, registry: Registry, id: Optional[str] = None,
                 url: Optional[str] = None, *, type: Optional[str] = None,
                 **kw: Any) -> Registration:
        """Register this service in ``registry`` (kept registered by
        library heartbeats; deregistered first when the service stops).
        id defaults to "<name>-<port>", url to the first bound URL, type to
        the service name; other keywords go to :class:`Registration`
        (tags, metadata, weight, heartbeat_ms, retry_ms,
        require_registered)."""
        u = url if url is not None else self.url
        iid = id if id is not None else f"{self.name}-{u.rsplit(':', 1)[-1]}"
        reg = Registration(registry, iid, type or self.name, u, **kw)
        self._registrations.append(reg)
        return reg

    def stop(self, drain_ms: int = 5000) -> bool:
        """Deregister, then stop gracefully (see the class docstring) and
        free the server. Returns True when every request in flight
        finished within drain_ms. Idempotent (later calls return True).
        Must not be called from a handler (InvalidStateError)."""
        _check.integer(drain_ms, "drain_ms", 0)
        if _in_handler():
            raise errors.error_class(_ESTATE)(_ESTATE, "Service.stop() from a handler")
        if self._life.closed:
            return True
        self._draining = True
        for r in self._registrations:
            try:
                r.close()
            except errors.DistsysError as e:  # the registry may be gone: stop anyway
                log.warning("distsys: deregistering %s: %s", r.id, e)
        self._registrations.clear()
        clean = True
        p = None
        try:
            p = self._life.enter()
        except errors.DistsysError:
            return True
        try:
            rc = _lib.dsys_server_stop(p, drain_ms)  # GIL released: handlers finish
            clean = rc == 0
        finally:
            self._life.leave()
        self._fin()
        self.shutdown()
        return clean

    def close(self) -> None:
        """``stop()`` with the default drain."""
        self.stop()

    @property
    def closed(self) -> bool:
        """True once stopped."""
        return self._life.closed

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def shutdown(self) -> None:
        """Make :meth:`serve_forever` return (from any thread or handler)."""
        self._stop_event.set()
        # a reentrant lock: a signal handler may run in the main thread
        # while it holds the lock (serve_forever's cleanup)
        with self._wake_lock:
            if self._wake_w is not None:
                try:
                    os.write(self._wake_w, b"\0")
                except OSError:  # full: a wake-up is pending anyway
                    pass

    def serve_forever(self, *urls: str, drain_ms: int = 5000,
                      signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
                      announce: bool = True) -> bool:
        """Listen on ``urls`` (unless already listening), print
        ``listening URL`` for each when ``announce`` (scripts read the
        port from it), then wait in the main thread until one of
        ``signals`` arrives or :meth:`shutdown` is called, and
        :meth:`stop` with ``drain_ms``. The previous signal handlers (and
        signal wake-up descriptor) are restored. Returns what stop()
        returned."""
        if threading.current_thread() is not threading.main_thread():
            raise errors.error_class(_ESTATE)(
                _ESTATE, "serve_forever() handles signals: call it from the main thread")
        # The main thread sleeps in a read of a pipe, woken by a byte: the
        # signal's number, written by Python's C-level handler through
        # set_wakeup_fd on whichever thread the kernel gave the signal to
        # (a server thread as well as the main one), or 0 from shutdown().
        # The Python-level handler does nothing: it runs in the main thread
        # between two bytecodes, possibly while that thread holds a lock
        # the handler would take (Event.set() there could leave the main
        # thread waiting forever on its own lock), and only once the main
        # thread wakes at all.
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        old = {}
        old_wakeup = None
        wanted = {int(s) for s in signals}
        got = None
        try:
            old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
            # handlers first: whoever reads "listening" may signal at once
            for s in signals:
                old[s] = signal.signal(s, lambda signum, frame: None)
            with self._wake_lock:
                self._wake_w = wfd
            for u in urls:
                self.listen(u)
            if not self._listening:
                self.listen("http://127.0.0.1:8080")
            if announce:
                for u in self.urls:
                    print(f"listening {u}", flush=True)
            while got is None and not self._stop_event.is_set():
                # PEP 475: a read interrupted by a signal is retried after
                # the (empty) handler, and finds that signal's byte
                got = next((b for b in os.read(rfd, 64) if b in wanted), None)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if old_wakeup is not None:
                signal.set_wakeup_fd(old_wakeup)
            with self._wake_lock:
                self._wake_w = None
            os.close(rfd)
            os.close(wfd)
        if got is not None:
            log.info("distsys: %s: signal %d, draining", self.name, got)
        return self.stop(drain_ms)

    def __repr__(self) -> str:
        state = "stopped" if self.closed else (
            " ".join(self.urls) if self._listening else "not listening")
        return f"<distsys.Service {self.name!r} {state}>"


#: Flask-style alias.
App = Service


def _server_freer(keep: Any) -> Callable[[int], None]:
    """The function that frees a server; keep (its callbacks) must live
    until dsys_server_free has returned."""

    def free(p: int) -> None:
        if in_callback():
            # The garbage collector ran on a library thread (in a handler):
            # freeing here would wait for that handler, i.e. for itself.
            threading.Thread(target=_free_holding, args=(p, keep), daemon=True).start()
        else:
            _free_holding(p, keep)

    return free


def _free_holding(p: int, keep: Any) -> None:
    _lib.dsys_server_free(p)  # stops with a 5 s drain if still running


_tls = threading.local()


def _in_handler() -> bool:
    return getattr(_tls, "handler", 0) > 0


def _trampoline(fn: _Handler, names: List[str], kw: List[str],
                cname: Dict[str, bytes]) -> Callable[[int, Any], None]:
    """The C handler of one route: runs on a server thread with the GIL
    taken by ctypes, answers exactly once, lets nothing escape into C."""

    def run(p: int, ud: Any) -> None:
        req: Optional[Request] = None
        started = [False]
        _tls.handler = getattr(_tls, "handler", 0) + 1
        try:
            with callback_scope():
                params = {n: _s(_lib.dsys_request_param(p, cname[n])) for n in names}
                req = Request(p, params)
                try:
                    r = _to_response(fn(req, **{n: params[n] for n in kw}))
                except HTTPError as e:
                    r = Response.json({"error": e.message, "code": e.code}
                                      if e.code else {"error": e.message}, e.status)
                _send(p, r, started)
        except BaseException as e:
            try:
                m = req.method if req is not None and req._p is not None else "?"
                t = req.target if req is not None and req._p is not None else "?"
                log.error("distsys: handler %s for %s %s raised", getattr(
                    fn, "__qualname__", fn), m, t, exc_info=e)
                if not started[0]:  # else the request may be released already
                    _lib.dsys_respond_error(p, 500, b"internal", b"internal error")
            except BaseException:
                pass
        finally:
            if req is not None:
                req._p = None
            _tls.handler -= 1

    return run
