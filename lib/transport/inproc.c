/*
 * inproc:// transport: a server and its clients in one process, no socket.
 * A listener owns a small pool of worker threads that run handlers; the
 * client side creates the request directly and gets the reply when the
 * handler answers, from whichever thread answered.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/plugin.h"
#include "transport/inproc.h"
#include "transport/transport.h"
#include "transport/url.h"

const dsysi_inproc_link *dsysi_inproc_link_hook;

typedef struct inproc_lst {
  dsys_server *srv;
  char name[256];
  char url[300];
  pthread_mutex_t mu;
  pthread_cond_t cv;
  dsys_request **q;
  size_t qhead, qn, qcap;
  pthread_t *thr;
  unsigned nthr;
  int stop;
  struct inproc_lst *next;
} inproc_lst;

typedef struct inproc_req {
  dsysi_call *call;
  dsysi_buf body; /* streamed bytes when the caller has no chunk callback */
  int pumping, again;
  int tag; /* the link hook's tag (simulation only) */
} inproc_req;

static const dsysi_listener_ops listener_ops; /* at the end */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static inproc_lst *g_listeners;

static void *worker(void *arg) {
  inproc_lst *l = arg;
  pthread_mutex_lock(&l->mu);
  for (;;) {
    while (!l->stop && l->qn == 0) pthread_cond_wait(&l->cv, &l->mu);
    if (l->qn == 0) break;
    dsys_request *r = l->q[l->qhead];
    l->qhead = (l->qhead + 1) % l->qcap;
    l->qn--;
    pthread_mutex_unlock(&l->mu);
    dsysi_lock_acquire(&r->mu);
    int skip = r->transport_done || r->abandoned;
    dsysi_lock_release(&r->mu);
    if (!skip) {
      if (r->body_len > dsysi_server_max_body(l->srv))
        dsys_respond_error(r, 413, "DSYS_ETOOBIG", "Request body too large");
      else
        dsysi_server_dispatch(r);
    }
    dsysi_request_unref(r); /* the queue's reference */
    pthread_mutex_lock(&l->mu);
  }
  pthread_mutex_unlock(&l->mu);
  return NULL;
}

static int enqueue(inproc_lst *l, dsys_request *r) {
  pthread_mutex_lock(&l->mu);
  if (l->qn == l->qcap) {
    size_t nc = l->qcap ? l->qcap * 2 : 64;
    dsys_request **nq = malloc(nc * sizeof *nq);
    if (!nq) {
      pthread_mutex_unlock(&l->mu);
      return DSYS_ENOMEM;
    }
    for (size_t i = 0; i < l->qn; i++) nq[i] = l->q[(l->qhead + i) % l->qcap];
    free(l->q);
    l->q = nq;
    l->qhead = 0;
    l->qcap = nc;
  }
  dsysi_request_ref(r);
  l->q[(l->qhead + l->qn) % l->qcap] = r;
  l->qn++;
  pthread_cond_signal(&l->cv);
  pthread_mutex_unlock(&l->mu);
  return 0;
}

static int inproc_listen(dsys_server *srv, const char *url, void **out) {
  dsysi_url u;
  int rc = dsysi_url_parse(url, &u);
  if (rc) return rc;
  inproc_lst *l = calloc(1, sizeof *l);
  if (!l) {
    dsysi_url_free(&u);
    return DSYS_ENOMEM;
  }
  l->srv = srv;
  strcpy(l->name, u.host);
  snprintf(l->url, sizeof l->url, "inproc://%s", u.host);
  dsysi_url_free(&u);
  pthread_mutex_init(&l->mu, NULL);
  pthread_cond_init(&l->cv, NULL);
  l->nthr = dsysi_server_threads(srv);
  l->thr = calloc(l->nthr, sizeof *l->thr);
  if (!l->thr) {
    free(l);
    return DSYS_ENOMEM;
  }
  pthread_mutex_lock(&g_mu);
  for (inproc_lst *p = g_listeners; p; p = p->next)
    if (!strcmp(p->name, l->name)) {
      pthread_mutex_unlock(&g_mu);
      free(l->thr);
      free(l);
      return DSYS_EEXIST;
    }
  unsigned started = 0;
  for (; started < l->nthr; started++)
    if (pthread_create(&l->thr[started], NULL, worker, l)) break;
  if (started < l->nthr) {
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    for (unsigned i = 0; i < started; i++) pthread_join(l->thr[i], NULL);
    pthread_mutex_unlock(&g_mu);
    free(l->thr);
    free(l);
    return DSYS_ENOMEM;
  }
  l->next = g_listeners;
  g_listeners = l;
  pthread_mutex_unlock(&g_mu);
  *out = l;
  return 0;
}

static const char *inproc_url(void *lst) { return ((inproc_lst *)lst)->url; }

static void inproc_quiesce(void *lst) {
  inproc_lst *l = lst;
  pthread_mutex_lock(&g_mu);
  for (inproc_lst **pp = &g_listeners; *pp; pp = &(*pp)->next)
    if (*pp == l) {
      *pp = l->next;
      break;
    }
  pthread_mutex_unlock(&g_mu);
}

static void inproc_close(void *lst) {
  inproc_lst *l = lst;
  inproc_quiesce(l);
  pthread_mutex_lock(&l->mu);
  l->stop = 1;
  pthread_cond_broadcast(&l->cv);
  pthread_mutex_unlock(&l->mu);
  for (unsigned i = 0; i < l->nthr; i++) pthread_join(l->thr[i], NULL);
  free(l->thr);
  free(l->q);
  pthread_mutex_destroy(&l->mu);
  pthread_cond_destroy(&l->cv);
  free(l);
}

static void free_ireq(inproc_req *ir) {
  dsysi_call_unref(ir->call);
  dsysi_buf_free(&ir->body);
  free(ir);
}

typedef struct late_reply {
  dsysi_call *call;
  int err, tag;
  dsys_reply *reply;
} late_reply;

static void reply_later(void *ud) {
  late_reply *lr = ud;
  dsysi_call *call = lr->call;
  int prev = dsysi_inproc_link_hook->enter(lr->tag);
  dsysi_call_complete(call, lr->err, lr->reply);
  dsysi_inproc_link_hook->leave(prev);
  if (call->timer && dsys_timer_cancel(call->clock, call->timer) == 0)
    dsysi_call_unref(call); /* the timer's reference */
  dsysi_call_unref(call);   /* ours */
  free(lr);
}

/* The link hook holds the reply back (returns 1) or lets it through now. A
 * lost reply leaves the caller to its timeout timer. */
static int link_reply(inproc_req *ir, int err, dsys_reply *reply) {
  int64_t delay = 0;
  dsysi_call *call = ir->call;
  if (dsysi_inproc_link_hook->reply(ir->tag, &delay) == DSYSI_LINK_DELIVER && delay <= 0) return 0;
  late_reply *lr = NULL;
  if (delay > 0 && (lr = malloc(sizeof *lr))) {
    *lr = (late_reply){call, err, ir->tag, reply};
    atomic_fetch_add(&call->refs, 1);
    if (dsys_timer_add(call->clock, delay, reply_later, lr, NULL) == 0) return 1;
    atomic_fetch_sub(&call->refs, 1);
    free(lr);
  }
  dsys_reply_free(reply);
  return 1;
}

/* Complete the caller's side and then the transport side. */
static void finish(dsys_request *r, inproc_req *ir, int err, dsys_reply *reply,
                   int ok) {
  dsysi_call *call = ir->call;
  const dsysi_inproc_link *lk = dsysi_inproc_link_hook;
  if (__builtin_expect(lk != NULL, 0)) {
    if (link_reply(ir, err, reply)) {
      dsysi_request_transport_done(r, ok);
      free_ireq(ir);
      return;
    }
    int prev = lk->enter(ir->tag);
    dsysi_call_complete(call, err, reply);
    lk->leave(prev);
  } else {
    dsysi_call_complete(call, err, reply);
  }
  if (call->timer && dsys_timer_cancel(call->clock, call->timer) == 0)
    dsysi_call_unref(call); /* the timer's reference */
  dsysi_request_transport_done(r, ok);
  free_ireq(ir);
}

static dsys_reply *reply_from(dsys_request *r, int status, char *body,
                              size_t len) {
  dsys_reply *rep = dsysi_reply_new(status);
  if (!rep) {
    free(body);
    return NULL;
  }
  rep->body = body ? body : strdup("");
  rep->body_len = body ? len : 0;
  for (size_t i = 0; i < r->rhdrs.n; i++)
    dsysi_hdrs_add(&rep->hdrs, r->rhdrs.v[i].name, strlen(r->rhdrs.v[i].name),
                   r->rhdrs.v[i].value, strlen(r->rhdrs.v[i].value));
  if (r->ctype) dsysi_hdrs_add(&rep->hdrs, "Content-Type", 12, r->ctype, strlen(r->ctype));
  return rep;
}

static void inproc_notify(void *lst, dsys_request *r) {
  dsysi_lock_acquire(&r->mu);
  if (r->transport_done) {
    dsysi_lock_release(&r->mu);
    return;
  }
  inproc_req *ir = r->tctx;
  if (r->state == DSYSI_RQ_ANSWERED) {
    if (r->rlen > ir->call->max_response) {
      /* Same rule as the http client: a reply over the limit is an error. */
      dsysi_lock_release(&r->mu);
      finish(r, ir, DSYS_ETOOBIG, NULL, 1);
      return;
    }
    char *body = r->rbody;
    r->rbody = NULL;
    dsys_reply *rep = reply_from(r, r->status, body, r->rlen);
    dsysi_lock_release(&r->mu);
    finish(r, ir, rep ? 0 : DSYS_ENOMEM, rep, 1);
    return;
  }
  if (r->state != DSYSI_RQ_STREAMING) {
    if (r->abandoned) {
      size_t len = 0;
      char *body = dsysi_error_json("DSYS_ESTOPPED", "Server is shutting down", &len);
      dsys_reply *rep = dsysi_reply_new(503);
      if (rep) {
        rep->body = body;
        rep->body_len = len;
        dsysi_hdrs_add(&rep->hdrs, "Content-Type", 12, "application/json", 16);
      } else {
        free(body);
      }
      dsysi_lock_release(&r->mu);
      finish(r, ir, rep ? 0 : DSYS_ENOMEM, rep, 0);
      return;
    }
    dsysi_lock_release(&r->mu);
    return;
  }
  /* Streaming: one pumper at a time delivers chunks in order. */
  if (ir->pumping) {
    ir->again = 1;
    dsysi_lock_release(&r->mu);
    return;
  }
  ir->pumping = 1;
  for (;;) {
    ir->again = 0;
    dsysi_buf chunk = {0};
    char tmp[16384];
    size_t n;
    while ((n = dsysi_request_stream_take(r, tmp, sizeof tmp)) > 0)
      dsysi_buf_append(&chunk, tmp, n);
    int ended = r->stream_ended, cut = r->abandoned;
    dsysi_lock_release(&r->mu);
    dsysi_call *call = ir->call;
    int gone = atomic_load(&call->done);
    if (chunk.len && !gone) {
      if (call->on_chunk) call->on_chunk(chunk.data, chunk.len, call->chunk_ud);
      else if (ir->body.len + chunk.len > call->max_response) cut = 2;
      else dsysi_buf_append(&ir->body, chunk.data, chunk.len);
    }
    dsysi_buf_free(&chunk);
    if (ended || cut || gone) {
      dsysi_lock_acquire(&r->mu);
      dsys_reply *rep = NULL;
      int err = 0;
      if (cut == 2) err = DSYS_ETOOBIG;
      else if (cut) err = DSYS_ECONNRESET;
      else if (!gone) {
        char *body = dsysi_buf_steal(&ir->body, &n);
        rep = reply_from(r, r->status, body, n);
        if (!rep) err = DSYS_ENOMEM;
      }
      dsysi_lock_release(&r->mu);
      finish(r, ir, err, rep, ended && !gone);
      return;
    }
    dsysi_lock_acquire(&r->mu);
    if (!ir->again) break;
  }
  ir->pumping = 0;
  dsysi_lock_release(&r->mu);
}

static void refused(void *ud) {
  dsysi_call *call = ud;
  dsysi_call_complete(call, DSYS_ECONNREFUSED, NULL);
  dsysi_call_unref(call);
}

static void timed_out(void *ud) {
  dsysi_call *call = ud;
  dsysi_call_complete(call, DSYS_ETIMEDOUT, NULL);
  dsysi_call_unref(call);
}

static int deliver(dsysi_call *call, int tag, int add_timer) {
  dsysi_url u;
  int rc = dsysi_url_parse(call->url, &u);
  if (rc) return rc;
  pthread_mutex_lock(&g_mu);
  inproc_lst *l = g_listeners;
  while (l && strcmp(l->name, u.host)) l = l->next;
  dsysi_url_free(&u);
  if (!l) {
    pthread_mutex_unlock(&g_mu);
    /* Like a refused TCP connect: reported through the callback, from
     * the timer thread, never from inside this call. */
    return dsys_timer_add(call->clock, 0, refused, call, NULL);
  }
  inproc_req *ir = calloc(1, sizeof *ir);
  dsys_request *r = ir ? dsysi_request_new(l->srv, &listener_ops, l, ir) : NULL;
  if (!r) {
    pthread_mutex_unlock(&g_mu);
    free(ir);
    return DSYS_ENOMEM;
  }
  /* ir owns the call's initial reference from here on. */
  ir->call = call;
  ir->tag = tag;
  r->remote = "inproc";
  r->method = dsysi_arena_strndup(&r->ar, call->method, strlen(call->method));
  r->body = malloc(call->body_len + 1);
  rc = (!r->method || !r->body) ? DSYS_ENOMEM : dsysi_request_set_target(r, call->path);
  if (!rc) {
    memcpy(r->body, call->body, call->body_len + 1);
    r->body_len = call->body_len;
    for (size_t i = 0; !rc && i < call->hdrs.n; i++)
      rc = dsysi_hdrs_add(&r->hdrs, call->hdrs.v[i].name, strlen(call->hdrs.v[i].name),
                          call->hdrs.v[i].value, strlen(call->hdrs.v[i].value));
  }
  if (!rc && add_timer) {
    atomic_fetch_add(&call->refs, 1); /* the timer's reference */
    rc = dsys_timer_add(call->clock, call->timeout_ms * 1000, timed_out, call,
                        &call->timer);
    if (rc) atomic_fetch_sub(&call->refs, 1);
  }
  if (!rc) rc = enqueue(l, r);
  pthread_mutex_unlock(&g_mu);
  if (rc) {
    /* Never started: undo quietly; the caller releases the call. */
    if (call->timer && dsys_timer_cancel(call->clock, call->timer) == 0)
      atomic_fetch_sub(&call->refs, 1);
    dsysi_lock_acquire(&r->mu);
    r->user_done = 1;
    r->closed = 1; /* no on_close for a request nobody saw */
    dsysi_lock_release(&r->mu);
    dsysi_request_transport_done(r, 0);
    dsysi_request_unref(r); /* the user's reference */
    dsysi_buf_free(&ir->body);
    free(ir);
    return rc;
  }
  return 0;
}

typedef struct late_call {
  dsysi_call *call;
  int tag;
} late_call;

/* A late request reaches the server even after its caller gave up (as on
 * a real network); the caller's timeout timer runs from the send. */
static void deliver_later(void *ud) {
  late_call *lc = ud;
  dsysi_call *call = lc->call;
  int rc = deliver(call, lc->tag, 0);
  if (rc) {
    dsysi_call_complete(call, rc, NULL);
    if (call->timer && dsys_timer_cancel(call->clock, call->timer) == 0)
      dsysi_call_unref(call); /* the timer's reference */
    dsysi_call_unref(call);
  }
  free(lc);
}

/* A request through the link hook: lost (the caller's timeout answers),
 * late, or delivered now. */
static int link_call(dsysi_call *call) {
  dsysi_url u;
  int rc = dsysi_url_parse(call->url, &u);
  if (rc) return rc;
  int tag = 0;
  int64_t delay = 0;
  int act = dsysi_inproc_link_hook->request(u.host, call->path, &tag, &delay);
  dsysi_url_free(&u);
  if (act != DSYSI_LINK_DELIVER) /* lost: the timer owns the call's initial reference */
    return dsys_timer_add(call->clock, call->timeout_ms * 1000, timed_out, call, NULL);
  if (delay <= 0) return deliver(call, tag, 1);
  late_call *lc = malloc(sizeof *lc);
  if (!lc) return DSYS_ENOMEM;
  *lc = (late_call){call, tag};
  atomic_fetch_add(&call->refs, 1); /* the timeout timer's reference */
  rc = dsys_timer_add(call->clock, call->timeout_ms * 1000, timed_out, call, &call->timer);
  if (rc) {
    atomic_fetch_sub(&call->refs, 1);
  } else if ((rc = dsys_timer_add(call->clock, delay, deliver_later, lc, NULL))) {
    if (dsys_timer_cancel(call->clock, call->timer) == 0) atomic_fetch_sub(&call->refs, 1);
  }
  if (rc) free(lc);
  return rc;
}

static int inproc_call(dsysi_call *call) {
  if (__builtin_expect(dsysi_inproc_link_hook != NULL, 0)) return link_call(call);
  return deliver(call, 0, 1);
}

static void inproc_client_free(dsys_client *c) { (void)c; }

static const dsysi_listener_ops listener_ops = {
    .version = DSYSI_LISTENER_OPS_VERSION,
    .scheme = "inproc",
    .listen = inproc_listen,
    .url = inproc_url,
    .quiesce = inproc_quiesce,
    .notify = inproc_notify,
    .close = inproc_close,
};

static const dsysi_dialer_ops dialer_ops = {
    .version = DSYSI_DIALER_OPS_VERSION,
    .scheme = "inproc",
    .engine = "inproc",
    .call = inproc_call,
    .client_free = inproc_client_free,
};

DSYSI_PLUGINS(inproc) = {{"listener", &listener_ops}, {"dialer", &dialer_ops}, {0}};
