/* Internal interface between the queue front end, its workers and tests. */
#ifndef DSYSI_QUEUE_INT_H
#define DSYSI_QUEUE_INT_H

#include <distsys/queue.h>

/** The built-in PostgreSQL backend (queue_pg.c; scheme "postgresql", also
 *  registered as "postgres"): location is the URI after "scheme://". */
const dsys_queue_ops *dsysi_queue_ops_pg(void);

/** The queue's clock. */
dsys_clock *dsysi_queue_clock(dsys_queue *q);
/** Wait (real time, at most timeout_ms) until a local submit/release/fail
 *  may have made work available, dsysi_queue_wake() is called, or
 *  *stop_flag becomes nonzero. */
void dsysi_queue_wait_work(dsys_queue *q, int64_t timeout_ms,
                           const int *stop_flag);
/** Wake every dsysi_queue_wait_work() waiter and registered waiter. */
void dsysi_queue_wake(dsys_queue *q);
/** Ops queued for the group commit and not yet taken by a group (for
 *  tests that hold a group and check who shares the next). */
size_t dsysi_queue_pending(dsys_queue *q);
/** Full-jitter backoff (same as dsys_queue_backoff_ms). */
int64_t dsysi_queue_backoff(int attempt, int64_t base, int64_t cap);

/** Called (with the queue's lock held: it must only set a flag and signal)
 *  when local work may be available. */
typedef void (*dsysi_queue_wake_fn)(void *ud);
/** Register / unregister a wake callback. @return 0, DSYS_ENOMEM. */
int dsysi_queue_add_waiter(dsys_queue *q, dsysi_queue_wake_fn fn, void *ud);
void dsysi_queue_remove_waiter(dsys_queue *q, dsysi_queue_wake_fn fn,
                               void *ud);

/** One outcome or renewal for dsysi_queue_batch(). */
enum { DSYSI_Q_COMPLETE = 1, DSYSI_Q_FAIL, DSYSI_Q_RELEASE, DSYSI_Q_HEARTBEAT };
typedef struct dsysi_qout {
  int kind;
  int64_t id, token;
  const char *text;  /* result (complete) / error (fail) */
  int64_t lease_ms;  /* heartbeat */
  int rc;            /* out */
  int dead;          /* out (fail) */
} dsysi_qout;

/**
 * Run the n outcomes/renewals (each with its own result in rc) and, if
 * claim_max > 0, a claim of up to claim_max jobs, all queued at once into
 * the group commit (normally one transaction). Texts are not validated.
 * @return the claim's result (0, DSYS_EAGAIN, ...) or 0 without a claim.
 */
int dsysi_queue_batch(dsys_queue *q, dsysi_qout *outs, size_t n,
                      const char *const *queues, size_t nqueues,
                      const char *worker, int64_t lease_ms, size_t claim_max,
                      dsys_job **jobs, size_t *njobs);

#endif
