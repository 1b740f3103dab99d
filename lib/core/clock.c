/*
 * Real and fake clocks, and the timers they run.
 * Timers live in a binary min-heap ordered by (deadline, sequence) so that
 * timers with equal deadlines run in the order they were added.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <distsys/clock.h>
#include "core/clock_hook.h"
#include "core/internal.h"

const dsysi_timer_hook *dsysi_timer_hook_ptr;

typedef struct timer_ent {
  int64_t deadline;
  uint64_t seq;
  uint64_t id;
  dsys_timer_fn fn;
  void *ud;
  int tag; /* the timer hook's tag (simulation only) */
} timer_ent;

struct dsys_clock {
  int fake;
  int offset;             /* a real clock with a wall offset: timers on g_real */
  int64_t wall_offset_ms; /* added to the real wall time (offset clocks) */
  pthread_mutex_t mu;
  pthread_cond_t cv;  /* wakes the timer thread (real clock) */
  int64_t fake_mono_us;
  int64_t fake_wall_base_ms;
  timer_ent *heap;
  size_t n, cap;
  uint64_t next_seq;
  int thread_started;
  pthread_t thread;
};

static dsys_clock g_real = {.fake = 0,
                            .mu = PTHREAD_MUTEX_INITIALIZER,
                            .next_seq = 1};
static pthread_once_t g_real_once = PTHREAD_ONCE_INIT;

static void real_init(void) {
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&g_real.cv, &a);
  pthread_condattr_destroy(&a);
}

dsys_clock *dsys_clock_real(void) {
  pthread_once(&g_real_once, real_init);
  return &g_real;
}

int dsys_clock_fake_new(dsys_clock **out, int64_t start_wall_ms) {
  if (!out) return DSYS_EINVAL;
  dsys_clock *c = calloc(1, sizeof *c);
  if (!c) return DSYS_ENOMEM;
  c->fake = 1;
  c->next_seq = 1;
  c->fake_mono_us = 1000000; /* nonzero so "0 means unset" stays usable */
  c->fake_wall_base_ms = start_wall_ms;
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  *out = c;
  return 0;
}

int dsysi_clock_offset_new(dsys_clock **out, int64_t wall_offset_ms) {
  if (!out) return DSYS_EINVAL;
  dsys_clock *c = calloc(1, sizeof *c);
  if (!c) return DSYS_ENOMEM;
  c->offset = 1;
  c->wall_offset_ms = wall_offset_ms;
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  *out = c;
  return 0;
}

void dsys_clock_free(dsys_clock *clk) {
  if (!clk || clk == &g_real) return;
  pthread_mutex_destroy(&clk->mu);
  pthread_cond_destroy(&clk->cv);
  free(clk->heap);
  free(clk);
}

int dsys_clock_is_fake(dsys_clock *clk) { return clk && clk->fake; }

int64_t dsys_clock_now_us(dsys_clock *clk) {
  if (clk && clk->fake) {
    pthread_mutex_lock(&clk->mu);
    int64_t v = clk->fake_mono_us;
    pthread_mutex_unlock(&clk->mu);
    return v;
  }
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t dsys_clock_now_ms(dsys_clock *clk) {
  return dsys_clock_now_us(clk) / 1000;
}

int64_t dsys_clock_wall_ms(dsys_clock *clk) {
  if (clk && clk->fake) {
    pthread_mutex_lock(&clk->mu);
    int64_t v = clk->fake_wall_base_ms + (clk->fake_mono_us - 1000000) / 1000;
    pthread_mutex_unlock(&clk->mu);
    return v;
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + (clk ? clk->wall_offset_ms : 0);
}

void dsys_time_iso8601(int64_t wall_ms, char *buf, size_t buflen) {
  if (!buf || buflen == 0) return;
  time_t secs = (time_t)(wall_ms / 1000);
  int ms = (int)(wall_ms % 1000);
  if (ms < 0) {
    ms += 1000;
    secs -= 1;
  }
  struct tm tm;
  gmtime_r(&secs, &tm);
  char tmp[32];
  size_t n = strftime(tmp, sizeof tmp, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf, buflen, "%.*s.%03dZ", (int)n, tmp, ms);
}

/* ---- heap ---- */

static int ent_less(const timer_ent *a, const timer_ent *b) {
  return a->deadline < b->deadline ||
         (a->deadline == b->deadline && a->seq < b->seq);
}

static void heap_swap(timer_ent *h, size_t i, size_t j) {
  timer_ent t = h[i];
  h[i] = h[j];
  h[j] = t;
}

static void heap_up(timer_ent *h, size_t i) {
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!ent_less(&h[i], &h[p])) break;
    heap_swap(h, i, p);
    i = p;
  }
}

static void heap_down(timer_ent *h, size_t n, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && ent_less(&h[l], &h[m])) m = l;
    if (r < n && ent_less(&h[r], &h[m])) m = r;
    if (m == i) break;
    heap_swap(h, i, m);
    i = m;
  }
}

static void heap_remove_at(dsys_clock *c, size_t i) {
  c->n--;
  if (i == c->n) return;
  c->heap[i] = c->heap[c->n];
  heap_down(c->heap, c->n, i);
  heap_up(c->heap, i);
}

/* Run a timer's callback, under the timer hook when there is one. */
static void run_timer(const timer_ent *e) {
  const dsysi_timer_hook *h = dsysi_timer_hook_ptr;
  if (__builtin_expect(h != NULL, 0)) {
    int prev = h->enter(e->tag);
    e->fn(e->ud);
    h->enter(prev);
    return;
  }
  e->fn(e->ud);
}

/* Real clock: one thread runs due timers. */
static void *timer_thread(void *arg) {
  dsys_clock *c = arg;
  pthread_mutex_lock(&c->mu);
  for (;;) {
    if (c->n == 0) {
      pthread_cond_wait(&c->cv, &c->mu);
      continue;
    }
    int64_t now = dsys_clock_now_us(c);
    if (c->heap[0].deadline > now) {
      int64_t d = c->heap[0].deadline;
      struct timespec ts = {.tv_sec = d / 1000000,
                            .tv_nsec = (long)(d % 1000000) * 1000};
      pthread_cond_timedwait(&c->cv, &c->mu, &ts);
      continue;
    }
    timer_ent e = c->heap[0];
    heap_remove_at(c, 0);
    pthread_mutex_unlock(&c->mu);
    run_timer(&e);
    pthread_mutex_lock(&c->mu);
  }
  return NULL;
}

static uint64_t next_timer_id(void) {
  static _Atomic uint64_t ids = 1;
  return ids++;
}

int dsys_timer_add(dsys_clock *clk, int64_t delay_us, dsys_timer_fn fn,
                   void *ud, uint64_t *id) {
  if (!clk || !fn) return DSYS_EINVAL;
  if (delay_us < 0) delay_us = 0;
  if (clk->offset) clk = dsys_clock_real(); /* same monotonic time */
  pthread_mutex_lock(&clk->mu);
  if (!clk->fake && !clk->thread_started) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&clk->thread, &attr, timer_thread, clk);
    pthread_attr_destroy(&attr);
    if (rc) {
      pthread_mutex_unlock(&clk->mu);
      return DSYS_ENOMEM;
    }
    clk->thread_started = 1;
  }
  if (dsysi_grow(&clk->heap, &clk->cap, clk->n + 1, sizeof *clk->heap, 16)) {
    pthread_mutex_unlock(&clk->mu);
    return DSYS_ENOMEM;
  }
  int64_t now = clk->fake ? clk->fake_mono_us : dsys_clock_now_us(clk);
  timer_ent e = {.deadline = now + delay_us,
                 .seq = clk->next_seq++,
                 .id = next_timer_id(),
                 .fn = fn,
                 .ud = ud,
                 .tag = dsysi_timer_hook_ptr ? dsysi_timer_hook_ptr->tag() : 0};
  clk->heap[clk->n] = e;
  heap_up(clk->heap, clk->n++);
  if (id) *id = e.id;
  if (!clk->fake) pthread_cond_signal(&clk->cv);
  pthread_mutex_unlock(&clk->mu);
  return 0;
}

int dsys_timer_cancel(dsys_clock *clk, uint64_t id) {
  if (!clk || !id) return DSYS_ENOTFOUND;
  if (clk->offset) clk = dsys_clock_real();
  int rc = DSYS_ENOTFOUND;
  pthread_mutex_lock(&clk->mu);
  for (size_t i = 0; i < clk->n; i++)
    if (clk->heap[i].id == id) {
      heap_remove_at(clk, i);
      rc = 0;
      break;
    }
  pthread_mutex_unlock(&clk->mu);
  return rc;
}

int dsys_clock_advance(dsys_clock *clk, int64_t delta_us) {
  if (!clk || !clk->fake || delta_us < 0) return DSYS_EINVAL;
  pthread_mutex_lock(&clk->mu);
  int64_t target = clk->fake_mono_us + delta_us;
  while (clk->n > 0 && clk->heap[0].deadline <= target) {
    timer_ent e = clk->heap[0];
    heap_remove_at(clk, 0);
    if (e.deadline > clk->fake_mono_us) clk->fake_mono_us = e.deadline;
    pthread_mutex_unlock(&clk->mu);
    run_timer(&e);
    pthread_mutex_lock(&clk->mu);
  }
  clk->fake_mono_us = target;
  pthread_mutex_unlock(&clk->mu);
  return 0;
}

void dsys_clock_sleep_us(dsys_clock *clk, int64_t delay_us) {
  if (delay_us <= 0) return;
  if (clk && clk->fake) {
    dsys_clock_advance(clk, delay_us);
    return;
  }
  struct timespec ts = {.tv_sec = delay_us / 1000000,
                        .tv_nsec = (long)(delay_us % 1000000) * 1000};
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}
