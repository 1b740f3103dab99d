/*
 * Internal: the value grammars of the typed config options (config.c),
 * shared with the unit tests.
 */
#ifndef DSYSI_CORE_CONFIG_H
#define DSYSI_CORE_CONFIG_H

#include <stdint.h>

/**
 * A duration in milliseconds: digits with an optional fraction, then a
 * unit ms, s, m, h or d (ASCII case-insensitive); without a unit the number
 * is in units of bare_ms milliseconds (1 or 1000).
 * @return 0; DSYS_ETYPE (empty, a sign, garbage, an unknown unit, a
 *         fraction finer than 1 ms); DSYS_ERANGE (over INT64_MAX ms).
 */
int dsysi_parse_duration_ms(const char *s, int64_t bare_ms, int64_t *out);

/**
 * A size in bytes: digits with an optional fraction, then B, KiB, MiB, GiB
 * or TiB (ASCII case-insensitive); a bare number is bytes.
 * @return 0; DSYS_ETYPE (as above; a fraction of a byte); DSYS_ERANGE
 *         (over INT64_MAX bytes).
 */
int dsysi_parse_size(const char *s, int64_t *out);

#endif
