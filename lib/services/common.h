/*
 * Internal helpers shared by the service modules (auth, data, compute):
 * health and readiness routes, JSON bodies and answers, slow-work routes on
 * clock timers, a small thread pool, process memory.
 */
#ifndef DSYSI_SERVICES_COMMON_H
#define DSYSI_SERVICES_COMMON_H

#include <pthread.h>
#include <stdint.h>
#include <distsys/clock.h>
#include <distsys/server.h>
#include <json-c/json.h>

/** Readiness probe: 0 when usable, else a DSYS_E code and a message. */
typedef int (*dsysi_ready_fn)(void *ud, const char **what, char *err,
                              size_t errlen);

typedef struct dsysi_pending dsysi_pending;

/** State common to one mounted service. */
typedef struct dsysi_svc {
  dsys_server *srv;
  dsys_clock *clock;
  char *name;        /* "auth-service" */
  char *type;        /* "auth" */
  int64_t start_ms;  /* monotonic */
  dsysi_ready_fn ready;
  void *ready_ud;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  dsysi_pending *pending; /* slow-work timers not yet fired */
  int firing;             /* timer callbacks running */
  struct slow_route *routes; /* owned slow-work routes */
} dsysi_svc;

/**
 * Initialise and mount GET /health, GET /api/<type>/health, GET /ready.
 * @return 0 or a DSYS_E code (nothing to clean up on failure).
 */
int dsysi_svc_init(dsysi_svc *s, dsys_server *srv, dsys_clock *clock,
                   const char *name, const char *type, dsysi_ready_fn ready,
                   void *ready_ud);

/** Cancel pending slow work (answered 503), wait for running timers,
 *  release. */
void dsysi_svc_fini(dsysi_svc *s);

/**
 * Mount GET and POST on each of the given paths: answers after delay_ms
 * {message, service, timestamp} from a timer on the service clock.
 */
int dsysi_svc_slow_routes(dsysi_svc *s, const char *const *paths, size_t n,
                          int64_t delay_ms, const char *message);

/** Respond with a JSON object (consumes one reference of obj). */
int dsysi_respond_obj(dsys_request *req, int status, json_object *obj);

/** Respond {"error": msg, "code": code}. */
int dsysi_respond_err(dsys_request *req, int status, const char *code,
                      const char *msg);

/**
 * Parse the request body as a JSON object. An empty body counts as {}.
 * On failure responds 400 (malformed JSON or not an object) and returns
 * nonzero; on success *out owns one reference.
 */
int dsysi_body_object(dsys_request *req, json_object **out);

/** Resident set size of this process in bytes (/proc/self/statm), or -1. */
int64_t dsysi_rss_bytes(void);

/** Current wall time of the service clock. */
int64_t dsysi_svc_now(dsysi_svc *s);

/* ---- a small fixed thread pool for blocking work ---- */

typedef void (*dsysi_task_fn)(void *arg);
typedef struct dsysi_pool dsysi_pool;

/** Start n threads. @return 0, DSYS_ENOMEM, DSYS_EINVAL. */
int dsysi_pool_new(dsysi_pool **out, unsigned n, const char *name);
/** Queue a task. @return 0, DSYS_ENOMEM, DSYS_ESTOPPED. */
int dsysi_pool_submit(dsysi_pool *p, dsysi_task_fn fn, void *arg);
/** Run every queued task, join the threads, free. NULL-safe. */
void dsysi_pool_free(dsysi_pool *p);

/* ---- a periodic tick on a clock (pollers of the event streams) ---- */

typedef struct dsysi_ticker {
  dsys_clock *clock;
  int64_t period_us;
  void (*fn)(void *ud);
  void *ud;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  uint64_t timer;
  int pending;  /* a timer is scheduled or its callback is running */
  int stopping;
} dsysi_ticker;

/** Run fn(ud) every period_ms on the clock's timers (never two at once).
 *  @return 0, DSYS_ENOMEM, DSYS_EINVAL. */
int dsysi_ticker_start(dsysi_ticker *t, dsys_clock *clock, int64_t period_ms,
                       void (*fn)(void *), void *ud);
/** Stop: after it returns fn no longer runs. Safe on a zeroed ticker. */
void dsysi_ticker_stop(dsysi_ticker *t);

#endif
