/*
 * bench-locks: lock acquire+release pairs per second on one locks URL,
 * uncontended (one thread, its own name) and contended (T threads on one
 * name, waits allowed), for bench/run-locks.
 *
 *   bench-locks URL THREADS SECONDS [unfair]
 *
 * Prints one line: "pairs/s P  threads T  errors E  fair|unfair  url U"
 * ("unfair": dsys_lock_options.unfair, no waiting line: the cost of the
 * waiting line's extra read shows beside it).
 *
 *   bench-locks --procs URL PROCS SECONDS [unfair]
 *
 * Fairness: PROCS processes, each with its own handle, take the lock in a
 * loop and hold it 1 ms each time (some work), re-acquiring at once after
 * a release ("unfair": with dsys_lock_options.unfair, no waiting line).
 * Prints "pairs/s P  procs N  shares a b c ..  max/min M  url U" (each
 * process's share of the acquisitions, in %).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>

static dsys_locks *ls;
static atomic_long pairs;
static atomic_int stop, errors;
static int unfair;

static void *run(void *p) {
  const char *name = p;
  while (!stop) {
    dsys_lock *lk = NULL;
    dsys_lock_options o = {.size = sizeof o, .ttl_ms = 10000, .manual_renew = 1,
                           .unfair = unfair};
    if (dsys_lock_acquire(ls, name, 10000, &o, &lk)) {
      errors++;
      continue;
    }
    dsys_lock_release(lk);
    pairs++;
  }
  return NULL;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One process of --procs: counts its acquisitions until the deadline and
 * writes the count to fd. */
static void proc_main(const char *url, double until, int fd) {
  dsys_locks *h = NULL;
  if (dsys_locks_open(&h, url, NULL)) _exit(1);
  long n = 0;
  while (now_s() < until) {
    dsys_lock *lk = NULL;
    dsys_lock_options o = {.size = sizeof o, .ttl_ms = 10000, .manual_renew = 1,
                           .unfair = unfair};
    if (dsys_lock_acquire(h, "fair", 2000, &o, &lk)) continue; /* timed out: try again */
    struct timespec d = {0, 1000000};
    nanosleep(&d, NULL);
    dsys_lock_release(lk);
    n++;
  }
  dsys_locks_close(h);
  _exit(write(fd, &n, sizeof n) == sizeof n ? 0 : 1);
}

static int procs(const char *url, int np, int secs) {
  int fds[64][2];
  pid_t pids[64];
  double t0 = now_s(), until = t0 + secs;
  for (int i = 0; i < np; i++) {
    if (pipe(fds[i])) return 1;
    pids[i] = fork();
    if (pids[i] == 0) proc_main(url, until, fds[i][1]);
  }
  long n[64], total = 0, mx = 0, mn = -1;
  for (int i = 0; i < np; i++) {
    n[i] = 0;
    if (read(fds[i][0], &n[i], sizeof n[i]) != sizeof n[i]) n[i] = 0;
    waitpid(pids[i], NULL, 0);
    close(fds[i][0]);
    close(fds[i][1]);
    total += n[i];
    if (n[i] > mx) mx = n[i];
    if (mn < 0 || n[i] < mn) mn = n[i];
  }
  printf("pairs/s %.0f  procs %d  shares", (double)total / (now_s() - t0), np);
  for (int i = 0; i < np; i++) printf(" %.1f", total ? 100.0 * n[i] / total : 0.0);
  if (mn > 0) printf("  max/min %.2f", (double)mx / mn);
  else printf("  max/min inf (min %ld)", mn);
  printf("  %s  url %s\n", unfair ? "unfair" : "fair", url);
  return 0;
}

int main(int argc, char **argv) {
  if ((argc == 5 || (argc == 6 && !strcmp(argv[5], "unfair"))) && !strcmp(argv[1], "--procs")) {
    int np = atoi(argv[3]), secs = atoi(argv[4]);
    unfair = argc == 6;
    if (np < 1 || np > 64 || secs < 1) return 2;
    return procs(argv[2], np, secs);
  }
  if (argc == 5 && !strcmp(argv[4], "unfair")) {
    unfair = 1;
    argc--;
  }
  if (argc != 4) {
    fprintf(stderr, "usage: bench-locks URL THREADS SECONDS [unfair] | --procs URL PROCS SECONDS [unfair]\n");
    return 2;
  }
  int t = atoi(argv[2]), secs = atoi(argv[3]);
  if (t < 1 || t > 64 || secs < 1) return 2;
  int rc = dsys_locks_open(&ls, argv[1], NULL);
  if (rc) {
    fprintf(stderr, "bench-locks: %s\n", dsys_strerror(rc));
    return 1;
  }
  pthread_t th[64];
  for (int i = 0; i < t; i++) pthread_create(&th[i], NULL, run, "bench");
  struct timespec d = {secs, 0};
  nanosleep(&d, NULL);
  stop = 1;
  for (int i = 0; i < t; i++) pthread_join(th[i], NULL);
  printf("pairs/s %.0f  threads %d  errors %d  %s  url %s\n", (double)pairs / secs, t,
         (int)errors, unfair ? "unfair" : "fair", argv[1]);
  dsys_locks_close(ls);
  return 0;
}
