/*
 * Worker pool: one dispatcher thread and N handler threads.
 *
 * The dispatcher keeps up to threads + prefetch jobs claimed by this worker
 * (a local buffer in claim order plus the running ones). In each round it
 * records the outcomes of the jobs finished since the last round and claims
 * up to the free capacity, all queued at once into the queue's group commit
 * (normally one transaction, shared with whatever else the process is
 * committing). Handler threads take jobs from the buffer and hand their
 * outcome back without waiting for a commit; every outcome is committed
 * before dsys_worker_stop() returns. Idle, the dispatcher sleeps until a
 * local submit/release/fail wakes it or poll_ms passes (other processes'
 * work is seen at the next poll).
 *
 * A ticker renews, every lease/3, the leases of every job the worker
 * holds (buffered, running, or with an outcome not yet committed) in one
 * group, on a thread of its own (a renewal is a database write: on the
 * clock's one timer thread a slow database held up every timer of the
 * process, and a paused process kept renewing there). A renewal that finds a job no longer held with its token (expired
 * and reclaimed elsewhere, canceled) drops it from the buffer, or marks a
 * running one lost (dsys_job_ctx_stopping() becomes true). Fencing tokens
 * keep every outcome of a lost job from being recorded.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <distsys/queue.h>
#include <distsys/util.h>
#include "core/internal.h"
#include "core/json.h"
#include "core/ticker.h"
#include "state/queue_int.h"

typedef struct slot slot;

/* Most jobs a worker with the default prefetch buffers (adapt_prefetch),
 * and so claims in one round: past a few hundred jobs a transaction's
 * fixed cost is a small part of it (measured: 22 -> 67 jobs a round cut
 * the CPU per job by a quarter). */
enum { PREFETCH_AUTO_MAX = 256 };

struct dsys_job_ctx {
  slot *s;
  char *result;
  char *error;
};

struct slot {
  dsys_worker *w;
  pthread_t thread;
  int started;
  /* protected by w->mu */
  int active;
  int64_t id, token;
  int lost;
};

typedef struct outcome {
  int kind; /* DSYSI_Q_COMPLETE, _FAIL, _RELEASE */
  int64_t id, token;
  const char *text;
  char *owned; /* freed after recording */
} outcome;

struct dsys_worker {
  dsys_queue *q;
  dsys_clock *clock;
  char **queues;
  size_t nqueues;
  uint32_t nthreads;
  int64_t lease_ms, poll_ms;
  char *id;
  dsys_job_handler handler;
  void *ud;
  size_t cap; /* most jobs held now: threads + extra */
  size_t extra, extra_min, extra_max; /* prefetch: now, bounds */
  pthread_mutex_t mu;
  pthread_cond_t hcv; /* handlers: a buffered job, or stop */
  pthread_cond_t dcv; /* dispatcher: outcome, wake, stop (monotonic) */
  /* protected by mu */
  dsys_job **ready; /* claim order; ready[0] runs next */
  size_t ready_n;
  size_t running;
  uint32_t alive; /* handler threads not yet exited */
  uint32_t idle;  /* handler threads waiting for a buffered job */
  outcome *done;
  size_t done_n, done_cap;
  int hot;       /* local work may be available */
  int d_waiting; /* dispatcher sleeps on dcv */
  dsysi_ticker renewer; /* zeroed until started */
  int waiter_added;
  pthread_t dispatcher;
  int dstarted;
  int stopping; /* atomic */
  int mode;     /* atomic */
  slot *slots;
};

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int is_stopping(dsys_worker *w) {
  return __atomic_load_n(&w->stopping, __ATOMIC_ACQUIRE);
}

/* ---- wakeups from the queue (called with the queue's lock held) ---- */

static void wake_fn(void *ud) {
  dsys_worker *w = ud;
  pthread_mutex_lock(&w->mu);
  w->hot = 1;
  if (w->d_waiting) pthread_cond_signal(&w->dcv);
  pthread_mutex_unlock(&w->mu);
}

/* ---- lease renewal ---- */

/* Caller holds w->mu. Forget a held job that is no longer ours. */
static void drop_lost(dsys_worker *w, int64_t id, int64_t token) {
  for (uint32_t i = 0; i < w->nthreads; i++) {
    slot *s = &w->slots[i];
    if (s->active && s->id == id && s->token == token) {
      s->lost = 1;
      return;
    }
  }
  for (size_t i = 0; i < w->ready_n; i++) {
    dsys_job *j = w->ready[i];
    if (j->id == id && j->token == token) {
      memmove(&w->ready[i], &w->ready[i + 1],
              (w->ready_n - i - 1) * sizeof *w->ready);
      w->ready_n--;
      dsys_job_free(j);
      if (w->d_waiting) pthread_cond_signal(&w->dcv); /* capacity freed */
      return;
    }
  }
}

static void renew_tick(void *p) {
  dsys_worker *w = p;
  pthread_mutex_lock(&w->mu);
  size_t n = 0, max = w->ready_n + w->nthreads + w->done_n;
  dsysi_qout *outs = max ? calloc(max, sizeof *outs) : NULL;
  if (outs) {
    for (size_t i = 0; i < w->ready_n; i++)
      outs[n++] = (dsysi_qout){.kind = DSYSI_Q_HEARTBEAT,
                               .id = w->ready[i]->id,
                               .token = w->ready[i]->token,
                               .lease_ms = w->lease_ms};
    for (uint32_t i = 0; i < w->nthreads; i++)
      if (w->slots[i].active && !w->slots[i].lost)
        outs[n++] = (dsysi_qout){.kind = DSYSI_Q_HEARTBEAT,
                                 .id = w->slots[i].id,
                                 .token = w->slots[i].token,
                                 .lease_ms = w->lease_ms};
    for (size_t i = 0; i < w->done_n; i++)
      outs[n++] = (dsysi_qout){.kind = DSYSI_Q_HEARTBEAT,
                               .id = w->done[i].id,
                               .token = w->done[i].token,
                               .lease_ms = w->lease_ms};
  }
  pthread_mutex_unlock(&w->mu);
  if (n) dsysi_queue_batch(w->q, outs, n, NULL, 0, NULL, 0, 0, NULL, NULL);
  pthread_mutex_lock(&w->mu);
  for (size_t i = 0; i < n; i++) {
    int e = outs[i].rc;
    if (!e) continue;
    if (e == DSYS_ELEASE || e == DSYS_ENOTFOUND) drop_lost(w, outs[i].id, outs[i].token);
    /* ELEASE also happens harmlessly when the outcome was committed
     * between collecting and renewing; log only other errors. */
    if (e != DSYS_ELEASE)
      dsysi_log(DSYS_LOG_WARN, "worker", "lease renewal of job %lld: %s",
                (long long)outs[i].id, dsys_strerror(e));
  }
  pthread_mutex_unlock(&w->mu);
  free(outs);
}

/* ---- handler threads ---- */

/* Caller holds w->mu. */
static int push_outcome(dsys_worker *w, int kind, int64_t id, int64_t token,
                        const char *text, char *owned) {
  if (dsysi_grow(&w->done, &w->done_cap, w->done_n + 1, sizeof *w->done, 16))
    return DSYS_ENOMEM;
  w->done[w->done_n++] = (outcome){kind, id, token, text, owned};
  if (w->d_waiting) pthread_cond_signal(&w->dcv);
  return 0;
}

static void *handler_main(void *p) {
  slot *s = p;
  dsys_worker *w = s->w;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!is_stopping(w) && w->ready_n == 0) {
      w->idle++;
      pthread_cond_wait(&w->hcv, &w->mu);
      w->idle--;
    }
    if (is_stopping(w)) break; /* buffered jobs are released by the
                                  dispatcher's last round */
    dsys_job *job = w->ready[0];
    memmove(&w->ready[0], &w->ready[1], (w->ready_n - 1) * sizeof *w->ready);
    w->ready_n--;
    s->active = 1;
    s->lost = 0;
    s->id = job->id;
    s->token = job->token;
    w->running++;
    pthread_mutex_unlock(&w->mu);

    dsys_job_ctx ctx = {.s = s};
    int rc = w->handler(&ctx, job, w->ud);
    int kind;
    const char *text;
    char *owned;
    if (rc == 0) {
      kind = DSYSI_Q_COMPLETE;
      text = owned = ctx.result;
      free(ctx.error);
    } else if (rc == DSYS_ECANCELED && is_stopping(w) &&
               __atomic_load_n(&w->mode, __ATOMIC_ACQUIRE) ==
                   DSYS_WORKER_STOP_RELEASE) {
      kind = DSYSI_Q_RELEASE;
      text = owned = NULL;
      free(ctx.result);
      free(ctx.error);
    } else {
      kind = DSYSI_Q_FAIL;
      text = ctx.error ? ctx.error : dsys_strerror(rc);
      owned = ctx.error;
      free(ctx.result);
    }

    pthread_mutex_lock(&w->mu);
    s->active = 0;
    w->running--;
    if (push_outcome(w, kind, job->id, job->token, text, owned)) {
      /* Out of memory: the lease lapses and the job is redelivered. */
      dsysi_log(DSYS_LOG_WARN, "worker", "job %lld: outcome lost (ENOMEM)",
                (long long)job->id);
      free(owned);
    }
    dsys_job_free(job);
  }
  w->alive--;
  pthread_cond_signal(&w->dcv);
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* ---- dispatcher ---- */

static int job_before(const dsys_job *a, const dsys_job *b) {
  if (a->priority != b->priority) return a->priority > b->priority;
  return a->id < b->id;
}

/* Caller holds w->mu; room for the job is guaranteed by cap. */
static void buffer_job(dsys_worker *w, dsys_job *j) {
  size_t i = w->ready_n;
  while (i > 0 && job_before(j, w->ready[i - 1])) i--;
  memmove(&w->ready[i + 1], &w->ready[i], (w->ready_n - i) * sizeof *w->ready);
  w->ready[i] = j;
  w->ready_n++;
}

static void timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu,
                       int64_t deadline_ms) {
  struct timespec ts = {.tv_sec = deadline_ms / 1000,
                        .tv_nsec = (deadline_ms % 1000) * 1000000L};
  pthread_cond_timedwait(cv, mu, &ts);
}

/* Caller holds w->mu; a round that asked for want jobs got ngot and is
 * back, its jobs not yet buffered. With the default prefetch the buffer
 * follows the handlers' pace: it doubles (up to extra_max) when the
 * handlers ran dry while the round was away although the queue had jobs
 * for all the room (the round got all it asked for, and it recorded
 * outcomes: a first claim into an empty buffer says nothing of the
 * handlers' pace), so that a round
 * covers what fast handlers run meanwhile and a transaction carries more
 * jobs (fewer transactions, commits and wake-ups per job); it shrinks
 * back by a quarter (down to extra_min) while more than half of it is
 * still unstarted when a round comes back, so slow jobs are not held
 * away from other workers nor kept behind a later higher priority. */
static void adapt_prefetch(dsys_worker *w, size_t outcomes, size_t want,
                           size_t ngot) {
  if (w->extra_max == w->extra_min) return;
  if (want && ngot == want && outcomes > 0 && w->ready_n == 0 &&
      w->idle > 0) {
    w->extra = w->extra * 2 < w->extra_max ? w->extra * 2 : w->extra_max;
  } else if (w->ready_n > w->extra / 2) {
    size_t less = w->extra - w->extra / 4;
    w->extra = less > w->extra_min ? less : w->extra_min;
  }
  w->cap = w->nthreads + w->extra;
}

static void *dispatch_main(void *p) {
  dsys_worker *w = p;
  dsys_job **got = calloc(w->nthreads + w->extra_max, sizeof *got);
  outcome *outs = NULL;
  size_t outs_cap = 0;
  dsysi_qout *qouts = NULL;
  size_t qouts_cap = 0;
  int64_t poll_at = 0;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    int final = 0;
    size_t want = 0;
    for (;;) {
      if (is_stopping(w) && w->alive == 0) {
        final = 1;
        break;
      }
      size_t held = w->ready_n + w->running;
      size_t room = (!is_stopping(w) && got && held < w->cap)
                        ? w->cap - held : 0;
      int claim_now = room > 0 && (w->hot || mono_ms() >= poll_at);
      if (w->done_n > 0 || claim_now) {
        /* A round for outcomes also claims into the free room. */
        want = room;
        break;
      }
      w->d_waiting = 1;
      if (room > 0) timed_wait(&w->dcv, &w->mu, poll_at);
      else pthread_cond_wait(&w->dcv, &w->mu);
      w->d_waiting = 0;
    }
    if (final) {
      /* Give back the buffered jobs no handler started. */
      while (w->ready_n > 0) {
        dsys_job *j = w->ready[--w->ready_n];
        if (push_outcome(w, DSYSI_Q_RELEASE, j->id, j->token, NULL, NULL))
          dsysi_log(DSYS_LOG_WARN, "worker", "job %lld: release lost",
                    (long long)j->id);
        dsys_job_free(j);
      }
    }
    /* Take the outcomes: swap the buffers. */
    outcome *tmp = outs;
    size_t tmp_cap = outs_cap, n = w->done_n;
    outs = w->done;
    outs_cap = w->done_cap;
    w->done = tmp;
    w->done_cap = tmp_cap;
    w->done_n = 0;
    if (want) w->hot = 0; /* a wake during the round sets it again */
    pthread_mutex_unlock(&w->mu);

    (void)dsysi_grow(&qouts, &qouts_cap, n, sizeof *qouts, n); /* checked next */
    size_t nq = n <= qouts_cap ? n : 0;
    if (nq < n)
      dsysi_log(DSYS_LOG_WARN, "worker",
                "%zu outcomes lost (ENOMEM): leases will lapse", n);
    for (size_t i = 0; i < nq; i++)
      qouts[i] = (dsysi_qout){.kind = outs[i].kind, .id = outs[i].id,
                              .token = outs[i].token, .text = outs[i].text};
    size_t ngot = 0;
    int e = dsysi_queue_batch(w->q, qouts, nq,
                              (const char *const *)w->queues, w->nqueues,
                              w->id, w->lease_ms, want, got, &ngot);
    for (size_t i = 0; i < nq; i++)
      if (qouts[i].rc)
        dsysi_log(DSYS_LOG_WARN, "worker", "job %lld: recording outcome: %s",
                  (long long)outs[i].id, dsys_strerror(qouts[i].rc));
    for (size_t i = 0; i < n; i++) free(outs[i].owned);
    if (want && e && e != DSYS_EAGAIN)
      dsysi_log(DSYS_LOG_WARN, "worker", "claim: %s", dsys_strerror(e));

    pthread_mutex_lock(&w->mu);
    if (final) break;
    adapt_prefetch(w, n, want, ngot);
    for (size_t i = 0; i < ngot; i++) buffer_job(w, got[i]);
    if (ngot == 1) pthread_cond_signal(&w->hcv);
    else if (ngot > 1) pthread_cond_broadcast(&w->hcv);
    if (want && ngot < want) poll_at = mono_ms() + w->poll_ms;
  }
  pthread_mutex_unlock(&w->mu);
  free(got);
  free(outs);
  free(qouts);
  return NULL;
}

/* ---- start / stop ---- */

static void worker_free(dsys_worker *w) {
  for (size_t i = 0; i < w->nqueues; i++) free(w->queues[i]);
  free(w->queues);
  free(w->id);
  free(w->slots);
  for (size_t i = 0; i < w->ready_n; i++) dsys_job_free(w->ready[i]);
  free(w->ready);
  for (size_t i = 0; i < w->done_n; i++) free(w->done[i].owned);
  free(w->done);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->hcv);
  pthread_cond_destroy(&w->dcv);
  free(w);
}

/* Stop every thread started so far, the renewer and the wakeups. After it
 * returns nothing of the worker runs. */
static void shutdown_all(dsys_worker *w) {
  __atomic_store_n(&w->stopping, 1, __ATOMIC_RELEASE);
  pthread_mutex_lock(&w->mu);
  pthread_cond_broadcast(&w->hcv);
  pthread_cond_signal(&w->dcv);
  pthread_mutex_unlock(&w->mu);
  for (uint32_t i = 0; i < w->nthreads; i++)
    if (w->slots[i].started) pthread_join(w->slots[i].thread, NULL);
  if (w->dstarted) pthread_join(w->dispatcher, NULL);
  dsysi_ticker_stop(&w->renewer);
  if (w->waiter_added) dsysi_queue_remove_waiter(w->q, wake_fn, w);
}

int dsys_worker_start(dsys_worker **out, dsys_queue *q,
                      const dsys_worker_options *opts) {
  if (!out) return DSYS_EINVAL;
  *out = NULL;
  if (!q || !opts || opts->size < sizeof(size_t)) return DSYS_EINVAL;
  dsys_worker_options o = {0};
  memcpy(&o, opts, opts->size < sizeof o ? opts->size : sizeof o);
  if (!o.handler || !o.queues || !o.nqueues || o.nqueues > 64 ||
      o.lease_ms < 0 || o.poll_ms < 0 || o.threads > 1024 ||
      o.prefetch > DSYS_QUEUE_MAX_MANY)
    return DSYS_EINVAL;
  for (size_t i = 0; i < o.nqueues; i++)
    if (!o.queues[i] || !*o.queues[i] ||
        strlen(o.queues[i]) > DSYS_QUEUE_MAX_NAME)
      return DSYS_EINVAL;
  if (o.worker_id && (!*o.worker_id ||
                      strlen(o.worker_id) > DSYS_QUEUE_MAX_NAME))
    return DSYS_EINVAL;
  dsys_worker *w = calloc(1, sizeof *w);
  if (!w) return DSYS_ENOMEM;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->hcv, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&w->dcv, &ca);
  pthread_condattr_destroy(&ca);
  w->q = q;
  w->clock = dsysi_queue_clock(q);
  w->nthreads = o.threads ? o.threads : 1;
  w->lease_ms = o.lease_ms ? o.lease_ms : 30000;
  if (w->lease_ms < 3) w->lease_ms = 3;
  w->poll_ms = o.poll_ms ? o.poll_ms : 100;
  w->handler = o.handler;
  w->ud = o.ud;
  /* prefetch 0: from 32 up to PREFETCH_AUTO_MAX, following the handlers
   * (adapt_prefetch); a prefetch given is kept as it is */
  w->extra_min = (size_t)(o.prefetch == 0 ? 32 : o.prefetch < 0 ? 0 : o.prefetch);
  w->extra_max = o.prefetch == 0 ? PREFETCH_AUTO_MAX : w->extra_min;
  w->extra = w->extra_min;
  w->cap = w->nthreads + w->extra;
  w->hot = 1;
  w->queues = calloc(o.nqueues, sizeof *w->queues);
  w->slots = calloc(w->nthreads, sizeof *w->slots);
  w->ready = calloc(w->nthreads + w->extra_max, sizeof *w->ready);
  int oom = !w->queues || !w->slots || !w->ready;
  for (size_t i = 0; !oom && i < o.nqueues; i++) {
    if (!(w->queues[i] = dsysi_strdup(o.queues[i]))) oom = 1;
    else w->nqueues = i + 1;
  }
  if (!oom) {
    if (o.worker_id) {
      w->id = dsysi_strdup(o.worker_id);
    } else {
      char host[64] = "host", rnd[9];
      gethostname(host, sizeof host - 1);
      host[sizeof host - 1] = 0;
      dsys_random_hex(rnd, sizeof rnd, 4);
      char buf[128];
      snprintf(buf, sizeof buf, "%s:%d:%s", host, (int)getpid(), rnd);
      w->id = dsysi_strdup(buf);
    }
    if (!w->id) oom = 1;
  }
  if (oom) {
    worker_free(w);
    return DSYS_ENOMEM;
  }
  int e = dsysi_queue_add_waiter(q, wake_fn, w);
  if (e) {
    worker_free(w);
    return e;
  }
  w->waiter_added = 1;
  e = dsysi_ticker_start_thread(&w->renewer, w->clock, w->lease_ms / 3, renew_tick, w);
  if (e) {
    shutdown_all(w);
    worker_free(w);
    return e;
  }
  if (pthread_create(&w->dispatcher, NULL, dispatch_main, w)) {
    shutdown_all(w);
    worker_free(w);
    return DSYS_ENOMEM;
  }
  w->dstarted = 1;
  for (uint32_t i = 0; i < w->nthreads; i++) {
    w->slots[i].w = w;
    pthread_mutex_lock(&w->mu);
    w->alive++;
    pthread_mutex_unlock(&w->mu);
    if (pthread_create(&w->slots[i].thread, NULL, handler_main,
                       &w->slots[i])) {
      pthread_mutex_lock(&w->mu);
      w->alive--;
      pthread_mutex_unlock(&w->mu);
      /* Undo: a failed start leaves nothing running. */
      shutdown_all(w);
      worker_free(w);
      return DSYS_ENOMEM;
    }
    w->slots[i].started = 1;
  }
  *out = w;
  return 0;
}

void dsys_worker_stop(dsys_worker *w, int mode) {
  if (!w) return;
  __atomic_store_n(&w->mode, mode, __ATOMIC_RELEASE);
  shutdown_all(w);
  worker_free(w);
}

const char *dsys_worker_id(dsys_worker *w) { return w ? w->id : NULL; }

int dsys_job_ctx_progress(dsys_job_ctx *ctx, int32_t percent,
                          const char *message) {
  if (!ctx) return DSYS_EINVAL;
  slot *s = ctx->s;
  return dsys_queue_progress(s->w->q, s->id, s->token, percent, message);
}

int dsys_job_ctx_set_result(dsys_job_ctx *ctx, const char *json) {
  if (!ctx || !json) return DSYS_EINVAL;
  size_t n = strlen(json);
  if (n > DSYS_QUEUE_MAX_PAYLOAD) return DSYS_ETOOBIG;
  json_object *j = NULL;
  int e = dsysi_json_parse(json, n, &j);
  json_object_put(j);
  if (e) return e;
  char *c = dsysi_strdup(json);
  if (!c) return DSYS_ENOMEM;
  free(ctx->result);
  ctx->result = c;
  return 0;
}

int dsys_job_ctx_set_error(dsys_job_ctx *ctx, const char *message) {
  if (!ctx || !message) return DSYS_EINVAL;
  char *c = dsysi_strndup(message, strnlen(message, 4096));
  if (!c) return DSYS_ENOMEM;
  free(ctx->error);
  ctx->error = c;
  return 0;
}

int dsys_job_ctx_stopping(dsys_job_ctx *ctx) {
  if (!ctx) return 1;
  slot *s = ctx->s;
  dsys_worker *w = s->w;
  if (is_stopping(w) &&
      __atomic_load_n(&w->mode, __ATOMIC_ACQUIRE) == DSYS_WORKER_STOP_RELEASE)
    return 1;
  pthread_mutex_lock(&w->mu);
  int lost = s->lost;
  pthread_mutex_unlock(&w->mu);
  return lost;
}
