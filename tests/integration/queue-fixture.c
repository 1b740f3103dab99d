/*
 * Test helper for tests/integration/queue-cli.test: builds a queue database
 * with jobs in known states and checks it afterwards through the public
 * queue API, from a process of its own (as another worker would).
 *
 *   queue-fixture URL setup           prints "NAME ID..." lines (see below)
 *   queue-fixture URL get ID          prints "STATE ATTEMPTS" or exits 3
 *   queue-fixture URL claim QUEUE     claims one job (lease 60 s), prints its
 *                                     id and completes it; exits 3 if none
 *   queue-fixture URL work QUEUE MS   runs a dsys_worker on QUEUE for MS ms
 *                                     (polling every 50 ms), prints how many
 *                                     jobs it completed
 *   queue-fixture URL submit QUEUE    submits one job, prints its id
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>

static int die(const char *what, int rc) {
  fprintf(stderr, "queue-fixture: %s: %s\n", what, dsys_strerror(rc));
  return 1;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Submit one job to queue and make it dead (one attempt, failed). */
static int64_t dead_job(dsys_queue *q, const char *queue, const char *payload, const char *error) {
  dsys_submit_options o = {.size = sizeof o, .max_attempts = 1};
  int64_t id = 0;
  if (dsys_queue_submit(q, queue, payload, &o, &id, NULL)) return 0;
  dsys_job *j = NULL;
  const char *qs[] = {queue};
  if (dsys_queue_claim(q, qs, 1, "fixture", 60000, &j)) return 0;
  int dead = 0;
  int rc = dsys_queue_fail(q, j->id, j->token, error, &dead);
  dsys_job_free(j);
  return rc || !dead ? 0 : id;
}

static void print_ids(const char *name, const int64_t *ids, size_t n) {
  printf("%s", name);
  for (size_t i = 0; i < n; i++) printf(" %" PRId64, ids[i]);
  printf("\n");
}

/*
 * emails:  3 waiting, 2 completed, 2 dead 2 h ago ("old"), 1 dead now
 * reports: 1 dead 2 h ago, 1 dead now, 1 waiting
 * Printed: waiting, completed, old_dead, new_dead (each "NAME id...").
 */
static int setup(const char *url) {
  dsys_clock *old = NULL;
  dsys_clock_fake_new(&old, wall_ms() - 2 * 3600 * 1000);
  dsys_queue_options qo = {.size = sizeof qo, .clock = old};
  dsys_queue *q = NULL;
  int rc = dsys_queue_open(&q, url, &qo);
  if (rc) return die("open (2 h ago)", rc);
  int64_t od[3] = {dead_job(q, "emails", "{\"to\":\"a@example.com\"}", "smtp: 550 no such user"),
                   dead_job(q, "emails", "{\"to\":\"b@example.com\"}", "smtp: timeout"),
                   dead_job(q, "reports", "{\"day\":\"monday\"}", "disk full")};
  dsys_queue_close(q);
  dsys_clock_free(old);
  if ((rc = dsys_queue_open(&q, url, NULL))) return die("open", rc);
  int64_t wt[4] = {0}, done[2] = {0};
  const char *qe[] = {"emails"};
  for (int i = 0; i < 2; i++) {
    dsys_queue_submit(q, "emails", "{\"to\":\"ok@example.com\"}", NULL, &done[i], NULL);
    dsys_job *j = NULL;
    if ((rc = dsys_queue_claim(q, qe, 1, "fixture", 60000, &j))) return die("claim", rc);
    dsys_queue_complete(q, j->id, j->token, "{\"sent\":true}");
    dsys_job_free(j);
  }
  int64_t nd[2] = {dead_job(q, "emails", "{\"to\":\"c@example.com\"}", "smtp: \"quoted\" failure"),
                   dead_job(q, "reports", "{\"day\":\"tuesday\"}", "template missing")};
  for (int i = 0; i < 3; i++) dsys_queue_submit(q, "emails", "{\"to\":\"later@example.com\"}", NULL, &wt[i], NULL);
  dsys_queue_submit(q, "reports", "{\"day\":\"wednesday\"}", NULL, &wt[3], NULL);
  dsys_queue_close(q);
  for (int i = 0; i < 3; i++)
    if (!od[i]) return die("old dead jobs", DSYS_EINTERNAL);
  if (!nd[0] || !nd[1]) return die("new dead jobs", DSYS_EINTERNAL);
  print_ids("waiting", wt, 4);
  print_ids("completed", done, 2);
  print_ids("old_dead", od, 3);
  print_ids("new_dead", nd, 2);
  return 0;
}

static int done_count;
static int handler(dsys_job_ctx *ctx, const dsys_job *job, void *ud) {
  (void)ctx; (void)job; (void)ud;
  __atomic_add_fetch(&done_count, 1, __ATOMIC_SEQ_CST);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: queue-fixture URL setup|get|claim|work|submit ...\n");
    return 2;
  }
  const char *url = argv[1], *cmd = argv[2];
  if (!strcmp(cmd, "setup")) return setup(url);
  dsys_queue *q = NULL;
  int rc = dsys_queue_open(&q, url, NULL);
  if (rc) return die("open", rc);
  int st = 0;
  if (!strcmp(cmd, "get") && argc == 4) {
    dsys_job *j = NULL;
    rc = dsys_queue_get(q, strtoll(argv[3], NULL, 10), &j);
    if (rc == DSYS_ENOTFOUND) st = 3;
    else if (rc) st = die("get", rc);
    else printf("%s %d\n", dsys_job_state_name(j->state), j->attempts);
    dsys_job_free(j);
  } else if (!strcmp(cmd, "claim") && argc == 4) {
    const char *qs[] = {argv[3]};
    dsys_job *j = NULL;
    rc = dsys_queue_claim(q, qs, 1, "fixture-claim", 60000, &j);
    if (rc == DSYS_EAGAIN) st = 3;
    else if (rc) st = die("claim", rc);
    else {
      printf("%" PRId64 "\n", j->id);
      dsys_queue_complete(q, j->id, j->token, NULL);
    }
    dsys_job_free(j);
  } else if (!strcmp(cmd, "work") && argc == 5) {
    const char *qs[] = {argv[3]};
    dsys_worker_options wo = {.size = sizeof wo, .queues = qs, .nqueues = 1, .poll_ms = 50,
                              .handler = handler, .prefetch = -1};
    dsys_worker *w = NULL;
    if ((rc = dsys_worker_start(&w, q, &wo))) {
      st = die("worker", rc);
    } else {
      usleep((useconds_t)strtoll(argv[4], NULL, 10) * 1000);
      dsys_worker_stop(w, DSYS_WORKER_STOP_FINISH);
      printf("%d\n", __atomic_load_n(&done_count, __ATOMIC_SEQ_CST));
    }
  } else if (!strcmp(cmd, "submit") && argc == 4) {
    int64_t id = 0;
    if ((rc = dsys_queue_submit(q, argv[3], "{}", NULL, &id, NULL))) st = die("submit", rc);
    else printf("%" PRId64 "\n", id);
  } else {
    fprintf(stderr, "queue-fixture: bad command\n");
    st = 2;
  }
  dsys_queue_close(q);
  return st;
}
