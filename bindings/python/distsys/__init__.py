"""distsys: Python bindings (ctypes) for libdistsys.

Registry, load balancing, circuit breakers, resilient service calls,
key-value store, durable job queue with workers, auth helpers and service
identity tokens. Load order of the C library: ``$DSYS_LIBRARY`` if set, else
the installed ``libdistsys``; see README.md.
"""
from __future__ import annotations

from . import _lib
from ._lib import LibraryNotFoundError
from .errors import DistsysError, error_class, error_classes
from .errors import *  # noqa: F401,F403 - every generated exception class
# the classes of today's codes, re-exported by name for type checkers
from .errors import (  # noqa: F401
    InvalidArgumentError as InvalidArgumentError,
    NoMemoryError as NoMemoryError,
    NotFoundError as NotFoundError,
    AlreadyExistsError as AlreadyExistsError,
    ConflictError as ConflictError,
    TimedOutError as TimedOutError,
    ConnRefusedError as ConnRefusedError,
    ConnResetError as ConnResetError,
    ProtocolError as ProtocolError,
    HttpError as HttpError,
    ClosedError as ClosedError,
    BusyError as BusyError,
    IoError as IoError,
    TooBigError as TooBigError,
    NotSupportedError as NotSupportedError,
    InvalidStateError as InvalidStateError,
    TryAgainError as TryAgainError,
    CanceledError as CanceledError,
    BadJsonError as BadJsonError,
    AuthError as AuthError,
    LeaseError as LeaseError,
    UnavailableError as UnavailableError,
    BreakerOpenError as BreakerOpenError,
    RateLimitedError as RateLimitedError,
    AddrInUseError as AddrInUseError,
    PermissionDeniedError as PermissionDeniedError,
    DbError as DbError,
    StoppedError as StoppedError,
    ResolveError as ResolveError,
    RangeError as RangeError,
    InternalError as InternalError,
    BudgetError as BudgetError,
    DsysTypeError as DsysTypeError,
    SchemeError as SchemeError,
    UrlError as UrlError,
)
from .auth import hash_password, issue_token, verify_password, verify_token
from .identity import (IDENTITY_HEADER, IDENTITY_TOKEN_MAX, Identity,
                       IdentityVerifier, identity_issue, identity_issue_file,
                       identity_keygen)
from .queue import JOB_STATES, Job, JobContext, JobFailed, Queue, Worker
from .registry import CHANGE_KINDS, Change, Instance, Registry
from .resilience import (BREAKER_STATES, POLICIES, Balancer, Breaker,
                         BreakerStats, Pick)
from .store import Item, Store
from .locks import Cache, Election, Lock, LockHolder, Locks, guarded_put
from .service import (App, Counter, Gauge, Histogram, HTTPError, Metrics,
                      Registration, Request, Response as HTTPResponse, Service)
from .upstream import EndpointStats, Response, Upstream
from . import errors as _errors

__version__ = "0.2.0"
#: Version of the loaded C library, e.g. "0.1.0".
library_version: str = _lib.LIB_VERSION
#: Path or name the C library was loaded from.
library_path: str = _lib.LIB_PATH

__all__ = [
    "LibraryNotFoundError", "DistsysError", "error_class", "error_classes",
    "hash_password", "verify_password", "issue_token", "verify_token",
    "identity_keygen", "identity_issue", "identity_issue_file", "Identity",
    "IdentityVerifier", "IDENTITY_HEADER", "IDENTITY_TOKEN_MAX",
    "Store", "Item", "Queue", "Job", "JobContext", "JobFailed", "Worker", "JOB_STATES",
    "Registry", "Instance", "Change", "CHANGE_KINDS", "Balancer", "Pick",
    "Breaker", "BreakerStats", "POLICIES", "BREAKER_STATES", "Upstream",
    "Response", "EndpointStats", "library_version", "library_path",
    "Service", "App", "Request", "HTTPResponse", "HTTPError", "Metrics",
    "Counter", "Gauge", "Histogram", "Registration",
    "Locks", "Lock", "LockHolder", "Election", "Cache", "guarded_put",
]
__all__ += sorted(_errors.error_classes())  # also codes added later
