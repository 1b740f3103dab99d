/*
 * Durable job queue with leases, fencing tokens, retries with jittered
 * exponential backoff, dead letters, delays, priorities, idempotency keys
 * and retention; and a worker pool (dsys_worker) that runs a handler.
 *
 * Opened by URL like the store: "sqlite:///abs/path/file.sqlite" (several
 * processes may share the file, also with a dsys_store) or "memory:" (an
 * in-process SQLite database, for tests); or "postgresql://..." (also
 * "postgres://"), a libpq connection URI: one queue shared by processes on
 * several hosts (docs/reference/postgresql-queue.md).
 *
 * Job states: waiting (ready to claim), delayed (run_at in the future, or
 * backing off before a retry), active (claimed, under a lease), completed,
 * failed (dead letter: the last attempt failed), canceled.
 *
 * Claim order: higher priority first, then FIFO (lower job id first).
 * Every claim increments the job's fencing token; heartbeat, progress,
 * complete, fail and release are accepted only while the job is active
 * with that token, else DSYS_ELEASE. A lease that expires (no heartbeat)
 * returns the job to waiting (or to failed if it used its last attempt)
 * when the next claim in any process runs.
 *
 * Durability: a call returns only after its transaction committed. Writes of
 * one process go through one connection and are committed in groups: calls
 * that overlap in time from several threads share one transaction (group
 * commit); a call that fails (e.g. a stale token) changes nothing and does
 * not affect the others in its group.
 *
 * Thread-safety: a dsys_queue may be used from any number of threads.
 * dsys_queue_close() must not run concurrently with other calls on it and
 * must come after dsys_worker_stop() of every worker using it.
 */
#ifndef DSYS_QUEUE_H
#define DSYS_QUEUE_H

#include <distsys/common.h>
#include <distsys/clock.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Maximum payload / result size in bytes. */
#define DSYS_QUEUE_MAX_PAYLOAD (1024 * 1024)
/** Maximum length of a queue name, worker id or idempotency key. */
#define DSYS_QUEUE_MAX_NAME 256

typedef struct dsys_queue dsys_queue;

/** Job states. */
typedef enum dsys_job_state {
  DSYS_JOB_WAITING = 1,
  DSYS_JOB_DELAYED = 2,
  DSYS_JOB_ACTIVE = 3,
  DSYS_JOB_COMPLETED = 4,
  DSYS_JOB_FAILED = 5,
  DSYS_JOB_CANCELED = 6
} dsys_job_state;

/**
 * A job, returned as one allocation (strings live in the same block):
 * release with dsys_job_free(). Optional strings are NULL when unset.
 * Times are wall-clock ms since the epoch (0 = unset): the queue's clock,
 * or on PostgreSQL with a real clock the server's (postgresql-queue.md).
 */
typedef struct dsys_job {
  int64_t id;
  const char *queue;
  const char *payload;         /**< JSON text */
  int32_t state;               /**< dsys_job_state */
  int32_t priority;            /**< higher runs first */
  int32_t attempts;            /**< claims so far (releases not counted) */
  int32_t max_attempts;
  int64_t token;               /**< fencing token of the current claim */
  const char *worker;          /**< worker id of the current/last claim */
  int64_t lease_until;
  int32_t progress;            /**< 0-100 */
  const char *progress_msg;
  const char *result;          /**< JSON text of a completed job */
  const char *error;           /**< last failure message */
  const char *idempotency_key;
  int64_t created_at;
  int64_t run_at;              /**< ready time (delay, backoff) */
  int64_t finished_at;
} dsys_job;

/** Counts of jobs by state. */
typedef struct dsys_job_counts {
  int64_t waiting, delayed, active, completed, failed, canceled;
} dsys_job_counts;

/** Options for dsys_queue_open(). Zero fields mean the default. */
typedef struct dsys_queue_options {
  size_t size;       /**< sizeof(dsys_queue_options) */
  dsys_clock *clock; /**< clock for leases, delays, backoff; NULL = real */
  int full_sync;     /**< 1 = synchronous=FULL (see docs), 0 = NORMAL */
  int max_batch;     /**< most calls committed in one transaction; 0 = 256;
                          1 disables group commit */
} dsys_queue_options;

/** Options for dsys_queue_submit(). Zero fields mean the default. */
typedef struct dsys_submit_options {
  size_t size;              /**< sizeof(dsys_submit_options) */
  int32_t priority;         /**< default 0; higher first */
  int64_t delay_ms;         /**< not claimable before now + delay */
  int32_t max_attempts;     /**< default 3 */
  int64_t backoff_base_ms;  /**< default 1000 */
  int64_t backoff_cap_ms;   /**< default 60000 */
  const char *idempotency_key; /**< per queue; a repeat returns the
                                    existing job (until it is purged) */
} dsys_submit_options;

/**
 * Open a queue by URL (see the header comment); the schema is created or
 * migrated (component "queue").
 * @return 0, DSYS_EINVAL, DSYS_EURL, DSYS_ESCHEME, DSYS_ENOMEM, DSYS_EIO,
 *         DSYS_EDB, DSYS_ENOTSUP. Thread: any.
 */
DSYS_API int dsys_queue_open(dsys_queue **out, const char *url,
                             const dsys_queue_options *opts);

/** Close and free. NULL-safe. No call or worker may be using it. */
DSYS_API void dsys_queue_close(dsys_queue *q);

/**
 * Submit a job.
 * @param queue queue name (1..DSYS_QUEUE_MAX_NAME bytes).
 * @param payload JSON text (validated; at most DSYS_QUEUE_MAX_PAYLOAD).
 * @param o options or NULL.
 * @param id receives the job id (may be NULL).
 * @param existed receives 1 when the idempotency key matched an existing
 *        job (whose id is returned), else 0 (may be NULL).
 * @return 0, DSYS_EINVAL, DSYS_EBADJSON, DSYS_ETOOBIG, DSYS_EDB, DSYS_EBUSY.
 */
DSYS_API int dsys_queue_submit(dsys_queue *q, const char *queue,
                               const char *payload,
                               const dsys_submit_options *o, int64_t *id,
                               int *existed);

/**
 * Claim the next ready job of any of the given queues (priority, then
 * FIFO), under a lease of lease_ms. Expired leases are reclaimed first.
 * @param worker worker id stored on the job (NULL = "").
 * @param out receives the job (state active, token = the fencing token).
 * @return 0, DSYS_EAGAIN (nothing ready), DSYS_EINVAL, DSYS_EDB.
 */
DSYS_API int dsys_queue_claim(dsys_queue *q, const char *const *queues,
                              size_t nqueues, const char *worker,
                              int64_t lease_ms, dsys_job **out);

/**
 * Extend the lease to now + lease_ms.
 * @return 0, DSYS_ELEASE (not active with this token), DSYS_ENOTFOUND.
 */
DSYS_API int dsys_queue_heartbeat(dsys_queue *q, int64_t id, int64_t token,
                                  int64_t lease_ms);

/**
 * Store progress (0-100) and an optional message (NULL keeps none).
 * @return 0, DSYS_EINVAL, DSYS_ELEASE, DSYS_ENOTFOUND.
 */
DSYS_API int dsys_queue_progress(dsys_queue *q, int64_t id, int64_t token,
                                 int32_t percent, const char *message);

/**
 * Complete a job with a result (JSON text, NULL = null).
 * @return 0, DSYS_ELEASE (token stale: the lease expired and/or the job
 *         was handed to another worker), DSYS_ENOTFOUND, DSYS_EBADJSON.
 */
DSYS_API int dsys_queue_complete(dsys_queue *q, int64_t id, int64_t token,
                                 const char *result);

/**
 * Fail an attempt. If attempts remain, the job is retried after a full-
 * jitter exponential backoff: uniform in [0, min(cap, base * 2^(n-1))] ms
 * after attempt n; otherwise it becomes failed (dead letter).
 * @param error message stored on the job (NULL = "failed").
 * @param dead receives 1 if the job was dead-lettered (may be NULL).
 * @return 0, DSYS_ELEASE, DSYS_ENOTFOUND.
 */
DSYS_API int dsys_queue_fail(dsys_queue *q, int64_t id, int64_t token,
                             const char *error, int *dead);

/**
 * Give an active job back (waiting again, this attempt not counted).
 * @return 0, DSYS_ELEASE, DSYS_ENOTFOUND.
 */
DSYS_API int dsys_queue_release(dsys_queue *q, int64_t id, int64_t token);

/**
 * Cancel a waiting, delayed or active job (an active job's worker then
 * gets DSYS_ELEASE).
 * @return 0, DSYS_ENOTFOUND, DSYS_ESTATE (already finished).
 */
DSYS_API int dsys_queue_cancel(dsys_queue *q, int64_t id);

/**
 * Get a job. @param out receives it (dsys_job_free()).
 * @return 0, DSYS_ENOTFOUND.
 */
DSYS_API int dsys_queue_get(dsys_queue *q, int64_t id, dsys_job **out);

/**
 * Count jobs by state, for one queue or all (queue NULL).
 * @return 0, DSYS_EINVAL, DSYS_EDB.
 */
DSYS_API int dsys_queue_counts(dsys_queue *q, const char *queue,
                               dsys_job_counts *out);

/**
 * List dead-lettered (failed) jobs of a queue (NULL = all) with id >
 * after_id, in id order, at most limit (1..1000).
 * @param jobs receives the array; free with dsys_job_list_free(jobs, n).
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM, DSYS_EDB.
 */
DSYS_API int dsys_queue_list_dead(dsys_queue *q, const char *queue,
                                  int64_t after_id, size_t limit,
                                  dsys_job ***jobs, size_t *n);

/**
 * Replay a failed or canceled job: waiting again with attempts reset.
 * @return 0, DSYS_ENOTFOUND, DSYS_ESTATE.
 */
DSYS_API int dsys_queue_replay(dsys_queue *q, int64_t id);

/**
 * Retention: delete completed, failed and canceled jobs that finished at
 * least older_than_ms ago.
 * @param removed receives the count (may be NULL).
 * @return 0, DSYS_EINVAL, DSYS_EDB.
 */
DSYS_API int dsys_queue_purge(dsys_queue *q, int64_t older_than_ms,
                              int64_t *removed);

/* ------------------------------------------------------------------ */
/* Operations: queues, pause, dead-letter retention                      */

/**
 * A queue as listed by dsys_queue_list_queues(). In the array returned,
 * every name points into the same allocation (one dsys_free()).
 */
typedef struct dsys_queue_info {
  const char *name;
  int32_t paused;          /**< 1 while paused (dsys_queue_pause), else 0 */
  int64_t paused_at;       /**< wall ms when it was paused, 0 if not */
  dsys_job_counts counts;  /**< its jobs by state */
} dsys_queue_info;

/**
 * List the queues: every queue name that has at least one job, and every
 * paused queue (also one without jobs), ordered by name (bytewise), each
 * with its counts by state and whether it is paused.
 * @param out receives the array (NULL when *n is 0), released with one
 *        dsys_free().
 * @param n receives the count.
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM, DSYS_EDB, DSYS_ENOTSUP (a backend
 *         without the op). Thread: any.
 */
DSYS_API int dsys_queue_list_queues(dsys_queue *q, dsys_queue_info **out,
                                    size_t *n);

/**
 * Pause a queue: it keeps accepting submits, but no claim (in any process
 * sharing the database) hands out its jobs until dsys_queue_resume().
 * Workers keep polling and get nothing from it; jobs already claimed
 * (running, or in a worker's prefetch buffer) are not affected, and their
 * leases, retries and backoff go on as usual. The pause is stored with the
 * queue's jobs, so it holds across processes and restarts. Pausing a paused
 * queue changes nothing (paused_at is kept); a queue without jobs may be
 * paused.
 * @param queue queue name (1..DSYS_QUEUE_MAX_NAME bytes).
 * @return 0, DSYS_EINVAL, DSYS_EDB, DSYS_ENOTSUP (a backend without the
 *         op). Thread: any.
 */
DSYS_API int dsys_queue_pause(dsys_queue *q, const char *queue);

/**
 * Resume a paused queue: its ready jobs can be claimed again (local
 * workers are woken at once; workers in other processes see it at their
 * next poll). Resuming a queue that is not paused changes nothing.
 * @return 0, DSYS_EINVAL, DSYS_EDB, DSYS_ENOTSUP. Thread: any.
 */
DSYS_API int dsys_queue_resume(dsys_queue *q, const char *queue);

/**
 * Retention for dead letters only: delete the failed (dead-lettered) jobs
 * of a queue (NULL = every queue) that were dead-lettered at least
 * older_than_ms ago (0 = all of them). Waiting, delayed, active, completed
 * and canceled jobs are kept. An idempotency key of a deleted job can be
 * used again.
 * @param removed receives the count (may be NULL).
 * @return 0, DSYS_EINVAL, DSYS_EDB, DSYS_ENOTSUP. Thread: any.
 */
DSYS_API int dsys_queue_purge_dead(dsys_queue *q, const char *queue,
                                   int64_t older_than_ms, int64_t *removed);

/** Name of a job state ("waiting", ...; "unknown" otherwise). Static. */
DSYS_API const char *dsys_job_state_name(int state);

/** Free a job. NULL-safe. */
DSYS_API void dsys_job_free(dsys_job *job);

/** Free a job array from dsys_queue_list_dead(). NULL-safe. */
DSYS_API void dsys_job_list_free(dsys_job **jobs, size_t n);

/* ------------------------------------------------------------------ */
/* Batch calls                                                          */

/** Most jobs in one dsys_queue_submit_many() / dsys_queue_claim_many(). */
#define DSYS_QUEUE_MAX_MANY 10000

/**
 * Submit n jobs to one queue in one transaction: all of them are stored,
 * or (on error) none. Ids are consecutive within the call only if no other
 * writer interleaves; use the returned ids.
 * @param payloads n JSON texts (each validated, at most
 *        DSYS_QUEUE_MAX_PAYLOAD).
 * @param n 1..DSYS_QUEUE_MAX_MANY.
 * @param o options applied to every job, or NULL. o->idempotency_key must
 *        be NULL (a key names one job); use dsys_queue_submit() for keyed
 *        jobs.
 * @param ids receives n job ids (array of n, may be NULL).
 * @return 0, DSYS_EINVAL, DSYS_EBADJSON, DSYS_ETOOBIG, DSYS_ENOMEM,
 *         DSYS_EDB, DSYS_EBUSY. Thread: any.
 */
DSYS_API int dsys_queue_submit_many(dsys_queue *q, const char *queue,
                                    const char *const *payloads, size_t n,
                                    const dsys_submit_options *o,
                                    int64_t *ids);

/**
 * Claim up to max ready jobs of the given queues in one transaction, each
 * under its own lease of lease_ms and its own fencing token, in claim order
 * (priority, then FIFO). Each job is handled exactly like one returned by
 * dsys_queue_claim(): heartbeat it, then complete, fail or release it; a
 * job that is neither renewed nor finished is redelivered after its lease.
 * @param jobs caller's array of at least max pointers; receives *n jobs,
 *        each to be freed with dsys_job_free().
 * @param max 1..DSYS_QUEUE_MAX_MANY.
 * @param n receives the count (0 on error).
 * @return 0 (*n >= 1), DSYS_EAGAIN (nothing ready, *n = 0), DSYS_EINVAL,
 *         DSYS_ENOMEM, DSYS_EDB. Thread: any.
 */
DSYS_API int dsys_queue_claim_many(dsys_queue *q, const char *const *queues,
                                   size_t nqueues, const char *worker,
                                   int64_t lease_ms, size_t max,
                                   dsys_job **jobs, size_t *n);

/**
 * Copy a job into one new block (strings included), e.g. for a backend.
 * @return the copy (dsys_job_free()) or NULL (out of memory, NULL job).
 */
DSYS_API dsys_job *dsys_job_dup(const dsys_job *job);

/**
 * Full-jitter backoff in ms after attempt n (>= 1): uniform in
 * [0, min(cap, base * 2^(n-1))]. For backends implementing fail.
 */
DSYS_API int64_t dsys_queue_backoff_ms(int attempt, int64_t base_ms,
                                       int64_t cap_ms);

/* ------------------------------------------------------------------ */
/* Backend ops table (append-only; version 3)                           */

#define DSYS_QUEUE_OPS_VERSION 3

/** Kinds of dsys_queue_finish. */
enum { DSYS_QUEUE_FINISH_COMPLETE = 1, DSYS_QUEUE_FINISH_HEARTBEAT = 2 };

/**
 * One completion or lease renewal passed to dsys_queue_ops.finish_many:
 * the outcomes of several calls of one group, applied at once.
 */
typedef struct dsys_queue_finish {
  int32_t kind;        /**< DSYS_QUEUE_FINISH_COMPLETE or _HEARTBEAT */
  int64_t id, token;
  const char *result;  /**< complete: JSON text, or NULL for null */
  int64_t lease_until; /**< heartbeat */
  int rc;              /**< out: what complete / heartbeat would return */
} dsys_queue_finish;

/**
 * A queue backend. The front end (dsys_queue_*) validates every argument,
 * fills defaults into the submit options, computes times from the queue's
 * clock, and runs the calls of all threads of a process in groups: one
 * group is begin, then the ops of several calls, then commit (or rollback
 * if commit fails, and then every call of the group fails). Unless the
 * table says otherwise (concurrent_groups, version 3), the front end never
 * runs two groups of one handle at once, so the ops of one state need no
 * locking among themselves (other processes are the backend's affair).
 *
 * Every op returns 0 or a DSYS_E code, and an op that fails must change
 * nothing (the rest of its group still commits). Jobs returned through
 * out-parameters are single blocks freed with dsys_job_free() (see
 * dsys_job_dup()). Job-changing ops taking (id, token) must return
 * DSYS_ELEASE unless the job is active with that token, DSYS_ENOTFOUND for
 * an unknown id. Semantics are those documented for the public calls of the
 * same name; the conformance test (tests/state/test-queue.c) checks them.
 */
typedef struct dsys_queue_ops {
  int version;       /**< DSYS_QUEUE_OPS_VERSION */
  const char *name;  /**< URL scheme, e.g. "sqlite" */
  size_t state_size; /**< bytes of zeroed state passed to every op */
  /** Open at location (the URL after "scheme://"). Mandatory. */
  int (*open)(void *st, const char *location, const dsys_queue_options *o,
              char *err, size_t errlen);
  /** Release everything. Mandatory. */
  void (*close)(void *st);
  /** Start a group at time now: first make due delayed jobs waiting and
   *  reclaim expired leases (to waiting, or to failed with error "lease
   *  expired" after the last attempt). Mandatory. */
  int (*begin)(void *st, int64_t now);
  /** Make the group durable. Mandatory. */
  int (*commit)(void *st);
  /** Undo the group (after a failed commit). Mandatory. */
  void (*rollback)(void *st);
  /** Store n jobs, all or none (o has defaults filled in; with an
   *  idempotency key n is 1 and *existed tells whether it matched).
   *  Mandatory. */
  int (*submit)(void *st, const char *queue, const char *const *payloads,
                size_t n, const dsys_submit_options *o, int64_t now,
                int64_t *ids, int *existed);
  /** Claim up to max jobs (see dsys_queue_claim_many) with lease_until;
   *  DSYS_EAGAIN when none. Mandatory. */
  int (*claim)(void *st, const char *const *queues, size_t nqueues,
               const char *worker, int64_t lease_until, size_t max,
               int64_t now, dsys_job **jobs, size_t *n);
  /** Set lease_until. Mandatory. */
  int (*heartbeat)(void *st, int64_t id, int64_t token, int64_t lease_until);
  /** Store progress; message may be NULL. Mandatory. */
  int (*progress)(void *st, int64_t id, int64_t token, int32_t percent,
                  const char *message);
  /** Complete (result JSON text or NULL for null). Mandatory. */
  int (*complete)(void *st, int64_t id, int64_t token, const char *result,
                  int64_t now);
  /** Fail an attempt (error never NULL); *dead = 1 if dead-lettered.
   *  Mandatory. */
  int (*fail)(void *st, int64_t id, int64_t token, const char *error,
              int64_t now, int *dead);
  /** Give back an active job. Mandatory. */
  int (*release)(void *st, int64_t id, int64_t token, int64_t now);
  /** Cancel (DSYS_ESTATE if finished). Mandatory. */
  int (*cancel)(void *st, int64_t id, int64_t now);
  /** Get a job. Mandatory. */
  int (*get)(void *st, int64_t id, dsys_job **out);
  /** Counts of one queue (NULL = all). Mandatory. */
  int (*counts)(void *st, const char *queue, dsys_job_counts *out);
  /** Dead jobs with id > after_id in id order, at most limit; *jobs is a
   *  malloc'ed array (dsys_job_list_free). Optional (DSYS_ENOTSUP). */
  int (*list_dead)(void *st, const char *queue, int64_t after_id,
                   size_t limit, dsys_job ***jobs, size_t *n);
  /** Replay a failed or canceled job. Optional (DSYS_ENOTSUP). */
  int (*replay)(void *st, int64_t id, int64_t now);
  /** Delete finished jobs with 0 < finished_at <= before. Optional. */
  int (*purge)(void *st, int64_t before, int64_t *removed);
  /* ---- version 2 (the front end reads these only from a table whose
   *      version is at least 2; all optional: DSYS_ENOTSUP when absent) ---- */
  /** The queues (see dsys_queue_list_queues): *out is one malloc'd block
   *  (dsys_free) ordered by name, NULL when *n is 0. */
  int (*list_queues)(void *st, dsys_queue_info **out, size_t *n);
  /** Pause (paused 1, at time now) or resume (0) a queue; both idempotent.
   *  A backend with this op must make claim skip the ready jobs of paused
   *  queues, as seen by every handle on the same data. */
  int (*set_paused)(void *st, const char *queue, int paused, int64_t now);
  /** Delete failed jobs of queue (NULL = all) with 0 < finished_at <=
   *  before. */
  int (*purge_dead)(void *st, const char *queue, int64_t before,
                    int64_t *removed);
  /* ---- version 3 (read only from tables of version 3 and later; both
   *      optional) ---- */
  /** Apply n completions and renewals (consecutive calls of one group, on
   *  distinct or repeated jobs, in order) with one result each in f[i].rc,
   *  exactly as complete / heartbeat would; e.g. in one statement. Return
   *  nonzero only when nothing was applied (then every call gets it).
   *  Absent: the front end calls complete / heartbeat one by one. */
  int (*finish_many)(void *st, dsys_queue_finish *f, size_t n, int64_t now);
  /** Called once after open: the backend may call wake(ud) from any of its
   *  threads, holding none of its locks, when another process may have
   *  made jobs ready (local workers then claim at once instead of at their
   *  next poll). Its threads must be stopped by close. */
  void (*set_wake)(void *st, void (*wake)(void *ud), void *ud);
  /** Groups the front end may run at once on this state (0 or 1: one at a
   *  time). With more, each group runs wholly on one thread (begin, its
   *  ops, commit or rollback) and the backend keeps per-group state apart
   *  (e.g. per thread) and locks what groups share. */
  int concurrent_groups;
} dsys_queue_ops;

/** The built-in SQLite backend (scheme "sqlite"; location is a file path,
 *  or ":memory:" for a private in-memory database, which is what the URL
 *  "memory:" opens). */
DSYS_API const dsys_queue_ops *dsys_queue_ops_sqlite(void);

/**
 * Add a queue backend, found afterwards by dsys_queue_open() through its
 * name as the URL scheme ("NAME://location" or "NAME:location"). The
 * built-in "sqlite" backend is always there ("memory:" opens it on a
 * private in-memory database unless a backend named "memory" is added).
 * The ops table must be static (registrations are permanent).
 * @return 0; DSYS_EINVAL for a bad ops table (as dsys_queue_open_ops());
 *         DSYS_EEXIST when a backend of that name exists; DSYS_ENOMEM when
 *         the table of backends is full (32).
 * Thread: any.
 */
DSYS_API int dsys_queue_register_backend(const dsys_queue_ops *ops);

/**
 * Open a queue on an explicit backend. The ops table is checked: version
 * 1..DSYS_QUEUE_OPS_VERSION (a version-1 table, which ends at purge, is
 * still accepted), a name, and every mandatory op present.
 * @return as dsys_queue_open(); DSYS_EINVAL for a bad ops table.
 */
DSYS_API int dsys_queue_open_ops(dsys_queue **out, const dsys_queue_ops *ops,
                                 const char *location,
                                 const dsys_queue_options *opts);

/* ------------------------------------------------------------------ */
/* Workers                                                              */

typedef struct dsys_worker dsys_worker;
/** Per-job context passed to a handler; valid during the call only. */
typedef struct dsys_job_ctx dsys_job_ctx;

/**
 * Job handler. Runs on one of the worker's own threads (never on the
 * caller's thread, never with a library lock held). Return 0 to complete
 * the job (with the result set by dsys_job_ctx_set_result(), else null);
 * any other value fails this attempt (message from dsys_job_ctx_set_error()
 * or dsys_strerror(rc)). When the worker is stopping in
 * DSYS_WORKER_STOP_RELEASE mode, returning DSYS_ECANCELED releases the job
 * back to the queue instead of failing it.
 */
typedef int (*dsys_job_handler)(dsys_job_ctx *ctx, const dsys_job *job,
                                void *ud);

/** Options for dsys_worker_start(). */
typedef struct dsys_worker_options {
  size_t size;               /**< sizeof(dsys_worker_options) */
  const char *const *queues; /**< queue names to claim from (copied) */
  size_t nqueues;            /**< >= 1 */
  uint32_t threads;          /**< handler threads; 0 = 1 */
  int64_t lease_ms;          /**< 0 = 30000; renewed every lease_ms / 3 */
  int64_t poll_ms;           /**< idle poll interval; 0 = 100 */
  const char *worker_id;     /**< NULL = "<hostname>:<pid>:<random>" */
  dsys_job_handler handler;  /**< mandatory */
  void *ud;                  /**< passed to handler */
  /** Jobs claimed ahead of the handler threads (in one transaction with
   *  the outcomes of finished jobs), leased to this worker and renewed
   *  like running ones; never-started ones are released on stop.
   *  0 = default: 32, growing up to 256 while the handlers run dry during
   *  a claim round and shrinking back while half the buffer waits (fast
   *  jobs get bigger rounds, slow ones are not held); a positive value is
   *  kept fixed; negative = none (claim only for idle threads). */
  int32_t prefetch;
} dsys_worker_options;

/** Stop modes for dsys_worker_stop(). */
typedef enum dsys_worker_stop_mode {
  /** Stop claiming; let running handlers finish and record their outcome. */
  DSYS_WORKER_STOP_FINISH = 0,
  /** Stop claiming; dsys_job_ctx_stopping() becomes true, and handlers that
   *  return DSYS_ECANCELED get their job released back to the queue. */
  DSYS_WORKER_STOP_RELEASE = 1
} dsys_worker_stop_mode;

/**
 * Start a worker pool on q. Leases are renewed by the queue's clock timers
 * (on the real clock: its timer thread; on a fake clock: inside
 * dsys_clock_advance()) while handlers run. If this call fails, no thread
 * was started and no handler will run.
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_worker_start(dsys_worker **out, dsys_queue *q,
                               const dsys_worker_options *opts);

/**
 * Stop the pool (see dsys_worker_stop_mode), wait for every thread, and
 * free the worker. After it returns no handler runs. NULL-safe. Must not be
 * called from a handler.
 */
DSYS_API void dsys_worker_stop(dsys_worker *w, int mode);

/** The worker id used for claims. Valid until dsys_worker_stop(). */
DSYS_API const char *dsys_worker_id(dsys_worker *w);

/**
 * Report progress of the current job (stored with the job).
 * @return 0, DSYS_EINVAL, DSYS_ELEASE (lease lost).
 */
DSYS_API int dsys_job_ctx_progress(dsys_job_ctx *ctx, int32_t percent,
                                   const char *message);

/**
 * Set the result (JSON text, copied) recorded when the handler returns 0.
 * @return 0, DSYS_EBADJSON, DSYS_ETOOBIG, DSYS_ENOMEM.
 */
DSYS_API int dsys_job_ctx_set_result(dsys_job_ctx *ctx, const char *json);

/** Set the error message (copied) recorded when the handler fails.
 *  @return 0, DSYS_ENOMEM. */
DSYS_API int dsys_job_ctx_set_error(dsys_job_ctx *ctx, const char *message);

/**
 * Nonzero when the handler should give up: the worker is stopping in
 * release mode, or the lease was lost (a renewal got DSYS_ELEASE, e.g. the
 * job was canceled).
 */
DSYS_API int dsys_job_ctx_stopping(dsys_job_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif
