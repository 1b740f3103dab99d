/* HDR-style log-linear histogram: see loadtest-hist.h. */
#include "loadtest-hist.h"

#include <math.h>
#include <string.h>

void lt_hist_init(lt_hist *h) {
  memset(h, 0, sizeof *h);
  h->min = UINT64_MAX;
}

size_t lt_hist_index(uint64_t v) {
  if (v < LT_HIST_SUB) return (size_t)v;
  unsigned msb = 63u - (unsigned)__builtin_clzll(v);   /* >= LT_HIST_BITS */
  unsigned shift = msb - (LT_HIST_BITS - 1);           /* v >> shift in [HALF, SUB) */
  uint64_t top = v >> shift;
  return LT_HIST_SUB + (size_t)(msb - LT_HIST_BITS) * LT_HIST_HALF +
         (size_t)(top - LT_HIST_HALF);
}

uint64_t lt_hist_lowest(size_t idx) {
  if (idx < LT_HIST_SUB) return idx;
  size_t k = idx - LT_HIST_SUB;
  unsigned msb = (unsigned)(k / LT_HIST_HALF) + LT_HIST_BITS;
  uint64_t top = LT_HIST_HALF + k % LT_HIST_HALF;
  return top << (msb - (LT_HIST_BITS - 1));
}

uint64_t lt_hist_highest(size_t idx) {
  if (idx < LT_HIST_SUB) return idx;
  size_t k = idx - LT_HIST_SUB;
  unsigned shift = (unsigned)(k / LT_HIST_HALF) + 1;
  return lt_hist_lowest(idx) + ((UINT64_C(1) << shift) - 1);
}

void lt_hist_record(lt_hist *h, uint64_t v) {
  h->counts[lt_hist_index(v)]++;
  h->total++;
  if (v < h->min) h->min = v;
  if (v > h->max) h->max = v;
  h->sum += (double)v;
}

void lt_hist_merge(lt_hist *dst, const lt_hist *src) {
  for (size_t i = 0; i < LT_HIST_NBUCKETS; i++) dst->counts[i] += src->counts[i];
  dst->total += src->total;
  dst->sum += src->sum;
  if (src->min < dst->min) dst->min = src->min;
  if (src->max > dst->max) dst->max = src->max;
}

uint64_t lt_hist_percentile(const lt_hist *h, double p) {
  if (!h->total) return 0;
  if (!(p > 0)) return h->min; /* also NaN */
  if (p >= 100) return h->max;
  double want = ceil(p / 100.0 * (double)h->total);
  uint64_t rank = want < 1 ? 1 : (uint64_t)want;
  if (rank > h->total) rank = h->total;
  uint64_t seen = 0;
  for (size_t i = 0; i < LT_HIST_NBUCKETS; i++) {
    seen += h->counts[i];
    if (seen >= rank) {
      uint64_t lo = lt_hist_lowest(i), hi = lt_hist_highest(i);
      uint64_t mid = lo + (hi - lo) / 2;
      if (mid < h->min) mid = h->min;
      if (mid > h->max) mid = h->max;
      return mid;
    }
  }
  return h->max;
}

double lt_hist_mean(const lt_hist *h) {
  return h->total ? h->sum / (double)h->total : 0.0;
}
