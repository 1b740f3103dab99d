/* Header lists shared by requests, replies and the HTTP/1.1 parser. */
#include <stdlib.h>
#include <string.h>
#include "transport/transport.h"

/* ---- header lists ---- */

int dsysi_hdrs_add(dsysi_hdrs *h, const char *name, size_t nlen,
                   const char *value, size_t vlen) {
  if (h->n == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 8;
    dsysi_hdr *v = realloc(h->v, cap * sizeof *v);
    if (!v) return DSYS_ENOMEM;
    h->v = v;
    h->cap = cap;
  }
  /* One allocation holds both strings; name owns it. */
  char *n = malloc(nlen + vlen + 2);
  if (!n) return DSYS_ENOMEM;
  memcpy(n, name, nlen);
  n[nlen] = '\0';
  memcpy(n + nlen + 1, value, vlen);
  n[nlen + 1 + vlen] = '\0';
  h->v[h->n].name = n;
  h->v[h->n].value = n + nlen + 1;
  h->n++;
  return 0;
}

const char *dsysi_hdrs_get(const dsysi_hdrs *h, const char *name) {
  for (size_t i = 0; i < h->n; i++)
    if (dsysi_streq_nocase(h->v[i].name, name)) return h->v[i].value;
  return NULL;
}

void dsysi_hdrs_free(dsysi_hdrs *h) {
  for (size_t i = 0; i < h->n; i++) free(h->v[i].name);
  free(h->v);
  h->v = NULL;
  h->n = h->cap = 0;
}

int dsysi_header_ok(const char *s) {
  return s && !strpbrk(s, "\r\n");
}

int dsysi_header_is_hop(const char *name) {
  static const char *hop[] = {"connection", "keep-alive", "proxy-connection",
                              "transfer-encoding", "te", "trailer", "upgrade",
                              "content-length"};
  for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
    if (dsysi_streq_nocase(name, hop[i])) return 1;
  return 0;
}

