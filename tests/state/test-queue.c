/*
 * Queue conformance suite (run on memory: and on a file) with a fake clock:
 * ordering, delays, leases and fencing, heartbeats, progress, retries with
 * backoff, dead letters and replay, cancel, counts, retention,
 * idempotency, bad input; then workers (lease renewal, stop modes).
 */
#include <pthread.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sqlite3.h>
#include <distsys/distsys.h>
#include "state/queue_int.h"
#include "pgserver.h"
#include "tap.h"

static const char *const QA[] = {"a"};

static int64_t submit(dsys_queue *q, const char *name, const char *payload,
                      int32_t prio, int64_t delay) {
  dsys_submit_options o = {.size = sizeof o, .priority = prio,
                           .delay_ms = delay};
  int64_t id = 0;
  int e = dsys_queue_submit(q, name, payload, &o, &id, NULL);
  if (e) tap_diag("submit failed: %s", dsys_strerror(e));
  return id;
}

static int64_t claim_id(dsys_queue *q, const char *const *names, size_t n,
                        int64_t *token) {
  dsys_job *j = NULL;
  if (dsys_queue_claim(q, names, n, "w1", 10000, &j)) return 0;
  int64_t id = j->id;
  if (token) *token = j->token;
  dsys_job_free(j);
  return id;
}

/* Runs through the backend ops table: every implementation of
 * dsys_queue_ops must pass it (url is only a label). */
static void conformance(const dsys_queue_ops *ops, const char *url) {
  tap_diag("queue conformance on %s:%s", ops->name, url);
  dsys_clock *clk = NULL;
  dsys_clock_fake_new(&clk, 1700000000000LL);
  dsys_queue_options qo = {.size = sizeof qo, .clock = clk};
  dsys_queue *q = NULL;
  int e = dsys_queue_open_ops(&q, ops, url, &qo);
  is_int(e, 0, "[%s] open", url);
  if (e) tap_bail("open");

  /* order: priority desc, then FIFO */
  int64_t j1 = submit(q, "a", "{\"n\":1}", 0, 0);
  int64_t j2 = submit(q, "a", "{\"n\":2}", 5, 0);
  int64_t j3 = submit(q, "a", "{\"n\":3}", 0, 0);
  int64_t j4 = submit(q, "a", "{\"n\":4}", 5, 0);
  ok(j1 > 0 && j2 > j1 && j3 > j2 && j4 > j3, "ids increase");
  dsys_job *j = NULL;
  is_int(dsys_queue_claim(q, QA, 1, "w1", 10000, &j), 0, "claim");
  ok(j && j->id == j2, "highest priority first");
  ok(j && j->state == DSYS_JOB_ACTIVE && j->attempts == 1 && j->token == 1,
     "claimed job active, attempt 1, token 1");
  is_str(j ? j->payload : NULL, "{\"n\":2}", "payload");
  is_str(j ? j->worker : NULL, "w1", "worker recorded");
  ok(j && j->lease_until == dsys_clock_wall_ms(clk) + 10000, "lease_until");
  dsys_job_free(j);
  int64_t t;
  is_int(claim_id(q, QA, 1, &t), j4, "then the other priority-5 job (FIFO)");
  is_int(claim_id(q, QA, 1, &t), j1, "then FIFO among priority 0");
  is_int(claim_id(q, QA, 1, &t), j3, "then the last");
  is_int(dsys_queue_claim(q, QA, 1, "w1", 10000, &j), DSYS_EAGAIN, "empty queue: EAGAIN");
  ok(j == NULL, "no job on EAGAIN");
  static const char *const QB[] = {"b"};
  is_int(dsys_queue_claim(q, QB, 1, "w1", 10000, &j), DSYS_EAGAIN, "other queue empty");
  for (int64_t id = j1; id <= j4; id++) {
    dsys_queue_get(q, id, &j);
    dsys_queue_complete(q, id, j->token, "true");
    dsys_job_free(j);
  }

  /* multiple queues: best across them */
  int64_t b1 = submit(q, "b", "1", 1, 0);
  int64_t c1 = submit(q, "c", "1", 2, 0);
  static const char *const QBC[] = {"b", "c"};
  is_int(claim_id(q, QBC, 2, &t), c1, "claim across queues picks best priority");
  is_int(claim_id(q, QBC, 2, &t), b1, "then the other queue");

  /* complete with fencing */
  int64_t k = submit(q, "f", "{}", 0, 0);
  static const char *const QF[] = {"f"};
  int64_t tok1 = 0, tok2 = 0;
  is_int(claim_id(q, QF, 1, &tok1), k, "claim f");
  is_int(dsys_queue_progress(q, k, tok1, 40, "forty"), 0, "progress");
  dsys_queue_get(q, k, &j);
  ok(j && j->progress == 40 && j->progress_msg && !strcmp(j->progress_msg, "forty"), "progress stored");
  dsys_job_free(j);
  is_int(dsys_queue_progress(q, k, tok1, 101, NULL), DSYS_EINVAL, "progress > 100 rejected");
  dsys_clock_advance(clk, 8000 * 1000);
  is_int(dsys_queue_heartbeat(q, k, tok1, 10000), 0, "heartbeat");
  dsys_clock_advance(clk, 8000 * 1000);
  is_int(dsys_queue_claim(q, QF, 1, "w2", 10000, &j), DSYS_EAGAIN, "heartbeat kept the lease");
  dsys_clock_advance(clk, 2001 * 1000);
  is_int(claim_id(q, QF, 1, &tok2), k, "expired lease: job reclaimed by the next claim");
  ok(tok2 == tok1 + 1, "fencing token incremented (%lld -> %lld)", (long long)tok1, (long long)tok2);
  is_int(dsys_queue_complete(q, k, tok1, "1"), DSYS_ELEASE, "old token cannot complete");
  is_int(dsys_queue_fail(q, k, tok1, "x", NULL), DSYS_ELEASE, "old token cannot fail");
  is_int(dsys_queue_heartbeat(q, k, tok1, 1000), DSYS_ELEASE, "old token cannot heartbeat");
  is_int(dsys_queue_progress(q, k, tok1, 1, NULL), DSYS_ELEASE, "old token cannot report progress");
  is_int(dsys_queue_complete(q, k, tok2, "{\"r\":1}"), 0, "current token completes");
  is_int(dsys_queue_complete(q, k, tok2, "1"), DSYS_ELEASE, "second complete rejected");
  dsys_queue_get(q, k, &j);
  ok(j && j->state == DSYS_JOB_COMPLETED && j->result && !strcmp(j->result, "{\"r\":1}"),
     "completed with result");
  ok(j && j->attempts == 2 && j->finished_at == dsys_clock_wall_ms(clk), "attempts 2, finished_at");
  dsys_job_free(j);
  is_int(dsys_queue_complete(q, 999999, 1, NULL), DSYS_ENOTFOUND, "complete unknown job");

  /* A claimed job is the row as the claim left it, field by field (the
   * SQLite backend builds it from the row it picked): a job with a
   * progress message, a result-less failure and a previous worker. */
  {
    static const char *const QC[] = {"cmp"};
    int64_t cid = submit(q, "cmp", "{\"c\":[1,2]}", 3, 0);
    dsys_job *c1 = NULL, *c2 = NULL, *g = NULL;
    int dead = 0;
    dsys_queue_claim(q, QC, 1, "first", 10000, &c1);
    if (c1) {
      dsys_queue_progress(q, cid, c1->token, 50, "half");
      dsys_queue_fail(q, cid, c1->token, "boom", &dead);
    }
    dsys_clock_advance(clk, 70000 * 1000); /* past any backoff */
    is_int(dsys_queue_claim(q, QC, 1, "second", 7000, &c2), 0, "claim of a retried job");
    is_int(dsys_queue_get(q, cid, &g), 0, "... and its row");
    ok(c2 && g && c2->id == g->id && c2->state == g->state && c2->priority == g->priority &&
           c2->attempts == g->attempts && c2->max_attempts == g->max_attempts &&
           c2->token == g->token && c2->lease_until == g->lease_until &&
           c2->progress == g->progress && c2->created_at == g->created_at &&
           c2->run_at == g->run_at && c2->finished_at == g->finished_at &&
           !strcmp(c2->queue, g->queue) && !strcmp(c2->payload, g->payload) &&
           !strcmp(c2->worker, g->worker) && !c2->progress_msg && !g->progress_msg &&
           !c2->result == !g->result && c2->error && g->error && !strcmp(c2->error, g->error) &&
           !c2->idempotency_key && !g->idempotency_key,
       "the claimed job equals its row, field by field");
    ok(c2 && c2->attempts == 2 && c2->token == 2 && !strcmp(c2->worker, "second") &&
           c2->progress == 0 && !strcmp(c2->error, "boom"),
       "... second attempt, token 2, the new worker, progress reset, the last error kept");
    if (c2) dsys_queue_complete(q, cid, c2->token, NULL);
    dsys_job_free(c1);
    dsys_job_free(c2);
    dsys_job_free(g);
  }

  /* delayed job ready on time */
  static const char *const QD[] = {"d"};
  int64_t d = submit(q, "d", "1", 0, 5000);
  dsys_queue_get(q, d, &j);
  ok(j && j->state == DSYS_JOB_DELAYED, "delayed state");
  dsys_job_free(j);
  dsys_clock_advance(clk, 4999 * 1000);
  is_int(dsys_queue_claim(q, QD, 1, "w", 1000, &j), DSYS_EAGAIN, "not ready before delay");
  dsys_clock_advance(clk, 1000);
  is_int(claim_id(q, QD, 1, &t), d, "ready exactly at delay");
  dsys_queue_release(q, d, t);
  dsys_queue_get(q, d, &j);
  ok(j && j->state == DSYS_JOB_WAITING && j->attempts == 0, "release: waiting, attempt not counted");
  dsys_job_free(j);
  is_int(dsys_queue_cancel(q, d), 0, "cancel waiting job");
  is_int(dsys_queue_cancel(q, d), DSYS_ESTATE, "cancel twice: ESTATE");
  is_int(dsys_queue_claim(q, QD, 1, "w", 1000, &j), DSYS_EAGAIN, "canceled job not claimed");

  /* retries with backoff, dead letter, replay */
  static const char *const QR[] = {"r"};
  dsys_submit_options ro = {.size = sizeof ro, .max_attempts = 3,
                            .backoff_base_ms = 1000, .backoff_cap_ms = 1500};
  int64_t r = 0;
  dsys_queue_submit(q, "r", "\"x\"", &ro, &r, NULL);
  int dead = -1, delays_ok = 1;
  for (int a = 1; a <= 3; a++) {
    int64_t id = claim_id(q, QR, 1, &t);
    if (id != r) {
      /* the backoff may not have passed yet */
      dsys_clock_advance(clk, 2000 * 1000);
      id = claim_id(q, QR, 1, &t);
    }
    is_int(id, r, "attempt %d claimed", a);
    int64_t before = dsys_clock_wall_ms(clk);
    is_int(dsys_queue_fail(q, r, t, "boom", &dead), 0, "fail attempt %d", a);
    dsys_queue_get(q, r, &j);
    if (a < 3) {
      int64_t bound = a == 1 ? 1000 : 1500;
      if (!j || j->run_at < before || j->run_at > before + bound) delays_ok = 0;
      ok(!dead && j && (j->state == DSYS_JOB_DELAYED || j->state == DSYS_JOB_WAITING),
         "retry scheduled (backoff %lld ms)", (long long)(j ? j->run_at - before : -1));
    } else {
      ok(dead && j && j->state == DSYS_JOB_FAILED, "dead-lettered after max attempts");
      is_str(j ? j->error : NULL, "boom", "error stored");
    }
    dsys_job_free(j);
  }
  ok(delays_ok, "backoff within [0, min(cap, base*2^(n-1))]");
  dsys_job **dl = NULL;
  size_t nd = 0;
  is_int(dsys_queue_list_dead(q, "r", 0, 10, &dl, &nd), 0, "list dead");
  ok(nd == 1 && dl[0]->id == r, "the dead job is listed");
  dsys_job_list_free(dl, nd);
  dsys_job_counts c;
  is_int(dsys_queue_counts(q, "r", &c), 0, "counts");
  ok(c.failed == 1 && c.waiting == 0, "counts: 1 failed");
  is_int(dsys_queue_replay(q, r), 0, "replay");
  is_int(dsys_queue_replay(q, r), DSYS_ESTATE, "replay of waiting job: ESTATE");
  is_int(claim_id(q, QR, 1, &t), r, "replayed job claimable");
  dsys_queue_get(q, r, &j);
  ok(j && j->attempts == 1, "replay reset attempts");
  dsys_job_free(j);
  is_int(dsys_queue_cancel(q, r), 0, "cancel active job");
  is_int(dsys_queue_complete(q, r, t, NULL), DSYS_ELEASE, "worker of a canceled job gets ELEASE");

  /* lease expiry on the last attempt dead-letters */
  static const char *const QL[] = {"l"};
  dsys_submit_options lo = {.size = sizeof lo, .max_attempts = 1};
  int64_t l = 0;
  dsys_queue_submit(q, "l", "0", &lo, &l, NULL);
  claim_id(q, QL, 1, &t);
  dsys_clock_advance(clk, 11000 * 1000);
  is_int(dsys_queue_claim(q, QL, 1, "w", 1000, &j), DSYS_EAGAIN, "expired last attempt not redelivered");
  dsys_queue_get(q, l, &j);
  ok(j && j->state == DSYS_JOB_FAILED && j->error && !strcmp(j->error, "lease expired"),
     "expired last attempt is dead with 'lease expired'");
  dsys_job_free(j);

  /* idempotency */
  dsys_submit_options io = {.size = sizeof io, .idempotency_key = "order-42"};
  int64_t i1 = 0, i2 = 0;
  int existed = -1;
  is_int(dsys_queue_submit(q, "i", "1", &io, &i1, &existed), 0, "submit with key");
  is_int(existed, 0, "first submit is new");
  is_int(dsys_queue_submit(q, "i", "2", &io, &i2, &existed), 0, "repeat submit");
  ok(existed == 1 && i2 == i1, "repeat returns the same job");
  is_int(dsys_queue_submit(q, "i2", "2", &io, &i2, &existed), 0, "same key other queue");
  ok(existed == 0 && i2 != i1, "keys are per queue");
  is_int(dsys_queue_counts(q, "i", &c), 0, "counts i");
  is_int(c.waiting, 1, "one job for the key");

  /* counts over all queues; retention */
  is_int(dsys_queue_counts(q, NULL, &c), 0, "counts all");
  ok(c.completed >= 5 && c.canceled == 2 && c.failed == 1, "counts: completed %lld canceled %lld failed %lld",
     (long long)c.completed, (long long)c.canceled, (long long)c.failed);
  int64_t removed = 0;
  is_int(dsys_queue_purge(q, 3600 * 1000, &removed), 0, "purge older than 1h");
  is_int(removed, 0, "nothing that old");
  dsys_clock_advance(clk, 3600LL * 1000 * 1000);
  is_int(dsys_queue_purge(q, 3600 * 1000, &removed), 0, "purge after 1h");
  is_int(removed, c.completed + c.canceled + c.failed, "all finished jobs purged");
  is_int(dsys_queue_counts(q, NULL, &c), 0, "counts after purge");
  ok(c.completed == 0 && c.failed == 0 && c.waiting == 4, "only waiting jobs remain: i, i2, and b, c whose leases lapsed (w %lld a %lld d %lld)", (long long)c.waiting, (long long)c.active, (long long)c.delayed);

  /* bad input */
  int64_t id;
  is_int(dsys_queue_submit(q, "a", "{bad", NULL, &id, NULL), DSYS_EBADJSON, "invalid JSON payload");
  is_int(dsys_queue_submit(q, "", "1", NULL, &id, NULL), DSYS_EINVAL, "empty queue name");
  is_int(dsys_queue_submit(q, "a", NULL, NULL, &id, NULL), DSYS_EINVAL, "NULL payload");
  dsys_submit_options neg = {.size = sizeof neg, .delay_ms = -1};
  is_int(dsys_queue_submit(q, "a", "1", &neg, &id, NULL), DSYS_EINVAL, "negative delay");
  char *huge = malloc(DSYS_QUEUE_MAX_PAYLOAD + 10);
  memset(huge, ' ', DSYS_QUEUE_MAX_PAYLOAD + 9);
  huge[0] = '1';
  huge[DSYS_QUEUE_MAX_PAYLOAD + 9] = 0;
  is_int(dsys_queue_submit(q, "a", huge, NULL, &id, NULL), DSYS_ETOOBIG, "payload over 1 MiB");
  free(huge);
  is_int(dsys_queue_claim(q, QA, 0, "w", 1000, &j), DSYS_EINVAL, "claim with no queues");
  is_int(dsys_queue_claim(q, QA, 1, "w", 0, &j), DSYS_EINVAL, "claim with zero lease");
  const char *odd = "it's \"odd\" \xe2\x98\x83";
  static const char *const QO[] = {"it's \"odd\" \xe2\x98\x83"};
  is_int(dsys_queue_submit(q, odd, "\"\\u2603 \xe2\x98\x83\"", NULL, &id, NULL), 0, "unicode/quotes in names and payload");
  dsys_queue_claim(q, QO, 1, "w'\"", 1000, &j);
  ok(j && !strcmp(j->payload, "\"\\u2603 \xe2\x98\x83\"") && !strcmp(j->worker, "w'\""),
     "odd strings round trip");
  is_int(dsys_queue_complete(q, id, j ? j->token : 0, "[1,"), DSYS_EBADJSON, "complete with invalid JSON result");
  dsys_job_free(j);
  is_str(dsys_job_state_name(DSYS_JOB_DELAYED), "delayed", "state name");

  /* submit_many: all or nothing, ids in order */
  static const char *const QM[] = {"m"};
  const char *pl[5] = {"1", "2", "3", "4", "5"};
  int64_t ids[5] = {0};
  is_int(dsys_queue_submit_many(q, "m", pl, 5, NULL, ids), 0, "submit_many 5");
  ok(ids[0] > 0 && ids[1] > ids[0] && ids[2] > ids[1] && ids[3] > ids[2] && ids[4] > ids[3],
     "submit_many ids increase");
  const char *bad[3] = {"6", "{nope", "8"};
  is_int(dsys_queue_submit_many(q, "m", bad, 3, NULL, NULL), DSYS_EBADJSON, "submit_many with a bad payload");
  is_int(dsys_queue_counts(q, "m", &c), 0, "counts m");
  is_int(c.waiting, 5, "bad batch stored nothing");
  is_int(dsys_queue_submit_many(q, "m", pl, 0, NULL, NULL), DSYS_EINVAL, "submit_many of 0");
  dsys_submit_options ko = {.size = sizeof ko, .idempotency_key = "k"};
  is_int(dsys_queue_submit_many(q, "m", pl, 2, &ko, NULL), DSYS_EINVAL, "submit_many with a key");
  dsys_submit_options po = {.size = sizeof po, .priority = 9};
  int64_t hi = 0;
  is_int(dsys_queue_submit_many(q, "m", pl, 1, &po, &hi), 0, "submit_many with options");

  /* claim_many: claim order, own tokens and leases */
  dsys_job *js[8] = {0};
  size_t nj = 99;
  is_int(dsys_queue_claim_many(q, QM, 1, "wm", 5000, 4, js, &nj), 0, "claim_many 4");
  is_int(nj, 4, "4 claimed");
  ok(nj == 4 && js[0]->id == hi && js[1]->id == ids[0] && js[2]->id == ids[1] && js[3]->id == ids[2],
     "claim_many order: priority, then FIFO");
  int allok = nj == 4;
  for (size_t i = 0; i < nj; i++)
    if (js[i]->state != DSYS_JOB_ACTIVE || js[i]->token != 1 ||
        js[i]->lease_until != dsys_clock_wall_ms(clk) + 5000 || strcmp(js[i]->worker, "wm"))
      allok = 0;
  ok(allok, "each claimed job active with token 1 and its lease");
  is_int(dsys_queue_complete(q, js[0]->id, js[0]->token, "1"), 0, "complete one of a batch");
  is_int(dsys_queue_heartbeat(q, js[1]->id, js[1]->token, 20000), 0, "heartbeat one of a batch");
  dsys_clock_advance(clk, 6000 * 1000);
  dsys_job *js2[8] = {0};
  is_int(dsys_queue_claim_many(q, QM, 1, "wm2", 5000, 8, js2, &nj), 0, "claim_many after lease expiry");
  /* expired: js[2], js[3] (tokens 2), plus ids[3], ids[4]; js[1] renewed */
  is_int(nj, 4, "expired jobs of the batch redelivered, renewed one kept");
  int fenced = 1;
  for (size_t i = 0; i < nj; i++) {
    if (js2[i]->id == js[1]->id) fenced = 0;
    if ((js2[i]->id == js[2]->id || js2[i]->id == js[3]->id) && js2[i]->token != 2) fenced = 0;
  }
  ok(fenced, "redelivered with new tokens");
  is_int(dsys_queue_complete(q, js[2]->id, js[2]->token, NULL), DSYS_ELEASE, "old token of a batch fenced off");
  for (size_t i = 0; i < nj; i++) {
    dsys_queue_complete(q, js2[i]->id, js2[i]->token, NULL);
    dsys_job_free(js2[i]);
  }
  is_int(dsys_queue_complete(q, js[1]->id, js[1]->token, NULL), 0, "renewed job completes");
  for (int i = 0; i < 4; i++) dsys_job_free(js[i]);
  is_int(dsys_queue_claim_many(q, QM, 1, "wm", 5000, 8, js, &nj), DSYS_EAGAIN, "claim_many on empty: EAGAIN");
  is_int(nj, 0, "n = 0 on EAGAIN");
  is_int(dsys_queue_claim_many(q, QM, 1, "wm", 5000, 0, js, &nj), DSYS_EINVAL, "claim_many max 0");
  is_int(dsys_queue_counts(q, "m", &c), 0, "counts m after");
  is_int(c.completed, 6, "every job of m completed once");

  /* pause / resume: submits accepted, no claim while paused */
  static const char *const QZ[] = {"z"};
  static const char *const QZA[] = {"z", "za"};
  int64_t z1 = submit(q, "z", "1", 0, 0);
  is_int(dsys_queue_pause(q, "z"), 0, "pause z");
  int64_t z2 = submit(q, "z", "2", 0, 0);
  ok(z1 > 0 && z2 > 0, "a paused queue accepts submits");
  is_int(dsys_queue_claim(q, QZ, 1, "w", 1000, &j), DSYS_EAGAIN, "paused queue: nothing to claim");
  is_int(dsys_queue_claim_many(q, QZ, 1, "w", 1000, 4, js, &nj), DSYS_EAGAIN, "paused queue: claim_many gets nothing");
  int64_t a1 = submit(q, "za", "{}", 0, 0);
  is_int(claim_id(q, QZA, 2, NULL), a1, "another queue of the same claim still serves");
  dsys_clock_advance(clk, 60000 * 1000); /* the claim above expires */
  is_int(dsys_queue_pause(q, "z"), 0, "pause twice: no change");
  is_int(dsys_queue_pause(q, "empty"), 0, "pause a queue without jobs");
  dsys_queue_info *qi = NULL;
  size_t nqi = 0;
  is_int(dsys_queue_list_queues(q, &qi, &nqi), 0, "list_queues");
  const dsys_queue_info *qz = NULL, *qe = NULL, *qm = NULL;
  int sorted = 1;
  for (size_t i = 0; i < nqi; i++) {
    if (!strcmp(qi[i].name, "z")) qz = &qi[i];
    if (!strcmp(qi[i].name, "empty")) qe = &qi[i];
    if (!strcmp(qi[i].name, "m")) qm = &qi[i];
    if (i && strcmp(qi[i - 1].name, qi[i].name) >= 0) sorted = 0;
  }
  ok(sorted, "queues ordered by name, each once (%zu)", nqi);
  ok(qz && qz->paused && qz->paused_at == dsys_clock_wall_ms(clk) - 60000 && qz->counts.waiting == 2,
     "z: paused (first pause time kept), 2 waiting");
  ok(qe && qe->paused && qe->counts.waiting == 0, "a paused queue without jobs is listed");
  ok(qm && !qm->paused && qm->paused_at == 0 && qm->counts.completed == 6, "m: not paused, 6 completed");
  dsys_free(qi);
  is_int(dsys_queue_resume(q, "z"), 0, "resume z");
  is_int(dsys_queue_resume(q, "z"), 0, "resume twice: no change");
  is_int(dsys_queue_resume(q, "empty"), 0, "resume empty");
  is_int(claim_id(q, QZ, 1, NULL), z1, "resumed: claims again, FIFO");
  is_int(claim_id(q, QZ, 1, NULL), z2, "resumed: the job submitted while paused");
  is_int(dsys_queue_list_queues(q, &qi, &nqi), 0, "list_queues again");
  int gone = 1;
  for (size_t i = 0; i < nqi; i++)
    if (!strcmp(qi[i].name, "empty") || qi[i].paused) gone = 0;
  ok(gone, "resumed queues: not paused; a resumed queue without jobs is not listed");
  dsys_free(qi);
  is_int(dsys_queue_pause(q, ""), DSYS_EINVAL, "pause with an empty name");
  is_int(dsys_queue_resume(q, NULL), DSYS_EINVAL, "resume NULL");
  is_int(dsys_queue_list_queues(q, NULL, &nqi), DSYS_EINVAL, "list_queues without out");

  /* purge_dead: only failed jobs, by age and queue */
  is_int(dsys_queue_purge_dead(q, NULL, 0, NULL), 0, "purge the dead letters of earlier tests");
  dsys_submit_options one = {.size = sizeof one, .max_attempts = 1};
  int64_t d1 = 0, d2 = 0, d3 = 0, live = 0, done = 0;
  static const char *const QPD[] = {"pd"};
  static const char *const QPD2[] = {"pd2"};
  dsys_queue_submit(q, "pd", "1", &one, &d1, NULL);
  dsys_queue_submit(q, "pd2", "1", &one, &d3, NULL);
  int64_t tk = 0;
  claim_id(q, QPD, 1, &tk);
  dsys_queue_fail(q, d1, tk, "old", NULL);
  claim_id(q, QPD2, 1, &tk);
  dsys_queue_fail(q, d3, tk, "old other queue", NULL);
  dsys_clock_advance(clk, 10000 * 1000);
  dsys_queue_submit(q, "pd", "2", &one, &d2, NULL);
  claim_id(q, QPD, 1, &tk);
  dsys_queue_fail(q, d2, tk, "new", NULL);
  dsys_queue_submit(q, "pd", "3", &one, &done, NULL);
  claim_id(q, QPD, 1, &tk);
  dsys_queue_complete(q, done, tk, NULL);
  dsys_queue_submit(q, "pd", "4", &one, &live, NULL);
  removed = -1;
  is_int(dsys_queue_purge_dead(q, "pd", 5000, &removed), 0, "purge_dead d older than 5 s");
  is_int(removed, 1, "one old dead job removed");
  is_int(dsys_queue_get(q, d1, &j), DSYS_ENOTFOUND, "the old dead job is gone");
  is_int(dsys_queue_get(q, d3, &j), 0, "the old dead job of another queue kept");
  dsys_job_free(j);
  is_int(dsys_queue_get(q, d2, &j), 0, "the recent dead job kept");
  dsys_job_free(j);
  is_int(dsys_queue_purge_dead(q, NULL, 0, &removed), 0, "purge_dead everything dead");
  is_int(removed, 2, "both remaining dead jobs removed");
  is_int(dsys_queue_get(q, done, &j), 0, "completed job kept");
  dsys_job_free(j);
  is_int(dsys_queue_get(q, live, &j), 0, "waiting job kept");
  ok(j && j->state == DSYS_JOB_WAITING, "still waiting");
  dsys_job_free(j);
  is_int(dsys_queue_purge_dead(q, NULL, -1, NULL), DSYS_EINVAL, "negative age");
  is_int(dsys_queue_purge_dead(q, "", 0, NULL), DSYS_EINVAL, "empty queue name");

  dsys_queue_close(q);
  dsys_clock_free(clk);
}

/* ---- workers ---- */

typedef struct wstate {
  pthread_mutex_t mu;
  int handled;
  int block; /* handler waits until cleared (or stopping) */
  int started;
  int progressed; /* handlers whose progress 50 is stored */
  int fail_first;
} wstate;

static int handler(dsys_job_ctx *ctx, const dsys_job *job, void *ud) {
  wstate *ws = ud;
  pthread_mutex_lock(&ws->mu);
  ws->started++;
  int fail = ws->fail_first-- > 0;
  pthread_mutex_unlock(&ws->mu);
  dsys_job_ctx_progress(ctx, 50, "half");
  pthread_mutex_lock(&ws->mu);
  ws->progressed++;
  pthread_mutex_unlock(&ws->mu);
  for (int i = 0; i < 5000; i++) { /* at most 5 s */
    pthread_mutex_lock(&ws->mu);
    int b = ws->block;
    pthread_mutex_unlock(&ws->mu);
    if (!b) break;
    if (dsys_job_ctx_stopping(ctx)) return DSYS_ECANCELED;
    usleep(1000);
  }
  pthread_mutex_lock(&ws->mu);
  ws->handled++;
  pthread_mutex_unlock(&ws->mu);
  if (fail) {
    dsys_job_ctx_set_error(ctx, "first attempt fails");
    return DSYS_EIO;
  }
  char res[64];
  snprintf(res, sizeof res, "{\"echo\":%s}", job->payload);
  return dsys_job_ctx_set_result(ctx, res);
}

static int get_int(wstate *ws, int *p) {
  pthread_mutex_lock(&ws->mu);
  int v = *p;
  pthread_mutex_unlock(&ws->mu);
  return v;
}

static int wait_count(dsys_queue *q, const char *name, int64_t want) {
  dsys_job_counts c = {0};
  for (int i = 0; i < 5000; i++) { /* at most ~5 s */
    dsys_queue_counts(q, name, &c);
    if (c.completed >= want) return 1;
    usleep(1000);
  }
  return 0;
}

static void workers(const char *url) {
  dsys_clock *clk = NULL;
  dsys_clock_fake_new(&clk, 1700000000000LL);
  dsys_queue_options qo = {.size = sizeof qo, .clock = clk};
  dsys_queue *q = NULL;
  is_int(dsys_queue_open(&q, url, &qo), 0, "open for workers");
  wstate ws = {.mu = PTHREAD_MUTEX_INITIALIZER};
  static const char *const QW[] = {"w"};
  dsys_worker_options wo = {.size = sizeof wo, .queues = QW, .nqueues = 1,
                            .threads = 3, .lease_ms = 3000, .poll_ms = 5,
                            .handler = handler, .ud = &ws};
  dsys_worker *w = NULL;
  dsys_worker_options bad = wo;
  bad.handler = NULL;
  is_int(dsys_worker_start(&w, q, &bad), DSYS_EINVAL, "start without handler fails");
  ok(w == NULL, "no worker on failure");
  is_int(dsys_worker_start(&w, q, &wo), 0, "start 3 threads");
  ok(dsys_worker_id(w) && strchr(dsys_worker_id(w), ':'), "auto worker id %s", dsys_worker_id(w));
  for (int i = 0; i < 30; i++) submit(q, "w", "7", 0, 0);
  ok(wait_count(q, "w", 30), "30 jobs completed by the pool");
  dsys_job **dl = NULL;
  size_t nd = 0;
  dsys_queue_list_dead(q, "w", 0, 10, &dl, &nd);
  is_int(nd, 0, "none dead");
  dsys_job_list_free(dl, nd);

  /* lease renewal while a handler blocks: advance the fake clock past
   * several lease lengths; the renewal timers run inside advance. */
  pthread_mutex_lock(&ws.mu);
  ws.block = 1;
  int started0 = ws.started, progressed0 = ws.progressed;
  pthread_mutex_unlock(&ws.mu);
  int64_t bj = submit(q, "w", "8", 0, 0);
  /* wait for the stored progress, not the start: checking right after the
   * start raced the handler's progress write (seen once under load) */
  for (int i = 0; i < 5000 && get_int(&ws, &ws.progressed) == progressed0; i++) usleep(1000);
  for (int i = 0; i < 10; i++) dsys_clock_advance(clk, 1000 * 1000); /* 10 s > lease 3 s */
  dsys_job *j = NULL;
  static const char *const QW2[] = {"w"};
  is_int(dsys_queue_claim(q, QW2, 1, "thief", 1000, &j), DSYS_EAGAIN, "renewed lease: nobody else can claim");
  dsys_job_free(j);
  dsys_queue_get(q, bj, &j);
  ok(j && j->state == DSYS_JOB_ACTIVE && j->progress == 50, "job still active with progress 50");
  ok(j && j->lease_until > dsys_clock_wall_ms(clk), "lease in the future");
  dsys_job_free(j);
  pthread_mutex_lock(&ws.mu);
  ws.block = 0;
  pthread_mutex_unlock(&ws.mu);
  ok(wait_count(q, "w", 31), "blocked job completed after unblocking");
  dsys_queue_get(q, bj, &j);
  is_str(j ? j->result : NULL, "{\"echo\":8}", "handler result stored");
  dsys_job_free(j);

  /* a failing first attempt is retried (backoff on the fake clock) */
  pthread_mutex_lock(&ws.mu);
  ws.fail_first = 1;
  pthread_mutex_unlock(&ws.mu);
  dsys_submit_options fo = {.size = sizeof fo, .backoff_base_ms = 100, .backoff_cap_ms = 100};
  int64_t fj = 0;
  dsys_queue_submit(q, "w", "9", &fo, &fj, NULL);
  int okf = 0;
  for (int i = 0; i < 2000 && !okf; i++) {
    dsys_queue_get(q, fj, &j);
    okf = j && j->state == DSYS_JOB_COMPLETED;
    if (j && j->state == DSYS_JOB_DELAYED) dsys_clock_advance(clk, 200 * 1000);
    dsys_job_free(j);
    usleep(1000);
  }
  ok(okf, "failed attempt retried after backoff and completed");
  dsys_queue_get(q, fj, &j);
  ok(j && j->attempts == 2 && j->error && !strcmp(j->error, "first attempt fails"), "2 attempts, error kept");
  dsys_job_free(j);

  /* stop in release mode while a handler blocks: the job goes back */
  pthread_mutex_lock(&ws.mu);
  ws.block = 1;
  started0 = ws.started;
  pthread_mutex_unlock(&ws.mu);
  int64_t rj = submit(q, "w", "10", 0, 0);
  for (int i = 0; i < 5000 && get_int(&ws, &ws.started) == started0; i++) usleep(1000);
  dsys_worker_stop(w, DSYS_WORKER_STOP_RELEASE);
  dsys_queue_get(q, rj, &j);
  ok(j && j->state == DSYS_JOB_WAITING && j->attempts == 0, "release stop: job waiting again");
  dsys_job_free(j);

  /* finish mode: in-flight handler completes */
  pthread_mutex_lock(&ws.mu);
  ws.block = 0;
  pthread_mutex_unlock(&ws.mu);
  wo.threads = 1;
  is_int(dsys_worker_start(&w, q, &wo), 0, "restart");
  ok(wait_count(q, "w", 33), "released job completed by the new worker");
  dsys_worker_stop(w, DSYS_WORKER_STOP_FINISH);
  dsys_worker_stop(NULL, 0);

  /* prefetch: one thread, 8 jobs ahead, all leased to the worker and
   * renewed; stop gives the never-started ones back (attempt not counted) */
  static const char *const QP[] = {"p"};
  pthread_mutex_lock(&ws.mu);
  ws.block = 1;
  started0 = ws.started;
  pthread_mutex_unlock(&ws.mu);
  const char *pl[20];
  for (int i = 0; i < 20; i++) pl[i] = "{}";
  int64_t pids[20];
  is_int(dsys_queue_submit_many(q, "p", pl, 20, NULL, pids), 0, "submit 20 for the prefetching worker");
  dsys_worker_options po = wo;
  po.queues = QP;
  po.threads = 1;
  po.prefetch = 8;
  is_int(dsys_worker_start(&w, q, &po), 0, "start with prefetch 8");
  for (int i = 0; i < 5000 && get_int(&ws, &ws.started) == started0; i++) usleep(1000);
  dsys_job_counts pc = {0};
  for (int i = 0; i < 2000 && pc.active < 9; i++) {
    dsys_queue_counts(q, "p", &pc);
    usleep(1000);
  }
  is_int(pc.active, 9, "1 running + 8 prefetched jobs leased");
  is_int(pc.waiting, 11, "the rest still waiting");
  for (int i = 0; i < 10; i++) dsys_clock_advance(clk, 1000 * 1000); /* 10 s > lease 3 s */
  is_int(dsys_queue_claim(q, QP, 1, "thief", 1000, &j), DSYS_OK, "a waiting job is claimable");
  int64_t stolen = j ? j->id : 0;
  if (j) dsys_queue_complete(q, j->id, j->token, NULL);
  dsys_job_free(j);
  int renewed = 1;
  for (int i = 0; i < 9; i++) {
    dsys_queue_get(q, pids[i], &j);
    if (!j || j->state != DSYS_JOB_ACTIVE || j->lease_until <= dsys_clock_wall_ms(clk) ||
        j->attempts != 1 || j->token != 1)
      renewed = 0;
    dsys_job_free(j);
  }
  ok(renewed, "prefetched jobs kept their leases (renewed, never reclaimed)");
  ok(stolen == pids[9], "the thief got the first job not prefetched");
  dsys_worker_stop(w, DSYS_WORKER_STOP_RELEASE);
  dsys_queue_counts(q, "p", &pc);
  ok(pc.active == 0 && pc.waiting == 19 && pc.completed == 1, "stop released every held job (w %lld a %lld c %lld)",
     (long long)pc.waiting, (long long)pc.active, (long long)pc.completed);
  int reset = 1;
  for (int i = 0; i < 9; i++) {
    dsys_queue_get(q, pids[i], &j);
    if (!j || j->attempts != 0) reset = 0;
    dsys_job_free(j);
  }
  ok(reset, "released jobs: attempts not counted");
  pthread_mutex_lock(&ws.mu);
  ws.block = 0;
  pthread_mutex_unlock(&ws.mu);
  po.threads = 2;
  is_int(dsys_worker_start(&w, q, &po), 0, "restart with prefetch");
  ok(wait_count(q, "p", 20), "all 20 completed");
  dsys_worker_stop(w, DSYS_WORKER_STOP_FINISH);
  dsys_queue_close(q);
  dsys_clock_free(clk);
}

/* ---- ops table checks ---- */

static int no_purge(void *st, int64_t before, int64_t *removed) {
  (void)st; (void)before; (void)removed;
  return DSYS_EIO;
}

static void ops_table(void) {
  dsys_queue *q = NULL;
  dsys_queue_ops o = *dsys_queue_ops_sqlite();
  is_int(o.version, DSYS_QUEUE_OPS_VERSION, "sqlite ops version");
  is_str(o.name, "sqlite", "sqlite ops name");
  o.version = 0;
  is_int(dsys_queue_open_ops(&q, &o, ":memory:", NULL), DSYS_EINVAL, "ops version 0 rejected");
  o.version = DSYS_QUEUE_OPS_VERSION + 1;
  is_int(dsys_queue_open_ops(&q, &o, ":memory:", NULL), DSYS_EINVAL, "future ops version rejected");
  ok(q == NULL, "no queue from a bad table");
  o = *dsys_queue_ops_sqlite();
  o.claim = NULL;
  is_int(dsys_queue_open_ops(&q, &o, ":memory:", NULL), DSYS_EINVAL, "missing mandatory op rejected");
  o = *dsys_queue_ops_sqlite();
  o.name = NULL;
  is_int(dsys_queue_open_ops(&q, &o, ":memory:", NULL), DSYS_EINVAL, "missing name rejected");
  is_int(dsys_queue_open_ops(&q, NULL, ":memory:", NULL), DSYS_EINVAL, "NULL ops rejected");
  o = *dsys_queue_ops_sqlite();
  o.list_dead = NULL;
  o.replay = NULL;
  o.purge = no_purge;
  is_int(dsys_queue_open_ops(&q, &o, ":memory:", NULL), 0, "optional ops may be missing");
  dsys_job **dl = NULL;
  size_t nd = 0;
  is_int(dsys_queue_list_dead(q, NULL, 0, 10, &dl, &nd), DSYS_ENOTSUP, "missing list_dead: ENOTSUP");
  is_int(dsys_queue_replay(q, 1), DSYS_ENOTSUP, "missing replay: ENOTSUP");
  int64_t removed = -1;
  is_int(dsys_queue_purge(q, 0, &removed), DSYS_EIO, "the table's own op is called");
  int64_t id = 0;
  is_int(dsys_queue_submit(q, "x", "1", NULL, &id, NULL), 0, "custom table works");
  dsys_queue_close(q);
  /* a version-1 table ends at purge: the version-2 ops are never read from
   * it (here they are present, and must still be ignored) */
  o = *dsys_queue_ops_sqlite();
  o.version = 1;
  is_int(dsys_queue_open_ops(&q, &o, ":memory:", NULL), 0, "a version-1 table is accepted");
  is_int(dsys_queue_pause(q, "x"), DSYS_ENOTSUP, "version 1: pause ENOTSUP");
  is_int(dsys_queue_resume(q, "x"), DSYS_ENOTSUP, "version 1: resume ENOTSUP");
  dsys_queue_info *qi = NULL;
  size_t nqi = 0;
  is_int(dsys_queue_list_queues(q, &qi, &nqi), DSYS_ENOTSUP, "version 1: list_queues ENOTSUP");
  is_int(dsys_queue_purge_dead(q, NULL, 0, NULL), DSYS_ENOTSUP, "version 1: purge_dead ENOTSUP");
  is_int(dsys_queue_submit(q, "x", "1", NULL, &id, NULL), 0, "version 1: submit works");
  dsys_queue_close(q);
  o = *dsys_queue_ops_sqlite();
  o.set_paused = NULL;
  o.list_queues = NULL;
  o.purge_dead = NULL;
  is_int(dsys_queue_open_ops(&q, &o, ":memory:", NULL), 0, "version 2 without the new ops");
  is_int(dsys_queue_pause(q, "x"), DSYS_ENOTSUP, "missing set_paused: ENOTSUP");
  dsys_queue_close(q);
  dsys_job j0 = {.id = 7, .queue = "qq", .payload = "[1]", .worker = "w", .token = 3};
  dsys_job *d = dsys_job_dup(&j0);
  ok(d && d->id == 7 && d->token == 3 && !strcmp(d->queue, "qq") && !strcmp(d->payload, "[1]") &&
     d->queue != j0.queue && !strcmp(d->worker, "w") && d->result == NULL, "dsys_job_dup copies");
  dsys_job_free(d);
}

/* ---- shared groups: one transaction carries the ops of 16 callers, and
 * each caller gets its own result (a bad op fails alone) ---- */

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_closed, groups_begun;
static int (*real_begin)(void *, int64_t);

/* The backend's begin, held while the gate is closed: the group in
 * progress stays open and every other call queues behind it. */
static int gated_begin(void *st, int64_t now) {
  pthread_mutex_lock(&gate_mu);
  groups_begun++;
  pthread_cond_broadcast(&gate_cv);
  while (gate_closed) pthread_cond_wait(&gate_cv, &gate_mu);
  pthread_mutex_unlock(&gate_mu);
  return real_begin(st, now);
}

typedef struct gcall {
  dsys_queue *q;
  int i;
  dsys_job *job; /* claimed by the test for this caller */
  int rc, existed;
  int64_t id;
} gcall;

/* Caller i's one op: completions (odd ones with a stale token), submits
 * of one idempotency key, and a few others, good and bad. */
static void *group_caller(void *p) {
  gcall *c = p;
  const dsys_job *j = c->job;
  int bad = c->i % 2;
  if (c->i < 8) {
    c->rc = dsys_queue_complete(c->q, j->id, j->token + bad, "{\"ok\":1}");
  } else if (c->i < 12) {
    dsys_submit_options so = {.size = sizeof so, .idempotency_key = "same"};
    c->rc = dsys_queue_submit(c->q, "g", "{}", &so, &c->id, &c->existed);
  } else if (c->i == 12) {
    c->rc = dsys_queue_heartbeat(c->q, j->id, j->token, 60000);
  } else if (c->i == 13) {
    c->rc = dsys_queue_complete(c->q, 999999, 1, NULL);
  } else if (c->i == 14) {
    c->rc = dsys_queue_fail(c->q, j->id, j->token, "boom", &c->existed);
  } else {
    c->rc = dsys_queue_release(c->q, j->id, j->token + 1);
  }
  return NULL;
}

static void *group_blocker(void *p) {
  dsys_job_counts cn;
  dsys_queue_counts(p, NULL, &cn);
  return NULL;
}

static int wait_until(int (*cond)(void *), void *arg) {
  for (int i = 0; i < 10000; i++) { /* at most 10 s */
    if (cond(arg)) return 1;
    usleep(1000);
  }
  return 0;
}

static int one_group_begun(void *arg) {
  (void)arg;
  pthread_mutex_lock(&gate_mu);
  int r = groups_begun >= 1;
  pthread_mutex_unlock(&gate_mu);
  return r;
}

static int sixteen_pending(void *q) { return dsysi_queue_pending(q) == 16; }

static void shared_groups(const char *path) {
  dsys_queue_ops o = *dsys_queue_ops_sqlite();
  real_begin = o.begin;
  o.begin = gated_begin;
  dsys_queue *q = NULL;
  if (!ok(dsys_queue_open_ops(&q, &o, path, NULL) == 0, "open with a gated begin"))
    return;
  static const char *const G[] = {"g"};
  const char *pl[16];
  for (int i = 0; i < 16; i++) pl[i] = "{}";
  dsys_job *jobs[16] = {0};
  size_t nj = 0;
  dsys_queue_submit_many(q, "g", pl, 16, NULL, NULL);
  is_int(dsys_queue_claim_many(q, G, 1, "t", 60000, 16, jobs, &nj), 0, "claim 16");
  is_int(nj, 16, "16 jobs held");
  pthread_mutex_lock(&gate_mu);
  gate_closed = 1;
  groups_begun = 0;
  pthread_mutex_unlock(&gate_mu);
  pthread_t blocker, th[16];
  gcall calls[16];
  pthread_create(&blocker, NULL, group_blocker, q);
  ok(wait_until(one_group_begun, NULL), "a group is held open");
  for (int i = 0; i < 16; i++) {
    calls[i] = (gcall){.q = q, .i = i, .job = jobs[i]};
    pthread_create(&th[i], NULL, group_caller, &calls[i]);
  }
  ok(wait_until(sixteen_pending, q), "16 callers' ops queued behind it");
  pthread_mutex_lock(&gate_mu);
  gate_closed = 0;
  pthread_cond_broadcast(&gate_cv);
  pthread_mutex_unlock(&gate_mu);
  pthread_join(blocker, NULL);
  for (int i = 0; i < 16; i++) pthread_join(th[i], NULL);
  is_int(groups_begun, 2, "the 16 ops ran as one group");
  int completes = 1;
  for (int i = 0; i < 8; i++)
    if (calls[i].rc != (i % 2 ? DSYS_ELEASE : 0)) completes = 0;
  ok(completes, "in the group: completions with good tokens succeed, stale ones get ELEASE");
  int fresh = 0, same = 1;
  for (int i = 8; i < 12; i++) {
    if (calls[i].rc) same = 0;
    if (!calls[i].existed) fresh++;
    if (calls[i].id != calls[8].id) same = 0;
  }
  ok(same && fresh == 1, "one idempotency key from 4 callers of the group: one job, created once");
  is_int(calls[12].rc, 0, "heartbeat in the group");
  is_int(calls[13].rc, DSYS_ENOTFOUND, "complete of an unknown job in the group: ENOTFOUND");
  is_int(calls[14].rc, 0, "fail in the group");
  is_int(calls[15].rc, DSYS_ELEASE, "release with a stale token in the group: ELEASE");
  int stored = 1;
  for (int i = 0; i < 16; i++) {
    dsys_job *j = NULL;
    if (dsys_queue_get(q, jobs[i]->id, &j)) {
      stored = 0;
      continue;
    }
    int want = i < 8 ? (i % 2 ? DSYS_JOB_ACTIVE : DSYS_JOB_COMPLETED)
               : i == 14 ? (j->state == DSYS_JOB_DELAYED ? DSYS_JOB_DELAYED : DSYS_JOB_WAITING)
                         : DSYS_JOB_ACTIVE;
    if (j->state != want) stored = 0;
    if (i == 12 && j->lease_until <= jobs[i]->lease_until) stored = 0;
    dsys_job_free(j);
  }
  ok(stored, "each op's effect committed, the failed ones changed nothing");
  for (int i = 0; i < 16; i++) dsys_job_free(jobs[i]);
  dsys_queue_close(q);
}

/* ---- merged submits: one-job submits of 12 callers queued behind an
 * open group run as one backend submit; each caller gets its own id for
 * its own payload; a keyed submit and one with other options in the run
 * go alone; if the merged submit fails, each runs alone ---- */

static int (*real_submit)(void *, const char *, const char *const *, size_t,
                          const dsys_submit_options *, int64_t, int64_t *, int *);
static int merged_fail, merged_calls;
static int counting_submit(void *st, const char *queue, const char *const *pl,
                           size_t n, const dsys_submit_options *o, int64_t now,
                           int64_t *ids, int *existed) {
  if (n > 1) {
    __atomic_add_fetch(&merged_calls, 1, __ATOMIC_RELAXED);
    if (__atomic_load_n(&merged_fail, __ATOMIC_ACQUIRE)) return DSYS_EIO;
  }
  return real_submit(st, queue, pl, n, o, now, ids, existed);
}

typedef struct scall {
  dsys_queue *q;
  int i;
  char payload[32];
  int rc, existed;
  int64_t id;
} scall;

static void *submit_caller(void *p) {
  scall *c = p;
  dsys_submit_options so = {.size = sizeof so};
  if (c->i == 5) so.idempotency_key = "k5";
  if (c->i == 8) so.priority = 9;
  c->rc = dsys_queue_submit(c->q, "s", c->payload, &so, &c->id, &c->existed);
  return NULL;
}

static int twelve_pending(void *q) { return dsysi_queue_pending(q) == 12; }

static void merged_submits(const char *path, int fail) {
  dsys_queue_ops o = *dsys_queue_ops_sqlite();
  real_begin = o.begin;
  real_submit = o.submit;
  o.begin = gated_begin;
  o.submit = counting_submit;
  merged_fail = fail;
  merged_calls = 0;
  dsys_queue *q = NULL;
  if (!ok(dsys_queue_open_ops(&q, &o, path, NULL) == 0, "open for merged submits"))
    return;
  pthread_mutex_lock(&gate_mu);
  gate_closed = 1;
  groups_begun = 0;
  pthread_mutex_unlock(&gate_mu);
  pthread_t blocker, th[12];
  scall calls[12];
  pthread_create(&blocker, NULL, group_blocker, q);
  ok(wait_until(one_group_begun, NULL), "a group is held open");
  for (int i = 0; i < 12; i++) {
    calls[i] = (scall){.q = q, .i = i};
    snprintf(calls[i].payload, sizeof calls[i].payload, "{\"c\":%d}", i);
    pthread_create(&th[i], NULL, submit_caller, &calls[i]);
  }
  ok(wait_until(twelve_pending, q), "12 one-job submits queued behind it");
  pthread_mutex_lock(&gate_mu);
  gate_closed = 0;
  pthread_cond_broadcast(&gate_cv);
  pthread_mutex_unlock(&gate_mu);
  pthread_join(blocker, NULL);
  for (int i = 0; i < 12; i++) pthread_join(th[i], NULL);
  is_int(groups_begun, 2, "the 12 submits ran as one group");
  /* runs between the keyed (5) and other-priority (8) ones: at least the
   * callers before 5 queued in order are merged; the queue order is the
   * threads' arrival order, so count rather than name the runs */
  ok(merged_calls >= 1, "merged into multi-job submits (%d)", merged_calls);
  int own = 1, distinct = 1;
  for (int i = 0; i < 12; i++) {
    dsys_job *j = NULL;
    if (calls[i].rc || calls[i].existed || dsys_queue_get(q, calls[i].id, &j) ||
        strcmp(j->payload, calls[i].payload) ||
        j->priority != (i == 8 ? 9 : 0) ||
        (i == 5) != (j->idempotency_key != NULL))
      own = 0;
    dsys_job_free(j);
    for (int k = 0; k < i; k++)
      if (calls[k].id == calls[i].id) distinct = 0;
  }
  ok(own && distinct, "each caller: its own job, its payload and options%s",
     fail ? " (the merged submit failed: one by one)" : "");
  dsys_job_counts c = {0};
  dsys_queue_counts(q, "s", &c);
  is_int(c.waiting, 12, "12 jobs, none twice%s", fail ? " (nothing of the failed merge kept)" : "");
  dsys_queue_close(q);
}

static void url_open(const char *url) {
  dsys_queue *q = NULL;
  is_int(dsys_queue_open(&q, "memory:", NULL), 0, "open memory: URL");
  dsys_queue_close(q);
  is_int(dsys_queue_open(&q, url, NULL), 0, "open sqlite:// URL (conformance file)");
  dsys_job_counts c;
  is_int(dsys_queue_counts(q, NULL, &c), 0, "counts through the URL handle");
  dsys_queue_close(q);
  is_int(dsys_queue_open(&q, "etcd://x", NULL), DSYS_ESCHEME, "unknown scheme");
  /* a pause is stored with the jobs: another handle (another process)
   * sees it at once */
  dsys_queue *q2 = NULL;
  is_int(dsys_queue_open(&q, url, NULL), 0, "two handles on one file");
  is_int(dsys_queue_open(&q2, url, NULL), 0, "the second");
  static const char *const QS[] = {"shared"};
  int64_t sid = 0;
  dsys_queue_submit(q, "shared", "1", NULL, &sid, NULL);
  is_int(dsys_queue_pause(q, "shared"), 0, "pause through the first");
  dsys_job *j = NULL;
  is_int(dsys_queue_claim(q2, QS, 1, "other", 1000, &j), DSYS_EAGAIN, "the second handle gets nothing");
  dsys_queue_close(q);
  is_int(dsys_queue_open(&q, url, NULL), 0, "reopen");
  dsys_queue_info *qi = NULL;
  size_t nqi = 0;
  dsys_queue_list_queues(q, &qi, &nqi);
  int kept = 0;
  for (size_t i = 0; i < nqi; i++)
    if (!strcmp(qi[i].name, "shared")) kept = qi[i].paused && qi[i].counts.waiting == 1;
  ok(kept, "the pause survives a reopen");
  dsys_free(qi);
  is_int(dsys_queue_resume(q, "shared"), 0, "resume through the first");
  is_int(dsys_queue_claim(q2, QS, 1, "other", 1000, &j), 0, "the second handle claims again");
  ok(j && j->id == sid, "the paused job");
  dsys_job_free(j);
  dsys_queue_close(q);
  dsys_queue_close(q2);
}

/* Migration 3 (narrower indexes) on a file written with schema 2: jobs in
 * every state are counted, listed and claimed as before. The version-2
 * file is made from a current one by putting the old indexes back (the
 * tables did not change). */
static int64_t sql_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  int64_t v = -1;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

static void migration3(const char *path) {
  char url[450];
  snprintf(url, sizeof url, "sqlite://%s", path);
  dsys_queue *q = NULL;
  if (!ok(dsys_queue_open(&q, url, NULL) == 0, "migration: open a new file")) return;
  const char *qs[] = {"m"};
  int64_t id;
  for (int i = 0; i < 6; i++) { /* priorities 0, 1, 2, 0, 1, 2 */
    dsys_submit_options so = {.size = sizeof so, .priority = i % 3, .max_attempts = 1};
    dsys_queue_submit(q, "m", "{}", &so, &id, NULL);
  }
  dsys_submit_options later = {.size = sizeof later, .delay_ms = 3600000};
  dsys_queue_submit(q, "m", "{}", &later, &id, NULL);
  dsys_job *j[3] = {0};
  for (int i = 0; i < 3; i++) dsys_queue_claim(q, qs, 1, "w", 60000, &j[i]);
  int dead = 0;
  int okc = j[0] && j[1] && j[2] && dsys_queue_complete(q, j[0]->id, j[0]->token, "{}") == 0 &&
            dsys_queue_fail(q, j[1]->id, j[1]->token, "boom", &dead) == 0 && dead;
  ok(okc, "migration: jobs completed and dead-lettered");
  dsys_queue_submit(q, "m", "{}", NULL, &id, NULL);
  dsys_queue_cancel(q, id);
  dsys_job_counts before = {0};
  dsys_queue_counts(q, "m", &before);
  for (int i = 0; i < 3; i++) dsys_job_free(j[i]);
  dsys_queue_close(q);

  sqlite3 *db = NULL;
  int rc = sqlite3_open(path, &db);
  if (!rc)
    rc = sqlite3_exec(db,
                      "BEGIN;"
                      "DROP INDEX dsys_jobs_wait; DROP INDEX dsys_jobs_done; DROP INDEX dsys_jobs_dead;"
                      "CREATE INDEX dsys_jobs_claim ON dsys_jobs(queue, state, priority DESC, id);"
                      "CREATE INDEX dsys_jobs_finished ON dsys_jobs(finished_at) WHERE finished_at > 0;"
                      "UPDATE dsys_schema SET version = 2 WHERE component = 'queue';"
                      "COMMIT;",
                      NULL, NULL, NULL);
  sqlite3_close(db);
  if (!is_int(rc, SQLITE_OK, "migration: the file set back to schema 2")) return;

  if (!ok(dsys_queue_open(&q, url, NULL) == 0, "migration: open the schema-2 file")) return;
  dsys_job_counts after = {0};
  dsys_queue_counts(q, "m", &after);
  ok(!memcmp(&before, &after, sizeof before) && after.waiting == 3 && after.delayed == 1 &&
         after.active == 1 && after.completed == 1 && after.failed == 1 && after.canceled == 1,
     "migration: the same counts (waiting %lld, delayed %lld, active %lld, completed %lld, "
     "failed %lld, canceled %lld)",
     (long long)after.waiting, (long long)after.delayed, (long long)after.active,
     (long long)after.completed, (long long)after.failed, (long long)after.canceled);
  dsys_job **dl = NULL;
  size_t n = 0;
  dsys_queue_list_dead(q, "m", 0, 10, &dl, &n);
  ok(n == 1 && !strcmp(dl[0]->error ? dl[0]->error : "", "boom"), "migration: the dead letter listed");
  dsys_job_list_free(dl, n);
  dsys_job *c = NULL;
  dsys_queue_claim(q, qs, 1, "w", 60000, &c);
  ok(c && c->priority == 1, "migration: claims keep priority order (got priority %d)",
     c ? c->priority : -1);
  dsys_job_free(c);
  dsys_queue_close(q);
  sqlite3_open(path, &db);
  is_int(sql_int(db, "SELECT version FROM dsys_schema WHERE component = 'queue'"), 3,
         "migration: schema version 3");
  is_int(sql_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN "
                     "('dsys_jobs_wait', 'dsys_jobs_done', 'dsys_jobs_dead')"),
         3, "migration: the new indexes");
  is_int(sql_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN "
                     "('dsys_jobs_claim', 'dsys_jobs_finished')"),
         0, "migration: the old ones dropped");
  sqlite3_stmt *st = NULL;
  sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL);
  ok(st && sqlite3_step(st) == SQLITE_ROW && !strcmp((const char *)sqlite3_column_text(st, 0), "ok"),
     "migration: integrity_check ok");
  sqlite3_finalize(st);
  sqlite3_close(db);
}

/* Several rows per statement (queue_sqlite.c): a submit_many of 45 (32 +
 * 8 + 5 one by one) keeps each payload with its id; a claim of 40 (32 +
 * 8 in two UPDATEs) hands out each job once, in order; a queue named
 * twice in a claim hands out its jobs once; runs of completions in one
 * group (dsysi_queue_batch: one finish_many) give each call its own
 * result, with a stale token, a repeated job or an unknown id among good
 * ones. */
static void many_rows(const char *path) {
  dsys_queue *q = NULL;
  if (!ok(dsys_queue_open_ops(&q, dsys_queue_ops_sqlite(), path, NULL) == 0,
          "open for rows per statement"))
    return;
  static const char *const R[] = {"r"};
  char bufs[45][32];
  const char *pl[45];
  int64_t ids[45];
  for (int i = 0; i < 45; i++) {
    snprintf(bufs[i], sizeof bufs[i], "{\"i\":%d}", i);
    pl[i] = bufs[i];
  }
  is_int(dsys_queue_submit_many(q, "r", pl, 45, NULL, ids), 0, "submit_many 45");
  int match = 1;
  for (int i = 0; i < 45; i++) {
    dsys_job *j = NULL;
    if (dsys_queue_get(q, ids[i], &j) || strcmp(j->payload, pl[i]) ||
        strcmp(j->queue, "r") || j->state != DSYS_JOB_WAITING ||
        (i && ids[i] != ids[i - 1] + 1))
      match = 0;
    dsys_job_free(j);
  }
  ok(match, "each id has its own payload, ids consecutive");
  dsys_job *jobs[64] = {0};
  size_t n = 0;
  is_int(dsys_queue_claim_many(q, R, 1, "w", 60000, 40, jobs, &n), 0, "claim_many 40");
  is_int(n, 40, "40 claimed");
  int good = n == 40;
  for (size_t i = 0; good && i < n; i++) {
    dsys_job *row = NULL;
    good = jobs[i]->id == ids[i] && jobs[i]->token == 1 &&
           !strcmp(jobs[i]->payload, pl[i]) &&
           dsys_queue_get(q, jobs[i]->id, &row) == 0 &&
           row->state == DSYS_JOB_ACTIVE && row->token == 1 &&
           row->attempts == 1 && !strcmp(row->worker, "w");
    dsys_job_free(row);
  }
  ok(good, "claimed in order, each row active with token 1 and the worker");
  static const char *const RR[] = {"r", "r"};
  dsys_job *more[8] = {0};
  size_t nm = 0;
  is_int(dsys_queue_claim_many(q, RR, 2, "w", 60000, 8, more, &nm), 0,
         "claim naming the queue twice");
  is_int(nm, 5, "the 5 left, each once");
  int once = nm == 5;
  for (size_t i = 0; once && i < nm; i++) once = more[i]->id == ids[40 + i];
  ok(once, "... in order");
  /* one batch: 20 good completions, then a stale token, a repeat, an
   * unknown id, a renewal, and good ones after them */
  dsysi_qout outs[30];
  size_t no = 0;
  for (size_t i = 0; i < 20; i++)
    outs[no++] = (dsysi_qout){.kind = DSYSI_Q_COMPLETE, .id = jobs[i]->id,
                              .token = jobs[i]->token, .text = "{\"ok\":1}"};
  outs[no++] = (dsysi_qout){.kind = DSYSI_Q_COMPLETE, .id = jobs[20]->id, .token = 7};
  outs[no++] = (dsysi_qout){.kind = DSYSI_Q_COMPLETE, .id = jobs[21]->id,
                            .token = jobs[21]->token, .text = "2"};
  outs[no++] = (dsysi_qout){.kind = DSYSI_Q_COMPLETE, .id = jobs[21]->id,
                            .token = jobs[21]->token, .text = "3"};
  outs[no++] = (dsysi_qout){.kind = DSYSI_Q_COMPLETE, .id = 999999, .token = 1};
  outs[no++] = (dsysi_qout){.kind = DSYSI_Q_HEARTBEAT, .id = jobs[22]->id,
                            .token = jobs[22]->token, .lease_ms = 90000};
  outs[no++] = (dsysi_qout){.kind = DSYSI_Q_COMPLETE, .id = jobs[23]->id,
                            .token = jobs[23]->token};
  outs[no++] = (dsysi_qout){.kind = DSYSI_Q_COMPLETE, .id = jobs[24]->id,
                            .token = jobs[24]->token};
  is_int(dsysi_queue_batch(q, outs, no, NULL, 0, NULL, 0, 0, NULL, NULL), 0,
         "a batch of %zu completions and a renewal", no);
  int first = 1;
  for (size_t i = 0; i < 20; i++) first = first && outs[i].rc == 0;
  ok(first, "20 good completions in one run: each 0");
  is_int(outs[20].rc, DSYS_ELEASE, "stale token among them: ELEASE");
  is_int(outs[21].rc, 0, "a job completed ...");
  is_int(outs[22].rc, DSYS_ELEASE, "... and again in the same run: ELEASE");
  is_int(outs[23].rc, DSYS_ENOTFOUND, "unknown job among them: ENOTFOUND");
  is_int(outs[24].rc, 0, "renewal among them");
  ok(outs[25].rc == 0 && outs[26].rc == 0, "completions after them");
  dsys_job *row = NULL;
  int stored = 1;
  for (size_t i = 0; i < 20; i++) {
    stored = stored && dsys_queue_get(q, jobs[i]->id, &row) == 0 &&
             row->state == DSYS_JOB_COMPLETED && !strcmp(row->result, "{\"ok\":1}");
    dsys_job_free(row);
    row = NULL;
  }
  ok(stored, "the 20 completed with their result");
  dsys_queue_get(q, jobs[20]->id, &row);
  ok(row && row->state == DSYS_JOB_ACTIVE, "the stale one still active");
  dsys_job_free(row);
  row = NULL;
  dsys_queue_get(q, jobs[21]->id, &row);
  ok(row && row->state == DSYS_JOB_COMPLETED && !strcmp(row->result, "2"),
     "the repeated one completed once, with the first result");
  dsys_job_free(row);
  row = NULL;
  dsys_queue_get(q, jobs[22]->id, &row);
  ok(row && row->state == DSYS_JOB_ACTIVE && row->lease_until > dsys_clock_wall_ms(dsys_clock_real()) + 80000,
     "the renewed one active with the new lease");
  dsys_job_free(row);
  row = NULL;
  dsys_queue_get(q, jobs[24]->id, &row);
  ok(row && row->state == DSYS_JOB_COMPLETED && !strcmp(row->result, "null"),
     "a completion without result stores null");
  dsys_job_free(row);
  for (size_t i = 0; i < n; i++) dsys_job_free(jobs[i]);
  for (size_t i = 0; i < nm; i++) dsys_job_free(more[i]);
  dsys_queue_close(q);
}

/* A backend whose commit fails on demand (as on a full disk): what rode in
 * the failed transaction is not acknowledged. */
static int (*real_commit)(void *);
static int commit_fails;
static int failing_commit(void *st) {
  if (__atomic_load_n(&commit_fails, __ATOMIC_ACQUIRE)) return DSYS_EIO;
  return real_commit(st);
}

static void failed_commit(const char *path) {
  dsys_queue_ops o = *dsys_queue_ops_sqlite();
  real_commit = o.commit;
  o.commit = failing_commit;
  dsys_queue *q = NULL;
  if (!ok(dsys_queue_open_ops(&q, &o, path, NULL) == 0, "open with a failing commit"))
    return;
  static const char *const F[] = {"f"};
  const char *pl[6] = {"1", "2", "3", "4", "5", "6"};
  dsys_queue_submit_many(q, "f", pl, 6, NULL, NULL);
  dsys_job *jobs[6] = {0};
  size_t n = 0;
  dsys_queue_claim_many(q, F, 1, "w", 60000, 3, jobs, &n);
  is_int(n, 3, "3 claimed");
  if (n != 3) return;
  /* completions riding with the next claim, as the worker sends them */
  dsysi_qout outs[3];
  for (int i = 0; i < 3; i++)
    outs[i] = (dsysi_qout){.kind = DSYSI_Q_COMPLETE, .id = jobs[i]->id,
                           .token = jobs[i]->token};
  dsys_job *next[3] = {0};
  size_t nn = 0;
  __atomic_store_n(&commit_fails, 1, __ATOMIC_RELEASE);
  int e = dsysi_queue_batch(q, outs, 3, F, 1, "w", 60000, 3, next, &nn);
  __atomic_store_n(&commit_fails, 0, __ATOMIC_RELEASE);
  is_int(e, DSYS_EIO, "the claim of a transaction that fails to commit gets its error");
  ok(nn == 0 && !next[0], "... and no job");
  ok(outs[0].rc == DSYS_EIO && outs[1].rc == DSYS_EIO && outs[2].rc == DSYS_EIO,
     "the completions riding with it are not acknowledged (EIO each)");
  dsys_job_counts c = {0};
  dsys_queue_counts(q, "f", &c);
  ok(c.completed == 0 && c.active == 3 && c.waiting == 3,
     "nothing of it was kept: 3 active, 3 waiting, none completed");
  is_int(dsysi_queue_batch(q, outs, 3, F, 1, "w", 60000, 3, next, &nn), 0,
         "the same batch again, committed");
  ok(outs[0].rc == 0 && outs[1].rc == 0 && outs[2].rc == 0 && nn == 3,
     "now acknowledged, and 3 more jobs claimed");
  dsys_queue_counts(q, "f", &c);
  ok(c.completed == 3 && c.active == 3, "3 completed, 3 active");
  for (int i = 0; i < 3; i++) dsys_job_free(jobs[i]);
  for (size_t i = 0; i < nn; i++) dsys_job_free(next[i]);
  dsys_queue_close(q);
}

/* The default prefetch follows the handlers (worker.c, adapt_prefetch):
 * fast handlers get more than 32 jobs buffered, slow ones never more. */
static long ap_handled;
static int ap_sleep_us;
static int ap_handler(dsys_job_ctx *ctx, const dsys_job *job, void *ud) {
  (void)ctx, (void)job, (void)ud;
  if (ap_sleep_us) usleep((useconds_t)ap_sleep_us);
  __atomic_add_fetch(&ap_handled, 1, __ATOMIC_RELAXED);
  return 0;
}

static int64_t mono_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs a worker of one thread with the default prefetch on jobs jobs;
 * returns the most jobs seen active at once while it ran (sampled until
 * all are done or for at most ms). */
static int64_t ap_run(dsys_queue *q, const char *name, int jobs, int64_t ms) {
  const char *pl[100];
  for (int i = 0; i < 100; i++) pl[i] = "{}";
  for (int i = 0; i < jobs; i += 100)
    dsys_queue_submit_many(q, name, pl, (size_t)(jobs - i < 100 ? jobs - i : 100), NULL, NULL);
  const char *const QN[] = {name};
  dsys_worker_options wo = {.size = sizeof wo, .queues = QN, .nqueues = 1,
                            .threads = 1, .lease_ms = 60000, .poll_ms = 20,
                            .handler = ap_handler};
  __atomic_store_n(&ap_handled, 0, __ATOMIC_RELAXED);
  dsys_worker *w = NULL;
  if (dsys_worker_start(&w, q, &wo)) return -1;
  int64_t most = 0, until = mono_now_ms() + ms;
  while (__atomic_load_n(&ap_handled, __ATOMIC_RELAXED) < jobs && mono_now_ms() < until) {
    dsys_job_counts c = {0};
    if (dsys_queue_counts(q, name, &c) == 0 && c.active > most) most = c.active;
    usleep(500);
  }
  dsys_worker_stop(w, DSYS_WORKER_STOP_RELEASE);
  return most;
}

static void auto_prefetch(const char *path) {
  dsys_queue *q = NULL;
  if (!ok(dsys_queue_open(&q, path, NULL) == 0, "open for the default prefetch"))
    return;
  ap_sleep_us = 0;
  int64_t fast = ap_run(q, "fast", 5000, 60000);
  ok(fast > 1 + 32, "fast handlers: more than 1 + 32 jobs held at once (%lld)", (long long)fast);
  ok(fast <= 1 + 256, "... and at most 1 + 256");
  dsys_job_counts c = {0};
  dsys_queue_counts(q, "fast", &c);
  is_int(c.completed, 5000, "all 5000 completed once");
  ap_sleep_us = 10000;
  int64_t slow = ap_run(q, "slow", 100, 400);
  ok(slow >= 2 && slow <= 1 + 32, "10 ms handlers: at most 1 + 32 held (%lld)", (long long)slow);
  dsys_queue_close(q);
}

int main(void) {
  char dir[256];
  snprintf(dir, sizeof dir, "%s/dsys-queue-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(dir)) tap_bail("mkdtemp");
  char url[400];
  snprintf(url, sizeof url, "sqlite://%s/q.sqlite", dir);
  char path[400];
  snprintf(path, sizeof path, "%s/q.sqlite", dir);
  conformance(dsys_queue_ops_sqlite(), ":memory:");
  conformance(dsys_queue_ops_sqlite(), path);
  ops_table();
  url_open(url);
  char url2[400];
  snprintf(url2, sizeof url2, "sqlite://%s/w.sqlite", dir);
  workers(url2);
  char path3[400];
  snprintf(path3, sizeof path3, "%s/g.sqlite", dir);
  shared_groups(path3);
  char path8[400];
  snprintf(path8, sizeof path8, "%s/s.sqlite", dir);
  merged_submits(path8, 0);
  snprintf(path8, sizeof path8, "%s/s2.sqlite", dir);
  merged_submits(path8, 1);
  char path4[400];
  snprintf(path4, sizeof path4, "%s/m.sqlite", dir);
  migration3(path4);
  char path5[400];
  snprintf(path5, sizeof path5, "%s/r.sqlite", dir);
  many_rows(path5);
  many_rows(":memory:");
  char path6[400];
  snprintf(path6, sizeof path6, "%s/c.sqlite", dir);
  failed_commit(path6);
  char url7[400];
  snprintf(url7, sizeof url7, "sqlite://%s/p.sqlite", dir);
  auto_prefetch(url7);
  /* backoff distribution: within bounds, and not constant */
  int in = 1, distinct = 0;
  int64_t first = dsysi_queue_backoff(3, 100, 10000);
  for (int i = 0; i < 200; i++) {
    int64_t b = dsysi_queue_backoff(3, 100, 10000);
    if (b < 0 || b > 400) in = 0;
    if (b != first) distinct = 1;
  }
  ok(in, "backoff(3, 100) in [0, 400]");
  ok(distinct, "backoff is jittered");
  ok(dsysi_queue_backoff(50, 100, 1000) <= 1000, "backoff capped");
  /* the same suite on PostgreSQL (a real throwaway server; failing to
   * start it fails the test) */
  tpg srv;
  if (ok(tpg_start(&srv) == 0, "start a throwaway PostgreSQL")) {
    conformance(dsysi_queue_ops_pg(), srv.url + strlen("postgresql://"));
    url_open(srv.url);
    workers(srv.url);
  }
  tpg_stop(&srv);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) tap_diag("cleanup failed");
  return tap_done();
}
