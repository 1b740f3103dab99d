/* Logging to stderr: text (coloured on a TTY) or JSON lines; with the
 * sd-daemon(3) priority prefixes when stderr is the systemd journal. */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <json-c/json.h>
#include <distsys/clock.h>
#include <distsys/log.h>
#include "core/internal.h"

static atomic_int g_level = -1; /* -1: not yet read from the environment */
static atomic_int g_format = -1;
static atomic_int g_journal = -1; /* -1: not yet checked; 1: stderr is the journal */

/* systemd sets JOURNAL_STREAM=DEV:INODE (decimal) for a service whose
 * stdout/stderr is connected to the journal; a stderr redirected since
 * (a shell's 2>file) no longer matches (sd-daemon(3), systemd.exec(5)). */
static int stderr_is_journal(void) {
  const char *e = getenv("JOURNAL_STREAM");
  uintmax_t dev = 0, ino = 0;
  char tail;
  struct stat st;
  if (!e || sscanf(e, "%ju:%ju%c", &dev, &ino, &tail) != 2) return 0;
  if (fstat(STDERR_FILENO, &st)) return 0;
  return (uintmax_t)st.st_dev == dev && (uintmax_t)st.st_ino == ino;
}

static const char *level_names[] = {"debug", "info", "warn", "error", "off"};

static void init_from_env(void) {
  if (atomic_load(&g_level) < 0) {
    dsys_log_level lv = DSYS_LOG_INFO;
    const char *e = getenv("DSYS_LOG_LEVEL");
    if (e) dsys_log_level_parse(e, &lv);
    int expect = -1;
    atomic_compare_exchange_strong(&g_level, &expect, (int)lv);
  }
  if (atomic_load(&g_format) < 0) {
    dsys_log_format f = DSYS_LOG_TEXT;
    const char *e = getenv("DSYS_LOG_FORMAT");
    if (e) dsys_log_format_parse(e, &f);
    int expect = -1;
    atomic_compare_exchange_strong(&g_format, &expect, (int)f);
  }
  if (atomic_load(&g_journal) < 0) {
    int expect = -1;
    atomic_compare_exchange_strong(&g_journal, &expect, stderr_is_journal());
  }
}

void dsys_log_set_level(dsys_log_level level) {
  if ((int)level < DSYS_LOG_DEBUG || level > DSYS_LOG_OFF) return;
  atomic_store(&g_level, (int)level);
}

dsys_log_level dsys_log_get_level(void) {
  init_from_env();
  return (dsys_log_level)atomic_load(&g_level);
}

int dsys_log_level_parse(const char *name, dsys_log_level *out) {
  if (!name || !out) return DSYS_EINVAL;
  for (int i = 0; i <= DSYS_LOG_OFF; i++)
    if (dsysi_streq_nocase(name, level_names[i])) {
      *out = (dsys_log_level)i;
      return 0;
    }
  if (dsysi_streq_nocase(name, "warning")) {
    *out = DSYS_LOG_WARN;
    return 0;
  }
  return DSYS_EINVAL;
}

void dsys_log_set_format(dsys_log_format fmt) {
  if (fmt != DSYS_LOG_TEXT && fmt != DSYS_LOG_JSON && fmt != DSYS_LOG_JOURNAL) return;
  atomic_store(&g_format, (int)fmt);
}

int dsys_log_format_parse(const char *name, dsys_log_format *out) {
  if (!name || !out) return DSYS_EINVAL;
  if (dsysi_streq_nocase(name, "text")) *out = DSYS_LOG_TEXT;
  else if (dsysi_streq_nocase(name, "json")) *out = DSYS_LOG_JSON;
  else if (dsysi_streq_nocase(name, "journal")) *out = DSYS_LOG_JOURNAL;
  else return DSYS_EINVAL;
  return 0;
}

int dsysi_log_enabled(int level) {
  init_from_env();
  return level >= atomic_load(&g_level) && level < DSYS_LOG_OFF;
}

int dsysi_log_is_json(void) {
  init_from_env();
  return atomic_load(&g_format) == DSYS_LOG_JSON;
}

static void log_record(dsys_log_level level, const char *component,
                       const char *message, json_object *fields);

void dsys_log_write(dsys_log_level level, const char *component,
                    const char *message) {
  log_record(level, component, message, NULL);
}

void dsysi_log_fields(int level, const char *component, const char *msg,
                      json_object *fields) {
  log_record((dsys_log_level)level, component, msg, fields);
}

static void log_record(dsys_log_level level, const char *component,
                       const char *message, json_object *fields) {
  if (!dsysi_log_enabled((int)level)) return;
  char ts[32];
  dsys_time_iso8601(dsys_clock_wall_ms(dsys_clock_real()), ts, sizeof ts);
  dsysi_buf b = {0};
  int fmt = atomic_load(&g_format);
  int journal = fmt == DSYS_LOG_JOURNAL || atomic_load(&g_journal) == 1;
  if (journal) {
    /* sd-daemon(3) priorities: LOG_DEBUG 7, LOG_INFO 6, LOG_WARNING 4, LOG_ERR 3 */
    static const char prio[] = {'7', '6', '4', '3'};
    char pre[3] = {'<', prio[level], '>'};
    dsysi_buf_append(&b, pre, 3);
  }
  if (fmt == DSYS_LOG_JSON) {
    json_object *o = json_object_new_object();
    if (!o) return;
    json_object_object_add(o, "time", json_object_new_string(ts));
    json_object_object_add(o, "level",
                           json_object_new_string(level_names[level]));
    if (component)
      json_object_object_add(o, "component", json_object_new_string(component));
    json_object_object_add(o, "msg", json_object_new_string(message ? message : ""));
    if (json_object_is_type(fields, json_type_object)) {
      json_object_object_foreach(fields, k, v)
        json_object_object_add(o, k, json_object_get(v));
    }
    dsysi_buf_puts(&b, json_object_to_json_string_ext(
                           o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
  } else {
    static const char *colour[] = {"\033[2m", "\033[32m", "\033[33m", "\033[31m"};
    static const char *upper[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
    if (journal) /* the journal stamps and colours lines itself */
      dsysi_buf_printf(&b, "%s%s%s", component ? component : "", component ? ": " : "",
                       message ? message : "");
    else {
      int tty = isatty(STDERR_FILENO);
      dsysi_buf_printf(&b, "%s %s%s%s %s%s%s", ts, tty ? colour[level] : "",
                       upper[level], tty ? "\033[0m" : "", component ? component : "",
                       component ? ": " : "", message ? message : "");
    }
    if (json_object_is_type(fields, json_type_object)) {
      json_object_object_foreach(fields, k, v) {
        if (!v) continue;
        dsysi_buf_printf(&b, " %s=%s", k,
                         json_object_is_type(v, json_type_string)
                             ? json_object_get_string(v)
                             : json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
      }
    }
  }
  /* The journal splits records at newlines (the rest would lose the
   * priority): one record, one line. */
  for (size_t i = 0; journal && !b.oom && i < b.len; i++)
    if (b.data[i] == '\n') b.data[i] = ' ';
  dsysi_buf_append(&b, "\n", 1);
  if (!b.oom) {
    /* One write per record so concurrent lines never interleave. */
    ssize_t w = write(STDERR_FILENO, b.data, b.len);
    (void)w;
  }
  dsysi_buf_free(&b);
}

void dsysi_log(int level, const char *component, const char *fmt, ...) {
  if (!dsysi_log_enabled(level)) return;
  dsysi_buf b = {0};
  va_list ap;
  va_start(ap, fmt);
  dsysi_buf_vprintf(&b, fmt, ap);
  va_end(ap);
  if (!b.oom) dsys_log_write((dsys_log_level)level, component, b.data);
  dsysi_buf_free(&b);
}
