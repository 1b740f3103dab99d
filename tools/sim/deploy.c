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
#include <stddef.h>
#include <json-c/json.h>
#include "disk.h"
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

/* A token a sign-up returned: asked for at `sent`, answered at `got`
 * (virtual ns; the issuing node stamped it in between, on its clock). */
typedef struct token {
  char *tok;
  int64_t sent, got;
} token;
#define MAXTOKENS 64

typedef struct client {
  int idx, node;
  token toks[MAXTOKENS];
  int ntoks;
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

static int plant_retry_post, plant_stale_cache, plant_sync_normal, plant_ignore_health;
/* The gateway's health check timeout (the dead-instance checker counts
 * an answer within it as the instance seen alive). */
#define HEALTH_TIMEOUT_MS 1000
static dsys_registry *gwreg_for_debug;
/* The gateway the checkers look at (NULL while it is down). */
static dsys_gateway *cur_gw;

int scen_plant_known(const char *name) {
  return !strcmp(name, "retry-post") || !strcmp(name, "stale-cache") ||
         !strcmp(name, "sync-normal") || !strcmp(name, "no-fencing") ||
         !strcmp(name, "ignore-health");
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

/* Tokens live TOKEN_S (so that a run sees them expire); the verifying
 * node's wall clock may differ from the issuing one's by up to
 * 2 x (2 s of skew fault + 200 ms offset + 100 ppm drift over the run) +
 * 1 s (whole seconds in the token): a token younger than TOKEN_S -
 * CLOCK_SLACK_S must be accepted, one older than TOKEN_S + CLOCK_SLACK_S
 * refused. */
#define TOKEN_S 8
#define CLOCK_SLACK_S 6

static void verify_token(client *cl, token *t) {
  char hv[600];
  snprintf(hv, sizeof hv, "Bearer %s", t->tok);
  int64_t s0 = sim_now_ns();
  sim_answer a = sim_call_h(cl->c, &cl->res, "GET", GW, "/api/auth/verify", NULL, CALL_MS,
                            "Authorization", hv);
  int64_t s1 = sim_now_ns();
  double young = (s1 - t->sent) / 1e9, old = (s0 - t->got) / 1e9;
  sim_trace("%s verify token aged %.3f-%.3f s -> %d", sim_node_name(cl->node), old, young, a.status);
  cl->res.checks++;
  if (a.status == 200 && old > TOKEN_S + CLOCK_SLACK_S)
    sim_fail("a token at least %.3f s old was accepted (lifetime %d s, clocks within %d s)", old,
             TOKEN_S, CLOCK_SLACK_S);
  else if (a.status == 401 && young < TOKEN_S - CLOCK_SLACK_S)
    sim_fail("a token at most %.3f s old was refused (lifetime %d s, clocks within %d s), or "
             "its acknowledged sign-up was lost: %.200s",
             young, TOKEN_S, CLOCK_SLACK_S, a.body);
  else if (a.status != 200 && a.status != 401 && !transient(a.status))
    sim_fail("GET /api/auth/verify answered %d: %.200s", a.status, a.body);
  sim_answer_free(&a);
}

static void signup(client *cl) {
  char body[256];
  int n = ++cl->signups;
  int64_t sent = sim_now_ns();
  snprintf(body, sizeof body,
           "{\"username\":\"user%d-%d\",\"email\":\"user%d-%d@example.org\",\"password\":\"pw-%d-%d\"}",
           cl->idx, n, cl->idx, n, cl->idx, n);
  sim_answer a = sim_call(cl->c, &cl->res, "POST", GW, "/api/auth/signup", body, CALL_MS);
  sim_trace("%s signup user%d-%d -> %d", sim_node_name(cl->node), cl->idx, n, a.status);
  cl->res.checks++;
  if (a.status == 201) {
    const char *tok = sim_json_str(&a, "token", NULL);
    if (!tok || !*tok) sim_fail("signup answered 201 without a token: %.200s", a.body);
    if (cl->ntoks < MAXTOKENS)
      cl->toks[cl->ntoks++] = (token){strdup(tok), sent, sim_now_ns()};
  } else if (!transient(a.status)) {
    sim_fail("signup of a new user answered %d: %.200s", a.status, a.body);
  }
  sim_answer_free(&a);
}

static void submit_job(client *cl) {
  if (cl->njobs == MAXJOBS) return;
  long long x = (long long)sim_rand_below(1000), y = (long long)sim_rand_below(1000);
  /* One job in three runs for up to 2.5 s (delayMs), long enough for a
   * pause, a crash or a clock step of its worker to end its 3 s lease
   * while it runs: another worker claims it and the first one's
   * completion must then be refused (the completion checker). */
  long long delay = sim_rand_below(3) ? 0 : (long long)sim_rand_below(2501);
  char body[160];
  snprintf(body, sizeof body,
           "{\"type\":\"add\",\"data\":{\"operands\":[%lld,%lld],\"delayMs\":%lld}}", x, y,
           delay);
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
    else if (r < 9 && cl->ntoks) verify_token(cl, &cl->toks[sim_rand_below(cl->ntoks)]);
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
  /* every token once more, and the oldest once it must have expired */
  for (int i = 0; i < cl->ntoks; i++) verify_token(cl, &cl->toks[i]);
  if (cl->ntoks) {
    int64_t due = cl->toks[0].got + (TOKEN_S + CLOCK_SLACK_S + 1) * 1000000000LL;
    if (sim_now_ns() < due) usleep((useconds_t)((due - sim_now_ns()) / 1000));
    verify_token(cl, &cl->toks[0]);
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
  (void)ud;
  dsys_gateway *gw = cur_gw;
  if (!gw) return 0;
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
    /* ... and at least one usable: every instance out by policy (seed 160:
     * after a power loss of the database host every data instance's
     * breaker open or unhealthy) is a deployment that answers 503, not
     * yet recovered. */
    if (ne != 3 || usable + ejected != 3 || !usable) {
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

/* ---- the nodes: each a process that can crash and start again ---- */

enum { K_REG, K_AUTH, K_DATA, K_COMP, K_GW, K_FD };
/* ---- The completion checker: at most one accepted completion per job,
 * and only under the job's current lease. The compute processes open the
 * queue through this backend, which forwards every op to the SQLite one
 * (the same code below it) and notes the claims and completions of each
 * group; what a group did counts once its commit succeeded (a failed
 * commit rolls all of it back). Tokens grow by one per claim, so the
 * job's current lease is the highest token a committed claim returned
 * (a claim noted late, by a process paused after its commit, cannot
 * lower it). All of it runs with the baton: no lock. */
typedef struct fence_job {
  int64_t token;     /* highest claimed token */
  int64_t completed; /* token of the accepted completion, 0: none */
} fence_job;
static fence_job *fence_jobs;
static int64_t fence_njobs;

static fence_job *fence_at(int64_t id) {
  if (id <= 0) sim_fail("queue: job id %lld", (long long)id);
  if (id >= fence_njobs) {
    int64_t n = fence_njobs ? fence_njobs : 256;
    while (n <= id) n *= 2;
    fence_job *p = realloc(fence_jobs, (size_t)n * sizeof *p);
    if (!p) sim_fail("out of memory");
    memset(p + fence_njobs, 0, (size_t)(n - fence_njobs) * sizeof *p);
    fence_jobs = p;
    fence_njobs = n;
  }
  return &fence_jobs[id];
}

typedef struct fence_note {
  int complete; /* 0: a claim */
  int64_t id, token;
} fence_note;

typedef struct fence_st {
  const dsys_queue_ops *in;
  int node;
  fence_note *notes;
  size_t nnotes, cap;
  _Alignas(max_align_t) unsigned char inner[]; /* the SQLite backend's state */
} fence_st;

/* PLANTED BUG (test only, --plant no-fencing): completions skip the token
 * check (an active job is completed whatever token the caller holds). */
static int plant_no_fencing;

static void fence_note_add(fence_st *f, int complete, int64_t id, int64_t token) {
  if (f->nnotes == f->cap) {
    size_t c = f->cap ? 2 * f->cap : 16;
    fence_note *p = realloc(f->notes, c * sizeof *p);
    if (!p) sim_fail("out of memory");
    f->notes = p;
    f->cap = c;
  }
  f->notes[f->nnotes++] = (fence_note){complete, id, token};
}

static int fence_open(void *st, const char *loc, const dsys_queue_options *o, char *err, size_t n) {
  fence_st *f = st;
  f->in = dsys_queue_ops_sqlite();
  f->node = sim_node_current();
  return f->in->open(f->inner, loc, o, err, n);
}
static void fence_close(void *st) {
  fence_st *f = st;
  f->in->close(f->inner);
  free(f->notes);
}
static int fence_begin(void *st, int64_t now) {
  fence_st *f = st;
  f->nnotes = 0;
  return f->in->begin(f->inner, now);
}
static int fence_commit(void *st) {
  fence_st *f = st;
  int rc = f->in->commit(f->inner);
  if (rc) return rc;
  for (size_t i = 0; i < f->nnotes; i++) {
    fence_note *e = &f->notes[i];
    fence_job *j = fence_at(e->id);
    if (!e->complete) {
      if (e->token > j->token) j->token = e->token;
      if (j->completed)
        sim_fail("queue: job %lld claimed (token %lld) after its completion was accepted",
                 (long long)e->id, (long long)e->token);
      continue;
    }
    sim_trace("queue: %s completed job %lld (token %lld)", sim_node_name(f->node),
              (long long)e->id, (long long)e->token);
    if (j->completed)
      sim_fail("queue: job %lld: a second accepted completion (token %lld; the first had "
               "token %lld)",
               (long long)e->id, (long long)e->token, (long long)j->completed);
    if (e->token != j->token)
      sim_fail("queue: job %lld: a completion accepted with token %lld, not the job's "
               "current lease (token %lld)",
               (long long)e->id, (long long)e->token, (long long)j->token);
    j->completed = e->token;
  }
  f->nnotes = 0;
  return 0;
}
static void fence_rollback(void *st) {
  fence_st *f = st;
  f->nnotes = 0;
  f->in->rollback(f->inner);
}
static int fence_submit(void *st, const char *queue, const char *const *p, size_t n,
                        const dsys_submit_options *o, int64_t now, int64_t *ids, int *existed) {
  fence_st *f = st;
  return f->in->submit(f->inner, queue, p, n, o, now, ids, existed);
}
static int fence_claim(void *st, const char *const *queues, size_t nq, const char *worker,
                       int64_t lease_until, size_t max, int64_t now, dsys_job **jobs, size_t *n) {
  fence_st *f = st;
  int rc = f->in->claim(f->inner, queues, nq, worker, lease_until, max, now, jobs, n);
  if (!rc)
    for (size_t i = 0; i < *n; i++) fence_note_add(f, 0, jobs[i]->id, jobs[i]->token);
  return rc;
}
static int fence_heartbeat(void *st, int64_t id, int64_t token, int64_t lease_until) {
  fence_st *f = st;
  return f->in->heartbeat(f->inner, id, token, lease_until);
}
static int fence_progress(void *st, int64_t id, int64_t token, int32_t pct, const char *msg) {
  fence_st *f = st;
  return f->in->progress(f->inner, id, token, pct, msg);
}
static int fence_complete(void *st, int64_t id, int64_t token, const char *result, int64_t now) {
  fence_st *f = st;
  int64_t use = token;
  if (plant_no_fencing) {
    dsys_job *j = NULL;
    if (!f->in->get(f->inner, id, &j) && j->state == DSYS_JOB_ACTIVE) use = j->token;
    dsys_job_free(j);
  }
  int rc = f->in->complete(f->inner, id, use, result, now);
  if (!rc) fence_note_add(f, 1, id, token);
  else sim_trace("queue: %s: completion of job %lld (token %lld) refused: %s",
                 sim_node_name(f->node), (long long)id, (long long)token, dsys_strerror(rc));
  return rc;
}
static int fence_fail(void *st, int64_t id, int64_t token, const char *e, int64_t now, int *dead) {
  fence_st *f = st;
  return f->in->fail(f->inner, id, token, e, now, dead);
}
static int fence_release(void *st, int64_t id, int64_t token, int64_t now) {
  fence_st *f = st;
  return f->in->release(f->inner, id, token, now);
}
static int fence_cancel(void *st, int64_t id, int64_t now) {
  fence_st *f = st;
  return f->in->cancel(f->inner, id, now);
}
static int fence_get(void *st, int64_t id, dsys_job **out) {
  fence_st *f = st;
  return f->in->get(f->inner, id, out);
}
static int fence_counts(void *st, const char *queue, dsys_job_counts *out) {
  fence_st *f = st;
  return f->in->counts(f->inner, queue, out);
}
static int fence_list_dead(void *st, const char *queue, int64_t after, size_t limit,
                           dsys_job ***jobs, size_t *n) {
  fence_st *f = st;
  return f->in->list_dead(f->inner, queue, after, limit, jobs, n);
}
static int fence_replay(void *st, int64_t id, int64_t now) {
  fence_st *f = st;
  return f->in->replay(f->inner, id, now);
}
static int fence_purge(void *st, int64_t before, int64_t *removed) {
  fence_st *f = st;
  return f->in->purge(f->inner, before, removed);
}
static int fence_list_queues(void *st, dsys_queue_info **out, size_t *n) {
  fence_st *f = st;
  return f->in->list_queues(f->inner, out, n);
}
static int fence_set_paused(void *st, const char *queue, int paused, int64_t now) {
  fence_st *f = st;
  return f->in->set_paused(f->inner, queue, paused, now);
}
static int fence_purge_dead(void *st, const char *queue, int64_t before, int64_t *removed) {
  fence_st *f = st;
  return f->in->purge_dead(f->inner, queue, before, removed);
}

static dsys_queue_ops fence_ops = {
    .version = DSYS_QUEUE_OPS_VERSION, .name = "simfence", .open = fence_open,
    .close = fence_close, .begin = fence_begin, .commit = fence_commit,
    .rollback = fence_rollback, .submit = fence_submit, .claim = fence_claim,
    .heartbeat = fence_heartbeat, .progress = fence_progress, .complete = fence_complete,
    .fail = fence_fail, .release = fence_release, .cancel = fence_cancel, .get = fence_get,
    .counts = fence_counts, .list_dead = fence_list_dead, .replay = fence_replay,
    .purge = fence_purge, .list_queues = fence_list_queues, .set_paused = fence_set_paused,
    .purge_dead = fence_purge_dead};

/* The wrapper's table mirrors the SQLite one's optional ops: it forwards
 * only what that backend has (the front end treats a present op as
 * supported) and its state holds the SQLite state. finish_many is left
 * out on purpose: the front end then completes one by one, through
 * fence_complete, so the checker sees every completion. */
static const dsys_queue_ops *fence_table(void) {
  const dsys_queue_ops *s = dsys_queue_ops_sqlite();
  if (s->set_wake || s->concurrent_groups > 1)
    sim_fail("queue: the completion checker does not forward the SQLite backend's "
             "set_wake / concurrent groups");
  fence_ops.state_size = sizeof(fence_st) + s->state_size;
  if (!s->list_dead) fence_ops.list_dead = NULL;
  if (!s->replay) fence_ops.replay = NULL;
  if (!s->purge) fence_ops.purge = NULL;
  if (!s->list_queues) fence_ops.list_queues = NULL;
  if (!s->set_paused) fence_ops.set_paused = NULL;
  if (!s->purge_dead) fence_ops.purge_dead = NULL;
  return &fence_ops;
}

typedef struct member {
  sim_instance in;
  int kind, idx, up, boots;
  dsys_store *st;
  dsys_queue *q;
  dsys_registry *r; /* K_REG: the registry itself; K_GW, K_FD: a client */
  dsys_registry_service *regsvc;
  dsys_auth_service *asvc;
  dsys_data_service *dsvc;
  dsys_compute_service *csvc;
  dsys_cache *cache;
  dsys_gateway *gw;
  dsys_faultd *fd;
} member;

#define NMEMBERS 12
static member M[NMEMBERS];
static int nmembers;
static const char secret[] = "simulation-only-secret-0123456789abcdef";

/* The state lives in SQLite files on simulated disks (disk.c): the
 * shared database on the host "db" (every auth, data and compute process
 * runs there, each with its own connection, as the daemons share a
 * sqlite:// file), the registry's on its own host. */
#define DB_USERS "sqlite:///db/users.sqlite"
#define DB_ITEMS "sqlite:///db/items.sqlite"
#define DB_QUEUE "sqlite:///db/queue.sqlite"
#define DB_REGISTRY "/registry/registry.sqlite"

static int on_db_host(const member *m) {
  return m->kind == K_AUTH || m->kind == K_DATA || m->kind == K_COMP;
}

/* Start the member's process: the first time in a new node, afterwards in
 * the same node from what its disk kept. */
static void member_boot(member *m) {
  static const char *const kinds[] = {"registry", "auth", "data", "compute", "gateway", "faultd"};
  char name[32];
  if (m->kind == K_REG || m->kind == K_GW || m->kind == K_FD)
    snprintf(name, sizeof name, "%s", kinds[m->kind]);
  else
    snprintf(name, sizeof name, "%s-%d", kinds[m->kind], m->idx + 1);
  if (!m->boots) sim_instance_begin(&m->in, name, kinds[m->kind]);
  else sim_instance_restart(&m->in);
  /* The new process is on the network (no listener yet: calls to it are
   * refused until it listens). */
  if (m->boots) sim_net_down(m->in.node, 0);
  /* Acknowledged means durable: FULL (PLANTED BUG sync-normal: NORMAL, a
   * WAL commit acknowledged before it is synced). */
  int full = !plant_sync_normal;
  int64_t hb = 1000;
  int rc = 0;
  switch (m->kind) {
  case K_REG: {
    dsys_registry_options rgo = {.size = sizeof rgo, .ttl_ms = 3000, .reap_ms = 60000};
    char err[256] = "";
    if ((rc = dsys_registry_open(&m->r, "sqlite", DB_REGISTRY, &rgo, err, sizeof err)))
      sim_fail("registry open: %s: %s", dsys_strerror(rc), err);
    if (dsys_registry_service_mount(m->in.srv, m->r, NULL, &m->regsvc)) sim_fail("registry mount");
    hb = 0;
    break;
  }
  case K_AUTH: {
    dsys_store_options so = {.size = sizeof so, .full_sync = full};
    if ((rc = dsys_store_open(&m->st, DB_USERS, &so))) sim_fail("open %s: %s", DB_USERS, dsys_strerror(rc));
    dsys_auth_options ao = {.size = sizeof ao, .store = m->st, .token_secret = secret,
                            .token_secret_len = sizeof secret - 1, .hash_threads = 1,
                            .token_lifetime_s = TOKEN_S};
    if (dsys_service_auth_mount(m->in.srv, &ao, &m->asvc)) sim_fail("auth mount");
    break;
  }
  case K_DATA: {
    dsys_store_options so = {.size = sizeof so, .full_sync = full};
    if ((rc = dsys_store_open(&m->st, DB_ITEMS, &so))) sim_fail("open %s: %s", DB_ITEMS, dsys_strerror(rc));
    dsys_data_options dopt = {.size = sizeof dopt, .store = m->st, .no_seed = m->idx > 0 || m->boots};
    if (plant_stale_cache) {
      /* PLANTED BUG (test only, --plant stale-cache): a read cache whose
       * entries live 30 s and are not evicted by other instances' writes
       * (the change-log poll every 60 s). */
      dsys_cache_options co = {.size = sizeof co, .ttl_ms = 30000};
      if (dsys_cache_new(&m->cache, &co)) sim_fail("cache");
      dopt.cache = m->cache;
      dopt.events_poll_ms = 60000;
    }
    if (dsys_service_data_mount(m->in.srv, &dopt, &m->dsvc)) sim_fail("data mount");
    break;
  }
  case K_COMP: {
    dsys_queue_options qo = {.size = sizeof qo, .full_sync = full};
    /* through the completion checker's wrapper of the SQLite backend */
    if ((rc = dsys_queue_open_ops(&m->q, fence_table(), DB_QUEUE + strlen("sqlite://"), &qo)))
      sim_fail("open %s: %s", DB_QUEUE, dsys_strerror(rc));
    dsys_compute_options co = {.size = sizeof co, .queue = m->q, .workers = 2,
                               .max_attempts = 5, .worker_poll_ms = 100, .lease_ms = 3000};
    if (dsys_service_compute_mount(m->in.srv, &co, &m->csvc)) sim_fail("compute mount");
    break;
  }
  case K_GW: {
    /* discovers the instances through its own registry client */
    if (dsys_registry_open(&m->r, "inproc://registry", NULL, NULL, NULL, 0)) sim_fail("gw registry");
    gwreg_for_debug = m->r;
    dsys_gateway_options go = {.size = sizeof go, .registry = m->r, .try_timeout_ms = 1000,
                               .deadline_ms = 3000, .health_interval_ms = 500,
                               .health_timeout_ms = HEALTH_TIMEOUT_MS};
    /* PLANTED BUG (test only, --plant ignore-health): failed health
     * checks and failed requests never take an instance out (a million
     * in a row needed); only the registry's TTL does, which a cut link
     * between the gateway and an instance does not end. */
    if (plant_ignore_health) go.health_fall = go.outlier_failures = 1000000;
    if (dsys_gateway_new(&m->gw, &go)) sim_fail("gateway");
    static const char *const ups[] = {"auth", "data", "compute"};
    for (int i = 0; i < 3; i++) {
      char prefix[32];
      snprintf(prefix, sizeof prefix, "/api/%s", ups[i]);
      if (dsys_gateway_add_upstream(m->gw, ups[i], NULL, 0, NULL) ||
          dsys_gateway_add_route(m->gw, prefix, ups[i]))
        sim_fail("gateway upstream %s", ups[i]);
    }
    if (dsys_gateway_mount(m->gw, m->in.srv)) sim_fail("gateway mount");
    hb = 0;
    break;
  }
  case K_FD: {
    if (dsys_registry_open(&m->r, "inproc://registry", NULL, NULL, NULL, 0)) sim_fail("fd registry");
    dsys_faultd_options fo = {.size = sizeof fo, .registry = m->r, .gateway_url = GW,
                              .interval_ms = 1000, .timeout_ms = 500};
    if (dsys_faultd_new(&m->fd, &fo) || dsys_faultd_mount(m->fd, m->in.srv)) sim_fail("faultd");
    hb = 0;
    break;
  }
  }
  sim_instance_end(&m->in, hb);
  if (m->kind == K_GW) cur_gw = m->gw;
  m->up = 1;
  m->boots++;
}

/* Stop the member's process: gracefully (the end of the run) or as a
 * crash (its messages are already lost and its disk handles dead: what
 * its threads do until they are joined has no effect outside). The
 * library's own stop, free and close calls either way. */
static void member_stop(member *m, int crash) {
  m->up = 0;
  if (m->kind == K_GW) cur_gw = NULL;
  if (m->kind == K_REG) dsys_registry_service_drain(m->regsvc);
  if (m->kind == K_FD) dsys_faultd_shutdown(m->fd);
  if (crash) sim_instance_kill(&m->in);
  else sim_instance_stop(&m->in);
  switch (m->kind) {
  case K_REG: dsys_registry_service_free(m->regsvc); break;
  case K_AUTH: dsys_service_auth_free(m->asvc); break;
  case K_DATA: dsys_service_data_free(m->dsvc); break;
  case K_COMP: dsys_service_compute_free(m->csvc); break;
  case K_GW: dsys_gateway_free(m->gw); break;
  case K_FD: dsys_faultd_free(m->fd); break;
  }
  sim_instance_free(&m->in);
  dsys_registry_close(m->r);
  dsys_store_close(m->st);
  dsys_queue_close(m->q);
  dsys_cache_free(m->cache);
  if (m->kind == K_GW) gwreg_for_debug = NULL;
  m->r = NULL;
  m->st = NULL;
  m->q = NULL;
  m->cache = NULL;
  m->regsvc = NULL;
  m->asvc = NULL;
  m->dsvc = NULL;
  m->csvc = NULL;
  m->gw = NULL;
  m->fd = NULL;
}

/* The heap in use (large blocks are mmapped: hblkhd), without the
 * simulated disks' files (not the processes' memory). */
static size_t heap_in_use(void) {
  struct mallinfo2 mi = mallinfo2();
  size_t used = mi.uordblks + mi.hblkhd, disk = sim_disk_bytes();
  return used > disk ? used - disk : 0;
}

/* ---- crash and restart ---- */

static int crash_busy; /* one crash (and its restart) at a time */

typedef struct crash_job {
  member *victims[NMEMBERS];
  int n, power_disk;
  int64_t until;
} crash_job;

static void *kill_main(void *arg) {
  member_stop(arg, 1);
  return NULL;
}

static void *crash_main(void *arg) {
  crash_job *c = arg;
  /* The instant of the crash: every message to or from the victims is
   * lost from now on (those in flight too), their disk handles do nothing
   * and their file locks are gone; the unsynced writes of a disk that
   * lost power are gone. */
  for (int i = 0; i < c->n; i++) {
    sim_net_down(c->victims[i]->in.node, 1);
    sim_disk_process_crash(c->victims[i]->in.node);
    sim_trace("crash: %s killed (down until %.3f)", c->victims[i]->in.name, c->until / 1e9);
  }
  if (c->power_disk >= 0) sim_disk_power_loss(c->power_disk);
  /* What the processes held in memory goes with them: torn down side by
   * side (a stop waits for its node's bounded calls, lost from now on). */
  pthread_t th[NMEMBERS];
  for (int i = 0; i < c->n; i++) pthread_create(&th[i], NULL, kill_main, c->victims[i]);
  for (int i = 0; i < c->n; i++) pthread_join(th[i], NULL);
  int64_t now = sim_now_ns();
  if (c->until > now) usleep((useconds_t)((c->until - now) / 1000));
  for (int i = 0; i < c->n; i++) {
    member_boot(c->victims[i]);
    sim_trace("restart: %s up again (boot %d)", c->victims[i]->in.name, c->victims[i]->boots);
  }
  free(c);
  crash_busy = 0;
  return NULL;
}

/* The fault driver's crash: a process crash of the node (its disk's page
 * cache survives), or one time in four a power loss of its host (every
 * process of the host crashes and its disk loses what was not synced). */
static int on_crash(int node, int64_t down_ns, void *ud) {
  (void)ud;
  if (crash_busy) return -1;
  member *m = NULL;
  for (int i = 0; i < nmembers; i++)
    if (M[i].in.node == node) m = &M[i];
  if (!m || !m->up) return -1;
  crash_job *c = calloc(1, sizeof *c);
  c->power_disk = -1;
  c->until = sim_now_ns() + down_ns;
  int power = (on_db_host(m) || m->kind == K_REG) && sim_chance(0.25);
  if (power && on_db_host(m)) {
    for (int i = 0; i < nmembers; i++)
      if (on_db_host(&M[i])) c->victims[c->n++] = &M[i];
    c->power_disk = sim_disk_id("db");
  } else {
    c->victims[c->n++] = m;
    if (power) c->power_disk = sim_disk_id("registry");
  }
  if (power) sim_trace("crash: power loss of the host of %s", m->in.name);
  crash_busy = 1;
  pthread_t th;
  int old = sim_node_enter(0);
  pthread_create(&th, NULL, crash_main, c);
  pthread_detach(th);
  sim_node_enter(old);
  return 0;
}

void scen_deploy(const sim_config *cfg, sim_result *res) {
  unsigned mask = 0;
  sim_faults_parse(cfg->faults, &mask);
  plant_retry_post = cfg->plant && !strcmp(cfg->plant, "retry-post");
  plant_stale_cache = cfg->plant && !strcmp(cfg->plant, "stale-cache");
  plant_sync_normal = cfg->plant && !strcmp(cfg->plant, "sync-normal");
  plant_no_fencing = cfg->plant && !strcmp(cfg->plant, "no-fencing");
  plant_ignore_health = cfg->plant && !strcmp(cfg->plant, "ignore-health");
  sim_net_start(mask);
  sim_disk_install();
  /* The clock's timer thread belongs to node 0 (it serves every node). */
  uint64_t tid;
  dsys_timer_add(dsys_clock_real(), 1000000000, (dsys_timer_fn)free, NULL, &tid);
  dsys_timer_cancel(dsys_clock_real(), tid);

  nmembers = 0;
  M[nmembers++] = (member){.kind = K_REG};
  for (int i = 0; i < 3; i++) {
    M[nmembers++] = (member){.kind = K_AUTH, .idx = i};
    M[nmembers++] = (member){.kind = K_DATA, .idx = i};
    M[nmembers++] = (member){.kind = K_COMP, .idx = i};
  }
  M[nmembers++] = (member){.kind = K_GW};
  M[nmembers++] = (member){.kind = K_FD};
  member *regm = &M[0], *gwm = &M[nmembers - 2];
  for (int i = 0; i < nmembers; i++) member_boot(&M[i]);

  /* Clients. */
  static client cls[NCLIENTS];
  char name[32];
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
  for (int i = 0; i < nmembers; i++) targets[nt++] = M[i].in.node;
  /* The gateway's health checks (500 ms after the last one ended, 1 s
   * timeout, 3 failures) take an unreachable instance out within about
   * 4.5 s of its last answer: 6 s allowed, counted from the last health
   * answer that reached the gateway in time. */
  static const char *const groups[] = {NULL, "auth", "data", "compute", NULL, NULL};
  for (int i = 0; i < nmembers; i++)
    if (groups[M[i].kind]) sim_net_group(M[i].in.node, groups[M[i].kind]);
  sim_net_watch(gwm->in.node, 6000000000LL, HEALTH_TIMEOUT_MS * 1000000LL, gw_other_usable, NULL);
  sim_faults_on_crash(on_crash, NULL);
  /* A client's step is at most 0.2 s and two 4 s calls; a minute of
   * slack besides. (An hour, while seed 17's join of a finished client
   * waited for another thread that had got its pthread_t: fixed in
   * sched.c.) */
  sim_faults_limit((cfg->steps * 8200LL + 60000) * 1000000);
  if (mask) sim_faults_start(targets, nt);
  /* Memory: the heap in use once the deployment runs, and after the
   * clients' run (before the state is freed); the simulated disks' files
   * are not the processes' memory and are left out. */
  size_t heap0 = heap_in_use();
  run_clients(cls, client_main);
  if (mask) sim_faults_stop();
  /* a crash under way ends with its restart */
  while (crash_busy) usleep(10000);
  size_t heap1 = heap_in_use();
  uint64_t syncs = 0, losses = 0;
  sim_disk_counts(&syncs, &losses);
  sim_trace("clients done: %llu crashes, %llu power losses, %llu disk syncs",
            (unsigned long long)sim_net_crashes(), (unsigned long long)losses,
            (unsigned long long)syncs);
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
  while (!converged(regm->r, gwm->gw, why, sizeof why)) {
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
    for (int t = 0; t < cls[i].ntoks; t++) free(cls[i].toks[t].tok);
    dsys_client_free(cls[i].c);
    res->requests += cls[i].res.requests;
    res->answered += cls[i].res.answered;
    res->timeouts += cls[i].res.timeouts;
    res->checks += cls[i].res.checks;
  }
  for (int i = nmembers - 1; i >= 0; i--) member_stop(&M[i], 0);
}
