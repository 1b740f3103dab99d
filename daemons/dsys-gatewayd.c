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
#include <distsys/auth.h>
#include <distsys/services.h>

static const dsys_option opts[] = {
    {"listen", "DSYS_LISTEN", DSYS_OPT_STRING, "http://127.0.0.1:3000", "where to listen (port 0 picks one)"},
    {"registry", "DSYS_REGISTRY", DSYS_OPT_STRING, NULL,
     "registry to discover instances from: http://HOST:PORT (dsys-registryd) or sqlite:///path"},
    {"upstream", "DSYS_UPSTREAM", DSYS_OPT_LIST, NULL, "static upstream NAME=URL,URL,... (no registry needed)"},
    {"route", "DSYS_ROUTE", DSYS_OPT_LIST, NULL,
     "PREFIX=NAME: proxy paths under PREFIX to upstream NAME ('/=NAME' catches all); default "
     "/api/auth=auth, /api/data=data, /api/compute=compute"},
    {"policy", "DSYS_POLICY", DSYS_OPT_LIST, "round-robin",
     "balancing policy: round-robin, weighted-round-robin, least-request, random, ring-hash, maglev; "
     "P for every upstream, NAME=P for the routes to upstream NAME"},
    {"loops", "DSYS_LOOPS", DSYS_OPT_INT, "0", "event-loop threads (0: one per CPU)"},
    {"try-timeout-ms", "DSYS_TRY_TIMEOUT_MS", DSYS_OPT_INT, "15000", "timeout of one upstream attempt"},
    /* The edge (docs/reference/gateway.md): everything off by default. */
    {"rate-limit", "DSYS_RATE_LIMIT", DSYS_OPT_STRING, NULL, "RATE/BURST: per client address on every route (tokens/s)"},
    {"user-rate-limit", "DSYS_USER_RATE_LIMIT", DSYS_OPT_STRING, NULL, "RATE/BURST: per verified user on protected requests"},
    {"protect", "DSYS_PROTECT", DSYS_OPT_LIST, NULL,
     "PREFIX or PREFIX=writes: requests under PREFIX need a valid JWT (writes: all but GET/HEAD/OPTIONS)"},
    {"jwt-secret-file", "DSYS_JWT_SECRET_FILE", DSYS_OPT_STRING, NULL,
     "HS256 secret for --protect (else DSYS_JWT_SECRET); the auth service's secret"},
    {"cors-origin", "DSYS_CORS_ORIGIN", DSYS_OPT_LIST, NULL, "allowed CORS origin on every route ('*': any)"},
    {"idempotency-ttl-ms", "DSYS_IDEMPOTENCY_TTL_MS", DSYS_OPT_INT, "0", "replay POSTs with an Idempotency-Key this long (0: off)"},
    {"max-connections", "DSYS_MAX_CONNECTIONS", DSYS_OPT_INT, "0", "client connections per event loop (0: 1024)"},
    {"max-body", "DSYS_MAX_BODY", DSYS_OPT_INT, "0", "request body limit in bytes, larger: 413 (0: 1 MiB)"},
    {"max-header-bytes", "DSYS_MAX_HEADER_BYTES", DSYS_OPT_INT, "0",
     "per-connection memory bounding request line + headers, larger: 431 (0: 16 KiB)"},
    {"idle-timeout-s", "DSYS_IDLE_TIMEOUT_S", DSYS_OPT_INT, "0", "close silent connections (0: 60)"},
    {"request-timeout-s", "DSYS_REQUEST_TIMEOUT_S", DSYS_OPT_INT, "0",
     "each request must arrive complete within this time (slow clients; 0: off)"},
    DSYS_DAEMON_TLS_OPTIONS,
    {"upstream-ca", "DSYS_UPSTREAM_CA", DSYS_OPT_STRING, NULL,
     "PEM CA trusted for https:// upstreams and an https:// --registry (default: the system store)"},
    {"upstream-cert", "DSYS_UPSTREAM_CERT", DSYS_OPT_STRING, NULL,
     "PEM client certificate presented to https:// upstreams and registry (mutual TLS)"},
    {"upstream-key", "DSYS_UPSTREAM_KEY", DSYS_OPT_STRING, NULL, "its PEM private key"},
    {"identity-token-file", "DSYS_IDENTITY_TOKEN_FILE", DSYS_OPT_STRING, NULL,
     "the gateway's identity token, sent to services as X-Dsys-Identity (services "
     "started with --identity-public-key require it); reread when the file changes"},
    {"log-format", "DSYS_LOG_FORMAT", DSYS_OPT_STRING, "text", "text or json"},
    {"access-log", "DSYS_ACCESS_LOG", DSYS_OPT_BOOL, NULL, "log one line per request"},
    {"help", NULL, DSYS_OPT_BOOL, NULL, "show this help"},
    {"version", NULL, DSYS_OPT_BOOL, NULL, "show the version"},
};
#define NOPTS (sizeof opts / sizeof opts[0])

/* What the process holds, released by finish() on every way out, so that
 * a refused start is as clean as a stop (sanitizer builds fail a process
 * that leaks at exit). */
static struct {
  dsys_config *cfg;
  dsys_identity *ident;
  dsys_registry *reg;
  char *secret;
  size_t secret_len;
  dsys_gateway *gw;
  void *rs, *origins;
  dsys_server *srv;
  dsys_metrics *met;
} g_;

/* Wipe and free the JWT secret once the gateway has its own copy. */
static void drop_secret(void) {
  if (g_.secret) {
    explicit_bzero(g_.secret, g_.secret_len);
    dsys_free(g_.secret);
    g_.secret = NULL;
  }
}

/* Release everything (users before what they use) and return code. */
static int finish(int code) {
  dsys_server_free(g_.srv);
  dsys_gateway_free(g_.gw);
  dsys_metrics_free(g_.met);
  dsys_registry_close(g_.reg);
  dsys_identity_free(g_.ident);
  drop_secret();
  free(g_.rs);
  free(g_.origins);
  dsys_config_free(g_.cfg);
  memset(&g_, 0, sizeof g_);
  return code;
}

/* A bad flag: say which, release, exit status 2. */
static int fail(const char *msg, const char *arg) {
  fprintf(stderr, "dsys-gatewayd: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
  return finish(2);
}

/* Whether the --policy value v ("NAME=P", eq at its '=') is for upstream name. */
static int policy_is_for(const char *v, const char *eq, const char *name) {
  size_t nl = (size_t)(eq - v);
  return strlen(name) == nl && !strncmp(v, name, nl);
}

/* The policy of upstream name: its own --policy NAME=P, else the plain
 * --policy P (round-robin by default). */
static const char *policy_for(const char *name) {
  const char *all = "round-robin";
  for (size_t i = 0; i < dsys_config_count(g_.cfg, "policy"); i++) {
    const char *v = dsys_config_get_nth(g_.cfg, "policy", i), *eq = strchr(v, '=');
    if (!eq) all = v;
    else if (policy_is_for(v, eq, name)) return eq + 1;
  }
  return all;
}

/* At most this many URLs in one --upstream (a longer list is refused,
 * never cut short). */
#define MAX_URLS 64

/* "NAME=URL,URL" -> the gateway. On failure, why (for the error line). */
static int add_upstream(dsys_gateway *gw, const char *spec, const char **why) {
  *why = "want NAME=URL,URL,...";
  const char *eq = strchr(spec, '=');
  if (!eq || eq == spec || !eq[1]) return DSYS_EINVAL;
  char name[128];
  snprintf(name, sizeof name, "%.*s", (int)(eq - spec), spec);
  char *list = strdup(eq + 1);
  if (!list) return DSYS_ENOMEM;
  const char *urls[MAX_URLS];
  size_t n = 0;
  int rc = 0;
  for (char *save, *t = strtok_r(list, ",", &save); t && !rc; t = strtok_r(NULL, ",", &save)) {
    if (n == MAX_URLS) {
      *why = "more than 64 URLs";
      rc = DSYS_EINVAL;
    } else {
      urls[n++] = t;
    }
  }
  if (!rc && !n) rc = DSYS_EINVAL;
  if (!rc && (rc = dsys_gateway_add_upstream(gw, name, urls, n, policy_for(name))))
    *why = rc == DSYS_EEXIST ? "upstream named twice" : dsys_strerror(rc);
  free(list);
  return rc;
}

/* "RATE/BURST" or "RATE". */
static int parse_rate(const char *s, double *rate, uint32_t *burst) {
  if (!s) return 0;
  char *end;
  *rate = strtod(s, &end);
  if (end == s || !(*rate > 0) || *rate > 1e9) return -1;
  *burst = 0;
  if (*end == '/') {
    char *e2;
    unsigned long b = strtoul(end + 1, &e2, 10);
    if (e2 == end + 1 || *e2 || b == 0 || b > 1000000000ul) return -1;
    *burst = (uint32_t)b;
  } else if (*end) {
    return -1;
  }
  return 0;
}

typedef struct rspec {
  char prefix[256];
  char name[128];
  int32_t protect;
} rspec;

/* Each --policy names a known policy, at most one is plain, and each
 * NAME=P names an upstream some route uses: else why not, and *bad the
 * value (for fail()). */
static const char *check_policies(const rspec *r, size_t n, const char **bad) {
  int plain = 0;
  for (size_t i = 0; i < dsys_config_count(g_.cfg, "policy"); i++) {
    const char *v = dsys_config_get_nth(g_.cfg, "policy", i), *eq = strchr(v, '=');
    int32_t pol;
    *bad = v;
    if (dsys_lb_policy_parse(eq ? eq + 1 : v, &pol)) return "unknown --policy";
    if (!eq && plain++) return "--policy P given twice (NAME=P sets one upstream's)";
    size_t k = 0;
    while (eq && k < n && !policy_is_for(v, eq, r[k].name)) k++;
    if (eq && k == n) return "--policy NAME=P: no route goes to upstream NAME";
  }
  return NULL;
}

/* The longest route prefix covering path (segment boundary), or -1. */
static int covering(const rspec *r, size_t n, const char *path) {
  int best = -1;
  for (size_t i = 0; i < n; i++) {
    size_t pl = strlen(r[i].prefix);
    while (pl > 1 && r[i].prefix[pl - 1] == '/') pl--;
    int ok = pl == 1 || (!strncmp(path, r[i].prefix, pl) && (path[pl] == '\0' || path[pl] == '/'));
    if (ok && (best < 0 || pl > strlen(r[best].prefix))) best = (int)i;
  }
  return best;
}

int main(int argc, char **argv) {
  char err[256];
  dsys_config *cfg;
  int st = dsys_program_start(&cfg, opts, NOPTS, argc, argv, "dsys-gatewayd",
                              "The load balancer of the reference deployment (HTTP-API.md).");
  if (st >= 0) return st;
  g_.cfg = cfg;
  int64_t loops = 0, try_ms = 0;
  dsys_config_get_int(cfg, "loops", &loops);
  dsys_config_get_int(cfg, "try-timeout-ms", &try_ms);
  if (loops < 0 || loops > 256) return fail("--loops must be 0..256", NULL);
  const char *why = dsys_daemon_tls_check(dsys_config_get(cfg, "listen"), dsys_config_get(cfg, "tls-cert"),
                                          dsys_config_get(cfg, "tls-key"),
                                          dsys_config_get(cfg, "tls-client-ca"));
  if (why) return fail(why, NULL);
  /* one set of client TLS settings for the upstreams and the registry */
  dsys_client_options uco;
  char tls_err[128];
  if (dsys_daemon_client_tls(cfg, "upstream", &uco, tls_err, sizeof tls_err))
    return fail(tls_err, NULL);

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  const char *tf = dsys_config_get(cfg, "identity-token-file");
  if (tf && *tf) {
    int rc = dsys_identity_open(&g_.ident, tf, NULL);
    if (rc) {
      fprintf(stderr, "dsys-gatewayd: cannot use the identity token %s: %s\n", tf, dsys_strerror(rc));
      return finish(1);
    }
  }
  const char *rurl = dsys_config_get(cfg, "registry");
  if (rurl) {
    dsys_registry_options ro = {.size = sizeof ro, .client = &uco};
    int rc = dsys_registry_open(&g_.reg, rurl, NULL, &ro, err, sizeof err);
    if (rc) {
      fprintf(stderr, "dsys-gatewayd: cannot open the registry %s: %s %s\n", rurl, dsys_strerror(rc), err);
      return finish(1);
    }
  }
  dsys_registry *reg = g_.reg;
  dsys_gateway_options go = {.size = sizeof go, .registry = reg, .try_timeout_ms = try_ms,
                             .upstream_ca_file = uco.tls_ca_file,
                             .upstream_cert_file = uco.tls_cert_file,
                             .upstream_key_file = uco.tls_key_file,
                             .identity = g_.ident};
  if (dsys_config_count(cfg, "protect")) {
    /* The auth service's secret: --jwt-secret-file, else DSYS_JWT_SECRET. */
    if (dsys_auth_load_secret(dsys_config_get(cfg, "jwt-secret-file"), NULL, &g_.secret,
                              &g_.secret_len, NULL))
      return fail("--protect needs --jwt-secret-file or DSYS_JWT_SECRET", NULL);
    if (g_.secret_len < DSYS_TOKEN_SECRET_MIN)
      return fail("the JWT secret is too short (at least 32 bytes)", NULL);
    go.token_secret = g_.secret;
    go.token_secret_len = g_.secret_len;
  }
  if (dsys_gateway_new(&g_.gw, &go)) return finish(1);
  dsys_gateway *gw = g_.gw;
  drop_secret(); /* the gateway keeps its own copy */
  size_t nroutes = dsys_config_count(cfg, "route");
  static const char *defaults[] = {"/api/auth=auth", "/api/data=data", "/api/compute=compute"};
  size_t nprot = dsys_config_count(cfg, "protect");
  rspec *rs = g_.rs = calloc((nroutes ? nroutes : 3) + nprot, sizeof *rs);
  size_t nrs = 0;
  if (!rs) return finish(1);
  for (size_t i = 0; i < (nroutes ? nroutes : 3); i++) {
    const char *r = nroutes ? dsys_config_get_nth(cfg, "route", i) : defaults[i];
    const char *eq = strchr(r, '=');
    if (!eq || eq == r || !eq[1]) return fail("bad --route (want PREFIX=NAME)", r);
    snprintf(rs[nrs].prefix, sizeof rs[nrs].prefix, "%.*s", (int)(eq - r), r);
    snprintf(rs[nrs].name, sizeof rs[nrs].name, "%s", eq + 1);
    nrs++;
  }
  /* --protect PREFIX[=writes]: marks the route with that prefix, or adds a
   * more specific route to the same upstream. */
  for (size_t i = 0; i < nprot; i++) {
    const char *p = dsys_config_get_nth(cfg, "protect", i);
    char prefix[256];
    const char *eq = strchr(p, '=');
    snprintf(prefix, sizeof prefix, "%.*s", eq ? (int)(eq - p) : (int)strlen(p), p);
    int32_t mode = DSYS_GATEWAY_PROTECT_ALL;
    if (eq && !strcmp(eq + 1, "writes")) mode = DSYS_GATEWAY_PROTECT_WRITES;
    else if (eq && strcmp(eq + 1, "all")) return fail("bad --protect (want PREFIX, PREFIX=all or PREFIX=writes)", p);
    size_t pl = strlen(prefix);
    while (pl > 1 && prefix[pl - 1] == '/') prefix[--pl] = '\0';
    if (prefix[0] != '/') return fail("bad --protect (PREFIX starts with /)", p);
    int c = covering(rs, nrs, prefix);
    if (c < 0) return fail("--protect: no route covers", p);
    if (!strcmp(rs[c].prefix, prefix)) {
      rs[c].protect = mode;
    } else {
      snprintf(rs[nrs].prefix, sizeof rs[nrs].prefix, "%s", prefix);
      memcpy(rs[nrs].name, rs[c].name, sizeof rs[nrs].name);
      rs[nrs++].protect = mode;
    }
  }
  const char *pbad, *pwhy = check_policies(rs, nrs, &pbad);
  if (pwhy) return fail(pwhy, pbad);
  int rc = 0;
  for (size_t i = 0; !rc && i < dsys_config_count(cfg, "upstream"); i++) {
    const char *spec = dsys_config_get_nth(cfg, "upstream", i), *why;
    if ((rc = add_upstream(gw, spec, &why))) {
      char msg[160];
      snprintf(msg, sizeof msg, "bad --upstream (%s)", why);
      return fail(msg, spec);
    }
  }
  dsys_gateway_route_options ro = {.size = sizeof ro};
  if (parse_rate(dsys_config_get(cfg, "rate-limit"), &ro.rate, &ro.burst))
    return fail("bad --rate-limit (want RATE/BURST, RATE > 0)", dsys_config_get(cfg, "rate-limit"));
  if (parse_rate(dsys_config_get(cfg, "user-rate-limit"), &ro.user_rate, &ro.user_burst))
    return fail("bad --user-rate-limit (want RATE/BURST, RATE > 0)", dsys_config_get(cfg, "user-rate-limit"));
  size_t norig = dsys_config_count(cfg, "cors-origin");
  const char **origins = g_.origins = norig ? calloc(norig, sizeof *origins) : NULL;
  if (norig && !origins) return finish(1);
  for (size_t i = 0; i < norig; i++) origins[i] = dsys_config_get_nth(cfg, "cors-origin", i);
  ro.cors_origins = origins;
  ro.ncors_origins = norig;
  int64_t idem = 0;
  dsys_config_get_int(cfg, "idempotency-ttl-ms", &idem);
  if (idem < 0) return fail("--idempotency-ttl-ms must be >= 0", NULL);
  ro.idempotency_ttl_ms = idem;
  for (size_t i = 0; i < nrs; i++) {
    ro.protect = rs[i].protect;
    rc = dsys_gateway_add_route_ex(gw, rs[i].prefix, rs[i].name, &ro);
    if (rc == DSYS_ENOTFOUND && reg) { /* discover NAME from the registry */
      rc = dsys_gateway_add_upstream(gw, rs[i].name, NULL, 0, policy_for(rs[i].name));
      if (!rc) rc = dsys_gateway_add_route_ex(gw, rs[i].prefix, rs[i].name, &ro);
    }
    if (rc) return fail(rc == DSYS_ENOTFOUND ? "no such upstream (give --upstream or --registry)" : dsys_strerror(rc), rs[i].prefix);
  }
  int64_t maxconn = 0, maxbody = 0, maxhdr = 0, idle_s = 0, req_s = 0;
  dsys_config_get_int(cfg, "max-connections", &maxconn);
  dsys_config_get_int(cfg, "max-body", &maxbody);
  dsys_config_get_int(cfg, "max-header-bytes", &maxhdr);
  dsys_config_get_int(cfg, "idle-timeout-s", &idle_s);
  dsys_config_get_int(cfg, "request-timeout-s", &req_s);
  if (maxconn < 0 || maxconn > 1000000 || maxbody < 0 || maxhdr < 0 || maxhdr > 16 * 1024 * 1024 ||
      idle_s < 0 || idle_s > 86400 || req_s < 0 || req_s > 86400)
    return fail("bad limit (--max-connections, --max-body, --max-header-bytes, --idle-timeout-s, --request-timeout-s)", NULL);
  dsys_server_options so = {.size = sizeof so, .name = "gateway",
                            .event_loops = loops ? (uint32_t)loops : (uint32_t)sysconf(_SC_NPROCESSORS_ONLN),
                            .access_log = dsys_config_get_bool(cfg, "access-log"),
                            .max_connections = (uint32_t)maxconn, .max_body = (size_t)maxbody,
                            .connection_memory = (uint32_t)maxhdr, .idle_timeout_s = (uint32_t)idle_s,
                            .request_timeout_s = (uint32_t)req_s,
                            .tls_cert_file = dsys_config_get(cfg, "tls-cert"),
                            .tls_key_file = dsys_config_get(cfg, "tls-key"),
                            .tls_client_ca_file = dsys_config_get(cfg, "tls-client-ca")};
  if (dsys_server_new(&g_.srv, &so)) return finish(1);
  dsys_server *srv = g_.srv;
  /* GET /metrics (before the gateway's catch-all proxy route): requests
   * per route, process, and per upstream endpoint stats and breakers. */
  if (dsys_metrics_new(&g_.met)) return finish(1);
  dsys_metrics *met = g_.met;
  if (dsys_server_metrics(srv, met) || dsys_metrics_mount(srv, met) || dsys_metrics_process(met))
    return finish(1);
  for (size_t i = 0; i < dsys_gateway_upstream_count(gw); i++) {
    const char *uname;
    dsys_upstream *up;
    if (dsys_gateway_upstream_at(gw, i, &uname, &up) || dsys_metrics_upstream(met, uname, up))
      return finish(1);
  }
  if (dsys_gateway_mount(gw, srv)) return finish(1);
  if ((rc = dsys_server_listen(srv, dsys_config_get(cfg, "listen")))) {
    fprintf(stderr, "dsys-gatewayd: cannot listen on %s: %s\n", dsys_config_get(cfg, "listen"), dsys_strerror(rc));
    return finish(1);
  }
  printf("listening %s\n", dsys_server_url(srv, 0));
  fflush(stdout);
  int sig;
  sigwait(&set, &sig);
  dsys_log_write(DSYS_LOG_INFO, "gateway", "stopping");
  dsys_server_stop(srv, 5000);
  return finish(0);
}
