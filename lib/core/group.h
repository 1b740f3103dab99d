/*
 * Group commit: operations of many threads run as one group by one of
 * them (the leader), so that they share one transaction and one flush.
 *
 * A caller links its operations (a chain, usually one) and calls
 * dsysi_group_execute(). The first caller that finds no group running
 * becomes the leader: it takes up to max_batch pending operations, calls
 * run() with them (outside the lock) and wakes the others. Callers that
 * arrive meanwhile queue up and form the next group, so under load every
 * group carries the calls of all threads, and with one thread each call
 * is a group of one (no added wait: nobody sleeps for a group to fill).
 * run() sets each operation's own result. Up to max_groups groups may run
 * at once (a server backend with one connection per group); then the
 * calls of different threads are not ordered among themselves.
 *
 * Embed dsysi_group_op in the caller's operation (first member, or use
 * offsetof) and keep it alive until dsysi_group_execute() returns.
 */
#ifndef DSYSI_GROUP_H
#define DSYSI_GROUP_H

#include <pthread.h>

typedef struct dsysi_group_op {
  struct dsysi_group_op *next; /* in the chain, then in the group */
  int *left;                   /* the caller's count of ops not yet run */
} dsysi_group_op;

/** Runs one group (ops linked through next, NULL-terminated); sets every
 *  op's result. Called with no lock held, by the leader's thread. */
typedef void (*dsysi_group_run_fn)(void *ud, dsysi_group_op *group);

typedef struct dsysi_group {
  pthread_mutex_t mu;
  pthread_cond_t cv; /* a group finished */
  dsysi_group_op *pending, **tail;
  int running, max_groups, max_batch;
  unsigned long long groups; /* groups run so far (tests, statistics) */
  dsysi_group_run_fn run;
  void *ud;
} dsysi_group;

/** Initialise: max_batch ops per group at most (>= 1), max_groups groups
 *  running at once (>= 1). */
void dsysi_group_init(dsysi_group *g, int max_batch, int max_groups,
                      dsysi_group_run_fn run, void *ud);
/** Release; no call may be in progress. */
void dsysi_group_destroy(dsysi_group *g);
/** Queue the chain first..last (linked through next; last's next is
 *  overwritten) and return when every op of it has been run by a group.
 *  A chain may be split between groups. */
void dsysi_group_execute(dsysi_group *g, dsysi_group_op *first,
                         dsysi_group_op *last);

/** Ops queued and not yet taken by a leader (tests: wait until calls of
 *  several threads are queued). */
int dsysi_group_pending(dsysi_group *g);
/** Groups run so far. */
unsigned long long dsysi_group_count(dsysi_group *g);

#endif
