/*
 * The deterministic scheduler of the simulation (sim.h).
 *
 * Every function below with a libc/libpthread name replaces that function
 * in the program that links this file (a static definition in the
 * executable wins over the shared C library; -rdynamic makes shared
 * libraries such as SQLite use it too). Exactly one thread holds the baton
 * at a time; the others wait on their own semaphore (sem_wait is not
 * replaced). All the state here is touched only by the baton holder, so it
 * needs no lock.
 *
 * Synchronisation objects are not the glibc ones: a side table keyed by the
 * object's address holds the owner, counts and waiter count; the glibc
 * memory is only read for what pthread_*_init wrote into it (a mutex's
 * type, a condition variable's clock), which the real init functions still
 * do.
 */
#include <dlfcn.h>
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <malloc.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include "core/rng.h"
#include "sim.h"

/* ---- threads ---- */

enum { T_RUN = 1, T_BLOCK, T_DONE };
enum { W_NONE, W_MUTEX, W_COND, W_RW, W_ONCE, W_FUTEX, W_JOIN, W_SLEEP };
static const char *const wait_names[] = {"-", "mutex", "cond", "rwlock", "once", "futex", "join", "sleep"};

typedef struct sthr {
  int id, state, node;
  int home; /* the node it was created in: pauses apply to it */
  sem_t sem;
  int wkind;
  const void *wobj;
  int64_t deadline; /* virtual ns, -1: none */
  int timedout;
  void *(*fn)(void *);
  void *arg, *ret;
  pthread_t real;
  pid_t tid;     /* the kernel's id, to see it gone */
  int exiting, reaped;
  /* Joined or detached by the program (its glibc descriptor released):
   * until then no new thread can get its pthread_t (below). */
  int detached, collected;
} sthr;

typedef struct node {
  char name[48];
  int64_t paused_until;
  int64_t skew_ns;   /* the skew fault's step, healed to 0 */
  int64_t offset_ns; /* the node's own offset, for the whole run */
  int64_t drift_ppm; /* its rate error: parts per million of virtual time */
} node;

/* ---- the side table of synchronisation objects ---- */

enum { O_MUTEX = 1, O_COND, O_RW, O_FUTEX };
typedef struct obj {
  const void *addr;
  int kind;
  sthr *owner;  /* mutex, writer of a rwlock */
  int count;    /* recursion depth */
  int readers;  /* rwlock */
  int nwait;
} obj;

typedef struct trace_ev {
  int64_t t;
  int node, thr;
  char text[112];
} trace_ev;

static struct {
  int started;
  sim_options o;
  uint64_t rng[4];
  int64_t now;
  int64_t next_deadline; /* earliest timed wait (a lower bound) */
  int64_t wall_base_ns;
  sthr **thr;
  int nthr, cap;
  node nodes[SIM_MAX_NODES];
  int nnodes;
  obj **tab;
  size_t tab_cap, tab_n;
  sthr **cand;
  uint64_t hash;
  trace_ev *ring;
  uint64_t ring_n;
  sim_stats st;
  void (*on_time)(int64_t, void *);
  void *on_time_ud;
  volatile uint64_t progress; /* read by the watchdog */
  int finishing;
} S;

static __thread sthr *me;

/* Real functions, for the few places that need them. */
static int (*real_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
static int (*real_clock_gettime)(clockid_t, struct timespec *);
static long (*real_syscall)(long, ...);
static int (*real_tryjoin)(pthread_t, void **);
static void (*real_exit)(void *) __attribute__((noreturn));

static void load_real(void) {
  if (real_create) return;
  real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
  real_syscall = dlsym(RTLD_NEXT, "syscall");
  real_tryjoin = dlsym(RTLD_NEXT, "pthread_tryjoin_np");
  real_exit = dlsym(RTLD_NEXT, "pthread_exit");
  real_create = dlsym(RTLD_NEXT, "pthread_create");
  if (!real_create || !real_clock_gettime || !real_syscall || !real_tryjoin || !real_exit) {
    fprintf(stderr, "sim: cannot find the real pthread functions\n");
    abort();
  }
}

/* ---- random stream: xoshiro256** seeded by splitmix64 (core/rng.h) ---- */

uint64_t sim_rand(void) { return dsysi_xoshiro_next(S.rng); }

uint64_t sim_rand_below(uint64_t n) { return n ? sim_rand() % n : 0; }

int sim_chance(double p) {
  if (p <= 0) return 0;
  return (double)(sim_rand() >> 11) * 0x1.0p-53 < p;
}

static void fill_random(void *buf, size_t len) {
  unsigned char *p = buf;
  while (len) {
    uint64_t r = sim_rand();
    size_t n = len < 8 ? len : 8;
    memcpy(p, &r, n);
    p += n;
    len -= n;
  }
}

/* ---- trace ---- */

static void hash_mix(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = S.hash;
  for (size_t i = 0; i < n; i++) {
    h ^= b[i];
    h *= 0x100000001b3ULL;
  }
  S.hash = h;
}

static void trace_add(const char *text) {
  int node = me ? me->node : 0, thr = me ? me->id : -1;
  hash_mix(&S.now, sizeof S.now);
  hash_mix(&node, sizeof node);
  hash_mix(&thr, sizeof thr);
  hash_mix(text, strlen(text));
  if (S.o.trace_out)
    fprintf(S.o.trace_out, "%12.6f %-10s t%-3d %s\n", S.now / 1e9, S.nodes[node].name, thr, text);
  if (!S.ring) return;
  trace_ev *e = &S.ring[S.ring_n++ % S.o.trace_keep];
  e->t = S.now;
  e->node = node;
  e->thr = thr;
  snprintf(e->text, sizeof e->text, "%s", text);
}

void sim_trace(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  trace_add(buf);
}

uint64_t sim_trace_hash(void) { return S.hash; }

void sim_trace_dump(FILE *f, unsigned last) {
  uint64_t n = S.ring_n < S.o.trace_keep ? S.ring_n : S.o.trace_keep;
  if (last && last < n) n = last;
  fprintf(f, "--- trace: last %llu of %llu events (virtual s, node, thread, event)\n",
          (unsigned long long)n, (unsigned long long)S.ring_n);
  for (uint64_t i = S.ring_n - n; i < S.ring_n; i++) {
    trace_ev *e = &S.ring[i % S.o.trace_keep];
    fprintf(f, "%12.6f %-10s t%-3d %s\n", e->t / 1e9, S.nodes[e->node].name, e->thr, e->text);
  }
}

void sim_get_stats(sim_stats *out) { *out = S.st; }

static void dump_threads(FILE *f) {
  for (int i = 0; i < S.nthr; i++) {
    sthr *t = S.thr[i];
    if (t->state == T_DONE) continue;
    fprintf(f, "  t%d node %s: %s", t->id, S.nodes[t->node].name,
            t->state == T_RUN ? "runnable" : "blocked");
    if (t->state == T_BLOCK)
      fprintf(f, " on %s %p%s", wait_names[t->wkind], t->wobj, t->deadline >= 0 ? " (timed)" : "");
    if (t->state == T_BLOCK && (t->wkind == W_MUTEX || t->wkind == W_RW) && ((const obj *)t->wobj)->owner)
      fprintf(f, " held by t%d", ((const obj *)t->wobj)->owner->id);
    if (S.nodes[t->home].paused_until > S.now)
      fprintf(f, " (node paused until %.6f)", S.nodes[t->home].paused_until / 1e9);
    fprintf(f, "\n");
  }
}

void sim_fail(const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fflush(stdout);
  fprintf(stderr, "SIMULATION FAILED (seed %llu, virtual time %.6f s): %s\n",
          (unsigned long long)S.o.seed, S.now / 1e9, buf);
  sim_trace_dump(stderr, 200);
  if (getenv("DSYS_SIM_THREADS")) {
    fprintf(stderr, "--- threads\n");
    dump_threads(stderr);
  }
  fprintf(stderr, "replay: the same seed gives the same run (trace hash so far %016llx)\n",
          (unsigned long long)S.hash);
  fflush(stderr);
  _exit(1);
}

/* ---- nodes and time ---- */

int sim_node_new(const char *name) {
  if (S.nnodes >= SIM_MAX_NODES) sim_fail("too many nodes");
  node *n = &S.nodes[S.nnodes];
  snprintf(n->name, sizeof n->name, "%s", name);
  return S.nnodes++;
}

const char *sim_node_name(int id) { return id >= 0 && id < S.nnodes ? S.nodes[id].name : "?"; }
int sim_node_count(void) { return S.nnodes; }
int sim_node_current(void) { return me ? me->node : 0; }

int sim_node_enter(int id) {
  int old = me->node;
  me->node = id;
  return old;
}

void sim_node_pause(int id, int64_t until_ns) {
  S.nodes[id].paused_until = until_ns;
  sim_trace("node %s paused until %.6f", S.nodes[id].name, until_ns / 1e9);
}

int sim_node_paused(int id) { return S.nodes[id].paused_until > S.now; }
void sim_node_skew(int id, int64_t skew) { S.nodes[id].skew_ns = skew; }

void sim_node_clock(int id, int64_t offset_ns, int64_t drift_ppm) {
  S.nodes[id].offset_ns = offset_ns;
  S.nodes[id].drift_ppm = drift_ppm;
  sim_trace("node %s wall clock: offset %+.6f s, drift %+lld ppm", S.nodes[id].name,
            offset_ns / 1e9, (long long)drift_ppm);
}
int64_t sim_now_ns(void) { return S.now; }
uint64_t sim_seed(void) { return S.o.seed; }

void sim_on_time(void (*fn)(int64_t, void *), void *ud) {
  S.on_time = fn;
  S.on_time_ud = ud;
}

/* ---- the baton ---- */

static void add_thread(sthr *t) {
  if (S.nthr == S.cap) {
    S.cap = S.cap ? S.cap * 2 : 64;
    S.thr = realloc(S.thr, S.cap * sizeof *S.thr);
    S.cand = realloc(S.cand, S.cap * sizeof *S.cand);
    if (!S.thr || !S.cand) abort();
  }
  t->id = S.nthr;
  S.thr[S.nthr++] = t;
  S.st.threads++;
}

static void make_runnable(sthr *t, int timedout) {
  t->state = T_RUN;
  t->timedout = timedout;
  t->deadline = -1;
}

/* Move virtual time to the earliest timed wait or pause end; wake what is
 * due. Returns 0 when nothing can ever run again. */
static int advance_time(void) {
  int64_t next = INT64_MAX;
  for (int i = 0; i < S.nthr; i++) {
    sthr *t = S.thr[i];
    if (t->state == T_BLOCK && t->deadline >= 0 && t->deadline < next) next = t->deadline;
  }
  for (int i = 0; i < S.nnodes; i++)
    if (S.nodes[i].paused_until > S.now && S.nodes[i].paused_until < next) next = S.nodes[i].paused_until;
  if (next == INT64_MAX) return 0;
  if (next > S.now) S.now = next;
  S.st.time_jumps++;
  for (int i = 0; i < S.nthr; i++) {
    sthr *t = S.thr[i];
    if (t->state == T_BLOCK && t->deadline >= 0 && t->deadline <= S.now) make_runnable(t, 1);
  }
  if (S.on_time) S.on_time(S.now, S.on_time_ud);
  return 1;
}

/* Wake the timed waiters whose deadline passed while threads ran (each
 * step and clock read moves time on): without this a thread that never
 * stops being runnable would starve every timeout. */
static void wake_due(void) {
  if (S.now < S.next_deadline) return;
  int64_t next = INT64_MAX;
  for (int i = 0; i < S.nthr; i++) {
    sthr *t = S.thr[i];
    if (t->state != T_BLOCK || t->deadline < 0) continue;
    if (t->deadline <= S.now) make_runnable(t, 1);
    else if (t->deadline < next) next = t->deadline;
  }
  S.next_deadline = next;
  if (S.on_time) S.on_time(S.now, S.on_time_ud);
}

static sthr *pick(void) {
  wake_due();
  for (;;) {
    int n = 0;
    for (int i = 0; i < S.nthr; i++) {
      sthr *t = S.thr[i];
      if (t->state == T_RUN && S.nodes[t->home].paused_until <= S.now) S.cand[n++] = t;
    }
    if (n) return S.cand[n == 1 ? 0 : sim_rand_below(n)];
    if (!advance_time()) {
      fprintf(stderr, "sim: no thread can run and none waits with a deadline (deadlock):\n");
      dump_threads(stderr);
      sim_fail("deadlock");
    }
  }
}

/* Hand the baton to t (the caller keeps running only if t is itself). */
static void hand_to(sthr *t) {
  S.st.steps++;
  S.progress++;
  S.now += 1000; /* a scheduling step costs a microsecond of virtual time */
  uint64_t rec[2] = {(uint64_t)S.now, (uint64_t)t->id};
  hash_mix(rec, sizeof rec);
  sthr *self = me;
  if (t == self) return;
  S.st.switches++;
  sem_post(&t->sem);
  if (self) {
    while (sem_wait(&self->sem) && errno == EINTR) {
    }
  }
}

/* The current thread gives way: it stays runnable (a preemption) or has
 * already marked itself blocked. */
static void reschedule(void) { hand_to(pick()); }

static void maybe_preempt(void) {
  if (S.o.preempt_permille && sim_rand_below(1000) < S.o.preempt_permille) reschedule();
}

/* Block the current thread on (kind, o) until woken or deadline (virtual
 * ns, -1 none). Returns 1 when it timed out. */
static int block(int kind, const void *o, int64_t deadline) {
  me->state = T_BLOCK;
  me->wkind = kind;
  me->wobj = o;
  me->deadline = deadline;
  me->timedout = 0;
  if (deadline >= 0 && deadline < S.next_deadline) S.next_deadline = deadline;
  reschedule();
  me->wkind = W_NONE;
  me->wobj = NULL;
  return me->timedout;
}

/* Wake the threads blocked on o: all of them, or one picked at random. */
static int wake(const void *o, int one) {
  int n = 0;
  for (int i = 0; i < S.nthr; i++) {
    sthr *t = S.thr[i];
    if (t->state == T_BLOCK && t->wobj == o) S.cand[n++] = t;
  }
  if (!n) return 0;
  if (one) {
    make_runnable(S.cand[sim_rand_below(n)], 0);
    return 1;
  }
  for (int i = 0; i < n; i++) make_runnable(S.cand[i], 0);
  return n;
}

static int64_t ts_ns(const struct timespec *ts);

/* ---- watchdog and reaper (real threads outside the simulation) ---- */

static sem_t reap_sem;

static void *watchdog_main(void *arg) {
  (void)arg;
  uint64_t last = S.progress;
  unsigned still = 0;
  struct timespec sec = {1, 0};
  for (;;) {
    real_syscall(SYS_nanosleep, &sec, NULL);
    if (S.progress != last) {
      last = S.progress;
      still = 0;
      continue;
    }
    if (++still >= S.o.watchdog_s && !S.finishing) {
      fprintf(stderr, "sim: no scheduling step for %u s of real time: a thread is blocked outside "
                      "the simulation or spinning without a synchronisation call\n",
              still);
      dump_threads(stderr);
      sim_fail("stuck");
    }
  }
  return NULL;
}

/* Has the kernel thread ended (its thread-specific destructors ran)? Its
 * glibc descriptor stays until the program joins or detaches it, as with
 * glibc: joining it here (as the reaper did) let glibc give its pthread_t
 * to the next thread created, and a later pthread_join of the old handle
 * waited for that unrelated thread (seed 17 at 20 steps: the main thread's
 * join of a client that had finished at 1003.8 s waited for a gateway
 * thread until the gateway's crash at 1280 s). */
static int thread_gone(const sthr *t) {
  return real_syscall(SYS_tgkill, (long)getpid(), (long)t->tid, 0L) == -1 && errno == ESRCH;
}

/* Release the glibc descriptor of a thread that has ended. */
static void collect(sthr *t) {
  struct timespec ts = {0, 20000};
  /* the kernel clears the thread's id (what tryjoin waits for) before it
   * stops answering tgkill: this loop ends at once */
  for (int i = 0; i < 100000 && real_tryjoin(t->real, NULL) == EBUSY; i++)
    real_syscall(SYS_nanosleep, &ts, NULL);
  t->collected = 1;
}

/* A finished thread keeps the baton while its thread-specific destructors
 * run (they may use the replaced functions); once it is really gone the
 * reaper hands the baton on. */
static void *reaper_main(void *arg) {
  (void)arg;
  struct timespec ts = {0, 20000};
  for (;;) {
    while (sem_wait(&reap_sem) && errno == EINTR) {
    }
    for (;;) {
      sthr *dead = NULL;
      for (int i = 0; i < S.nthr && !dead; i++) {
        sthr *t = S.thr[i];
        if (t->exiting && !t->reaped && thread_gone(t)) dead = t;
      }
      if (dead) {
        if (dead->detached) collect(dead);
        dead->reaped = 1;
        dead->state = T_DONE;
        me = NULL;
        wake(dead, 0); /* joiners */
        hand_to(pick());
        break;
      }
      real_syscall(SYS_nanosleep, &ts, NULL);
    }
  }
  return NULL;
}

/* ---- start ---- */

static void seed_and_defaults(void) {
  if (!S.o.preempt_permille) S.o.preempt_permille = 50;
  if (!S.o.clock_read_ns) S.o.clock_read_ns = 200;
  if (!S.o.watchdog_s) S.o.watchdog_s = 20;
  if (!S.o.trace_keep) S.o.trace_keep = 4096;
  uint64_t z = S.o.seed;
  for (int i = 0; i < 4; i++) S.rng[i] = dsysi_rng_next(&z);
  S.hash = 0xcbf29ce484222325ULL;
  S.now = 1000000000000LL;                /* 1000 s: "0 means unset" stays usable */
  S.wall_base_ns = 1798761600000000000LL; /* 2027-01-01T00:00:00Z at virtual 0 */
  free(S.ring);
  S.ring = calloc(S.o.trace_keep, sizeof *S.ring);
  S.ring_n = 0;
}

/* Runs at the first replaced call (a shared library's constructor may come
 * before main): the main thread becomes thread 0 of node 0. */
static void init_once(void) {
  if (S.started) return;
  load_real();
  S.started = 1;
  seed_and_defaults();
  snprintf(S.nodes[0].name, sizeof S.nodes[0].name, "world");
  S.nnodes = 1;
  sthr *t = calloc(1, sizeof *t);
  sem_init(&t->sem, 0, 0);
  t->state = T_RUN;
  t->deadline = -1;
  add_thread(t);
  me = t;
}

void sim_start(const sim_options *opts) {
  static int called;
  init_once();
  if (called++ || S.nthr != 1 || me != S.thr[0]) {
    fprintf(stderr, "sim_start: called twice, or not first in the main thread\n");
    abort();
  }
  memset(&S.o, 0, sizeof S.o);
  if (opts) S.o = *opts;
  seed_and_defaults();
  /* One thread runs at a time: on one processor, handing the baton over
   * is a direct switch instead of a wake-up on another processor (about
   * ten times cheaper on a loaded machine). */
  cpu_set_t one;
  CPU_ZERO(&one);
  int cpu = sched_getcpu();
  CPU_SET(cpu >= 0 ? cpu : 0, &one);
  sched_setaffinity(0, sizeof one, &one);
  /* One malloc arena: mallinfo2 (the memory checker) reports the main
   * arena only, and the simulated disks' files are allocated by whichever
   * thread writes them. */
  mallopt(M_ARENA_MAX, 1);
  /* Started here, not at the first replaced call, so that a program may
   * fork before it starts a simulation. */
  sem_init(&reap_sem, 0, 0);
  pthread_t w;
  real_create(&w, NULL, watchdog_main, NULL);
  real_create(&w, NULL, reaper_main, NULL);
}

int64_t sim_real_ns(void) {
  load_real();
  struct timespec ts;
  real_clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts_ns(&ts);
}

static inline void ensure(void) {
  if (__builtin_expect(!S.started, 0)) init_once();
}

/* ---- the object table (open addressing, linear probing) ---- */

static size_t slot_of(const void *a) {
  uint64_t x = (uint64_t)(uintptr_t)a;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return (size_t)x & (S.tab_cap - 1);
}

static void tab_grow(void) {
  size_t oc = S.tab_cap;
  obj **old = S.tab;
  S.tab_cap = oc ? oc * 2 : 1024;
  S.tab = calloc(S.tab_cap, sizeof *S.tab);
  if (!S.tab) abort();
  for (size_t i = 0; i < oc; i++)
    if (old[i]) {
      size_t j = slot_of(old[i]->addr);
      while (S.tab[j]) j = (j + 1) & (S.tab_cap - 1);
      S.tab[j] = old[i];
    }
  free(old);
}

static obj *get_obj(const void *a, int kind) {
  if (S.tab_n * 2 >= S.tab_cap) tab_grow();
  size_t j = slot_of(a);
  while (S.tab[j]) {
    obj *o = S.tab[j];
    if (o->addr == a) {
      /* Memory reused for another kind of object without a destroy. */
      if (o->kind != kind && !o->nwait) {
        memset(o, 0, sizeof *o);
        o->addr = a;
        o->kind = kind;
      }
      return o;
    }
    j = (j + 1) & (S.tab_cap - 1);
  }
  obj *o = calloc(1, sizeof *o);
  if (!o) abort();
  o->addr = a;
  o->kind = kind;
  S.tab[j] = o;
  S.tab_n++;
  return o;
}

static void drop_obj(const void *a) {
  if (!S.tab_cap) return;
  size_t j = slot_of(a);
  while (S.tab[j] && S.tab[j]->addr != a) j = (j + 1) & (S.tab_cap - 1);
  if (!S.tab[j] || S.tab[j]->nwait) return;
  free(S.tab[j]);
  S.tab[j] = NULL;
  S.tab_n--;
  /* Backward-shift deletion keeps the probe chains whole. */
  size_t i = j;
  for (;;) {
    i = (i + 1) & (S.tab_cap - 1);
    if (!S.tab[i]) break;
    size_t k = slot_of(S.tab[i]->addr);
    if ((i > j && (k <= j || k > i)) || (i < j && (k <= j && k > i))) {
      S.tab[j] = S.tab[i];
      S.tab[i] = NULL;
      j = i;
    }
  }
}

/* ---- time conversion ---- */

static int64_t ts_ns(const struct timespec *ts) { return (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec; }

static int is_realtime(clockid_t c) { return c == CLOCK_REALTIME || c == CLOCK_REALTIME_COARSE || c == CLOCK_TAI; }

/* The wall clock of the thread's current node at virtual time v: offset,
 * skew and a rate error (drift); and back. */
static int64_t wall_of(int64_t v) {
  const node *n = &S.nodes[me ? me->node : 0];
  return v + S.wall_base_ns + n->offset_ns + n->skew_ns +
         (int64_t)((__int128)v * n->drift_ppm / 1000000);
}

static int64_t virtual_of_wall(int64_t w) {
  const node *n = &S.nodes[me ? me->node : 0];
  return (int64_t)((__int128)(w - S.wall_base_ns - n->offset_ns - n->skew_ns) * 1000000 /
                   (1000000 + n->drift_ppm));
}

/* An absolute time on clock c (as this thread sees it) to virtual ns. */
static int64_t abs_to_virtual(clockid_t c, const struct timespec *ts) {
  int64_t v = ts_ns(ts);
  if (is_realtime(c)) v = virtual_of_wall(v);
  return v;
}

/* ---- replaced: threads ---- */

/* The thread function returned: the thread stays runnable (its
 * thread-specific destructors run next) until the reaper sees it gone;
 * joiners go on only then, as pthread_join returns once the thread has
 * terminated (a joiner that freed what a destructor still used: a store's
 * per-thread connection closed twice, found by the crash fault). */
static void thread_finish(void *ret) {
  me->ret = ret;
  me->exiting = 1;
  sem_post(&reap_sem);
}

static void *trampoline(void *arg) {
  sthr *t = arg;
  me = t;
  t->tid = (pid_t)real_syscall(SYS_gettid);
  while (sem_wait(&t->sem) && errno == EINTR) {
  }
  void *ret = t->fn(t->arg);
  thread_finish(ret);
  return ret;
}

int pthread_create(pthread_t *th, const pthread_attr_t *attr, void *(*fn)(void *), void *arg) {
  ensure();
  sthr *t = calloc(1, sizeof *t);
  if (!t) return EAGAIN;
  sem_init(&t->sem, 0, 0);
  t->fn = fn;
  t->arg = arg;
  t->node = t->home = me ? me->node : 0;
  t->deadline = -1;
  t->state = T_RUN;
  /* Always joinable (the reaper sees when it ends; a detached thread's
   * descriptor is released then); keep the stack size. */
  int ds = PTHREAD_CREATE_JOINABLE;
  if (attr) pthread_attr_getdetachstate(attr, &ds);
  t->detached = ds == PTHREAD_CREATE_DETACHED;
  pthread_attr_t a;
  pthread_attr_init(&a);
  size_t ss = 0;
  if (attr && pthread_attr_getstacksize(attr, &ss) == 0 && ss) pthread_attr_setstacksize(&a, ss);
  int rc = real_create(&t->real, &a, trampoline, t);
  pthread_attr_destroy(&a);
  if (rc) {
    sem_destroy(&t->sem);
    free(t);
    return rc;
  }
  add_thread(t);
  *th = t->real;
  sim_trace("thread t%d created", t->id);
  maybe_preempt();
  return 0;
}

/* The thread of a handle: the one not yet joined or detached (glibc
 * gives no other thread its pthread_t until then). */
static sthr *find_thread(pthread_t th) {
  for (int i = 0; i < S.nthr; i++)
    if (S.thr[i]->real == th && !S.thr[i]->collected && !S.thr[i]->detached) return S.thr[i];
  return NULL;
}

int pthread_join(pthread_t th, void **ret) {
  ensure();
  sthr *t = find_thread(th);
  if (!t) return ESRCH;
  if (t == me) return EDEADLK;
  while (!t->reaped) block(W_JOIN, t, -1);
  collect(t);
  if (ret) *ret = t->ret;
  return 0;
}

int pthread_detach(pthread_t th) {
  ensure();
  sthr *t = find_thread(th);
  if (!t) return ESRCH;
  t->detached = 1;
  if (t->reaped) collect(t);
  return 0;
}

void pthread_exit(void *ret) {
  ensure();
  thread_finish(ret);
  real_exit(ret);
}

/* ---- replaced: mutexes ---- */

static int mutex_type(pthread_mutex_t *m) { return m->__data.__kind & 3; }

static int mutex_lock(pthread_mutex_t *m, int64_t deadline, int try) {
  ensure();
  if (!try) maybe_preempt();
  obj *o = get_obj(m, O_MUTEX);
  for (;;) {
    if (!o->owner) {
      o->owner = me;
      o->count = 1;
      return 0;
    }
    if (o->owner == me) {
      int k = mutex_type(m);
      if (k == PTHREAD_MUTEX_RECURSIVE) {
        o->count++;
        return 0;
      }
      if (k == PTHREAD_MUTEX_ERRORCHECK) return EDEADLK;
      if (try) return EBUSY;
      sim_fail("thread t%d locks a mutex it already holds (self-deadlock)", me->id);
    }
    if (try) return EBUSY;
    o->nwait++;
    int to = block(W_MUTEX, o, deadline);
    o->nwait--;
    if (to && o->owner) return ETIMEDOUT;
  }
}

int pthread_mutex_lock(pthread_mutex_t *m) { return mutex_lock(m, -1, 0); }
int pthread_mutex_trylock(pthread_mutex_t *m) { return mutex_lock(m, -1, 1); }

int pthread_mutex_timedlock(pthread_mutex_t *m, const struct timespec *ts) {
  return mutex_lock(m, abs_to_virtual(CLOCK_REALTIME, ts), 0);
}

int pthread_mutex_unlock(pthread_mutex_t *m) {
  ensure();
  obj *o = get_obj(m, O_MUTEX);
  if (o->owner != me) {
    if (mutex_type(m) != PTHREAD_MUTEX_NORMAL) return EPERM;
    if (!o->owner) return 0;
  }
  if (--o->count > 0) return 0;
  o->owner = NULL;
  if (o->nwait) wake(o, 0);
  maybe_preempt();
  return 0;
}

int pthread_mutex_destroy(pthread_mutex_t *m) {
  ensure();
  drop_obj(m);
  return 0;
}

/* ---- replaced: condition variables ---- */

static clockid_t cond_clock(pthread_cond_t *c) {
  /* glibc's pthread_cond_init marks a CLOCK_MONOTONIC condition with bit 1
   * of __wrefs (__PTHREAD_COND_CLOCK_MONOTONIC_MASK). */
  return (c->__data.__wrefs & 2) ? CLOCK_MONOTONIC : CLOCK_REALTIME;
}

static int cond_wait(pthread_cond_t *c, pthread_mutex_t *m, int64_t deadline) {
  ensure();
  obj *co = get_obj(c, O_COND);
  obj *mo = get_obj(m, O_MUTEX);
  if (mo->owner != me) return EPERM;
  int depth = mo->count;
  mo->owner = NULL;
  mo->count = 0;
  if (mo->nwait) wake(mo, 0);
  co->nwait++;
  int to = block(W_COND, co, deadline);
  co->nwait--;
  while (mo->owner) {
    mo->nwait++;
    block(W_MUTEX, mo, -1);
    mo->nwait--;
  }
  mo->owner = me;
  mo->count = depth;
  return to ? ETIMEDOUT : 0;
}

int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m) { return cond_wait(c, m, -1); }

int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *ts) {
  ensure();
  return cond_wait(c, m, abs_to_virtual(cond_clock(c), ts));
}

int pthread_cond_clockwait(pthread_cond_t *c, pthread_mutex_t *m, clockid_t clk,
                           const struct timespec *ts) {
  ensure();
  return cond_wait(c, m, abs_to_virtual(clk, ts));
}

int pthread_cond_signal(pthread_cond_t *c) {
  ensure();
  obj *o = get_obj(c, O_COND);
  if (o->nwait) wake(o, 1);
  return 0;
}

int pthread_cond_broadcast(pthread_cond_t *c) {
  ensure();
  obj *o = get_obj(c, O_COND);
  if (o->nwait) wake(o, 0);
  return 0;
}

int pthread_cond_destroy(pthread_cond_t *c) {
  ensure();
  drop_obj(c);
  return 0;
}

/* ---- replaced: rwlocks (readers first, so a reader may re-enter) ---- */

static int rw_lock(pthread_rwlock_t *l, int write, int try) {
  ensure();
  if (!try) maybe_preempt();
  obj *o = get_obj(l, O_RW);
  for (;;) {
    if (write ? (!o->owner && !o->readers) : !o->owner) {
      if (write) o->owner = me;
      else o->readers++;
      return 0;
    }
    if (o->owner == me) return EDEADLK;
    if (try) return EBUSY;
    o->nwait++;
    block(W_RW, o, -1);
    o->nwait--;
  }
}

int pthread_rwlock_rdlock(pthread_rwlock_t *l) { return rw_lock(l, 0, 0); }
int pthread_rwlock_wrlock(pthread_rwlock_t *l) { return rw_lock(l, 1, 0); }
int pthread_rwlock_tryrdlock(pthread_rwlock_t *l) { return rw_lock(l, 0, 1); }
int pthread_rwlock_trywrlock(pthread_rwlock_t *l) { return rw_lock(l, 1, 1); }

int pthread_rwlock_unlock(pthread_rwlock_t *l) {
  ensure();
  obj *o = get_obj(l, O_RW);
  if (o->owner == me) o->owner = NULL;
  else if (o->readers > 0) o->readers--;
  else return EPERM;
  if (o->nwait) wake(o, 0);
  maybe_preempt();
  return 0;
}

int pthread_rwlock_destroy(pthread_rwlock_t *l) {
  ensure();
  drop_obj(l);
  return 0;
}

/* ---- replaced: once (0 not run, 1 running, 2 done: glibc's values) ---- */

int pthread_once(pthread_once_t *once, void (*fn)(void)) {
  ensure();
  volatile int *v = (volatile int *)once;
  for (;;) {
    if (*v == 2) return 0;
    if (*v == 0) {
      *v = 1;
      fn();
      *v = 2;
      wake((const void *)once, 0);
      return 0;
    }
    block(W_ONCE, (const void *)once, -1);
  }
}

/* ---- replaced: futex (lib/core/lock.c's slow path and anyone else's) ---- */

long syscall(long n, ...) {
  va_list ap;
  va_start(ap, n);
  long a[6];
  for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
  va_end(ap);
  ensure();
  if (n != SYS_futex) return real_syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]);
  int *addr = (int *)a[0];
  int op = (int)a[1] & FUTEX_CMD_MASK;
  /* FUTEX_WAIT takes a relative timeout; FUTEX_WAIT_BITSET (lib/core/group.c)
   * an absolute CLOCK_MONOTONIC one, which is S.now's clock here. Only
   * FUTEX_BITSET_MATCH_ANY is used, so bitsets are otherwise ignored. */
  if (op == FUTEX_WAIT || op == FUTEX_WAIT_BITSET) {
    if (*addr != (int)a[2]) {
      errno = EAGAIN;
      return -1;
    }
    const struct timespec *t = (const struct timespec *)a[3];
    int64_t dl = !t ? -1 : op == FUTEX_WAIT ? S.now + ts_ns(t) : ts_ns(t);
    if (dl >= 0 && dl <= S.now) {
      errno = ETIMEDOUT;
      return -1;
    }
    if (block(W_FUTEX, addr, dl)) {
      errno = ETIMEDOUT;
      return -1;
    }
    return 0;
  }
  if (op == FUTEX_WAKE || op == FUTEX_WAKE_BITSET) {
    long want = a[2], woke = 0;
    while (woke < want && wake(addr, 1)) woke++;
    return woke;
  }
  errno = ENOSYS;
  return -1;
}

/* ---- replaced: time ---- */

int clock_gettime(clockid_t c, struct timespec *ts) {
  ensure();
  S.now += S.o.clock_read_ns;
  S.st.clock_reads++;
  int64_t v = S.now;
  if (is_realtime(c)) v = wall_of(v);
  ts->tv_sec = v / 1000000000LL;
  ts->tv_nsec = v % 1000000000LL;
  return 0;
}

int gettimeofday(struct timeval *tv, void *tz) {
  (void)tz;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tv->tv_sec = ts.tv_sec;
  tv->tv_usec = ts.tv_nsec / 1000;
  return 0;
}

time_t time(time_t *out) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (out) *out = ts.tv_sec;
  return ts.tv_sec;
}

static void sleep_ns(int64_t ns) {
  ensure();
  if (ns < 0) ns = 0;
  block(W_SLEEP, NULL, S.now + ns);
}

int nanosleep(const struct timespec *req, struct timespec *rem) {
  sleep_ns(ts_ns(req));
  if (rem) rem->tv_sec = rem->tv_nsec = 0;
  return 0;
}

int clock_nanosleep(clockid_t c, int flags, const struct timespec *req, struct timespec *rem) {
  ensure();
  if (flags & TIMER_ABSTIME) sleep_ns(abs_to_virtual(c, req) - S.now);
  else sleep_ns(ts_ns(req));
  if (rem) rem->tv_sec = rem->tv_nsec = 0;
  return 0;
}

int usleep(useconds_t us) {
  sleep_ns((int64_t)us * 1000);
  return 0;
}

unsigned int sleep(unsigned int s) {
  sleep_ns((int64_t)s * 1000000000LL);
  return 0;
}

int sched_yield(void) {
  ensure();
  reschedule();
  return 0;
}

/* ---- replaced: randomness ---- */

void arc4random_buf(void *buf, size_t n) {
  ensure();
  fill_random(buf, n);
}

uint32_t arc4random(void) {
  ensure();
  return (uint32_t)sim_rand();
}

uint32_t arc4random_uniform(uint32_t upper) {
  ensure();
  return upper ? (uint32_t)sim_rand_below(upper) : 0;
}

ssize_t getrandom(void *buf, size_t n, unsigned int flags) {
  (void)flags;
  ensure();
  fill_random(buf, n);
  return (ssize_t)n;
}

int getentropy(void *buf, size_t n) {
  ensure();
  fill_random(buf, n);
  return 0;
}

/* Called by sim_end-like paths: stop the watchdog from firing while the
 * program exits. */
void sim_finishing(void) { S.finishing = 1; }

/* ---- replaced: the processor count (thread pools size themselves by it;
 * a run must not depend on the machine) ---- */

long sysconf(int name) {
  static long (*real_sysconf)(int);
  if (name == _SC_NPROCESSORS_ONLN || name == _SC_NPROCESSORS_CONF) return 2;
  if (!real_sysconf) real_sysconf = dlsym(RTLD_NEXT, "sysconf");
  return real_sysconf(name);
}

int get_nprocs(void) { return 2; }
int get_nprocs_conf(void) { return 2; }
