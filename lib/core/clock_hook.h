/*
 * The optional timer hook of the clocks, for the deterministic simulation
 * (tools/sim): a timer's callback runs on the clock's one timer thread, on
 * behalf of whoever added the timer; the hook tags each timer when it is
 * added and is told the tag around its callback, so the simulation
 * attributes the callback to the right simulated node. NULL in production
 * (one predictable branch per timer added and per timer run). Also the
 * offset clocks of tests (below).
 */
#ifndef DSYSI_CLOCK_HOOK_H
#define DSYSI_CLOCK_HOOK_H

#include <stdint.h>
#include <distsys/clock.h>

typedef struct dsysi_timer_hook {
  int (*tag)(void);         /* at dsys_timer_add, on the adding thread */
  int (*enter)(int tag);    /* before the callback (returns the tag to
                               restore); after it, with that tag */
} dsysi_timer_hook;

/** Set before any timer is added; never changed while timers run. */
extern const dsysi_timer_hook *dsysi_timer_hook_ptr;

/**
 * A real clock (true monotonic time, timers on the real clock's thread)
 * whose wall time is the system's plus wall_offset_ms: a host whose NTP is
 * off, for tests of clock skew between processes of one test. Free it
 * with dsys_clock_free() once nothing uses it (its timers belong to the
 * real clock). @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
int dsysi_clock_offset_new(dsys_clock **out, int64_t wall_offset_ms);

#endif
