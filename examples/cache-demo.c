/*
 * cache-demo: reads items of a store through a dsys_cache, the way a
 * service puts a cache in front of a slower source: concurrent misses of
 * one key share one load, "not found" answers are remembered briefly, and
 * a change is made visible by invalidating the key.
 *
 *   cache-demo STORE_URL
 *
 * Writes item "greeting", reads it 1000 times from 4 threads, changes it,
 * invalidates, reads again, and prints the cache's counters.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/distsys.h>

static dsys_store *store;
static dsys_cache *cache;

/* The loader: the store's value of key (a JSON text). */
static int load(void *ud, const char *key, void **value, size_t *len) {
  dsys_item *it = NULL;
  int rc = dsys_store_get(store, key, &it);
  if (rc) return rc; /* DSYS_ENOTFOUND is remembered for negative_ttl_ms */
  *len = strlen(it->value);
  *value = malloc(*len);
  if (*value) memcpy(*value, it->value, *len);
  dsys_item_free(it);
  return *value ? 0 : DSYS_ENOMEM;
}

static void *reader(void *p) {
  for (int i = 0; i < 250; i++) {
    void *v = NULL;
    size_t n = 0;
    if (!dsys_cache_get(cache, "greeting", load, NULL, &v, &n)) dsys_free(v);
    if (dsys_cache_get(cache, "missing", load, NULL, &v, &n) != DSYS_ENOTFOUND) abort();
  }
  return NULL;
}

static void show(const char *what) {
  void *v = NULL;
  size_t n = 0;
  if (!dsys_cache_get(cache, "greeting", load, NULL, &v, &n)) printf("%s: %.*s\n", what, (int)n, (char *)v);
  dsys_free(v);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: cache-demo STORE_URL\n");
    return 2;
  }
  dsys_cache_options co = {.size = sizeof co, .max_bytes = 1 << 20, .ttl_ms = 60000,
                           .negative_ttl_ms = 5000};
  int rc = dsys_store_open(&store, argv[1], NULL);
  if (!rc) rc = dsys_cache_new(&cache, &co);
  if (!rc) rc = dsys_store_put(store, "greeting", "\"hello\"", NULL, NULL);
  if (rc) {
    fprintf(stderr, "cache-demo: %s\n", dsys_strerror(rc));
    return 1;
  }
  pthread_t t[4];
  for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, reader, NULL);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  show("before");
  dsys_store_put(store, "greeting", "\"hello again\"", NULL, NULL);
  show("changed, not invalidated");
  dsys_cache_invalidate(cache, "greeting");
  show("after invalidate");
  dsys_cache_stats st;
  dsys_cache_get_stats(cache, &st);
  printf("hits %llu negative_hits %llu misses %llu loads %llu invalidations %llu\n",
         (unsigned long long)st.hits, (unsigned long long)st.negative_hits,
         (unsigned long long)st.misses, (unsigned long long)st.loads,
         (unsigned long long)st.invalidations);
  dsys_cache_free(cache);
  dsys_store_close(store);
  return 0;
}
