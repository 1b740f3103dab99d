/*
 * dsys_server: an HTTP server on any transport (http://, unix://, inproc://),
 * with a router, built-in middleware and synchronous, asynchronous and
 * streaming handlers.
 *
 * Built-in middleware, in order: a request id (X-Request-Id taken from the
 * request when it is a sane token, else generated, and echoed on the
 * response); W3C trace context (traceparent parsed or generated; the
 * handler sees a child span); a body size limit (413); routing (404 and
 * 405 with JSON bodies); user hooks (dsys_server_use); the handler; an
 * access log line at completion when enabled.
 *
 * Handlers run on a server thread. A handler must, before it returns,
 * either respond (dsys_respond*), start a stream (dsys_respond_stream), or
 * call dsys_request_defer() and respond later from any thread. A handler
 * that does none of these gets a 500 answer. No server thread waits for a
 * deferred request: the connection is parked until the answer arrives.
 *
 * Request lifetime: a dsys_request is valid from the handler call until the
 * call that finishes it: dsys_respond* (non-streaming) or dsys_stream_end.
 * Each request must be finished exactly once, even after the client went
 * away or the server stopped (the call then returns DSYS_ECLOSED but still
 * releases the request).
 *
 * Thread-safety: dsys_server_route/use must be called before
 * dsys_server_listen. Everything else may be called from any thread; a
 * given request's functions must not be called concurrently with each other
 * except dsys_stream_write from one producer at a time.
 */
#ifndef DSYS_SERVER_H
#define DSYS_SERVER_H

#include <distsys/common.h>
#include <distsys/clock.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_server dsys_server;
typedef struct dsys_request dsys_request;

/** A request handler (see the header comment for its obligations). */
typedef void (*dsys_handler_fn)(dsys_request *req, void *ud);

/**
 * A hook run before the handler of every routed request.
 * @return 0 to continue, nonzero when the hook responded itself.
 */
typedef int (*dsys_hook_fn)(dsys_request *req, void *ud);

/** Called once if the transport side ends before a deferred or streaming
 *  request is finished: the server stopped and cut the request off, or a
 *  stream's client went away (seen when a write fails). A client that
 *  disconnects while a deferred (non-streaming) request is parked is not
 *  noticed until the answer is sent (libmicrohttpd does not watch parked
 *  connections), so handlers must bound their own work with timeouts.
 *  Runs on a library thread. */
typedef void (*dsys_close_fn)(dsys_request *req, void *ud);

/** Server options. Zero fields take the documented defaults. */
typedef struct dsys_server_options {
  size_t size;               /**< sizeof(dsys_server_options), or 0 */
  size_t max_body;           /**< request body limit, default 1 MiB */
  uint32_t threads;          /**< server threads, default: CPU count, at least 2 */
  uint32_t max_connections;  /**< default 1024 (http, unix); in event-loop
                                  mode on TCP per loop, counting only
                                  connections that sent a byte (see
                                  max_silent_connections) */
  uint32_t idle_timeout_s;   /**< idle connection timeout, default 60 (http, unix) */
  int32_t access_log;        /**< 1: log one INFO line per request */
  dsys_clock *clock;         /**< default dsys_clock_real() */
  const char *name;          /**< service name for logs, default "server" */
  uint32_t connection_memory; /**< per-connection buffer in bytes (http,
                                   unix), default 16 KiB; it bounds the
                                   request line plus headers (larger: 431) */
  uint32_t event_loops;      /**< http/unix: 0 (default) = libmicrohttpd's
                                  thread pool of `threads`; N = N event-loop
                                  threads (external epoll; on TCP, loop 0
                                  accepts and gives each connection to the
                                  least loaded loop), where handlers may
                                  start non-blocking work in the same loop
                                  (the gateway); max_connections applies
                                  per loop */
  uint32_t request_timeout_s; /**< http/unix: a connection must deliver each
                                   complete request (line, headers, body)
                                   within this many seconds of opening or of
                                   its previous response, else it is closed
                                   (slow clients trickling bytes reset the
                                   idle timeout, not this one); 0 = off
                                   (default) */
  /* https:// listeners (ignored by other transports); the files are read
   * at dsys_server_listen and the strings copied by dsys_server_new. */
  const char *tls_cert_file;  /**< PEM certificate (chain); required for https */
  const char *tls_key_file;   /**< PEM private key (unencrypted); required for https */
  const char *tls_client_ca_file; /**< PEM CA(s): when set, mutual TLS: a
                                       request whose connection did not
                                       present a certificate signed by these
                                       gets 403 (DSYS_EPERM) */
  uint32_t header_timeout_s; /**< http/https/unix: a connection is closed
                                  when the request line and headers (and,
                                  on https, the TLS handshake) are not
                                  complete this many seconds after it
                                  opened; a later request on a keep-alive
                                  connection gets idle_timeout_s plus this
                                  from the previous response. Cuts clients
                                  that trickle a header (which the idle
                                  timeout does not). 0: the default, 10;
                                  DSYS_SERVER_TIMEOUT_OFF: off */
  uint32_t max_connections_per_addr; /**< http/https on TCP: connections one
                                  client IP address may hold on a listener.
                                  In event-loop mode a new connection over
                                  it takes the place of that address's
                                  oldest idle one (silent, or between
                                  requests), and is closed at once only
                                  when all of them are busy; in thread-pool
                                  mode it is refused. 0: the default, 1024;
                                  DSYS_SERVER_LIMIT_OFF: no limit */
  uint32_t max_silent_connections; /**< event-loop mode on TCP: connections
                                  accepted that have not sent a byte yet,
                                  held outside libmicrohttpd (about 130
                                  bytes each) until their first byte or
                                  header_timeout_s; over it the oldest is
                                  closed. 0: the default, 65536, lowered to
                                  fit the descriptor limit (RLIMIT_NOFILE) */
  /* appended: */
  int32_t reuse_port;        /**< http/https: 1 sets SO_REUSEPORT on the
                                  listening socket, so that another process
                                  of the same user may bind the same port
                                  (a hitless restart: the new one starts,
                                  then the old one stops). Any process of
                                  that user can then take a share of the
                                  port's connections. 0 (default): off */
  int32_t drain_keepalive;   /**< 1: during dsys_server_stop(), requests
                                  that arrive on open keep-alive
                                  connections are still served, answered
                                  with Connection: close, until every
                                  connection closed or the drain time is
                                  up (clients move to another server
                                  without a failed request); 0 (default):
                                  they get 503 DSYS_ESTOPPED once stop
                                  began. Either way, answers sent while
                                  stopping carry Connection: close */
} dsys_server_options;

/** A timeout field value meaning "no timeout" (header_timeout_s). */
#define DSYS_SERVER_TIMEOUT_OFF UINT32_MAX

/** A limit field value meaning "no limit" (max_connections_per_addr). */
#define DSYS_SERVER_LIMIT_OFF UINT32_MAX

/** The default header_timeout_s, in seconds. */
#define DSYS_SERVER_HEADER_TIMEOUT_DEFAULT 10

/** The default max_connections_per_addr. */
#define DSYS_SERVER_PER_ADDR_DEFAULT 1024

/** The default max_silent_connections (before the descriptor limit). */
#define DSYS_SERVER_SILENT_DEFAULT 65536

/**
 * What happened to a server's connections (http, https, unix listeners),
 * for metrics: gauges of now and counters since dsys_server_new.
 */
typedef struct dsys_server_conn_stats {
  size_t size;               /**< sizeof(dsys_server_conn_stats), or 0 */
  uint64_t open;             /**< connections open now, silent ones included */
  uint64_t silent;           /**< of those, accepted and silent: no byte
                                  received yet (event-loop mode on TCP) */
  uint64_t refused_per_addr; /**< closed at accept: their address held
                                  max_connections_per_addr, none idle */
  uint64_t refused_full;     /**< closed at accept: libmicrohttpd refused
                                  them (over its connection limit) */
  uint64_t evicted_per_addr; /**< idle connections closed to make room for
                                  a new one of the same address */
  uint64_t evicted_silent;   /**< silent connections closed, oldest first,
                                  at max_silent_connections */
  uint64_t evicted_full;     /**< idle connections closed, oldest first, to
                                  make room for a connection that sent a
                                  request while every event loop held
                                  max_connections */
  uint64_t evicted_fds;      /**< silent connections closed, oldest first,
                                  when accept ran out of descriptors */
  uint64_t header_timeouts;  /**< closed without a complete request head
                                  within header_timeout_s (silent ones
                                  included) */
  uint64_t request_timeouts; /**< closed by request_timeout_s */
} dsys_server_conn_stats;

/**
 * Read a server's connection statistics.
 * @param out its size field says how many bytes the caller's struct has
 *        (0: this version's sizeof); that many are written, size included.
 * @return 0, DSYS_EINVAL (a NULL argument).
 */
DSYS_API int dsys_server_conn_stats_get(const dsys_server *srv,
                                        dsys_server_conn_stats *out);

/**
 * Create a server (not yet listening).
 * @param opts may be NULL for defaults.
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_server_new(dsys_server **out, const dsys_server_options *opts);

/**
 * Add a route.
 * @param method "GET", "POST", ... or "*" for any method.
 * @param pattern a path: literal segments, ":name" segments (read with
 *        dsys_request_param) and an optional trailing "*" that matches the
 *        rest (read as param "*"). Routes are tried in the order added.
 * @return 0, DSYS_EINVAL (bad pattern), DSYS_ESTATE (dsys_server_listen
 *         was already called, even if it failed), DSYS_ENOMEM.
 */
DSYS_API int dsys_server_route(dsys_server *srv, const char *method,
                               const char *pattern, dsys_handler_fn fn,
                               void *ud);

/** Add a hook run before every handler, in the order added.
 *  @return 0, DSYS_EINVAL, DSYS_ESTATE (after dsys_server_listen), DSYS_ENOMEM. */
DSYS_API int dsys_server_use(dsys_server *srv, dsys_hook_fn fn, void *ud);

/**
 * Start listening. May be called several times (one server on several
 * transports). Port 0 picks a free port: read it back with dsys_server_url.
 * @param url "http://127.0.0.1:0", "https://127.0.0.1:0" (needs
 *        tls_cert_file and tls_key_file), "unix:///run/x.sock", "inproc://name".
 * @return 0, DSYS_EINVAL (https without certificate or key), DSYS_EIO (a TLS
 *         file unreadable or rejected), DSYS_ENOTSUP, DSYS_ESCHEME, DSYS_EURL, DSYS_ERESOLVE,
 *         DSYS_EADDRINUSE, DSYS_EPERM, DSYS_EEXIST (inproc name taken),
 *         DSYS_EIO, DSYS_ESTATE (stopped), DSYS_ENOMEM (also: more than 8
 *         listeners).
 */
DSYS_API int dsys_server_listen(dsys_server *srv, const char *url);

/**
 * The bound URL of listener i (0 = first), e.g. "http://127.0.0.1:39411".
 * @return a string owned by the server, or NULL.
 */
DSYS_API const char *dsys_server_url(dsys_server *srv, size_t i);

/**
 * Stop gracefully: stop accepting, let in-flight requests finish for up to
 * drain_ms (measured on the real clock), then answer what is left with 503
 * and end open streams, and close the listeners. A second call returns 0
 * at once. Must not run concurrently with dsys_server_free.
 * @return 0, or DSYS_ETIMEDOUT when requests had to be cut off.
 */
DSYS_API int dsys_server_stop(dsys_server *srv, int64_t drain_ms);

/**
 * Read the files tls_cert_file and tls_key_file again (same paths; e.g. a
 * renewed certificate written over the old one) and present the new pair
 * on every https listener from the next TLS handshake on; connections
 * already open keep theirs (nothing is dropped). The client CA
 * (tls_client_ca_file) is not reread. Each reload keeps the previous
 * pair in memory until the server is freed (open sessions may use it).
 * @return 0 (also for a server without an https listener); DSYS_EIO (a
 *         file cannot be read, or they are not a certificate and its
 *         private key): the old pair stays; DSYS_EINVAL (NULL),
 *         DSYS_ESTATE (stopping), DSYS_ENOMEM.
 */
DSYS_API int dsys_server_reload_tls(dsys_server *srv);

/** Stop (drain 5 s) if needed and free. NULL-safe. */
DSYS_API void dsys_server_free(dsys_server *srv);

/** Number of requests received and not yet finished (for tests, metrics). */
DSYS_API uint64_t dsys_server_inflight(dsys_server *srv);

/**
 * The options in effect, defaults filled in (what a zero field became).
 * @param out its size field says how many bytes the caller's struct has
 *        (0: this version's sizeof); that many are written, size included.
 *        The strings and the clock belong to the server (valid until
 *        dsys_server_free).
 * @return 0, DSYS_EINVAL (a NULL argument).
 */
DSYS_API int dsys_server_get_options(const dsys_server *srv,
                                     dsys_server_options *out);

/* ---- request accessors (valid until the request is finished) ---- */

DSYS_API const char *dsys_request_method(const dsys_request *req);
/** Percent-decoded path without the query, e.g. "/api/data/a b". */
DSYS_API const char *dsys_request_path(const dsys_request *req);
/** Raw request target as received, e.g. "/api/data/a%20b?x=1". */
DSYS_API const char *dsys_request_target(const dsys_request *req);
/** Raw query string without '?', "" when none. */
DSYS_API const char *dsys_request_query(const dsys_request *req);
/** Decoded value of the first query parameter name, or NULL. The parse is
 *  cached on first use: not safe from two threads on one request at once. */
DSYS_API const char *dsys_request_query_param(dsys_request *req,
                                              const char *name);
/** Decoded value of a route parameter (":name" or "*"), or NULL. */
DSYS_API const char *dsys_request_param(const dsys_request *req,
                                        const char *name);
/** First header of that name (case-insensitive), or NULL. */
DSYS_API const char *dsys_request_header(const dsys_request *req,
                                         const char *name);
/** Number of request headers. */
DSYS_API size_t dsys_request_header_count(const dsys_request *req);
/** Header i. @return 0 or DSYS_EINVAL (out of range). */
DSYS_API int dsys_request_header_at(const dsys_request *req, size_t i,
                                    const char **name, const char **value);
/** The body (NUL-terminated for convenience; may contain NULs). */
DSYS_API const void *dsys_request_body(const dsys_request *req, size_t *len);
/** The request id (X-Request-Id). */
DSYS_API const char *dsys_request_id(const dsys_request *req);
/** The traceparent to send on calls made for this request (child span). */
DSYS_API const char *dsys_request_traceparent(const dsys_request *req);
/** The 32-hex trace id. */
DSYS_API const char *dsys_request_trace_id(const dsys_request *req);
/** Client address ("127.0.0.1", "unix", "inproc"). */
DSYS_API const char *dsys_request_remote_addr(const dsys_request *req);
/** The server that received the request. */
DSYS_API dsys_server *dsys_request_server(const dsys_request *req);
/**
 * Add a field to the request's access-log record (replacing an earlier
 * value of the same key), e.g. the gateway's "upstream" endpoint. With
 * --log-format json the field is a member of the record; in text format it
 * follows the line as " key=value". At most 16 fields per request. Call
 * before the request is finished.
 * @param key a name that is not one of the built-in fields (time, level,
 *        component, msg, type, method, path, route, status, duration_ms,
 *        request_id, trace_id, span_id, remote, aborted); no CR/LF.
 * @param value UTF-8 text (copied); no CR/LF.
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM (also: more than 16 fields).
 */
DSYS_API int dsys_request_log_field(dsys_request *req, const char *key,
                                    const char *value);
/** Attach user data to the request (for hooks and handlers). */
DSYS_API void dsys_request_set_user(dsys_request *req, void *user);
DSYS_API void *dsys_request_user(const dsys_request *req);

/* ---- responding ---- */

/**
 * Add a response header (before the response or stream starts).
 * @return 0, DSYS_EINVAL (CR/LF in name or value), DSYS_ESTATE, DSYS_ENOMEM.
 */
DSYS_API int dsys_response_header(dsys_request *req, const char *name,
                                  const char *value);

/**
 * Respond with a complete body (copied) and finish the request.
 * @param content_type may be NULL (no Content-Type).
 * @return 0; DSYS_ECLOSED if the transport side already ended (server
 *         stop, see dsys_close_fn; the request is released all the same);
 *         DSYS_ESTATE if already answered; DSYS_EINVAL; DSYS_ENOMEM.
 */
DSYS_API int dsys_respond(dsys_request *req, int status,
                          const char *content_type, const void *body,
                          size_t len);

/** Respond with a NUL-terminated JSON text (application/json). */
DSYS_API int dsys_respond_json(dsys_request *req, int status, const char *json);

/**
 * Respond with the JSON error body {"error": message, "code": code}.
 * @param code short slug or DSYS_E name; may be NULL (omitted).
 */
DSYS_API int dsys_respond_error(dsys_request *req, int status,
                                const char *code, const char *message);

/**
 * Promise to respond later, from any thread. Call inside the handler (the
 * library cannot tell; calling it elsewhere is a usage error).
 * @return 0, DSYS_EINVAL (NULL), DSYS_ESTATE (already answered or deferred).
 */
DSYS_API int dsys_request_defer(dsys_request *req);

/** Register the close callback (see dsys_close_fn). */
DSYS_API void dsys_request_on_close(dsys_request *req, dsys_close_fn fn,
                                    void *ud);

/**
 * Start a streaming response (chunked on HTTP). Headers are sent at once.
 * May be called in the handler or after dsys_request_defer.
 * @return 0, DSYS_EINVAL, DSYS_ESTATE, DSYS_ECLOSED.
 */
DSYS_API int dsys_respond_stream(dsys_request *req, int status,
                                 const char *content_type);

/**
 * Queue bytes on a stream; never blocks.
 * @return 0; DSYS_ECLOSED when the client is gone or the server stopped
 *         (the producer should then call dsys_stream_end); DSYS_ESTATE;
 *         DSYS_EINVAL; DSYS_ENOMEM.
 */
DSYS_API int dsys_stream_write(dsys_request *req, const void *data, size_t len);

/** End the stream and finish the request.
 *  @return 0, DSYS_ECLOSED, DSYS_EINVAL, DSYS_ESTATE (not streaming). */
DSYS_API int dsys_stream_end(dsys_request *req);

#ifdef __cplusplus
}
#endif
#endif
