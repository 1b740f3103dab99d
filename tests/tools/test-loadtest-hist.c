/*
 * The loadtest histogram: bucket geometry (every value lands in a bucket
 * whose width is within 1% of its lowest value), percentile accuracy against
 * exact sorted percentiles on several distributions, edges (empty, one
 * value, p0/p100, huge values), monotonicity, merge.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "../../tools/loadtest-hist.h"
#include "tap.h"

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) { /* splitmix64 */
  uint64_t z = (rs += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static double urand(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Exact percentile with the histogram's rank rule. */
static uint64_t exact(const uint64_t *sorted, size_t n, double p) {
  if (p <= 0) return sorted[0];
  double want = ceil(p / 100.0 * (double)n);
  size_t rank = want < 1 ? 1 : (size_t)want;
  if (rank > n) rank = n;
  return sorted[rank - 1];
}

static double relerr(uint64_t got, uint64_t want) {
  if (want == 0) return got == 0 ? 0 : 1;
  return fabs((double)got - (double)want) / (double)want;
}

static lt_hist h, h2;

static void check_dist(const char *name, uint64_t *v, size_t n) {
  lt_hist_init(&h);
  for (size_t i = 0; i < n; i++) lt_hist_record(&h, v[i]);
  qsort(v, n, sizeof *v, cmp_u64);
  static const double ps[] = {1, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99};
  double worst = 0;
  double worst_p = 0;
  for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
    double e = relerr(lt_hist_percentile(&h, ps[i]), exact(v, n, ps[i]));
    if (e > worst) worst = e, worst_p = ps[i];
  }
  ok(worst <= 0.01, "%s: every percentile within 1%% of exact (worst %.4f%% at p%g)",
     name, worst * 100, worst_p);
  is_int(lt_hist_percentile(&h, 0), v[0], "%s: p0 is the exact minimum", name);
  is_int(lt_hist_percentile(&h, 100), v[n - 1], "%s: p100 is the exact maximum", name);
  double sum = 0;
  for (size_t i = 0; i < n; i++) sum += (double)v[i];
  ok(fabs(lt_hist_mean(&h) - sum / (double)n) < 1e-6 * (sum / (double)n) + 1e-9,
     "%s: mean is exact", name);
  int mono = 1;
  uint64_t prev = 0;
  for (double p = 0; p <= 100.0001; p += 0.1) {
    uint64_t x = lt_hist_percentile(&h, p);
    if (x < prev) mono = 0;
    prev = x;
  }
  ok(mono, "%s: percentiles are monotonic in p", name);
}

int main(void) {
  /* Geometry: index/lowest/highest agree for values across the range. */
  int geo = 1, width = 1;
  for (int i = 0; i < 200000 && geo; i++) {
    uint64_t v = rnd() >> (rnd() % 64);
    size_t k = lt_hist_index(v);
    if (k >= LT_HIST_NBUCKETS || lt_hist_lowest(k) > v || lt_hist_highest(k) < v) geo = 0;
    uint64_t lo = lt_hist_lowest(k), hi = lt_hist_highest(k);
    if (lo >= LT_HIST_SUB && (double)(hi - lo + 1) / (double)lo > 0.01) width = 0;
    if (lo < LT_HIST_SUB && hi != lo) width = 0;
  }
  ok(geo, "every value lies inside its bucket");
  ok(width, "buckets are exact below %u and at most 1%% wide above", LT_HIST_SUB);
  int contig = 1;
  for (size_t k = 1; k < LT_HIST_NBUCKETS; k++)
    if (lt_hist_lowest(k) != lt_hist_highest(k - 1) + 1) contig = 0;
  ok(contig, "buckets tile the range without gaps or overlap");
  is_int(lt_hist_index(UINT64_MAX), LT_HIST_NBUCKETS - 1, "UINT64_MAX is in the last bucket");
  ok(lt_hist_highest(LT_HIST_NBUCKETS - 1) == UINT64_MAX, "the last bucket ends at UINT64_MAX");

  /* Edges. */
  lt_hist_init(&h);
  is_int(lt_hist_percentile(&h, 50), 0, "empty: percentile 0");
  ok(lt_hist_mean(&h) == 0, "empty: mean 0");
  lt_hist_record(&h, 123456);
  is_int(lt_hist_percentile(&h, 50), 123456, "one value: p50 is that value (clamped)");
  is_int(lt_hist_percentile(&h, 99.9), 123456, "one value: p99.9 is that value");
  lt_hist_init(&h);
  for (int i = 0; i < 100; i++) lt_hist_record(&h, 7);
  lt_hist_record(&h, 1000000007ull);
  is_int(lt_hist_percentile(&h, 99), 7, "100 x 7 and one outlier: p99 = 7");
  ok(relerr(lt_hist_percentile(&h, 99.5), 1000000007ull) <= 0.005,
     "... p99.5 is the outlier (%llu)", (unsigned long long)lt_hist_percentile(&h, 99.5));
  is_int(lt_hist_percentile(&h, 100), 1000000007ull, "... p100 is its exact value");
  lt_hist_init(&h);
  lt_hist_record(&h, UINT64_MAX);
  lt_hist_record(&h, 0);
  is_int(lt_hist_percentile(&h, 100), UINT64_MAX, "UINT64_MAX recorded and reported");
  is_int(lt_hist_percentile(&h, 50), 0, "0 recorded and reported");

  /* Distributions: latency-like values in microseconds. */
  enum { N = 200000 };
  uint64_t *v = malloc(N * sizeof *v);
  if (!v) tap_bail("out of memory");
  for (size_t i = 0; i < N; i++) v[i] = 1 + rnd() % 1000000;
  check_dist("uniform 1us..1s", v, N);
  for (size_t i = 0; i < N; i++) v[i] = (uint64_t)(-log(1 - urand()) * 5000.0);
  check_dist("exponential mean 5ms", v, N);
  for (size_t i = 0; i < N; i++) /* log-uniform over 1us..100s */
    v[i] = (uint64_t)exp(urand() * log(1e8));
  check_dist("log-uniform 1us..100s", v, N);
  for (size_t i = 0; i < N; i++) /* bimodal: fast path + 1 s stall tail */
    v[i] = i % 50 ? 800 + rnd() % 400 : 1000000 + rnd() % 10000;
  check_dist("bimodal 1ms / 1s", v, N);
  for (size_t i = 0; i < N; i++) v[i] = rnd() % 200; /* exact range */
  check_dist("small integers (exact range)", v, N);

  /* Merge equals recording everything in one histogram. */
  lt_hist_init(&h);
  lt_hist_init(&h2);
  lt_hist a;
  lt_hist_init(&a);
  for (size_t i = 0; i < 10000; i++) {
    uint64_t x = rnd() % 5000000;
    lt_hist_record(&h, x);
    lt_hist_record(i % 3 ? &h2 : &a, x);
  }
  lt_hist_merge(&h2, &a);
  ok(h2.total == h.total && h2.min == h.min && h2.max == h.max &&
         !memcmp(h2.counts, h.counts, sizeof h.counts),
     "merge of two halves equals one histogram");
  free(v);
  return tap_done();
}
