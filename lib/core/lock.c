/* The slow (contended) half of the futex lock in core/lock.h. */
#include <unistd.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include "core/lock.h"

/* The contended path of dsysi_lock_acquire: mark the lock as having
 * waiters and sleep until it is free. */
void dsysi_lock_wait(dsysi_lock *l, int c) {
  if (c != 2) c = atomic_exchange_explicit(&l->v, 2, memory_order_acquire);
  while (c != 0) {
    syscall(SYS_futex, &l->v, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
    c = atomic_exchange_explicit(&l->v, 2, memory_order_acquire);
  }
}

void dsysi_lock_wake(dsysi_lock *l) {
  syscall(SYS_futex, &l->v, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}
