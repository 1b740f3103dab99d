/*
 * The shared-cause rule between outlier detection and the breakers of an
 * upstream's endpoints: failures that most instances of a service have at
 * once come from something they share (their database down), and taking
 * the instances out one by one leaves none once it is back.
 */
#ifndef DSYSI_SHARED_CAUSE_H
#define DSYSI_SHARED_CAUSE_H

#include <distsys/breaker.h>
#include <distsys/health.h>

/* 1 when more than half of the other usable endpoints of h are in a
 * failure streak too (the rule that skips outlier ejections); 0 when not,
 * when id is unknown, or outlier detection is off (no streak counted). */
int dsysi_health_shared_failure(dsys_health *h, const char *id);

/* Asked before b opens (from CLOSED, or again from HALF_OPEN), without
 * b's lock held: nonzero when the failures have a shared cause. Then b
 * does not open: a CLOSED breaker clears its window, a HALF_OPEN one
 * closes. Set once, before b is used. */
typedef int (*dsysi_breaker_shared_fn)(void *ud, const char *name);
void dsysi_breaker_set_shared(dsys_breaker *b, dsysi_breaker_shared_fn fn, void *ud);

#endif
