/*
 * An HDR-style latency histogram for dsys-loadtest (not part of the
 * library's API).
 *
 * Log-linear buckets: values below 2^LT_HIST_BITS are counted exactly; above
 * that, every power-of-two range [2^m, 2^(m+1)) is split into
 * 2^(LT_HIST_BITS-1) equal sub-buckets. A bucket's width is therefore at
 * most 1/2^(LT_HIST_BITS-1) of its lowest value; with LT_HIST_BITS = 8 that
 * is 1/128 (0.79%), and a value reported as the bucket's midpoint is within
 * 0.4% of every value that fell in it. The whole uint64_t range is covered,
 * memory is fixed (about 58 KiB), recording is O(1) with no allocation.
 *
 * Thread-safety: none; one histogram per thread (lt_hist_merge combines).
 */
#ifndef DSYS_LOADTEST_HIST_H
#define DSYS_LOADTEST_HIST_H

#include <stddef.h>
#include <stdint.h>

#define LT_HIST_BITS 8
#define LT_HIST_SUB (1u << LT_HIST_BITS)          /* exact range: 0..255 */
#define LT_HIST_HALF (LT_HIST_SUB / 2u)           /* sub-buckets per octave */
#define LT_HIST_NBUCKETS (LT_HIST_SUB + (64 - LT_HIST_BITS) * LT_HIST_HALF)

typedef struct lt_hist {
  uint64_t counts[LT_HIST_NBUCKETS];
  uint64_t total;
  uint64_t min, max; /* exact; min is UINT64_MAX when empty */
  double sum;        /* exact sum for the mean */
} lt_hist;

/** Empty the histogram. */
void lt_hist_init(lt_hist *h);

/** Count one value. */
void lt_hist_record(lt_hist *h, uint64_t v);

/** Add every count of src to dst. */
void lt_hist_merge(lt_hist *dst, const lt_hist *src);

/** Bucket index of a value, and the lowest / highest value of a bucket. */
size_t lt_hist_index(uint64_t v);
uint64_t lt_hist_lowest(size_t idx);
uint64_t lt_hist_highest(size_t idx);

/**
 * The value at percentile p (0..100): the smallest recorded value v such
 * that at least ceil(p/100 * total) values are <= v, reported as the
 * midpoint of v's bucket and clamped to [min, max] (so p0 is the exact
 * minimum and p100 the exact maximum). 0 when empty. Monotonic in p.
 */
uint64_t lt_hist_percentile(const lt_hist *h, double p);

/** Arithmetic mean (exact), 0 when empty. */
double lt_hist_mean(const lt_hist *h);

#endif
