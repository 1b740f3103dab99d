/* Internal JSON helpers over json-c: strict parsing of untrusted input. */
#include <errno.h>
#include <pthread.h>
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

/* One tokener per thread, reused: a new one costs a zeroed 2 KiB stack
 * (DSYSI_JSON_MAX_DEPTH levels) and its frees, 13-15% of a small text's
 * parse in a tight loop (PERFORMANCE.md, jobs through HTTP). Texts over
 * TOK_KEEP_MAX get a tokener of their own: the string buffer a tokener
 * keeps grows to the longest string it met. Freed at the thread's exit. */
#define TOK_KEEP_MAX (64 * 1024)
static pthread_key_t tok_key;
static pthread_once_t tok_once = PTHREAD_ONCE_INIT;
static int tok_key_ok;

static void tok_free(void *t) { json_tokener_free(t); }
static void tok_init(void) { tok_key_ok = !pthread_key_create(&tok_key, tok_free); }

/* At the library's unload (dlclose) no later thread exit may call tok_free
 * in unmapped code: the key goes (the threads' tokeners are left). */
__attribute__((destructor)) static void tok_fini(void) {
  if (tok_key_ok) pthread_key_delete(tok_key);
}

static json_tokener *tok_new(void) {
  json_tokener *t = json_tokener_new_ex(DSYSI_JSON_MAX_DEPTH);
  if (t) json_tokener_set_flags(t, JSON_TOKENER_STRICT);
  return t;
}

/* The thread's tokener (taken off the thread until tok_put: a parse never
 * nests, but a stray one must not share it). */
static json_tokener *tok_get(size_t len) {
  if (len > TOK_KEEP_MAX) return tok_new();
  pthread_once(&tok_once, tok_init);
  json_tokener *t = tok_key_ok ? pthread_getspecific(tok_key) : NULL;
  if (!t) return tok_new();
  pthread_setspecific(tok_key, NULL);
  return t;
}

/* Keep the tokener, reset (what a failed parse left is freed now), for the
 * thread's next parse of a text of len bytes at most TOK_KEEP_MAX. */
static void tok_put(json_tokener *t, size_t len) {
  if (len <= TOK_KEEP_MAX && tok_key_ok && !pthread_getspecific(tok_key)) {
    json_tokener_reset(t);
    if (!pthread_setspecific(tok_key, t)) return;
  }
  json_tokener_free(t);
}

int dsysi_json_parse(const char *text, size_t len, json_object **out) {
  if (!out || (!text && len)) return DSYS_EINVAL;
  *out = NULL;
  if (len == 0 || len > (size_t)INT32_MAX) return DSYS_EBADJSON;
  if (memchr(text, '\0', len) || has_single_quote(text, len))
    return DSYS_EBADJSON;
  json_tokener *tok = tok_get(len);
  if (!tok) return DSYS_ENOMEM;
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
  tok_put(tok, len);
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
