/*
 * The library's own side of logging (log.c): printf-style records and
 * records with fields. Thread-safety: any thread.
 */
#ifndef DSYSI_LOG_H
#define DSYSI_LOG_H

#include <distsys/log.h>

/** printf-style logging; the public dsys_log_write takes no varargs. */
void dsysi_log(int level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/** Nonzero when a record at this level would be written. */
int dsysi_log_enabled(int level);
/** Nonzero when records are written as JSON lines. */
int dsysi_log_is_json(void);
struct json_object;
/** One record with structured fields (borrowed; a JSON object): in JSON
 *  format the fields become members of the record (after time, level,
 *  component, msg); in text format they follow msg as " key=value". */
void dsysi_log_fields(int level, const char *component, const char *msg,
                      struct json_object *fields);

#endif
