/*
 * Queue benchmark: jobs per second end to end (submit, claim, complete) on
 * a durable SQLite file (synchronous NORMAL, and FULL), with 1 and 4
 * worker threads (dsys_worker), 2 submitting threads using
 * dsys_queue_submit_many (100 per call), plus one run with plain
 * dsys_queue_submit (one job per call); and the same cycle on
 * beanstalkd with its binlog on (-b), 1 producer and 1 / 4 consumers;
 * and, given a PostgreSQL URL, the same dsys rows on PostgreSQL (durable as
 * the server is configured: bench/run-state starts one with fsync on and
 * synchronous_commit on).
 * Usage: bench-queue [DIR] [JOBS] [BEANSTALKD-PORT (0 = skip)] [PG-URL]
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

static long njobs = 20000;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long handled;

static int noop(dsys_job_ctx *ctx, const dsys_job *job, void *ud) {
  __atomic_add_fetch(&handled, 1, __ATOMIC_RELAXED);
  return 0;
}

typedef struct sub_arg {
  dsys_queue *q;
  long n;
  int many; /* jobs per submit call */
} sub_arg;

static const char *qname = "bench";

static void *submitter(void *p) {
  sub_arg *a = p;
  const char *payloads[100];
  for (int i = 0; i < 100; i++) payloads[i] = "{\"task\":\"x\"}";
  for (long i = 0; i < a->n;) {
    long k = a->n - i < a->many ? a->n - i : a->many;
    if (a->many == 1) {
      if (dsys_queue_submit(a->q, qname, payloads[0], NULL, NULL, NULL)) abort();
    } else if (dsys_queue_submit_many(a->q, qname, payloads, (size_t)k, NULL, NULL)) {
      abort();
    }
    i += k;
  }
  return NULL;
}

/* pg: a PostgreSQL URL (then full is only a label), else SQLite in dir */
static void bench_dsys(const char *dir, const char *pg, int full, uint32_t threads, int many) {
  char url[1024], name[64];
  static int run;
  if (pg) snprintf(url, sizeof url, "%s", pg);
  else snprintf(url, sizeof url, "sqlite://%s/bench-queue-%d-%u.sqlite", dir, full, threads);
  if (!pg) unlink(url + 9);
  /* a fresh queue name per run: counts are per run on a shared server */
  snprintf(name, sizeof name, "bench-%d-%d", (int)getpid(), ++run);
  qname = name;
  dsys_queue_options qo = {.size = sizeof qo, .full_sync = full};
  /* BENCH_MAX_BATCH=1: no group commit (for comparison) */
  if (getenv("BENCH_MAX_BATCH")) qo.max_batch = atoi(getenv("BENCH_MAX_BATCH"));
  dsys_queue *q = NULL;
  int e = dsys_queue_open(&q, url, &qo);
  if (e) {
    fprintf(stderr, "open %s: %s\n", url, dsys_strerror(e));
    abort();
  }
  const char *const QB[] = {qname};
  dsys_worker_options wo = {.size = sizeof wo, .queues = QB, .nqueues = 1,
                            .threads = threads, .lease_ms = 30000,
                            .poll_ms = 50, .handler = noop};
  /* a server commit costs a WAL flush (ms): claim more per transaction
   * (BENCH_PREFETCH overrides; the default is 32) */
  wo.prefetch = getenv("BENCH_PREFETCH") ? atoi(getenv("BENCH_PREFETCH")) : pg ? 256 : 0;
  dsys_worker *w = NULL;
  handled = 0;
  double t0 = now_s();
  if (dsys_worker_start(&w, q, &wo)) abort();
  pthread_t th[2];
  sub_arg sa = {q, njobs / 2, many};
  for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, submitter, &sa);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  double tsub = now_s() - t0;
  /* Wait for the handlers (polling counts would load the writer), then
   * stop in finish mode: every outcome is committed when it returns. */
  for (int i = 0; i < 600000; i++) {
    if (__atomic_load_n(&handled, __ATOMIC_RELAXED) >= 2 * sa.n) break;
    usleep(100);
  }
  dsys_worker_stop(w, DSYS_WORKER_STOP_FINISH);
  double t = now_s() - t0;
  dsys_job_counts c = {0};
  dsys_queue_counts(q, qname, &c);
  printf("dsys queue  %-10s %u worker%s submit%s: %8.0f jobs/s end to end (%ld jobs, %.2f s; submits done at %.2f s; prefetch %d)\n",
         pg ? "PostgreSQL" : full ? "FULL" : "NORMAL", threads, threads > 1 ? "s" : " ",
         many > 1 ? "_many" : "     ",
         c.completed / t, (long)c.completed, t, tsub, wo.prefetch ? wo.prefetch : 32);
  fflush(stdout);
  if (pg) { /* keep the table small for the next run */
    int64_t removed;
    dsys_queue_purge(q, 0, &removed);
  }
  dsys_queue_close(q);
  if (!pg) unlink(url + 9);
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
  if (getenv("BENCH_PG_ONLY") == NULL) {
    bench_dsys(dir, NULL, 0, 1, 100);
    bench_dsys(dir, NULL, 0, 4, 100);
    bench_dsys(dir, NULL, 1, 1, 100);
    bench_dsys(dir, NULL, 1, 4, 100);
    bench_dsys(dir, NULL, 0, 4, 1);
    bench_dsys(dir, NULL, 1, 4, 1);
  }
  if (pg) { /* fsync on, synchronous_commit on: each commit is on disk */
    /* BENCH_PG_ONLY=4: only the 4-worker batching row (for profiling) */
    int one = getenv("BENCH_PG_ONLY") && !strcmp(getenv("BENCH_PG_ONLY"), "4");
    if (!one) bench_dsys(dir, pg, 1, 1, 100);
    bench_dsys(dir, pg, 1, 4, 100);
    if (!one) bench_dsys(dir, pg, 1, 4, 1);
  }
  if (port > 0) {
    bench_beanstalkd(port, 1);
    bench_beanstalkd(port, 4);
  }
  return 0;
}
