/*
 * The gateway's own HTTP/1.1 keep-alive upstream client, living inside one
 * dsysi_loop: pooled connections per endpoint, non-blocking connect,
 * Content-Length and chunked bodies (lib/transport/h1.c), request bodies,
 * per-request timeouts, and a stale keep-alive connection retried once on
 * a fresh one. Everything runs on the loop's thread; nothing here is
 * thread-safe, by design (one pool per loop).
 */
#ifndef DSYSI_H1CLIENT_H
#define DSYSI_H1CLIENT_H

#include "transport/evloop.h"
#include "transport/h1.h"

typedef struct dsysi_h1pool dsysi_h1pool;
typedef struct dsysi_h1req dsysi_h1req;
typedef struct h1conn h1conn;

struct dsysi_h1req {
  /* input, borrowed until on_done */
  const char *addr;      /* endpoint: "http://host:port" or "unix:///path" */
  const char *head;      /* request line + headers + blank line */
  size_t head_len;
  const char *body;
  size_t body_len;
  int is_head;           /* HEAD: the response has no body */
  int64_t timeout_us;    /* whole exchange; 0 = none */
  /* Callbacks on the loop thread. on_head/on_body return nonzero to abort
   * (on_done then gets DSYS_ECANCELED). on_done runs exactly once after a
   * successful dsysi_h1_start, never from inside it. */
  int (*on_head)(dsysi_h1req *r);
  int (*on_body)(dsysi_h1req *r, const char *data, size_t len);
  void (*on_done)(dsysi_h1req *r, int err);
  void *ud;
  /* output */
  dsysi_h1 resp;         /* status, headers (valid from on_head to on_done) */
  int sent;              /* the whole request was written */
  int reused;            /* went over a pooled connection */
  dsysi_arena *hdr_arena; /* optional: where resp's headers go (a reply's) */
  /* private */
  dsysi_h1pool *pool;
  struct endpoint *ep;
  h1conn *conn;
  uint64_t timer;
  int stale_retry;
  int err;
  size_t received;
};

typedef struct dsysi_h1pool_options {
  unsigned max_idle_per_endpoint; /* default 128 */
  int64_t idle_timeout_us;        /* default 15 s (below common server timeouts) */
} dsysi_h1pool_options;

int dsysi_h1pool_new(dsysi_h1pool **out, dsysi_loop *loop,
                     const dsysi_h1pool_options *opts);
/** Close every connection; requests in flight end with DSYS_ECANCELED. */
void dsysi_h1pool_free(dsysi_h1pool *p);

/**
 * Start an exchange. @return 0 (on_done will run), DSYS_EURL, DSYS_ENOMEM,
 * DSYS_ECLOSED (the pool is being freed).
 * Errors through on_done: DSYS_ECONNREFUSED (could not connect: nothing
 * was sent), DSYS_ETIMEDOUT, DSYS_ECONNRESET, DSYS_EPROTO, DSYS_ETOOBIG,
 * DSYS_ECANCELED.
 */
int dsysi_h1_start(dsysi_h1pool *p, dsysi_h1req *r);

/** Release what a finished request holds (its parsed headers). A request
 *  struct must start zeroed; it may be reused for another exchange (a
 *  retry) after on_done without calling this in between. */
void dsysi_h1req_free(dsysi_h1req *r);

/** Abort an exchange without calling on_done (its connection is closed). */
void dsysi_h1_abort(dsysi_h1req *r);

/** Number of open upstream connections (idle + busy), for stats. */
size_t dsysi_h1pool_open(dsysi_h1pool *p);


/**
 * Start call (method, url "http://" or "unix://" with its base path, path,
 * headers, body, timeout_ms: 0 none) on this thread's loop. The headers go
 * as given (no validation: the caller checked them), plus Host from the
 * URL when they have none and Content-Length from the body. The call's
 * strings, headers and body are borrowed until done runs.
 * done(err, reply, ud) runs exactly once on the loop thread, never inside
 * this call (also when the loop is freed first: DSYS_ECANCELED); the
 * callee owns the reply. Errors through done as dsysi_h1_start's.
 * @return 0; DSYS_EINVAL, DSYS_ESCHEME (not http/unix), DSYS_ESTATE (not
 *         on a loop thread), DSYS_EURL, DSYS_ENOMEM, DSYS_ECLOSED: done
 *         never runs.
 */
int dsysi_h1_dial(const dsys_call *call, const dsysi_dial_opts *o,
                  dsys_reply_fn done, void *ud);


#endif
