/* dsys_server_stop on an http listener with libmicrohttpd's thread pool
 * (the default mode) while the pool's threads are awake.
 *
 * Regression: stop used to quiesce the MHD daemon from the stopping
 * thread (MHD_quiesce_daemon). In libmicrohttpd 0.9.75 that races with
 * the pool's own epoll threads: both take the listening socket out of the
 * thread's epoll set, and the loser's EPOLL_CTL_DEL gets ENOENT, on which
 * MHD aborts the process ("Fatal error in GNU libmicrohttpd
 * daemon.c:5531: Failed to remove listen FD from epoll set."). Seen as a
 * rare SIGABRT of test-registry-service at a daemon stop under load.
 *
 * The natural window is a few hundred nanoseconds; this test makes the
 * loss certain instead of rare. Its epoll_ctl (it interposes libc's and
 * forwards to it) holds a removal of a listening socket made on the main
 * thread until another thread has removed that socket (bounded wait),
 * while a client connecting in a loop keeps the pool's threads waking.
 * With the quiesce on the stopping thread this aborted on every run; the
 * listener must not touch MHD's epoll sets from outside at all. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_NEXT */
#endif
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "tap.h"

static pthread_t main_thread;
static pthread_mutex_t shim_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t shim_cv = PTHREAD_COND_INITIALIZER;
static int removed_fd = -1; /* a listening socket another thread removed */
static _Atomic int held;      /* main-thread removals held back */

static int is_listening(int fd) {
  int v = 0;
  socklen_t l = sizeof v;
  return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &l) == 0 && v;
}

typedef int (*epoll_ctl_fn)(int, int, int, struct epoll_event *);

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
  static epoll_ctl_fn _Atomic real_p;
  epoll_ctl_fn real = atomic_load(&real_p);
  if (!real) {
    real = (epoll_ctl_fn)dlsym(RTLD_NEXT, "epoll_ctl");
    atomic_store(&real_p, real);
  }
  if (op != EPOLL_CTL_DEL || !is_listening(fd)) return real(epfd, op, fd, ev);
  if (!pthread_equal(pthread_self(), main_thread)) {
    int rc = real(epfd, op, fd, ev);
    int e = errno; /* MHD reads it after a failure */
    pthread_mutex_lock(&shim_mu);
    removed_fd = fd;
    pthread_cond_broadcast(&shim_cv);
    pthread_mutex_unlock(&shim_mu);
    errno = e;
    return rc;
  }
  /* the stopping thread: let a pool thread remove the socket first */
  atomic_fetch_add(&held, 1);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 3;
  pthread_mutex_lock(&shim_mu);
  while (removed_fd != fd && pthread_cond_timedwait(&shim_cv, &shim_mu, &ts) == 0) {
  }
  pthread_mutex_unlock(&shim_mu);
  return real(epfd, op, fd, ev);
}

static void h_x(dsys_request *r, void *ud) {
  (void)ud;
  dsys_respond(r, 200, "text/plain", "ok", 2);
}

static dsys_request *_Atomic parked;
static void h_park(dsys_request *r, void *ud) {
  (void)ud;
  if (dsys_request_defer(r) == 0) atomic_store(&parked, r);
  else dsys_respond(r, 500, "text/plain", "defer", 5);
}

static _Atomic int churn_stop;
static int port;

/* Connect and close in a loop: every connection wakes every pool thread
 * (the listening socket is in each one's epoll set). */
static void *churn(void *arg) {
  (void)arg;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  while (!atomic_load(&churn_stop)) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) break;
    connect(fd, (struct sockaddr *)&a, sizeof a);
    close(fd);
  }
  return NULL;
}

typedef struct stopper {
  dsys_server *srv;
  int rc;
} stopper;

static void *stop_main(void *arg) {
  stopper *s = arg;
  s->rc = dsys_server_stop(s->srv, 5000);
  return NULL;
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_parked(int err, dsys_reply *rep, void *ud) {
  (void)err;
  dsys_reply_free(rep);
  atomic_store((_Atomic int *)ud, 1);
}

int main(void) {
  main_thread = pthread_self();
  dsys_log_set_level(DSYS_LOG_ERROR);
  const int rounds = 5;
  for (int i = 0; i < rounds; i++) {
    dsys_server *srv;
    dsys_server_options o = {.size = sizeof o, .threads = 2};
    if (dsys_server_new(&srv, &o)) tap_bail("server_new");
    dsys_server_route(srv, "GET", "/x", h_x, NULL);
    int rc = dsys_server_listen(srv, "http://127.0.0.1:0");
    if (rc) tap_bail("listen: %s", dsys_strerror(rc));
    const char *url = dsys_server_url(srv, 0);
    port = atoi(strrchr(url, ':') + 1);
    atomic_store(&churn_stop, 0);
    pthread_t th;
    pthread_create(&th, NULL, churn, NULL);
    rc = dsys_server_stop(srv, 1000);
    atomic_store(&churn_stop, 1);
    pthread_join(th, NULL);
    is_int(rc, 0, "round %d: stop under connection churn (pool of 2) returns 0", i + 1);
    dsys_server_free(srv);
  }
  ok(atomic_load(&held) == 0, "the stopping thread never removed a listening socket from an epoll set (%d)",
     atomic_load(&held));

  /* What a client sees while a pool-mode server drains: a connection made
   * after the quiesce is closed at once; the parked request still gets
   * its answer. */
  dsys_server *srv;
  dsys_server_options o = {.size = sizeof o, .threads = 2};
  if (dsys_server_new(&srv, &o)) tap_bail("server_new");
  dsys_server_route(srv, "GET", "/x", h_x, NULL);
  dsys_server_route(srv, "GET", "/park", h_park, NULL);
  if (dsys_server_listen(srv, "http://127.0.0.1:0")) tap_bail("listen");
  char url[128];
  snprintf(url, sizeof url, "%s", dsys_server_url(srv, 0));
  dsys_client *c, *pc;
  dsys_client_new(&c, NULL);
  dsys_client_new(&pc, NULL);
  _Atomic int parked_done = 0;
  dsys_call park = {.size = sizeof park, .url = url, .path = "/park"};
  dsys_client_send(pc, &park, on_parked, (void *)&parked_done);
  int64_t end = mono_ms() + 5000;
  while (!atomic_load(&parked) && mono_ms() < end) usleep(1000);
  ok(atomic_load(&parked) != NULL, "a request is parked");
  stopper st = {.srv = srv};
  pthread_t sth;
  pthread_create(&sth, NULL, stop_main, &st);
  /* until the quiesce: 200, or 503 on a kept-alive connection once
   * stopping; then the first failed call */
  int first_err = 0;
  end = mono_ms() + 5000;
  while (!first_err && mono_ms() < end) {
    dsys_call x = {.size = sizeof x, .url = url, .path = "/x"};
    dsys_reply *rep = NULL;
    first_err = dsys_client_do(c, &x, &rep);
    dsys_reply_free(rep);
  }
  is_int(first_err, DSYS_ECONNRESET, "during the drain a new connection is closed at once (%s)",
         dsys_strerror(first_err));
  dsys_request *r = atomic_load(&parked);
  if (r) dsys_respond(r, 200, "text/plain", "late", 4);
  pthread_join(sth, NULL);
  is_int(st.rc, 0, "stop drained the parked request");
  end = mono_ms() + 5000;
  while (!atomic_load(&parked_done) && mono_ms() < end) usleep(1000);
  ok(atomic_load(&parked_done), "its caller got the answer");
  dsys_call x = {.size = sizeof x, .url = url, .path = "/x"};
  dsys_reply *rep = NULL;
  int rc = dsys_client_do(c, &x, &rep);
  dsys_reply_free(rep);
  is_int(rc, DSYS_ECONNREFUSED, "after stop: refused");
  dsys_server_free(srv);
  dsys_client_free(c);
  dsys_client_free(pc);
  return tap_done();
}
