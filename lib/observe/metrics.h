/* Internals of metrics.c shared with the service layer. */
#ifndef DSYS_OBSERVE_METRICS_H
#define DSYS_OBSERVE_METRICS_H

#include <distsys/metrics.h>
#include <distsys/upstream.h>

/* Set the series of dsys_metrics_upstream() for upstream u named name, now
 * (from a collect hook whose set of upstreams changes: the gateway's). */
void dsysi_metrics_collect_upstream(dsys_metrics *r, const char *name, dsys_upstream *u);

#endif
