/*
 * Strict incremental HTTP/1.1 response parser for the gateway's own
 * upstream client. Feed bytes as they arrive; body bytes come out through a
 * callback, de-chunked. Anything ambiguous is an error (DSYS_EPROTO):
 * obsolete line folding, Content-Length together with Transfer-Encoding,
 * differing Content-Length values, a transfer coding other than chunked,
 * bare LF line ends, oversized header sections.
 */
#ifndef DSYSI_H1_H
#define DSYSI_H1_H

#include <stddef.h>
#include <stdint.h>
#include "transport/transport.h"

#define DSYSI_H1_MAX_HEADER_BYTES (32 * 1024)
#define DSYSI_H1_MAX_HEADERS 128

enum {
  DSYSI_H1_MORE = 0, /* need more input */
  DSYSI_H1_DONE = 1  /* one complete response parsed */
};

/** Called for each piece of the (de-chunked) body. Return nonzero to abort. */
typedef int (*dsysi_h1_body_fn)(const char *data, size_t len, void *ud);
/** Called once the status line and headers are complete (before any body).
 *  Return nonzero to abort. */
typedef int (*dsysi_h1_head_fn)(void *ud);

typedef struct dsysi_h1 {
  int state;
  int head_request; /* the request was HEAD: no body follows */
  int status;
  int minor;        /* HTTP/1.minor */
  int keep_alive;   /* connection reusable after this response */
  int chunked;
  int64_t content_length; /* -1: none */
  uint64_t remaining;     /* body or chunk bytes left */
  int until_close;        /* body delimited by connection close */
  dsysi_hdrs hdrs;        /* response headers (in ar) */
  const char *content_type; /* the first Content-Type value (in hdrs), or NULL */
  dsysi_buf line;         /* partial line */
  size_t header_bytes;
  dsysi_h1_body_fn on_body;
  dsysi_h1_head_fn on_head;
  void *ud;
  /* hdrs lives here: a typical response's few headers fit inline (no
   * malloc per header); sized so that the gateway's per-request state,
   * which embeds this, stays within glibc's per-thread cache. */
  dsysi_arena ar;
  _Alignas(void *) char ar_mem[224];
} dsysi_h1;

/** Prepare for a response to a request; head_request=1 for HEAD. */
void dsysi_h1_init(dsysi_h1 *p, int head_request, dsysi_h1_head_fn on_head,
                   dsysi_h1_body_fn on_body, void *ud);
/** Release what the parser holds. */
void dsysi_h1_free(dsysi_h1 *p);

/**
 * Parse input. *used receives how many bytes belong to this response (the
 * rest, if any, would be a pipelined next response: a protocol error for
 * us, since we never pipeline).
 * @return DSYSI_H1_MORE, DSYSI_H1_DONE, or DSYS_EPROTO / DSYS_ETOOBIG /
 *         DSYS_ECANCELED (a callback aborted).
 */
int dsysi_h1_feed(dsysi_h1 *p, const char *data, size_t len, size_t *used);

/** The peer closed the connection: DSYSI_H1_DONE for a close-delimited
 *  body, else DSYS_ECONNRESET (truncated). */
int dsysi_h1_eof(dsysi_h1 *p);

#endif
