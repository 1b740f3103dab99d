/*
 * Your own service in the deterministic simulation (docs/reference/
 * simulation.md, "Your own services").
 *
 * A tiny "ticket" service hands out numbers: POST /ticket answers the next
 * number from a counter in a shared store (dsys_store_incr: atomic). Two
 * instances run on two nodes, a client node takes tickets through a
 * dsys_upstream over both, and the network loses and delays messages and
 * cuts links. The invariant, checked as the run goes: no two acknowledged
 * tickets carry the same number (a retry may skip numbers, never repeat
 * one). Build with the simulation runtime (tools/sim) and the library
 * linked statically, with -rdynamic:
 *
 *   examples/sim-counter SEED      prints "seed N ok hash H tickets T"
 *   examples/sim-counter SEED bug  the client reuses the last number when
 *                                  a call fails (a planted bug): caught
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "net.h"
#include "sim.h"
#include "world.h"

static dsys_store *counter_store;

/* The service: the same code a real deployment would run. */
static void take_ticket(dsys_request *req, void *ud) {
  (void)ud;
  int64_t n = 0;
  int rc = dsys_store_incr(counter_store, "ticket", 1, &n);
  if (rc) {
    dsys_respond_error(req, 503, "DSYS_EIO", "store unavailable");
    return;
  }
  char body[64];
  snprintf(body, sizeof body, "{\"ticket\":%lld}", (long long)n);
  dsys_respond_json(req, 200, body);
}

#define MAXT 4096
static long long seen[MAXT];
static int nseen;

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s SEED [bug]\n", argv[0]);
    return 2;
  }
  int bug = argc > 2 && !strcmp(argv[2], "bug");
  sim_options so = {.seed = strtoull(argv[1], NULL, 10)};
  sim_start(&so); /* first thing: from here on one thread runs at a time */
  dsys_log_set_level(DSYS_LOG_ERROR);
  sim_net_start(SIM_F_LATENCY | SIM_F_DROP | SIM_F_PARTITION);
  if (dsys_store_open(&counter_store, "memory:", NULL)) sim_fail("store");

  /* Two instances, each a node: a server on inproc://NAME. */
  sim_instance inst[2];
  const char *names[2] = {"ticket-1", "ticket-2"};
  for (int i = 0; i < 2; i++) {
    sim_instance_begin(&inst[i], names[i], "ticket");
    dsys_server_route(inst[i].srv, "POST", "/ticket", take_ticket, NULL);
    sim_instance_end(&inst[i], 0); /* no registry in this example */
  }

  /* The client node: an upstream over both instances, with its retries. */
  int cnode = sim_node_new("client");
  sim_node_enter(cnode);
  dsys_upstream *up;
  dsys_upstream_options uo = {.size = sizeof uo, .service = "ticket"};
  if (dsys_upstream_new(&up, &uo)) sim_fail("upstream");
  for (int i = 0; i < 2; i++) dsys_upstream_add(up, names[i], inst[i].url, 1);
  int targets[3] = {inst[0].node, inst[1].node, cnode};
  sim_faults_start(targets, 3);

  long long last = 0;
  for (int step = 0; step < 200 && nseen < MAXT; step++) {
    usleep((useconds_t)sim_rand_below(50000));
    dsys_call c = {.size = sizeof c, .method = "POST", .path = "/ticket", .timeout_ms = 500};
    dsys_reply *r = NULL;
    long long t = -1;
    if (dsys_upstream_call(up, &c, &r) == 0 && dsys_reply_status(r) == 200) {
      size_t n;
      const char *b = dsys_reply_body(r, &n);
      const char *p = strstr(b, "\"ticket\":");
      if (p) t = atoll(p + 9);
    }
    dsys_reply_free(r);
    if (t < 0 && bug && last) t = last; /* PLANTED BUG: reuse on failure */
    if (t < 0) continue;
    for (int i = 0; i < nseen; i++)
      if (seen[i] == t) sim_fail("ticket %lld handed out twice", t);
    seen[nseen++] = t;
    last = t;
    sim_trace("ticket %lld", t);
  }
  sim_faults_stop();
  sim_node_enter(0);
  dsys_upstream_free(up);
  for (int i = 0; i < 2; i++) {
    sim_instance_stop(&inst[i]);
    sim_instance_free(&inst[i]);
  }
  dsys_store_close(counter_store);
  printf("seed %s ok hash %016llx tickets %d\n", argv[1], (unsigned long long)sim_trace_hash(),
         nseen);
  fflush(stdout);
  _exit(0);
}
