/*
 * The gateway's edge helpers (internal): token-bucket rate limiting and the
 * Idempotency-Key response cache. Both are bounded, sharded hash maps with
 * least-recently-used eviction; all time comes from a dsys_clock.
 *
 * Thread-safety: every function may be called from any thread; each shard
 * has its own mutex, held only for the map update (no I/O, no callback).
 */
#ifndef DSYSI_EDGE_H
#define DSYSI_EDGE_H

#include <stddef.h>
#include <stdint.h>
#include <distsys/clock.h>

/* ---- rate limiter ---- */

typedef struct dsysi_rl dsysi_rl;

/** Result of one take: what the RateLimit-* headers report. */
typedef struct dsysi_rl_result {
  int allowed;           /* 1: a token was taken */
  uint32_t limit;        /* the burst (bucket size) */
  uint32_t remaining;    /* whole tokens left after this take */
  int64_t reset_s;       /* seconds until the bucket is full again */
  int64_t retry_after_s; /* when refused: seconds until one token */
} dsysi_rl_result;

/** A limiter holding at most cap buckets (LRU eviction). */
int dsysi_rl_new(dsysi_rl **out, size_t cap, dsys_clock *clk);
void dsysi_rl_free(dsysi_rl *rl);
/** Take one token from the bucket named (key, klen) with the given refill
 *  rate (tokens per second, > 0) and burst (>= 1). A new or evicted
 *  bucket starts full. @return 0 or DSYS_ENOMEM (res then allows). */
int dsysi_rl_take(dsysi_rl *rl, const char *key, size_t klen, double rate,
                  uint32_t burst, dsysi_rl_result *res);
/** Buckets currently held (<= cap). */
size_t dsysi_rl_count(dsysi_rl *rl);
/** The cap actually enforced (rounded up to whole shards). */
size_t dsysi_rl_cap(dsysi_rl *rl);

/* ---- idempotency cache ---- */

typedef struct dsysi_idem dsysi_idem;

enum { DSYSI_IDEM_NEW = 0, DSYSI_IDEM_INFLIGHT = 1, DSYSI_IDEM_REPLAY = 2,
       DSYSI_IDEM_MISMATCH = 3 };

/** A stored response (owned by the caller after a replay lookup). */
typedef struct dsysi_idem_resp {
  int status;
  char *ctype;   /* may be NULL */
  char *hdrs;    /* "name\0value\0" pairs, hlen bytes */
  size_t hlen;
  char *body;
  size_t blen;
} dsysi_idem_resp;

void dsysi_idem_resp_free(dsysi_idem_resp *r);

int dsysi_idem_new(dsysi_idem **out, size_t max_keys, size_t max_body,
                   dsys_clock *clk);
void dsysi_idem_free(dsysi_idem *c);
/**
 * Look up (key, klen) for a request with fingerprint fp.
 * DSYSI_IDEM_NEW: the key was free and is now reserved (in flight) for the
 * caller, who must later call dsysi_idem_complete or dsysi_idem_abort with
 * *gen. DSYSI_IDEM_INFLIGHT: another request holds it. DSYSI_IDEM_REPLAY:
 * *out holds a copy of the stored response. DSYSI_IDEM_MISMATCH: the key
 * was used for a different request (method, target or body).
 * @return one of these, or DSYS_ENOMEM (negative).
 */
int dsysi_idem_begin(dsysi_idem *c, const char *key, size_t klen, uint64_t fp,
                     int64_t ttl_ms, uint64_t *gen, dsysi_idem_resp *out);
/** Store the first response (copied; dropped when the body is over the
 *  limit, which frees the key). */
void dsysi_idem_complete(dsysi_idem *c, const char *key, size_t klen,
                         uint64_t gen, const dsysi_idem_resp *resp);
/** Release a reservation without storing anything. */
void dsysi_idem_abort(dsysi_idem *c, const char *key, size_t klen, uint64_t gen);
/** Entries held (<= max_keys). */
size_t dsysi_idem_count(dsysi_idem *c);

/* ---- HTTP caching (RFC 9111) ---- */

/** Cache-Control directives, from one or more header values. */
typedef struct dsysi_cc {
  int bad;             /* malformed, or a directive given twice with two
                          values: the caller treats it as no-store */
  int no_store, no_cache, private_, public_, must_revalidate;
  int64_t max_age;     /* seconds; -1: absent */
  int64_t s_maxage;    /* seconds; -1: absent */
} dsysi_cc;

void dsysi_cc_init(dsysi_cc *cc);
/** Add the directives of one Cache-Control value (NULL: nothing). */
void dsysi_cc_parse(dsysi_cc *cc, const char *v);

/** The most names a Vary the gateway caches may list. */
#define DSYSI_VARY_MAX 8
/**
 * Add the header names of one Vary value to names (lower case, at most
 * DSYSI_VARY_MAX of at most 63 bytes, *n counting them).
 * @return 0; -1 for "*", a name that is not a token, or too many names
 *         (the response is then not cached).
 */
int dsysi_vary_parse(const char *v, char names[][64], size_t *n);

/** Whether an If-None-Match list ("*" or comma-separated tags, weak or
 *  strong) names tag (weak comparison, as GET and HEAD use). */
int dsysi_etag_list_match(const char *list, const char *tag);

/** FNV-1a 64 over (d, n), chained from h (start with 0). */
uint64_t dsysi_fnv64(uint64_t h, const void *d, size_t n);

#endif
