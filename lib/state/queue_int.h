/* Internal interface between the queue and its workers. */
#ifndef DSYSI_QUEUE_INT_H
#define DSYSI_QUEUE_INT_H

#include <distsys/queue.h>

/** The queue's clock. */
dsys_clock *dsysi_queue_clock(dsys_queue *q);
/** Wait (real time, at most timeout_ms) until a local submit/release/fail
 *  may have made work available, dsysi_queue_wake() is called, or
 *  *stop_flag becomes nonzero. */
void dsysi_queue_wait_work(dsys_queue *q, int64_t timeout_ms,
                           const int *stop_flag);
/** Wake every dsysi_queue_wait_work() waiter. */
void dsysi_queue_wake(dsys_queue *q);
/** Full-jitter backoff in ms after attempt n: uniform in
 *  [0, min(cap, base * 2^(n-1))]. */
int64_t dsysi_queue_backoff(int attempt, int64_t base, int64_t cap);

#endif
