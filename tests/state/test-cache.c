/*
 * dsys_cache: hits and misses, TTL on a fake clock, LRU bounds in entries
 * and bytes, negative caching, stale-while-revalidate, single-flight loads
 * from many threads, invalidation racing a load, bad input.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include <distsys/cache.h>
#include "tap.h"

typedef struct src {
  _Atomic int calls;
  int version;        /* value served: "v<version>" */
  int missing;        /* answer DSYS_ENOTFOUND */
  int fail;           /* answer DSYS_EIO */
  int delay_us;       /* slow loads */
  _Atomic int gate;   /* when set, loads wait until it is cleared */
} src;

static int load(void *ud, const char *key, void **value, size_t *len) {
  src *s = ud;
  s->calls++;
  if (s->delay_us) usleep((useconds_t)s->delay_us);
  for (int i = 0; i < 5000 && s->gate; i++) usleep(1000);
  if (s->fail) return DSYS_EIO;
  if (s->missing) return DSYS_ENOTFOUND;
  char buf[64];
  int n = snprintf(buf, sizeof buf, "%s=v%d", key, s->version);
  *value = malloc((size_t)n);
  memcpy(*value, buf, (size_t)n);
  *len = (size_t)n;
  return 0;
}

static int get_str(dsys_cache *c, const char *key, src *s, char *out, size_t n) {
  void *v = NULL;
  size_t len = 0;
  int rc = dsys_cache_get(c, key, s ? load : NULL, s, &v, &len);
  if (!rc) snprintf(out, n, "%.*s", (int)len, (char *)v);
  else snprintf(out, n, "(%d)", rc);
  dsys_free(v);
  return rc;
}

static void basics(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 1700000000000LL);
  dsys_cache_options o = {.size = sizeof o, .clock = clk, .ttl_ms = 1000};
  dsys_cache *c = NULL;
  is_int(dsys_cache_new(&c, &o), 0, "new");
  src s = {.version = 1};
  char buf[64];
  is_int(get_str(c, "a", NULL, buf, sizeof buf), DSYS_ENOTFOUND, "lookup-only miss: DSYS_ENOTFOUND");
  is_int(get_str(c, "a", &s, buf, sizeof buf), 0, "miss loads");
  is_str(buf, "a=v1", "... the loaded value");
  s.version = 2;
  get_str(c, "a", &s, buf, sizeof buf);
  ok(!strcmp(buf, "a=v1") && s.calls == 1, "a fresh hit does not load (%s, %d loads)", buf,
     (int)s.calls);
  dsys_clock_advance(clk, 1001 * 1000);
  get_str(c, "a", &s, buf, sizeof buf);
  ok(!strcmp(buf, "a=v2") && s.calls == 2, "after the TTL it loads again (%s)", buf);
  is_int(dsys_cache_put(c, "a", "xyz", 3), 0, "put");
  get_str(c, "a", &s, buf, sizeof buf);
  ok(!strcmp(buf, "xyz") && s.calls == 2, "a put value is served (%s)", buf);
  is_int(dsys_cache_invalidate(c, "a"), 0, "invalidate");
  get_str(c, "a", &s, buf, sizeof buf);
  ok(!strcmp(buf, "a=v2") && s.calls == 3, "after invalidation it loads");
  /* errors are not cached */
  s.fail = 1;
  is_int(get_str(c, "b", &s, buf, sizeof buf), DSYS_EIO, "a loader error is returned");
  s.fail = 0;
  is_int(get_str(c, "b", &s, buf, sizeof buf), 0, "and not remembered");
  /* no negative caching by default */
  s.missing = 1;
  int before = s.calls;
  get_str(c, "m", &s, buf, sizeof buf);
  get_str(c, "m", &s, buf, sizeof buf);
  is_int(s.calls - before, 2, "not found is not remembered by default");
  dsys_cache_stats st;
  dsys_cache_get_stats(c, &st);
  ok(st.hits == 2 && st.loads == (uint64_t)s.calls && st.load_errors == 1 && st.invalidations == 1,
     "stats: %llu hits, %llu loads, %llu errors, %llu invalidations", (unsigned long long)st.hits,
     (unsigned long long)st.loads, (unsigned long long)st.load_errors,
     (unsigned long long)st.invalidations);
  dsys_cache_free(c);

  /* negative caching */
  o.negative_ttl_ms = 500;
  dsys_cache_new(&c, &o);
  s = (src){.missing = 1};
  is_int(get_str(c, "m", &s, buf, sizeof buf), DSYS_ENOTFOUND, "negative: not found");
  is_int(get_str(c, "m", &s, buf, sizeof buf), DSYS_ENOTFOUND, "negative: not found again");
  is_int(s.calls, 1, "... from the remembered answer (1 load)");
  dsys_clock_advance(clk, 501 * 1000);
  s.missing = 0;
  is_int(get_str(c, "m", &s, buf, sizeof buf), 0, "after negative_ttl it loads and finds it");
  dsys_cache_get_stats(c, &st);
  is_int((int64_t)st.negative_hits, 1, "one negative hit counted");
  dsys_cache_free(c);
  dsys_clock_free(clk);
}

static void bounds(void) {
  dsys_cache_options o = {.size = sizeof o, .max_entries = 10};
  dsys_cache *c = NULL;
  dsys_cache_new(&c, &o);
  char k[16];
  for (int i = 0; i < 20; i++) {
    snprintf(k, sizeof k, "k%d", i);
    dsys_cache_put(c, k, "v", 1);
    void *v = NULL;
    if (!dsys_cache_get(c, "k0", NULL, NULL, &v, NULL)) dsys_free(v); /* k0 stays recent */
  }
  dsys_cache_stats st;
  dsys_cache_get_stats(c, &st);
  ok(st.entries == 10 && st.evictions == 10, "20 puts into 10 entries: %llu kept, %llu evicted",
     (unsigned long long)st.entries, (unsigned long long)st.evictions);
  void *v = NULL;
  is_int(dsys_cache_get(c, "k0", NULL, NULL, &v, NULL), 0, "the recently used k0 survived (LRU)");
  dsys_free(v);
  is_int(dsys_cache_get(c, "k1", NULL, NULL, &v, NULL), DSYS_ENOTFOUND, "the old k1 was evicted");
  dsys_cache_stats before;
  dsys_cache_get_stats(c, &before);
  dsys_cache_clear(c);
  dsys_cache_get_stats(c, &st);
  ok(st.entries == 0 && st.bytes == 0, "clear empties it");
  is_int((int64_t)(st.invalidations - before.invalidations), (int64_t)before.entries,
         "and counts each entry it dropped as an invalidation");
  dsys_cache_free(c);

  o = (dsys_cache_options){.size = sizeof o, .max_bytes = 4096};
  dsys_cache_new(&c, &o);
  char big[1000];
  memset(big, 'x', sizeof big);
  for (int i = 0; i < 20; i++) {
    snprintf(k, sizeof k, "b%d", i);
    dsys_cache_put(c, k, big, sizeof big);
  }
  dsys_cache_get_stats(c, &st);
  ok(st.bytes <= 4096 && st.entries == 3, "byte bound: %llu bytes in %llu entries",
     (unsigned long long)st.bytes, (unsigned long long)st.entries);
  char huge[5000] = {0};
  dsys_cache_put(c, "huge", huge, sizeof huge);
  is_int(dsys_cache_get(c, "huge", NULL, NULL, &v, NULL), DSYS_ENOTFOUND,
         "a value larger than the whole cache is not kept");
  dsys_cache_free(c);
}

static void stale_while_revalidate(void) {
  dsys_cache_options o = {.size = sizeof o, .ttl_ms = 100, .stale_ms = 5000};
  dsys_cache *c = NULL;
  dsys_cache_new(&c, &o);
  src s = {.version = 1};
  char buf[64];
  get_str(c, "k", &s, buf, sizeof buf);
  usleep(150 * 1000);
  s.version = 2;
  s.delay_us = 200 * 1000;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  get_str(c, "k", &s, buf, sizeof buf);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
  ok(!strcmp(buf, "k=v1") && ms < 100, "stale: the old value at once (%s, %ld ms)", buf, ms);
  get_str(c, "k", &s, buf, sizeof buf);
  is_str(buf, "k=v1", "still stale while the refresh runs");
  int i = 0;
  for (; i < 300; i++) {
    get_str(c, "k", &s, buf, sizeof buf);
    if (!strcmp(buf, "k=v2")) break;
    usleep(10000);
  }
  ok(!strcmp(buf, "k=v2"), "the background refresh replaced it (%d polls)", i);
  is_int(s.calls, 2, "one refresh load for all the stale reads");
  dsys_cache_stats st;
  dsys_cache_get_stats(c, &st);
  ok(st.stale_hits >= 2, "stale hits counted (%llu)", (unsigned long long)st.stale_hits);
  dsys_cache_free(c);
}

typedef struct reader {
  dsys_cache *c;
  src *s;
  char got[64];
} reader;

static void *read_main(void *p) {
  reader *r = p;
  get_str(r->c, "hot", r->s, r->got, sizeof r->got);
  return NULL;
}

static void single_flight(void) {
  dsys_cache *c = NULL;
  dsys_cache_new(&c, NULL);
  src s = {.version = 7, .delay_us = 100 * 1000};
  reader r[8];
  pthread_t th[8];
  for (int i = 0; i < 8; i++) {
    r[i] = (reader){.c = c, .s = &s};
    pthread_create(&th[i], NULL, read_main, &r[i]);
  }
  for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
  int same = 1;
  for (int i = 0; i < 8; i++) same &= !strcmp(r[i].got, "hot=v7");
  ok(same, "8 concurrent misses all got the value");
  is_int(s.calls, 1, "... from one load (single flight)");

  /* an invalidation during a load: the loaded value is returned, not kept */
  dsys_cache_invalidate(c, "hot"); /* the single-flight value above */
  s = (src){.version = 1, .gate = 1};
  reader one = {.c = c, .s = &s};
  pthread_t t;
  pthread_create(&t, NULL, read_main, &one);
  for (int i = 0; i < 2000 && !s.calls; i++) usleep(1000);
  ok(s.calls == 1, "a load is in flight");
  dsys_cache_invalidate(c, "hot");
  dsys_cache_invalidate(c, "hot-other");
  s.gate = 0;
  pthread_join(t, NULL);
  is_str(one.got, "hot=v1", "the racing load's caller gets its value");
  void *v = NULL;
  is_int(dsys_cache_get(c, "hot", NULL, NULL, &v, NULL), DSYS_ENOTFOUND,
         "but a value loaded across an invalidation is not kept");
  dsys_cache_free(c);
}

static void bad_input(void) {
  dsys_cache *c = NULL;
  dsys_cache_options o = {.size = sizeof o, .ttl_ms = -1};
  is_int(dsys_cache_new(&c, &o), DSYS_EINVAL, "negative ttl: DSYS_EINVAL");
  dsys_cache_new(&c, NULL);
  void *v;
  is_int(dsys_cache_get(c, NULL, NULL, NULL, &v, NULL), DSYS_EINVAL, "NULL key: DSYS_EINVAL");
  is_int(dsys_cache_put(c, "k", NULL, 3), DSYS_EINVAL, "NULL value with a length: DSYS_EINVAL");
  is_int(dsys_cache_put(c, "k", "", 0), 0, "an empty value is fine");
  dsys_cache_free(c);
  dsys_cache_free(NULL);
}

int main(void) {
  basics();
  bounds();
  stale_while_revalidate();
  single_flight();
  bad_input();
  return tap_done();
}
