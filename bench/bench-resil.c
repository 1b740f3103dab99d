/*
 * Cost of the per-call resilience work of an upstream call, with no network:
 * balancer pick + circuit breaker acquire/record + passive health statistics
 * (dsys_health_observe) + balancer release. Runs from 1 and 2 threads on
 * shared objects and prints ns/op.
 *
 * Usage: bench-resil [ops_per_thread] [policy]   (default 2000000, round_robin)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <distsys/distsys.h>

#define NEP 8

typedef struct shared {
  dsys_balancer *lb;
  dsys_health *hc;
  dsys_breaker *br[NEP];
  long ops;
} shared;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *run(void *p) {
  shared *s = p;
  char key[16];
  for (long i = 0; i < s->ops; i++) {
    dsys_pick_result r;
    int n = snprintf(key, sizeof key, "k%ld", i & 1023);
    if (dsys_balancer_pick(s->lb, key, (size_t)n, NULL, &r)) abort();
    dsys_breaker *b = s->br[(intptr_t)r.ud];
    dsys_breaker_permit permit;
    if (dsys_breaker_acquire(b, &permit) == 0)
      dsys_breaker_record(b, permit, DSYS_BREAKER_SUCCESS, 1000);
    dsys_health_observe(s->hc, r.id, DSYS_OUTCOME_OK);
    dsys_balancer_release(s->lb, &r);
  }
  return NULL;
}

int main(int argc, char **argv) {
  long ops = argc > 1 ? atol(argv[1]) : 2000000;
  int32_t policy = DSYS_LB_ROUND_ROBIN;
  if (argc > 2 && dsys_lb_policy_parse(argv[2], &policy)) {
    fprintf(stderr, "unknown policy %s\n", argv[2]);
    return 2;
  }
  shared s = {.ops = ops};
  dsys_balancer_options lo = {.size = sizeof lo, .policy = policy};
  if (dsys_balancer_new(&s.lb, &lo) || dsys_health_new(&s.hc, NULL)) return 1;
  for (int i = 0; i < NEP; i++) {
    char id[16];
    snprintf(id, sizeof id, "ep%d", i);
    if (dsys_balancer_add(s.lb, id, 1, (void *)(intptr_t)i) ||
        dsys_health_add(s.hc, id, NULL) || dsys_breaker_new(&s.br[i], NULL))
      return 1;
  }
  printf("policy %s, %d endpoints, %ld ops per thread\n", dsys_lb_policy_name(policy), NEP, ops);
  for (int nt = 1; nt <= 2; nt++) {
    pthread_t t[2];
    double t0 = now_s();
    for (int i = 0; i < nt; i++) pthread_create(&t[i], NULL, run, &s);
    for (int i = 0; i < nt; i++) pthread_join(t[i], NULL);
    double dt = now_s() - t0;
    printf("%d thread%s: %.1f ns/op per thread (%.2f Mops/s total)\n", nt,
           nt > 1 ? "s" : "", dt * 1e9 / ops, nt * ops / dt / 1e6);
  }
  for (int i = 0; i < NEP; i++) dsys_breaker_free(s.br[i]);
  dsys_health_free(s.hc);
  dsys_balancer_free(s.lb);
  return 0;
}
