/* Circuit breaker: count/time sliding windows, N-in-T rule, half-open trials. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/breaker.h>
#include "core/internal.h"
#include "resilience/shared_cause.h"

#define OUT_FAIL 1
#define OUT_SLOW 2

typedef struct tbucket {
  int64_t sec; /* which second this bucket holds */
  uint32_t calls, failures, slow;
} tbucket;

/* The lock-free fast path (the common case of a proxy: a closed breaker
 * and calls that succeed) reads one word that the locked code republishes
 * after every change: generation, state and whether the window is
 * "quiet". Quiet: a full count window with no failure and no slow call;
 * recording a fast success there changes nothing but the calls counter
 * (the ring holds only clean entries, so which one a new clean entry
 * replaces does not matter). The loops of a gateway call acquire and
 * record for every request: no mutex, and no shared line written but a
 * counter. */
#define SNAP_STATE 7u
#define SNAP_QUIET 8u
#define SNAP_GEN_SHIFT 4

struct dsys_breaker {
  /* 64 bytes apart: never on one cache line (calloc does not align to
   * 64, so no _Alignas) */
  _Atomic uint64_t snap; /* gen << SNAP_GEN_SHIFT | quiet | state: read-mostly */
  char pad1_[64];
  atomic_uint_fast64_t fast_calls; /* successes recorded lock-free */
  char pad2_[64];
  pthread_mutex_t mu;
  dsys_clock *clk;
  char *name;
  int window_type;
  uint32_t wsize, min_calls, fail_pct, slow_pct, n_fail, half_calls;
  int64_t slow_us, n_window_us, open_wait_us;
  dsys_breaker_event_fn on_event;
  void *event_ud;
  dsysi_breaker_shared_fn shared; /* see shared_cause.h */
  void *shared_ud;
  int in_shared; /* it last stayed closed for a shared cause, no success since */

  dsys_breaker_state state;
  uint64_t gen; /* bumped on every transition; permits carry it */
  int64_t open_until_us;
  /* count window */
  uint8_t *ring;
  uint32_t ring_pos, ring_len;
  /* time window */
  tbucket *tb;
  int64_t tb_head_sec; /* newest second seen */
  /* window totals (either kind) */
  uint32_t w_calls, w_fail, w_slow;
  /* N failures in T */
  int64_t *fail_ts;
  uint32_t fail_pos, fail_len;
  /* half-open trial */
  uint32_t ho_issued, ho_done, ho_fail, ho_slow;
  dsys_breaker_stats st;
};

typedef struct pending_ev {
  int fire;
  dsys_breaker_state from, to;
} pending_ev;

const char *dsys_breaker_state_name(dsys_breaker_state s) {
  switch (s) {
  case DSYS_BREAKER_CLOSED: return "closed";
  case DSYS_BREAKER_OPEN: return "open";
  case DSYS_BREAKER_HALF_OPEN: return "half-open";
  case DSYS_BREAKER_FORCED_OPEN: return "forced-open";
  case DSYS_BREAKER_DISABLED: return "disabled";
  }
  return "unknown";
}

static void window_clear(dsys_breaker *b) {
  if (b->ring) memset(b->ring, 0, b->wsize);
  if (b->tb) memset(b->tb, 0, b->wsize * sizeof *b->tb);
  b->ring_pos = b->ring_len = 0;
  b->tb_head_sec = 0;
  b->w_calls = b->w_fail = b->w_slow = 0;
  b->fail_pos = b->fail_len = 0;
}

/* Must hold mu: publish state, generation and quietness for the fast
 * paths. */
static void publish(dsys_breaker *b) {
  int quiet = b->state == DSYS_BREAKER_CLOSED && b->window_type == DSYS_BREAKER_WINDOW_COUNT &&
              b->ring_len == b->wsize && b->w_fail == 0 && b->w_slow == 0;
  atomic_store_explicit(&b->snap,
                        b->gen << SNAP_GEN_SHIFT | (quiet ? SNAP_QUIET : 0) | (uint64_t)b->state,
                        memory_order_release);
}

/* Must hold mu. Records the event for firing after unlock. */
static void transition(dsys_breaker *b, dsys_breaker_state to, int64_t now,
                       pending_ev *ev) {
  dsys_breaker_state from = b->state;
  if (from == to) return;
  b->state = to;
  b->gen++;
  b->st.transitions++;
  b->ho_issued = b->ho_done = b->ho_fail = b->ho_slow = 0;
  if (to == DSYS_BREAKER_OPEN) b->open_until_us = now + b->open_wait_us;
  if (to == DSYS_BREAKER_CLOSED || to == DSYS_BREAKER_DISABLED) window_clear(b);
  if (ev->fire) { /* never happens: one transition per call */
    ev->to = to;
    return;
  }
  ev->fire = 1;
  ev->from = from;
  ev->to = to;
}


/* Must hold mu (released meanwhile while shared is asked). The failures
 * say open: unless their cause is shared with the breaker's peers. Then
 * none of them is this endpoint's own: the window starts afresh, a trial
 * closes the breaker, and the failures until its next success belong to
 * the same episode (dsys_breaker_record forgets them then: else the
 * instance that reconnects last after the cause is gone would open with
 * them and a stray failure of its own). */
static void trip(dsys_breaker *b, int64_t now, pending_ev *ev) {
  if (b->shared) {
    uint64_t gen = b->gen;
    pthread_mutex_unlock(&b->mu);
    int shared = b->shared(b->shared_ud, b->name);
    pthread_mutex_lock(&b->mu);
    if (b->gen != gen) return; /* another call moved it meanwhile */
    if (shared) {
      if (b->state == DSYS_BREAKER_HALF_OPEN) transition(b, DSYS_BREAKER_CLOSED, now, ev);
      else window_clear(b);
      b->in_shared = 1;
      return;
    }
  }
  transition(b, DSYS_BREAKER_OPEN, now, ev);
}

void dsysi_breaker_set_shared(dsys_breaker *b, dsysi_breaker_shared_fn fn, void *ud) {
  pthread_mutex_lock(&b->mu);
  b->shared = fn;
  b->shared_ud = ud;
  pthread_mutex_unlock(&b->mu);
}

static void fire(dsys_breaker *b, const pending_ev *ev) {
  if (ev->fire && ev->from != ev->to && b->on_event)
    b->on_event(b->event_ud, b->name, ev->from, ev->to);
}

/* Time window: bring buckets up to the current second. */
static void tb_advance(dsys_breaker *b, int64_t now_us) {
  int64_t sec = now_us / 1000000;
  if (b->tb_head_sec == 0) {
    b->tb_head_sec = sec;
    return;
  }
  if (sec <= b->tb_head_sec) return;
  int64_t gap = sec - b->tb_head_sec;
  if (gap >= (int64_t)b->wsize) {
    memset(b->tb, 0, b->wsize * sizeof *b->tb);
    b->w_calls = b->w_fail = b->w_slow = 0;
  } else {
    for (int64_t s = b->tb_head_sec + 1; s <= sec; s++) {
      tbucket *t = &b->tb[s % b->wsize];
      b->w_calls -= t->calls;
      b->w_fail -= t->failures;
      b->w_slow -= t->slow;
      memset(t, 0, sizeof *t);
    }
  }
  b->tb_head_sec = sec;
}

static void maybe_half_open(dsys_breaker *b, int64_t now, pending_ev *ev) {
  if (b->state == DSYS_BREAKER_OPEN && now >= b->open_until_us)
    transition(b, DSYS_BREAKER_HALF_OPEN, now, ev);
}

int dsys_breaker_new(dsys_breaker **out, const dsys_breaker_options *o) {
  if (!out) return DSYS_EINVAL;
  dsys_breaker_options d = {0};
  if (o) {
    size_t n = o->size && o->size < sizeof d ? o->size : sizeof d;
    memcpy(&d, o, n);
  }
  if (d.window_type != DSYS_BREAKER_WINDOW_COUNT &&
      d.window_type != DSYS_BREAKER_WINDOW_TIME)
    return DSYS_EINVAL;
  if (d.failure_rate_pct > 100 || d.slow_rate_pct > 100 ||
      d.window_size > 100000 || d.failures_n > 100000 ||
      d.slow_call_us < 0 || d.failures_window_ms < 0 || d.open_wait_ms < 0)
    return DSYS_EINVAL;
  dsys_breaker *b = calloc(1, sizeof *b);
  if (!b) return DSYS_ENOMEM;
  b->clk = d.clock ? d.clock : dsys_clock_real();
  b->name = strdup(d.name ? d.name : "");
  b->window_type = d.window_type;
  b->wsize = d.window_size ? d.window_size
                           : (d.window_type == DSYS_BREAKER_WINDOW_COUNT ? 100 : 60);
  b->min_calls = d.minimum_calls ? d.minimum_calls : 10;
  b->fail_pct = d.failure_rate_pct ? d.failure_rate_pct : 50;
  b->slow_pct = d.slow_rate_pct ? d.slow_rate_pct : 100;
  b->slow_us = d.slow_call_us ? d.slow_call_us : 60 * 1000000LL;
  b->n_fail = d.failures_n;
  b->n_window_us = (d.failures_window_ms ? d.failures_window_ms : 60000) * 1000;
  b->open_wait_us = (d.open_wait_ms ? d.open_wait_ms : 30000) * 1000;
  b->half_calls = d.half_open_calls ? d.half_open_calls : 5;
  b->on_event = d.on_event;
  b->event_ud = d.event_ud;
  b->gen = 1;
  if (b->window_type == DSYS_BREAKER_WINDOW_COUNT)
    b->ring = calloc(b->wsize, 1);
  else
    b->tb = calloc(b->wsize, sizeof *b->tb);
  if (b->n_fail) b->fail_ts = calloc(b->n_fail, sizeof *b->fail_ts);
  if (!b->name || (!b->ring && !b->tb) || (b->n_fail && !b->fail_ts)) {
    dsys_breaker_free(b);
    return DSYS_ENOMEM;
  }
  pthread_mutex_init(&b->mu, NULL);
  publish(b);
  *out = b;
  return 0;
}

void dsys_breaker_free(dsys_breaker *b) {
  if (!b) return;
  if (b->name && (b->ring || b->tb)) pthread_mutex_destroy(&b->mu);
  free(b->ring);
  free(b->tb);
  free(b->fail_ts);
  free(b->name);
  free(b);
}

int dsys_breaker_acquire(dsys_breaker *b, dsys_breaker_permit *permit) {
  if (!b) return DSYS_EINVAL;
  /* Closed or disabled: nothing to count or decide. */
  uint64_t snap = atomic_load_explicit(&b->snap, memory_order_acquire);
  unsigned st = (unsigned)(snap & SNAP_STATE);
  if (st == DSYS_BREAKER_CLOSED || st == DSYS_BREAKER_DISABLED) {
    if (permit) *permit = snap >> SNAP_GEN_SHIFT;
    return 0;
  }
  pending_ev ev = {0};
  int rc = 0;
  pthread_mutex_lock(&b->mu);
  switch (b->state) {
  case DSYS_BREAKER_CLOSED:
  case DSYS_BREAKER_DISABLED:
    break;
  case DSYS_BREAKER_FORCED_OPEN:
    rc = DSYS_EBREAKER;
    break;
  case DSYS_BREAKER_OPEN: {
    int64_t now = dsys_clock_now_us(b->clk);
    maybe_half_open(b, now, &ev);
    if (b->state == DSYS_BREAKER_OPEN) {
      rc = DSYS_EBREAKER;
      break;
    }
  } /* fallthrough */
  case DSYS_BREAKER_HALF_OPEN:
    if (b->ho_issued >= b->half_calls)
      rc = DSYS_EBREAKER;
    else
      b->ho_issued++;
    break;
  }
  if (rc) b->st.rejected++;
  if (permit) *permit = rc ? 0 : b->gen;
  publish(b);
  pthread_mutex_unlock(&b->mu);
  fire(b, &ev);
  return rc;
}

/* Closed-state bookkeeping; returns 1 when the breaker should trip. */
static int record_closed(dsys_breaker *b, int fail, int slow, int64_t now) {
  if (b->window_type == DSYS_BREAKER_WINDOW_COUNT) {
    if (b->ring_len == b->wsize) {
      uint8_t old = b->ring[b->ring_pos];
      b->w_calls--;
      if (old & OUT_FAIL) b->w_fail--;
      if (old & OUT_SLOW) b->w_slow--;
    } else {
      b->ring_len++;
    }
    b->ring[b->ring_pos] = (uint8_t)((fail ? OUT_FAIL : 0) | (slow ? OUT_SLOW : 0));
    b->ring_pos = (b->ring_pos + 1) % b->wsize;
  } else {
    tb_advance(b, now);
    tbucket *t = &b->tb[(now / 1000000) % b->wsize];
    t->calls++;
    if (fail) t->failures++;
    if (slow) t->slow++;
  }
  b->w_calls++;
  if (fail) b->w_fail++;
  if (slow) b->w_slow++;
  int trip = 0;
  if (fail && b->n_fail) {
    b->fail_ts[b->fail_pos] = now;
    b->fail_pos = (b->fail_pos + 1) % b->n_fail;
    if (b->fail_len < b->n_fail) b->fail_len++;
    /* the oldest of the last N failures is at fail_pos once the ring is full */
    if (b->fail_len == b->n_fail && now - b->fail_ts[b->fail_pos] <= b->n_window_us)
      trip = 1;
  }
  uint32_t min = b->min_calls;
  if (b->window_type == DSYS_BREAKER_WINDOW_COUNT && min > b->wsize) min = b->wsize;
  if (b->w_calls >= min) {
    if ((uint64_t)b->w_fail * 100 >= (uint64_t)b->fail_pct * b->w_calls) trip = 1;
    if ((uint64_t)b->w_slow * 100 >= (uint64_t)b->slow_pct * b->w_calls) trip = 1;
  }
  return trip;
}

int dsys_breaker_record(dsys_breaker *b, dsys_breaker_permit permit, int result,
                        int64_t duration_us) {
  if (!b || result < DSYS_BREAKER_SUCCESS || result > DSYS_BREAKER_IGNORED)
    return DSYS_EINVAL;
  if (result == DSYS_BREAKER_SUCCESS && duration_us < b->slow_us) {
    uint64_t snap = atomic_load_explicit(&b->snap, memory_order_acquire);
    if ((snap & SNAP_QUIET) && (permit == 0 || permit == snap >> SNAP_GEN_SHIFT)) {
      atomic_fetch_add_explicit(&b->fast_calls, 1, memory_order_relaxed);
      return 0;
    }
  }
  pending_ev ev = {0};
  pthread_mutex_lock(&b->mu);
  int stale = permit != 0 && permit != b->gen;
  if (b->state == DSYS_BREAKER_DISABLED || stale ||
      (permit == 0 && b->state != DSYS_BREAKER_CLOSED)) {
    pthread_mutex_unlock(&b->mu);
    return 0;
  }
  if (result == DSYS_BREAKER_IGNORED) {
    if (b->state == DSYS_BREAKER_HALF_OPEN && b->ho_issued > b->ho_done)
      b->ho_issued--; /* give the trial slot back */
    pthread_mutex_unlock(&b->mu);
    return 0;
  }
  int fail = result == DSYS_BREAKER_FAILURE;
  int slow = duration_us >= b->slow_us;
  b->st.calls++;
  if (fail) b->st.failures++;
  if (slow) b->st.slow_calls++;
  int64_t now = dsys_clock_now_us(b->clk);
  if (b->state == DSYS_BREAKER_CLOSED) {
    if (b->in_shared && !fail) { /* the shared episode is over for it */
      b->in_shared = 0;
      window_clear(b);
    }
    if (record_closed(b, fail, slow, now)) trip(b, now, &ev);
  } else if (b->state == DSYS_BREAKER_HALF_OPEN) {
    b->ho_done++;
    if (fail) b->ho_fail++;
    if (slow) b->ho_slow++;
    if (b->ho_done >= b->half_calls) {
      int bad = (uint64_t)b->ho_fail * 100 >= (uint64_t)b->fail_pct * b->ho_done ||
                (uint64_t)b->ho_slow * 100 >= (uint64_t)b->slow_pct * b->ho_done;
      if (bad) trip(b, now, &ev);
      else transition(b, DSYS_BREAKER_CLOSED, now, &ev);
    }
  }
  publish(b);
  pthread_mutex_unlock(&b->mu);
  fire(b, &ev);
  return 0;
}

dsys_breaker_state dsys_breaker_state_get(dsys_breaker *b) {
  if (!b) return DSYS_BREAKER_CLOSED;
  pending_ev ev = {0};
  pthread_mutex_lock(&b->mu);
  if (b->state == DSYS_BREAKER_OPEN)
    maybe_half_open(b, dsys_clock_now_us(b->clk), &ev);
  dsys_breaker_state s = b->state;
  publish(b);
  pthread_mutex_unlock(&b->mu);
  fire(b, &ev);
  return s;
}

int dsys_breaker_set_state(dsys_breaker *b, dsys_breaker_state s) {
  if (!b || s < DSYS_BREAKER_CLOSED || s > DSYS_BREAKER_DISABLED) return DSYS_EINVAL;
  pending_ev ev = {0};
  pthread_mutex_lock(&b->mu);
  int64_t now = dsys_clock_now_us(b->clk);
  if (s == DSYS_BREAKER_CLOSED && b->state == DSYS_BREAKER_CLOSED) window_clear(b);
  transition(b, s, now, &ev);
  publish(b);
  pthread_mutex_unlock(&b->mu);
  fire(b, &ev);
  return 0;
}

int dsys_breaker_stats_get(dsys_breaker *b, dsys_breaker_stats *out) {
  if (!b || !out) return DSYS_EINVAL;
  pthread_mutex_lock(&b->mu);
  if (b->window_type == DSYS_BREAKER_WINDOW_TIME && b->state == DSYS_BREAKER_CLOSED)
    tb_advance(b, dsys_clock_now_us(b->clk));
  *out = b->st;
  out->calls += atomic_load_explicit(&b->fast_calls, memory_order_relaxed);
  out->state = b->state;
  out->window_calls = b->w_calls;
  out->window_failures = b->w_fail;
  out->window_slow = b->w_slow;
  pthread_mutex_unlock(&b->mu);
  return 0;
}
