/* The request object: accessors, responding, streaming, lifetime. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include "core/json.h"
#include "transport/transport.h"

/* ---- lifetime ---- */

void dsysi_request_ref(dsys_request *req) { atomic_fetch_add(&req->refs, 1); }

void dsysi_request_unref(dsys_request *req) {
  if (atomic_fetch_sub(&req->refs, 1) != 1) return;
  /* method, target, params, ctype and the hdrs, rhdrs and logf lists are
   * in the arena */
  free(req->body);
  dsysi_hdrs_free(&req->qparams);
  free(req->rbody);
  dsysi_buf_free(&req->stream);
  dsysi_arena_free(&req->ar);
  free(req);
}

int dsysi_request_set_target(dsys_request *req, const char *target) {
  /* A fragment is never part of a request target (RFC 9112, 3.2); taken
   * as part of the path, it would make a check on this target disagree
   * with a peer that drops it ("/a/%2f.#x" is "/a//." there). */
  if (!target || target[0] != '/' || strchr(target, '#')) return DSYS_EURL;
  const char *q = strchr(target, '?');
  size_t plen = q ? (size_t)(q - target) : strlen(target);
  size_t tlen = strlen(target);
  /* One block: raw target, then the decoded path; the query points into
   * the raw target (or at its NUL when there is none). */
  char *buf = dsysi_arena_alloc(&req->ar, tlen + 1 + plen + 1);
  if (!buf) return DSYS_ENOMEM;
  memcpy(buf, target, tlen + 1);
  char *path = buf + tlen + 1;
  dsysi_url_decode_into(path, target, plen, 0);
  req->target = buf;
  req->path = path;
  req->query = q ? buf + (q - target) + 1 : buf + tlen;
  return 0;
}

char *dsysi_error_json(const char *code, const char *message, size_t *len) {
  json_object *o = json_object_new_object();
  if (!o) return NULL;
  json_object_object_add(o, "error", json_object_new_string(message ? message : ""));
  if (code) json_object_object_add(o, "code", json_object_new_string(code));
  char *s = dsysi_json_dump(o, len);
  json_object_put(o);
  return s;
}

/* ---- accessors ---- */

const char *dsys_request_method(const dsys_request *r) { return r ? r->method : NULL; }
const char *dsys_request_path(const dsys_request *r) { return r ? r->path : NULL; }
const char *dsys_request_target(const dsys_request *r) { return r ? r->target : NULL; }
const char *dsys_request_query(const dsys_request *r) { return r ? r->query : NULL; }
const char *dsys_request_id(const dsys_request *r) { return r ? r->req_id : NULL; }
const char *dsys_request_traceparent(const dsys_request *r) {
  if (!r) return NULL;
  dsysi_request_trace((dsys_request *)r); /* a lazily filled cache */
  return r->traceparent;
}
const char *dsys_request_trace_id(const dsys_request *r) {
  if (!r) return NULL;
  dsysi_request_trace((dsys_request *)r);
  return r->trace_id;
}
const char *dsys_request_remote_addr(const dsys_request *r) {
  if (!r) return NULL;
  dsys_request *w = (dsys_request *)r; /* a lazily filled cache */
  dsysi_lock_acquire(&w->mu);
  if (!w->remote) {
    const struct sockaddr *sa = &w->raddr.sa;
    if (sa->sa_family == AF_INET) {
      /* dotted quad by hand: inet_ntop costs ~1.7k instructions a call */
      const unsigned char *a = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
      char *o = w->remote_buf;
      for (int i = 0; i < 4; i++) {
        unsigned v = a[i];
        if (v >= 100) *o++ = (char)('0' + v / 100);
        if (v >= 10) *o++ = (char)('0' + v / 10 % 10);
        *o++ = (char)('0' + v % 10);
        *o++ = i < 3 ? '.' : '\0';
      }
    } else if (sa->sa_family == AF_INET6) {
      inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, w->remote_buf, sizeof w->remote_buf);
    } else {
      strcpy(w->remote_buf, sa->sa_family == AF_UNIX ? "unix" : "unknown");
    }
    w->remote = w->remote_buf;
  }
  dsysi_lock_release(&w->mu);
  return w->remote;
}
dsys_server *dsys_request_server(const dsys_request *r) { return r ? r->srv : NULL; }
void dsys_request_set_user(dsys_request *r, void *user) { if (r) r->user = user; }
void *dsys_request_user(const dsys_request *r) { return r ? r->user : NULL; }

const char *dsys_request_header(const dsys_request *r, const char *name) {
  return r && name ? dsysi_hdrs_get(&r->hdrs, name) : NULL;
}

size_t dsys_request_header_count(const dsys_request *r) { return r ? r->hdrs.n : 0; }

int dsys_request_header_at(const dsys_request *r, size_t i, const char **name,
                           const char **value) {
  if (!r || i >= r->hdrs.n) return DSYS_EINVAL;
  if (name) *name = r->hdrs.v[i].name;
  if (value) *value = r->hdrs.v[i].value;
  return 0;
}

const void *dsys_request_body(const dsys_request *r, size_t *len) {
  if (len) *len = r ? r->body_len : 0;
  return r && r->body ? r->body : "";
}

const char *dsys_request_param(const dsys_request *r, const char *name) {
  if (!r || !name) return NULL;
  for (size_t i = 0; i < r->nparams; i++)
    if (!strcmp(r->pnames[i], name)) return r->pvals[i];
  return NULL;
}

const char *dsys_request_query_param(dsys_request *r, const char *name) {
  if (!r || !name) return NULL;
  if (!r->qparsed) {
    r->qparsed = 1;
    const char *p = r->query;
    while (p && *p) {
      const char *amp = strchr(p, '&');
      size_t len = amp ? (size_t)(amp - p) : strlen(p);
      const char *eq = memchr(p, '=', len);
      size_t klen = eq ? (size_t)(eq - p) : len;
      char *k = dsysi_url_decode(p, klen, 1);
      char *v = eq ? dsysi_url_decode(eq + 1, len - klen - 1, 1) : strdup("");
      if (k && v) dsysi_hdrs_add(&r->qparams, k, strlen(k), v, strlen(v));
      free(k);
      free(v);
      p = amp ? amp + 1 : NULL;
    }
  }
  for (size_t i = 0; i < r->qparams.n; i++)
    if (!strcmp(r->qparams.v[i].name, name)) return r->qparams.v[i].value;
  return NULL;
}

/* ---- responding ---- */

int dsys_response_header(dsys_request *r, const char *name, const char *value) {
  if (!r || !name || !*name || !value || !dsysi_header_ok(name) ||
      !dsysi_header_ok(value) || strchr(name, ':'))
    return DSYS_EINVAL;
  dsysi_lock_acquire(&r->mu);
  int rc = (r->state == DSYSI_RQ_ANSWERED || r->state == DSYSI_RQ_STREAMING ||
            r->user_done)
               ? DSYS_ESTATE
               : dsysi_hdrs_add(&r->rhdrs, name, strlen(name), value,
                                strlen(value));
  dsysi_lock_release(&r->mu);
  return rc;
}

void dsys_request_on_close(dsys_request *r, dsys_close_fn fn, void *ud) {
  if (!r) return;
  dsysi_lock_acquire(&r->mu);
  r->on_close = fn;
  r->close_ud = ud;
  dsysi_lock_release(&r->mu);
}

int dsys_request_defer(dsys_request *r) {
  if (!r) return DSYS_EINVAL;
  dsysi_lock_acquire(&r->mu);
  int rc = 0;
  if (r->state != DSYSI_RQ_NEW) rc = DSYS_ESTATE;
  else r->state = DSYSI_RQ_DEFERRED;
  dsysi_lock_release(&r->mu);
  return rc;
}

/* Finish the user side: notify the transport, drop the user reference. */
static int finish_user(dsys_request *r, int notify) {
  int closed = r->closed;
  dsysi_lock_release(&r->mu);
  if (notify && !closed) r->ops->notify(r->lst, r);
  dsysi_request_unref(r);
  return closed ? DSYS_ECLOSED : 0;
}

int dsys_respond(dsys_request *r, int status, const char *content_type,
                 const void *body, size_t len) {
  if (!r || status < 100 || status > 999 || (!body && len) ||
      (content_type && !dsysi_header_ok(content_type)))
    return DSYS_EINVAL;
  char *copy = malloc(len + 1); /* given to the transport, which frees it */
  if (!copy) return DSYS_ENOMEM;
  if (len) memcpy(copy, body, len);
  copy[len] = '\0';
  return dsysi_respond_owned(r, status, content_type, copy, len);
}

int dsysi_respond_owned(dsys_request *r, int status, const char *content_type,
                        char *body, size_t len) {
  if (!r || status < 100 || status > 999 || !body ||
      (content_type && !dsysi_header_ok(content_type))) {
    free(body);
    return DSYS_EINVAL;
  }
  dsysi_lock_acquire(&r->mu);
  int rc = r->user_done || r->state == DSYSI_RQ_ANSWERED ||
                   r->state == DSYSI_RQ_STREAMING
               ? DSYS_ESTATE
               : 0;
  char *ct = NULL;
  if (!rc && content_type &&
      !(ct = dsysi_arena_strndup(&r->ar, content_type, strlen(content_type))))
    rc = DSYS_ENOMEM;
  if (rc) {
    dsysi_lock_release(&r->mu);
    free(body);
    return rc;
  }
  r->state = DSYSI_RQ_ANSWERED;
  r->status = status;
  r->ctype = ct;
  r->rbody = body;
  r->rlen = len;
  r->user_done = 1;
  return finish_user(r, 1);
}

int dsys_respond_json(dsys_request *r, int status, const char *json) {
  if (!json) return DSYS_EINVAL;
  return dsys_respond(r, status, "application/json", json, strlen(json));
}

int dsys_respond_error(dsys_request *r, int status, const char *code,
                       const char *message) {
  size_t len = 0;
  char *s = dsysi_error_json(code, message, &len);
  if (!s) return DSYS_ENOMEM;
  int rc = dsys_respond(r, status, "application/json", s, len);
  free(s);
  return rc;
}

int dsys_respond_stream(dsys_request *r, int status, const char *content_type) {
  if (!r || status < 100 || status > 999 ||
      (content_type && !dsysi_header_ok(content_type)))
    return DSYS_EINVAL;
  dsysi_lock_acquire(&r->mu);
  if (r->user_done || r->state == DSYSI_RQ_ANSWERED ||
      r->state == DSYSI_RQ_STREAMING) {
    dsysi_lock_release(&r->mu);
    return DSYS_ESTATE;
  }
  char *ct = NULL;
  if (content_type &&
      !(ct = dsysi_arena_strndup(&r->ar, content_type, strlen(content_type)))) {
    dsysi_lock_release(&r->mu);
    return DSYS_ENOMEM;
  }
  int closed = r->closed;
  r->state = DSYSI_RQ_STREAMING;
  r->status = status;
  r->ctype = ct;
  dsysi_lock_release(&r->mu);
  if (closed) return DSYS_ECLOSED;
  r->ops->notify(r->lst, r);
  return 0;
}

int dsys_stream_write(dsys_request *r, const void *data, size_t len) {
  if (!r || (!data && len)) return DSYS_EINVAL;
  dsysi_lock_acquire(&r->mu);
  if (r->state != DSYSI_RQ_STREAMING || r->user_done) {
    dsysi_lock_release(&r->mu);
    return DSYS_ESTATE;
  }
  if (r->closed) {
    dsysi_lock_release(&r->mu);
    return DSYS_ECLOSED;
  }
  int rc = dsysi_buf_append(&r->stream, data, len);
  dsysi_lock_release(&r->mu);
  if (rc) return rc;
  r->ops->notify(r->lst, r);
  return 0;
}

int dsys_stream_end(dsys_request *r) {
  if (!r) return DSYS_EINVAL;
  dsysi_lock_acquire(&r->mu);
  if (r->state != DSYSI_RQ_STREAMING || r->user_done) {
    dsysi_lock_release(&r->mu);
    return DSYS_ESTATE;
  }
  r->stream_ended = 1;
  r->user_done = 1;
  return finish_user(r, 1);
}

size_t dsysi_request_stream_take(dsys_request *r, void *buf, size_t max) {
  size_t avail = r->stream.len - r->stream_off;
  size_t n = avail < max ? avail : max;
  if (n) memcpy(buf, r->stream.data + r->stream_off, n);
  r->stream_off += n;
  if (r->stream_off == r->stream.len) r->stream_off = r->stream.len = 0;
  return n;
}
