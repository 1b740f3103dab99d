/*
 * Group commit: operations of many threads run as one group by one of
 * them (the leader), so that they share one transaction and one flush.
 * Serves the job queue's front end (lib/state/queue.c) and the SQLite
 * store's writes (lib/state/store_sqlite.c).
 *
 * A caller links its operations (a chain, usually one) and calls
 * dsysi_group_execute(). The first caller that finds no group running
 * becomes the leader: it takes up to max_batch pending operations, calls
 * run() with them (outside the lock) and wakes the callers whose chains it
 * completed, each once, on its own futex. Callers that arrive meanwhile
 * queue up and form the next group. With one group at a time the leader
 * runs that next group itself at once (at most LEAD_MORE more groups after
 * its own chain is done, then it hands the lead to one waiter), so the
 * connection goes from one commit to the next without waiting for a
 * thread to be scheduled; and when more than two threads used the handle
 * lately, a leader first waits, without CPU and at most one group's
 * average run time, until each of them has queued its call ("gathering",
 * see gather_target() in group.c). A lone caller never waits: each of its
 * calls is a group of one. run() sets each operation's own result.
 *
 * Up to max_groups groups may run at once (a server backend with one
 * connection per group); then leaders do not continue nor gather (an
 * arriving caller starts a group of its own), and the calls of different
 * threads are not ordered among themselves. A chain may be split between
 * groups; its caller returns when every op of it has been run.
 *
 * Embed dsysi_group_op in the caller's operation (first member, or use
 * offsetof) and keep it alive until dsysi_group_execute() returns.
 */
#ifndef DSYSI_GROUP_H
#define DSYSI_GROUP_H

#include <pthread.h>
#include <stdint.h>

typedef struct dsysi_group_op {
  struct dsysi_group_op *next; /* in the chain, then in the group */
  int *word;                   /* the caller's futex word (group.c) */
} dsysi_group_op;

/** Runs one group (ops linked through next, NULL-terminated); sets every
 *  op's result. Called with no lock held, by the leader's thread. */
typedef void (*dsysi_group_run_fn)(void *ud, dsysi_group_op *group);

/* Chains counted per window when gathering (group.c). */
enum { DSYSI_GROUP_WINDOW = 64 };

typedef struct dsysi_group {
  pthread_mutex_t mu;
  dsysi_group_op *pending, **tail;
  int running, max_groups, max_batch;
  unsigned long long groups; /* groups run so far (tests, statistics) */
  unsigned long long gathers; /* times a leader waited for callers (same) */
  dsysi_group_run_fn run;
  void *ud;
  /* gathering (one group at a time only): see gather_target() */
  int64_t group_us;    /* moving average of a group's run time */
  int window_chains;   /* chains queued in the current window */
  int callers, callers_prev; /* threads seen in the current / last window */
  const void *seen[DSYSI_GROUP_WINDOW]; /* the current window's threads */
  int arrived;         /* chains queued since the last group was taken */
  int gather_want;     /* the gathering leader waits for this many */
  int gathering;       /* a leader waits for gather_want */
  int gather_seq;      /* futex the gathering leader sleeps on */
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
