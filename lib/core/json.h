/*
 * Internal JSON helpers over json-c. json-c types never appear in public
 * headers; this header is for the library's own modules.
 */
#ifndef DSYSI_JSON_H
#define DSYSI_JSON_H

#include <stdint.h>
#include <json-c/json.h>

/** Nesting limit for untrusted input. */
#define DSYSI_JSON_MAX_DEPTH 64

/**
 * Strictly parse untrusted JSON: depth-limited, whole input consumed
 * (trailing garbage rejected), embedded NULs rejected.
 * @return 0 with *out owning one reference (NULL for the literal null),
 *         DSYS_EBADJSON, DSYS_ENOMEM.
 */
int dsysi_json_parse(const char *text, size_t len, json_object **out);

/** Parse and require an object. @return 0, DSYS_EBADJSON, DSYS_ETYPE. */
int dsysi_json_parse_object(const char *text, size_t len, json_object **out);

/** The string member key, or NULL when missing or not a string. */
const char *dsysi_json_str(json_object *obj, const char *key);

/**
 * Integer member. @return 0, DSYS_ENOTFOUND (missing), DSYS_ETYPE (not an
 * integer, or a double with a fraction).
 */
int dsysi_json_int64(json_object *obj, const char *key, int64_t *out);

/** Compact serialisation, malloc'd (release with free/dsys_free). */
char *dsysi_json_dump(json_object *obj, size_t *len);

/** New string object holding an ISO-8601 UTC time. */
json_object *dsysi_json_time(int64_t wall_ms);

#endif
