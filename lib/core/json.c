/* Internal JSON helpers over json-c: strict parsing of untrusted input. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/clock.h>
#include <distsys/common.h>
#include "core/json.h"

/* json-c 0.16 accepts single-quoted keys even in strict mode; RFC 8259 does
 * not. Reject a quote character outside double-quoted strings. */
static int has_single_quote(const char *t, size_t n) {
  int in_str = 0;
  for (size_t i = 0; i < n; i++) {
    char c = t[i];
    if (in_str) {
      if (c == '\\') i++;
      else if (c == '"') in_str = 0;
    } else if (c == '"') {
      in_str = 1;
    } else if (c == '\'') {
      return 1;
    }
  }
  return 0;
}

int dsysi_json_parse(const char *text, size_t len, json_object **out) {
  if (!out || (!text && len)) return DSYS_EINVAL;
  *out = NULL;
  if (len == 0 || len > (size_t)INT32_MAX) return DSYS_EBADJSON;
  if (memchr(text, '\0', len) || has_single_quote(text, len))
    return DSYS_EBADJSON;
  json_tokener *tok = json_tokener_new_ex(DSYSI_JSON_MAX_DEPTH);
  if (!tok) return DSYS_ENOMEM;
  json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
  json_object *obj = json_tokener_parse_ex(tok, text, (int)len);
  enum json_tokener_error jerr = json_tokener_get_error(tok);
  size_t used = json_tokener_get_parse_end(tok);
  if (jerr == json_tokener_continue) {
    /* A bare number at the very end needs a terminator to finish. */
    json_object_put(obj);
    obj = json_tokener_parse_ex(tok, "", 1);
    jerr = json_tokener_get_error(tok);
    used = len;
  }
  json_tokener_free(tok);
  if (jerr != json_tokener_success) {
    json_object_put(obj);
    return DSYS_EBADJSON;
  }
  /* Only whitespace may follow the value. */
  for (size_t i = used; i < len; i++) {
    char c = text[i];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
      json_object_put(obj);
      return DSYS_EBADJSON;
    }
  }
  *out = obj;
  return 0;
}

int dsysi_json_parse_object(const char *text, size_t len, json_object **out) {
  json_object *o = NULL;
  int rc = dsysi_json_parse(text, len, &o);
  if (rc) return rc;
  if (!json_object_is_type(o, json_type_object)) {
    json_object_put(o);
    return DSYS_ETYPE;
  }
  *out = o;
  return 0;
}

const char *dsysi_json_str(json_object *obj, const char *key) {
  json_object *v;
  if (!obj || !json_object_object_get_ex(obj, key, &v)) return NULL;
  if (!json_object_is_type(v, json_type_string)) return NULL;
  return json_object_get_string(v);
}

int dsysi_json_int64(json_object *obj, const char *key, int64_t *out) {
  json_object *v;
  if (!obj || !json_object_object_get_ex(obj, key, &v) || !v)
    return DSYS_ENOTFOUND;
  if (json_object_is_type(v, json_type_int)) {
    errno = 0;
    int64_t x = json_object_get_int64(v);
    if (errno == ERANGE) return DSYS_ERANGE;
    *out = x;
    return 0;
  }
  if (json_object_is_type(v, json_type_double)) {
    double d = json_object_get_double(v);
    if (d != (double)(int64_t)d || d > 9.2e18 || d < -9.2e18) return DSYS_ETYPE;
    *out = (int64_t)d;
    return 0;
  }
  return DSYS_ETYPE;
}

char *dsysi_json_dump(json_object *obj, size_t *len) {
  size_t n = 0;
  const char *s = json_object_to_json_string_length(
      obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
  if (!s) return NULL;
  char *d = malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, s, n + 1);
  if (len) *len = n;
  return d;
}

json_object *dsysi_json_time(int64_t wall_ms) {
  char buf[32];
  dsys_time_iso8601(wall_ms, buf, sizeof buf);
  return json_object_new_string(buf);
}
