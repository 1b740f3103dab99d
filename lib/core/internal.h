/*
 * The core helpers every layer uses, in one include (as curl's
 * curlx/curlx.h): each topic's declarations live in the header named after
 * its source file (core/buf.h for buf.c, ...), and this header includes
 * those that need nothing beyond libc and <distsys/...>. core/json.h and
 * core/db.h, which bring json-c and SQLite, are included where needed.
 * Not installed; dsysi_ symbols are hidden.
 */
#ifndef DSYSI_INTERNAL_H
#define DSYSI_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <distsys/common.h>
#include "core/buf.h"
#include "core/file.h"
#include "core/lock.h"
#include "core/log.h"
#include "core/pool.h"
#include "core/proc.h"
#include "core/random.h"
#include "core/rng.h"
#include "core/str.h"
#include "core/ticker.h"

/** A small number for the calling thread, handed out round robin on its
 *  first call (per translation unit): the index of its shard of counters
 *  that several threads would otherwise all write (cache-line bouncing
 *  between cores on every request). Take it modulo the shard count. */
static inline unsigned dsysi_thread_slot(void) {
  static _Atomic unsigned next;
  static _Thread_local unsigned mine; /* slot + 1; 0: none yet */
  if (!mine) mine = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED) + 1;
  return mine - 1;
}

#endif
