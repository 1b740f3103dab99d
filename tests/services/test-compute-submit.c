/*
 * POST /api/compute/job from many concurrent clients (the compute
 * service defers each request and stores what arrived meanwhile in one
 * transaction): every request gets its own 202 and job id, every job is
 * stored; submissions that wait behind a file locked by another process
 * past the busy timeout are each answered 503 DSYS_EBUSY with nothing
 * stored, and the instance stores again once the lock is gone.
 */
#include <sqlite3.h>
#include <stdio.h>
#include "svc-test.h"

static char dir_[256], db_[300];
static dsys_server *srv;
static dsys_queue *q;
static dsys_compute_service *svc;
static char url_[64];

#define NTH 16
#define PER 25

typedef struct cl {
  int t, n202, other;
  long long ids[PER];
} cl;

static void *client(void *p) {
  cl *c = p;
  for (int i = 0; i < PER; i++) {
    char body[160];
    snprintf(body, sizeof body, "{\"type\":\"add\",\"data\":{\"operands\":[%d,%d]}}", c->t, i);
    resp *r = call(url_, "POST", "/api/compute/job", body);
    const char *id = r->status == 202 ? js(r, "jobId") : NULL;
    if (id && !strcmp(js(r, "status"), "pending")) c->ids[c->n202++] = atoll(id);
    else c->other++;
    resp_free(r);
  }
  return NULL;
}

static int cmp_ll(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return x < y ? -1 : x > y;
}

static void test_concurrent(void) {
  cl cls[NTH];
  pthread_t th[NTH];
  for (int t = 0; t < NTH; t++) {
    cls[t] = (cl){.t = t};
    pthread_create(&th[t], NULL, client, &cls[t]);
  }
  long long all[NTH * PER];
  int n = 0, other = 0;
  for (int t = 0; t < NTH; t++) {
    pthread_join(th[t], NULL);
    for (int i = 0; i < cls[t].n202; i++) all[n++] = cls[t].ids[i];
    other += cls[t].other;
  }
  is_int(n, NTH * PER, "%d clients x %d submissions: each answered 202 pending with a job id", NTH,
         PER);
  is_int(other, 0, "no other answer");
  qsort(all, (size_t)n, sizeof all[0], cmp_ll);
  int dup = 0;
  for (int i = 1; i < n; i++) dup += all[i] == all[i - 1];
  is_int(dup, 0, "every job id distinct");
  /* each client's jobs are its own: check them in the queue */
  int stored = 0, right = 0;
  for (int t = 0; t < NTH; t++)
    for (int i = 0; i < cls[t].n202; i++) {
      dsys_job *j = NULL;
      if (dsys_queue_get(q, cls[t].ids[i], &j)) continue;
      stored++;
      char want[64];
      snprintf(want, sizeof want, "\"operands\":[%d,%d]", t, i);
      if (j->state == DSYS_JOB_WAITING && strstr(j->payload, want)) right++;
      dsys_job_free(j);
    }
  is_int(stored, n, "every acknowledged job is stored");
  is_int(right, n, "... waiting, with the payload of the request that got its id");
}

typedef struct busy_cl {
  resp *r;
} busy_cl;

static void *busy_client(void *p) {
  busy_cl *b = p;
  b->r = call(url_, "POST", "/api/compute/job", "{\"type\":\"add\",\"data\":{\"operands\":[7,7]}}");
  return NULL;
}

static void test_locked(void) {
  dsys_job_counts before = {0}, after = {0};
  dsys_queue_counts(q, DSYS_COMPUTE_QUEUE, &before);
  sqlite3 *raw = NULL;
  sqlite3_open(db_, &raw);
  sqlite3_busy_timeout(raw, 5000);
  is_int(sqlite3_exec(raw, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK,
         "another connection holds the file's write lock");
  busy_cl b[4];
  pthread_t th[4];
  for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, busy_client, &b[i]);
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL); /* bounded by the 5 s busy timeout */
  sqlite3_exec(raw, "ROLLBACK", NULL, NULL, NULL);
  sqlite3_close(raw);
  int n503 = 0;
  for (int i = 0; i < 4; i++) {
    if (b[i].r->status == 503 && !strcmp(js(b[i].r, "code"), "DSYS_EBUSY") &&
        b[i].r->retry_after)
      n503++;
    resp_free(b[i].r);
  }
  is_int(n503, 4, "4 submissions behind the lock: each answered 503 DSYS_EBUSY with Retry-After");
  dsys_queue_counts(q, DSYS_COMPUTE_QUEUE, &after);
  is_int(after.waiting, before.waiting, "none of them stored");
  resp *r = call(url_, "POST", "/api/compute/job", "{\"type\":\"add\",\"data\":{\"operands\":[1,1]}}");
  is_int(r->status, 202, "the lock gone, a submission is stored again");
  resp_free(r);
}

int main(void) {
  snprintf(dir_, sizeof dir_, "%s/dsys-csub-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(dir_)) tap_bail("mkdtemp");
  snprintf(db_, sizeof db_, "%s/q.sqlite", dir_);
  char qurl[400];
  snprintf(qurl, sizeof qurl, "sqlite://%s", db_);
  if (dsys_queue_open(&q, qurl, NULL)) tap_bail("queue open");
  dsys_client_new(&cli_, NULL);
  srv = svc_server("compute-sub", 0);
  /* no workers: the submitted jobs stay waiting, to be checked */
  dsys_compute_options o = {.size = sizeof o, .queue = q, .no_workers = 1};
  svc_listen(srv, dsys_service_compute_mount(srv, &o, &svc), "compute-sub", url_, sizeof url_);
  test_concurrent();
  test_locked();
  dsys_server_stop(srv, 2000);
  dsys_service_compute_free(svc);
  dsys_server_free(srv);
  dsys_queue_close(q);
  dsys_client_free(cli_);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir_);
  if (system(cmd)) tap_diag("cleanup failed");
  return tap_done();
}
