/* The safe defaults of the http/https listeners, where a client notices
 * them.
 *
 * Header timeout (header_timeout_s, on by default: 10 s, read back with
 * dsys_server_get_options): a client that sends half a header and then one
 * byte a second is closed about when the (here 2 s) limit passes, in the
 * thread-pool and event-loop modes of http and https (a TLS client that
 * completed its handshake), while an ordinary
 * client of the same server is served meanwhile; a kept-alive connection
 * that stays silent after its answer is not cut by it (the idle timeout
 * closes it, later); DSYS_SERVER_TIMEOUT_OFF turns it off.
 *
 * Lingering close: a client that writes a whole 8 MiB body before it
 * reads (as Python's http.client does) to a server with a 1 MiB limit reads
 * the 413 and its JSON body, with no EPIPE/ECONNRESET on its writes, in
 * both modes (before: a broken pipe on every try); the same for
 * libmicrohttpd's own 431 answer to a head over connection_memory; and a
 * chunked body that never ends is dropped within the lingering bounds
 * (64 MiB, 2 s) and cut, instead of being read forever.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <gnutls/gnutls.h>
#include <distsys/distsys.h>
#include "net.h"
#include "tap.h"

#define HEAD "GET /x HTTP/1.1\r\nHost: x\r\nX-Slow: "

static int64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void h_ok(dsys_request *req, void *ud) { dsys_respond_json(req, 200, "{\"ok\":true}"); }

static dsys_server *serve(const dsys_server_options *o, const char *url) {
  dsys_server *s;
  if (dsys_server_new(&s, o)) tap_bail("server_new");
  dsys_server_route(s, "*", "/*", h_ok, NULL);
  if (dsys_server_listen(s, url)) tap_bail("listen %s", url);
  return s;
}

/* ---- TLS material ---- */
static char g_dir[64], g_ca[128], g_cert[128], g_key[128];

static int make_cert(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/dsys-limits-XXXXXX");
  if (!mkdtemp(g_dir)) return -1;
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
           "-nodes -keyout srv.key -out srv.pem -days 2 -subj /CN=127.0.0.1 "
           "-addext subjectAltName=IP:127.0.0.1 >openssl.log 2>&1",
           g_dir);
  if (system(cmd) != 0) return -1;
  snprintf(g_ca, sizeof g_ca, "%s/srv.pem", g_dir); /* self-signed: its own CA */
  snprintf(g_cert, sizeof g_cert, "%s/srv.pem", g_dir);
  snprintf(g_key, sizeof g_key, "%s/srv.key", g_dir);
  return 0;
}

static void remove_cert(void) {
  const char *f[] = {"srv.key", "srv.pem", "openssl.log"};
  char p[192];
  for (int i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s/%s", g_dir, f[i]);
    unlink(p);
  }
  rmdir(g_dir);
}

/* ---- slow clients, several at once ---- */
typedef struct slow {
  const char *url;
  int step_ms, max_ms;
  int cut; /* test_trickle's result */
  pthread_t t;
} slow;

/* test_trickle over TLS: the handshake, then the same head and bytes. */
static int tls_trickle(const char *url, const char *head, int step_ms, int max_ms) {
  int fd = test_connect(url);
  if (fd < 0) return -2;
  gnutls_session_t ts;
  gnutls_certificate_credentials_t cred;
  gnutls_certificate_allocate_credentials(&cred);
  gnutls_init(&ts, GNUTLS_CLIENT);
  gnutls_set_default_priority(ts);
  gnutls_credentials_set(ts, GNUTLS_CRD_CERTIFICATE, cred); /* not verified: timing only */
  gnutls_transport_set_int(ts, fd);
  int rc, closed_at = -3;
  do rc = gnutls_handshake(ts);
  while (rc < 0 && !gnutls_error_is_fatal(rc));
  if (rc >= 0 && gnutls_record_send(ts, head, strlen(head)) > 0) {
    int64_t t0 = now_ms();
    closed_at = -1;
    for (;;) {
      struct pollfd p = {.fd = fd, .events = POLLIN};
      int pr = gnutls_record_check_pending(ts) ? 1 : poll(&p, 1, step_ms);
      int el = (int)(now_ms() - t0);
      char c;
      if (pr > 0 && gnutls_record_recv(ts, &c, 1) <= 0) {
        closed_at = el;
        break;
      }
      if (el >= max_ms) break;
      if (gnutls_record_send(ts, "a", 1) != 1) {
        closed_at = el;
        break;
      }
    }
  }
  gnutls_deinit(ts);
  gnutls_certificate_free_credentials(cred);
  close(fd);
  return closed_at;
}

static void *slow_main(void *a) {
  slow *s = a;
  s->cut = strncmp(s->url, "https:", 6) ? test_trickle(s->url, HEAD, s->step_ms, s->max_ms)
                                        : tls_trickle(s->url, HEAD, s->step_ms, s->max_ms);
  return NULL;
}

/* A kept-alive connection after one answer: ms until the server closed
 * it, -1 if open at max_ms; *open_at_ms whether it was open then. */
typedef struct keeper {
  const char *url;
  int probe_ms, max_ms;
  int open_at_probe, closed_at;
  pthread_t t;
} keeper;

static int closed_within(int fd, int ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  char c;
  return poll(&p, 1, ms) > 0 && recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
}

static void *keeper_main(void *a) {
  keeper *k = a;
  k->closed_at = -2;
  int fd = test_connect(k->url);
  if (fd < 0) return NULL;
  const char *rq = "GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
  send(fd, rq, strlen(rq), MSG_NOSIGNAL);
  char buf[1024];
  ssize_t n = recv(fd, buf, sizeof buf, 0); /* the answer (one small read) */
  int64_t t0 = now_ms();
  if (n > 0) {
    k->open_at_probe = !closed_within(fd, k->probe_ms);
    k->closed_at = -1;
    while (k->open_at_probe && now_ms() - t0 < k->max_ms)
      if (closed_within(fd, 50)) {
        k->closed_at = (int)(now_ms() - t0);
        break;
      }
  }
  close(fd);
  return NULL;
}

static int get_status(dsys_client *c, const char *url) {
  dsys_call k = {.size = sizeof k, .url = url, .path = "/x", .timeout_ms = 5000};
  dsys_reply *r = NULL;
  int st = dsys_client_do(c, &k, &r) ? -1 : dsys_reply_status(r);
  dsys_reply_free(r);
  return st;
}

/* ---- a client that writes before it reads ---- */
typedef struct exchange {
  int send_errno; /* 0: every byte was written */
  size_t sent;
  int status;
  char resp[4096];
  int64_t ms;
} exchange;

/* Sends head and then body_len bytes (chunked: 1 MiB chunks while
 * body_len lasts) with blocking writes, then reads the answer to EOF. */
static void write_then_read(const char *url, const char *head, size_t body_len, int chunked,
                            exchange *x) {
  memset(x, 0, sizeof *x);
  x->status = -1;
  int64_t t0 = now_ms();
  int fd = test_connect_timeout(url, 5);
  if (fd < 0) return;
  static char chunk[1 << 20];
  size_t hl = strlen(head);
  if (send(fd, head, hl, MSG_NOSIGNAL) != (ssize_t)hl) x->send_errno = errno;
  while (!x->send_errno && x->sent < body_len) {
    const char *p = chunk;
    size_t n = sizeof chunk;
    char frame[32];
    if (chunked) {
      snprintf(frame, sizeof frame, "%zx\r\n", n);
      if (send(fd, frame, strlen(frame), MSG_NOSIGNAL) < 0) x->send_errno = errno;
    } else if (n > body_len - x->sent) {
      n = body_len - x->sent;
    }
    while (!x->send_errno && n) {
      ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
      if (w < 0) x->send_errno = errno;
      else p += w, n -= (size_t)w, x->sent += (size_t)w;
    }
    if (chunked && !x->send_errno && send(fd, "\r\n", 2, MSG_NOSIGNAL) < 0) x->send_errno = errno;
  }
  size_t got = 0;
  for (;;) {
    ssize_t n = recv(fd, x->resp + got, sizeof x->resp - 1 - got, 0);
    if (n <= 0) break;
    got += (size_t)n;
    if (got == sizeof x->resp - 1) break;
  }
  x->resp[got] = 0;
  if (!strncmp(x->resp, "HTTP/1.", 7)) x->status = atoi(x->resp + 9);
  close(fd);
  x->ms = now_ms() - t0;
}

#define BIG (8u << 20)

static void early_answers(const char *mode, unsigned loops) {
  dsys_server_options o = {.size = sizeof o, .event_loops = loops}; /* max_body: 1 MiB */
  dsys_server *s = serve(&o, "http://127.0.0.1:0");
  const char *url = dsys_server_url(s, 0);
  char head[512];
  snprintf(head, sizeof head,
           "POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
           "Content-Length: %u\r\n\r\n", BIG);
  exchange x;
  int clean = 0, answered = 0;
  for (int i = 0; i < 5; i++) {
    write_then_read(url, head, BIG, 0, &x);
    clean += x.send_errno == 0 && x.sent == BIG;
    answered += x.status == 413 && strstr(x.resp, "{\"error\":\"Request body too large\",\"code\":\"DSYS_ETOOBIG\"}");
    if (x.send_errno || x.status != 413)
      tap_diag("[%s] try %d: %s after %zu bytes, answer %.80s", mode, i,
               x.send_errno ? strerror(x.send_errno) : "sent", x.sent, x.resp);
  }
  is_int(clean, 5, "[%s] 8 MiB body to a 1 MiB limit, written before reading: no broken pipe (5 of 5)", mode);
  is_int(answered, 5, "[%s] and the client reads the 413 with its JSON body (5 of 5, last in %lld ms)",
         mode, (long long)x.ms);

  /* A head over connection_memory (16 KiB): libmicrohttpd's own 431. */
  static char bighead[40000];
  int n = snprintf(bighead, sizeof bighead, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: %u\r\nX-Big: ", BIG);
  memset(bighead + n, 'a', 32768);
  memcpy(bighead + n + 32768, "\r\n\r\n", 5);
  write_then_read(url, bighead, BIG, 0, &x);
  ok(x.send_errno == 0 && x.status == 431, "[%s] a 32 KiB header and a body, written before reading: "
     "the client reads the 431 (%s, status %d)", mode,
     x.send_errno ? strerror(x.send_errno) : "no write error", x.status);

  /* A chunked body that never ends: dropped within the bounds, then cut. */
  const char *ch = "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  write_then_read(url, ch, (size_t)512 << 20, 1, &x);
  ok(x.send_errno && x.sent < ((size_t)100 << 20) && x.ms < 4000,
     "[%s] an endless chunked body over the limit is cut after %zu MiB, %lld ms (bounds 64 MiB, 2 s)",
     mode, x.sent >> 20, (long long)x.ms);
  write_then_read(url, "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 0, 0, &x);
  is_int(x.status, 200, "[%s] the server still answers", mode);
  dsys_server_free(s);
}

int main(void) {
  dsys_log_set_level(DSYS_LOG_ERROR);

  /* ---- the defaults, read back ---- */
  dsys_server *s;
  dsys_server_new(&s, NULL);
  dsys_server_options got = {.size = sizeof got};
  is_int(dsys_server_get_options(s, &got), 0, "dsys_server_get_options");
  is_int(got.header_timeout_s, DSYS_SERVER_HEADER_TIMEOUT_DEFAULT, "header_timeout_s is on by default");
  is_int(DSYS_SERVER_HEADER_TIMEOUT_DEFAULT, 10, "and that default is 10 s");
  is_int(got.idle_timeout_s, 60, "idle_timeout_s 60 (separate)");
  is_int(got.request_timeout_s, 0, "request_timeout_s off");
  is_int(got.max_body, 1 << 20, "max_body 1 MiB");
  is_int(got.size, sizeof got, "size is this version's");
  is_int(dsys_server_get_options(NULL, &got), DSYS_EINVAL, "NULL server: EINVAL");
  is_int(dsys_server_get_options(s, NULL), DSYS_EINVAL, "NULL out: EINVAL");
  dsys_server_free(s);
  /* a program built against the struct before header_timeout_s */
  size_t old = offsetof(dsys_server_options, header_timeout_s);
  dsys_server_options mine;
  memset(&mine, 0xab, sizeof mine);
  mine.size = old;
  dsys_server_options give = {.size = old, .idle_timeout_s = 9};
  memset((char *)&give + old, 0x7f, sizeof give - old); /* not the caller's */
  dsys_server_new(&s, &give);
  dsys_server_get_options(s, &mine);
  is_int(mine.idle_timeout_s, 9, "older struct: its fields are read");
  is_int(mine.size, old, "older struct: size kept");
  ok(mine.header_timeout_s == 0xabababab, "older struct: nothing written past its size");
  dsys_server_get_options(s, &got);
  is_int(got.header_timeout_s, 10, "older struct: the default applies");
  dsys_server_free(s);
  dsys_server_options off = {.size = sizeof off, .header_timeout_s = DSYS_SERVER_TIMEOUT_OFF};
  dsys_server_new(&s, &off);
  got.size = sizeof got;
  dsys_server_get_options(s, &got);
  ok(got.header_timeout_s == DSYS_SERVER_TIMEOUT_OFF, "DSYS_SERVER_TIMEOUT_OFF is kept");
  dsys_server_free(s);

  /* ---- header timeout: slow clients, all variants at once ---- */
  if (make_cert()) tap_bail("openssl could not make a test certificate");
  struct {
    const char *name, *url;
    unsigned loops;
  } v[] = {{"http", "http://127.0.0.1:0", 0},
           {"http-loops", "http://127.0.0.1:0", 2},
           {"https", "https://127.0.0.1:0", 0},
           {"https-loops", "https://127.0.0.1:0", 2}};
  enum { NV = 4 };
  dsys_server *srv[NV];
  slow sl[NV];
  for (int i = 0; i < NV; i++) {
    dsys_server_options o = {.size = sizeof o, .header_timeout_s = 2, .event_loops = v[i].loops,
                             .tls_cert_file = g_cert, .tls_key_file = g_key};
    srv[i] = serve(&o, v[i].url);
    sl[i] = (slow){.url = dsys_server_url(srv[i], 0), .step_ms = 1000, .max_ms = 6000};
  }
  /* keep-alive: header 1 s, idle 3 s; and a server with the header timeout off */
  dsys_server_options ko = {.size = sizeof ko, .header_timeout_s = 1, .idle_timeout_s = 3};
  dsys_server *ks = serve(&ko, "http://127.0.0.1:0");
  keeper kp = {.url = dsys_server_url(ks, 0), .probe_ms = 2000, .max_ms = 6000};
  dsys_server_options oo = {.size = sizeof oo, .header_timeout_s = DSYS_SERVER_TIMEOUT_OFF};
  dsys_server *os = serve(&oo, "http://127.0.0.1:0");
  slow osl = {.url = dsys_server_url(os, 0), .step_ms = 1000, .max_ms = 3500};

  for (int i = 0; i < NV; i++) pthread_create(&sl[i].t, NULL, slow_main, &sl[i]);
  pthread_create(&kp.t, NULL, keeper_main, &kp);
  pthread_create(&osl.t, NULL, slow_main, &osl);
  usleep(1000000); /* the slow clients are half way through */
  dsys_client_options co = {.size = sizeof co, .tls_ca_file = g_ca};
  dsys_client *cli;
  dsys_client_new(&cli, &co);
  int st[NV];
  for (int i = 0; i < NV; i++) st[i] = get_status(cli, dsys_server_url(srv[i], 0));
  for (int i = 0; i < NV; i++) pthread_join(sl[i].t, NULL);
  pthread_join(kp.t, NULL);
  pthread_join(osl.t, NULL);
  for (int i = 0; i < NV; i++) {
    is_int(st[i], 200, "[%s] an ordinary client is served while a slow one trickles", v[i].name);
    ok(sl[i].cut >= 1800 && sl[i].cut <= 3200,
       "[%s] half a header, then a byte a second: closed at the 2 s header timeout (%d ms)",
       v[i].name, sl[i].cut);
  }
  ok(kp.open_at_probe, "a kept-alive connection silent for 2 s is not cut by the 1 s header timeout");
  ok(kp.closed_at >= 0 && kp.closed_at <= 5500,
     "the 3 s idle timeout closes it (%d ms after its answer)", kp.closed_at);
  is_int(osl.cut, -1, "header timeout off: the slow client is still open at 3.5 s");
  for (int i = 0; i < NV; i++) dsys_server_free(srv[i]);
  dsys_server_free(ks);
  dsys_server_free(os);
  dsys_client_free(cli);
  remove_cert();

  /* ---- lingering close after an early answer ---- */
  early_answers("http", 0);
  early_answers("http-loops", 2);
  return tap_done();
}
