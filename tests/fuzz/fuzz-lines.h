/*
 * Shared by the fuzz targets that read their input as lines (router,
 * gateway): a NUL-terminated copy of the input cut at its first n-1
 * newlines.
 */
#ifndef DSYS_FUZZ_LINES_H
#define DSYS_FUZZ_LINES_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Fills f[0..n-1] with the lines (NULL past the last) and returns the copy
 * they point into, for the caller to free; NULL when out of memory. */
static inline char *fuzz_lines(const uint8_t *data, size_t size, char **f, int n) {
  char *in = malloc(size + 1);
  if (!in) return NULL;
  memcpy(in, data, size);
  in[size] = '\0';
  char *p = in;
  for (int i = 0; i < n; i++) {
    f[i] = p;
    char *nl = p ? strchr(p, '\n') : NULL;
    if (nl) *nl = '\0';
    p = nl ? nl + 1 : NULL;
  }
  return in;
}

#endif
