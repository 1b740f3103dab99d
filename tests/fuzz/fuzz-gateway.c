/* Fuzz target: the gateway edge's request checks (path tricks: dot
 * segments, encoded slashes and dots, backslashes, encoded NUL; ambiguous
 * framing: Transfer-Encoding with Content-Length, disagreeing
 * Content-Lengths). Those checks are static functions of gateway.c, so the
 * target drives a whole gateway: mounted on a server listening on
 * inproc://, proxying /api to an echo backend on http://127.0.0.1. The
 * input is split at '\n' into a method, a raw request target and up to
 * four "Name: value" headers. Oracles: the backend never sees a path with
 * a "." or ".." segment after percent-decoding, a backslash or a NUL; a
 * request with ambiguous framing is answered 400 and never forwarded; the
 * gateway never answers 500. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <distsys/distsys.h>
#include <distsys/gateway.h>
#include "fuzz-lines.h"

static dsys_server *backend_, *front_;
static dsys_gateway *gw_;
static dsys_client *cli_;
static atomic_long hits_;

static int dot_segment(const char *p) {
  /* split on '/' and '\\': any "." or ".." piece */
  const char *s = p;
  for (const char *q = p;; q++) {
    if (*q == '/' || *q == '\\' || !*q) {
      size_t n = (size_t)(q - s);
      if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return 1;
      if (!*q) return 0;
      s = q + 1;
    }
  }
}

static void h_echo(dsys_request *req, void *ud) {
  atomic_fetch_add(&hits_, 1);
  const char *target = dsys_request_target(req), *path = dsys_request_path(req);
  size_t plen = strcspn(target, "?");
  if (memchr(target, '\\', plen) || dot_segment(path)) {
    fprintf(stderr, "backend got target %s (path %s)\n", target, path);
    __builtin_trap();
  }
  for (size_t i = 0; i + 2 < plen; i++)
    if (target[i] == '%' && target[i + 1] == '0' && target[i + 2] == '0') {
      fprintf(stderr, "backend got an encoded NUL: %s\n", target);
      __builtin_trap();
    }
  dsys_respond_json(req, 200, "{\"ok\":true}");
}

static void init(void) {
  dsys_log_set_level(DSYS_LOG_ERROR);
  if (dsys_server_new(&backend_, NULL) ||
      dsys_server_route(backend_, "*", "/*", h_echo, NULL) ||
      dsys_server_listen(backend_, "http://127.0.0.1:0"))
    abort();
  const char *u[1] = {dsys_server_url(backend_, 0)};
  dsys_gateway_options go = {.size = sizeof go, .try_timeout_ms = 5000,
                             .health_interval_ms = 3600000};
  if (dsys_gateway_new(&gw_, &go) || dsys_gateway_add_upstream(gw_, "be", u, 1, NULL) ||
      dsys_gateway_add_route(gw_, "/api", "be"))
    abort();
  dsys_server_options so = {.size = sizeof so, .threads = 2, .max_body = 4096};
  if (dsys_server_new(&front_, &so) || dsys_gateway_mount(gw_, front_) ||
      dsys_server_listen(front_, "inproc://fuzz-gateway"))
    abort();
  dsys_client_options co = {.size = sizeof co, .timeout_ms = 10000};
  if (dsys_client_new(&cli_, &co)) abort();
}

static void finish(void) {
  dsys_client_free(cli_);
  dsys_server_stop(front_, 1000);
  dsys_server_free(front_);
  dsys_gateway_free(gw_);
  dsys_server_stop(backend_, 1000);
  dsys_server_free(backend_);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!cli_) {
    init();
    atexit(finish);
  }
  if (size > 4096) return 0;
  char *f[6];
  char *in = fuzz_lines(data, size, f, 6);
  if (!in) return 0;
  dsys_header h[4];
  size_t nh = 0;
  int te = 0, ncl = 0, cl_differ = 0;
  const char *cl = NULL;
  for (int i = 2; i < 6 && f[i]; i++) {
    char *c = strchr(f[i], ':');
    if (!c) continue;
    *c = '\0';
    const char *v = c[1] == ' ' ? c + 2 : c + 1;
    h[nh++] = (dsys_header){f[i], v};
    if (!strcasecmp(f[i], "transfer-encoding")) te = 1;
    if (!strcasecmp(f[i], "content-length")) {
      if (cl && strcmp(cl, v)) cl_differ = 1;
      cl = v;
      ncl++;
    }
  }
  dsys_call c = {.size = sizeof c, .method = f[0], .url = "inproc://fuzz-gateway",
                 .path = f[1] ? f[1] : "/", .headers = h, .nheaders = nh};
  long before = atomic_load(&hits_);
  dsys_reply *rep = NULL;
  int rc = dsys_client_do(cli_, &c, &rep);
  if (rc == 0) {
    int st = dsys_reply_status(rep);
    if (st == 500) __builtin_trap();
    if ((te && ncl) || cl_differ) {
      if (st != 400 || atomic_load(&hits_) != before) {
        fprintf(stderr, "ambiguous framing answered %d\n", st);
        __builtin_trap();
      }
    }
    dsys_reply_free(rep);
  } else if (rc != DSYS_EINVAL) {
    fprintf(stderr, "call failed: %s\n", dsys_strerror(rc));
    __builtin_trap();
  }
  free(in);
  return 0;
}
