/*
 * Listener side of the http:// and unix:// transports, on libmicrohttpd,
 * with suspend/resume for deferred answers and streams (no server thread
 * ever waits). Two modes:
 * - pool (default): MHD's internal epoll thread pool;
 * - event loops (dsys_server_options.event_loops = N): N threads, each an
 *   MHD daemon in external epoll mode inside its own dsysi_loop, on its own
 *   SO_REUSEPORT socket. Handlers then run on a loop thread and may start
 *   non-blocking work in the same loop (the gateway's upstream client).
 * We create the listening sockets ourselves (TCP or AF_UNIX) and hand them
 * to MHD, so both schemes share everything else and the bound port can be
 * read back.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <microhttpd.h>
#include <gnutls/gnutls.h>
#include <gnutls/abstract.h>
#include "core/plugin.h"
#include "core/rng.h"
#include "transport/evloop.h"
#include "transport/transport.h"
#include "transport/url.h"

typedef struct mhd_lst mhd_lst;
typedef struct caddr caddr;
typedef struct silent silent;
typedef struct handoff handoff;

/* The certificate (chain) and key an https listener presents. A reload
 * puts new ones in front; the older ones stay until the listener is freed
 * (GnuTLS keeps pointing at them for the sessions that used them). */
typedef struct tls_keys {
  gnutls_pcert_st pcert[16];
  unsigned n;
  gnutls_privkey_t key;
  struct tls_keys *older;
} tls_keys;

/* One MHD daemon: the pool daemon, or one per event loop. */
typedef struct mhd_d {
  mhd_lst *l;
  struct MHD_Daemon *d;
  int fd;               /* listening socket */
  dsysi_loop *loop;     /* event-loop mode only */
  dsysi_watch w;        /* MHD's epoll fd inside the loop */
  pthread_t thr;
  int started;
  /* Balanced accept (see on_accept): connections handed to this loop by
   * the accepting loop, waiting for MHD_add_connection on this one. */
  pthread_mutex_t hmu;
  struct handoff *hq;
  size_t hn, hcap;
  atomic_uint conns;    /* open connections (MHD's start/close notices) */
  atomic_uint pending;  /* handed over, not yet added */
  int queued;           /* loop mode: an answer was queued by a deferred
                           handler call during this MHD_run */
  /* Loop mode, requests left waiting unsuspended (see after_dispatch): */
  unsigned waiting;     /* how many */
  struct mhd_req *w_first, *w_last; /* them, by wait_until (oldest first) */
  unsigned heads;       /* loop mode: requests whose line is in but not yet
                           all their headers (see mhd_timeout) */
  int busy;             /* this tick moved body or stream data: MHD may
                           have more to do at once (see mhd_timeout) */
  int64_t now_us;       /* read once per tick */
  handoff *incoming;    /* during MHD_add_connection: what its STARTED
                           notice takes over (add_one) */
} mhd_d;

/* A connection on its way to a loop's MHD (TCP event loops). */
struct handoff {
  int fd;
  socklen_t alen;
  struct sockaddr_in6 addr; /* AF_INET or AF_INET6 */
  caddr *a;                 /* its address's record */
  int64_t accepted_us;
};

/* Per connection, from MHD's STARTED notice to its CLOSED one: the
 * deadlines the guard thread enforces (header_timeout_s, request_timeout_s;
 * 0: not watched) and whether its close should linger. */
typedef struct mconn {
  int fd;
  _Atomic int64_t head_deadline_us; /* request line + headers */
  _Atomic int64_t req_deadline_us;  /* the whole request */
  atomic_int cut;    /* cut on purpose (a timeout, an endless body,
                        an eviction): no lingering */
  atomic_int linger; /* answered before its body was read */
  /* For eviction (TCP event loops): a connection is idle from its start or
   * its last answer until its next request head is complete. */
  atomic_int busy;
  _Atomic int64_t idle_us; /* since when idle */
  caddr *a;                /* its address (NULL: not counted) */
  struct mconn *prev, *next;   /* l->conns */
  struct mconn *aprev, *anext; /* a's connections in MHD */
} mconn;

/* A client address of a TCP event-loop listener: the connections it holds
 * (silent, on their way, in MHD) and which they are, for
 * max_connections_per_addr. Under l->cmu; freed when n drops to 0. */
struct caddr {
  unsigned char key[16]; /* IPv6, IPv4 as v4-mapped */
  unsigned n;
  silent *s_first, *s_last;  /* its silent connections, oldest first */
  mconn *m_first, *m_last;   /* its connections in MHD */
  caddr *hnext;              /* hash chain */
};

/* An accepted connection that has not sent a byte yet (TCP event loops):
 * held by loop 0 outside MHD, which would give it a connection_memory
 * pool at once, until its first byte, its header deadline or an eviction
 * (see admit). */
struct silent {
  dsysi_watch w;
  mhd_lst *l;
  caddr *a;
  int64_t accepted_us;
  int ready;   /* it sent bytes, and waits for a loop with room (l->r_*) */
  int dead;    /* closed; freed after the loop's current batch (graveyard) */
  silent *prev, *next;   /* l->s_* or l->r_*, oldest first; graveyard */
  silent *aprev, *anext; /* a's silent ones */
  socklen_t alen;
  struct sockaddr_in6 addr;
};

/* A closed connection whose input is still being read and dropped (see
 * linger_start), owned by the guard loop. */
typedef struct lingerer {
  dsysi_watch w;
  uint64_t timer;
  uint64_t left; /* bytes that may still be discarded */
  mhd_lst *l;
  struct lingerer *prev, *next;
} lingerer;

/* Lingering close bounds. The point is only to let a client that writes
 * its whole request before reading (Python's http.client, most simple
 * clients) finish the write it has in flight and read the early answer
 * instead of a reset: 2 s and 64 MiB cover a body of that size down to
 * about 270 Mbit/s and end long before nginx's lingering_time (30 s); a
 * slower or endless sender is cut as before. */
#define LINGER_US 2000000
#define LINGER_MAX_BYTES ((uint64_t)64 << 20)

struct mhd_lst {
  /* Timeouts and lingering close: the watched connections and the guard,
   * one loop thread per listener whatever the mode (see guard_start). */
  pthread_mutex_t cmu;
  mconn *conns;
  int64_t req_timeout_us, head_timeout_us, idle_us, sweep_us;
  dsysi_loop *guard;
  pthread_t guard_thr;
  int guard_started;
  pthread_mutex_t lmu;  /* lq: descriptors waiting for the guard */
  int *lq;
  size_t lqn, lqcap;
  lingerer *lingering;  /* guard thread only */
  atomic_uint nlinger;  /* queued + lingering */
  atomic_uint nopen;    /* client connections open (MHD's notices) */
  atomic_uint nquiesced; /* loop mode: loops whose quiesce task ran */
  dsys_server *srv;
  const dsysi_listener_ops *ops;
  mhd_d *ds;
  unsigned nd;
  int loops;            /* event-loop mode */
  char url[300];
  char *unix_path;
  int quiesced;
  atomic_int refusing;  /* pool mode, after quiesce: new connections are
                           closed at once (accept_policy) */
  int tls;              /* https: MHD with GnuTLS */
  int is_unix;
  int balanced;         /* TCP event loops: one listening socket that loop
                           0 accepts on, holds silent connections (admit)
                           and spreads (on_accept) */
  dsysi_watch acc;      /* that socket in loop 0 */
  /* The accept path of TCP event loops (admit): client addresses and the
   * connections that have not sent a byte, under cmu; the lists are
   * changed on loop 0's thread only. */
  caddr **atab;         /* hash table of addresses */
  size_t acap, an;
  silent *s_first, *s_last; /* silent, oldest first */
  silent *r_first, *r_last; /* sent a byte, waiting for a loop with room */
  silent *graveyard;    /* loop 0 only: closed, freed in its tick */
  unsigned nsilent;
  unsigned per_addr;    /* 0: no limit */
  unsigned max_silent;  /* after the descriptor limit (silent_limit) */
  atomic_int room_wanted; /* r_* waits: a closing connection posts drain_task */
  int stopped;          /* free_lst: the loops' threads have ended */
  int acc_empty;        /* loop 0: the last accept found the backlog empty */
  int64_t acc_warned_us; /* loop 0: last accept-error warning */
  char *pem_trust;       /* read at listen; MHD keeps the pointer */
  tls_keys *keys;        /* https: what cert_cb presents (under tls_mu) */
  int port;              /* the bound TCP port (cert_cb finds us by it) */
  mhd_lst *tls_next;     /* in tls_lsts */
};

/* https listeners, for cert_cb: GnuTLS's certificate callback has no
 * closure argument, and MHD gives the session only the socket. */
static pthread_mutex_t tls_mu = PTHREAD_MUTEX_INITIALIZER;
static mhd_lst *tls_lsts;

static void keys_free(tls_keys *k) {
  if (!k) return;
  for (unsigned i = 0; i < k->n; i++) gnutls_pcert_deinit(&k->pcert[i]);
  if (k->key) gnutls_privkey_deinit(k->key);
  free(k);
}

static int cert_cb(gnutls_session_t s, const gnutls_datum_t *req_ca, int nreq,
                   const gnutls_pk_algorithm_t *algos, int nalgos, gnutls_pcert_st **pcert,
                   unsigned int *pcert_len, gnutls_privkey_t *key);

typedef struct mhd_req {
  mhd_lst *l;
  mhd_d *md;
  struct MHD_Connection *conn;
  mconn *mc;            /* its connection's watch (NULL without memory) */
  dsysi_buf body;
  int seen;
  int too_big;
  uint64_t dropped;     /* too_big: body bytes discarded so far */
  int64_t too_big_us;   /* when the body went over the limit */
  int suspended;
  int deferred;         /* answered later than in the handler's first call */
  int waiting;          /* left unanswered and unsuspended until wait_until */
  int64_t wait_until;
  struct mhd_req *w_prev, *w_next; /* md->w_first list while waiting */
  int in_head;          /* counted in md->heads */
  atomic_int ready;     /* notify() was called: an answer or news is in */
  dsys_request *req;
  char target[]; /* the raw request target (transports.md, libmicrohttpd pitfall 5) */
} mhd_req;

static mconn *conn_watch(struct MHD_Connection *conn) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return ci ? ci->socket_context : NULL;
}

/* The request line and headers are in: the connection is busy (not
 * evictable) until its answer is done (request_completed). */
static void head_done(mhd_req *m) {
  if (m->in_head) {
    m->in_head = 0;
    m->md->heads--;
  }
  if (!m->mc) return;
  atomic_store_explicit(&m->mc->head_deadline_us, 0, memory_order_relaxed);
  atomic_store_explicit(&m->mc->busy, 1, memory_order_relaxed);
}

/* The whole request is in, or was answered before its body (early): the
 * connection is no longer the client's to hold up; an early answer makes
 * its close linger. */
static void request_in(mhd_req *m, int early) {
  if (!m->mc) return;
  atomic_store_explicit(&m->mc->head_deadline_us, 0, memory_order_relaxed);
  atomic_store_explicit(&m->mc->req_deadline_us, 0, memory_order_relaxed);
  if (early) atomic_store_explicit(&m->mc->linger, 1, memory_order_relaxed);
}

/* Arm the deadlines of the next request on a connection; the first
 * counts from start_us (its accept). */
static void watch_next(mhd_lst *l, mconn *mc, int first, int64_t start_us) {
  int64_t now = first ? start_us : dsysi_loop_now_us();
  atomic_store_explicit(&mc->busy, 0, memory_order_relaxed);
  atomic_store_explicit(&mc->idle_us, now, memory_order_relaxed);
  /* On a kept-alive connection we cannot see when the next request's
   * first byte arrives: allow the idle time before it (the idle timeout
   * cuts a silent connection anyway), so this never shortens idle_timeout_s.
   * The worst case equals nginx's keepalive_timeout + client_header_timeout. */
  if (l->head_timeout_us)
    atomic_store_explicit(&mc->head_deadline_us,
                          now + l->head_timeout_us + (first ? 0 : l->idle_us),
                          memory_order_relaxed);
  if (l->req_timeout_us)
    atomic_store_explicit(&mc->req_deadline_us, now + l->req_timeout_us,
                          memory_order_relaxed);
}

static void drain_task(dsysi_loop *loop, void *ud);
static void linger_start(mhd_lst *l, int fd);
static void addr_put(mhd_lst *l, caddr *a);

static void notify_conn(void *cls, struct MHD_Connection *conn, void **socket_ctx,
                        enum MHD_ConnectionNotificationCode code) {
  mhd_d *md = cls;
  mhd_lst *l = md->l;
  if (l->balanced) {
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
      atomic_fetch_add(&md->conns, 1);
    } else {
      atomic_fetch_sub(&md->conns, 1);
      /* A loop has room again: connections that sent a byte may wait. */
      if (!l->stopped && atomic_exchange(&l->room_wanted, 0))
        dsysi_loop_post(l->ds[0].loop, drain_task, l);
    }
  }
  if (code == MHD_CONNECTION_NOTIFY_STARTED) atomic_fetch_add(&l->nopen, 1);
  else atomic_fetch_sub(&l->nopen, 1);
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    /* Added by add_one (TCP event loops): already counted, with its
     * address; else accepted by MHD itself. */
    handoff *h = md->incoming;
    md->incoming = NULL;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    mconn *mc = ci ? calloc(1, sizeof *mc) : NULL;
    if (!mc) { /* not watched or counted: as without timeouts and limits */
      if (h) {
        pthread_mutex_lock(&l->cmu);
        addr_put(l, h->a);
        pthread_mutex_unlock(&l->cmu);
        dsysi_server_conn_note(l->srv, DSYSI_CONN_OPEN, -1);
      }
      return;
    }
    if (!h) dsysi_server_conn_note(l->srv, DSYSI_CONN_OPEN, 1);
    mc->fd = ci->connect_fd;
    watch_next(l, mc, 1, h ? h->accepted_us : dsysi_loop_now_us());
    pthread_mutex_lock(&l->cmu);
    mc->next = l->conns;
    if (l->conns) l->conns->prev = mc;
    l->conns = mc;
    if (h) {
      mc->a = h->a;
      mc->aprev = h->a->m_last;
      if (mc->aprev) mc->aprev->anext = mc;
      else h->a->m_first = mc;
      h->a->m_last = mc;
    }
    pthread_mutex_unlock(&l->cmu);
    *socket_ctx = mc;
    return;
  }
  /* CLOSED: MHD reports it before it closes the socket, so the guard
   * never touches a descriptor that was reused. */
  mconn *mc = *socket_ctx;
  if (!mc) return;
  pthread_mutex_lock(&l->cmu);
  if (mc->prev) mc->prev->next = mc->next;
  else l->conns = mc->next;
  if (mc->next) mc->next->prev = mc->prev;
  if (mc->a) {
    if (mc->aprev) mc->aprev->anext = mc->anext;
    else mc->a->m_first = mc->anext;
    if (mc->anext) mc->anext->aprev = mc->aprev;
    else mc->a->m_last = mc->aprev;
    addr_put(l, mc->a);
  }
  pthread_mutex_unlock(&l->cmu);
  dsysi_server_conn_note(l->srv, DSYSI_CONN_OPEN, -1);
  /* Closing a socket with unread input makes the kernel send a reset:
   * a client still writing its body then fails (EPIPE, ECONNRESET) before
   * it reads our early answer (413, 403, or MHD's own 431/414/400). */
  int unread = 0;
  if (!atomic_load(&mc->cut) &&
      (atomic_load(&mc->linger) || (ioctl(mc->fd, FIONREAD, &unread) == 0 && unread > 0)))
    linger_start(l, mc->fd);
  free(mc);
  *socket_ctx = NULL;
}

/* ---- the guard: timeouts and lingering close ----
 * One loop thread per listener, in both modes: MHD's pool threads cannot
 * host our timers, and a loop thread must not block on a slow client. */

/* Cut connections that did not deliver a request (head) in time:
 * shutdown() makes MHD see the end of the stream and close them in its
 * own thread. */
static void sweep(dsysi_loop *loop, void *ud) {
  mhd_lst *l = ud;
  int64_t now = dsysi_loop_now_us();
  pthread_mutex_lock(&l->cmu);
  for (mconn *mc = l->conns; mc; mc = mc->next) {
    int64_t h = atomic_load_explicit(&mc->head_deadline_us, memory_order_relaxed);
    int64_t r = atomic_load_explicit(&mc->req_deadline_us, memory_order_relaxed);
    if (((h && now >= h) || (r && now >= r)) && !atomic_exchange(&mc->cut, 1)) {
      dsysi_server_conn_note(l->srv, h && now >= h ? DSYSI_CONN_HEADER_TIMEOUTS
                                                   : DSYSI_CONN_REQUEST_TIMEOUTS, 1);
      shutdown(mc->fd, SHUT_RDWR);
    }
  }
  pthread_mutex_unlock(&l->cmu);
  if (!dsysi_loop_timer(loop, l->sweep_us, sweep, l))
    dsysi_log(DSYS_LOG_ERROR, "http", "out of memory: connection timeouts stopped");
}

static void linger_end(dsysi_loop *loop, lingerer *lg) {
  mhd_lst *l = lg->l;
  dsysi_loop_del(loop, &lg->w);
  dsysi_loop_cancel(loop, lg->timer);
  close(lg->w.fd);
  if (lg->prev) lg->prev->next = lg->next;
  else l->lingering = lg->next;
  if (lg->next) lg->next->prev = lg->prev;
  free(lg);
  atomic_fetch_sub(&l->nlinger, 1);
}

static void linger_expire(dsysi_loop *loop, void *ud) {
  lingerer *lg = ud;
  lg->timer = 0;
  linger_end(loop, lg);
}

/* Read and drop until the client is done (EOF), an error, or a bound. */
static void linger_io(dsysi_loop *loop, int fd, uint32_t ev, void *ud) {
  lingerer *lg = ud;
  char buf[16384];
  for (int i = 0; i < 64; i++) { /* then let the loop serve others */
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0 || (uint64_t)n >= lg->left) {
      linger_end(loop, lg);
      return;
    }
    lg->left -= (uint64_t)n;
  }
}

/* Posted by linger_start: take the queued descriptors in. */
static void linger_take(dsysi_loop *loop, void *ud) {
  mhd_lst *l = ud;
  pthread_mutex_lock(&l->lmu);
  int *q = l->lq;
  size_t n = l->lqn;
  l->lq = NULL;
  l->lqn = l->lqcap = 0;
  pthread_mutex_unlock(&l->lmu);
  for (size_t i = 0; i < n; i++) {
    lingerer *lg = calloc(1, sizeof *lg);
    if (lg) {
      lg->w = (dsysi_watch){.fd = q[i], .fn = linger_io, .ud = lg};
      lg->left = LINGER_MAX_BYTES;
      lg->l = l;
      lg->timer = dsysi_loop_timer(loop, LINGER_US, linger_expire, lg);
    }
    if (!lg || !lg->timer || dsysi_loop_add(loop, &lg->w, EPOLLIN, 0)) {
      if (lg && lg->timer) dsysi_loop_cancel(loop, lg->timer);
      free(lg);
      close(q[i]);
      atomic_fetch_sub(&l->nlinger, 1);
      continue;
    }
    lg->next = l->lingering;
    if (l->lingering) l->lingering->prev = lg;
    l->lingering = lg;
  }
  free(q);
}

/* Called from MHD's CLOSED notice, before MHD closes fd: keep the socket
 * open on a duplicate and let the guard drain it (nginx's lingering_close).
 * MHD has already sent the answer and shut its sending side, so the
 * client reads the answer and the end of the stream. Over the bound of
 * lingering sockets (max_connections) the close stays abrupt. */
static void linger_start(mhd_lst *l, int fd) {
  if (!l->guard_started ||
      atomic_fetch_add(&l->nlinger, 1) >= dsysi_server_max_connections(l->srv)) {
    atomic_fetch_sub(&l->nlinger, 1);
    return;
  }
  int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup_fd < 0) {
    atomic_fetch_sub(&l->nlinger, 1);
    return;
  }
  /* MHD shut the TCP side down only for plain sockets (TLS: close_notify). */
  shutdown(dup_fd, SHUT_WR);
  pthread_mutex_lock(&l->lmu);
  int first = l->lqn == 0; /* else a take is already posted */
  int rc = dsysi_grow(&l->lq, &l->lqcap, l->lqn + 1, sizeof *l->lq, 16);
  if (!rc) l->lq[l->lqn++] = dup_fd;
  pthread_mutex_unlock(&l->lmu);
  if (rc) {
    close(dup_fd);
    atomic_fetch_sub(&l->nlinger, 1);
    return;
  }
  /* A failed post leaves the descriptor queued: guard_stop closes it. */
  if (first) dsysi_loop_post(l->guard, linger_take, l);
}

static void *guard_main(void *arg) {
  dsysi_loop_run(arg);
  return NULL;
}

static void guard_sweep_start(dsysi_loop *loop, void *ud) { sweep(loop, ud); }

static int guard_start(mhd_lst *l) {
  if (dsysi_loop_new(&l->guard)) return DSYS_ENOMEM;
  int64_t t = l->head_timeout_us;
  if (l->req_timeout_us && (!t || l->req_timeout_us < t)) t = l->req_timeout_us;
  if (t) {
    /* a cut comes up to one step late: an eighth of the shortest timeout */
    l->sweep_us = t / 8 < 50000 ? 50000 : t / 8 > 500000 ? 500000 : t / 8;
    if (dsysi_loop_post(l->guard, guard_sweep_start, l)) return DSYS_ENOMEM;
  }
  if (pthread_create(&l->guard_thr, NULL, guard_main, l->guard)) return DSYS_ENOMEM;
  l->guard_started = 1;
  return 0;
}

/* After the daemons stopped: nothing queues any more. */
static void guard_stop(mhd_lst *l) {
  if (l->guard_started) {
    dsysi_loop_stop(l->guard);
    pthread_join(l->guard_thr, NULL);
    l->guard_started = 0;
  }
  while (l->lingering) {
    lingerer *lg = l->lingering;
    l->lingering = lg->next;
    close(lg->w.fd);
    free(lg);
  }
  for (size_t i = 0; i < l->lqn; i++) close(l->lq[i]);
  free(l->lq);
  l->lq = NULL;
  l->lqn = l->lqcap = 0;
  dsysi_loop_free(l->guard);
  l->guard = NULL;
}

static void *uri_log(void *cls, const char *uri, struct MHD_Connection *conn) {
  if (!uri) uri = "/";
  size_t n = strlen(uri);
  mhd_req *m = malloc(sizeof *m + n + 1);
  if (!m) return NULL;
  memset(m, 0, sizeof *m);
  m->md = cls;
  m->l = m->md->l;
  m->conn = conn;
  m->mc = conn_watch(conn);
  memcpy(m->target, uri, n + 1);
  if (m->l->loops) { /* one loop's MHD calls this: no lock */
    m->in_head = 1;
    m->md->heads++;
  }
  return m;
}

static void free_mreq(mhd_req *m) {
  if (m->in_head) m->md->heads--; /* closed before its headers were in */
  dsysi_buf_free(&m->body);
  free(m);
}

static enum MHD_Result queue_buf(struct MHD_Connection *conn, int status,
                                 const char *ctype, const char *body,
                                 size_t len, int close) {
  struct MHD_Response *resp = MHD_create_response_from_buffer(
      len, (void *)body, MHD_RESPMEM_MUST_COPY);
  if (!resp) return MHD_NO;
  if (ctype) MHD_add_response_header(resp, "Content-Type", ctype);
  if (close) MHD_add_response_header(resp, "Connection", "close");
  enum MHD_Result rc = MHD_queue_response(conn, (unsigned)status, resp);
  MHD_destroy_response(resp);
  return rc;
}

static enum MHD_Result queue_error(struct MHD_Connection *conn, int status,
                                   const char *code, const char *msg) {
  size_t len = 0;
  char *s = dsysi_error_json(code, msg, &len);
  if (!s) return MHD_NO;
  enum MHD_Result rc = queue_buf(conn, status, "application/json", s, len, 1);
  free(s);
  return rc;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
  mhd_req *m = cls;
  dsys_request *r = m->req;
  dsysi_lock_acquire(&r->mu);
  size_t n = dsysi_request_stream_take(r, buf, max);
  ssize_t ret;
  if (n) {
    ret = (ssize_t)n;
    if (m->l->loops) m->md->busy = 1; /* maybe more: see mhd_timeout */
  }
  else if (r->stream_ended) ret = MHD_CONTENT_READER_END_OF_STREAM;
  else if (r->abandoned || r->closed) ret = MHD_CONTENT_READER_END_WITH_ERROR;
  else {
    /* Nothing yet: park the connection; notify() resumes it. Returning 0
     * is only allowed together with a suspend (else MHD busy-loops). */
    m->suspended = 1;
    MHD_suspend_connection(m->conn);
    ret = 0;
  }
  dsysi_lock_release(&r->mu);
  return ret;
}

/* Called with r->mu held: queue the stored answer. */
static enum MHD_Result queue_answer(mhd_req *m) {
  dsys_request *r = m->req;
  struct MHD_Response *resp;
  if (r->state == DSYSI_RQ_STREAMING) {
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384,
                                             stream_reader, m, NULL);
  } else {
    resp = MHD_create_response_from_buffer(r->rlen, r->rbody,
                                           MHD_RESPMEM_MUST_FREE);
    if (resp) r->rbody = NULL; /* MHD frees it */
  }
  if (!resp) return MHD_NO;
  for (size_t i = 0; i < r->rhdrs.n; i++) {
    /* MHD frames the body itself: never pass its framing headers on */
    const char *name = r->rhdrs.v[i].name;
    size_t nl = strlen(name);
    if ((nl == 14 && dsysi_streq_nocase(name, "Content-Length")) ||
        (nl == 17 && dsysi_streq_nocase(name, "Transfer-Encoding")))
      continue;
    MHD_add_response_header(resp, name, r->rhdrs.v[i].value);
  }
  if (r->ctype) MHD_add_response_header(resp, "Content-Type", r->ctype);
  if (r->state == DSYSI_RQ_STREAMING)
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
  /* A stopping server: the client's next request goes elsewhere (a
   * connection closed without saying so looks like a failure to it) */
  if (dsysi_server_stopping(m->l->srv) && !MHD_get_response_header(resp, "Connection"))
    MHD_add_response_header(resp, "Connection", "close");
  enum MHD_Result rc = MHD_queue_response(m->conn, (unsigned)r->status, resp);
  MHD_destroy_response(resp);
  return rc;
}

/* Pool mode's quiesce (see mhd_quiesce): once refusing, MHD closes every
 * newly accepted connection at once. Called by MHD's threads. */
static enum MHD_Result accept_policy(void *cls, const struct sockaddr *addr,
                                     socklen_t addrlen) {
  (void)addr;
  (void)addrlen;
  mhd_lst *l = ((mhd_d *)cls)->l;
  return atomic_load_explicit(&l->refusing, memory_order_relaxed) ? MHD_NO : MHD_YES;
}

/* How long a request may wait for its answer with its connection left
 * unsuspended (see after_dispatch). Long enough to cover an upstream's
 * answer under load (at 256 connections most take 2-10 ms), short enough
 * that long polls and streams soon stop being visited on every pass. */
#define WAIT_UNSUSPENDED_US 20000

static void stop_waiting(mhd_req *m) {
  if (m->waiting) {
    mhd_d *md = m->md;
    m->waiting = 0;
    md->waiting--;
    if (m->w_prev) m->w_prev->w_next = m->w_next;
    else md->w_first = m->w_next;
    if (m->w_next) m->w_next->w_prev = m->w_prev;
    else md->w_last = m->w_prev;
    m->w_prev = m->w_next = NULL;
  }
}

/* After dispatch or a resume: answer if we can, else park the connection. */
static enum MHD_Result after_dispatch(mhd_req *m) {
  /* MHD calls the handler of a waiting connection on every pass: say
   * "still waiting" without the lock until notify() has news. */
  if (m->waiting && !atomic_load_explicit(&m->ready, memory_order_acquire) &&
      m->md->now_us < m->wait_until)
    return MHD_YES;
  dsys_request *r = m->req;
  enum MHD_Result rc = MHD_YES;
  dsysi_lock_acquire(&r->mu);
  if (r->state == DSYSI_RQ_ANSWERED || r->state == DSYSI_RQ_STREAMING) {
    r->status = r->status ? r->status : 500;
    rc = queue_answer(m);
    /* queued outside a read: MHD writes it on its next pass (mhd_tick) */
    if (m->deferred) m->md->queued = 1;
    stop_waiting(m);
  } else if (r->abandoned) {
    stop_waiting(m);
    rc = queue_error(m->conn, 503, "DSYS_ESTOPPED", "Server is shutting down");
  } else if (m->l->loops && !m->deferred) {
    /* Event-loop mode: leave the connection unanswered and unsuspended;
     * MHD then calls the handler again on each pass (the fast path above)
     * and reports a zero timeout (mhd_timeout). Suspending costs three
     * system calls that a proxied request mostly does not need: MHD takes
     * the connection out of its epoll set and back (2 epoll_ctl), and the
     * resumed connection tries a recv that fails with EAGAIN (gateway at
     * 64 connections: 5.9 -> 4.4 system calls per request, HAProxy 4.3).
     * Over TLS, GnuTLS may hold read data that also makes MHD's timeout
     * zero, which mhd_timeout could not tell apart: wait one pass only. */
    m->deferred = 1;
    if (!m->l->tls) {
      mhd_d *md = m->md;
      m->waiting = 1;
      md->waiting++;
      /* now_us never goes back: appending keeps the list by wait_until */
      m->wait_until = md->now_us + WAIT_UNSUSPENDED_US;
      m->w_prev = md->w_last;
      if (md->w_last) md->w_last->w_next = m;
      else md->w_first = m;
      md->w_last = m;
    }
  } else if (m->waiting && m->md->now_us < m->wait_until) {
    /* notify() had news that was not an answer: keep waiting */
  } else {
    stop_waiting(m);
    m->suspended = 1;
    MHD_suspend_connection(m->conn);
  }
  atomic_store_explicit(&m->ready, 0, memory_order_relaxed);
  dsysi_lock_release(&r->mu);
  return rc;
}

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind,
                                      const char *key, const char *value) {
  dsys_request *r = cls;
  if (key)
    dsysi_hdrs_add(&r->hdrs, key, strlen(key), value ? value : "",
                   value ? strlen(value) : 0);
  return MHD_YES;
}

static void set_remote(mhd_req *m, dsys_request *r) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(m->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  r->raddr.sa.sa_family = AF_UNIX;
  if (!ci || !ci->client_addr) return;
  size_t n = ci->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
             : ci->client_addr->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                      : sizeof(sa_family_t);
  memcpy(&r->raddr, ci->client_addr, n);
}

/* Mutual TLS: MHD asks for a client certificate when it has a trust list
 * (MHD_OPTION_HTTPS_MEM_TRUST) but leaves the verdict to the application:
 * the peer must have sent a chain that verifies against that list. */
static int client_cert_ok(struct MHD_Connection *conn) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
  gnutls_session_t ts = ci ? (gnutls_session_t)ci->tls_session : NULL;
  unsigned int n = 0, status = 0;
  if (!ts || !gnutls_certificate_get_peers(ts, &n) || n == 0) return 0;
  return gnutls_certificate_verify_peers2(ts, &status) == GNUTLS_E_SUCCESS &&
         status == 0;
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *conn,
                                      const char *url, const char *method,
                                      const char *version,
                                      const char *upload_data,
                                      size_t *upload_size, void **con_cls) {
  mhd_lst *l = ((mhd_d *)cls)->l;
  mhd_req *m = *con_cls;
  if (!m) return MHD_NO; /* out of memory in uri_log */
  if (m->req) return after_dispatch(m); /* resumed */
  size_t max = dsysi_server_max_body(l->srv);
  if (!m->seen) {
    m->seen = 1;
    head_done(m);
    /* Answers before the body is read: MHD then closes the connection,
     * which lingers (linger_start) so that the client reads them. */
    if (l->pem_trust && !client_cert_ok(conn)) {
      request_in(m, 1);
      return queue_error(conn, 403, "DSYS_EPERM",
                         "A valid client certificate is required");
    }
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (cl && strtoull(cl, NULL, 10) > max) {
      request_in(m, 1);
      return queue_error(conn, 413, "DSYS_ETOOBIG", "Request body too large");
    }
    return MHD_YES;
  }
  if (*upload_size) {
    if (l->loops) m->md->busy = 1; /* maybe more: see mhd_timeout */
    if (!m->too_big) {
      if (m->body.len + *upload_size > max) {
        m->too_big = 1;
        m->too_big_us = dsysi_loop_now_us();
        dsysi_buf_free(&m->body);
      } else if (dsysi_buf_append(&m->body, upload_data, *upload_size)) {
        return MHD_NO;
      }
    }
    if (m->too_big) {
      /* A body without a length (chunked) that went over the limit: MHD
       * cannot answer before its end, so it is read and dropped, within
       * the bounds of a lingering close; past them, the connection is
       * cut without an answer. */
      m->dropped += *upload_size;
      if (m->dropped > LINGER_MAX_BYTES || dsysi_loop_now_us() - m->too_big_us > LINGER_US) {
        if (m->mc) atomic_store(&m->mc->cut, 1); /* its bounds are spent */
        return MHD_NO;
      }
    }
    *upload_size = 0;
    return MHD_YES;
  }
  request_in(m, 0); /* the whole request is in */
  if (m->too_big)
    return queue_error(conn, 413, "DSYS_ETOOBIG", "Request body too large");
  dsys_request *r = dsysi_request_new(l->srv, l->ops, l, m);
  if (!r) return MHD_NO;
  m->req = r;
  r->method = dsysi_arena_strndup(&r->ar, method, strlen(method));
  set_remote(m, r);
  MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_header, r);
  int body_oom = 0; /* no body: r->body stays NULL, read as "" */
  if (m->body.len || m->body.oom)
    body_oom = !(r->body = dsysi_buf_steal(&m->body, &r->body_len));
  int trc = dsysi_request_set_target(r, m->target);
  if (!r->method || body_oom || trc) {
    /* Answer through the normal path so accounting stays right. */
    if (!r->path) dsysi_request_set_target(r, "/");
    dsys_respond_error(r, 400, "DSYS_EURL", "Malformed request target");
    return after_dispatch(m);
  }
  dsysi_server_dispatch(r);
  return after_dispatch(m);
}

static void request_completed(void *cls, struct MHD_Connection *conn,
                              void **con_cls,
                              enum MHD_RequestTerminationCode toe) {
  mhd_req *m = *con_cls;
  if (!m) return;
  if (m->mc) {
    watch_next(m->l, m->mc, 0, 0); /* the next request on this connection */
    /* A connection that sent a request waits for a loop with room
     * (wait_for_room) and this one is idle now: it makes the room. */
    if (atomic_load_explicit(&m->l->room_wanted, memory_order_relaxed) &&
        toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && !atomic_exchange(&m->mc->cut, 1)) {
      dsysi_server_conn_note(m->l->srv, DSYSI_CONN_EVICTED_FULL, 1);
      shutdown(m->mc->fd, SHUT_RDWR);
    }
  }
  stop_waiting(m);
  if (m->req)
    dsysi_request_transport_done(m->req, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
  free_mreq(m);
  *con_cls = NULL;
}

/* Resume a parked connection if it is parked (r->mu held by the caller). */
static void resume_locked(dsys_request *r) {
  if (r->transport_done) return;
  mhd_req *m = r->tctx;
  if (m->suspended) {
    m->suspended = 0;
    MHD_resume_connection(m->conn);
  }
}

static void resume_task(dsysi_loop *loop, void *ud) {
  dsys_request *r = ud;
  dsysi_lock_acquire(&r->mu);
  resume_locked(r);
  dsysi_lock_release(&r->mu);
  dsysi_request_unref(r);
}

static void notify(void *lst, dsys_request *r) {
  mhd_lst *l = lst;
  if (l->loops) {
    /* External mode: MHD may only be driven from its loop's thread
     * (transports.md, libmicrohttpd pitfall 1); from elsewhere, hand the resume over. */
    dsysi_lock_acquire(&r->mu);
    mhd_req *m = r->transport_done ? NULL : r->tctx;
    dsysi_loop *loop = m ? m->md->loop : NULL;
    if (m) atomic_store_explicit(&m->ready, 1, memory_order_release);
    if (loop && dsysi_loop_current() == loop) {
      resume_locked(r);
      loop = NULL;
    }
    dsysi_lock_release(&r->mu);
    if (loop) {
      dsysi_request_ref(r);
      if (dsysi_loop_post(loop, resume_task, r)) dsysi_request_unref(r);
    }
    return;
  }
  dsysi_lock_acquire(&r->mu);
  resume_locked(r);
  dsysi_lock_release(&r->mu);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) {
  dsysi_buf b = {0};
  dsysi_buf_vprintf(&b, fmt, ap);
  while (b.len && (b.data[b.len - 1] == '\n')) b.data[--b.len] = '\0';
  if (!b.oom) dsysi_log(DSYS_LOG_WARN, "mhd", "%s", b.data);
  dsysi_buf_free(&b);
}

static int bind_socket(const char *url, int is_unix, mhd_lst *l,
                       int *fd_out) {
  const char *scheme = l->tls ? "https" : "http";
  int fd = -1;
  if (is_unix) {
    dsysi_url u;
    int rc = dsysi_url_parse(url, &u);
    if (rc) return rc;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(u.path) >= sizeof sa.sun_path) {
      dsysi_url_free(&u);
      return DSYS_EURL;
    }
    strcpy(sa.sun_path, u.path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      dsysi_url_free(&u);
      return DSYS_EIO;
    }
    /* A stale socket file from a dead process: remove it, but never steal
     * a path that a live server still answers on. */
    struct stat st;
    if (stat(sa.sun_path, &st) == 0 && S_ISSOCK(st.st_mode)) {
      int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0) {
        close(probe);
        close(fd);
        dsysi_url_free(&u);
        return DSYS_EADDRINUSE;
      }
      if (probe >= 0) close(probe);
      unlink(sa.sun_path);
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
      int e = errno;
      close(fd);
      dsysi_url_free(&u);
      return e == EADDRINUSE ? DSYS_EADDRINUSE : e == EACCES ? DSYS_EPERM : DSYS_EIO;
    }
    l->unix_path = strdup(sa.sun_path);
    snprintf(l->url, sizeof l->url, "unix://%s", sa.sun_path);
    dsysi_url_free(&u);
  } else {
    dsysi_url u;
    int rc = dsysi_url_parse(url, &u);
    if (rc) return rc;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", u.port);
    const char *host = u.host[0] ? u.host : NULL;
    if (host && !strcmp(host, "*")) host = NULL;
    if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai) {
      dsysi_url_free(&u);
      return DSYS_ERESOLVE;
    }
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd >= 0 && dsysi_server_reuse_port(l->srv) &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one)) {
      close(fd);
      fd = -1;
    }
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      int e = errno;
      if (fd >= 0) close(fd);
      freeaddrinfo(ai);
      dsysi_url_free(&u);
      return e == EADDRINUSE ? DSYS_EADDRINUSE : e == EACCES ? DSYS_EPERM : DSYS_EIO;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    char ip[64] = "";
    int bport = 0; /* l->port below */
    if (ss.ss_family == AF_INET6) {
      struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
      inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
      bport = ntohs(s6->sin6_port);
      snprintf(l->url, sizeof l->url, "%s://[%s]:%d", scheme, ip, bport);
    } else {
      struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
      inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
      bport = ntohs(s4->sin_port);
      snprintf(l->url, sizeof l->url, "%s://%s:%d", scheme, ip, bport);
    }
    l->port = bport;
    dsysi_url_free(&u);
  }
  if (listen(fd, 1024) != 0) {
    close(fd);
    return DSYS_EIO;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  *fd_out = fd;
  return 0;
}

/* ---- event-loop mode ---- */

/* Balanced accept. With one SO_REUSEPORT socket per loop the kernel
 * spreads connections by a hash of their addresses: 170/150 of 320 was
 * typical, and the busier loop sets the tail latency. Instead loop 0
 * accepts on the only listening socket and gives each connection to the
 * loop with the fewest (open + on their way); MHD may only be driven
 * from its loop's thread, so other loops get it through a queue and a
 * posted task.
 *
 * Connection floods (docs/reference/server.md): a connection goes to MHD
 * only once it has sent a byte. Until then loop 0 holds it as a `silent`
 * record of about 130 bytes (MHD would allocate its connection_memory
 * pool at once), so tens of thousands cost a few MiB and never take a
 * loop's max_connections. Each address may hold max_connections_per_addr
 * connections; at that limit, at max_silent_connections, or when every
 * loop is full, the oldest idle connection goes (the address's own
 * first), and a busy one never does. Accepting never stops for a full
 * loop: a connection that sent a byte waits in the r_* list for room
 * instead of in the kernel's backlog, where ordinary clients queued
 * behind the flood and their connects timed out. */

static void addr_key(const struct sockaddr_in6 *sa, unsigned char key[16]) {
  if (sa->sin6_family == AF_INET6) {
    memcpy(key, &sa->sin6_addr, 16);
  } else {
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memcpy(key, mapped, 12);
    memcpy(key + 12, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
  }
}

static size_t addr_slot(const mhd_lst *l, const unsigned char key[16]) {
  return (size_t)dsysi_hash64(key, 16, 0x5eed) & (l->acap - 1);
}

/* The record of an address, made on first use (cmu held); NULL: out of
 * memory. */
static caddr *addr_get(mhd_lst *l, const unsigned char key[16]) {
  if (l->acap) {
    for (caddr *a = l->atab[addr_slot(l, key)]; a; a = a->hnext)
      if (!memcmp(a->key, key, 16)) return a;
  }
  if (l->an >= l->acap / 2) { /* grow: keep chains short */
    size_t ncap = l->acap ? l->acap * 2 : 64;
    caddr **nt = calloc(ncap, sizeof *nt);
    if (!nt) return NULL;
    size_t ocap = l->acap;
    caddr **ot = l->atab;
    l->atab = nt;
    l->acap = ncap;
    for (size_t i = 0; i < ocap; i++)
      for (caddr *a = ot[i], *nx; a; a = nx) {
        nx = a->hnext;
        size_t k = addr_slot(l, a->key);
        a->hnext = nt[k];
        nt[k] = a;
      }
    free(ot);
  }
  caddr *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  memcpy(a->key, key, 16);
  size_t k = addr_slot(l, key);
  a->hnext = l->atab[k];
  l->atab[k] = a;
  l->an++;
  return a;
}

/* One connection fewer (cmu held); the record goes with the last. */
static void addr_put(mhd_lst *l, caddr *a) {
  if (!a || --a->n) return;
  caddr **pp = &l->atab[addr_slot(l, a->key)];
  while (*pp != a) pp = &(*pp)->hnext;
  *pp = a->hnext;
  l->an--;
  free(a);
}

static void ready_unlink(mhd_lst *l, silent *s) {
  if (s->prev) s->prev->next = s->next;
  else l->r_first = s->next;
  if (s->next) s->next->prev = s->prev;
  else l->r_last = s->prev;
}

/* Take a silent connection out of the silent lists (cmu held). */
static void silent_unlink(mhd_lst *l, silent *s) {
  if (s->prev) s->prev->next = s->next;
  else l->s_first = s->next;
  if (s->next) s->next->prev = s->prev;
  else l->s_last = s->prev;
  caddr *a = s->a;
  if (s->aprev) s->aprev->anext = s->anext;
  else a->s_first = s->anext;
  if (s->anext) s->anext->aprev = s->aprev;
  else a->s_last = s->aprev;
  l->nsilent--;
  dsysi_server_conn_note(l->srv, DSYSI_CONN_SILENT, -1);
}

/* Out of the lobby (a silent or waiting connection): its record waits in
 * the graveyard until the loop's current batch of events is through (an
 * event for it may still be in that batch). */
static void bury(mhd_lst *l, silent *s) {
  dsysi_loop_del(l->ds[0].loop, &s->w);
  s->dead = 1;
  s->next = l->graveyard;
  l->graveyard = s;
}

/* Close a silent or waiting connection (loop 0, cmu held) and count why
 * (stat; -1: not counted). */
static void lobby_drop(mhd_lst *l, silent *s, int stat) {
  if (s->ready) ready_unlink(l, s);
  else silent_unlink(l, s);
  addr_put(l, s->a);
  bury(l, s);
  /* counted before the client can see the close */
  dsysi_server_conn_note(l->srv, DSYSI_CONN_OPEN, -1);
  if (stat >= 0) dsysi_server_conn_note(l->srv, stat, 1);
  close(s->w.fd);
}

/* Cut an idle connection in MHD (cmu held, so it is still open): its loop
 * sees the end of the stream and closes it. */
static void evict_mconn(mhd_lst *l, mconn *mc, int stat) {
  atomic_store(&mc->cut, 1);
  dsysi_server_conn_note(l->srv, stat, 1);
  shutdown(mc->fd, SHUT_RDWR);
}

/* Whether mc is idle, not already cut, and idle for longer than best. */
static int idle_victim(mconn *mc, mconn *best) {
  if (atomic_load_explicit(&mc->busy, memory_order_relaxed) ||
      atomic_load_explicit(&mc->cut, memory_order_relaxed))
    return 0;
  return !best || atomic_load_explicit(&mc->idle_us, memory_order_relaxed) <
                      atomic_load_explicit(&best->idle_us, memory_order_relaxed);
}

/* a is at max_connections_per_addr: close its oldest silent connection,
 * else its oldest idle one in MHD (cmu held). 0: all of them are busy. */
static int evict_for_addr(mhd_lst *l, caddr *a) {
  if (a->s_first) {
    lobby_drop(l, a->s_first, DSYSI_CONN_EVICTED_PER_ADDR);
    return 1;
  }
  mconn *v = NULL;
  for (mconn *mc = a->m_first; mc; mc = mc->anext)
    if (idle_victim(mc, v)) v = mc;
  if (v) evict_mconn(l, v, DSYSI_CONN_EVICTED_PER_ADDR);
  return v != NULL;
}

static void silent_io(dsysi_loop *loop, int fd, uint32_t ev, void *ud);
static void first_byte(mhd_lst *l, dsysi_loop *loop, silent *s);

/* A connection loop 0 accepted: count it against its address and hold it
 * until its first byte. */
static void admit(mhd_lst *l, dsysi_loop *loop, int fd, const struct sockaddr_in6 *sa,
                  socklen_t alen) {
  unsigned char key[16];
  addr_key(sa, key);
  silent *s = calloc(1, sizeof *s);
  pthread_mutex_lock(&l->cmu);
  caddr *a = s ? addr_get(l, key) : NULL; /* NULL: out of memory */
  if (!a || (l->per_addr && a->n >= l->per_addr && !evict_for_addr(l, a))) {
    if (a) dsysi_server_conn_note(l->srv, DSYSI_CONN_REFUSED_PER_ADDR, 1);
    pthread_mutex_unlock(&l->cmu);
    free(s);
    close(fd);
    return;
  }
  if (l->nsilent >= l->max_silent) lobby_drop(l, l->s_first, DSYSI_CONN_EVICTED_SILENT);
  s->w = (dsysi_watch){.fd = fd, .fn = silent_io, .ud = s};
  s->l = l;
  s->a = a;
  s->accepted_us = dsysi_loop_now_us();
  s->alen = alen;
  memcpy(&s->addr, sa, alen);
  a->n++;
  s->prev = l->s_last;
  if (s->prev) s->prev->next = s;
  else l->s_first = s;
  l->s_last = s;
  s->aprev = a->s_last;
  if (s->aprev) s->aprev->anext = s;
  else a->s_first = s;
  a->s_last = s;
  l->nsilent++;
  dsysi_server_conn_note(l->srv, DSYSI_CONN_OPEN, 1);
  dsysi_server_conn_note(l->srv, DSYSI_CONN_SILENT, 1);
  /* Most clients have sent their request (or TLS hello) by now: then no
   * need to watch for it. Else level-triggered: a byte that arrives
   * before the add still wakes us. */
  char c;
  int sent = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
  if (!sent && dsysi_loop_add(loop, &s->w, EPOLLIN | EPOLLRDHUP, 0)) lobby_drop(l, s, -1);
  pthread_mutex_unlock(&l->cmu);
  if (sent) first_byte(l, loop, s);
}

/* Add a connection to this loop's MHD (its thread). MHD reports it
 * STARTED inside the call (external polling), where notify_conn takes h
 * over; on failure MHD has closed the socket. */
static void add_one(mhd_d *md, handoff *h) {
  mhd_lst *l = md->l;
  md->incoming = h;
  MHD_add_connection(md->d, h->fd, (struct sockaddr *)&h->addr, h->alen);
  if (md->incoming) {
    md->incoming = NULL;
    pthread_mutex_lock(&l->cmu);
    addr_put(l, h->a);
    pthread_mutex_unlock(&l->cmu);
    dsysi_server_conn_note(l->srv, DSYSI_CONN_OPEN, -1);
    dsysi_server_conn_note(l->srv, DSYSI_CONN_REFUSED_FULL, 1);
  }
}

static void add_queued(dsysi_loop *loop, void *ud) {
  mhd_d *md = ud;
  for (;;) {
    pthread_mutex_lock(&md->hmu);
    if (!md->hn) {
      pthread_mutex_unlock(&md->hmu);
      return;
    }
    handoff h = md->hq[--md->hn];
    pthread_mutex_unlock(&md->hmu);
    add_one(md, &h);
    atomic_fetch_sub(&md->pending, 1);
  }
}

static int hand_over(mhd_d *md, const handoff *h) {
  pthread_mutex_lock(&md->hmu);
  if (dsysi_grow(&md->hq, &md->hcap, md->hn + 1, sizeof *md->hq, 16)) {
    pthread_mutex_unlock(&md->hmu);
    return DSYS_ENOMEM;
  }
  int first = md->hn == 0; /* else a drain is already posted */
  md->hq[md->hn++] = *h;
  atomic_fetch_add(&md->pending, 1);
  pthread_mutex_unlock(&md->hmu);
  if (!first || !dsysi_loop_post(md->loop, add_queued, md)) return 0;
  /* No drain will run: take the connection back (the caller closes it;
   * left queued, stop would close it a second time). */
  pthread_mutex_lock(&md->hmu);
  md->hn--;
  atomic_fetch_sub(&md->pending, 1);
  pthread_mutex_unlock(&md->hmu);
  return DSYS_ENOMEM;
}

/* Connections a loop has or is being given: what placing balances. */
static unsigned load_of(mhd_d *md) {
  return atomic_load(&md->conns) + atomic_load(&md->pending);
}

static mhd_d *least_loaded(mhd_lst *l) {
  mhd_d *best = NULL;
  unsigned least = 0;
  for (unsigned i = 0; i < l->nd; i++) {
    unsigned n = load_of(&l->ds[i]);
    if (!best || n < least) best = &l->ds[i], least = n;
  }
  return least < dsysi_server_max_connections(l->srv) ? best : NULL;
}

/* Give a connection that sent a byte to the least loaded loop (loop 0,
 * cmu not held, s out of the silent lists). 0: done (s is buried); else
 * every loop is full. */
static int place(mhd_lst *l, dsysi_loop *loop, silent *s) {
  mhd_d *best = least_loaded(l);
  if (!best) return -1;
  handoff h = {.fd = s->w.fd, .alen = s->alen, .a = s->a, .accepted_us = s->accepted_us};
  memcpy(&h.addr, &s->addr, s->alen);
  pthread_mutex_lock(&l->cmu);
  if (s->ready) ready_unlink(l, s);
  bury(l, s);
  pthread_mutex_unlock(&l->cmu);
  if (best->loop == loop) {
    atomic_fetch_add(&best->pending, 1);
    add_one(best, &h);
    atomic_fetch_sub(&best->pending, 1);
  } else if (hand_over(best, &h)) {
    close(h.fd);
    pthread_mutex_lock(&l->cmu);
    addr_put(l, h.a);
    pthread_mutex_unlock(&l->cmu);
    dsysi_server_conn_note(l->srv, DSYSI_CONN_OPEN, -1);
  }
  return 0;
}

/* Place the waiting connections, oldest first, while a loop has room. */
static void drain_ready(mhd_lst *l, dsysi_loop *loop) {
  while (l->r_first) {
    /* Set before looking: a close after the look then posts drain_task. */
    atomic_store(&l->room_wanted, 1);
    if (!least_loaded(l)) return;
    atomic_store(&l->room_wanted, 0);
    place(l, loop, l->r_first);
  }
}

static void drain_task(dsysi_loop *loop, void *ud) { drain_ready(ud, loop); }

/* Every loop is full and s sent a byte: make room by cutting the oldest
 * idle connection in MHD, and let s wait for it (its input unwatched). */
static void wait_for_room(mhd_lst *l, dsysi_loop *loop, silent *s) {
  pthread_mutex_lock(&l->cmu);
  s->ready = 1;
  s->next = NULL;
  s->prev = l->r_last;
  if (s->prev) s->prev->next = s;
  else l->r_first = s;
  l->r_last = s;
  dsysi_loop_mod(loop, &s->w, 0, 0);
  mconn *v = NULL;
  for (mconn *mc = l->conns; mc; mc = mc->next)
    if (mc->a && idle_victim(mc, v)) v = mc;
  if (v) evict_mconn(l, v, DSYSI_CONN_EVICTED_FULL);
  pthread_mutex_unlock(&l->cmu);
  drain_ready(l, loop);
}

/* A silent connection is readable: its first byte, or its end. */
static void silent_io(dsysi_loop *loop, int fd, uint32_t ev, void *ud) {
  silent *s = ud;
  if (s->dead) return;
  mhd_lst *l = s->l;
  char c;
  ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n > 0) {
    first_byte(l, loop, s);
    return;
  }
  pthread_mutex_lock(&l->cmu); /* gone before a byte */
  lobby_drop(l, s, -1);
  pthread_mutex_unlock(&l->cmu);
}

/* s sent its first byte: out of the silent lists, to a loop. */
static void first_byte(mhd_lst *l, dsysi_loop *loop, silent *s) {
  pthread_mutex_lock(&l->cmu);
  silent_unlink(l, s);
  pthread_mutex_unlock(&l->cmu);
  /* oldest first: others may already wait for room */
  if (l->r_first || place(l, loop, s)) wait_for_room(l, loop, s);
}

/* Silent and waiting connections past their header deadline (from their
 * accept; the idle timeout when the header timeout is off). */
static void lobby_sweep(dsysi_loop *loop, void *ud) {
  mhd_lst *l = ud;
  int64_t limit = l->head_timeout_us ? l->head_timeout_us : l->idle_us;
  int64_t now = dsysi_loop_now_us();
  pthread_mutex_lock(&l->cmu);
  while (l->s_first && now - l->s_first->accepted_us >= limit)
    lobby_drop(l, l->s_first, DSYSI_CONN_HEADER_TIMEOUTS);
  for (silent *s = l->r_first, *nx; s; s = nx) {
    nx = s->next;
    if (now - s->accepted_us >= limit) lobby_drop(l, s, DSYSI_CONN_HEADER_TIMEOUTS);
  }
  pthread_mutex_unlock(&l->cmu);
  /* a cut comes up to one step late: an eighth of the limit */
  int64_t step = limit / 8 < 50000 ? 50000 : limit / 8 > 500000 ? 500000 : limit / 8;
  if (!dsysi_loop_timer(loop, step, lobby_sweep, l))
    dsysi_log(DSYS_LOG_ERROR, "http", "out of memory: silent connections no longer time out");
}

/* Loop 0's tick: free what lobby_drop and place buried. */
static void lobby_free_dead(mhd_lst *l) {
  while (l->graveyard) {
    silent *s = l->graveyard;
    l->graveyard = s->next;
    free(s);
  }
}

/* The oldest silent connection goes when accept runs out of descriptors. */
static int evict_for_fd(mhd_lst *l) {
  pthread_mutex_lock(&l->cmu);
  int any = l->s_first != NULL;
  if (any) lobby_drop(l, l->s_first, DSYSI_CONN_EVICTED_FDS);
  pthread_mutex_unlock(&l->cmu);
  return any;
}

static void resume_accept(dsysi_loop *loop, void *ud);

static void on_accept(dsysi_loop *loop, int fd, uint32_t ev, void *ud) {
  mhd_lst *l = ud;
  for (int burst = 0; burst < 64; burst++) {
    struct sockaddr_in6 sa;
    socklen_t alen = sizeof sa;
    int cfd = accept4(fd, (struct sockaddr *)&sa, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) {
      if ((errno == EMFILE || errno == ENFILE) && evict_for_fd(l)) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        /* The socket stays readable: without a pause the loop would spin
         * on the same error. Retry in 100 ms (clients wait meanwhile). */
        int64_t now = dsysi_loop_now_us();
        if (now - l->acc_warned_us > 10000000) {
          l->acc_warned_us = now;
          dsysi_log(DSYS_LOG_WARN, "http", "accept: %s; retrying every 100 ms",
                    strerror(errno));
        }
        dsysi_loop_mod(loop, &l->acc, 0, 0);
        dsysi_loop_timer(loop, 100000, resume_accept, l);
      }
      l->acc_empty = errno == EAGAIN || errno == EWOULDBLOCK;
      return; /* EAGAIN, or a passing error (ECONNABORTED) */
    }
    admit(l, loop, cfd, &sa, alen);
  }
}

static void resume_accept(dsysi_loop *loop, void *ud) {
  mhd_lst *l = ud;
  if (l->ds[0].fd >= 0) dsysi_loop_mod(loop, &l->acc, EPOLLIN, 0);
}

/* How many silent connections a listener may hold: the option, lowered so
 * that the descriptor limit keeps room for every loop's connections in
 * MHD and as many upstream ones, plus a reserve. */
static unsigned silent_limit(dsys_server *srv, unsigned loops) {
  unsigned want = dsysi_server_max_silent(srv);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur == RLIM_INFINITY) return want;
  uint64_t used = 2 * (uint64_t)loops * dsysi_server_max_connections(srv) + 256;
  uint64_t room = rl.rlim_cur > used + 64 ? rl.rlim_cur - used : 64;
  if (room >= want) return want;
  dsysi_log(DSYS_LOG_INFO, "http",
            "max_silent_connections %u lowered to %llu by the descriptor limit (ulimit -n %llu)",
            want, (unsigned long long)room, (unsigned long long)rl.rlim_cur);
  return (unsigned)room;
}

static void mhd_io(dsysi_loop *loop, int fd, uint32_t ev, void *ud) {
  /* Nothing to do here: the tick runs MHD after every wake-up. */
}

static unsigned current_connections(struct MHD_Daemon *d) {
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
  return di ? di->num_connections : 0;
}

static void mhd_tick(dsysi_loop *loop, void *ud) {
  mhd_d *md = ud;
  /* At its connection limit MHD takes the listening socket out of its
   * epoll set and puts it back only at the start of a later MHD_run; a run
   * that closed connections must be followed by another, or connections
   * waiting in the backlog stall until some unrelated event. */
  md->now_us = dsysi_loop_now_us();
  md->busy = 0;
  if (md == md->l->ds && md->l->graveyard) lobby_free_dead(md->l);
  for (int i = 0; i < 4; i++) {
    unsigned before = current_connections(md->d);
    md->queued = 0;
    MHD_run(md->d);
    /* An answer queued by a deferred handler call (after_dispatch) is only
     * written on MHD's next pass: make it now, not after another wait. */
    if (md->queued) {
      md->queued = 0;
      MHD_run(md->d);
    }
    if (current_connections(md->d) >= before) break;
  }
}

/* Bound the loop's sleep by MHD's own timeout: MHD's epoll fd is edge-
 * triggered inside, so MHD may hold ready work (transports.md, libmicrohttpd pitfall 9).
 * A connection left waiting (after_dispatch) stays on MHD's ready list, so
 * MHD then reports zero even with nothing to do: taken literally, the loop
 * would spin until every answer is in. Then sleep until I/O, a task (an
 * answer from another thread) or the first wait's end (when it is
 * suspended). What MHD may really hold then: a read that filled the buffer
 * while a request head comes in (large headers): with such a head the
 * bound is 1 ms. Waking every millisecond for nothing cost the gateway
 * about 0.8 empty epoll_wait and 0.7 context switches per proxied request
 * when its upstream took a few ms (jobs through HTTP, PERFORMANCE.md).
 * Body and stream data have no edge to wake us and would crawl at one
 * buffer per millisecond: a tick that moved some (md->busy) keeps the
 * zero. */
static int64_t mhd_timeout(dsysi_loop *loop, void *ud) {
  mhd_d *md = ud;
  MHD_UNSIGNED_LONG_LONG ms;
  if (MHD_get_timeout(md->d, &ms) != MHD_YES) return -1;
  if (ms == 0 && md->waiting && !md->busy) {
    if (md->heads || !md->w_first) return 1;
    int64_t left = (md->w_first->wait_until - dsysi_loop_now_us() + 999) / 1000;
    return left < 1 ? 1 : left;
  }
  return ms > 60000 ? 60000 : (int64_t)ms;
}

static void *loop_main(void *arg) {
  mhd_d *md = arg;
  dsysi_loop_run(md->loop);
  return NULL;
}

static int start_daemon(mhd_lst *l, mhd_d *md) {
  dsys_server *srv = l->srv;
  unsigned threads = dsysi_server_threads(srv);
  unsigned flags = MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
  /* A pool of 1 is ignored with a warning (transports.md, libmicrohttpd pitfall 6). */
  unsigned pool = l->loops ? 0 : (threads > 1 ? threads : 0);
  flags |= l->loops ? MHD_USE_EPOLL : MHD_USE_EPOLL_INTERNAL_THREAD;
  struct MHD_OptionItem o[16];
  int n = 0;
#define OPT(opt, v, p) o[n++] = (struct MHD_OptionItem){opt, (intptr_t)(v), p}
  OPT(MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, l);
  if (l->balanced) flags |= MHD_USE_NO_LISTEN_SOCKET;
  else OPT(MHD_OPTION_LISTEN_SOCKET, md->fd, NULL);
  if (pool) OPT(MHD_OPTION_THREAD_POOL_SIZE, pool, NULL);
  /* Without our accept path (admit), libmicrohttpd's own limit: it
   * refuses instead of evicting. */
  if (!l->balanced && !l->is_unix && l->per_addr)
    OPT(MHD_OPTION_PER_IP_CONNECTION_LIMIT, l->per_addr, NULL);
  OPT(MHD_OPTION_CONNECTION_LIMIT, dsysi_server_max_connections(srv), NULL);
  OPT(MHD_OPTION_CONNECTION_TIMEOUT, dsysi_server_idle_timeout(srv), NULL);
  OPT(MHD_OPTION_CONNECTION_MEMORY_LIMIT, dsysi_server_connection_memory(srv), NULL);
  OPT(MHD_OPTION_NOTIFY_COMPLETED, request_completed, md);
  OPT(MHD_OPTION_URI_LOG_CALLBACK, uri_log, md);
  OPT(MHD_OPTION_NOTIFY_CONNECTION, notify_conn, md);
  if (l->tls) {
    flags |= MHD_USE_TLS;
    OPT(MHD_OPTION_HTTPS_CERT_CALLBACK, 0, cert_cb);
    if (l->pem_trust) OPT(MHD_OPTION_HTTPS_MEM_TRUST, 0, l->pem_trust);
  }
  OPT(MHD_OPTION_END, 0, NULL);
#undef OPT
  /* The logger must come first so MHD's own early messages use it. */
  md->d = MHD_start_daemon(flags, 0, l->loops ? NULL : accept_policy, md,
                           access_handler, md,
                           MHD_OPTION_ARRAY, o, MHD_OPTION_END);
  if (!md->d) return DSYS_EIO;
  if (!l->loops) return 0;
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(md->d, MHD_DAEMON_INFO_EPOLL_FD);
  if (!di || dsysi_loop_new(&md->loop)) return DSYS_EIO;
  md->w.fd = di->epoll_fd;
  md->w.fn = mhd_io;
  md->w.ud = md;
  dsysi_loop_set_tick(md->loop, mhd_tick, mhd_timeout, md);
  if (dsysi_loop_add(md->loop, &md->w, EPOLLIN, 0)) return DSYS_EIO;
  if (pthread_create(&md->thr, NULL, loop_main, md)) return DSYS_ENOMEM;
  md->started = 1;
  return 0;
}

static void stop_loop(mhd_d *md) {
  if (md->started) {
    dsysi_loop_stop(md->loop);
    pthread_join(md->thr, NULL);
    md->started = 0;
  }
}

/* After every loop's thread has stopped (stop_loop): MHD's close notices
 * then run on this thread and post nothing to the loops. */
static void stop_daemon(mhd_d *md) {
  if (md->d) {
    MHD_stop_daemon(md->d);
    /* MHD closed the listening socket it was given, unless it was
     * quiesced (then quiesce_one closed it and cleared md->fd) */
    if (!md->l->balanced) md->fd = -1;
  }
  /* Accepted but never added (the loops stopped first): close them. */
  for (size_t i = 0; i < md->hn; i++) {
    close(md->hq[i].fd);
    dsysi_server_conn_note(md->l->srv, DSYSI_CONN_OPEN, -1);
  }
  free(md->hq);
  md->hq = NULL;
  md->hn = md->hcap = 0;
  md->d = NULL;
  dsysi_loop_free(md->loop);
  md->loop = NULL;
  if (md->fd >= 0) close(md->fd);
  md->fd = -1;
}

static void free_lst(mhd_lst *l) {
  for (unsigned i = 0; i < l->nd; i++) stop_loop(&l->ds[i]);
  l->stopped = 1;
  for (unsigned i = 0; i < l->nd; i++) stop_daemon(&l->ds[i]);
  for (unsigned i = 0; i < l->nd; i++) pthread_mutex_destroy(&l->ds[i].hmu);
  guard_stop(l);
  while (l->conns) { /* MHD reported every close at stop; defensive */
    mconn *mc = l->conns;
    l->conns = mc->next;
    free(mc);
  }
  /* The lobby, after loop 0 stopped (its watches go with the loop). */
  silent *lists[2] = {l->s_first, l->r_first};
  for (int k = 0; k < 2; k++)
    for (silent *s = lists[k], *nx; s; s = nx) {
      nx = s->next;
      close(s->w.fd);
      dsysi_server_conn_note(l->srv, DSYSI_CONN_OPEN, -1);
      if (!s->ready) dsysi_server_conn_note(l->srv, DSYSI_CONN_SILENT, -1);
      free(s);
    }
  lobby_free_dead(l);
  for (size_t i = 0; i < l->acap; i++)
    for (caddr *a = l->atab[i], *nx; a; a = nx) {
      nx = a->hnext;
      free(a);
    }
  free(l->atab);
  pthread_mutex_destroy(&l->cmu);
  pthread_mutex_destroy(&l->lmu);
  if (l->unix_path) unlink(l->unix_path);
  free(l->unix_path);
  /* MHD is stopped: no handshake reads the keys any more */
  pthread_mutex_lock(&tls_mu);
  for (mhd_lst **pp = &tls_lsts; *pp; pp = &(*pp)->tls_next)
    if (*pp == l) {
      *pp = l->tls_next;
      break;
    }
  pthread_mutex_unlock(&tls_mu);
  while (l->keys) {
    tls_keys *k = l->keys;
    l->keys = k->older;
    keys_free(k);
  }
  free(l->pem_trust);
  free(l->ds);
  free(l);
}

/* A whole PEM file as a NUL-terminated string (MHD wants memory). */
static int read_pem(const char *path, char **out) {
  FILE *f = fopen(path, "re");
  if (!f) {
    dsysi_log(DSYS_LOG_ERROR, "https", "cannot open %s", path);
    return DSYS_EIO;
  }
  dsysi_buf b = {0};
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    if (dsysi_buf_append(&b, chunk, n)) break;
  int err = ferror(f);
  fclose(f);
  if (b.oom) {
    dsysi_buf_free(&b);
    return DSYS_ENOMEM;
  }
  if (err || !b.len || !strstr(b.data, "-----BEGIN ")) {
    dsysi_log(DSYS_LOG_ERROR, "https", "%s: not a readable PEM file", path);
    dsysi_buf_free(&b);
    return DSYS_EIO;
  }
  size_t len;
  *out = dsysi_buf_steal(&b, &len);
  return *out ? 0 : DSYS_ENOMEM;
}

/* A certificate chain and its key from PEM text. @return 0, DSYS_EIO
 * (not a certificate or key GnuTLS reads, or a key that is not the
 * certificate's: a reload must not install a pair that fails every
 * handshake), DSYS_ENOMEM. */
static int keys_load(const char *cert_pem, const char *key_pem, tls_keys **out) {
  tls_keys *k = calloc(1, sizeof *k);
  if (!k) return DSYS_ENOMEM;
  gnutls_datum_t c = {(unsigned char *)cert_pem, (unsigned)strlen(cert_pem)};
  gnutls_datum_t kd = {(unsigned char *)key_pem, (unsigned)strlen(key_pem)};
  unsigned n = sizeof k->pcert / sizeof k->pcert[0];
  int rc = DSYS_EIO;
  gnutls_pubkey_t pub = NULL;
  unsigned char id1[64], id2[64];
  size_t l1 = sizeof id1, l2 = sizeof id2;
  if (gnutls_pcert_list_import_x509_raw(k->pcert, &n, &c, GNUTLS_X509_FMT_PEM, 0) >= 0 && n > 0) {
    k->n = n;
    if (gnutls_privkey_init(&k->key) >= 0 &&
        gnutls_privkey_import_x509_raw(k->key, &kd, GNUTLS_X509_FMT_PEM, NULL, 0) >= 0 &&
        gnutls_pubkey_init(&pub) >= 0 && gnutls_pubkey_import_privkey(pub, k->key, 0, 0) >= 0 &&
        gnutls_pubkey_get_key_id(pub, GNUTLS_KEYID_USE_SHA256, id1, &l1) >= 0 &&
        gnutls_pubkey_get_key_id(k->pcert[0].pubkey, GNUTLS_KEYID_USE_SHA256, id2, &l2) >= 0 &&
        l1 == l2 && !memcmp(id1, id2, l1))
      rc = 0;
  }
  if (pub) gnutls_pubkey_deinit(pub);
  if (rc) {
    keys_free(k);
    return rc;
  }
  *out = k;
  return 0;
}

/* The server's certificate and key files, read and checked. */
static int keys_read(mhd_lst *l, tls_keys **out) {
  const char *cert, *key, *ca;
  dsysi_server_tls(l->srv, &cert, &key, &ca);
  if (!cert || !key) {
    dsysi_log(DSYS_LOG_ERROR, "https", "https:// needs tls_cert_file and tls_key_file");
    return DSYS_EINVAL;
  }
  char *cp = NULL, *kp = NULL;
  int rc = read_pem(cert, &cp);
  if (!rc) rc = read_pem(key, &kp);
  if (!rc && (rc = keys_load(cp, kp, out)) == DSYS_EIO)
    dsysi_log(DSYS_LOG_ERROR, "https", "%s and %s: not a certificate and its private key", cert,
              key);
  free(cp);
  if (kp) explicit_bzero(kp, strlen(kp));
  free(kp);
  return rc;
}

/* GnuTLS asks which certificate to present: the current one of the
 * listener whose port the connection came in on. */
static int cert_cb(gnutls_session_t s, const gnutls_datum_t *req_ca, int nreq,
                   const gnutls_pk_algorithm_t *algos, int nalgos, gnutls_pcert_st **pcert,
                   unsigned int *pcert_len, gnutls_privkey_t *key) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  int port = -1;
  if (!getsockname(gnutls_transport_get_int(s), (struct sockaddr *)&ss, &sl))
    port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                          : ((struct sockaddr_in *)&ss)->sin_port);
  pthread_mutex_lock(&tls_mu);
  mhd_lst *l = tls_lsts;
  while (l && l->port != port) l = l->tls_next;
  tls_keys *k = l ? l->keys : NULL;
  pthread_mutex_unlock(&tls_mu);
  if (!k) return -1;
  *pcert = k->pcert;
  *pcert_len = k->n;
  *key = k->key;
  return 0;
}

/* https: the certificate, key and client CA; event-loop mode is checked
 * by the caller. */
static int load_tls(mhd_lst *l) {
  const char *cert, *key, *ca;
  dsysi_server_tls(l->srv, &cert, &key, &ca);
  int rc = keys_read(l, &l->keys);
  if (!rc && ca) rc = read_pem(ca, &l->pem_trust);
  return rc;
}

/* Reread the certificate and key files: new handshakes present them;
 * open connections keep theirs. On failure the old pair stays. */
static int mhd_reload_tls(void *lst) {
  mhd_lst *l = lst;
  if (!l->tls) return 0;
  tls_keys *k = NULL;
  int rc = keys_read(l, &k);
  if (rc) return rc;
  pthread_mutex_lock(&tls_mu);
  k->older = l->keys;
  l->keys = k;
  pthread_mutex_unlock(&tls_mu);
  return 0;
}

static int mhd_listen(dsys_server *srv, const char *url, void **out,
                      const dsysi_listener_ops *ops, int is_unix) {
  mhd_lst *l = calloc(1, sizeof *l);
  if (!l) return DSYS_ENOMEM;
  l->srv = srv;
  l->ops = ops;
  l->tls = !strcmp(ops->scheme, "https");
  l->is_unix = is_unix;
  l->per_addr = dsysi_server_per_addr(srv);
  pthread_mutex_init(&l->cmu, NULL);
  pthread_mutex_init(&l->lmu, NULL);
  l->req_timeout_us = (int64_t)dsysi_server_request_timeout(srv) * 1000000;
  l->head_timeout_us = (int64_t)dsysi_server_header_timeout(srv) * 1000000;
  l->idle_us = (int64_t)dsysi_server_idle_timeout(srv) * 1000000;
  unsigned loops = dsysi_server_event_loops(srv);
  l->loops = loops > 0;
  /* One MHD daemon per loop; a Unix socket gets one loop (its listener
   * stays MHD's), TCP gets our accept path (on_accept). */
  l->nd = loops == 0 || is_unix ? 1 : loops;
  l->balanced = l->loops && !is_unix;
  if (l->balanced) l->max_silent = silent_limit(srv, l->nd);
  l->ds = calloc(l->nd, sizeof *l->ds);
  if (!l->ds) {
    pthread_mutex_destroy(&l->cmu);
    pthread_mutex_destroy(&l->lmu);
    free(l);
    return DSYS_ENOMEM;
  }
  for (unsigned i = 0; i < l->nd; i++) {
    l->ds[i].l = l;
    l->ds[i].fd = -1;
    pthread_mutex_init(&l->ds[i].hmu, NULL);
  }
  /* the guard first: MHD's notices may hand it connections at once */
  int rc = guard_start(l);
  if (!rc && l->tls) rc = load_tls(l);
  if (!rc) rc = bind_socket(url, is_unix, l, &l->ds[0].fd);
  if (!rc && l->tls) {
    pthread_mutex_lock(&tls_mu);
    l->tls_next = tls_lsts;
    tls_lsts = l;
    pthread_mutex_unlock(&tls_mu);
  }
  for (unsigned i = 0; !rc && i < l->nd; i++) rc = start_daemon(l, &l->ds[i]);
  if (!rc && l->balanced) {
    l->acc = (dsysi_watch){.fd = l->ds[0].fd, .fn = on_accept, .ud = l};
    if (dsysi_loop_add(l->ds[0].loop, &l->acc, EPOLLIN, 0) ||
        dsysi_loop_post(l->ds[0].loop, lobby_sweep, l))
      rc = DSYS_EIO;
  }
  if (rc) {
    free_lst(l);
    return rc;
  }
  *out = l;
  return 0;
}

static const dsysi_listener_ops http_ops, https_ops, unix_ops; /* at the end */

static int http_listen(dsys_server *srv, const char *url, void **out) {
  return mhd_listen(srv, url, out, &http_ops, 0);
}

static int https_listen(dsys_server *srv, const char *url, void **out) {
  return mhd_listen(srv, url, out, &https_ops, 0);
}

static int unix_listen(dsys_server *srv, const char *url, void **out) {
  return mhd_listen(srv, url, out, &unix_ops, 1);
}

static const char *mhd_url(void *lst) { return ((mhd_lst *)lst)->url; }

/* Connections already in the backlog were accepted by the kernel: closing
 * the listening socket would reset them. Take them first (bounded: new
 * ones may keep coming until the close). */
static void take_backlog(mhd_d *md, int fd) {
  for (int i = 0; i < 4096; i++) {
    handoff h = {.alen = sizeof h.addr};
    h.fd = accept4(fd, (struct sockaddr *)&h.addr, &h.alen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (h.fd < 0 && errno == EINTR) continue;
    if (h.fd < 0) return;
    MHD_add_connection(md->d, h.fd, (struct sockaddr *)&h.addr, h.alen);
  }
}

static void quiesce_one(mhd_d *md) {
  MHD_socket fd = MHD_quiesce_daemon(md->d);
  if (fd != MHD_INVALID_SOCKET) {
    take_backlog(md, fd);
    close(fd);
  }
  md->fd = -1;
}

static void quiesce_task(dsysi_loop *loop, void *ud) {
  mhd_d *md = ud;
  quiesce_one(md);
  atomic_fetch_add(&md->l->nquiesced, 1);
}

/* Balanced accept: the listening socket is ours, not MHD's. Silent
 * connections never sent a request: they go at once (waiting ones did,
 * and still get a loop). */
static void quiesce_accept(dsysi_loop *loop, void *ud) {
  mhd_lst *l = ud;
  if (l->ds[0].fd >= 0) {
    /* the backlog was accepted by the kernel: closing the socket would
     * reset it, so take it first, spread as usual (on_accept stops at
     * EAGAIN) */
    l->acc_empty = 0;
    for (int i = 0; i < 64 && !l->acc_empty; i++) on_accept(loop, l->ds[0].fd, EPOLLIN, l);
    dsysi_loop_del(loop, &l->acc);
    close(l->ds[0].fd);
    l->ds[0].fd = -1;
    /* silent connections never sent a request: they go now, unless the
     * stop keeps serving open connections (drain_keepalive: their first
     * request is answered with Connection: close) */
    if (!dsysi_server_drain_keepalive(l->srv)) {
      pthread_mutex_lock(&l->cmu);
      while (l->s_first) lobby_drop(l, l->s_first, -1);
      pthread_mutex_unlock(&l->cmu);
    }
  }
  atomic_fetch_add(&l->nquiesced, 1);
}

static void mhd_quiesce(void *lst) {
  mhd_lst *l = lst;
  if (l->quiesced) return;
  l->quiesced = 1;
  if (l->loops) {
    /* The loop's own thread must touch its daemon: MHD_quiesce_daemon
     * then runs on the only thread that runs that daemon. */
    unsigned posted = 0;
    if (l->balanced) posted += !dsysi_loop_post(l->ds[0].loop, quiesce_accept, l);
    else
      for (unsigned i = 0; i < l->nd; i++)
        posted += !dsysi_loop_post(l->ds[i].loop, quiesce_task, &l->ds[i]);
    /* Return once the sockets are closed (bounded): a stop then knows
     * that no new connection reaches this listener, and the server's
     * answers may send clients elsewhere. */
    int64_t end = dsysi_loop_now_us() + 1000000;
    while (atomic_load(&l->nquiesced) < posted && dsysi_loop_now_us() < end) {
      struct timespec ts = {.tv_nsec = 1000000};
      nanosleep(&ts, NULL);
    }
  } else {
    /* Not MHD_quiesce_daemon: with MHD's own epoll thread(s) it races
     * with them (libmicrohttpd 0.9.75 daemon.c:5531 and :4975): both
     * sides take the listening socket out of the thread's epoll set, the
     * flags they check are neither atomic nor locked, and the loser's
     * epoll_ctl(DEL) gets ENOENT, on which MHD panics (abort). Instead
     * the socket stays open until MHD_stop_daemon (which closes it) and
     * every connection accepted meanwhile is closed at once. */
    atomic_store(&l->refusing, 1);
  }
  if (l->unix_path) unlink(l->unix_path);
}

static unsigned mhd_open_connections(void *lst) {
  mhd_lst *l = lst;
  return atomic_load(&l->nopen);
}

static void mhd_close(void *lst) {
  mhd_lst *l = lst;
  mhd_quiesce(l);
  free_lst(l);
}

/* The three schemes share every op but listen: one definition. */
#define MHD_LISTENER(SCHEME, LISTEN)         \
  {                                          \
      .version = DSYSI_LISTENER_OPS_VERSION, \
      .scheme = SCHEME,                      \
      .listen = LISTEN,                      \
      .url = mhd_url,                        \
      .quiesce = mhd_quiesce,                \
      .notify = notify,                      \
      .close = mhd_close,                    \
      .open_connections = mhd_open_connections, \
      .reload_tls = mhd_reload_tls,          \
  }

static const dsysi_listener_ops http_ops = MHD_LISTENER("http", http_listen);
/* https: the http code with MHD_USE_TLS on the listener. */
static const dsysi_listener_ops https_ops = MHD_LISTENER("https", https_listen);
static const dsysi_listener_ops unix_ops = MHD_LISTENER("unix", unix_listen);

DSYSI_PLUGINS(http_server) = {{"listener", &http_ops}, {"listener", &https_ops},
                              {"listener", &unix_ops}, {0}};
