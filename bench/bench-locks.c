/*
 * bench-locks: lock acquire+release pairs per second on one locks URL,
 * uncontended (one thread, its own name) and contended (T threads on one
 * name, waits allowed), for bench/run-locks.
 *
 *   bench-locks URL THREADS SECONDS
 *
 * Prints one line: "pairs/s P  threads T  url U".
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <distsys/distsys.h>

static dsys_locks *ls;
static atomic_long pairs;
static atomic_int stop, errors;

static void *run(void *p) {
  const char *name = p;
  while (!stop) {
    dsys_lock *lk = NULL;
    dsys_lock_options o = {.size = sizeof o, .ttl_ms = 10000, .manual_renew = 1};
    if (dsys_lock_acquire(ls, name, 10000, &o, &lk)) {
      errors++;
      continue;
    }
    dsys_lock_release(lk);
    pairs++;
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: bench-locks URL THREADS SECONDS\n");
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
  printf("pairs/s %.0f  threads %d  errors %d  url %s\n", (double)pairs / secs, t, (int)errors,
         argv[1]);
  dsys_locks_close(ls);
  return 0;
}
