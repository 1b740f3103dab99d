/*
 * dsys-registryd: the service registry daemon (HTTP API: "Registry" in the
 * deployment contract; see docs/reference/registry-service.md). Flags: see
 * --help. Prints "listening URL" once it listens (port 0 picks a port).
 * SIGTERM or SIGINT answers parked blocking queries, drains in-flight
 * requests and exits 0.
 */
#include <stdio.h>
#include <string.h>
#include <distsys/distsys.h>

static const dsys_option extra[] = {
    {"store", "DSYS_REGISTRY_STORE", DSYS_OPT_STRING, "memory",
     "memory, sqlite:///path (survives restarts), postgresql:// URI or "
     "etcd://HOST:PORT[,HOST:PORT...]/PREFIX (shared by hosts)"},
    {"ttl", "DSYS_REGISTRY_TTL", DSYS_OPT_DURATION, "30s",
     "an instance without heartbeat this long is unhealthy"},
    {"ttl-ms", "DSYS_REGISTRY_TTL_MS", DSYS_OPT_ALIAS, "ttl", NULL},
    {"reap", "DSYS_REGISTRY_REAP", DSYS_OPT_DURATION, "5m",
     "and is removed after this long (must exceed --ttl)"},
    {"reap-ms", "DSYS_REGISTRY_REAP_MS", DSYS_OPT_ALIAS, "reap", NULL},
    {"identity-public-key", "DSYS_IDENTITY_PUBLIC_KEY", DSYS_OPT_STRING, NULL,
     "require an identity token signed by this deployment key (PEM) on register, "
     "heartbeat and deregister: no rogue process can register itself"},
    {"access-log", "DSYS_ACCESS_LOG", DSYS_OPT_BOOL, "true", "log one line per request"},
};

static struct {
  int64_t ttl, reap;
  const char *backend, *target;
  dsys_registry *reg;
  dsys_registry_service *svc;
} g_;

static int prepare(dsys_daemon *d, dsys_server_options *so, void *ud) {
  const dsys_config *cfg = dsys_daemon_config(d);
  dsys_config_get_duration_ms(cfg, "ttl", &g_.ttl);
  dsys_config_get_duration_ms(cfg, "reap", &g_.reap);
  if (g_.ttl <= 0 || g_.reap <= g_.ttl) {
    fprintf(stderr, "dsys-registryd: --ttl must be positive and --reap larger\n");
    return DSYS_EINVAL;
  }
  const char *store = dsys_config_get(cfg, "store");
  g_.backend = "memory";
  if (!strncmp(store, "sqlite://", 9) && store[9]) {
    g_.backend = "sqlite";
    g_.target = store + 9; /* sqlite:///var/lib/x.sqlite -> /var/lib/x.sqlite */
  } else if (!strncmp(store, "postgresql://", 13) || !strncmp(store, "postgres://", 11)) {
    g_.backend = "postgresql";
    g_.target = store; /* the URI as libpq takes it */
  } else if (!strncmp(store, "etcd://", 7) && store[7]) {
    g_.backend = store; /* the URL names the backend and its target */
  } else if (strcmp(store, "memory")) {
    fprintf(stderr, "dsys-registryd: --store must be memory, sqlite:///path, postgresql://... "
                    "or etcd://HOST:PORT[,HOST:PORT...]/PREFIX\n");
    return DSYS_EINVAL;
  }
  return 0;
}

static int mount(dsys_daemon *d, void *ud) {
  char err[256] = "";
  dsys_registry_options ro = {.size = sizeof ro, .ttl_ms = g_.ttl, .reap_ms = g_.reap};
  int rc = dsys_registry_open(&g_.reg, g_.backend, g_.target, &ro, err, sizeof err);
  if (rc) {
    fprintf(stderr, "dsys-registryd: cannot open the store: %s\n", err[0] ? err : dsys_strerror(rc));
    return DSYS_EINVAL;
  }
  /* identities on writes only: reads stay open */
  dsys_registry_service_options svo = {.size = sizeof svo,
                                       .identity = dsys_daemon_identity_verifier(d)};
  if ((rc = dsys_registry_service_mount(dsys_daemon_server(d), g_.reg, &svo, &g_.svc))) {
    fprintf(stderr, "dsys-registryd: %s\n", dsys_strerror(rc));
    return rc;
  }
  snprintf(err, sizeof err, "store %s, ttl %lld ms, reap %lld ms, identities %s",
           /* a PostgreSQL URI may hold a password: only its kind is shown */
           strcmp(g_.backend, "postgresql") ? dsys_config_get(dsys_daemon_config(d), "store")
                                            : "postgresql",
           (long long)g_.ttl,
           (long long)g_.reap, svo.identity ? "required" : "not required");
  dsys_log_write(DSYS_LOG_INFO, dsys_daemon_name(d), err);
  return 0;
}

/* Parked blocking queries answer now, so the drain does not wait on them. */
static void drain(dsys_daemon *d, void *ud) { dsys_registry_service_drain(g_.svc); }

static void unmount(dsys_daemon *d, void *ud) {
  dsys_registry_service_free(g_.svc);
  dsys_registry_close(g_.reg);
}

int main(int argc, char **argv) {
  dsys_daemon_spec spec = {
      .size = sizeof spec, .progname = "dsys-registryd",
      .summary = "The libdistsys service registry daemon.",
      .default_name = "registry", .default_listen = "http://127.0.0.1:3005",
      .extra = extra, .nextra = sizeof extra / sizeof extra[0],
      .mount = mount, .unmount = unmount, .drain = drain, .prepare = prepare,
      .without = DSYS_DAEMON_NO_REGISTRY | DSYS_DAEMON_NO_PEER | DSYS_DAEMON_NO_IDENTITY_TOKEN,
      .own_identity_check = 1};
  return dsys_daemon_main(&spec, argc, argv);
}
