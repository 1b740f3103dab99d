/*
 * A small fixed thread pool for blocking work (pool.c). Thread-safety:
 * dsysi_pool_submit from any thread; dsysi_pool_free once, from a thread
 * that is not one of the pool's.
 */
#ifndef DSYSI_POOL_H
#define DSYSI_POOL_H

typedef void (*dsysi_task_fn)(void *arg);
typedef struct dsysi_pool dsysi_pool;

/** Start n threads. @return 0, DSYS_ENOMEM, DSYS_EINVAL. */
int dsysi_pool_new(dsysi_pool **out, unsigned n, const char *name);
/** Queue a task. @return 0, DSYS_ENOMEM, DSYS_ESTOPPED. */
int dsysi_pool_submit(dsysi_pool *p, dsysi_task_fn fn, void *arg);
/** Run every queued task, join the threads, free. NULL-safe. */
void dsysi_pool_free(dsysi_pool *p);

#endif
