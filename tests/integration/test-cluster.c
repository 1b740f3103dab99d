/*
 * The deployment under failure (issue 6): dsys-cluster runs registry, 3 auth,
 * 3 data, 3 compute, gateway (and fault detector when built) on port-0
 * ports; under a bounded load of GETs through the gateway we SIGKILL and
 * SIGTERM data instances and SIGKILL the registry, and require zero failed
 * requests; a restarted instance must get traffic again; a compute instance
 * killed in the middle of a job must not lose it. Every process is started
 * by the supervisor and checked gone (by PID) at the end.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "core/json.h"
#include "tap.h"

static char tmp[256], gw[128];
static pid_t sup;
static atomic_int stop_load, phase;
static atomic_int ok_n[8], fail_n[8];

static int64_t now_ms(void) { return dsys_clock_now_ms(dsys_clock_real()); }

typedef struct pinfo {
  char name[32], url[128];
  int pid;
  char state[16];
} pinfo;

static int read_state(pinfo *out, int max) {
  char path[300];
  snprintf(path, sizeof path, "%s/cluster.state", tmp);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[512];
  int n = 0, restarts;
  if (!fgets(line, sizeof line, f)) {
    fclose(f);
    return 0;
  }
  while (n < max && fgets(line, sizeof line, f))
    if (sscanf(line, "%31s %127s %d %d %15s", out[n].name, out[n].url, &out[n].pid, &restarts,
               out[n].state) == 5)
      n++;
  fclose(f);
  return n;
}

static pinfo *find(pinfo *p, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (!strcmp(p[i].name, name)) return &p[i];
  return NULL;
}

static void *load(void *arg) {
  dsys_client *c;
  dsys_client_new(&c, NULL);
  int i = (int)(intptr_t)arg;
  while (!atomic_load(&stop_load)) {
    char path[64];
    snprintf(path, sizeof path, "/api/data/data-%d", 1 + (i++ % 10));
    dsys_call call = {.size = sizeof call, .url = gw, .path = path, .timeout_ms = 10000};
    dsys_reply *r = NULL;
    int rc = dsys_client_do(c, &call, &r);
    int ph = atomic_load(&phase);
    if (!rc && dsys_reply_status(r) == 200) atomic_fetch_add(&ok_n[ph], 1);
    else {
      if (atomic_fetch_add(&fail_n[ph], 1) < 3)
        tap_diag("phase %d: failed GET %s: %s status %d %s", ph, path, dsys_strerror(rc),
                 dsys_reply_status(r), r ? (const char *)dsys_reply_body(r, NULL) : "");
    }
    dsys_reply_free(r);
  }
  dsys_client_free(c);
  return NULL;
}

static void run_phase(int ph, int64_t ms) {
  atomic_store(&phase, ph);
  usleep((useconds_t)ms * 1000);
}

static json_object *get_json(dsys_client *c, const char *url, const char *path, const char *body) {
  dsys_call call = {.size = sizeof call, .url = url, .path = path, .timeout_ms = 5000,
                    .method = body ? "POST" : "GET", .body = body, .body_len = body ? strlen(body) : 0};
  dsys_reply *r = NULL;
  json_object *o = NULL;
  if (!dsys_client_do(c, &call, &r)) {
    size_t n;
    const char *b = dsys_reply_body(r, &n);
    dsysi_json_parse(b, n, &o);
  }
  dsys_reply_free(r);
  return o;
}

static int64_t backend_total(dsys_client *c, const char *url) {
  json_object *o = get_json(c, gw, "/api/metrics", NULL), *m, *e, *t;
  int64_t v = -1;
  if (o && json_object_object_get_ex(o, "metrics", &m) && json_object_object_get_ex(m, url, &e) &&
      json_object_object_get_ex(e, "total", &t))
    v = json_object_get_int64(t);
  json_object_put(o);
  return v;
}

int main(void) {
  const char *bld = getenv("top_builddir");
  if (!bld) bld = ".";
  snprintf(tmp, sizeof tmp, "/tmp/dsys-cluster-test-XXXXXX");
  if (!mkdtemp(tmp)) tap_bail("mkdtemp");
  char conf[300], bin[512];
  snprintf(conf, sizeof conf, "%s/cluster.conf", tmp);
  FILE *f = fopen(conf, "w");
  fprintf(f, "# every port picked at start\nregistry.port = 0\nauth.ports = 0,0,0\n"
             "data.ports = 0,0,0\ncompute.ports = 0,0,0\ngateway.port = 0\nfaultd.port = 0\n");
  fclose(f);
  snprintf(bin, sizeof bin, "%s/daemons/dsys-cluster", bld);
  int pfd[2];
  if (pipe(pfd)) tap_bail("pipe");
  /* a short job lease so the killed compute instance's job comes back soon */
  setenv("DSYS_JOB_LEASE_MS", "1500", 1);
  sup = fork();
  if (sup == 0) {
    dup2(pfd[1], 1);
    close(pfd[0]);
    execl(bin, bin, "--config", conf, "--data-dir", tmp, (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  FILE *out = fdopen(pfd[0], "r");
  char line[512];
  int healthy = 0;
  int64_t t0 = now_ms();
  while (fgets(line, sizeof line, out)) {
    if (strstr(line, "processes healthy")) healthy = 1;
    if (sscanf(line, "gateway: %127s", gw) == 1) break;
  }
  ok(healthy && gw[0], "dsys-cluster: every process healthy, gateway %s (%lld ms)", gw, (long long)(now_ms() - t0));
  if (!gw[0]) {
    kill(sup, SIGKILL);
    tap_bail("cluster did not start; see %s/logs", tmp);
  }
  fcntl(pfd[0], F_SETFL, O_NONBLOCK);
  pinfo ps[16];
  int np = read_state(ps, 16);
  ok(np >= 11, "state file lists %d processes", np);
  int all_pids[64], nall = 0; /* every PID seen, restarts included */
  for (int i = 0; i < np; i++) all_pids[nall++] = ps[i].pid;
  dsys_client *c;
  dsys_client_new(&c, NULL);

  pthread_t th[2];
  for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, load, (void *)(intptr_t)(i * 5));
  run_phase(0, 1000);
  ok(atomic_load(&ok_n[0]) > 50 && atomic_load(&fail_n[0]) == 0, "baseline: %d GETs, %d failed",
     atomic_load(&ok_n[0]), atomic_load(&fail_n[0]));

  pinfo *d2 = find(ps, np, "data-2");
  kill(d2->pid, SIGKILL);
  run_phase(1, 2000);
  is_int(atomic_load(&fail_n[1]), 0, "SIGKILL data-2 under load: zero failed (%d ok)", atomic_load(&ok_n[1]));

  /* The supervisor restarts it; the gateway must send it traffic soon. */
  int oldpid = d2->pid;
  char d2url[128];
  snprintf(d2url, sizeof d2url, "%s", d2->url);
  int64_t restarted_at = 0;
  for (int i = 0; i < 300 && !restarted_at; i++) {
    pinfo cur[16];
    int n = read_state(cur, 16);
    pinfo *x = find(cur, n, "data-2");
    if (x && x->pid != oldpid && x->pid > 0 && !strcmp(x->state, "healthy")) {
      restarted_at = now_ms();
      all_pids[nall++] = x->pid;
    } else {
      usleep(50000);
    }
  }
  ok(restarted_at, "supervisor restarted data-2");
  /* Its counters start over when the gateway takes it back: track the
   * lowest total seen and wait for it to grow. */
  int64_t base = backend_total(c, d2url), seen_at = 0;
  while (restarted_at && now_ms() - restarted_at < 10000) {
    int64_t t = backend_total(c, d2url);
    if (t >= 0 && (base < 0 || t < base)) base = t;
    else if (t > base) {
      seen_at = now_ms();
      break;
    }
    usleep(50000);
  }
  ok(seen_at && seen_at - restarted_at <= 3000, "restarted data-2 receives traffic again %lld ms after it is healthy",
     (long long)(seen_at ? seen_at - restarted_at : -1));

  pinfo *d1 = find(ps, np, "data-1");
  kill(d1->pid, SIGTERM);
  run_phase(2, 2000);
  is_int(atomic_load(&fail_n[2]), 0, "SIGTERM data-1 under load: zero failed (%d ok)", atomic_load(&ok_n[2]));

  pinfo *reg = find(ps, np, "registry");
  kill(reg->pid, SIGKILL);
  run_phase(3, 2000);
  is_int(atomic_load(&fail_n[3]), 0, "SIGKILL the registry under load: zero failed (%d ok)", atomic_load(&ok_n[3]));
  atomic_store(&stop_load, 1);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);

  /* A compute instance dies in the middle of a job. */
  json_object *sub = get_json(c, gw, "/api/compute/job",
                              "{\"type\":\"factorial\",\"data\":{\"operands\":[10],\"delayMs\":4000}}");
  const char *jid = dsysi_json_str(sub, "jobId");
  ok(jid != NULL, "job submitted through the gateway");
  char jpath[96];
  snprintf(jpath, sizeof jpath, "/api/compute/job/%s", jid ? jid : "0");
  char victim[32] = "";
  for (int i = 0; i < 100 && !victim[0]; i++) {
    json_object *j = get_json(c, gw, jpath, NULL);
    const char *st = dsysi_json_str(j, "status"), *w = dsysi_json_str(j, "worker");
    if (st && !strcmp(st, "active") && w) snprintf(victim, sizeof victim, "%s", w);
    json_object_put(j);
    if (!victim[0]) usleep(50000);
  }
  np = read_state(ps, 16);
  pinfo *vp = victim[0] ? find(ps, np, victim) : NULL;
  ok(vp != NULL, "job is running on %s", victim[0] ? victim : "(none)");
  if (vp) kill(vp->pid, SIGKILL);
  json_object *done = NULL;
  for (int i = 0; i < 300; i++) {
    json_object *j = get_json(c, gw, jpath, NULL);
    const char *st = dsysi_json_str(j, "status");
    if (st && (!strcmp(st, "completed") || !strcmp(st, "failed"))) {
      done = j;
      break;
    }
    json_object_put(j);
    usleep(100000);
  }
  is_str(done ? dsysi_json_str(done, "status") : NULL, "completed", "the job completed after its instance was killed");
  json_object *res = NULL, *val = NULL, *att = NULL;
  int attempts = done && json_object_object_get_ex(done, "attempts", &att) ? json_object_get_int(att) : -1;
  ok(done && json_object_object_get_ex(done, "result", &res) && json_object_object_get_ex(res, "result", &val) &&
         json_object_get_int64(val) == 3628800, "with the right result (10! = 3628800)");
  is_int(attempts, 2, "claimed exactly twice: the dead instance's attempt and the one that completed");
  /* (The instance that completes it may be the restarted process with the
   * victim's name: the supervisor restarts it within a second.) */
  const char *w2 = done ? dsysi_json_str(done, "worker") : NULL;
  tap_diag("completed by %s", w2 ? w2 : "?");
  json_object_put(done);
  json_object_put(sub);

  /* Stop: SIGTERM the supervisor; everything it started must be gone. */
  np = read_state(ps, 16);
  for (int i = 0; i < np; i++) all_pids[nall++] = ps[i].pid;
  kill(sup, SIGTERM);
  int st = -1;
  for (int i = 0; i < 300; i++) {
    if (waitpid(sup, &st, WNOHANG) == sup) break;
    usleep(50000);
  }
  ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "dsys-cluster exits 0 on SIGTERM");
  int orphans = 0;
  for (int i = 0; i < nall; i++)
    if (all_pids[i] > 0 && kill(all_pids[i], 0) == 0) {
      orphans++;
      kill(all_pids[i], SIGKILL);
    }
  is_int(orphans, 0, "no process left behind");
  dsys_client_free(c);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  if (system(cmd)) tap_diag("could not remove %s", tmp);
  return tap_done();
}
