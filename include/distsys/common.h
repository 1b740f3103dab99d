/*
 * libdistsys common definitions: export macro, error codes, version query,
 * memory release.
 *
 * Thread-safety: every function here may be called from any thread.
 */
#ifndef DSYS_COMMON_H
#define DSYS_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <distsys/version.h>

#if defined(DSYS_BUILDING_LIBRARY) && defined(__GNUC__)
#define DSYS_API __attribute__((visibility("default")))
#else
#define DSYS_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The error table: X(NAME, value, message). Every fallible function returns 0
 * or one of these negative codes. Codes are never renumbered; new codes are
 * appended with the next free value.
 */
#define DSYS_ERRORS(X)                                                      \
  X(DSYS_OK, 0, "success")                                                  \
  X(DSYS_EINVAL, -1, "invalid argument")                                    \
  X(DSYS_ENOMEM, -2, "out of memory")                                       \
  X(DSYS_ENOTFOUND, -3, "not found")                                        \
  X(DSYS_EEXIST, -4, "already exists")                                      \
  X(DSYS_ECONFLICT, -5, "version conflict")                                 \
  X(DSYS_ETIMEDOUT, -6, "timed out")                                        \
  X(DSYS_ECONNREFUSED, -7, "connection refused")                            \
  X(DSYS_ECONNRESET, -8, "connection reset")                                \
  X(DSYS_EPROTO, -9, "protocol error")                                      \
  X(DSYS_EHTTP, -10, "HTTP error status")                                   \
  X(DSYS_ECLOSED, -11, "closed")                                            \
  X(DSYS_EBUSY, -12, "busy")                                                \
  X(DSYS_EIO, -13, "input/output error")                                    \
  X(DSYS_ETOOBIG, -14, "too large")                                         \
  X(DSYS_ENOTSUP, -15, "not supported")                                     \
  X(DSYS_ESTATE, -16, "invalid state for this operation")                  \
  X(DSYS_EAGAIN, -17, "try again")                                          \
  X(DSYS_ECANCELED, -18, "canceled")                                        \
  X(DSYS_EBADJSON, -19, "malformed JSON")                                   \
  X(DSYS_EAUTH, -20, "authentication failed")                               \
  X(DSYS_ELEASE, -21, "lease lost: fencing token does not match")           \
  X(DSYS_EUNAVAIL, -22, "no healthy endpoint available")                    \
  X(DSYS_EBREAKER, -23, "circuit breaker open")                             \
  X(DSYS_ERATELIMIT, -24, "rate limited")                                   \
  X(DSYS_EADDRINUSE, -25, "address in use")                                 \
  X(DSYS_EPERM, -26, "permission denied")                                   \
  X(DSYS_EDB, -27, "storage error")                                         \
  X(DSYS_ESTOPPED, -28, "stopped")                                          \
  X(DSYS_ERESOLVE, -29, "could not resolve host")                           \
  X(DSYS_ERANGE, -30, "value out of range")                                 \
  X(DSYS_EINTERNAL, -31, "internal error")                                  \
  X(DSYS_EBUDGET, -32, "retry budget exhausted")                            \
  X(DSYS_ETYPE, -33, "wrong type")                                          \
  X(DSYS_ESCHEME, -34, "unknown URL scheme")                                \
  X(DSYS_EURL, -35, "malformed URL")                                        \
  X(DSYS_ENOSPC, -36, "no space left on the storage")

/** Error codes (see DSYS_ERRORS). */
typedef enum dsys_err {
#define DSYS_X_ENUM(name, value, msg) name = value,
  DSYS_ERRORS(DSYS_X_ENUM)
#undef DSYS_X_ENUM
} dsys_err;

/**
 * Human-readable message for an error code.
 * @param err a DSYS_E... code (0 gives "success").
 * @return a static string; never NULL ("unknown error" for unknown codes).
 */
DSYS_API const char *dsys_strerror(int err);

/**
 * Symbolic name of an error code, e.g. "DSYS_ETIMEDOUT".
 * @return a static string; never NULL ("DSYS_EUNKNOWN" for unknown codes).
 */
DSYS_API const char *dsys_err_name(int err);

/**
 * Number of entries in the error table, for bindings that enumerate it:
 * codes run from 0 down to -(dsys_err_count() - 1).
 */
DSYS_API int dsys_err_count(void);

/** Version of the library actually loaded, e.g. "0.1.0". Static string. */
DSYS_API const char *dsys_version(void);

/** DSYS_VERSION_NUMBER of the library actually loaded. */
DSYS_API int dsys_version_number(void);

/**
 * Release memory that the library returned to the caller (strings, buffers).
 * NULL-safe.
 */
DSYS_API void dsys_free(void *ptr);

#ifdef __cplusplus
}
#endif
#endif
