/*
 * In-process publish/subscribe with bounded drop-oldest queues, per-topic
 * history for resume, and Server-Sent Events streams (see events.h).
 *
 * One mutex per hub guards topics, subscriptions and their queues. Events
 * are reference counted: the topic history holds one reference, every
 * queue that holds the event one more, and dsys_events_next() hands the
 * queue's reference to the caller. Notify callbacks run after the hub lock
 * is released; a subscription counts its running notify calls so that
 * unsubscribe can wait for them.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/events.h>
#include "core/internal.h"
#include "transport/transport.h"

typedef struct ev_item {
  dsys_event pub;
  atomic_uint refs;
  uint64_t prev_id; /* id of the previous event of the same topic, 0 */
  /* topic, name and data follow */
} ev_item;

typedef struct topic {
  char *name;
  ev_item **ring;
  uint32_t head, n; /* oldest at head */
  uint64_t last_id; /* newest id published on the topic, 0 */
  struct topic *next;
} topic;

struct dsys_events_sub {
  dsys_events *hub;
  char **topics;
  size_t ntopics;
  ev_item **q;
  uint32_t head, n;
  uint64_t dropped;
  int gap;
  dsys_events_notify_fn notify;
  void *ud;
  int closed;
  int notifying; /* notify calls running */
  int refs;      /* owner + running notify calls */
  struct dsys_events_sub *next, *prev;
};

typedef struct sse_stream_node sse_node;

struct dsys_events {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  dsys_events_options o;
  uint64_t next_id;
  topic *topics;
  dsys_events_sub *subs;
  dsys_sse_stream *streams; /* open streams */
  size_t nstreams;          /* open streams */
  size_t alive;             /* stream objects not yet freed */
  int closing;
  uint64_t published, dropped;
};

static _Thread_local dsys_events_sub *tl_notifying;

/* ---- events ---- */

static void item_unref(ev_item *it) {
  if (it && atomic_fetch_sub(&it->refs, 1) == 1) free(it);
}

static void item_ref(ev_item *it) { atomic_fetch_add(&it->refs, 1); }

void dsys_event_release(const dsys_event *e) {
  if (e) item_unref((ev_item *)(void *)((char *)(uintptr_t)e - offsetof(ev_item, pub)));
}

static int bad_token(const char *s) {
  return s && (strchr(s, '\r') || strchr(s, '\n'));
}

/* ---- hub ---- */

int dsys_events_new(dsys_events **out, const dsys_events_options *opts) {
  if (!out) return DSYS_EINVAL;
  dsys_events *ev = calloc(1, sizeof *ev);
  if (!ev) return DSYS_ENOMEM;
  if (opts)
    memcpy(&ev->o, opts, opts->size && opts->size < sizeof ev->o ? opts->size : sizeof ev->o);
  ev->o.size = sizeof ev->o;
  if (!ev->o.clock) ev->o.clock = dsys_clock_real();
  if (!ev->o.queue_len) ev->o.queue_len = 256;
  if (!ev->o.history) ev->o.history = 64;
  if (ev->o.heartbeat_ms <= 0) ev->o.heartbeat_ms = 15000;
  ev->next_id = ev->o.first_id ? ev->o.first_id
                               : (uint64_t)dsys_clock_wall_ms(ev->o.clock) * 1000u + 1;
  pthread_mutex_init(&ev->mu, NULL);
  pthread_cond_init(&ev->cv, NULL);
  *out = ev;
  return 0;
}

static topic *find_topic(dsys_events *ev, const char *name, int create) {
  for (topic *t = ev->topics; t; t = t->next)
    if (!strcmp(t->name, name)) return t;
  if (!create) return NULL;
  topic *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->name = strdup(name);
  t->ring = calloc(ev->o.history, sizeof *t->ring);
  if (!t->name || !t->ring) {
    free(t->name);
    free(t->ring);
    free(t);
    return NULL;
  }
  t->next = ev->topics;
  ev->topics = t;
  return t;
}

static int sub_wants(const dsys_events_sub *s, const char *topic_name) {
  if (!s->ntopics) return 1;
  for (size_t i = 0; i < s->ntopics; i++)
    if (!strcmp(s->topics[i], topic_name)) return 1;
  return 0;
}

/* Queue an event (hold the hub lock); drops the oldest when full. */
static void sub_push(dsys_events *ev, dsys_events_sub *s, ev_item *it) {
  uint32_t cap = ev->o.queue_len;
  if (s->n == cap) {
    item_unref(s->q[s->head]);
    s->head = (s->head + 1) % cap;
    s->n--;
    s->dropped++;
    ev->dropped++;
  }
  item_ref(it);
  s->q[(s->head + s->n) % cap] = it;
  s->n++;
}

int dsys_events_publish(dsys_events *ev, const char *topic_name, const char *name,
                        const char *data, size_t len, uint64_t *id_out) {
  if (!ev || !topic_name || !*topic_name || bad_token(topic_name) || bad_token(name) ||
      (!data && len) || (len && memchr(data, '\0', len)))
    return DSYS_EINVAL;
  size_t tl = strlen(topic_name), nl = name ? strlen(name) : 0;
  ev_item *it = malloc(sizeof *it + tl + 1 + nl + 1 + len + 1);
  if (!it) return DSYS_ENOMEM;
  char *p = (char *)(it + 1);
  memcpy(p, topic_name, tl + 1);
  it->pub.topic = p;
  p += tl + 1;
  if (nl) memcpy(p, name, nl);
  p[nl] = '\0';
  it->pub.name = p;
  p += nl + 1;
  if (len) memcpy(p, data, len);
  p[len] = '\0';
  it->pub.data = p;
  it->pub.len = len;
  it->pub.wall_ms = dsys_clock_wall_ms(ev->o.clock);
  atomic_init(&it->refs, 1); /* the topic history */

  pthread_mutex_lock(&ev->mu);
  topic *t = find_topic(ev, topic_name, 1);
  if (!t) {
    pthread_mutex_unlock(&ev->mu);
    free(it);
    return DSYS_ENOMEM;
  }
  /* count the subscriptions to notify first: one allocation, then no
   * failure can happen after the event got its id */
  size_t nn = 0;
  for (dsys_events_sub *s = ev->subs; s; s = s->next)
    if (s->notify && sub_wants(s, topic_name)) nn++;
  dsys_events_sub **tell = nn ? malloc(nn * sizeof *tell) : NULL;
  if (nn && !tell) {
    pthread_mutex_unlock(&ev->mu);
    free(it);
    return DSYS_ENOMEM;
  }
  it->pub.id = ev->next_id++;
  it->prev_id = t->last_id;
  t->last_id = it->pub.id;
  ev->published++;
  uint32_t cap = ev->o.history;
  if (t->n == cap) {
    item_unref(t->ring[t->head]);
    t->head = (t->head + 1) % cap;
    t->n--;
  }
  t->ring[(t->head + t->n) % cap] = it;
  t->n++;
  size_t k = 0;
  for (dsys_events_sub *s = ev->subs; s; s = s->next) {
    if (!sub_wants(s, topic_name)) continue;
    sub_push(ev, s, it);
    if (s->notify) {
      s->refs++;
      s->notifying++;
      tell[k++] = s;
    }
  }
  if (id_out) *id_out = it->pub.id;
  pthread_mutex_unlock(&ev->mu);

  for (size_t i = 0; i < k; i++) {
    dsys_events_sub *s = tell[i];
    dsys_events_sub *saved = tl_notifying;
    tl_notifying = s;
    s->notify(s, s->ud);
    tl_notifying = saved;
    pthread_mutex_lock(&ev->mu);
    s->notifying--;
    int last = --s->refs == 0;
    pthread_cond_broadcast(&ev->cv);
    pthread_mutex_unlock(&ev->mu);
    if (last) {
      free(s->q);
      free(s);
    }
  }
  free(tell);
  return 0;
}

static void sub_free_fields(dsys_events_sub *s) {
  if (s->topics)
    for (size_t i = 0; i < s->ntopics; i++) free(s->topics[i]);
  free(s->topics);
  s->topics = NULL;
}

static int cmp_item(const void *a, const void *b) {
  uint64_t x = (*(ev_item *const *)a)->pub.id, y = (*(ev_item *const *)b)->pub.id;
  return x < y ? -1 : x > y;
}

int dsys_events_subscribe(dsys_events *ev, const char *const *topics, size_t ntopics,
                          uint64_t last_id, dsys_events_notify_fn notify, void *ud,
                          dsys_events_sub **out) {
  if (!ev || !out || (ntopics && !topics)) return DSYS_EINVAL;
  for (size_t i = 0; i < ntopics; i++)
    if (!topics[i] || !*topics[i] || bad_token(topics[i])) return DSYS_EINVAL;
  dsys_events_sub *s = calloc(1, sizeof *s);
  if (!s) return DSYS_ENOMEM;
  s->hub = ev;
  s->notify = notify;
  s->ud = ud;
  s->refs = 1;
  s->q = calloc(ev->o.queue_len, sizeof *s->q);
  s->ntopics = ntopics;
  s->topics = ntopics ? calloc(ntopics, sizeof *s->topics) : NULL;
  int rc = s->q && (!ntopics || s->topics) ? 0 : DSYS_ENOMEM;
  for (size_t i = 0; !rc && i < ntopics; i++)
    if (!(s->topics[i] = strdup(topics[i]))) rc = DSYS_ENOMEM;
  ev_item **replay = NULL;
  size_t nr = 0;
  pthread_mutex_lock(&ev->mu);
  if (!rc && ev->closing) rc = DSYS_ESTOPPED;
  if (!rc && last_id) {
    /* resume: the kept events of these topics after last_id, in id order */
    size_t room = 0;
    for (topic *t = ev->topics; t; t = t->next)
      if (sub_wants(s, t->name)) room += t->n;
    replay = room ? malloc(room * sizeof *replay) : NULL;
    if (room && !replay) rc = DSYS_ENOMEM;
    for (topic *t = ev->topics; !rc && t; t = t->next) {
      if (!sub_wants(s, t->name)) continue;
      if (last_id >= ev->next_id) { /* an id this hub never gave out */
        s->gap = 1;
        break;
      }
      for (uint32_t i = 0; i < t->n; i++) {
        ev_item *it = t->ring[(t->head + i) % ev->o.history];
        if (it->pub.id <= last_id) continue;
        if (replay && nr < room) replay[nr++] = it;
        if (i == 0 && it->prev_id > last_id) s->gap = 1; /* older ones were evicted */
      }
    }
    if (!rc && nr) {
      qsort(replay, nr, sizeof *replay, cmp_item);
      for (size_t i = 0; i < nr; i++) sub_push(ev, s, replay[i]);
    }
  }
  if (!rc) {
    s->next = ev->subs;
    if (ev->subs) ev->subs->prev = s;
    ev->subs = s;
  }
  pthread_mutex_unlock(&ev->mu);
  free(replay);
  if (rc) {
    for (uint32_t i = 0; i < s->n; i++) item_unref(s->q[(s->head + i) % ev->o.queue_len]);
    sub_free_fields(s);
    free(s->q);
    free(s);
    return rc;
  }
  *out = s;
  return 0;
}

int dsys_events_next(dsys_events_sub *s, const dsys_event **out, uint64_t *dropped) {
  if (!s || !out) return DSYS_EINVAL;
  dsys_events *ev = s->hub;
  pthread_mutex_lock(&ev->mu);
  if (dropped) {
    *dropped = s->dropped;
    s->dropped = 0;
  }
  if (!s->n) {
    pthread_mutex_unlock(&ev->mu);
    *out = NULL;
    return DSYS_EAGAIN;
  }
  ev_item *it = s->q[s->head];
  s->head = (s->head + 1) % ev->o.queue_len;
  s->n--;
  pthread_mutex_unlock(&ev->mu);
  *out = &it->pub;
  return 0;
}

int dsys_events_resume_gap(const dsys_events_sub *s) { return s ? s->gap : 0; }

void dsys_events_unsubscribe(dsys_events_sub *s) {
  if (!s) return;
  dsys_events *ev = s->hub;
  pthread_mutex_lock(&ev->mu);
  if (s->closed) { /* a usage error; do nothing rather than free twice */
    pthread_mutex_unlock(&ev->mu);
    return;
  }
  s->closed = 1;
  if (s->prev) s->prev->next = s->next;
  else ev->subs = s->next;
  if (s->next) s->next->prev = s->prev;
  s->next = s->prev = NULL;
  while (s->n) {
    item_unref(s->q[s->head]);
    s->head = (s->head + 1) % ev->o.queue_len;
    s->n--;
  }
  int self = tl_notifying == s;
  while (s->notifying > self) pthread_cond_wait(&ev->cv, &ev->mu);
  int last = --s->refs == 0;
  pthread_mutex_unlock(&ev->mu);
  sub_free_fields(s);
  if (last) {
    free(s->q);
    free(s);
  }
}

void dsys_events_counters(dsys_events *ev, uint64_t *published, uint64_t *dropped) {
  if (!ev) return;
  pthread_mutex_lock(&ev->mu);
  if (published) *published = ev->published;
  if (dropped) *dropped = ev->dropped;
  pthread_mutex_unlock(&ev->mu);
}

/* ---- SSE framing ---- */

static int sse_frame(dsysi_buf *b, uint64_t id, const char *name, const char *data,
                     size_t len) {
  if (id) dsysi_buf_printf(b, "id: %" PRIu64 "\n", id);
  if (name && *name) dsysi_buf_printf(b, "event: %s\n", name);
  size_t i = 0;
  do {
    size_t j = i;
    while (j < len && data[j] != '\r' && data[j] != '\n') j++;
    dsysi_buf_puts(b, "data: ");
    dsysi_buf_append(b, data + i, j - i);
    dsysi_buf_puts(b, "\n");
    if (j == len) break;
    i = j + 1;
    if (data[j] == '\r' && i < len && data[i] == '\n') i++;
    if (i == len) { /* a trailing line break: the data ends with an empty line */
      dsysi_buf_puts(b, "data: \n");
      break;
    }
  } while (1);
  dsysi_buf_puts(b, "\n");
  return b->oom ? DSYS_ENOMEM : 0;
}

int dsys_sse_encode(uint64_t id, const char *name, const char *data, size_t len, char **out,
                    size_t *outlen) {
  if (!out || (!data && len) || bad_token(name)) return DSYS_EINVAL;
  dsysi_buf b = {0};
  int rc = sse_frame(&b, id, name, data ? data : "", len);
  if (rc) {
    dsysi_buf_free(&b);
    return rc;
  }
  *out = dsysi_buf_steal(&b, outlen);
  return *out ? 0 : DSYS_ENOMEM;
}

/* ---- SSE streams ---- */

struct dsys_sse_stream {
  pthread_mutex_t mu; /* serialises writes; guards ended and hb_timer */
  atomic_int refs;
  dsys_events *hub;
  dsys_request *req;
  dsys_events_sub *sub;
  uint64_t hb_timer;
  int ended;
  int in_open; /* on_open running: dsys_sse_send allowed */
  int closed_inline; /* on_close ran inside one of our writes */
  int end_after;     /* the filter or on_open asked to end the stream */
  dsys_sse_filter_fn filter;
  void *filter_ud;
  void (*filter_free)(void *);
  dsys_sse_stream *next, *prev;
};

static void st_unref(dsys_sse_stream *st) {
  if (atomic_fetch_sub(&st->refs, 1) != 1) return;
  dsys_events *ev = st->hub;
  if (st->filter_free) st->filter_free(st->filter_ud);
  pthread_mutex_destroy(&st->mu);
  free(st);
  pthread_mutex_lock(&ev->mu);
  ev->alive--;
  pthread_cond_broadcast(&ev->cv);
  pthread_mutex_unlock(&ev->mu);
}

static _Thread_local dsys_sse_stream *tl_writing;
static void st_finish(dsys_sse_stream *st);

/* Write (hold st->mu). A transport may end the request inside the write
 * (inproc does), running on_close on this thread: st_on_close then only
 * flags it, and the writer finishes the stream after unlocking. */
static int st_write(dsys_sse_stream *st, const char *s, size_t n) {
  dsys_sse_stream *saved = tl_writing;
  tl_writing = st;
  int rc = dsys_stream_write(st->req, s, n);
  tl_writing = saved;
  return rc;
}

/* After unlocking st->mu: finish the stream if a write failed or on_close
 * ran inline (inl, read under the lock). */
static void st_after(dsys_sse_stream *st, int fail, int inl) {
  if (fail || inl) st_finish(st);
  if (inl) st_unref(st); /* the on_close reference */
}

/* End the stream once: unsubscribe, stop the heartbeat, finish the
 * request. close_ref: the caller is the on_close callback. */
static void st_finish(dsys_sse_stream *st) {
  pthread_mutex_lock(&st->mu);
  if (st->ended) {
    pthread_mutex_unlock(&st->mu);
    return;
  }
  st->ended = 1;
  uint64_t hb = st->hb_timer;
  st->hb_timer = 0;
  pthread_mutex_unlock(&st->mu);
  dsys_events *ev = st->hub;
  pthread_mutex_lock(&ev->mu);
  if (st->prev) st->prev->next = st->next;
  else if (ev->streams == st) ev->streams = st->next;
  if (st->next) st->next->prev = st->prev;
  st->next = st->prev = NULL;
  ev->nstreams--;
  pthread_mutex_unlock(&ev->mu);
  dsys_events_unsubscribe(st->sub); /* waits for notify calls on other threads */
  st_unref(st);                     /* the subscription's reference */
  if (hb && dsys_timer_cancel(ev->o.clock, hb) == 0) st_unref(st); /* the timer's */
  if (dsys_stream_end(st->req) == 0) st_unref(st); /* on_close will never run */
  st_unref(st);                                    /* the user side */
}

static void st_pump(dsys_sse_stream *st) {
  atomic_fetch_add(&st->refs, 1);
  int fail = 0;
  pthread_mutex_lock(&st->mu);
  while (!st->ended && !fail && !st->end_after) {
    const dsys_event *e = NULL;
    uint64_t dropped = 0;
    int rc = dsys_events_next(st->sub, &e, &dropped);
    dsysi_buf b = {0};
    if (dropped) {
      char d[48];
      int n = snprintf(d, sizeof d, "{\"dropped\":%" PRIu64 "}", dropped);
      sse_frame(&b, 0, "dropped", d, (size_t)n);
    }
    int f = e && st->filter ? st->filter(e, st->filter_ud) : DSYS_SSE_WRITE;
    if (e && f != DSYS_SSE_SKIP) sse_frame(&b, e->id, e->name, e->data, e->len);
    dsys_event_release(e);
    if (b.len && (b.oom || st_write(st, b.data, b.len))) fail = 1;
    dsysi_buf_free(&b);
    if (f == DSYS_SSE_WRITE_END) st->end_after = 1;
    if (rc || st->end_after) break;
  }
  int inl = st->closed_inline;
  st->closed_inline = 0;
  int end = st->end_after;
  pthread_mutex_unlock(&st->mu);
  st_after(st, fail || end, inl);
  st_unref(st);
}

static void st_notify(dsys_events_sub *sub, void *ud) { st_pump(ud); }

static void st_on_close(dsys_request *req, void *ud) {
  dsys_sse_stream *st = ud;
  if (tl_writing == st) { /* inside our own write, st->mu held */
    st->closed_inline = 1;
    return;
  }
  st_finish(st);
  st_unref(st); /* the on_close reference */
}

static void st_heartbeat(void *ud) {
  dsys_sse_stream *st = ud;
  int fail = 0, keep = 0;
  pthread_mutex_lock(&st->mu);
  if (!st->ended) {
    static const char hb[] = ": heartbeat\n\n";
    if (st_write(st, hb, sizeof hb - 1)) fail = 1;
    else if (!dsys_timer_add(st->hub->o.clock, st->hub->o.heartbeat_ms * 1000, st_heartbeat, st,
                             &st->hb_timer))
      keep = 1; /* the timer keeps its reference */
  }
  int inl = st->closed_inline;
  st->closed_inline = 0;
  pthread_mutex_unlock(&st->mu);
  st_after(st, fail, inl);
  if (!keep) st_unref(st);
}

int dsys_sse_send(dsys_sse_stream *st, uint64_t id, const char *name, const char *data,
                  size_t len) {
  if (!st || !st->in_open || (!data && len) || bad_token(name)) return DSYS_EINVAL;
  dsysi_buf b = {0};
  int rc = sse_frame(&b, id, name, data ? data : "", len);
  if (!rc) rc = st_write(st, b.data, b.len);
  dsysi_buf_free(&b);
  return rc;
}

int dsys_sse_end(dsys_sse_stream *st) {
  if (!st || !st->in_open) return DSYS_EINVAL;
  st->end_after = 1;
  return 0;
}

static uint64_t parse_id(const char *s) {
  if (!s || !*s) return 0;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  while (*end == ' ' || *end == '\t') end++;
  if (errno || *end || *s == '-' || *s == '+' || *s == ' ') return 0;
  return (uint64_t)v;
}

int dsys_events_serve_sse(dsys_events *ev, dsys_request *req, const char *const *topics,
                          size_t ntopics, const dsys_sse_options *o) {
  if (!ev || !req) return DSYS_EINVAL;
  dsys_sse_options so = {0};
  if (o) memcpy(&so, o, o->size && o->size < sizeof so ? o->size : sizeof so);
  const char *lid = dsys_request_header(req, "Last-Event-ID");
  if (!lid) lid = dsys_request_query_param(req, "lastEventId");
  uint64_t last_id = parse_id(lid);
  dsys_sse_stream *st = calloc(1, sizeof *st);
  if (!st) {
    if (so.filter_free) so.filter_free(so.filter_ud);
    dsys_respond_error(req, 500, "DSYS_ENOMEM", "Out of memory");
    return DSYS_ENOMEM;
  }
  pthread_mutex_init(&st->mu, NULL);
  st->filter = so.filter;
  st->filter_ud = so.filter_ud;
  st->filter_free = so.filter_free;
  st->hub = ev;
  st->req = req;
  /* references: user side, on_close, subscription */
  atomic_init(&st->refs, 3);
  int rc = dsys_events_subscribe(ev, topics, ntopics, last_id, st_notify, st, &st->sub);
  if (!rc) {
    pthread_mutex_lock(&ev->mu);
    if (ev->closing) {
      rc = DSYS_ESTOPPED;
    } else {
      st->next = ev->streams;
      if (ev->streams) ev->streams->prev = st;
      ev->streams = st;
      ev->nstreams++;
      ev->alive++;
    }
    pthread_mutex_unlock(&ev->mu);
    if (rc) dsys_events_unsubscribe(st->sub);
  }
  if (rc) {
    if (st->filter_free) st->filter_free(st->filter_ud);
    pthread_mutex_destroy(&st->mu);
    free(st);
    if (rc == DSYS_ESTOPPED) dsys_respond_error(req, 503, "DSYS_ESTOPPED", "Event streams are closing");
    else dsys_respond_error(req, rc == DSYS_EINVAL ? 400 : 500, dsys_err_name(rc), dsys_strerror(rc));
    return rc;
  }
  /* Register on_close and learn, under the request lock, whether the
   * transport already ended (then the callback will never run). */
  dsysi_lock_acquire(&req->mu);
  req->on_close = st_on_close;
  req->close_ud = st;
  int gone = req->closed;
  dsysi_lock_release(&req->mu);
  if (gone) st_unref(st); /* on_close will not run */
  dsys_response_header(req, "Cache-Control", "no-cache");
  dsys_response_header(req, "X-Accel-Buffering", "no");
  pthread_mutex_lock(&st->mu);
  rc = dsys_respond_stream(req, 200, "text/event-stream; charset=utf-8");
  if (!rc) {
    static const char hello[] = ": connected\n\n";
    st_write(st, hello, sizeof hello - 1);
    if (dsys_events_resume_gap(st->sub)) {
      char d[64];
      int n = snprintf(d, sizeof d, "{\"lastEventId\":\"%" PRIu64 "\"}", last_id);
      dsysi_buf b = {0};
      sse_frame(&b, 0, "resume-gap", d, (size_t)n);
      if (!b.oom) st_write(st, b.data, b.len);
      dsysi_buf_free(&b);
    }
    if (so.on_open) {
      st->in_open = 1;
      so.on_open(st, req, so.ud);
      st->in_open = 0;
    }
    atomic_fetch_add(&st->refs, 1); /* the heartbeat timer's */
    if (dsys_timer_add(ev->o.clock, ev->o.heartbeat_ms * 1000, st_heartbeat, st, &st->hb_timer))
      atomic_fetch_sub(&st->refs, 1);
  }
  int inl = st->closed_inline;
  st->closed_inline = 0;
  int end = st->end_after;
  pthread_mutex_unlock(&st->mu);
  if (rc || inl) {
    /* the transport ended already; st_finish ends the request */
    st_after(st, 1, inl);
    return rc ? rc : DSYS_ECLOSED;
  }
  if (end) {
    st_finish(st); /* dsys_sse_end in on_open */
    return 0;
  }
  st_pump(st); /* events queued by a resume or meanwhile */
  return 0;
}

size_t dsys_events_stream_count(dsys_events *ev) {
  if (!ev) return 0;
  pthread_mutex_lock(&ev->mu);
  size_t n = ev->nstreams;
  pthread_mutex_unlock(&ev->mu);
  return n;
}

void dsys_events_close_streams(dsys_events *ev) {
  if (!ev) return;
  pthread_mutex_lock(&ev->mu);
  ev->closing = 1;
  for (;;) {
    dsys_sse_stream *st = ev->streams;
    if (!st) break;
    atomic_fetch_add(&st->refs, 1);
    pthread_mutex_unlock(&ev->mu);
    st_finish(st);
    st_unref(st);
    pthread_mutex_lock(&ev->mu);
  }
  pthread_mutex_unlock(&ev->mu);
}

void dsys_events_free(dsys_events *ev) {
  if (!ev) return;
  dsys_events_close_streams(ev);
  pthread_mutex_lock(&ev->mu);
  /* stream objects whose on_close callback is still to come */
  while (ev->alive) pthread_cond_wait(&ev->cv, &ev->mu);
  pthread_mutex_unlock(&ev->mu);
  if (ev->subs) dsysi_log(DSYS_LOG_ERROR, "events", "freed with subscriptions left");
  while (ev->topics) {
    topic *t = ev->topics;
    ev->topics = t->next;
    for (uint32_t i = 0; i < t->n; i++) item_unref(t->ring[(t->head + i) % ev->o.history]);
    free(t->ring);
    free(t->name);
    free(t);
  }
  pthread_cond_destroy(&ev->cv);
  pthread_mutex_destroy(&ev->mu);
  free(ev);
}
