/* Stage-1 smoke scenario: registry + one data instance + one client. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "sim.h"
#include "scenarios.h"

static dsys_client *cli;
static long steps;
static sim_result *mres;

static int call(const char *m, const char *url, const char *path, const char *body, char **out) {
  dsys_call c = {.size = sizeof c, .method = m, .url = url, .path = path, .body = body,
                 .body_len = body ? strlen(body) : 0, .timeout_ms = 2000};
  dsys_reply *r = NULL;
  mres->requests++;
  int rc = dsys_client_do(cli, &c, &r);
  if (rc) {
    if (rc == DSYS_ETIMEDOUT) mres->timeouts++;
    return rc;
  }
  mres->answered++;
  int st = dsys_reply_status(r);
  size_t n;
  const char *b = dsys_reply_body(r, &n);
  if (out) *out = strndup(b, n);
  dsys_reply_free(r);
  return st;
}

static void *client(void *arg) {
  (void)arg;
  for (int i = 0; i < steps; i++) {
    char body[128], path[64];
    snprintf(body, sizeof body, "{\"key\":\"k%d\",\"value\":%d}", i, i);
    int st = call("POST", "inproc://data-1", "/api/data", body, NULL);
    sim_trace("client POST k%d -> %d", i, st);
    snprintf(path, sizeof path, "/api/data/k%d", i);
    char *got = NULL;
    st = call("GET", "inproc://data-1", path, NULL, &got);
    sim_trace("client GET k%d -> %d", i, st);
    if (st != 200) sim_fail("acknowledged write k%d not readable: %d", i, st);
    mres->checks++;
    free(got);
    sleep(6); /* an hour of virtual time is 600 steps */
  }
  char *list = NULL;
  int st = call("GET", "inproc://registry", "/services", NULL, &list);
  sim_trace("registry list -> %d %.60s", st, list ? list : "");
  free(list);
  return NULL;
}

void scen_mini(const sim_config *cfg, sim_result *res) {
  steps = cfg->steps;
  mres = res;
  dsys_client_new(&cli, NULL);
  int nreg = sim_node_new("registry"), nd = sim_node_new("data-1"), nc = sim_node_new("client");
  sim_node_enter(nreg);
  dsys_registry *reg;
  if (dsys_registry_open(&reg, "memory", NULL, NULL, NULL, 0)) sim_fail("registry open");
  dsys_server_options so = {.size = sizeof so, .threads = 2, .name = "registry"};
  dsys_server *rs;
  dsys_server_new(&rs, &so);
  dsys_registry_service *rsvc;
  if (dsys_registry_service_mount(rs, reg, NULL, &rsvc)) sim_fail("mount registry");
  if (dsys_server_listen(rs, "inproc://registry")) sim_fail("listen registry");
  sim_node_enter(nd);
  dsys_store *st;
  if (dsys_store_open(&st, "memory:", NULL)) sim_fail("store");
  so.name = "data-1";
  dsys_server *ds;
  dsys_server_new(&ds, &so);
  dsys_data_options dopt = {.size = sizeof dopt, .store = st, .name = "data-service"};
  dsys_data_service *dsvc;
  if (dsys_service_data_mount(ds, &dopt, &dsvc)) sim_fail("mount data");
  if (dsys_server_listen(ds, "inproc://data-1")) sim_fail("listen data");
  dsys_registry *rc;
  if (dsys_registry_open(&rc, "inproc://registry", NULL, NULL, NULL, 0)) sim_fail("reg client");
  dsys_instance inst = {.id = "data-1", .type = "data", .url = "inproc://data-1"};
  dsys_registration_options ro = {.size = sizeof ro, .heartbeat_ms = 1000};
  dsys_registration *ag;
  if (dsys_registration_start(&ag, rc, &inst, &ro)) sim_fail("registration");
  sim_node_enter(nc);
  pthread_t th;
  pthread_create(&th, NULL, client, NULL);
  sim_node_enter(0);
  pthread_join(th, NULL);
  dsys_registration_stop(ag);
  dsys_registry_close(rc);
  dsys_server_stop(ds, 1000);
  dsys_service_data_free(dsvc);
  dsys_server_free(ds);
  dsys_store_close(st);
  dsys_server_stop(rs, 1000);
  dsys_registry_service_free(rsvc);
  dsys_server_free(rs);
  dsys_registry_close(reg);
  dsys_client_free(cli);
}
