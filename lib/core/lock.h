/*
 * A small futex mutex for short critical sections that are nearly never
 * contended (a request's state): zero-initialised means unlocked, no init
 * or destroy, and the uncontended lock and unlock are one atomic
 * instruction each, inline (a pthread mutex pair costs ~65 instructions
 * through the PLT). 0 unlocked, 1 locked, 2 locked with waiters (Drepper,
 * "Futexes Are Tricky", mutex 2). Not recursive; no condition variables.
 * Slow paths in lock.c.
 */
#ifndef DSYSI_LOCK_H
#define DSYSI_LOCK_H

#include <stdatomic.h>

typedef struct dsysi_lock {
  atomic_int v;
} dsysi_lock;

/** Slow path of dsysi_lock_acquire (c: the value it found). */
void dsysi_lock_wait(dsysi_lock *l, int c);
/** Slow path of dsysi_lock_release: wake one waiter. */
void dsysi_lock_wake(dsysi_lock *l);

/** Take the lock (sleeping while another thread holds it). */
static inline void dsysi_lock_acquire(dsysi_lock *l) {
  int c = 0;
  if (!atomic_compare_exchange_strong_explicit(&l->v, &c, 1, memory_order_acquire,
                                               memory_order_relaxed))
    dsysi_lock_wait(l, c);
}

/** Release the lock, waking a waiter if there is one. */
static inline void dsysi_lock_release(dsysi_lock *l) {
  if (atomic_exchange_explicit(&l->v, 0, memory_order_release) == 2) dsysi_lock_wake(l);
}

#endif
