/* Group commit: leader/follower batching of many threads' operations
 * (group.h). */
#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "core/group.h"

/* A caller's futex word holds how many of its ops are not yet run, plus
 * BATON when the caller is asked to lead. Both change under g->mu
 * (atomically, since the caller reads the word without the lock); the
 * caller sleeps on the word until its count is 0 or it has the baton. A
 * baton is only given to a chain with ops pending, so a caller that sees
 * 0 without the baton knows nobody writes its word again and returns
 * without the lock; a wake-up may still reach the futex after that, which
 * is harmless (the kernel only looks the address up). */
enum { BATON = 1 << 30 };

/* A leader whose own chain is done runs at most this many more groups
 * before it hands the lead to a waiting caller: enough that the
 * connection does not wait for the scheduler between groups, few enough
 * that no caller (e.g. a worker's dispatcher, which feeds its handlers)
 * is kept long serving others. Only with one group at a time: a server
 * backend's groups wait for the server (milliseconds each), and an
 * arriving caller can start one of its own anyway (measured on
 * PostgreSQL: continuing leaders cut one-job submits from 16 threads from
 * 1.9-2.8k to 0.1-0.8k jobs/s, the worker's dispatcher held up). */
enum { LEAD_MORE = 2 };

/* Gathering pays only when a group costs more than a woken caller takes
 * to queue its next op (about 50 us on the 2-core test machine): store
 * puts at synchronous=NORMAL run groups of about 30 us, and waiting for
 * the callers took 40% of the time (4 threads: 22-27k puts/s gathering,
 * 33-40k not; the queue's groups take 0.7-1.3 ms and still gather). */
enum { GATHER_MIN_US = 100 };

void dsysi_group_init(dsysi_group *g, int max_batch, int max_groups,
                      dsysi_group_run_fn run, void *ud) {
  *g = (dsysi_group){0};
  pthread_mutex_init(&g->mu, NULL);
  g->tail = &g->pending;
  g->max_batch = max_batch > 0 ? max_batch : 1;
  g->max_groups = max_groups > 0 ? max_groups : 1;
  g->run = run;
  g->ud = ud;
}

void dsysi_group_destroy(dsysi_group *g) { pthread_mutex_destroy(&g->mu); }

static int64_t mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Sleep while *w == val, until abs (CLOCK_MONOTONIC, NULL: no limit). */
static void futex_wait(int *w, int val, const struct timespec *abs) {
  syscall(SYS_futex, w, FUTEX_WAIT_BITSET_PRIVATE, val, abs, NULL,
          FUTEX_BITSET_MATCH_ANY);
}

static void futex_wake(int *w) {
  syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* The calling thread's identity, for counting callers (its address). */
static __thread char self_tag;

/* Caller holds g->mu: count the calling thread among the current window's
 * callers (windows of DSYSI_GROUP_WINDOW chains; a thread is counted once
 * per window and per group, whatever other groups it also uses). */
static void count_caller(dsysi_group *g) {
  if (++g->window_chains > DSYSI_GROUP_WINDOW) {
    g->window_chains = 1;
    g->callers_prev = g->callers;
    g->callers = 0;
  }
  const void *me = &self_tag;
  for (int i = 0; i < g->callers; i++)
    if (g->seen[i] == me) return;
  g->seen[g->callers++] = me; /* callers <= window_chains <= WINDOW */
}

/* Caller holds g->mu. How many chains a leader should have queued before
 * it starts a group, 0 to start at once. A group costs about the same
 * whatever its size (its commit: WAL frames, locks, an fsync at FULL), so
 * with many threads calling one op at a time a leader that starts at once
 * commits one op per transaction and spends the CPU the other callers need
 * to arrive (measured on the queue: 1.4 jobs per transaction with 16
 * threads submitting one job per call). When more threads than the leader
 * and one other used the handle lately (like commit_siblings), the leader
 * waits, without CPU, until every one of them has queued a chain or one
 * group's run time has passed, whichever is first. A lone caller, or two
 * taking turns (they batch by themselves: one queues while the other
 * runs), never wait. */
static int gather_target(const dsysi_group *g) {
  if (g->max_groups > 1 || g->group_us < GATHER_MIN_US) return 0;
  int n = g->callers_prev > g->callers ? g->callers_prev : g->callers;
  if (n < 3) return 0;
  return n > g->max_batch ? g->max_batch : n;
}

/* Caller holds g->mu. If ops wait and a group may start, give the owner
 * of the first of them the baton to lead it (one thread, not every
 * waiter). */
static void hand_over(dsysi_group *g) {
  if (g->pending && g->running < g->max_groups) {
    int *w = g->pending->word;
    __atomic_or_fetch(w, BATON, __ATOMIC_RELEASE);
    futex_wake(w);
  }
}

/* Caller holds g->mu; my is the caller's word. Run one group of up to
 * max_batch pending ops, then count its ops done and wake the callers
 * whose chains are complete (after dropping the lock: the wake-ups are
 * system calls that arriving callers need not wait behind). */
static void lead_group(dsysi_group *g, int *my, int mine_done) {
  int want = gather_target(g);
  /* leading after its own chain is done, the leader's thread cannot
   * queue another: wait for the others only */
  if (mine_done && want > 0) want--;
  if (want > g->arrived) {
    /* hold the group slot while gathering: arrivals queue behind */
    g->running++;
    g->gathers++;
    g->gathering = 1;
    g->gather_want = want;
    int64_t until = mono_us() + g->group_us;
    struct timespec ts = {.tv_sec = until / 1000000,
                          .tv_nsec = (until % 1000000) * 1000};
    while (g->arrived < want && mono_us() < until) {
      int seq = g->gather_seq;
      pthread_mutex_unlock(&g->mu);
      futex_wait(&g->gather_seq, seq, &ts);
      pthread_mutex_lock(&g->mu);
    }
    g->gathering = 0;
    g->running--;
  }
  dsysi_group_op *group = g->pending, **pp = &g->pending;
  int n = 0;
  while (*pp && n < g->max_batch) {
    pp = &(*pp)->next;
    n++;
  }
  g->pending = *pp;
  *pp = NULL;
  if (!g->pending) g->tail = &g->pending;
  g->arrived = 0;
  g->running++;
  g->groups++;
  hand_over(g); /* a server backend may run another group meanwhile */
  pthread_mutex_unlock(&g->mu);
  int64_t t = mono_us();
  g->run(g->ud, group);
  t = mono_us() - t;
  pthread_mutex_lock(&g->mu);
  g->group_us += (t - g->group_us) / 8; /* moving average over about 8 */
  g->running--;
  int *done[64];
  size_t ndone = 0;
  for (dsysi_group_op *o = group, *nx; o; o = nx) {
    nx = o->next; /* o may be gone once its caller's count reaches 0 */
    int *w = o->word;
    if ((__atomic_sub_fetch(w, 1, __ATOMIC_RELEASE) & ~BATON) == 0 &&
        w != my) {
      if (ndone < 64) done[ndone++] = w;
      else futex_wake(w);
    }
  }
  if (ndone) {
    pthread_mutex_unlock(&g->mu);
    for (size_t i = 0; i < ndone; i++) futex_wake(done[i]);
    pthread_mutex_lock(&g->mu);
  }
}

/* Each waiter sleeps on its own word and is woken once when its chain is
 * done, or to lead; with concurrent groups a later part of a chain may
 * finish first, so the caller waits for the count, not for a group. */
void dsysi_group_execute(dsysi_group *g, dsysi_group_op *first,
                         dsysi_group_op *last) {
  last->next = NULL;
  int word = 0;
  for (dsysi_group_op *o = first; o; o = o->next) {
    o->word = &word;
    word++;
  }
  pthread_mutex_lock(&g->mu);
  *g->tail = first;
  g->tail = &last->next;
  count_caller(g);
  if (++g->arrived >= g->gather_want && g->gathering) {
    g->gathering = 0;
    g->gather_seq++;
    futex_wake(&g->gather_seq);
  }
  int more = 0; /* groups led after my chain was done */
  int more_max = g->max_groups > 1 ? 0 : LEAD_MORE;
  for (;;) {
    int left = __atomic_load_n(&word, __ATOMIC_RELAXED) & ~BATON;
    int can_lead = g->pending && g->running < g->max_groups;
    if (left == 0 && (!can_lead || more >= more_max)) break;
    if (!can_lead) {
      /* my ops are pending behind a running group, or in one */
      __atomic_and_fetch(&word, ~BATON, __ATOMIC_RELAXED);
      pthread_mutex_unlock(&g->mu);
      int w;
      while ((w = __atomic_load_n(&word, __ATOMIC_ACQUIRE)) != 0 &&
             !(w & BATON))
        futex_wait(&word, w, NULL);
      if (w == 0) return; /* done, and not asked to lead */
      pthread_mutex_lock(&g->mu);
      continue;
    }
    if (left == 0) more++;
    lead_group(g, &word, left == 0);
  }
  hand_over(g);
  pthread_mutex_unlock(&g->mu);
}

int dsysi_group_pending(dsysi_group *g) {
  pthread_mutex_lock(&g->mu);
  int n = 0;
  for (dsysi_group_op *o = g->pending; o; o = o->next) n++;
  pthread_mutex_unlock(&g->mu);
  return n;
}

unsigned long long dsysi_group_count(dsysi_group *g) {
  pthread_mutex_lock(&g->mu);
  unsigned long long n = g->groups;
  pthread_mutex_unlock(&g->mu);
  return n;
}
