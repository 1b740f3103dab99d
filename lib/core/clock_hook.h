/*
 * The optional timer hook of the clocks, for the deterministic simulation
 * (tools/sim): a timer's callback runs on the clock's one timer thread, on
 * behalf of whoever added the timer; the hook tags each timer when it is
 * added and is told the tag around its callback, so the simulation
 * attributes the callback to the right simulated node. NULL in production
 * (one predictable branch per timer added and per timer run).
 */
#ifndef DSYSI_CLOCK_HOOK_H
#define DSYSI_CLOCK_HOOK_H

typedef struct dsysi_timer_hook {
  int (*tag)(void);         /* at dsys_timer_add, on the adding thread */
  int (*enter)(int tag);    /* before the callback (returns the tag to
                               restore); after it, with that tag */
} dsysi_timer_hook;

/** Set before any timer is added; never changed while timers run. */
extern const dsysi_timer_hook *dsysi_timer_hook_ptr;

#endif
