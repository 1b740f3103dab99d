/* JSON answers and request bodies of the service modules. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "core/json.h"
#include "services/reply.h"

int dsysi_respond_obj(dsys_request *req, int status, json_object *obj) {
  size_t len = 0;
  char *s = obj ? dsysi_json_dump(obj, &len) : NULL;
  json_object_put(obj);
  if (!s) return dsys_respond_error(req, 500, "DSYS_ENOMEM", "Out of memory");
  int rc = dsys_respond(req, status, "application/json", s, len);
  free(s);
  return rc;
}

int dsysi_respond_err(dsys_request *req, int status, const char *code,
                      const char *msg) {
  return dsys_respond_error(req, status, code, msg);
}

/* Monotonic ms of the last answer that said the storage is full (0:
 * never): the storage is the host's, so one mark for the process. */
static _Atomic int64_t full_at_ms;

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int dsysi_storage_full_recently(int64_t within_ms) {
  int64_t at = atomic_load(&full_at_ms);
  return at && mono_ms() - at < within_ms;
}

/* How each storage error is answered. */
static const struct {
  int rc, status, retry; /* retry: send Retry-After: 1 */
  const char *code, *msg;
} storage_answers[] = {
    /* 507, not 500: the instance is fine, its storage is full (shared by
     * every instance on the host), so a proxy's breaker must not eject it,
     * and reads go on */
    {DSYS_ENOSPC, 507, 0, "DSYS_ENOSPC", "no space left on the storage"},
    /* locked by another process past the busy wait: try again shortly */
    {DSYS_EBUSY, 503, 1, "DSYS_EBUSY", "the storage is locked by another process"},
    /* a database server (PostgreSQL) that is down or unreachable: every
     * instance sees the same; the pool reconnects by itself once it is
     * back */
    {DSYS_EUNAVAIL, 503, 1, "DSYS_EUNAVAIL", "the database is unavailable"},
    /* the database did not answer within its statement timeout */
    {DSYS_ETIMEDOUT, 503, 1, "DSYS_ETIMEDOUT", "the database did not answer in time"},
    {DSYS_EPERM, 503, 0, "DSYS_EPERM", "the storage is read-only"},
    {DSYS_EIO, 503, 0, "DSYS_EIO", "the storage cannot be read or written"},
};

int dsysi_respond_storage_err(dsys_request *req, int rc, const char *what) {
  if (rc == DSYS_ENOSPC) atomic_store(&full_at_ms, mono_ms());
  if (rc == DSYS_ENOMEM) return dsys_respond_error(req, 503, "DSYS_ENOMEM", "Out of memory");
  for (size_t i = 0; i < sizeof storage_answers / sizeof storage_answers[0]; i++) {
    if (storage_answers[i].rc != rc) continue;
    char msg[160];
    snprintf(msg, sizeof msg, "%s: %s", what, storage_answers[i].msg);
    if (storage_answers[i].retry) dsys_response_header(req, "Retry-After", "1");
    return dsys_respond_error(req, storage_answers[i].status, storage_answers[i].code, msg);
  }
  return dsys_respond_error(req, 500, dsys_err_name(rc), what);
}

int dsysi_body_object(dsys_request *req, json_object **out) {
  size_t len = 0;
  const char *body = dsys_request_body(req, &len);
  *out = NULL;
  size_t i = 0;
  while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' ||
                     body[i] == '\n'))
    i++;
  if (i == len) {
    *out = json_object_new_object();
    if (!*out) {
      dsys_respond_error(req, 500, "DSYS_ENOMEM", "Out of memory");
      return -1;
    }
    return 0;
  }
  json_object *o = NULL;
  int rc = dsysi_json_parse(body, len, &o);
  if (rc == DSYS_ENOMEM) {
    dsys_respond_error(req, 500, "DSYS_ENOMEM", "Out of memory");
    return -1;
  }
  if (rc) {
    dsys_respond_error(req, 400, "DSYS_EBADJSON", "Invalid JSON body");
    return -1;
  }
  if (!json_object_is_type(o, json_type_object)) {
    json_object_put(o);
    dsys_respond_error(req, 400, "DSYS_ETYPE",
                       "Request body must be a JSON object");
    return -1;
  }
  *out = o;
  return 0;
}
