/*
 * Building blocks of simulated deployments (tools/sim/world.c): a node with
 * a server on inproc://NAME registered with the simulated registry, a
 * client call that checks its own deadline, and the bookkeeping of a run.
 * Used by the scenarios and by examples/sim-*.c.
 */
#ifndef DSYS_SIM_WORLD_H
#define DSYS_SIM_WORLD_H

#include <distsys/distsys.h>
#include "net.h"
#include "scenarios.h"
#include "sim.h"

/** A service instance in the simulation: its node, server, registration. */
typedef struct sim_instance {
  char name[48], type[24], url[64];
  int node;
  dsys_server *srv;
  dsys_registry *reg;        /* this node's registry client (http over inproc) */
  dsys_registration *agent;  /* heartbeats */
} sim_instance;

/** Create node `name` (type: its service type) and a server of 2 threads in
 *  it, not yet listening. The calling thread is left in the new node: what
 *  it creates next (the service) belongs to the node. */
void sim_instance_begin(sim_instance *in, const char *name, const char *type);
/** The same node's process starts again (after sim_instance_kill and
 *  sim_instance_free): a new server, not yet listening; the calling thread
 *  is left in the node, as by sim_instance_begin. */
void sim_instance_restart(sim_instance *in);
/** The node crashed (its messages already lost, sim_net_down): stop its
 *  heartbeats and its server (waiting for its handlers, whose answers are
 *  lost). Then free the service and
 *  call sim_instance_free. */
void sim_instance_kill(sim_instance *in);
/** Listen on inproc://name and register with the registry at
 *  inproc://registry (heartbeat_ms); back to node 0. */
void sim_instance_end(sim_instance *in, int64_t heartbeat_ms);
/** Stop: deregister (bounded), stop the server (drain up to 2 s). The
 *  service module is freed by the caller after this, then
 *  sim_instance_free. */
void sim_instance_stop(sim_instance *in);
void sim_instance_free(sim_instance *in);

/** One answered call: status (or a DSYS_E code, negative, when none) and
 *  the body parsed as JSON (NULL if not JSON). */
typedef struct sim_answer {
  int status;
  char *body;
  struct json_object *json;
} sim_answer;

/** A client call with a deadline of timeout_ms; fails the run (sim_fail)
 *  if it does not return within the deadline plus 1 s of slack (a hang).
 *  Counts into res. */
sim_answer sim_call(dsys_client *c, sim_result *res, const char *method, const char *url,
                    const char *path, const char *body, int64_t timeout_ms);
/** The same with one more request header (hname: NULL for none). */
sim_answer sim_call_h(dsys_client *c, sim_result *res, const char *method, const char *url,
                      const char *path, const char *body, int64_t timeout_ms, const char *hname,
                      const char *hvalue);
void sim_answer_free(sim_answer *a);
/** A string member of the answer's JSON (path of member names, NULL-ended)
 *  or NULL. */
const char *sim_json_str(const sim_answer *a, ...);
/** An integer member (same path rules); 1 when found. */
int sim_json_int(const sim_answer *a, long long *out, ...);

#endif
