/* Header lists shared by requests, replies and the HTTP/1.1 parser. */
#include <stdlib.h>
#include <string.h>
#include "transport/transport.h"

/* ---- arena ---- */

struct dsysi_arena_blk {
  dsysi_arena_blk *next;
  /* the block's memory follows, aligned like the struct */
};

#define ARENA_ALIGN (sizeof(void *))
/* Blocks stay below glibc's per-thread cache limit (1032 bytes) unless a
 * single allocation needs more. */
#define ARENA_BLOCK 1016

void dsysi_arena_init(dsysi_arena *a, void *mem, size_t len) {
  a->cur = mem;
  a->end = (char *)mem + len;
  a->blks = NULL;
}

void *dsysi_arena_alloc(dsysi_arena *a, size_t n) {
  n = (n + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
  if ((size_t)(a->end - a->cur) < n) {
    size_t sz = n > ARENA_BLOCK - sizeof(dsysi_arena_blk) ? n + sizeof(dsysi_arena_blk)
                                                          : ARENA_BLOCK;
    dsysi_arena_blk *b = malloc(sz);
    if (!b) return NULL;
    b->next = a->blks;
    a->blks = b;
    a->cur = (char *)(b + 1);
    a->end = (char *)b + sz;
  }
  void *p = a->cur;
  a->cur += n;
  return p;
}

char *dsysi_arena_strndup(dsysi_arena *a, const char *s, size_t n) {
  char *d = dsysi_arena_alloc(a, n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

void dsysi_arena_free(dsysi_arena *a) {
  while (a->blks) {
    dsysi_arena_blk *b = a->blks;
    a->blks = b->next;
    free(b);
  }
  a->cur = a->end = NULL;
}

/* ---- header lists ---- */

int dsysi_hdrs_add(dsysi_hdrs *h, const char *name, size_t nlen,
                   const char *value, size_t vlen) {
  if (h->n == h->cap) {
    dsysi_hdr *v;
    size_t cap;
    if (h->ar) {
      /* Few headers is the rule: start small; the old array stays in the
       * arena until the request ends. */
      cap = h->cap ? h->cap * 2 : 4;
      v = dsysi_arena_alloc(h->ar, cap * sizeof *v);
      if (v && h->n) memcpy(v, h->v, h->n * sizeof *v);
    } else {
      cap = h->cap ? h->cap * 2 : 8;
      v = realloc(h->v, cap * sizeof *v);
    }
    if (!v) return DSYS_ENOMEM;
    h->v = v;
    h->cap = cap;
  }
  /* One allocation holds both strings; name owns it. */
  char *n = h->ar ? dsysi_arena_alloc(h->ar, nlen + vlen + 2) : malloc(nlen + vlen + 2);
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
  if (!h->ar) {
    for (size_t i = 0; i < h->n; i++) free(h->v[i].name);
    free(h->v);
  }
  h->v = NULL;
  h->n = h->cap = 0;
}

int dsysi_header_ok(const char *s) {
  return s && !strpbrk(s, "\r\n");
}

/* Case-insensitive compare of a name of known length against a lower-case
 * literal of the same length. */
static int same_lc(const char *name, const char *lc, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)name[i];
    if (c >= 'A' && c <= 'Z') c += 32;
    if (c != (unsigned char)lc[i]) return 0;
  }
  return 1;
}

int dsysi_header_class(const char *name) {
  /* Dispatch on the length first: this runs for every header of every
   * proxied request, both ways. */
#define K(lit, cls) {lit, sizeof lit - 1, cls}
  static const struct {
    const char *lc;
    size_t len;
    int cls;
  } known[] = {
      K("te", DSYSI_HDR_HOP),
      K("date", DSYSI_HDR_DATE),
      K("trailer", DSYSI_HDR_HOP),
      K("upgrade", DSYSI_HDR_HOP),
      K("connection", DSYSI_HDR_HOP),
      K("keep-alive", DSYSI_HDR_HOP),
      K("traceparent", DSYSI_HDR_TRACEPARENT),
      K("x-request-id", DSYSI_HDR_REQUEST_ID),
      K("content-type", DSYSI_HDR_CONTENT_TYPE),
      K("x-dsys-user-id", DSYSI_HDR_USER_ID),
      K("content-length", DSYSI_HDR_HOP),
      K("idempotency-key", DSYSI_HDR_IDEMPOTENCY_KEY),
      K("x-dsys-identity", DSYSI_HDR_USER_ID),
      K("x-forwarded-for", DSYSI_HDR_FORWARDED_FOR),
      K("proxy-connection", DSYSI_HDR_HOP),
      K("transfer-encoding", DSYSI_HDR_HOP),
      K("proxy-authenticate", DSYSI_HDR_HOP),
      K("proxy-authorization", DSYSI_HDR_HOP),
  };
#undef K
  size_t n = strlen(name);
  if (n < 2 || n > 19) return DSYSI_HDR_OTHER;
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (known[i].len == n && same_lc(name, known[i].lc, n)) return known[i].cls;
  return DSYSI_HDR_OTHER;
}

int dsysi_header_is_hop(const char *name) { return dsysi_header_class(name) == DSYSI_HDR_HOP; }

