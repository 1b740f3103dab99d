/*
 * Key-value store with metadata, versions, compare-and-swap, atomic
 * increment, prefix listing with a stable cursor, per-key TTL and a change
 * hook. Opened by URL:
 *
 *   sqlite:///abs/path/file.sqlite   durable, shared by many processes
 *   postgresql://user@host/db        shared by hosts (alias postgres://;
 *                                    docs/reference/postgresql.md)
 *   memory:                          in-process only (tests, embedding)
 *
 * Values are JSON texts (any JSON value), metadata is a JSON object text.
 * Both are validated strictly; the value size limit defaults to 1 MiB
 * (DSYS_STORE_DEFAULT_MAX_VALUE) and metadata is limited to 64 KiB.
 *
 * Thread-safety: a dsys_store may be used from any number of threads at
 * once. The SQLite backend gives each thread its own read connection
 * (created on the thread's first call) with its own cached prepared
 * statements; writes from concurrent threads are group-committed on one
 * writer connection per handle (one transaction, a savepoint per write, each
 * caller answered with its own result after the commit: store.md). Several
 * processes may open the same file. The PostgreSQL backend shares a pool
 * of connections (8) between the threads; every operation is one
 * statement (a put_many one transaction). dsys_store_close() must not run
 * concurrently with any other call on the same store.
 */
#ifndef DSYS_STORE_H
#define DSYS_STORE_H

#include <distsys/common.h>
#include <distsys/clock.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Default maximum size of a value in bytes (1 MiB). */
#define DSYS_STORE_DEFAULT_MAX_VALUE (1024 * 1024)
/** Maximum size of a metadata object in bytes. */
#define DSYS_STORE_MAX_METADATA (64 * 1024)
/** Maximum size of a key in bytes. */
#define DSYS_STORE_MAX_KEY 1024

typedef struct dsys_store dsys_store;

/**
 * One stored item. Returned to the caller as a single allocation (the
 * strings live in the same block): release it with dsys_item_free().
 * All times are wall-clock milliseconds since the epoch from the store's
 * clock; expires_at is 0 when the item has no TTL.
 */
typedef struct dsys_item {
  int64_t id;         /**< stable numeric id, never reused by a backend */
  const char *key;    /**< UTF-8 key */
  const char *value;  /**< JSON text */
  const char *metadata; /**< JSON object text ("{}" when none was given) */
  int64_t version;    /**< 1 on creation, +1 on every change */
  int64_t created_at;
  int64_t updated_at;
  int64_t expires_at;
} dsys_item;

/** Kinds of change passed to the change hook. */
typedef enum dsys_store_change {
  DSYS_STORE_PUT = 1,    /**< put (insert or replace) */
  DSYS_STORE_CREATE = 2, /**< create */
  DSYS_STORE_UPDATE = 3, /**< update */
  DSYS_STORE_DELETE = 4, /**< delete; the item is the one removed */
  DSYS_STORE_INCR = 5    /**< increment */
} dsys_store_change;

/**
 * Change hook. Runs on the thread that made the change, after the change
 * is committed, with no library lock held. Only changes made through this
 * dsys_store handle are reported (not other processes'). The item is valid
 * only during the call.
 */
typedef void (*dsys_store_hook)(void *ud, int change, const dsys_item *item);

/** Options for dsys_store_open(). Zero fields mean the default. */
typedef struct dsys_store_options {
  size_t size;          /**< sizeof(dsys_store_options); 0 = defaults */
  dsys_clock *clock;    /**< clock for timestamps and TTL; NULL = real */
  int full_sync;        /**< SQLite: 1 = synchronous=FULL, 0 = NORMAL */
  size_t max_value;     /**< value size limit; 0 = 1 MiB */
  dsys_store_hook hook; /**< change hook or NULL */
  void *hook_ud;        /**< passed to hook */
} dsys_store_options;

/** Write options for put/create/update. Zero fields mean the default. */
typedef struct dsys_store_write {
  size_t size;              /**< sizeof(dsys_store_write) */
  const char *metadata;     /**< JSON object text, NULL = "{}" (put/create)
                                 or keep the current one (update) */
  int64_t ttl_ms;           /**< > 0: the item expires this long after the
                                 write; 0: no TTL */
  int64_t expected_version; /**< update/delete: > 0 = compare-and-swap */
} dsys_store_write;

/**
 * One item of dsys_store_put_many(). The layout is fixed: a later version
 * of the library adds a call rather than a field.
 */
typedef struct dsys_store_entry {
  const char *key;      /**< as for dsys_store_put() */
  const char *value;    /**< JSON text (validated) */
  const char *metadata; /**< JSON object text, NULL = "{}" */
  int64_t ttl_ms;       /**< > 0: expires this long after the write; 0: no TTL */
} dsys_store_entry;

/** Most entries in one dsys_store_put_many(). */
#define DSYS_STORE_MAX_MANY 1000

/* ---- backend ops table (append-only; versions 1-2) ---- */

/** Write modes passed to the backend write op. */
enum { DSYS_STORE_W_PUT = 1, DSYS_STORE_W_CREATE = 2, DSYS_STORE_W_UPDATE = 3 };

/** Version 2 added put_many. */
#define DSYS_STORE_OPS_VERSION 2

/**
 * A store backend. The front end validates arguments (JSON, sizes) and
 * supplies the current wall time (now) and the computed expiry; backends
 * store and fetch. Every op returns 0 or a DSYS_E code; items returned
 * through out-parameters are allocated with dsys_item_new() (one
 * block) and released by dsys_item_free(). Expired items (expires_at != 0
 * and <= now) must be treated as absent. All ops must be thread-safe.
 */
typedef struct dsys_store_ops {
  int version;       /**< DSYS_STORE_OPS_VERSION */
  const char *name;  /**< URL scheme, e.g. "sqlite" */
  size_t state_size; /**< bytes of zeroed state passed to every op */
  /** Open at location (the URL after "scheme:"). Mandatory. */
  int (*open)(void *st, const char *location, const dsys_store_options *o,
              char *err, size_t errlen);
  /** Release everything. Mandatory. */
  void (*close)(void *st);
  /** Get by key (id < 0) or by id (key NULL). Mandatory. */
  int (*get)(void *st, const char *key, int64_t id, int64_t now,
             dsys_item **out);
  /** Put/create/update (mode DSYS_STORE_W_*). metadata NULL on update = keep.
   *  expected_version > 0 checks (update only). Mandatory. */
  int (*write)(void *st, int mode, const char *key, const char *value,
               const char *metadata, int64_t expires_at,
               int64_t expected_version, int64_t now, dsys_item **out);
  /** Delete; *out (may be NULL) receives the removed item. Mandatory. */
  int (*del)(void *st, const char *key, int64_t expected_version,
             int64_t now, dsys_item **out);
  /** Add delta to an integer value (creating it as delta). Mandatory. */
  int (*incr)(void *st, const char *key, int64_t delta, int64_t now,
              dsys_item **out);
  /** Items with key prefix and key > after (NULL = from the start), in
   *  key order (bytewise), at most limit. Mandatory. */
  int (*list)(void *st, const char *prefix, const char *after, size_t limit,
              int64_t now, dsys_item ***items, size_t *count);
  /** Remove up to limit expired items; *removed gets the count. */
  int (*purge)(void *st, int64_t now, size_t limit, size_t *removed);
  /* ---- version 2 ---- */
  /** Put n entries (1..DSYS_STORE_MAX_MANY) in order, all or none, as
   *  dsys_store_put_many(): every entry's metadata is set (never NULL) and
   *  expires_at[i] is its computed expiry (0 = none). On success items[i]
   *  receives each stored item; on failure none is kept and *failed gets
   *  the index of the entry that failed (n when it was the commit).
   *  Optional: without it dsys_store_put_many() returns DSYS_ENOTSUP. */
  int (*put_many)(void *st, const dsys_store_entry *entries, size_t n,
                  const int64_t *expires_at, int64_t now, dsys_item **items,
                  size_t *failed);
} dsys_store_ops;

/** The built-in SQLite backend (scheme "sqlite"). */
DSYS_API const dsys_store_ops *dsys_store_ops_sqlite(void);
/** The built-in in-memory backend (scheme "memory"). */
DSYS_API const dsys_store_ops *dsys_store_ops_memory(void);

/**
 * Add a store backend, found afterwards by dsys_store_open() through its
 * name as the URL scheme ("NAME://location" or "NAME:location"; the
 * location is passed to its open op). The built-in "sqlite" and "memory"
 * backends are always there. The ops table must outlive the process's use
 * of the store library (a static table); registrations are permanent.
 * @return 0; DSYS_EINVAL for a bad ops table (as dsys_store_open_ops());
 *         DSYS_EEXIST when a backend of that name exists; DSYS_ENOMEM when
 *         the table of backends is full (32).
 * Thread: any.
 */
DSYS_API int dsys_store_register_backend(const dsys_store_ops *ops);

/**
 * Open a store by URL ("sqlite:///abs/path", "memory:", or the scheme of a
 * backend added with dsys_store_register_backend()).
 * @param out receives the store.
 * @param url see the header comment; relative sqlite paths
 *        ("sqlite://rel/path") are accepted as given.
 * @param opts options or NULL for defaults.
 * @return 0, DSYS_EINVAL, DSYS_EURL, DSYS_ESCHEME, DSYS_ENOMEM, DSYS_EIO,
 *         DSYS_EDB, DSYS_ENOTSUP (schema newer than this library),
 *         DSYS_EUNAVAIL / DSYS_EAUTH (PostgreSQL: server unreachable, login
 *         refused). On PostgreSQL every call may also fail with
 *         DSYS_EUNAVAIL (server down: the handle recovers by itself) or
 *         DSYS_ETIMEDOUT (statement timeout).
 * Thread: any.
 */
DSYS_API int dsys_store_open(dsys_store **out, const char *url,
                             const dsys_store_options *opts);

/**
 * Open a store on an explicit backend. The ops table is checked: version
 * 1..DSYS_STORE_OPS_VERSION and every mandatory op present.
 * @param location backend-specific location (for sqlite a file path).
 * @return as dsys_store_open(); DSYS_EINVAL for a bad ops table.
 */
DSYS_API int dsys_store_open_ops(dsys_store **out, const dsys_store_ops *ops,
                                 const char *location,
                                 const dsys_store_options *opts);

/** Store operations seen by a dsys_store_observer_fn. */
typedef enum dsys_store_op {
  DSYS_STORE_OP_GET = 0,    /**< dsys_store_get, dsys_store_get_by_id */
  DSYS_STORE_OP_WRITE = 1,  /**< put, create, update */
  DSYS_STORE_OP_DELETE = 2,
  DSYS_STORE_OP_INCR = 3,
  DSYS_STORE_OP_LIST = 4
} dsys_store_op;

/**
 * Observer of backend calls: op (dsys_store_op), the call's duration in
 * nanoseconds (monotonic clock) and its result code. Runs on the calling
 * thread after the backend returns; must be cheap and must not call the
 * store.
 */
typedef void (*dsys_store_observer_fn)(int32_t op, int64_t duration_ns,
                                       int rc, void *ud);

/**
 * Set (or clear, fn NULL) the store's observer. Arguments rejected before
 * reaching the backend are not observed. Set it before the store is shared
 * between threads; ud must outlive the store or the observer.
 * @return 0, DSYS_EINVAL.
 */
DSYS_API int dsys_store_set_observer(dsys_store *s, dsys_store_observer_fn fn,
                                     void *ud);

/** Close a store and free it. NULL-safe. No call may be in progress. */
DSYS_API void dsys_store_close(dsys_store *s);

/**
 * Last detailed error message of the store (e.g. from SQLite), for logs.
 * Valid until the next call on the store from any thread; "" when none.
 */
DSYS_API const char *dsys_store_errmsg(dsys_store *s);

/**
 * Get an item by key.
 * @param out receives the item (free with dsys_item_free()).
 * @return 0, DSYS_ENOTFOUND (absent or expired), DSYS_EINVAL, DSYS_EDB.
 */
DSYS_API int dsys_store_get(dsys_store *s, const char *key, dsys_item **out);

/** Get an item by id. Same as dsys_store_get() otherwise. */
DSYS_API int dsys_store_get_by_id(dsys_store *s, int64_t id, dsys_item **out);

/**
 * Insert or replace the item at key. Replacing keeps id and created_at and
 * increments the version.
 * @param value JSON text (validated).
 * @param w options or NULL (metadata, TTL; expected_version is ignored).
 * @param out receives the stored item, or NULL if not wanted.
 * @return 0, DSYS_EINVAL (NULL/empty/too long key), DSYS_EBADJSON,
 *         DSYS_ETYPE (metadata not an object), DSYS_ETOOBIG, DSYS_EDB,
 *         DSYS_EBUSY.
 */
DSYS_API int dsys_store_put(dsys_store *s, const char *key, const char *value,
                            const dsys_store_write *w, dsys_item **out);

/**
 * Put several items in one call: all of them are stored, or (on error)
 * none, in one transaction. Entries are applied in order, so a key given
 * twice ends with the later value (and its version counts both). Calls of
 * several threads share transactions and commits (group commit), so
 * batches of a few dozen entries per call reach about the rate the file
 * can commit, where one dsys_store_put() per call pays a thread hand-over
 * per item (docs/PERFORMANCE.md). The change hook sees each item as a
 * DSYS_STORE_PUT, after the commit.
 * @param entries n entries (see dsys_store_entry).
 * @param n 1..DSYS_STORE_MAX_MANY.
 * @param items array of n receiving the stored items (each freed with
 *        dsys_item_free()), or NULL if not wanted. All NULL on error.
 * @param failed receives the index of the entry that failed (n when
 *        the whole transaction failed, e.g. DSYS_EDB on commit), or
 *        NULL if not wanted; untouched on success.
 * @return 0, DSYS_EINVAL (n out of range, NULL entries, a bad key or a
 *         negative TTL), DSYS_EBADJSON, DSYS_ETYPE, DSYS_ETOOBIG,
 *         DSYS_ENOMEM, DSYS_EDB, DSYS_EBUSY, DSYS_ENOTSUP (a backend
 *         without put_many); on PostgreSQL also DSYS_EUNAVAIL,
 *         DSYS_ETIMEDOUT. Thread: any.
 */
DSYS_API int dsys_store_put_many(dsys_store *s, const dsys_store_entry *entries,
                                 size_t n, dsys_item **items, size_t *failed);

/**
 * Create the item only if the key does not exist (atomic, also across
 * processes sharing the file: enforced by a UNIQUE constraint). An expired
 * item counts as absent.
 * @return as dsys_store_put(), plus DSYS_EEXIST.
 */
DSYS_API int dsys_store_create(dsys_store *s, const char *key,
                               const char *value, const dsys_store_write *w,
                               dsys_item **out);

/**
 * Replace the value of an existing item. With w->expected_version > 0 the
 * update happens only if the current version matches (compare-and-swap).
 * w->metadata NULL keeps the metadata; w->ttl_ms 0 removes any TTL.
 * @return as dsys_store_put(), plus DSYS_ENOTFOUND, DSYS_ECONFLICT.
 */
DSYS_API int dsys_store_update(dsys_store *s, const char *key,
                               const char *value, const dsys_store_write *w,
                               dsys_item **out);

/**
 * Delete an item; with expected_version > 0 only if it matches.
 * @return 0, DSYS_ENOTFOUND, DSYS_ECONFLICT, DSYS_EINVAL, DSYS_EDB.
 */
DSYS_API int dsys_store_delete(dsys_store *s, const char *key,
                               int64_t expected_version);

/**
 * Atomically add delta to an integer value, in one transaction. A missing
 * key is created with value delta.
 * @param result receives the new value (may be NULL).
 * @return 0, DSYS_ETYPE (value is not an integer), DSYS_ERANGE (overflow;
 *         values are int64), DSYS_EINVAL, DSYS_EDB.
 */
DSYS_API int dsys_store_incr(dsys_store *s, const char *key, int64_t delta,
                             int64_t *result);

/**
 * List items whose key starts with prefix, in bytewise key order.
 * @param prefix "" or NULL for all keys.
 * @param cursor NULL for the first page, or a cursor returned earlier. A
 *        cursor names the last key returned, so pages stay consistent
 *        while other items are added or removed.
 * @param limit 1..1000 (0 means 100).
 * @param items receives an array of count items: free with
 *        dsys_item_list_free(items, count).
 * @param next_cursor receives a cursor string (free with dsys_free()) when
 *        a full page was returned, else NULL. May be NULL if not wanted.
 * @return 0, DSYS_EINVAL (bad cursor), DSYS_ENOMEM, DSYS_EDB.
 */
DSYS_API int dsys_store_list(dsys_store *s, const char *prefix,
                             const char *cursor, size_t limit,
                             dsys_item ***items, size_t *count,
                             char **next_cursor);

/**
 * Remove expired items now (they are invisible anyway, and are also purged
 * lazily by writes).
 * @param removed receives the count (may be NULL).
 * @return 0, DSYS_EDB.
 */
DSYS_API int dsys_store_purge_expired(dsys_store *s, size_t *removed);

/** Free an item. NULL-safe. */
DSYS_API void dsys_item_free(dsys_item *item);

/** Free a list returned by dsys_store_list(). NULL-safe. */
DSYS_API void dsys_item_list_free(dsys_item **items, size_t count);

/**
 * Allocate an item as one block (for backends): copies the strings.
 * @return the item or NULL on out of memory. Free with dsys_item_free().
 */
DSYS_API dsys_item *dsys_item_new(int64_t id, const char *key,
                                  const char *value, const char *metadata,
                                  int64_t version, int64_t created_at,
                                  int64_t updated_at, int64_t expires_at);

#ifdef __cplusplus
}
#endif
#endif
