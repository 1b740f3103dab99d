/*
 * dsys-registryd: the service registry daemon (HTTP API: "Registry" in the
 * deployment contract; see docs/reference/registry-service.md).
 *
 *   dsys-registryd [--listen URL] [--store memory|sqlite:///path]
 *                  [--ttl-ms N] [--reap-ms N] [--identity-public-key PEM]
 *                  [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]
 *                  [--log-format text|json]
 *
 * Prints "listening URL" once it listens (port 0 picks a port). SIGTERM or
 * SIGINT answers parked blocking queries, drains in-flight requests and
 * exits 0.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <distsys/distsys.h>

static const dsys_option opts[] = {
    {"listen", "DSYS_LISTEN", DSYS_OPT_STRING, "http://127.0.0.1:3005", "where to listen (http://, unix://)"},
    {"store", "DSYS_REGISTRY_STORE", DSYS_OPT_STRING, "memory", "memory, or sqlite:///path (survives restarts)"},
    {"ttl-ms", "DSYS_REGISTRY_TTL_MS", DSYS_OPT_INT, "30000", "an instance without heartbeat this long is unhealthy"},
    {"reap-ms", "DSYS_REGISTRY_REAP_MS", DSYS_OPT_INT, "300000", "and is removed after this long (must exceed --ttl-ms)"},
    DSYS_DAEMON_TLS_OPTIONS,
    {"identity-public-key", "DSYS_IDENTITY_PUBLIC_KEY", DSYS_OPT_STRING, NULL,
     "require an identity token signed by this deployment key (PEM) on register, "
     "heartbeat and deregister: no rogue process can register itself"},
    {"log-format", "DSYS_LOG_FORMAT", DSYS_OPT_STRING, "text", "text or json"},
    {"help", NULL, DSYS_OPT_BOOL, NULL, "show this help"},
    {"version", NULL, DSYS_OPT_BOOL, NULL, "show the version"},
};
#define NOPTS (sizeof opts / sizeof opts[0])
#define PROG "dsys-registryd"

static int fail(dsys_config *cfg, const char *what, const char *detail) {
  fprintf(stderr, PROG ": %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  dsys_config_free(cfg);
  return 2;
}

int main(int argc, char **argv) {
  char err[256] = "";
  dsys_config *cfg = NULL;
  int st = dsys_program_start(&cfg, opts, NOPTS, argc, argv, PROG,
                              "The libdistsys service registry daemon.");
  if (st >= 0) return st;
  int64_t ttl = 0, reap = 0;
  dsys_config_get_int(cfg, "ttl-ms", &ttl);
  dsys_config_get_int(cfg, "reap-ms", &reap);
  if (ttl <= 0 || reap <= ttl) return fail(cfg, "--ttl-ms must be positive and --reap-ms larger", NULL);
  const char *why = dsys_daemon_tls_check(dsys_config_get(cfg, "listen"), dsys_config_get(cfg, "tls-cert"),
                                          dsys_config_get(cfg, "tls-key"),
                                          dsys_config_get(cfg, "tls-client-ca"));
  if (why) return fail(cfg, why, NULL);
  const char *store = dsys_config_get(cfg, "store");
  const char *backend = "memory", *target = NULL;
  if (!strncmp(store, "sqlite://", 9) && store[9]) {
    backend = "sqlite";
    target = store + 9; /* sqlite:///var/lib/x.sqlite -> /var/lib/x.sqlite */
  } else if (strcmp(store, "memory")) {
    return fail(cfg, "--store must be memory or sqlite:///path", store);
  }

  /* Block the stop signals before any library thread starts. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  dsys_identity_verifier *ver = NULL;
  const char *pk = dsys_config_get(cfg, "identity-public-key");
  if (pk && *pk) {
    int vr = dsys_identity_verifier_new(&ver, pk, NULL);
    if (vr) return fail(cfg, "cannot use the identity public key", dsys_strerror(vr));
  }
  dsys_registry_options ro = {.size = sizeof ro, .ttl_ms = ttl, .reap_ms = reap};
  dsys_registry *reg = NULL;
  int rc = dsys_registry_open(&reg, backend, target, &ro, err, sizeof err);
  if (rc) {
    dsys_identity_verifier_free(ver);
    return fail(cfg, "cannot open the store", err[0] ? err : dsys_strerror(rc));
  }
  dsys_server *srv = NULL;
  dsys_registry_service *svc = NULL;
  dsys_server_options so = {.size = sizeof so, .name = "registry", .access_log = 1,
                            .tls_cert_file = dsys_config_get(cfg, "tls-cert"),
                            .tls_key_file = dsys_config_get(cfg, "tls-key"),
                            .tls_client_ca_file = dsys_config_get(cfg, "tls-client-ca")};
  dsys_metrics *met = NULL;
  rc = dsys_server_new(&srv, &so);
  if (!rc) rc = dsys_metrics_new(&met);
  if (!rc) rc = dsys_server_metrics(srv, met);
  if (!rc) rc = dsys_metrics_mount(srv, met); /* GET /metrics */
  if (!rc) rc = dsys_metrics_process(met);
  dsys_registry_service_options svo = {.size = sizeof svo, .identity = ver};
  if (!rc) rc = dsys_registry_service_mount(srv, reg, &svo, &svc);
  if (!rc) rc = dsys_server_listen(srv, dsys_config_get(cfg, "listen"));
  if (rc) {
    fprintf(stderr, PROG ": cannot listen on %s: %s\n", dsys_config_get(cfg, "listen"),
            dsys_strerror(rc));
    dsys_server_free(srv);
    dsys_registry_service_free(svc);
    dsys_metrics_free(met);
    dsys_registry_close(reg);
    dsys_identity_verifier_free(ver);
    dsys_config_free(cfg);
    return 1;
  }
  printf("listening %s\n", dsys_server_url(srv, 0));
  fflush(stdout);
  snprintf(err, sizeof err, "store %s, ttl %lld ms, reap %lld ms, identities %s", store,
           (long long)ttl, (long long)reap, ver ? "required" : "not required");
  dsys_log_write(DSYS_LOG_INFO, "registry", err);
  int sig;
  sigwait(&set, &sig);
  dsys_log_write(DSYS_LOG_INFO, "registry", "stopping");
  dsys_registry_service_drain(svc); /* long polls answer now */
  dsys_server_stop(srv, 5000);
  dsys_server_free(srv);
  dsys_registry_service_free(svc);
  dsys_metrics_free(met);
  dsys_registry_close(reg);
  dsys_identity_verifier_free(ver);
  dsys_config_free(cfg);
  return 0;
}
