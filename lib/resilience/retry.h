/* Internals of the retry policy shared with dsys_upstream. Thread-safety:
 * as <distsys/retry.h> (any thread; the budget has its mutex). */
#ifndef DSYSI_RETRY_H
#define DSYSI_RETRY_H

#include <distsys/retry.h>

/** Take one unit of the retry budget for an extra attempt that is not a
 *  retry (a hedge). 0 when taken, -1 when the budget is spent. */
int dsysi_retry_budget_take(dsys_retry *r);

/** The policy's max_attempts (with its default applied). */
uint32_t dsysi_retry_max_attempts(const dsys_retry *r);

#endif
