/*
 * dsys-sim: run the deployment in one process on the deterministic
 * simulation (docs/reference/simulation.md).
 *
 *   dsys-sim --seed N [--steps M] [--faults LIST] [--scenario NAME]
 *            [--plant BUG] [--trace]
 *   dsys-sim --seeds A-B [-j J] [same options]   (a sweep: one child
 *            process per seed, the failures listed at the end)
 *
 * One run prints one line: "seed N ok hash H ..." (exit 0), or on a broken
 * invariant the seed, the failure and the trace (exit 1). The same seed
 * and options give the same hash.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "net.h"
#include "scenarios.h"
#include "sim.h"

static void usage(FILE *f) {
  fprintf(f,
          "Usage: dsys-sim --seed N [options]\n"
          "       dsys-sim --seeds A-B [-j J] [options]\n"
          "Run the deployment in one process on a simulated clock, scheduler and\n"
          "network; faults come from the seed, so a failure replays from its seed.\n\n"
          "  --seed N          the seed of one run\n"
          "  --seeds A-B       run seeds A..B, one child process each; print the\n"
          "                    failing seeds and the rate\n"
          "  -j J              children at a time in a sweep (default 2)\n"
          "  --steps M         operations per simulated client (default 40)\n"
          "  --scenario NAME   deploy (default: the reference deployment) or mini\n"
          "  --faults LIST     none, all (default), or a comma list of: latency,\n"
          "                    drop, partition, pause, skew, crash\n"
          "  --plant BUG       run with a planted bug (test only): see\n"
          "                    docs/reference/simulation.md\n"
          "  --trace           print every trace event as it happens (stderr)\n"
          "  --preempt P       per mille chance of a switch at each sync point\n"
          "                    (default 50)\n"
          "  -h, --help        this text\n");
}

typedef struct opts {
  sim_config cfg;
  const char *scenario;
  uint64_t first, last;
  int sweep, jobs, trace;
  unsigned preempt;
} opts;

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || *s == '-') return -1;
  *out = v;
  return 0;
}

static int run_one(const opts *o) {
  sim_options so = {.seed = o->cfg.seed, .trace_out = o->trace ? stderr : NULL,
                    .preempt_permille = o->preempt};
  int64_t t0 = sim_real_ns();
  sim_start(&so);
  dsys_log_set_level(DSYS_LOG_ERROR);
  sim_result res = {0};
  if (!strcmp(o->scenario, "mini")) scen_mini(&o->cfg, &res);
  else scen_deploy(&o->cfg, &res);
  sim_finishing();
  sim_stats st;
  sim_get_stats(&st);
  double wall = (sim_real_ns() - t0) / 1e9;
  printf("seed %llu ok hash %016llx requests %ld answered %ld timeouts %ld checks %ld "
         "heap+ %ld vtime %.3f wall %.3f switches %llu threads %llu\n",
         (unsigned long long)o->cfg.seed, (unsigned long long)sim_trace_hash(), res.requests,
         res.answered, res.timeouts, res.checks, res.heap_growth,
         (sim_now_ns() - 1000000000000LL) / 1e9, wall,
         (unsigned long long)st.switches, (unsigned long long)st.threads);
  fflush(stdout);
  /* The deployment was stopped and freed by the scenario; leave without
   * running exit handlers on other threads' behalf. */
  _exit(0);
}

typedef struct child {
  pid_t pid;
  uint64_t seed;
  FILE *out; /* the child's stdout and stderr (a temporary file) */
} child;

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* A sweep: each seed in a child process (exec of this program with
 * --seed), J at a time; each child's line is read back from its file. */
static int sweep(int argc, char **argv, const opts *o) {
  int64_t t0 = sim_real_ns();
  uint64_t next = o->first, nfail = 0, done = 0, span = o->last - o->first + 1;
  long requests = 0;
  child *kids = calloc(o->jobs, sizeof *kids);
  uint64_t *fails = calloc(span, sizeof *fails);
  char **why = calloc(span, sizeof *why);
  char **cargv = calloc(argc + 3, sizeof *cargv);
  if (!kids || !fails || !why || !cargv) return 2;
  int ca = 0, running = 0;
  cargv[ca++] = argv[0];
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--seeds") || !strcmp(argv[i], "-j")) {
      i++;
      continue;
    }
    cargv[ca++] = argv[i];
  }
  char seedbuf[32];
  cargv[ca++] = "--seed";
  cargv[ca++] = seedbuf;
  cargv[ca] = NULL;
  while (next <= o->last || running) {
    while (running < o->jobs && next <= o->last) {
      FILE *f = tmpfile();
      if (!f) return 2;
      snprintf(seedbuf, sizeof seedbuf, "%llu", (unsigned long long)next);
      fflush(stdout);
      pid_t pid = fork();
      if (pid < 0) return 2;
      if (pid == 0) {
        dup2(fileno(f), 1);
        dup2(fileno(f), 2);
        execv("/proc/self/exe", cargv);
        _exit(127);
      }
      for (int k = 0; k < o->jobs; k++)
        if (!kids[k].pid) {
          kids[k] = (child){pid, next, f};
          break;
        }
      running++;
      next++;
    }
    int status;
    pid_t pid = wait(&status);
    if (pid < 0) break;
    for (int k = 0; k < o->jobs; k++) {
      if (kids[k].pid != pid) continue;
      char line[1024], failure[1024] = "";
      rewind(kids[k].out);
      while (fgets(line, sizeof line, kids[k].out)) {
        char *r = strstr(line, " requests ");
        if (!strncmp(line, "seed ", 5) && r) requests += atol(r + 10);
        if (!failure[0] && !strncmp(line, "SIMULATION FAILED", 17)) {
          line[strcspn(line, "\n")] = 0;
          snprintf(failure, sizeof failure, "%s", line);
        }
      }
      fclose(kids[k].out);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fails[nfail] = kids[k].seed;
        why[kids[k].seed - o->first] = strdup(failure[0] ? failure : "exited without a report");
        nfail++;
      }
      done++;
      kids[k].pid = 0;
      running--;
    }
  }
  double wall = (sim_real_ns() - t0) / 1e9;
  qsort(fails, nfail, sizeof *fails, cmp_u64);
  for (uint64_t i = 0; i < nfail; i++)
    printf("failed: seed %llu: %s\n", (unsigned long long)fails[i], why[fails[i] - o->first]);
  printf("%llu seeds, %llu failed, first failure at seed %s, %.1f s, %.0f seeds/min, "
         "%ld simulated requests (%.0f/s)\n",
         (unsigned long long)done, (unsigned long long)nfail,
         nfail ? (snprintf(seedbuf, sizeof seedbuf, "%llu", (unsigned long long)fails[0]), seedbuf)
               : "none",
         wall, done / wall * 60, requests, requests / wall);
  return nfail ? 1 : 0;
}

int main(int argc, char **argv) {
  opts o = {.cfg = {.steps = 40, .faults = "all"}, .scenario = "deploy", .jobs = 2};
  int have_seed = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    uint64_t n;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--trace")) {
      o.trace = 1;
      continue;
    }
    if (!v) {
      fprintf(stderr, "dsys-sim: %s needs a value (--help)\n", a);
      return 2;
    }
    i++;
    if (!strcmp(a, "--seed")) {
      if (parse_u64(v, &o.cfg.seed)) goto bad;
      have_seed = 1;
    } else if (!strcmp(a, "--seeds")) {
      char *dash = strchr(v, '-');
      char buf[64];
      if (!dash || dash - v >= (long)sizeof buf) goto bad;
      snprintf(buf, sizeof buf, "%.*s", (int)(dash - v), v);
      if (parse_u64(buf, &o.first) || parse_u64(dash + 1, &o.last) || o.last < o.first ||
          o.last - o.first > 10000000)
        goto bad;
      o.sweep = 1;
    } else if (!strcmp(a, "-j")) {
      if (parse_u64(v, &n) || n < 1 || n > 64) goto bad;
      o.jobs = (int)n;
    } else if (!strcmp(a, "--steps")) {
      if (parse_u64(v, &n) || n < 1 || n > 1000000) goto bad;
      o.cfg.steps = (long)n;
    } else if (!strcmp(a, "--scenario")) {
      if (strcmp(v, "deploy") && strcmp(v, "mini")) goto bad;
      o.scenario = v;
    } else if (!strcmp(a, "--faults")) {
      if (sim_faults_parse(v, NULL)) goto bad;
      o.cfg.faults = v;
    } else if (!strcmp(a, "--plant")) {
      if (!scen_plant_known(v)) goto bad;
      o.cfg.plant = v;
    } else if (!strcmp(a, "--preempt")) {
      if (parse_u64(v, &n) || n > 1000) goto bad;
      o.preempt = (unsigned)n;
    } else {
      fprintf(stderr, "dsys-sim: unknown option %s (--help)\n", a);
      return 2;
    }
    continue;
  bad:
    fprintf(stderr, "dsys-sim: bad value for %s: '%s' (--help)\n", a, v);
    return 2;
  }
  if (o.sweep) return sweep(argc, argv, &o);
  if (!have_seed) {
    fprintf(stderr, "dsys-sim: --seed N or --seeds A-B is required (--help)\n");
    return 2;
  }
  return run_one(&o);
}
