/* Small helpers shared by the operator tools dsys-queue and dsys-registry:
 * JSON text output, times, error lines, database files. */
#ifndef DSYS_TOOLS_CLI_UTIL_H
#define DSYS_TOOLS_CLI_UTIL_H

#include <stdint.h>
#include <stdio.h>

/** The option rows every tool ends its table with (dsys_config). */
#define CLI_COMMON_OPTIONS                                               \
  {"log-level", "DSYS_LOG_LEVEL", DSYS_OPT_STRING, "off",                \
   "library log lines on stderr: debug, info, warn, error or off"},      \
      {"help", NULL, DSYS_OPT_BOOL, NULL, "show this help and exit"},    \
      {"version", NULL, DSYS_OPT_BOOL, NULL, "show the version and exit"}

/** Print s as a JSON string ("null" for NULL), escaped. */
void cli_json_str(FILE *f, const char *s);

/** Format wall ms as ISO-8601 UTC with ms ("2024-05-01T12:00:00.000Z");
 *  "-" for 0. buf needs 32 bytes. Returns buf. */
const char *cli_time(int64_t ms, char *buf);

/** "PROG: WHAT: DSYS_EXXX: message" on stderr; returns 1 (the exit
 *  status). what may be NULL. */
int cli_error(const char *prog, const char *what, int rc);

/**
 * For a sqlite URL ("sqlite:///abs", "sqlite://rel"), the file it names:
 * *path receives a pointer into url. Returns 1 when url is such a URL,
 * else 0.
 */
int cli_sqlite_path(const char *url, const char **path);

/** Whether the option was given on the command line (not env/default). */
struct dsys_config;
int cli_from_flag(const struct dsys_config *cfg, const char *name);

#endif
