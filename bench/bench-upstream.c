/*
 * Cost of dsys_upstream_pick + dsys_upstream_report (the gateway's per
 * request resilience work: balancer, breaker permit and record, passive
 * health, per-endpoint atomic statistics), with no network. Runs from 1 and
 * 2 threads on one shared upstream and prints ns/op.
 *
 * Usage: bench-upstream [ops_per_thread] [policy] [endpoints]
 *        (default 2000000, round_robin, 8)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <distsys/distsys.h>

typedef struct job {
  dsys_upstream *u;
  long ops;
  long errors;
} job;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *run(void *p) {
  job *j = p;
  char key[16];
  for (long i = 0; i < j->ops; i++) {
    struct dsys_upstream_pick pk;
    int n = snprintf(key, sizeof key, "k%ld", i & 1023);
    if (dsys_upstream_pick(j->u, key, (size_t)n, NULL, &pk)) {
      j->errors++;
      continue;
    }
    dsys_upstream_report(j->u, &pk, 0, 200);
  }
  return NULL;
}

static double bench(dsys_upstream *u, int threads, long ops) {
  pthread_t th[2];
  job j[2];
  double t0 = now_s();
  for (int i = 0; i < threads; i++) {
    j[i] = (job){.u = u, .ops = ops};
    pthread_create(&th[i], NULL, run, &j[i]);
  }
  for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
  double dt = now_s() - t0;
  for (int i = 0; i < threads; i++)
    if (j[i].errors) fprintf(stderr, "%ld pick errors\n", j[i].errors);
  return dt * 1e9 / (double)ops; /* per op, as seen by each thread */
}

int main(int argc, char **argv) {
  long ops = argc > 1 ? atol(argv[1]) : 2000000;
  int32_t policy = DSYS_LB_ROUND_ROBIN;
  if (argc > 2 && dsys_lb_policy_parse(argv[2], &policy)) {
    fprintf(stderr, "unknown policy %s\n", argv[2]);
    return 2;
  }
  int nep = argc > 3 ? atoi(argv[3]) : 8;
  if (ops < 1 || nep < 1 || nep > 1000) return 2;
  dsys_upstream_options o = {.size = sizeof o, .service = "bench", .policy = policy};
  dsys_upstream *u;
  if (dsys_upstream_new(&u, &o)) return 1;
  for (int i = 0; i < nep; i++) {
    char id[16], url[64];
    snprintf(id, sizeof id, "ep%d", i);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", 20000 + i);
    if (dsys_upstream_add(u, id, url, 1)) return 1;
  }
  bench(u, 1, ops / 10); /* warm up */
  double one = bench(u, 1, ops);
  double two = bench(u, 2, ops);
  printf("dsys_upstream pick+report, %s, %d endpoints, %ld ops per thread\n",
         dsys_lb_policy_name(policy), nep, ops);
  printf("1 thread: %.1f ns/op per thread (%.2f Mops/s total)\n", one, 1e3 / one);
  printf("2 threads: %.1f ns/op per thread (%.2f Mops/s total)\n", two, 2e3 / two);
  dsys_upstream_free(u);
  return 0;
}
