/*
 * The reference deployment in simulation: registry, 3 auth, 3 data,
 * 3 compute, gateway and fault detector, each a node, on inproc:// and
 * in-memory state; client nodes issue the contract's requests through the
 * gateway (sign-ups, data CRUD and increments, jobs) while the fault
 * driver cuts links, pauses nodes and skews clocks. The invariants
 * (docs/reference/simulation.md) are checked as the run goes and at its
 * end; a broken one ends the run with the seed and the trace (sim_fail).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <malloc.h>
#include <json-c/json.h>
#include "world.h"

#define NCLIENTS 3
#define NKEYS 6
#define MAXJOBS 256
#define GW "inproc://gateway"
#define CALL_MS 4000

typedef struct key {
  char name[32];
  int created;      /* a create was acknowledged */
  int create_doubt; /* a create timed out or failed */
  char acked[48];   /* last acknowledged value */
  char **doubt;     /* values of writes with no answer: they may land */
  int ndoubt;
} key;

typedef struct job {
  long long id;
  long long expect;
  int final;
  char status[16];
} job;

typedef struct client {
  int idx, node;
  dsys_client *c;
  key keys[NKEYS];
  key cnt;                 /* the counter: its value is a number */
  long long cnt_acked, cnt_doubt;
  job jobs[MAXJOBS];
  int njobs;
  int signups;
  sim_result res;
  const sim_config *cfg;
  long seq;
} client;

static int plant_retry_post, plant_stale_cache;
static dsys_registry *gwreg_for_debug;

int scen_plant_known(const char *name) {
  return !strcmp(name, "retry-post") || !strcmp(name, "stale-cache");
}

/* ---- the model of one client's keys ---- */

static void doubt_add(key *k, const char *v) {
  k->doubt = realloc(k->doubt, (k->ndoubt + 1) * sizeof *k->doubt);
  k->doubt[k->ndoubt++] = strdup(v);
}

static int value_possible(const key *k, const char *v) {
  if (k->created && !strcmp(k->acked, v)) return 1;
  for (int i = 0; i < k->ndoubt; i++)
    if (!strcmp(k->doubt[i], v)) return 1;
  return 0;
}

static int transient(int status) {
  /* No answer, or the gateway's 502/503/504: the write may or may not
   * have happened. */
  return status < 0 || status == 502 || status == 503 || status == 504 || status == 500;
}

static void check_read(client *cl, key *k, const sim_answer *a, const char *when) {
  cl->res.checks++;
  if (a->status == 200) {
    const char *v = sim_json_str(a, "data", "value", NULL);
    if (!v) sim_fail("%s: GET %s answered 200 without a string value: %.200s", when, k->name, a->body);
    if (!value_possible(k, v))
      sim_fail("%s: GET %s read \"%s\", which is neither the last acknowledged value \"%s\" nor "
               "a write in doubt (%d of them): an acknowledged write was lost or a stale value "
               "was served",
               when, k->name, v, k->created ? k->acked : "(none)", k->ndoubt);
  } else if (a->status == 404) {
    if (k->created)
      sim_fail("%s: GET %s answered 404 after its creation was acknowledged (write lost)", when,
               k->name);
  } else if (!transient(a->status)) {
    sim_fail("%s: GET %s answered %d: %.200s", when, k->name, a->status, a->body ? a->body : "");
  }
}

static void data_op(client *cl) {
  key *k = &cl->keys[sim_rand_below(NKEYS)];
  char body[256], path[96], val[48];
  snprintf(val, sizeof val, "v%d-%ld", cl->idx, ++cl->seq);
  if (!k->created && !k->create_doubt) {
    snprintf(body, sizeof body, "{\"key\":\"%s\",\"value\":\"%s\"}", k->name, val);
    sim_answer a = sim_call(cl->c, &cl->res, "POST", GW, "/api/data", body, CALL_MS);
    sim_trace("%s create %s -> %d", sim_node_name(cl->node), k->name, a.status);
    if (a.status == 201) {
      k->created = 1;
      snprintf(k->acked, sizeof k->acked, "%s", val);
    } else if (transient(a.status)) {
      k->create_doubt = 1;
      doubt_add(k, val);
    } else {
      sim_fail("POST /api/data %s answered %d: %.200s", k->name, a.status, a.body);
    }
    sim_answer_free(&a);
    return;
  }
  snprintf(path, sizeof path, "/api/data/%s", k->name);
  if (sim_chance(0.5)) {
    snprintf(body, sizeof body, "{\"value\":\"%s\"}", val);
    sim_answer a = sim_call(cl->c, &cl->res, "PUT", GW, path, body, CALL_MS);
    sim_trace("%s put %s=%s -> %d", sim_node_name(cl->node), k->name, val, a.status);
    if (a.status == 200) {
      /* The gateway does not resend a plain PUT after a per-try timeout:
       * the timed-out attempt could land later, over newer acknowledged
       * writes (it did, seeds 37 and 212, before dsys_retry_decide's
       * DSYS_RETRY_R_MAY_LAND_LATE). So an acknowledged value is the
       * key's value until the next acknowledged write. */
      k->created = 1;
      snprintf(k->acked, sizeof k->acked, "%s", val);
    } else if (transient(a.status)) {
      doubt_add(k, val);
    } else if (a.status == 404 && !k->created) {
      /* its creation is in doubt and did not land (yet) */
    } else {
      sim_fail("PUT %s answered %d: %.200s", path, a.status, a.body);
    }
    sim_answer_free(&a);
  } else {
    sim_answer a = sim_call(cl->c, &cl->res, "GET", GW, path, NULL, CALL_MS);
    sim_trace("%s get %s -> %d %s", sim_node_name(cl->node), k->name, a.status,
              a.status == 200 ? sim_json_str(&a, "data", "value", NULL) : "");
    check_read(cl, k, &a, "during the run");
    sim_answer_free(&a);
  }
}

/* The counter: acknowledged increments A and unanswered ones D; any read
 * must see a value in [A, A + D]. */
static void check_count(client *cl, long long v, long long extra, const char *what) {
  cl->res.checks++;
  long long lo = cl->cnt_acked + extra, hi = cl->cnt_acked + extra + cl->cnt_doubt;
  if (v < lo || v > hi)
    sim_fail("%s: counter %s is %lld, outside [%lld, %lld] (%lld increments acknowledged, %lld "
             "unanswered): %s",
             what, cl->cnt.name, v, lo, hi, cl->cnt_acked + extra, cl->cnt_doubt,
             v > hi ? "an increment was applied twice" : "an acknowledged increment was lost");
}

static void counter_op(client *cl) {
  key *k = &cl->cnt;
  char path[96];
  if (!k->created) {
    char body[128];
    snprintf(body, sizeof body, "{\"key\":\"%s\",\"value\":0}", k->name);
    sim_answer a = sim_call(cl->c, &cl->res, "POST", GW, "/api/data", body, CALL_MS);
    sim_trace("%s create %s -> %d", sim_node_name(cl->node), k->name, a.status);
    if (a.status == 201 || (a.status == 409 && k->create_doubt)) k->created = 1;
    else if (transient(a.status)) k->create_doubt = 1;
    else sim_fail("POST /api/data %s answered %d: %.200s", k->name, a.status, a.body);
    sim_answer_free(&a);
    return;
  }
  if (sim_chance(0.3)) {
    snprintf(path, sizeof path, "/api/data/%s", k->name);
    sim_answer a = sim_call(cl->c, &cl->res, "GET", GW, path, NULL, CALL_MS);
    long long v;
    if (a.status == 200 && sim_json_int(&a, &v, "data", "value", NULL))
      check_count(cl, v, 0, "read");
    else if (!transient(a.status))
      sim_fail("GET %s answered %d: %.200s", path, a.status, a.body);
    sim_answer_free(&a);
    return;
  }
  snprintf(path, sizeof path, "/api/data/%s/increment", k->name);
  /* PLANTED BUG (test only, --plant retry-post): retry the non-idempotent
   * increment after an unanswered attempt, and count it once. */
  int tries = plant_retry_post ? 3 : 1;
  for (int t = 0; t < tries; t++) {
    sim_answer a = sim_call(cl->c, &cl->res, "POST", GW, path, "{\"by\":1}", CALL_MS);
    sim_trace("%s increment %s -> %d", sim_node_name(cl->node), k->name, a.status);
    long long v;
    if (a.status == 200 && sim_json_int(&a, &v, "data", "value", NULL)) {
      check_count(cl, v, 1, "increment answer");
      cl->cnt_acked++;
      sim_answer_free(&a);
      return;
    }
    if (!transient(a.status)) sim_fail("POST %s answered %d: %.200s", path, a.status, a.body);
    sim_answer_free(&a);
  }
  if (!plant_retry_post) cl->cnt_doubt++;
}

static void signup(client *cl) {
  char body[256];
  int n = ++cl->signups;
  snprintf(body, sizeof body,
           "{\"username\":\"user%d-%d\",\"email\":\"user%d-%d@example.org\",\"password\":\"pw-%d-%d\"}",
           cl->idx, n, cl->idx, n, cl->idx, n);
  sim_answer a = sim_call(cl->c, &cl->res, "POST", GW, "/api/auth/signup", body, CALL_MS);
  sim_trace("%s signup user%d-%d -> %d", sim_node_name(cl->node), cl->idx, n, a.status);
  cl->res.checks++;
  if (a.status == 201) {
    const char *tok = sim_json_str(&a, "token", NULL);
    if (!tok || !*tok) sim_fail("signup answered 201 without a token: %.200s", a.body);
  } else if (!transient(a.status)) {
    sim_fail("signup of a new user answered %d: %.200s", a.status, a.body);
  }
  sim_answer_free(&a);
}

static void submit_job(client *cl) {
  if (cl->njobs == MAXJOBS) return;
  long long x = (long long)sim_rand_below(1000), y = (long long)sim_rand_below(1000);
  char body[160];
  snprintf(body, sizeof body, "{\"type\":\"add\",\"data\":{\"operands\":[%lld,%lld]}}", x, y);
  sim_answer a = sim_call(cl->c, &cl->res, "POST", GW, "/api/compute/job", body, CALL_MS);
  const char *jid = a.status == 202 ? sim_json_str(&a, "jobId", NULL) : NULL;
  long long id = jid ? atoll(jid) : 0;
  if (id > 0) {
    job *j = &cl->jobs[cl->njobs++];
    j->id = id;
    j->expect = x + y;
    sim_trace("%s job %lld submitted (%lld+%lld)", sim_node_name(cl->node), id, x, y);
  } else if (a.status == 202) {
    sim_fail("job submission answered 202 without a jobId: %.200s", a.body);
  } else if (!transient(a.status)) {
    sim_fail("job submission answered %d: %.200s", a.status, a.body);
  }
  sim_answer_free(&a);
}

/* Poll a job; returns 1 when it is final. A job acknowledged (202) must
 * never be unknown, and once completed its result never changes. */
static int poll_job(client *cl, job *j) {
  char path[96];
  snprintf(path, sizeof path, "/api/compute/job/%lld", j->id);
  sim_answer a = sim_call(cl->c, &cl->res, "GET", GW, path, NULL, CALL_MS);
  cl->res.checks++;
  int fin = j->final;
  if (a.status == 200) {
    const char *st = sim_json_str(&a, "status", NULL);
    if (!st) sim_fail("GET %s: no status: %.200s", path, a.body);
    if (j->final && strcmp(st, j->status))
      sim_fail("job %lld was %s and is now %s", j->id, j->status, st);
    if (!strcmp(st, "completed")) {
      long long r;
      if (!sim_json_int(&a, &r, "result", "result", NULL) || r != j->expect)
        sim_fail("job %lld completed with a wrong result (want %lld): %.300s", j->id, j->expect,
                 a.body);
    }
    if (!strcmp(st, "completed") || !strcmp(st, "failed")) {
      if (!j->final) sim_trace("%s job %lld %s", sim_node_name(cl->node), j->id, st);
      fin = 1;
      snprintf(j->status, sizeof j->status, "%s", st);
    }
  } else if (a.status == 404) {
    sim_fail("job %lld was acknowledged (202) and is now unknown (404): job lost", j->id);
  } else if (!transient(a.status)) {
    sim_fail("GET %s answered %d: %.200s", path, a.status, a.body);
  }
  j->final = fin;
  sim_answer_free(&a);
  return fin;
}

static void *client_main(void *arg) {
  client *cl = arg;
  for (long i = 0; i < cl->cfg->steps; i++) {
    usleep((useconds_t)sim_rand_below(200000));
    unsigned r = (unsigned)sim_rand_below(100);
    if (r < 4) signup(cl);
    else if (r < 45) data_op(cl);
    else if (r < 65) counter_op(cl);
    else if (r < 82) submit_job(cl);
    else if (cl->njobs) poll_job(cl, &cl->jobs[sim_rand_below(cl->njobs)]);
  }
  return NULL;
}

/* After the faults: every key reads back, every acknowledged job ends. */
static void *client_verify(void *arg) {
  client *cl = arg;
  for (int i = 0; i <= NKEYS; i++) {
    key *k = i < NKEYS ? &cl->keys[i] : &cl->cnt;
    if (!k->created && !k->create_doubt) continue;
    char path[96];
    snprintf(path, sizeof path, "/api/data/%s", k->name);
    sim_answer a = sim_call(cl->c, &cl->res, "GET", GW, path, NULL, CALL_MS);
    if (a.status != 200 && a.status != 404)
      sim_fail("after the faults: GET %s answered %d (the deployment did not recover)", path,
               a.status);
    if (k == &cl->cnt) {
      long long v;
      if (a.status == 200 && sim_json_int(&a, &v, "data", "value", NULL))
        check_count(cl, v, 0, "after the faults");
      else if (k->created)
        sim_fail("after the faults: counter %s: %d %.200s", k->name, a.status, a.body);
    } else {
      check_read(cl, k, &a, "after the faults");
    }
    sim_answer_free(&a);
  }
  int64_t until = sim_now_ns() + 60000000000LL;
  for (;;) {
    int open = 0;
    for (int i = 0; i < cl->njobs; i++)
      if (!cl->jobs[i].final && !poll_job(cl, &cl->jobs[i])) open++;
    if (!open) break;
    if (sim_now_ns() > until)
      sim_fail("%d acknowledged jobs of %s not finished 60 s after the faults stopped", open,
               sim_node_name(cl->node));
    usleep(500000);
  }
  return NULL;
}

static void run_clients(client *cls, void *(*fn)(void *)) {
  pthread_t th[NCLIENTS];
  for (int i = 0; i < NCLIENTS; i++) {
    sim_node_enter(cls[i].node);
    pthread_create(&th[i], NULL, fn, &cls[i]);
  }
  sim_node_enter(0);
  for (int i = 0; i < NCLIENTS; i++) pthread_join(th[i], NULL);
}

/* For the dead-instance checker: does the gateway have an instance of
 * `group` other than `except` that takes traffic? */
static int gw_other_usable(const char *group, const char *except, void *ud) {
  dsys_gateway *gw = ud;
  size_t nu = dsys_gateway_upstream_count(gw);
  for (size_t i = 0; i < nu; i++) {
    const char *name = NULL;
    dsys_upstream *u = NULL;
    if (dsys_gateway_upstream_at(gw, i, &name, &u) || strcmp(name, group)) continue;
    dsys_endpoint_stats *st = NULL;
    size_t ne = 0;
    int any = 0;
    dsys_upstream_stats(u, &st, &ne);
    for (size_t e = 0; e < ne; e++) {
      if (st[e].usable && strcmp(st[e].id, except)) any = 1;
      if (getenv("DSYS_SIM_DEBUG"))
        fprintf(stderr, "gw view %s: usable %d health %d ejected %d breaker %d requests %llu\n",
                st[e].id, st[e].usable, st[e].health_state, st[e].ejected, st[e].breaker_state,
                (unsigned long long)st[e].requests);
    }
    dsys_free(st);
    return any;
  }
  return 0;
}

/* Registry views converge: every instance registered and healthy in the
 * registry, and the gateway's view of each upstream has every instance
 * usable. */
static int converged(dsys_registry *reg, dsys_gateway *gw, char *why, size_t n) {
  static const char *types[] = {"auth", "data", "compute"};
  for (int t = 0; t < 3; t++) {
    dsys_instance *in = NULL;
    size_t k = 0;
    if (dsys_registry_lookup(reg, types[t], 1, &in, &k)) k = 0;
    dsys_free(in);
    if (k != 3) {
      snprintf(why, n, "registry: %zu healthy %s instances of 3", k, types[t]);
      return 0;
    }
  }
  size_t nu = dsys_gateway_upstream_count(gw);
  for (size_t i = 0; i < nu; i++) {
    const char *name = NULL;
    dsys_upstream *u = NULL;
    dsys_gateway_upstream_at(gw, i, &name, &u);
    dsys_endpoint_stats *st = NULL;
    size_t ne = 0, usable = 0, ejected = 0;
    dsys_upstream_stats(u, &st, &ne);
    /* An endpoint ejected by outlier detection stays out for 30 s times
     * its ejection count, one whose breaker opened for 30 s
     * (reference/resilience.md): a policy, not a view that failed to
     * converge. One unhealthy otherwise, 30 s after the faults (active
     * checks every 500 ms), is. */
    char bad[96] = "";
    for (size_t e = 0; e < ne; e++) {
      usable += st[e].usable ? 1 : 0;
      /* out by policy: ejected, or its breaker open (30 s) or half-open */
      int policy = st[e].ejected || st[e].breaker_state != DSYS_BREAKER_CLOSED;
      ejected += !st[e].usable && policy ? 1 : 0;
      if (!st[e].usable && !policy)
        snprintf(bad, sizeof bad, "; %s: health state %d, breaker state %d", st[e].id,
                 st[e].health_state, st[e].breaker_state);
    }
    dsys_free(st);
    if (ne != 3 || usable + ejected != 3) {
      dsys_instance *in = NULL;
      size_t k = 0;
      if (gwreg_for_debug) dsys_registry_lookup(gwreg_for_debug, name, 1, &in, &k);
      dsys_free(in);
      if (getenv("DSYS_SIM_DEBUG") && gwreg_for_debug) {
        size_t m = 0;
        dsys_registry_lookup(gwreg_for_debug, name, 0, &in, &m);
        for (size_t j = 0; j < m; j++) {
          dsys_instance *d = NULL;
          dsys_registry_get(reg, in[j].id, &d);
          fprintf(stderr, "view %s health %d hb %lld | daemon health %d hb %lld | now %lld\n", in[j].id,
                  in[j].health, (long long)in[j].last_heartbeat_ms, d ? d->health : -1,
                  d ? (long long)d->last_heartbeat_ms : -1LL,
                  (long long)dsys_clock_wall_ms(dsys_clock_real()));
          dsys_free(d);
        }
        dsys_free(in);
      }
      snprintf(why, n, "gateway: %zu usable and %zu ejected or breaker-open %s instances of %zu known (its registry client lists %zu healthy)%s",
               usable, ejected, name, ne, k, bad);
      return 0;
    }
  }
  return 1;
}

void scen_deploy(const sim_config *cfg, sim_result *res) {
  unsigned mask = 0;
  sim_faults_parse(cfg->faults, &mask);
  plant_retry_post = cfg->plant && !strcmp(cfg->plant, "retry-post");
  plant_stale_cache = cfg->plant && !strcmp(cfg->plant, "stale-cache");
  sim_net_start(mask);
  /* The clock's timer thread belongs to node 0 (it serves every node). */
  uint64_t tid;
  dsys_timer_add(dsys_clock_real(), 1000000000, (dsys_timer_fn)free, NULL, &tid);
  dsys_timer_cancel(dsys_clock_real(), tid);

  /* Shared state, as the deployment's one database: in memory. */
  dsys_store *users, *items;
  dsys_queue *queue;
  if (dsys_store_open(&users, "memory:", NULL) || dsys_store_open(&items, "memory:", NULL) ||
      dsys_queue_open(&queue, "memory:", NULL))
    sim_fail("open the shared state");

  /* Registry. */
  sim_instance reg;
  sim_instance_begin(&reg, "registry", "registry");
  dsys_registry *regdb;
  dsys_registry_options rgo = {.size = sizeof rgo, .ttl_ms = 3000, .reap_ms = 60000};
  if (dsys_registry_open(&regdb, "memory", NULL, &rgo, NULL, 0)) sim_fail("registry");
  dsys_registry_service *regsvc;
  if (dsys_registry_service_mount(reg.srv, regdb, NULL, &regsvc)) sim_fail("registry mount");
  sim_instance_end(&reg, 0);

  static const char secret[] = "simulation-only-secret-0123456789abcdef";
  sim_instance auth[3], data[3], comp[3];
  dsys_auth_service *asvc[3];
  dsys_data_service *dsvc[3];
  dsys_compute_service *csvc[3];
  dsys_cache *cache[3] = {0};
  char name[32];
  for (int i = 0; i < 3; i++) {
    snprintf(name, sizeof name, "auth-%d", i + 1);
    sim_instance_begin(&auth[i], name, "auth");
    dsys_auth_options ao = {.size = sizeof ao, .store = users, .token_secret = secret,
                            .token_secret_len = sizeof secret - 1, .hash_threads = 1};
    if (dsys_service_auth_mount(auth[i].srv, &ao, &asvc[i])) sim_fail("auth mount");
    sim_instance_end(&auth[i], 1000);

    snprintf(name, sizeof name, "data-%d", i + 1);
    sim_instance_begin(&data[i], name, "data");
    dsys_data_options dopt = {.size = sizeof dopt, .store = items, .no_seed = i > 0};
    if (plant_stale_cache) {
      /* PLANTED BUG (test only, --plant stale-cache): a read cache whose
       * entries live 30 s and are not evicted by other instances' writes
       * (the change-log poll every 60 s). */
      dsys_cache_options co = {.size = sizeof co, .ttl_ms = 30000};
      if (dsys_cache_new(&cache[i], &co)) sim_fail("cache");
      dopt.cache = cache[i];
      dopt.events_poll_ms = 60000;
    }
    if (dsys_service_data_mount(data[i].srv, &dopt, &dsvc[i])) sim_fail("data mount");
    sim_instance_end(&data[i], 1000);

    snprintf(name, sizeof name, "compute-%d", i + 1);
    sim_instance_begin(&comp[i], name, "compute");
    dsys_compute_options co = {.size = sizeof co, .queue = queue, .workers = 2,
                               .max_attempts = 5, .worker_poll_ms = 100, .lease_ms = 3000};
    if (dsys_service_compute_mount(comp[i].srv, &co, &csvc[i])) sim_fail("compute mount");
    sim_instance_end(&comp[i], 1000);
  }

  /* Gateway: discovers the instances through its own registry client. */
  sim_instance gwi;
  sim_instance_begin(&gwi, "gateway", "gateway");
  dsys_registry *gwreg;
  if (dsys_registry_open(&gwreg, "inproc://registry", NULL, NULL, NULL, 0)) sim_fail("gw registry");
  gwreg_for_debug = gwreg;
  dsys_gateway_options go = {.size = sizeof go, .registry = gwreg, .try_timeout_ms = 1000,
                             .deadline_ms = 3000, .health_interval_ms = 500};
  dsys_gateway *gw;
  if (dsys_gateway_new(&gw, &go)) sim_fail("gateway");
  static const char *const ups[] = {"auth", "data", "compute"};
  for (int i = 0; i < 3; i++) {
    char prefix[32];
    snprintf(prefix, sizeof prefix, "/api/%s", ups[i]);
    if (dsys_gateway_add_upstream(gw, ups[i], NULL, 0, NULL) ||
        dsys_gateway_add_route(gw, prefix, ups[i]))
      sim_fail("gateway upstream %s", ups[i]);
  }
  if (dsys_gateway_mount(gw, gwi.srv)) sim_fail("gateway mount");
  sim_instance_end(&gwi, 0);

  /* Fault detector. */
  sim_instance fdi;
  sim_instance_begin(&fdi, "faultd", "faultd");
  dsys_registry *fdreg;
  if (dsys_registry_open(&fdreg, "inproc://registry", NULL, NULL, NULL, 0)) sim_fail("fd registry");
  dsys_faultd_options fo = {.size = sizeof fo, .registry = fdreg, .gateway_url = GW,
                            .interval_ms = 1000, .timeout_ms = 500};
  dsys_faultd *fd;
  if (dsys_faultd_new(&fd, &fo) || dsys_faultd_mount(fd, fdi.srv)) sim_fail("faultd");
  sim_instance_end(&fdi, 0);

  /* Clients. */
  static client cls[NCLIENTS];
  for (int i = 0; i < NCLIENTS; i++) {
    client *cl = &cls[i];
    memset(cl, 0, sizeof *cl);
    cl->idx = i + 1;
    cl->cfg = cfg;
    snprintf(name, sizeof name, "client-%d", i + 1);
    cl->node = sim_node_new(name);
    if (dsys_client_new(&cl->c, NULL)) sim_fail("client");
    for (int k = 0; k < NKEYS; k++) snprintf(cl->keys[k].name, sizeof cl->keys[k].name, "c%d-k%d", i + 1, k);
    snprintf(cl->cnt.name, sizeof cl->cnt.name, "c%d-count", i + 1);
  }

  /* Let registrations land, then run the clients under faults. */
  usleep(1500000);
  int targets[SIM_MAX_NODES], nt = 0;
  for (int i = 0; i < 3; i++) {
    targets[nt++] = auth[i].node;
    targets[nt++] = data[i].node;
    targets[nt++] = comp[i].node;
  }
  targets[nt++] = reg.node;
  targets[nt++] = gwi.node;
  targets[nt++] = fdi.node;
  /* The gateway's health checks (every 500 ms, 1 s timeout, 3 failures)
   * take an unreachable instance out within about 4.7 s: 6 s allowed. */
  for (int i = 0; i < 3; i++) {
    sim_net_group(auth[i].node, "auth");
    sim_net_group(data[i].node, "data");
    sim_net_group(comp[i].node, "compute");
  }
  sim_net_watch(gwi.node, 6000000000LL, gw_other_usable, gw);
  if (mask) sim_faults_start(targets, nt);
  /* Memory: the heap in use once the deployment runs, and after the
   * clients' run (before the state is freed). */
  size_t heap0 = mallinfo2().uordblks;
  run_clients(cls, client_main);
  if (mask) sim_faults_stop();
  size_t heap1 = mallinfo2().uordblks;
  long reqs = 0;
  for (int i = 0; i < NCLIENTS; i++) reqs += cls[i].res.requests;
  /* The state keeps what the clients made (each job's record: about
   * 550 bytes a request over 6000 requests of seed 3); more than 4 MiB +
   * 2 KiB a request is a leak. */
  res->checks++;
  res->heap_growth = (long)heap1 - (long)heap0;
  if (heap1 > heap0 && heap1 - heap0 > ((size_t)4 << 20) + (size_t)reqs * 2048)
    sim_fail("the heap grew by %zu bytes over %ld requests (more than 4 MiB + 2 KiB each)",
             heap1 - heap0, reqs);

  /* Convergence within 30 s of the faults' end: a registry client's
   * blocking query that was lost is given up after its wait (ttl/3) plus
   * 15 s, then retried after a backoff of at most 5 s; until then its view
   * is frozen (registry_http.c). */
  char why[320] = "";
  int64_t until = sim_now_ns() + 30000000000LL;
  while (!converged(regdb, gw, why, sizeof why)) {
    if (sim_now_ns() > until) sim_fail("views did not converge 30 s after the faults: %s", why);
    usleep(250000);
  }
  res->checks++;
  sim_trace("views converged");
  run_clients(cls, client_verify);
  sim_trace("verified");

  /* Stop everything, in the reverse order. */
  for (int i = 0; i < NCLIENTS; i++) {
    for (int k = 0; k <= NKEYS; k++) {
      key *kk = k < NKEYS ? &cls[i].keys[k] : &cls[i].cnt;
      for (int d = 0; d < kk->ndoubt; d++) free(kk->doubt[d]);
      free(kk->doubt);
    }
    dsys_client_free(cls[i].c);
    res->requests += cls[i].res.requests;
    res->answered += cls[i].res.answered;
    res->timeouts += cls[i].res.timeouts;
    res->checks += cls[i].res.checks;
  }
  sim_instance_stop(&fdi);
  dsys_faultd_shutdown(fd);
  sim_instance_stop(&gwi);
  for (int i = 0; i < 3; i++) {
    sim_instance_stop(&auth[i]);
    sim_instance_stop(&data[i]);
    sim_instance_stop(&comp[i]);
  }
  dsys_registry_service_drain(regsvc);
  sim_instance_stop(&reg);
  dsys_faultd_free(fd);
  sim_instance_free(&fdi);
  dsys_registry_close(fdreg);
  dsys_gateway_free(gw);
  sim_instance_free(&gwi);
  dsys_registry_close(gwreg);
  for (int i = 0; i < 3; i++) {
    dsys_service_auth_free(asvc[i]);
    dsys_service_data_free(dsvc[i]);
    dsys_service_compute_free(csvc[i]);
    sim_instance_free(&auth[i]);
    sim_instance_free(&data[i]);
    sim_instance_free(&comp[i]);
    dsys_cache_free(cache[i]);
  }
  dsys_registry_service_free(regsvc);
  sim_instance_free(&reg);
  dsys_registry_close(regdb);
  dsys_queue_close(queue);
  dsys_store_close(users);
  dsys_store_close(items);
}
