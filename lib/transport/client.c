/*
 * dsys_client: the transport-independent part of the client (call setup,
 * completion exactly once, sync over async, replies, classification).
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "core/plugin.h"
#include "transport/evloop.h"
#include "transport/transport.h"
#include "transport/url.h"

struct dsys_client {
  dsys_client_options o;
  char *tls[3]; /* copies of tls_ca_file, tls_cert_file, tls_key_file */
  pthread_mutex_t mu;
  /* per-engine dialer state, at the index of the engine's first dialer in
   * the dialer family (slot_of) */
  void *slots[DSYSI_FAMILY_MAX];
  dsysi_call *pending; /* calls started and not yet completed */
  int closing;
};

/* The slot of a dialer's engine: the family only grows, so the index of
 * an engine's first dialer never changes. */
static size_t slot_of(const dsysi_dialer_ops *ops) {
  const dsysi_dialer_ops *d;
  size_t i = 0;
  while ((d = dsysi_dialer_at(i)) && strcmp(d->engine, ops->engine)) i++;
  return i < DSYSI_FAMILY_MAX ? i : DSYSI_FAMILY_MAX - 1; /* ops is registered: found */
}

void **dsysi_client_slot(dsys_client *c, const dsysi_dialer_ops *ops) {
  return &c->slots[slot_of(ops)];
}

pthread_mutex_t *dsysi_client_lock(dsys_client *c) { return &c->mu; }

const dsys_client_options *dsysi_client_options(dsys_client *c) { return &c->o; }

int dsys_client_new(dsys_client **out, const dsys_client_options *opts) {
  if (!out) return DSYS_EINVAL;
  dsys_client *c = calloc(1, sizeof *c);
  if (!c) return DSYS_ENOMEM;
  if (opts) {
    size_t n = opts->size && opts->size < sizeof c->o ? opts->size : sizeof c->o;
    memcpy(&c->o, opts, n);
  }
  c->o.size = sizeof c->o;
  if (c->o.connect_timeout_ms <= 0) c->o.connect_timeout_ms = 2000;
  if (c->o.timeout_ms <= 0) c->o.timeout_ms = 30000;
  if (!c->o.max_response) c->o.max_response = 64u * 1024 * 1024;
  if (!c->o.clock) c->o.clock = dsys_clock_real();
  const char **tf[3] = {&c->o.tls_ca_file, &c->o.tls_cert_file, &c->o.tls_key_file};
  for (int i = 0; i < 3; i++)
    if (*tf[i]) {
      if (!(c->tls[i] = strdup(*tf[i]))) {
        for (int j = 0; j < i; j++) free(c->tls[j]);
        free(c);
        return DSYS_ENOMEM;
      }
      *tf[i] = c->tls[i];
    }
  pthread_mutex_init(&c->mu, NULL);
  *out = c;
  return 0;
}

void dsys_client_free(dsys_client *c) {
  if (!c) return;
  pthread_mutex_lock(&c->mu);
  c->closing = 1;
  pthread_mutex_unlock(&c->mu);
  /* Dialers stop their threads first (completing their calls): each
   * engine once, through its first dialer. */
  const dsysi_dialer_ops *d;
  for (size_t i = 0; (d = dsysi_dialer_at(i)); i++)
    if (slot_of(d) == i) d->client_free(c);
  /* Whatever is still pending completes now, canceled. */
  for (;;) {
    pthread_mutex_lock(&c->mu);
    dsysi_call *call = c->pending;
    pthread_mutex_unlock(&c->mu);
    if (!call) break;
    dsysi_call_complete(call, DSYS_ECANCELED, NULL);
  }
  pthread_mutex_destroy(&c->mu);
  for (int i = 0; i < 3; i++) free(c->tls[i]);
  free(c);
}

static void call_free(dsysi_call *call) {
  free(call->method);
  free(call->url);
  free(call->path);
  dsysi_hdrs_free(&call->hdrs);
  free(call->body);
  free(call);
}

void dsysi_call_unref(dsysi_call *call) {
  if (call && atomic_fetch_sub(&call->refs, 1) == 1) call_free(call);
}

void dsysi_call_complete(dsysi_call *call, int err, dsys_reply *reply) {
  if (atomic_exchange(&call->done, 1)) {
    dsys_reply_free(reply);
    return;
  }
  dsys_client *c = call->client;
  pthread_mutex_lock(&c->mu);
  if (call->cprev) call->cprev->cnext = call->cnext;
  else if (c->pending == call) c->pending = call->cnext;
  if (call->cnext) call->cnext->cprev = call->cprev;
  call->cprev = call->cnext = NULL;
  pthread_mutex_unlock(&c->mu);
  if (err) {
    dsys_reply_free(reply);
    reply = NULL;
  } else if (!reply) {
    err = DSYS_EINTERNAL;
  }
  call->cb(err, reply, call->ud);
}

static int is_token(const char *s) {
  if (!s || !*s) return 0;
  for (; *s; s++)
    if (*s <= ' ' || *s >= 127 || strchr("()<>@,;:\\\"/[]?={}", *s)) return 0;
  return 1;
}

int dsysi_call_norm(const dsys_call *in, dsys_call *d, int check) {
  if (!in || (in->nheaders && !in->headers) || (in->body_len && !in->body))
    return DSYS_EINVAL;
  memset(d, 0, sizeof *d);
  memcpy(d, in, in->size && in->size < sizeof *d ? in->size : sizeof *d);
  d->size = sizeof *d;
  if (!d->method) d->method = "GET";
  if (!d->path) d->path = "/";
  if (!check) return 0;
  /* no fragment: it is not sent (libcurl drops it, a server refuses it) */
  if (!is_token(d->method) || d->path[0] != '/' || strpbrk(d->path, " \r\n#"))
    return DSYS_EINVAL;
  for (size_t i = 0; i < d->nheaders; i++) {
    const dsys_header *h = &d->headers[i];
    if (!is_token(h->name) || !h->value || !dsysi_header_ok(h->value)) return DSYS_EINVAL;
  }
  return 0;
}

/* Copy a dsys_call into a pending call. */
static int make_call(dsys_client *c, const dsys_call *in, dsys_reply_fn cb,
                     void *ud, dsysi_call **out) {
  dsys_call d;
  if (!c || !in || !in->url || !cb || dsysi_call_norm(in, &d, 1)) return DSYS_EINVAL;
  const char *method = d.method, *path = d.path;
  const dsysi_dialer_ops *ops = dsysi_dialer_find(d.url);
  if (!ops) return dsysi_url_check(d.url); /* which error: no scheme or unknown */
  dsysi_call *call = calloc(1, sizeof *call);
  if (!call) return DSYS_ENOMEM;
  call->client = c;
  call->ops = ops;
  call->method = strdup(method);
  call->url = strdup(d.url);
  call->path = strdup(path);
  call->body = malloc(d.body_len + 1);
  int rc = (!call->method || !call->url || !call->path || !call->body) ? DSYS_ENOMEM : 0;
  if (!rc && d.body_len) memcpy(call->body, d.body, d.body_len);
  if (call->body) call->body[d.body_len] = '\0';
  call->body_len = d.body_len;
  for (size_t i = 0; !rc && i < d.nheaders; i++) {
    const dsys_header *h = &d.headers[i];
    rc = dsysi_hdrs_add(&call->hdrs, h->name, strlen(h->name), h->value, strlen(h->value));
  }
  if (rc) {
    call_free(call);
    return rc;
  }
  call->timeout_ms = d.timeout_ms > 0 ? d.timeout_ms : c->o.timeout_ms;
  call->connect_timeout_ms =
      d.connect_timeout_ms > 0 ? d.connect_timeout_ms : c->o.connect_timeout_ms;
  if (call->connect_timeout_ms > call->timeout_ms)
    call->connect_timeout_ms = call->timeout_ms;
  call->on_chunk = d.on_chunk;
  call->chunk_ud = d.chunk_ud;
  call->cb = cb;
  call->ud = ud;
  call->max_response = c->o.max_response;
  call->clock = c->o.clock;
  atomic_init(&call->refs, 1);
  *out = call;
  return 0;
}

static int track(dsys_client *c, dsysi_call *call) {
  pthread_mutex_lock(&c->mu);
  if (c->closing) {
    pthread_mutex_unlock(&c->mu);
    return DSYS_ECLOSED;
  }
  call->cnext = c->pending;
  if (c->pending) c->pending->cprev = call;
  c->pending = call;
  pthread_mutex_unlock(&c->mu);
  return 0;
}

static void untrack(dsys_client *c, dsysi_call *call) {
  atomic_store(&call->done, 1);
  pthread_mutex_lock(&c->mu);
  if (call->cprev) call->cprev->cnext = call->cnext;
  else if (c->pending == call) c->pending = call->cnext;
  if (call->cnext) call->cnext->cprev = call->cprev;
  pthread_mutex_unlock(&c->mu);
}

/* Track and start a call; on failure it is released and its callback
 * never runs. */
static int start_call(dsys_client *c, dsysi_call *call) {
  int rc = track(c, call);
  if (rc) {
    call_free(call);
    return rc;
  }
  rc = call->ops->call(call);
  if (rc) {
    untrack(c, call);
    dsysi_call_unref(call);
  }
  return rc;
}

int dsys_client_send(dsys_client *c, const dsys_call *in, dsys_reply_fn cb,
                     void *ud) {
  dsysi_call *call = NULL;
  int rc = make_call(c, in, cb, ud, &call);
  return rc ? rc : start_call(c, call);
}

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, err;
  dsys_reply *reply;
} waiter;

static void wake(int err, dsys_reply *reply, void *ud) {
  waiter *w = ud;
  pthread_mutex_lock(&w->mu);
  w->err = err;
  w->reply = reply;
  w->done = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

int dsys_client_do(dsys_client *c, const dsys_call *in, dsys_reply **out) {
  if (!out) return DSYS_EINVAL;
  waiter w = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
  dsysi_call *call = NULL;
  int rc = make_call(c, in, wake, &w, &call);
  if (rc) return rc;
  if (call->ops->call_sync) {
    /* Fast path on the caller's thread; not tracked (it cannot outlive
     * this call). */
    atomic_store(&call->done, 1);
    rc = call->ops->call_sync(call, out);
    dsysi_call_unref(call);
    return rc;
  }
  if ((rc = start_call(c, call))) return rc;
  pthread_mutex_lock(&w.mu);
  while (!w.done) pthread_cond_wait(&w.cv, &w.mu);
  pthread_mutex_unlock(&w.mu);
  if (w.err) return w.err;
  *out = w.reply;
  return 0;
}

/* ---- replies ---- */

static int reply_key; /* replies kept per event loop (the gateway's) */

dsys_reply *dsysi_reply_new(int status) {
  dsys_reply *r = dsysi_loop_cache_get(&reply_key);
  if (!r) r = malloc(sizeof *r);
  if (!r) return NULL;
  memset(r, 0, offsetof(dsys_reply, ar_mem));
  r->status = status;
  dsysi_arena_init(&r->ar, r->ar_mem, sizeof r->ar_mem);
  r->hdrs.ar = &r->ar;
  return r;
}

const char *dsysi_reply_ctype(const dsys_reply *r) {
  return r->ctype ? r->ctype : dsysi_hdrs_get(&r->hdrs, "Content-Type");
}

char *dsysi_reply_take_body(dsys_reply *r, size_t *len) {
  char *b = r->body ? r->body : calloc(1, 1);
  *len = r->body ? r->body_len : 0;
  r->body = NULL;
  r->body_len = 0;
  return b;
}

int dsys_reply_status(const dsys_reply *r) { return r ? r->status : 0; }

const void *dsys_reply_body(const dsys_reply *r, size_t *len) {
  if (len) *len = r ? r->body_len : 0;
  return r && r->body ? r->body : "";
}

const char *dsys_reply_header(const dsys_reply *r, const char *name) {
  return r && name ? dsysi_hdrs_get(&r->hdrs, name) : NULL;
}

size_t dsys_reply_header_count(const dsys_reply *r) { return r ? r->hdrs.n : 0; }

int dsys_reply_header_at(const dsys_reply *r, size_t i, const char **name,
                         const char **value) {
  if (!r || i >= r->hdrs.n) return DSYS_EINVAL;
  if (name) *name = r->hdrs.v[i].name;
  if (value) *value = r->hdrs.v[i].value;
  return 0;
}

void dsys_reply_free(dsys_reply *r) {
  if (!r) return;
  dsysi_hdrs_free(&r->hdrs);
  dsysi_arena_free(&r->ar);
  free(r->body);
  if (dsysi_loop_cache_put(&reply_key, r, 256, free)) free(r);
}

dsys_outcome dsys_classify(int err, int status) {
  switch (err) {
  case 0:
    if (status >= 500) return DSYS_OUTCOME_SERVER_ERROR;
    if (status >= 400) return DSYS_OUTCOME_CLIENT_ERROR;
    return DSYS_OUTCOME_OK;
  case DSYS_ECONNREFUSED:
  case DSYS_ERESOLVE:
    return DSYS_OUTCOME_NOT_SENT;
  case DSYS_ETIMEDOUT:
    return DSYS_OUTCOME_TIMEOUT;
  case DSYS_ECONNRESET:
    return DSYS_OUTCOME_RESET;
  case DSYS_EPROTO:
  case DSYS_ETOOBIG:
    return DSYS_OUTCOME_PROTOCOL;
  default:
    return DSYS_OUTCOME_LOCAL;
  }
}
