/*
 * dsys-registry: look at and repair the service registry (a registry
 * daemon, or a shared sqlite registry file). See
 * docs/reference/registry-service.md, "dsys-registry".
 *
 *   dsys-registry [--registry URL] [--json] list [--type T] [--healthy|--unhealthy]
 *   dsys-registry show ID
 *   dsys-registry watch [--type T] [--for DURATION]
 *   dsys-registry deregister ID
 *
 * Exit status: 0 done (watch: stopped by SIGINT/SIGTERM or --for); 1 an
 * error (a registry that does not answer within --timeout, a missing
 * registry file, an unknown instance: one line with the DSYS_E name);
 * 2 bad usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <distsys/distsys.h>

#include "cli-util.h"

#define PROG "dsys-registry"

static const dsys_option opts[] = {
    {"registry", "DSYS_REGISTRY", DSYS_OPT_STRING, "http://127.0.0.1:3005",
     "the registry: a dsys-registryd URL (http://HOST:PORT, https://..., unix:///PATH) or "
     "sqlite:///PATH (a shared registry file, which must exist) or "
     "etcd://HOST:PORT[,HOST:PORT...]/PREFIX"},
    {"timeout", "DSYS_REGISTRY_TIMEOUT", DSYS_OPT_DURATION, "5s",
     "how long to wait for a registry daemon or etcd: connect and request timeout"},
    {"type", "DSYS_REGISTRY_TYPE", DSYS_OPT_STRING, NULL, "list, watch: only this service type"},
    {"healthy", "DSYS_REGISTRY_HEALTHY", DSYS_OPT_BOOL, "false", "list: only healthy instances"},
    {"unhealthy", "DSYS_REGISTRY_UNHEALTHY", DSYS_OPT_BOOL, "false", "list: only unhealthy instances"},
    {"for", "DSYS_REGISTRY_WATCH_FOR", DSYS_OPT_DURATION, NULL,
     "watch: stop after this long (default: until SIGINT or SIGTERM)"},
    {"json", "DSYS_REGISTRY_JSON", DSYS_OPT_BOOL, "false",
     "print JSON instead of text (watch: one object per line)"},
    {"identity-token-file", "DSYS_IDENTITY_TOKEN_FILE", DSYS_OPT_STRING, NULL,
     "deregister on a daemon that requires identities: a token (dsys-identity issue) naming the "
     "instance's name"},
    DSYS_DAEMON_PEER_OPTIONS,
    CLI_COMMON_OPTIONS,
};
#define NOPTS (sizeof opts / sizeof opts[0])

static const char summary[] =
    "Look at and repair the service registry. Commands:\n"
    "  list [--type T] [--healthy|--unhealthy]   the instances, by id\n"
    "  show ID                    one instance\n"
    "  watch [--type T] [--for DURATION]   print each change as it happens, one line each\n"
    "  deregister ID              remove an instance\n"
    "Every command takes --json.";

static int json_out;

static int usage(const char *why) {
  fprintf(stderr, PROG ": %s (try --help)\n", why);
  return 2;
}

/* ---- output ---- */

static void json_inst(const dsys_instance *in) {
  printf("{\"id\":");
  cli_json_str(stdout, in->id);
  printf(",\"type\":");
  cli_json_str(stdout, in->type);
  printf(",\"url\":");
  cli_json_str(stdout, in->url);
  printf(",\"name\":");
  cli_json_str(stdout, in->name);
  printf(",\"tags\":[");
  for (size_t i = 0; i < in->ntags; i++) {
    if (i) printf(",");
    cli_json_str(stdout, in->tags[i]);
  }
  /* metadata is a JSON object as text (checked on registration) */
  printf("],\"metadata\":%s,\"weight\":%u,\"healthy\":%s,\"registeredAt\":%" PRId64
         ",\"lastHeartbeat\":%" PRId64 "}",
         in->metadata && *in->metadata ? in->metadata : "{}", in->weight,
         in->health == DSYS_INSTANCE_HEALTHY ? "true" : "false", in->registered_ms, in->last_heartbeat_ms);
}

static const char *health_word(const dsys_instance *in) {
  return in->health == DSYS_INSTANCE_HEALTHY ? "healthy" : "unhealthy";
}

static void text_inst(const dsys_instance *in) {
  char t[32];
  printf("id:              %s\n", in->id);
  printf("type:            %s\n", in->type);
  printf("url:             %s\n", in->url);
  printf("name:            %s\n", in->name);
  printf("health:          %s\n", health_word(in));
  printf("weight:          %u\n", in->weight);
  printf("tags:           ");
  for (size_t i = 0; i < in->ntags; i++) printf(" %s", in->tags[i]);
  printf("%s\n", in->ntags ? "" : " -");
  printf("metadata:        %s\n", in->metadata);
  printf("registered:      %s\n", cli_time(in->registered_ms, t));
  printf("last heartbeat:  %s\n", cli_time(in->last_heartbeat_ms, t));
}

/* ---- commands ---- */

static int cmd_list(dsys_registry *r, const char *type, int healthy, int unhealthy) {
  dsys_instance *v = NULL;
  size_t n = 0;
  int rc = dsys_registry_lookup(r, type, healthy, &v, &n);
  if (rc) return cli_error(PROG, "listing the instances", rc);
  size_t shown = 0;
  int wid = 2, wty = 4, wurl = 3;
  for (size_t i = 0; i < n; i++) {
    if ((int)strlen(v[i].id) > wid) wid = (int)strlen(v[i].id);
    if ((int)strlen(v[i].type) > wty) wty = (int)strlen(v[i].type);
    if ((int)strlen(v[i].url) > wurl) wurl = (int)strlen(v[i].url);
  }
  char t[32];
  if (json_out) printf("{\"instances\":[");
  for (size_t i = 0; i < n; i++) {
    if (unhealthy && v[i].health == DSYS_INSTANCE_HEALTHY) continue;
    if (json_out) {
      if (shown) printf(",");
      json_inst(&v[i]);
    } else {
      if (!shown)
        printf("%-*s %-*s %-*s %-9s %6s  %s\n", wid, "ID", wty, "TYPE", wurl, "URL", "HEALTH", "WEIGHT",
               "LAST HEARTBEAT");
      printf("%-*s %-*s %-*s %-9s %6u  %s\n", wid, v[i].id, wty, v[i].type, wurl, v[i].url,
             health_word(&v[i]), v[i].weight, cli_time(v[i].last_heartbeat_ms, t));
    }
    shown++;
  }
  if (json_out) printf("],\"total\":%zu}\n", shown);
  else if (!shown) printf("no instances\n");
  dsys_free(v);
  return 0;
}

static int cmd_show(dsys_registry *r, const char *id) {
  dsys_instance *in = NULL;
  int rc = dsys_registry_get(r, id, &in);
  if (rc) {
    char what[300];
    snprintf(what, sizeof what, "instance %s", id);
    return cli_error(PROG, what, rc);
  }
  if (json_out) {
    json_inst(in);
    printf("\n");
  } else {
    text_inst(in);
  }
  dsys_free(in);
  return 0;
}

static int cmd_deregister(dsys_registry *r, const char *id) {
  int rc = dsys_registry_deregister(r, id);
  if (rc) {
    char what[600];
    /* the handle's detail says more than the code, e.g. why a daemon
     * refused (not for an unknown id: the code says it all) */
    const char *detail = rc == DSYS_ENOTFOUND ? NULL : dsys_registry_errmsg(r);
    snprintf(what, sizeof what, "deregister %s%s%s%s", id, detail && *detail ? " (" : "",
             detail && *detail ? detail : "", detail && *detail ? ")" : "");
    return cli_error(PROG, what, rc);
  }
  if (json_out) {
    printf("{\"deregistered\":");
    cli_json_str(stdout, id);
    printf("}\n");
  } else {
    printf("deregistered %s\n", id);
  }
  return 0;
}

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static const char *const kind_names[] = {"registered", "deregistered", "unhealthy",
                                         "healthy",    "reaped",       "resync"};

static void on_change(void *ud, const dsys_registry_change *c) {
  const char *type = ud;
  if (type && c->kind != DSYS_REG_RESYNC && strcmp(type, c->type)) return;
  const char *kind = c->kind >= 0 && c->kind <= 5 ? kind_names[c->kind] : "unknown";
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  char t[32];
  pthread_mutex_lock(&out_mu);
  if (json_out) {
    printf("{\"time\":%" PRId64 ",\"index\":%" PRIu64 ",\"kind\":\"%s\",\"id\":", now, c->index, kind);
    cli_json_str(stdout, c->id);
    printf(",\"type\":");
    cli_json_str(stdout, c->type);
    printf("}\n");
  } else if (c->kind == DSYS_REG_RESYNC) {
    printf("%s %s (changes were missed: list again) index %" PRIu64 "\n", cli_time(now, t), kind, c->index);
  } else {
    printf("%s %s %s %s index %" PRIu64 "\n", cli_time(now, t), kind, c->id, c->type, c->index);
  }
  fflush(stdout);
  pthread_mutex_unlock(&out_mu);
}

static int cmd_watch(dsys_registry *r, const char *url, const char *type, int64_t for_ms,
                     const sigset_t *sigs) {
  uint64_t wid = 0, idx = 0;
  int rc = dsys_registry_watch(r, on_change, (void *)type, &wid);
  if (rc) return cli_error(PROG, "watch", rc);
  dsys_registry_index(r, &idx);
  fprintf(stderr, PROG ": watching %s%s%s from index %" PRIu64 "\n", url, type ? " for type " : "",
          type ? type : "", idx);
  struct timespec end;
  clock_gettime(CLOCK_MONOTONIC, &end);
  end.tv_sec += for_ms / 1000;
  end.tv_nsec += (for_ms % 1000) * 1000000L;
  if (end.tv_nsec >= 1000000000L) {
    end.tv_sec++;
    end.tv_nsec -= 1000000000L;
  }
  for (;;) {
    struct timespec wait = {1, 0}, now;
    if (for_ms > 0) {
      clock_gettime(CLOCK_MONOTONIC, &now);
      int64_t left = (int64_t)(end.tv_sec - now.tv_sec) * 1000 + (end.tv_nsec - now.tv_nsec) / 1000000;
      if (left <= 0) break;
      if (left < 1000) wait = (struct timespec){0, left * 1000000L};
    }
    int sig = sigtimedwait(sigs, NULL, &wait);
    if (sig == SIGINT || sig == SIGTERM) break;
  }
  dsys_registry_unwatch(r, wid);
  return 0;
}

/* ---- main ---- */

/* Does a registry daemon answer within the timeout? (A registry of the
 * http backend opens even while its daemon is down and serves an empty
 * view: an operator must hear about it instead.) */
static int probe(const char *url, const dsys_client_options *co) {
  dsys_client *c = NULL;
  int rc = dsys_client_new(&c, co);
  if (rc) return cli_error(PROG, NULL, rc);
  dsys_call call = {.size = sizeof call, .url = url, .path = "/api/registry/health"};
  dsys_reply *rep = NULL;
  rc = dsys_client_do(c, &call, &rep);
  int status = rep ? dsys_reply_status(rep) : 0;
  dsys_reply_free(rep);
  dsys_client_free(c);
  char what[600];
  if (rc) {
    snprintf(what, sizeof what, "the registry at %s does not answer (waited at most %" PRId64 " ms)", url,
             co->timeout_ms);
    return cli_error(PROG, what, rc);
  }
  if (status != 200) {
    snprintf(what, sizeof what, "the registry at %s answered HTTP %d to its health check", url, status);
    return cli_error(PROG, what, status == 503 ? DSYS_EUNAVAIL : DSYS_EHTTP);
  }
  return 0;
}

static int is_daemon_url(const char *u) {
  return !strncmp(u, "http://", 7) || !strncmp(u, "https://", 8) || !strncmp(u, "unix://", 7) ||
         !strncmp(u, "inproc://", 9);
}

int main(int argc, char **argv) {
  dsys_config *cfg = NULL;
  int st = dsys_program_start(&cfg, opts, NOPTS, argc, argv, PROG " COMMAND [ARGS]", summary);
  if (st >= 0) return st;
  static const char *const names[] = {"list", "show", "watch", "deregister"};
  static const char *const flags_of[] = {"type healthy unhealthy", "", "type for", ""};
  const char *name = dsys_config_npositional(cfg) ? dsys_config_positional(cfg, 0) : NULL;
  int ci = -1;
  for (int i = 0; name && i < 4; i++)
    if (!strcmp(name, names[i])) ci = i;
  size_t nargs = dsys_config_npositional(cfg) ? dsys_config_npositional(cfg) - 1 : 0;
  size_t want = ci == 1 || ci == 3 ? 1 : 0;
  char msg[512];
  st = -1;
  json_out = dsys_config_get_bool(cfg, "json");
  if (!name) {
    st = usage("give a command: list, show, watch or deregister");
  } else if (ci < 0) {
    snprintf(msg, sizeof msg, "unknown command '%s' (list, show, watch or deregister)", name);
    st = usage(msg);
  } else if (nargs > want) {
    st = dsys_program_positionals(cfg, PROG, 1 + want);
  } else if (nargs < want) {
    snprintf(msg, sizeof msg, "%s needs an instance id", name);
    st = usage(msg);
  } else if (want && !*dsys_config_positional(cfg, 1)) {
    st = usage("an instance id is not empty");
  }
  static const char *const own[] = {"type", "healthy", "unhealthy", "for"};
  for (size_t i = 0; st < 0 && i < 4; i++) {
    const char *f = flags_of[ci];
    size_t l = strlen(own[i]);
    int mine = 0;
    for (const char *p = f; (p = strstr(p, own[i])); p += l)
      if ((p == f || p[-1] == ' ') && (p[l] == ' ' || !p[l])) mine = 1;
    if (cli_from_flag(cfg, own[i]) && !mine) {
      snprintf(msg, sizeof msg, "--%s does not apply to %s", own[i], name);
      st = usage(msg);
    }
  }
  int healthy = dsys_config_get_bool(cfg, "healthy"), unhealthy = dsys_config_get_bool(cfg, "unhealthy");
  if (st < 0 && ci == 0 && healthy && unhealthy) st = usage("--healthy and --unhealthy exclude each other");
  const char *type = dsys_config_get(cfg, "type");
  if (st < 0 && type && !*type) st = usage("--type is not empty");
  int64_t timeout = 0, for_ms = 0;
  dsys_config_get_duration_ms(cfg, "timeout", &timeout);
  if (st < 0 && timeout <= 0) st = usage("--timeout must be positive");
  if (st < 0 && dsys_config_get(cfg, "for")) {
    dsys_config_get_duration_ms(cfg, "for", &for_ms);
    if (for_ms <= 0) st = usage("--for must be positive");
  }
  dsys_client_options co;
  if (st < 0 && dsys_daemon_client_tls(cfg, "peer", &co, msg, sizeof msg)) st = usage(msg);
  if (st >= 0) {
    dsys_config_free(cfg);
    return st;
  }
  co.connect_timeout_ms = timeout;
  co.timeout_ms = timeout;

  const char *url = dsys_config_get(cfg, "registry"), *path;
  struct stat sb;
  if (cli_sqlite_path(url, &path) && (!*path || stat(path, &sb))) {
    fprintf(stderr, PROG ": no registry file at '%s': %s: %s (give --registry or DSYS_REGISTRY)\n", *path ? path : url,
            dsys_err_name(DSYS_ENOTFOUND), *path ? strerror(errno) : "no path in the URL");
    dsys_config_free(cfg);
    return 1;
  }
  if (is_daemon_url(url) && (st = probe(url, &co))) {
    dsys_config_free(cfg);
    return st;
  }
  /* watch waits for its signals; every thread the library starts from now
   * on inherits the mask, so they arrive here */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  if (ci == 2) pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);
  dsys_identity *ident = NULL;
  const char *tf = dsys_config_get(cfg, "identity-token-file");
  int rc = 0;
  if (tf && *tf && (rc = dsys_identity_open(&ident, tf, NULL))) {
    snprintf(msg, sizeof msg, "cannot use the identity token %s", tf);
    st = cli_error(PROG, msg, rc);
    dsys_config_free(cfg);
    return st;
  }
  dsys_registry_options ro = {.size = sizeof ro, .identity = ident, .client = &co};
  dsys_registry *r = NULL;
  char err[256] = "";
  if ((rc = dsys_registry_open(&r, url, NULL, &ro, err, sizeof err))) {
    snprintf(msg, sizeof msg, "cannot open the registry %s%s%s", url, *err ? " - " : "", err);
    st = cli_error(PROG, msg, rc);
  } else if (ci == 0) {
    st = cmd_list(r, type, healthy, unhealthy);
  } else if (ci == 1) {
    st = cmd_show(r, dsys_config_positional(cfg, 1));
  } else if (ci == 2) {
    st = cmd_watch(r, url, type, for_ms, &sigs);
  } else {
    st = cmd_deregister(r, dsys_config_positional(cfg, 1));
  }
  dsys_registry_close(r);
  dsys_identity_free(ident);
  dsys_config_free(cfg);
  return st;
}
