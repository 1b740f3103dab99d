/* Unit tests of the strict HTTP/1.1 response parser (lib/transport/h1.c). */
#include <string.h>
#include "tap.h"
#include "transport/h1.h"

typedef struct out {
  dsysi_buf body;
  int heads;
} out;

static int on_body(const char *d, size_t n, void *ud) {
  return dsysi_buf_append(&((out *)ud)->body, d, n);
}
static int on_head(void *ud) {
  ((out *)ud)->heads++;
  return 0;
}

/* Parse a whole message fed in pieces of `step` bytes (0: all at once). */
static int parse(const char *msg, size_t len, size_t step, int head, int eof,
                 dsysi_h1 *p, out *o) {
  memset(o, 0, sizeof *o);
  dsysi_h1_init(p, head, on_head, on_body, o);
  int rc = DSYSI_H1_MORE;
  size_t pos = 0;
  while (pos < len && rc == DSYSI_H1_MORE) {
    size_t n = step && len - pos > step ? step : len - pos;
    size_t used = 0;
    rc = dsysi_h1_feed(p, msg + pos, n, &used);
    if (rc >= 0 && used != n && rc == DSYSI_H1_MORE) return -999;
    pos += used;
    if (rc == DSYSI_H1_DONE && pos != len) return -998; /* trailing bytes */
  }
  if (rc == DSYSI_H1_MORE && eof) rc = dsysi_h1_eof(p);
  return rc;
}

#define M(s) s, sizeof(s) - 1

static void check_ok(const char *name, const char *msg, size_t len, int head,
                     int eof, int status, const char *body, int ka) {
  /* Every split point must give the same result. */
  size_t steps[] = {0, 1, 2, 3, 7, 13};
  for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
    dsysi_h1 p;
    out o;
    int rc = parse(msg, len, steps[s], head, eof, &p, &o);
    int good = rc == DSYSI_H1_DONE && p.status == status && o.heads == 1 &&
               o.body.len == strlen(body) && (!o.body.len || !memcmp(o.body.data, body, o.body.len)) &&
               p.keep_alive == ka;
    if (!good || s == 0)
      ok(good, "%s (pieces of %zu): rc=%d status=%d ka=%d body='%.*s'", name, steps[s], rc,
         p.status, p.keep_alive, (int)o.body.len, o.body.data ? o.body.data : "");
    dsysi_h1_free(&p);
    dsysi_buf_free(&o.body);
  }
}

static void check_err(const char *name, const char *msg, size_t len, int want) {
  dsysi_h1 p;
  out o;
  int rc = parse(msg, len, 0, 0, 1, &p, &o);
  is_int(rc, want, "%s -> %s", name, dsys_err_name(want));
  dsysi_h1_free(&p);
  dsysi_buf_free(&o.body);
}

int main(void) {
  check_ok("content-length", M("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"), 0, 0, 200, "hello", 1);
  check_ok("empty body", M("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), 0, 0, 200, "", 1);
  check_ok("chunked with extension and trailer",
           M("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"),
           0, 0, 200, "hello world", 1);
  check_ok("100 continue then 201", M("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"), 0, 0, 201, "ok", 1);
  check_ok("HEAD has no body", M("HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"), 1, 0, 200, "", 1);
  check_ok("204 has no body", M("HTTP/1.1 204 No Content\r\n\r\n"), 0, 0, 204, "", 1);
  check_ok("connection: close", M("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"), 0, 0, 200, "x", 0);
  check_ok("HTTP/1.0 defaults to close", M("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx"), 0, 0, 200, "x", 0);
  check_ok("HTTP/1.0 keep-alive", M("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx"), 0, 0, 200, "x", 1);
  check_ok("body until close", M("HTTP/1.1 200 OK\r\n\r\nabc"), 0, 1, 200, "abc", 0);
  check_ok("same content-length twice", M("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"), 0, 0, 200, "x", 1);

  check_err("content-length and transfer-encoding", M("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), DSYS_EPROTO);
  check_err("differing content-lengths", M("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx"), DSYS_EPROTO);
  check_err("content-length list", M("HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx"), DSYS_EPROTO);
  check_err("negative content-length", M("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), DSYS_EPROTO);
  check_err("huge content-length", M("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n"), DSYS_EPROTO);
  check_err("gzip transfer coding", M("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), DSYS_EPROTO);
  check_err("obs-fold", M("HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n"), DSYS_EPROTO);
  check_err("bare LF", M("HTTP/1.1 200 OK\nContent-Length: 0\n\n"), DSYS_EPROTO);
  check_err("space before colon", M("HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n"), DSYS_EPROTO);
  check_err("bad status line", M("HTTP/2 200 OK\r\n\r\n"), DSYS_EPROTO);
  check_err("status out of range", M("HTTP/1.1 600 Odd\r\n\r\n"), DSYS_EPROTO);
  check_err("bad chunk size", M("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), DSYS_EPROTO);
  check_err("chunk size overflow", M("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n"), DSYS_EPROTO);
  check_err("missing CRLF after chunk", M("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n"), DSYS_EPROTO);
  check_err("truncated body", M("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), DSYS_ECONNRESET);
  check_err("truncated headers", M("HTTP/1.1 200 OK\r\nContent-"), DSYS_ECONNRESET);
  check_err("control character in a header", M("HTTP/1.1 200 OK\r\nX-A: a\x01b\r\n\r\n"), DSYS_EPROTO);
  /* A header section over the limit. */
  dsysi_buf big = {0};
  dsysi_buf_puts(&big, "HTTP/1.1 200 OK\r\n");
  for (int i = 0; i < 2000; i++) dsysi_buf_printf(&big, "X-H%d: %030d\r\n", i, i);
  dsysi_buf_puts(&big, "\r\n");
  check_err("oversized header section", big.data, big.len, DSYS_ETOOBIG);
  dsysi_buf_free(&big);
  /* Headers are kept, names and values trimmed. */
  dsysi_h1 p;
  out o;
  parse(M("HTTP/1.1 200 OK\r\nX-Name:   spaced value \t\r\nContent-Length: 0\r\n\r\n"), 0, 0, 0, &p, &o);
  is_str(dsysi_hdrs_get(&p.hdrs, "x-name"), "spaced value", "header value trimmed, name case-insensitive");
  dsysi_h1_free(&p);
  dsysi_buf_free(&o.body);
  /* The parser remembers the first Content-Type (any case); a value with
   * an HTAB inside passes the control-byte check, one with DEL does not. */
  parse(M("HTTP/1.1 200 OK\r\nCONTENT-type: text/plain;\tcharset=utf-8\r\n"
          "Content-Type: text/html\r\nContent-Length: 0\r\n\r\n"),
        0, 0, 0, &p, &o);
  is_str(p.content_type, "text/plain;\tcharset=utf-8", "first Content-Type remembered");
  dsysi_h1_free(&p);
  dsysi_buf_free(&o.body);
  check_err("DEL in a long header value",
            M("HTTP/1.1 200 OK\r\nX-A: abcdefghijklmnop\x7fqrstuvwxyz\r\nContent-Length: 0\r\n\r\n"),
            DSYS_EPROTO);
  /* A pipelined second response is not consumed. */
  dsysi_h1_init(&p, 0, NULL, NULL, NULL);
  size_t used = 0;
  const char two[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n";
  int rc = dsysi_h1_feed(&p, two, sizeof two - 1, &used);
  ok(rc == DSYSI_H1_DONE && used == 38, "stops at the end of one response (used %zu)", used);
  dsysi_h1_free(&p);
  return tap_done();
}
