/*
 * What every mounted service module (auth, data, compute) has (svc.c):
 * health and readiness routes, slow-work routes on clock timers.
 * Thread-safety: init and fini from one thread; the routes run on server
 * threads and the timers on the clock's.
 */
#ifndef DSYSI_SERVICES_SVC_H
#define DSYSI_SERVICES_SVC_H

#include <pthread.h>
#include <stdint.h>
#include <distsys/clock.h>
#include <distsys/server.h>

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

/** Current wall time of the service clock. */
int64_t dsysi_svc_now(dsysi_svc *s);

#endif
