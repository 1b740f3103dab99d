/*
 * dsys-cluster: starts and supervises the reference deployment (registry,
 * 3 auth, 3 data, 3 compute, gateway, fault detector) on one shared SQLite
 * file or, with --db, on one PostgreSQL database; waits until every process is healthy and prints the URLs; restarts
 * a crashed process with backoff; on SIGINT/SIGTERM stops everything
 * cleanly (children also get SIGTERM if the supervisor itself dies).
 *
 * With --deployment FILE --host NAME it runs one host's share of a
 * multi-host deployment instead (multi-host.md): that host's etcd member,
 * its Patroni/PostgreSQL node and its daemons, on the registry in etcd and
 * the state on the Patroni cluster.
 *
 *   dsys-cluster [run] [--config FILE] [--data-dir DIR] [--db URI] [--bin-dir DIR]
 *   dsys-cluster [run] --deployment FILE --host NAME [--data-dir DIR]
 *   dsys-cluster status [--data-dir DIR]
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <grp.h>
#include <pwd.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include <distsys/services.h>
#include "cluster-tls.h"

#define MAXP 32

typedef struct proc {
  char name[32];    /* "data-2" */
  char type[16];    /* "data" */
  char bin[24];     /* "dsys-datad" */
  int port;
  int port2;        /* etcd: the peer port; patroni: PostgreSQL's port */
  pid_t pid;
  int restarts;
  int64_t started_ms, restart_at_ms, backoff_ms;
  int healthy;
} proc;

static proc P[MAXP];
static int NP;
static char host[64] = "127.0.0.1";
static char datadir[PATH_MAX] = "data", bindir[PATH_MAX], dbfile[PATH_MAX + 32];
/* --db URI (PostgreSQL): every daemon's --db and the registry's --store;
 * "" for the SQLite file dbfile */
static char dburi[2048];

static char regurl[1280];

/* --profile secure: the gateway's protective flags (cluster.md). */
static int secure;
static char secret_file[PATH_MAX + 32]; /* "" when DSYS_JWT_SECRET is used */
static char cors_origin[128];
/* ... and service identities: the key pair and one token file per process
 * in DIR/identity/ (cluster.md). */
static char id_key[PATH_MAX + 32], id_pub[PATH_MAX + 32];
static int64_t id_issued_ms;
#define ID_LIFETIME_S 86400          /* tokens live a day ... */
#define ID_REISSUE_MS (6 * 3600000LL) /* ... and are renewed every 6 hours */

static int64_t now_ms(void) { return dsys_clock_now_ms(dsys_clock_real()); }

/* Bind port (0: any) on host and release it: the port bound, or 0 with
 * the reason in probe_errno. */
static int probe_errno;
static int probe_port(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  /* as the daemons bind: a port left in TIME_WAIT by a stopped run is free */
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, host, &sa.sin_addr);
  socklen_t sl = sizeof sa;
  int got = 0;
  if (fd >= 0 && !bind(fd, (struct sockaddr *)&sa, sizeof sa) &&
      !getsockname(fd, (struct sockaddr *)&sa, &sl))
    got = ntohs(sa.sin_port);
  probe_errno = got ? 0 : errno;
  if (fd >= 0) close(fd);
  return got;
}

/* A port the layout already uses (given, or picked before). */
static int port_taken(int port) {
  for (int i = 0; i < NP; i++)
    if (P[i].port == port) return 1;
  return 0;
}

/* A free port now (bound, read back, released) so restarts reuse it.
 * Looked for below the kernel's ephemeral range first: between the
 * release here and the child's bind, any socket bound to port 0 and any
 * outgoing connection may take an ephemeral port, and the child then
 * cannot listen (seen once in make check, where other tests bind port 0
 * all the time: the gateway failed to start through all its restarts). */
static int free_port(void) {
  int lo = 32768, hi = 60999;
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
  if (f) {
    if (fscanf(f, "%d %d", &lo, &hi) != 2) lo = 32768;
    fclose(f);
  }
  enum { BASE = 10000 };
  for (int i = 0; lo > BASE + 1000 && i < 64; i++) {
    uint32_t r = 0;
    dsys_random_bytes(&r, sizeof r);
    int port = probe_port(BASE + (int)(r % (uint32_t)(lo - BASE)));
    if (port && !port_taken(port)) return port;
  }
  for (int i = 0; i < 64; i++) {
    int port = probe_port(0);
    if (port && !port_taken(port)) return port;
  }
  return 0;
}

/* A process of the layout; port 0 is picked later (pick_ports). */
static void add(const char *type, const char *bin, int idx, int port) {
  proc *p = &P[NP++];
  memset(p, 0, sizeof *p);
  snprintf(p->type, sizeof p->type, "%s", type);
  snprintf(p->bin, sizeof p->bin, "%s", bin);
  if (idx) snprintf(p->name, sizeof p->name, "%s-%d", type, idx);
  else snprintf(p->name, sizeof p->name, "%s", type);
  p->port = port;
  p->backoff_ms = 500;
}

/* A port as the config gives it: decimal 0..65535 and nothing else, or -1. */
static int parse_port(const char *s, size_t n) {
  if (n == 0 || n > 5) return -1;
  int v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (s[i] - '0');
  }
  return v <= 65535 ? v : -1;
}

/* The processes of one config key: a port ("gateway.port"), or with
 * numbered a list of them, one instance each ("data.ports"). A bad value
 * is said and gives -1 (nothing is started). */
static int add_ports(const char *key, const char *type, const char *bin, const char *list,
                     int numbered) {
  int idx = 0;
  for (const char *t = list;; t++) {
    size_t n = strcspn(t, ",");
    int port = parse_port(t, n);
    const char *why = port < 0 ? "ports are 0..65535 (0: pick a free one), comma-separated"
                      : idx && !numbered ? "one port only"
                      : NP == MAXP ? "more than 32 processes in all" : NULL;
    if (why) {
      fprintf(stderr, "dsys-cluster: bad %s '%s': %s\n", key, list, why);
      return -1;
    }
    idx++;
    add(type, bin, numbered ? idx : 0, port);
    t += n;
    if (!*t) return 0;
  }
}

/* Ports named twice would start a process that cannot listen while the
 * other one answers its health checks (P[from..NP) are one host's). */
static int dup_ports(int from) {
  for (int i = from; i < NP; i++)
    for (int j = i + 1; P[i].port && j < NP; j++)
      if (P[i].port == P[j].port || (P[j].port2 && P[i].port == P[j].port2) ||
          (P[i].port2 && (P[i].port2 == P[j].port || P[i].port2 == P[j].port2))) {
        fprintf(stderr, "dsys-cluster: port %d is given to both %s and %s\n",
                P[i].port == P[j].port || P[i].port == P[j].port2 ? P[i].port : P[i].port2,
                P[i].name, P[j].name);
        return -1;
      }
  return 0;
}

/* No port twice, then pick the free ones. */
static int pick_ports(void) {
  if (dup_ports(0)) return -1;
  for (int i = 0; i < NP; i++)
    if (!P[i].port && !(P[i].port = free_port())) {
      fprintf(stderr, "dsys-cluster: no free port on %s for %s\n", host, P[i].name);
      return -1;
    }
  return 0;
}

/* The "key = value" lines of a config or deployment file ('#' comments;
 * one value without spaces): fn(ud, path, line number, key, value) for
 * each, which says what is wrong and returns -1. -1 when any line was
 * bad or the file cannot be read (said); every line is looked at. */
static int read_kv(const char *path, int (*fn)(void *, const char *, int, const char *, const char *),
                   void *ud) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "dsys-cluster: cannot read %s: %s\n", path, strerror(errno));
    return -1;
  }
  char line[512];
  int ln = 0, bad = 0;
  while (fgets(line, sizeof line, f)) {
    ln++;
    char *h = strchr(line, '#');
    if (h) *h = 0;
    char k[64], v[256];
    int end = 0;
    /* one key, one value without spaces, nothing after */
    if (sscanf(line, " %63[^= ] = %255s %n", k, v, &end) != 2 || line[end]) {
      if (strspn(line, " \t\r\n") != strlen(line)) {
        fprintf(stderr, "dsys-cluster: %s:%d: expected 'key = value'\n", path, ln);
        bad = 1;
      }
      continue;
    }
    if (fn(ud, path, ln, k, v)) bad = 1;
  }
  fclose(f);
  return bad ? -1 : 0;
}

/* The keys of the config file, and of one host in a deployment file
 * ("NAME.data.ports"); the last two only in a deployment. */
static const char *const cfkeys[9] = {"registry.port", "auth.ports", "data.ports", "compute.ports",
                                      "gateway.port", "faultd.port", "host", "etcd", "postgres"};

static int set_key(char **vals, int n, const char *path, int ln, const char *k, const char *v) {
  for (int i = 0; i < n; i++)
    if (cfkeys[i] && !strcmp(k, cfkeys[i])) {
      free(vals[i]);
      vals[i] = strdup(v);
      return 0;
    }
  fprintf(stderr, "dsys-cluster: %s:%d: unknown key '%s'\n", path, ln, k);
  return -1;
}

static int config_line(void *ud, const char *path, int ln, const char *k, const char *v) {
  return set_key(ud, 7, path, ln, k, v);
}

/* The config file (see docs). */
static int load_config(const char *path, char *ports[7]) { return read_kv(path, config_line, ports); }

/* A multi-host deployment (multi-host.md): the hosts, what each runs, and
 * the settings every host shares. */
#define MAXH 16
typedef struct dhost {
  char name[32], addr[INET_ADDRSTRLEN];
  char *v[9]; /* by cfkeys: [0] and [6] unused; [7] "CLIENT,PEER", [8] "PG,API" */
  int ln;     /* the line that named it first */
} dhost;
static dhost H[MAXH];
static int NH, deployment;
static char me[32];             /* --host */
static char reg_prefix[200] = "/dsys/registry", db_name[64] = "postgres", db_trusted[64];
static char patroni_tmpl[PATH_MAX + 64], jwt_file[PATH_MAX];
/* tls.dir: every hop between hosts is TLS with the deployment's CA
 * (multi-host.md, "TLS and identities across hosts"); tls holds this
 * host's checked files */
static char tls_dir[PATH_MAX];
static cluster_tls tls;

static int deployment_line(void *ud, const char *path, int ln, const char *k, const char *v) {
  (void)ud;
  static const struct {
    const char *key;
    char *dst;
    size_t n;
  } global[] = {{"registry.prefix", reg_prefix, sizeof reg_prefix},
                {"db.name", db_name, sizeof db_name},
                {"db.trusted", db_trusted, sizeof db_trusted},
                {"patroni.template", patroni_tmpl, sizeof patroni_tmpl},
                {"jwt-secret-file", jwt_file, sizeof jwt_file},
                {"tls.dir", tls_dir, sizeof tls_dir}};
  for (size_t i = 0; i < sizeof global / sizeof *global; i++)
    if (!strcmp(k, global[i].key)) {
      if (strlen(v) >= global[i].n) {
        fprintf(stderr, "dsys-cluster: %s:%d: %s is too long\n", path, ln, k);
        return -1;
      }
      memcpy(global[i].dst, v, strlen(v) + 1);
      return 0;
    }
  const char *dot = strchr(k, '.');
  size_t nl = dot ? (size_t)(dot - k) : 0;
  if (!dot || nl == 0 || nl >= sizeof H[0].name || strspn(k, "abcdefghijklmnopqrstuvwxyz"
      "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != nl) {
    fprintf(stderr, "dsys-cluster: %s:%d: unknown key '%s' (host keys are NAME.KEY, NAME of "
            "letters, digits and '-', at most 31)\n", path, ln, k);
    return -1;
  }
  dhost *h = NULL;
  for (int i = 0; i < NH; i++)
    if (strlen(H[i].name) == nl && !strncmp(H[i].name, k, nl)) h = &H[i];
  if (!h) {
    if (NH == MAXH) {
      fprintf(stderr, "dsys-cluster: %s:%d: more than %d hosts\n", path, ln, MAXH);
      return -1;
    }
    h = &H[NH++];
    memcpy(h->name, k, nl);
    h->ln = ln;
  }
  if (!strcmp(dot + 1, "address")) {
    struct in_addr ia;
    if (strlen(v) >= sizeof h->addr || inet_pton(AF_INET, v, &ia) != 1) {
      fprintf(stderr, "dsys-cluster: %s:%d: bad address '%s': an IPv4 address\n", path, ln, v);
      return -1;
    }
    snprintf(h->addr, sizeof h->addr, "%s", v);
    return 0;
  }
  if (!strcmp(dot + 1, "registry.port") || !strcmp(dot + 1, "host")) {
    fprintf(stderr, "dsys-cluster: %s:%d: unknown key '%s' (no registry daemon in a deployment: "
            "the registry is in etcd; the host's address is NAME.address)\n", path, ln, k);
    return -1;
  }
  return set_key(h->v, 9, path, ln, dot + 1, v);
}

/* "A,B": two non-zero ports, or -1 (said). */
static int port_pair(const dhost *h, int key, int *a, int *b) {
  const char *v = h->v[key], *c = strchr(v, ',');
  *a = c ? parse_port(v, (size_t)(c - v)) : -1;
  *b = c ? parse_port(c + 1, strlen(c + 1)) : -1;
  if (*a > 0 && *b > 0 && *a != *b) return 0;
  fprintf(stderr, "dsys-cluster: bad %s.%s '%s': %s\n", h->name, cfkeys[key], v,
          key == 7 ? "CLIENT,PEER: etcd's two ports, 1..65535, different"
                   : "PG,API: PostgreSQL's and Patroni's ports, 1..65535, different");
  return -1;
}

static void add_pair(const char *type, const char *bin, int a, int b) {
  add(type, bin, 0, a);
  P[NP - 1].port2 = b;
}

/* Reads and checks the whole deployment, then lays out host `me`'s share
 * in P (etcd and Patroni first); also the registry and database URLs. */
static int load_deployment(const char *path) {
  if (read_kv(path, deployment_line, NULL)) return -1;
  int members = 0, pgnodes = 0, services = 0, mine = -1;
  size_t rl = 0, dl = 0;
  char etcd[1024] = "", pg[1024] = "";
  for (int i = 0; i < NH; i++) {
    dhost *h = &H[i];
    if (!h->addr[0]) {
      fprintf(stderr, "dsys-cluster: %s: host '%s' (line %d) has no %s.address\n", path, h->name,
              h->ln, h->name);
      return -1;
    }
    for (int j = 0; j < i; j++)
      if (!strcmp(H[j].addr, h->addr)) {
        fprintf(stderr, "dsys-cluster: %s: hosts '%s' and '%s' have the same address %s\n", path,
                H[j].name, h->name, h->addr);
        return -1;
      }
    int from = NP, a, b;
    if (h->v[7]) {
      if (port_pair(h, 7, &a, &b)) return -1;
      add_pair("etcd", "etcd", a, b);
      members++;
    }
    if (h->v[8]) {
      if (port_pair(h, 8, &a, &b)) return -1;
      add_pair("patroni", "patroni", b, a);
      pgnodes++;
    }
    static const char *const bins[6] = {NULL, "dsys-authd", "dsys-datad", "dsys-computed",
                                        "dsys-gatewayd", "dsys-faultd"};
    static const char *const types[6] = {NULL, "auth", "data", "compute", "gateway", "faultd"};
    for (int k = 1; k < 6; k++)
      if (h->v[k]) {
        char key[64];
        snprintf(key, sizeof key, "%.31s.%.20s", h->name, cfkeys[k]);
        if (add_ports(key, types[k], bins[k], h->v[k], k <= 3)) return -1;
        services++;
      }
    if (dup_ports(from)) return -1;
    /* only this host's processes stay in P (the others' were checked) */
    if (!strcmp(h->name, me)) mine = i;
    else NP = from;
  }
  if (mine < 0) {
    fprintf(stderr, "dsys-cluster: %s names no host '%s' (hosts:", path, me);
    for (int i = 0; i < NH; i++) fprintf(stderr, " %s", H[i].name);
    fprintf(stderr, ")\n");
    return -1;
  }
  /* The endpoints in the URLs start with this host's own (then the next
   * hosts of the file, round): a client tries them in order, and a dead
   * host listed first would cost every survivor a timeout per request or
   * connection. */
  for (int j = 0; j < NH; j++) {
    const dhost *h = &H[(mine + j) % NH];
    int a, b;
    if (h->v[7] && !port_pair(h, 7, &a, &b))
      rl += (size_t)snprintf(etcd + rl, rl < sizeof etcd ? sizeof etcd - rl : 0, "%s%s:%d",
                             rl ? "," : "", h->addr, a);
    if (h->v[8] && !port_pair(h, 8, &a, &b))
      dl += (size_t)snprintf(pg + dl, dl < sizeof pg ? sizeof pg - dl : 0, "%s%s:%d",
                             dl ? "," : "", h->addr, a);
  }
  const char *why = !members ? "no etcd member (NAME.etcd = CLIENT,PEER on 1, 3 or 5 hosts)"
                    : services && !pgnodes ? "services but no PostgreSQL node (NAME.postgres = PG,API)"
                    : pgnodes && !db_trusted[0] ? "PostgreSQL nodes but no db.trusted (the CIDR of the hosts' network)"
                    : rl >= sizeof etcd || dl >= sizeof pg ? "too many hosts for the URLs"
                    : NULL;
  unsigned o[4], bits;
  char tail;
  if (!why && db_trusted[0] &&
      (sscanf(db_trusted, "%u.%u.%u.%u/%u%c", &o[0], &o[1], &o[2], &o[3], &bits, &tail) != 5 ||
       o[0] > 255 || o[1] > 255 || o[2] > 255 || o[3] > 255 || bits > 32))
    why = "db.trusted is not an IPv4 CIDR such as 10.0.0.0/24";
  if (!why && (reg_prefix[0] != '/' || strspn(reg_prefix, "abcdefghijklmnopqrstuvwxyz"
      "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./") != strlen(reg_prefix)))
    why = "registry.prefix is a path such as /dsys/registry (letters, digits, -_./)";
  if (!why && strspn(db_name, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(db_name))
    why = "db.name is a database name of lower-case letters, digits and '_'";
  if (why) {
    fprintf(stderr, "dsys-cluster: %s: %s\n", path, why);
    return -1;
  }
  snprintf(host, sizeof host, "%s", H[mine].addr);
  snprintf(regurl, sizeof regurl, "etcd%s://%s%s", tls_dir[0] ? "s" : "", etcd, reg_prefix);
  if (pgnodes)
    /* connect_timeout=2 (libpq's least): a dead host in the list costs
     * each new connection this long while no other node accepts writes
     * (multi-host.md, "Failure timings") */
    snprintf(dburi, sizeof dburi,
             "postgresql://postgres@%s/%s?target_session_attrs=read-write&connect_timeout=2", pg,
             db_name);
  return 0;
}

/* The gateways' health-check timings of a deployment (multi-host.md,
 * "Tuning"): a dead host's instances out of every view within 2 s. Put in
 * the children's environment unless the operator's sets them. */
static void deployment_defaults(void) {
  static const char *const d[][2] = {
      {"DSYS_HEALTH_INTERVAL", "300ms"}, {"DSYS_HEALTH_TIMEOUT", "400ms"}, {"DSYS_HEALTH_FALL", "2"},
      /* every instance's breaker opens while their database fails over
       * (their 503s): closed again within 2 s of its return, not 30 */
      {"DSYS_BREAKER_OPEN", "2s"}};
  for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) setenv(d[i][0], d[i][1], 0);
}

static void url_of(const proc *p, char *buf, size_t n) {
  snprintf(buf, n, "%s://%s:%d", tls_dir[0] ? "https" : "http", host, p->port);
}

static void token_file(const proc *p, char *buf, size_t n) {
  snprintf(buf, n, "%s/identity/%s.token", datadir, p->name);
}

/* A fresh credential for p ("sub" = its name, "svc" = its type): issued
 * at every start, and renewed for running processes, which reread it. */
static int issue_identity(const proc *p) {
  char tf[PATH_MAX + 64];
  token_file(p, tf, sizeof tf);
  dsys_identity_issue_options o = {.size = sizeof o, .lifetime_s = ID_LIFETIME_S};
  int rc = dsys_identity_issue_file(id_key, p->name, p->type, &o, tf);
  if (rc) fprintf(stderr, "dsys-cluster: cannot issue the identity of %s: %s\n", p->name, dsys_strerror(rc));
  return rc;
}

/* Patroni's directory on this host (its data, socket and config), owned
 * by the postgres user when we are root (PostgreSQL refuses to run as root). */
static void patroni_dir(char *buf, size_t n) { snprintf(buf, n, "%s/patroni", datadir); }
/* with tls.dir: the copies of the TLS files that Patroni and PostgreSQL
 * (user postgres) read, in patroni/tls */
static cluster_tls pg_tls;

/* This host's Patroni config, written from the template
 * (deploy/patroni/patroni.yml.in: the @FIELD@s it documents, the same that
 * scripts/patroni-local fills for loopback), or -1 (said). */
static int patroni_config(const proc *p, const char *path, uid_t uid, gid_t gid) {
  char dir[PATH_MAX + 16], api[16], pgp[16], etcd[1024] = "";
  patroni_dir(dir, sizeof dir);
  snprintf(api, sizeof api, "%d", p->port);
  snprintf(pgp, sizeof pgp, "%d", p->port2);
  size_t el = 0;
  for (int i = 0; i < NH; i++)
    if (H[i].v[7] && el < sizeof etcd)
      el += (size_t)snprintf(etcd + el, sizeof etcd - el, "%s%s:%d", el ? "," : "", H[i].addr,
                             atoi(H[i].v[7]));
  /* with tls.dir: TLS to etcd, on the REST API (client certificates
   * required) and in PostgreSQL (hostssl, client certificates of the CA);
   * without, the template's lines that name a @TLS...@ field are left out */
  int t = tls_dir[0] != 0;
  const char *fields[][2] = {{"@NAME@", me}, {"@ADDR@", host}, {"@API_PORT@", api},
                             {"@PG_PORT@", pgp}, {"@ETCD@", etcd}, {"@DIR@", dir},
                             {"@NET@", db_trusted},
                             {"@PG_HBA@", t ? "hostssl" : "host"},
                             {"@PG_AUTH@", t ? "trust clientcert=verify-ca" : "trust"},
                             {"@ETCD_PROTOCOL@", t ? "https" : "http"},
                             {"@TLS_CA@", pg_tls.ca}, {"@TLS_CERT@", pg_tls.cert},
                             {"@TLS_KEY@", pg_tls.key}, {"@TLS@", ""}};
  FILE *in = fopen(patroni_tmpl, "r");
  if (!in) {
    fprintf(stderr, "dsys-cluster: cannot read the Patroni template %s: %s (patroni.template)\n",
            patroni_tmpl, strerror(errno));
    return -1;
  }
  char tmp[PATH_MAX + 32];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *out = fopen(tmp, "w");
  char line[1024];
  while (out && fgets(line, sizeof line, in)) {
    if (!t && strstr(line, "@TLS")) continue;
    for (const char *c = line; *c;) {
      size_t k = 0;
      while (k < sizeof fields / sizeof *fields && strncmp(c, fields[k][0], strlen(fields[k][0]))) k++;
      if (k < sizeof fields / sizeof *fields) {
        fputs(fields[k][1], out);
        c += strlen(fields[k][0]);
      } else {
        fputc(*c++, out);
      }
    }
  }
  fclose(in);
  if (!out || fclose(out) || (uid && chown(tmp, uid, gid)) || rename(tmp, path)) {
    fprintf(stderr, "dsys-cluster: cannot write %s\n", path);
    return -1;
  }
  return 0;
}

/* etcd's and Patroni's command lines (argv from a, into bufs); the user
 * Patroni runs as in *uid and *gid (0: ours). -1 when it cannot start now. */
static int infra_argv(proc *p, char **argv, int a, char bufs[][PATH_MAX + 64], uid_t *uid, gid_t *gid) {
  if (!strcmp(p->type, "etcd")) {
    const char *bin = getenv("DSYS_ETCD");
    snprintf(bufs[0], sizeof bufs[0], "%s", bin && *bin ? bin : "/usr/bin/etcd");
    snprintf(bufs[1], sizeof bufs[1], "%s/etcd", datadir);
    const char *sch = tls_dir[0] ? "https" : "http";
    snprintf(bufs[2], sizeof bufs[2], "%s://%s:%d", sch, host, p->port);
    snprintf(bufs[3], sizeof bufs[3], "%s://%s:%d", sch, host, p->port2);
    size_t l = 0;
    for (int i = 0; i < NH; i++)
      if (H[i].v[7] && l < sizeof bufs[4]) {
        const char *c = strchr(H[i].v[7], ',');
        l += (size_t)snprintf(bufs[4] + l, sizeof bufs[4] - l, "%s%s=%s://%s:%s", l ? "," : "",
                              H[i].name, sch, H[i].addr, c ? c + 1 : "");
      }
    /* the initial-* flags matter only for a new member: a restarted one
     * (its data dir kept) rejoins with what it stored */
    char *const v[] = {bufs[0], "--name", me, "--data-dir", bufs[1],
                       "--listen-client-urls", bufs[2], "--advertise-client-urls", bufs[2],
                       "--listen-peer-urls", bufs[3], "--initial-advertise-peer-urls", bufs[3],
                       "--initial-cluster", bufs[4], "--initial-cluster-token", "dsys",
                       "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn",
                       "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "10m"};
    argv[0] = bufs[0];
    for (size_t i = 1; i < sizeof v / sizeof *v; i++) argv[a++] = v[i];
    if (tls_dir[0]) {
      /* clients and peers alike present a certificate of the deployment CA */
      char *const t[] = {"--cert-file", tls.cert, "--key-file", tls.key, "--client-cert-auth",
                         "--trusted-ca-file", tls.ca, "--peer-cert-file", tls.cert,
                         "--peer-key-file", tls.key, "--peer-client-cert-auth",
                         "--peer-trusted-ca-file", tls.ca};
      for (size_t i = 0; i < sizeof t / sizeof *t; i++) argv[a++] = t[i];
    }
    return a;
  }
  /* patroni */
  const char *bin = getenv("DSYS_PATRONI");
  snprintf(bufs[0], sizeof bufs[0], "%s", bin && *bin ? bin : "/usr/bin/patroni");
  char dir[PATH_MAX + 16];
  patroni_dir(dir, sizeof dir);
  *uid = 0;
  *gid = 0;
  if (geteuid() == 0) {
    struct passwd *pw = getpwnam("postgres");
    if (!pw) {
      fprintf(stderr, "dsys-cluster: as root, Patroni runs as user postgres, which does not exist\n");
      return -1;
    }
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
  }
  if ((mkdir(dir, 0700) && errno != EEXIST) || (*uid && chown(dir, *uid, *gid))) {
    fprintf(stderr, "dsys-cluster: cannot prepare %s\n", dir);
    return -1;
  }
  snprintf(bufs[1], sizeof bufs[1], "%s/patroni.yml", dir);
  char tdir[PATH_MAX + 32];
  snprintf(tdir, sizeof tdir, "%s/tls", dir);
  if (tls_dir[0] && cluster_tls_copy(&tls, tdir, *uid, *gid, &pg_tls)) return -1;
  if (patroni_config(p, bufs[1], *uid, *gid)) return -1;
  argv[0] = bufs[0];
  argv[a++] = bufs[1];
  return a;
}

static void spawn(proc *p) {
  char listen[128], exe[PATH_MAX + 64], logf[PATH_MAX + 64], gw[128] = "";
  url_of(p, listen, sizeof listen);
  snprintf(exe, sizeof exe, "%s/%s", bindir, p->bin);
  snprintf(logf, sizeof logf, "%s/logs/%s.log", datadir, p->name);
  for (int i = 0; i < NP; i++)
    if (!strcmp(P[i].type, "gateway")) url_of(&P[i], gw, sizeof gw);
  char store[PATH_MAX + 2048];
  if (dburi[0]) snprintf(store, sizeof store, "%s", dburi);
  else snprintf(store, sizeof store, "sqlite://%s", dbfile);
  char *argv[64];
  int a = 0;
  argv[a++] = exe;
  char bufs[5][PATH_MAX + 64];
  uid_t uid = 0;
  gid_t gid = 0;
  int infra = !strcmp(p->type, "etcd") || !strcmp(p->type, "patroni");
  if (infra) {
    if ((a = infra_argv(p, argv, 1, bufs, &uid, &gid)) < 0) { /* retried like a crash */
      p->pid = 0;
      p->started_ms = now_ms();
      p->restart_at_ms = now_ms() + p->backoff_ms;
      return;
    }
    snprintf(exe, sizeof exe, "%.*s", PATH_MAX, argv[0]);
    goto start;
  }
  argv[a++] = "--listen";
  argv[a++] = listen;
  if (!strcmp(p->type, "registry")) {
    argv[a++] = "--store";
    argv[a++] = store;
  } else {
    argv[a++] = "--registry";
    argv[a++] = regurl;
  }
  if (strcmp(p->type, "registry") && strcmp(p->type, "gateway") && strcmp(p->type, "faultd")) {
    argv[a++] = "--db";
    argv[a++] = dburi[0] ? dburi : dbfile;
    argv[a++] = "--name";
    argv[a++] = p->name;
    if (deployment) {
      /* names unique across hosts too (a job's worker, its result's
       * service, log components): data-1.h1; others call this address */
      snprintf(bufs[0], sizeof bufs[0], "%s.%s", p->name, me);
      argv[a - 1] = bufs[0];
      argv[a++] = "--advertise";
      argv[a++] = listen;
      argv[a++] = "--host-id";
      argv[a++] = me;
    }
  }
  if (!strcmp(p->type, "faultd") && gw[0]) {
    argv[a++] = "--gateway";
    argv[a++] = gw;
  }
  /* with a database URI the auth instances find no secret beside it */
  if (dburi[0] && !strcmp(p->type, "auth") && secret_file[0]) {
    argv[a++] = "--jwt-secret-file";
    argv[a++] = secret_file;
  }
  if (secure && !strcmp(p->type, "gateway")) {
    static char *sec[] = {"--rate-limit", "50/100", "--user-rate-limit", "20/40",
                          "--protect", "/api/data=writes", "--protect", "/api/compute=writes",
                          "--idempotency-ttl", "24h", "--request-timeout", "10s",
                          "--max-body", "1MiB", "--max-connections", "1024"};
    for (size_t i = 0; i < sizeof sec / sizeof *sec; i++) argv[a++] = sec[i];
    if (!getenv("DSYS_CORS_ORIGIN")) {
      argv[a++] = "--cors-origin";
      argv[a++] = cors_origin;
    }
    if (secret_file[0]) {
      argv[a++] = "--jwt-secret-file";
      argv[a++] = secret_file;
    }
  }
  if (tls_dir[0]) {
    /* TLS on every hop between hosts: each process serves https with its
     * host's certificate and presents it when it calls etcd, a peer or an
     * upstream, trusting the deployment CA only; the services also demand
     * a client certificate of that CA (gateways, supervisors and the
     * other hosts' processes have one; nobody else may call them). */
    int gwy = !strcmp(p->type, "gateway"), svc = !gwy && strcmp(p->type, "faultd");
    char *const t[] = {"--tls-cert", tls.cert, "--tls-key", tls.key,
                       "--etcd-ca", tls.ca, "--etcd-cert", tls.cert, "--etcd-key", tls.key,
                       gwy ? "--upstream-ca" : "--peer-ca", tls.ca,
                       gwy ? "--upstream-cert" : "--peer-cert", tls.cert,
                       gwy ? "--upstream-key" : "--peer-key", tls.key,
                       "--tls-client-ca", tls.ca};
    for (size_t i = 0; i < sizeof t / sizeof *t - (svc ? 0 : 2); i++) argv[a++] = t[i];
  }
  /* identities: the registry and the services verify, every process but
   * the registry and the fault detector (it only reads) presents one */
  char tf[PATH_MAX + 64];
  int verifies = !strcmp(p->type, "registry") || !strcmp(p->type, "auth") ||
                 !strcmp(p->type, "data") || !strcmp(p->type, "compute");
  int presents = strcmp(p->type, "registry") && strcmp(p->type, "faultd");
  if (secure && !deployment && presents) {
    if (issue_identity(p)) { /* retried later, like a crash */
      p->pid = 0;
      p->started_ms = now_ms();
      p->restart_at_ms = now_ms() + p->backoff_ms;
      return;
    }
    token_file(p, tf, sizeof tf);
    argv[a++] = "--identity-token-file";
    argv[a++] = tf;
  }
  if (secure && !deployment && verifies) {
    argv[a++] = "--identity-public-key";
    argv[a++] = id_pub;
  }
start:
  argv[a] = NULL;
  pid_t parent = getpid(), pid = fork();
  if (pid == 0) {
    /* the log is ours (root's when we are root): opened before the switch */
    int fd = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    /* PostgreSQL refuses to run as root: Patroni (and so PostgreSQL) runs
     * as postgres. Before PDEATHSIG, which a change of user clears. */
    if (uid && (setgroups(0, NULL) || setgid(gid) || setuid(uid))) _exit(126);
    /* The child dies with the supervisor: no orphans even on SIGKILL. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(0); /* it died before the line above */
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
    execv(exe, argv);
    fprintf(stderr, "dsys-cluster: exec %s: %s\n", exe, strerror(errno));
    _exit(127);
  }
  p->pid = pid > 0 ? pid : 0;
  p->started_ms = now_ms();
  p->healthy = 0;
}

/* The inodes of TCP sockets listening on port (IPv4 and IPv6), at most
 * max, from the kernel's sock_diag netlink: the kernel dumps only sockets in
 * LISTEN state, where /proc/net/tcp lists every socket (tens of thousands
 * of TIME_WAIT entries after a load test made each read cost ~25 ms and the
 * start of the deployment seconds). */
static int listening_inodes(int port, unsigned long *inodes, int max) {
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (fd < 0) return 0;
  int n = 0;
  static const int families[] = {AF_INET, AF_INET6};
  for (int f = 0; f < 2; f++) {
    struct {
      struct nlmsghdr nh;
      struct inet_diag_req_v2 r;
    } req = {.nh = {.nlmsg_len = sizeof req, .nlmsg_type = SOCK_DIAG_BY_FAMILY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP},
             .r = {.sdiag_family = (uint8_t)families[f], .sdiag_protocol = IPPROTO_TCP, .idiag_states = 1u << 10 /* TCP_LISTEN */}};
    if (send(fd, &req, sizeof req, 0) != (ssize_t)sizeof req) break;
    for (int done = 0; !done;) {
      long buf[2048];
      ssize_t len = recv(fd, buf, sizeof buf, 0);
      if (len <= 0) break;
      for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)len); h = NLMSG_NEXT(h, len)) {
        if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) {
          done = 1;
          break;
        }
        const struct inet_diag_msg *m = NLMSG_DATA(h);
        if (ntohs(m->id.idiag_sport) == port && n < max) inodes[n++] = m->idiag_inode;
      }
    }
  }
  close(fd);
  return n;
}

/* Whether process pid holds a TCP socket listening on port (Linux): a
 * health check must be answered by the process itself, not by another
 * program that took the port while it was down (it then cannot listen). */
static int listens(pid_t pid, int port) {
  unsigned long inodes[16];
  int n = listening_inodes(port, inodes, 16);
  char dir[64];
  snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
  DIR *d = n ? opendir(dir) : NULL;
  int found = 0;
  for (struct dirent *e; d && !found && (e = readdir(d));) {
    char path[320], link[64];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    ssize_t l = readlink(path, link, sizeof link - 1);
    if (l <= 0) continue;
    link[l] = '\0';
    unsigned long ino;
    if (sscanf(link, "socket:[%lu]", &ino) == 1)
      for (int i = 0; i < n; i++) found |= ino == inodes[i];
  }
  if (d) closedir(d);
  return found;
}

/* GET /health answered 200; by p's own process when p->pid is known. */
static int check_health(dsys_client *c, proc *p) {
  if (p->pid && !listens(p->pid, p->port)) return 0;
  char url[128];
  url_of(p, url, sizeof url);
  dsys_call call = {.size = sizeof call, .url = url, .path = "/health", .timeout_ms = 1000};
  dsys_reply *r = NULL;
  int ok = dsys_client_do(c, &call, &r) == 0 && dsys_reply_status(r) == 200;
  dsys_reply_free(r);
  return ok;
}

static void write_state(void) {
  char tmp[PATH_MAX + 32], path[PATH_MAX + 32];
  snprintf(tmp, sizeof tmp, "%s/cluster.state.tmp", datadir);
  snprintf(path, sizeof path, "%s/cluster.state", datadir);
  FILE *f = fopen(tmp, "w");
  if (!f) return;
  fprintf(f, "supervisor %d\n", (int)getpid());
  /* for `status`: the files its health checks present (TLS deployment) */
  if (tls_dir[0]) fprintf(f, "tls-ca %s\ntls-cert %s\ntls-key %s\n", tls.ca, tls.cert, tls.key);
  for (int i = 0; i < NP; i++) {
    char url[128];
    url_of(&P[i], url, sizeof url);
    fprintf(f, "%s %s %d %d %s\n", P[i].name, url, (int)P[i].pid, P[i].restarts,
            P[i].pid ? (P[i].healthy ? "healthy" : "starting") : "down");
  }
  fclose(f);
  rename(tmp, path);
}

static int status_cmd(void) {
  char path[PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/cluster.state", datadir);
  FILE *f = fopen(path, "r");
  if (!f) {
    printf("no cluster state in %s (is dsys-cluster running with --data-dir %s?)\n", datadir, datadir);
    return 1;
  }
  dsys_client *c = NULL;
  char line[PATH_MAX + 64], name[64], url[160], state[32];
  int pid, restarts, sup = 0, down = 0;
  if (fscanf(f, "supervisor %d\n", &sup) != 1 || kill(sup, 0) != 0)
    printf("supervisor %d is not running (state may be stale)\n", sup), down = 1;
  else
    printf("supervisor pid %d\n", sup);
  printf("%-12s %-28s %8s %9s %s\n", "process", "url", "pid", "restarts", "health");
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    char *tf[3] = {tls.ca, tls.cert, tls.key};
    static const char *const tk[3] = {"tls-ca ", "tls-cert ", "tls-key "};
    for (int k = 0; k < 3; k++)
      if (!strncmp(line, tk[k], strlen(tk[k])))
        snprintf(tf[k], k ? sizeof tls.cert : sizeof tls.ca, "%s", line + strlen(tk[k]));
    if (sscanf(line, "%63s %159s %d %d %31s", name, url, &pid, &restarts, state) != 5) continue;
    if (!c) {
      dsys_client_options co = {.size = sizeof co, .tls_ca_file = tls.ca, .tls_cert_file = tls.cert,
                                .tls_key_file = tls.key};
      dsys_client_new(&c, tls.ca[0] ? &co : NULL);
    }
    snprintf(tls_dir, sizeof tls_dir, "%s", strncmp(url, "https:", 6) ? "" : "(state)");
    proc p = {0};
    const char *colon = strrchr(url, ':');
    p.port = colon ? atoi(colon + 1) : 0;
    int alive = pid > 0 && kill(pid, 0) == 0;
    /* the address and scheme it serves on (url_of), as recorded */
    const char *hp = strstr(url, "://"), *co = strrchr(url, ':');
    if (hp && co > hp + 3) snprintf(host, sizeof host, "%.*s", (int)(co - hp - 3), hp + 3);
    int h = alive && c && check_health(c, &p);
    if (!h) down = 1;
    printf("%-12s %-28s %8d %9d %s\n", name, url, pid, restarts, !alive ? "down" : h ? "healthy" : "unhealthy");
  }
  fclose(f);
  dsys_client_free(c);
  return down ? 1 : 0;
}

static const dsys_option opts[] = {
    {"config", "DSYS_CLUSTER_CONFIG", DSYS_OPT_STRING, NULL, "config file (see docs/reference/cluster.md)"},
    {"data-dir", "DSYS_DATA_DIR", DSYS_OPT_STRING, "data", "directory for the database, logs and state"},
    {"db", "DSYS_DB", DSYS_OPT_STRING, NULL,
     "postgresql:// URI: every daemon's database and the registry's store (default: the SQLite "
     "file DIR/distsys.sqlite)"},
    {"deployment", "DSYS_DEPLOYMENT", DSYS_OPT_STRING, NULL,
     "multi-host deployment file (docs/reference/multi-host.md): run the share of the host --host "
     "names (its etcd member, Patroni node and daemons)"},
    {"host", "DSYS_CLUSTER_HOST", DSYS_OPT_STRING, NULL, "with --deployment: this host's name in the file"},
    {"bin-dir", "DSYS_BIN_DIR", DSYS_OPT_STRING, NULL, "where the daemons are (default: beside dsys-cluster)"},
    {"profile", "DSYS_CLUSTER_PROFILE", DSYS_OPT_STRING, "plain",
     "plain (the HTTP contract of docs/reference/http-api.md as is) or secure (gateway: rate limits, JWT on data/compute writes, CORS, "
     "idempotency; service identities: only the supervisor's processes can register, services "
     "answer only peers such as the gateway; across hosts, --deployment with tls.dir: mutual TLS "
     "with the deployment CA instead of identity tokens)"},
    {"help", NULL, DSYS_OPT_BOOL, NULL, "show this help"},
    {"version", NULL, DSYS_OPT_BOOL, NULL, "show the version"},
};
#define NOPTS (sizeof opts / sizeof opts[0])

static void stop_all(void) {
  /* Front first (no new traffic), services next, the registry last. */
  static const char *order[] = {"gateway", "faultd", "auth", "data", "compute", "registry",
                                "patroni", "etcd"};
  for (size_t o = 0; o < 8; o++) {
    for (int i = 0; i < NP; i++)
      if (P[i].pid && !strcmp(P[i].type, order[o])) kill(P[i].pid, SIGTERM);
    int64_t end = now_ms() + 10000;
    for (int i = 0; i < NP; i++) {
      if (!P[i].pid || strcmp(P[i].type, order[o])) continue;
      while (now_ms() < end && waitpid(P[i].pid, NULL, WNOHANG) == 0) usleep(20000);
      if (waitpid(P[i].pid, NULL, WNOHANG) == 0) {
        kill(P[i].pid, SIGKILL);
        waitpid(P[i].pid, NULL, 0);
        /* a killed Patroni leaves its PostgreSQL running */
        if (!strcmp(P[i].type, "patroni")) {
          char pm[PATH_MAX + 64];
          patroni_dir(pm, sizeof pm);
          snprintf(pm + strlen(pm), sizeof pm - strlen(pm), "/%s/postmaster.pid", me);
          FILE *f = fopen(pm, "r");
          int pmpid = 0;
          if (f && fscanf(f, "%d", &pmpid) == 1 && pmpid > 1) kill(pmpid, SIGKILL);
          if (f) fclose(f);
        }
      }
      P[i].pid = 0;
    }
  }
}

static int run(dsys_config *cfg);

/* s percent-encoded for a URI's query (a file name in the libpq URL) */
static size_t uri_put(char *out, size_t n, const char *s) {
  size_t l = 0;
  for (; *s; s++)
    l += (size_t)snprintf(out + l, l < n ? n - l : 0,
                          strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-", *s)
                              ? "%c" : "%%%02X", (unsigned char)*s);
  return l;
}

/* A deployment's TLS (tls.dir): this host's files checked, and the
 * database URL made to verify the server (verify-full: the address is in
 * its certificate) and present this host's certificate. --profile secure
 * across hosts needs it: mutual TLS with the deployment CA is what stands
 * for the single host's identity tokens there. 0, or -1 (said). */
static int deployment_tls(const char *dep, const char *profile) {
  if (!tls_dir[0]) {
    if (strcmp(profile, "secure")) return 0;
    fprintf(stderr, "dsys-cluster: %s: --profile secure across hosts needs tls.dir = DIR (the "
            "deployment CA and each host's certificate: deploy/tls-certs makes them; multi-host.md)\n",
            dep);
    return -1;
  }
  if (cluster_tls_check(tls_dir, me, host, &tls)) return -1;
  if (!dburi[0]) return 0;
  size_t l = strlen(dburi);
  const char *k[3] = {"&sslmode=verify-full&sslrootcert=", "&sslcert=", "&sslkey="};
  const char *v[3] = {tls.ca, tls.cert, tls.key};
  for (int i = 0; i < 3; i++) {
    l += (size_t)snprintf(dburi + l, l < sizeof dburi ? sizeof dburi - l : 0, "%s", k[i]);
    l += uri_put(dburi + l, l < sizeof dburi ? sizeof dburi - l : 0, v[i]);
  }
  if (l >= sizeof dburi) {
    fprintf(stderr, "dsys-cluster: %s: the database URL with tls.dir's paths is too long\n", dep);
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  dsys_config *cfg;
  int st = dsys_program_start(&cfg, opts, NOPTS, argc, argv, "dsys-cluster [run|status]",
                              "Starts and supervises the reference deployment; 'status' reports a running one.");
  if (st >= 0) return st;
  if (!(st = dsys_program_positionals(cfg, "dsys-cluster", 1))) st = run(cfg);
  dsys_config_free(cfg); /* on every way out: sanitizer builds fail a leak */
  for (int i = 0; i < NH; i++)
    for (int k = 0; k < 9; k++) free(H[i].v[k]);
  return st;
}

/* The command (run or status) with the parsed flags: an exit status. */
static int run(dsys_config *cfg) {
  const char *cmd = dsys_config_npositional(cfg) ? dsys_config_positional(cfg, 0) : "run";
  if (!realpath(dsys_config_get(cfg, "data-dir"), datadir)) {
    mkdir(dsys_config_get(cfg, "data-dir"), 0755);
    if (!realpath(dsys_config_get(cfg, "data-dir"), datadir)) {
      fprintf(stderr, "dsys-cluster: cannot use data dir %s\n", dsys_config_get(cfg, "data-dir"));
      return 1;
    }
  }
  if (!strcmp(cmd, "status")) return status_cmd();
  if (strcmp(cmd, "run")) {
    fprintf(stderr, "dsys-cluster: unknown command '%s' (run or status)\n", cmd);
    return 2;
  }
  const char *db = dsys_config_get(cfg, "db");
  if (db && *db) {
    if (strncmp(db, "postgresql://", 13) && strncmp(db, "postgres://", 11)) {
      fprintf(stderr, "dsys-cluster: --db must be a postgresql:// URI (the SQLite file is "
              "DIR/distsys.sqlite of --data-dir)\n");
      return 2;
    }
    if (strlen(db) >= sizeof dburi) {
      fprintf(stderr, "dsys-cluster: --db URI too long\n");
      return 2;
    }
    snprintf(dburi, sizeof dburi, "%s", db);
  }
  if (dsys_config_get(cfg, "bin-dir")) {
    snprintf(bindir, sizeof bindir, "%s", dsys_config_get(cfg, "bin-dir"));
  } else {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = 0;
    char *slash = strrchr(self, '/');
    if (slash) *slash = 0;
    /* In a libtool build tree the real binaries sit in .libs/ beside this
     * one: start those, not the wrapper scripts above them, whose shell and
     * sed runs cost ~10 ms of CPU per process (the library path the wrapper
     * of dsys-cluster set is inherited). Older libtools name them lt-X
     * there: then the wrappers it is. */
    size_t l = strlen(self);
    char probe[PATH_MAX + 32];
    snprintf(probe, sizeof probe, "%s/dsys-registryd", self);
    if (l > 6 && !strcmp(self + l - 6, "/.libs") && access(probe, X_OK)) self[l - 6] = 0;
    snprintf(bindir, sizeof bindir, "%s", self);
  }
  const char *dep = dsys_config_get(cfg, "deployment"), *hn = dsys_config_get(cfg, "host");
  if (dep || hn) {
    const char *why = !dep || !hn ? "--deployment FILE and --host NAME go together"
                      : dsys_config_get(cfg, "config") || dburi[0]
                          ? "--config and --db do not apply to a deployment (the file says it all)"
                      : strlen(hn) >= sizeof me ? "--host: a name of at most 31 characters"
                      : NULL;
    if (why) {
      fprintf(stderr, "dsys-cluster: %s\n", why);
      return 2;
    }
    deployment = 1;
    snprintf(me, sizeof me, "%s", hn);
    /* unless named: the one make install put in $(datadir)/distsys, else
     * the one beside the programs (an installed tree that was moved) */
    snprintf(patroni_tmpl, sizeof patroni_tmpl, "%s/patroni.yml.in", DSYS_DATADIR);
    if (access(patroni_tmpl, R_OK))
      snprintf(patroni_tmpl, sizeof patroni_tmpl, "%s/../share/distsys/patroni.yml.in", bindir);
    if (load_deployment(dep) || pick_ports()) return 2;
    deployment_defaults();
    if (!jwt_file[0] && !getenv("DSYS_JWT_SECRET")) {
      fprintf(stderr, "dsys-cluster: %s: the auth instances of every host must share one JWT "
              "secret: set jwt-secret-file = PATH (the same file on every host) or "
              "DSYS_JWT_SECRET\n", dep);
      return 2;
    }
    snprintf(secret_file, sizeof secret_file, "%s", jwt_file);
    if (jwt_file[0] && access(jwt_file, R_OK)) {
      fprintf(stderr, "dsys-cluster: cannot read jwt-secret-file %s: %s\n", jwt_file, strerror(errno));
      return 2;
    }
    if (deployment_tls(dep, dsys_config_get(cfg, "profile"))) return 2;
  }
  if (!deployment) {
  char *cfv[7] = {strdup("3005"), strdup("3001,3002,3003"), strdup("4002,4003,4004"),
                  strdup("5002,5003,5004"), strdup("3000"), strdup("3004"), strdup("127.0.0.1")};
  int bad = dsys_config_get(cfg, "config") && load_config(dsys_config_get(cfg, "config"), cfv);
  snprintf(host, sizeof host, "%s", cfv[6]);
  struct in_addr ia;
  if (!bad && (strlen(cfv[6]) >= sizeof host || inet_pton(AF_INET, host, &ia) != 1)) {
    fprintf(stderr, "dsys-cluster: bad host '%s': an IPv4 address, e.g. 127.0.0.1\n", cfv[6]);
    bad = 1;
  }
  char fd_bin[PATH_MAX + 16];
  snprintf(fd_bin, sizeof fd_bin, "%s/dsys-faultd", bindir);
  bad = bad || add_ports("registry.port", "registry", "dsys-registryd", cfv[0], 0) ||
        add_ports("auth.ports", "auth", "dsys-authd", cfv[1], 1) ||
        add_ports("data.ports", "data", "dsys-datad", cfv[2], 1) ||
        add_ports("compute.ports", "compute", "dsys-computed", cfv[3], 1) ||
        add_ports("gateway.port", "gateway", "dsys-gatewayd", cfv[4], 0) ||
        (access(fd_bin, X_OK) == 0 && add_ports("faultd.port", "faultd", "dsys-faultd", cfv[5], 0)) ||
        pick_ports();
  for (int i = 0; i < 7; i++) free(cfv[i]);
  if (bad) return 2;
  url_of(&P[0], regurl, sizeof regurl);
  }
  /* A port something else listens on would not just fail that process:
   * the other program's answers to /health would pass for its own. */
  for (int i = 0; i < NP; i++)
    if (probe_port(P[i].port) != P[i].port) {
      if (probe_errno == EADDRNOTAVAIL) {
        fprintf(stderr, "dsys-cluster: %s is not an address of this machine (for %s)%s\n", host,
                P[i].name, deployment ? ": is --host right?" : "");
        return 1;
      }
      fprintf(stderr, "dsys-cluster: port %d on %s (for %s) is in use; is a deployment already "
              "running? (dsys-cluster status --data-dir DIR)\n", P[i].port, host, P[i].name);
      return 1;
    }
  snprintf(dbfile, sizeof dbfile, "%s/distsys.sqlite", datadir);
  char logs[PATH_MAX + 8];
  snprintf(logs, sizeof logs, "%s/logs", datadir);
  mkdir(logs, 0755);
  const char *profile = dsys_config_get(cfg, "profile");
  if (strcmp(profile, "plain") && strcmp(profile, "secure")) {
    fprintf(stderr, "dsys-cluster: unknown --profile '%s' (plain or secure)\n", profile);
    return 2;
  }
  if (!deployment && (!strcmp(profile, "secure") || dburi[0])) {
    /* The gateway (secure) and, with a database URI, the auth instances
     * take the auth services' secret from here: the environment's, or the
     * file generated in DIR (the SQLite file's directory; the file itself
     * is not created). */
    char *sec = NULL;
    size_t sl = 0;
    const char *src = NULL;
    if (dsys_auth_load_secret(NULL, dbfile, &sec, &sl, &src)) {
      fprintf(stderr, "dsys-cluster: cannot prepare the JWT secret beside %s\n", dbfile);
      return 1;
    }
    if (strcmp(src, "env")) snprintf(secret_file, sizeof secret_file, "%s/jwt-secret", datadir);
    explicit_bzero(sec, sl);
    dsys_free(sec);
  }
  if (!strcmp(profile, "secure")) {
    secure = 1;
    for (int i = 0; i < NP; i++)
      if (!strcmp(P[i].type, "faultd")) url_of(&P[i], cors_origin, sizeof cors_origin); /* its page */
    if (!cors_origin[0])
      snprintf(cors_origin, sizeof cors_origin, "%s://%s", tls_dir[0] ? "https" : "http", host);
  }
  if (secure && !deployment) {
    /* the identity key pair, made once and kept with the data */
    char iddir[PATH_MAX + 16];
    snprintf(iddir, sizeof iddir, "%s/identity", datadir);
    snprintf(id_key, sizeof id_key, "%s/identity.key", iddir);
    snprintf(id_pub, sizeof id_pub, "%s/identity.pub", iddir);
    int created = 0;
    if ((mkdir(iddir, 0700) && errno != EEXIST) || dsys_identity_keygen(id_key, id_pub, &created)) {
      fprintf(stderr, "dsys-cluster: cannot prepare the identity key in %s\n", iddir);
      return 1;
    }
    id_issued_ms = now_ms();
  }

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  /* the health checks present this host's certificate (services demand one) */
  dsys_client_options co = {.size = sizeof co, .tls_ca_file = tls.ca, .tls_cert_file = tls.cert,
                            .tls_key_file = tls.key};
  dsys_client *c;
  if (dsys_client_new(&c, tls_dir[0] ? &co : NULL)) {
    fprintf(stderr, "dsys-cluster: cannot make the health checks' HTTP client\n");
    return 1;
  }

  int64_t t0 = now_ms();
  /* A deployment host starts its etcd member and Patroni node first and
   * its daemons once they are healthy (etcd: a quorum with the other
   * hosts; Patroni: its PostgreSQL runs), so that the daemons do not spend
   * their restart backoff on a registry or database still coming up. */
  int gate = !deployment;
  for (int i = 0; i < NP; i++)
    if (!strcmp(P[i].type, "etcd") || !strcmp(P[i].type, "patroni")) spawn(&P[i]);
  if (!deployment) {
    spawn(&P[0]); /* the registry first, so instances register at once */
    for (int i = 0; i < 50 && !check_health(c, &P[0]); i++) usleep(20000);
    for (int i = 1; i < NP; i++) spawn(&P[i]);
  }
  write_state();
  int all = 0, announced = 0, stopping = 0;
  while (!stopping) {
    if (!gate) {
      gate = 1;
      for (int i = 0; i < NP; i++) gate &= !P[i].started_ms || P[i].healthy;
      for (int i = 0; gate && i < NP; i++)
        if (!P[i].started_ms) spawn(&P[i]);
      if (gate) write_state();
    }
    /* short ticks until all are healthy: start-up is mostly waiting for
     * the next look, and a look at a process not yet listening is cheap */
    struct timespec ts = {.tv_sec = 0, .tv_nsec = announced ? 200000000 : 10000000};
    int sig = sigtimedwait(&set, NULL, &ts);
    if (sig == SIGINT || sig == SIGTERM) break;
    pid_t pid;
    int st;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
      for (int i = 0; i < NP; i++)
        if (P[i].pid == pid) {
          /* Crashed: restart with backoff (reset once it ran a minute). */
          if (now_ms() - P[i].started_ms > 60000) P[i].backoff_ms = 500;
          P[i].restart_at_ms = now_ms() + P[i].backoff_ms;
          P[i].backoff_ms = P[i].backoff_ms * 2 > 30000 ? 30000 : P[i].backoff_ms * 2;
          P[i].pid = 0;
          P[i].healthy = 0;
          fprintf(stderr, "dsys-cluster: %s (pid %d) exited (%s %d); restarting in %lld ms\n", P[i].name,
                  (int)pid, WIFSIGNALED(st) ? "signal" : "status", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
                  (long long)(P[i].restart_at_ms - now_ms()));
          write_state();
        }
    if (secure && !deployment && now_ms() - id_issued_ms >= ID_REISSUE_MS) {
      id_issued_ms = now_ms();
      for (int i = 0; i < NP; i++)
        if (P[i].pid && strcmp(P[i].type, "registry") && strcmp(P[i].type, "faultd"))
          issue_identity(&P[i]);
    }
    for (int i = 0; i < NP; i++) {
      if (!P[i].pid && P[i].started_ms && now_ms() >= P[i].restart_at_ms) {
        P[i].restarts++;
        spawn(&P[i]);
        write_state();
      }
    }
    int nh = 0;
    for (int i = 0; i < NP; i++) {
      if (P[i].pid && !P[i].healthy && check_health(c, &P[i])) {
        P[i].healthy = 1;
        write_state();
      }
      nh += P[i].healthy;
    }
    all = nh == NP;
    if (all && !announced) {
      announced = 1;
      printf("dsys-cluster: all %d processes healthy in %lld ms (data in %s)\n", NP, (long long)(now_ms() - t0), datadir);
      for (int i = 0; i < NP; i++) {
        char url[128];
        url_of(&P[i], url, sizeof url);
        printf("  %-10s %s\n", P[i].name, url);
      }
      for (int i = 0; i < NP; i++)
        if (!strcmp(P[i].type, "gateway"))
          printf("gateway: http://%s:%d   (Ctrl-C stops everything)\n", host, P[i].port);
      fflush(stdout);
    } else if (!announced && now_ms() - t0 > 60000 && !deployment) {
      fprintf(stderr, "dsys-cluster: not all processes became healthy within 60 s; see %s/logs/\n", datadir);
      stopping = 1;
    } else if (!announced && deployment && (now_ms() - t0) / 1000 % 60 == 59 &&
               (now_ms() - t0) % 1000 < 200) {
      /* one host cannot tell a slow peer from a dead one: it waits */
      fprintf(stderr, "dsys-cluster: not all of %s's processes are healthy after %lld s (the "
              "other hosts must be up for etcd's quorum and Patroni); see %s/logs/\n", me,
              (long long)(now_ms() - t0) / 1000, datadir);
    }
  }
  fprintf(stderr, "dsys-cluster: stopping\n");
  stop_all();
  write_state();
  dsys_client_free(c);
  return announced ? 0 : 1;
}
