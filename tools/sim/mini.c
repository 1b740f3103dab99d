/* The smallest deployment: registry, one data instance registered with it,
 * one client creating and reading keys every 6 s (an hour of virtual time
 * is 600 steps). Network faults are not injected. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "world.h"

typedef struct mini {
  dsys_client *cli;
  long steps;
  sim_result *res;
} mini;

static void *client(void *arg) {
  mini *m = arg;
  for (long i = 0; i < m->steps; i++) {
    char body[128], path[64];
    snprintf(body, sizeof body, "{\"key\":\"k%ld\",\"value\":%ld}", i, i);
    sim_answer a = sim_call(m->cli, m->res, "POST", "inproc://data-1", "/api/data", body, 2000);
    sim_trace("client POST k%ld -> %d", i, a.status);
    sim_answer_free(&a);
    snprintf(path, sizeof path, "/api/data/k%ld", i);
    a = sim_call(m->cli, m->res, "GET", "inproc://data-1", path, NULL, 2000);
    sim_trace("client GET k%ld -> %d", i, a.status);
    long long v = -1;
    m->res->checks++;
    if (a.status != 200 || !sim_json_int(&a, &v, "data", "value", NULL) || v != i)
      sim_fail("acknowledged write k%ld not read back: %d %.200s", i, a.status,
               a.body ? a.body : "");
    sim_answer_free(&a);
    sleep(6);
  }
  return NULL;
}

void scen_mini(const sim_config *cfg, sim_result *res) {
  mini m = {.steps = cfg->steps, .res = res};
  sim_net_start(0);
  if (dsys_client_new(&m.cli, NULL)) sim_fail("client");
  sim_instance reg, data;
  sim_instance_begin(&reg, "registry", "registry");
  dsys_registry *regdb;
  if (dsys_registry_open(&regdb, "memory", NULL, NULL, NULL, 0)) sim_fail("registry open");
  dsys_registry_service *rsvc;
  if (dsys_registry_service_mount(reg.srv, regdb, NULL, &rsvc)) sim_fail("mount registry");
  sim_instance_end(&reg, 0);

  sim_instance_begin(&data, "data-1", "data");
  dsys_store *st;
  if (dsys_store_open(&st, "memory:", NULL)) sim_fail("store");
  dsys_data_options dopt = {.size = sizeof dopt, .store = st};
  dsys_data_service *dsvc;
  if (dsys_service_data_mount(data.srv, &dopt, &dsvc)) sim_fail("mount data");
  sim_instance_end(&data, 1000);

  sim_node_enter(sim_node_new("client"));
  pthread_t th;
  pthread_create(&th, NULL, client, &m);
  sim_node_enter(0);
  pthread_join(th, NULL);

  sim_instance_stop(&data);
  dsys_service_data_free(dsvc);
  sim_instance_free(&data);
  dsys_store_close(st);
  dsys_registry_service_drain(rsvc);
  sim_instance_stop(&reg);
  dsys_registry_service_free(rsvc);
  sim_instance_free(&reg);
  dsys_registry_close(regdb);
  dsys_client_free(m.cli);
}
