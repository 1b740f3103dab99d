/* How an http listener with two event loops takes its connections.
 *
 * One listening socket, accepted by loop 0 and handed to the loop with
 * the fewest connections (lib/transport/http_server.c, on_accept). With
 * one SO_REUSEPORT socket per loop, as before, the kernel's hash put
 * 170 and 150 of 320 benchmark connections on the two loops, and the
 * busier loop set the gateway's tail latency.
 *
 * Checks: connections opened one after another alternate between the
 * two loops (each answers from its own thread); max_connections holds
 * per loop: a connection over the total that sends a request takes the
 * place of the oldest idle one, and when all are busy it waits (accepted,
 * not in the backlog) and is served once one of them is done; with no
 * descriptor left the accepting loop pauses instead of spinning; stop
 * closes the listening socket. */
#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "net.h"
#include "tap.h"

/* Answers with an id of the thread that runs the handler: in event-loop
 * mode that is the loop the connection belongs to. */
static void h_thread(dsys_request *r, void *ud) {
  (void)ud;
  char body[64];
  snprintf(body, sizeof body, "{\"thread\":\"%lx\"}", (unsigned long)pthread_self());
  dsys_respond_json(r, 200, body);
}

/* One keep-alive GET on fd. Fills thread (from the body) and returns the
 * status, or -1 when nothing complete came back within wait_ms. */
static int get_on(int fd, int wait_ms, char *thread, size_t cap) {
  static const char req[] = "GET /t HTTP/1.1\r\nHost: x\r\n\r\n";
  if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1)) return -1;
  struct timeval tv = {.tv_sec = wait_ms / 1000, .tv_usec = (wait_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[1024];
  size_t n = 0;
  /* bounded: each recv waits at most wait_ms, the buffer bounds the count */
  while (n < sizeof buf - 1) {
    ssize_t r = recv(fd, buf + n, sizeof buf - 1 - n, 0);
    if (r <= 0) return -1;
    n += (size_t)r;
    buf[n] = 0;
    const char *t = strstr(buf, "\"thread\":\"");
    if (t && strchr(t + 10, '"')) {
      t += 10;
      size_t l = (size_t)(strchr(t, '"') - t);
      if (l >= cap) l = cap - 1;
      memcpy(thread, t, l);
      thread[l] = 0;
      return atoi(buf + 9);
    }
  }
  return -1;
}

/* Parks its request until the test answers it: a busy connection. */
static dsys_request *g_parked[8];
static int g_nparked;
/* The loops' threads park at once: a load then a store of the count lost
 * one of two concurrent increments (3 parked of 4 in a CI run). */
static pthread_mutex_t g_park_mu = PTHREAD_MUTEX_INITIALIZER;
static void h_park(dsys_request *r, void *ud) {
  (void)ud;
  dsys_request_defer(r);
  pthread_mutex_lock(&g_park_mu);
  if (g_nparked < 8) g_parked[g_nparked] = r;
  g_nparked++;
  pthread_mutex_unlock(&g_park_mu);
}

static int nparked(void) {
  pthread_mutex_lock(&g_park_mu);
  int n = g_nparked;
  pthread_mutex_unlock(&g_park_mu);
  return n;
}

/* Wait (bounded) until fd's peer closes: 1 when it did within wait_ms. */
static int closed_within(int fd, int wait_ms) {
  struct timeval tv = {.tv_sec = wait_ms / 1000, .tv_usec = (wait_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char b[256];
  ssize_t r;
  while ((r = recv(fd, b, sizeof b, 0)) > 0) {
  }
  return r == 0 || (r < 0 && errno == ECONNRESET);
}

static dsys_server *start(uint32_t max_conns) {
  dsys_server *srv = NULL;
  dsys_server_options o = {.size = sizeof o, .event_loops = 2, .max_connections = max_conns};
  if (dsys_server_new(&srv, &o)) tap_bail("server_new");
  dsys_server_route(srv, "GET", "/t", h_thread, NULL);
  dsys_server_route(srv, "GET", "/park", h_park, NULL);
  if (dsys_server_listen(srv, "http://127.0.0.1:0")) tap_bail("listen");
  return srv;
}

int main(void) {
  /* ---- spread: 8 connections, one after another ---- */
  dsys_server *srv = start(0);
  const char *url = dsys_server_url(srv, 0);
  int fds[8];
  char threads[8][32];
  int served = 0;
  for (int i = 0; i < 8; i++) {
    fds[i] = test_connect_timeout(url, 2);
    threads[i][0] = 0;
    if (fds[i] >= 0 && get_on(fds[i], 2000, threads[i], sizeof threads[i]) == 200) served++;
  }
  is_int(served, 8, "8 keep-alive connections served");
  int first = 0;
  for (int i = 0; i < 8; i++) first += !strcmp(threads[i], threads[0]);
  is_int(first, 4, "4 of 8 connections on the first loop, 4 on the other");
  int alternate = 1;
  for (int i = 1; i < 8; i++) alternate &= strcmp(threads[i], threads[i - 1]) != 0;
  ok(alternate, "each new connection went to the loop with fewer connections");
  /* the connections stay on their loops */
  char again[32] = "";
  ok(fds[1] >= 0 && get_on(fds[1], 2000, again, sizeof again) == 200 && !strcmp(again, threads[1]),
     "a second request on a connection is answered by the same loop");
  /* one closes: the next connection goes to the loop that lost it */
  close(fds[2]);
  usleep(200000);
  fds[2] = test_connect_timeout(url, 2);
  char th[32] = "";
  ok(fds[2] >= 0 && get_on(fds[2], 2000, th, sizeof th) == 200 && !strcmp(th, threads[2]),
     "after a close, a new connection fills the loop that has room");
  for (int i = 0; i < 8; i++)
    if (fds[i] >= 0) close(fds[i]);
  dsys_server_free(srv);

  /* ---- max_connections 2 per loop: 4 in all ---- */
  srv = start(2);
  url = dsys_server_url(srv, 0);
  int held[4];
  served = 0;
  for (int i = 0; i < 4; i++) {
    held[i] = test_connect_timeout(url, 2);
    char t[32];
    if (held[i] >= 0 && get_on(held[i], 2000, t, sizeof t) == 200) served++;
  }
  is_int(served, 4, "2 loops x max_connections 2: 4 connections served");
  /* all four idle (kept alive after their answer) */
  int fifth = test_connect_timeout(url, 2);
  char t5[32] = "";
  ok(fifth >= 0, "a 5th connection is accepted");
  is_int(get_on(fifth, 2000, t5, sizeof t5), 200,
         "the 5th is served while all loops are full of idle connections");
  ok(closed_within(held[0], 2000), "the oldest idle connection made room for it");
  /* now all four busy */
  int busy[4] = {held[1], held[2], held[3], fifth};
  static const char park[] = "GET /park HTTP/1.1\r\nHost: x\r\n\r\n";
  for (int i = 0; i < 4; i++) send(busy[i], park, sizeof park - 1, MSG_NOSIGNAL);
  for (int i = 0; i < 200 && nparked() < 4; i++) usleep(10000); /* bounded: 2 s */
  is_int(nparked(), 4, "4 requests parked: every connection busy");
  int sixth = test_connect_timeout(url, 2);
  static const char req6[] = "GET /t HTTP/1.1\r\nHost: x\r\n\r\n";
  ok(sixth >= 0 && send(sixth, req6, sizeof req6 - 1, MSG_NOSIGNAL) > 0,
     "a 6th connection is accepted and sends its request");
  char buf[512];
  struct timeval tv = {.tv_usec = 300000};
  setsockopt(sixth, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ssize_t r = recv(sixth, buf, sizeof buf - 1, 0);
  ok(r < 0 && errno == EAGAIN, "the 6th gets no answer while every connection is busy");
  /* one busy connection is answered: it is idle now and makes room */
  dsys_respond_json(g_parked[0], 200, "{}");
  tv = (struct timeval){.tv_sec = 3};
  setsockopt(sixth, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  r = recv(sixth, buf, sizeof buf - 1, 0);
  if (r > 0) buf[r] = 0;
  ok(r > 12 && !strncmp(buf, "HTTP/1.1 200", 12), "once one is done, the 6th is served");
  dsys_server_conn_stats cs = {.size = sizeof cs};
  dsys_server_conn_stats_get(srv, &cs);
  is_int(cs.evicted_full, 2, "two idle connections were evicted for a full server");
  for (int i = 1; i < 4; i++) dsys_respond_json(g_parked[i], 200, "{}");
  close(sixth);
  for (int i = 0; i < 4; i++) close(busy[i]);

  /* ---- stop closes the one listening socket ---- */
  char saved[300];
  snprintf(saved, sizeof saved, "%s", url);
  dsys_server_stop(srv, 1000);
  int late = test_connect_timeout(saved, 2);
  ok(late < 0, "after stop, connecting is refused");
  if (late >= 0) close(late);
  dsys_server_free(srv);

  /* Last, with no other server around: a server closing connections
   * frees descriptors the server below would then get. */
  /* ---- out of descriptors: accept pauses instead of spinning ---- */
  {
    dsys_server *s2 = start(0);
    const char *u2 = dsys_server_url(s2, 0);
    int c = socket(AF_INET, SOCK_STREAM, 0); /* made before the fds run out */
    struct rlimit old_lim, lim;
    getrlimit(RLIMIT_NOFILE, &old_lim);
    int fill[256], nfill = 0;
    /* every descriptor up to a low limit taken: the server's accept4 fails */
    lim = old_lim;
    lim.rlim_cur = 64;
    setrlimit(RLIMIT_NOFILE, &lim);
    int last_err = 0;
    while (nfill < 256) {
      int d = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (d < 0) {
        last_err = errno;
        break;
      }
      fill[nfill++] = d;
    }
    ok(last_err == EMFILE, "the process is out of descriptors (%d more taken)", nfill);
    int conn_ok = c >= 0 && test_connect_fd(c, u2) == 0;
    ok(conn_ok, "a client connects while the server has no descriptor left");
    static const char req[] = "GET /t HTTP/1.1\r\nHost: x\r\n\r\n";
    if (conn_ok) send(c, req, sizeof req - 1, MSG_NOSIGNAL);
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    usleep(500000);
    getrusage(RUSAGE_SELF, &r1);
    long cpu_us = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) * 1000000L +
                  (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) +
                  (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) * 1000000L +
                  (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec);
    /* a loop retrying the failing accept4 would use the whole 500 ms */
    ok(cpu_us < 150000, "the accepting loop does not spin on EMFILE (%ld us CPU in 500 ms)", cpu_us);
    for (int i = 0; i < nfill; i++) close(fill[i]);
    setrlimit(RLIMIT_NOFILE, &old_lim);
    char b2[512] = "";
    struct timeval tv2 = {.tv_sec = 3};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv2, sizeof tv2);
    ssize_t got = conn_ok ? recv(c, b2, sizeof b2 - 1, 0) : -1;
    if (got > 0) b2[got] = 0;
    ok(got > 12 && !strncmp(b2, "HTTP/1.1 200", 12),
       "once descriptors are free again, the waiting client is served");
    if (c >= 0) close(c);
    dsys_server_free(s2);
  }

  return tap_done();
}
