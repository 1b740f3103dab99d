/*
 * The PostgreSQL queue backend against a real, throwaway server, beyond the
 * conformance suite (which test-queue runs on it too):
 *  1. four handles (four connections, as four processes) claiming
 *     concurrently: no job is handed out twice, every job completed once;
 *  2. a worker paused past its lease: its complete and heartbeat are
 *     refused (DSYS_ELEASE), the job is done once by the other worker;
 *  3. NOTIFY: a worker with a long poll interval on one handle is woken by
 *     a submit through another handle;
 *  4. the server SIGKILLed during concurrent submits and claims/completions,
 *     then restarted: calls fail (DSYS_EUNAVAIL) within a bounded time
 *     meanwhile, the same handles work again without reopening, every
 *     acknowledged submit is there and each job is completed exactly once;
 *  6. groups running at once (4 per handle on PostgreSQL): a caller whose
 *     chain of ops was split between groups returns only after all of them
 *     ran (a later group may commit first);
 *  5. client processes SIGKILLed (as test-state-crash does on SQLite): a
 *     worker mid-job (its job is redelivered after the lease, completed
 *     once, its token fenced off) and a producer mid-loop (every
 *     acknowledged submit is there; the server rolls back the cut-off
 *     transaction);
 *  7. clock skew (issue 20): two handles whose wall clocks are 30 s apart
 *     (real clocks with an offset, as two hosts whose NTP disagrees), one
 *     claiming, heartbeating or delaying, the other sweeping: a lease is
 *     neither reclaimed before it ends nor kept after it (the server's
 *     clock judges both), a delayed job runs neither early nor late, and
 *     the job's times are the server's, not the skewed writer's.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "core/clock_hook.h"
#include "state/queue_int.h"
#include "pgserver.h"
#include "tap.h"

static tpg srv;

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static dsys_queue *open_q(dsys_clock *clk) {
  if (!clk) { /* the alias scheme opens the same backend */
    static int alias;
    if (!alias++) {
      char u[300];
      snprintf(u, sizeof u, "postgres://%s", srv.url + strlen("postgresql://"));
      dsys_queue *q = NULL;
      is_int(dsys_queue_open(&q, u, NULL), 0, "open by postgres:// (alias)");
      return q;
    }
  }
  dsys_queue_options qo = {.size = sizeof qo, .clock = clk};
  dsys_queue *q = NULL;
  int e = dsys_queue_open(&q, srv.url, &qo);
  if (e) tap_diag("open %s: %s", srv.url, dsys_strerror(e));
  return q;
}

/* ---- 1: concurrent claimers ---- */

#define NJOBS 600
#define MAXID (NJOBS * 8)

typedef struct claimer {
  dsys_queue *q;
  int *claimed; /* per job id: claims seen (shared, under mu) */
  pthread_mutex_t *mu;
  int64_t base;
  int errors;
} claimer;

static void *claim_loop(void *p) {
  claimer *c = p;
  static const char *const QC[] = {"cc"};
  int idle = 0;
  while (idle < 50) {
    dsys_job *js[4];
    size_t n = 0;
    int e = dsys_queue_claim_many(c->q, QC, 1, "c", 60000, 4, js, &n);
    if (e == DSYS_EAGAIN) {
      idle++;
      usleep(2000);
      continue;
    }
    if (e) {
      c->errors++;
      continue;
    }
    idle = 0;
    for (size_t i = 0; i < n; i++) {
      int64_t k = js[i]->id - c->base;
      pthread_mutex_lock(c->mu);
      if (k >= 0 && k < MAXID) c->claimed[k]++;
      pthread_mutex_unlock(c->mu);
      if (dsys_queue_complete(c->q, js[i]->id, js[i]->token, NULL)) c->errors++;
      dsys_job_free(js[i]);
    }
  }
  return NULL;
}

static void test_concurrent_claims(void) {
  dsys_queue *q[4];
  for (int i = 0; i < 4; i++) q[i] = open_q(NULL);
  if (!ok(q[0] && q[1] && q[2] && q[3], "4 handles open")) return;
  const char *pl[NJOBS];
  for (int i = 0; i < NJOBS; i++) pl[i] = "{}";
  int64_t ids[NJOBS];
  is_int(dsys_queue_submit_many(q[0], "cc", pl, NJOBS, NULL, ids), 0, "submit %d jobs", NJOBS);
  int *claimed = calloc(MAXID, sizeof *claimed);
  pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  claimer cs[4];
  pthread_t th[4];
  for (int i = 0; i < 4; i++) {
    cs[i] = (claimer){q[i], claimed, &mu, ids[0], 0};
    pthread_create(&th[i], NULL, claim_loop, &cs[i]);
  }
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  int once = 1, errors = 0;
  for (int i = 0; i < NJOBS; i++)
    if (claimed[ids[i] - ids[0]] != 1) once = 0;
  for (int i = 0; i < 4; i++) errors += cs[i].errors;
  ok(once, "each of %d jobs claimed exactly once by 4 concurrent handles", NJOBS);
  is_int(errors, 0, "no call failed");
  dsys_job_counts c;
  dsys_queue_counts(q[0], "cc", &c);
  ok(c.completed == NJOBS && c.waiting == 0 && c.active == 0, "all completed (%lld)",
     (long long)c.completed);
  free(claimed);
  for (int i = 0; i < 4; i++) dsys_queue_close(q[i]);
}

/* ---- 2: a worker paused past its lease ---- */

static void test_paused_worker(void) {
  dsys_clock *clk = NULL;
  dsys_clock_fake_new(&clk, 1800000000000LL);
  dsys_queue *a = open_q(clk), *b = open_q(clk);
  if (!ok(a && b, "two handles on one fake clock")) goto out;
  static const char *const QL[] = {"lease"};
  int64_t id = 0;
  dsys_queue_submit(a, "lease", "1", NULL, &id, NULL);
  dsys_job *ja = NULL, *jb = NULL;
  is_int(dsys_queue_claim(a, QL, 1, "slow", 1000, &ja), 0, "worker A claims with a 1 s lease");
  dsys_clock_advance(clk, 1500 * 1000); /* A "pauses" (no heartbeat) */
  is_int(dsys_queue_claim(b, QL, 1, "fast", 1000, &jb), 0, "after the lease, B claims it");
  ok(ja && jb && jb->id == ja->id && jb->token == ja->token + 1, "same job, next fencing token");
  is_int(dsys_queue_heartbeat(a, id, ja ? ja->token : 0, 1000), DSYS_ELEASE,
         "A's heartbeat refused: DSYS_ELEASE");
  is_int(dsys_queue_complete(a, id, ja ? ja->token : 0, "\"A\""), DSYS_ELEASE,
         "A's complete refused: DSYS_ELEASE");
  is_int(dsys_queue_complete(b, id, jb ? jb->token : 0, "\"B\""), 0, "B completes");
  dsys_job *j = NULL;
  dsys_queue_get(a, id, &j);
  ok(j && j->state == DSYS_JOB_COMPLETED && !strcmp(j->result, "\"B\"") && j->attempts == 2,
     "done once, by B");
  dsys_job_free(j);
  dsys_job_free(ja);
  dsys_job_free(jb);
out:
  dsys_queue_close(a);
  dsys_queue_close(b);
  dsys_clock_free(clk);
}

/* ---- 3: NOTIFY wakes another handle's idle worker ---- */

static int64_t handled_at;

static int note_handler(dsys_job_ctx *ctx, const dsys_job *job, void *ud) {
  (void)ctx, (void)job, (void)ud;
  __atomic_store_n(&handled_at, mono_ms(), __ATOMIC_RELEASE);
  return 0;
}

static void test_notify(void) {
  dsys_queue *a = open_q(NULL), *b = open_q(NULL);
  static const char *const QN[] = {"note"};
  dsys_worker_options wo = {.size = sizeof wo, .queues = QN, .nqueues = 1, .poll_ms = 20000,
                            .handler = note_handler};
  dsys_worker *w = NULL;
  if (!ok(a && b && !dsys_worker_start(&w, b, &wo), "worker on handle B, polling every 20 s"))
    goto out;
  usleep(300 * 1000); /* its first (empty) claim and the listener are done */
  int64_t t0 = mono_ms();
  is_int(dsys_queue_submit(a, "note", "1", NULL, NULL, NULL), 0, "submit through handle A");
  for (int i = 0; i < 5000 && !__atomic_load_n(&handled_at, __ATOMIC_ACQUIRE); i++) usleep(1000);
  int64_t at = __atomic_load_n(&handled_at, __ATOMIC_ACQUIRE);
  ok(at && at - t0 < 3000, "B's worker woken by NOTIFY, not its poll (%lld ms)",
     (long long)(at ? at - t0 : -1));
out:
  dsys_worker_stop(w, DSYS_WORKER_STOP_FINISH);
  dsys_queue_close(a);
  dsys_queue_close(b);
}

/* ---- 4: server killed and restarted under load ---- */

#define KMAX 200000

typedef struct kstate {
  dsys_queue *q;
  pthread_mutex_t mu;
  int64_t *acked;   /* acknowledged submit ids */
  size_t nacked;
  int64_t base;     /* first id (completions indexed from it) */
  int *completed;   /* acknowledged completions per id - base */
  int stop;         /* submitters stop */
  int drain;        /* completers stop when nothing is left */
  int unavail;      /* DSYS_EUNAVAIL seen */
  int other_err;    /* another error code seen (last) */
  int64_t slowest;  /* longest failing call, ms */
} kstate;

static void note_err(kstate *k, int e, int64_t ms) {
  pthread_mutex_lock(&k->mu);
  if (e == DSYS_EUNAVAIL) k->unavail++;
  else k->other_err = e;
  if (ms > k->slowest) k->slowest = ms;
  pthread_mutex_unlock(&k->mu);
}

static void *k_submit(void *p) {
  kstate *k = p;
  while (!__atomic_load_n(&k->stop, __ATOMIC_ACQUIRE)) {
    int64_t id = 0, t0 = mono_ms();
    int e = dsys_queue_submit(k->q, "k", "{\"x\":1}", NULL, &id, NULL);
    if (e) {
      note_err(k, e, mono_ms() - t0);
      usleep(20000);
      continue;
    }
    pthread_mutex_lock(&k->mu);
    if (k->nacked < KMAX) k->acked[k->nacked++] = id;
    pthread_mutex_unlock(&k->mu);
  }
  return NULL;
}

static void *k_work(void *p) {
  kstate *k = p;
  static const char *const QK[] = {"k"};
  for (;;) {
    dsys_job *js[8];
    size_t n = 0;
    int64_t t0 = mono_ms();
    int e = dsys_queue_claim_many(k->q, QK, 1, "kw", 1000, 8, js, &n);
    if (e == DSYS_EAGAIN) {
      if (__atomic_load_n(&k->drain, __ATOMIC_ACQUIRE)) break;
      usleep(5000);
      continue;
    }
    if (e) {
      note_err(k, e, mono_ms() - t0);
      usleep(20000);
      continue;
    }
    for (size_t i = 0; i < n; i++) {
      t0 = mono_ms();
      e = dsys_queue_complete(k->q, js[i]->id, js[i]->token, NULL);
      if (e == DSYS_ELEASE) {
        /* the lease ran out during the outage: redelivered */
      } else if (e) {
        note_err(k, e, mono_ms() - t0);
      } else {
        pthread_mutex_lock(&k->mu);
        int64_t x = js[i]->id - k->base;
        if (x >= 0 && x < KMAX) k->completed[x]++;
        pthread_mutex_unlock(&k->mu);
      }
      dsys_job_free(js[i]);
    }
  }
  return NULL;
}

static size_t nacked(kstate *k) {
  pthread_mutex_lock(&k->mu);
  size_t n = k->nacked;
  pthread_mutex_unlock(&k->mu);
  return n;
}

static void test_kill_restart(void) {
  kstate k = {.mu = PTHREAD_MUTEX_INITIALIZER};
  k.q = open_q(NULL);
  k.acked = calloc(KMAX, sizeof *k.acked);
  k.completed = calloc(KMAX, sizeof *k.completed);
  if (!ok(k.q, "open for the crash test")) return;
  int64_t first = 0;
  dsys_queue_submit(k.q, "k-base", "0", NULL, &first, NULL);
  k.base = first;
  pthread_t th[4];
  pthread_create(&th[0], NULL, k_submit, &k);
  pthread_create(&th[1], NULL, k_submit, &k);
  pthread_create(&th[2], NULL, k_work, &k);
  pthread_create(&th[3], NULL, k_work, &k);
  for (int i = 0; i < 5000 && nacked(&k) < 300; i++) usleep(1000);
  size_t before = nacked(&k);
  ok(before >= 300, "%zu submits acknowledged before the kill", before);
  tpg_kill(&srv);
  int64_t tk = mono_ms();
  for (int i = 0; i < 10000 && !__atomic_load_n(&k.unavail, __ATOMIC_ACQUIRE); i++) usleep(1000);
  int64_t seen = mono_ms() - tk;
  ok(k.unavail > 0 && seen < 8000, "calls fail with DSYS_EUNAVAIL while it is down (after %lld ms)",
     (long long)seen);
  usleep(500 * 1000); /* down a little longer: calls keep failing, bounded */
  size_t during = nacked(&k);
  if (!ok(tpg_restart(&srv) == 0, "server restarted")) {
    __atomic_store_n(&k.stop, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&k.drain, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    dsys_queue_close(k.q);
    return;
  }
  int64_t tr = mono_ms();
  for (int i = 0; i < 10000 && nacked(&k) < during + 200; i++) usleep(1000);
  ok(nacked(&k) >= during + 200, "the same handle submits again after the restart (%lld ms)",
     (long long)(mono_ms() - tr));
  __atomic_store_n(&k.stop, 1, __ATOMIC_RELEASE);
  pthread_join(th[0], NULL);
  pthread_join(th[1], NULL);
  /* jobs claimed by a group whose commit outcome was unknown come back
   * after their 1 s lease: drain until every acknowledged job is done */
  int64_t deadline = mono_ms() + 20000;
  size_t left = 1;
  while (left && mono_ms() < deadline) {
    dsys_job_counts c = {0};
    if (!dsys_queue_counts(k.q, "k", &c)) left = (size_t)(c.waiting + c.active + c.delayed);
    usleep(20000);
  }
  __atomic_store_n(&k.drain, 1, __ATOMIC_RELEASE);
  pthread_join(th[2], NULL);
  pthread_join(th[3], NULL);
  is_int(left, 0, "every job was completed (drained)");
  size_t missing = 0, notdone = 0, twice = 0;
  for (size_t i = 0; i < k.nacked; i++) {
    dsys_job *j = NULL;
    if (dsys_queue_get(k.q, k.acked[i], &j)) missing++;
    else if (j->state != DSYS_JOB_COMPLETED) notdone++;
    dsys_job_free(j);
    int64_t x = k.acked[i] - k.base;
    if (x >= 0 && x < KMAX && k.completed[x] > 1) twice++;
  }
  is_int(missing, 0, "every one of %zu acknowledged submits is there", k.nacked);
  is_int(notdone, 0, "... and completed");
  is_int(twice, 0, "no job acknowledged as completed twice");
  ok(k.slowest < 8000, "every failing call returned within a bound (slowest %lld ms)",
     (long long)k.slowest);
  if (k.other_err) tap_diag("other errors seen meanwhile, e.g. %s", dsys_err_name(k.other_err));
  dsys_queue_close(k.q);
  free(k.acked);
  free(k.completed);
}

/* ---- 5: client processes killed ---- */

static int rec_fd = -1;

static void send_id(int64_t id) {
  if (write(rec_fd, &id, sizeof id) != sizeof id) _exit(9);
}

static int read_id(int fd, int64_t *id, int timeout_ms) {
  int64_t end = mono_ms() + timeout_ms;
  size_t got = 0;
  while (got < sizeof *id && mono_ms() < end) {
    ssize_t n = read(fd, (char *)id + got, sizeof *id - got);
    if (n > 0) got += (size_t)n;
    else if (n == 0 || (errno != EAGAIN && errno != EINTR)) return 0;
    else usleep(1000);
  }
  return got == sizeof *id;
}

static int hang_handler(dsys_job_ctx *ctx, const dsys_job *job, void *ud) {
  (void)ctx, (void)ud;
  send_id(job->id);
  for (int i = 0; i < 30000; i++) usleep(1000); /* "working" until killed */
  return DSYS_ETIMEDOUT;
}

/* Child: a worker hanging in its handler, or (queue NULL) a producer
 * reporting each acknowledged submit; both until killed. */
static pid_t spawn(int fd, const char *worker_queue) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  rec_fd = fd;
  dsys_queue *q = NULL;
  if (dsys_queue_open(&q, srv.url, NULL)) _exit(2);
  if (worker_queue) {
    const char *const QW[] = {worker_queue};
    dsys_worker_options wo = {.size = sizeof wo, .queues = QW, .nqueues = 1, .lease_ms = 1000,
                              .poll_ms = 20, .handler = hang_handler};
    dsys_worker *w = NULL;
    if (dsys_worker_start(&w, q, &wo)) _exit(3);
    for (int i = 0; i < 30000; i++) usleep(1000);
    _exit(0);
  }
  for (;;) {
    int64_t id = 0;
    if (!dsys_queue_submit(q, "prod", "{\"p\":1}", NULL, &id, NULL)) send_id(id);
  }
}

static void kill_wait(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

static void test_clients_killed(void) {
  int fds[2], pfd[2];
  if (pipe(fds) || pipe(pfd)) tap_bail("pipe");
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  fcntl(pfd[0], F_SETFL, O_NONBLOCK);
  /* children first: this process has no queue thread when it forks */
  pid_t wk = spawn(fds[1], "hang");
  pid_t pr = spawn(pfd[1], NULL);
  dsys_queue *q = open_q(NULL);
  int64_t id = 0, got = 0;
  dsys_queue_submit(q, "hang", "{}", NULL, &id, NULL);
  ok(read_id(fds[0], &got, 10000) && got == id, "worker process started the job");
  int64_t acked[4096];
  size_t na = 0;
  while (na < 200 && read_id(pfd[0], &acked[na], 10000)) na++;
  dsys_job *j = NULL;
  dsys_queue_get(q, id, &j);
  int64_t tok = j ? j->token : -1;
  dsys_job_free(j);
  kill_wait(wk);
  kill_wait(pr);
  while (na < 4096 && read_id(pfd[0], &acked[na], 0)) na++; /* acks in the pipe */
  ok(na >= 200, "producer process killed after %zu acknowledged submits", na);
  size_t missing = 0;
  for (size_t i = 0; i < na; i++) {
    if (dsys_queue_get(q, acked[i], &j)) missing++;
    dsys_job_free(j);
  }
  is_int(missing, 0, "every acknowledged submit of the killed producer is there");
  static const char *const QH[] = {"hang"};
  int64_t t0 = mono_ms();
  int e = DSYS_EAGAIN;
  for (int i = 0; i < 5000 && e == DSYS_EAGAIN; i++)
    if ((e = dsys_queue_claim(q, QH, 1, "rescuer", 5000, &j)) == DSYS_EAGAIN) usleep(2000);
  ok(!e && j && j->id == id && j->token == tok + 1 && j->attempts == 2,
     "the dead worker's job is redelivered after its lease (%lld ms), next token",
     (long long)(mono_ms() - t0));
  is_int(dsys_queue_complete(q, id, tok, "1"), DSYS_ELEASE, "the dead worker's token is fenced off");
  is_int(dsys_queue_complete(q, id, j ? j->token : 0, "2"), 0, "completed by the rescuer");
  dsys_job_free(j);
  close(fds[0]);
  close(fds[1]);
  close(pfd[0]);
  close(pfd[1]);
  dsys_queue_close(q);
}

/* ---- 6: a chain split between concurrent groups ---- */

static int busy_stop;

static void *busy_counts(void *p) {
  dsys_job_counts c;
  while (!__atomic_load_n(&busy_stop, __ATOMIC_ACQUIRE)) dsys_queue_counts(p, "split", &c);
  return NULL;
}

typedef struct locker {
  int64_t id;
  int locked;
} locker;

/* Hold a row lock on job id for 600 ms from a connection of its own. */
static void *lock_row(void *p) {
  locker *l = p;
  PGconn *c = PQconnectdb(srv.url);
  char sql[128];
  snprintf(sql, sizeof sql, "BEGIN; SELECT 1 FROM dsys_jobs WHERE id = %lld FOR UPDATE",
           (long long)l->id);
  PGresult *r = PQexec(c, sql);
  int okk = PQresultStatus(r) == PGRES_TUPLES_OK;
  PQclear(r);
  __atomic_store_n(&l->locked, okk ? 1 : -1, __ATOMIC_RELEASE);
  usleep(600 * 1000);
  PQclear(PQexec(c, "COMMIT"));
  PQfinish(c);
  return NULL;
}

static void test_split_chain(void) {
  /* one op per group: the worker-style batch below becomes 301 groups,
   * run by this thread and the three others' leaders at once; its op in
   * the middle waits 600 ms for a row lock (led by another thread, most
   * of the time) while the later ones (the claim last) finish */
  dsys_queue_options qo = {.size = sizeof qo, .max_batch = 1};
  dsys_queue *q = NULL;
  if (!is_int(dsys_queue_open(&q, srv.url, &qo), 0, "open with max_batch 1")) return;
  const char *pl[300];
  for (int i = 0; i < 300; i++) pl[i] = "1";
  static const char *const QS[] = {"split"};
  dsys_job *js[300];
  size_t n = 0;
  dsys_queue_submit_many(q, "split", pl, 300, NULL, NULL);
  is_int(dsys_queue_claim_many(q, QS, 1, "w", 60000, 300, js, &n), 0, "claim 300");
  if (n != 300) return;
  locker l = {.id = js[150]->id};
  pthread_t lt, th[3];
  pthread_create(&lt, NULL, lock_row, &l);
  for (int i = 0; i < 5000 && !__atomic_load_n(&l.locked, __ATOMIC_ACQUIRE); i++) usleep(1000);
  ok(l.locked == 1, "another connection holds a row lock on a job in the middle");
  for (int i = 0; i < 3; i++) pthread_create(&th[i], NULL, busy_counts, q);
  dsysi_qout outs[300];
  memset(outs, 0, sizeof outs);
  for (size_t i = 0; i < n; i++)
    outs[i] = (dsysi_qout){.kind = DSYSI_Q_COMPLETE, .id = js[i]->id, .token = js[i]->token};
  dsys_job *more[1];
  size_t nmore = 0;
  int64_t t0 = mono_ms();
  dsysi_queue_batch(q, outs, n, QS, 1, "w", 60000, 1, more, &nmore);
  int64_t took = mono_ms() - t0;
  /* checked at once: every op of the chain ran before the call returned */
  dsys_job *j = NULL;
  int mid_done = !dsys_queue_get(q, js[150]->id, &j) && j->state == DSYS_JOB_COMPLETED;
  dsys_job_free(j);
  int done = 1;
  for (size_t i = 0; i < n; i++) {
    if (outs[i].rc != 0) done = 0;
    dsys_job_free(js[i]);
  }
  __atomic_store_n(&busy_stop, 1, __ATOMIC_RELEASE);
  for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
  pthread_join(lt, NULL);
  ok(mid_done && took >= 400, "the call returned after its blocked op committed (%lld ms)",
     (long long)took);
  ok(done, "every outcome of the split chain succeeded");
  dsys_queue_close(q);
}

/* ---- 7: clock skew between handles ---- */

static int64_t real_wall_ms(void) {
  return dsys_clock_wall_ms(dsys_clock_real());
}

/* Poll job id through h (each call runs the sweep: housekeeping goes
 * with every group) every 50 ms until it is no longer active with token,
 * at most limit_ms; returns the ms from t0 (monotonic) it took, or -1. */
static int64_t wait_reclaimed(dsys_queue *h, int64_t id, int64_t token, int64_t t0,
                              int64_t limit_ms) {
  while (mono_ms() - t0 < limit_ms) {
    dsys_job *j = NULL;
    int e = dsys_queue_get(h, id, &j);
    int active = !e && j && j->state == DSYS_JOB_ACTIVE && j->token == token;
    dsys_job_free(j);
    if (!e && !active) return mono_ms() - t0;
    usleep(50 * 1000);
  }
  return -1;
}

/* claimer x holds a lease of L ms (first renewed by heartbeats for 2 L,
 * then left to expire); sweeper y must not reclaim it meanwhile, and must
 * once it ends. */
static void skew_lease(dsys_queue *x, dsys_queue *y, const char *label) {
  const int64_t L = 2000;
  static const char *const QS[] = {"skew"};
  int64_t id = 0;
  is_int(dsys_queue_submit(y, "skew", "1", NULL, &id, NULL), 0, "%s: submit", label);
  dsys_job *j = NULL;
  int64_t t0 = mono_ms(), w0 = real_wall_ms();
  if (!ok(dsys_queue_claim(x, QS, 1, "skewed", L, &j) == 0 && j && j->id == id,
          "%s: claim with a %lld ms lease", label, (long long)L)) {
    dsys_job_free(j);
    return;
  }
  int64_t tok = j->token;
  /* the stored lease end is the server's time + L, whatever x's clock says
   * (the server runs on this machine: its clock is the real one) */
  int64_t off = j->lease_until - (w0 + L);
  ok(off > -500 && off < 3000, "%s: lease_until is the server's time + the lease (%+lld ms off)",
     label, (long long)off);
  dsys_job_free(j);
  /* renewed every L/4 for 2 L: never reclaimed by y */
  int early = 0, hb_fail = 0;
  int64_t last_hb = t0;
  while (mono_ms() - t0 < 2 * L) {
    if (mono_ms() - last_hb >= L / 4) {
      if (dsys_queue_heartbeat(x, id, tok, L)) hb_fail++;
      else last_hb = mono_ms();
    }
    dsys_job *g = NULL;
    if (!dsys_queue_get(y, id, &g) && g && (g->state != DSYS_JOB_ACTIVE || g->token != tok))
      early++;
    dsys_job_free(g);
    usleep(50 * 1000);
  }
  is_int(early + hb_fail, 0, "%s: a renewed lease is never reclaimed by the other handle (2 x %lld ms)",
         label, (long long)L);
  /* left to expire: y reclaims it after L from the last renewal, not before and
   * not (much) after; 30 s of skew would show as 0 or 30 s */
  int64_t hb = mono_ms();
  int hbe = dsys_queue_heartbeat(x, id, tok, L);
  is_int(hbe, 0, "%s: last renewal", label);
  int64_t took = wait_reclaimed(y, id, tok, hb, L + 10000);
  tap_diag("%s: reclaimed %lld ms after the last renewal (lease %lld ms)", label, (long long)took,
           (long long)L);
  ok(took >= L - 50, "%s: not reclaimed before the lease ended (%lld ms >= %lld)", label,
     (long long)took, (long long)L - 50);
  ok(took >= 0 && took <= L + 5000, "%s: reclaimed once it ended (%lld ms <= %lld)", label,
     (long long)took, (long long)L + 5000);
  is_int(dsys_queue_complete(x, id, tok, "\"late\""), DSYS_ELEASE,
         "%s: the old holder's complete refused by the fencing token", label);
  dsys_job *k = NULL;
  is_int(dsys_queue_claim(y, QS, 1, "other", L, &k), 0, "%s: the other handle claims it", label);
  ok(k && k->id == id && k->token == tok + 1, "%s: same job, next token", label);
  is_int(dsys_queue_complete(y, id, k ? k->token : 0, "\"ok\""), 0, "%s: completed once", label);
  dsys_job_free(k);
}

/* x submits with a delay of D ms; y claims it not before D, and by D + 5 s */
static void skew_delay(dsys_queue *x, dsys_queue *y, const char *label) {
  const int64_t D = 1500;
  static const char *const QS[] = {"skewd"};
  dsys_submit_options so = {.size = sizeof so, .delay_ms = D};
  int64_t id = 0, t0 = mono_ms(), w0 = real_wall_ms();
  is_int(dsys_queue_submit(x, "skewd", "1", &so, &id, NULL), 0, "%s: submit delayed %lld ms",
         label, (long long)D);
  int64_t took = -1;
  while (mono_ms() - t0 < D + 10000) {
    dsys_job *j = NULL;
    int e = dsys_queue_claim(y, QS, 1, "w", 5000, &j);
    if (!e && j) {
      took = mono_ms() - t0;
      ok(j->id == id, "%s: the delayed job", label);
      int64_t off = j->created_at - w0;
      ok(off > -500 && off < 3000, "%s: created_at is the server's time (%+lld ms off)", label,
         (long long)off);
      dsys_queue_complete(y, j->id, j->token, NULL);
      dsys_job_free(j);
      break;
    }
    dsys_job_free(j);
    usleep(50 * 1000);
  }
  tap_diag("%s: delayed job claimed after %lld ms (delay %lld ms)", label, (long long)took,
           (long long)D);
  ok(took >= D - 50, "%s: not run before its delay (%lld ms)", label, (long long)took);
  ok(took >= 0 && took <= D + 5000, "%s: run once its delay passed (%lld ms)", label,
     (long long)took);
}

static void test_skew(void) {
  dsys_clock *ahead = NULL, *behind = NULL;
  dsysi_clock_offset_new(&ahead, 15000);
  dsysi_clock_offset_new(&behind, -15000);
  dsys_queue *a = open_q(ahead), *b = open_q(behind);
  if (ok(a && b && dsys_clock_wall_ms(ahead) - dsys_clock_wall_ms(behind) >= 29990,
         "two handles whose wall clocks are 30 s apart")) {
    skew_lease(b, a, "lease held behind, swept ahead");
    skew_lease(a, b, "lease held ahead, swept behind");
    skew_delay(a, b, "delay written ahead, claimed behind");
    skew_delay(b, a, "delay written behind, claimed ahead");
  }
  dsys_queue_close(a);
  dsys_queue_close(b);
  dsys_clock_free(ahead);
  dsys_clock_free(behind);
}

int main(void) {
  if (!ok(tpg_start(&srv) == 0, "start a throwaway PostgreSQL")) {
    tpg_stop(&srv);
    return tap_done();
  }
  test_clients_killed();
  test_concurrent_claims();
  test_split_chain();
  test_paused_worker();
  test_notify();
  test_skew();
  test_kill_restart();
  tpg_stop(&srv);
  return tap_done();
}
