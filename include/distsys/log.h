/*
 * Logging: levels, text (coloured on a TTY) or JSON lines, to stderr.
 * When stderr is connected to the systemd journal (JOURNAL_STREAM names
 * stderr's device and inode, as systemd sets it for a service's output) or
 * the format is DSYS_LOG_JOURNAL, every line starts with its sd-daemon(3)
 * priority prefix: <7> debug, <6> info, <4> warn, <3> error.
 *
 * Thread-safety: all functions may be called from any thread; each record is
 * written with one write(2) so lines from threads never interleave.
 */
#ifndef DSYS_LOG_H
#define DSYS_LOG_H

#include <distsys/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Log levels, in increasing severity. */
typedef enum dsys_log_level {
  DSYS_LOG_DEBUG = 0,
  DSYS_LOG_INFO = 1,
  DSYS_LOG_WARN = 2,
  DSYS_LOG_ERROR = 3,
  DSYS_LOG_OFF = 4
} dsys_log_level;

/** Output formats. */
typedef enum dsys_log_format {
  DSYS_LOG_TEXT = 0, /**< "2026-01-01T00:00:00.000Z INFO  comp: message" */
  DSYS_LOG_JSON = 1, /**< one JSON object per line */
  DSYS_LOG_JOURNAL = 2 /**< "<6>comp: message": text with the sd-daemon(3)
                            priority prefix and no time stamp (the journal
                            stamps each line itself) */
} dsys_log_format;

/** Set the minimum level written (default INFO, or DSYS_LOG_LEVEL). */
DSYS_API void dsys_log_set_level(dsys_log_level level);
/** Current minimum level. */
DSYS_API dsys_log_level dsys_log_get_level(void);

/**
 * Parse a level name ("debug", "info", "warn", "error", "off").
 * @return 0, or DSYS_EINVAL for an unknown name (out untouched).
 */
DSYS_API int dsys_log_level_parse(const char *name, dsys_log_level *out);

/** Set the output format (default TEXT, or DSYS_LOG_FORMAT=json|journal).
 *  Whatever the format, a stderr that is the journal (JOURNAL_STREAM)
 *  gets the priority prefixes; TEXT then drops its time stamp too. */
DSYS_API void dsys_log_set_format(dsys_log_format fmt);

/**
 * Parse a format name ("text", "json" or "journal").
 * @return 0, or DSYS_EINVAL.
 */
DSYS_API int dsys_log_format_parse(const char *name, dsys_log_format *out);

/**
 * Write one record.
 * @param level severity; below the current level nothing is written.
 * @param component short subsystem name ("server", "registry"); may be NULL.
 * @param message UTF-8 text; may be NULL.
 */
DSYS_API void dsys_log_write(dsys_log_level level, const char *component,
                             const char *message);

#ifdef __cplusplus
}
#endif
#endif
