/* Retry policy: decisions, full-jitter backoff, per-try timeouts, budget. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/retry.h>
#include <distsys/client.h>
#include <distsys/util.h>
#include "core/internal.h"
#include "core/rng.h"
#include "resilience/retry.h"

/* One second of the budget's window. A request is counted without the
 * lock (dsys_retry_request: every proxied request, from every event loop,
 * where a shared lock was one of the places the loops stalled each other);
 * claiming a bucket for a new second and everything about retries take
 * the lock. */
typedef struct bbucket {
  _Atomic int64_t sec;
  atomic_uint_fast32_t requests;
  uint32_t retries;
} bbucket;

struct dsys_retry {
  pthread_mutex_t mu;
  dsys_clock *clk;
  uint32_t max_attempts;
  int64_t per_try_ms, deadline_ms, base_ms, cap_ms;
  int32_t *statuses;
  size_t nstatuses;
  uint32_t ratio_pct, min_per_s, window_s;
  int budget_off;
  uint64_t rng;
  bbucket *bk;
};

static const int32_t default_statuses[] = {502, 503, 504};

/* The first nsafe entries are safe, all are idempotent. */
static int method_in(const char *m, size_t n) {
  static const char *const idem[] = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"};
  if (!m) return 1; /* default GET */
  for (size_t i = 0; i < n; i++)
    if (!strcmp(m, idem[i])) return 1;
  return 0;
}

int dsys_method_idempotent(const char *m) { return method_in(m, 5); }

int dsys_method_safe(const char *m) { return method_in(m, 3); }

int dsys_retry_new(dsys_retry **out, const dsys_retry_options *o) {
  if (!out) return DSYS_EINVAL;
  dsys_retry_options d = {0};
  if (o) memcpy(&d, o, o->size && o->size < sizeof d ? o->size : sizeof d);
  if (d.per_try_timeout_ms < -1 || d.deadline_ms < -1 || d.backoff_base_ms < 0 ||
      d.backoff_cap_ms < 0 || d.budget_window_s > 3600 || d.max_attempts > 100 ||
      (d.n_retry_statuses && !d.retry_statuses))
    return DSYS_EINVAL;
  dsys_retry *r = calloc(1, sizeof *r);
  if (!r) return DSYS_ENOMEM;
  r->clk = d.clock ? d.clock : dsys_clock_real();
  r->max_attempts = d.max_attempts ? d.max_attempts : 3;
  r->per_try_ms = d.per_try_timeout_ms ? d.per_try_timeout_ms : 5000;
  r->deadline_ms = d.deadline_ms ? d.deadline_ms : 15000;
  r->base_ms = d.backoff_base_ms ? d.backoff_base_ms : 25;
  r->cap_ms = d.backoff_cap_ms ? d.backoff_cap_ms : 1000;
  const int32_t *st = d.n_retry_statuses ? d.retry_statuses : default_statuses;
  r->nstatuses = d.n_retry_statuses ? d.n_retry_statuses : 3;
  r->ratio_pct = d.budget_ratio_pct ? d.budget_ratio_pct : 20;
  r->min_per_s = d.budget_min_per_s ? d.budget_min_per_s : 10;
  r->window_s = d.budget_window_s ? d.budget_window_s : 10;
  r->budget_off = d.budget_off != 0;
  r->rng = d.seed;
  if (!r->rng) dsys_random_bytes(&r->rng, sizeof r->rng);
  if (!r->rng) r->rng = 0x9e3779b97f4a7c15ULL;
  r->statuses = malloc(r->nstatuses * sizeof *r->statuses);
  r->bk = calloc(r->window_s, sizeof *r->bk);
  if (!r->statuses || !r->bk) {
    free(r->statuses);
    free(r->bk);
    free(r);
    return DSYS_ENOMEM;
  }
  memcpy(r->statuses, st, r->nstatuses * sizeof *st);
  pthread_mutex_init(&r->mu, NULL);
  *out = r;
  return 0;
}

void dsys_retry_free(dsys_retry *r) {
  if (!r) return;
  pthread_mutex_destroy(&r->mu);
  free(r->statuses);
  free(r->bk);
  free(r);
}

static int64_t now_sec(dsys_retry *r) { return dsys_clock_now_ms(r->clk) / 1000; }

/* Hold mu. The bucket of second sec, emptied if it held an older one. */
static bbucket *claim(dsys_retry *r, int64_t sec) {
  bbucket *b = &r->bk[sec % r->window_s];
  if (atomic_load_explicit(&b->sec, memory_order_relaxed) != sec) {
    atomic_store_explicit(&b->requests, 0, memory_order_relaxed);
    b->retries = 0;
    atomic_store_explicit(&b->sec, sec, memory_order_release);
  }
  return b;
}

/* Hold mu. Requests and retries of the window ending at second sec. */
static void window_sums(dsys_retry *r, int64_t sec, uint64_t *requests, uint64_t *retries) {
  uint64_t q = 0, t = 0;
  for (uint32_t i = 0; i < r->window_s; i++) {
    bbucket *b = &r->bk[i];
    int64_t bs = atomic_load_explicit(&b->sec, memory_order_acquire);
    if (bs > sec - (int64_t)r->window_s && bs <= sec) {
      q += atomic_load_explicit(&b->requests, memory_order_relaxed);
      t += b->retries;
    }
  }
  *requests = q;
  *retries = t;
}

void dsys_retry_request(dsys_retry *r) {
  if (!r) return;
  int64_t sec = now_sec(r);
  bbucket *b = &r->bk[sec % r->window_s];
  if (atomic_load_explicit(&b->sec, memory_order_acquire) != sec) {
    pthread_mutex_lock(&r->mu);
    claim(r, sec);
    pthread_mutex_unlock(&r->mu);
  }
  /* A bucket reclaimed between the check and the add (its second came
   * round again a whole window later) gains one request: harmless. */
  atomic_fetch_add_explicit(&b->requests, 1, memory_order_relaxed);
}

void dsys_retry_budget_get(dsys_retry *r, uint64_t *requests, uint64_t *retries) {
  if (!r) return;
  uint64_t q, t;
  pthread_mutex_lock(&r->mu);
  window_sums(r, now_sec(r), &q, &t);
  pthread_mutex_unlock(&r->mu);
  if (requests) *requests = q;
  if (retries) *retries = t;
}

/* Take one retry from the budget; 0 on success. */
static int budget_take(dsys_retry *r) {
  if (r->budget_off) return 0;
  pthread_mutex_lock(&r->mu);
  int64_t sec = now_sec(r);
  uint64_t q, t;
  window_sums(r, sec, &q, &t);
  uint64_t allowed = (uint64_t)r->min_per_s * r->window_s + q * r->ratio_pct / 100;
  int rc = -1;
  if (t + 1 <= allowed) {
    claim(r, sec)->retries++;
    rc = 0;
  }
  pthread_mutex_unlock(&r->mu);
  return rc;
}

int dsysi_retry_budget_take(dsys_retry *r) { return budget_take(r); }

uint32_t dsysi_retry_max_attempts(const dsys_retry *r) { return r->max_attempts; }

int64_t dsys_retry_backoff_ms(dsys_retry *r, uint32_t n) {
  if (!r || n == 0) return 0;
  int64_t ceil = r->base_ms;
  for (uint32_t i = 1; i < n && ceil < r->cap_ms; i++) ceil *= 2;
  if (ceil > r->cap_ms) ceil = r->cap_ms;
  pthread_mutex_lock(&r->mu);
  uint64_t x = dsysi_rng_next(&r->rng);
  pthread_mutex_unlock(&r->mu);
  return (int64_t)(x % (uint64_t)(ceil + 1));
}

int64_t dsys_retry_try_timeout_ms(dsys_retry *r, int64_t elapsed_ms) {
  if (!r) return -1;
  int64_t t = r->per_try_ms;
  if (r->deadline_ms >= 0) {
    int64_t left = r->deadline_ms - elapsed_ms;
    if (left < 0) left = 0;
    if (t < 0 || left < t) t = left;
  }
  return t;
}

static int status_listed(const dsys_retry *r, int32_t status) {
  for (size_t i = 0; i < r->nstatuses; i++)
    if (r->statuses[i] == status) return 1;
  return 0;
}

int dsys_retry_decide(dsys_retry *r, const dsys_retry_input *in,
                      dsys_retry_decision *out) {
  if (!r || !in || !out) return DSYS_EINVAL;
  dsys_retry_input x = {0};
  memcpy(&x, in, in->size && in->size < sizeof x ? in->size : sizeof x);
  out->action = DSYS_RETRY_STOP;
  out->delay_ms = 0;
  out->timeout_ms = -1;
  int retryable = 0, now = 0;
  switch (x.outcome) {
  case DSYS_OUTCOME_OK:
    out->reason = DSYS_RETRY_R_SUCCESS;
    return 0;
  case DSYS_OUTCOME_NOT_SENT:
    retryable = now = 1;
    break;
  case DSYS_OUTCOME_TIMEOUT:
  case DSYS_OUTCOME_RESET:
  case DSYS_OUTCOME_PROTOCOL:
    retryable = 1;
    break;
  case DSYS_OUTCOME_CLIENT_ERROR:
  case DSYS_OUTCOME_SERVER_ERROR:
    retryable = status_listed(r, x.status);
    break;
  default: /* LOCAL and unknown */
    retryable = 0;
  }
  if (!retryable) {
    out->reason = DSYS_RETRY_R_NOT_RETRYABLE;
    return 0;
  }
  if (!now && !x.has_idempotency_key && !dsys_method_idempotent(x.method)) {
    out->reason = DSYS_RETRY_R_NOT_IDEMPOTENT;
    return 0;
  }
  /* A timed-out attempt may still land after a retry was answered and
   * after newer writes: resending a plain PUT or DELETE would let it
   * overwrite them (found by the simulation, seed 37) */
  if (x.outcome == DSYS_OUTCOME_TIMEOUT && !x.has_idempotency_key && !x.has_precondition &&
      !dsys_method_safe(x.method)) {
    out->reason = DSYS_RETRY_R_MAY_LAND_LATE;
    return 0;
  }
  if (x.attempt >= r->max_attempts) {
    out->reason = DSYS_RETRY_R_ATTEMPTS;
    return 0;
  }
  int64_t delay = now ? 0 : dsys_retry_backoff_ms(r, x.attempt);
  if (r->deadline_ms >= 0 && x.elapsed_ms + delay >= r->deadline_ms) {
    out->reason = DSYS_RETRY_R_DEADLINE;
    return 0;
  }
  if (budget_take(r)) {
    out->reason = DSYS_RETRY_R_BUDGET;
    return 0;
  }
  out->action = now ? DSYS_RETRY_NOW : DSYS_RETRY_AFTER_BACKOFF;
  out->reason = DSYS_RETRY_R_RETRYABLE;
  out->delay_ms = delay;
  out->timeout_ms = dsys_retry_try_timeout_ms(r, x.elapsed_ms + delay);
  return 0;
}
