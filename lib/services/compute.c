/*
 * Compute service: direct computations with strict validation, and
 * durable jobs on the shared queue ("compute") run by a worker pool in
 * every instance; a periodic retention sweep of finished jobs, by one
 * elected instance when given an election.
 */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <distsys/events.h>
#include <distsys/lock.h>
#include <distsys/metrics.h>
#include <distsys/services.h>
#include "core/internal.h"
#include "core/json.h"
#include "services/reply.h"
#include "services/svc.h"

/* A job that has SSE streams open on this instance: what they last saw. */
typedef struct watch {
  int64_t id;
  atomic_int refs;  /* open streams (dropped without the lock) */
  int state;        /* dsys_job_state last published, 0 = none */
  int32_t progress;
  int32_t attempts;
  char *msg;
  struct watch *next;
} watch;

struct dsys_compute_service {
  dsysi_svc svc;
  char *name_json; /* svc.name as a JSON string (quoted, escaped) */
  dsys_queue *q;
  dsys_worker *worker;
  int32_t max_attempts;
  /* job event streams (GET /api/compute/job/:id/events) */
  dsys_events *ev;
  pthread_mutex_t wmu; /* watches; events are published under it, in order */
  watch *watches;
  dsysi_ticker ticker; /* polls the shared queue for the watched jobs */
  /* submissions (POST /api/compute/job): deferred, stored in batches */
  pthread_mutex_t smu;
  pthread_cond_t scv;
  struct sub *subs, **subs_tail;
  size_t nsubs;
  int sub_stop, sub_started;
  pthread_t sub_thread;
  /* the retention sweep */
  int64_t retention_ms;
  dsysi_ticker sweeper;
  dsys_election *election; /* or NULL: sweep whenever the ticker says */
  dsys_counter *sweeps, *swept;
};

/* A submission waiting for the submitter thread. */
typedef struct sub {
  struct sub *next;
  dsys_request *req;
  char *text; /* the job's payload */
} sub;

/* Most submissions stored in one transaction. */
#define SUB_BATCH 512

#define JOB_TOPIC "jobs"

static const char *const OPS[] = {"add", "subtract", "multiply", "divide",
                                  "power", "factorial", "fibonacci",
                                  "primeCheck", "sumOfSquares", "average",
                                  "matrixMultiply"};
#define NOPS (sizeof OPS / sizeof OPS[0])

/* Largest result cells and multiply-adds of a matrix product. */
#define MAX_CELLS 1000000
#define MAX_FLOPS 100000000.0

/* ---- the computations ---- */

enum { C_OK = 0, C_BADOP = 1, C_BADARG = 2 };

typedef struct cres {
  char msg[160];
} cres;

static int bad(cres *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(cres *e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  return C_BADARG;
}

/* A JSON number as a double; 0 when v is not a finite number. */
static int num(json_object *v, double *out) {
  if (!v || !(json_object_is_type(v, json_type_int) ||
              json_object_is_type(v, json_type_double)))
    return 0;
  double d = json_object_get_double(v);
  if (!isfinite(d)) return 0;
  *out = d;
  return 1;
}

/* A number as JSON: integral values within 2^53 print as integers. */
static json_object *jnum(double d) {
  if (d == floor(d) && fabs(d) <= 9007199254740992.0)
    return json_object_new_int64((int64_t)d);
  return json_object_new_double(d);
}

/* The operands as an array of numbers. */
static int numbers(json_object *ops, double **out, size_t *n, cres *e) {
  if (!json_object_is_type(ops, json_type_array) || !json_object_array_length(ops))
    return bad(e, "Operands must be a non-empty array of numbers");
  size_t len = json_object_array_length(ops);
  double *a = calloc(len, sizeof *a);
  if (!a) return bad(e, "Out of memory");
  for (size_t i = 0; i < len; i++)
    if (!num(json_object_array_get_idx(ops, i), &a[i])) {
      free(a);
      return bad(e, "Operand at index %zu is not a number", i);
    }
  *out = a;
  *n = len;
  return C_OK;
}

/* The single integer operand n >= 0 (exact up to 2^53). */
static int one_int(json_object *ops, const char *what, uint64_t *n, cres *e) {
  double d;
  if (!json_object_is_type(ops, json_type_array) ||
      json_object_array_length(ops) != 1)
    return bad(e, "%s requires exactly 1 operand: [n]", what);
  if (!num(json_object_array_get_idx(ops, 0), &d) || d < 0 || d != floor(d))
    return bad(e, "%s requires a non-negative integer", what);
  if (d > 9007199254740992.0)
    return bad(e, "%s supports integers up to 2^53", what);
  *n = (uint64_t)d;
  return C_OK;
}

static uint64_t mulmod(uint64_t a, uint64_t b, uint64_t m) {
  return (uint64_t)((unsigned __int128)a * b % m);
}
static uint64_t powmod(uint64_t b, uint64_t e, uint64_t m) {
  uint64_t r = 1;
  b %= m;
  for (; e; e >>= 1, b = mulmod(b, b, m))
    if (e & 1) r = mulmod(r, b, m);
  return r;
}
/* Deterministic Miller-Rabin for 64-bit n. */
static int is_prime(uint64_t n) {
  static const uint64_t bases[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
  if (n < 2) return 0;
  for (size_t i = 0; i < 12; i++) {
    if (n == bases[i]) return 1;
    if (n % bases[i] == 0) return 0;
  }
  uint64_t d = n - 1;
  int s = 0;
  while (!(d & 1)) {
    d >>= 1;
    s++;
  }
  for (size_t i = 0; i < 12; i++) {
    uint64_t x = powmod(bases[i], d, n);
    if (x == 1 || x == n - 1) continue;
    int composite = 1;
    for (int r = 1; r < s && composite; r++) {
      x = mulmod(x, x, n);
      if (x == n - 1) composite = 0;
    }
    if (composite) return 0;
  }
  return 1;
}

/* A matrix: non-empty array of equal-length non-empty rows of numbers. */
static int matrix(json_object *m, const char *name, size_t *rows, size_t *cols,
                  double **out, cres *e) {
  size_t r = json_object_is_type(m, json_type_array) ? json_object_array_length(m) : 0;
  json_object *r0 = r ? json_object_array_get_idx(m, 0) : NULL;
  size_t c = json_object_is_type(r0, json_type_array) ? json_object_array_length(r0) : 0;
  if (!r || !c)
    return bad(e, "Matrix %s must be a non-empty array of non-empty rows", name);
  if (r * c > 4 * 1024 * 1024) return bad(e, "Matrix %s is too large", name);
  double *a = out ? malloc(r * c * sizeof *a) : NULL;
  if (out && !a) return bad(e, "Out of memory");
  for (size_t i = 0; i < r; i++) {
    json_object *row = json_object_array_get_idx(m, i);
    if (!json_object_is_type(row, json_type_array) ||
        json_object_array_length(row) != c) {
      free(a);
      return bad(e, "Matrix %s rows must all have %zu numbers", name, c);
    }
    for (size_t j = 0; j < c; j++) {
      double d;
      if (!num(json_object_array_get_idx(row, j), &d)) {
        free(a);
        return bad(e, "Matrix %s element [%zu][%zu] is not a number", name, i, j);
      }
      if (a) a[i * c + j] = d;
    }
  }
  *rows = r;
  *cols = c;
  if (out) *out = a;
  return C_OK;
}

static int matmul(json_object *ops, int dry, json_object **res, cres *e) {
  if (!json_object_is_type(ops, json_type_array) ||
      json_object_array_length(ops) != 2)
    return bad(e, "Matrix multiplication requires exactly 2 operands: [A, B]");
  size_t m, k, k2, n;
  double *a = NULL, *b = NULL;
  int rc = matrix(json_object_array_get_idx(ops, 0), "A", &m, &k, dry ? NULL : &a, e);
  if (rc) return rc;
  rc = matrix(json_object_array_get_idx(ops, 1), "B", &k2, &n, dry ? NULL : &b, e);
  if (rc) {
    free(a);
    return rc;
  }
  if (k != k2) {
    free(a);
    free(b);
    return bad(e, "Matrix dimensions mismatch: %zux%zu cannot multiply %zux%zu",
               m, k, k2, n);
  }
  if ((double)m * (double)n > MAX_CELLS ||
      (double)m * (double)n * (double)k > MAX_FLOPS) {
    free(a);
    free(b);
    return bad(e, "Matrix product too large (at most %d cells and 1e8 "
                  "multiplications)", MAX_CELLS);
  }
  if (dry) return C_OK;
  json_object *out = json_object_new_array();
  for (size_t i = 0; i < m && !rc; i++) {
    json_object *row = json_object_new_array();
    for (size_t j = 0; j < n; j++) {
      double s = 0;
      for (size_t t = 0; t < k; t++) s += a[i * k + t] * b[t * n + j];
      if (!isfinite(s)) {
        rc = bad(e, "Result is not a finite number (overflow)");
        break;
      }
      json_object_array_add(row, jnum(s));
    }
    json_object_array_add(out, row);
  }
  free(a);
  free(b);
  if (rc) json_object_put(out);
  else *res = out;
  return rc;
}

/*
 * Run (or, with dry, only validate) one operation.
 * @return C_OK with *res set (not when dry), C_BADOP, C_BADARG with e->msg.
 */
static int compute(const char *op, json_object *ops, int dry, json_object **res,
                   cres *e) {
  size_t which = NOPS;
  for (size_t i = 0; op && i < NOPS; i++)
    if (!strcmp(op, OPS[i])) which = i;
  if (which == NOPS) return C_BADOP;
  if (which == 10) return matmul(ops, dry, res, e);
  double r = 0;
  if (which == 5 || which == 6 || which == 7) {
    uint64_t n = 0;
    const char *name = which == 5 ? "Factorial" : which == 6 ? "Fibonacci" : "Prime check";
    int rc = one_int(ops, name, &n, e);
    if (rc) return rc;
    if (which == 5) {
      if (n > 170) return bad(e, "Factorial too large (max 170)");
      r = 1;
      for (uint64_t i = 2; i <= n; i++) r *= (double)i;
    } else if (which == 6) {
      if (n > 1476) return bad(e, "Fibonacci result overflows (max n is 1476)");
      double a = 0, b = 1;
      for (uint64_t i = 0; i < n; i++) {
        double t = a + b;
        a = b;
        b = t;
      }
      r = a;
    } else {
      if (!dry) *res = json_object_new_boolean(is_prime(n));
      return C_OK;
    }
  } else {
    double *a = NULL;
    size_t n = 0;
    int rc = numbers(ops, &a, &n, e);
    if (rc) return rc;
    switch (which) {
    case 0: /* add */
    case 9: /* average */
      for (size_t i = 0; i < n; i++) r += a[i];
      if (which == 9) r /= (double)n;
      break;
    case 1: /* subtract */
      r = n == 1 ? -a[0] : a[0];
      for (size_t i = 1; i < n; i++) r -= a[i];
      break;
    case 2: /* multiply */
      r = 1;
      for (size_t i = 0; i < n; i++) r *= a[i];
      break;
    case 3: /* divide */
      if (n < 2) rc = bad(e, "Division requires at least 2 operands");
      r = a[0];
      for (size_t i = 1; !rc && i < n; i++) {
        if (a[i] == 0) rc = bad(e, "Division by zero is not allowed");
        else r /= a[i];
      }
      break;
    case 4: /* power */
      if (n != 2) rc = bad(e, "Power requires exactly 2 operands: [base, exponent]");
      else if (a[1] < 0 || a[1] != floor(a[1]))
        rc = bad(e, "Exponent must be a non-negative integer");
      else r = pow(a[0], a[1]);
      break;
    case 8: /* sumOfSquares */
      for (size_t i = 0; i < n; i++) r += a[i] * a[i];
      break;
    }
    free(a);
    if (rc) return rc;
  }
  if (!isfinite(r)) return bad(e, "Result is not a finite number (overflow)");
  if (!dry) *res = jnum(r);
  return C_OK;
}

static void respond_invalid_op(dsys_request *req) {
  json_object *o = json_object_new_object();
  json_object_object_add(o, "error", json_object_new_string("Invalid operation"));
  json_object_object_add(o, "code", json_object_new_string("DSYS_EINVAL"));
  json_object *s = json_object_new_array();
  for (size_t i = 0; i < NOPS; i++)
    json_object_array_add(s, json_object_new_string(OPS[i]));
  json_object_object_add(o, "supported", s);
  dsysi_respond_obj(req, 400, o);
}

static json_object *given(json_object *o, const char *k) {
  json_object *v;
  return json_object_object_get_ex(o, k, &v) && v ? v : NULL;
}

/* ---- routes ---- */

static void h_direct(dsys_request *req, void *ud) {
  dsys_compute_service *c = ud;
  json_object *b;
  if (dsysi_body_object(req, &b)) return;
  json_object *op = given(b, "operation"), *ops = given(b, "operands");
  if (!op || !ops) {
    dsysi_respond_err(req, 400, "DSYS_EINVAL", "Operation and operands are required");
  } else {
    json_object *res = NULL;
    cres e = {""};
    int rc = compute(json_object_is_type(op, json_type_string)
                         ? json_object_get_string(op) : NULL,
                     ops, 0, &res, &e);
    if (rc == C_BADOP) {
      respond_invalid_op(req);
    } else if (rc) {
      dsysi_respond_err(req, 400, "DSYS_EINVAL", e.msg);
    } else {
      json_object *o = json_object_new_object();
      json_object_object_add(o, "operation", json_object_get(op));
      json_object_object_add(o, "operands", json_object_get(ops));
      json_object_object_add(o, "result", res);
      json_object_object_add(o, "service", json_object_new_string(c->svc.name));
      json_object_object_add(o, "computedAt", dsysi_json_time(dsysi_svc_now(&c->svc)));
      dsysi_respond_obj(req, 200, o);
    }
  }
  json_object_put(b);
}

/* The operation and operands of a job payload {type, data}. */
static void job_parts(json_object *type, json_object *data, const char **op,
                      json_object **ops) {
  const char *t = json_object_is_type(type, json_type_string)
                      ? json_object_get_string(type) : NULL;
  *ops = json_object_is_type(data, json_type_object) ? given(data, "operands") : NULL;
  if (t && !strcmp(t, "computation"))
    t = json_object_is_type(data, json_type_object) ? dsysi_json_str(data, "operation") : NULL;
  *op = t;
}

/* Extension: data.delayMs (0..60000) makes a job take that long before it
 * computes, reporting progress, so that long-running jobs (and workers
 * dying in the middle of one) can be exercised. -1 when invalid. */
static int64_t job_delay_ms(json_object *data) {
  json_object *d = given(data, "delayMs");
  if (!d) return 0;
  if (!json_object_is_type(d, json_type_int)) return -1;
  int64_t v = json_object_get_int64(d);
  return v < 0 || v > 60000 ? -1 : v;
}

/* A job's id as the API gives it: a decimal string ("jobId"). */
static void add_job_id(json_object *o, long long id) {
  char ids[24];
  snprintf(ids, sizeof ids, "%lld", id);
  json_object_object_add(o, "jobId", json_object_new_string(ids));
}

/* ---- submissions: many requests, one transaction ----
 *
 * A server thread that waited for each submission's commit would hold the
 * request's thread for the commit, and the queue could group only as many
 * submissions as there are server threads. Instead the request is deferred
 * and handed to the submitter thread, which stores everything that arrived
 * meanwhile with one dsys_queue_submit_many() (one transaction) and
 * answers each request after the commit. */

/* The JSON texts of the submission path have a fixed shape: written
 * directly, in the key order json-c gave them, instead of building and
 * serializing an object tree per job (PERFORMANCE.md, jobs through HTTP). */
#define JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

static void answer_submit(dsys_request *req, int rc, int64_t id) {
  if (rc) {
    dsysi_respond_storage_err(req, rc, "Could not queue the job");
    return;
  }
  char buf[112];
  int n = snprintf(buf, sizeof buf,
                   "{\"message\":\"Job submitted successfully\",\"jobId\":\"%lld\","
                   "\"status\":\"pending\"}", (long long)id);
  dsys_respond(req, 202, "application/json", buf, (size_t)n);
}

/* A job's payload: {"type":...,"data":...,"traceparent":"..."}. NULL when
 * out of memory. */
static char *job_payload(json_object *type, json_object *data, const char *traceparent) {
  size_t tl = 0, dl = 0;
  const char *ts = json_object_to_json_string_length(type, JSON_FLAGS, &tl);
  const char *ds = json_object_to_json_string_length(data, JSON_FLAGS, &dl);
  if (!ts || !ds) return NULL;
  /* the server builds the traceparent (a valid incoming trace id or a new
   * one): hex digits and dashes; anything else goes through json-c */
  size_t pl = strlen(traceparent);
  json_object *tpo = NULL;
  const char *tp = traceparent;
  if (strspn(traceparent, "0123456789abcdef-") != pl) {
    tpo = json_object_new_string(traceparent);
    tp = tpo ? json_object_to_json_string_length(tpo, JSON_FLAGS, &pl) : NULL;
    if (!tp) {
      json_object_put(tpo);
      return NULL;
    }
  }
  size_t cap = tl + dl + pl + 40;
  char *out = malloc(cap);
  if (out)
    snprintf(out, cap, tpo ? "{\"type\":%s,\"data\":%s,\"traceparent\":%s}"
                           : "{\"type\":%s,\"data\":%s,\"traceparent\":\"%s\"}",
             ts, ds, tp);
  json_object_put(tpo);
  return out;
}

static void *submitter(void *ud) {
  dsys_compute_service *c = ud;
  const char *payloads[SUB_BATCH];
  int64_t ids[SUB_BATCH];
  sub *batch[SUB_BATCH];
  dsys_submit_options so = {.size = sizeof so, .max_attempts = c->max_attempts};
  pthread_mutex_lock(&c->smu);
  for (;;) {
    while (!c->subs && !c->sub_stop) pthread_cond_wait(&c->scv, &c->smu);
    if (!c->subs) break; /* stopping, and everything answered */
    size_t n = 0;
    while (c->subs && n < SUB_BATCH) {
      batch[n] = c->subs;
      payloads[n] = c->subs->text;
      c->subs = c->subs->next;
      n++;
    }
    if (!c->subs) c->subs_tail = &c->subs;
    c->nsubs -= n;
    pthread_mutex_unlock(&c->smu);
    int rc = dsys_queue_submit_many(c->q, DSYS_COMPUTE_QUEUE, payloads, n, &so, ids);
    for (size_t i = 0; i < n; i++) {
      answer_submit(batch[i]->req, rc, rc ? 0 : ids[i]);
      free(batch[i]->text);
      free(batch[i]);
    }
    pthread_mutex_lock(&c->smu);
  }
  pthread_mutex_unlock(&c->smu);
  return NULL;
}

/* Defer req and queue its job for the submitter (takes text). */
static void submit_later(dsys_compute_service *c, dsys_request *req, char *text) {
  sub *sb = malloc(sizeof *sb);
  if (!sb) {
    free(text);
    dsysi_respond_storage_err(req, DSYS_ENOMEM, "Could not queue the job");
    return;
  }
  *sb = (sub){.req = req, .text = text};
  pthread_mutex_lock(&c->smu);
  if (c->sub_stop) {
    pthread_mutex_unlock(&c->smu);
    free(text);
    free(sb);
    dsysi_respond_err(req, 503, "DSYS_ESTOPPED", "Service is stopping");
    return;
  }
  dsys_request_defer(req);
  *c->subs_tail = sb;
  c->subs_tail = &sb->next;
  c->nsubs++;
  pthread_cond_signal(&c->scv);
  pthread_mutex_unlock(&c->smu);
}

/* Answer every queued submission and end the submitter thread. */
static void submitter_stop(dsys_compute_service *c) {
  if (!c->sub_started) return;
  pthread_mutex_lock(&c->smu);
  c->sub_stop = 1;
  pthread_cond_signal(&c->scv);
  pthread_mutex_unlock(&c->smu);
  pthread_join(c->sub_thread, NULL);
  c->sub_started = 0;
}

static void h_submit(dsys_request *req, void *ud) {
  dsys_compute_service *c = ud;
  json_object *b;
  if (dsysi_body_object(req, &b)) return;
  json_object *type = given(b, "type"), *data = given(b, "data"), *ops;
  const char *op;
  cres e = {""};
  if (!type || !data) {
    dsysi_respond_err(req, 400, "DSYS_EINVAL", "Type and data are required");
  } else if (!json_object_is_type(data, json_type_object)) {
    dsysi_respond_err(req, 400, "DSYS_ETYPE", "Data must be an object");
  } else if (job_parts(type, data, &op, &ops), !ops) {
    dsysi_respond_err(req, 400, "DSYS_EINVAL",
                      "Operation and operands are required");
  } else if (job_delay_ms(data) < 0) {
    dsysi_respond_err(req, 400, "DSYS_EINVAL",
                      "delayMs must be an integer from 0 to 60000");
  } else {
    int rc = compute(op, ops, 1, NULL, &e);
    if (rc == C_BADOP) {
      respond_invalid_op(req);
    } else if (rc) {
      dsysi_respond_err(req, 400, "DSYS_EINVAL", e.msg);
    } else {
      /* the submitting request's trace: the worker's log lines carry it */
      char *text = job_payload(type, data, dsys_request_traceparent(req));
      if (!text)
        dsysi_respond_storage_err(req, DSYS_ENOMEM, "Could not queue the job");
      else if (strlen(text) > DSYS_QUEUE_MAX_PAYLOAD) /* before batching: it
                                                 would fail the whole batch */
        dsysi_respond_err(req, 413, "DSYS_ETOOBIG", "Job too large");
      else
        submit_later(c, req, text);
      text = NULL;
    }
  }
  json_object_put(b);
}

static const char *api_state(int st) {
  switch (st) {
  case DSYS_JOB_WAITING: return "waiting";
  case DSYS_JOB_DELAYED: return "delayed";
  case DSYS_JOB_ACTIVE: return "active";
  case DSYS_JOB_COMPLETED: return "completed";
  default: return "failed"; /* failed, canceled */
  }
}

static json_object *parse_or_null(const char *text) {
  json_object *o = NULL;
  if (text) dsysi_json_parse(text, strlen(text), &o);
  return o;
}

/* The trace id (32 hex) of the traceparent stored in a job payload, or
 * NULL. */
static const char *payload_trace_id(json_object *p, char out[33]) {
  const char *tp = json_object_is_type(p, json_type_object) ? dsysi_json_str(p, "traceparent") : NULL;
  if (!tp || strlen(tp) != 55 || tp[2] != '-' || tp[35] != '-') return NULL;
  memcpy(out, tp + 3, 32);
  out[32] = '\0';
  return out;
}

/* The compute job named by the route's :id, or NULL once the request is
 * answered (404 for a malformed id, an unknown job or another queue's job;
 * 500 for a queue error). *idp (if not NULL) receives the id; free the
 * job with dsys_job_free. */
static dsys_job *job_of_request(dsys_compute_service *c, dsys_request *req,
                                long long *idp) {
  const char *ids = dsys_request_param(req, "id");
  char *end;
  long long id = strtoll(ids, &end, 10);
  dsys_job *j = NULL;
  int rc = (*ids && !*end && id > 0 && ids[0] != '+' && ids[0] != '-')
               ? dsys_queue_get(c->q, id, &j) : DSYS_ENOTFOUND;
  if (!rc && strcmp(j->queue, DSYS_COMPUTE_QUEUE)) {
    dsys_job_free(j);
    j = NULL;
    rc = DSYS_ENOTFOUND;
  }
  if (rc == DSYS_ENOTFOUND)
    dsysi_respond_err(req, 404, "DSYS_ENOTFOUND", "Job not found");
  else if (rc)
    dsysi_respond_storage_err(req, rc, "Queue error");
  if (idp) *idp = id;
  return rc ? NULL : j;
}

static void h_job(dsys_request *req, void *ud) {
  dsys_compute_service *c = ud;
  dsys_job *j = job_of_request(c, req, NULL);
  if (j) {
    json_object *p = parse_or_null(j->payload), *v;
    json_object *o = json_object_new_object();
    add_job_id(o, (long long)j->id);
    json_object_object_add(o, "type", json_object_get(
        json_object_object_get_ex(p, "type", &v) ? v : NULL));
    json_object_object_add(o, "status", json_object_new_string(api_state(j->state)));
    json_object_object_add(o, "progress", json_object_new_int(j->progress));
    json_object_object_add(o, "data", json_object_get(
        json_object_object_get_ex(p, "data", &v) ? v : NULL));
    json_object_object_add(o, "result", parse_or_null(j->result));
    json_object_object_add(o, "attempts", json_object_new_int(j->attempts));
    json_object_object_add(o, "worker", j->worker ? json_object_new_string(j->worker) : NULL);
    json_object_object_add(o, "error",
                           j->state == DSYS_JOB_CANCELED ? json_object_new_string("canceled")
                           : j->error ? json_object_new_string(j->error) : NULL);
    char tb[33];
    const char *trace = payload_trace_id(p, tb);
    json_object_object_add(o, "traceId", trace ? json_object_new_string(trace) : NULL);
    json_object_object_add(o, "createdAt", dsysi_json_time(j->created_at));
    json_object_object_add(o, "finishedAt",
                           j->finished_at ? dsysi_json_time(j->finished_at) : NULL);
    json_object_put(p);
    dsysi_respond_obj(req, 200, o);
  }
  dsys_job_free(j);
}

static void h_stats(dsys_request *req, void *ud) {
  dsys_compute_service *c = ud;
  dsys_job_counts n;
  int rc = dsys_queue_counts(c->q, DSYS_COMPUTE_QUEUE, &n);
  if (rc) {
    dsysi_respond_storage_err(req, rc, "Queue error");
    return;
  }
  json_object *q = json_object_new_object();
  json_object_object_add(q, "waiting", json_object_new_int64(n.waiting));
  json_object_object_add(q, "active", json_object_new_int64(n.active));
  json_object_object_add(q, "completed", json_object_new_int64(n.completed));
  json_object_object_add(q, "failed", json_object_new_int64(n.failed + n.canceled));
  json_object_object_add(q, "delayed", json_object_new_int64(n.delayed));
  json_object_object_add(q, "paused", json_object_new_int64(0));
  json_object *o = json_object_new_object();
  json_object_object_add(o, "service", json_object_new_string(c->svc.name));
  json_object_object_add(o, "queue", q);
  dsysi_respond_obj(req, 200, o);
}

/* ---- job event streams ---- */

/* An event about a job: {"jobId": "<id>", ...} (jobId first: the stream
 * filter matches on that prefix). Publish with c->wmu held. */
static void publish_job(dsys_compute_service *c, const char *name, const dsys_job *j,
                        int state, int32_t progress, const char *msg) {
  json_object *o = json_object_new_object();
  add_job_id(o, (long long)j->id);
  json_object_object_add(o, "status", json_object_new_string(api_state(state)));
  json_object_object_add(o, "progress", json_object_new_int(progress));
  if (!strcmp(name, "job-progress")) {
    json_object_object_add(o, "message", msg ? json_object_new_string(msg) : NULL);
  } else {
    int fin = state == DSYS_JOB_COMPLETED || state == DSYS_JOB_FAILED ||
              state == DSYS_JOB_CANCELED;
    json_object_object_add(o, "attempts", json_object_new_int(j->attempts));
    json_object_object_add(o, "result", state == DSYS_JOB_COMPLETED
                                            ? parse_or_null(j->result) : NULL);
    json_object_object_add(o, "error",
                           state == DSYS_JOB_CANCELED ? json_object_new_string("canceled")
                           : j->error && state != DSYS_JOB_COMPLETED
                               ? json_object_new_string(j->error) : NULL);
    json_object_object_add(o, "final", json_object_new_boolean(fin));
  }
  json_object_object_add(o, "timestamp", dsysi_json_time(dsysi_svc_now(&c->svc)));
  size_t len = 0;
  char *text = dsysi_json_dump(o, &len);
  json_object_put(o);
  if (text) dsys_events_publish(c->ev, JOB_TOPIC, name, text, len, NULL);
  free(text);
}

static int is_final(int st) {
  return st == DSYS_JOB_COMPLETED || st == DSYS_JOB_FAILED || st == DSYS_JOB_CANCELED;
}

/* Publish what changed since the watchers last saw the job (c->wmu held).
 * Progress never goes backwards within one attempt. */
static void observe(dsys_compute_service *c, watch *w, const dsys_job *j) {
  int st_changed = w->state != j->state &&
                   strcmp(api_state(w->state ? w->state : -1), api_state(j->state)) != 0;
  if (!w->state) st_changed = 1;
  const char *m = j->progress_msg ? j->progress_msg : "";
  int pr_changed = (j->attempts != w->attempts || j->progress > w->progress ||
                    (j->progress == w->progress && strcmp(m, w->msg ? w->msg : ""))) &&
                   j->progress > 0;
  int fin = is_final(j->state);
  if (st_changed && !fin) publish_job(c, "job-state", j, j->state, j->progress, NULL);
  if (pr_changed) {
    publish_job(c, "job-progress", j, j->state, j->progress, j->progress_msg);
    w->progress = j->progress;
    w->attempts = j->attempts;
    char *nm = strdup(m);
    if (nm) {
      free(w->msg);
      w->msg = nm;
    }
  }
  if (st_changed && fin) publish_job(c, "job-state", j, j->state, j->progress, NULL);
  w->state = j->state;
}

/* The poller: read every watched job from the shared queue (another
 * instance's worker may run it) and publish the changes; forget jobs
 * nobody streams any more. */
static void poll_jobs(void *ud) {
  dsys_compute_service *c = ud;
  pthread_mutex_lock(&c->wmu);
  for (watch **pp = &c->watches; *pp;) {
    watch *w = *pp;
    if (atomic_load(&w->refs) == 0) {
      *pp = w->next;
      free(w->msg);
      free(w);
      continue;
    }
    dsys_job *j = NULL;
    if (!dsys_queue_get(c->q, w->id, &j)) observe(c, w, j);
    dsys_job_free(j);
    pp = &w->next;
  }
  pthread_mutex_unlock(&c->wmu);
}

/* Progress reported by this instance's worker: stored (when durable),
 * then published at once when someone streams the job on this instance. */
static void report_progress(dsys_compute_service *c, dsys_job_ctx *ctx, const dsys_job *job,
                            int32_t pct, const char *msg, int durable) {
  if (durable && dsys_job_ctx_progress(ctx, pct, msg)) return;
  pthread_mutex_lock(&c->wmu);
  for (watch *w = c->watches; w; w = w->next)
    if (w->id == job->id && atomic_load(&w->refs) > 0) {
      dsys_job tmp = *job;
      tmp.state = DSYS_JOB_ACTIVE;
      tmp.progress = pct;
      tmp.progress_msg = msg;
      observe(c, w, &tmp);
      break;
    }
  pthread_mutex_unlock(&c->wmu);
}

typedef struct jstream {
  dsys_compute_service *c;
  watch *w;
  int64_t id;
  char prefix[48]; /* {"jobId":"<id>" */
} jstream;

static int job_filter(const dsys_event *e, void *ud) {
  jstream *js = ud;
  size_t n = strlen(js->prefix);
  if (e->len <= n || memcmp(e->data, js->prefix, n) || e->data[n] != ',') return DSYS_SSE_SKIP;
  if (strcmp(e->name, "job-state")) return DSYS_SSE_WRITE;
  json_object *o = NULL, *f = NULL;
  int fin = !dsysi_json_parse(e->data, e->len, &o) && json_object_object_get_ex(o, "final", &f) &&
            json_object_get_boolean(f);
  json_object_put(o);
  return fin ? DSYS_SSE_WRITE_END : DSYS_SSE_WRITE;
}

static void job_filter_free(void *ud) {
  jstream *js = ud;
  atomic_fetch_sub(&js->w->refs, 1); /* the poller frees the watch */
  free(js);
}

/* The snapshot: the job's current state (and progress), read after the
 * subscription so nothing is missed; a finished job ends the stream. */
static void job_open(dsys_sse_stream *st, dsys_request *req, void *ud) {
  jstream *js = ud;
  dsys_compute_service *c = js->c;
  dsys_job *j = NULL;
  if (dsys_queue_get(c->q, js->id, &j)) {
    dsys_sse_end(st);
    return;
  }
  /* state then progress; for a finished job progress then the final state */
  int fin = is_final(j->state);
  for (int step = 0; step < 2; step++) {
    int k = fin ? 1 - step : step; /* 0: job-state, 1: job-progress */
    const char *name = k == 0 ? "job-state" : "job-progress";
    if (k == 1 && j->progress <= 0) continue;
    json_object *o = json_object_new_object();
    add_job_id(o, (long long)j->id);
    json_object_object_add(o, "status", json_object_new_string(api_state(j->state)));
    json_object_object_add(o, "progress", json_object_new_int(j->progress));
    if (k == 1) {
      json_object_object_add(o, "message",
                             j->progress_msg ? json_object_new_string(j->progress_msg) : NULL);
    } else {
      json_object_object_add(o, "attempts", json_object_new_int(j->attempts));
      json_object_object_add(o, "result", j->state == DSYS_JOB_COMPLETED
                                              ? parse_or_null(j->result) : NULL);
      json_object_object_add(o, "error",
                             j->state == DSYS_JOB_CANCELED ? json_object_new_string("canceled")
                             : j->error && j->state != DSYS_JOB_COMPLETED
                                 ? json_object_new_string(j->error) : NULL);
      json_object_object_add(o, "final", json_object_new_boolean(is_final(j->state)));
      json_object_object_add(o, "snapshot", json_object_new_boolean(1));
    }
    json_object_object_add(o, "timestamp", dsysi_json_time(dsysi_svc_now(&c->svc)));
    size_t len = 0;
    char *text = dsysi_json_dump(o, &len);
    json_object_put(o);
    if (text) dsys_sse_send(st, 0, name, text, len);
    free(text);
  }
  if (fin) dsys_sse_end(st);
  dsys_job_free(j);
}

static void h_job_events(dsys_request *req, void *ud) {
  dsys_compute_service *c = ud;
  long long id;
  dsys_job *j = job_of_request(c, req, &id);
  if (!j) return;
  jstream *js = calloc(1, sizeof *js);
  watch *w = NULL;
  pthread_mutex_lock(&c->wmu);
  for (w = c->watches; w && w->id != id; w = w->next) ;
  if (!w && js && (w = calloc(1, sizeof *w))) {
    /* what a new watcher has seen: the snapshot of the stream */
    w->id = id;
    w->state = j->state;
    w->progress = j->progress;
    w->attempts = j->attempts;
    w->msg = j->progress_msg ? strdup(j->progress_msg) : NULL;
    w->next = c->watches;
    c->watches = w;
  }
  if (w && js) atomic_fetch_add(&w->refs, 1);
  pthread_mutex_unlock(&c->wmu);
  dsys_job_free(j);
  if (!js || !w) {
    free(js);
    dsysi_respond_err(req, 500, "DSYS_ENOMEM", "Out of memory");
    return;
  }
  js->c = c;
  js->w = w;
  js->id = id;
  snprintf(js->prefix, sizeof js->prefix, "{\"jobId\":\"%lld\"", id);
  static const char *const topics[] = {JOB_TOPIC};
  dsys_sse_options so = {.size = sizeof so, .on_open = job_open, .ud = js,
                         .filter = job_filter, .filter_ud = js,
                         .filter_free = job_filter_free};
  dsys_events_serve_sse(c->ev, req, topics, 1, &so);
}

/* ---- the worker ---- */

static int run_job_inner(dsys_compute_service *c, dsys_job_ctx *ctx, const dsys_job *job,
                         json_object *p) {
  const char *op = NULL;
  json_object *ops = NULL, *res = NULL;
  if (json_object_is_type(p, json_type_object))
    job_parts(given(p, "type"), given(p, "data"), &op, &ops);
  cres e = {""};
  int64_t delay = json_object_is_type(p, json_type_object) ? job_delay_ms(given(p, "data")) : 0;
  for (int64_t waited = 0; delay > 0 && waited < delay; waited += 100) {
    if (dsys_job_ctx_stopping(ctx))
      return DSYS_ECANCELED; /* released back to the queue */
    report_progress(c, ctx, job, (int)(waited * 90 / delay), "waiting", 1);
    dsys_clock_sleep_us(c->svc.clock, 100000);
  }
  /* A job without delayMs is computed within microseconds: storing its 90
   * and 100 would cost two transactions per job for states that the
   * completion (progress 100) replaces at once, before a stream polling
   * from another instance could see them. They are published to this
   * instance's streams only; delayed jobs store every step. */
  int durable = delay > 0;
  report_progress(c, ctx, job, 90, "computing", durable);
  int rc = ops ? compute(op, ops, 0, &res, &e) : C_BADARG;
  if (rc) {
    dsys_job_ctx_set_error(ctx, rc == C_BADOP ? "Invalid operation"
                                : *e.msg ? e.msg : "Operation and operands are required");
    return DSYS_EINVAL;
  }
  /* {"operation","result","service","computedAt"}: op is one of OPS (plain
   * words), the name was made JSON at mount, the time is ISO 8601 */
  size_t rl = 0;
  const char *rs = json_object_to_json_string_length(res, JSON_FLAGS, &rl);
  char at[32];
  dsys_time_iso8601(dsysi_svc_now(&c->svc), at, sizeof at);
  size_t cap = rl + strlen(op) + strlen(c->name_json) + strlen(at) + 64;
  char *text = rs ? malloc(cap) : NULL;
  if (text)
    snprintf(text, cap, "{\"operation\":\"%s\",\"result\":%s,\"service\":%s,"
                        "\"computedAt\":\"%s\"}", op, rs, c->name_json, at);
  json_object_put(res);
  if (!text) return DSYS_ENOMEM;
  report_progress(c, ctx, job, 100, "done", durable);
  rc = dsys_job_ctx_set_result(ctx, text);
  free(text);
  return rc;
}

/* Log lines of a job carry its trace id (JSON: fields jobId, traceId). */
static void job_log(dsys_compute_service *c, int level, const dsys_job *job, const char *trace,
                    const char *what) {
  if (!dsysi_log_enabled(level)) return;
  char msg[96];
  snprintf(msg, sizeof msg, "job %lld %s", (long long)job->id, what);
  json_object *f = json_object_new_object();
  add_job_id(f, (long long)job->id);
  json_object_object_add(f, "traceId", trace ? json_object_new_string(trace) : NULL);
  json_object_object_add(f, "attempt", json_object_new_int(job->attempts));
  dsysi_log_fields(level, c->svc.name, msg, f);
  json_object_put(f);
}

static int run_job(dsys_job_ctx *ctx, const dsys_job *job, void *ud) {
  dsys_compute_service *c = ud;
  json_object *p = parse_or_null(job->payload);
  char tb[33];
  const char *trace = payload_trace_id(p, tb);
  job_log(c, DSYS_LOG_INFO, job, trace, "started");
  int rc = run_job_inner(c, ctx, job, p);
  job_log(c, rc ? DSYS_LOG_WARN : DSYS_LOG_INFO, job, trace,
          !rc ? "completed" : rc == DSYS_ECANCELED ? "released" : "failed");
  json_object_put(p);
  return rc;
}

/* End the streams, stop the poller, free the watches and the hub. */
static void compute_free_streams(dsys_compute_service *c) {
  dsys_events_close_streams(c->ev);
  dsysi_ticker_stop(&c->ticker);
  dsys_events_free(c->ev); /* every stream is gone: no watch is referenced */
  while (c->watches) {
    watch *w = c->watches;
    c->watches = w->next;
    free(w->msg);
    free(w);
  }
  pthread_mutex_destroy(&c->wmu);
  pthread_mutex_destroy(&c->smu);
  pthread_cond_destroy(&c->scv);
}

/* ---- the retention sweep ---- */

/* One sweep, by the leader only when there is an election (the others
 * skip it, so one instance does the deletes and the logging). */
static void sweep(void *ud) {
  dsys_compute_service *c = ud;
  int64_t token = 0;
  if (c->election && !dsys_election_is_leader(c->election, &token)) return;
  int64_t removed = 0;
  int rc = dsys_queue_purge(c->q, c->retention_ms, &removed);
  if (rc) {
    dsysi_log(DSYS_LOG_WARN, "compute", "retention sweep failed: %s", dsys_strerror(rc));
    return;
  }
  if (c->sweeps) dsys_counter_inc(c->sweeps);
  if (c->swept) dsys_counter_add(c->swept, (uint64_t)removed);
  dsysi_log(removed ? DSYS_LOG_INFO : DSYS_LOG_DEBUG, "compute",
            "retention sweep: %lld jobs finished over %lld ms ago deleted%s", (long long)removed,
            (long long)c->retention_ms, c->election ? " (as the elected sweeper)" : "");
}

/* The options' sweep fields (appended: read only when the caller's struct
 * has them). */
static int start_sweeper(dsys_compute_service *c, const dsys_compute_options *opts) {
  size_t osz = opts->size ? opts->size : sizeof *opts;
  if (osz < offsetof(dsys_compute_options, metrics) + sizeof(void *)) return 0;
  if (opts->retention_ms < 0 || opts->sweep_interval_ms < 0) return DSYS_EINVAL;
  if (!opts->retention_ms) return 0;
  c->retention_ms = opts->retention_ms;
  c->election = opts->election;
  int64_t every = opts->sweep_interval_ms;
  if (!every) {
    every = opts->retention_ms / 10;
    every = every < 1000 ? 1000 : every > 3600000 ? 3600000 : every;
  }
  if (opts->metrics) {
    int rc = dsys_metrics_counter(opts->metrics, "dsys_queue_sweeps_total",
                                  "Retention sweeps of the job queue run by this instance",
                                  NULL, NULL, 0, &c->sweeps);
    if (!rc)
      rc = dsys_metrics_counter(opts->metrics, "dsys_queue_swept_jobs_total",
                                "Finished jobs deleted by this instance's retention sweeps",
                                NULL, NULL, 0, &c->swept);
    if (rc) return rc;
  }
  return dsysi_ticker_start_thread(&c->sweeper, c->svc.clock, every, sweep, c);
}

static int compute_ready(void *ud, const char **what, char *err, size_t errlen) {
  dsys_compute_service *c = ud;
  dsys_job_counts n;
  *what = "queue";
  int rc = dsys_queue_counts(c->q, DSYS_COMPUTE_QUEUE, &n);
  if (rc) snprintf(err, errlen, "%s", dsys_strerror(rc));
  return rc;
}

int dsys_service_compute_mount(dsys_server *srv, const dsys_compute_options *opts,
                               dsys_compute_service **out) {
  if (!srv || !opts || !out || !opts->queue) return DSYS_EINVAL;
  dsys_compute_service *c = calloc(1, sizeof *c);
  if (!c) return DSYS_ENOMEM;
  c->q = opts->queue;
  c->max_attempts = opts->max_attempts > 0 ? opts->max_attempts : 3;
  int rc = dsysi_svc_init(&c->svc, srv, opts->clock,
                          opts->name ? opts->name : "compute-service",
                          "compute", compute_ready, c);
  if (rc) {
    free(c);
    return rc;
  }
  json_object *nm = json_object_new_string(c->svc.name);
  const char *nj = nm ? json_object_to_json_string_ext(nm, JSON_FLAGS) : NULL;
  c->name_json = nj ? strdup(nj) : NULL;
  json_object_put(nm);
  if (!c->name_json) {
    dsysi_svc_fini(&c->svc);
    free(c);
    return DSYS_ENOMEM;
  }
  pthread_mutex_init(&c->wmu, NULL);
  pthread_mutex_init(&c->smu, NULL);
  pthread_cond_init(&c->scv, NULL);
  c->subs_tail = &c->subs;
  dsys_events_options eo = {.size = sizeof eo, .clock = c->svc.clock, .history = 256};
  rc = dsys_events_new(&c->ev, &eo);
  if (!rc) {
    size_t osz = opts->size ? opts->size : sizeof *opts;
    int64_t poll = osz >= offsetof(dsys_compute_options, events_poll_ms) + sizeof(int64_t)
                       ? opts->events_poll_ms : 0;
    rc = dsysi_ticker_start_thread(&c->ticker, c->svc.clock, poll > 0 ? poll : 200, poll_jobs, c);
  }
  static const char *const slow[] = {"/compute-worker",
                                     "/api/compute/compute-worker"};
  if (!rc) /* a failed event hub or poller is not overwritten */
    rc = dsysi_svc_slow_routes(&c->svc, slow, 2,
                               opts->work_delay_ms > 0 ? opts->work_delay_ms : 550,
                               "Compute worker completed");
  const struct {
    const char *m, *p;
    dsys_handler_fn fn;
  } routes[] = {
      {"POST", "/api/compute/direct", h_direct},
      {"POST", "/api/compute/job", h_submit},
      {"GET", "/api/compute/job/:id", h_job},
      {"GET", "/api/compute/job/:id/events", h_job_events},
      {"GET", "/api/compute/stats", h_stats},
  };
  if (!rc) {
    rc = pthread_create(&c->sub_thread, NULL, submitter, c) ? DSYS_ENOMEM : 0;
    c->sub_started = !rc;
  }
  for (size_t i = 0; !rc && i < sizeof routes / sizeof routes[0]; i++)
    rc = dsys_server_route(srv, routes[i].m, routes[i].p, routes[i].fn, c);
  if (!rc) rc = start_sweeper(c, opts);
  if (!rc && !opts->no_workers) {
    const char *queues[] = {DSYS_COMPUTE_QUEUE};
    dsys_worker_options wo = {.size = sizeof wo, .queues = queues, .nqueues = 1,
                              .threads = opts->workers ? opts->workers : 2,
                              .poll_ms = opts->worker_poll_ms,
                              .lease_ms = opts->lease_ms,
                              /* the instance name shows in GET /job/:id */
                              .worker_id = c->svc.name,
                              .handler = run_job, .ud = c};
    rc = dsys_worker_start(&c->worker, c->q, &wo);
  }
  if (rc) {
    dsysi_ticker_stop(&c->sweeper);
    dsys_worker_stop(c->worker, DSYS_WORKER_STOP_FINISH);
    submitter_stop(c);
    compute_free_streams(c);
    dsysi_svc_fini(&c->svc);
    free(c->name_json);
    free(c);
    return rc;
  }
  *out = c;
  return 0;
}

void dsys_service_compute_free(dsys_compute_service *c) {
  if (!c) return;
  dsysi_ticker_stop(&c->sweeper);
  submitter_stop(c); /* answers what is queued */
  dsys_worker_stop(c->worker, DSYS_WORKER_STOP_FINISH);
  compute_free_streams(c);
  dsysi_svc_fini(&c->svc);
  free(c->name_json);
  free(c);
}
