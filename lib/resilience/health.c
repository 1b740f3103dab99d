/* Health: active checks driven by clock timers, passive outlier detection. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/health.h>
#include <distsys/client.h>
#include <distsys/util.h>
#include "core/internal.h"
#include "core/rng.h"
#include "resilience/shared_cause.h"

typedef struct hep hep;
struct hep {
  dsys_health *h;
  char *id, *url;
  int removed;
  int state, ejected;
  int slow_ej;    /* the ejection is for slowness */
  int await_pass; /* ... its time is over: the next passing check ends it */
  int passed_ej;  /* the last check since the ejection passed */
  uint32_t passes, fails, ofails, oslow, ejcount;
  uint64_t checks, checks_failed, ejections;
  int64_t ejected_until_us, last_uneject_us;
  uint64_t check_timer, timeout_timer, eject_timer;
  uint64_t probe_token, timeout_token;
  int timers; /* scheduled timers whose callbacks have not finished */
};

struct dsys_health {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  dsys_clock *clk;
  int64_t interval_us, jitter_us, timeout_us, base_ej_us, max_ej_us;
  int64_t slow_ej_us, down_us;
  uint32_t rise, fall, ofail_max, oslow_max;
  int start_healthy, outlier_off;
  dsys_health_probe_fn probe;
  void *probe_ud;
  dsys_health_event_fn on_event;
  void *event_ud;
  uint64_t rng, next_token;
  hep **eps;
  size_t n, cap;
  int timers_out, closing;
  dsys_health_counters ctr;
};

#define MAX_EV 2
typedef struct evq {
  int n;
  char *id[MAX_EV];
  dsys_health_event ev[MAX_EV];
  int usable[MAX_EV];
} evq;

static int usable(const hep *e) { return e->state == DSYS_HEALTH_HEALTHY && !e->ejected; }

static void push_ev(evq *q, hep *e, dsys_health_event ev) {
  if (q->n >= MAX_EV || !e->h->on_event) return;
  q->id[q->n] = strdup(e->id);
  if (!q->id[q->n]) return;
  q->ev[q->n] = ev;
  q->usable[q->n] = usable(e);
  q->n++;
}

static void fire(dsys_health *h, evq *q) {
  for (int i = 0; i < q->n; i++) {
    if (h->on_event) h->on_event(h->event_ud, q->id[i], q->ev[i], q->usable[i]);
    free(q->id[i]);
  }
  q->n = 0;
}

static void hep_free(hep *e) {
  free(e->id);
  free(e->url);
  free(e);
}

/* Hold mu. */
static int add_timer(dsys_health *h, hep *e, int64_t delay_us, dsys_timer_fn fn,
                     uint64_t *idf) {
  e->timers++;
  h->timers_out++;
  int rc = dsys_timer_add(h->clk, delay_us, fn, e, idf);
  if (rc) {
    e->timers--;
    h->timers_out--;
    *idf = 0;
  }
  return rc;
}

/* Hold mu. */
static void cancel_timer(dsys_health *h, hep *e, uint64_t *idf) {
  if (*idf && dsys_timer_cancel(h->clk, *idf) == 0) {
    e->timers--;
    h->timers_out--;
  }
  *idf = 0;
}

/* End of every timer callback: the last access to h. */
static void finish(dsys_health *h, hep *e) {
  pthread_mutex_lock(&h->mu);
  e->timers--;
  h->timers_out--;
  if (e->removed && e->timers == 0) hep_free(e);
  if (h->timers_out == 0) pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
}

static int64_t jitter(dsys_health *h) {
  if (h->jitter_us <= 0) return 0;
  return (int64_t)(dsysi_rng_next(&h->rng) % (uint64_t)(h->jitter_us + 1));
}

static void check_cb(void *ud);

/* Hold mu. */
static void schedule_check(dsys_health *h, hep *e, int64_t delay_us) {
  if (e->removed || h->closing || e->check_timer) return;
  add_timer(h, e, delay_us, check_cb, &e->check_timer);
}

static void uneject(dsys_health *h, hep *e, evq *q);

/* Hold mu. Applies one active check result. */
static void apply_result(dsys_health *h, hep *e, int passed, evq *q) {
  int before = e->state;
  h->ctr.checks++;
  if (passed) {
    e->passes++;
    e->fails = 0;
    if (e->state == DSYS_HEALTH_PENDING ||
        (e->state == DSYS_HEALTH_UNHEALTHY && e->passes >= h->rise))
      e->state = DSYS_HEALTH_HEALTHY;
  } else {
    h->ctr.checks_failed++;
    e->checks_failed++;
    e->fails++;
    e->passes = 0;
    if (e->state != DSYS_HEALTH_UNHEALTHY && e->fails >= h->fall)
      e->state = DSYS_HEALTH_UNHEALTHY;
  }
  if (e->state != before) {
    h->ctr.transitions++;
    push_ev(q, e, e->state == DSYS_HEALTH_HEALTHY ? DSYS_HEALTH_EV_HEALTHY
                                                  : DSYS_HEALTH_EV_UNHEALTHY);
  }
  if (e->ejected && e->slow_ej) {
    e->passed_ej = passed;
    if (passed && e->await_pass) uneject(h, e, q);
  }
  schedule_check(h, e, (usable(e) ? h->interval_us : h->down_us) + jitter(h));
}

static void timeout_cb(void *ud) {
  hep *e = ud;
  dsys_health *h = e->h;
  evq q = {0};
  pthread_mutex_lock(&h->mu);
  e->timeout_timer = 0;
  if (!e->removed && e->probe_token && e->probe_token == e->timeout_token) {
    e->probe_token = 0;
    h->ctr.timeouts++;
    apply_result(h, e, 0, &q);
  }
  pthread_mutex_unlock(&h->mu);
  fire(h, &q);
  finish(h, e);
}

static int report_locked(dsys_health *h, uint64_t token, int passed, evq *q) {
  hep *e = NULL;
  for (size_t i = 0; i < h->n; i++)
    if (h->eps[i]->probe_token == token) e = h->eps[i];
  if (!e) return DSYS_ENOTFOUND;
  e->probe_token = 0;
  cancel_timer(h, e, &e->timeout_timer);
  apply_result(h, e, passed, q);
  return 0;
}

static void check_cb(void *ud) {
  hep *e = ud;
  dsys_health *h = e->h;
  pthread_mutex_lock(&h->mu);
  e->check_timer = 0;
  if (e->removed || h->closing) {
    pthread_mutex_unlock(&h->mu);
    finish(h, e);
    return;
  }
  uint64_t token = ++h->next_token;
  e->probe_token = e->timeout_token = token;
  e->checks++;
  add_timer(h, e, h->timeout_us, timeout_cb, &e->timeout_timer);
  pthread_mutex_unlock(&h->mu);
  int rc = h->probe(h->probe_ud, h, e->id, e->url, token);
  if (rc) {
    evq q = {0};
    pthread_mutex_lock(&h->mu);
    report_locked(h, token, 0, &q);
    pthread_mutex_unlock(&h->mu);
    fire(h, &q);
  }
  finish(h, e);
}

int dsys_health_new(dsys_health **out, const dsys_health_options *o) {
  if (!out) return DSYS_EINVAL;
  dsys_health_options d = {0};
  if (o) memcpy(&d, o, o->size && o->size < sizeof d ? o->size : sizeof d);
  if (d.interval_ms < 0 || d.jitter_ms < -1 || d.timeout_ms < 0 ||
      d.base_ejection_ms < 0 || d.max_ejection_ms < 0 || d.slow_ejection_ms < 0 ||
      d.down_interval_ms < 0)
    return DSYS_EINVAL;
  dsys_health *h = calloc(1, sizeof *h);
  if (!h) return DSYS_ENOMEM;
  h->clk = d.clock ? d.clock : dsys_clock_real();
  h->interval_us = (d.interval_ms ? d.interval_ms : 2000) * 1000;
  h->jitter_us = d.jitter_ms == -1 ? 0 : d.jitter_ms ? d.jitter_ms * 1000 : h->interval_us / 10;
  h->timeout_us = (d.timeout_ms ? d.timeout_ms : 1000) * 1000;
  h->rise = d.rise ? d.rise : 2;
  h->fall = d.fall ? d.fall : 3;
  h->start_healthy = d.start_healthy != 0 || !d.probe;
  h->probe = d.probe;
  h->probe_ud = d.probe_ud;
  h->ofail_max = d.consecutive_failures ? d.consecutive_failures : 5;
  h->base_ej_us = (d.base_ejection_ms ? d.base_ejection_ms : 30000) * 1000;
  h->max_ej_us = (d.max_ejection_ms ? d.max_ejection_ms : 300000) * 1000;
  h->outlier_off = d.outlier_off != 0;
  h->oslow_max = d.consecutive_slow;
  h->slow_ej_us = (d.slow_ejection_ms ? d.slow_ejection_ms : 1000) * 1000;
  h->down_us = d.down_interval_ms ? d.down_interval_ms * 1000 : h->interval_us;
  h->on_event = d.on_event;
  h->event_ud = d.event_ud;
  h->rng = d.seed;
  if (!h->rng) dsys_random_bytes(&h->rng, sizeof h->rng);
  pthread_mutex_init(&h->mu, NULL);
  pthread_cond_init(&h->cv, NULL);
  *out = h;
  return 0;
}

static void detach(dsys_health *h, hep *e) {
  e->removed = 1;
  e->probe_token = 0;
  cancel_timer(h, e, &e->check_timer);
  cancel_timer(h, e, &e->timeout_timer);
  cancel_timer(h, e, &e->eject_timer);
  if (e->timers == 0) hep_free(e);
}

void dsys_health_free(dsys_health *h) {
  if (!h) return;
  pthread_mutex_lock(&h->mu);
  h->closing = 1;
  for (size_t i = 0; i < h->n; i++) detach(h, h->eps[i]);
  h->n = 0;
  while (h->timers_out > 0) pthread_cond_wait(&h->cv, &h->mu);
  pthread_mutex_unlock(&h->mu);
  pthread_mutex_destroy(&h->mu);
  pthread_cond_destroy(&h->cv);
  free(h->eps);
  free(h);
}

static hep *find(dsys_health *h, const char *id, size_t *pos) {
  for (size_t i = 0; i < h->n; i++)
    if (!strcmp(h->eps[i]->id, id)) {
      if (pos) *pos = i;
      return h->eps[i];
    }
  return NULL;
}

int dsys_health_add(dsys_health *h, const char *id, const char *url) {
  if (!h || !id || !*id) return DSYS_EINVAL;
  int rc = 0;
  pthread_mutex_lock(&h->mu);
  if (find(h, id, NULL)) {
    rc = DSYS_EEXIST;
    goto out;
  }
  if ((rc = dsysi_grow(&h->eps, &h->cap, h->n + 1, sizeof *h->eps, 8))) goto out;
  hep *e = calloc(1, sizeof *e);
  if (e) {
    e->id = strdup(id);
    e->url = strdup(url ? url : "");
  }
  if (!e || !e->id || !e->url) {
    if (e) hep_free(e);
    rc = DSYS_ENOMEM;
    goto out;
  }
  e->h = h;
  e->state = h->start_healthy ? DSYS_HEALTH_HEALTHY : DSYS_HEALTH_PENDING;
  if (h->probe && (rc = add_timer(h, e, jitter(h), check_cb, &e->check_timer))) {
    hep_free(e);
    goto out;
  }
  h->eps[h->n++] = e;
out:
  pthread_mutex_unlock(&h->mu);
  return rc;
}

int dsys_health_remove(dsys_health *h, const char *id) {
  if (!h || !id) return DSYS_EINVAL;
  pthread_mutex_lock(&h->mu);
  size_t pos;
  hep *e = find(h, id, &pos);
  if (e) {
    memmove(&h->eps[pos], &h->eps[pos + 1], (h->n - pos - 1) * sizeof *h->eps);
    h->n--;
    detach(h, e);
  }
  pthread_mutex_unlock(&h->mu);
  return e ? 0 : DSYS_ENOTFOUND;
}

int dsys_health_report(dsys_health *h, uint64_t token, int passed) {
  if (!h || !token) return DSYS_ENOTFOUND;
  evq q = {0};
  pthread_mutex_lock(&h->mu);
  int rc = report_locked(h, token, passed, &q);
  pthread_mutex_unlock(&h->mu);
  fire(h, &q);
  return rc;
}

/* Hold mu. */
static void uneject(dsys_health *h, hep *e, evq *q) {
  e->ejected = e->slow_ej = e->await_pass = 0;
  e->ejected_until_us = 0;
  e->last_uneject_us = dsys_clock_now_us(h->clk);
  push_ev(q, e, DSYS_HEALTH_EV_UNEJECTED);
}

static void eject_cb(void *ud) {
  hep *e = ud;
  dsys_health *h = e->h;
  evq q = {0};
  pthread_mutex_lock(&h->mu);
  e->eject_timer = 0;
  if (!e->removed && e->ejected) {
    /* a slow instance with checks comes back by a passing check: time
     * alone says nothing about a process that still hangs */
    if (e->slow_ej && h->probe && !e->passed_ej) e->await_pass = 1;
    else uneject(h, e, &q);
  }
  pthread_mutex_unlock(&h->mu);
  fire(h, &q);
  finish(h, e);
}

/* Hold mu. Whether e's trouble has a cause it shares with the others:
 * more than half of the other usable endpoints (*others of them) are in
 * a streak too (slow: of slowness; else of failures). Slowness is
 * relative: when the others are slow too, the traffic is (a slow route),
 * not this endpoint. So are failures: when the others fail too,
 * something they share does (every instance answering 503 while their
 * database fails over); ejecting them one by one for 30 s left none once
 * it was back, and opening every breaker kept writes refused after it. */
static int shared_cause(const dsys_health *h, const hep *e, int slow, size_t *others) {
  size_t n = 0, sound = 0;
  for (size_t i = 0; i < h->n; i++)
    if (h->eps[i] != e && usable(h->eps[i])) {
      n++;
      sound += slow ? !h->eps[i]->oslow : !h->eps[i]->ofails;
    }
  *others = n;
  return sound * 2 < n;
}

int dsysi_health_shared_failure(dsys_health *h, const char *id) {
  if (!h || !id) return 0;
  size_t others = 0;
  pthread_mutex_lock(&h->mu);
  hep *e = find(h, id, NULL);
  /* without outlier detection no streak is counted: nothing to compare */
  int shared = e && !h->outlier_off && shared_cause(h, e, 0, &others);
  pthread_mutex_unlock(&h->mu);
  return shared;
}

/* Hold mu. slow: for slowness, streak: for consecutive failures (see the
 * header); neither: a refused connection. */
static void eject(dsys_health *h, hep *e, evq *q, int slow, int streak) {
  if (e->ejected) return;
  size_t others;
  int shared = shared_cause(h, e, slow, &others);
  if (others == 0 || ((slow || streak) && shared)) {
    h->ctr.skipped_ejections++;
    return;
  }
  int64_t now = dsys_clock_now_us(h->clk);
  if (e->ejcount && e->last_uneject_us && now - e->last_uneject_us >= h->max_ej_us)
    e->ejcount = 0;
  uint32_t count = e->ejcount + 1;
  int64_t base = slow ? h->slow_ej_us : h->base_ej_us;
  int64_t dur = base * count;
  if (dur > h->max_ej_us || dur / count != base) dur = h->max_ej_us;
  if (add_timer(h, e, dur, eject_cb, &e->eject_timer)) return;
  e->ejcount = count;
  e->ejected = 1;
  e->slow_ej = slow;
  e->await_pass = e->passed_ej = 0;
  e->ejected_until_us = now + dur;
  e->ofails = e->oslow = 0;
  e->ejections++;
  h->ctr.ejections++;
  push_ev(q, e, slow ? DSYS_HEALTH_EV_EJECTED_SLOW : DSYS_HEALTH_EV_EJECTED);
  /* check it soon rather than at the next healthy interval */
  if (h->probe && h->down_us < h->interval_us && e->check_timer) {
    cancel_timer(h, e, &e->check_timer);
    schedule_check(h, e, h->down_us + jitter(h));
  }
}

int dsys_health_observe(dsys_health *h, const char *id, int outcome) {
  if (!h || !id) return DSYS_EINVAL;
  evq q = {0};
  int rc = 0;
  pthread_mutex_lock(&h->mu);
  hep *e = find(h, id, NULL);
  if (!e) {
    rc = DSYS_ENOTFOUND;
  } else if (!h->outlier_off) {
    switch (outcome) {
    case DSYS_OUTCOME_OK:
    case DSYS_OUTCOME_CLIENT_ERROR:
      e->ofails = e->oslow = 0;
      break;
    case DSYS_OUTCOME_NOT_SENT:
      eject(h, e, &q, 0, 0);
      break;
    case DSYS_OUTCOME_TIMEOUT:
      if (h->oslow_max && ++e->oslow >= h->oslow_max) {
        eject(h, e, &q, 1, 0);
        break;
      }
      /* fall through */
    case DSYS_OUTCOME_RESET:
    case DSYS_OUTCOME_PROTOCOL:
    case DSYS_OUTCOME_SERVER_ERROR:
      if (++e->ofails >= h->ofail_max) eject(h, e, &q, 0, 1);
      break;
    default:
      break;
    }
  }
  pthread_mutex_unlock(&h->mu);
  fire(h, &q);
  return rc;
}

int dsys_health_observe_slow(dsys_health *h, const char *id) {
  if (!h || !id) return DSYS_EINVAL;
  evq q = {0};
  pthread_mutex_lock(&h->mu);
  hep *e = find(h, id, NULL);
  if (e && !h->outlier_off && h->oslow_max && ++e->oslow >= h->oslow_max) eject(h, e, &q, 1, 0);
  pthread_mutex_unlock(&h->mu);
  fire(h, &q);
  return e ? 0 : DSYS_ENOTFOUND;
}

int dsys_health_usable(dsys_health *h, const char *id) {
  if (!h || !id) return 0;
  pthread_mutex_lock(&h->mu);
  hep *e = find(h, id, NULL);
  int u = e && usable(e);
  pthread_mutex_unlock(&h->mu);
  return u;
}

int dsys_health_info_get(dsys_health *h, const char *id, dsys_health_info *out) {
  if (!h || !id || !out) return DSYS_EINVAL;
  pthread_mutex_lock(&h->mu);
  hep *e = find(h, id, NULL);
  if (e) {
    memset(out, 0, sizeof *out);
    out->state = e->state;
    out->ejected = e->ejected;
    out->usable = usable(e);
    out->consecutive_passes = e->passes;
    out->consecutive_fails = e->fails;
    out->outlier_failures = e->ofails;
    out->ejection_count = e->ejcount;
    out->checks = e->checks;
    out->checks_failed = e->checks_failed;
    out->ejections = e->ejections;
    out->ejected_until_ms = e->ejected ? e->ejected_until_us / 1000 : 0;
  }
  pthread_mutex_unlock(&h->mu);
  return e ? 0 : DSYS_ENOTFOUND;
}

int dsys_health_counters_get(dsys_health *h, dsys_health_counters *out) {
  if (!h || !out) return DSYS_EINVAL;
  pthread_mutex_lock(&h->mu);
  *out = h->ctr;
  pthread_mutex_unlock(&h->mu);
  return 0;
}
