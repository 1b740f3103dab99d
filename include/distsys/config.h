/*
 * Configuration from command-line flags and DSYS_* environment variables.
 * Precedence: flag, then environment variable, then default.
 *
 * Flags are GNU-style long options parsed with getopt_long: "--name value",
 * "--name=value"; names are matched exactly (no abbreviations); boolean
 * options take no value ("--flag") but accept "--flag=true|false". "-h" is
 * "--help" and "-V" "--version" when the table has those options; any
 * other "-x" is an unknown option. "--" ends option parsing; other
 * arguments (a lone "-" too) are positional, in order.
 *
 * Thread-safety: a dsys_config is immutable after parsing and may be read
 * from any thread; dsys_config_free must not race with readers.
 * dsys_config_parse uses getopt_long's global state under a lock of its
 * own: do not call getopt yourself while another thread parses.
 */
#ifndef DSYS_CONFIG_H
#define DSYS_CONFIG_H

#include <distsys/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Option value types. */
typedef enum dsys_opt_type {
  DSYS_OPT_STRING = 0,
  DSYS_OPT_INT = 1,  /**< 64-bit signed decimal, validated at parse time */
  DSYS_OPT_BOOL = 2, /**< true/false, yes/no, on/off, 1/0 */
  DSYS_OPT_LIST = 3, /**< string, repeatable; every occurrence is kept */
  /** A time, validated at parse time: a number (decimals allowed) and a
   *  unit ms, s, m, h or d ("500ms", "5s", "1.5m", "2h"); a bare number is
   *  milliseconds. Read it with dsys_config_get_duration_ms(). */
  DSYS_OPT_DURATION = 4,
  /** A size in bytes: a number and a unit B, KiB, MiB, GiB or TiB
   *  ("65536", "64KiB", "1MiB", "1.5GiB"); a bare number is bytes. Read it
   *  with dsys_config_get_size(). */
  DSYS_OPT_SIZE = 5,
  /** A time like DSYS_OPT_DURATION whose bare number is seconds (for
   *  flags that always took seconds); still read in milliseconds. */
  DSYS_OPT_DURATION_S = 6,
  /** Another spelling of the option whose name is this row's def: its
   *  flag and its environment variable set that option (an old name kept
   *  working, e.g. "ttl-ms" for "ttl"). --help lists it with that option.
   *  The environment variable of the option itself wins over an alias's. */
  DSYS_OPT_ALIAS = 7
} dsys_opt_type;

/** One option. An array of these describes a program's options. */
typedef struct dsys_option {
  const char *name; /**< flag without dashes: "listen" means --listen */
  const char *env;  /**< environment variable, e.g. "DSYS_LISTEN", or NULL */
  int type;         /**< a dsys_opt_type */
  const char *def;  /**< default as text, or NULL for none; --help prints
                         it as written ("1MiB", "30s"); for DSYS_OPT_ALIAS
                         the name of the option it stands for */
  const char *help; /**< one line for --help */
} dsys_option;

typedef struct dsys_config dsys_config;

/**
 * Parse argv and the environment against an option table.
 * @param out receives the config (only on success); free with dsys_config_free.
 * @param opts option table (must outlive the config).
 * @param argv arguments; argv[0] is the program name and is skipped.
 * @param errbuf receives a message on failure (may be NULL).
 * @return 0; DSYS_EINVAL for an unknown (or abbreviated) flag, a missing
 *         value, a value of the wrong type or out of range, from a flag or
 *         the environment, or a table whose duration or size default does
 *         not parse or whose alias names no option (message in errbuf);
 *         DSYS_ENOMEM.
 */
DSYS_API int dsys_config_parse(dsys_config **out, const dsys_option *opts,
                               size_t nopts, int argc, char *const *argv,
                               char *errbuf, size_t errlen);

/** Free a config. NULL-safe. */
DSYS_API void dsys_config_free(dsys_config *cfg);

/**
 * Value of an option (the last occurrence for lists), or NULL when it is
 * unset and has no default. The string lives as long as the config.
 */
DSYS_API const char *dsys_config_get(const dsys_config *cfg, const char *name);

/** Integer value; for a DSYS_OPT_DURATION(_S) option in milliseconds, for a
 *  DSYS_OPT_SIZE option in bytes.
 *  @return 0, DSYS_ENOTFOUND (unset), DSYS_ETYPE (not a number). */
DSYS_API int dsys_config_get_int(const dsys_config *cfg, const char *name,
                                 int64_t *out);

/**
 * A duration in milliseconds: the value parsed as DSYS_OPT_DURATION (a bare
 * number in seconds for a DSYS_OPT_DURATION_S option).
 * @return 0, DSYS_ENOTFOUND (unset), DSYS_ETYPE (not a duration),
 *         DSYS_ERANGE (over INT64_MAX ms).
 */
DSYS_API int dsys_config_get_duration_ms(const dsys_config *cfg, const char *name,
                                         int64_t *out);

/**
 * A size in bytes: the value parsed as DSYS_OPT_SIZE.
 * @return 0, DSYS_ENOTFOUND (unset), DSYS_ETYPE (not a size), DSYS_ERANGE
 *         (over INT64_MAX bytes).
 */
DSYS_API int dsys_config_get_size(const dsys_config *cfg, const char *name,
                                  uint64_t *out);

/** Boolean value: 1 or 0; an unset option without default gives 0. */
DSYS_API int dsys_config_get_bool(const dsys_config *cfg, const char *name);

/** Number of values of a list option (0 when unset). */
DSYS_API size_t dsys_config_count(const dsys_config *cfg, const char *name);

/** The i-th value of a list option, or NULL. */
DSYS_API const char *dsys_config_get_nth(const dsys_config *cfg,
                                         const char *name, size_t i);

/** Where the value came from: "flag", "env", "default" or "unset". */
DSYS_API const char *dsys_config_source(const dsys_config *cfg,
                                        const char *name);

/** Number of positional arguments. */
DSYS_API size_t dsys_config_npositional(const dsys_config *cfg);

/** The i-th positional argument, or NULL. */
DSYS_API const char *dsys_config_positional(const dsys_config *cfg, size_t i);

/**
 * Build a --help text: "Usage: prog [options]", the summary, then one entry
 * per option with its short form (-h, -V), its aliases, its environment
 * variables, the unit of a bare number and its default.
 * @param out receives the text; release with dsys_free().
 * @return 0, DSYS_EINVAL (out is NULL), DSYS_ENOMEM.
 */
DSYS_API int dsys_config_usage(const dsys_option *opts, size_t nopts,
                               const char *progname, const char *summary,
                               char **out);

/**
 * The common start of a program's main: parse argv and the environment
 * (dsys_config_parse); answer -h/--help (dsys_config_usage on stdout) and
 * -V/--version ("PROG (libdistsys VERSION)"); apply --log-format and
 * --log-level when the table has them. Options named "help", "version",
 * "log-format" and "log-level" are used when present.
 * Messages for bad flags go to stderr as "PROG: message (try --help)".
 * progname may carry a synopsis after the name ("dsys-cluster
 * [run|status]"): the usage line shows it all, messages the first word.
 * @param out receives the config when the program should go on.
 * @return -1 to go on (*out set; free it with dsys_config_free); otherwise
 *         the exit status to return at once: 0 after --help or --version,
 *         2 for bad flags or values, 1 out of memory (*out untouched).
 */
DSYS_API int dsys_program_start(dsys_config **out, const dsys_option *opts,
                                size_t nopts, int argc, char *const *argv,
                                const char *progname, const char *summary);

/**
 * Refuse positional arguments beyond the first max (for a program's main,
 * after dsys_program_start): prints "PROG: unexpected argument 'X' (try
 * --help)" on stderr (PROG: the first word of progname).
 * @return 0 when there are at most max, else 2 (the exit status).
 */
DSYS_API int dsys_program_positionals(const dsys_config *cfg, const char *progname,
                                      size_t max);

#ifdef __cplusplus
}
#endif
#endif
