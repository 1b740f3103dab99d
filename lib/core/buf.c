/* Growable byte buffers and arrays. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/common.h>
#include "core/buf.h"

static int buf_reserve(dsysi_buf *b, size_t extra) {
  if (b->oom) return DSYS_ENOMEM;
  if (b->len + extra + 1 <= b->cap) return 0;
  if (extra > SIZE_MAX / 4 - b->len) {
    b->oom = 1;
    return DSYS_ENOMEM;
  }
  /* The first allocation fits the first need exactly (at least 64);
   * later ones double. */
  size_t cap = b->cap ? b->cap : b->len + extra + 1 > 64 ? b->len + extra + 1 : 64;
  while (cap < b->len + extra + 1) {
    if (cap > SIZE_MAX / 2) {
      b->oom = 1;
      return DSYS_ENOMEM;
    }
    cap *= 2;
  }
  char *d = realloc(b->data, cap);
  if (!d) {
    b->oom = 1;
    return DSYS_ENOMEM;
  }
  b->data = d;
  b->cap = cap;
  return 0;
}

int dsysi_grow(void *arrp, size_t *cap, size_t need, size_t elsize, size_t first) {
  if (need <= *cap) return 0;
  if (!elsize) return DSYS_EINVAL;
  size_t nc = *cap ? *cap : first ? first : 1;
  while (nc < need) {
    if (nc > SIZE_MAX / 2) return DSYS_ENOMEM;
    nc *= 2;
  }
  if (nc > SIZE_MAX / elsize) return DSYS_ENOMEM;
  /* The pointer is copied in and out as bytes so one function serves every
   * element type without casting T ** to void **. */
  void *old;
  memcpy(&old, arrp, sizeof old);
  void *grown = realloc(old, nc * elsize);
  if (!grown) return DSYS_ENOMEM;
  memcpy(arrp, &grown, sizeof grown);
  *cap = nc;
  return 0;
}

int dsysi_buf_reserve(dsysi_buf *b, size_t n) {
  int rc = buf_reserve(b, n);
  if (!rc) b->data[b->len] = '\0';
  return rc;
}

int dsysi_buf_append(dsysi_buf *b, const void *data, size_t len) {
  int rc = buf_reserve(b, len);
  if (rc) return rc;
  if (len) memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len] = '\0';
  return 0;
}

int dsysi_buf_puts(dsysi_buf *b, const char *s) {
  return dsysi_buf_append(b, s, strlen(s));
}

int dsysi_buf_vprintf(dsysi_buf *b, const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n < 0) return DSYS_EINVAL;
  int rc = buf_reserve(b, (size_t)n);
  if (rc) return rc;
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  b->len += (size_t)n;
  return 0;
}

int dsysi_buf_printf(dsysi_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = dsysi_buf_vprintf(b, fmt, ap);
  va_end(ap);
  return rc;
}

char *dsysi_buf_steal(dsysi_buf *b, size_t *len) {
  if (b->oom) {
    dsysi_buf_free(b);
    return NULL;
  }
  if (!b->data && dsysi_buf_append(b, "", 0)) return NULL;
  char *d = b->data;
  if (len) *len = b->len;
  b->data = NULL;
  b->len = b->cap = 0;
  return d;
}

void dsysi_buf_free(dsysi_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
  b->oom = 0;
}
