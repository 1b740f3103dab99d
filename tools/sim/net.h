/* The simulated network and the fault driver (tools/sim/net.c). */
#ifndef DSYS_SIM_NET_H
#define DSYS_SIM_NET_H

#include <stdint.h>

/* Fault kinds (a bit each). */
enum {
  SIM_F_LATENCY = 1,   /* per-message latency with spikes: reorders messages */
  SIM_F_DROP = 2,      /* lost requests and lost replies */
  SIM_F_PARTITION = 4, /* links cut (a node isolated, or a pair) for a while */
  SIM_F_PAUSE = 8,     /* a node not scheduled for a while */
  SIM_F_SKEW = 16,     /* a node's wall clock off by up to 2 s */
  SIM_F_CRASH = 32,    /* a node crashed and restarted (the scenario's hook) */
  SIM_F_ALL = 63
};

/** Parse "none", "all" or a comma list of latency, drop, partition, pause,
 *  skew, crash. @return 0 or -1. */
int sim_faults_parse(const char *spec, unsigned *mask);

/** Install the link model on the inproc transport with the faults of
 *  `mask` (latency applies to every link between two different nodes). */
void sim_net_start(unsigned mask);
/** The listener inproc://name lives on `node`. */
void sim_net_name(const char *name, int node);
/** Start the fault driver (a thread of node 0) over nodes[0..n). */
void sim_faults_start(const int *nodes, int n);
/** The fault driver fails the run when it still runs run_ns after now
 *  (the clients' run hangs; 0: no limit). */
void sim_faults_limit(int64_t run_ns);
/** Stop injecting faults and heal: links restored, pauses ended, skews
 *  removed. Returns when done. */
void sim_faults_stop(void);
/** Checker: `node` is an instance of service `group` behind the watcher
 *  (the gateway, sim_net_watch). */
void sim_net_group(int node, const char *group);
/** Checker: requests from node `watcher` other than health checks (path
 *  ending in /health) must not go to an instance it cannot have reached
 *  (link cut either way, or the instance paused) for longer than
 *  allow_ns, while another instance of its group was reachable all along
 *  and is usable in the watcher's view (other_usable: 1 when an instance
 *  of group other than `except` takes traffic): by then its health rules
 *  must have taken it out. The outage's clock restarts when the answer
 *  of a health check (sent by the watcher, answered within
 *  health_timeout_ns) from the instance reaches the watcher: then the
 *  watcher rightly saw it alive. */
void sim_net_watch(int watcher, int64_t allow_ns, int64_t health_timeout_ns,
                   int (*other_usable)(const char *group, const char *except, void *ud), void *ud);

/** The crash fault: the driver calls crash(node, down_ns, ud) on a node it
 *  picked; the scenario kills it (sim_net_down), tears it down and brings
 *  it back after about down_ns, in a thread of its own, and returns 0; or
 *  returns -1 when it cannot now (another crash under way). */
void sim_faults_on_crash(int (*crash)(int node, int64_t down_ns, void *ud), void *ud);
/** A node is down (1: every message to or from it is lost from now on,
 *  the ones in flight included; for the dead-instance checker it is
 *  unreachable until it is up again) or up again (0). When the watcher
 *  comes back, it is a new process: it knows nothing of earlier outages. */
void sim_net_down(int node, int down);
int sim_net_is_down(int node);

/** Messages lost so far, faults injected so far. */
void sim_net_counts(uint64_t *dropped, uint64_t *faults);
/** Crashes injected so far. */
uint64_t sim_net_crashes(void);

#endif
