/*
 * dsys-faultd: the fault detector daemon (HTTP API: "Fault detector" in
 * the deployment contract; see docs/reference/faultd.md). Checks every
 * instance the registry knows (or static --target NAME=URL entries) and the
 * gateway, serves the status routes and a live event stream.
 *
 * Prints "listening URL" once it listens (port 0 picks a port). SIGTERM or
 * SIGINT ends the event streams, drains in-flight requests and exits 0.
 */
#include <stdio.h>
#include <string.h>
#include <distsys/distsys.h>
#include "leader.h"

static const dsys_option extra[] = {
    {"registry", "DSYS_REGISTRY", DSYS_OPT_STRING, NULL,
     "registry to learn instances from: http://HOST:PORT (dsys-registryd) or sqlite:///path"},
    {"target", "DSYS_TARGET", DSYS_OPT_LIST, NULL, "static instance TYPE/NAME=URL or NAME=URL (type = NAME)"},
    {"gateway", "DSYS_GATEWAY", DSYS_OPT_STRING, NULL, "the gateway to check and mirror metrics from"},
    {"interval", "DSYS_INTERVAL", DSYS_OPT_DURATION, "5s", "check cycle interval"},
    {"interval-ms", "DSYS_INTERVAL_MS", DSYS_OPT_ALIAS, "interval", NULL},
    {"timeout", "DSYS_TIMEOUT", DSYS_OPT_DURATION, "3s", "timeout of one check"},
    {"timeout-ms", "DSYS_TIMEOUT_MS", DSYS_OPT_ALIAS, "timeout", NULL},
    {"slow", "DSYS_SLOW", DSYS_OPT_DURATION, "1s", "an answer slower than this is a slow response"},
    {"slow-ms", "DSYS_SLOW_MS", DSYS_OPT_ALIAS, "slow", NULL},
    {"fail-threshold", "DSYS_FAIL_THRESHOLD", DSYS_OPT_INT, "3", "consecutive failures that make an instance CRITICAL"},
    {"alert-log", "DSYS_ALERT_LOG", DSYS_OPT_STRING, NULL, "append alerts as JSON lines to this file"},
    {"leader-lock", "DSYS_LEADER_LOCK", DSYS_OPT_STRING, NULL,
     "locks URL (sqlite:///path, postgresql://..., etcd://... shared by the detectors): the detectors elect one "
     "leader, and only it writes alerts (all keep checking and serving)"},
    {"leader-ttl", "DSYS_LEADER_TTL", DSYS_OPT_DURATION, "10s",
     "lease of the leadership: a dead leader is replaced within it"},
};

static dsys_faultd *fd;
static dsys_election *election;

static void on_role(void *ud, int leader, int64_t token) {
  fprintf(stderr, "dsys-faultd: %s (token %lld)\n",
          leader ? "leading: this detector writes the alerts" : "following: another detector alerts",
          (long long)token);
}

static int prepare(dsys_daemon *d, dsys_server_options *so, void *ud) {
  const dsys_config *cfg = dsys_daemon_config(d);
  int64_t interval = 0, timeout = 0, slow = 0, thr = 0;
  dsys_config_get_duration_ms(cfg, "interval", &interval);
  dsys_config_get_duration_ms(cfg, "timeout", &timeout);
  dsys_config_get_duration_ms(cfg, "slow", &slow);
  dsys_config_get_int(cfg, "fail-threshold", &thr);
  if (interval <= 0 || timeout <= 0 || slow <= 0 || thr <= 0 || thr > 1000000) {
    fprintf(stderr, "dsys-faultd: --interval, --timeout, --slow and --fail-threshold must be positive\n");
    return DSYS_EINVAL;
  }
  if (!dsys_config_get(cfg, "registry") && !dsys_config_count(cfg, "target")) {
    fprintf(stderr, "dsys-faultd: give --registry URL (or static --target NAME=URL)\n");
    return DSYS_EINVAL;
  }
  return 0;
}

/* "TYPE/NAME=URL" or "NAME=URL" */
static int add_target(const char *spec) {
  const char *eq = strchr(spec, '=');
  if (!eq || eq == spec || !eq[1]) return DSYS_EINVAL;
  char left[256];
  snprintf(left, sizeof left, "%.*s", (int)(eq - spec), spec);
  char *slash = strchr(left, '/');
  const char *name = left;
  if (slash) {
    *slash = '\0';
    name = slash + 1;
  }
  return dsys_faultd_add_target(fd, left, name, eq + 1);
}

static int mount(dsys_daemon *d, void *ud) {
  const dsys_config *cfg = dsys_daemon_config(d);
  dsys_client_options pco;
  dsys_daemon_client_tls(cfg, "peer", &pco, NULL, 0); /* checked by the shell */
  int64_t thr = 0;
  dsys_config_get_int(cfg, "fail-threshold", &thr);
  dsys_faultd_options fo = {.size = sizeof fo, .registry = dsys_daemon_registry(d),
                            .gateway_url = dsys_config_get(cfg, "gateway"),
                            .fail_threshold = (uint32_t)thr,
                            .alert_log = dsys_config_get(cfg, "alert-log"), .client = &pco};
  dsys_config_get_duration_ms(cfg, "interval", &fo.interval_ms);
  dsys_config_get_duration_ms(cfg, "timeout", &fo.timeout_ms);
  dsys_config_get_duration_ms(cfg, "slow", &fo.slow_ms);
  int rc = daemon_leader_open(cfg, "dsys-faultd", "faultd-alerts", on_role, &election);
  if (rc) return rc;
  fo.election = election;
  rc = dsys_faultd_new(&fd, &fo);
  for (size_t i = 0; !rc && i < dsys_config_count(cfg, "target"); i++)
    if ((rc = add_target(dsys_config_get_nth(cfg, "target", i)))) {
      fprintf(stderr, "dsys-faultd: bad --target (%s): %s\n",
              rc == DSYS_EURL || rc == DSYS_ESCHEME ? dsys_strerror(rc)
              : rc == DSYS_EEXIST                   ? "target named twice"
                                                    : "want [TYPE/]NAME=URL",
              dsys_config_get_nth(cfg, "target", i));
      return DSYS_EINVAL;
    }
  if (!rc) rc = dsys_faultd_mount(fd, dsys_daemon_server(d));
  if (rc) fprintf(stderr, "dsys-faultd: %s\n", dsys_strerror(rc));
  return rc;
}

/* Ends the event streams and answers waiting checks, so the drain does not
 * wait on them. */
static void drain(dsys_daemon *d, void *ud) { dsys_faultd_shutdown(fd); }

static void unmount(dsys_daemon *d, void *ud) {
  dsys_faultd_free(fd);
  dsys_election_resign(election); /* hands the alerts over at once */
}

int main(int argc, char **argv) {
  dsys_daemon_spec spec = {
      .size = sizeof spec, .progname = "dsys-faultd",
      .summary = "The fault detector of the reference deployment (docs/reference/http-api.md).",
      .default_name = "faultd", .default_listen = "http://127.0.0.1:3004",
      .extra = extra, .nextra = sizeof extra / sizeof extra[0],
      .prepare = prepare, .mount = mount, .drain = drain, .unmount = unmount,
      .without = DSYS_DAEMON_NO_IDENTITY_TOKEN | DSYS_DAEMON_NO_IDENTITY_KEY};
  return dsys_daemon_main(&spec, argc, argv);
}
