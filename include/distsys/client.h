/*
 * dsys_client: HTTP requests to any transport URL (http://host:port,
 * unix:///path.sock, inproc://name), synchronous or asynchronous.
 *
 * Outcomes are classified so that retry policies can decide: a call either
 * fails at the transport level (DSYS_ECONNREFUSED: never sent;
 * DSYS_ERESOLVE: never sent; DSYS_ETIMEDOUT; DSYS_ECONNRESET; DSYS_EPROTO;
 * DSYS_ETOOBIG for a response over the limit) or returns a reply with any
 * HTTP status; see dsys_classify().
 *
 * http://, https:// and unix:// use libcurl with keep-alive connection
 * reuse (a failed TLS handshake or certificate check is DSYS_EPROTO); inproc://
 * calls a server in the same process with no socket.
 *
 * Threads: a client may be used from many threads at once. Asynchronous
 * completion callbacks run with no library lock held, on: the client's I/O
 * thread (http, unix); for inproc, the thread that finished the request (a
 * server worker, a timer thread, or an application thread answering a
 * deferred request). Chunk callbacks of dsys_client_do over http/unix run
 * on the calling thread. Callbacks must not free the client. With a fake
 * client clock, inproc timeouts and "refused" fire only when the clock is
 * advanced.
 */
#ifndef DSYS_CLIENT_H
#define DSYS_CLIENT_H

#include <distsys/common.h>
#include <distsys/clock.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_client dsys_client;
typedef struct dsys_reply dsys_reply;

/** A header name/value pair (UTF-8, no CR or LF). */
typedef struct dsys_header {
  const char *name;
  const char *value;
} dsys_header;

/** Client options. Zero fields take the documented defaults. */
typedef struct dsys_client_options {
  size_t size;                 /**< sizeof(dsys_client_options), or 0 */
  int64_t connect_timeout_ms;  /**< default 2000 */
  int64_t timeout_ms;          /**< whole request, default 30000 */
  size_t max_response;         /**< response body limit, default 64 MiB */
  dsys_clock *clock;           /**< for inproc timeouts; default real */
  /* https:// (strings copied by dsys_client_new). The server certificate
   * and host name are always verified unless tls_insecure is set. */
  const char *tls_ca_file;     /**< PEM CA bundle; default: the system store */
  const char *tls_cert_file;   /**< PEM client certificate (mutual TLS) */
  const char *tls_key_file;    /**< PEM client key (with tls_cert_file) */
  int32_t tls_insecure;        /**< 1: skip certificate verification (never
                                    in production) */
} dsys_client_options;

/** Streaming body callback: called for each piece of the body, in order. */
typedef void (*dsys_chunk_fn)(const void *data, size_t len, void *ud);

/** One call. Zero fields take defaults. */
typedef struct dsys_call {
  size_t size;                 /**< sizeof(dsys_call), or 0 */
  const char *method;          /**< default "GET" */
  const char *url;             /**< endpoint: "http://h:p", "unix:///p.sock", "inproc://n" */
  const char *path;            /**< "/path?query", default "/"; no space, CR, LF or "#" (DSYS_EINVAL) */
  const dsys_header *headers;
  size_t nheaders;
  const void *body;
  size_t body_len;
  int64_t timeout_ms;          /**< 0: the client's default */
  int64_t connect_timeout_ms;  /**< 0: the client's default */
  dsys_chunk_fn on_chunk;      /**< if set, the body is delivered here and
                                    not kept in the reply */
  void *chunk_ud;
} dsys_call;

/** Completion of an asynchronous call: exactly one of err and reply is set;
 *  the callee owns reply (dsys_reply_free). */
typedef void (*dsys_reply_fn)(int err, dsys_reply *reply, void *ud);

/** Create a client. @param opts may be NULL.
 *  @return 0, DSYS_EINVAL (out is NULL), DSYS_ENOMEM. */
DSYS_API int dsys_client_new(dsys_client **out, const dsys_client_options *opts);

/**
 * Free a client. Pending asynchronous calls complete with DSYS_ECANCELED
 * before this returns; afterwards no callback runs. NULL-safe. Must not be
 * called from one of the client's callbacks.
 */
DSYS_API void dsys_client_free(dsys_client *c);

/**
 * Perform a call and wait for the reply.
 * @param out receives the reply for any HTTP status (free with
 *        dsys_reply_free); untouched on error.
 * @return 0 or a transport error (see the header comment), DSYS_EINVAL,
 *         DSYS_ESCHEME, DSYS_EURL, DSYS_ENOMEM; DSYS_ECLOSED or
 *         DSYS_ECANCELED when the client is being freed.
 */
DSYS_API int dsys_client_do(dsys_client *c, const dsys_call *call,
                            dsys_reply **out);

/**
 * Start a call; cb runs exactly once when it completes. If this returns an
 * error, cb never runs. The call's strings and body are copied.
 * @return 0, DSYS_EINVAL, DSYS_ESCHEME, DSYS_EURL, DSYS_ENOMEM, DSYS_ECLOSED.
 */
DSYS_API int dsys_client_send(dsys_client *c, const dsys_call *call,
                              dsys_reply_fn cb, void *ud);

/** HTTP status of a reply. */
DSYS_API int dsys_reply_status(const dsys_reply *r);
/** Body (NUL-terminated for convenience) and its length. */
DSYS_API const void *dsys_reply_body(const dsys_reply *r, size_t *len);
/** First header of that name (case-insensitive), or NULL. */
DSYS_API const char *dsys_reply_header(const dsys_reply *r, const char *name);
/** Number of headers. */
DSYS_API size_t dsys_reply_header_count(const dsys_reply *r);
/** Header i. @return 0 or DSYS_EINVAL. */
DSYS_API int dsys_reply_header_at(const dsys_reply *r, size_t i,
                                  const char **name, const char **value);
/** Free a reply. NULL-safe. */
DSYS_API void dsys_reply_free(dsys_reply *r);

/** Outcome classes for retry decisions. */
typedef enum dsys_outcome {
  DSYS_OUTCOME_OK = 0,        /**< 1xx-3xx */
  DSYS_OUTCOME_NOT_SENT = 1,  /**< refused, unresolved: safe to retry anywhere */
  DSYS_OUTCOME_TIMEOUT = 2,
  DSYS_OUTCOME_RESET = 3,
  DSYS_OUTCOME_PROTOCOL = 4,
  DSYS_OUTCOME_CLIENT_ERROR = 5, /**< 4xx */
  DSYS_OUTCOME_SERVER_ERROR = 6, /**< 5xx */
  DSYS_OUTCOME_LOCAL = 7         /**< bad arguments, out of memory, canceled */
} dsys_outcome;

/** Classify a call outcome from its error code and (when err == 0) status. */
DSYS_API dsys_outcome dsys_classify(int err, int status);

#ifdef __cplusplus
}
#endif
#endif
