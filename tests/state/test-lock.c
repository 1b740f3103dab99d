/*
 * Lock conformance suite (distsys/lock.h), run against every backend: the
 * lease and token rules on a fake clock, mutual exclusion under contention
 * from threads; then, on SQLite (shared by processes): exclusion across
 * processes, expiry after a holder is SIGKILLed, a holder paused with
 * SIGSTOP past its lease whose fenced store write is refused, and leader
 * election taking over from a killed leader; the same on PostgreSQL and a
 * 3-member etcd (both real, throwaway servers), with the server's outage
 * (on etcd: one member lost, then quorum lost).
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "etcdserver.h"
#include "pgserver.h"
#include "tap.h"

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int lost_calls;
static void on_lost(void *ud, dsys_lock *lk) { lost_calls++; }

static void rules(const char *url) {
  tap_diag("lock rules on %s", url);
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 1700000000000LL);
  dsys_locks_options lo = {.size = sizeof lo, .clock = clk};
  dsys_locks *ls = NULL;
  if (!is_int(dsys_locks_open(&ls, url, &lo), 0, "%s: open", url)) return;
  dsys_lock *a = NULL, *b = NULL;
  dsys_lock_options o = {.size = sizeof o, .owner = "alpha", .ttl_ms = 1000, .manual_renew = 1};
  is_int(dsys_lock_acquire(ls, "res", 0, &o, &a), 0, "%s: try-acquire a free lock", url);
  int64_t t1 = dsys_lock_token(a);
  ok(t1 > 0, "%s: token %lld > 0", url, (long long)t1);
  dsys_lock_info info;
  is_int(dsys_lock_holder(ls, "res", &info), 0, "%s: holder", url);
  ok(!strcmp(info.owner, "alpha") && info.token == t1 &&
         info.expires_at == dsys_clock_wall_ms(clk) + 1000,
     "%s: holder is alpha with its token and lease end", url);
  dsys_lock_options o2 = o;
  o2.owner = "beta";
  is_int(dsys_lock_acquire(ls, "res", 0, &o2, &b), DSYS_EBUSY, "%s: a held lock: try gives DSYS_EBUSY",
         url);
  is_int(dsys_lock_acquire(ls, "res", 200, &o2, &b), DSYS_ETIMEDOUT,
         "%s: waiting 200 ms for a 1 s lease: DSYS_ETIMEDOUT", url);
  ok(b == NULL, "%s: nothing returned on failure", url);
  is_int(dsys_lock_acquire(ls, "other", 0, &o2, &b), 0, "%s: another name is independent", url);
  is_int(dsys_lock_release(b), 0, "%s: release it", url);
  is_int(dsys_lock_renew(a), 0, "%s: renew", url);
  is_int(dsys_lock_release(a), 0, "%s: release", url);
  is_int(dsys_lock_holder(ls, "res", &info), DSYS_ENOTFOUND, "%s: free after release", url);
  a = NULL;
  is_int(dsys_lock_acquire(ls, "res", 0, &o2, &a), 0, "%s: beta takes it", url);
  int64_t t2 = dsys_lock_token(a);
  ok(t2 > t1, "%s: its token is larger (%lld > %lld)", url, (long long)t2, (long long)t1);

  /* expiry: beta stops renewing; after the lease gamma takes it */
  dsys_lock_options lo_b = o2;
  lo_b.on_lost = on_lost;
  dsys_lock_release(a);
  is_int(dsys_lock_acquire(ls, "res", 0, &lo_b, &a), 0, "%s: beta again, with a lost callback", url);
  int64_t t3 = dsys_lock_token(a);
  dsys_clock_advance(clk, 600 * 1000);
  ok(dsys_lock_held(a), "%s: held 600 ms into a 1 s lease", url);
  dsys_clock_advance(clk, 500 * 1000);
  ok(!dsys_lock_held(a), "%s: not held once its lease is over", url);
  is_int(dsys_lock_holder(ls, "res", &info), DSYS_ENOTFOUND, "%s: the backend sees it free", url);
  dsys_lock_options o3 = o;
  o3.owner = "gamma";
  dsys_lock *c = NULL;
  is_int(dsys_lock_acquire(ls, "res", 0, &o3, &c), 0, "%s: gamma takes the expired lock", url);
  ok(dsys_lock_token(c) > t3, "%s: with a larger token", url);
  lost_calls = 0;
  is_int(dsys_lock_renew(a), DSYS_ELEASE, "%s: beta's late renew: DSYS_ELEASE", url);
  is_int(lost_calls, 1, "%s: its lost callback ran once", url);
  is_int(dsys_lock_renew(a), DSYS_ELEASE, "%s: and stays lost", url);
  is_int(lost_calls, 1, "%s: (callback not repeated)", url);
  is_int(dsys_lock_release(a), DSYS_ELEASE, "%s: releasing a lost lock: DSYS_ELEASE", url);
  is_int(dsys_lock_holder(ls, "res", &info), 0, "%s: ... and gamma still holds it", url);
  ok(!strcmp(info.owner, "gamma"), "%s: holder gamma", url);

  /* automatic renewal keeps it across many leases */
  dsys_lock_release(c);
  dsys_lock_options auto_o = {.size = sizeof auto_o, .owner = "delta", .ttl_ms = 900};
  is_int(dsys_lock_acquire(ls, "auto", 0, &auto_o, &c), 0, "%s: auto-renewed lock", url);
  for (int i = 0; i < 50; i++) dsys_clock_advance(clk, 100 * 1000);
  ok(dsys_lock_held(c), "%s: still held after 5 s of 900 ms leases", url);
  is_int(dsys_lock_acquire(ls, "auto", 0, &o3, &b), DSYS_EBUSY, "%s: and nobody else gets it", url);
  dsys_lock_release(c);

  /* tokens only grow */
  int64_t last = 0, mono = 1;
  for (int i = 0; i < 20; i++) {
    o3.owner = i % 2 ? "x" : "y";
    if (dsys_lock_acquire(ls, "grow", 0, &o3, &c)) mono = 0;
    else {
      if (dsys_lock_token(c) <= last) mono = 0;
      last = dsys_lock_token(c);
      dsys_lock_release(c);
    }
  }
  ok(mono, "%s: 20 acquisitions, tokens strictly increasing (last %lld)", url, (long long)last);

  /* fairness: while another caller is next in line (holds the ticket),
   * a free lock is not taken (unless unfair) */
  dsys_lock *tk = NULL, *f = NULL;
  dsys_lock_options to = o, uo = o;
  to.owner = "waiter";
  uo.unfair = 1;
  is_int(dsys_lock_acquire(ls, "next-in-line/fair", 0, &to, &tk), 0, "%s: a waiter's ticket", url);
  is_int(dsys_lock_acquire(ls, "fair", 0, &o, &f), DSYS_EBUSY,
         "%s: a free lock with someone next in line: DSYS_EBUSY", url);
  is_int(dsys_lock_acquire(ls, "fair", 0, &uo, &f), 0, "%s: unfair: taken anyway", url);
  dsys_lock_release(f);
  dsys_lock_release(tk);
  is_int(dsys_lock_acquire(ls, "fair", 0, &o, &f), 0, "%s: the ticket released: taken", url);
  dsys_lock_release(f);

  /* bad input */
  is_int(dsys_lock_acquire(ls, "", 0, &o, &c), DSYS_EINVAL, "%s: empty name: DSYS_EINVAL", url);
  dsys_lock_options bad = {.size = sizeof bad, .ttl_ms = 50};
  is_int(dsys_lock_acquire(ls, "n", 0, &bad, &c), DSYS_EINVAL, "%s: ttl 50 ms: DSYS_EINVAL", url);
  is_int(dsys_lock_acquire(ls, "n", -1, &o, &c), DSYS_EINVAL, "%s: negative wait: DSYS_EINVAL", url);
  char longname[DSYS_LOCK_MAX_NAME + 2];
  memset(longname, 'n', sizeof longname - 1);
  longname[sizeof longname - 1] = 0;
  is_int(dsys_lock_acquire(ls, longname, 0, &o, &c), DSYS_EINVAL, "%s: name too long: DSYS_EINVAL",
         url);
  dsys_locks_close(ls);
  dsys_clock_free(clk);
}

/* ---- contention from threads (real clock) ---- */

typedef struct arena {
  dsys_locks *ls;
  _Atomic int inside, overlaps, done, errors;
  int64_t tokens[400];
  _Atomic int ntokens;
} arena;

static void *contender(void *p) {
  arena *a = p;
  for (int i = 0; i < 50; i++) {
    dsys_lock *lk = NULL;
    dsys_lock_options o = {.size = sizeof o, .ttl_ms = 5000};
    if (dsys_lock_acquire(a->ls, "hot", 10000, &o, &lk)) {
      a->errors++;
      continue;
    }
    if (a->inside++) a->overlaps++;
    int k = a->ntokens++;
    if (k < 400) a->tokens[k] = dsys_lock_token(lk);
    usleep(100);
    a->inside--;
    dsys_lock_release(lk);
    a->done++;
  }
  return NULL;
}

typedef struct waiter {
  dsys_locks *ls;
  int rc;
  _Atomic int done; /* set by the main thread: B may release */
} waiter;

/* B waits for the lock and holds it until the main thread has checked
 * (so A's try always meets B's ticket or B's lock, whatever the timing) */
static void *wait_b(void *p) {
  waiter *w = p;
  dsys_lock *lk = NULL;
  dsys_lock_options o = {.size = sizeof o, .ttl_ms = 5000, .owner = "B"};
  w->rc = dsys_lock_acquire(w->ls, "turn", 10000, &o, &lk);
  int64_t t0 = mono_ms();
  while (!w->done && mono_ms() - t0 < 10000) usleep(1000);
  dsys_lock_release(lk);
  return NULL;
}

/* A holder that releases and comes straight back does not overtake a
 * waiter: the waiter holds the ticket, and gets the lock. */
static void handover(dsys_locks *ls, const char *url) {
  dsys_lock *a = NULL;
  dsys_lock_options o = {.size = sizeof o, .ttl_ms = 5000, .owner = "A"};
  is_int(dsys_lock_acquire(ls, "turn", 0, &o, &a), 0, "%s: A holds turn", url);
  waiter w = {.ls = ls, .rc = -1};
  pthread_t th;
  pthread_create(&th, NULL, wait_b, &w);
  dsys_lock_info info = {0};
  int64_t t0 = mono_ms();
  while (mono_ms() - t0 < 5000 &&
         (dsys_lock_holder(ls, "next-in-line/turn", &info) || strcmp(info.owner, "B")))
    usleep(2000);
  ok(!strcmp(info.owner, "B"), "%s: B waits and is next in line", url);
  is_int(dsys_lock_release(a), 0, "%s: A releases", url);
  a = NULL;
  is_int(dsys_lock_acquire(ls, "turn", 0, &o, &a), DSYS_EBUSY,
         "%s: A comes straight back: DSYS_EBUSY (B is first)", url);
  dsys_lock_release(a);
  w.done = 1;
  pthread_join(th, NULL);
  is_int(w.rc, 0, "%s: B got the lock", url);
}

static void contention(const char *url) {
  arena a = {0};
  if (!is_int(dsys_locks_open(&a.ls, url, NULL), 0, "%s: open (real clock)", url)) return;
  pthread_t th[4];
  int64_t t0 = mono_ms();
  for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, contender, &a);
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  is_int(a.done, 200, "%s: 4 threads x 50 acquisitions all succeeded (%d errors, %lld ms)", url,
         (int)a.errors, (long long)(mono_ms() - t0));
  is_int(a.overlaps, 0, "%s: never two holders at once", url);
  int inc = 1;
  for (int i = 1; i < a.ntokens && i < 400; i++)
    if (a.tokens[i] <= a.tokens[i - 1]) inc = 0;
  ok(inc, "%s: tokens increase in the order the lock was held", url);
  handover(a.ls, url);
  dsys_locks_close(a.ls);
}

static void guarded_put(void) {
  dsys_store *s = NULL;
  dsys_store_open(&s, "memory:", NULL);
  is_int(dsys_lock_guarded_put(s, "res", "{\"v\":1}", 5), 0, "guarded put with token 5");
  is_int(dsys_lock_guarded_put(s, "res", "{\"v\":2}", 4), DSYS_ELEASE,
         "a stale token 4 is refused: DSYS_ELEASE");
  is_int(dsys_lock_guarded_put(s, "res", "{\"v\":3}", 5), 0, "the same token may write again");
  is_int(dsys_lock_guarded_put(s, "res", "{\"v\":4}", 7), 0, "a newer token 7 writes");
  dsys_item *it = NULL;
  dsys_store_get(s, "res", &it);
  ok(it && !strcmp(it->value, "{\"v\":4}") && strstr(it->metadata, "\"fence\":7"),
     "the item holds the newest write and its fence (%s)", it ? it->metadata : "none");
  dsys_item_free(it);
  is_int(dsys_lock_guarded_put(s, "res", "{}", 0), DSYS_EINVAL, "token 0: DSYS_EINVAL");
  dsys_store_close(s);
}

/* ---- processes (SQLite) ---- */

/* A child that takes the lock, says so on fd, then runs body. */
static pid_t child(const char *url, const char *store_url, int fd, int ttl, int mode) {
  pid_t pid = fork();
  if (pid) return pid;
  dsys_locks *ls = NULL;
  dsys_lock *lk = NULL;
  if (dsys_locks_open(&ls, url, NULL)) _exit(10);
  if (mode == 2) { /* election candidate */
    dsys_election *e = NULL;
    dsys_election_options eo = {.size = sizeof eo, .ttl_ms = ttl, .candidate = "child"};
    if (dsys_election_campaign(ls, "faultd", &eo, &e)) _exit(11);
    for (int i = 0; i < 500 && !dsys_election_is_leader(e, NULL); i++) usleep(10000);
    if (write(fd, "L", 1) != 1) _exit(12);
    for (;;) pause();
  }
  dsys_lock_options o = {.size = sizeof o, .ttl_ms = ttl, .owner = "child"};
  if (dsys_lock_acquire(ls, "proc", 5000, &o, &lk)) _exit(13);
  int64_t token = dsys_lock_token(lk);
  if (write(fd, "A", 1) != 1) _exit(14);
  if (mode == 0) for (;;) pause(); /* killed while holding */
  /* mode 1: paused by the parent past the lease; resumed, it writes the
   * protected item with its (stale) token */
  char c;
  if (read(fd, &c, 1) != 1) _exit(15);
  dsys_store *s = NULL;
  if (dsys_store_open(&s, store_url, NULL)) _exit(16);
  int e = dsys_lock_guarded_put(s, "protected", "{\"by\":\"child\"}", token);
  _exit(e == DSYS_ELEASE ? 0 : 20);
}

/* Processes that each increment a store counter 30 times under the lock,
 * with a read-modify-write that would lose updates without it. */
static void counter_procs(const char *url, const char *store_url) {
  pid_t kids[3];
  for (int k = 0; k < 3; k++) {
    kids[k] = fork();
    if (kids[k]) continue;
    dsys_locks *ls = NULL;
    dsys_store *s = NULL;
    if (dsys_locks_open(&ls, url, NULL) || dsys_store_open(&s, store_url, NULL)) _exit(2);
    for (int i = 0; i < 30; i++) {
      dsys_lock *lk = NULL;
      dsys_lock_options o = {.size = sizeof o, .ttl_ms = 5000};
      if (dsys_lock_acquire(ls, "counter", 20000, &o, &lk)) _exit(3);
      dsys_item *it = NULL;
      long v = dsys_store_get(s, "count", &it) ? 0 : atol(it->value);
      dsys_item_free(it);
      char buf[32];
      snprintf(buf, sizeof buf, "%ld", v + 1);
      usleep(200);
      if (dsys_store_put(s, "count", buf, NULL, NULL)) _exit(4);
      dsys_lock_release(lk);
    }
    _exit(0);
  }
  int okall = 1;
  for (int k = 0; k < 3; k++) {
    int st = 0;
    waitpid(kids[k], &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st)) okall = 0;
  }
  ok(okall, "3 processes x 30 locked increments finished");
  dsys_store *s = NULL;
  dsys_item *it = NULL;
  dsys_store_open(&s, store_url, NULL);
  dsys_store_get(s, "count", &it);
  is_int(it ? atol(it->value) : -1, 90, "no increment lost: the lock excluded across processes");
  dsys_item_free(it);
  dsys_store_close(s);
}

static void processes(const char *url, const char *store_url) {
  tap_diag("processes on %s", url);
  dsys_locks *ls = NULL;
  /* the children would wait forever on a parent that cannot take part */
  if (!is_int(dsys_locks_open(&ls, url, NULL), 0, "%s: open for the process tests", url)) return;
  counter_procs(url, store_url);
  int sv[2];
  socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
  char c = 0;

  /* SIGKILL: the lease runs out, another takes over */
  pid_t pid = child(url, store_url, sv[1], 600, 0);
  ok(read(sv[0], &c, 1) == 1 && c == 'A', "a child process holds the lock (ttl 600 ms)");
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  dsys_lock *lk = NULL;
  int64_t t0 = mono_ms();
  is_int(dsys_lock_acquire(ls, "proc", 5000, NULL, &lk), 0, "after SIGKILL, the lock is taken");
  int64_t took = mono_ms() - t0;
  ok(took < 2000, "... within the lease (%lld ms)", (long long)took);
  dsys_lock_release(lk);

  /* SIGSTOP past the lease: the resumed holder's fenced write is refused */
  pid = child(url, store_url, sv[1], 500, 1);
  ok(read(sv[0], &c, 1) == 1 && c == 'A', "a child holds the lock (ttl 500 ms)");
  kill(pid, SIGSTOP);
  lk = NULL;
  is_int(dsys_lock_acquire(ls, "proc", 5000, NULL, &lk), 0, "while it is stopped, we take the lock");
  dsys_store *s = NULL;
  dsys_store_open(&s, store_url, NULL);
  is_int(dsys_lock_guarded_put(s, "protected", "{\"by\":\"parent\"}", dsys_lock_token(lk)), 0,
         "and write the protected item with our token");
  kill(pid, SIGCONT);
  if (write(sv[0], "go", 1) != 1) {}
  int st = 0;
  waitpid(pid, &st, 0);
  ok(WIFEXITED(st) && WEXITSTATUS(st) == 0,
     "the resumed child's write with its stale token got DSYS_ELEASE (exit %d)",
     WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  dsys_item *it = NULL;
  dsys_store_get(s, "protected", &it);
  ok(it && strstr(it->value, "parent"), "the item still holds our write (%s)", it ? it->value : "none");
  dsys_item_free(it);
  dsys_store_close(s);
  dsys_lock_release(lk);

  /* election: the leader is killed, another candidate takes over */
  pid = child(url, store_url, sv[1], 600, 2);
  ok(read(sv[0], &c, 1) == 1 && c == 'L', "a child process leads the election \"faultd\"");
  dsys_lock_info info;
  is_int(dsys_election_leader(ls, "faultd", &info), 0, "the leader is visible");
  ok(!strcmp(info.owner, "child"), "... and is the child (%s)", info.owner);
  dsys_election *e = NULL;
  dsys_election_options eo = {.size = sizeof eo, .ttl_ms = 600, .candidate = "parent"};
  is_int(dsys_election_campaign(ls, "faultd", &eo, &e), 0, "we campaign too");
  ok(!dsys_election_is_leader(e, NULL), "and follow");
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  t0 = mono_ms();
  while (!dsys_election_is_leader(e, NULL) && mono_ms() - t0 < 5000) usleep(10000);
  int64_t token = 0;
  ok(dsys_election_is_leader(e, &token), "after the leader's SIGKILL we lead (%lld ms, token %lld)",
     (long long)(mono_ms() - t0), (long long)token);
  dsys_election_resign(e);
  is_int(dsys_election_leader(ls, "faultd", &info), DSYS_ENOTFOUND, "resigned: no leader");
  close(sv[0]);
  close(sv[1]);
  dsys_locks_close(ls);
}

/* ---- election within one process ---- */

static _Atomic int changes[2];
static void on_change(void *ud, int leader, int64_t token) { changes[(intptr_t)ud] += leader ? 1 : 100; }

static void election(void) {
  dsys_locks *ls = NULL;
  dsys_locks_open(&ls, "memory:", NULL);
  dsys_election *e1 = NULL, *e2 = NULL;
  dsys_election_options o1 = {.size = sizeof o1, .ttl_ms = 300, .candidate = "one",
                              .on_change = on_change, .ud = (void *)0};
  dsys_election_options o2 = o1;
  o2.candidate = "two";
  o2.ud = (void *)1;
  is_int(dsys_election_campaign(ls, "grp", &o1, &e1), 0, "candidate one campaigns");
  ok(dsys_election_is_leader(e1, NULL), "one leads at once (alone)");
  is_int(dsys_election_campaign(ls, "grp", &o2, &e2), 0, "candidate two campaigns");
  ok(!dsys_election_is_leader(e2, NULL), "two follows");
  dsys_election_resign(e1);
  int64_t t0 = mono_ms();
  while (!dsys_election_is_leader(e2, NULL) && mono_ms() - t0 < 3000) usleep(5000);
  ok(dsys_election_is_leader(e2, NULL), "one resigned: two leads (%lld ms)", (long long)(mono_ms() - t0));
  is_int(changes[0], 101, "one was told: leader, then not");
  is_int(changes[1], 1, "two was told: leader");
  dsys_election_resign(e2);
  is_int(dsys_election_campaign(ls, "", &o1, &e1), DSYS_EINVAL, "empty election name: DSYS_EINVAL");
  dsys_locks_close(ls);
}

/* The server down (down(ud) kills it): bounded DSYS_EUNAVAIL, a held lock
 * is lost when its lease ends without a renewal; back (up(ud)): the same
 * handle works again. */
static void outage(const char *what, const char *url, int (*down)(void *), int (*up)(void *),
                   void *ud) {
  dsys_locks *ls = NULL;
  if (!is_int(dsys_locks_open(&ls, url, NULL), 0, "%s: open for the outage test", what)) return;
  dsys_lock *lk = NULL;
  lost_calls = 0;
  dsys_lock_options o = {.size = sizeof o, .ttl_ms = 600, .on_lost = on_lost};
  is_int(dsys_lock_acquire(ls, "outage", 0, &o, &lk), 0, "%s: a lock with a 600 ms lease", what);
  ok(down(ud) == 0, "%s: server down", what);
  int64_t t0 = mono_ms();
  dsys_lock *other = NULL;
  is_int(dsys_lock_acquire(ls, "other", 0, NULL, &other), DSYS_EUNAVAIL,
         "%s: acquire fails with DSYS_EUNAVAIL", what);
  ok(mono_ms() - t0 < 6000, "%s: ... within the bound (%lld ms)", what, (long long)(mono_ms() - t0));
  for (int i = 0; i < 300 && dsys_lock_held(lk); i++) usleep(10000);
  ok(!dsys_lock_held(lk), "%s: no renewal got through: the lock counts as lost after its lease",
     what);
  for (int i = 0; i < 600 && !lost_calls; i++) usleep(10000);
  is_int(lost_calls, 1, "%s: ... and its lost callback ran", what);
  dsys_lock_release(lk);
  ok(up(ud) == 0, "%s: server back", what);
  int e = -1;
  for (int i = 0; i < 100 && e; i++) {
    e = dsys_lock_acquire(ls, "outage", 2000, NULL, &lk);
    if (e) usleep(50000);
  }
  is_int(e, 0, "%s: the same handle takes the lock again", what);
  dsys_lock_release(lk);
  dsys_locks_close(ls);
}

static int pg_down(void *ud) {
  tpg_kill(ud);
  return 0;
}
static int pg_up(void *ud) { return tpg_restart(ud); }

/* etcd: members 1 and 2 of 3 killed (no quorum), then started again */
static int etcd_down(void *ud) { return tetcd_kill_member(ud, 2); }
static int etcd_up(void *ud) {
  return tetcd_start_member(ud, 1) || tetcd_start_member(ud, 2) ? -1 : 0;
}

/* One member of three killed: the handle moves to the others and locks
 * keep working (the member is left down for the outage test). */
static void etcd_member_down(tetcd *et, const char *url) {
  dsys_locks *ls = NULL;
  if (!is_int(dsys_locks_open(&ls, url, NULL), 0, "etcd: open for the member test")) return;
  dsys_lock *lk = NULL;
  /* the lease outlasts etcd's own failover: a new raft leader takes
   * about 1-2 s (election timeout 1 s) when the killed member led */
  dsys_lock_options o = {.size = sizeof o, .ttl_ms = 6000};
  is_int(dsys_lock_acquire(ls, "member", 0, &o, &lk), 0, "etcd: a lock held on 3 members");
  int64_t t1 = dsys_lock_token(lk);
  is_int(tetcd_kill_member(et, 1), 0, "etcd: member 1 killed");
  int64_t t0 = mono_ms();
  int e = -1;
  while (e && mono_ms() - t0 < 5000) /* EUNAVAIL while the others elect a leader */
    if ((e = dsys_lock_renew(lk))) usleep(50000);
  is_int(e, 0, "etcd: the holder renews through another member (%lld ms)",
         (long long)(mono_ms() - t0));
  ok(dsys_lock_held(lk), "etcd: and still holds it");
  dsys_lock *b = NULL;
  is_int(dsys_lock_acquire(ls, "member", 0, &o, &b), DSYS_EBUSY, "etcd: it is still held");
  is_int(dsys_lock_release(lk), 0, "etcd: released");
  int good = 1;
  int64_t last = t1;
  for (int i = 0; i < 10; i++) {
    if (dsys_lock_acquire(ls, "member", 2000, &o, &lk)) {
      good = 0;
      continue;
    }
    if (dsys_lock_token(lk) <= last) good = 0;
    last = dsys_lock_token(lk);
    if (dsys_lock_release(lk)) good = 0;
  }
  ok(good, "etcd: 10 more acquisitions on 2 members, tokens growing (last %lld)", (long long)last);
  dsys_locks_close(ls);
}

int main(void) {
  char dir[] = "/tmp/dsys-lock.XXXXXX";
  if (!mkdtemp(dir)) tap_bail("mkdtemp");
  char url[128], store_url[128];
  snprintf(url, sizeof url, "sqlite://%s/locks.sqlite", dir);
  snprintf(store_url, sizeof store_url, "sqlite://%s/store.sqlite", dir);
  dsys_locks *ls = NULL;
  is_int(dsys_locks_open(&ls, "nosuch://x", NULL), DSYS_ESCHEME, "unknown scheme: DSYS_ESCHEME");
  rules("memory:");
  rules(url);
  contention("memory:");
  contention(url);
  guarded_put();
  election();
  processes(url, store_url);
  /* PostgreSQL: a real throwaway server */
  tpg srv;
  if (ok(tpg_start(&srv) == 0, "start a throwaway PostgreSQL")) {
    rules(srv.url);
    contention(srv.url);
    char pg_store[160]; /* its own counter and protected item */
    snprintf(pg_store, sizeof pg_store, "sqlite://%s/store-pg.sqlite", dir);
    processes(srv.url, pg_store);
    outage("pg", srv.url, pg_down, pg_up, &srv);
  }
  tpg_stop(&srv);
  /* etcd: a real 3-member cluster */
  tetcd et;
  if (ok(tetcd_start(&et, 3) == 0, "start a throwaway 3-member etcd")) {
    char eurl[320], etcd_store[160];
    snprintf(eurl, sizeof eurl, "etcd://%s/dsys-test/locks", et.endpoints);
    snprintf(etcd_store, sizeof etcd_store, "sqlite://%s/store-etcd.sqlite", dir);
    rules(eurl);
    contention(eurl);
    processes(eurl, etcd_store);
    etcd_member_down(&et, eurl);
    outage("etcd", eurl, etcd_down, etcd_up, &et);
    dsys_locks *bad = NULL;
    is_int(dsys_locks_open(&bad, "etcd://", NULL), DSYS_EINVAL, "etcd: no endpoint: DSYS_EINVAL");
    is_int(dsys_locks_open(&bad, "etcd://127.0.0.1:9,/p", NULL), DSYS_EINVAL,
           "etcd: an empty endpoint: DSYS_EINVAL");
  }
  tetcd_stop(&et);
  /* etcds:// with client certificates and etcd auth (user root) */
  if (ok(tetcd_start_with(&et, 1, "--tls --auth") == 0, "start a TLS + auth etcd")) {
    char surl[1024];
    tetcd_url(&et, "dsys-test/locks", surl, sizeof surl);
    ok(!strncmp(surl, "etcds://", 8), "etcd over TLS + auth: %s", surl);
    rules(surl);
    contention(surl);
    dsys_locks *bad = NULL;
    snprintf(surl, sizeof surl, "etcds://%s/p?ca=%s/tls/client.pem", et.endpoints, et.dir);
    is_int(dsys_locks_open(&bad, surl, NULL), DSYS_EAUTH, "etcds: a wrong CA: DSYS_EAUTH");
  }
  tetcd_stop(&et);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd)) {}
  return tap_done();
}
