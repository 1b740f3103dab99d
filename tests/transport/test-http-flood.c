/* Connection floods (docs/reference/server.md, "Connection floods").
 *
 * In event-loop mode on TCP a connection that has not sent a byte is held
 * outside libmicrohttpd: many of them neither take a loop's
 * max_connections nor its memory, and an ordinary client is served at
 * once beside them. Checked here, each on its own server and its own
 * loopback address (127.0.0.x, so the limits of one part do not meet the
 * others): silent connections are not counted against max_connections
 * and 2,000 of them add little memory; over max_connections_per_addr an
 * address's oldest silent connection is closed for its new one, then its
 * oldest idle one in libmicrohttpd, and a new connection is refused only
 * when all of that address's are busy, while other addresses are not
 * touched; over max_silent_connections the oldest silent one is closed;
 * with every loop full of connections that sent half a head, an ordinary
 * client takes the place of the oldest of them;
 * a silent connection is closed at the header timeout from its accept;
 * thread-pool mode refuses over the per-address limit (libmicrohttpd's
 * own); what happened is counted (dsys_server_conn_stats_get) and shown
 * as dsys_http_connections_* metrics.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include <distsys/metrics.h>
#include "net.h"
#include "tap.h"

static int64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void h_ok(dsys_request *r, void *ud) { dsys_respond_json(r, 200, "{\"ok\":true}"); }

/* Parks its request until the test answers it: a busy connection. */
static dsys_request *g_parked[64];
static atomic_int g_nparked;
static void h_park(dsys_request *r, void *ud) {
  dsys_request_defer(r);
  int i = atomic_fetch_add(&g_nparked, 1);
  if (i < 64) g_parked[i] = r;
}

static dsys_server *serve_m(dsys_server_options o, dsys_metrics *m) {
  dsys_server *s;
  o.size = sizeof o;
  if (dsys_server_new(&s, &o)) tap_bail("server_new");
  if (m && dsys_server_metrics(s, m)) tap_bail("server_metrics");
  dsys_server_route(s, "GET", "/park", h_park, NULL);
  dsys_server_route(s, "*", "/*", h_ok, NULL);
  if (dsys_server_listen(s, "http://127.0.0.1:0")) tap_bail("listen");
  return s;
}

static dsys_server *serve(dsys_server_options o) { return serve_m(o, NULL); }

/* Send a GET without waiting for its answer. */
static void send_get(int fd, const char *path) {
  char req[128];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
  if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) tap_diag("send failed");
}

/* Poll (bounded, 2 s) until g_nparked reaches n. */
static int wait_parked(int n) {
  for (int i = 0; i < 200 && atomic_load(&g_nparked) < n; i++) usleep(10000);
  return atomic_load(&g_nparked);
}

/* A connection to url's port from 127.0.0.<host>, or -1. */
static int connect_from(const char *url, int host) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in src = {.sin_family = AF_INET};
  src.sin_addr.s_addr = htonl(0x7f000000u | (unsigned)host);
  struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)test_port_of(url))};
  dst.sin_addr.s_addr = htonl(0x7f000001u);
  struct timeval tv = {.tv_sec = 2};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (bind(fd, (struct sockaddr *)&src, sizeof src) || connect(fd, (struct sockaddr *)&dst, sizeof dst)) {
    close(fd);
    return -1;
  }
  return fd;
}

/* 1 when fd's peer closed it within wait_ms (EOF or reset). */
static int closed_within(int fd, int wait_ms) {
  struct timeval tv = {.tv_sec = wait_ms / 1000, .tv_usec = (wait_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char b[512];
  ssize_t r;
  while ((r = recv(fd, b, sizeof b, 0)) > 0) {
  }
  return r == 0 || (r < 0 && errno == ECONNRESET);
}

/* 1 when fd is still open: nothing to read and no end within wait_ms. */
static int open_after(int fd, int wait_ms) {
  struct timeval tv = {.tv_sec = wait_ms / 1000, .tv_usec = (wait_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char b;
  return recv(fd, &b, 1, MSG_PEEK) < 0 && errno == EAGAIN;
}

/* One keep-alive GET on fd: the status, or -1. */
static int get_on(int fd, const char *path) {
  char req[128], buf[1024];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
  if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) return -1;
  struct timeval tv = {.tv_sec = 2};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ssize_t r = recv(fd, buf, sizeof buf - 1, 0);
  if (r < 12) return -1;
  buf[r] = 0;
  return atoi(buf + 9);
}

/* A GET on a new connection from 127.0.0.<host>: the status, or -1. */
static int get_from(const char *url, int host, int64_t *ms) {
  int64_t t0 = now_ms();
  int fd = connect_from(url, host);
  int st = fd >= 0 ? get_on(fd, "/x") : -1;
  if (fd >= 0) close(fd);
  if (ms) *ms = now_ms() - t0;
  return st;
}

static dsys_server_conn_stats stats(dsys_server *s) {
  dsys_server_conn_stats st = {.size = sizeof st};
  dsys_server_conn_stats_get(s, &st);
  return st;
}

/* Poll (bounded, 3 s) until the server holds want silent connections. */
static uint64_t wait_silent(dsys_server *s, uint64_t want) {
  uint64_t n = 0;
  for (int i = 0; i < 300 && (n = stats(s).silent) != want; i++) usleep(10000);
  return n;
}

/* The same for open connections. */
static uint64_t wait_open(dsys_server *s, uint64_t want) {
  uint64_t n = 0;
  for (int i = 0; i < 300 && (n = stats(s).open) != want; i++) usleep(10000);
  return n;
}

static long rss_kib(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long size = 0, res = 0;
  if (f) {
    if (fscanf(f, "%ld %ld", &size, &res) != 2) res = 0;
    fclose(f);
  }
  return res * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(void) {
  dsys_log_set_level(DSYS_LOG_ERROR);
  /* 2,000 silent connections plus their server sides */
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 5000) tap_bail("ulimit -n hard limit below 5000");
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);

  /* ---- defaults ---- */
  dsys_server *s;
  dsys_server_new(&s, NULL);
  dsys_server_options got = {.size = sizeof got};
  dsys_server_get_options(s, &got);
  is_int(got.max_connections_per_addr, DSYS_SERVER_PER_ADDR_DEFAULT, "max_connections_per_addr: 1024 by default");
  is_int(DSYS_SERVER_PER_ADDR_DEFAULT, 1024, "(1024)");
  is_int(got.max_silent_connections, 65536, "max_silent_connections: 65536 by default");
  dsys_server_free(s);

  /* ---- silent connections are cheap and not counted per loop ---- */
  s = serve((dsys_server_options){.event_loops = 2, .max_connections = 2,
                                  .max_connections_per_addr = DSYS_SERVER_LIMIT_OFF});
  const char *url = dsys_server_url(s, 0);
  long rss0 = rss_kib();
  enum { NS = 2000 };
  static int sil[NS];
  int nsil = 0;
  for (int i = 0; i < NS; i++) nsil += (sil[i] = connect_from(url, 2)) >= 0;
  is_int(nsil, NS, "2,000 connections that send nothing are accepted");
  is_int(wait_silent(s, NS), NS, "all 2,000 held as silent (max_connections is 2 per loop)");
  long grew = rss_kib() - rss0;
  /* in libmicrohttpd each would hold a 16 KiB pool from its accept */
  ok(grew < 3 * 1024, "they add %ld KiB to the process (%ld bytes each)", grew, grew * 1024 / NS);
  int64_t ms;
  is_int(get_from(url, 3, &ms), 200, "an ordinary client is served beside them");
  ok(ms < 500, "at once (%lld ms)", (long long)ms);
  is_int(wait_open(s, NS), NS, "open counts them (the ordinary one is gone)");
  dsys_server_conn_stats st;
  for (int i = 0; i < NS; i++) close(sil[i]);
  is_int(wait_silent(s, 0), 0, "closed by their clients: none left");
  dsys_server_free(s);

  /* ---- per address ---- */
  dsys_metrics *m;
  dsys_metrics_new(&m);
  s = serve_m((dsys_server_options){.event_loops = 2, .max_connections_per_addr = 4}, m);
  url = dsys_server_url(s, 0);
  int a[5];
  for (int i = 0; i < 4; i++) a[i] = connect_from(url, 4);
  int other = connect_from(url, 5);
  wait_silent(s, 5);
  a[4] = connect_from(url, 4); /* the 5th of 127.0.0.4 */
  ok(closed_within(a[0], 2000), "over the per-address limit: that address's oldest silent one is closed");
  int o1 = open_after(a[1], 200), o2 = open_after(other, 10);
  ok(o1 && o2, "its others and another address's stay (%d %d)", o1, o2);
  is_int(get_on(a[4], "/x"), 200, "the new one is served");
  st = stats(s);
  is_int(st.evicted_per_addr, 1, "counted: evicted per_addr 1");
  /* a[1..4] now: three silent, a[4] idle in libmicrohttpd */
  for (int i = 1; i < 4; i++) send_get(a[i], "/park");
  is_int(wait_parked(3), 3, "three of the address's connections busy");
  int b = connect_from(url, 4);
  ok(closed_within(a[4], 2000), "the next one takes the place of its idle connection in libmicrohttpd");
  send_get(b, "/park");
  is_int(wait_parked(4), 4, "and is busy too");
  int c = connect_from(url, 4);
  ok(closed_within(c, 2000), "all four busy: a new one of that address is closed at once");
  is_int(get_from(url, 5, NULL), 200, "another address is served");
  st = stats(s);
  is_int(st.evicted_per_addr, 2, "evicted per_addr 2");
  is_int(st.refused_per_addr, 1, "refused per_addr 1");
  /* the metrics show the same: 4 busy and the other address's silent one */
  is_int(wait_open(s, 5), 5, "5 open");
  char *text = NULL;
  size_t tlen = 0;
  dsys_metrics_render(m, &text, &tlen);
  ok(text && strstr(text, "dsys_http_connections_evicted_total{reason=\"per_addr\"} 2\n") &&
         strstr(text, "dsys_http_connections_refused_total{reason=\"per_addr\"} 1\n") &&
         strstr(text, "dsys_http_connections_open 5\n") &&
         strstr(text, "# TYPE dsys_http_connections_silent gauge\n"),
     "dsys_http_connections_* metrics");
  dsys_free(text);
  for (int i = 0; i < 4; i++) dsys_respond_json(g_parked[i], 200, "{}");
  for (int i = 1; i < 4; i++) close(a[i]);
  close(b);
  close(c);
  close(other);
  dsys_server_free(s);
  dsys_metrics_free(m);

  /* ---- max_silent_connections ---- */
  s = serve((dsys_server_options){.event_loops = 1, .max_silent_connections = 8});
  url = dsys_server_url(s, 0);
  int q[9];
  for (int i = 0; i < 8; i++) q[i] = connect_from(url, 6);
  wait_silent(s, 8);
  q[8] = connect_from(url, 7);
  ok(closed_within(q[0], 2000), "over max_silent_connections the oldest silent one is closed");
  ok(open_after(q[1], 200), "the next oldest stays");
  is_int(get_on(q[8], "/x"), 200, "the new one is served");
  is_int(stats(s).evicted_silent, 1, "counted: evicted silent_limit 1");
  for (int i = 1; i < 9; i++) close(q[i]);
  dsys_server_free(s);

  /* ---- half a head is idle too: a full server evicts it ---- */
  s = serve((dsys_server_options){.event_loops = 2, .max_connections = 2});
  url = dsys_server_url(s, 0);
  int half[4];
  for (int i = 0; i < 4; i++) {
    half[i] = connect_from(url, 11);
    if (half[i] >= 0) send(half[i], "GET /x HT", 9, MSG_NOSIGNAL);
    /* in libmicrohttpd, one after another (oldest first), each accepted
     * before the next connects: a loop at its max_connections stops
     * accepting and leaves the next to the other loop (before it is
     * counted open, silent is 0 already: seen once under load, 3 open) */
    wait_open(s, (uint64_t)i + 1);
    wait_silent(s, 0);
  }
  is_int(wait_open(s, 4), 4, "4 connections with half a head fill both loops (max_connections 2)");
  is_int(get_from(url, 12, &ms), 200, "an ordinary client is served");
  ok(closed_within(half[0], 2000), "in the place of the oldest half-head connection");
  is_int(stats(s).evicted_full, 1, "counted: evicted full 1");
  for (int i = 0; i < 4; i++) close(half[i]);
  dsys_server_free(s);

  /* ---- the header timeout closes a silent connection ---- */
  s = serve((dsys_server_options){.event_loops = 2, .header_timeout_s = 1});
  url = dsys_server_url(s, 0);
  int64_t t0 = now_ms();
  int h = connect_from(url, 8);
  int cut = closed_within(h, 3000);
  int64_t took = now_ms() - t0;
  ok(cut && took >= 900 && took <= 1800, "a connection that sends nothing is closed at the 1 s header timeout (%lld ms)",
     (long long)took);
  is_int(stats(s).header_timeouts, 1, "counted: timed out header 1");
  is_int(stats(s).open, 0, "none open");
  close(h);
  dsys_server_free(s);

  /* ---- thread-pool mode: libmicrohttpd's per-address limit ---- */
  s = serve((dsys_server_options){.max_connections_per_addr = 3});
  url = dsys_server_url(s, 0);
  int p[4];
  for (int i = 0; i < 4; i++) p[i] = connect_from(url, 9);
  ok(closed_within(p[3], 2000), "thread-pool mode: over the per-address limit a new connection is refused");
  ok(open_after(p[0], 200), "the older ones stay");
  is_int(get_from(url, 10, NULL), 200, "another address is served");
  for (int i = 0; i < 4; i++) close(p[i]);
  dsys_server_free(s);
  return tap_done();
}
