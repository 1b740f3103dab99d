/* Registration agent: register, heartbeat on the clock, re-register when
 * the registry forgot the instance, deregister on stop. Registry calls run on
 * the agent's thread; the clock's timer only wakes it. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/registration.h>
#include "core/internal.h"

struct dsys_registration {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  dsys_registry *reg;
  dsys_clock *clk;
  dsys_instance *inst;
  int64_t heartbeat_ms, retry_ms;
  pthread_t th;
  uint64_t timer;
  int timers_out, tick, stop;
  int down_logged;
  /* the registry has the instance (registered, and no heartbeat since
   * answered "not found"): a failed call does not change that, so the
   * next try is a heartbeat, not a registration (which every watcher
   * takes for a new process: the gateways start it over, health pending) */
  int known;
  dsys_registration_stats st;
};

static void on_timer(void *ud) {
  dsys_registration *a = ud;
  pthread_mutex_lock(&a->mu);
  a->timer = 0;
  a->tick = 1;
  a->timers_out--;
  pthread_cond_broadcast(&a->cv);
  pthread_mutex_unlock(&a->mu);
}

/* Hold mu. */
static void schedule(dsys_registration *a) {
  if (a->stop) return;
  int64_t ms = a->st.registered ? a->heartbeat_ms : a->retry_ms;
  a->timers_out++;
  if (dsys_timer_add(a->clk, ms * 1000, on_timer, a, &a->timer)) {
    a->timers_out--;
    a->timer = 0;
    a->tick = 1; /* out of memory for a timer: try again right away */
  }
}

/* Record the outcome of a call (hold mu). */
static void outcome(dsys_registration *a, int rc, int was_register) {
  if (!rc) {
    if (was_register) a->st.registrations++;
    else a->st.heartbeats++;
    if (a->down_logged)
      dsysi_log(DSYS_LOG_INFO, "registration", "%s %s", a->inst->id,
                was_register ? "registered again" : "heartbeats accepted again");
    a->down_logged = 0;
    a->known = 1;
    a->st.registered = 1;
    a->st.last_error = 0;
    return;
  }
  a->st.failures++;
  a->st.registered = 0;
  a->st.last_error = rc;
  if (!a->down_logged)
    dsysi_log(DSYS_LOG_WARN, "registration", "%s: registry call failed (%s); retrying every %lld ms",
              a->inst->id, dsys_strerror(rc), (long long)a->retry_ms);
  a->down_logged = 1;
}

static void do_tick(dsys_registration *a, int registered) {
  int rc = DSYS_ENOTFOUND;
  if (registered) {
    rc = dsys_registry_heartbeat(a->reg, a->inst->id);
    if (rc != DSYS_ENOTFOUND) {
      pthread_mutex_lock(&a->mu);
      outcome(a, rc, 0);
      pthread_mutex_unlock(&a->mu);
      return;
    }
    dsysi_log(DSYS_LOG_INFO, "registration", "%s unknown to the registry: registering again",
              a->inst->id);
    pthread_mutex_lock(&a->mu);
    a->known = 0;
    pthread_mutex_unlock(&a->mu);
  }
  rc = dsys_registry_register(a->reg, a->inst);
  pthread_mutex_lock(&a->mu);
  outcome(a, rc, 1);
  pthread_mutex_unlock(&a->mu);
}

static void *agent_thread(void *arg) {
  dsys_registration *a = arg;
  pthread_mutex_lock(&a->mu);
  for (;;) {
    while (!a->tick && !a->stop) pthread_cond_wait(&a->cv, &a->mu);
    if (a->stop) break;
    a->tick = 0;
    int known = a->known;
    pthread_mutex_unlock(&a->mu);
    do_tick(a, known);
    pthread_mutex_lock(&a->mu);
    schedule(a);
  }
  pthread_mutex_unlock(&a->mu);
  return NULL;
}

int dsys_registration_start(dsys_registration **out, dsys_registry *reg,
                            const dsys_instance *inst,
                            const dsys_registration_options *o) {
  if (!out || !reg || !inst || !inst->id || !*inst->id || !inst->type || !*inst->type ||
      !inst->url || !*inst->url)
    return DSYS_EINVAL;
  dsys_registration_options d = {0};
  if (o) memcpy(&d, o, o->size && o->size < sizeof d ? o->size : sizeof d);
  if (d.heartbeat_ms < 0 || d.retry_ms < 0) return DSYS_EINVAL;
  dsys_registration *a = calloc(1, sizeof *a);
  if (!a) return DSYS_ENOMEM;
  int rc = dsys_instances_copy(inst, 1, &a->inst);
  if (rc) {
    free(a);
    return rc;
  }
  a->reg = reg;
  a->clk = d.clock ? d.clock : dsys_clock_real();
  a->heartbeat_ms = d.heartbeat_ms ? d.heartbeat_ms : 10000;
  a->retry_ms = d.retry_ms ? d.retry_ms : 2000;
  if (a->retry_ms > a->heartbeat_ms) a->retry_ms = a->heartbeat_ms;
  pthread_mutex_init(&a->mu, NULL);
  pthread_cond_init(&a->cv, NULL);
  rc = dsys_registry_register(reg, a->inst);
  if (rc == DSYS_EINVAL || rc == DSYS_ENOMEM || (rc && d.require_registered)) goto fail;
  outcome(a, rc, 1);
  rc = pthread_create(&a->th, NULL, agent_thread, a) ? DSYS_ENOMEM : 0;
  if (rc) {
    /* started nothing: undo the registration */
    if (a->st.registered) dsys_registry_deregister(reg, a->inst->id);
    goto fail;
  }
  pthread_mutex_lock(&a->mu);
  schedule(a);
  pthread_cond_broadcast(&a->cv);
  pthread_mutex_unlock(&a->mu);
  *out = a;
  return 0;
fail:
  pthread_mutex_destroy(&a->mu);
  pthread_cond_destroy(&a->cv);
  dsys_free(a->inst);
  free(a);
  return rc;
}

int dsys_registration_stop(dsys_registration *a) {
  if (!a) return 0;
  pthread_mutex_lock(&a->mu);
  a->stop = 1;
  if (a->timer && dsys_timer_cancel(a->clk, a->timer) == 0) a->timers_out--;
  a->timer = 0;
  pthread_cond_broadcast(&a->cv);
  while (a->timers_out > 0) pthread_cond_wait(&a->cv, &a->mu);
  pthread_mutex_unlock(&a->mu);
  pthread_join(a->th, NULL);
  int rc = dsys_registry_deregister(a->reg, a->inst->id);
  if (rc == DSYS_ENOTFOUND) rc = 0;
  pthread_mutex_destroy(&a->mu);
  pthread_cond_destroy(&a->cv);
  dsys_free(a->inst);
  free(a);
  return rc;
}

int dsys_registration_stats_get(dsys_registration *a, dsys_registration_stats *out) {
  if (!a || !out) return DSYS_EINVAL;
  pthread_mutex_lock(&a->mu);
  *out = a->st;
  pthread_mutex_unlock(&a->mu);
  return 0;
}
