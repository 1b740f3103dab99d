/* Header lists shared by requests, replies and the HTTP/1.1 parser. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <distsys/identity.h>
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
  if (h->n == h->cap && !h->ar &&
      dsysi_grow(&h->v, &h->cap, h->n + 1, sizeof *h->v, 8))
    return DSYS_ENOMEM;
  if (h->n == h->cap) {
    /* Few headers is the rule: start small; the old array stays in the
     * arena until the request ends. */
    size_t cap = h->cap ? h->cap * 2 : 4;
    dsysi_hdr *v = dsysi_arena_alloc(h->ar, cap * sizeof *v);
    if (!v) return DSYS_ENOMEM;
    if (h->n) memcpy(v, h->v, h->n * sizeof *v);
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
  /* The first byte rules out most names without a call. */
  unsigned char c0 = dsysi_lc[(unsigned char)name[0]];
  for (size_t i = 0; i < h->n; i++)
    if (dsysi_lc[(unsigned char)h->v[i].name[0]] == c0 &&
        dsysi_streq_nocase(h->v[i].name, name))
      return h->v[i].value;
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
  for (size_t i = 0; i < n; i++)
    if (dsysi_lc[(unsigned char)name[i]] != (unsigned char)lc[i]) return 0;
  return 1;
}

int dsysi_header_class(const char *name) {
  /* Dispatch on the length and the first letter: this runs for every
   * header of every proxied request, both ways; most names are none of
   * these and are ruled out without a compare. */
#define IS(lit) same_lc(name + 1, lit + 1, sizeof lit - 2)
  size_t n = strlen(name);
  unsigned char c = dsysi_lc[(unsigned char)name[0]];
  switch (n) {
  case 2:
    return c == 't' && IS("te") ? DSYSI_HDR_HOP : DSYSI_HDR_OTHER;
  case 4:
    return c == 'd' && IS("date") ? DSYSI_HDR_DATE : DSYSI_HDR_OTHER;
  case 7:
    return (c == 't' && IS("trailer")) || (c == 'u' && IS("upgrade")) ? DSYSI_HDR_HOP
                                                                       : DSYSI_HDR_OTHER;
  case 10:
    return (c == 'c' && IS("connection")) || (c == 'k' && IS("keep-alive"))
               ? DSYSI_HDR_HOP
               : DSYSI_HDR_OTHER;
  case 11:
    return c == 't' && IS("traceparent") ? DSYSI_HDR_TRACEPARENT : DSYSI_HDR_OTHER;
  case 12:
    if (c == 'x') return IS("x-request-id") ? DSYSI_HDR_REQUEST_ID : DSYSI_HDR_OTHER;
    return c == 'c' && IS("content-type") ? DSYSI_HDR_CONTENT_TYPE : DSYSI_HDR_OTHER;
  case 14:
    if (c == 'x') return IS("x-dsys-user-id") ? DSYSI_HDR_USER_ID : DSYSI_HDR_OTHER;
    return c == 'c' && IS("content-length") ? DSYSI_HDR_HOP : DSYSI_HDR_OTHER;
  case 15:
    if (c == 'i') return IS("idempotency-key") ? DSYSI_HDR_IDEMPOTENCY_KEY : DSYSI_HDR_OTHER;
    if (c != 'x') return DSYSI_HDR_OTHER;
    if (IS("x-dsys-identity")) return DSYSI_HDR_USER_ID;
    return IS("x-forwarded-for") ? DSYSI_HDR_FORWARDED_FOR : DSYSI_HDR_OTHER;
  case 16:
    return c == 'p' && IS("proxy-connection") ? DSYSI_HDR_HOP : DSYSI_HDR_OTHER;
  case 17:
    return c == 't' && IS("transfer-encoding") ? DSYSI_HDR_HOP : DSYSI_HDR_OTHER;
  case 18:
    return c == 'p' && IS("proxy-authenticate") ? DSYSI_HDR_HOP : DSYSI_HDR_OTHER;
  case 19:
    return c == 'p' && IS("proxy-authorization") ? DSYSI_HDR_HOP : DSYSI_HDR_OTHER;
  default:
    return DSYSI_HDR_OTHER;
  }
#undef IS
}

int dsysi_header_is_hop(const char *name) { return dsysi_header_class(name) == DSYSI_HDR_HOP; }


/* ---- what a proxy forwards: the one policy ---- */

int dsysi_fwd_request(dsysi_fwd *f, dsys_request *req, const char *user,
                      const char *ident) {
  size_t n = req->hdrs.n;
  f->n = 0;
  f->idem_key = 0;
  f->xff = f->ident = NULL;
  /* the client's headers plus the five we may add */
  f->h = n + 5 <= sizeof f->inl / sizeof f->inl[0] ? f->inl : malloc((n + 5) * sizeof *f->h);
  if (!f->h) return DSYS_ENOMEM;
  const char *xff = NULL;
  for (size_t i = 0; i < n; i++) {
    const char *name = req->hdrs.v[i].name, *value = req->hdrs.v[i].value;
    int cls = dsysi_header_class(name);
    if (cls == DSYSI_HDR_HOP || cls == DSYSI_HDR_REQUEST_ID || cls == DSYSI_HDR_TRACEPARENT ||
        cls == DSYSI_HDR_USER_ID)
      continue;
    if (cls == DSYSI_HDR_FORWARDED_FOR) {
      xff = value;
      continue;
    }
    if (cls == DSYSI_HDR_IDEMPOTENCY_KEY) f->idem_key = 1;
    f->h[f->n++] = (dsys_header){name, value};
  }
  /* X-Forwarded-For: the client's list, then the TCP peer */
  const char *ra = dsys_request_remote_addr(req);
  size_t xl = xff ? strlen(xff) : 0, rl = strlen(ra);
  char *x = xl + 2 + rl < sizeof f->xff_inl ? f->xff_inl : (f->xff = malloc(xl + 2 + rl + 1));
  if (!x) return DSYS_ENOMEM;
  if (xff) {
    memcpy(x, xff, xl);
    memcpy(x + xl, ", ", 2);
    xl += 2;
  }
  memcpy(x + xl, ra, rl + 1);
  f->h[f->n++] = (dsys_header){"X-Forwarded-For", x};
  f->h[f->n++] = (dsys_header){"X-Request-Id", dsys_request_id(req)};
  f->h[f->n++] = (dsys_header){"traceparent", dsys_request_traceparent(req)};
  if (user && *user) f->h[f->n++] = (dsys_header){"X-Dsys-User-Id", user};
  if (ident) {
    /* a copy: a credential file may rotate while the call waits */
    if (!(f->ident = dsysi_strdup(ident))) return DSYS_ENOMEM;
    f->h[f->n++] = (dsys_header){DSYS_IDENTITY_HEADER, f->ident};
  }
  return 0;
}

void dsysi_fwd_free(dsysi_fwd *f) {
  if (f->h != f->inl) free(f->h);
  free(f->xff);
  free(f->ident);
  f->h = NULL;
  f->xff = f->ident = NULL;
  f->n = 0;
}

int dsysi_fwd_response_header(const char *name, int drop_cors) {
  int cls = dsysi_header_class(name);
  return cls != DSYSI_HDR_HOP && cls != DSYSI_HDR_CONTENT_TYPE && cls != DSYSI_HDR_REQUEST_ID &&
         cls != DSYSI_HDR_DATE && !(drop_cors && !strncasecmp(name, "access-control-", 15));
}
