/*
 * Durable job queue front end: validation, backend selection (ops table)
 * and group commit.
 *
 * Every call becomes an operation (qop) queued into the handle's group
 * commit (core/group.h, shared with the SQLite store): one caller at a
 * time leads a group of the pending ops of all threads, runs it on the
 * backend (begin, the ops, commit; for SQLite one BEGIN IMMEDIATE
 * transaction on the handle's single connection), and wakes each caller
 * whose ops it committed, once. A call returns after the commit of its
 * group. With one group at a time (SQLite) the leader continues with the
 * next group and, when many threads use the handle, gathers their calls
 * first; a server backend may run several groups at once (ops
 * concurrent_groups, each on its own connection): then up to that many
 * leaders run, so commits that wait for the server's disk overlap, and
 * calls of different threads are not ordered among themselves (as they
 * never were). Operations that fail (e.g. a stale token) change nothing,
 * so the rest of the group still commits, and each caller gets its own
 * op's result.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <distsys/queue.h>
#include <distsys/util.h>
#include "core/internal.h"
#include "core/json.h"
#include "core/group.h"
#include "core/plugin.h"
#include "state/store_int.h"
#include "state/queue_int.h"

enum {
  K_SUBMIT = 1, K_CLAIM, K_HEARTBEAT, K_PROGRESS, K_COMPLETE, K_FAIL,
  K_RELEASE, K_CANCEL, K_GET, K_COUNTS, K_LISTDEAD, K_REPLAY, K_PURGE,
  K_LISTQUEUES, K_SETPAUSED, K_PURGEDEAD
};

typedef struct qop qop;
struct qop {
  dsysi_group_op g; /* first: the group commit links ops through it */
  int kind;
  int rc;
  /* arguments */
  const char *queue;
  const char *text; /* result / error / message / worker */
  const char *const *texts; /* payloads / queue names */
  size_t ntexts;
  const dsys_submit_options *so;
  int64_t id, token, num;
  size_t max;
  int wakes; /* done without error (a submit: not an existing one), local
                workers may find work: wake them */
  /* results */
  int64_t *ids;
  int64_t out_id;
  int flag;
  dsys_job **jobs; /* claim: caller's array; list_dead: allocated */
  size_t njobs;
  dsys_job *job;
  dsys_job_counts *counts;
  dsys_queue_info *infos; /* list_queues: allocated */
};

typedef struct waiter {
  dsysi_queue_wake_fn fn;
  void *ud;
} waiter;

struct dsys_queue {
  const dsys_queue_ops *ops;
  void *st;
  dsys_clock *clock;
  dsysi_group group; /* the group commit of every call */
  pthread_mutex_t mu; /* work_seq, work_cv, waiters */
  pthread_cond_t work_cv; /* new work for local waiters */
  uint64_t work_seq;
  waiter *waiters;
  size_t nwaiters, capwaiters;
};

/* The op after op in its group (or chain). */
#define NEXT(op) ((qop *)(op)->g.next)

static const char *const state_names[] = {"unknown",   "waiting", "delayed",
                                          "active",    "completed",
                                          "failed",    "canceled"};

const char *dsys_job_state_name(int s) {
  return (s >= 1 && s <= 6) ? state_names[s] : "unknown";
}

void dsys_job_free(dsys_job *job) { free(job); }

void dsys_job_list_free(dsys_job **jobs, size_t n) {
  if (!jobs) return;
  for (size_t i = 0; i < n; i++) free(jobs[i]);
  free(jobs);
}

dsys_job *dsys_job_dup(const dsys_job *src) {
  if (!src) return NULL;
  const char *in[8] = {src->queue,  src->payload, src->worker,
                       src->progress_msg, src->result, src->error,
                       src->idempotency_key, NULL};
  size_t len[7], total = sizeof(dsys_job);
  for (int i = 0; i < 7; i++) {
    len[i] = in[i] ? strlen(in[i]) : 0;
    if (in[i]) total += len[i] + 1;
  }
  dsys_job *j = malloc(total);
  if (!j) return NULL;
  *j = *src;
  char *p = (char *)(j + 1);
  const char *out[7];
  for (int i = 0; i < 7; i++) {
    if (!in[i]) {
      out[i] = NULL;
      continue;
    }
    memcpy(p, in[i], len[i] + 1);
    out[i] = p;
    p += len[i] + 1;
  }
  j->queue = out[0] ? out[0] : "";
  j->payload = out[1] ? out[1] : "null";
  j->worker = out[2];
  j->progress_msg = out[3];
  j->result = out[4];
  j->error = out[5];
  j->idempotency_key = out[6];
  return j;
}

int64_t dsys_queue_backoff_ms(int attempt, int64_t base, int64_t cap) {
  if (attempt < 1) attempt = 1;
  int64_t d = base;
  for (int i = 1; i < attempt && d < cap; i++) d *= 2;
  if (d > cap) d = cap;
  if (d <= 0) return 0;
  uint64_t r;
  dsys_random_bytes(&r, sizeof r);
  return (int64_t)(r % ((uint64_t)d + 1)); /* full jitter in [0, d] */
}

int64_t dsysi_queue_backoff(int attempt, int64_t base, int64_t cap) {
  return dsys_queue_backoff_ms(attempt, base, cap);
}

/* ---- group commit ---- */

static void free_results(qop *op) {
  if (op->kind == K_CLAIM) {
    for (size_t i = 0; i < op->njobs; i++) {
      free(op->jobs[i]);
      op->jobs[i] = NULL;
    }
  } else if (op->kind == K_LISTDEAD) {
    dsys_job_list_free(op->jobs, op->njobs);
    op->jobs = NULL;
  }
  op->njobs = 0;
  free(op->job);
  op->job = NULL;
  if (op->kind == K_LISTQUEUES) {
    free(op->infos);
    op->infos = NULL;
    op->out_id = 0;
  }
}

/* The version-2 ops exist only in tables of version 2 and later. */
#define OP2(o, f) ((o)->version >= 2 ? (o)->f : NULL)
#define OP3(o, f) ((o)->version >= 3 ? (o)->f : NULL)

static int finishable(const qop *op) {
  return op && (op->kind == K_COMPLETE || op->kind == K_HEARTBEAT);
}

/* A run of consecutive completions and renewals starting at first, handed
 * to the backend's finish_many at once (for a server backend: one
 * statement instead of one round trip each). Returns the op after the run,
 * or first when the backend has no finish_many or the run is a single op. */
static qop *run_finish(dsys_queue *q, qop *first, int64_t now) {
  int (*fm)(void *, dsys_queue_finish *, size_t, int64_t) = OP3(q->ops, finish_many);
  size_t n = 0;
  qop *end = first;
  while (finishable(end)) {
    n++;
    end = NEXT(end);
  }
  if (!fm || n < 2) return first;
  dsys_queue_finish stackf[16];
  dsys_queue_finish *f = n <= 16 ? stackf : calloc(n, sizeof *f);
  if (!f) return first; /* one by one instead */
  size_t i = 0;
  for (qop *op = first; op != end; op = NEXT(op), i++)
    f[i] = (dsys_queue_finish){
        .kind = op->kind == K_COMPLETE ? DSYS_QUEUE_FINISH_COMPLETE : DSYS_QUEUE_FINISH_HEARTBEAT,
        .id = op->id, .token = op->token, .result = op->text,
        .lease_until = now + op->num};
  int e = fm(q->st, f, n, now);
  i = 0;
  for (qop *op = first; op != end; op = NEXT(op), i++) op->rc = e ? e : f[i].rc;
  if (f != stackf) free(f);
  return end;
}

/* Single submits that can share one backend call: same queue and
 * options, no idempotency key (a key is looked up per job). */
static int mergeable(const qop *a, const qop *b) {
  if (!b || b->kind != K_SUBMIT || b->ntexts != 1 || b->so->idempotency_key)
    return 0;
  const dsys_submit_options *x = a->so, *y = b->so;
  return x->priority == y->priority && x->delay_ms == y->delay_ms &&
         x->max_attempts == y->max_attempts &&
         x->backoff_base_ms == y->backoff_base_ms &&
         x->backoff_cap_ms == y->backoff_cap_ms && !strcmp(a->queue, b->queue);
}

enum { MERGE_MAX = 64 };

static int run_op(dsys_queue *q, qop *op, int64_t now);

/* A run of one-job submits of different calls (e.g. 16 threads submitting
 * one job each) handed to the backend as one submit of many payloads, as
 * a submit_many: for SQLite a few multi-row INSERTs instead of one
 * statement per job. Only with one group at a time (a server backend's
 * groups are not merged). If the merged submit fails, nothing of it is
 * kept (all or nothing) and the calls of the run go one by one, each
 * getting its own result. Returns the op after the run, or first when
 * there is nothing to merge. */
static qop *run_submits(dsys_queue *q, qop *first, int64_t now) {
  if (q->group.max_groups > 1 || !mergeable(first, first)) return first;
  const char *texts[MERGE_MAX];
  int64_t ids[MERGE_MAX];
  size_t n = 0;
  qop *end = first;
  while (n < MERGE_MAX && mergeable(first, end)) {
    texts[n++] = end->texts[0];
    end = NEXT(end);
  }
  if (n < 2) return first;
  int existed = 0;
  int e = q->ops->submit(q->st, first->queue, texts, n, first->so, now, ids,
                         &existed);
  size_t i = 0;
  for (qop *op = first; op != end; op = NEXT(op), i++) {
    if (e) { /* nothing of it was kept: each alone, with its own result */
      op->rc = run_op(q, op, now);
      continue;
    }
    op->rc = 0;
    op->flag = 0;
    op->ids[0] = ids[i];
  }
  return end;
}

static int run_op(dsys_queue *q, qop *op, int64_t now) {
  const dsys_queue_ops *o = q->ops;
  void *st = q->st;
  switch (op->kind) {
  case K_SUBMIT:
    return o->submit(st, op->queue, op->texts, op->ntexts, op->so, now,
                     op->ids, &op->flag);
  case K_CLAIM:
    return o->claim(st, op->texts, op->ntexts, op->text, now + op->num,
                    op->max, now, op->jobs, &op->njobs);
  case K_HEARTBEAT:
    return o->heartbeat(st, op->id, op->token, now + op->num);
  case K_PROGRESS:
    return o->progress(st, op->id, op->token, (int32_t)op->num, op->text);
  case K_COMPLETE:
    return o->complete(st, op->id, op->token, op->text, now);
  case K_FAIL:
    return o->fail(st, op->id, op->token, op->text ? op->text : "failed",
                   now, &op->flag);
  case K_RELEASE:
    return o->release(st, op->id, op->token, now);
  case K_CANCEL:
    return o->cancel(st, op->id, now);
  case K_GET:
    return o->get(st, op->id, &op->job);
  case K_COUNTS:
    return o->counts(st, op->queue, op->counts);
  case K_LISTDEAD:
    if (!o->list_dead) return DSYS_ENOTSUP;
    return o->list_dead(st, op->queue, op->id, op->max, &op->jobs,
                        &op->njobs);
  case K_REPLAY:
    if (!o->replay) return DSYS_ENOTSUP;
    return o->replay(st, op->id, now);
  case K_PURGE:
    if (!o->purge) return DSYS_ENOTSUP;
    return o->purge(st, now - op->num, &op->out_id);
  case K_LISTQUEUES: {
    if (!OP2(o, list_queues)) return DSYS_ENOTSUP;
    size_t n = 0;
    int e = o->list_queues(st, &op->infos, &n);
    op->out_id = (int64_t)n;
    return e;
  }
  case K_SETPAUSED:
    if (!OP2(o, set_paused)) return DSYS_ENOTSUP;
    return o->set_paused(st, op->queue, op->flag, now);
  case K_PURGEDEAD:
    if (!OP2(o, purge_dead)) return DSYS_ENOTSUP;
    return o->purge_dead(st, op->queue, now - op->num, &op->out_id);
  default:
    return DSYS_EINVAL;
  }
}

static void run_ops(dsys_queue *q, qop *group) {
  int64_t now = dsys_clock_wall_ms(q->clock);
  int e = q->ops->begin(q->st, now);
  if (e) {
    for (qop *op = group; op; op = NEXT(op)) op->rc = e;
    return;
  }
  for (qop *op = group; op;) {
    qop *next = run_finish(q, op, now);
    if (next == op) next = run_submits(q, op, now);
    if (next != op) {
      op = next;
      continue;
    }
    op->rc = run_op(q, op, now);
    if (op->rc) free_results(op);
    op = NEXT(op);
  }
  e = q->ops->commit(q->st);
  if (e) {
    q->ops->rollback(q->st);
    for (qop *op = group; op; op = NEXT(op)) {
      if (!op->rc) op->rc = e;
      free_results(op);
    }
  }
}

static void notify_work(dsys_queue *q);

/* The group commit's run (core/group.h): one transaction for the group,
 * then, if one of its ops may have made work available, one wake-up of
 * the local workers for the whole group. */
static void run_group(void *ud, dsysi_group_op *first) {
  dsys_queue *q = ud;
  run_ops(q, (qop *)first);
  for (qop *o = (qop *)first; o; o = NEXT(o))
    if (o->wakes && !o->rc && !(o->kind == K_SUBMIT && o->flag)) {
      notify_work(q);
      break;
    }
}

/* Run one call's op in the group commit; returns its own result. */
static int execute(dsys_queue *q, qop *op) {
  dsysi_group_execute(&q->group, &op->g, &op->g);
  return op->rc;
}

/* ---- open / close / wakeups ---- */

static int check_name(const char *s) {
  return (s && *s && strlen(s) <= DSYS_QUEUE_MAX_NAME) ? 0 : DSYS_EINVAL;
}

static int check_json(const char *s) {
  size_t n = strlen(s);
  if (n > DSYS_QUEUE_MAX_PAYLOAD) return DSYS_ETOOBIG;
  json_object *j = NULL;
  int e = dsysi_json_parse(s, n, &j);
  json_object_put(j);
  return e;
}

static int check_ops(const dsys_queue_ops *o) {
  return o && o->version >= 1 && o->version <= DSYS_QUEUE_OPS_VERSION &&
         o->name && o->open && o->close && o->begin && o->commit &&
         o->rollback && o->submit && o->claim && o->heartbeat &&
         o->progress && o->complete && o->fail && o->release && o->cancel &&
         o->get && o->counts;
}

/* A backend's wakeup (another process made jobs ready). */
static void wake_cb(void *ud) { notify_work(ud); }

int dsys_queue_open_ops(dsys_queue **out, const dsys_queue_ops *ops,
                        const char *location, const dsys_queue_options *opts) {
  if (!out) return DSYS_EINVAL;
  *out = NULL;
  if (!check_ops(ops) || !location) return DSYS_EINVAL;
  dsys_queue_options o = {0};
  if (opts) {
    if (opts->size > sizeof o || (opts->size && opts->size < sizeof(size_t)))
      return DSYS_EINVAL;
    memcpy(&o, opts, opts->size ? opts->size : sizeof o);
  }
  o.size = sizeof o;
  if (o.max_batch < 0) return DSYS_EINVAL;
  dsys_queue *q = calloc(1, sizeof *q);
  if (!q) return DSYS_ENOMEM;
  q->st = calloc(1, ops->state_size ? ops->state_size : 1);
  if (!q->st) {
    free(q);
    return DSYS_ENOMEM;
  }
  q->ops = ops;
  q->clock = o.clock ? o.clock : dsys_clock_real();
  o.clock = q->clock;
  char err[256] = "";
  int e = ops->open(q->st, location, &o, err, sizeof err);
  if (e) {
    dsysi_log(DSYS_LOG_ERROR, "queue", "open %s:%s: %s", ops->name, location,
              err);
    free(q->st);
    free(q);
    return e;
  }
  dsysi_group_init(&q->group, o.max_batch ? o.max_batch : 256,
                   ops->version >= 3 && ops->concurrent_groups > 1
                       ? ops->concurrent_groups : 1,
                   run_group, q);
  pthread_mutex_init(&q->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&q->work_cv, &ca);
  pthread_condattr_destroy(&ca);
  if (OP3(ops, set_wake)) ops->set_wake(q->st, wake_cb, q);
  *out = q;
  return 0;
}

static int usable(const void *ops) { return check_ops(ops); }
static dsysi_family backends = DSYSI_FAMILY("queue", usable, NULL);

int dsys_queue_register_backend(const dsys_queue_ops *ops) {
  return dsysi_family_register(&backends, ops);
}

int dsys_queue_open(dsys_queue **out, const char *url,
                    const dsys_queue_options *opts) {
  if (!out) return DSYS_EINVAL;
  *out = NULL;
  const void *ops;
  const char *loc;
  int e = dsysi_family_for_url(&backends, url, &ops, &loc);
  /* "memory:" is the sqlite backend on a private in-memory database unless
   * a program registered a backend of that name */
  if (e == DSYS_ESCHEME && (!strcmp(url, "memory:") || !strcmp(url, "memory://"))) {
    ops = dsysi_family_find(&backends, "sqlite", 6);
    loc = ":memory:";
    e = ops ? 0 : DSYS_ESCHEME;
  }
  return e ? e : dsys_queue_open_ops(out, ops, loc, opts);
}

void dsys_queue_close(dsys_queue *q) {
  if (!q) return;
  q->ops->close(q->st);
  free(q->st);
  free(q->waiters);
  dsysi_group_destroy(&q->group);
  pthread_mutex_destroy(&q->mu);
  pthread_cond_destroy(&q->work_cv);
  free(q);
}

dsys_clock *dsysi_queue_clock(dsys_queue *q) { return q->clock; }

size_t dsysi_queue_pending(dsys_queue *q) {
  return (size_t)dsysi_group_pending(&q->group);
}

static void notify_locked(dsys_queue *q) {
  q->work_seq++;
  pthread_cond_broadcast(&q->work_cv);
  for (size_t i = 0; i < q->nwaiters; i++)
    q->waiters[i].fn(q->waiters[i].ud);
}

static void notify_work(dsys_queue *q) {
  pthread_mutex_lock(&q->mu);
  notify_locked(q);
  pthread_mutex_unlock(&q->mu);
}

int dsysi_queue_add_waiter(dsys_queue *q, dsysi_queue_wake_fn fn, void *ud) {
  pthread_mutex_lock(&q->mu);
  if (dsysi_grow(&q->waiters, &q->capwaiters, q->nwaiters + 1, sizeof *q->waiters, 4)) {
    pthread_mutex_unlock(&q->mu);
    return DSYS_ENOMEM;
  }
  q->waiters[q->nwaiters++] = (waiter){fn, ud};
  pthread_mutex_unlock(&q->mu);
  return 0;
}

void dsysi_queue_remove_waiter(dsys_queue *q, dsysi_queue_wake_fn fn,
                               void *ud) {
  pthread_mutex_lock(&q->mu);
  for (size_t i = 0; i < q->nwaiters; i++)
    if (q->waiters[i].fn == fn && q->waiters[i].ud == ud) {
      q->waiters[i] = q->waiters[--q->nwaiters];
      break;
    }
  pthread_mutex_unlock(&q->mu);
}

void dsysi_queue_wait_work(dsys_queue *q, int64_t timeout_ms,
                           const int *stop_flag) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += timeout_ms / 1000;
  ts.tv_nsec += (timeout_ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&q->mu);
  uint64_t seq = q->work_seq;
  while (seq == q->work_seq && !__atomic_load_n(stop_flag, __ATOMIC_ACQUIRE))
    if (pthread_cond_timedwait(&q->work_cv, &q->mu, &ts)) break;
  pthread_mutex_unlock(&q->mu);
}

void dsysi_queue_wake(dsys_queue *q) { notify_work(q); }

/* ---- public API ---- */

static int submit_opts(const dsys_submit_options *so, dsys_submit_options *o) {
  memset(o, 0, sizeof *o);
  if (so) {
    if (so->size > sizeof *o || (so->size && so->size < sizeof(size_t)))
      return DSYS_EINVAL;
    memcpy(o, so, so->size ? so->size : sizeof *o);
  }
  o->size = sizeof *o;
  if (o->delay_ms < 0 || o->max_attempts < 0 || o->backoff_base_ms < 0 ||
      o->backoff_cap_ms < 0)
    return DSYS_EINVAL;
  if (o->idempotency_key && check_name(o->idempotency_key)) return DSYS_EINVAL;
  if (!o->max_attempts) o->max_attempts = 3;
  if (!o->backoff_base_ms) o->backoff_base_ms = 1000;
  if (!o->backoff_cap_ms) o->backoff_cap_ms = 60000;
  return 0;
}

int dsys_queue_submit(dsys_queue *q, const char *queue, const char *payload,
                      const dsys_submit_options *so, int64_t *id,
                      int *existed) {
  if (!q || check_name(queue) || !payload) return DSYS_EINVAL;
  dsys_submit_options o;
  int e = submit_opts(so, &o);
  if (e) return e;
  e = check_json(payload);
  if (e) return e;
  int64_t out_id = 0;
  qop op = {.kind = K_SUBMIT, .queue = queue, .texts = &payload, .ntexts = 1,
            .so = &o, .ids = &out_id, .wakes = o.delay_ms <= 0};
  e = execute(q, &op);
  if (e) return e;
  if (id) *id = out_id;
  if (existed) *existed = op.flag;
  return 0;
}

int dsys_queue_submit_many(dsys_queue *q, const char *queue,
                           const char *const *payloads, size_t n,
                           const dsys_submit_options *so, int64_t *ids) {
  if (!q || check_name(queue) || !payloads || !n || n > DSYS_QUEUE_MAX_MANY)
    return DSYS_EINVAL;
  dsys_submit_options o;
  int e = submit_opts(so, &o);
  if (e) return e;
  if (o.idempotency_key) return DSYS_EINVAL;
  for (size_t i = 0; i < n; i++) {
    if (!payloads[i]) return DSYS_EINVAL;
    if ((e = check_json(payloads[i]))) return e;
  }
  int64_t *tmp = ids;
  if (!tmp && !(tmp = malloc(n * sizeof *tmp))) return DSYS_ENOMEM;
  qop op = {.kind = K_SUBMIT, .queue = queue, .texts = payloads, .ntexts = n,
            .so = &o, .ids = tmp, .wakes = o.delay_ms <= 0};
  e = execute(q, &op);
  if (tmp != ids) free(tmp);
  return e;
}

static int check_claim(dsys_queue *q, const char *const *queues,
                       size_t nqueues, const char *worker, int64_t lease_ms) {
  if (!q || !queues || !nqueues || nqueues > 64 || lease_ms <= 0)
    return DSYS_EINVAL;
  for (size_t i = 0; i < nqueues; i++)
    if (check_name(queues[i])) return DSYS_EINVAL;
  if (worker && strlen(worker) > DSYS_QUEUE_MAX_NAME) return DSYS_EINVAL;
  return 0;
}

int dsys_queue_claim(dsys_queue *q, const char *const *queues, size_t nqueues,
                     const char *worker, int64_t lease_ms, dsys_job **out) {
  if (out) *out = NULL;
  if (!out || check_claim(q, queues, nqueues, worker, lease_ms))
    return DSYS_EINVAL;
  qop op = {.kind = K_CLAIM, .texts = queues, .ntexts = nqueues,
            .text = worker ? worker : "", .num = lease_ms, .max = 1,
            .jobs = out};
  return execute(q, &op);
}

int dsys_queue_claim_many(dsys_queue *q, const char *const *queues,
                          size_t nqueues, const char *worker,
                          int64_t lease_ms, size_t max, dsys_job **jobs,
                          size_t *n) {
  if (n) *n = 0;
  if (!jobs || !n || !max || max > DSYS_QUEUE_MAX_MANY ||
      check_claim(q, queues, nqueues, worker, lease_ms))
    return DSYS_EINVAL;
  qop op = {.kind = K_CLAIM, .texts = queues, .ntexts = nqueues,
            .text = worker ? worker : "", .num = lease_ms, .max = max,
            .jobs = jobs};
  int e = execute(q, &op);
  if (!e) *n = op.njobs;
  return e;
}

int dsysi_queue_batch(dsys_queue *q, dsysi_qout *outs, size_t n,
                      const char *const *queues, size_t nqueues,
                      const char *worker, int64_t lease_ms, size_t claim_max,
                      dsys_job **jobs, size_t *njobs) {
  if (njobs) *njobs = 0;
  size_t total = n + (claim_max ? 1 : 0);
  if (!total) return 0;
  qop stackops[16];
  qop *ops = total <= 16 ? stackops : calloc(total, sizeof *ops);
  if (!ops) return DSYS_ENOMEM;
  memset(ops, 0, total * sizeof *ops);
  static const int kinds[] = {0, K_COMPLETE, K_FAIL, K_RELEASE, K_HEARTBEAT};
  for (size_t i = 0; i < n; i++) {
    qop *op = &ops[i];
    op->kind = kinds[outs[i].kind];
    op->id = outs[i].id;
    op->token = outs[i].token;
    op->text = outs[i].text;
    op->num = outs[i].lease_ms;
    op->wakes = op->kind == K_FAIL || op->kind == K_RELEASE;
  }
  if (claim_max) {
    qop *op = &ops[n];
    op->kind = K_CLAIM;
    op->texts = queues;
    op->ntexts = nqueues;
    op->text = worker ? worker : "";
    op->num = lease_ms;
    op->max = claim_max;
    op->jobs = jobs;
  }
  for (size_t i = 0; i + 1 < total; i++) ops[i].g.next = &ops[i + 1].g;
  dsysi_group_execute(&q->group, &ops[0].g, &ops[total - 1].g);
  for (size_t i = 0; i < n; i++) {
    outs[i].rc = ops[i].rc;
    outs[i].dead = ops[i].flag;
  }
  int e = 0;
  if (claim_max) {
    e = ops[n].rc;
    if (!e) *njobs = ops[n].njobs;
  }
  if (ops != stackops) free(ops);
  return e;
}

/* A fail, release or replay makes a job waiting (or delayed): its op
 * wakes the local workers. */
static int simple(dsys_queue *q, int kind, int64_t id, int64_t token,
                  int64_t num, const char *text, int *flag) {
  if (!q || id <= 0) return DSYS_EINVAL;
  qop op = {.kind = kind, .id = id, .token = token, .num = num, .text = text,
            .wakes = kind == K_FAIL || kind == K_RELEASE || kind == K_REPLAY};
  int e = execute(q, &op);
  if (flag) *flag = op.flag;
  return e;
}

int dsys_queue_heartbeat(dsys_queue *q, int64_t id, int64_t token,
                         int64_t lease_ms) {
  if (lease_ms <= 0) return DSYS_EINVAL;
  return simple(q, K_HEARTBEAT, id, token, lease_ms, NULL, NULL);
}

int dsys_queue_progress(dsys_queue *q, int64_t id, int64_t token,
                        int32_t percent, const char *message) {
  if (percent < 0 || percent > 100) return DSYS_EINVAL;
  if (message && strlen(message) > 4096) return DSYS_ETOOBIG;
  return simple(q, K_PROGRESS, id, token, percent, message, NULL);
}

int dsys_queue_complete(dsys_queue *q, int64_t id, int64_t token,
                        const char *result) {
  if (result) {
    int e = check_json(result);
    if (e) return e;
  }
  return simple(q, K_COMPLETE, id, token, 0, result, NULL);
}

int dsys_queue_fail(dsys_queue *q, int64_t id, int64_t token,
                    const char *error, int *dead) {
  if (error && strlen(error) > 65536) return DSYS_ETOOBIG;
  return simple(q, K_FAIL, id, token, 0, error, dead);
}

int dsys_queue_release(dsys_queue *q, int64_t id, int64_t token) {
  return simple(q, K_RELEASE, id, token, 0, NULL, NULL);
}

int dsys_queue_cancel(dsys_queue *q, int64_t id) {
  return simple(q, K_CANCEL, id, 0, 0, NULL, NULL);
}

int dsys_queue_replay(dsys_queue *q, int64_t id) {
  return simple(q, K_REPLAY, id, 0, 0, NULL, NULL);
}

int dsys_queue_get(dsys_queue *q, int64_t id, dsys_job **out) {
  if (out) *out = NULL;
  if (!q || !out || id <= 0) return DSYS_EINVAL;
  qop op = {.kind = K_GET, .id = id};
  int e = execute(q, &op);
  if (!e) *out = op.job;
  return e;
}

int dsys_queue_counts(dsys_queue *q, const char *queue,
                      dsys_job_counts *out) {
  if (!q || !out || (queue && check_name(queue))) return DSYS_EINVAL;
  dsys_job_counts c;
  memset(&c, 0, sizeof c);
  qop op = {.kind = K_COUNTS, .queue = queue, .counts = &c};
  int e = execute(q, &op);
  if (!e) *out = c;
  return e;
}

int dsys_queue_list_dead(dsys_queue *q, const char *queue, int64_t after_id,
                         size_t limit, dsys_job ***jobs, size_t *n) {
  if (jobs) *jobs = NULL;
  if (n) *n = 0;
  if (!q || !jobs || !n || !limit || limit > 1000 ||
      (queue && check_name(queue)))
    return DSYS_EINVAL;
  qop op = {.kind = K_LISTDEAD, .queue = queue, .id = after_id, .max = limit};
  int e = execute(q, &op);
  if (!e) {
    *jobs = op.jobs;
    *n = op.njobs;
  }
  return e;
}

int dsys_queue_purge(dsys_queue *q, int64_t older_than_ms, int64_t *removed) {
  if (removed) *removed = 0;
  if (!q || older_than_ms < 0) return DSYS_EINVAL;
  qop op = {.kind = K_PURGE, .num = older_than_ms};
  int e = execute(q, &op);
  if (!e && removed) *removed = op.out_id;
  return e;
}

int dsys_queue_list_queues(dsys_queue *q, dsys_queue_info **out, size_t *n) {
  if (out) *out = NULL;
  if (n) *n = 0;
  if (!q || !out || !n) return DSYS_EINVAL;
  qop op = {.kind = K_LISTQUEUES};
  int e = execute(q, &op);
  if (!e) {
    *out = op.infos;
    *n = (size_t)op.out_id;
  }
  return e;
}

static int set_paused(dsys_queue *q, const char *queue, int paused) {
  if (!q || check_name(queue)) return DSYS_EINVAL;
  qop op = {.kind = K_SETPAUSED, .queue = queue, .flag = paused,
            .wakes = !paused};
  return execute(q, &op);
}

int dsys_queue_pause(dsys_queue *q, const char *queue) {
  return set_paused(q, queue, 1);
}

int dsys_queue_resume(dsys_queue *q, const char *queue) {
  return set_paused(q, queue, 0);
}

int dsys_queue_purge_dead(dsys_queue *q, const char *queue,
                          int64_t older_than_ms, int64_t *removed) {
  if (removed) *removed = 0;
  if (!q || older_than_ms < 0 || (queue && check_name(queue)))
    return DSYS_EINVAL;
  qop op = {.kind = K_PURGEDEAD, .queue = queue, .num = older_than_ms};
  int e = execute(q, &op);
  if (!e && removed) *removed = op.out_id;
  return e;
}
