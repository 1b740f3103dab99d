/* The registry's periodic sweep on the real clock must never hold up the
 * clock's timer thread. A remote backend's network call (a heartbeat to a
 * registry daemon) runs under the handle's lock and ends by a timeout that
 * is itself a timer (inproc://); a sweep that waited for that lock on the
 * timer thread stopped every timer of the process for good (found by the
 * simulation, docs/reference/simulation.md). The backend here stands for
 * such a remote one: its heartbeat returns when a timer on the real clock
 * fires. Every wait is bounded: the old code fails here, it does not hang. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <distsys/distsys.h>
#include "tap.h"

#define BOUND_MS 5000 /* every wait of this test */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static uint64_t other_index;   /* changes "another process" made */
static int in_callback, hb_entered, timer_fired, callbacks;
static int expire_block, expire_entered, expire_done, expire_release;

static int64_t mono_ms(void) { return dsys_clock_now_ms(dsys_clock_real()); }

/* Hold mu. Wait until *flag or BOUND_MS; @return *flag. */
static int wait_flag(int *flag) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += BOUND_MS / 1000;
  while (!*flag)
    if (pthread_cond_timedwait(&cv, &mu, &ts)) break;
  return *flag;
}

static void set_flag(int *flag) {
  pthread_mutex_lock(&mu);
  *flag = 1;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
}

/* ---- a backend with one instance "x" ---- */

static int b_open(void *st, const char *t, char *e, size_t el) {
  (void)st, (void)t, (void)e, (void)el;
  return 0;
}
static void b_close(void *st) { (void)st; }
static int b_put(void *st, const dsys_instance *in, int64_t now) {
  (void)st, (void)in, (void)now;
  return 0;
}
static void on_timeout_timer(void *ud) {
  (void)ud;
  set_flag(&timer_fired);
}
/* A network call whose end is a timer on the real clock: 0 once it fired,
 * DSYS_ETIMEDOUT when it did not within BOUND_MS (the timer thread is held
 * up). */
static int b_heartbeat(void *st, const char *id, int64_t now) {
  (void)st, (void)id, (void)now;
  uint64_t t = 0;
  if (dsys_timer_add(dsys_clock_real(), 100 * 1000, on_timeout_timer, NULL, &t)) return DSYS_ENOMEM;
  set_flag(&hb_entered);
  pthread_mutex_lock(&mu);
  int fired = wait_flag(&timer_fired);
  pthread_mutex_unlock(&mu);
  if (!fired) dsys_timer_cancel(dsys_clock_real(), t);
  return fired ? 0 : DSYS_ETIMEDOUT;
}
static int b_remove(void *st, const char *id) {
  (void)st, (void)id;
  return 0;
}
static const dsys_instance inst_x = {.id = "x", .type = "t", .url = "inproc://x",
                                     .health = DSYS_INSTANCE_HEALTHY};
static int b_list(void *st, const char *type, dsys_instance **out, size_t *n) {
  (void)st, (void)type;
  *n = 1;
  return dsys_instances_copy(&inst_x, 1, out);
}
static int b_get(void *st, const char *id, dsys_instance **out) {
  (void)st;
  return strcmp(id, "x") ? DSYS_ENOTFOUND : dsys_instances_copy(&inst_x, 1, out);
}
/* The sweep's call: blocks while expire_block, until released (bounded). */
static int b_expire(void *st, int64_t unhealthy_before, int64_t reap_before) {
  (void)st, (void)unhealthy_before, (void)reap_before;
  pthread_mutex_lock(&mu);
  if (expire_block) {
    expire_entered = 1;
    pthread_cond_broadcast(&cv);
    wait_flag(&expire_release);
    expire_done = 1;
  }
  pthread_mutex_unlock(&mu);
  return 0;
}
static int b_index(void *st, uint64_t *out) {
  (void)st;
  pthread_mutex_lock(&mu);
  *out = other_index;
  pthread_mutex_unlock(&mu);
  return 0;
}
static int b_changes(void *st, uint64_t after, dsys_registry_change_fn fn, void *ctx) {
  (void)st;
  pthread_mutex_lock(&mu);
  uint64_t idx = other_index;
  pthread_mutex_unlock(&mu);
  if (idx > after) {
    dsys_registry_change c = {.index = idx, .kind = DSYS_REG_REGISTERED, .id = "x", .type = "t"};
    fn(ctx, &c);
  }
  return 0;
}

static const dsys_registry_ops ops = {
    .version = 1, .name = "slow-remote", .open = b_open, .close = b_close,
    .put = b_put, .heartbeat = b_heartbeat, .remove = b_remove, .get = b_get,
    .list = b_list, .expire = b_expire, .index = b_index, .changes = b_changes};

/* The sweep delivers another process's change to this watch. Its first
 * call lets the heartbeat start and returns once the heartbeat holds the
 * handle's lock: the sweep's delivery then waits for that lock. */
static void on_change(void *ud, const dsys_registry_change *c) {
  (void)ud, (void)c;
  pthread_mutex_lock(&mu);
  int first = callbacks++ == 0;
  if (first) {
    in_callback = 1;
    pthread_cond_broadcast(&cv);
    wait_flag(&hb_entered);
  }
  pthread_mutex_unlock(&mu);
}

static void *release_later(void *p) {
  (void)p;
  struct timespec d = {0, 200 * 1000000L};
  nanosleep(&d, NULL);
  set_flag(&expire_release);
  return NULL;
}

int main(void) {
  dsys_registry *r = NULL;
  dsys_registry_options o = {.size = sizeof o, .ttl_ms = 30000, .reap_ms = 300000,
                             .sweep_interval_ms = 20};
  char err[256];
  if (dsys_registry_open_ops(&r, &ops, NULL, &o, err, sizeof err))
    tap_bail("open: %s", err);
  ok(dsys_registry_watch(r, on_change, NULL, NULL) == 0, "watch");

  /* another process's change: the next sweep delivers it */
  pthread_mutex_lock(&mu);
  other_index = 1;
  int started = wait_flag(&in_callback);
  pthread_mutex_unlock(&mu);
  if (!ok(started, "a sweep delivers another process's change within %d ms", BOUND_MS))
    return tap_done();
  /* the sweep's delivery now needs the handle's lock, which the heartbeat
   * holds until its timer fires */
  int64_t t0 = mono_ms();
  int rc = dsys_registry_heartbeat(r, "x");
  int64_t took = mono_ms() - t0;
  is_int(rc, 0, "a heartbeat whose network call ends by a timer returns while a sweep waits "
                "for the handle (took %lld ms)", (long long)took);
  ok(took < BOUND_MS / 2, "... promptly: the timers kept running (%lld ms)", (long long)took);

  /* close while a sweep is inside the backend: close waits for it */
  pthread_mutex_lock(&mu);
  expire_block = 1;
  int entered = wait_flag(&expire_entered);
  pthread_mutex_unlock(&mu);
  ok(entered, "a later sweep runs (and blocks in the backend)");
  pthread_t rel;
  if (pthread_create(&rel, NULL, release_later, NULL)) tap_bail("pthread_create");
  t0 = mono_ms();
  dsys_registry_close(r);
  took = mono_ms() - t0;
  pthread_join(rel, NULL);
  pthread_mutex_lock(&mu);
  int done = expire_done;
  pthread_mutex_unlock(&mu);
  ok(done, "close returns only after the running sweep is done (%lld ms)", (long long)took);
  ok(took < BOUND_MS, "... within its bound");
  return tap_done();
}
