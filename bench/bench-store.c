/*
 * Store benchmark: gets and puts per second with 1 and 2 threads, on a
 * durable SQLite file in DIR (synchronous=NORMAL) or on a store URL
 * (e.g. postgresql://...). Usage: bench-store [DIR|URL] [SECONDS]
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <distsys/distsys.h>

#define NKEYS 10000
static dsys_store *s;
static double secs = 2.0;
static int do_put;
static const char *backend = "sqlite";

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *loop(void *arg) {
  long *count = arg, n = 0;
  unsigned seed = (unsigned)(uintptr_t)arg;
  char key[32];
  double end = now_s() + secs;
  while (1) {
    for (int i = 0; i < 256; i++) {
      snprintf(key, sizeof key, "bench/%05u", rand_r(&seed) % NKEYS);
      if (do_put) {
        if (dsys_store_put(s, key, "{\"v\":\"some value of moderate size\"}", NULL, NULL)) abort();
      } else {
        dsys_item *it = NULL;
        if (dsys_store_get(s, key, &it)) abort();
        dsys_item_free(it);
      }
      n++;
    }
    if (now_s() >= end) break;
  }
  *count = n;
  return NULL;
}

static void run(const char *what, int put, int threads) {
  do_put = put;
  pthread_t th[8];
  long counts[8] = {0};
  double t0 = now_s();
  for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, loop, &counts[i]);
  long total = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(th[i], NULL);
    total += counts[i];
  }
  printf("store %-4s %d thread%s: %9.0f ops/s  (%s)\n", what, threads, threads > 1 ? "s" : " ",
         total / (now_s() - t0), backend);
  fflush(stdout);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "/tmp";
  if (argc > 2) secs = atof(argv[2]);
  char url[1024];
  if (strstr(dir, "://")) snprintf(url, sizeof url, "%s", dir);
  else snprintf(url, sizeof url, "sqlite://%s/bench-store.sqlite", dir);
  if (!strncmp(url, "postgres", 8)) backend = "postgresql";
  int e = dsys_store_open(&s, url, NULL);
  if (e) {
    fprintf(stderr, "open %s: %s\n", url, dsys_strerror(e));
    return 1;
  }
  char key[32];
  for (int i = 0; i < NKEYS; i++) {
    snprintf(key, sizeof key, "bench/%05d", i);
    dsys_store_put(s, key, "{\"v\":\"some value of moderate size\"}", NULL, NULL);
  }
  run("get", 0, 1);
  run("get", 0, 2);
  run("put", 1, 1);
  run("put", 1, 2);
  dsys_store_close(s);
  return 0;
}
