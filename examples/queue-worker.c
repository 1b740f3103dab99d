/*
 * queue-worker: one process submits jobs, another runs a worker pool on the
 * same SQLite file and reports progress and results.
 *
 *   queue-worker submit FILE N      submit N jobs {"n": i} to queue "squares"
 *   queue-worker work FILE N [T]    run T threads until N jobs are completed;
 *                                   print each result, exit 0
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>

static int square(dsys_job_ctx *ctx, const dsys_job *job, void *ud) {
  (void)ud;
  long n = 0;
  if (sscanf(job->payload, "{\"n\":%ld}", &n) != 1) {
    dsys_job_ctx_set_error(ctx, "payload must be {\"n\": <int>}");
    return DSYS_EINVAL;
  }
  dsys_job_ctx_progress(ctx, 50, "multiplying");
  char res[64];
  snprintf(res, sizeof res, "{\"n\":%ld,\"square\":%ld}", n, n * n);
  return dsys_job_ctx_set_result(ctx, res);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s submit|work FILE N [THREADS]\n", argv[0]);
    return 2;
  }
  char url[4096];
  snprintf(url, sizeof url, "sqlite://%s", argv[2]);
  long n = atol(argv[3]);
  dsys_queue *q = NULL;
  int e = dsys_queue_open(&q, url, NULL);
  if (e) {
    fprintf(stderr, "open: %s\n", dsys_strerror(e));
    return 1;
  }
  if (!strcmp(argv[1], "submit")) {
    for (long i = 1; i <= n; i++) {
      char payload[64], key[32];
      snprintf(payload, sizeof payload, "{\"n\":%ld}", i);
      snprintf(key, sizeof key, "job-%ld", i); /* resubmitting is harmless */
      dsys_submit_options o = {.size = sizeof o, .idempotency_key = key};
      int64_t id;
      if ((e = dsys_queue_submit(q, "squares", payload, &o, &id, NULL))) {
        fprintf(stderr, "submit: %s\n", dsys_strerror(e));
        return 1;
      }
      printf("submitted job %lld\n", (long long)id);
    }
    dsys_queue_close(q);
    return 0;
  }
  if (strcmp(argv[1], "work")) return 2;
  static const char *const queues[] = {"squares"};
  dsys_worker_options wo = {.size = sizeof wo, .queues = queues, .nqueues = 1,
                            .threads = argc > 4 ? (uint32_t)atoi(argv[4]) : 2,
                            .lease_ms = 5000, .poll_ms = 20,
                            .handler = square};
  dsys_worker *w = NULL;
  if ((e = dsys_worker_start(&w, q, &wo))) {
    fprintf(stderr, "worker: %s\n", dsys_strerror(e));
    return 1;
  }
  dsys_job_counts c = {0};
  for (int i = 0; i < 3000; i++) { /* at most ~30 s */
    dsys_queue_counts(q, "squares", &c);
    if (c.completed + c.failed >= n) break;
    usleep(10000);
  }
  dsys_worker_stop(w, DSYS_WORKER_STOP_FINISH);
  /* Report: progress and result of every finished job, in id order. */
  for (int64_t id = 1; id <= n; id++) {
    dsys_job *j = NULL;
    if (dsys_queue_get(q, id, &j)) continue;
    printf("job %lld %s progress=%d result=%s\n", (long long)j->id,
           dsys_job_state_name(j->state), j->progress,
           j->result ? j->result : "-");
    dsys_job_free(j);
  }
  dsys_queue_close(q);
  return c.completed == n ? 0 : 1;
}
