/* Tests of the gateway's loop-native HTTP/1.1 upstream client against a
 * real dsys_server and a raw socket server that closes keep-alive
 * connections behind the client's back. */
#include <arpa/inet.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "net.h"
#include "tap.h"
#include "transport/h1client.h"

static dsys_clock *clk;

static void h_hello(dsys_request *req, void *ud) { dsys_respond(req, 200, "text/plain", "hi", 2); }
static void h_echo(dsys_request *req, void *ud) {
  size_t n;
  const void *b = dsys_request_body(req, &n);
  dsys_respond(req, 201, "application/octet-stream", b, n);
}
static void later(void *ud) { dsys_respond(ud, 200, "text/plain", "slow", 4); }
static void h_slow(dsys_request *req, void *ud) {
  dsys_request_defer(req);
  dsys_timer_add(clk, 500000, later, req, NULL);
}
static void h_stream(dsys_request *req, void *ud) {
  dsys_respond_stream(req, 200, "text/plain");
  dsys_stream_write(req, "one,", 4);
  dsys_stream_write(req, "two,", 4);
  dsys_stream_write(req, "three", 5);
  dsys_stream_end(req);
}

typedef struct ctx {
  dsysi_loop *loop;
  dsysi_h1pool *pool;
  dsysi_h1req r;
  dsysi_buf body;
  int done, err, status, heads;
  int chain; /* start another request from on_done this many times */
  int reused_seen;
} ctx;

static int on_head(dsysi_h1req *r) {
  ((ctx *)r->ud)->heads++;
  return 0;
}
static int on_body(dsysi_h1req *r, const char *d, size_t n) {
  return dsysi_buf_append(&((ctx *)r->ud)->body, d, n);
}
static void on_done(dsysi_h1req *r, int err) {
  ctx *c = r->ud;
  c->err = err;
  c->status = r->resp.status;
  c->reused_seen += r->reused;
  if (!err && c->chain > 0) {
    c->chain--;
    c->body.len = 0;
    if (dsysi_h1_start(c->pool, r) == 0) return;
  }
  c->done = 1;
  dsysi_loop_stop(c->loop);
}

static void kick(dsysi_loop *l, void *ud) {
  ctx *c = ud;
  int rc = dsysi_h1_start(c->pool, &c->r);
  if (rc) {
    c->err = rc;
    c->done = 1;
    dsysi_loop_stop(l);
  }
}

/* Run one exchange to completion (bounded by the request's own timeout
 * and a 10 s guard timer). */
static void guard(dsysi_loop *l, void *ud) { dsysi_loop_stop(l); }
static int run(ctx *c, const char *addr, const char *head, const char *body, size_t blen) {
  dsysi_h1req_free(&c->r);
  memset(&c->r, 0, sizeof c->r);
  c->body.len = 0;
  c->done = 0;
  c->heads = 0;
  c->reused_seen = 0;
  c->r.addr = addr;
  c->r.head = head;
  c->r.head_len = strlen(head);
  c->r.body = body;
  c->r.body_len = blen;
  c->r.timeout_us = 2000000;
  c->r.on_head = on_head;
  c->r.on_body = on_body;
  c->r.on_done = on_done;
  c->r.ud = c;
  dsysi_loop_post(c->loop, kick, c);
  uint64_t g = dsysi_loop_timer(c->loop, 10000000, guard, NULL);
  dsysi_loop_run(c->loop);
  dsysi_loop_cancel(c->loop, g);
  return c->done ? c->err : DSYS_ETIMEDOUT;
}

/* Raw server: one response per connection, then close (no Connection:
 * close header), so a pooled connection goes stale. */
static int raw_fd;
static int raw_accepts;
static void *raw_server(void *arg) {
  for (int i = 0; i < 4; i++) {
    int c = accept(raw_fd, NULL, NULL);
    if (c < 0) break;
    __atomic_add_fetch(&raw_accepts, 1, __ATOMIC_SEQ_CST);
    char buf[4096];
    size_t got = 0;
    while (got < sizeof buf - 1) {
      ssize_t n = recv(c, buf + got, sizeof buf - 1 - got, 0);
      if (n <= 0) break;
      got += (size_t)n;
      buf[got] = 0;
      if (strstr(buf, "\r\n\r\n")) break;
    }
    const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    ssize_t w = send(c, resp, sizeof resp - 1, MSG_NOSIGNAL);
    (void)w;
    close(c);
  }
  return NULL;
}

int main(void) {
  clk = dsys_clock_real();
  dsys_server *srv;
  dsys_server_new(&srv, NULL);
  dsys_server_route(srv, "GET", "/hello", h_hello, NULL);
  dsys_server_route(srv, "POST", "/echo", h_echo, NULL);
  dsys_server_route(srv, "GET", "/slow", h_slow, NULL);
  dsys_server_route(srv, "GET", "/stream", h_stream, NULL);
  if (dsys_server_listen(srv, "http://127.0.0.1:0")) tap_bail("listen");
  const char *url = dsys_server_url(srv, 0);
  ctx c = {0};
  dsysi_loop_new(&c.loop);
  dsysi_h1pool_new(&c.pool, c.loop, NULL);

  const char *get = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
  is_int(run(&c, url, get, NULL, 0), 0, "GET completes");
  is_int(c.status, 200, "status 200");
  ok(c.body.len == 2 && !memcmp(c.body.data, "hi", 2), "body 'hi'");
  is_int(c.heads, 1, "head callback once");
  is_int(run(&c, url, get, NULL, 0), 0, "second GET");
  is_int(c.reused_seen, 1, "second request reused the pooled connection");
  is_int(dsysi_h1pool_open(c.pool), 1, "one upstream connection open");
  c.chain = 20;
  is_int(run(&c, url, get, NULL, 0), 0, "21 requests back to back");
  is_int(dsysi_h1pool_open(c.pool), 1, "still one connection (keep-alive reuse)");

  size_t big = 300 * 1024;
  char *payload = malloc(big);
  for (size_t i = 0; i < big; i++) payload[i] = (char)(i * 7);
  char head[256];
  snprintf(head, sizeof head, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n", big);
  is_int(run(&c, url, head, payload, big), 0, "POST 300 KiB");
  is_int(c.status, 201, "echo status");
  ok(c.body.len == big && !memcmp(c.body.data, payload, big), "300 KiB echoed intact");
  free(payload);

  is_int(run(&c, url, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n", NULL, 0), 0, "chunked response");
  ok(c.body.len == 13 && !memcmp(c.body.data, "one,two,three", 13), "de-chunked body");

  dsysi_h1req_free(&c.r);
  memset(&c.r, 0, sizeof c.r);
  c.r.timeout_us = 0;
  int rc = run(&c, url, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n", NULL, 0);
  is_int(rc, 0, "slow answer within the 2 s timeout");
  /* now with a short timeout */
  {
    ctx d = c;
    memset(&d.r, 0, sizeof d.r);
    d.body = (dsysi_buf){0};
    d.r.addr = url;
    const char *h = "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n";
    d.r.head = h;
    d.r.head_len = strlen(h);
    d.r.timeout_us = 100000;
    d.r.on_done = on_done;
    d.r.ud = &d;
    d.done = 0;
    dsysi_loop_post(d.loop, kick, &d);
    dsysi_loop_run(d.loop);
    is_int(d.err, DSYS_ETIMEDOUT, "per-request timeout");
    dsysi_h1req_free(&d.r);
  }

  /* refused: a port nobody listens on */
  char dead[64];
  snprintf(dead, sizeof dead, "http://127.0.0.1:%d", test_free_port());
  socklen_t sl;
  is_int(run(&c, dead, get, NULL, 0), DSYS_ECONNREFUSED, "refused connection");
  is_int(c.r.sent, 0, "nothing was sent");

  /* stale keep-alive connection: retried once on a fresh connection */
  raw_fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in rsa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  bind(raw_fd, (struct sockaddr *)&rsa, sizeof rsa);
  listen(raw_fd, 8);
  sl = sizeof rsa;
  getsockname(raw_fd, (struct sockaddr *)&rsa, &sl);
  pthread_t th;
  pthread_create(&th, NULL, raw_server, NULL);
  char raw[64];
  snprintf(raw, sizeof raw, "http://127.0.0.1:%d", ntohs(rsa.sin_port));
  c.chain = 1; /* the second request goes out at once on the stale connection */
  is_int(run(&c, raw, get, NULL, 0), 0, "request after the server closed the kept-alive connection succeeds");
  is_int(c.status, 200, "status from the fresh connection");
  is_int(__atomic_load_n(&raw_accepts, __ATOMIC_SEQ_CST), 2, "a second connection was opened");
  shutdown(raw_fd, SHUT_RDWR);
  close(raw_fd);
  pthread_join(th, NULL);

  /* malformed upstream address */
  dsysi_h1req_free(&c.r);
  memset(&c.r, 0, sizeof c.r);
  c.r.addr = "nonsense";
  c.r.head = get;
  c.r.head_len = strlen(get);
  c.r.on_done = on_done;
  is_int(dsysi_h1_start(c.pool, &c.r), DSYS_EURL, "bad address rejected at start");

  dsysi_h1req_free(&c.r);
  dsysi_h1pool_free(c.pool);
  dsysi_loop_free(c.loop);
  dsysi_buf_free(&c.body);
  dsys_server_free(srv);
  return tap_done();
}
