/*
 * upstream-client: call a service by name through dsys_upstream.
 *
 *   upstream-client [-n CALLS] [--service NAME] [--registry DB] [URL...]
 *
 * With no URL and no registry it starts three small in-process instances of
 * a "greeter" service (dsys_server on http://127.0.0.1:0), calls the
 * service by name CALLS times (default 12), and stops one instance halfway
 * to show failover. With URLs it calls those endpoints (GET /hello); with
 * --registry it discovers the instances of --service from a sqlite registry
 * file. Each call prints the endpoint that answered, the status, the number
 * of attempts and that endpoint's breaker state; the end prints the
 * per-endpoint statistics. Exit status: 0 when every call got a 2xx reply.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/distsys.h>

#define NINST 3

static void hello(dsys_request *req, void *ud) {
  char body[64];
  snprintf(body, sizeof body, "{\"hello\":\"from %s\"}", (const char *)ud);
  dsys_respond_json(req, 200, body);
}

static const char *breaker_of(dsys_upstream *u, const char *id) {
  dsys_endpoint_stats *s;
  size_t n;
  const char *name = "-";
  if (dsys_upstream_stats(u, &s, &n) == 0) {
    for (size_t i = 0; i < n; i++)
      if (!strcmp(s[i].id, id)) name = dsys_breaker_state_name(s[i].breaker_state);
    dsys_free(s);
  }
  return name;
}

static int usage(FILE *f, int rc) {
  fprintf(f, "usage: upstream-client [-n CALLS] [--service NAME] [--registry DB] [URL...]\n"
             "  -n CALLS         number of calls (default 12)\n"
             "  --service NAME   service type to discover (default greeter)\n"
             "  --registry DB    discover from this sqlite registry file\n"
             "  URL...           call these endpoints instead of local instances\n");
  return rc;
}

int main(int argc, char **argv) {
  int calls = 12;
  const char *service = "greeter", *regpath = NULL;
  const char *urls[64];
  int nurls = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return usage(stdout, 0);
    if (!strcmp(argv[i], "-n") && i + 1 < argc) calls = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--service") && i + 1 < argc) service = argv[++i];
    else if (!strcmp(argv[i], "--registry") && i + 1 < argc) regpath = argv[++i];
    else if (argv[i][0] == '-') {
      fprintf(stderr, "upstream-client: unknown option '%s'\n", argv[i]);
      return usage(stderr, 2);
    } else if (nurls < 64) urls[nurls++] = argv[i];
  }
  if (calls < 1 || calls > 100000) return usage(stderr, 2);
  dsys_log_set_level(DSYS_LOG_ERROR);

  /* Local instances when nothing else is given. */
  dsys_server *srv[NINST] = {0};
  static const char *const names[NINST] = {"inst-1", "inst-2", "inst-3"};
  int local = !nurls && !regpath;
  for (int i = 0; local && i < NINST; i++) {
    if (dsys_server_new(&srv[i], NULL) ||
        dsys_server_route(srv[i], "GET", "/hello", hello, (void *)names[i]) ||
        dsys_server_listen(srv[i], "http://127.0.0.1:0")) {
      fprintf(stderr, "upstream-client: cannot start %s\n", names[i]);
      return 1;
    }
    printf("started %s at %s\n", names[i], dsys_server_url(srv[i], 0));
  }

  dsys_registry *reg = NULL;
  if (regpath) {
    char err[256] = "";
    int rc = dsys_registry_open(&reg, "sqlite", regpath, NULL, err, sizeof err);
    if (rc) {
      fprintf(stderr, "upstream-client: registry %s: %s %s\n", regpath, dsys_strerror(rc), err);
      return 1;
    }
  }
  /* The upstream: round robin, one breaker per endpoint, retries. */
  dsys_retry_options ro = {.size = sizeof ro, .per_try_timeout_ms = 1000};
  dsys_upstream_options o = {.size = sizeof o, .service = service, .registry = reg,
                             .retry = &ro};
  dsys_upstream *u;
  int rc = dsys_upstream_new(&u, &o);
  if (rc) {
    fprintf(stderr, "upstream-client: %s\n", dsys_strerror(rc));
    return 1;
  }
  for (int i = 0; local && i < NINST; i++)
    dsys_upstream_add(u, names[i], dsys_server_url(srv[i], 0), 1);
  for (int i = 0; i < nurls; i++) {
    char id[16];
    snprintf(id, sizeof id, "ep-%d", i + 1);
    dsys_upstream_add(u, id, urls[i], 1);
  }
  printf("service %s: %zu endpoints\n", service, dsys_upstream_count(u));

  int good = 0;
  for (int i = 1; i <= calls; i++) {
    if (local && i == calls / 2 + 1) {
      printf("stopping %s\n", names[1]);
      dsys_server_free(srv[1]); /* drains, then closes the listener */
      srv[1] = NULL;
    }
    dsys_call call = {.size = sizeof call, .method = "GET", .path = "/hello"};
    dsys_reply *reply = NULL;
    dsys_upstream_result res = {.size = sizeof res};
    rc = dsys_upstream_call_ex(u, &call, &reply, &res);
    if (rc == 0) {
      size_t len;
      const char *body = dsys_reply_body(reply, &len);
      int st = dsys_reply_status(reply);
      good += st >= 200 && st < 300;
      printf("call %d: endpoint=%s status=%d attempts=%u breaker=%s body=%s\n", i,
             res.endpoint, st, res.attempts, breaker_of(u, res.endpoint), body);
      dsys_reply_free(reply);
    } else {
      printf("call %d: error=%s attempts=%u last-endpoint=%s\n", i, dsys_err_name(rc),
             res.attempts, res.endpoint[0] ? res.endpoint : "-");
    }
  }

  dsys_endpoint_stats *s;
  size_t n;
  if (dsys_upstream_stats(u, &s, &n) == 0) {
    for (size_t i = 0; i < n; i++)
      printf("endpoint %s: requests=%llu ok=%llu failures=%llu breaker=%s usable=%d p50=%lldus\n",
             s[i].id, (unsigned long long)s[i].requests, (unsigned long long)s[i].successes,
             (unsigned long long)s[i].failures, dsys_breaker_state_name(s[i].breaker_state),
             s[i].usable, (long long)s[i].p50_us);
    dsys_free(s);
  }
  printf("summary: %d calls, %d ok\n", calls, good);
  dsys_upstream_free(u);
  dsys_registry_close(reg);
  for (int i = 0; i < NINST; i++) dsys_server_free(srv[i]);
  return good == calls ? 0 : 1;
}
