/*
 * dsys_cache: an in-process cache of byte values by string key, bounded in
 * bytes and entries, with a TTL, least-recently-used eviction, single-flight
 * loading (concurrent misses of one key run one load), optional
 * stale-while-revalidate and negative caching, and counters for metrics.
 *
 * Eviction is LRU: O(1) per access with one list, and predictable; the
 * workloads it serves here (item reads by key) have no large scans that
 * would call for a scan-resistant policy.
 *
 * Invalidation across processes is the caller's: feed it the changes you
 * learn about (the data service evicts a key on every change event of the
 * shared change log, so another instance's write reaches this cache within
 * the log's poll interval).
 *
 * Thread-safety: every function may be called from any thread. Loaders run
 * on the calling thread (or, for a stale refresh, on a short-lived thread
 * of the cache) with no cache lock held; a loader may call the cache for
 * other keys.
 */
#ifndef DSYS_CACHE_H
#define DSYS_CACHE_H

#include <distsys/common.h>
#include <distsys/clock.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_cache dsys_cache;

/** Options of dsys_cache_new(). Zero fields take the defaults. */
typedef struct dsys_cache_options {
  size_t size;            /**< sizeof(dsys_cache_options), or 0 */
  size_t max_bytes;       /**< keys + values + 64 bytes per entry; default 64 MiB */
  size_t max_entries;     /**< default 100000 */
  int64_t ttl_ms;         /**< an entry is fresh this long after its load; default 60000 */
  int64_t stale_ms;       /**< after the TTL, serve the old value this much longer
                               while one background load refreshes it; default 0 (off) */
  int64_t negative_ttl_ms; /**< remember "not found" (DSYS_ENOTFOUND from the loader)
                               this long; default 0 (off) */
  dsys_clock *clock;      /**< default real */
} dsys_cache_options;

/**
 * A loader: produce the value of key. On success *value gets a malloc'd
 * block of *len bytes that the cache takes over. Return DSYS_ENOTFOUND for
 * a key that has no value (cached when negative caching is on) or another
 * DSYS_E code (not cached; returned to every caller waiting on the load).
 */
typedef int (*dsys_cache_load_fn)(void *ud, const char *key, void **value, size_t *len);

/** Create a cache. @return 0, DSYS_EINVAL, DSYS_ENOMEM. */
DSYS_API int dsys_cache_new(dsys_cache **out, const dsys_cache_options *o);

/** Free the cache (waits for background refreshes). NULL-safe. */
DSYS_API void dsys_cache_free(dsys_cache *c);

/**
 * Get key: a fresh entry is copied out; a miss runs load once for all the
 * callers missing key at the same time (the others wait for its result);
 * a stale entry within stale_ms is returned at once and refreshed by one
 * background load.
 * @param load may be NULL: look up only (DSYS_ENOTFOUND on a miss).
 * @param value receives a copy (release with dsys_free()); len its size.
 * @return 0; DSYS_ENOTFOUND (no value, also from a negative entry); the
 *         loader's error; DSYS_EINVAL; DSYS_ENOMEM.
 */
DSYS_API int dsys_cache_get(dsys_cache *c, const char *key, dsys_cache_load_fn load, void *ud,
                            void **value, size_t *len);

/** Put a value (copied), fresh from now; evicts least recently used
 *  entries beyond the bounds. A value larger than max_bytes is not kept.
 *  @return 0, DSYS_EINVAL, DSYS_ENOMEM. */
DSYS_API int dsys_cache_put(dsys_cache *c, const char *key, const void *value, size_t len);

/** Drop key (also a load in flight for it will not be kept).
 *  @return 0, DSYS_EINVAL. */
DSYS_API int dsys_cache_invalidate(dsys_cache *c, const char *key);

/** Drop every entry. */
DSYS_API void dsys_cache_clear(dsys_cache *c);

/** Counters since creation, and the current size. */
typedef struct dsys_cache_stats {
  uint64_t hits;          /**< fresh hits */
  uint64_t stale_hits;    /**< stale values served while refreshing */
  uint64_t negative_hits; /**< remembered "not found" answers */
  uint64_t misses;        /**< gets that found nothing usable */
  uint64_t loads;         /**< loader runs (misses sharing a load count once) */
  uint64_t load_errors;   /**< loader runs that failed (not ENOTFOUND) */
  uint64_t evictions;     /**< entries dropped for the bounds */
  uint64_t invalidations; /**< entries dropped by dsys_cache_invalidate or _clear */
  uint64_t entries;       /**< now */
  uint64_t bytes;         /**< now */
} dsys_cache_stats;

/** Read the counters. NULL-safe (zeros). */
DSYS_API void dsys_cache_get_stats(dsys_cache *c, dsys_cache_stats *out);

#ifdef __cplusplus
}
#endif

#endif
