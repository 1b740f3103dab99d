/* Building blocks of simulated deployments (world.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <json-c/json.h>
#include "world.h"

void sim_instance_begin(sim_instance *in, const char *name, const char *type) {
  memset(in, 0, sizeof *in);
  snprintf(in->name, sizeof in->name, "%s", name);
  snprintf(in->type, sizeof in->type, "%s", type);
  snprintf(in->url, sizeof in->url, "inproc://%s", name);
  in->node = sim_node_new(name);
  sim_net_name(name, in->node);
  sim_instance_restart(in);
}

void sim_instance_restart(sim_instance *in) {
  sim_node_enter(in->node);
  /* Two threads: the machine's processor count must not change a run. */
  dsys_server_options so = {.size = sizeof so, .threads = 2, .name = in->name};
  if (dsys_server_new(&in->srv, &so)) sim_fail("server %s", in->name);
}

void sim_instance_kill(sim_instance *in) {
  /* A dead process does not deregister: the registry forgets it by its
   * TTL. The agent's stop would try (its messages are lost anyway). */
  if (in->agent) dsys_registration_stop(in->agent);
  in->agent = NULL;
  /* Its handlers still running end on their own bounded waits (what they
   * send is lost): wait for them, up to 10 s, before the service under
   * them is freed (a stop that cuts them off returns while they run). */
  dsys_server_stop(in->srv, 10000);
}

void sim_instance_end(sim_instance *in, int64_t heartbeat_ms) {
  int rc = dsys_server_listen(in->srv, in->url);
  if (rc) sim_fail("listen %s: %s", in->url, dsys_strerror(rc));
  if (heartbeat_ms > 0) {
    if (dsys_registry_open(&in->reg, "inproc://registry", NULL, NULL, NULL, 0))
      sim_fail("registry client of %s", in->name);
    dsys_instance inst = {.id = in->name, .type = in->type, .url = in->url};
    dsys_registration_options ro = {.size = sizeof ro, .heartbeat_ms = heartbeat_ms,
                                    .retry_ms = heartbeat_ms / 2};
    if ((rc = dsys_registration_start(&in->agent, in->reg, &inst, &ro)))
      sim_fail("registration of %s: %s", in->name, dsys_strerror(rc));
  }
  sim_node_enter(0);
}

void sim_instance_stop(sim_instance *in) {
  if (in->agent) dsys_registration_stop(in->agent);
  in->agent = NULL;
  dsys_server_stop(in->srv, 2000);
}

void sim_instance_free(sim_instance *in) {
  dsys_server_free(in->srv);
  dsys_registry_close(in->reg);
  in->srv = NULL;
  in->reg = NULL;
}

/* Calls in flight, checked each time virtual time jumps: a call past its
 * deadline plus 1 s is a hang, reported while it hangs. */
#define MAX_FLIGHT 256
static struct flight {
  int64_t deadline;
  const char *method, *path;
  int node;
} flights[MAX_FLIGHT];
static int hooked;

static void check_flights(int64_t now, void *ud) {
  (void)ud;
  for (int i = 0; i < MAX_FLIGHT; i++)
    if (flights[i].deadline && now > flights[i].deadline)
      sim_fail("%s: %s %s still unanswered 1 s past its deadline (a hang)",
               sim_node_name(flights[i].node), flights[i].method, flights[i].path);
}

sim_answer sim_call(dsys_client *c, sim_result *res, const char *method, const char *url,
                    const char *path, const char *body, int64_t timeout_ms) {
  return sim_call_h(c, res, method, url, path, body, timeout_ms, NULL, NULL);
}

sim_answer sim_call_h(dsys_client *c, sim_result *res, const char *method, const char *url,
                      const char *path, const char *body, int64_t timeout_ms, const char *hname,
                      const char *hvalue) {
  sim_answer a = {0};
  dsys_header h[2];
  size_t nh = 0;
  if (body) h[nh++] = (dsys_header){"Content-Type", "application/json"};
  if (hname) h[nh++] = (dsys_header){hname, hvalue};
  dsys_call call = {.size = sizeof call, .method = method, .url = url, .path = path,
                    .headers = nh ? h : NULL, .nheaders = nh, .body = body,
                    .body_len = body ? strlen(body) : 0, .timeout_ms = timeout_ms};
  dsys_reply *r = NULL;
  int64_t t0 = sim_now_ns();
  res->requests++;
  if (!hooked) {
    sim_on_time(check_flights, NULL);
    hooked = 1;
  }
  int slot = 0;
  while (slot < MAX_FLIGHT && flights[slot].deadline) slot++;
  if (slot == MAX_FLIGHT) sim_fail("more than %d calls in flight", MAX_FLIGHT);
  flights[slot] = (struct flight){t0 + (timeout_ms + 1000) * 1000000, method, path, sim_node_current()};
  int rc = dsys_client_do(c, &call, &r);
  flights[slot].deadline = 0;
  int64_t took = sim_now_ns() - t0;
  /* Invariant: every request is answered or times out within its deadline. */
  res->checks++;
  if (took > (timeout_ms + 1000) * 1000000)
    sim_fail("%s %s%s took %.3f s, past its %lld ms deadline (a hang)", method, url, path,
             took / 1e9, (long long)timeout_ms);
  if (rc) {
    a.status = rc;
    if (rc == DSYS_ETIMEDOUT) res->timeouts++;
    return a;
  }
  res->answered++;
  a.status = dsys_reply_status(r);
  size_t n = 0;
  const char *b = dsys_reply_body(r, &n);
  a.body = strndup(b ? b : "", n);
  a.json = json_tokener_parse(a.body);
  dsys_reply_free(r);
  return a;
}

void sim_answer_free(sim_answer *a) {
  free(a->body);
  json_object_put(a->json);
  memset(a, 0, sizeof *a);
}

static json_object *walk(const sim_answer *a, va_list ap) {
  json_object *o = a->json;
  const char *k;
  while (o && (k = va_arg(ap, const char *))) {
    json_object *next = NULL;
    if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, k, &next))
      return NULL;
    o = next;
  }
  return o;
}

const char *sim_json_str(const sim_answer *a, ...) {
  va_list ap;
  va_start(ap, a);
  json_object *o = walk(a, ap);
  va_end(ap);
  return o && json_object_is_type(o, json_type_string) ? json_object_get_string(o) : NULL;
}

int sim_json_int(const sim_answer *a, long long *out, ...) {
  va_list ap;
  va_start(ap, out);
  json_object *o = walk(a, ap);
  va_end(ap);
  if (!o || !json_object_is_type(o, json_type_int)) return 0;
  *out = json_object_get_int64(o);
  return 1;
}
