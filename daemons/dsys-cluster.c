/*
 * dsys-cluster: starts and supervises the reference deployment (registry,
 * 3 auth, 3 data, 3 compute, gateway, fault detector) on one shared SQLite
 * file or, with --db, on one PostgreSQL database; waits until every process is healthy and prints the URLs; restarts
 * a crashed process with backoff; on SIGINT/SIGTERM stops everything
 * cleanly (children also get SIGTERM if the supervisor itself dies).
 *
 *   dsys-cluster [run] [--config FILE] [--data-dir DIR] [--db URI] [--bin-dir DIR]
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
#include <unistd.h>
#include <distsys/distsys.h>
#include <distsys/services.h>

#define MAXP 32

typedef struct proc {
  char name[32];    /* "data-2" */
  char type[16];    /* "data" */
  char bin[24];     /* "dsys-datad" */
  int port;
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

static char regurl[128];

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

/* Bind port (0: any) on host and release it: the port bound, or 0. */
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
 * other one answers its health checks; then pick the free ones. */
static int pick_ports(void) {
  for (int i = 0; i < NP; i++)
    for (int j = i + 1; P[i].port && j < NP; j++)
      if (P[i].port == P[j].port) {
        fprintf(stderr, "dsys-cluster: port %d is given to both %s and %s\n", P[i].port,
                P[i].name, P[j].name);
        return -1;
      }
  for (int i = 0; i < NP; i++)
    if (!P[i].port && !(P[i].port = free_port())) {
      fprintf(stderr, "dsys-cluster: no free port on %s for %s\n", host, P[i].name);
      return -1;
    }
  return 0;
}

/* The config file: "key = value" lines, '#' comments (see docs). */
static int load_config(const char *path, char *ports[7]) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "dsys-cluster: cannot read %s: %s\n", path, strerror(errno));
    return -1;
  }
  static const char *keys[7] = {"registry.port", "auth.ports", "data.ports", "compute.ports",
                                "gateway.port", "faultd.port", "host"};
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
    int known = 0;
    for (int i = 0; i < 7; i++)
      if (!strcmp(k, keys[i])) {
        free(ports[i]);
        ports[i] = strdup(v);
        known = 1;
      }
    if (!known) {
      fprintf(stderr, "dsys-cluster: %s:%d: unknown key '%s'\n", path, ln, k);
      bad = 1;
    }
  }
  fclose(f);
  return bad ? -1 : 0;
}

static void url_of(const proc *p, char *buf, size_t n) { snprintf(buf, n, "http://%s:%d", host, p->port); }

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

static void spawn(proc *p) {
  char listen[128], exe[PATH_MAX + 32], logf[PATH_MAX + 64], gw[128] = "";
  url_of(p, listen, sizeof listen);
  snprintf(exe, sizeof exe, "%s/%s", bindir, p->bin);
  snprintf(logf, sizeof logf, "%s/logs/%s.log", datadir, p->name);
  for (int i = 0; i < NP; i++)
    if (!strcmp(P[i].type, "gateway")) url_of(&P[i], gw, sizeof gw);
  char store[PATH_MAX + 2048];
  if (dburi[0]) snprintf(store, sizeof store, "%s", dburi);
  else snprintf(store, sizeof store, "sqlite://%s", dbfile);
  char *argv[40];
  int a = 0;
  argv[a++] = exe;
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
  /* identities: the registry and the services verify, every process but
   * the registry and the fault detector (it only reads) presents one */
  char tf[PATH_MAX + 64];
  int verifies = !strcmp(p->type, "registry") || !strcmp(p->type, "auth") ||
                 !strcmp(p->type, "data") || !strcmp(p->type, "compute");
  int presents = strcmp(p->type, "registry") && strcmp(p->type, "faultd");
  if (secure && presents) {
    if (issue_identity(p)) { /* retried later, like a crash */
      p->pid = 0;
      p->restart_at_ms = now_ms() + p->backoff_ms;
      return;
    }
    token_file(p, tf, sizeof tf);
    argv[a++] = "--identity-token-file";
    argv[a++] = tf;
  }
  if (secure && verifies) {
    argv[a++] = "--identity-public-key";
    argv[a++] = id_pub;
  }
  argv[a] = NULL;
  pid_t pid = fork();
  if (pid == 0) {
    /* The child dies with the supervisor: no orphans even on SIGKILL. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
    int fd = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
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
  dsys_client *c;
  dsys_client_new(&c, NULL);
  char line[512], name[64], url[160], state[32];
  int pid, restarts, sup = 0, down = 0;
  if (fscanf(f, "supervisor %d\n", &sup) != 1 || kill(sup, 0) != 0)
    printf("supervisor %d is not running (state may be stale)\n", sup), down = 1;
  else
    printf("supervisor pid %d\n", sup);
  printf("%-12s %-28s %8s %9s %s\n", "process", "url", "pid", "restarts", "health");
  while (fgets(line, sizeof line, f)) {
    if (sscanf(line, "%63s %159s %d %d %31s", name, url, &pid, &restarts, state) != 5) continue;
    proc p = {0};
    const char *colon = strrchr(url, ':');
    p.port = colon ? atoi(colon + 1) : 0;
    int alive = pid > 0 && kill(pid, 0) == 0;
    int h = alive && check_health(c, &p);
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
    {"bin-dir", "DSYS_BIN_DIR", DSYS_OPT_STRING, NULL, "where the daemons are (default: beside dsys-cluster)"},
    {"profile", "DSYS_CLUSTER_PROFILE", DSYS_OPT_STRING, "plain",
     "plain (the HTTP contract of docs/reference/http-api.md as is) or secure (gateway: rate limits, JWT on data/compute writes, CORS, "
     "idempotency; service identities: only the supervisor's processes can register, services "
     "answer only peers such as the gateway)"},
    {"help", NULL, DSYS_OPT_BOOL, NULL, "show this help"},
    {"version", NULL, DSYS_OPT_BOOL, NULL, "show the version"},
};
#define NOPTS (sizeof opts / sizeof opts[0])

static void stop_all(void) {
  /* Front first (no new traffic), services next, the registry last. */
  static const char *order[] = {"gateway", "faultd", "auth", "data", "compute", "registry"};
  for (size_t o = 0; o < 6; o++) {
    for (int i = 0; i < NP; i++)
      if (P[i].pid && !strcmp(P[i].type, order[o])) kill(P[i].pid, SIGTERM);
    int64_t end = now_ms() + 10000;
    for (int i = 0; i < NP; i++) {
      if (!P[i].pid || strcmp(P[i].type, order[o])) continue;
      while (now_ms() < end && waitpid(P[i].pid, NULL, WNOHANG) == 0) usleep(20000);
      if (waitpid(P[i].pid, NULL, WNOHANG) == 0) {
        kill(P[i].pid, SIGKILL);
        waitpid(P[i].pid, NULL, 0);
      }
      P[i].pid = 0;
    }
  }
}

static int run(dsys_config *cfg);

int main(int argc, char **argv) {
  dsys_config *cfg;
  int st = dsys_program_start(&cfg, opts, NOPTS, argc, argv, "dsys-cluster [run|status]",
                              "Starts and supervises the reference deployment; 'status' reports a running one.");
  if (st >= 0) return st;
  if (!(st = dsys_program_positionals(cfg, "dsys-cluster", 1))) st = run(cfg);
  dsys_config_free(cfg); /* on every way out: sanitizer builds fail a leak */
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
  /* A port something else listens on would not just fail that process:
   * the other program's answers to /health would pass for its own. */
  for (int i = 0; i < NP; i++)
    if (probe_port(P[i].port) != P[i].port) {
      fprintf(stderr, "dsys-cluster: port %d on %s (for %s) is in use; is a deployment already "
              "running? (dsys-cluster status --data-dir DIR)\n", P[i].port, host, P[i].name);
      return 1;
    }
  snprintf(dbfile, sizeof dbfile, "%s/distsys.sqlite", datadir);
  char logs[PATH_MAX + 8];
  snprintf(logs, sizeof logs, "%s/logs", datadir);
  mkdir(logs, 0755);
  url_of(&P[0], regurl, sizeof regurl);
  const char *profile = dsys_config_get(cfg, "profile");
  if (strcmp(profile, "plain") && strcmp(profile, "secure")) {
    fprintf(stderr, "dsys-cluster: unknown --profile '%s' (plain or secure)\n", profile);
    return 2;
  }
  if (!strcmp(profile, "secure") || dburi[0]) {
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
      if (!strcmp(P[i].type, "faultd")) snprintf(cors_origin, sizeof cors_origin, "http://%s:%d", host, P[i].port);
    if (!cors_origin[0]) snprintf(cors_origin, sizeof cors_origin, "http://%s", host);
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
  dsys_client *c;
  dsys_client_new(&c, NULL);

  int64_t t0 = now_ms();
  spawn(&P[0]); /* the registry first, so instances register at once */
  for (int i = 0; i < 50 && !check_health(c, &P[0]); i++) usleep(20000);
  for (int i = 1; i < NP; i++) spawn(&P[i]);
  write_state();
  int all = 0, announced = 0, stopping = 0;
  while (!stopping) {
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
    if (secure && now_ms() - id_issued_ms >= ID_REISSUE_MS) {
      id_issued_ms = now_ms();
      for (int i = 0; i < NP; i++)
        if (P[i].pid && strcmp(P[i].type, "registry") && strcmp(P[i].type, "faultd"))
          issue_identity(&P[i]);
    }
    for (int i = 0; i < NP; i++) {
      if (!P[i].pid && now_ms() >= P[i].restart_at_ms) {
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
    } else if (!announced && now_ms() - t0 > 60000) {
      fprintf(stderr, "dsys-cluster: not all processes became healthy within 60 s; see %s/logs/\n", datadir);
      stopping = 1;
    }
  }
  fprintf(stderr, "dsys-cluster: stopping\n");
  stop_all();
  write_state();
  dsys_client_free(c);
  return announced ? 0 : 1;
}
