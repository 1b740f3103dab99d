/*
 * dsys-faultd: the fault detector daemon (HTTP API: "Fault detector" in
 * the deployment contract; see docs/reference/faultd.md). Checks every
 * instance the registry knows (or static --target NAME=URL entries) and the
 * gateway, serves the status routes and a live event stream.
 *
 * Prints "listening URL" once it listens (port 0 picks a port). SIGTERM or
 * SIGINT ends the event streams, drains in-flight requests and exits 0.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <distsys/distsys.h>

static const dsys_option opts[] = {
    {"listen", "DSYS_LISTEN", DSYS_OPT_STRING, "http://127.0.0.1:3004", "where to listen (port 0 picks one)"},
    {"registry", "DSYS_REGISTRY", DSYS_OPT_STRING, NULL,
     "registry to learn instances from: http://HOST:PORT (dsys-registryd) or sqlite:///path"},
    {"target", "DSYS_TARGET", DSYS_OPT_LIST, NULL, "static instance TYPE/NAME=URL or NAME=URL (type = NAME)"},
    {"gateway", "DSYS_GATEWAY", DSYS_OPT_STRING, NULL, "the gateway to check and mirror metrics from"},
    DSYS_DAEMON_PEER_OPTIONS,
    {"interval-ms", "DSYS_INTERVAL_MS", DSYS_OPT_INT, "5000", "check cycle interval"},
    {"timeout-ms", "DSYS_TIMEOUT_MS", DSYS_OPT_INT, "3000", "timeout of one check"},
    {"slow-ms", "DSYS_SLOW_MS", DSYS_OPT_INT, "1000", "an answer slower than this is a slow response"},
    {"fail-threshold", "DSYS_FAIL_THRESHOLD", DSYS_OPT_INT, "3", "consecutive failures that make an instance CRITICAL"},
    {"alert-log", "DSYS_ALERT_LOG", DSYS_OPT_STRING, NULL, "append alerts as JSON lines to this file"},
    {"log-format", "DSYS_LOG_FORMAT", DSYS_OPT_STRING, "text", "text or json"},
    {"help", NULL, DSYS_OPT_BOOL, NULL, "show this help"},
    {"version", NULL, DSYS_OPT_BOOL, NULL, "show the version"},
};
#define NOPTS (sizeof opts / sizeof opts[0])
#define PROG "dsys-faultd"

static int fail(dsys_config *cfg, const char *what, const char *detail) {
  fprintf(stderr, PROG ": %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  dsys_config_free(cfg);
  return 2;
}

/* "TYPE/NAME=URL" or "NAME=URL" */
static int add_target(dsys_faultd *fd, const char *spec) {
  const char *eq = strchr(spec, '=');
  if (!eq || eq == spec || !eq[1]) return DSYS_EINVAL;
  char left[256], type[256];
  snprintf(left, sizeof left, "%.*s", (int)(eq - spec), spec);
  char *slash = strchr(left, '/');
  const char *name = left;
  if (slash) {
    *slash = '\0';
    snprintf(type, sizeof type, "%s", left);
    name = slash + 1;
  } else {
    snprintf(type, sizeof type, "%s", left);
  }
  return dsys_faultd_add_target(fd, type, name, eq + 1);
}

int main(int argc, char **argv) {
  dsys_config *cfg = NULL;
  int st = dsys_program_start(&cfg, opts, NOPTS, argc, argv, PROG,
                              "The fault detector of the reference deployment (HTTP-API.md).");
  if (st >= 0) return st;
  int64_t interval = 0, timeout = 0, slow = 0, thr = 0;
  dsys_config_get_int(cfg, "interval-ms", &interval);
  dsys_config_get_int(cfg, "timeout-ms", &timeout);
  dsys_config_get_int(cfg, "slow-ms", &slow);
  dsys_config_get_int(cfg, "fail-threshold", &thr);
  if (interval <= 0 || timeout <= 0 || slow <= 0 || thr <= 0 || thr > 1000000)
    return fail(cfg, "--interval-ms, --timeout-ms, --slow-ms and --fail-threshold must be positive", NULL);
  const char *rurl = dsys_config_get(cfg, "registry");
  size_t ntargets = dsys_config_count(cfg, "target");
  if (!rurl && !ntargets) return fail(cfg, "give --registry URL (or static --target NAME=URL)", NULL);

  dsys_client_options pco;
  char tls_err[128];
  if (dsys_daemon_client_tls(cfg, "peer", &pco, tls_err, sizeof tls_err))
    return fail(cfg, tls_err, NULL);

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  dsys_registry *reg = NULL;
  if (rurl) {
    char err[256] = "";
    dsys_registry_options ro = {.size = sizeof ro, .client = &pco};
    int rc = dsys_registry_open(&reg, rurl, NULL, &ro, err, sizeof err);
    if (rc) {
      fprintf(stderr, PROG ": cannot open the registry %s: %s %s\n", rurl, dsys_strerror(rc), err);
      dsys_config_free(cfg);
      return 1;
    }
  }
  dsys_faultd_options fo = {.size = sizeof fo, .registry = reg,
                            .gateway_url = dsys_config_get(cfg, "gateway"),
                            .interval_ms = interval, .timeout_ms = timeout, .slow_ms = slow,
                            .fail_threshold = (uint32_t)thr,
                            .alert_log = dsys_config_get(cfg, "alert-log"), .client = &pco};
  dsys_faultd *fd = NULL;
  dsys_server *srv = NULL;
  int rc = dsys_faultd_new(&fd, &fo);
  for (size_t i = 0; !rc && i < ntargets; i++)
    if ((rc = add_target(fd, dsys_config_get_nth(cfg, "target", i)))) {
      fprintf(stderr, PROG ": bad --target (%s): %s\n",
              rc == DSYS_EURL || rc == DSYS_ESCHEME ? dsys_strerror(rc)
              : rc == DSYS_EEXIST ? "target named twice" : "want [TYPE/]NAME=URL",
              dsys_config_get_nth(cfg, "target", i));
      dsys_faultd_free(fd);
      dsys_registry_close(reg);
      dsys_config_free(cfg);
      return 2;
    }
  dsys_server_options so = {.size = sizeof so, .name = "faultd"};
  dsys_metrics *met = NULL;
  if (!rc) rc = dsys_server_new(&srv, &so);
  if (!rc) rc = dsys_metrics_new(&met);
  if (!rc) rc = dsys_server_metrics(srv, met);
  if (!rc) rc = dsys_metrics_mount(srv, met); /* GET /metrics */
  if (!rc) rc = dsys_metrics_process(met);
  if (!rc) rc = dsys_faultd_mount(fd, srv);
  if (!rc) rc = dsys_server_listen(srv, dsys_config_get(cfg, "listen"));
  if (rc) {
    fprintf(stderr, PROG ": cannot start on %s: %s\n", dsys_config_get(cfg, "listen"), dsys_strerror(rc));
    dsys_faultd_shutdown(fd);
    dsys_server_free(srv);
    dsys_faultd_free(fd);
    dsys_metrics_free(met);
    dsys_registry_close(reg);
    dsys_config_free(cfg);
    return 1;
  }
  printf("listening %s\n", dsys_server_url(srv, 0));
  fflush(stdout);
  int sig;
  sigwait(&set, &sig);
  dsys_log_write(DSYS_LOG_INFO, "faultd", "stopping");
  dsys_faultd_shutdown(fd); /* ends event streams, answers waiting checks */
  dsys_server_stop(srv, 5000);
  dsys_server_free(srv);
  dsys_faultd_free(fd);
  dsys_metrics_free(met);
  dsys_registry_close(reg);
  dsys_config_free(cfg);
  return 0;
}
