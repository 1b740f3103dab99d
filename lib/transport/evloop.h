/*
 * A small single-threaded event loop (epoll + a timer heap + a wakeup
 * eventfd) for the gateway's hot path: libmicrohttpd in external epoll mode
 * and the upstream HTTP/1.1 connections live in the same loop, so a request
 * never changes threads. Everything here runs on the loop's thread except
 * dsysi_loop_post/dsysi_loop_stop, which any thread may call.
 */
#ifndef DSYSI_EVLOOP_H
#define DSYSI_EVLOOP_H

#include <stddef.h>
#include <stdint.h>

typedef struct dsysi_loop dsysi_loop;

/** I/O callback: events are EPOLLIN/EPOLLOUT/EPOLLERR/EPOLLHUP bits. */
typedef void (*dsysi_io_fn)(dsysi_loop *l, int fd, uint32_t events, void *ud);
/** Timer or posted-task callback. */
typedef void (*dsysi_loop_fn)(dsysi_loop *l, void *ud);
/** Called once per loop iteration after I/O and timers (MHD's run). */
typedef void (*dsysi_tick_fn)(dsysi_loop *l, void *ud);
/** Returns how long the loop may sleep at most in ms (-1: no limit). */
typedef int64_t (*dsysi_timeout_fn)(dsysi_loop *l, void *ud);

typedef struct dsysi_watch {
  int fd;
  dsysi_io_fn fn;
  void *ud;
} dsysi_watch;

int dsysi_loop_new(dsysi_loop **out);
void dsysi_loop_free(dsysi_loop *l);

/** Watch fd (edge-triggered when et != 0). w must stay valid until removed. */
int dsysi_loop_add(dsysi_loop *l, dsysi_watch *w, uint32_t events, int et);
int dsysi_loop_mod(dsysi_loop *l, dsysi_watch *w, uint32_t events, int et);
void dsysi_loop_del(dsysi_loop *l, dsysi_watch *w);

/** Run fn after delay_us; returns a nonzero timer id (0 on failure). */
uint64_t dsysi_loop_timer(dsysi_loop *l, int64_t delay_us, dsysi_loop_fn fn,
                          void *ud);
/** Cancel a pending timer (no-op when it already ran). */
void dsysi_loop_cancel(dsysi_loop *l, uint64_t id);

/** Run fn on the loop's thread soon; safe from any thread. */
int dsysi_loop_post(dsysi_loop *l, dsysi_loop_fn fn, void *ud);

/** Install the per-iteration hook and sleep bound (both optional). */
void dsysi_loop_set_tick(dsysi_loop *l, dsysi_tick_fn tick,
                         dsysi_timeout_fn timeout, void *ud);

/** Run until dsysi_loop_stop. */
void dsysi_loop_run(dsysi_loop *l);
/** Ask the loop to return from dsysi_loop_run; safe from any thread. */
void dsysi_loop_stop(dsysi_loop *l);

/** Run fn(l, ud) when the loop is freed (after its thread stopped), so
 *  that per-loop state built by users can be torn down while the loop is
 *  still valid. Hooks run in reverse order of registration. */
int dsysi_loop_on_free(dsysi_loop *l, dsysi_loop_fn fn, void *ud);

/**
 * Per-loop state of a module, found by key (the address of something of
 * the module's): a zeroed block of size bytes made on first use. When the
 * loop is freed (after its thread stopped; before the dsysi_loop_on_free
 * hooks) fini(l, block) runs, newest block first, then the block is freed.
 * Loop thread only (and l's freeing thread for fini). NULL: out of memory.
 */
void *dsysi_loop_local(dsysi_loop *l, const void *key, size_t size,
                       dsysi_loop_fn fini);

/**
 * Per-loop caches of finished objects, one per kind, so that a hot path
 * reuses memory that stays in its thread instead of a malloc and a free
 * per request (glibc's per-thread cache keeps 7 chunks of a size: a burst
 * of finished requests goes past it, and objects over 1 KiB never enter
 * it). kind: a static int of the module, zero at start (given a slot on
 * first use; at most 7 kinds). get: a cached object (contents as left,
 * its first word overwritten) or NULL (empty, or not on a loop thread).
 * put: keeps obj when fewer than max are kept (0), else the caller frees
 * it (-1); objects still kept when the loop is freed go to dtor. The
 * calling thread's loop only.
 */
void *dsysi_loop_cache_get(int *kind);
int dsysi_loop_cache_put(int *kind, void *obj, unsigned max,
                         void (*dtor)(void *));

/** The loop running on the calling thread, or NULL. */
dsysi_loop *dsysi_loop_current(void);

/** Monotonic now in microseconds (the loop's timebase). */
int64_t dsysi_loop_now_us(void);

#endif
