/* Balancer: distribution and availability tests for every policy. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/distsys.h>
#include "tap.h"

static dsys_balancer *mk(int policy, int when_none, int n, const uint32_t *w) {
  dsys_balancer_options o = {.size = sizeof o, .policy = policy,
                             .when_none = when_none, .seed = 12345};
  dsys_balancer *b;
  if (dsys_balancer_new(&b, &o)) tap_bail("balancer_new");
  for (int i = 0; i < n; i++) {
    char id[32];
    snprintf(id, sizeof id, "ep%d", i);
    if (dsys_balancer_add(b, id, w ? w[i] : 1, (void *)(intptr_t)(i + 1)))
      tap_bail("add");
  }
  return b;
}

static int idx_of(const dsys_pick_result *r) { return atoi(r->id + 2); }

static int pick1(dsys_balancer *b, const char *key, const char *excl) {
  dsys_pick_result r;
  int rc = dsys_balancer_pick(b, key, key ? strlen(key) : 0, excl, &r);
  if (rc) return rc;
  dsys_balancer_release(b, &r);
  return idx_of(&r);
}

static void test_round_robin(void) {
  dsys_balancer *b = mk(DSYS_LB_ROUND_ROBIN, DSYS_LB_PANIC, 4, NULL);
  int exact = 1;
  for (int i = 0; i < 400; i++)
    if (pick1(b, NULL, NULL) != i % 4) exact = 0;
  ok(exact, "round robin is an exact rotation");
  dsys_balancer_set_available(b, "ep1", 0);
  int seq[6];
  for (int i = 0; i < 6; i++) seq[i] = pick1(b, NULL, NULL);
  ok(seq[0] == 0 && seq[1] == 2 && seq[2] == 3 && seq[3] == 0 && seq[4] == 2 && seq[5] == 3,
     "unavailable endpoint skipped, rotation stays exact (%d %d %d %d %d %d)",
     seq[0], seq[1], seq[2], seq[3], seq[4], seq[5]);
  int avoided = 1;
  for (int i = 0; i < 30; i++)
    if (pick1(b, NULL, "ep2") == 2) avoided = 0;
  ok(avoided, "exclude avoided while others are available");
  for (int i = 0; i < 4; i++) {
    char id[8];
    snprintf(id, sizeof id, "ep%d", i);
    if (i != 2) dsys_balancer_set_available(b, id, 0);
  }
  is_int(pick1(b, NULL, "ep2"), 2, "excluded endpoint used when it is the only one available");
  dsys_balancer_set_available(b, "ep2", 0);
  dsys_pick_result r;
  is_int(dsys_balancer_pick(b, NULL, 0, NULL, &r), 0, "panic mode picks with none available");
  is_int(r.panic, 1, "panic flagged");
  is_int(r.ud, (void *)(intptr_t)(idx_of(&r) + 1), "user data returned");
  dsys_balancer_release(b, &r);
  int all = 0;
  for (int i = 0; i < 8; i++) all |= 1 << pick1(b, NULL, NULL);
  is_int(all, 15, "panic rotates over all endpoints");
  dsys_balancer_free(b);

  b = mk(DSYS_LB_ROUND_ROBIN, DSYS_LB_FAIL_FAST, 2, NULL);
  dsys_balancer_set_available(b, "ep0", 0);
  dsys_balancer_set_available(b, "ep1", 0);
  is_int(dsys_balancer_pick(b, NULL, 0, NULL, &r), DSYS_EUNAVAIL, "fail fast: DSYS_EUNAVAIL");
  dsys_balancer_set_available(b, "ep1", 1);
  is_int(pick1(b, NULL, "ep1"), 1, "fail fast still allows the excluded one");
  is_int(dsys_balancer_remove(b, "ep0"), 0, "remove");
  is_int(dsys_balancer_remove(b, "ep0"), DSYS_ENOTFOUND, "remove twice");
  is_int(dsys_balancer_add(b, "ep1", 1, NULL), DSYS_EEXIST, "duplicate id");
  is_int(dsys_balancer_add(b, "", 1, NULL), DSYS_EINVAL, "empty id");
  is_int(dsys_balancer_count(b), 1, "count");
  dsys_balancer_remove(b, "ep1");
  is_int(dsys_balancer_pick(b, NULL, 0, NULL, &r), DSYS_EUNAVAIL, "empty balancer: DSYS_EUNAVAIL");
  dsys_balancer_free(b);
}

static void test_weighted(void) {
  uint32_t w[] = {5, 1, 1, 3};
  dsys_balancer *b = mk(DSYS_LB_WEIGHTED_ROUND_ROBIN, DSYS_LB_PANIC, 4, w);
  /* nginx smooth WRR for {5,1,1}: a a b a c a a */
  dsys_balancer *s = mk(DSYS_LB_WEIGHTED_ROUND_ROBIN, DSYS_LB_PANIC, 3, w);
  char seq[8] = {0};
  for (int i = 0; i < 7; i++) seq[i] = (char)('a' + pick1(s, NULL, NULL));
  is_str(seq, "aabacaa", "smooth sequence for weights 5,1,1");
  dsys_balancer_free(s);
  int cnt[4] = {0};
  const int N = 100000;
  for (int i = 0; i < N; i++) cnt[pick1(b, NULL, NULL)]++;
  int within = 1;
  for (int i = 0; i < 4; i++) {
    double want = (double)w[i] / 10.0, got = (double)cnt[i] / N;
    if (got < want - 0.01 || got > want + 0.01) within = 0;
  }
  ok(within, "weighted proportions within 1%% (%d %d %d %d)", cnt[0], cnt[1], cnt[2], cnt[3]);
  dsys_balancer_set_available(b, "ep0", 0);
  memset(cnt, 0, sizeof cnt);
  for (int i = 0; i < 5000; i++) cnt[pick1(b, NULL, NULL)]++;
  ok(cnt[0] == 0 && cnt[3] == 3000 && cnt[1] == 1000, "unavailable skipped, rest 1:1:3 (%d %d %d)", cnt[1], cnt[2], cnt[3]);
  dsys_balancer_free(b);

  b = mk(DSYS_LB_RANDOM, DSYS_LB_PANIC, 4, w);
  memset(cnt, 0, sizeof cnt);
  for (int i = 0; i < N; i++) cnt[pick1(b, NULL, NULL)]++;
  within = 1;
  for (int i = 0; i < 4; i++) {
    double want = (double)w[i] / 10.0, got = (double)cnt[i] / N;
    if (got < want - 0.01 || got > want + 0.01) within = 0;
  }
  ok(within, "weighted random within 1%% over 100000 picks (%d %d %d %d)", cnt[0], cnt[1], cnt[2], cnt[3]);
  int avoided = 1;
  for (int i = 0; i < 200; i++)
    if (pick1(b, NULL, "ep0") == 0) avoided = 0;
  ok(avoided, "random honours exclude");
  dsys_balancer_free(b);
}

static void test_least_request(void) {
  dsys_balancer *b = mk(DSYS_LB_LEAST_REQUEST, DSYS_LB_PANIC, 2, NULL);
  /* keep 10 requests in flight on ep0 */
  dsys_pick_result held[10];
  int nh = 0;
  while (nh < 10 && !dsys_balancer_pick(b, NULL, 0, "ep1", &held[nh])) nh++;
  int to1 = 0;
  for (int i = 0; i < 100; i++)
    if (pick1(b, NULL, NULL) == 1) to1++;
  is_int(to1, 100, "with two endpoints, the less loaded always wins");
  dsys_balancer_endpoint_info info;
  dsys_balancer_endpoint(b, "ep0", &info);
  is_int(info.active, 10, "10 in flight on ep0");
  for (int i = 0; i < nh; i++) dsys_balancer_release(b, &held[i]);
  dsys_balancer_endpoint(b, "ep0", &info);
  is_int(info.active, 0, "released");
  dsys_balancer_free(b);

  /* 8 endpoints, one heavily loaded: it gets far less than 1/8 */
  b = mk(DSYS_LB_LEAST_REQUEST, DSYS_LB_PANIC, 8, NULL);
  dsys_pick_result hold[50];
  int k = 0;
  char nm[8];
  for (int i = 0; i < 8; i++) {
    snprintf(nm, sizeof nm, "ep%d", i);
    if (i != 3) dsys_balancer_set_available(b, nm, 0);
  }
  while (k < 50 && !dsys_balancer_pick(b, NULL, 0, NULL, &hold[k])) k++;
  for (int i = 0; i < 8; i++) {
    snprintf(nm, sizeof nm, "ep%d", i);
    dsys_balancer_set_available(b, nm, 1);
  }
  int cnt3 = 0;
  for (int i = 0; i < 8000; i++)
    if (pick1(b, NULL, NULL) == 3) cnt3++;
  ok(cnt3 == 0, "loaded endpoint only wins against equally loaded ones (%d of 8000)", cnt3);
  for (int i = 0; i < k; i++) dsys_balancer_release(b, &hold[i]);
  int cnt[8] = {0};
  for (int i = 0; i < 8000; i++) cnt[pick1(b, NULL, NULL)]++;
  int spread = 1;
  for (int i = 0; i < 8; i++) spread &= cnt[i] > 700 && cnt[i] < 1300;
  ok(spread, "idle endpoints share evenly (%d %d %d %d ...)", cnt[0], cnt[1], cnt[2], cnt[3]);
  dsys_balancer_free(b);
}

/* Consistent hashing: fraction of 10000 keys that move when an endpoint is
 * added or removed. */
static void hash_moves(int policy, const char *name) {
  const int K = 10000;
  for (int n = 3; n <= 9; n += 3) {
    dsys_balancer *b = mk(policy, DSYS_LB_PANIC, n, NULL);
    int *before = malloc(K * sizeof *before), *after = malloc(K * sizeof *after);
    char key[32];
    int cnt[16] = {0};
    for (int i = 0; i < K; i++) {
      snprintf(key, sizeof key, "user-%d", i);
      before[i] = pick1(b, key, NULL);
      cnt[before[i]]++;
    }
    int balanced = 1;
    for (int i = 0; i < n; i++)
      balanced &= cnt[i] > K / n * 0.75 && cnt[i] < K / n * 1.25;
    ok(balanced, "%s n=%d: keys spread within 25%% of even", name, n);
    char id[16];
    snprintf(id, sizeof id, "ep%d", n);
    dsys_balancer_add(b, id, 1, NULL);
    int moved = 0, moved_elsewhere = 0;
    for (int i = 0; i < K; i++) {
      snprintf(key, sizeof key, "user-%d", i);
      after[i] = pick1(b, key, NULL);
      if (after[i] != before[i]) {
        moved++;
        if (after[i] != n) moved_elsewhere++;
      }
    }
    double frac = (double)moved / K, ideal = 1.0 / (n + 1);
    ok(frac <= ideal * 1.15 + 0.01, "%s add to n=%d: %.3f of keys moved (ideal %.3f)", name, n, frac, ideal);
    ok(moved_elsewhere <= K / 100, "%s add: keys move (almost) only to the new endpoint (%d elsewhere)", name, moved_elsewhere);
    dsys_balancer_remove(b, "ep0");
    moved = 0;
    for (int i = 0; i < K; i++) {
      snprintf(key, sizeof key, "user-%d", i);
      int now = pick1(b, key, NULL);
      if (now != after[i]) moved++;
      after[i] = now; /* baseline for the availability check */
    }
    frac = (double)moved / K;
    ok(frac <= ideal * 1.15 + 0.01, "%s remove from n=%d: %.3f of keys moved (ideal %.3f)", name, n + 1, frac, ideal);
    /* availability: keys of an unavailable endpoint go elsewhere, others stay */
    dsys_balancer_set_available(b, "ep1", 0);
    int stable = 1, none1 = 1;
    for (int i = 0; i < K; i++) {
      snprintf(key, sizeof key, "user-%d", i);
      int now = pick1(b, key, NULL);
      if (now == 1) none1 = 0;
      if (after[i] != 1 && now != after[i]) stable = 0;
    }
    ok(none1 && stable, "%s: unavailable endpoint's keys move, the others stay", name);
    snprintf(key, sizeof key, "user-%d", 17);
    ok(pick1(b, key, NULL) == pick1(b, key, NULL), "%s: same key, same endpoint", name);
    free(before);
    free(after);
    dsys_balancer_free(b);
  }
}

typedef struct targ {
  dsys_balancer *b;
  int n;
} targ;

static void *worker(void *p) {
  targ *a = p;
  for (int i = 0; i < a->n; i++) {
    dsys_pick_result r;
    if (!dsys_balancer_pick(a->b, "k", 1, NULL, &r)) dsys_balancer_release(a->b, &r);
  }
  return NULL;
}

/* Takes ep1 out and puts it back, n times. */
static void *toggler(void *p) {
  targ *a = p;
  for (int i = 0; i < a->n; i++) dsys_balancer_set_available(a->b, "ep1", i % 2);
  dsys_balancer_set_available(a->b, "ep1", 1);
  return NULL;
}

/* Four workers of a->n picks each, run to the end. */
static void run_workers(targ *a) {
  pthread_t t[4];
  for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, a);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
}

/* Picks and picks in flight summed over ep0..ep4; *even: each had want. */
static void totals(dsys_balancer *b, uint64_t *picks, int *active, uint64_t want, int *even) {
  *picks = 0;
  *active = 0;
  *even = 1;
  for (int i = 0; i < 5; i++) {
    char id[8];
    snprintf(id, sizeof id, "ep%d", i);
    dsys_balancer_endpoint_info info;
    dsys_balancer_endpoint(b, id, &info);
    *picks += info.picks;
    *active += info.active;
    *even &= info.picks == want;
  }
}

static void test_threads(void) {
  dsys_balancer *b = mk(DSYS_LB_LEAST_REQUEST, DSYS_LB_PANIC, 5, NULL);
  targ a = {b, 20000};
  run_workers(&a);
  uint64_t picks;
  int active, even;
  totals(b, &picks, &active, 0, &even);
  is_int(picks, 80000, "80000 picks from 4 threads counted");
  is_int(active, 0, "every pick released");
  dsys_balancer_free(b);

  /* Round robin picks under the read lock: concurrent picks still take
   * turns exactly, and a writer changing availability meanwhile is not
   * starved and breaks nothing. */
  b = mk(DSYS_LB_ROUND_ROBIN, DSYS_LB_PANIC, 5, NULL);
  a.b = b;
  run_workers(&a);
  totals(b, &picks, &active, 16000, &even);
  ok(even && active == 0, "round robin from 4 threads: 16000 picks of each of 5, all released");
  pthread_t w;
  targ t2 = {b, 1000};
  pthread_create(&w, NULL, toggler, &t2);
  run_workers(&a);
  pthread_join(w, NULL);
  totals(b, &picks, &active, 0, &even);
  ok(picks == 160000 && active == 0,
     "with 1000 availability changes meanwhile: %llu picks, %d in flight",
     (unsigned long long)picks, active);
  dsys_balancer_free(b);
  int32_t p;
  is_int(dsys_lb_policy_parse("maglev", &p), 0, "parse policy");
  is_int(p, DSYS_LB_MAGLEV, "maglev value");
  is_str(dsys_lb_policy_name(DSYS_LB_RING_HASH), "ring_hash", "policy name");
  dsys_balancer_options bad = {.size = sizeof bad, .maglev_size = 1000};
  is_int(dsys_balancer_new(&b, &bad), DSYS_EINVAL, "maglev size must be prime");
}

int main(void) {
  test_round_robin();
  test_weighted();
  test_least_request();
  hash_moves(DSYS_LB_RING_HASH, "ring");
  hash_moves(DSYS_LB_MAGLEV, "maglev");
  test_threads();
  return tap_done();
}
