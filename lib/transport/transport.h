/*
 * Internal transport interface: the request object shared by the server
 * core and the transports, and the versioned transport ops table.
 *
 * A dsys_request is reference-counted: the user side holds one reference
 * until it finishes the request (respond or stream end), the transport
 * holds one until its side is done (response sent, connection gone, or
 * abandoned at stop), and dispatch holds one while the handler runs.
 */
#ifndef DSYSI_TRANSPORT_H
#define DSYSI_TRANSPORT_H

#include <pthread.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <distsys/client.h>
#include <distsys/server.h>
#include "core/internal.h"

/* ---- arena: small allocations released all at once ---- */
/* A request's strings and header arrays come from one arena instead of a
 * malloc each (a proxied request made about 15 small allocations). It
 * starts in memory the owner provides and continues in malloc'd blocks;
 * dsysi_arena_free releases those blocks. Not thread-safe: the owner
 * serialises use (see struct dsys_request). */
typedef struct dsysi_arena_blk dsysi_arena_blk;
typedef struct dsysi_arena {
  char *cur, *end;       /* free space in the current block */
  dsysi_arena_blk *blks; /* malloc'd blocks, newest first */
} dsysi_arena;

void dsysi_arena_init(dsysi_arena *a, void *mem, size_t len);
/** n bytes aligned for pointers, or NULL when out of memory. */
void *dsysi_arena_alloc(dsysi_arena *a, size_t n);
/** Copy of (s, n) plus a NUL in the arena, or NULL. */
char *dsysi_arena_strndup(dsysi_arena *a, const char *s, size_t n);
void dsysi_arena_free(dsysi_arena *a);

/* ---- header lists ---- */
typedef struct dsysi_hdr {
  char *name;
  char *value;
} dsysi_hdr;

typedef struct dsysi_hdrs {
  dsysi_hdr *v;
  size_t n, cap;
  /* NULL: every entry and the array are malloc'd (and freed by
   * dsysi_hdrs_free). Set: they come from this arena, and dsysi_hdrs_free
   * only forgets them. */
  dsysi_arena *ar;
} dsysi_hdrs;

int dsysi_hdrs_add(dsysi_hdrs *h, const char *name, size_t nlen,
                   const char *value, size_t vlen);
const char *dsysi_hdrs_get(const dsysi_hdrs *h, const char *name);
void dsysi_hdrs_free(dsysi_hdrs *h);
/** Nonzero when a header value or name is safe to emit (no CR, LF, NUL). */
int dsysi_header_ok(const char *s);
/** Classes of header names that proxies and transports treat specially. */
enum {
  DSYSI_HDR_OTHER = 0,
  DSYSI_HDR_HOP,            /* hop-by-hop (incl. Content-Length, Proxy-*) */
  DSYSI_HDR_DATE,
  DSYSI_HDR_TRACEPARENT,
  DSYSI_HDR_REQUEST_ID,
  DSYSI_HDR_CONTENT_TYPE,
  DSYSI_HDR_IDEMPOTENCY_KEY,
  DSYSI_HDR_FORWARDED_FOR,
  DSYSI_HDR_USER_ID         /* X-Dsys-User-Id and X-Dsys-Identity: set by
                               the gateway only, stripped from clients */
};
/** The class of a header name (case-insensitive), one scan. */
int dsysi_header_class(const char *name);
/** Hop-by-hop headers that a transport sets itself. */
int dsysi_header_is_hop(const char *name);

/* ---- what a proxy forwards (the gateway, every path) ---- */
typedef struct dsysi_fwd {
  dsys_header *h; /* the request headers to send upstream, in order */
  size_t n;
  int idem_key;   /* the client sent an Idempotency-Key */
  /* private */
  char *xff, *ident;
  dsys_header inl[24];
  char xff_inl[64];
} dsysi_fwd;

/**
 * The one header-forwarding policy, request side: fills f with the
 * headers a proxy sends upstream for req. Dropped: hop-by-hop headers
 * (Connection, Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding,
 * Upgrade; Content-Length, which the dialer recomputes), the client's
 * X-Request-Id and traceparent (replaced), X-Forwarded-For (extended) and
 * X-Dsys-User-Id / X-Dsys-Identity (a client cannot forge them). Host and
 * everything else pass as they came. Added: X-Forwarded-For (the client's
 * list, then the peer address), X-Request-Id (req's id), traceparent
 * (req's trace id, its new span), X-Dsys-User-Id when user is not empty,
 * X-Dsys-Identity: ident (copied) when ident is set.
 * Names and values point into req, user, or f: valid while they live.
 * @return 0 or DSYS_ENOMEM; call dsysi_fwd_free in both cases.
 */
int dsysi_fwd_request(dsysi_fwd *f, dsys_request *req, const char *user,
                      const char *ident);
void dsysi_fwd_free(dsysi_fwd *f);
/** The response side: nonzero when an upstream response header goes back
 *  to the client. Not: hop-by-hop ones, Content-Type (passed on as the
 *  response's type), X-Request-Id (the server sets the request's), Date
 *  (regenerated), and with drop_cors any Access-Control-* (a route whose
 *  CORS answers the gateway gives itself). */
int dsysi_fwd_response_header(const char *name, int drop_cors);

/* ---- request ---- */
enum dsysi_rq_state {
  DSYSI_RQ_NEW = 0,   /* in the handler, nothing decided */
  DSYSI_RQ_DEFERRED,  /* the user will answer later */
  DSYSI_RQ_ANSWERED,  /* a complete response is stored */
  DSYSI_RQ_STREAMING, /* headers decided; chunks follow */
};

struct dsys_request {
  dsysi_lock mu; /* short sections only; never held across a callback */
  atomic_int refs;
  dsys_server *srv;
  const struct dsysi_listener_ops *ops;
  void *lst;  /* transport listener state */
  void *tctx; /* transport per-request state */

  /* method, target (which also holds path and query), the header lists,
   * route params, ctype and log fields live in ar: allocate from it only
   * before dispatch (one thread) or with mu held. */
  char *method, *path, *target, *query;
  const char *remote; /* static name, or remote_buf once formatted */
  union {             /* formatted lazily into remote_buf */
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
  } raddr;
  char remote_buf[64];
  dsysi_hdrs hdrs;
  char *body;
  size_t body_len;

  const char **pnames;    /* route params: names are the route's */
  char **pvals;
  size_t nparams;
  dsysi_hdrs qparams;
  int qparsed;

  char req_id[65];
  char trace_id[33];
  char span_id[17];
  char traceparent[56];
  void *user;

  int state;
  int user_done;      /* finished by the user (respond or stream end) */
  int transport_done; /* the transport side completed */
  int closed;         /* client gone or abandoned: writes fail */
  int abandoned;      /* server stop: transport must cut it off */
  int stream_ended;
  int late;           /* arrived once stop refused requests: answer 503 */
  int status;
  char *ctype;
  dsysi_hdrs rhdrs;
  char *rbody;
  size_t rlen;
  dsysi_buf stream; /* queued stream bytes */
  size_t stream_off;
  dsys_close_fn on_close;
  void *close_ud;
  int64_t start_us;
  const char *route;   /* matched route pattern (owned by the server) */
  dsysi_hdrs logf;     /* extra access-log fields (dsys_request_log_field) */
  int route_idx;      /* index of the matched route, -1 when none */
  struct dsys_request *prev, *next; /* server's live list (one shard) */
  unsigned shard;                   /* which shard */
  dsysi_arena ar;
  /* The arena's first block: a typical request (method, target, a few
   * headers, X-Request-Id, content type) fits, and the whole object stays
   * small enough for glibc's per-thread cache. */
  _Alignas(void *) char ar_mem[280];
};

/**
 * Create a request owned by the transport (one transport reference and one
 * user reference), registered with the server's in-flight accounting.
 * The transport fills method, path, target, query, headers, body, remote.
 */
dsys_request *dsysi_request_new(dsys_server *srv,
                                const struct dsysi_listener_ops *ops,
                                void *lst, void *tctx);
void dsysi_request_ref(dsys_request *req);
void dsysi_request_unref(dsys_request *req);

/**
 * dsys_respond without the copy: takes body (malloc'd, len bytes and a NUL
 * after them) in every case, freeing it on failure.
 * @return as dsys_respond.
 */
int dsysi_respond_owned(dsys_request *req, int status, const char *content_type,
                        char *body, size_t len);

/**
 * Split a raw target "/p%20x?q=1" into decoded path and raw query.
 * @return 0 or DSYS_ENOMEM / DSYS_EURL.
 */
int dsysi_request_set_target(dsys_request *req, const char *target);

/** Fill trace_id/span_id/traceparent on first use (lazily: most requests
 *  never read them). */
void dsysi_request_trace(dsys_request *req);

/** Nonzero when the request's access record will be written, i.e. when
 *  dsys_request_log_field keeps what it is given (callers on a hot path
 *  can skip building fields nobody reads). */
int dsysi_request_log_wanted(const dsys_request *req);

/** Run middleware, routing and the handler (on the calling thread). */
void dsysi_server_dispatch(dsys_request *req);

/**
 * The transport side is finished: response fully sent (ok=1) or the
 * connection went away / was cut off (ok=0). Releases the transport
 * reference; fires on_close when the user had not finished.
 */
void dsysi_request_transport_done(dsys_request *req, int ok);

/**
 * Copy up to max queued stream bytes into buf (req->mu held by caller).
 * @return bytes copied.
 */
size_t dsysi_request_stream_take(dsys_request *req, void *buf, size_t max);

/** Body of the standard JSON error: {"error": msg, "code": code}. */
char *dsysi_error_json(const char *code, const char *message, size_t *len);

/**
 * Observer of finished requests (metrics): runs once per request on the
 * thread that completes its transport side, with the matched route's
 * index and pattern (-1 and NULL when no route matched), the final status
 * and the duration in microseconds on the server's clock.
 */
typedef void (*dsysi_server_observer_fn)(void *ud, int route_idx,
                                         const char *route_pattern,
                                         const char *method, int status,
                                         int64_t duration_us);

/** Set the server's one observer (before listen).
 *  @return 0, DSYS_EINVAL, DSYS_ESTATE (listening), DSYS_EEXIST. */
int dsysi_server_set_observer(dsys_server *srv, dsysi_server_observer_fn fn,
                              void *ud);

/** Limits and settings the transports read from the server. */
size_t dsysi_server_max_body(dsys_server *srv);
uint32_t dsysi_server_threads(dsys_server *srv);
uint32_t dsysi_server_max_connections(dsys_server *srv);
uint32_t dsysi_server_idle_timeout(dsys_server *srv);
uint32_t dsysi_server_connection_memory(dsys_server *srv);
uint32_t dsysi_server_event_loops(dsys_server *srv);
int dsysi_server_reuse_port(dsys_server *srv);
/** The server's drain_keepalive option. */
int dsysi_server_drain_keepalive(dsys_server *srv);
/* Nonzero once dsys_server_stop() began: answers then carry
 * Connection: close (the client goes elsewhere). */
int dsysi_server_stopping(dsys_server *srv);
/** request_timeout_s and header_timeout_s in seconds, 0 when off. */
uint32_t dsysi_server_request_timeout(dsys_server *srv);
uint32_t dsysi_server_header_timeout(dsys_server *srv);
/** max_connections_per_addr, 0 when off. */
uint32_t dsysi_server_per_addr(dsys_server *srv);
uint32_t dsysi_server_max_silent(dsys_server *srv);

/* Connection statistics (dsys_server_conn_stats, fields in this order). */
enum dsysi_conn_stat {
  DSYSI_CONN_OPEN = 0,
  DSYSI_CONN_SILENT,
  DSYSI_CONN_REFUSED_PER_ADDR,
  DSYSI_CONN_REFUSED_FULL,
  DSYSI_CONN_EVICTED_PER_ADDR,
  DSYSI_CONN_EVICTED_SILENT,
  DSYSI_CONN_EVICTED_FULL,
  DSYSI_CONN_EVICTED_FDS,
  DSYSI_CONN_HEADER_TIMEOUTS,
  DSYSI_CONN_REQUEST_TIMEOUTS,
  DSYSI_CONN_NSTATS
};
/** Add delta to one of the server's connection statistics (any thread). */
void dsysi_server_conn_note(dsys_server *srv, int what, int delta);
dsys_clock *dsysi_server_clock(dsys_server *srv);
/** The server's TLS files (NULL when unset). */
void dsysi_server_tls(dsys_server *srv, const char **cert, const char **key,
                      const char **client_ca);

/* ---- client-side pending call ---- */
typedef struct dsysi_call dsysi_call;
struct dsysi_call {
  dsys_client *client;
  const struct dsysi_dialer_ops *ops;
  char *method, *url, *path;
  dsysi_hdrs hdrs;
  char *body;
  size_t body_len;
  int64_t timeout_ms, connect_timeout_ms;
  dsys_chunk_fn on_chunk;
  void *chunk_ud;
  dsys_reply_fn cb;
  void *ud;
  atomic_int done; /* completion happened */
  atomic_int refs;
  void *tpriv;     /* transport private */
  uint64_t timer;  /* inproc timeout timer */
  size_t max_response;
  dsys_clock *clock;
  dsysi_call *cprev, *cnext; /* the client's list of pending calls */
};

struct dsys_reply {
  int status;
  dsysi_hdrs hdrs; /* in ar */
  const char *ctype; /* Content-Type in hdrs when the dialer noted it (else
                        NULL: look it up; see dsysi_reply_ctype) */
  char *body;
  size_t body_len;
  /* The headers live here (no malloc per header); a typical reply's fit
   * in ar_mem, and the whole object stays within glibc's per-thread
   * cache. */
  dsysi_arena ar;
  _Alignas(void *) char ar_mem[448];
};

/** Copy a caller's call into *d with the defaults applied (method GET,
 *  path "/"; size-aware) and, with check, check it: method a token, path
 *  starting with '/' without space, CR, LF or '#', header names tokens,
 *  values without CR or LF. Pointers still point into the caller's
 *  memory. @return 0 or DSYS_EINVAL. */
int dsysi_call_norm(const dsys_call *in, dsys_call *d, int check);

/** Complete a call exactly once: runs the callback (or drops the reply if
 *  it already completed). Takes ownership of reply. */
void dsysi_call_complete(dsysi_call *call, int err, dsys_reply *reply);
void dsysi_call_unref(dsysi_call *call);
/** An empty reply (no body; headers go to its arena). */
dsys_reply *dsysi_reply_new(int status);
/** The reply's Content-Type, or NULL. */
const char *dsysi_reply_ctype(const dsys_reply *r);
/** Take the body out of a reply (malloc'd, NUL after len bytes; the
 *  reply keeps an empty one). NULL when out of memory. */
char *dsysi_reply_take_body(dsys_reply *r, size_t *len);

/* ---- the plugin families: listeners and dialers ---- */
/* A transport is a listener (the server side of a scheme) and a dialer
 * (its client side), registered separately in the "listener" and "dialer"
 * families (core/plugin.h) and found by URL scheme, as nng's transports
 * split dialer and listener ops. The http listener (libmicrohttpd) and
 * the libcurl dialer serve http, https and unix; inproc has both. */
#define DSYSI_LISTENER_OPS_VERSION 1

typedef struct dsysi_listener_ops {
  int version;        /* DSYSI_LISTENER_OPS_VERSION */
  const char *scheme; /* URL scheme without "://" */
  int (*listen)(dsys_server *srv, const char *url, void **lst);
  const char *(*url)(void *lst);
  void (*quiesce)(void *lst); /* stop accepting new connections */
  /* The request's answer state changed (answered, stream data or end,
   * abandoned). Called without req->mu held, from any thread. */
  void (*notify)(void *lst, dsys_request *req);
  void (*close)(void *lst); /* after every request completed or was cut */
  /* optional (NULL: none kept open): client connections still open, for a
   * stop that waits for keep-alive connections (drain_keepalive) */
  unsigned (*open_connections)(void *lst);
  /* optional: reread the TLS certificate and key files (the server's
   * tls_cert_file, tls_key_file) for new handshakes; on failure the old
   * ones stay. 0 for a listener without TLS. */
  int (*reload_tls)(void *lst);
} dsysi_listener_ops;

#define DSYSI_DIALER_OPS_VERSION 1

typedef struct dsysi_dialer_ops {
  int version;        /* DSYSI_DIALER_OPS_VERSION */
  const char *scheme; /* URL scheme without "://" */
  /* Dialers of one engine (e.g. "curl" for http, https and unix) share
   * one per-client state (dsysi_client_slot) and one client_free. */
  const char *engine;
  /* Start an asynchronous call; complete it with dsysi_call_complete
   * exactly once. A nonzero return means the call was not started and
   * will never complete. */
  int (*call)(dsysi_call *call);
  /* optional synchronous fast path; NULL: call + wait */
  int (*call_sync)(dsysi_call *call, dsys_reply **out);
  void (*client_free)(dsys_client *c); /* release per-client state */
} dsysi_dialer_ops;

/* Options of a loop dialer's dial (below): how the response comes back. */
typedef struct dsysi_dial_opts {
  /* Called on the loop thread when the response head is parsed, with a
   * reply holding status and headers (no body yet) and the ud of
   * dsysi_h1_dial. Return 1 to have the body go to call->on_chunk as it
   * arrives (on_body, or call->on_chunk; the reply then comes with an
   * empty body), 0 to buffer it,
   * negative to abort (DSYS_ECANCELED). NULL: stream when the call has
   * an on_chunk. */
  int (*on_head)(void *ud, const dsys_reply *head);
  /* Where a streamed body goes (nonzero aborts: DSYS_ECANCELED); NULL:
   * call->on_chunk. */
  int (*on_body)(void *ud, const void *data, size_t len);
  size_t max_response; /* buffered body limit (DSYS_ETOOBIG); 0: 64 MiB */
  /* Time allowed until the response head, when shorter than the call's
   * timeout_ms (which then bounds the whole exchange): a stalled server
   * is given up early while a streamed answer may run longer. 0: none. */
  int64_t head_timeout_ms;
} dsysi_dial_opts;

#define DSYSI_LOOP_DIALER_OPS_VERSION 1

/* A dialer for callers that run on an event-loop thread (dsys_upstream on
 * the gateway's loops): the exchange runs on the caller's own loop, with
 * no thread hand-off, and completes there. Family "loop-dialer", by
 * scheme; the in-loop HTTP/1.1 client (h1client.c) serves http and unix.
 * Off a loop, or for a scheme without one, the dialer family serves. */
typedef struct dsysi_loop_dialer_ops {
  int version;        /* DSYSI_LOOP_DIALER_OPS_VERSION */
  const char *scheme; /* URL scheme without "://" */
  /* Start call on this thread's loop; done(err, reply, ud) runs exactly
   * once on the loop thread, never inside dial. Nonzero: not started, done
   * never runs. */
  int (*dial)(const dsys_call *call, const dsysi_dial_opts *o, dsys_reply_fn done, void *ud);
} dsysi_loop_dialer_ops;

/** The loop dialer for url when the calling thread runs an event loop and
 *  one serves url's scheme; else NULL. */
const dsysi_loop_dialer_ops *dsysi_loop_dialer_find(const char *url);

/** The listener / dialer for a URL by its scheme, or NULL. */
const dsysi_listener_ops *dsysi_listener_find(const char *url);
const dsysi_dialer_ops *dsysi_dialer_find(const char *url);
/** The dialer at index i of its family (registration order), or NULL past
 *  the end: for releasing every engine's per-client state. */
const dsysi_dialer_ops *dsysi_dialer_at(size_t i);

/** Per-client slot for a transport's private state. */
void **dsysi_client_slot(dsys_client *c, const dsysi_dialer_ops *ops);
pthread_mutex_t *dsysi_client_lock(dsys_client *c);
/** The client's options (defaults applied). */
const dsys_client_options *dsysi_client_options(dsys_client *c);

#endif
