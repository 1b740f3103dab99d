/* Helpers of the operator tools (see cli-util.h). */
#include "cli-util.h"

#include <string.h>
#include <time.h>

#include <distsys/distsys.h>

void cli_json_str(FILE *f, const char *s) {
  if (!s) {
    fputs("null", f);
    return;
  }
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"': fputs("\\\"", f); break;
    case '\\': fputs("\\\\", f); break;
    case '\n': fputs("\\n", f); break;
    case '\r': fputs("\\r", f); break;
    case '\t': fputs("\\t", f); break;
    default:
      if (*p < 0x20) fprintf(f, "\\u%04x", *p);
      else fputc(*p, f);
    }
  }
  fputc('"', f);
}

const char *cli_time(int64_t ms, char *buf) {
  if (ms <= 0) {
    strcpy(buf, "-");
    return buf;
  }
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  size_t n = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + n, 32 - n, ".%03dZ", (int)(ms % 1000));
  return buf;
}

int cli_error(const char *prog, const char *what, int rc) {
  fprintf(stderr, "%s: %s%s%s: %s\n", prog, what ? what : "", what ? ": " : "",
          dsys_err_name(rc), dsys_strerror(rc));
  return 1;
}

int cli_sqlite_path(const char *url, const char **path) {
  if (!url || strncmp(url, "sqlite:", 7)) return 0;
  *path = url + (strncmp(url, "sqlite://", 9) ? 7 : 9);
  return 1;
}

int cli_from_flag(const struct dsys_config *cfg, const char *name) {
  return !strcmp(dsys_config_source(cfg, name), "flag");
}
