/*
 * Crash and multi-process tests with real processes on one SQLite file
 * (store and queue sharing it, the default deployment):
 *  1. a worker SIGKILLed mid-job: the job is redelivered after its lease
 *     and completed exactly once;
 *  2. a writer SIGKILLed during a write loop: every acknowledged put and
 *     submission is there afterwards, PRAGMA integrity_check is ok;
 *  3. 4 processes claiming from one file: every job completed exactly once,
 *     none held by two at the same time;
 *  4. a worker holding prefetched jobs SIGKILLed: all of them are
 *     redelivered after their leases, each completed exactly once;
 *  5. 16 threads of one process, one op per call (12 submitting, 4
 *     claiming and completing), so their calls share group commits,
 *     SIGKILLed mid-run: every acknowledged submit and completion is there.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "tap.h"

static char dir[256], url[512], path[300];

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct rec {
  int64_t type; /* 1 = put acked (v = i), 2 = submit acked (v = job id),
                   3 = handler started (v = job id) */
  int64_t v;
} rec;

static void send_rec(int fd, int64_t type, int64_t v) {
  rec r = {type, v};
  if (write(fd, &r, sizeof r) != sizeof r) _exit(9);
}

static void kill_wait(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

/* ---- 1: worker killed mid-job ---- */

static int wfd = -1;

static int hang_handler(dsys_job_ctx *ctx, const dsys_job *job, void *ud) {
  send_rec(wfd, 3, job->id);
  for (int i = 0; i < 30000; i++) usleep(1000); /* "working" until killed */
  return DSYS_ETIMEDOUT;
}

static int done_handler(dsys_job_ctx *ctx, const dsys_job *job, void *ud) {
  dsys_store *s = ud;
  char key[64];
  snprintf(key, sizeof key, "done/%lld", (long long)job->id);
  dsys_job_ctx_progress(ctx, 100, "done");
  int e = dsys_store_incr(s, key, 1, NULL);
  if (!e) send_rec(wfd, 3, job->id);
  return e;
}

static pid_t spawn_worker_on(const char *queue, dsys_job_handler h, int fd) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  wfd = fd;
  dsys_queue *q = NULL;
  dsys_store *s = NULL;
  if (dsys_queue_open(&q, url, NULL) || dsys_store_open(&s, url, NULL)) _exit(2);
  const char *const QK[] = {queue};
  dsys_worker_options wo = {.size = sizeof wo, .queues = QK, .nqueues = 1,
                            .threads = 2, .lease_ms = 1000, .poll_ms = 20,
                            .handler = h, .ud = s};
  dsys_worker *w = NULL;
  if (dsys_worker_start(&w, q, &wo)) _exit(3);
  for (int i = 0; i < 30000; i++) usleep(1000); /* killed by the parent */
  dsys_worker_stop(w, DSYS_WORKER_STOP_FINISH);
  _exit(0);
}

static pid_t spawn_worker(dsys_job_handler h, int fd) {
  return spawn_worker_on("crash", h, fd);
}

static int read_rec(int fd, rec *r, int timeout_ms) {
  int64_t end = mono_ms() + timeout_ms;
  size_t got = 0;
  while (got < sizeof *r && mono_ms() < end) {
    ssize_t n = read(fd, (char *)r + got, sizeof *r - got);
    if (n > 0) got += (size_t)n;
    else if (n == 0) return 0;
    else if (errno != EAGAIN && errno != EINTR) return 0;
    else usleep(1000);
  }
  return got == sizeof *r;
}

static void test_worker_killed(void) {
  dsys_queue *q = NULL;
  dsys_store *s = NULL;
  is_int(dsys_queue_open(&q, url, NULL), 0, "open queue");
  is_int(dsys_store_open(&s, url, NULL), 0, "open store on the same file");
  int64_t id = 0;
  is_int(dsys_queue_submit(q, "crash", "{\"work\":1}", NULL, &id, NULL), 0, "submit");
  int fds[2];
  if (pipe(fds)) tap_bail("pipe");
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  pid_t a = spawn_worker(hang_handler, fds[1]);
  rec r;
  int got = read_rec(fds[0], &r, 10000);
  ok(got && r.type == 3 && r.v == id, "worker A started the job");
  dsys_job *j = NULL;
  dsys_queue_get(q, id, &j);
  int64_t tokA = j ? j->token : -1;
  ok(j && j->state == DSYS_JOB_ACTIVE, "job active under A's lease");
  dsys_job_free(j);
  kill_wait(a);
  int64_t t0 = mono_ms();
  pid_t b = spawn_worker(done_handler, fds[1]);
  got = read_rec(fds[0], &r, 15000);
  int64_t waited = mono_ms() - t0;
  ok(got && r.v == id, "worker B ran the job after A died (%lld ms)", (long long)waited);
  int done = 0;
  for (int i = 0; i < 5000 && !done; i++) {
    dsys_queue_get(q, id, &j);
    done = j && j->state == DSYS_JOB_COMPLETED;
    if (done) {
      ok(j->attempts == 2 && j->token == tokA + 1, "attempt 2 with a new fencing token");
    }
    dsys_job_free(j);
    if (!done) usleep(1000);
  }
  ok(done, "job completed");
  usleep(300 * 1000); /* give B time to (wrongly) run it again */
  kill_wait(b);
  is_int(dsys_queue_complete(q, id, tokA, "1"), DSYS_ELEASE, "A's token is fenced off");
  dsys_item *it = NULL;
  char key[64];
  snprintf(key, sizeof key, "done/%lld", (long long)id);
  is_int(dsys_store_get(s, key, &it), 0, "side effect recorded");
  is_str(it ? it->value : NULL, "1", "handler completed exactly once");
  dsys_item_free(it);
  close(fds[0]);
  close(fds[1]);
  dsys_store_close(s);
  dsys_queue_close(q);
}

/* Read a child's acknowledgements from fd (one record per write: atomic
 * on a pipe) until EOF, SIGKILLing it after ms; reap it and close fd.
 * Returns the records (malloc'd), their count in *n, its status in *st. */
static rec *read_until_killed(pid_t pid, int fd, int ms, size_t *n, int *st) {
  size_t cap = 1 << 16;
  rec *recs = malloc(cap * sizeof *recs);
  int64_t end = mono_ms() + ms;
  int killed = 0;
  *n = 0;
  for (;;) {
    if (!killed && mono_ms() >= end) {
      kill(pid, SIGKILL);
      killed = 1;
    }
    rec r;
    ssize_t k = read(fd, &r, sizeof r);
    if (k == sizeof r) {
      if (*n == cap) recs = realloc(recs, (cap *= 2) * sizeof *recs);
      recs[(*n)++] = r;
    } else if (k <= 0) {
      break; /* EOF: the child is dead and the pipe drained */
    }
  }
  waitpid(pid, st, 0);
  close(fd);
  return recs;
}

/* ---- 2: writer killed during a write loop ---- */

static void test_writer_killed(void) {
  int fds[2];
  if (pipe(fds)) tap_bail("pipe");
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    dsys_store *s = NULL;
    dsys_queue *q = NULL;
    if (dsys_store_open(&s, url, NULL) || dsys_queue_open(&q, url, NULL)) _exit(2);
    char key[64], val[64];
    for (int64_t i = 0; i < 1000000; i++) {
      snprintf(key, sizeof key, "w/%lld", (long long)i);
      snprintf(val, sizeof val, "{\"i\":%lld}", (long long)i);
      if (dsys_store_put(s, key, val, NULL, NULL)) _exit(4);
      send_rec(fds[1], 1, i);
      int64_t id;
      if (dsys_queue_submit(q, "wq", val, NULL, &id, NULL)) _exit(5);
      send_rec(fds[1], 2, id);
    }
    _exit(0);
  }
  close(fds[1]);
  /* Let it run, reading acknowledgements, then kill it mid-loop. */
  size_t n = 0;
  int st = 0;
  rec *recs = read_until_killed(pid, fds[0], 400, &n, &st);
  ok(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "writer was killed by SIGKILL");
  ok(n > 10, "writer acknowledged %zu writes before being killed", n);
  dsys_store *s = NULL;
  dsys_queue *q = NULL;
  is_int(dsys_store_open(&s, url, NULL), 0, "reopen store after crash");
  is_int(dsys_queue_open(&q, url, NULL), 0, "reopen queue after crash");
  size_t missing = 0, puts = 0, subs = 0;
  for (size_t i = 0; i < n; i++) {
    char key[64];
    if (recs[i].type == 1) {
      puts++;
      dsys_item *it = NULL;
      snprintf(key, sizeof key, "w/%lld", (long long)recs[i].v);
      if (dsys_store_get(s, key, &it)) missing++;
      dsys_item_free(it);
    } else {
      subs++;
      dsys_job *j = NULL;
      if (dsys_queue_get(q, recs[i].v, &j)) missing++;
      dsys_job_free(j);
    }
  }
  is_int(missing, 0, "all %zu acknowledged puts and %zu submissions present", puts, subs);
  free(recs);
  dsys_store_close(s);
  dsys_queue_close(q);
  sqlite3 *db = NULL;
  sqlite3_open(path, &db);
  sqlite3_stmt *stq = NULL;
  sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &stq, NULL);
  const char *res = NULL;
  if (stq && sqlite3_step(stq) == SQLITE_ROW)
    res = (const char *)sqlite3_column_text(stq, 0);
  is_str(res, "ok", "PRAGMA integrity_check");
  sqlite3_finalize(stq);
  sqlite3_close(db);
}

/* ---- 3: 4 processes claiming from one file ---- */

#define NJOBS 400

static void test_four_claimers(void) {
  dsys_queue *q = NULL;
  dsys_store *s = NULL;
  dsys_queue_open(&q, url, NULL);
  dsys_store_open(&s, url, NULL);
  int64_t first = 0, last = 0;
  for (int i = 0; i < NJOBS; i++) {
    int64_t id;
    if (dsys_queue_submit(q, "four", "{}", NULL, &id, NULL)) break;
    if (!first) first = id;
    last = id;
  }
  is_int(last - first + 1, NJOBS, "%d jobs submitted", NJOBS);
  pid_t kids[4];
  for (int k = 0; k < 4; k++) {
    kids[k] = fork();
    if (kids[k] == 0) {
      dsys_queue *cq = NULL;
      dsys_store *cs = NULL;
      if (dsys_queue_open(&cq, url, NULL) || dsys_store_open(&cs, url, NULL)) _exit(2);
      static const char *const QF[] = {"four"};
      char wid[32], key[64];
      snprintf(wid, sizeof wid, "p%d", k);
      int64_t end = mono_ms() + 60000;
      int idle = 0;
      while (mono_ms() < end && idle < 50) {
        dsys_job *j = NULL;
        int e = dsys_queue_claim(cq, QF, 1, wid, 30000, &j);
        if (e == DSYS_EAGAIN) {
          idle++;
          usleep(2000);
          continue;
        }
        if (e) _exit(3);
        idle = 0;
        int64_t v;
        snprintf(key, sizeof key, "hold/%lld", (long long)j->id);
        if (dsys_store_incr(cs, key, 1, &v) || v != 1) _exit(10); /* held twice */
        snprintf(key, sizeof key, "done/%lld", (long long)j->id);
        if (dsys_store_incr(cs, key, 1, NULL)) _exit(4);
        snprintf(key, sizeof key, "hold/%lld", (long long)j->id);
        if (dsys_store_incr(cs, key, -1, &v) || v != 0) _exit(11);
        if (dsys_queue_complete(cq, j->id, j->token, "true")) _exit(5);
        dsys_job_free(j);
      }
      dsys_queue_close(cq);
      dsys_store_close(cs);
      _exit(0);
    }
  }
  int bad = 0;
  for (int k = 0; k < 4; k++) {
    int st = 0;
    waitpid(kids[k], &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st)) {
      tap_diag("claimer %d: status %d", k, st);
      bad++;
    }
  }
  is_int(bad, 0, "4 claiming processes: no job held by two at once, no errors");
  dsys_job_counts c;
  dsys_queue_counts(q, "four", &c);
  is_int(c.completed, NJOBS, "all jobs completed");
  int once = 1;
  for (int64_t id = first; id <= last; id++) {
    char key[64];
    snprintf(key, sizeof key, "done/%lld", (long long)id);
    dsys_item *it = NULL;
    if (dsys_store_get(s, key, &it) || strcmp(it->value, "1")) once = 0;
    dsys_item_free(it);
  }
  ok(once, "every job processed exactly once");
  dsys_queue_close(q);
  dsys_store_close(s);
}

/* ---- 4: worker with prefetched jobs killed ---- */

#define NPRE 20

static void test_prefetch_killed(void) {
  dsys_queue *q = NULL;
  dsys_store *s = NULL;
  is_int(dsys_queue_open(&q, url, NULL), 0, "open queue (prefetch)");
  is_int(dsys_store_open(&s, url, NULL), 0, "open store (prefetch)");
  const char *pl[NPRE];
  for (int i = 0; i < NPRE; i++) pl[i] = "{\"p\":1}";
  int64_t ids[NPRE];
  is_int(dsys_queue_submit_many(q, "pre", pl, NPRE, NULL, ids), 0, "submit_many %d", NPRE);
  int fds[2];
  if (pipe(fds)) tap_bail("pipe");
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  /* A: 2 threads hang on their jobs; the rest is prefetched (default 32). */
  pid_t a = spawn_worker_on("pre", hang_handler, fds[1]);
  rec r;
  int started = 0;
  for (int k = 0; k < 2; k++)
    if (read_rec(fds[0], &r, 10000) && r.type == 3) started++;
  ok(started == 2, "A runs 2 jobs");
  dsys_job_counts c = {0};
  for (int i = 0; i < 2000 && c.active < NPRE; i++) {
    dsys_queue_counts(q, "pre", &c);
    usleep(1000);
  }
  is_int(c.active, NPRE, "A holds all %d jobs (2 running, %d prefetched)", NPRE, NPRE - 2);
  kill_wait(a);
  int64_t t0 = mono_ms();
  pid_t b = spawn_worker_on("pre", done_handler, fds[1]);
  int done = 0;
  for (int i = 0; i < 15000 && !done; i++) {
    dsys_queue_counts(q, "pre", &c);
    done = c.completed == NPRE;
    if (!done) usleep(1000);
  }
  ok(done, "B completed all %d jobs after A died (%lld ms)", NPRE, (long long)(mono_ms() - t0));
  usleep(300 * 1000); /* give B time to (wrongly) run any again */
  kill_wait(b);
  int once = 1, fenced = 1;
  for (int i = 0; i < NPRE; i++) {
    char key[64];
    snprintf(key, sizeof key, "done/%lld", (long long)ids[i]);
    dsys_item *it = NULL;
    if (dsys_store_get(s, key, &it) || strcmp(it->value, "1")) once = 0;
    dsys_item_free(it);
    dsys_job *j = NULL;
    if (dsys_queue_get(q, ids[i], &j) || j->attempts != 2 || j->token != 2 ||
        j->state != DSYS_JOB_COMPLETED)
      fenced = 0;
    if (j && dsys_queue_complete(q, ids[i], 1, "1") != DSYS_ELEASE) fenced = 0;
    dsys_job_free(j);
  }
  ok(once, "every prefetched job handled and completed exactly once by B");
  ok(fenced, "each redelivered once with a new token; A's tokens fenced off");
  close(fds[0]);
  close(fds[1]);
  dsys_store_close(s);
  dsys_queue_close(q);
}

/* ---- 5: 16 threads, one op per call, killed mid-run ---- */

static dsys_queue *gq;
static int gfd;

static void *g_submitter(void *p) {
  (void)p;
  for (int i = 0; i < 1000000; i++) {
    int64_t id;
    if (dsys_queue_submit(gq, "gc", "{\"g\":1}", NULL, &id, NULL)) _exit(5);
    send_rec(gfd, 2, id);
  }
  return NULL;
}

static void *g_completer(void *p) {
  (void)p;
  static const char *const QG[] = {"gc"};
  for (int i = 0; i < 1000000; i++) {
    dsys_job *j = NULL;
    int e = dsys_queue_claim(gq, QG, 1, "g", 60000, &j);
    if (e == DSYS_EAGAIN) continue;
    if (e) _exit(6);
    if (dsys_queue_complete(gq, j->id, j->token, NULL)) _exit(7);
    send_rec(gfd, 4, j->id);
    dsys_job_free(j);
  }
  return NULL;
}

static void test_threads_killed(void) {
  int fds[2];
  if (pipe(fds)) tap_bail("pipe");
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    gfd = fds[1];
    if (dsys_queue_open(&gq, url, NULL)) _exit(2);
    pthread_t th[16];
    for (int i = 0; i < 16; i++)
      pthread_create(&th[i], NULL, i < 12 ? g_submitter : g_completer, NULL);
    for (int i = 0; i < 16; i++) pthread_join(th[i], NULL);
    _exit(0);
  }
  close(fds[1]);
  size_t n = 0;
  int st = 0;
  rec *recs = read_until_killed(pid, fds[0], 600, &n, &st);
  ok(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "16-thread process killed by SIGKILL");
  size_t subs = 0, dones = 0, missing = 0, undone = 0;
  dsys_queue *q = NULL;
  is_int(dsys_queue_open(&q, url, NULL), 0, "reopen queue after the crash");
  for (size_t i = 0; i < n; i++) {
    dsys_job *j = NULL;
    if (dsys_queue_get(q, recs[i].v, &j)) missing++;
    else if (recs[i].type == 4 && j->state != DSYS_JOB_COMPLETED) undone++;
    if (recs[i].type == 2) subs++;
    else dones++;
    dsys_job_free(j);
  }
  ok(subs > 16 && dones > 4, "threads acknowledged %zu submits and %zu completions", subs, dones);
  is_int(missing, 0, "every acknowledged submit present");
  is_int(undone, 0, "every acknowledged completion committed");
  free(recs);
  dsys_queue_close(q);
}

int main(void) {
  snprintf(dir, sizeof dir, "%s/dsys-crash-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(dir)) tap_bail("mkdtemp");
  snprintf(path, sizeof path, "%s/state.sqlite", dir);
  snprintf(url, sizeof url, "sqlite://%s", path);
  test_worker_killed();
  test_writer_killed();
  test_four_claimers();
  test_prefetch_killed();
  test_threads_killed();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) tap_diag("cleanup failed");
  return tap_done();
}
