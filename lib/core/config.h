/*
 * Internal: the value grammars of the typed config options (config.c),
 * shared with the unit tests.
 */
#ifndef DSYSI_CORE_CONFIG_H
#define DSYSI_CORE_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <distsys/config.h>

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

/**
 * The flags a configuration file stands for: its lines are VAR=value (the
 * format of systemd's EnvironmentFile=: blank lines and lines starting
 * with # skipped, a value in matching single or double quotes unquoted),
 * VAR being an option's environment variable (or an alias's), and each
 * line becomes "--NAME=value", in file order (a repeatable option's
 * variable may repeat).
 * @param skip an option whose lines are ignored (the one naming the file:
 *        an environment file may name itself), or NULL.
 * @param out receives a NULL-terminated array of *n strings (free each and
 *        the array).
 * @return 0; DSYS_EIO (cannot read the file), DSYS_EINVAL (a line that is
 *         not VAR=value of a known variable; errbuf says which line),
 *         DSYS_ENOMEM.
 */
int dsysi_config_file_args(const dsys_option *opts, size_t nopts, const char *path,
                           const char *skip, char ***out, size_t *n, char *errbuf,
                           size_t errlen);

#endif
