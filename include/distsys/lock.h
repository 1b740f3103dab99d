/*
 * Named lease locks with fencing tokens, and leader election on them.
 *
 * A lock is held for a lease (ttl_ms) and renewed automatically while the
 * holder keeps it; a holder that dies or stops renewing loses it when the
 * lease runs out, and another caller may take it. Every acquisition of a
 * name gets a fencing token larger than every earlier one of that name.
 * A lease alone cannot make a lock safe (a holder paused past its lease
 * still believes it holds the lock when it resumes): pass the token to
 * what the lock protects and have it refuse older tokens, as
 * dsys_lock_guarded_put() does for a store item.
 *
 * Opened by URL, one backend per scheme (the plugin family pattern of the
 * store and the queue):
 *
 *   memory:                        this process only (tests, embedding)
 *   sqlite:///abs/path/file.sqlite shared by every process on the host
 *   postgresql://...               every host reaching the server
 *   etcd://host:port[,...]/prefix  every host reaching the etcd cluster;
 *                                  tokens are etcd revisions
 *
 * Further backends plug in with dsys_locks_register_backend().
 *
 * Times: leases are judged on the wall time of the handle's clock (the
 * backend compares stored expiry times with "now"), so hosts that share a
 * lock table must keep their clocks in step; the fencing token keeps the
 * protected resource safe even when they do not.
 *
 * Thread-safety: every function may be called from any thread. A dsys_lock
 * is used by one thread at a time. Lost-lock callbacks run on the clock's
 * timer thread with no library lock held.
 */
#ifndef DSYS_LOCK_H
#define DSYS_LOCK_H

#include <distsys/common.h>
#include <distsys/clock.h>
#include <distsys/store.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_locks dsys_locks;
typedef struct dsys_lock dsys_lock;

/** Default lease of a lock, in ms. */
#define DSYS_LOCK_DEFAULT_TTL_MS 10000
/** Longest lock name and owner, in bytes. */
#define DSYS_LOCK_MAX_NAME 256
#define DSYS_LOCK_MAX_OWNER 128

/** Who holds a lock (dsys_lock_holder()). */
typedef struct dsys_lock_info {
  char owner[DSYS_LOCK_MAX_OWNER]; /**< the holder's owner string */
  int64_t token;                   /**< its fencing token */
  int64_t expires_at;              /**< wall ms when its lease ends */
} dsys_lock_info;

/* ---- backend ops table (append-only; version 1) ---- */

#define DSYS_LOCK_OPS_VERSION 1

/**
 * A lock backend. The front end validates names and owners and supplies
 * the wall time (now). Every op returns 0 or a DSYS_E code and must be
 * thread-safe and atomic across every process sharing the backend.
 */
typedef struct dsys_lock_ops {
  int version;       /**< DSYS_LOCK_OPS_VERSION */
  const char *name;  /**< URL scheme */
  size_t state_size; /**< bytes of zeroed state passed to every op */
  /** Open at location (the URL after "scheme:"). */
  int (*open)(void *st, const char *location, char *err, size_t errlen);
  void (*close)(void *st);
  /** Take name for owner until now + ttl_ms when it is free or its lease
   *  ended (expires_at <= now); *token = a token larger than every earlier
   *  one of the name, also across releases (the SQL backends: last + 1;
   *  etcd: the cluster revision of the acquiring write). DSYS_EBUSY when
   *  another lease is running (*held, may be NULL, gets its holder). */
  int (*acquire)(void *st, const char *name, const char *owner, int64_t now, int64_t ttl_ms,
                 int64_t *token, dsys_lock_info *held);
  /** Extend to now + ttl_ms if owner and token still hold the name (even
   *  past the lease, as long as nobody took it since); DSYS_ELEASE if not. */
  int (*renew)(void *st, const char *name, const char *owner, int64_t token, int64_t now,
               int64_t ttl_ms);
  /** Free it if owner and token still hold it; DSYS_ELEASE if not. */
  int (*release)(void *st, const char *name, const char *owner, int64_t token);
  /** The running lease of name; DSYS_ENOTFOUND when free or ended. */
  int (*holder)(void *st, const char *name, int64_t now, dsys_lock_info *out);
} dsys_lock_ops;

/**
 * Add a lock backend, found afterwards by dsys_locks_open() through its
 * name as the URL scheme. The ops table must be static.
 * @return 0; DSYS_EINVAL (bad table), DSYS_EEXIST (name taken),
 *         DSYS_ENOMEM (table of backends full).
 */
DSYS_API int dsys_locks_register_backend(const dsys_lock_ops *ops);

/** Options of dsys_locks_open(). Zero fields take the defaults. */
typedef struct dsys_locks_options {
  size_t size;       /**< sizeof(dsys_locks_options), or 0 */
  dsys_clock *clock; /**< lease times and renew timers; default real */
} dsys_locks_options;

/**
 * Open the locks of a backend URL.
 * @return 0; DSYS_EURL / DSYS_ESCHEME (bad or unknown URL), DSYS_ENOMEM,
 *         backend errors (DSYS_EDB, DSYS_EIO, DSYS_EUNAVAIL).
 */
DSYS_API int dsys_locks_open(dsys_locks **out, const char *url, const dsys_locks_options *o);

/** Close. Every dsys_lock of the handle must have been released. NULL-safe. */
DSYS_API void dsys_locks_close(dsys_locks *ls);

/** Called once when a held lock is lost: a renew was refused (someone took
 *  it after the lease ran out) or the lease ran out before a renew got
 *  through. The lock stays allocated: release it. */
typedef void (*dsys_lock_lost_fn)(void *ud, dsys_lock *lk);

/** Options of an acquisition. Zero fields take the defaults. */
typedef struct dsys_lock_options {
  size_t size;              /**< sizeof(dsys_lock_options), or 0 */
  int64_t ttl_ms;           /**< lease; default DSYS_LOCK_DEFAULT_TTL_MS, at least 100 */
  int manual_renew;         /**< 1: no automatic renewal (call dsys_lock_renew) */
  dsys_lock_lost_fn on_lost; /**< or NULL */
  void *ud;                 /**< passed to on_lost */
  const char *owner;        /**< default "HOSTNAME:PID:RANDOM" */
  int unfair;               /**< appended: 1 = no waiting line (below) */
} dsys_lock_options;

/**
 * Acquire a lock, waiting up to wait_ms for its holder to release it or
 * for its lease to end (polling the backend with jittered pauses of at
 * most 100 ms; a release through the same handle wakes waiters at once).
 * While held, it is renewed every ttl/3 unless manual_renew.
 *
 * Fairness (unless o->unfair): a waiter that finds the lock held takes
 * the name's ticket (the lock "next-in-line/NAME", a lease of min(ttl,
 * 2 s)), and while another caller holds the ticket no one else, not even
 * a holder coming straight back after a release, takes the lock or tries
 * it; the ticket holder takes the lock once it is free. Waiters without
 * the ticket have equal chances to get it next. This costs one extra
 * read per acquisition. Lock names starting with "next-in-line/" are
 * best left to it.
 * @param wait_ms 0 = try once.
 * @return 0; DSYS_EBUSY (wait_ms 0 and held), DSYS_ETIMEDOUT (still held
 *         after wait_ms), DSYS_EINVAL (empty or too long name or owner,
 *         ttl under 100 ms, negative wait), DSYS_ENOMEM, backend errors.
 */
DSYS_API int dsys_lock_acquire(dsys_locks *ls, const char *name, int64_t wait_ms,
                               const dsys_lock_options *o, dsys_lock **out);

/** The lock's fencing token: pass it to what the lock protects. */
DSYS_API int64_t dsys_lock_token(const dsys_lock *lk);

/** 1 while the lock is held as far as this process knows (not lost, and
 *  its lease, counted from the last successful renewal, not over). */
DSYS_API int dsys_lock_held(const dsys_lock *lk);

/** Renew now. @return 0; DSYS_ELEASE (lost: someone else took it), backend
 *  errors (the lease may still be running: retry). */
DSYS_API int dsys_lock_renew(dsys_lock *lk);

/** Release and free the lock (stops its renewal first). NULL-safe.
 *  @return 0; DSYS_ELEASE when it had been lost already; backend errors
 *  (then the lease simply runs out). */
DSYS_API int dsys_lock_release(dsys_lock *lk);

/** Who holds name now. @return 0; DSYS_ENOTFOUND (free), DSYS_EINVAL,
 *  backend errors. */
DSYS_API int dsys_lock_holder(dsys_locks *ls, const char *name, dsys_lock_info *out);

/**
 * A store write guarded by a fencing token: put value at key only if no
 * write with a larger token was made there (the token is kept in the
 * item's metadata as {"fence": TOKEN}); a compare-and-swap loop on the
 * item's version, so racing writers cannot interleave.
 * @return 0; DSYS_ELEASE (a newer token wrote: the caller's lock is stale),
 *         store errors (DSYS_EBUSY after 100 lost races).
 */
DSYS_API int dsys_lock_guarded_put(dsys_store *s, const char *key, const char *value,
                                   int64_t token);

/* ---- leader election ---- */

typedef struct dsys_election dsys_election;

/** Called when this candidate becomes leader (leader = 1) or stops being
 *  leader (0), on a library thread with no library lock held. */
typedef void (*dsys_election_fn)(void *ud, int leader, int64_t token);

/** Options of dsys_election_campaign(). Zero fields take the defaults. */
typedef struct dsys_election_options {
  size_t size;           /**< sizeof(dsys_election_options), or 0 */
  int64_t ttl_ms;        /**< lease of the leadership lock; default 10000 */
  const char *candidate; /**< this candidate's name (the lock owner);
                              default as dsys_lock_options.owner */
  dsys_election_fn on_change; /**< or NULL */
  void *ud;              /**< passed to on_change */
} dsys_election_options;

/**
 * Campaign for the leadership of name in the background: try to take the
 * lock "election/NAME" every ttl/3 (and at once), keep it renewed while
 * leader, and call on_change on every change of this candidate's role.
 * @return 0; DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_election_campaign(dsys_locks *ls, const char *name,
                                    const dsys_election_options *o, dsys_election **out);

/**
 * Open the locks at url (as dsys_locks_open() with default options) and
 * campaign for name on them: the election owns that handle, and
 * dsys_election_resign() closes it. What a daemon's --leader-lock URL
 * does (dsys-faultd's alerts, dsys-computed's retention sweep).
 * @return 0; as dsys_locks_open() (DSYS_EURL, DSYS_ESCHEME, backend
 *         errors) and dsys_election_campaign() (DSYS_EINVAL, DSYS_ENOMEM).
 */
DSYS_API int dsys_election_open(const char *url, const char *name,
                                const dsys_election_options *o, dsys_election **out);

/** 1 while this candidate leads; *token (may be NULL) gets its token. */
DSYS_API int dsys_election_is_leader(dsys_election *e, int64_t *token);

/** The current leader of name (any candidate). @return as dsys_lock_holder. */
DSYS_API int dsys_election_leader(dsys_locks *ls, const char *name, dsys_lock_info *out);

/** Stop campaigning and give up the leadership if held (on_change(0) is
 *  called first when it was leader); frees e (and closes the locks handle
 *  of dsys_election_open()). NULL-safe. */
DSYS_API void dsys_election_resign(dsys_election *e);

/** The built-in backends. */
DSYS_API const dsys_lock_ops *dsys_lock_ops_memory(void);
DSYS_API const dsys_lock_ops *dsys_lock_ops_sqlite(void);

#ifdef __cplusplus
}
#endif

#endif
