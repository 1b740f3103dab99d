"""Loading libdistsys and declaring the C functions and structs (internal).

The library is found in this order:

1. the path in the ``DSYS_LIBRARY`` environment variable, if set (and only
   that path: a wrong path is an error, not a fallback);
2. the installed library, through the dynamic linker (``libdistsys.so.N``
   as installed by ``make install``, or whatever ``ctypes.util`` finds).

Every function is declared with its argument and result types, so ctypes
never guesses. ``ctypes.CDLL`` releases the GIL around every foreign call,
which is what lets library threads run Python callbacks while a Python
thread is blocked in the library (for example in ``dsys_worker_stop``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char, c_char_p, c_double, c_int,
                    c_int32, c_int64, c_size_t, c_uint32, c_uint64, c_void_p)
from typing import Any, List, Optional

#: Library versions this package works with: same major, at least this.
MIN_VERSION = (0, 1, 0)
ENV_VAR = "DSYS_LIBRARY"


class LibraryNotFoundError(ImportError):
    """libdistsys could not be loaded (see the message for where we looked)."""


def _candidates() -> List[str]:
    names = ["libdistsys.so.0", "libdistsys.so"]
    found = ctypes.util.find_library("distsys")
    if found and found not in names:
        names.append(found)
    return names


def _load() -> ctypes.CDLL:
    path = os.environ.get(ENV_VAR)
    if path:
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            raise LibraryNotFoundError(
                f"distsys: cannot load libdistsys from {ENV_VAR}={path!r}: {e}. "
                f"Point {ENV_VAR} at a built libdistsys.so (e.g. "
                f"<builddir>/.libs/libdistsys.so) or unset it to use the "
                f"installed library.") from None
    errors = []
    for name in _candidates():
        try:
            return ctypes.CDLL(name)
        except OSError as e:
            errors.append(f"{name}: {e}")
    raise LibraryNotFoundError(
        "distsys: libdistsys not found. Either set the environment variable "
        f"{ENV_VAR} to the path of libdistsys.so (e.g. "
        "<builddir>/.libs/libdistsys.so), or install the library (make "
        "install; run ldconfig) so the dynamic linker finds it. Tried: "
        + "; ".join(errors))


lib = _load()


def _check_version() -> str:
    try:
        lib.dsys_version.restype = c_char_p
        lib.dsys_version_number.restype = c_int
    except AttributeError:
        raise LibraryNotFoundError(
            f"distsys: {lib._name} is not libdistsys (no dsys_version)") from None
    num = lib.dsys_version_number()
    ver = (num // 10000, num // 100 % 100, num % 100)
    text: str = lib.dsys_version().decode()
    if ver[0] != MIN_VERSION[0] or ver < MIN_VERSION:
        raise LibraryNotFoundError(
            f"distsys: {lib._name} is libdistsys {text}; this package needs "
            f"{MIN_VERSION[0]}.x at least {'.'.join(map(str, MIN_VERSION))}")
    return text


LIB_VERSION = _check_version()
LIB_PATH: str = lib._name


def fn(name: str, restype: Any, *argtypes: Any) -> Any:
    """Declare one function of the library (missing symbol: clear error)."""
    try:
        f = getattr(lib, name)
    except AttributeError:
        raise LibraryNotFoundError(
            f"distsys: {LIB_PATH} (libdistsys {LIB_VERSION}) lacks {name}; "
            "it is older than this package") from None
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


c_int64_p = POINTER(c_int64)
c_size_t_p = POINTER(c_size_t)
c_char_pp = POINTER(c_char_p)

# ---- common.h ----
dsys_strerror = fn("dsys_strerror", c_char_p, c_int)
dsys_err_name = fn("dsys_err_name", c_char_p, c_int)
dsys_err_count = fn("dsys_err_count", c_int)
dsys_free = fn("dsys_free", None, c_void_p)


def take_string(p: Optional[int]) -> Optional[str]:
    """Copy a library-allocated C string and release it with dsys_free."""
    if not p:
        return None
    try:
        return ctypes.string_at(p).decode()
    finally:
        dsys_free(p)


# ---- store.h ----
class dsys_item(Structure):
    _fields_ = [("id", c_int64), ("key", c_char_p), ("value", c_char_p),
                ("metadata", c_char_p), ("version", c_int64),
                ("created_at", c_int64), ("updated_at", c_int64),
                ("expires_at", c_int64)]


item_p = POINTER(dsys_item)
STORE_HOOK = CFUNCTYPE(None, c_void_p, c_int, item_p)


class dsys_store_options(Structure):
    _fields_ = [("size", c_size_t), ("clock", c_void_p), ("full_sync", c_int),
                ("max_value", c_size_t), ("hook", STORE_HOOK),
                ("hook_ud", c_void_p)]


class dsys_store_write(Structure):
    _fields_ = [("size", c_size_t), ("metadata", c_char_p),
                ("ttl_ms", c_int64), ("expected_version", c_int64)]


dsys_store_open = fn("dsys_store_open", c_int, POINTER(c_void_p), c_char_p,
                     POINTER(dsys_store_options))
dsys_store_close = fn("dsys_store_close", None, c_void_p)
dsys_store_errmsg = fn("dsys_store_errmsg", c_char_p, c_void_p)
dsys_store_get = fn("dsys_store_get", c_int, c_void_p, c_char_p, POINTER(item_p))
dsys_store_get_by_id = fn("dsys_store_get_by_id", c_int, c_void_p, c_int64,
                          POINTER(item_p))
_wr = (c_void_p, c_char_p, c_char_p, POINTER(dsys_store_write), POINTER(item_p))
dsys_store_put = fn("dsys_store_put", c_int, *_wr)
dsys_store_create = fn("dsys_store_create", c_int, *_wr)
dsys_store_update = fn("dsys_store_update", c_int, *_wr)
class dsys_store_entry(Structure):
    _fields_ = [("key", c_char_p), ("value", c_char_p), ("metadata", c_char_p),
                ("ttl_ms", c_int64)]


dsys_store_put_many = fn("dsys_store_put_many", c_int, c_void_p,
                         POINTER(dsys_store_entry), c_size_t, POINTER(item_p),
                         c_size_t_p)
dsys_store_delete = fn("dsys_store_delete", c_int, c_void_p, c_char_p, c_int64)
dsys_store_incr = fn("dsys_store_incr", c_int, c_void_p, c_char_p, c_int64,
                     c_int64_p)
dsys_store_list = fn("dsys_store_list", c_int, c_void_p, c_char_p, c_char_p,
                     c_size_t, POINTER(POINTER(item_p)), c_size_t_p,
                     POINTER(c_void_p))
dsys_store_purge_expired = fn("dsys_store_purge_expired", c_int, c_void_p,
                              c_size_t_p)
dsys_item_free = fn("dsys_item_free", None, item_p)
dsys_item_list_free = fn("dsys_item_list_free", None, POINTER(item_p), c_size_t)

# ---- queue.h ----
class dsys_job(Structure):
    _fields_ = [("id", c_int64), ("queue", c_char_p), ("payload", c_char_p),
                ("state", c_int32), ("priority", c_int32),
                ("attempts", c_int32), ("max_attempts", c_int32),
                ("token", c_int64), ("worker", c_char_p),
                ("lease_until", c_int64), ("progress", c_int32),
                ("progress_msg", c_char_p), ("result", c_char_p),
                ("error", c_char_p), ("idempotency_key", c_char_p),
                ("created_at", c_int64), ("run_at", c_int64),
                ("finished_at", c_int64)]


job_p = POINTER(dsys_job)


class dsys_job_counts(Structure):
    _fields_ = [(n, c_int64) for n in ("waiting", "delayed", "active",
                                       "completed", "failed", "canceled")]


class dsys_queue_options(Structure):
    _fields_ = [("size", c_size_t), ("clock", c_void_p), ("full_sync", c_int),
                ("max_batch", c_int)]


class dsys_submit_options(Structure):
    _fields_ = [("size", c_size_t), ("priority", c_int32),
                ("delay_ms", c_int64), ("max_attempts", c_int32),
                ("backoff_base_ms", c_int64), ("backoff_cap_ms", c_int64),
                ("idempotency_key", c_char_p)]


JOB_HANDLER = CFUNCTYPE(c_int, c_void_p, job_p, c_void_p)


class dsys_worker_options(Structure):
    _fields_ = [("size", c_size_t), ("queues", POINTER(c_char_p)),
                ("nqueues", c_size_t), ("threads", c_uint32),
                ("lease_ms", c_int64), ("poll_ms", c_int64),
                ("worker_id", c_char_p), ("handler", JOB_HANDLER),
                ("ud", c_void_p), ("prefetch", c_int32)]


dsys_queue_open = fn("dsys_queue_open", c_int, POINTER(c_void_p), c_char_p,
                     POINTER(dsys_queue_options))
dsys_queue_close = fn("dsys_queue_close", None, c_void_p)
dsys_queue_submit = fn("dsys_queue_submit", c_int, c_void_p, c_char_p, c_char_p,
                       POINTER(dsys_submit_options), c_int64_p, POINTER(c_int))
dsys_queue_claim = fn("dsys_queue_claim", c_int, c_void_p, POINTER(c_char_p),
                      c_size_t, c_char_p, c_int64, POINTER(job_p))
dsys_queue_heartbeat = fn("dsys_queue_heartbeat", c_int, c_void_p, c_int64,
                          c_int64, c_int64)
dsys_queue_progress = fn("dsys_queue_progress", c_int, c_void_p, c_int64,
                         c_int64, c_int32, c_char_p)
dsys_queue_complete = fn("dsys_queue_complete", c_int, c_void_p, c_int64,
                         c_int64, c_char_p)
dsys_queue_fail = fn("dsys_queue_fail", c_int, c_void_p, c_int64, c_int64,
                     c_char_p, POINTER(c_int))
dsys_queue_release = fn("dsys_queue_release", c_int, c_void_p, c_int64, c_int64)
dsys_queue_cancel = fn("dsys_queue_cancel", c_int, c_void_p, c_int64)
dsys_queue_get = fn("dsys_queue_get", c_int, c_void_p, c_int64, POINTER(job_p))
dsys_queue_counts = fn("dsys_queue_counts", c_int, c_void_p, c_char_p,
                       POINTER(dsys_job_counts))
dsys_queue_list_dead = fn("dsys_queue_list_dead", c_int, c_void_p, c_char_p,
                          c_int64, c_size_t, POINTER(POINTER(job_p)), c_size_t_p)
dsys_queue_replay = fn("dsys_queue_replay", c_int, c_void_p, c_int64)
dsys_queue_purge = fn("dsys_queue_purge", c_int, c_void_p, c_int64, c_int64_p)
dsys_job_state_name = fn("dsys_job_state_name", c_char_p, c_int)
dsys_job_free = fn("dsys_job_free", None, job_p)
dsys_job_list_free = fn("dsys_job_list_free", None, POINTER(job_p), c_size_t)
dsys_worker_start = fn("dsys_worker_start", c_int, POINTER(c_void_p), c_void_p,
                       POINTER(dsys_worker_options))
dsys_worker_stop = fn("dsys_worker_stop", None, c_void_p, c_int)
dsys_worker_id = fn("dsys_worker_id", c_char_p, c_void_p)
dsys_job_ctx_progress = fn("dsys_job_ctx_progress", c_int, c_void_p, c_int32,
                           c_char_p)
dsys_job_ctx_set_result = fn("dsys_job_ctx_set_result", c_int, c_void_p, c_char_p)
dsys_job_ctx_set_error = fn("dsys_job_ctx_set_error", c_int, c_void_p, c_char_p)
dsys_job_ctx_stopping = fn("dsys_job_ctx_stopping", c_int, c_void_p)

# ---- registry.h ----
class dsys_instance(Structure):
    _fields_ = [("id", c_char_p), ("type", c_char_p), ("url", c_char_p),
                ("name", c_char_p), ("tags", POINTER(c_char_p)),
                ("ntags", c_size_t), ("metadata", c_char_p),
                ("weight", c_uint32), ("health", c_int32),
                ("registered_ms", c_int64), ("last_heartbeat_ms", c_int64)]


instance_p = POINTER(dsys_instance)


class dsys_registry_change(Structure):
    _fields_ = [("index", c_uint64), ("kind", c_int32), ("id", c_char_p),
                ("type", c_char_p)]


WATCH_FN = CFUNCTYPE(None, c_void_p, POINTER(dsys_registry_change))


class dsys_registry_options(Structure):
    _fields_ = [("size", c_size_t), ("clock", c_void_p), ("ttl_ms", c_int64),
                ("reap_ms", c_int64), ("sweep_interval_ms", c_int64),
                ("identity", c_void_p), ("client", c_void_p)]


dsys_registry_open = fn("dsys_registry_open", c_int, POINTER(c_void_p),
                        c_char_p, c_char_p, POINTER(dsys_registry_options),
                        c_char_p, c_size_t)
dsys_registry_close = fn("dsys_registry_close", None, c_void_p)
dsys_registry_register = fn("dsys_registry_register", c_int, c_void_p,
                            POINTER(dsys_instance))
dsys_registry_heartbeat = fn("dsys_registry_heartbeat", c_int, c_void_p, c_char_p)
dsys_registry_deregister = fn("dsys_registry_deregister", c_int, c_void_p,
                              c_char_p)
dsys_registry_lookup = fn("dsys_registry_lookup", c_int, c_void_p, c_char_p,
                          c_int, POINTER(instance_p), c_size_t_p)
dsys_registry_get = fn("dsys_registry_get", c_int, c_void_p, c_char_p,
                       POINTER(instance_p))
dsys_registry_index = fn("dsys_registry_index", c_int, c_void_p,
                         POINTER(c_uint64))
dsys_registry_wait = fn("dsys_registry_wait", c_int, c_void_p, c_uint64,
                        c_int64, POINTER(c_uint64))
dsys_registry_watch = fn("dsys_registry_watch", c_int, c_void_p, WATCH_FN,
                         c_void_p, POINTER(c_uint64))
dsys_registry_unwatch = fn("dsys_registry_unwatch", c_int, c_void_p, c_uint64)
dsys_registry_sweep = fn("dsys_registry_sweep", c_int, c_void_p)
dsys_registry_errmsg = fn("dsys_registry_errmsg", c_char_p, c_void_p)

# ---- balancer.h ----
class dsys_balancer_options(Structure):
    _fields_ = [("size", c_size_t), ("policy", c_int32),
                ("when_none", c_int32), ("ring_vnodes", c_uint32),
                ("maglev_size", c_uint32), ("seed", c_uint64)]


class dsys_pick_result(Structure):
    _fields_ = [("ud", c_void_p), ("handle", c_uint64), ("panic", c_int32),
                ("id", c_char * 256)]


class dsys_balancer_endpoint_info(Structure):
    _fields_ = [("weight", c_uint32), ("available", c_int32),
                ("active", c_uint32), ("picks", c_uint64)]


dsys_balancer_new = fn("dsys_balancer_new", c_int, POINTER(c_void_p),
                       POINTER(dsys_balancer_options))
dsys_balancer_free = fn("dsys_balancer_free", None, c_void_p)
dsys_balancer_add = fn("dsys_balancer_add", c_int, c_void_p, c_char_p,
                       c_uint32, c_void_p)
dsys_balancer_remove = fn("dsys_balancer_remove", c_int, c_void_p, c_char_p)
dsys_balancer_set_weight = fn("dsys_balancer_set_weight", c_int, c_void_p,
                              c_char_p, c_uint32)
dsys_balancer_set_available = fn("dsys_balancer_set_available", c_int, c_void_p,
                                 c_char_p, c_int)
dsys_balancer_count = fn("dsys_balancer_count", c_size_t, c_void_p)
dsys_balancer_pick = fn("dsys_balancer_pick", c_int, c_void_p, c_char_p,
                        c_size_t, c_char_p, POINTER(dsys_pick_result))
dsys_balancer_release = fn("dsys_balancer_release", None, c_void_p,
                           POINTER(dsys_pick_result))
dsys_balancer_reset = fn("dsys_balancer_reset", c_int, c_void_p)
dsys_balancer_endpoint = fn("dsys_balancer_endpoint", c_int, c_void_p, c_char_p,
                            POINTER(dsys_balancer_endpoint_info))
dsys_lb_policy_name = fn("dsys_lb_policy_name", c_char_p, c_int)
dsys_lb_policy_parse = fn("dsys_lb_policy_parse", c_int, c_char_p,
                          POINTER(c_int32))

# ---- breaker.h ----
BREAKER_EVENT = CFUNCTYPE(None, c_void_p, c_char_p, c_int, c_int)


class dsys_breaker_options(Structure):
    _fields_ = [("size", c_size_t), ("clock", c_void_p), ("name", c_char_p),
                ("window_type", c_int32), ("window_size", c_uint32),
                ("minimum_calls", c_uint32), ("failure_rate_pct", c_uint32),
                ("slow_rate_pct", c_uint32), ("slow_call_us", c_int64),
                ("failures_n", c_uint32), ("failures_window_ms", c_int64),
                ("open_wait_ms", c_int64), ("half_open_calls", c_uint32),
                ("on_event", BREAKER_EVENT), ("event_ud", c_void_p)]


class dsys_breaker_stats(Structure):
    _fields_ = [("state", c_int32), ("window_calls", c_uint32),
                ("window_failures", c_uint32), ("window_slow", c_uint32),
                ("calls", c_uint64), ("failures", c_uint64),
                ("slow_calls", c_uint64), ("rejected", c_uint64),
                ("transitions", c_uint64)]


dsys_breaker_new = fn("dsys_breaker_new", c_int, POINTER(c_void_p),
                      POINTER(dsys_breaker_options))
dsys_breaker_free = fn("dsys_breaker_free", None, c_void_p)
dsys_breaker_acquire = fn("dsys_breaker_acquire", c_int, c_void_p,
                          POINTER(c_uint64))
dsys_breaker_record = fn("dsys_breaker_record", c_int, c_void_p, c_uint64,
                         c_int, c_int64)
dsys_breaker_state_get = fn("dsys_breaker_state_get", c_int, c_void_p)
dsys_breaker_set_state = fn("dsys_breaker_set_state", c_int, c_void_p, c_int)
dsys_breaker_stats_get = fn("dsys_breaker_stats_get", c_int, c_void_p,
                            POINTER(dsys_breaker_stats))
dsys_breaker_state_name = fn("dsys_breaker_state_name", c_char_p, c_int)

# ---- client.h / retry.h / upstream.h ----
class dsys_header(Structure):
    _fields_ = [("name", c_char_p), ("value", c_char_p)]


class dsys_call(Structure):
    _fields_ = [("size", c_size_t), ("method", c_char_p), ("url", c_char_p),
                ("path", c_char_p), ("headers", POINTER(dsys_header)),
                ("nheaders", c_size_t), ("body", c_char_p),
                ("body_len", c_size_t), ("timeout_ms", c_int64),
                ("connect_timeout_ms", c_int64), ("on_chunk", c_void_p),
                ("chunk_ud", c_void_p)]


class dsys_retry_options(Structure):
    _fields_ = [("size", c_size_t), ("clock", c_void_p),
                ("max_attempts", c_uint32), ("per_try_timeout_ms", c_int64),
                ("deadline_ms", c_int64), ("backoff_base_ms", c_int64),
                ("backoff_cap_ms", c_int64),
                ("retry_statuses", POINTER(c_int32)),
                ("n_retry_statuses", c_size_t), ("budget_ratio_pct", c_uint32),
                ("budget_min_per_s", c_uint32), ("budget_window_s", c_uint32),
                ("budget_off", c_int32), ("seed", c_uint64)]


class dsys_upstream_options(Structure):
    _fields_ = [("size", c_size_t), ("service", c_char_p),
                ("registry", c_void_p), ("policy", c_int32),
                ("when_none", c_int32), ("seed", c_uint64),
                ("health_check", c_int32), ("health_path", c_char_p),
                ("health", c_void_p),
                ("breaker", POINTER(dsys_breaker_options)),
                ("retry", POINTER(dsys_retry_options)), ("client", c_void_p),
                ("clock", c_void_p)]


class dsys_upstream_result(Structure):
    _fields_ = [("size", c_size_t), ("attempts", c_uint32),
                ("last_retry_reason", c_int32), ("endpoint", c_char * 256)]


LAT_BUCKETS = 112


class dsys_endpoint_stats(Structure):
    _fields_ = [("id", c_char_p), ("url", c_char_p), ("weight", c_uint32),
                ("usable", c_int32), ("healthy", c_int32),
                ("health_state", c_int32), ("ejected", c_int32),
                ("breaker_state", c_int32), ("requests", c_uint64),
                ("successes", c_uint64), ("failures", c_uint64),
                ("by_outcome", c_uint64 * 8), ("in_flight", c_uint64),
                ("breaker_rejections", c_uint64), ("latency_count", c_uint64),
                ("latency_sum_us", c_int64), ("p50_us", c_int64),
                ("p90_us", c_int64), ("p99_us", c_int64),
                ("latency_buckets", c_uint64 * LAT_BUCKETS)]


class dsys_upstream_totals(Structure):
    _fields_ = [(n, c_uint64) for n in (
        "calls", "replies", "errors", "attempts", "retries", "picks",
        "panic_picks", "unavailable", "breaker_rejected", "endpoints")] + [
        ("p50_us", c_int64), ("p90_us", c_int64), ("p99_us", c_int64)]


dsys_reply_status = fn("dsys_reply_status", c_int, c_void_p)
dsys_reply_body = fn("dsys_reply_body", c_void_p, c_void_p, c_size_t_p)
dsys_reply_header_count = fn("dsys_reply_header_count", c_size_t, c_void_p)
dsys_reply_header_at = fn("dsys_reply_header_at", c_int, c_void_p, c_size_t,
                          c_char_pp, c_char_pp)
dsys_reply_free = fn("dsys_reply_free", None, c_void_p)
dsys_upstream_new = fn("dsys_upstream_new", c_int, POINTER(c_void_p),
                       POINTER(dsys_upstream_options))
dsys_upstream_free = fn("dsys_upstream_free", None, c_void_p)
dsys_upstream_add = fn("dsys_upstream_add", c_int, c_void_p, c_char_p,
                       c_char_p, c_uint32)
dsys_upstream_remove = fn("dsys_upstream_remove", c_int, c_void_p, c_char_p)
dsys_upstream_count = fn("dsys_upstream_count", c_size_t, c_void_p)
dsys_upstream_call_ex = fn("dsys_upstream_call_ex", c_int, c_void_p,
                           POINTER(dsys_call), POINTER(c_void_p),
                           POINTER(dsys_upstream_result))
dsys_upstream_stats = fn("dsys_upstream_stats", c_int, c_void_p,
                         POINTER(POINTER(dsys_endpoint_stats)), c_size_t_p)
dsys_upstream_totals_get = fn("dsys_upstream_totals_get", c_int, c_void_p,
                              POINTER(dsys_upstream_totals))
dsys_upstream_breaker_set = fn("dsys_upstream_breaker_set", c_int, c_void_p,
                               c_char_p, c_int)

# ---- auth.h ----
class dsys_token_options(Structure):
    _fields_ = [("size", c_size_t), ("alg", c_char_p),
                ("lifetime_s", c_int64), ("clock", c_void_p)]


dsys_password_hash = fn("dsys_password_hash", c_int, c_char_p, c_char_p,
                        POINTER(c_void_p))
dsys_password_verify = fn("dsys_password_verify", c_int, c_char_p, c_char_p)
dsys_token_issue = fn("dsys_token_issue", c_int, c_char_p, c_size_t, c_char_p,
                      POINTER(dsys_token_options), POINTER(c_void_p))
dsys_token_verify = fn("dsys_token_verify", c_int, c_char_p, c_size_t, c_char_p,
                       POINTER(dsys_token_options), POINTER(c_void_p))

# ---- identity.h ----
IDENTITY_HEADER = "X-Dsys-Identity"
IDENTITY_TOKEN_MAX = 4096


class dsys_identity_claims(Structure):
    _fields_ = [("instance", c_char * 128), ("service", c_char * 64),
                ("expires_s", c_int64)]


class dsys_identity_issue_options(Structure):
    _fields_ = [("size", c_size_t), ("lifetime_s", c_int64),
                ("clock", c_void_p)]


class dsys_identity_options(Structure):
    _fields_ = [("size", c_size_t), ("clock", c_void_p),
                ("reload_ms", c_int64)]


dsys_identity_keygen = fn("dsys_identity_keygen", c_int, c_char_p, c_char_p,
                          POINTER(c_int))
dsys_identity_issue = fn("dsys_identity_issue", c_int, c_char_p, c_char_p,
                         c_char_p, POINTER(dsys_identity_issue_options),
                         POINTER(c_void_p))
dsys_identity_issue_file = fn("dsys_identity_issue_file", c_int, c_char_p,
                              c_char_p, c_char_p,
                              POINTER(dsys_identity_issue_options), c_char_p)
dsys_identity_open = fn("dsys_identity_open", c_int, POINTER(c_void_p),
                        c_char_p, POINTER(dsys_identity_options))
dsys_identity_new = fn("dsys_identity_new", c_int, POINTER(c_void_p), c_char_p)
dsys_identity_token = fn("dsys_identity_token", c_int, c_void_p,
                         POINTER(c_void_p))
dsys_identity_free = fn("dsys_identity_free", None, c_void_p)
dsys_identity_verifier_new = fn("dsys_identity_verifier_new", c_int,
                                POINTER(c_void_p), c_char_p, c_void_p)
dsys_identity_verify = fn("dsys_identity_verify", c_int, c_void_p, c_char_p,
                          POINTER(dsys_identity_claims))
dsys_identity_verifier_free = fn("dsys_identity_verifier_free", None, c_void_p)

# ---- server.h ----
HANDLER_FN = CFUNCTYPE(None, c_void_p, c_void_p)


class dsys_server_options(Structure):
    _fields_ = [("size", c_size_t), ("max_body", c_size_t),
                ("threads", c_uint32), ("max_connections", c_uint32),
                ("idle_timeout_s", c_uint32), ("access_log", c_int32),
                ("clock", c_void_p), ("name", c_char_p),
                ("connection_memory", c_uint32), ("event_loops", c_uint32),
                ("request_timeout_s", c_uint32), ("tls_cert_file", c_char_p),
                ("tls_key_file", c_char_p), ("tls_client_ca_file", c_char_p),
                ("header_timeout_s", c_uint32)]


dsys_server_new = fn("dsys_server_new", c_int, POINTER(c_void_p),
                     POINTER(dsys_server_options))
dsys_server_route = fn("dsys_server_route", c_int, c_void_p, c_char_p,
                       c_char_p, HANDLER_FN, c_void_p)
dsys_server_listen = fn("dsys_server_listen", c_int, c_void_p, c_char_p)
dsys_server_url = fn("dsys_server_url", c_char_p, c_void_p, c_size_t)
dsys_server_stop = fn("dsys_server_stop", c_int, c_void_p, c_int64)
dsys_server_free = fn("dsys_server_free", None, c_void_p)
dsys_server_inflight = fn("dsys_server_inflight", c_uint64, c_void_p)
dsys_request_method = fn("dsys_request_method", c_char_p, c_void_p)
dsys_request_path = fn("dsys_request_path", c_char_p, c_void_p)
dsys_request_target = fn("dsys_request_target", c_char_p, c_void_p)
dsys_request_query = fn("dsys_request_query", c_char_p, c_void_p)
dsys_request_id = fn("dsys_request_id", c_char_p, c_void_p)
dsys_request_traceparent = fn("dsys_request_traceparent", c_char_p, c_void_p)
dsys_request_trace_id = fn("dsys_request_trace_id", c_char_p, c_void_p)
dsys_request_remote_addr = fn("dsys_request_remote_addr", c_char_p, c_void_p)
dsys_request_param = fn("dsys_request_param", c_char_p, c_void_p, c_char_p)
dsys_request_header = fn("dsys_request_header", c_char_p, c_void_p, c_char_p)
dsys_request_header_count = fn("dsys_request_header_count", c_size_t, c_void_p)
dsys_request_header_at = fn("dsys_request_header_at", c_int, c_void_p,
                            c_size_t, c_char_pp, c_char_pp)
dsys_request_body = fn("dsys_request_body", c_void_p, c_void_p, c_size_t_p)
dsys_response_header = fn("dsys_response_header", c_int, c_void_p, c_char_p,
                          c_char_p)
dsys_respond = fn("dsys_respond", c_int, c_void_p, c_int, c_char_p, c_char_p,
                  c_size_t)
dsys_respond_error = fn("dsys_respond_error", c_int, c_void_p, c_int,
                        c_char_p, c_char_p)
dsys_respond_stream = fn("dsys_respond_stream", c_int, c_void_p, c_int,
                         c_char_p)
dsys_stream_write = fn("dsys_stream_write", c_int, c_void_p, c_char_p,
                       c_size_t)
dsys_stream_end = fn("dsys_stream_end", c_int, c_void_p)
dsys_request_defer = fn("dsys_request_defer", c_int, c_void_p)

# ---- metrics.h ----
dsys_metrics_new = fn("dsys_metrics_new", c_int, POINTER(c_void_p))
dsys_metrics_free = fn("dsys_metrics_free", None, c_void_p)
_series = (c_void_p, c_char_p, c_char_p)
dsys_metrics_counter = fn("dsys_metrics_counter", c_int, *_series, c_char_pp,
                          c_char_pp, c_size_t, POINTER(c_void_p))
dsys_metrics_gauge = fn("dsys_metrics_gauge", c_int, *_series, c_char_pp,
                        c_char_pp, c_size_t, POINTER(c_void_p))
dsys_metrics_histogram = fn("dsys_metrics_histogram", c_int, *_series,
                            POINTER(c_double), c_size_t, c_char_pp, c_char_pp,
                            c_size_t, POINTER(c_void_p))
dsys_counter_add = fn("dsys_counter_add", None, c_void_p, c_uint64)
dsys_counter_value = fn("dsys_counter_value", c_uint64, c_void_p)
dsys_gauge_set = fn("dsys_gauge_set", None, c_void_p, c_double)
dsys_gauge_add = fn("dsys_gauge_add", None, c_void_p, c_double)
dsys_gauge_value = fn("dsys_gauge_value", c_double, c_void_p)
dsys_histogram_observe = fn("dsys_histogram_observe", None, c_void_p, c_double)
dsys_histogram_read = fn("dsys_histogram_read", c_int, c_void_p, c_size_t,
                         POINTER(c_uint64), POINTER(c_uint64),
                         POINTER(c_double))
dsys_metrics_render = fn("dsys_metrics_render", c_int, c_void_p,
                         POINTER(c_void_p), c_size_t_p)
dsys_server_metrics = fn("dsys_server_metrics", c_int, c_void_p, c_void_p)
dsys_metrics_mount = fn("dsys_metrics_mount", c_int, c_void_p, c_void_p)
dsys_metrics_process = fn("dsys_metrics_process", c_int, c_void_p)

# ---- registration.h ----
class dsys_registration_options(Structure):
    _fields_ = [("size", c_size_t), ("clock", c_void_p),
                ("heartbeat_ms", c_int64), ("retry_ms", c_int64),
                ("require_registered", c_int32)]


class dsys_registration_stats(Structure):
    _fields_ = [("registrations", c_uint64), ("heartbeats", c_uint64),
                ("failures", c_uint64), ("registered", c_int32),
                ("last_error", c_int32)]


dsys_registration_start = fn("dsys_registration_start", c_int,
                             POINTER(c_void_p), c_void_p,
                             POINTER(dsys_instance),
                             POINTER(dsys_registration_options))
dsys_registration_stop = fn("dsys_registration_stop", c_int, c_void_p)
dsys_registration_stats_get = fn("dsys_registration_stats_get", c_int,
                                 c_void_p, POINTER(dsys_registration_stats))

UPSTREAM_FN = CFUNCTYPE(None, c_int, c_void_p, POINTER(dsys_upstream_result),
                        c_void_p)
dsys_upstream_send = fn("dsys_upstream_send", c_int, c_void_p,
                        POINTER(dsys_call), UPSTREAM_FN, c_void_p)

# ---- lock.h ----
class dsys_lock_info(Structure):
    _fields_ = [("owner", c_char * 128), ("token", c_int64), ("expires_at", c_int64)]


class dsys_lock_options(Structure):
    _fields_ = [("size", c_size_t), ("ttl_ms", c_int64), ("manual_renew", c_int),
                ("on_lost", c_void_p), ("ud", c_void_p), ("owner", c_char_p),
                ("unfair", c_int)]


class dsys_election_options(Structure):
    _fields_ = [("size", c_size_t), ("ttl_ms", c_int64), ("candidate", c_char_p),
                ("on_change", c_void_p), ("ud", c_void_p)]


dsys_locks_open = fn("dsys_locks_open", c_int, POINTER(c_void_p), c_char_p, c_void_p)
dsys_locks_close = fn("dsys_locks_close", None, c_void_p)
dsys_lock_acquire = fn("dsys_lock_acquire", c_int, c_void_p, c_char_p, c_int64,
                       POINTER(dsys_lock_options), POINTER(c_void_p))
dsys_lock_token = fn("dsys_lock_token", c_int64, c_void_p)
dsys_lock_held = fn("dsys_lock_held", c_int, c_void_p)
dsys_lock_renew = fn("dsys_lock_renew", c_int, c_void_p)
dsys_lock_release = fn("dsys_lock_release", c_int, c_void_p)
dsys_lock_holder = fn("dsys_lock_holder", c_int, c_void_p, c_char_p, POINTER(dsys_lock_info))
dsys_lock_guarded_put = fn("dsys_lock_guarded_put", c_int, c_void_p, c_char_p, c_char_p,
                           c_int64)
dsys_election_campaign = fn("dsys_election_campaign", c_int, c_void_p, c_char_p,
                            POINTER(dsys_election_options), POINTER(c_void_p))
dsys_election_is_leader = fn("dsys_election_is_leader", c_int, c_void_p, c_int64_p)
dsys_election_leader = fn("dsys_election_leader", c_int, c_void_p, c_char_p,
                          POINTER(dsys_lock_info))
dsys_election_resign = fn("dsys_election_resign", None, c_void_p)

# ---- cache.h ----
class dsys_cache_options(Structure):
    _fields_ = [("size", c_size_t), ("max_bytes", c_size_t), ("max_entries", c_size_t),
                ("ttl_ms", c_int64), ("stale_ms", c_int64), ("negative_ttl_ms", c_int64),
                ("clock", c_void_p)]


class dsys_cache_stats(Structure):
    _fields_ = [(n, c_uint64) for n in (
        "hits", "stale_hits", "negative_hits", "misses", "loads", "load_errors",
        "evictions", "invalidations", "entries", "bytes")]


CACHE_LOAD = CFUNCTYPE(c_int, c_void_p, c_char_p, POINTER(c_void_p), c_size_t_p)
dsys_cache_new = fn("dsys_cache_new", c_int, POINTER(c_void_p), POINTER(dsys_cache_options))
dsys_cache_free = fn("dsys_cache_free", None, c_void_p)
dsys_cache_get = fn("dsys_cache_get", c_int, c_void_p, c_char_p, c_void_p, c_void_p,
                    POINTER(c_void_p), c_size_t_p)
dsys_cache_put = fn("dsys_cache_put", c_int, c_void_p, c_char_p, c_char_p, c_size_t)
dsys_cache_invalidate = fn("dsys_cache_invalidate", c_int, c_void_p, c_char_p)
dsys_cache_clear = fn("dsys_cache_clear", None, c_void_p)
dsys_cache_get_stats = fn("dsys_cache_get_stats", None, c_void_p, POINTER(dsys_cache_stats))
# The loader hands the cache a block it frees with free(): the C library's.
libc_malloc = ctypes.CDLL(None).malloc
libc_malloc.restype = c_void_p
libc_malloc.argtypes = [c_size_t]
