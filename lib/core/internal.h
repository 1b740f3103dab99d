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

#endif
