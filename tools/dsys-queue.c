/*
 * dsys-queue: look at and repair a job queue (the database the daemons
 * share, --db). See docs/reference/queue.md, "dsys-queue".
 *
 *   dsys-queue [--queue-url URL] [--json] queues
 *   dsys-queue show JOB-ID
 *   dsys-queue dead [--queue Q] [--limit N]
 *   dsys-queue replay JOB-ID... | --all-dead [--queue Q]
 *   dsys-queue purge-dead [--queue Q] [--older-than DURATION]
 *   dsys-queue pause QUEUE | resume QUEUE
 *
 * Exit status: 0 done; 1 an error (no database, no such job, a job that
 * cannot be replayed, a storage error: one line with the DSYS_E name);
 * 2 bad usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <distsys/distsys.h>

#include "cli-util.h"

#define PROG "dsys-queue"

static const dsys_option opts[] = {
    {"queue-url", "DSYS_QUEUE_URL", DSYS_OPT_STRING, "sqlite://data/distsys.sqlite",
     "the queue database: sqlite:///ABSOLUTE/PATH or sqlite://RELATIVE/PATH (the daemons' --db, "
     "default data/distsys.sqlite); it must exist"},
    {"queue", "DSYS_QUEUE_NAME", DSYS_OPT_STRING, NULL,
     "dead, replay --all-dead, purge-dead: only this queue (default: every queue)"},
    {"limit", "DSYS_QUEUE_LIMIT", DSYS_OPT_INT, "100", "dead: list at most this many jobs (1 to 1000000)"},
    {"all-dead", "DSYS_QUEUE_ALL_DEAD", DSYS_OPT_BOOL, "false",
     "replay: every dead job (of --queue) instead of the given ids"},
    {"older-than", "DSYS_QUEUE_OLDER_THAN", DSYS_OPT_DURATION, "0",
     "purge-dead: only jobs dead for at least this long (0: every dead job)"},
    {"json", "DSYS_QUEUE_JSON", DSYS_OPT_BOOL, "false", "print JSON instead of text"},
    CLI_COMMON_OPTIONS,
};
#define NOPTS (sizeof opts / sizeof opts[0])

static const char summary[] =
    "Look at and repair a job queue. Commands:\n"
    "  queues                     the queues, their jobs by state, paused or not\n"
    "  show JOB-ID                one job: state, attempts, payload, result or error, times\n"
    "  dead [--queue Q] [--limit N]   the dead (failed) jobs, oldest first\n"
    "  replay JOB-ID... | --all-dead [--queue Q]\n"
    "                             dead (or canceled) jobs back to waiting, attempts reset to 0\n"
    "  purge-dead [--queue Q] [--older-than DURATION]   delete dead jobs\n"
    "  pause QUEUE                submits still accepted, nothing handed to workers\n"
    "  resume QUEUE               hand out its jobs again\n"
    "Every command takes --json.";

static int json_out;

static int usage(const char *why) {
  fprintf(stderr, PROG ": %s (try --help)\n", why);
  return 2;
}

/* ---- output ---- */

static const char *state_word(int s) { return s == DSYS_JOB_FAILED ? "dead" : dsys_job_state_name(s); }

static void json_job(const dsys_job *j) {
  printf("{\"id\":%" PRId64 ",\"queue\":", j->id);
  cli_json_str(stdout, j->queue);
  printf(",\"state\":\"%s\",\"priority\":%d,\"attempts\":%d,\"maxAttempts\":%d,\"token\":%" PRId64
         ",\"worker\":",
         state_word(j->state), j->priority, j->attempts, j->max_attempts, j->token);
  cli_json_str(stdout, j->worker);
  printf(",\"leaseUntil\":%" PRId64 ",\"progress\":%d,\"progressMessage\":", j->lease_until, j->progress);
  cli_json_str(stdout, j->progress_msg);
  /* payload and result are JSON texts (validated on the way in) */
  printf(",\"payload\":%s,\"result\":%s,\"error\":", j->payload ? j->payload : "null",
         j->result ? j->result : "null");
  cli_json_str(stdout, j->error);
  printf(",\"idempotencyKey\":");
  cli_json_str(stdout, j->idempotency_key);
  printf(",\"createdAt\":%" PRId64 ",\"runAt\":%" PRId64 ",\"finishedAt\":%" PRId64 "}", j->created_at,
         j->run_at, j->finished_at);
}

static void text_job(const dsys_job *j) {
  char t[32];
  printf("id:              %" PRId64 "\n", j->id);
  printf("queue:           %s\n", j->queue);
  printf("state:           %s\n", state_word(j->state));
  printf("attempts:        %d of %d\n", j->attempts, j->max_attempts);
  printf("priority:        %d\n", j->priority);
  printf("worker:          %s\n", j->worker && *j->worker ? j->worker : "-");
  if (j->state == DSYS_JOB_ACTIVE) {
    printf("lease until:     %s\n", cli_time(j->lease_until, t));
    printf("progress:        %d%%%s%s\n", j->progress, j->progress_msg ? " " : "",
           j->progress_msg ? j->progress_msg : "");
  }
  printf("created:         %s\n", cli_time(j->created_at, t));
  printf("run at:          %s\n", cli_time(j->run_at, t));
  printf("finished:        %s\n", cli_time(j->finished_at, t));
  if (j->idempotency_key) printf("idempotency key: %s\n", j->idempotency_key);
  printf("payload:         %s\n", j->payload);
  if (j->result) printf("result:          %s\n", j->result);
  if (j->error) printf("error:           %s\n", j->error);
}

/* ---- commands ---- */

static int cmd_queues(dsys_queue *q) {
  dsys_queue_info *v = NULL;
  size_t n = 0;
  int rc = dsys_queue_list_queues(q, &v, &n);
  if (rc) return cli_error(PROG, "listing the queues", rc);
  char t[32];
  if (json_out) {
    printf("{\"queues\":[");
    for (size_t i = 0; i < n; i++) {
      const dsys_job_counts *c = &v[i].counts;
      printf("%s{\"name\":", i ? "," : "");
      cli_json_str(stdout, v[i].name);
      printf(",\"paused\":%s,\"pausedAt\":%" PRId64 ",\"counts\":{\"waiting\":%" PRId64
             ",\"delayed\":%" PRId64 ",\"active\":%" PRId64 ",\"completed\":%" PRId64 ",\"dead\":%" PRId64
             ",\"canceled\":%" PRId64 "}}",
             v[i].paused ? "true" : "false", v[i].paused_at, c->waiting, c->delayed, c->active,
             c->completed, c->failed, c->canceled);
    }
    printf("]}\n");
  } else if (!n) {
    printf("no queues (no jobs, nothing paused)\n");
  } else {
    int w = 5;
    for (size_t i = 0; i < n; i++)
      if ((int)strlen(v[i].name) > w) w = (int)strlen(v[i].name);
    printf("%-*s %9s %9s %9s %10s %9s %9s  %s\n", w, "QUEUE", "WAITING", "DELAYED", "ACTIVE", "COMPLETED",
           "DEAD", "CANCELED", "STATE");
    for (size_t i = 0; i < n; i++) {
      const dsys_job_counts *c = &v[i].counts;
      printf("%-*s %9" PRId64 " %9" PRId64 " %9" PRId64 " %10" PRId64 " %9" PRId64 " %9" PRId64 "  %s%s\n", w,
             v[i].name, c->waiting, c->delayed, c->active, c->completed, c->failed, c->canceled,
             v[i].paused ? "paused since " : "running", v[i].paused ? cli_time(v[i].paused_at, t) : "");
    }
  }
  dsys_free(v);
  return 0;
}

/* A job id: a positive decimal number. */
static int parse_id(const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (!*s || *end || errno || v <= 0 || *s == '+' || *s == ' ') return -1;
  *out = v;
  return 0;
}

static int cmd_show(dsys_queue *q, int64_t id) {
  dsys_job *j = NULL;
  int rc = dsys_queue_get(q, id, &j);
  if (rc) {
    char what[64];
    snprintf(what, sizeof what, "job %" PRId64, id);
    return cli_error(PROG, what, rc);
  }
  if (json_out) {
    json_job(j);
    printf("\n");
  } else {
    text_job(j);
  }
  dsys_job_free(j);
  return 0;
}

static int cmd_dead(dsys_queue *q, const char *queue, int64_t limit) {
  int64_t after = 0, shown = 0;
  int first = 1, rc = 0;
  char t[32];
  if (json_out) printf("{\"jobs\":[");
  while (shown < limit) {
    dsys_job **v = NULL;
    size_t n = 0;
    size_t page = limit - shown > 1000 ? 1000 : (size_t)(limit - shown);
    if ((rc = dsys_queue_list_dead(q, queue, after, page, &v, &n))) break;
    for (size_t i = 0; i < n; i++) {
      const dsys_job *j = v[i];
      if (json_out) {
        if (!first) printf(",");
        json_job(j);
      } else {
        if (first) printf("%-10s %-20s %-8s %-24s %s\n", "ID", "QUEUE", "ATTEMPTS", "DEAD SINCE", "ERROR");
        printf("%-10" PRId64 " %-20s %-8d %-24s %s\n", j->id, j->queue, j->attempts,
               cli_time(j->finished_at, t), j->error ? j->error : "");
      }
      first = 0;
      after = j->id;
    }
    shown += (int64_t)n;
    dsys_job_list_free(v, n);
    if (n < page) break;
  }
  if (rc) {
    if (json_out) printf("]}\n");
    return cli_error(PROG, "listing the dead jobs", rc);
  }
  dsys_job_counts c;
  int64_t total = dsys_queue_counts(q, queue, &c) ? shown : c.failed;
  if (json_out) {
    printf("],\"total\":%" PRId64 "}\n", total);
  } else {
    if (first) printf("no dead jobs%s%s\n", queue ? " in " : "", queue ? queue : "");
    else if (total > shown)
      printf("(%" PRId64 " of %" PRId64 " dead jobs shown; raise --limit)\n", shown, total);
  }
  return 0;
}

/* Why a replay of id failed, for the messages. */
static void replay_why(dsys_queue *q, int64_t id, int rc, char *what, size_t len) {
  int st = 0;
  if (rc == DSYS_ESTATE) {
    dsys_job *j = NULL;
    if (!dsys_queue_get(q, id, &j)) st = j->state;
    dsys_job_free(j);
  }
  if (st) snprintf(what, len, "job %" PRId64 " is %s, not dead", id, state_word(st));
  else snprintf(what, len, "job %" PRId64, id);
}

static int cmd_replay(dsys_queue *q, const dsys_config *cfg, int all, const char *queue) {
  if (all) {
    /* page through the dead jobs; a replayed job leaves the dead list */
    int64_t after = 0, nout = 0;
    int rc = 0;
    if (json_out) printf("{\"replayed\":[");
    for (;;) {
      dsys_job **v = NULL;
      size_t n = 0;
      if ((rc = dsys_queue_list_dead(q, queue, after, 1000, &v, &n))) break;
      for (size_t i = 0; i < n; i++) {
        after = v[i]->id;
        if (dsys_queue_replay(q, v[i]->id)) continue; /* replayed meanwhile by someone else */
        if (json_out) printf("%s%" PRId64, nout ? "," : "", v[i]->id);
        nout++;
      }
      dsys_job_list_free(v, n);
      if (n < 1000) break;
    }
    if (json_out) printf("],\"errors\":[]}\n");
    if (rc) return cli_error(PROG, "listing the dead jobs", rc);
    if (!json_out)
      printf("replayed %" PRId64 " dead job%s%s%s\n", nout, nout == 1 ? "" : "s", queue ? " of " : "",
             queue ? queue : "");
    return 0;
  }
  /* the ids were checked by main */
  size_t np = dsys_config_npositional(cfg);
  int64_t *ids = calloc(np, sizeof *ids);
  int *rcs = calloc(np, sizeof *rcs);
  if (!ids || !rcs) {
    free(ids);
    free(rcs);
    return cli_error(PROG, NULL, DSYS_ENOMEM);
  }
  int nerr = 0, nout = 0;
  char what[128];
  for (size_t i = 1; i < np; i++) {
    parse_id(dsys_config_positional(cfg, i), &ids[i]);
    if ((rcs[i] = dsys_queue_replay(q, ids[i]))) {
      replay_why(q, ids[i], rcs[i], what, sizeof what);
      cli_error(PROG, what, rcs[i]);
      nerr++;
    } else if (!json_out) {
      printf("replayed job %" PRId64 "\n", ids[i]);
    }
  }
  if (json_out) {
    printf("{\"replayed\":[");
    for (size_t i = 1; i < np; i++)
      if (!rcs[i]) printf("%s%" PRId64, nout++ ? "," : "", ids[i]);
    printf("],\"errors\":[");
    int k = 0;
    for (size_t i = 1; i < np; i++)
      if (rcs[i]) {
        replay_why(q, ids[i], rcs[i], what, sizeof what);
        printf("%s{\"id\":%" PRId64 ",\"code\":\"%s\",\"error\":", k++ ? "," : "", ids[i],
               dsys_err_name(rcs[i]));
        cli_json_str(stdout, what);
        printf("}");
      }
    printf("]}\n");
  }
  free(ids);
  free(rcs);
  return nerr ? 1 : 0;
}

static int cmd_purge_dead(dsys_queue *q, const char *queue, int64_t older) {
  int64_t removed = 0;
  int rc = dsys_queue_purge_dead(q, queue, older, &removed);
  if (rc) return cli_error(PROG, "purging dead jobs", rc);
  if (json_out) printf("{\"purged\":%" PRId64 "}\n", removed);
  else printf("purged %" PRId64 " dead job%s\n", removed, removed == 1 ? "" : "s");
  return 0;
}

static int cmd_pause(dsys_queue *q, const char *queue, int pause) {
  int rc = pause ? dsys_queue_pause(q, queue) : dsys_queue_resume(q, queue);
  if (rc) {
    char what[300];
    snprintf(what, sizeof what, "%s %s", pause ? "pausing" : "resuming", queue);
    return cli_error(PROG, what, rc);
  }
  if (json_out) {
    printf("{\"queue\":");
    cli_json_str(stdout, queue);
    printf(",\"paused\":%s}\n", pause ? "true" : "false");
  } else {
    printf("%s queue %s\n", pause ? "paused" : "resumed", queue);
  }
  return 0;
}

/* ---- main ---- */

typedef struct command {
  const char *name;
  size_t min_args, max_args; /* positionals after the command */
  const char *flags;         /* its own flags, space-separated */
  const char *args;          /* what the arguments are, for messages */
} command;

static const command commands[] = {
    {"queues", 0, 0, "", ""},
    {"show", 1, 1, "", "a job id"},
    {"dead", 0, 0, "queue limit", ""},
    {"replay", 0, (size_t)-1, "queue all-dead", "job ids"},
    {"purge-dead", 0, 0, "queue older-than", ""},
    {"pause", 1, 1, "", "a queue name"},
    {"resume", 1, 1, "", "a queue name"},
};

static int has_word(const char *list, const char *w) {
  size_t l = strlen(w);
  for (const char *p = list; (p = strstr(p, w)); p += l)
    if ((p == list || p[-1] == ' ') && (p[l] == ' ' || !p[l])) return 1;
  return 0;
}

int main(int argc, char **argv) {
  dsys_config *cfg = NULL;
  int st = dsys_program_start(&cfg, opts, NOPTS, argc, argv, PROG " COMMAND [ARGS]", summary);
  if (st >= 0) return st;
  const char *name = dsys_config_npositional(cfg) ? dsys_config_positional(cfg, 0) : NULL;
  const command *cmd = NULL;
  for (size_t i = 0; name && i < sizeof commands / sizeof *commands; i++)
    if (!strcmp(name, commands[i].name)) cmd = &commands[i];
  char msg[512];
  st = -1;
  size_t nargs = dsys_config_npositional(cfg) ? dsys_config_npositional(cfg) - 1 : 0;
  int64_t limit = 0, older = 0, id = 0;
  const char *queue = dsys_config_get(cfg, "queue");
  int all = dsys_config_get_bool(cfg, "all-dead");
  json_out = dsys_config_get_bool(cfg, "json");
  if (!name) {
    st = usage("give a command: queues, show, dead, replay, purge-dead, pause or resume");
  } else if (!cmd) {
    snprintf(msg, sizeof msg,
             "unknown command '%s' (queues, show, dead, replay, purge-dead, pause or resume)", name);
    st = usage(msg);
  } else if (nargs > cmd->max_args) {
    st = dsys_program_positionals(cfg, PROG, 1 + cmd->max_args);
  } else if (nargs < cmd->min_args) {
    snprintf(msg, sizeof msg, "%s needs %s", name, cmd->args);
    st = usage(msg);
  }
  /* a flag of another command, given on the command line, is a mistake */
  static const char *const own[] = {"queue", "limit", "all-dead", "older-than"};
  for (size_t i = 0; st < 0 && i < sizeof own / sizeof *own; i++)
    if (cli_from_flag(cfg, own[i]) && !has_word(cmd->flags, own[i])) {
      snprintf(msg, sizeof msg, "--%s does not apply to %s", own[i], name);
      st = usage(msg);
    }
  if (st < 0 && queue && (!*queue || strlen(queue) > DSYS_QUEUE_MAX_NAME)) {
    snprintf(msg, sizeof msg, "--queue must be 1 to %d bytes", DSYS_QUEUE_MAX_NAME);
    st = usage(msg);
  }
  if (st < 0 && !strcmp(name, "dead")) {
    dsys_config_get_int(cfg, "limit", &limit);
    if (limit < 1 || limit > 1000000) {
      snprintf(msg, sizeof msg, "--limit must be 1 to 1000000, got '%s'", dsys_config_get(cfg, "limit"));
      st = usage(msg);
    }
  }
  if (st < 0 && !strcmp(name, "purge-dead")) dsys_config_get_duration_ms(cfg, "older-than", &older);
  if (st < 0 && !strcmp(name, "show") && parse_id(dsys_config_positional(cfg, 1), &id)) {
    snprintf(msg, sizeof msg, "bad job id '%s' (a positive number)", dsys_config_positional(cfg, 1));
    st = usage(msg);
  }
  if (st < 0 && !strcmp(name, "replay")) {
    if (all && nargs) st = usage("replay takes job ids or --all-dead, not both");
    else if (!all && !nargs) st = usage("replay needs job ids or --all-dead");
    else if (!all && cli_from_flag(cfg, "queue")) st = usage("--queue goes with replay --all-dead");
    for (size_t i = 1; st < 0 && i <= nargs; i++)
      if (parse_id(dsys_config_positional(cfg, i), &id)) {
        snprintf(msg, sizeof msg, "bad job id '%s' (a positive number)", dsys_config_positional(cfg, i));
        st = usage(msg);
      }
  }
  if (st < 0 && (!strcmp(name, "pause") || !strcmp(name, "resume"))) {
    const char *qn = dsys_config_positional(cfg, 1);
    if (!*qn || strlen(qn) > DSYS_QUEUE_MAX_NAME) {
      snprintf(msg, sizeof msg, "a queue name is 1 to %d bytes", DSYS_QUEUE_MAX_NAME);
      st = usage(msg);
    }
  }
  if (st >= 0) {
    dsys_config_free(cfg);
    return st;
  }

  /* the database must exist: an operator's typo must not create one */
  const char *url = dsys_config_get(cfg, "queue-url"), *path;
  struct stat sb;
  if (cli_sqlite_path(url, &path) && (!*path || stat(path, &sb))) {
    fprintf(stderr, PROG ": no queue database at '%s': %s: %s (give --queue-url or DSYS_QUEUE_URL)\n", *path ? path : url,
            dsys_err_name(DSYS_ENOTFOUND), *path ? strerror(errno) : "no path in the URL");
    dsys_config_free(cfg);
    return 1;
  }
  dsys_queue *q = NULL;
  int rc = dsys_queue_open(&q, url, NULL);
  if (rc) {
    snprintf(msg, sizeof msg, "cannot open the queue database %s", url);
    st = cli_error(PROG, msg, rc);
  } else if (!strcmp(name, "queues")) {
    st = cmd_queues(q);
  } else if (!strcmp(name, "show")) {
    st = cmd_show(q, id);
  } else if (!strcmp(name, "dead")) {
    st = cmd_dead(q, queue, limit);
  } else if (!strcmp(name, "replay")) {
    st = cmd_replay(q, cfg, all, queue);
  } else if (!strcmp(name, "purge-dead")) {
    st = cmd_purge_dead(q, queue, older);
  } else {
    st = cmd_pause(q, dsys_config_positional(cfg, 1), !strcmp(name, "pause"));
  }
  dsys_queue_close(q);
  dsys_config_free(cfg);
  return st;
}
