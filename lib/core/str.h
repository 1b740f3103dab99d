/* Small string helpers (str.c). Thread-safety: all are reentrant. */
#ifndef DSYSI_STR_H
#define DSYSI_STR_H

#include <stddef.h>

/** strdup that accepts NULL (returns NULL). */
char *dsysi_strdup(const char *s);
/** Copy of (s, n) with a trailing NUL. */
char *dsysi_strndup(const char *s, size_t n);
/** ASCII lower case of each byte value (table). */
extern const unsigned char dsysi_lc[256];
/** ASCII case-insensitive equality. */
int dsysi_streq_nocase(const char *a, const char *b);
/** Value of a hex digit, or -1. */
int dsysi_hexval(char c);
/** Percent-decode (s, n) into d (room for n + 1); returns the length. */
size_t dsysi_url_decode_into(char *d, const char *s, size_t n, int plus_space);
/** Percent-decode (s, n) into a new string; '+' is kept unless plus_space. */
char *dsysi_url_decode(const char *s, size_t n, int plus_space);

#endif
