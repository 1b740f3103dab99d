/*
 * Queue benchmark: jobs per second end to end (submit, claim, complete)
 * with 4 worker threads (dsys_worker) on a durable SQLite file
 * (synchronous NORMAL, and FULL): 2 producer threads submitting 100 jobs
 * per dsys_queue_submit_many call, and 16 producer threads submitting one
 * job per dsys_queue_submit call. Beside them, in the same rounds, the raw
 * SQLite group-commit ceiling (bench-sqlite-ceiling, given in
 * BENCH_CEILING) at both levels, so each row prints its ratio to what the
 * file can do. Given a PostgreSQL URL, the same rows on PostgreSQL
 * (durable as the server is configured: bench/run-state starts one with
 * fsync on and synchronous_commit on), with PG_JOBS jobs; given a
 * beanstalkd port, beanstalkd with its binlog once at the end.
 *
 * Every measurement repeats runs of JOBS jobs on a fresh file until at
 * least MIN_SECONDS (default 5) have passed (the table has the same size
 * in every run); ROUNDS (default 3) rounds alternate the rows, and the
 * summary prints medians and ranges.
 * Usage: bench-queue [DIR] [JOBS] [BEANSTALKD-PORT (0 = skip)] [PG-URL]
 * Environment: ROUNDS, MIN_SECONDS, PG_JOBS (default JOBS/10),
 * BENCH_CEILING (path of bench-sqlite-ceiling; unset = no ceiling rows),
 * BENCH_ROWS (comma-separated row numbers to run, 1-based; default all),
 * BENCH_MAX_BATCH, BENCH_PREFETCH (passed to the queue / worker).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>

static long njobs = 200000;
static double min_s = 5;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long handled;

static int noop(dsys_job_ctx *ctx, const dsys_job *job, void *ud) {
  (void)ctx, (void)job, (void)ud;
  __atomic_add_fetch(&handled, 1, __ATOMIC_RELAXED);
  return 0;
}

typedef struct sub_arg {
  dsys_queue *q;
  const char *qname;
  long n;
  int many; /* jobs per submit call */
} sub_arg;

static void *submitter(void *p) {
  sub_arg *a = p;
  const char *payloads[100];
  for (int i = 0; i < 100; i++) payloads[i] = "{\"task\":\"x\"}";
  for (long i = 0; i < a->n;) {
    long k = a->n - i < a->many ? a->n - i : a->many;
    int e = a->many == 1
                ? dsys_queue_submit(a->q, a->qname, payloads[0], NULL, NULL, NULL)
                : dsys_queue_submit_many(a->q, a->qname, payloads, (size_t)k, NULL, NULL);
    if (e) {
      fprintf(stderr, "submit: %s\n", dsys_strerror(e));
      abort();
    }
    i += k;
  }
  return NULL;
}

typedef struct row {
  const char *label;
  int kind; /* 0 queue, 1 ceiling */
  int pg, full, workers, producers, many;
  double v[64]; /* jobs/s per round */
  int nv;
} row;

/* One run of jobs jobs; returns seconds, adds the completed count. */
static double run_once(const char *dir, const char *pg, const row *r, long jobs,
                       long *completed) {
  char url[1024], name[64];
  static int run;
  if (pg) snprintf(url, sizeof url, "%s", pg);
  else snprintf(url, sizeof url, "sqlite://%s/bench-queue-%d.sqlite", dir, (int)getpid());
  if (!pg) unlink(url + 9);
  /* a fresh queue name per run: counts are per run on a shared server */
  snprintf(name, sizeof name, "bench-%d-%d", (int)getpid(), ++run);
  dsys_queue_options qo = {.size = sizeof qo, .full_sync = r->full};
  /* BENCH_MAX_BATCH=1: no group commit (for comparison) */
  if (getenv("BENCH_MAX_BATCH")) qo.max_batch = atoi(getenv("BENCH_MAX_BATCH"));
  dsys_queue *q = NULL;
  int e = dsys_queue_open(&q, url, &qo);
  if (e) {
    fprintf(stderr, "open %s: %s\n", url, dsys_strerror(e));
    abort();
  }
  const char *const QB[] = {name};
  dsys_worker_options wo = {.size = sizeof wo, .queues = QB, .nqueues = 1,
                            .threads = (uint32_t)r->workers, .lease_ms = 30000,
                            .poll_ms = 50, .handler = noop};
  /* a server commit costs a WAL flush (ms): claim more per transaction
   * (BENCH_PREFETCH overrides; the default is 32) */
  wo.prefetch = getenv("BENCH_PREFETCH") ? atoi(getenv("BENCH_PREFETCH")) : pg ? 256 : 0;
  dsys_worker *w = NULL;
  handled = 0;
  long per = jobs / r->producers;
  jobs = per * r->producers;
  double t0 = now_s();
  if (dsys_worker_start(&w, q, &wo)) abort();
  pthread_t th[64];
  sub_arg sa = {q, name, per, r->many};
  for (int i = 0; i < r->producers; i++) pthread_create(&th[i], NULL, submitter, &sa);
  for (int i = 0; i < r->producers; i++) pthread_join(th[i], NULL);
  /* Wait for the handlers (polling counts would load the writer), then
   * stop in finish mode: every outcome is committed when it returns. */
  double deadline = now_s() + 600;
  while (__atomic_load_n(&handled, __ATOMIC_RELAXED) < jobs && now_s() < deadline)
    usleep(200);
  dsys_worker_stop(w, DSYS_WORKER_STOP_FINISH);
  double t = now_s() - t0;
  dsys_job_counts c = {0};
  e = dsys_queue_counts(q, name, &c);
  if (e || c.completed != jobs)
    fprintf(stderr, "%s: %lld of %ld jobs completed (%s)\n", r->label,
            (long long)c.completed, jobs, dsys_strerror(e));
  *completed += (long)c.completed;
  if (pg) { /* keep the table small for the next run */
    int64_t removed;
    dsys_queue_purge(q, 0, &removed);
  }
  dsys_queue_close(q);
  if (!pg) {
    unlink(url + 9);
    char side[1100];
    snprintf(side, sizeof side, "%s-wal", url + 9);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", url + 9);
    unlink(side);
  }
  return t;
}

static double measure_queue(const char *dir, const char *pg, row *r, long jobs) {
  double t = 0;
  long done = 0;
  int runs = 0;
  while (t < min_s || !runs) {
    t += run_once(dir, pg, r, jobs, &done);
    runs++;
  }
  double v = done / t;
  printf("%-46s %8.0f jobs/s (%d run%s of %ld jobs, %.2f s)\n", r->label, v,
         runs, runs > 1 ? "s" : "", jobs, t);
  fflush(stdout);
  return v;
}

static double measure_ceiling(const char *dir, row *r, long jobs) {
  const char *prog = getenv("BENCH_CEILING");
  char cmd[8192], line[512];
  snprintf(cmd, sizeof cmd, "'%s' '%s' %ld %s 100 %g", prog, dir, jobs,
           r->full ? "full" : "normal", min_s);
  FILE *f = popen(cmd, "r");
  double v = 0;
  if (!f) return 0;
  while (fgets(line, sizeof line, f)) {
    char *p = strstr(line, ":");
    if (p && !v) v = atof(p + 1);
    fputs(line, stdout);
  }
  if (pclose(f) || v <= 0) {
    fprintf(stderr, "%s failed\n", cmd);
    return 0;
  }
  fflush(stdout);
  return v;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(const row *r, double *lo, double *hi) {
  double s[64];
  memcpy(s, r->v, r->nv * sizeof *s);
  qsort(s, r->nv, sizeof *s, cmp_d);
  *lo = s[0];
  *hi = s[r->nv - 1];
  return r->nv % 2 ? s[r->nv / 2] : (s[r->nv / 2 - 1] + s[r->nv / 2]) / 2;
}

static int wanted(int i) {
  const char *s = getenv("BENCH_ROWS");
  if (!s || !*s) return 1;
  for (const char *p = s; *p;) {
    if (atoi(p) == i + 1) return 1;
    p = strchr(p, ',');
    if (!p) break;
    p++;
  }
  return 0;
}

/* ---- beanstalkd client (text protocol) ---- */

static int bs_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

/* Read one line (up to \r\n) into buf. */
static int bs_line(int fd, char *buf, size_t cap) {
  size_t n = 0;
  while (n + 1 < cap) {
    ssize_t k = read(fd, buf + n, 1);
    if (k <= 0) return -1;
    n++;
    if (n >= 2 && buf[n - 2] == '\r' && buf[n - 1] == '\n') {
      buf[n - 2] = 0;
      return 0;
    }
  }
  return -1;
}

static int bs_cmd(int fd, const char *cmd, char *reply, size_t cap) {
  size_t len = strlen(cmd);
  if (write(fd, cmd, len) != (ssize_t)len) return -1;
  return bs_line(fd, reply, cap);
}

typedef struct bs_arg {
  int port;
  long n;
} bs_arg;

static void *bs_producer(void *p) {
  bs_arg *a = p;
  int fd = bs_connect(a->port);
  char reply[256];
  const char *body = "{\"task\":\"x\"}";
  char cmd[256];
  snprintf(cmd, sizeof cmd, "put 0 0 60 %zu\r\n%s\r\n", strlen(body), body);
  for (long i = 0; i < a->n; i++)
    if (bs_cmd(fd, cmd, reply, sizeof reply) || strncmp(reply, "INSERTED", 8)) abort();
  close(fd);
  return NULL;
}

static void *bs_consumer(void *p) {
  bs_arg *a = p;
  int fd = bs_connect(a->port);
  char reply[256], body[256], cmd[64];
  for (long i = 0; i < a->n; i++) {
    if (bs_cmd(fd, "reserve\r\n", reply, sizeof reply)) abort();
    unsigned long long id;
    size_t len;
    if (sscanf(reply, "RESERVED %llu %zu", &id, &len) != 2) abort();
    if (bs_line(fd, body, sizeof body)) abort();
    snprintf(cmd, sizeof cmd, "delete %llu\r\n", id);
    if (bs_cmd(fd, cmd, reply, sizeof reply) || strcmp(reply, "DELETED")) abort();
  }
  close(fd);
  return NULL;
}

static void bench_beanstalkd(int port, int consumers) {
  double t0 = now_s();
  pthread_t pt, ct[8];
  bs_arg pa = {port, njobs};
  bs_arg ca = {port, njobs / consumers};
  pthread_create(&pt, NULL, bs_producer, &pa);
  for (int i = 0; i < consumers; i++) pthread_create(&ct[i], NULL, bs_consumer, &ca);
  pthread_join(pt, NULL);
  for (int i = 0; i < consumers; i++) pthread_join(ct[i], NULL);
  double t = now_s() - t0;
  printf("beanstalkd binlog %d consumer%s: %8.0f jobs/s end to end (%ld jobs, %.2f s)\n",
         consumers, consumers > 1 ? "s" : " ", ca.n * consumers / t,
         ca.n * consumers, t);
  fflush(stdout);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "/tmp";
  if (argc > 2) njobs = atol(argv[2]);
  int port = argc > 3 ? atoi(argv[3]) : 0;
  const char *pg = argc > 4 && *argv[4] ? argv[4] : NULL;
  int rounds = getenv("ROUNDS") ? atoi(getenv("ROUNDS")) : 3;
  if (getenv("MIN_SECONDS")) min_s = atof(getenv("MIN_SECONDS"));
  long pg_jobs = getenv("PG_JOBS") ? atol(getenv("PG_JOBS")) : njobs / 10;
  if (njobs < 100 || rounds < 1 || rounds > 64 || pg_jobs < 100) return 2;
  const char *ceiling = getenv("BENCH_CEILING");
#define CEIL(l, f) {.label = l, .kind = 1, .full = f}
#define Q(l, g, f, w, p, m) {.label = l, .pg = g, .full = f, .workers = w, .producers = p, .many = m}
  row rows[] = {
      CEIL("sqlite ceiling NORMAL (raw, batches of 100)", 0),
      CEIL("sqlite ceiling FULL (raw, batches of 100)", 1),
      Q("dsys NORMAL 4 workers, 2 producers x100", 0, 0, 4, 2, 100),
      Q("dsys FULL   4 workers, 2 producers x100", 0, 1, 4, 2, 100),
      Q("dsys NORMAL 4 workers, 16 producers x1", 0, 0, 4, 16, 1),
      Q("dsys FULL   4 workers, 16 producers x1", 0, 1, 4, 16, 1),
      Q("dsys PostgreSQL 1 worker, 2 producers x100", 1, 1, 1, 2, 100),
      Q("dsys PostgreSQL 4 workers, 2 producers x100", 1, 1, 4, 2, 100),
      Q("dsys PostgreSQL 4 workers, 16 producers x1", 1, 1, 4, 16, 1),
  };
  size_t nrows = sizeof rows / sizeof *rows;
  printf("queue: %ld jobs per run (PostgreSQL %ld), at least %.0f s per "
         "measurement, %d rounds\n", njobs, pg_jobs, min_s, rounds);
  for (int k = 0; k < rounds; k++) {
    printf("---- round %d\n", k + 1);
    for (size_t i = 0; i < nrows; i++) {
      row *r = &rows[i];
      if (!wanted((int)i) || (r->kind == 1 && !ceiling) || (r->pg && !pg)) continue;
      double v = r->kind == 1 ? measure_ceiling(dir, r, njobs)
                              : measure_queue(dir, r->pg ? pg : NULL, r,
                                              r->pg ? pg_jobs : njobs);
      if (v > 0) r->v[r->nv++] = v;
    }
  }
  printf("==== queue summary: %d rounds, median [range] jobs/s; ratio: median / "
         "ceiling median at the same synchronous level\n", rounds);
  for (size_t i = 0; i < nrows; i++) {
    row *r = &rows[i];
    if (!r->nv) continue;
    double lo, hi, m = median(r, &lo, &hi);
    printf("%-46s %8.0f [%.0f-%.0f]", r->label, m, lo, hi);
    const row *c = &rows[r->full ? 1 : 0];
    if (r->kind == 0 && !r->pg && c->nv) {
      double clo, chi, cm = median(c, &clo, &chi);
      printf("  %.2f of ceiling", m / cm);
    }
    printf("\n");
  }
  fflush(stdout);
  if (port > 0) {
    long keep = njobs;
    njobs = pg_jobs;
    bench_beanstalkd(port, 1);
    bench_beanstalkd(port, 4);
    njobs = keep;
  }
  return 0;
}
