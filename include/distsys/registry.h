/*
 * dsys_registry: the service registry. Instances register, heartbeat and
 * deregister; clients look them up by service type, watch changes with a
 * callback, or wait for the change index to pass a value (blocking queries).
 *
 * Health: an instance whose heartbeat this handle has not seen change for
 * ttl_ms is unhealthy (evaluated on every read); after reap_ms without a
 * change it is removed. Ages are on this process's monotonic clock (the
 * registry clock's now), counted from when this handle saw the heartbeat
 * value change (its own register/heartbeat calls count as seen), never by
 * comparing the heartbeat's wall time, written by another host, with this
 * host's: hosts whose wall clocks differ keep each other healthy. An
 * instance first seen (by a handle just opened, or back from a backend
 * outage) has one TTL before it can be judged. A heartbeat makes it
 * healthy again. (Backends without the version-3 expire_ids op keep the
 * older rule: heartbeat wall time + ttl_ms against this host's wall
 * clock.) A periodic sweep (every sweep_interval_ms on the registry's
 * clock: on the real clock a thread of the handle, woken by a timer, never
 * the clock's timer thread; on a fake clock inside dsys_clock_advance)
 * records these transitions as changes, so that watchers and index
 * waiters see them, and polls the backend for changes made by other
 * processes.
 *
 * The change index starts at 0 for an empty store and increases by at least
 * one with every change: register (new or replaced), deregister, turned
 * unhealthy, turned healthy again (by a heartbeat), reaped. A heartbeat on a
 * healthy instance only refreshes its time and is not a change.
 *
 * Backends: "memory" (this handle only), "sqlite" (a file path; every
 * handle and every process that opens the same file shares the instances,
 * the index and the change log, with no daemon), "postgresql" (alias
 * "postgres": the same on a PostgreSQL server shared by hosts, a
 * postgresql:// URI; watchers hear of other hosts' changes by
 * LISTEN/NOTIFY), "http" (a client of a registry daemon, dsys-registryd:
 * lookups are served from a local view that blocking queries keep current,
 * and that keeps being served while the daemon is down; writes go to the
 * daemon) and "etcd"
 * ("etcd://host:port,.../prefix": an etcd v3 cluster shared by every
 * process on every host; changes of other processes are pushed by a watch;
 * calls fail with DSYS_EUNAVAIL within a few seconds while the cluster has
 * no quorum; see docs/reference/etcd.md). Further backends plug in
 * through the versioned dsys_registry_ops table.
 *
 * Thread-safety: all functions may be called from any thread; calls on one
 * handle are serialised. Watch callbacks run with no library lock held, in
 * change order, on the thread whose call made or noticed the change (the
 * sweeper thread or the thread advancing a fake clock for periodic
 * sweeps), or on a thread already delivering
 * (then the call returns once they ran: a call's changes have reached the
 * watchers when it returns, unless it is made from a callback); a callback
 * may call registry functions except dsys_registry_close(). After
 * dsys_registry_unwatch() returns, that callback no longer runs.
 */
#ifndef DSYS_REGISTRY_H
#define DSYS_REGISTRY_H

#include <distsys/common.h>
#include <distsys/clock.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_registry dsys_registry;

/** Instance health. */
typedef enum dsys_instance_health {
  DSYS_INSTANCE_HEALTHY = 0,
  DSYS_INSTANCE_UNHEALTHY = 1
} dsys_instance_health;

/**
 * A service instance. In arrays returned by the library every pointer points
 * into the same allocation, released with one dsys_free() of the array.
 */
typedef struct dsys_instance {
  const char *id;            /**< unique, required */
  const char *type;          /**< service type, required, e.g. "auth" */
  const char *url;           /**< required */
  const char *name;          /**< default: the id */
  const char *const *tags;   /**< ntags strings */
  size_t ntags;
  const char *metadata;      /**< a JSON object as text; default "{}" */
  uint32_t weight;           /**< default 1 */
  int32_t health;            /**< dsys_instance_health (output only) */
  int64_t registered_ms;     /**< wall ms (output only) */
  int64_t last_heartbeat_ms; /**< wall ms (output only) */
} dsys_instance;

/** Change kinds. */
typedef enum dsys_registry_change_kind {
  DSYS_REG_REGISTERED = 0,   /**< new or replaced */
  DSYS_REG_DEREGISTERED = 1,
  DSYS_REG_UNHEALTHY = 2,
  DSYS_REG_HEALTHY = 3,      /**< healthy again after being unhealthy */
  DSYS_REG_REAPED = 4,
  DSYS_REG_RESYNC = 5        /**< changes were missed (log pruned): re-read all */
} dsys_registry_change_kind;

/** One change. Strings are valid during the callback only. */
typedef struct dsys_registry_change {
  uint64_t index;
  int32_t kind;              /**< dsys_registry_change_kind */
  const char *id;            /**< "" for RESYNC */
  const char *type;          /**< "" for RESYNC */
} dsys_registry_change;

/** Watch callback. */
typedef void (*dsys_registry_watch_fn)(void *ud, const dsys_registry_change *c);

/** Change enumeration callback for backends. */
typedef void (*dsys_registry_change_fn)(void *ctx, const dsys_registry_change *c);

/**
 * What a version-2 backend learns from the registry that opened it (see
 * dsys_registry_ops.attach). Valid until the backend's close op returns.
 */
typedef struct dsys_registry_env {
  dsys_clock *clock;         /**< the registry's clock */
  int64_t ttl_ms;            /**< the registry's TTL */
  int64_t reap_ms;           /**< the registry's reap time */
  /** Call from a backend thread (never from inside an op, with none of the
   *  backend's locks held) when changes appeared by themselves, e.g. pushed
   *  by a remote registry: the registry delivers them to watchers and wakes
   *  index waiters at once instead of at its next sweep. */
  void (*changed)(void *ctx);
  void *ctx;                 /**< pass to changed */
  /* appended */
  struct dsys_identity *identity; /**< the credential to present to a
                                       remote registry, or NULL
                                       (dsys_registry_options.identity) */
  const struct dsys_client_options *client; /**< client options for a
                                       remote registry, or NULL
                                       (dsys_registry_options.client) */
} dsys_registry_env;

/** Flag of dsys_registry_ops.flags: the health field returned by get/list
 *  is final; the generic layer does not apply its TTL on reads (for
 *  backends whose instances are kept healthy by a remote registry). */
#define DSYS_REGISTRY_OPS_OWN_HEALTH 1u

/** One instance to expire (dsys_registry_ops.expire_ids), ordered by id. */
typedef struct dsys_registry_expiry {
  const char *id;
  int64_t heartbeat_ms;      /**< its heartbeat as read: act only if unchanged */
  int reap;                  /**< 1: remove it (REAPED); 0: mark it unhealthy */
} dsys_registry_expiry;

/**
 * Backend operations (version 3). Append-only: new members go at the end and
 * raise the version. The version-1 members are mandatory; a version-1
 * table (without the members marked "version 2") is still accepted. The
 * generic layer serialises calls on one state. Times are wall ms from the
 * registry's clock. Instance arrays returned by get/list must be one
 * malloc'd block releasable with dsys_free() (see dsys_instances_copy());
 * their health field holds the stored flag (the generic layer applies the
 * TTL, unless DSYS_REGISTRY_OPS_OWN_HEALTH is set).
 */
typedef struct dsys_registry_ops {
  int version;               /**< DSYS_REGISTRY_OPS_VERSION */
  const char *name;
  size_t state_size;         /**< bytes of zeroed state given to every op */
  /** Open: target is backend-specific (a path for sqlite). */
  int (*open)(void *st, const char *target, char *err, size_t errlen);
  void (*close)(void *st);
  /** Insert or replace (registered = heartbeat = now, healthy); one change. */
  int (*put)(void *st, const dsys_instance *inst, int64_t now_ms);
  /** Refresh the heartbeat; an unhealthy instance turns healthy (a change).
   *  DSYS_ENOTFOUND when unknown. */
  int (*heartbeat)(void *st, const char *id, int64_t now_ms);
  /** Remove; DSYS_ENOTFOUND when unknown. One change. */
  int (*remove)(void *st, const char *id);
  int (*get)(void *st, const char *id, dsys_instance **out);
  /** type NULL: every instance. Ordered by id. */
  int (*list)(void *st, const char *type, dsys_instance **out, size_t *n);
  /** Mark healthy instances whose heartbeat < unhealthy_before unhealthy and
   *  remove those whose heartbeat < reap_before; one change each. */
  int (*expire)(void *st, int64_t unhealthy_before, int64_t reap_before);
  int (*index)(void *st, uint64_t *out);
  /** Call fn for each change with index > after, in order; DSYS_ERANGE when
   *  some of them are no longer kept, or when the backend answered a read
   *  from an old copy since (watchers then get DSYS_REG_RESYNC and re-read:
   *  what they read may have lacked a change that is before their start). */
  int (*changes)(void *st, uint64_t after, dsys_registry_change_fn fn, void *ctx);
  /* ---- version 2 ---- */
  uint32_t flags;            /**< DSYS_REGISTRY_OPS_* flags */
  /** Optional: called once right after a successful open, before any other
   *  op; the env is copied by the backend if it keeps it. A nonzero return
   *  fails the open (close is then called). */
  int (*attach)(void *st, const dsys_registry_env *env);
  /* ---- version 3 ---- */
  /** Optional: expire the instances the generic layer judged silent (see
   *  dsys_registry_expiry), each only if its stored heartbeat_ms is still
   *  the one given (no heartbeat since it was read; else left alone), one
   *  change each, none for an instance already unhealthy or gone. With it
   *  the generic layer judges health by when this process saw each
   *  heartbeat change, on its monotonic clock, and never calls expire:
   *  hosts whose wall clocks differ keep each other healthy. */
  int (*expire_ids)(void *st, const dsys_registry_expiry *v, size_t n);
} dsys_registry_ops;

#define DSYS_REGISTRY_OPS_VERSION 3

/** Options. Zero fields take the defaults given. */
typedef struct dsys_registry_options {
  size_t size;               /**< sizeof(dsys_registry_options), or 0 */
  dsys_clock *clock;         /**< default real */
  int64_t ttl_ms;            /**< default 30000 */
  int64_t reap_ms;           /**< default 300000; must exceed ttl_ms */
  int64_t sweep_interval_ms; /**< default 1000; -1: no timer (call dsys_registry_sweep) */
  /* appended */
  struct dsys_identity *identity; /**< http backend: sent as X-Dsys-Identity
                                       on register, heartbeat and deregister
                                       (a registry daemon that requires
                                       identities refuses writes without
                                       it); not owned, must outlive the
                                       registry. NULL: none */
  const struct dsys_client_options *client; /**< http backend: options of
                                       its clients, for an https:// registry
                                       (tls_ca_file, and tls_cert_file /
                                       tls_key_file when it requires client
                                       certificates); its timeouts apply
                                       when nonzero (default connect 2000
                                       ms, request 5000 ms). Copied at open.
                                       NULL: defaults */
} dsys_registry_options;

/**
 * Add a registry backend, found afterwards by dsys_registry_open() through
 * its name (as the backend argument, or as the scheme of a
 * "NAME://target" URL). The built-in "memory", "sqlite", "postgresql",
 * "postgres", "http" and "etcd" backends are always there. The ops table
 * must be static (registrations are permanent).
 * @return 0; DSYS_EINVAL for a bad ops table (an unknown version or a
 *         mandatory op missing); DSYS_EEXIST when a backend of that name
 *         exists; DSYS_ENOMEM when the table of backends is full (32).
 * Thread: any.
 */
DSYS_API int dsys_registry_register_backend(const dsys_registry_ops *ops);

/**
 * Open a registry on a backend by name or URL.
 * @param backend "memory", "sqlite", "postgresql", "http", "etcd", the name
 *        of a backend added with dsys_registry_register_backend(),
 *        "NAME://target" (e.g. "sqlite:///var/lib/registry.sqlite",
 *        "postgresql://dsys@db/dsys", "etcd://127.0.0.1:2379/dsys"), or a
 *        registry daemon URL ("http://host:port", "unix:///path.sock",
 *        "inproc://name"), which selects the http backend with that URL as
 *        target.
 * @param target sqlite: the database path (created if needed); postgresql:
 *        the postgresql:// URI; http: the daemon URL (when backend is
 *        "http"); etcd: "host:port[,host:port...]/prefix"; memory: ignored.
 * @param opts may be NULL.
 * @return 0, DSYS_EINVAL, DSYS_ENOTSUP (unknown backend), DSYS_ENOMEM,
 *         DSYS_EIO / DSYS_EDB (sqlite; see errbuf), DSYS_EURL /
 *         DSYS_EUNAVAIL / DSYS_EAUTH (postgresql; see errbuf),
 *         DSYS_EUNAVAIL (etcd: no member answered; see errbuf).
 */
DSYS_API int dsys_registry_open(dsys_registry **out, const char *backend,
                                const char *target,
                                const dsys_registry_options *opts,
                                char *errbuf, size_t errlen);

/**
 * Open a registry on a caller-supplied backend. The ops table must outlive
 * the registry.
 * @return as dsys_registry_open; DSYS_ENOTSUP for an unknown ops version,
 *         DSYS_EINVAL when a mandatory op is missing.
 */
DSYS_API int dsys_registry_open_ops(dsys_registry **out,
                                    const dsys_registry_ops *ops,
                                    const char *target,
                                    const dsys_registry_options *opts,
                                    char *errbuf, size_t errlen);

/** Close: stops the sweep timer and the sweeper thread (waits for a
 *  running sweep, bounded by the backend's timeouts). NULL-safe. */
DSYS_API void dsys_registry_close(dsys_registry *r);

/**
 * Register (or replace, same id) an instance; strings are copied.
 * @return 0, DSYS_EINVAL (missing id/type/url, metadata not a JSON object,
 *         weight over 10000), DSYS_ENOMEM, backend errors.
 */
DSYS_API int dsys_registry_register(dsys_registry *r, const dsys_instance *inst);

/** Heartbeat. @return 0, DSYS_EINVAL, DSYS_ENOTFOUND, backend errors. */
DSYS_API int dsys_registry_heartbeat(dsys_registry *r, const char *id);

/** Deregister. @return 0, DSYS_EINVAL, DSYS_ENOTFOUND, backend errors. */
DSYS_API int dsys_registry_deregister(dsys_registry *r, const char *id);

/**
 * Instances of a type (NULL: all), ordered by id.
 * @param healthy_only nonzero to leave out unhealthy instances.
 * @param out receives an array (NULL when *n is 0) released with dsys_free().
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM, backend errors.
 */
DSYS_API int dsys_registry_lookup(dsys_registry *r, const char *type,
                                  int healthy_only, dsys_instance **out,
                                  size_t *n);

/** One instance; *out released with dsys_free().
 *  @return 0, DSYS_EINVAL, DSYS_ENOTFOUND, DSYS_ENOMEM. */
DSYS_API int dsys_registry_get(dsys_registry *r, const char *id,
                               dsys_instance **out);

/** Current change index. @return 0, DSYS_EINVAL, backend errors. */
DSYS_API int dsys_registry_index(dsys_registry *r, uint64_t *out);

/**
 * Wait until the change index exceeds after, or timeout_ms (on the
 * registry's clock) passes. Changes by other processes are noticed by
 * polling every 50 ms of real time.
 * @param index_out receives the index when returning (may be NULL).
 * @return 0 (index > after), DSYS_ETIMEDOUT, DSYS_EINVAL, backend errors.
 */
DSYS_API int dsys_registry_wait(dsys_registry *r, uint64_t after,
                                int64_t timeout_ms, uint64_t *index_out);

/**
 * Call fn for every change from now on (changes at or below the current
 * index are not replayed). Deliveries follow the backend's change log
 * (read at every push and at each sweep); a watcher that keeps a view of
 * its own should also re-list now and then as a safety net, as
 * dsys_upstream does (registry_reread_ms, 10 s) and the fault detector
 * (each check round).
 * @param id receives a watch id for dsys_registry_unwatch (may be NULL).
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_registry_watch(dsys_registry *r, dsys_registry_watch_fn fn,
                                 void *ud, uint64_t *id);

/** Stop a watch. @return 0, DSYS_ENOTFOUND. */
DSYS_API int dsys_registry_unwatch(dsys_registry *r, uint64_t id);

/**
 * Sweep now: record TTL and reap transitions, then deliver every change not
 * yet delivered to watchers (including other processes' changes).
 * @return 0, DSYS_EINVAL, backend errors.
 */
DSYS_API int dsys_registry_sweep(dsys_registry *r);

/** Last detailed error message of this handle (valid until the next call). */
DSYS_API const char *dsys_registry_errmsg(dsys_registry *r);

/**
 * Deep-copy n instances into one allocation (for backends and callers).
 * @param out released with dsys_free(); NULL when n is 0.
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_instances_copy(const dsys_instance *src, size_t n,
                                 dsys_instance **out);

#ifdef __cplusplus
}
#endif
#endif
