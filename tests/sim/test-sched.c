/* The simulation's scheduler (tools/sim/sched.c) keeps pthread handles
 * apart: a thread that ended but is not yet joined keeps its pthread_t, so
 * pthread_join of it returns its own result at once, never waits for a
 * newer thread that glibc gave the same handle. (The scheduler used to
 * release an ended thread's descriptor itself: seed 17 at 20 steps then
 * joined a finished client's handle, reused by a gateway thread, and the
 * main thread waited 270 s of virtual time for the gateway's crash.)
 * Every wait here is bounded in virtual time; the old scheduler fails the
 * checks, it does not hang. Speaks TAP. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include "sim.h"
#include "tap.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int go;

static void *quick(void *arg) { return arg; }

/* Waits for go, at most 1 s of virtual time, then returns arg. */
static void *waiter(void *arg) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 1;
  pthread_mutex_lock(&mu);
  while (!go)
    if (pthread_cond_timedwait(&cv, &mu, &ts)) break;
  pthread_mutex_unlock(&mu);
  return arg;
}

int main(void) {
  sim_options so = {.seed = 1};
  sim_start(&so);

  /* A ends and is gone (the scheduler saw it end) before B starts. */
  pthread_t a, b;
  if (pthread_create(&a, NULL, quick, (void *)1)) tap_bail("pthread_create");
  usleep(10000);
  if (pthread_create(&b, NULL, waiter, (void *)2)) tap_bail("pthread_create");
  tap_diag("handles %s", pthread_equal(a, b) ? "equal (wrong)" : "distinct");
  ok(!pthread_equal(a, b), "a thread ended but not joined keeps its handle: a new thread gets another");
  int64_t t0 = sim_now_ns();
  void *ra = NULL;
  is_int(pthread_join(a, &ra), 0, "join the ended thread");
  is_int((intptr_t)ra, 1, "... returns its own result, not the newer thread's");
  ok(sim_now_ns() - t0 < 500000000, "... at once, without waiting for the newer thread (%.3f s)",
     (sim_now_ns() - t0) / 1e9);
  pthread_mutex_lock(&mu);
  go = 1;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
  void *rb = NULL;
  is_int(pthread_join(b, &rb), 0, "join the newer thread");
  is_int((intptr_t)rb, 2, "... returns its result");
  is_int(pthread_join(a, NULL), ESRCH, "a joined handle is unknown");

  /* Detached threads (by attribute, or after they ended) release their
   * handles: new threads may reuse them, and a join then finds the new one. */
  pthread_attr_t at;
  pthread_attr_init(&at);
  pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
  pthread_t c, d, e;
  if (pthread_create(&c, &at, quick, (void *)3)) tap_bail("pthread_create");
  pthread_attr_destroy(&at);
  if (pthread_create(&d, NULL, quick, (void *)4)) tap_bail("pthread_create");
  usleep(10000);
  is_int(pthread_detach(d), 0, "detach an ended thread");
  is_int(pthread_join(c, NULL), ESRCH, "a thread created detached cannot be joined");
  if (pthread_create(&e, NULL, quick, (void *)5)) tap_bail("pthread_create");
  void *re = NULL;
  is_int(pthread_join(e, &re), 0, "a thread created after them joins");
  is_int((intptr_t)re, 5, "... with its own result");
  sim_finishing();
  return tap_done();
}
