/*
 * Worker pool: N threads claim jobs, run the handler, and record the
 * outcome. While a handler runs, a clock timer renews the lease every
 * lease/3 (timers run on the clock's timer thread, or inside
 * dsys_clock_advance() on a fake clock).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/queue.h>
#include <distsys/util.h>
#include "core/internal.h"
#include "core/json.h"
#include "state/queue_int.h"

typedef struct slot slot;

/* One renewal timer; freed by whoever retires it (callback or cancel). */
typedef struct ticket {
  slot *s;
  uint64_t gen;
} ticket;

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
  uint64_t gen;
  int64_t id, token;
  uint64_t timer_id;
  ticket *tk;
  int lost;
};

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
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int timers_pending;
  int stopping; /* atomic */
  int mode;     /* atomic */
  slot *slots;
};

static void renew_cb(void *p);

/* Caller holds w->mu. */
static void schedule(slot *s) {
  dsys_worker *w = s->w;
  s->tk = NULL;
  ticket *tk = malloc(sizeof *tk);
  if (!tk) return; /* no renewal: the lease may lapse, fencing stays safe */
  tk->s = s;
  tk->gen = s->gen;
  w->timers_pending++;
  if (dsys_timer_add(w->clock, w->lease_ms * 1000 / 3, renew_cb, tk,
                     &s->timer_id)) {
    w->timers_pending--;
    free(tk);
    return;
  }
  s->tk = tk;
}

static void renew_cb(void *p) {
  ticket *tk = p;
  slot *s = tk->s;
  dsys_worker *w = s->w;
  pthread_mutex_lock(&w->mu);
  int current = s->active && s->gen == tk->gen;
  int64_t id = s->id, token = s->token;
  pthread_mutex_unlock(&w->mu);
  int e = 0;
  if (current) e = dsys_queue_heartbeat(w->q, id, token, w->lease_ms);
  pthread_mutex_lock(&w->mu);
  if (s->active && s->gen == tk->gen) {
    if (e == DSYS_ELEASE || e == DSYS_ENOTFOUND) s->lost = 1;
    if (e) dsysi_log(DSYS_LOG_WARN, "worker", "lease renewal of job %lld: %s",
                     (long long)id, dsys_strerror(e));
    if (!s->lost) schedule(s);
    else s->tk = NULL;
  }
  w->timers_pending--;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  free(tk);
}

static void run_job(slot *s, dsys_job *job) {
  dsys_worker *w = s->w;
  pthread_mutex_lock(&w->mu);
  s->active = 1;
  s->lost = 0;
  s->id = job->id;
  s->token = job->token;
  schedule(s);
  pthread_mutex_unlock(&w->mu);

  dsys_job_ctx ctx = {.s = s};
  int rc = w->handler(&ctx, job, w->ud);

  pthread_mutex_lock(&w->mu);
  s->active = 0;
  s->gen++;
  if (s->tk && dsys_timer_cancel(w->clock, s->timer_id) == 0) {
    w->timers_pending--;
    free(s->tk);
  }
  s->tk = NULL; /* otherwise the callback retires its own ticket */
  pthread_mutex_unlock(&w->mu);

  int e;
  if (rc == 0) {
    e = dsys_queue_complete(w->q, job->id, job->token, ctx.result);
  } else if (rc == DSYS_ECANCELED &&
             __atomic_load_n(&w->stopping, __ATOMIC_ACQUIRE) &&
             __atomic_load_n(&w->mode, __ATOMIC_ACQUIRE) ==
                 DSYS_WORKER_STOP_RELEASE) {
    e = dsys_queue_release(w->q, job->id, job->token);
  } else {
    e = dsys_queue_fail(w->q, job->id, job->token,
                        ctx.error ? ctx.error : dsys_strerror(rc), NULL);
  }
  if (e)
    dsysi_log(DSYS_LOG_WARN, "worker", "job %lld: recording outcome: %s",
              (long long)job->id, dsys_strerror(e));
  free(ctx.result);
  free(ctx.error);
}

static void *thread_main(void *p) {
  slot *s = p;
  dsys_worker *w = s->w;
  while (!__atomic_load_n(&w->stopping, __ATOMIC_ACQUIRE)) {
    dsys_job *job = NULL;
    int e = dsys_queue_claim(w->q, (const char *const *)w->queues,
                             w->nqueues, w->id, w->lease_ms, &job);
    if (e == 0) {
      run_job(s, job);
      dsys_job_free(job);
      continue;
    }
    if (e != DSYS_EAGAIN)
      dsysi_log(DSYS_LOG_WARN, "worker", "claim: %s", dsys_strerror(e));
    dsysi_queue_wait_work(w->q, w->poll_ms, &w->stopping);
  }
  return NULL;
}

static void worker_free(dsys_worker *w) {
  for (size_t i = 0; i < w->nqueues; i++) free(w->queues[i]);
  free(w->queues);
  free(w->id);
  free(w->slots);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  free(w);
}

static void join_all(dsys_worker *w) {
  for (uint32_t i = 0; i < w->nthreads; i++)
    if (w->slots[i].started) pthread_join(w->slots[i].thread, NULL);
  /* Wait for a renewal callback that may still be running. */
  pthread_mutex_lock(&w->mu);
  while (w->timers_pending > 0) pthread_cond_wait(&w->cv, &w->mu);
  pthread_mutex_unlock(&w->mu);
}

int dsys_worker_start(dsys_worker **out, dsys_queue *q,
                      const dsys_worker_options *opts) {
  if (!out) return DSYS_EINVAL;
  *out = NULL;
  if (!q || !opts || opts->size < sizeof(size_t)) return DSYS_EINVAL;
  dsys_worker_options o = {0};
  memcpy(&o, opts, opts->size < sizeof o ? opts->size : sizeof o);
  if (!o.handler || !o.queues || !o.nqueues || o.nqueues > 64 ||
      o.lease_ms < 0 || o.poll_ms < 0 || o.threads > 1024)
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
  pthread_cond_init(&w->cv, NULL);
  w->q = q;
  w->clock = dsysi_queue_clock(q);
  w->nthreads = o.threads ? o.threads : 1;
  w->lease_ms = o.lease_ms ? o.lease_ms : 30000;
  if (w->lease_ms < 3) w->lease_ms = 3;
  w->poll_ms = o.poll_ms ? o.poll_ms : 100;
  w->handler = o.handler;
  w->ud = o.ud;
  w->queues = calloc(o.nqueues, sizeof *w->queues);
  w->slots = calloc(w->nthreads, sizeof *w->slots);
  int oom = !w->queues || !w->slots;
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
  for (uint32_t i = 0; i < w->nthreads; i++) {
    w->slots[i].w = w;
    if (pthread_create(&w->slots[i].thread, NULL, thread_main,
                       &w->slots[i])) {
      /* Undo: stop the threads already started, so that a failed start
       * leaves nothing running. */
      __atomic_store_n(&w->stopping, 1, __ATOMIC_RELEASE);
      dsysi_queue_wake(q);
      join_all(w);
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
  __atomic_store_n(&w->stopping, 1, __ATOMIC_RELEASE);
  dsysi_queue_wake(w->q);
  join_all(w);
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
  if (__atomic_load_n(&w->stopping, __ATOMIC_ACQUIRE) &&
      __atomic_load_n(&w->mode, __ATOMIC_ACQUIRE) == DSYS_WORKER_STOP_RELEASE)
    return 1;
  pthread_mutex_lock(&w->mu);
  int lost = s->lost;
  pthread_mutex_unlock(&w->mu);
  return lost;
}
