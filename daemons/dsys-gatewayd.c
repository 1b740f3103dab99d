/*
 * dsys-gatewayd: the deployment's load balancer. Discovers instances from
 * the registry (or takes static upstreams), proxies /api/auth, /api/data and
 * /api/compute by default, on one event loop per core.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include <distsys/gateway.h>
#include <distsys/metrics.h>

static const dsys_option opts[] = {
    {"listen", "DSYS_LISTEN", DSYS_OPT_STRING, "http://127.0.0.1:3000", "where to listen (port 0 picks one)"},
    {"registry", "DSYS_REGISTRY", DSYS_OPT_STRING, NULL,
     "registry to discover instances from: http://HOST:PORT (dsys-registryd) or sqlite:///path"},
    {"upstream", "DSYS_UPSTREAM", DSYS_OPT_LIST, NULL, "static upstream NAME=URL,URL,... (no registry needed)"},
    {"route", "DSYS_ROUTE", DSYS_OPT_LIST, NULL,
     "PREFIX=NAME: proxy paths under PREFIX to upstream NAME ('/=NAME' catches all); default "
     "/api/auth=auth, /api/data=data, /api/compute=compute"},
    {"policy", "DSYS_POLICY", DSYS_OPT_STRING, "round-robin",
     "balancing policy: round-robin, weighted-round-robin, least-request, random, ring-hash, maglev"},
    {"loops", "DSYS_LOOPS", DSYS_OPT_INT, "0", "event-loop threads (0: one per CPU)"},
    {"try-timeout-ms", "DSYS_TRY_TIMEOUT_MS", DSYS_OPT_INT, "15000", "timeout of one upstream attempt"},
    {"log-format", "DSYS_LOG_FORMAT", DSYS_OPT_STRING, "text", "text or json"},
    {"access-log", "DSYS_ACCESS_LOG", DSYS_OPT_BOOL, NULL, "log one line per request"},
    {"help", NULL, DSYS_OPT_BOOL, NULL, "show this help"},
    {"version", NULL, DSYS_OPT_BOOL, NULL, "show the version"},
};
#define NOPTS (sizeof opts / sizeof opts[0])

static int fail(const char *msg, const char *arg) {
  fprintf(stderr, "dsys-gatewayd: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
  return 2;
}

/* "NAME=URL,URL" -> the gateway; or from the registry when no URL. */
static int add_upstream(dsys_gateway *gw, const char *spec, const char *policy) {
  const char *eq = strchr(spec, '=');
  if (!eq || eq == spec || !eq[1]) return DSYS_EINVAL;
  char name[128];
  snprintf(name, sizeof name, "%.*s", (int)(eq - spec), spec);
  char *list = strdup(eq + 1);
  const char *urls[64];
  size_t n = 0;
  for (char *save, *t = strtok_r(list, ",", &save); t && n < 64; t = strtok_r(NULL, ",", &save))
    urls[n++] = t;
  int rc = n ? dsys_gateway_add_upstream(gw, name, urls, n, policy) : DSYS_EINVAL;
  free(list);
  return rc;
}

int main(int argc, char **argv) {
  char err[256];
  dsys_config *cfg;
  if (dsys_config_parse(&cfg, opts, NOPTS, argc, argv, err, sizeof err)) return fail(err, NULL);
  if (dsys_config_get_bool(cfg, "help")) {
    char *u;
    dsys_config_usage(opts, NOPTS, "dsys-gatewayd",
                      "The load balancer of the reference deployment (HTTP-API.md).", &u);
    fputs(u, stdout);
    dsys_free(u);
    return 0;
  }
  if (dsys_config_get_bool(cfg, "version")) {
    printf("dsys-gatewayd (libdistsys %s)\n", dsys_version());
    return 0;
  }
  dsys_log_format lf;
  if (dsys_log_format_parse(dsys_config_get(cfg, "log-format"), &lf))
    return fail("--log-format must be text or json", NULL);
  dsys_log_set_format(lf);
  int64_t loops = 0, try_ms = 0;
  dsys_config_get_int(cfg, "loops", &loops);
  dsys_config_get_int(cfg, "try-timeout-ms", &try_ms);
  if (loops < 0 || loops > 256) return fail("--loops must be 0..256", NULL);
  const char *policy = dsys_config_get(cfg, "policy");
  int32_t pol;
  if (dsys_lb_policy_parse(policy, &pol)) return fail("unknown --policy", policy);

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  dsys_registry *reg = NULL;
  const char *rurl = dsys_config_get(cfg, "registry");
  if (rurl) {
    int rc = dsys_registry_open(&reg, rurl, NULL, NULL, err, sizeof err);
    if (rc) {
      fprintf(stderr, "dsys-gatewayd: cannot open the registry %s: %s %s\n", rurl, dsys_strerror(rc), err);
      return 1;
    }
  }
  dsys_gateway_options go = {.size = sizeof go, .registry = reg, .try_timeout_ms = try_ms};
  dsys_gateway *gw;
  if (dsys_gateway_new(&gw, &go)) return 1;
  int rc = 0;
  for (size_t i = 0; !rc && i < dsys_config_count(cfg, "upstream"); i++)
    if ((rc = add_upstream(gw, dsys_config_get_nth(cfg, "upstream", i), policy)))
      return fail("bad --upstream (want NAME=URL,URL,...)", dsys_config_get_nth(cfg, "upstream", i));
  size_t nroutes = dsys_config_count(cfg, "route");
  static const char *defaults[] = {"/api/auth=auth", "/api/data=data", "/api/compute=compute"};
  for (size_t i = 0; i < (nroutes ? nroutes : 3); i++) {
    const char *r = nroutes ? dsys_config_get_nth(cfg, "route", i) : defaults[i];
    const char *eq = strchr(r, '=');
    if (!eq || eq == r || !eq[1]) return fail("bad --route (want PREFIX=NAME)", r);
    char prefix[256];
    snprintf(prefix, sizeof prefix, "%.*s", (int)(eq - r), r);
    rc = dsys_gateway_add_route(gw, prefix, eq + 1);
    if (rc == DSYS_ENOTFOUND && reg) { /* discover NAME from the registry */
      rc = dsys_gateway_add_upstream(gw, eq + 1, NULL, 0, policy);
      if (!rc) rc = dsys_gateway_add_route(gw, prefix, eq + 1);
    }
    if (rc) return fail(rc == DSYS_ENOTFOUND ? "no such upstream (give --upstream or --registry)" : dsys_strerror(rc), r);
  }
  dsys_server_options so = {.size = sizeof so, .name = "gateway",
                            .event_loops = loops ? (uint32_t)loops : (uint32_t)sysconf(_SC_NPROCESSORS_ONLN),
                            .access_log = dsys_config_get_bool(cfg, "access-log")};
  dsys_server *srv;
  if (dsys_server_new(&srv, &so)) return 1;
  /* GET /metrics (before the gateway's catch-all proxy route): requests
   * per route, process, and per upstream endpoint stats and breakers. */
  dsys_metrics *met = NULL;
  if (dsys_metrics_new(&met) || dsys_server_metrics(srv, met) || dsys_metrics_mount(srv, met) ||
      dsys_metrics_process(met))
    return 1;
  for (size_t i = 0; i < dsys_gateway_upstream_count(gw); i++) {
    const char *uname;
    dsys_upstream *up;
    if (dsys_gateway_upstream_at(gw, i, &uname, &up) || dsys_metrics_upstream(met, uname, up))
      return 1;
  }
  if (dsys_gateway_mount(gw, srv)) return 1;
  if ((rc = dsys_server_listen(srv, dsys_config_get(cfg, "listen")))) {
    fprintf(stderr, "dsys-gatewayd: cannot listen on %s: %s\n", dsys_config_get(cfg, "listen"), dsys_strerror(rc));
    return 1;
  }
  printf("listening %s\n", dsys_server_url(srv, 0));
  fflush(stdout);
  int sig;
  sigwait(&set, &sig);
  dsys_log_write(DSYS_LOG_INFO, "gateway", "stopping");
  dsys_server_stop(srv, 5000);
  dsys_server_free(srv);
  dsys_gateway_free(gw);
  dsys_metrics_free(met);
  dsys_registry_close(reg);
  dsys_config_free(cfg);
  return 0;
}
