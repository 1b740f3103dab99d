/*
 * The group commit helper (lib/core/group.c) on its own, for the paths the
 * store's and the queue's tests do not pin down:
 *  1. concurrent groups: up to max_groups leaders run at once, no more; a
 *     chain split between groups run by other threads returns only when
 *     every op of it has run, each op with its own result;
 *  2. with one group at a time, the leader runs the next group itself;
 *  3. gathering: with three threads using the handle lately, a leader
 *     waits (no group started) until the others have queued their calls,
 *     then runs them as one group; alone, it gives up after one group's
 *     average time; it does not wait when groups are cheap (50 us).
 * Groups are held in run() until the test releases them (waits bounded).
 */
#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include "core/group.h"
#include "tap.h"

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct top {
  dsysi_group_op g;
  int in, out;
} top;

/* Every group run is recorded, and held until released (or hold is 0). */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int hold, released[32], sizes[32], first_in[32], ngroups;
static pthread_t runner[32];

static void t_run(void *ud, dsysi_group_op *first) {
  (void)ud;
  int n = 0;
  for (dsysi_group_op *o = first; o; o = o->next) n++;
  pthread_mutex_lock(&mu);
  int idx = ngroups < 32 ? ngroups++ : 31;
  sizes[idx] = n;
  first_in[idx] = ((top *)first)->in;
  runner[idx] = pthread_self();
  pthread_cond_broadcast(&cv);
  int64_t end = mono_ms() + 20000; /* bounded even if the test is wrong */
  while (hold && !released[idx] && mono_ms() < end) {
    pthread_mutex_unlock(&mu);
    usleep(1000);
    pthread_mutex_lock(&mu);
  }
  pthread_mutex_unlock(&mu);
  /* results after the hold: a caller that returned early sees none */
  for (dsysi_group_op *o = first; o; o = o->next) ((top *)o)->out = ((top *)o)->in * 2;
}

static void reset(int h) {
  pthread_mutex_lock(&mu);
  hold = h;
  ngroups = 0;
  memset(released, 0, sizeof released);
  pthread_mutex_unlock(&mu);
}

static void release(int idx) {
  pthread_mutex_lock(&mu);
  released[idx] = 1;
  pthread_mutex_unlock(&mu);
}

static int wait_groups(int n) {
  int64_t end = mono_ms() + 10000;
  pthread_mutex_lock(&mu);
  while (ngroups < n && mono_ms() < end) {
    pthread_mutex_unlock(&mu);
    usleep(1000);
    pthread_mutex_lock(&mu);
  }
  int r = ngroups;
  pthread_mutex_unlock(&mu);
  return r;
}

static dsysi_group tg;

typedef struct caller {
  top ops[8];
  int n, done;
  pthread_t th;
} caller;

static void *call(void *p) {
  caller *c = p;
  for (int i = 0; i + 1 < c->n; i++) c->ops[i].g.next = &c->ops[i + 1].g;
  dsysi_group_execute(&tg, &c->ops[0].g, &c->ops[c->n - 1].g);
  __atomic_store_n(&c->done, 1, __ATOMIC_RELEASE);
  return NULL;
}

static void start(caller *c, int n, int base) {
  c->n = n;
  c->done = 0;
  for (int i = 0; i < n; i++) c->ops[i] = (top){.in = base + i};
  pthread_create(&c->th, NULL, call, c);
}

static int right(const caller *c) {
  for (int i = 0; i < c->n; i++)
    if (c->ops[i].out != c->ops[i].in * 2) return 0;
  return 1;
}

static int wait_done(caller *c) {
  int64_t end = mono_ms() + 10000;
  while (!__atomic_load_n(&c->done, __ATOMIC_ACQUIRE) && mono_ms() < end) usleep(1000);
  return c->done;
}

static int running(void) {
  pthread_mutex_lock(&tg.mu);
  int r = tg.running;
  pthread_mutex_unlock(&tg.mu);
  return r;
}

/* ---- 1: concurrent groups, a chain split between them ---- */
static void test_concurrent(void) {
  dsysi_group_init(&tg, 2, 3, t_run, NULL);
  reset(1);
  caller a, b, c;
  start(&a, 5, 10); /* A leads {A1 A2}; A3-A5 pending */
  is_int(wait_groups(1), 1, "concurrent: A leads the first group");
  start(&b, 1, 20); /* B leads {A3 A4} */
  is_int(wait_groups(2), 2, "concurrent: B leads a second group at once");
  start(&c, 1, 30); /* C leads {A5 B1}; C1 pending: 3 groups run */
  is_int(wait_groups(3), 3, "concurrent: C leads a third");
  int64_t end = mono_ms() + 10000;
  while (dsysi_group_pending(&tg) < 1 && mono_ms() < end) usleep(1000);
  is_int(dsysi_group_pending(&tg), 1, "concurrent: C's op waits: max_groups running");
  is_int(running(), 3, "concurrent: 3 groups run at once");
  ok(sizes[0] == 2 && first_in[0] == 10 && sizes[1] == 2 && first_in[1] == 12 &&
         sizes[2] == 2 && first_in[2] == 14,
     "concurrent: A's chain split between the three groups, in order");
  ok(pthread_equal(runner[1], b.th) && pthread_equal(runner[2], c.th),
     "concurrent: ... run by B's and C's threads");
  release(0); /* A's count: 3 left; A leads {C1} */
  is_int(wait_groups(4), 4, "concurrent: a slot freed: the next group starts");
  release(2); /* A5 and B1 done; B's thread still runs {A3 A4} */
  usleep(20000);
  ok(!a.done, "concurrent: A does not return while A3, A4 run");
  release(1);
  ok(wait_done(&b), "concurrent: B returns once its group is done");
  release(3);
  ok(wait_done(&a) && wait_done(&c), "concurrent: A and C return");
  pthread_join(a.th, NULL);
  pthread_join(b.th, NULL);
  pthread_join(c.th, NULL);
  ok(right(&a) && right(&b) && right(&c), "concurrent: every op got its own result");
  is_int(dsysi_group_count(&tg), 4, "concurrent: 4 groups ran");
  dsysi_group_destroy(&tg);
}

/* ---- 2: the leader continues with the next group ---- */
static void test_continue(void) {
  dsysi_group_init(&tg, 256, 1, t_run, NULL);
  reset(1);
  caller l, p, q;
  start(&l, 1, 1);
  is_int(wait_groups(1), 1, "continue: L leads");
  start(&p, 1, 2);
  start(&q, 2, 3);
  int64_t end = mono_ms() + 10000;
  while (dsysi_group_pending(&tg) < 3 && mono_ms() < end) usleep(1000);
  is_int(dsysi_group_pending(&tg), 3, "continue: 3 ops of 2 callers queued behind");
  release(0);
  is_int(wait_groups(2), 2, "continue: a second group");
  ok(pthread_equal(runner[1], l.th) && sizes[1] == 3,
     "continue: run by L's thread, L's own call done, with all 3 ops");
  release(1);
  ok(wait_done(&l) && wait_done(&p) && wait_done(&q), "continue: all return");
  pthread_join(l.th, NULL);
  pthread_join(p.th, NULL);
  pthread_join(q.th, NULL);
  ok(right(&l) && right(&p) && right(&q), "continue: every op got its own result");
  dsysi_group_destroy(&tg);
}

/* ---- 3: gathering ---- */
static pthread_barrier_t bar;
static void *warm(void *p) {
  caller *c = p;
  call(c);
  pthread_barrier_wait(&bar); /* alive together: three distinct callers */
  return NULL;
}

static int gathering(void) {
  pthread_mutex_lock(&tg.mu);
  int r = tg.gathering;
  pthread_mutex_unlock(&tg.mu);
  return r;
}

static void test_gather(void) {
  dsysi_group_init(&tg, 3, 1, t_run, NULL); /* max_batch 3: want 3 */
  reset(0);
  caller w[3];
  pthread_barrier_init(&bar, NULL, 4);
  for (int i = 0; i < 3; i++) {
    w[i] = (caller){.n = 1, .ops = {{.in = 40 + i}}};
    pthread_create(&w[i].th, NULL, warm, &w[i]);
  }
  pthread_barrier_wait(&bar);
  for (int i = 0; i < 3; i++) pthread_join(w[i].th, NULL);
  pthread_barrier_destroy(&bar);
  int before = wait_groups(0);
  pthread_mutex_lock(&tg.mu);
  tg.group_us = 10 * 1000000; /* gather for up to 10 s */
  pthread_mutex_unlock(&tg.mu);
  caller a, b, c;
  int64_t t0 = mono_ms();
  start(&a, 1, 50);
  int64_t end = mono_ms() + 5000;
  while (!gathering() && mono_ms() < end) usleep(1000);
  ok(gathering(), "gather: with 3 threads lately, the leader waits for the others");
  is_int(wait_groups(0), before, "gather: ... without starting a group");
  start(&b, 1, 51);
  start(&c, 1, 52);
  pthread_join(a.th, NULL);
  pthread_join(b.th, NULL);
  pthread_join(c.th, NULL);
  int64_t took = mono_ms() - t0;
  is_int(wait_groups(0), before + 1, "gather: the three calls ran as one group");
  ok(sizes[before] == 3, "gather: ... of 3 ops (%d)", sizes[before]);
  ok(took < 9000, "gather: ended by the arrivals, not the time limit (%lld ms)",
     (long long)took);
  ok(right(&a) && right(&b) && right(&c), "gather: every op got its own result");

  pthread_mutex_lock(&tg.mu);
  tg.group_us = 100000; /* 100 ms */
  pthread_mutex_unlock(&tg.mu);
  t0 = mono_ms();
  start(&a, 1, 60); /* alone: gathers, gives up after 100 ms */
  end = mono_ms() + 5000;
  int seen = 0;
  while (!a.done && mono_ms() < end) {
    seen |= gathering();
    usleep(500);
  }
  pthread_join(a.th, NULL);
  took = mono_ms() - t0;
  ok(a.done && right(&a), "gather: a lone call runs after the time limit");
  ok(took >= 90 && took < 5000, "gather: ... about one group's time later (%lld ms, gathering seen: %d)",
     (long long)took, seen);

  /* groups cheaper than a caller's way back (store puts at NORMAL):
   * waiting would cost more than it saves */
  pthread_mutex_lock(&tg.mu);
  tg.group_us = 50;
  pthread_mutex_unlock(&tg.mu);
  pthread_mutex_lock(&tg.mu);
  unsigned long long gathers = tg.gathers;
  pthread_mutex_unlock(&tg.mu);
  ok(gathers >= 2, "gather: the leaders above gathered (%llu)", gathers);
  start(&a, 1, 70);
  pthread_join(a.th, NULL);
  pthread_mutex_lock(&tg.mu);
  unsigned long long after = tg.gathers;
  pthread_mutex_unlock(&tg.mu);
  ok(a.done && right(&a), "gather: a call when a group takes 50 us runs");
  is_int(after, gathers, "gather: ... and its leader did not wait for the others");
  dsysi_group_destroy(&tg);
}

int main(void) {
  test_concurrent();
  test_continue();
  test_gather();
  return tap_done();
}
