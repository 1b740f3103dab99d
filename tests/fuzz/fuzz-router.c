/* Fuzz target: the server's router. A server with a fixed set of routes
 * (":params", trailing "*", several methods) listens on inproc://; each
 * input is split at '\n' into a method, a raw request target and the values
 * of X-Request-Id and traceparent, sent through the inproc client. The
 * answer must be 200 (and then the handler saw its params), 404, 405 (with
 * an Allow header) or 400, or the client refused the call up front. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/distsys.h>
#include "fuzz-lines.h"

static dsys_server *srv_;
static dsys_client *cli_;

/* ud: the param names the route has ("" none), '|'-separated. */
static void handler(dsys_request *req, void *ud) {
  const char *names = ud;
  char buf[64];
  const char *p = names;
  while (*p) {
    size_t n = strcspn(p, "|");
    memcpy(buf, p, n);
    buf[n] = '\0';
    if (!dsys_request_param(req, buf)) __builtin_trap(); /* routed without its param */
    p += n + (p[n] == '|');
  }
  if (!dsys_request_path(req) || !dsys_request_target(req)) __builtin_trap();
  dsys_respond_json(req, 200, "{\"ok\":true}");
}

static void init(void) {
  dsys_server_options so = {.size = sizeof so, .threads = 2, .name = "fuzz-router"};
  if (dsys_server_new(&srv_, &so)) abort();
  static const struct { const char *m, *p, *names; } routes[] = {
    {"GET", "/", ""},
    {"GET", "/users/:id", "id"},
    {"PUT", "/users/:id", "id"},
    {"DELETE", "/users/:id/items/:item", "id|item"},
    {"POST", "/api/data", ""},
    {"GET", "/api/data/:id", "id"},
    {"*", "/static/*", "*"},
    {"PATCH", "/a/:x/b/*", "x|*"},
    {"GET", "/health", ""},
  };
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
    if (dsys_server_route(srv_, routes[i].m, routes[i].p, handler, (void *)routes[i].names))
      abort();
  if (dsys_server_listen(srv_, "inproc://fuzz-router")) abort();
  dsys_client_options co = {.size = sizeof co, .timeout_ms = 10000};
  if (dsys_client_new(&cli_, &co)) abort();
}

static void finish(void) {
  dsys_client_free(cli_);
  dsys_server_stop(srv_, 1000);
  dsys_server_free(srv_);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!srv_) {
    init();
    atexit(finish);
  }
  if (size > 4096) return 0;
  char *f[4];
  char *in = fuzz_lines(data, size, f, 4);
  if (!in) return 0;
  dsys_header h[2];
  size_t nh = 0;
  if (f[2]) h[nh++] = (dsys_header){"X-Request-Id", f[2]};
  if (f[3]) h[nh++] = (dsys_header){"traceparent", f[3]};
  dsys_call c = {.size = sizeof c, .method = f[0], .url = "inproc://fuzz-router",
                 .path = f[1] ? f[1] : "/", .headers = h, .nheaders = nh};
  dsys_reply *rep = NULL;
  int rc = dsys_client_do(cli_, &c, &rep);
  if (rc == 0) {
    int st = dsys_reply_status(rep);
    if (st != 200 && st != 404 && st != 405 && st != 400) __builtin_trap();
    if (st == 405) {
      const char *allow = dsys_reply_header(rep, "Allow");
      if (!allow || !*allow) __builtin_trap();
    }
    dsys_reply_free(rep);
  } else if (rc != DSYS_EINVAL) {
    __builtin_trap(); /* only a malformed call may be refused */
  }
  free(in);
  return 0;
}
