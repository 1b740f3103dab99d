/*
 * Internal entry of dsys_upstream for proxies (the gateway): the same
 * attempt loop as dsys_upstream_send, with hooks to stream an answer as
 * it arrives and without copying a request that outlives the call.
 */
#ifndef DSYSI_UPSTREAM_INT_H
#define DSYSI_UPSTREAM_INT_H

#include <distsys/upstream.h>

typedef struct dsysi_usend {
  /* Called on the event loop, for attempts that go through the loop's
   * HTTP/1.1 dialer (the client buffers every answer), with the send's
   * ud, once the response head of an attempt is parsed: return 1 to
   * stream its body to on_body (the attempt is then final: no retry; the
   * completion's reply has an empty body), 0 to buffer it, negative to
   * abort it (DSYS_ECANCELED, final too). */
  int (*on_head)(void *ud, const dsys_reply *head);
  /* A piece of a streamed body; nonzero aborts (DSYS_ECANCELED). */
  int (*on_body)(void *ud, const void *data, size_t len);
  /* Each attempt's endpoint (id and url valid during the call). */
  void (*on_pick)(void *ud, const char *id, const char *url);
  size_t max_response; /* buffered body limit on the loop (DSYS_ETOOBIG);
                          0: 64 MiB. The client applies its own. */
  int borrow;          /* the call's strings, headers and body stay valid
                          until the completion: not copied */
  int checked;         /* the call is known to be well-formed (a request
                          the server parsed): dsysi_call_norm's checks are
                          skipped */
} dsysi_usend;

/** dsys_upstream_send with hooks (o may be NULL: then the same). */
int dsysi_upstream_send(dsys_upstream *u, const dsys_call *call,
                        const dsysi_usend *o, dsys_upstream_fn cb, void *ud);

#endif
