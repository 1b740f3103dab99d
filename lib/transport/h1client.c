/* The gateway's loop-native HTTP/1.1 keep-alive upstream client. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include "core/plugin.h"
#include "transport/h1client.h"
#include "transport/url.h"

typedef struct endpoint {
  char *addr;
  char *base;      /* the URL's base path ("" when none), as libcurl sends it */
  char *authority; /* Host header when the call has none */
  struct sockaddr_storage sa;
  socklen_t salen;
  h1conn *idle; /* most recently used first */
  unsigned nidle;
  struct endpoint *next;
} endpoint;

struct h1conn {
  dsysi_watch w;
  dsysi_h1pool *pool;
  endpoint *ep;
  dsysi_h1req *req; /* NULL while idle */
  int connecting;
  int wout;         /* EPOLLOUT armed: only while connecting or blocked */
  size_t woff;      /* bytes of head+body written */
  int64_t last_used;
  h1conn *next;     /* idle list */
  h1conn *anext, *aprev; /* all connections */
};

struct dsysi_h1pool {
  dsysi_loop *loop;
  int closing;
  dsysi_h1pool_options o;
  endpoint *eps;
  h1conn *all;
  size_t nopen;
  uint64_t sweep_timer;
};

static void conn_io(dsysi_loop *l, int fd, uint32_t ev, void *ud);

static void sweep(dsysi_loop *l, void *ud);

int dsysi_h1pool_new(dsysi_h1pool **out, dsysi_loop *loop,
                     const dsysi_h1pool_options *opts) {
  dsysi_h1pool *p = calloc(1, sizeof *p);
  if (!p) return DSYS_ENOMEM;
  p->loop = loop;
  if (opts) p->o = *opts;
  if (!p->o.max_idle_per_endpoint) p->o.max_idle_per_endpoint = 128;
  if (!p->o.idle_timeout_us) p->o.idle_timeout_us = 15000000;
  p->sweep_timer = dsysi_loop_timer(loop, 1000000, sweep, p);
  *out = p;
  return 0;
}

static void conn_close(dsysi_h1pool *p, h1conn *c) {
  dsysi_loop_del(p->loop, &c->w);
  close(c->w.fd);
  if (c->aprev) c->aprev->anext = c->anext;
  else p->all = c->anext;
  if (c->anext) c->anext->aprev = c->aprev;
  p->nopen--;
  free(c);
}

static void idle_remove(h1conn *c) {
  endpoint *ep = c->ep;
  for (h1conn **pp = &ep->idle; *pp; pp = &(*pp)->next)
    if (*pp == c) {
      *pp = c->next;
      ep->nidle--;
      return;
    }
}

static void sweep(dsysi_loop *l, void *ud) {
  dsysi_h1pool *p = ud;
  int64_t now = dsysi_loop_now_us();
  for (endpoint *ep = p->eps; ep; ep = ep->next) {
    h1conn **pp = &ep->idle;
    while (*pp) {
      h1conn *c = *pp;
      if (now - c->last_used > p->o.idle_timeout_us) {
        *pp = c->next;
        ep->nidle--;
        conn_close(p, c);
      } else {
        pp = &c->next;
      }
    }
  }
  p->sweep_timer = dsysi_loop_timer(l, 1000000, sweep, p);
}

void dsysi_h1pool_free(dsysi_h1pool *p) {
  if (!p) return;
  p->closing = 1; /* on_done callbacks below must not start new work */
  dsysi_loop_cancel(p->loop, p->sweep_timer);
  while (p->all) {
    h1conn *c = p->all;
    dsysi_h1req *r = c->req;
    if (r) {
      r->conn = NULL;
      dsysi_loop_cancel(p->loop, r->timer);
    }
    conn_close(p, c);
    if (r) r->on_done(r, DSYS_ECANCELED);
  }
  while (p->eps) {
    endpoint *ep = p->eps;
    p->eps = ep->next;
    free(ep->addr);
    free(ep->base);
    free(ep->authority);
    free(ep);
  }
  free(p);
}

size_t dsysi_h1pool_open(dsysi_h1pool *p) { return p->nopen; }

static endpoint *endpoint_get(dsysi_h1pool *p, const char *addr) {
  for (endpoint *ep = p->eps; ep; ep = ep->next)
    if (!strcmp(ep->addr, addr)) return ep;
  dsysi_url u;
  if (dsysi_url_parse(addr, &u)) return NULL;
  endpoint *ep = calloc(1, sizeof *ep);
  if (!ep) {
    dsysi_url_free(&u);
    return NULL;
  }
  int ok = 0;
  if (!strcmp(u.scheme, "unix")) {
    struct sockaddr_un *sun = (struct sockaddr_un *)&ep->sa;
    if (strlen(u.path) < sizeof sun->sun_path) {
      sun->sun_family = AF_UNIX;
      strcpy(sun->sun_path, u.path);
      ep->salen = sizeof *sun;
      ok = 1;
    }
  } else if (!strcmp(u.scheme, "http")) {
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", u.port);
    /* Resolved once per pool: endpoints come from the registry as literal
     * addresses; a name that moves needs a new pool. */
    if (getaddrinfo(u.host, port, &hints, &ai) == 0 && ai) {
      memcpy(&ep->sa, ai->ai_addr, ai->ai_addrlen);
      ep->salen = ai->ai_addrlen;
      ok = 1;
    }
    if (ai) freeaddrinfo(ai);
  }
  if (ok) {
    const char *a = strstr(addr, "://") + 3;
    ep->authority = u.scheme[0] == 'u' ? strdup("localhost") : dsysi_strndup(a, strcspn(a, "/"));
    ep->base = strdup(u.scheme[0] == 'u' ? "" : u.path);
    ep->addr = strdup(addr);
  }
  dsysi_url_free(&u);
  if (!ok || !ep->addr || !ep->base || !ep->authority) {
    free(ep->addr);
    free(ep->base);
    free(ep->authority);
    free(ep);
    return NULL;
  }
  ep->next = p->eps;
  p->eps = ep;
  return ep;
}

/* Finish the exchange: release or close the connection, then on_done. */
static void finish(dsysi_h1req *r, int err, int reusable) {
  dsysi_h1pool *p = r->pool;
  h1conn *c = r->conn;
  dsysi_loop_cancel(p->loop, r->timer);
  r->timer = 0;
  r->conn = NULL;
  if (c) {
    c->req = NULL;
    if (reusable && !err && c->ep->nidle < p->o.max_idle_per_endpoint) {
      c->last_used = dsysi_loop_now_us();
      c->next = c->ep->idle;
      c->ep->idle = c;
      c->ep->nidle++;
      /* Idle: the watch (EPOLLIN|EPOLLRDHUP) reports the peer closing it. */
    } else {
      conn_close(p, c);
    }
  }
  r->err = err;
  r->on_done(r, err);
}

static int new_conn(dsysi_h1pool *p, endpoint *ep, h1conn **out) {
  int fd = socket(ep->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return DSYS_ECONNREFUSED;
  if (ep->sa.ss_family != AF_UNIX) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  int rc = connect(fd, (struct sockaddr *)&ep->sa, ep->salen);
  if (rc != 0 && errno != EINPROGRESS && errno != EAGAIN) {
    close(fd);
    return DSYS_ECONNREFUSED; /* refused, no such socket file, unreachable */
  }
  h1conn *c = calloc(1, sizeof *c);
  if (!c) {
    close(fd);
    return DSYS_ENOMEM;
  }
  c->w.fd = fd;
  c->w.fn = conn_io;
  c->w.ud = c;
  c->pool = p;
  c->ep = ep;
  c->connecting = rc != 0;
  c->wout = 1;
  if (dsysi_loop_add(p->loop, &c->w, EPOLLOUT | EPOLLIN | EPOLLRDHUP, 0)) {
    close(fd);
    free(c);
    return DSYS_EIO;
  }
  c->anext = p->all;
  if (p->all) p->all->aprev = c;
  p->all = c;
  p->nopen++;
  *out = c;
  return 0;
}

static int h_head(void *ud) {
  dsysi_h1req *r = ud;
  return r->on_head ? r->on_head(r) : 0;
}

static int h_body(const char *d, size_t n, void *ud) {
  dsysi_h1req *r = ud;
  return r->on_body ? r->on_body(r, d, n) : 0;
}

static void try_write(dsysi_h1req *r);

/* Bind r to a connection (pooled or new) and start writing. */
static int attach(dsysi_h1req *r, int allow_pooled) {
  dsysi_h1pool *p = r->pool;
  endpoint *ep = r->ep ? r->ep : (r->ep = endpoint_get(p, r->addr));
  if (!ep) return DSYS_EURL;
  h1conn *c = allow_pooled ? ep->idle : NULL;
  if (c) {
    ep->idle = c->next;
    ep->nidle--;
    r->reused = 1;
  } else {
    r->reused = 0;
    int rc = new_conn(p, ep, &c);
    if (rc) return rc;
  }
  c->req = r;
  c->woff = 0;
  r->conn = c;
  r->sent = 0;
  r->received = 0;
  dsysi_h1_free(&r->resp);
  dsysi_h1_init(&r->resp, r->is_head, h_head, h_body, r);
  if (r->hdr_arena) r->resp.hdrs.ar = r->hdr_arena;
  if (!c->connecting) {
    /* A pooled connection is writable almost always: write now and avoid
     * two epoll_ctl calls per request. Whatever goes wrong here is left
     * for the event loop to report (on_done never runs inside start). */
    try_write(r);
  }
  return 0;
}

/* The connection failed before any response byte. A reused keep-alive
 * connection the server had already closed gets one retry on a fresh one
 * (the request never reached a live peer); else report the failure. */
static void failed_early(dsysi_h1req *r, int err) {
  h1conn *c = r->conn;
  if (r->reused && r->received == 0 && !r->stale_retry) {
    r->stale_retry = 1;
    r->conn = NULL;
    c->req = NULL;
    conn_close(r->pool, c);
    int rc = attach(r, 0);
    if (!rc) return;
    err = rc;
  }
  finish(r, err, 0);
}

static void arm_write(dsysi_h1pool *p, h1conn *c, int on) {
  if (c->wout == on) return;
  c->wout = on;
  dsysi_loop_mod(p->loop, &c->w, EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0), 0);
}

/* Write as much as the socket takes; 0 when all written, 1 when it would
 * block (EPOLLOUT armed), negative errno-style on failure. */
static int write_some(dsysi_h1req *r) {
  h1conn *c = r->conn;
  size_t total = r->head_len + r->body_len;
  while (c->woff < total) {
    struct iovec iov[2];
    int n = 0;
    if (c->woff < r->head_len) {
      iov[n].iov_base = (char *)r->head + c->woff;
      iov[n++].iov_len = r->head_len - c->woff;
      if (r->body_len) {
        iov[n].iov_base = (char *)r->body;
        iov[n++].iov_len = r->body_len;
      }
    } else {
      iov[n].iov_base = (char *)r->body + (c->woff - r->head_len);
      iov[n++].iov_len = total - c->woff;
    }
    /* One buffer (most requests): send(), whose kernel path skips the
     * msghdr and iovec copies of sendmsg() (perf: about 2% of the
     * gateway's kernel time). */
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    ssize_t w = n == 1 ? send(c->w.fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
                       : sendmsg(c->w.fd, &mh, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        arm_write(r->pool, c, 1);
        return 1;
      }
      return -1;
    }
    c->connecting = 0;
    c->woff += (size_t)w;
  }
  r->sent = 1;
  arm_write(r->pool, c, 0);
  return 0;
}

static void do_write(dsysi_h1req *r) {
  if (write_some(r) < 0)
    failed_early(r, r->conn->connecting ? DSYS_ECONNREFUSED : DSYS_ECONNRESET);
}

static void try_write(dsysi_h1req *r) {
  /* On failure let the loop see the error (EPOLLOUT|EPOLLERR) and report it. */
  if (write_some(r) < 0) arm_write(r->pool, r->conn, 1);
}

static void do_read(dsysi_h1req *r) {
  h1conn *c = r->conn;
  char buf[16384];
  for (;;) {
    ssize_t n = recv(c->w.fd, buf, sizeof buf, 0);
    if (n > 0) {
      r->received += (size_t)n;
      size_t used = 0;
      int rc = dsysi_h1_feed(&r->resp, buf, (size_t)n, &used);
      if (rc == DSYSI_H1_DONE) {
        /* Extra bytes after a complete response: the peer is broken (we
         * never pipeline), so the connection is not reused. */
        finish(r, 0, r->resp.keep_alive && used == (size_t)n);
        return;
      }
      if (rc < 0) {
        finish(r, rc, 0);
        return;
      }
      continue;
    }
    if (n == 0) {
      if (r->received == 0) {
        failed_early(r, DSYS_ECONNRESET);
        return;
      }
      int rc = dsysi_h1_eof(&r->resp);
      finish(r, rc == DSYSI_H1_DONE ? 0 : rc, 0);
      return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    if (errno == EINTR) continue;
    if (r->received == 0) failed_early(r, c->connecting ? DSYS_ECONNREFUSED : DSYS_ECONNRESET);
    else finish(r, DSYS_ECONNRESET, 0);
    return;
  }
}

static void conn_io(dsysi_loop *l, int fd, uint32_t ev, void *ud) {
  h1conn *c = ud;
  dsysi_h1req *r = c->req;
  if (!r) {
    /* Idle connection became readable: closed by the peer (or it sent
     * something unsolicited). Either way it is no longer usable. */
    idle_remove(c);
    conn_close(c->pool, c);
    return;
  }
  if (c->connecting && (ev & (EPOLLERR | EPOLLHUP))) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    finish(r, DSYS_ECONNREFUSED, 0); /* nothing was sent */
    return;
  }
  if ((ev & EPOLLOUT) && !r->sent) {
    do_write(r);
    if (c != r->conn || !r->sent) return;
  }
  if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) do_read(r);
}

static void on_timeout(dsysi_loop *l, void *ud) {
  dsysi_h1req *r = ud;
  r->timer = 0;
  finish(r, DSYS_ETIMEDOUT, 0);
}

static void deliver_start_error(dsysi_loop *l, void *ud) {
  dsysi_h1req *r = ud;
  r->on_done(r, r->err);
}

/* ep: the endpoint of r->addr when the caller looked it up already. */
static int start(dsysi_h1pool *p, dsysi_h1req *r, endpoint *ep) {
  if (!r->addr || !r->head || !r->on_done) return DSYS_EINVAL;
  if (p->closing) return DSYS_ECLOSED;
  r->pool = p;
  r->ep = ep;
  r->stale_retry = 0;
  r->err = 0;
  r->timer = 0;
  int rc = attach(r, 1);
  if (rc == DSYS_EURL || rc == DSYS_ENOMEM) return rc;
  if (rc) {
    /* Could not even connect: report through on_done, never from inside
     * this call. */
    r->err = rc;
    r->conn = NULL;
    if (!dsysi_loop_timer(p->loop, 0, deliver_start_error, r)) return DSYS_ENOMEM;
    return 0;
  }
  if (r->timeout_us > 0) r->timer = dsysi_loop_timer(p->loop, r->timeout_us, on_timeout, r);
  return 0;
}

int dsysi_h1_start(dsysi_h1pool *p, dsysi_h1req *r) { return start(p, r, NULL); }

void dsysi_h1req_free(dsysi_h1req *r) { dsysi_h1_free(&r->resp); }

void dsysi_h1_abort(dsysi_h1req *r) {
  if (!r->pool) return;
  dsysi_loop_cancel(r->pool->loop, r->timer);
  r->timer = 0;
  if (r->conn) {
    r->conn->req = NULL;
    conn_close(r->pool, r->conn);
    r->conn = NULL;
  }
  dsysi_h1_free(&r->resp);
}

/* ---- the dialer: a dsys_call as one exchange on the current loop ---- */

/* One exchange of dsysi_h1_dial. Finished ones are kept per loop
 * (dsysi_loop_cache) with their head buffers: two mallocs and two frees
 * fewer per request on the gateway's hot path. */
typedef struct xchg {
  dsysi_h1req h1;
  struct dialctx *dc;
  dsysi_buf head;
  dsysi_buf body;
  dsys_reply *reply;     /* status and headers (its arena) as parsed */
  dsysi_dial_opts o;
  dsys_chunk_fn on_chunk;
  void *chunk_ud;
  dsys_reply_fn done;
  void *ud;
  int streaming, too_big;
  int head_limited;         /* the timer runs to the head timeout ... */
  int64_t full_deadline_us; /* ... and this loop time bounds the whole
                               exchange (0: nothing does) */
  struct xchg *next, *prev; /* dialctx live list */
} xchg;

/* The loop's dialer state (dsysi_loop_local). */
typedef struct dialctx {
  dsysi_h1pool *pool;
  xchg *live;  /* started, not yet done */
} dialctx;

/* As many as a loop has requests in flight at 256 connections over two
 * loops: with 64, bursts went past the list and the exchange went back to
 * malloc's large-chunk path (malloc_consolidate); 256 measured about 3%
 * less CPU per request at 256 connections (12 A/B rounds, PERFORMANCE.md).
 * At most about 1.3 MiB per loop, held only after such a burst. */
#define MAX_SPARE_X 256
#define MAX_SPARE_HEAD 4096 /* a larger head buffer is not kept */

static int xchg_key;

static void x_destroy(void *o) {
  xchg *x = o;
  dsysi_buf_free(&x->head);
  free(x);
}

static void x_release(xchg *x) {
  dsysi_h1req_free(&x->h1);
  dsysi_buf_free(&x->body);
  dsys_reply_free(x->reply);
  x->reply = NULL;
  if (x->head.oom || x->head.cap > MAX_SPARE_HEAD ||
      dsysi_loop_cache_put(&xchg_key, x, MAX_SPARE_X, x_destroy))
    x_destroy(x);
}

static void dial_fini(dsysi_loop *l, void *blk) {
  dialctx *dc = blk;
  dsysi_h1pool *pool = dc->pool;
  dc->pool = NULL; /* nothing is kept from here on */
  dsysi_h1pool_free(pool); /* exchanges with a connection end (ECANCELED) */
  while (dc->live) {       /* the rest waited for a start error's delivery */
    xchg *x = dc->live;
    dc->live = x->next;
    x->next = x->prev = NULL;
    x->h1.conn = NULL;
    x->h1.on_done(&x->h1, DSYS_ECANCELED);
  }
}

static char dial_key;

static dialctx *dial_ctx(void) {
  dsysi_loop *l = dsysi_loop_current();
  dialctx *dc = l ? dsysi_loop_local(l, &dial_key, sizeof *dc, dial_fini) : NULL;
  if (dc && !dc->pool && dsysi_h1pool_new(&dc->pool, l, NULL)) return NULL;
  return dc;
}

/* Appends for the request head: a memcpy when the buffer has room (it
 * almost always has: build_head reserves a typical head's size), the
 * general dsysi_buf_append otherwise. */
static inline void put(dsysi_buf *b, const char *s, size_t n) {
  if (!b->oom && b->len + n + 1 <= b->cap) {
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
  } else {
    dsysi_buf_append(b, s, n);
  }
}
#define PUT_LIT(b, lit) put(b, lit, sizeof lit - 1)

/* Append "name: value\r\n" without printf (this runs per request). */
static void put_header(dsysi_buf *b, const char *name, size_t nlen, const char *value) {
  size_t vlen = strlen(value);
  if (!b->oom && b->len + nlen + vlen + 4 + 1 <= b->cap) {
    char *o = b->data + b->len;
    memcpy(o, name, nlen);
    o += nlen;
    *o++ = ':';
    *o++ = ' ';
    memcpy(o, value, vlen);
    o += vlen;
    *o++ = '\r';
    *o++ = '\n';
    *o = '\0';
    b->len = (size_t)(o - b->data);
    return;
  }
  put(b, name, nlen);
  PUT_LIT(b, ": ");
  put(b, value, vlen);
  PUT_LIT(b, "\r\n");
}

/* The request line and headers: the call's headers as given (the caller
 * decided what to forward, dsysi_fwd_request), a Host from the endpoint
 * when they carry none, and Content-Length for the body (the only framing
 * we send). */
static int build_head(dsysi_buf *b, const dsys_call *call, const endpoint *ep) {
  /* One allocation for a typical head, small enough to stay in glibc's
   * per-thread cache (at most 1032 bytes). */
  dsysi_buf_reserve(b, 1000 - 1);
  const char *m = call->method;
  put(b, m, strlen(m));
  PUT_LIT(b, " ");
  put(b, ep->base, strlen(ep->base));
  put(b, call->path, strlen(call->path));
  PUT_LIT(b, " HTTP/1.1\r\n");
  int host = 0;
  for (size_t i = 0; i < call->nheaders; i++) {
    const char *name = call->headers[i].name;
    size_t nl = strlen(name);
    host |= nl == 4 && dsysi_streq_nocase(name, "host");
    put_header(b, name, nl, call->headers[i].value);
  }
  if (!host) put_header(b, "Host", 4, ep->authority);
  if (call->body_len || (strcmp(m, "GET") && strcmp(m, "HEAD") && strcmp(m, "DELETE") &&
                         strcmp(m, "OPTIONS"))) {
    char cl[32];
    snprintf(cl, sizeof cl, "%zu", call->body_len);
    put_header(b, "Content-Length", 14, cl);
  }
  PUT_LIT(b, "\r\n");
  return b->oom ? DSYS_ENOMEM : 0;
}

static int x_head(dsysi_h1req *r) {
  xchg *x = r->ud;
  if (x->head_limited) { /* the head came in time: the call's own timeout now */
    x->head_limited = 0;
    dsysi_loop_cancel(r->pool->loop, r->timer);
    int64_t left = x->full_deadline_us - dsysi_loop_now_us();
    r->timer = x->full_deadline_us
                   ? dsysi_loop_timer(r->pool->loop, left > 0 ? left : 0, on_timeout, r)
                   : 0;
  }
  x->reply->status = r->resp.status;
  x->reply->hdrs = r->resp.hdrs; /* in the reply's arena */
  x->reply->ctype = r->resp.content_type; /* found by the parser */
  int st = x->o.on_head ? x->o.on_head(x->ud, x->reply) : x->on_chunk != NULL;
  x->streaming = st > 0;
  return st < 0;
}

static int x_body(dsysi_h1req *r, const char *d, size_t n) {
  xchg *x = r->ud;
  if (x->streaming) {
    if (x->o.on_body) return x->o.on_body(x->ud, d, n);
    if (x->on_chunk) x->on_chunk(d, n, x->chunk_ud);
    return 0;
  }
  if (x->body.len + n > x->o.max_response) {
    x->too_big = 1;
    return 1;
  }
  return dsysi_buf_append(&x->body, d, n) != 0;
}

static void x_done(dsysi_h1req *r, int err) {
  xchg *x = r->ud;
  dialctx *dc = x->dc;
  if (x->prev) x->prev->next = x->next;
  else if (dc->live == x) dc->live = x->next;
  if (x->next) x->next->prev = x->prev;
  x->next = x->prev = NULL;
  if (x->too_big) err = DSYS_ETOOBIG;
  dsys_reply *reply = NULL;
  if (!err) {
    reply = x->reply;
    x->reply = NULL;
    reply->status = r->resp.status;
    reply->hdrs = r->resp.hdrs;
    reply->ctype = r->resp.content_type;
    r->resp.hdrs.v = NULL; /* the reply owns them now */
    r->resp.hdrs.n = r->resp.hdrs.cap = 0;
    reply->body = dsysi_buf_steal(&x->body, &reply->body_len);
    if (!reply->body) err = DSYS_ENOMEM;
  }
  dsys_reply_fn done = x->done;
  void *ud = x->ud;
  if (err) {
    dsys_reply_free(reply);
    reply = NULL;
  }
  x_release(x);
  done(err, reply, ud);
}

int dsysi_h1_dial(const dsys_call *call, const dsysi_dial_opts *o, dsys_reply_fn done,
                  void *ud) {
  if (!call || !call->url || !call->method || !call->path || !done) return DSYS_EINVAL;
  if (strncmp(call->url, "http://", 7) && strncmp(call->url, "unix://", 7)) return DSYS_ESCHEME;
  if (!dsysi_loop_current()) return DSYS_ESTATE;
  dialctx *dc = dial_ctx();
  if (!dc) return DSYS_ENOMEM;
  endpoint *ep = endpoint_get(dc->pool, call->url);
  if (!ep) return DSYS_EURL;
  xchg *x = dsysi_loop_cache_get(&xchg_key);
  if (x) {
    dsysi_buf head = x->head;
    memset(x, 0, sizeof *x);
    head.len = 0;
    x->head = head;
  } else {
    /* malloc + memset: glibc's calloc never takes from the per-thread
     * cache; the barrier keeps the compiler from fusing the two back. */
    x = malloc(sizeof *x);
    __asm__ volatile("" : "+r"(x));
    if (!x) return DSYS_ENOMEM;
    memset(x, 0, sizeof *x);
  }
  x->dc = dc;
  if (o) x->o = *o;
  if (!x->o.max_response) x->o.max_response = 64u * 1024 * 1024;
  x->on_chunk = call->on_chunk;
  x->chunk_ud = call->chunk_ud;
  x->done = done;
  x->ud = ud;
  x->reply = dsysi_reply_new(0);
  int rc = x->reply ? build_head(&x->head, call, ep) : DSYS_ENOMEM;
  if (!rc) {
    dsysi_h1req *r = &x->h1;
    r->addr = ep->addr;
    r->head = x->head.data;
    r->head_len = x->head.len;
    r->body = call->body;
    r->body_len = call->body_len;
    r->is_head = !strcmp(call->method, "HEAD");
    r->timeout_us = call->timeout_ms > 0 ? call->timeout_ms * 1000 : 0;
    int64_t head_us = x->o.head_timeout_ms > 0 ? x->o.head_timeout_ms * 1000 : 0;
    if (head_us && (!r->timeout_us || head_us < r->timeout_us)) {
      x->head_limited = 1;
      x->full_deadline_us = r->timeout_us ? dsysi_loop_now_us() + r->timeout_us : 0;
      r->timeout_us = head_us;
    }
    r->on_head = x_head;
    r->on_body = x_body;
    r->on_done = x_done;
    r->ud = x;
    r->hdr_arena = &x->reply->ar;
    x->next = dc->live;
    if (dc->live) dc->live->prev = x;
    dc->live = x;
    rc = start(dc->pool, r, ep);
    if (rc) {
      dc->live = x->next;
      if (x->next) x->next->prev = NULL;
      x->next = NULL;
    }
  }
  if (rc) x_release(x);
  return rc;
}

/* The loop dialers of http and unix (transport.h): dsys_upstream finds them
 * by scheme when it runs on a loop thread. */
static const dsysi_loop_dialer_ops http_loop = {
    .version = DSYSI_LOOP_DIALER_OPS_VERSION, .scheme = "http", .dial = dsysi_h1_dial};
static const dsysi_loop_dialer_ops unix_loop = {
    .version = DSYSI_LOOP_DIALER_OPS_VERSION, .scheme = "unix", .dial = dsysi_h1_dial};

DSYSI_PLUGINS(h1client) = {{"loop-dialer", &http_loop}, {"loop-dialer", &unix_loop}, {0}};
