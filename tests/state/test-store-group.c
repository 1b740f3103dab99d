/*
 * Group commit of the store's writes on SQLite (lib/core/group.c and
 * lib/state/store_sqlite.c):
 *  1. the group helper: calls queued while a group runs form the next
 *     group, each op gets its own result, a chain stays whole;
 *  2. per-caller results inside one shared group: a version conflict, an
 *     existing key, a non-integer increment and a missing key fail alone,
 *     the other writes of the same transaction commit;
 *  2b. an op that fails after it changed something (a put over an expired
 *     row deletes it, then its insert is refused by a trigger; a put_many
 *     whose second entry is that put) is undone whole: the group is rolled
 *     back and run again op by op, the other writes commit and the expired
 *     row is still there;
 *  3. 8 threads putting in a child process SIGKILLed mid-run, at
 *     synchronous=NORMAL and FULL: every acknowledged put is there after
 *     reopening, PRAGMA integrity_check is ok.
 * Groups are made deterministic by holding the file's write lock from a
 * raw connection while the calls queue up (waits are bounded).
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "core/group.h"
#include "state/store_int.h"
#include "tap.h"

static char dir[256];

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait (bounded) until n ops are queued behind a running group. */
static int wait_pending(dsysi_group *g, int n, int timeout_ms) {
  int64_t end = mono_ms() + timeout_ms;
  while (dsysi_group_pending(g) < n && mono_ms() < end) usleep(1000);
  return dsysi_group_pending(g) == n;
}

/* Wait (bounded) until a group is running. */
static int wait_running(dsysi_group *g, int timeout_ms) {
  int64_t end = mono_ms() + timeout_ms;
  for (;;) {
    pthread_mutex_lock(&g->mu);
    int r = g->running;
    pthread_mutex_unlock(&g->mu);
    if (r || mono_ms() >= end) return r;
    usleep(1000);
  }
}

/* ---- 1: the helper alone ---- */

typedef struct top {
  dsysi_group_op g;
  int in, out;
} top;

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open, sizes[16], nsizes;

static void t_run(void *ud, dsysi_group_op *first) {
  int n = 0;
  for (dsysi_group_op *o = first; o; o = o->next, n++) ((top *)o)->out = ((top *)o)->in * 2;
  pthread_mutex_lock(&gate_mu);
  if (nsizes < 16) sizes[nsizes++] = n;
  while (!gate_open) pthread_cond_wait(&gate_cv, &gate_mu); /* hold the first group */
  pthread_mutex_unlock(&gate_mu);
}

static dsysi_group tg;

static void *t_caller(void *p) {
  top *op = p;
  dsysi_group_execute(&tg, &op->g, &op->g);
  return NULL;
}

static void *t_chain(void *p) {
  top *ops = p; /* three ops, one call */
  ops[0].g.next = &ops[1].g;
  ops[1].g.next = &ops[2].g;
  dsysi_group_execute(&tg, &ops[0].g, &ops[2].g);
  return NULL;
}

static void test_helper(void) {
  dsysi_group_init(&tg, 256, 1, t_run, NULL);
  top lead = {.in = 100}, ops[6], chain[3];
  pthread_t lt, th[6], ct;
  pthread_create(&lt, NULL, t_caller, &lead);
  ok(wait_running(&tg, 10000), "group: the first caller leads a group");
  for (int i = 0; i < 6; i++) {
    ops[i] = (top){.in = i + 1};
    pthread_create(&th[i], NULL, t_caller, &ops[i]);
  }
  for (int i = 0; i < 3; i++) chain[i] = (top){.in = 10 + i};
  pthread_create(&ct, NULL, t_chain, chain);
  ok(wait_pending(&tg, 9, 10000), "group: 9 ops of 7 callers queued behind it");
  pthread_mutex_lock(&gate_mu);
  gate_open = 1;
  pthread_cond_broadcast(&gate_cv);
  pthread_mutex_unlock(&gate_mu);
  pthread_join(lt, NULL);
  for (int i = 0; i < 6; i++) pthread_join(th[i], NULL);
  pthread_join(ct, NULL);
  is_int(dsysi_group_count(&tg), 2, "group: two groups ran");
  ok(nsizes == 2 && sizes[0] == 1 && sizes[1] == 9, "group: of 1 and 9 ops (%d, %d)",
     sizes[0], nsizes > 1 ? sizes[1] : -1);
  int right = lead.out == 200;
  for (int i = 0; i < 6; i++) right &= ops[i].out == (i + 1) * 2;
  for (int i = 0; i < 3; i++) right &= chain[i].out == (10 + i) * 2;
  ok(right, "group: every op got its own result");
  dsysi_group_destroy(&tg);
}

/* ---- 2: per-caller results in a shared group ---- */

typedef struct call {
  dsys_store *s;
  int kind; /* 0 put, 1 update (CAS), 2 create, 3 incr, 4 delete, 5 put_many */
  const char *key, *value;
  int64_t num; /* expected version or delta; put_many: the entries' count */
  int rc;
  int64_t version, incr;
  const dsys_store_entry *ents; /* put_many */
  size_t failed;
} call;

static void *do_call(void *p) {
  call *c = p;
  dsys_item *it = NULL;
  dsys_store_write w = {.size = sizeof w, .expected_version = c->num};
  switch (c->kind) {
  case 0: c->rc = dsys_store_put(c->s, c->key, c->value, NULL, &it); break;
  case 1: c->rc = dsys_store_update(c->s, c->key, c->value, &w, &it); break;
  case 2: c->rc = dsys_store_create(c->s, c->key, c->value, NULL, &it); break;
  case 3: c->rc = dsys_store_incr(c->s, c->key, c->num, &c->incr); break;
  case 4: c->rc = dsys_store_delete(c->s, c->key, c->num); break;
  default: c->rc = dsys_store_put_many(c->s, c->ents, (size_t)c->num, NULL, &c->failed); break;
  }
  c->version = it ? it->version : 0;
  dsys_item_free(it);
  return NULL;
}

static int64_t version_of(dsys_store *s, const char *key) {
  dsys_item *it = NULL;
  int64_t v = dsys_store_get(s, key, &it) ? 0 : it->version;
  dsys_item_free(it);
  return v;
}

/* Runs lead, then the n calls, in one group of store s behind it: raw, a
 * connection to the store's file, takes the write lock, so that the
 * leader waits in BEGIN IMMEDIATE (busy timeout 5 s) while the calls
 * queue, one by one so that the group holds them in this order; then raw
 * commits and every call ends. *groups: the groups that ran meanwhile.
 * 1 when the lock was taken, the leader led and all n queued (bounded
 * waits). */
static int run_grouped(dsys_store *s, sqlite3 *raw, call *lead, call *calls, int n,
                       unsigned long long *groups) {
  dsysi_group *g = dsysi_store_sqlite_group(s);
  if (!g || n > 16 || sqlite3_exec(raw, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
    return 0;
  unsigned long long g0 = dsysi_group_count(g);
  pthread_t lt, th[16];
  pthread_create(&lt, NULL, do_call, lead);
  int queued = wait_running(g, 4000);
  for (int i = 0; i < n; i++) {
    pthread_create(&th[i], NULL, do_call, &calls[i]);
    queued &= wait_pending(g, i + 1, 4000);
  }
  sqlite3_exec(raw, "COMMIT", NULL, NULL, NULL);
  pthread_join(lt, NULL);
  for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
  *groups = dsysi_group_count(g) - g0;
  return queued;
}

/* A store on the new file NAME.sqlite of dir: path[300] and url[320]
 * receive its path and URL; label names the test's lines. */
static dsys_store *open_new(const char *name, char *path, char *url, const char *label) {
  snprintf(path, 300, "%s/%s.sqlite", dir, name);
  snprintf(url, 320, "sqlite://%s", path);
  dsys_store *s = NULL;
  is_int(dsys_store_open(&s, url, NULL), 0, "%s: open", label);
  return s;
}

static void test_shared_group(void) {
  char path[300], url[320];
  dsys_store *s = open_new("group", path, url, "store");
  ok(dsysi_store_sqlite_group(s) != NULL, "store: the SQLite backend writes through a group");
  dsys_store_put(s, "cas", "1", NULL, NULL);
  dsys_store_put(s, "exists", "1", NULL, NULL);
  dsys_store_put(s, "text", "\"abc\"", NULL, NULL);
  dsys_store_put(s, "gone", "1", NULL, NULL);
  sqlite3 *raw = NULL;
  sqlite3_open(path, &raw);
  unsigned long long groups = 0;
  call lead = {s, 0, "lead", "{\"x\":1}"};
  const dsys_store_entry many[] = {{"m1", "1"}, {"m2", "2"}, {"good", "0"}};
  call calls[] = {
      {s, 1, "cas", "2", 5},     /* stale version */
      {s, 2, "exists", "2"},     /* create over an existing key */
      {s, 3, "text", NULL, 1},   /* increment of a string */
      {s, 4, "missing", NULL, 0}, /* delete of a missing key */
      {s, 0, "good", "[1,2]"},
      {s, 1, "cas", "3", 1},     /* the right version */
      {s, 3, "ctr", NULL, 3},
      {s, 4, "gone", NULL, 1},
      {s, 5, NULL, NULL, 3, .ents = many},
  };
  enum { N = sizeof calls / sizeof calls[0] };
  ok(run_grouped(s, raw, &lead, calls, N, &groups),
     "store: the first write leads a group, waiting for the lock; %d writes of %d threads "
     "queued behind it", N, N);
  is_int(groups, 2, "store: they ran as two groups (the first alone)");
  is_int(lead.rc, 0, "store: the leader's put committed");
  is_int(calls[0].rc, DSYS_ECONFLICT, "store: a stale CAS fails alone with DSYS_ECONFLICT");
  is_int(calls[1].rc, DSYS_EEXIST, "store: a create of an existing key fails alone with DSYS_EEXIST");
  is_int(calls[2].rc, DSYS_ETYPE, "store: an increment of a string fails alone with DSYS_ETYPE");
  is_int(calls[3].rc, DSYS_ENOTFOUND, "store: a delete of a missing key fails alone with DSYS_ENOTFOUND");
  is_int(calls[4].rc, 0, "store: a put in the same group commits");
  is_int(calls[5].rc, 0, "store: a CAS with the right version in the same group commits");
  is_int(calls[5].version, 2, "store: ... and returns version 2");
  is_int(calls[6].rc, 0, "store: an increment in the same group commits");
  is_int(calls[6].incr, 3, "store: ... and returns its own result");
  is_int(calls[7].rc, 0, "store: a delete in the same group commits");
  is_int(calls[8].rc, 0, "store: a put_many of 3 in the same group commits");
  /* What is on disk, read through a fresh handle. */
  dsys_store_close(s);
  is_int(dsys_store_open(&s, url, NULL), 0, "store: reopen");
  is_int(version_of(s, "good"), 2, "store: the put is there, and the put_many's after it");
  ok(version_of(s, "m1") == 1 && version_of(s, "m2") == 1, "store: the put_many's new keys are there");
  is_int(version_of(s, "cas"), 2, "store: cas at version 2 (one change, not two)");
  is_int(version_of(s, "exists"), 1, "store: the existing key is untouched");
  dsys_item *it = NULL;
  is_int(dsys_store_get(s, "text", &it), 0, "store: the string is there");
  is_str(it ? it->value : NULL, "\"abc\"", "store: ... unchanged");
  dsys_item_free(it);
  it = NULL;
  is_int(dsys_store_get(s, "ctr", &it), 0, "store: the counter is there");
  is_str(it ? it->value : NULL, "3", "store: ... at 3");
  dsys_item_free(it);
  is_int(version_of(s, "gone"), 0, "store: the deleted key is gone");

  /* A group in which every write fails commits nothing and answers each. */
  call lead2 = {s, 2, "exists", "5"};
  call bad[] = {{s, 1, "cas", "9", 7}, {s, 2, "good", "1"}, {s, 4, "nope", NULL, 0}};
  ok(run_grouped(s, raw, &lead2, bad, 3, &groups) && groups == 2,
     "store: a group of failing writes formed");
  sqlite3_close(raw);
  ok(lead2.rc == DSYS_EEXIST && bad[0].rc == DSYS_ECONFLICT && bad[1].rc == DSYS_EEXIST &&
         bad[2].rc == DSYS_ENOTFOUND,
     "store: each failing write got its own error (%s, %s, %s, %s)", dsys_strerror(lead2.rc),
     dsys_strerror(bad[0].rc), dsys_strerror(bad[1].rc), dsys_strerror(bad[2].rc));
  is_int(version_of(s, "cas"), 2, "store: nothing changed");
  /* The handle is still usable. */
  is_int(dsys_store_put(s, "after", "1", NULL, NULL), 0, "store: a write after the failed group");
  dsys_store_close(s);
}

/* ---- 2b: an op failing half-done in a group without savepoints ---- */

static int64_t raw_count(const char *path, const char *key) {
  sqlite3 *db = NULL;
  sqlite3_open(path, &db);
  sqlite3_stmt *q = NULL;
  sqlite3_prepare_v2(db, "SELECT count(*) FROM dsys_store_items WHERE key = ?1", -1, &q, NULL);
  sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
  int64_t n = q && sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -1;
  sqlite3_finalize(q);
  sqlite3_close(db);
  return n;
}

static void test_half_done(void) {
  char path[300], url[320];
  dsys_store *s = open_new("half", path, url, "half-done");
  dsys_store_put(s, "exists", "1", NULL, NULL);
  dsys_store_put(s, "cas", "1", NULL, NULL);
  /* An expired row of "boom" (expires_at 1 ms after the epoch), and a
   * trigger that refuses every insert of "boom": a put of it deletes the
   * expired row, then fails on its insert. */
  sqlite3 *raw = NULL;
  sqlite3_open(path, &raw);
  is_int(sqlite3_exec(raw,
                      "INSERT INTO dsys_store_items(key, value, metadata, version, created_at, "
                      "updated_at, expires_at) VALUES('boom', '0', '{}', 1, 1, 1, 1);"
                      "CREATE TRIGGER boom BEFORE INSERT ON dsys_store_items WHEN new.key = 'boom' "
                      "BEGIN SELECT RAISE(ABORT, 'refused'); END;",
                      NULL, NULL, NULL),
         SQLITE_OK, "half-done: an expired row and a refusing trigger");
  is_int(dsys_store_put(s, "boom", "1", NULL, NULL), DSYS_EEXIST,
         "half-done: a put alone fails with the trigger's constraint error");
  is_int(raw_count(path, "boom"), 1, "half-done: ... and the expired row it deleted is back");
  unsigned long long groups = 0;
  call lead = {s, 0, "lead", "1"};
  const dsys_store_entry many[] = {{"many1", "1"}, {"boom", "2"}, {"many2", "3"}};
  call calls[] = {
      {s, 0, "before", "2"},
      {s, 0, "boom", "3"},      /* fails after its delete */
      {s, 2, "exists", "4"},    /* refused before any change */
      {s, 1, "cas", "5", 1},
      {s, 3, "ctr", NULL, 7},
      {s, 5, NULL, NULL, 3, .ents = many}, /* fails at its second entry */
  };
  enum { N = sizeof calls / sizeof calls[0] };
  ok(run_grouped(s, raw, &lead, calls, N, &groups),
     "half-done: %d writes queued in order behind a leader", N);
  is_int(groups, 2, "half-done: two groups (the leader alone, then the six)");
  is_int(lead.rc, 0, "half-done: the leader's put committed");
  is_int(calls[0].rc, 0, "half-done: the put before the failing one committed");
  is_int(calls[1].rc, DSYS_EEXIST, "half-done: the failing put got its own error");
  is_int(calls[2].rc, DSYS_EEXIST, "half-done: the refused create got its own error");
  is_int(calls[3].rc, 0, "half-done: the CAS after it committed");
  is_int(calls[3].version, 2, "half-done: ... at version 2");
  is_int(calls[4].rc, 0, "half-done: the increment after it committed");
  is_int(calls[4].incr, 7, "half-done: ... with its own result");
  is_int(calls[5].rc, DSYS_EEXIST, "half-done: a put_many failing at an entry got its error");
  is_int(calls[5].failed, 1, "half-done: ... naming entry 1");
  ok(raw_count(path, "many1") == 0 && raw_count(path, "many2") == 0,
     "half-done: ... and none of its entries is stored");
  is_int(raw_count(path, "boom"), 1, "half-done: the expired row the failing put deleted is back");
  dsys_store_close(s);
  is_int(dsys_store_open(&s, url, NULL), 0, "half-done: reopen");
  is_int(version_of(s, "before"), 1, "half-done: the put before is on disk");
  is_int(version_of(s, "cas"), 2, "half-done: the CAS is on disk, once");
  is_int(version_of(s, "ctr"), 1, "half-done: the counter is on disk");
  is_int(version_of(s, "exists"), 1, "half-done: the existing key is untouched");
  is_int(version_of(s, "boom"), 0, "half-done: the expired key still reads as absent");
  dsys_store_close(s);
  sqlite3_close(raw);
}

/* ---- 3: 8 writing threads in a child killed mid-run ---- */

#define NTH 8

typedef struct rec {
  int32_t t, i;
} rec;

static dsys_store *cs;
static int cfd;

static void *child_writer(void *p) {
  int t = (int)(intptr_t)p;
  char key[64], val[64];
  for (int i = 0; i < 1000000; i++) {
    snprintf(key, sizeof key, "k/%d/%d", t, i);
    snprintf(val, sizeof val, "{\"t\":%d,\"i\":%d}", t, i);
    if (dsys_store_put(cs, key, val, NULL, NULL)) _exit(4);
    rec r = {t, i}; /* acknowledged: the put returned */
    if (write(cfd, &r, sizeof r) != sizeof r) _exit(5);
  }
  return NULL;
}

static void test_killed(int full) {
  const char *mode = full ? "FULL" : "NORMAL";
  char path[300], url[320];
  snprintf(path, sizeof path, "%s/kill-%s.sqlite", dir, mode);
  snprintf(url, sizeof url, "sqlite://%s", path);
  int fds[2];
  if (pipe(fds)) tap_bail("pipe");
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    cfd = fds[1];
    dsys_store_options o = {.size = sizeof o, .full_sync = full};
    if (dsys_store_open(&cs, url, &o)) _exit(2);
    pthread_t th[NTH];
    for (int t = 0; t < NTH; t++) pthread_create(&th[t], NULL, child_writer, (void *)(intptr_t)t);
    for (int t = 0; t < NTH; t++) pthread_join(th[t], NULL);
    _exit(0);
  }
  close(fds[1]);
  size_t cap = 1 << 16, n = 0;
  rec *recs = malloc(cap * sizeof *recs);
  int64_t start = mono_ms(), end = start + 600, deadline = start + 30000;
  int killed = 0;
  for (;;) {
    int64_t now = mono_ms();
    /* kill once it has run a while and acknowledged some puts (bounded) */
    if (!killed && ((now >= end && n >= 100) || now >= deadline)) {
      kill(pid, SIGKILL);
      killed = 1;
    }
    rec r;
    ssize_t k = read(fds[0], &r, sizeof r);
    if (k == sizeof r) {
      if (n == cap) recs = realloc(recs, (cap *= 2) * sizeof *recs);
      recs[n++] = r;
    } else if (k <= 0) {
      break; /* EOF: the child is dead and the pipe drained */
    }
  }
  int st = 0;
  waitpid(pid, &st, 0);
  close(fds[0]);
  ok(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "%s: the writer was killed by SIGKILL", mode);
  ok(n >= 100, "%s: %d threads acknowledged %zu puts before", mode, NTH, n);
  dsys_store *s = NULL;
  is_int(dsys_store_open(&s, url, NULL), 0, "%s: reopen after the kill", mode);
  size_t missing = 0, wrong = 0;
  for (size_t i = 0; i < n; i++) {
    char key[64], val[64];
    snprintf(key, sizeof key, "k/%d/%d", recs[i].t, recs[i].i);
    snprintf(val, sizeof val, "{\"t\":%d,\"i\":%d}", recs[i].t, recs[i].i);
    dsys_item *it = NULL;
    if (dsys_store_get(s, key, &it)) missing++;
    else if (strcmp(it->value, val)) wrong++;
    dsys_item_free(it);
  }
  is_int(missing, 0, "%s: every acknowledged put is there (%zu)", mode, n);
  is_int(wrong, 0, "%s: with its value", mode);
  dsys_store_close(s);
  free(recs);
  sqlite3 *db = NULL;
  sqlite3_open(path, &db);
  sqlite3_stmt *q = NULL;
  sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &q, NULL);
  const char *res = NULL;
  if (q && sqlite3_step(q) == SQLITE_ROW) res = (const char *)sqlite3_column_text(q, 0);
  is_str(res, "ok", "%s: PRAGMA integrity_check", mode);
  sqlite3_finalize(q);
  sqlite3_close(db);
}

int main(void) {
  snprintf(dir, sizeof dir, "%s/dsys-sgroup-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(dir)) tap_bail("mkdtemp");
  test_helper();
  test_shared_group();
  test_half_done();
  test_killed(0);
  test_killed(1);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) tap_diag("cleanup failed");
  return tap_done();
}
