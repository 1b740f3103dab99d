/* The shell every daemon runs on: flags and environment, logging, the
 * database, the registry, the server, signals, registration and a clean
 * stop. */
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>
#include <distsys/log.h>
#include <distsys/metrics.h>
#include <distsys/registration.h>
#include <distsys/identity.h>
#include <distsys/services.h>
#include "core/internal.h"
#include "core/pg.h"
#include "transport/url.h"
#include "core/config.h"

struct dsys_daemon {
  dsys_daemon_spec spec; /* the caller's, in this version's layout */
  dsys_config *cfg;
  dsys_server *srv;
  dsys_store *store;
  dsys_queue *queue;
  dsys_registry *registry;
  dsys_registration *agent;
  dsys_metrics *metrics;
  dsys_identity *identity;           /* --identity-token-file */
  dsys_identity_verifier *verifier;  /* --identity-public-key */
  dsys_client_options peer;          /* --peer-*, read and checked at start */
  /* What SIGHUP parses again (a daemon with a reload hook, --config). */
  const dsys_option *opts;
  size_t nopts;
  int argc;
  char *const *argv;
  dsys_config *cfg0; /* the start's, kept to the end: its strings are in use */
};

dsys_server *dsys_daemon_server(dsys_daemon *d) { return d ? d->srv : NULL; }
dsys_metrics *dsys_daemon_metrics(dsys_daemon *d) { return d ? d->metrics : NULL; }
dsys_store *dsys_daemon_store(dsys_daemon *d) { return d ? d->store : NULL; }
dsys_queue *dsys_daemon_queue(dsys_daemon *d) { return d ? d->queue : NULL; }
const dsys_config *dsys_daemon_config(dsys_daemon *d) { return d ? d->cfg : NULL; }
const char *dsys_daemon_name(dsys_daemon *d) {
  return d ? dsys_config_get(d->cfg, "name") : NULL;
}
dsys_identity *dsys_daemon_identity(dsys_daemon *d) { return d ? d->identity : NULL; }
dsys_identity_verifier *dsys_daemon_identity_verifier(dsys_daemon *d) {
  return d ? d->verifier : NULL;
}
const char *dsys_daemon_db_path(dsys_daemon *d) {
  return d ? dsys_config_get(d->cfg, "db") : NULL;
}
dsys_registry *dsys_daemon_registry(dsys_daemon *d) { return d ? d->registry : NULL; }

/* mkdir -p of the directory part of path. */
static int make_parent_dirs(const char *path) {
  char *p = strdup(path);
  if (!p) return DSYS_ENOMEM;
  char *slash = strrchr(p, '/');
  int rc = 0;
  if (slash && slash != p) {
    *slash = '\0';
    for (char *s = p + 1; *s && !rc; s++) {
      if (*s != '/') continue;
      *s = '\0';
      if (mkdir(p, 0755) && errno != EEXIST) rc = DSYS_EIO;
      *s = '/';
    }
    if (!rc && mkdir(p, 0755) && errno != EEXIST) rc = DSYS_EIO;
  }
  free(p);
  return rc;
}

const char *dsys_daemon_tls_check(const char *listen, const char *cert, const char *key,
                                  const char *client_ca) {
  int https = listen && !strncmp(listen, "https://", 8);
  if (https && (!cert || !key)) return "an https:// --listen needs --tls-cert and --tls-key";
  if (!https && (cert || key || client_ca))
    return "--tls-cert, --tls-key and --tls-client-ca need an https:// --listen";
  return NULL;
}

int dsys_daemon_client_tls(const dsys_config *cfg, const char *prefix,
                           dsys_client_options *out, char *err, size_t errlen) {
  if (!cfg || !prefix || !out) return DSYS_EINVAL;
  char ca[64], cert[64], key[64];
  snprintf(ca, sizeof ca, "%s-ca", prefix);
  snprintf(cert, sizeof cert, "%s-cert", prefix);
  snprintf(key, sizeof key, "%s-key", prefix);
  *out = (dsys_client_options){.size = sizeof *out, .tls_ca_file = dsys_config_get(cfg, ca),
                               .tls_cert_file = dsys_config_get(cfg, cert),
                               .tls_key_file = dsys_config_get(cfg, key)};
  if (!out->tls_cert_file == !out->tls_key_file) return 0;
  if (err && errlen) snprintf(err, errlen, "--%s and --%s go together", cert, key);
  return DSYS_EINVAL;
}

/* --registry with the --etcd-* flags added as the etcd URL's query
 * parameters (core/etcd.h), percent-encoded; *out NULL when there are
 * none. DSYS_EINVAL (err says why) when they are given for another kind
 * of registry. */
static int etcd_registry_url(const dsys_config *cfg, const char *reg, char **out, char *err,
                             size_t errlen) {
  static const char *const flags[][2] = {{"etcd-ca", "ca"},
                                         {"etcd-cert", "cert"},
                                         {"etcd-key", "key"},
                                         {"etcd-user", "user"},
                                         {"etcd-password-file", "password-file"}};
  *out = NULL;
  int etcd = !strncmp(reg, "etcd://", 7) || !strncmp(reg, "etcds://", 8);
  char sep = strchr(reg, '?') ? '&' : '?';
  dsysi_buf b = {0};
  dsysi_buf_puts(&b, reg);
  int any = 0;
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
    const char *v = dsys_config_get(cfg, flags[i][0]);
    if (!v || !*v) continue;
    if (!etcd) {
      snprintf(err, errlen, "--%s needs an etcd:// or etcds:// --registry", flags[i][0]);
      dsysi_buf_free(&b);
      return DSYS_EINVAL;
    }
    dsysi_buf_printf(&b, "%c%s=", sep, flags[i][1]);
    for (const unsigned char *c = (const unsigned char *)v; *c; c++) {
      if (isalnum(*c) || strchr("-._~/", *c)) dsysi_buf_append(&b, c, 1);
      else dsysi_buf_printf(&b, "%%%02X", *c);
    }
    sep = '&';
    any = 1;
  }
  if (b.oom) {
    dsysi_buf_free(&b);
    return DSYS_ENOMEM;
  }
  if (any) *out = dsysi_buf_steal(&b, NULL);
  dsysi_buf_free(&b);
  return 0;
}

/* value as messages show it: a PostgreSQL URI without its password, an
 * etcd URL without the password= the etcd backend refuses (the same
 * redaction: user:password@ and password=) */
static void show(const char *value, char *out, size_t n) {
  int etcd = value && (!strncmp(value, "etcd://", 7) || !strncmp(value, "etcds://", 8));
  char *r = dsysi_pg_is_url(value) || etcd ? dsysi_pg_redact_url(value) : NULL;
  snprintf(out, n, "%s", r ? r : value);
  free(r);
}

/* An address of this host that others can reach: the source address of
 * the default route (a UDP connect sends nothing), else the first
 * non-loopback IPv4 address of an interface that is up, else 127.0.0.1. */
static void host_address(char *out, size_t n) {
  snprintf(out, n, "127.0.0.1");
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(9)};
  socklen_t len = sizeof a;
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  inet_pton(AF_INET, "192.0.2.1", &a.sin_addr); /* TEST-NET-1 */
  int ok = fd >= 0 && !connect(fd, (struct sockaddr *)&a, sizeof a) &&
           !getsockname(fd, (struct sockaddr *)&a, &len) && a.sin_addr.s_addr != htonl(INADDR_ANY);
  if (fd >= 0) close(fd);
  if (ok) {
    inet_ntop(AF_INET, &a.sin_addr, out, (socklen_t)n);
    return;
  }
  struct ifaddrs *ifs = NULL;
  if (getifaddrs(&ifs)) return;
  for (struct ifaddrs *i = ifs; i; i = i->ifa_next)
    if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && (i->ifa_flags & IFF_UP) &&
        !(i->ifa_flags & IFF_LOOPBACK)) {
      inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, out, (socklen_t)n);
      break;
    }
  freeifaddrs(ifs);
}

/* Host names and ids go into instance ids and JSON metadata as they are. */
static int plain_token(const char *s) {
  if (!s || !*s) return 0;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && !strchr(".-_:", *s)) return 0;
  return 1;
}

static int loopback_host(const char *h) {
  return !strcmp(h, "localhost") || !strncmp(h, "127.", 4) || !strcmp(h, "::1");
}

/* What others should call: --advertise, else the bound URL, whose wildcard
 * host (0.0.0.0 or ::, which no one can call) becomes this host's address.
 * host receives the advertised host. */
static int advertised_url(dsys_daemon *d, char *out, size_t n, char *host, size_t hn) {
  const char *adv = dsys_config_get(d->cfg, "advertise");
  const char *url = adv && *adv ? adv : dsys_server_url(d->srv, 0);
  dsysi_url u;
  int rc = dsysi_url_parse(url, &u);
  if (rc) return rc;
  if (!strcmp(u.scheme, "http") || !strcmp(u.scheme, "https")) {
    if (!strcmp(u.host, "0.0.0.0") || !strcmp(u.host, "::")) {
      host_address(host, hn);
      snprintf(out, n, "%s://%s:%d%s", u.scheme, host, u.port, u.path ? u.path : "");
    } else {
      snprintf(host, hn, "%s", u.host);
      snprintf(out, n, "%s", url);
    }
  } else { /* unix://, inproc://: only this host can call it */
    snprintf(host, hn, "127.0.0.1");
    snprintf(out, n, "%s", url);
  }
  dsysi_url_free(&u);
  return 0;
}

/* Register with the registry; the agent heartbeats and re-registers. A
 * registry that is down at start is retried quietly by the agent. The id is
 * NAME-PORT (the HTTP contract's serviceId) for an instance advertised on a
 * loopback address; one that other hosts call gets NAME-PORT@HOSTID, so two
 * hosts running the same name and port do not replace each other. */
static int register_instance(dsys_daemon *d, const char *name) {
  char url[512], host[256], hostid[256] = "";
  int rc = advertised_url(d, url, sizeof url, host, sizeof host);
  if (!rc && !plain_token(host)) rc = DSYS_EURL;
  if (rc) {
    fprintf(stderr, "%s: --advertise is not a URL others can call: %s\n", name,
            dsys_config_get(d->cfg, "advertise"));
    return DSYS_EINVAL;
  }
  const char *colon = strrchr(url, ':');
  int port = colon ? atoi(colon + 1) : 0;
  const char *hid = dsys_config_get(d->cfg, "host-id");
  if (hid && *hid) snprintf(hostid, sizeof hostid, "%s", hid);
  else if (gethostname(hostid, sizeof hostid - 1) || !plain_token(hostid))
    snprintf(hostid, sizeof hostid, "host");
  if (!plain_token(hostid)) {
    fprintf(stderr, "%s: --host-id may hold only letters, digits, '.', '-', '_' and ':'\n", name);
    return DSYS_EINVAL;
  }
  char id[600], meta[700];
  if (loopback_host(host)) snprintf(id, sizeof id, "%s-%d", name, port);
  else snprintf(id, sizeof id, "%s-%d@%s", name, port, hostid);
  /* host and hostId are plain tokens (flag values checked at start) */
  snprintf(meta, sizeof meta, "{\"port\":%d,\"host\":\"%s\",\"hostId\":\"%s\"}", port, host,
           hostid);
  dsys_instance inst = {.id = id, .type = d->spec.service_type, .url = url,
                        .name = name, .metadata = meta, .weight = 1};
  int64_t ttl = 30000, hb = 0;
  dsys_config_get_duration_ms(d->cfg, "registry-ttl", &ttl);
  if (dsys_config_get(d->cfg, "registry-heartbeat"))
    dsys_config_get_duration_ms(d->cfg, "registry-heartbeat", &hb); /* checked at start */
  dsys_registration_options ao = {.size = sizeof ao, .heartbeat_ms = hb ? hb : ttl / 3};
  rc = dsys_registration_start(&d->agent, d->registry, &inst, &ao);
  char shown[512];
  show(dsys_config_get(d->cfg, "registry"), shown, sizeof shown);
  if (!rc) dsysi_log(DSYS_LOG_INFO, name, "registering as %s (%s) with %s", id, url, shown);
  return rc;
}

static const dsys_option common_opts[] = {
    {"listen", "DSYS_LISTEN", DSYS_OPT_STRING, NULL,
     "where to listen: http://HOST:PORT (port 0 picks one), https://HOST:PORT or unix:///PATH"},
    {"db", "DSYS_DB", DSYS_OPT_STRING, "data/distsys.sqlite",
     "SQLite file path (its directory is created) or postgresql:// URI"},
    {"registry", "DSYS_REGISTRY", DSYS_OPT_STRING, NULL,
     "registry to register with: http://HOST:PORT (dsys-registryd), sqlite:///path, "
     "postgresql://... or etcd[s]://HOST:PORT[,HOST:PORT...]/PREFIX (etcds: TLS, see --etcd-*)"},
    {"registry-ttl", "DSYS_REGISTRY_INSTANCE_TTL", DSYS_OPT_DURATION, "30s",
     "instances are unhealthy after this long without a heartbeat and reaped after "
     "ten times it (a registry opened directly, sqlite://, postgresql:// or etcd://: "
     "every process on one registry must use the same); this instance heartbeats "
     "every third of it"},
    {"registry-heartbeat", "DSYS_REGISTRY_HEARTBEAT", DSYS_OPT_DURATION, NULL,
     "how often this instance heartbeats (default: a third of --registry-ttl; "
     "at least 50ms, less than --registry-ttl)"},
    {"name", "DSYS_NAME", DSYS_OPT_STRING, NULL, "instance name (logs, /health)"},
    {"advertise", "DSYS_ADVERTISE", DSYS_OPT_STRING, NULL,
     "URL others should call, registered in the registry (default: the --listen URL; "
     "a 0.0.0.0 or :: host becomes this host's address)"},
    {"host-id", "DSYS_HOST_ID", DSYS_OPT_STRING, NULL,
     "this host's name in instance ids and metadata (default: the hostname); an "
     "instance advertised on a non-loopback address registers as NAME-PORT@HOSTID"},
    {"config", "DSYS_CONFIG", DSYS_OPT_STRING, NULL,
     "a file of DSYS_VAR=value lines (the units' environment file format; a repeatable "
     "option's variable may repeat), read as flags placed before the command line's, "
     "at start and again on SIGHUP (what the daemon reloads: its page)"},
    {"log-format", "DSYS_LOG_FORMAT", DSYS_OPT_STRING, "text",
     "text, json or journal (text with sd-daemon priority prefixes; they are "
     "added anyway when stderr is the journal)"},
    {"log-level", "DSYS_LOG_LEVEL", DSYS_OPT_STRING, "info",
     "debug, info, warn, error or off"},
    {"access-log", "DSYS_ACCESS_LOG", DSYS_OPT_BOOL, "false",
     "log one line per request"},
    DSYS_DAEMON_TLS_OPTIONS,
    DSYS_DAEMON_PEER_OPTIONS,
    {"etcd-ca", "DSYS_ETCD_CA", DSYS_OPT_STRING, NULL,
     "PEM CA trusted for an etcds:// --registry (default: the system store)"},
    {"etcd-cert", "DSYS_ETCD_CERT", DSYS_OPT_STRING, NULL,
     "PEM client certificate presented to an etcds:// --registry (etcd's "
     "--client-cert-auth; no CommonName when etcd's auth is on)"},
    {"etcd-key", "DSYS_ETCD_KEY", DSYS_OPT_STRING, NULL, "its PEM private key"},
    {"etcd-user", "DSYS_ETCD_USER", DSYS_OPT_STRING, NULL,
     "etcd user of an etcd:// or etcds:// --registry (etcd's auth); the password "
     "comes from --etcd-password-file or DSYS_ETCD_PASSWORD, never from the URL"},
    {"etcd-password-file", "DSYS_ETCD_PASSWORD_FILE", DSYS_OPT_STRING, NULL,
     "file holding the --etcd-user's password (mode 0600)"},
    {"identity-token-file", "DSYS_IDENTITY_TOKEN_FILE", DSYS_OPT_STRING, NULL,
     "this instance's identity token (dsys-identity issue, or dsys-cluster "
     "--profile secure), presented to the registry; reread when the file changes"},
    {"identity-public-key", "DSYS_IDENTITY_PUBLIC_KEY", DSYS_OPT_STRING, NULL,
     "the deployment's identity public key: callers must present a valid "
     "identity token (every route but GET /health, /ready, /metrics and "
     "/api/TYPE/health; 401 otherwise)"},
    {"help", NULL, DSYS_OPT_BOOL, NULL, "show this help and exit"},
    {"version", NULL, DSYS_OPT_BOOL, NULL, "show the version and exit"},
};
#define NCOMMON (sizeof common_opts / sizeof common_opts[0])

/* Whether this daemon takes common flag name. */
static int takes(const dsys_daemon_spec *sp, const char *name) {
  if (!strcmp(name, "db")) return sp->open_store || sp->open_queue;
  if (!strcmp(name, "registry") || !strcmp(name, "registry-ttl"))
    return !(sp->without & DSYS_DAEMON_NO_REGISTRY);
  if (!strcmp(name, "advertise") || !strcmp(name, "host-id")) /* only what registers */
    return !(sp->without & DSYS_DAEMON_NO_REGISTRY) && sp->service_type;
  if (!strncmp(name, "peer-", 5)) return !(sp->without & DSYS_DAEMON_NO_PEER);
  if (!strncmp(name, "etcd-", 5)) return !(sp->without & DSYS_DAEMON_NO_REGISTRY);
  if (!strcmp(name, "identity-token-file")) return !(sp->without & DSYS_DAEMON_NO_IDENTITY_TOKEN);
  if (!strcmp(name, "identity-public-key")) return !(sp->without & DSYS_DAEMON_NO_IDENTITY_KEY);
  if (!strcmp(name, "config")) return sp->reload != NULL;
  return 1;
}

static const dsys_option *extra_named(const dsys_daemon_spec *sp, const char *name) {
  for (size_t i = 0; i < sp->nextra; i++)
    if (sp->extra[i].name && !strcmp(sp->extra[i].name, name)) return &sp->extra[i];
  return NULL;
}

/* The daemon's option table: the common rows it takes (replaced by an
 * extra row of the same name), its other extra rows, then -h and -V. */
static dsys_option *build_options(const dsys_daemon_spec *sp, size_t *n) {
  dsys_option *opts = calloc(NCOMMON + sp->nextra, sizeof *opts);
  if (!opts) return NULL;
  size_t k = 0;
  for (int last = 0; last < 2; last++) {
    for (size_t i = 0; i < NCOMMON; i++) {
      const dsys_option *o = &common_opts[i], *x = extra_named(sp, o->name);
      int end = !strcmp(o->name, "help") || !strcmp(o->name, "version");
      if (end != last || !takes(sp, o->name)) continue;
      opts[k] = x ? *x : *o;
      if (!x && !strcmp(o->name, "listen"))
        opts[k].def = sp->default_listen ? sp->default_listen : "http://127.0.0.1:0";
      if (!x && !strcmp(o->name, "name")) opts[k].def = sp->default_name;
      k++;
    }
    for (size_t i = 0; !last && i < sp->nextra; i++) {
      size_t c = 0;
      while (c < NCOMMON && strcmp(common_opts[c].name, sp->extra[i].name)) c++;
      if (c == NCOMMON || !takes(sp, common_opts[c].name)) opts[k++] = sp->extra[i];
    }
  }
  *n = k;
  return opts;
}

/* A step of the start failed: the exit status for rc of a callback
 * (DSYS_EINVAL: a flag value, 2; else 1). */
static int cb_status(int rc) { return rc == DSYS_EINVAL ? 2 : 1; }

/* Every connection is a descriptor, and the usual soft limit (1024) is
 * far below what a listener holds in a flood (docs/reference/server.md,
 * "Connection floods"): take the hard limit, which needs no privilege. */
static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

static int run(dsys_daemon *d, const char *prog) {
  const dsys_daemon_spec *sp = &d->spec;
  raise_nofile();
  const char *db = dsys_config_get(d->cfg, "db");
  const char *name = dsys_config_get(d->cfg, "name");
  const char *listen = dsys_config_get(d->cfg, "listen");
  dsys_server_options so = {.size = sizeof so, .name = name,
                            .access_log = dsys_config_get_bool(d->cfg, "access-log"),
                            .tls_cert_file = dsys_config_get(d->cfg, "tls-cert"),
                            .tls_key_file = dsys_config_get(d->cfg, "tls-key"),
                            .tls_client_ca_file = dsys_config_get(d->cfg, "tls-client-ca")};
  const char *why = dsys_daemon_tls_check(listen, so.tls_cert_file, so.tls_key_file,
                                          so.tls_client_ca_file);
  char tls_err[128];
  if (!why && dsys_daemon_client_tls(d->cfg, sp->peer_prefix ? sp->peer_prefix : "peer",
                                     &d->peer, tls_err, sizeof tls_err))
    why = tls_err;
  if (why) {
    fprintf(stderr, "%s: %s\n", prog, why);
    return 2;
  }
  int rc = 0;
  if (sp->prepare && (rc = sp->prepare(d, &so, sp->ud))) return cb_status(rc);
  char url[4096], shown[512] = "";
  if (sp->open_store || sp->open_queue) {
    /* a PostgreSQL URI goes to the store and the queue as it is; it is
     * shown without its password */
    show(db, shown, sizeof shown);
    if (dsysi_pg_is_url(db)) {
      snprintf(url, sizeof url, "%s", db);
    } else {
      if (make_parent_dirs(db)) {
        fprintf(stderr, "%s: cannot create the directory of %s: %s\n", prog, db,
                strerror(errno));
        return 1;
      }
      snprintf(url, sizeof url, "sqlite://%s", db);
    }
  }
  if (sp->open_store && (rc = dsys_store_open(&d->store, url, NULL))) {
    fprintf(stderr, "%s: cannot open the store %s: %s\n", prog, shown, dsys_strerror(rc));
    return 1;
  }
  if (sp->open_queue && (rc = dsys_queue_open(&d->queue, url, NULL))) {
    fprintf(stderr, "%s: cannot open the queue %s: %s\n", prog, shown, dsys_strerror(rc));
    return 1;
  }
  const char *tf = dsys_config_get(d->cfg, "identity-token-file");
  if (tf && *tf && (rc = dsys_identity_open(&d->identity, tf, NULL))) {
    fprintf(stderr, "%s: cannot use the identity token %s: %s\n", prog, tf, dsys_strerror(rc));
    return 1;
  }
  const char *pk = dsys_config_get(d->cfg, "identity-public-key");
  if (pk && *pk && (rc = dsys_identity_verifier_new(&d->verifier, pk, NULL))) {
    fprintf(stderr, "%s: cannot use the identity public key %s: %s\n", prog, pk,
            dsys_strerror(rc));
    return 2;
  }
  const char *reg = dsys_config_get(d->cfg, "registry");
  char reg_shown[512] = "";
  if (reg) {
    show(reg, reg_shown, sizeof reg_shown);
    char err[256] = "";
    int64_t ttl = 30000;
    dsys_config_get_duration_ms(d->cfg, "registry-ttl", &ttl);
    if (ttl < 300) {
      fprintf(stderr, "%s: --registry-ttl must be at least 300ms\n", prog);
      return 2;
    }
    int64_t hb = 0;
    if (dsys_config_get(d->cfg, "registry-heartbeat") &&
        (dsys_config_get_duration_ms(d->cfg, "registry-heartbeat", &hb) || hb < 50 || hb >= ttl)) {
      /* a heartbeat as slow as the TTL lets every instance expire between two */
      fprintf(stderr, "%s: --registry-heartbeat must be at least 50ms and less than "
              "--registry-ttl (%lld ms)\n", prog, (long long)ttl);
      return 2;
    }
    char *ereg = NULL;
    if ((rc = etcd_registry_url(d->cfg, reg, &ereg, err, sizeof err))) {
      fprintf(stderr, "%s: %s\n", prog, rc == DSYS_ENOMEM ? dsys_strerror(rc) : err);
      return 2;
    }
    dsys_registry_options ro = {.size = sizeof ro, .identity = d->identity, .client = &d->peer,
                                .ttl_ms = ttl, .reap_ms = 10 * ttl};
    rc = dsys_registry_open(&d->registry, ereg ? ereg : reg, NULL, &ro, err, sizeof err);
    free(ereg);
    if (rc) {
      fprintf(stderr, "%s: cannot use the registry %s: %s%s%s\n", prog, reg_shown, dsys_strerror(rc),
              err[0] ? ": " : "", err);
      return 1;
    }
  }
  if ((rc = dsys_server_new(&d->srv, &so))) {
    fprintf(stderr, "%s: %s\n", prog, dsys_strerror(rc));
    return 1;
  }
  /* GET /metrics: requests per route, process, store latency, queue
   * depth; mounted first so no catch-all route of the service hides it. */
  if ((rc = dsys_metrics_new(&d->metrics)) || (rc = dsys_server_metrics(d->srv, d->metrics)) ||
      (rc = dsys_metrics_mount(d->srv, d->metrics)) || (rc = dsys_metrics_process(d->metrics)) ||
      (d->store && (rc = dsys_metrics_store(d->metrics, d->store))) ||
      (d->queue && (rc = dsys_metrics_queue(d->metrics, d->queue, NULL)))) {
    fprintf(stderr, "%s: metrics: %s\n", prog, dsys_strerror(rc));
    return 1;
  }
  /* peers only: the guard runs before every handler the mount adds */
  if (d->verifier && !sp->own_identity_check &&
      (rc = dsys_server_require_identity(d->srv, d->verifier))) {
    fprintf(stderr, "%s: %s\n", prog, dsys_strerror(rc));
    return 1;
  }
  if ((rc = sp->mount(d, sp->ud))) {
    if (rc != DSYS_EINVAL) fprintf(stderr, "%s: could not start the service (see the log)\n", prog);
    return cb_status(rc);
  }
  if ((rc = dsys_server_listen(d->srv, listen))) {
    fprintf(stderr, "%s: cannot listen on %s: %s\n", prog, listen, dsys_strerror(rc));
    return 1;
  }
  /* Scripts read the bound URL from this line (port 0 picks a port). */
  printf("listening %s\n", dsys_server_url(d->srv, 0));
  fflush(stdout);
  if (sp->open_store || sp->open_queue)
    dsysi_log(DSYS_LOG_INFO, name, "database %s", shown);
  if (d->registry && sp->service_type && (rc = register_instance(d, name))) {
    if (rc != DSYS_EINVAL) /* EINVAL: a flag, already said */
      fprintf(stderr, "%s: cannot use the registry %s: %s\n", prog, reg_shown, dsys_strerror(rc));
    return cb_status(rc);
  }
  return 0;
}

/* argv with the lines of cfg's --config file as flags after argv[0]
 * (before the command line's: those win, or add to a list), or NULL
 * without --config. @return 0, or nonzero with err set. */
static int config_argv(const dsys_daemon *d, const dsys_config *cfg, char ***out, int *outc,
                       char *err, size_t errlen) {
  const char *path = dsys_config_get(cfg, "config");
  *out = NULL;
  if (!path || !*path) return 0;
  char **fa = NULL;
  size_t n = 0;
  int rc = dsysi_config_file_args(d->opts, d->nopts, path, "config", &fa, &n, err, errlen);
  if (rc) return rc;
  char **av = calloc(n + (size_t)d->argc + 1, sizeof *av);
  if (!av) {
    for (size_t i = 0; i < n; i++) free(fa[i]);
    free(fa);
    snprintf(err, errlen, "out of memory");
    return DSYS_ENOMEM;
  }
  av[0] = d->argc ? d->argv[0] : (char *)"daemon";
  memcpy(av + 1, fa, n * sizeof *av);
  for (int i = 1; i < d->argc; i++) av[n + (size_t)i] = d->argv[i];
  free(fa);
  *out = av;
  *outc = (int)n + (d->argc ? d->argc : 1);
  return 0;
}

/* Free what config_argv made (the file's strings; argv's are the caller's). */
static void free_config_argv(const dsys_daemon *d, char **av, int ac) {
  if (!av) return;
  for (int i = 1; i < ac - (d->argc ? d->argc - 1 : 0); i++) free(av[i]);
  free(av);
}

/* SIGHUP: the flags, the environment and the --config file parsed again,
 * with the log settings applied; *out NULL for a daemon without --config. */
static int reread_config(dsys_daemon *d, dsys_config **out, char *err, size_t errlen) {
  dsys_config *c = NULL, *c2 = NULL;
  char **av = NULL;
  int ac = 0;
  int rc = dsys_config_parse(&c, d->opts, d->nopts, d->argc, d->argv, err, errlen);
  if (!rc) rc = config_argv(d, c, &av, &ac, err, errlen);
  if (!rc && av) {
    rc = dsys_config_parse(&c2, d->opts, d->nopts, ac, av, err, errlen);
    free_config_argv(d, av, ac);
    dsys_config_free(c);
    c = c2;
  }
  dsys_log_format fmt = DSYS_LOG_TEXT;
  dsys_log_level lvl = DSYS_LOG_INFO;
  const char *f = rc ? NULL : dsys_config_get(c, "log-format");
  const char *l = rc ? NULL : dsys_config_get(c, "log-level");
  if (!rc && ((f && dsys_log_format_parse(f, &fmt)) || (l && dsys_log_level_parse(l, &lvl)))) {
    snprintf(err, errlen, "bad --log-format or --log-level");
    rc = DSYS_EINVAL;
  }
  if (rc) {
    dsys_config_free(c);
    return rc;
  }
  *out = c;
  return 0;
}

/* SIGHUP: the daemon keeps running. The shell has no log file of its own
 * to reopen (the log goes to stderr: the journal under systemd). A daemon
 * with a reload hook gets its configuration parsed again (flags,
 * environment, --config file), then the hook rereads what it can; the new
 * configuration (log level and format included) takes effect only when
 * it parses and the hook accepts it. */
static void reload(dsys_daemon *d) {
  const char *name = dsys_config_get(d->cfg0, "name"); /* d->cfg may be freed below */
  /* MONOTONIC_USEC: what Type=notify-reload (systemd 253) expects with it */
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
             (unsigned long long)now.tv_sec * 1000000ull + (unsigned long long)now.tv_nsec / 1000);
  const char *cert = dsys_config_get(d->cfg0, "tls-cert");
  dsysi_log(DSYS_LOG_INFO, name,
            "SIGHUP: reload requested (no log file to reopen: the log goes to stderr)%s",
            d->spec.reload || cert ? "" : "; this daemon has nothing to reload");
  int rc = 0;
  /* An https listener: its certificate and key, reread (a renewed
   * certificate written over the files); new handshakes present them. */
  if (cert) {
    int trc = dsys_server_reload_tls(d->srv);
    if (trc)
      dsysi_log(DSYS_LOG_ERROR, name, "TLS certificate %s not reloaded (%s): the old one stays",
                cert, dsys_strerror(trc));
    else
      dsysi_log(DSYS_LOG_INFO, name, "TLS certificate reloaded from %s", cert);
    rc = trc;
  }
  if (d->spec.reload) {
    char err[512] = "";
    dsys_config *next = NULL, *old = d->cfg;
    int hrc;
    if ((hrc = reread_config(d, &next, err, sizeof err))) {
      dsysi_log(DSYS_LOG_ERROR, name, "reload: %s", err);
      rc = hrc;
    } else {
      d->cfg = next;
      if ((hrc = d->spec.reload(d, d->spec.ud))) rc = hrc;
      if (hrc) {
        d->cfg = old;
        dsys_config_free(next);
      } else {
        if (old != d->cfg0) dsys_config_free(old);
        dsys_log_format fmt;
        dsys_log_level lvl;
        if (!dsys_log_format_parse(dsys_config_get(next, "log-format"), &fmt)) dsys_log_set_format(fmt);
        if (!dsys_log_level_parse(dsys_config_get(next, "log-level"), &lvl)) dsys_log_set_level(lvl);
      }
    }
  }
  if (rc) dsysi_log(DSYS_LOG_ERROR, name, "reload failed (%s): what was not reloaded stays as before",
                    dsys_strerror(rc));
  else if (d->spec.reload || cert) dsysi_log(DSYS_LOG_INFO, name, "reloaded");
  sd_notifyf(0, "READY=1\nSTATUS=serving on %s", dsys_server_url(d->srv, 0));
}

/* The caller's spec in this version's layout: fields past its size read
 * as zero (append-only). */
static void copy_spec(dsys_daemon_spec *to, const dsys_daemon_spec *sp) {
  size_t first = offsetof(dsys_daemon_spec, service_type) + sizeof sp->service_type;
  size_t n = sp->size ? sp->size : first;
  memset(to, 0, sizeof *to);
  memcpy(to, sp, n < sizeof *to ? n : sizeof *to);
}

int dsys_daemon_main(const dsys_daemon_spec *spec, int argc, char *const *argv) {
  if (!spec || !spec->mount || !spec->progname) return 1;
  dsys_daemon d = {0};
  copy_spec(&d.spec, spec);
  const dsys_daemon_spec *sp = &d.spec;
  const char *prog = sp->progname;
  size_t nopts = 0;
  dsys_option *opts = build_options(sp, &nopts);
  if (!opts) return 1;
  int status = dsys_program_start(&d.cfg, opts, nopts, argc, argv, prog, sp->summary);
  if (status >= 0) {
    free(opts);
    return status;
  }
  d.opts = opts;
  d.nopts = nopts;
  d.argc = argc;
  d.argv = argv;
  {
    /* --config: parse again with the file's lines as the first flags */
    char err[512], **av = NULL;
    int ac = 0;
    if (config_argv(&d, d.cfg, &av, &ac, err, sizeof err)) {
      fprintf(stderr, "%s: --config: %s\n", prog, err);
      status = 2;
      goto done;
    }
    if (av) {
      dsys_config_free(d.cfg);
      d.cfg = NULL;
      status = dsys_program_start(&d.cfg, opts, nopts, ac, av, prog, sp->summary);
      free_config_argv(&d, av, ac);
      if (status >= 0) goto done;
    }
  }
  d.cfg0 = d.cfg;
  if ((status = dsys_program_positionals(d.cfg, prog, 0))) goto done;

  /* Block the stop and reload signals before any library thread starts;
   * wait for them synchronously below. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  const char *name = dsys_config_get(d.cfg, "name");
  status = run(&d, prog);
  if (!status) {
    /* systemd (Type=notify): listening and registration started. Without
     * NOTIFY_SOCKET sd_notify does nothing. */
    sd_notifyf(0, "READY=1\nSTATUS=serving on %s", dsys_server_url(d.srv, 0));
    int sig = 0;
    while (!sigwait(&set, &sig) && sig == SIGHUP) reload(&d);
    sd_notify(0, "STOPPING=1\nSTATUS=stopping: deregistering and draining");
    dsysi_log(DSYS_LOG_INFO, name, "%s: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    /* Deregister first so balancers stop sending new requests, then end
     * what would hold the drain (long polls, streams), then stop taking
     * requests and drain in-flight ones, then stop the service's own
     * threads (workers, hashing, timers). */
    dsys_registration_stop(d.agent);
    d.agent = NULL;
    if (sp->drain) sp->drain(&d, sp->ud);
    if (dsys_server_stop(d.srv, 5000) == DSYS_ETIMEDOUT)
      dsysi_log(DSYS_LOG_WARN, name, "some requests were cut off at shutdown");
    if (sp->unmount) sp->unmount(&d, sp->ud);
    dsysi_log(DSYS_LOG_INFO, name, "stopped");
  } else if (d.srv) {
    if (sp->drain) sp->drain(&d, sp->ud);
    dsys_server_stop(d.srv, 0);
    if (sp->unmount) sp->unmount(&d, sp->ud);
  }
  dsys_registration_stop(d.agent);
  dsys_server_free(d.srv);
  dsys_registry_close(d.registry);
  dsys_queue_close(d.queue);
  dsys_store_close(d.store);
  dsys_metrics_free(d.metrics);
  dsys_identity_verifier_free(d.verifier);
  dsys_identity_free(d.identity);
done:
  if (d.cfg != d.cfg0) dsys_config_free(d.cfg0);
  dsys_config_free(d.cfg);
  free(opts);
  return status;
}
