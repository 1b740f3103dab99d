/*
 * Benchmark target: the same trivial JSON route served either by
 * dsys_server ("dsys") or by a bare libmicrohttpd daemon in the same
 * threading mode ("mhd"), so that bench/run-transport can measure the
 * library's own overhead with wrk in one run.
 *
 *   bench-server dsys|mhd [threads]
 * Prints "listening URL" and serves until SIGINT/SIGTERM.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <microhttpd.h>
#include <distsys/distsys.h>

static const char BODY[] = "{\"status\":\"ok\",\"service\":\"bench\"}";

static void h_json(dsys_request *req, void *ud) { dsys_respond_json(req, 200, BODY); }

static enum MHD_Result mhd_handler(void *cls, struct MHD_Connection *c, const char *url,
                                   const char *method, const char *version,
                                   const char *up, size_t *upsz, void **con_cls) {
  if (!*con_cls) { /* first call: headers only */
    *con_cls = (void *)1;
    return MHD_YES;
  }
  struct MHD_Response *r = MHD_create_response_from_buffer(sizeof BODY - 1, (void *)BODY,
                                                           MHD_RESPMEM_PERSISTENT);
  MHD_add_response_header(r, "Content-Type", "application/json");
  enum MHD_Result rc = MHD_queue_response(c, 200, r);
  MHD_destroy_response(r);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2 || (strcmp(argv[1], "dsys") && strcmp(argv[1], "mhd"))) {
    fprintf(stderr, "usage: bench-server dsys|mhd [threads]\n");
    return 2;
  }
  unsigned threads = argc > 2 ? (unsigned)atoi(argv[2]) : 2;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  dsys_log_set_level(DSYS_LOG_WARN);
  int sig;
  if (!strcmp(argv[1], "dsys")) {
    dsys_server *srv;
    dsys_server_options o = {.size = sizeof o, .threads = threads};
    dsys_server_new(&srv, &o);
    dsys_server_route(srv, "GET", "/json", h_json, NULL);
    if (dsys_server_listen(srv, "http://127.0.0.1:0")) return 1;
    printf("listening %s\n", dsys_server_url(srv, 0));
    fflush(stdout);
    sigwait(&set, &sig);
    dsys_server_free(srv);
    return 0;
  }
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct MHD_Daemon *d = MHD_start_daemon(
      MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME, 0, NULL, NULL, mhd_handler, NULL,
      MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_THREAD_POOL_SIZE, threads > 1 ? threads : 0,
      MHD_OPTION_CONNECTION_LIMIT, 1024u,
      /* the same buffer size dsys_server uses by default: a fair match */
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16384, MHD_OPTION_END);
  if (!d) return 1;
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  printf("listening http://127.0.0.1:%u\n", di ? di->port : 0);
  fflush(stdout);
  sigwait(&set, &sig);
  MHD_stop_daemon(d);
  return 0;
}
