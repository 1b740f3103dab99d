/*
 * Growable byte buffers and arrays (buf.c). Thread-safety: none; a buffer
 * or array belongs to one thread at a time.
 */
#ifndef DSYSI_BUF_H
#define DSYSI_BUF_H

#include <stdarg.h>
#include <stddef.h>

/** Growable byte buffer, always NUL-terminated when data != NULL. */
typedef struct dsysi_buf {
  char *data;
  size_t len;
  size_t cap;
  int oom; /* sticky: set when an append failed */
} dsysi_buf;

/** Room for n more bytes (and the NUL) without a further allocation; an
 *  empty buffer gets exactly that much. */
int dsysi_buf_reserve(dsysi_buf *b, size_t n);
/** Append len bytes. Like every append: 0 or DSYS_ENOMEM, and after one
 *  failure every later append fails too (check once, at the end). */
int dsysi_buf_append(dsysi_buf *b, const void *data, size_t len);
/** Append a NUL-terminated string. */
int dsysi_buf_puts(dsysi_buf *b, const char *s);
/** Append formatted text (DSYS_EINVAL for a bad format). */
int dsysi_buf_printf(dsysi_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/** dsysi_buf_printf with a va_list. */
int dsysi_buf_vprintf(dsysi_buf *b, const char *fmt, va_list ap);
/** Take ownership of the data (never NULL on success: "" for empty). */
char *dsysi_buf_steal(dsysi_buf *b, size_t *len);
/** Release the data and reset the buffer (to empty, usable again). */
void dsysi_buf_free(dsysi_buf *b);

/** Make room in a growable array for at least `need` elements of `elsize`
 *  bytes. `arrp` is the address of the array pointer (any `T **`), `cap` its
 *  capacity in elements. Capacity doubles from `first` (at least 1), so
 *  appending one at a time stays amortised O(1). On failure (DSYS_ENOMEM,
 *  also for a size that would overflow; DSYS_EINVAL for elsize 0) the array
 *  and `cap` are unchanged. */
int dsysi_grow(void *arrp, size_t *cap, size_t need, size_t elsize, size_t first);

#endif
