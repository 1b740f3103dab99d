/* The scenarios dsys-sim runs (one per process: the simulation owns the
 * process's threads and time). */
#ifndef DSYS_SIM_SCENARIOS_H
#define DSYS_SIM_SCENARIOS_H

#include <stdint.h>

typedef struct sim_config {
  uint64_t seed;
  long steps;         /* operations per simulated client */
  const char *faults; /* "none", "all" or a comma list (net.h) */
  const char *plant;  /* a planted bug (docs/reference/simulation.md), or NULL */
} sim_config;

typedef struct sim_result {
  long requests;  /* client requests issued */
  long answered;  /* of which answered (any status) */
  long timeouts;  /* of which ended by their deadline */
  long checks;    /* invariant checks evaluated */
  long heap_growth; /* bytes of heap in use gained over the clients' run */
} sim_result;

/** Registry + one data instance + one client doing CRUD (the smallest
 *  deployment; stage-1 smoke test). */
void scen_mini(const sim_config *cfg, sim_result *res);
/** The reference deployment with clients and checkers (deploy.c). */
void scen_deploy(const sim_config *cfg, sim_result *res);
/** 1 when `name` is a planted bug scen_deploy knows. */
int scen_plant_known(const char *name);

#endif
