/*
 * Service modules: the auth, data and compute services of the reference
 * deployment (docs/reference/services.md; the HTTP contract is
 * docs/reference/http-api.md). Each module mounts its routes on a dsys_server that is not
 * yet listening, so it runs on any transport (http://, unix://, inproc://).
 * A module uses only the public store, queue, clock and server APIs: every
 * instance of a service shares its state through the store or queue file.
 *
 * Every module also mounts GET /health, GET /api/<type>/health and
 * GET /ready, and a slow-work route answered after a fixed delay by a clock
 * timer (no server thread waits).
 *
 * Lifetime: mount before dsys_server_listen(); if a mount fails, routes
 * may already point at the freed service: free the server as well. At
 * shutdown call
 * dsys_server_stop(), then the module's _free() (it waits for work it has
 * in flight: hashing threads, slow-work timers, job workers), then
 * dsys_server_free(), then close the store or queue.
 *
 * Thread-safety: a mount function and its _free() must not run
 * concurrently with each other for the same service; route handlers run on
 * server threads, hashing threads, timer threads and worker threads and are
 * safe to run concurrently. dsys_auth_load_secret() and
 * dsys_daemon_main() may be called from any thread.
 */
#ifndef DSYS_SERVICES_H
#define DSYS_SERVICES_H

#include <distsys/common.h>
#include <distsys/client.h>
#include <distsys/clock.h>
#include <distsys/config.h>
#include <distsys/queue.h>
#include <distsys/server.h>
#include <distsys/store.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* Auth                                                                 */

typedef struct dsys_auth_service dsys_auth_service;

/** Options for dsys_service_auth_mount(). Zero fields take the defaults. */
typedef struct dsys_auth_options {
  size_t size;                /**< sizeof(dsys_auth_options), or 0 */
  dsys_store *store;          /**< users and login counters (mandatory) */
  dsys_clock *clock;          /**< token times, throttling, slow work;
                                   default dsys_clock_real() */
  const char *name;           /**< "service" field, default "auth-service" */
  const void *token_secret;    /**< HMAC key (mandatory, >= 32 bytes; copied) */
  size_t token_secret_len;
  const char *token_alg;        /**< "HS256" (default), "HS384" or "HS512" */
  int64_t token_lifetime_s;   /**< default 86400 (24 h) */
  uint32_t hash_threads;      /**< password hashing threads, default 2 */
  const char *hash_prefix;    /**< crypt prefix for new hashes, default
                                   "$y$" (yescrypt); "$2b$" for bcrypt */
  uint32_t max_failures;      /**< failed logins before 429, default 5 */
  int64_t failure_window_ms;  /**< window of those failures, default 15 min */
  int64_t work_delay_ms;      /**< /auth-worker delay, default 800 */
} dsys_auth_options;

/**
 * Mount the auth service: /api/auth/{signup,register,signin,login,verify,
 * profile}, /api/auth/health, /health, /ready, /auth-worker, /auth-work
 * (and the same under /api/auth for the slow work). Starts the hashing
 * threads.
 * @param srv a server not yet listening.
 * @param out receives the service (free with dsys_service_auth_free()).
 * @return 0, DSYS_EINVAL (missing store, secret shorter than 32 bytes,
 *         unknown algorithm or hash prefix), DSYS_ESTATE (server already
 *         listening), DSYS_ENOMEM.
 */
DSYS_API int dsys_service_auth_mount(dsys_server *srv,
                                     const dsys_auth_options *opts,
                                     dsys_auth_service **out);

/** Wait for in-flight hashing and slow work, stop the threads, free.
 *  Call after dsys_server_stop(). NULL-safe. */
DSYS_API void dsys_service_auth_free(dsys_auth_service *svc);

/**
 * Find the JWT secret for an auth instance, in this order: the file
 * secret_file (when not NULL); the DSYS_JWT_SECRET environment variable;
 * else a file "jwt-secret" in the directory of db_path, created with 256
 * random bits (64 hex digits, mode 0600) by the first instance: the file
 * is written under a temporary name and published with link(2), so
 * instances that race all read the same secret. Trailing newlines of a
 * file are removed. There is no built-in secret.
 * @param secret receives the secret bytes (NUL-terminated; dsys_free()).
 * @param source receives a static description ("file", "env",
 *        "generated", "existing") or NULL.
 * @return 0, DSYS_EINVAL (no db_path and nothing else, or db_path is a
 *         URI such as postgresql://..., which has no directory; empty
 *         secret),
 *         DSYS_EIO (file unreadable or not creatable; see the log),
 *         DSYS_ENOMEM.
 */
DSYS_API int dsys_auth_load_secret(const char *secret_file,
                                   const char *db_path, char **secret,
                                   size_t *len, const char **source);

/* ------------------------------------------------------------------ */
/* Data                                                                 */

typedef struct dsys_data_service dsys_data_service;

/** Options for dsys_service_data_mount(). */
typedef struct dsys_data_options {
  size_t size;             /**< sizeof(dsys_data_options), or 0 */
  dsys_store *store;       /**< mandatory */
  dsys_clock *clock;       /**< default real */
  const char *name;        /**< default "data-service" */
  int32_t no_seed;         /**< 1: do not create data-1..data-10 */
  int64_t work_delay_ms;   /**< /data-work delay, default 500 */
  int64_t events_poll_ms;  /**< appended: how often GET /api/data/events
                                polls the shared change log for other
                                instances' writes, default 200 */
  struct dsys_cache *cache; /**< appended: read-through cache for GET
                                /api/data/:ref (not owned), or NULL (every
                                read goes to the store). Writes through
                                this instance evict at once; other
                                instances' writes when the change log poll
                                sees them (within events_poll_ms), so a
                                read may be that stale */
} dsys_data_options;

/**
 * Mount the data service (/api/data CRUD, increment, listing with prefix
 * and cursor, /api/data/events (SSE of changes), /data-work, health
 * routes). Seeds data-1..data-10 on the
 * first start of the deployment (idempotent across racing instances).
 * @return 0, DSYS_EINVAL, DSYS_ESTATE, DSYS_ENOMEM, DSYS_EDB (seeding
 *         failed).
 */
DSYS_API int dsys_service_data_mount(dsys_server *srv,
                                     const dsys_data_options *opts,
                                     dsys_data_service **out);

/** Wait for pending slow work and free. After dsys_server_stop().
 *  NULL-safe. */
DSYS_API void dsys_service_data_free(dsys_data_service *svc);

/* ------------------------------------------------------------------ */
/* Compute                                                              */

typedef struct dsys_compute_service dsys_compute_service;

/** Queue name of compute jobs. */
#define DSYS_COMPUTE_QUEUE "compute"

/** Options for dsys_service_compute_mount(). */
typedef struct dsys_compute_options {
  size_t size;             /**< sizeof(dsys_compute_options), or 0 */
  dsys_queue *queue;       /**< mandatory */
  dsys_clock *clock;       /**< default real */
  const char *name;        /**< default "compute-service" */
  uint32_t workers;        /**< job worker threads, default 2 */
  int32_t no_workers;      /**< 1: run no worker (submit and read only) */
  int32_t max_attempts;    /**< per job, default 3 */
  int64_t worker_poll_ms;  /**< idle poll of the workers, default 100 */
  int64_t work_delay_ms;   /**< /compute-worker delay, default 550 */
  int64_t lease_ms;        /**< job lease of the workers, default 30000: a
                                job held by an instance that died is run
                                again after this long */
  int64_t events_poll_ms;  /**< appended: how often job event streams poll
                                the shared queue for jobs run elsewhere,
                                default 200 */
  int64_t retention_ms;    /**< appended: the retention sweep deletes the
                                completed, failed (dead) and canceled jobs
                                of the queue database (dsys_queue_purge(),
                                every queue) that finished at least this
                                long ago; 0: no sweep */
  int64_t sweep_interval_ms; /**< appended: time between sweeps, default
                                a tenth of retention_ms within 1 s..1 h */
  struct dsys_election *election; /**< appended: when set, an instance
                                sweeps only while it leads this election
                                (one sweeper among several instances);
                                NULL: every instance sweeps (purges are
                                idempotent) */
  struct dsys_metrics *metrics; /**< appended: counters
                                dsys_queue_sweeps_total and
                                dsys_queue_swept_jobs_total here, or NULL */
} dsys_compute_options;

/**
 * Mount the compute service (/api/compute/direct, /job, /job/:id,
 * /job/:id/events (SSE), /stats, /compute-worker, health routes) and start
 * its worker pool on the "compute" queue.
 * @return 0, DSYS_EINVAL, DSYS_ESTATE, DSYS_ENOMEM.
 */
DSYS_API int dsys_service_compute_mount(dsys_server *srv,
                                        const dsys_compute_options *opts,
                                        dsys_compute_service **out);

/** Stop the workers (running jobs finish), wait for slow work, free.
 *  After dsys_server_stop(). NULL-safe. */
DSYS_API void dsys_service_compute_free(dsys_compute_service *svc);

/* ------------------------------------------------------------------ */
/* The daemon shell: every daemon's main (authd, datad, computed,        */
/* registryd, gatewayd, faultd)                                          */

typedef struct dsys_daemon dsys_daemon;
struct dsys_registry;

/** Mount callback: mount the service on dsys_daemon_server(d). Return 0;
 *  DSYS_EINVAL when a flag value cannot be used (say why on stderr: the
 *  daemon exits 2); any other nonzero value exits 1 (log why). */
typedef int (*dsys_daemon_mount_fn)(dsys_daemon *d, void *ud);
/** Unmount callback: free the service (the server is already stopped).
 *  Also called when the start failed after the server was created, maybe
 *  before mount ran: free only what exists. */
typedef void (*dsys_daemon_unmount_fn)(dsys_daemon *d, void *ud);
/** Prepare callback: the flags are parsed, nothing is started yet (no
 *  thread, no database, no server). Check the daemon's own flags and
 *  adjust the server options (so: name, access log and TLS already set
 *  from the common flags). Allocate nothing. Return 0; DSYS_EINVAL for a
 *  flag value it refuses (say why on stderr: exit 2); other nonzero: exit 1. */
typedef int (*dsys_daemon_prepare_fn)(dsys_daemon *d, dsys_server_options *so, void *ud);
/** Reload callback: the daemon got SIGHUP (systemctl reload). Runs on the
 *  thread of dsys_daemon_main() while the service keeps serving: reread
 *  what can change without a restart (files the daemon reads, reopen its
 *  own log files). The shell has parsed the flags, the environment and the
 *  --config file again: dsys_daemon_config() returns that configuration
 *  during the call and, if it returns 0, afterwards (a replaced one is
 *  freed at the next successful reload: copy what you keep). Return 0;
 *  nonzero is logged as an error and the daemon keeps running with what
 *  it had (and its previous configuration). A daemon with this hook takes
 *  the common flag --config FILE (DSYS_CONFIG). */
typedef int (*dsys_daemon_reload_fn)(dsys_daemon *d, void *ud);

/** dsys_daemon_spec.without: common flags a daemon does not take. */
#define DSYS_DAEMON_NO_REGISTRY 0x1u       /**< --registry */
#define DSYS_DAEMON_NO_PEER 0x2u           /**< --peer-ca, --peer-cert, --peer-key */
#define DSYS_DAEMON_NO_IDENTITY_TOKEN 0x4u /**< --identity-token-file */
#define DSYS_DAEMON_NO_IDENTITY_KEY 0x8u   /**< --identity-public-key */

/** What a daemon is. Append-only: a field added later reads as zero for a
 *  caller whose size ends before it. */
typedef struct dsys_daemon_spec {
  size_t size;                 /**< sizeof(dsys_daemon_spec), or 0 (only
                                    the fields up to service_type) */
  const char *progname;        /**< "dsys-authd" */
  const char *summary;         /**< one paragraph for --help */
  const char *default_name;    /**< --name default, e.g. "auth-service" */
  const char *default_listen;  /**< --listen default */
  const dsys_option *extra;    /**< options beyond the common ones; a row
                                    named like a common option replaces it
                                    (its help, its default) */
  size_t nextra;
  int32_t open_store;          /**< 1: open the store on --db */
  int32_t open_queue;          /**< 1: open the queue on --db */
  dsys_daemon_mount_fn mount;  /**< mandatory */
  dsys_daemon_unmount_fn unmount; /**< may be NULL */
  void *ud;
  const char *service_type;    /**< "auth", "data", "compute": with
                                    --registry the instance registers as
                                    this type (NULL: no registration) */
  /* appended: */
  uint32_t without;            /**< DSYS_DAEMON_NO_* bits */
  const char *peer_prefix;     /**< prefix of the flags of the client TLS
                                    settings used towards the registry:
                                    default "peer"; the gateway's
                                    "upstream" (its own rows in extra,
                                    with DSYS_DAEMON_NO_PEER) */
  dsys_daemon_prepare_fn prepare; /**< may be NULL */
  dsys_daemon_unmount_fn drain; /**< may be NULL: on a stop signal, after
                                    deregistering and before the server
                                    stops taking requests: answer long
                                    polls, end event streams */
  int32_t own_identity_check;  /**< 1: --identity-public-key is not
                                    required on every route; the mount
                                    applies dsys_daemon_identity_verifier()
                                    itself (the registry: writes only) */
  dsys_daemon_reload_fn reload; /**< may be NULL: called on SIGHUP */
} dsys_daemon_spec;

/**
 * Run a daemon: parse the common flags (--listen, --db, --registry,
 * --name, --log-format, --log-level, --access-log, TLS, identity, -h/--help,
 * -V/--version; minus spec->without) plus spec->extra, with DSYS_*
 * environment variables (dsys_program_start: unknown options and stray
 * arguments exit 2); call prepare; create the directory of the database
 * and open the store and/or queue on it; open --registry (client TLS from
 * the spec->peer_prefix flags, the instance's identity); create the
 * server, call mount, listen, print "listening URL" on stdout; with
 * service_type and --registry, register the instance ({serviceId:
 * <name>-<port>, serviceType, url, name, metadata: {port, host}}),
 * heartbeat every 10 s and re-register when the registry forgot it
 * (dsys_registration); tell systemd READY=1 (sd_notify(3): a no-op
 * without NOTIFY_SOCKET); wait for SIGINT or SIGTERM; on SIGHUP log
 * "reload requested", parse the configuration again (with --config) and
 * call spec->reload, and keep running; on a stop
 * signal tell systemd STOPPING=1, deregister, call drain, stop taking
 * requests and drain in-flight ones (5 s), call unmount, close.
 * Every daemon serves GET /metrics (dsys_daemon_metrics()).
 * TLS: --tls-cert/--tls-key serve an https:// --listen, --tls-client-ca
 * requires client certificates (mutual TLS), --peer-ca/--peer-cert/
 * --peer-key configure the client towards an https:// --registry.
 * Service identity (include/distsys/identity.h): --identity-token-file
 * gives the instance's token, presented to the registry on every write;
 * --identity-public-key makes the daemon refuse callers without a valid
 * token (401) on every route but GET /health, /ready, /metrics and
 * /api/<type>/health (unless spec->own_identity_check).
 * Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (call it from
 * main before starting any thread).
 * @return the process exit status: 0 (clean stop, --help, --version),
 *         1 (start-up failure), 2 (bad flags or flag values).
 */
DSYS_API int dsys_daemon_main(const dsys_daemon_spec *spec, int argc,
                              char *const *argv);

/** The server (valid in mount and unmount). */
DSYS_API dsys_server *dsys_daemon_server(dsys_daemon *d);
/** The daemon's metrics registry, served on GET /metrics (valid in mount
 *  and unmount): a service may add its own series to it. It already holds
 *  the server's request metrics, process metrics, and the store's
 *  operation latency or the queue's depth by state. */
DSYS_API struct dsys_metrics *dsys_daemon_metrics(dsys_daemon *d);
/** The store, or NULL when spec->open_store was 0. */
DSYS_API dsys_store *dsys_daemon_store(dsys_daemon *d);
/** The queue, or NULL when spec->open_queue was 0. */
DSYS_API dsys_queue *dsys_daemon_queue(dsys_daemon *d);
/** The parsed configuration (read the extra options here). */
DSYS_API const dsys_config *dsys_daemon_config(dsys_daemon *d);
/** The --name value. */
DSYS_API const char *dsys_daemon_name(dsys_daemon *d);
/** The --db path. */
DSYS_API const char *dsys_daemon_db_path(dsys_daemon *d);
/** The registry opened on --registry, or NULL (no --registry): for
 *  discovery (the gateway, the fault detector); owned by the daemon. */
DSYS_API struct dsys_registry *dsys_daemon_registry(dsys_daemon *d);
/** The instance's credential (--identity-token-file), or NULL: present
 *  it to peers with dsys_identity_token() in the X-Dsys-Identity header. */
DSYS_API struct dsys_identity *dsys_daemon_identity(dsys_daemon *d);
/** The rows of a daemon's option table for serving https:// (the flags
 *  --tls-cert, --tls-key and --tls-client-ca; pass the values to
 *  dsys_server_options and check them with dsys_daemon_tls_check()). */
#define DSYS_DAEMON_TLS_OPTIONS                                                          \
  {"tls-cert", "DSYS_TLS_CERT", DSYS_OPT_STRING, NULL,                                    \
   "PEM certificate (chain) for an https:// --listen"},                                   \
  {"tls-key", "DSYS_TLS_KEY", DSYS_OPT_STRING, NULL, "its PEM private key (unencrypted)"}, \
  {"tls-client-ca", "DSYS_TLS_CLIENT_CA", DSYS_OPT_STRING, NULL,                          \
   "PEM CA: require client certificates signed by it (mutual TLS; else 403)"}

/** The rows for a daemon's client side towards https:// peers (registry,
 *  checked instances): --peer-ca, --peer-cert and --peer-key. */
#define DSYS_DAEMON_PEER_OPTIONS                                                         \
  {"peer-ca", "DSYS_PEER_CA", DSYS_OPT_STRING, NULL,                                      \
   "PEM CA trusted for https:// peers: the registry, checked instances "                  \
   "(default: the system store)"},                                                        \
  {"peer-cert", "DSYS_PEER_CERT", DSYS_OPT_STRING, NULL,                                  \
   "PEM client certificate presented to https:// peers (mutual TLS)"},                    \
  {"peer-key", "DSYS_PEER_KEY", DSYS_OPT_STRING, NULL, "its PEM private key"}

/**
 * Check a daemon's TLS listening flags before starting: an https://
 * listen URL needs a certificate and a key; certificate, key or client CA
 * without an https:// URL are a mistake too (they would be ignored).
 * @return NULL when consistent, else a message for the user (static).
 */
DSYS_API const char *dsys_daemon_tls_check(const char *listen, const char *cert,
                                           const char *key, const char *client_ca);
/**
 * Fill a daemon's client TLS settings from its flags PREFIX-ca,
 * PREFIX-cert and PREFIX-key (prefix "peer" for DSYS_DAEMON_PEER_OPTIONS,
 * the gateway's "upstream"). The strings stay owned by cfg.
 * @return 0, or DSYS_EINVAL with a message in err when only one of the
 *         certificate and the key is given (they go together).
 */
DSYS_API int dsys_daemon_client_tls(const dsys_config *cfg, const char *prefix,
                                    dsys_client_options *out, char *err, size_t errlen);
/** The verifier of callers (--identity-public-key), or NULL. */
DSYS_API struct dsys_identity_verifier *dsys_daemon_identity_verifier(dsys_daemon *d);

#ifdef __cplusplus
}
#endif
#endif
