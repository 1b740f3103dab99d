/*
 * dsys-gatewayd: the deployment's load balancer. Discovers instances from
 * the registry (or takes static upstreams), proxies /api/auth, /api/data and
 * /api/compute by default, on one event loop per core.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include <distsys/gateway.h>
#include <distsys/metrics.h>
#include <distsys/auth.h>
#include <distsys/services.h>

static const dsys_option extra[] = {
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
    {"try-timeout", "DSYS_TRY_TIMEOUT", DSYS_OPT_DURATION, "15s", "timeout of one upstream attempt"},
    {"try-timeout-ms", "DSYS_TRY_TIMEOUT_MS", DSYS_OPT_ALIAS, "try-timeout", NULL},
    /* Slow and hung instances (docs/reference/gateway.md); each V for
     * every upstream or NAME=V for one, as --policy. */
    {"adaptive-timeout", "DSYS_ADAPTIVE_TIMEOUT", DSYS_OPT_LIST, "p99x4",
     "per-try timeout from the upstream's recent latency, pPCTxFACTOR (the last attempt keeps "
     "--try-timeout), or off"},
    {"adaptive-timeout-min", "DSYS_ADAPTIVE_TIMEOUT_MIN", DSYS_OPT_LIST, "250ms", "its floor"},
    {"adaptive-timeout-max", "DSYS_ADAPTIVE_TIMEOUT_MAX", DSYS_OPT_LIST, NULL,
     "its ceiling (default: --try-timeout)"},
    {"slow-ejection", "DSYS_SLOW_EJECTION", DSYS_OPT_LIST, "5",
     "N timeouts or too slow answers in a row eject an instance until a health check passes (0: off)"},
    /* here the rows of tunings[] (main) */
    {"hedge", "DSYS_HEDGE", DSYS_OPT_LIST, "off",
     "a second attempt of idempotent requests on another instance after DELAY (e.g. 20ms) or the "
     "upstream's percentile pPCT (e.g. p95), first answer wins; off"},
    /* The edge (docs/reference/gateway.md): everything off by default. */
    {"rate-limit", "DSYS_RATE_LIMIT", DSYS_OPT_STRING, NULL, "RATE/BURST: per client address on every route (tokens/s)"},
    {"user-rate-limit", "DSYS_USER_RATE_LIMIT", DSYS_OPT_STRING, NULL, "RATE/BURST: per verified user on protected requests"},
    {"protect", "DSYS_PROTECT", DSYS_OPT_LIST, NULL,
     "PREFIX or PREFIX=writes: requests under PREFIX need a valid JWT (writes: all but GET/HEAD/OPTIONS)"},
    {"jwt-secret-file", "DSYS_JWT_SECRET_FILE", DSYS_OPT_STRING, NULL,
     "HS256 secret for --protect (else DSYS_JWT_SECRET); the auth service's secret"},
    {"cors-origin", "DSYS_CORS_ORIGIN", DSYS_OPT_LIST, NULL, "allowed CORS origin on every route ('*': any)"},
    {"filters", "DSYS_FILTERS", DSYS_OPT_LIST, NULL,
     "the edge filters a route runs, in order, from cors, ratelimit, jwt, user-ratelimit, idempotency, "
     "cache ('none': no filter): LIST for every route, PREFIX=LIST for the route with that prefix; "
     "default: all six in that order"},
    /* The response cache (docs/reference/gateway.md, "Response cache"). */
    {"cache", "DSYS_CACHE", DSYS_OPT_LIST, "off",
     "response cache of GET/HEAD answers as their Cache-Control allows: on, off, or authorized "
     "(also answers to requests with Authorization/Cookie not marked public: only for upstreams "
     "that answer every caller alike); V for every route, PREFIX=V for the route with that prefix"},
    {"cache-size", "DSYS_CACHE_SIZE", DSYS_OPT_SIZE, "64MiB", "response cache bound in bytes"},
    {"cache-entries", "DSYS_CACHE_ENTRIES", DSYS_OPT_INT, "10000", "response cache bound in entries"},
    {"cache-max-object", "DSYS_CACHE_MAX_OBJECT", DSYS_OPT_SIZE, "1MiB",
     "larger response bodies are not stored"},
    {"cache-max-ttl", "DSYS_CACHE_MAX_TTL", DSYS_OPT_DURATION, "1h",
     "no answer is kept longer than this after it was stored or revalidated, whatever its max-age"},
    {"idempotency-ttl", "DSYS_IDEMPOTENCY_TTL", DSYS_OPT_DURATION, "0",
     "replay POSTs with an Idempotency-Key this long (0: off)"},
    {"idempotency-ttl-ms", "DSYS_IDEMPOTENCY_TTL_MS", DSYS_OPT_ALIAS, "idempotency-ttl", NULL},
    {"max-connections", "DSYS_MAX_CONNECTIONS", DSYS_OPT_INT, "1024",
     "client connections per event loop (those that sent a byte)"},
    {"max-connections-per-addr", "DSYS_MAX_CONNECTIONS_PER_ADDR", DSYS_OPT_INT, "1024",
     "client connections one IP address may hold; over it its oldest idle one is closed (0: no limit)"},
    {"max-silent-connections", "DSYS_MAX_SILENT_CONNECTIONS", DSYS_OPT_INT, "65536",
     "accepted connections that have not sent a byte yet; over it the oldest is closed"},
    {"max-body", "DSYS_MAX_BODY", DSYS_OPT_SIZE, "1MiB", "request body limit, larger: 413"},
    {"max-header-size", "DSYS_MAX_HEADER_SIZE", DSYS_OPT_SIZE, "16KiB",
     "per-connection memory bounding request line + headers, larger: 431"},
    {"max-header-bytes", "DSYS_MAX_HEADER_BYTES", DSYS_OPT_ALIAS, "max-header-size", NULL},
    {"idle-timeout", "DSYS_IDLE_TIMEOUT", DSYS_OPT_DURATION_S, "60s",
     "close connections silent this long (whole seconds, rounded up)"},
    {"idle-timeout-s", "DSYS_IDLE_TIMEOUT_S", DSYS_OPT_ALIAS, "idle-timeout", NULL},
    {"request-timeout", "DSYS_REQUEST_TIMEOUT", DSYS_OPT_DURATION_S, "0",
     "each request must arrive complete within this time (slow clients; whole seconds, "
     "rounded up; 0: off)"},
    {"request-timeout-s", "DSYS_REQUEST_TIMEOUT_S", DSYS_OPT_ALIAS, "request-timeout", NULL},
    {"header-timeout", "DSYS_HEADER_TIMEOUT", DSYS_OPT_DURATION_S, "10s",
     "close a connection whose request head is not complete this long after it opened "
     "(whole seconds, rounded up; 0: off)"},
    {"upstream-ca", "DSYS_UPSTREAM_CA", DSYS_OPT_STRING, NULL,
     "PEM CA trusted for https:// upstreams and an https:// --registry (default: the system store)"},
    {"upstream-cert", "DSYS_UPSTREAM_CERT", DSYS_OPT_STRING, NULL,
     "PEM client certificate presented to https:// upstreams and registry (mutual TLS)"},
    {"upstream-key", "DSYS_UPSTREAM_KEY", DSYS_OPT_STRING, NULL, "its PEM private key"},
    {"identity-token-file", "DSYS_IDENTITY_TOKEN_FILE", DSYS_OPT_STRING, NULL,
     "the gateway's identity token, sent to services as X-Dsys-Identity (services "
     "started with --identity-public-key require it); reread when the file changes"},
    {"reuse-port", "DSYS_REUSE_PORT", DSYS_OPT_BOOL, "false",
     "hitless restart: bind the port with SO_REUSEPORT (a second gateway may bind it too; so "
     "may any process of this user), and on SIGTERM keep answering requests on open "
     "connections, each answer closing its connection, until the clients left (at most 5 s)"},
};

/* Instance health, outlier detection and breakers (docs/reference/
 * gateway.md, "Health checks"): a row a flag, its option (--help adds
 * the range), the values it accepts (milliseconds for a duration) and the
 * field of dsys_gateway_options it sets. Below 50 ms a check could not
 * answer on a busy host; an hour bounds a typo (30000 meant as seconds is
 * still accepted). */
typedef struct tuning {
  dsys_option opt;
  int64_t min, max;
  size_t field; /* offsetof in dsys_gateway_options */
  int u32;      /* the field is a uint32_t, else an int64_t */
} tuning;

#define GW_FIELD(f) offsetof(dsys_gateway_options, f), sizeof(((dsys_gateway_options *)0)->f) == 4

static const tuning tunings[] = {
    {{"health-interval", "DSYS_HEALTH_INTERVAL", DSYS_OPT_DURATION, "2s",
      "GET /health of every instance this often (one out of rotation: 8 times as often)"},
     50, 3600000, GW_FIELD(health_interval_ms)},
    {{"health-timeout", "DSYS_HEALTH_TIMEOUT", DSYS_OPT_DURATION, "1s",
      "a health check without an answer this long fails"},
     10, 600000, GW_FIELD(health_timeout_ms)},
    {{"health-rise", "DSYS_HEALTH_RISE", DSYS_OPT_INT, "2",
      "passing checks in a row that bring an unhealthy instance back"},
     1, 100, GW_FIELD(health_rise)},
    {{"health-fall", "DSYS_HEALTH_FALL", DSYS_OPT_INT, "3",
      "failed checks in a row that take a healthy instance out"},
     1, 100, GW_FIELD(health_fall)},
    {{"outlier-failures", "DSYS_OUTLIER_FAILURES", DSYS_OPT_INT, "5",
      "failed requests in a row (reset, timeout, 502/503/504) that eject an instance for 30 s, "
      "doubling (a refused connection ejects at once)"},
     1, 10000, GW_FIELD(outlier_failures)},
    {{"breaker-open", "DSYS_BREAKER_OPEN", DSYS_OPT_DURATION, "5s",
      "an instance whose breaker opened (half or more of its recent requests failed, while "
      "most others did not) gets no request this long, then a few trial ones"},
     100, 3600000, GW_FIELD(breaker_open_ms)},
};
#define NTUNINGS (sizeof tunings / sizeof tunings[0])

/* "min..max" of a row, durations in the largest unit that says them
 * exactly ("50ms..1h"). */
static void tuning_range(const tuning *t, char *out, size_t len) {
  static const struct { int64_t ms; const char *unit; } units[] = {
      {3600000, "h"}, {60000, "m"}, {1000, "s"}, {1, "ms"}};
  int64_t v[2] = {t->min, t->max};
  char part[2][24];
  for (int i = 0; i < 2; i++) {
    size_t u = 0;
    while (t->opt.type == DSYS_OPT_DURATION && v[i] % units[u].ms) u++;
    if (t->opt.type == DSYS_OPT_DURATION)
      snprintf(part[i], sizeof part[i], "%lld%s", (long long)(v[i] / units[u].ms), units[u].unit);
    else snprintf(part[i], sizeof part[i], "%lld", (long long)v[i]);
  }
  snprintf(out, len, "%s..%s", part[0], part[1]);
}

/* What the gateway holds beyond the shell's, released on every way out,
 * so that a refused start or reload is as clean as a stop (sanitizer
 * builds fail a process that leaks at exit). g_.gw is the mounted
 * gateway; the rest belongs to the configuration being built. */
static struct {
  char *secret;
  size_t secret_len;
  dsys_gateway *gw;
  void *rs, *origins;
  const dsys_config *cfg;
  int reloading; /* fail() logs instead of writing to stderr */
} g_;

/* Wipe and free the JWT secret once the gateway has its own copy. */
static void drop_secret(void) {
  if (g_.secret) {
    explicit_bzero(g_.secret, g_.secret_len);
    dsys_free(g_.secret);
    g_.secret = NULL;
  }
}

/* A bad flag: say which; the shell exits 2 (at start) or keeps the
 * running configuration (reload). */
static int fail(const char *msg, const char *arg) {
  char line[600];
  snprintf(line, sizeof line, "%s%s%s%s", g_.reloading ? "reload: " : "", msg, arg ? ": " : "",
           arg ? arg : "");
  if (g_.reloading) dsys_log_write(DSYS_LOG_ERROR, dsys_config_get(g_.cfg, "name"), line);
  else fprintf(stderr, "dsys-gatewayd: %s\n", line);
  return DSYS_EINVAL;
}

/* Whether the --policy value v ("NAME=P", eq at its '=') is for upstream name. */
static int policy_is_for(const char *v, const char *eq, const char *name) {
  size_t nl = (size_t)(eq - v);
  return strlen(name) == nl && !strncmp(v, name, nl);
}

/* The value of a keyed list option for key: its own OPT KEY=V, else the
 * plain OPT V, else dflt (--policy NAME=P / P, --filters PREFIX=LIST /
 * LIST). */
static const char *keyed_value(const char *opt, const char *key, const char *dflt) {
  const char *all = dflt;
  for (size_t i = 0; i < dsys_config_count(g_.cfg, opt); i++) {
    const char *v = dsys_config_get_nth(g_.cfg, opt, i), *eq = strchr(v, '=');
    if (!eq) all = v;
    else if (policy_is_for(v, eq, key)) return eq + 1;
  }
  return all;
}

/* The policy of upstream name (round-robin by default). */
static const char *policy_for(const char *name) { return keyed_value("policy", name, "round-robin"); }

/* "250ms", "2s", "100" (ms) -> ms; -1 when malformed. */
static int64_t parse_ms(const char *v) {
  char *end;
  double x = strtod(v, &end);
  double mul = !strcmp(end, "s") ? 1000 : (!*end || !strcmp(end, "ms")) ? 1 : -1;
  return end == v || mul < 0 || !(x >= 0) || x * mul > 86400e3 ? -1 : (int64_t)(x * mul);
}

/* The settings of upstream name from the keyed flags; NULL, or what is
 * wrong (*bad: the value). */
static const char *upstream_opts(const char *name, dsys_gateway_upstream_options *o,
                                 const char **bad) {
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->policy = policy_for(name);
  const char *v = *bad = keyed_value("adaptive-timeout", name, "p99x4");
  unsigned pct;
  double f;
  int end = 0;
  if (!strcmp(v, "off")) o->adaptive_timeout = -1;
  else if (sscanf(v, "p%ux%lf%n", &pct, &f, &end) != 2 || v[end] || !pct || pct > 100 || !(f >= 1 && f <= 1000))
    return "bad --adaptive-timeout (want pPCTxFACTOR, e.g. p99x4, or off)";
  else o->timeout_percentile = pct, o->timeout_factor = f;
  const char *mn = *bad = keyed_value("adaptive-timeout-min", name, "250ms");
  if ((o->timeout_min_ms = parse_ms(mn)) <= 0) return "bad --adaptive-timeout-min";
  const char *mx = *bad = keyed_value("adaptive-timeout-max", name, NULL);
  if (mx && ((o->timeout_max_ms = parse_ms(mx)) <= 0 || o->timeout_max_ms < o->timeout_min_ms))
    return "bad --adaptive-timeout-max (a duration, at least the min)";
  v = *bad = keyed_value("slow-ejection", name, "5");
  char *e;
  long n = strtol(v, &e, 10);
  if (e == v || *e || n < 0 || n > 1000) return "bad --slow-ejection (0..1000)";
  o->slow_ejection = n ? (int32_t)n : -1;
  v = *bad = keyed_value("hedge", name, "off");
  if (v[0] == 'p') {
    if (sscanf(v, "p%u%n", &pct, &end) != 1 || v[end] || !pct || pct > 100)
      return "bad --hedge (want off, DELAY or pPCT)";
    o->hedge_delay_ms = -1;
    o->hedge_percentile = pct;
  } else if (strcmp(v, "off") && (o->hedge_delay_ms = parse_ms(v)) <= 0) {
    return "bad --hedge (want off, DELAY or pPCT)";
  }
  return NULL;
}

/* At most this many URLs in one --upstream (a longer list is refused,
 * never cut short). */
#define MAX_URLS 64

/* "NAME=URL,URL" -> the gateway. On failure, why (for the error line;
 * NULL when the line was printed). */
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
  dsys_gateway_upstream_options uo;
  const char *bad, *bad_opt = rc ? NULL : upstream_opts(name, &uo, &bad);
  if (bad_opt) { /* said here, about the flag (*why NULL: nothing more to say) */
    *why = NULL;
    rc = fail(bad_opt, bad);
  }
  if (!rc && (rc = dsys_gateway_add_upstream_ex(gw, name, urls, n, &uo)))
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

/* Whole seconds of a duration flag, rounded up (the server counts seconds). */
static uint32_t seconds(const char *name) {
  int64_t ms = 0;
  dsys_config_get_duration_ms(g_.cfg, name, &ms);
  return (uint32_t)((ms + 999) / 1000);
}

static int prepare(dsys_daemon *d, dsys_server_options *so, void *ud) {
  const dsys_config *cfg = g_.cfg = dsys_daemon_config(d);
  int64_t loops = 0, maxconn = 0, try_ms = 0, idem = 0, peraddr = 0, silent = 0;
  uint64_t maxbody = 0, maxhdr = 0;
  dsys_config_get_int(cfg, "loops", &loops);
  dsys_config_get_int(cfg, "max-connections", &maxconn);
  dsys_config_get_int(cfg, "max-connections-per-addr", &peraddr);
  dsys_config_get_int(cfg, "max-silent-connections", &silent);
  dsys_config_get_size(cfg, "max-body", &maxbody);
  dsys_config_get_size(cfg, "max-header-size", &maxhdr);
  dsys_config_get_duration_ms(cfg, "try-timeout", &try_ms);
  dsys_config_get_duration_ms(cfg, "idempotency-ttl", &idem);
  if (loops < 0 || loops > 256) return fail("--loops must be 0..256", NULL);
  if (try_ms < 0 || idem < 0) return fail("--try-timeout and --idempotency-ttl must be >= 0", NULL);
  if (maxconn < 0 || maxconn > 1000000 || peraddr < 0 || peraddr > 1000000 || silent < 1 ||
      silent > 10000000 || maxbody > SIZE_MAX || maxhdr > 16 * 1024 * 1024 ||
      seconds("idle-timeout") > 86400 || seconds("request-timeout") > 86400 ||
      seconds("header-timeout") > 86400)
    return fail("bad limit (--max-connections and --max-connections-per-addr 0..1000000, "
                "--max-silent-connections 1..10000000, --max-header-size up to 16MiB, "
                "--idle-timeout, --request-timeout and --header-timeout up to 24h)", NULL);
  so->event_loops = loops ? (uint32_t)loops : (uint32_t)sysconf(_SC_NPROCESSORS_ONLN);
  so->max_connections = (uint32_t)maxconn;
  so->max_body = (size_t)maxbody;
  so->connection_memory = (uint32_t)maxhdr;
  so->idle_timeout_s = seconds("idle-timeout");
  so->request_timeout_s = seconds("request-timeout");
  so->max_connections_per_addr = peraddr ? (uint32_t)peraddr : DSYS_SERVER_LIMIT_OFF;
  so->max_silent_connections = (uint32_t)silent;
  so->header_timeout_s = seconds("header-timeout") ? seconds("header-timeout") : DSYS_SERVER_TIMEOUT_OFF;
  so->reuse_port = so->drain_keepalive = dsys_config_get_bool(cfg, "reuse-port");
  return 0;
}

/* Build a gateway from configuration cfg in *out, every value checked,
 * nothing mounted (start and reload). */
static int build_gateway(dsys_daemon *d, const dsys_config *cfg, dsys_gateway **out) {
  g_.cfg = cfg;
  dsys_client_options uco; /* the upstreams' TLS, checked by the shell */
  dsys_daemon_client_tls(cfg, "upstream", &uco, NULL, 0);
  dsys_registry *reg = dsys_daemon_registry(d);
  dsys_gateway_options go = {.size = sizeof go, .registry = reg,
                             .upstream_ca_file = uco.tls_ca_file,
                             .upstream_cert_file = uco.tls_cert_file,
                             .upstream_key_file = uco.tls_key_file,
                             .identity = dsys_daemon_identity(d)};
  dsys_config_get_duration_ms(cfg, "try-timeout", &go.try_timeout_ms);
  for (size_t i = 0; i < NTUNINGS; i++) {
    const tuning *t = &tunings[i];
    int64_t v = 0;
    if (t->opt.type == DSYS_OPT_DURATION) dsys_config_get_duration_ms(cfg, t->opt.name, &v);
    else dsys_config_get_int(cfg, t->opt.name, &v);
    if (v < t->min || v > t->max) {
      char msg[96], range[64];
      tuning_range(t, range, sizeof range);
      snprintf(msg, sizeof msg, "bad --%s (%s)", t->opt.name, range);
      return fail(msg, dsys_config_get(cfg, t->opt.name));
    }
    char *f = (char *)&go + t->field;
    if (t->u32) *(uint32_t *)f = (uint32_t)v;
    else *(int64_t *)f = v;
  }
  uint64_t csize = 0, cobj = 0;
  int64_t centries = 0;
  dsys_config_get_size(cfg, "cache-size", &csize);
  dsys_config_get_size(cfg, "cache-max-object", &cobj);
  dsys_config_get_int(cfg, "cache-entries", &centries);
  dsys_config_get_duration_ms(cfg, "cache-max-ttl", &go.cache_max_ttl_ms);
  if (!csize || csize > SIZE_MAX || !cobj || cobj > SIZE_MAX || centries < 1 ||
      centries > 100000000 || go.cache_max_ttl_ms < 1000)
    return fail("bad response cache bound (--cache-size and --cache-max-object > 0, "
                "--cache-entries 1..100000000, --cache-max-ttl at least 1s)", NULL);
  go.cache_max_bytes = (size_t)csize;
  go.cache_max_object = (size_t)cobj;
  go.cache_max_entries = (size_t)centries;
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
  int rc = dsys_gateway_new(out, &go);
  drop_secret(); /* the gateway keeps its own copy */
  if (rc) return rc;
  dsys_gateway *gw = *out;
  size_t nroutes = dsys_config_count(cfg, "route");
  static const char *defaults[] = {"/api/auth=auth", "/api/data=data", "/api/compute=compute"};
  size_t nprot = dsys_config_count(cfg, "protect");
  rspec *rs = g_.rs = calloc((nroutes ? nroutes : 3) + nprot, sizeof *rs);
  size_t nrs = 0;
  if (!rs) return DSYS_ENOMEM;
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
  for (size_t i = 0; i < dsys_config_count(cfg, "upstream"); i++) {
    const char *spec = dsys_config_get_nth(cfg, "upstream", i), *why;
    if ((rc = add_upstream(gw, spec, &why))) {
      if (!why) return rc;
      char msg[160];
      snprintf(msg, sizeof msg, "bad --upstream (%s)", why);
      return rc == DSYS_ENOMEM ? rc : fail(msg, spec);
    }
  }
  dsys_gateway_route_options ro = {.size = sizeof ro};
  if (parse_rate(dsys_config_get(cfg, "rate-limit"), &ro.rate, &ro.burst))
    return fail("bad --rate-limit (want RATE/BURST, RATE > 0)", dsys_config_get(cfg, "rate-limit"));
  if (parse_rate(dsys_config_get(cfg, "user-rate-limit"), &ro.user_rate, &ro.user_burst))
    return fail("bad --user-rate-limit (want RATE/BURST, RATE > 0)", dsys_config_get(cfg, "user-rate-limit"));
  size_t norig = dsys_config_count(cfg, "cors-origin");
  const char **origins = g_.origins = norig ? calloc(norig, sizeof *origins) : NULL;
  if (norig && !origins) return DSYS_ENOMEM;
  for (size_t i = 0; i < norig; i++) origins[i] = dsys_config_get_nth(cfg, "cors-origin", i);
  ro.cors_origins = origins;
  ro.ncors_origins = norig;
  dsys_config_get_duration_ms(cfg, "idempotency-ttl", &ro.idempotency_ttl_ms);
  /* each --filters PREFIX=LIST names a route */
  for (size_t i = 0; i < dsys_config_count(cfg, "filters"); i++) {
    const char *v = dsys_config_get_nth(cfg, "filters", i), *eq = strchr(v, '=');
    size_t k = 0;
    while (eq && k < nrs && !policy_is_for(v, eq, rs[k].prefix)) k++;
    if (eq && k == nrs) return fail("--filters: no route has that prefix", v);
  }
  for (size_t i = 0; i < dsys_config_count(cfg, "cache"); i++) {
    const char *v = dsys_config_get_nth(cfg, "cache", i), *eq = strchr(v, '=');
    const char *mode = eq ? eq + 1 : v;
    size_t k = 0;
    while (eq && k < nrs && !policy_is_for(v, eq, rs[k].prefix)) k++;
    if (eq && k == nrs) return fail("--cache: no route has that prefix", v);
    if (strcmp(mode, "on") && strcmp(mode, "off") && strcmp(mode, "authorized"))
      return fail("bad --cache (want on, off or authorized, or PREFIX=one of them)", v);
  }
  for (size_t i = 0; i < nrs; i++) {
    ro.protect = rs[i].protect;
    ro.filters = keyed_value("filters", rs[i].prefix, NULL);
    const char *cache = keyed_value("cache", rs[i].prefix, "off");
    ro.cache = !strcmp(cache, "on")           ? DSYS_GATEWAY_CACHE_ON
               : !strcmp(cache, "authorized") ? DSYS_GATEWAY_CACHE_AUTHORIZED
                                              : DSYS_GATEWAY_CACHE_OFF;
    rc = dsys_gateway_add_route_ex(gw, rs[i].prefix, rs[i].name, &ro);
    if (rc == DSYS_ENOTFOUND && reg) { /* discover NAME from the registry */
      dsys_gateway_upstream_options uo;
      const char *bad, *why = upstream_opts(rs[i].name, &uo, &bad);
      if (why) return fail(why, bad);
      rc = dsys_gateway_add_upstream_ex(gw, rs[i].name, NULL, 0, &uo);
      if (!rc) rc = dsys_gateway_add_route_ex(gw, rs[i].prefix, rs[i].name, &ro);
    }
    if (rc == DSYS_EINVAL && ro.filters)
      return fail(ro.cache ? "bad --filters (names from cors, ratelimit, jwt, user-ratelimit, idempotency, cache, "
                             "each once; or none; a route with --cache needs cache among them)"
                           : "bad --filters (names from cors, ratelimit, jwt, user-ratelimit, idempotency, cache, each once; or none)",
                  ro.filters);
    if (rc) return fail(rc == DSYS_ENOTFOUND ? "no such upstream (give --upstream or --registry)" : dsys_strerror(rc), rs[i].prefix);
  }
  return 0;
}

/* What build_gateway allocated for itself (the gateway aside). */
static void drop_build(void) {
  drop_secret();
  free(g_.rs);
  free(g_.origins);
  g_.rs = g_.origins = NULL;
}

static int mount(dsys_daemon *d, void *ud) {
  int rc = build_gateway(d, dsys_daemon_config(d), &g_.gw);
  drop_build();
  /* per upstream endpoint stats and breakers on GET /metrics, across reloads */
  if (!rc) rc = dsys_gateway_metrics(g_.gw, dsys_daemon_metrics(d));
  return rc ? rc : dsys_gateway_mount(g_.gw, dsys_daemon_server(d));
}

/* SIGHUP: the routes, upstreams, policies, edge settings, try timeout and
 * JWT secret (file) from the configuration parsed again (the shell's
 * --config), built and checked in full, then swapped in at once; requests
 * in flight finish on the old ones. A bad value keeps the old ones. What
 * the server was started with (--listen, --loops, limits, TLS) needs a
 * restart (docs/reference/gateway.md, "Reload"). */
static int reload(dsys_daemon *d, void *ud) {
  dsys_gateway *next = NULL;
  g_.reloading = 1;
  int rc = build_gateway(d, dsys_daemon_config(d), &next);
  g_.reloading = 0;
  drop_build();
  if (!rc) rc = dsys_gateway_reload(g_.gw, next);
  if (rc) {
    dsys_gateway_free(next);
    return rc;
  }
  char line[128];
  snprintf(line, sizeof line, "reload: the new routes are in effect (%zu upstreams)",
           dsys_gateway_upstream_count(g_.gw));
  dsys_log_write(DSYS_LOG_INFO, dsys_daemon_name(d), line);
  return 0;
}

static void unmount(dsys_daemon *d, void *ud) {
  dsys_gateway_free(g_.gw);
  drop_build();
  memset(&g_, 0, sizeof g_);
}

int main(int argc, char **argv) {
  /* the option table: extra with the rows of tunings where it says so,
   * each --help line ending with its range */
  enum { NEXTRA = sizeof extra / sizeof extra[0] };
  static dsys_option opts[NEXTRA + NTUNINGS];
  static char help[NTUNINGS][400];
  size_t n = 0;
  for (size_t i = 0; i < NEXTRA; i++) {
    opts[n++] = extra[i];
    if (strcmp(extra[i].name, "slow-ejection")) continue;
    for (size_t k = 0; k < NTUNINGS; k++) {
      char range[64];
      tuning_range(&tunings[k], range, sizeof range);
      snprintf(help[k], sizeof help[k], "%s; %s", tunings[k].opt.help, range);
      opts[n] = tunings[k].opt;
      opts[n++].help = help[k];
    }
  }
  dsys_daemon_spec spec = {
      .size = sizeof spec, .progname = "dsys-gatewayd",
      .summary = "The load balancer of the reference deployment (docs/reference/http-api.md).",
      .default_name = "gateway", .default_listen = "http://127.0.0.1:3000",
      .extra = opts, .nextra = n,
      .prepare = prepare, .mount = mount, .unmount = unmount, .reload = reload,
      .without = DSYS_DAEMON_NO_PEER | DSYS_DAEMON_NO_IDENTITY_KEY, .peer_prefix = "upstream"};
  return dsys_daemon_main(&spec, argc, argv);
}
