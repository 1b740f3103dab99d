/*
 * echo-service: the smallest complete libdistsys service.
 *
 *   echo-service [--listen URL] [--log-format text|json|journal]
 *
 * Routes: GET /health, POST /echo (answers the body back as
 * {"echo": <body as a string>, "requestId": ...}), GET /hello/:name.
 * Stops cleanly on SIGINT or SIGTERM, letting in-flight requests finish.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>

static const dsys_option opts[] = {
    {"listen", "DSYS_LISTEN", DSYS_OPT_STRING, "http://127.0.0.1:8080", "where to listen (http://, unix://)"},
    {"log-format", "DSYS_LOG_FORMAT", DSYS_OPT_STRING, "text", "text, json or journal"},
    {"help", NULL, DSYS_OPT_BOOL, NULL, "show this help"},
    {"version", NULL, DSYS_OPT_BOOL, NULL, "show the version"},
};
#define NOPTS (sizeof opts / sizeof opts[0])

/* Escape a string for JSON: enough for an example; the library's own
 * services build JSON with a real encoder. */
static void json_str(char *out, size_t n, const char *s, size_t len) {
  size_t o = 0;
  out[o++] = '"';
  for (size_t i = 0; i < len && o + 8 < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') o += (size_t)snprintf(out + o, n - o, "\\%c", c);
    else if (c < 0x20) o += (size_t)snprintf(out + o, n - o, "\\u%04x", c);
    else out[o++] = (char)c;
  }
  out[o++] = '"';
  out[o] = '\0';
}

static void h_health(dsys_request *req, void *ud) {
  dsys_respond_json(req, 200, "{\"status\":\"healthy\",\"service\":\"echo\"}");
}

static void h_echo(dsys_request *req, void *ud) {
  size_t len;
  const char *body = dsys_request_body(req, &len);
  char esc[8192], out[8400];
  if (len > 1024) {
    dsys_respond_error(req, 413, "too_large", "echo takes at most 1024 bytes");
    return;
  }
  json_str(esc, sizeof esc, body, len);
  snprintf(out, sizeof out, "{\"echo\":%s,\"requestId\":\"%s\"}", esc, dsys_request_id(req));
  dsys_respond_json(req, 200, out);
}

static void h_hello(dsys_request *req, void *ud) {
  const char *name = dsys_request_param(req, "name");
  char esc[1024], out[1200];
  json_str(esc, sizeof esc, name, strlen(name));
  snprintf(out, sizeof out, "{\"hello\":%s}", esc);
  dsys_respond_json(req, 200, out);
}

int main(int argc, char **argv) {
  dsys_config *cfg;
  /* flags, environment, --help, --version and --log-format in one call */
  int st = dsys_program_start(&cfg, opts, NOPTS, argc, argv, "echo-service",
                              "A minimal libdistsys HTTP service.");
  if (st >= 0) return st;
  if ((st = dsys_program_positionals(cfg, "echo-service", 0))) { /* it takes none */
    dsys_config_free(cfg);
    return st;
  }

  /* Block the stop signals before any library thread starts, then wait
   * for them synchronously: no async-signal-safety puzzles. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  dsys_server *srv;
  dsys_server_options so = {.size = sizeof so, .name = "echo", .access_log = 1};
  dsys_server_new(&srv, &so);
  dsys_server_route(srv, "GET", "/health", h_health, NULL);
  dsys_server_route(srv, "POST", "/echo", h_echo, NULL);
  dsys_server_route(srv, "GET", "/hello/:name", h_hello, NULL);
  int rc = dsys_server_listen(srv, dsys_config_get(cfg, "listen"));
  if (rc) {
    fprintf(stderr, "echo-service: cannot listen on %s: %s\n",
            dsys_config_get(cfg, "listen"), dsys_strerror(rc));
    dsys_server_free(srv);
    dsys_config_free(cfg);
    return 1;
  }
  /* Scripts read the bound URL from this line (port 0 picks a port). */
  printf("listening %s\n", dsys_server_url(srv, 0));
  fflush(stdout);
  int sig;
  sigwait(&set, &sig);
  dsys_log_write(DSYS_LOG_INFO, "echo", "stopping");
  dsys_server_stop(srv, 5000);
  dsys_server_free(srv);
  dsys_config_free(cfg);
  return 0;
}
