/*
 * Event streams and tracing (issue 7): job progress/state streams from the
 * compute service (over inproc, from another instance than the one running
 * the job, through a gateway on an event-loop server), data change streams
 * (this instance, another instance on the same SQLite file, Last-Event-ID
 * resume), the traceparent from the gateway onto a queued job and its
 * worker's log lines, and JSON access-log records.
 */
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <distsys/events.h>
#include "svc-test.h"

static char db_[300];

static int64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}
static void msleep(int ms) {
  struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&t, NULL);
}

/* ---- an SSE collector ---- */
typedef struct coll {
  pthread_mutex_t mu;
  char buf[1 << 18];
  size_t len;
  int64_t first_ms, end_ms;
  atomic_int done;
  int err, status;
} coll;

static void coll_chunk(const void *d, size_t n, void *ud) {
  coll *c = ud;
  pthread_mutex_lock(&c->mu);
  if (!c->first_ms) c->first_ms = now_ms();
  if (c->len + n < sizeof c->buf) {
    memcpy(c->buf + c->len, d, n);
    c->len += n;
    c->buf[c->len] = 0;
  }
  pthread_mutex_unlock(&c->mu);
}
static void coll_done(int err, dsys_reply *r, void *ud) {
  coll *c = ud;
  c->err = err;
  c->status = r ? dsys_reply_status(r) : 0;
  c->end_ms = now_ms();
  dsys_reply_free(r);
  atomic_store(&c->done, 1);
}
static coll *coll_start(const char *url, const char *path, const char *last_id,
                        int64_t timeout_ms) {
  coll *c = calloc(1, sizeof *c);
  pthread_mutex_init(&c->mu, NULL);
  dsys_header h[1] = {{"Last-Event-ID", last_id}};
  dsys_call k = {.size = sizeof k, .method = "GET", .url = url, .path = path,
                 .headers = last_id ? h : NULL, .nheaders = last_id ? 1 : 0,
                 .timeout_ms = timeout_ms, .on_chunk = coll_chunk, .chunk_ud = c};
  if (dsys_client_send(cli_, &k, coll_done, c)) tap_bail("client_send");
  return c;
}
static int coll_wait_done(coll *c, int ms) {
  for (int i = 0; i < ms / 5 && !atomic_load(&c->done); i++) msleep(5);
  return atomic_load(&c->done);
}
static void coll_free(coll *c) {
  coll_wait_done(c, 30000);
  pthread_mutex_destroy(&c->mu);
  free(c);
}

/* The events of a collected stream, parsed: names, ids, data objects. */
typedef struct evs {
  size_t n;
  char name[64][32];
  uint64_t id[64];
  json_object *data[64];
} evs;
static void evs_parse(coll *c, evs *e) {
  memset(e, 0, sizeof *e);
  pthread_mutex_lock(&c->mu);
  char *copy = strdup(c->buf);
  pthread_mutex_unlock(&c->mu);
  char *save = NULL;
  for (char *blk = copy, *end; blk && *blk && e->n < 64; blk = end) {
    end = strstr(blk, "\n\n");
    if (end) {
      *end = 0;
      end += 2;
    }
    char name[32] = "", *data = NULL;
    uint64_t id = 0;
    for (char *l = strtok_r(blk, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
      if (!strncmp(l, "event: ", 7)) snprintf(name, sizeof name, "%s", l + 7);
      else if (!strncmp(l, "id: ", 4)) id = strtoull(l + 4, NULL, 10);
      else if (!strncmp(l, "data: ", 6)) data = l + 6;
    }
    if (!*name || !data) continue;
    snprintf(e->name[e->n], sizeof e->name[0], "%s", name);
    e->id[e->n] = id;
    dsysi_json_parse(data, strlen(data), &e->data[e->n]);
    e->n++;
  }
  free(copy);
}
static void evs_free(evs *e) {
  for (size_t i = 0; i < e->n; i++) json_object_put(e->data[i]);
}
static const char *ev_str(evs *e, size_t i, const char *k) {
  json_object *v = jget(e->data[i], k);
  return json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
}
static int count_named(coll *c, const char *name) {
  evs e;
  evs_parse(c, &e);
  int n = 0;
  for (size_t i = 0; i < e.n; i++) n += !strcmp(e.name[i], name);
  evs_free(&e);
  return n;
}
static int wait_named(coll *c, const char *name, int n, int ms) {
  for (int i = 0; i < ms / 10; i++) {
    if (count_named(c, name) >= n) return 1;
    msleep(10);
  }
  return 0;
}

/* ---- compute instances ---- */
typedef struct cinst {
  dsys_server *srv;
  dsys_queue *q;
  dsys_compute_service *svc;
  char url[64];
} cinst;
static cinst A, B; /* A: no workers (streams); B: runs the jobs */

static void cinst_start(cinst *I, const char *name, int workers) {
  char url[400];
  snprintf(url, sizeof url, "sqlite://%s/q.sqlite", db_);
  if (dsys_queue_open(&I->q, url, NULL)) tap_bail("queue open");
  I->srv = svc_server(name, 1);
  dsys_compute_options o = {.size = sizeof o, .queue = I->q, .workers = 2, .name = name,
                            .no_workers = !workers, .worker_poll_ms = 20,
                            .events_poll_ms = 50};
  svc_listen(I->srv, dsys_service_compute_mount(I->srv, &o, &I->svc), name, I->url,
             sizeof I->url);
  if (dsys_server_listen(I->srv, "http://127.0.0.1:0")) tap_bail("listen http");
}
static void cinst_stop(cinst *I) {
  dsys_server_stop(I->srv, 2000);
  dsys_service_compute_free(I->svc);
  dsys_server_free(I->srv);
  dsys_queue_close(I->q);
}

static char *submit(const char *url, int delay_ms, const char *traceparent) {
  char body[200];
  snprintf(body, sizeof body,
           "{\"type\":\"add\",\"data\":{\"operands\":[2,3],\"delayMs\":%d}}", delay_ms);
  char hdr[120];
  snprintf(hdr, sizeof hdr, "traceparent: %s", traceparent ? traceparent : "");
  const char *hdrs[] = {hdr, NULL};
  resp *r = call_h(url, "POST", "/api/compute/job", body, 0, traceparent ? hdrs : NULL);
  char *id = r->status == 202 ? strdup(js(r, "jobId")) : NULL;
  if (!id) tap_diag("submit: %d %s", r->status, r->body);
  resp_free(r);
  return id;
}

/* Check a finished job stream: progress in order, final state last. */
static void check_job_stream(coll *c, const char *id, const char *label, int want_progress) {
  evs e;
  evs_parse(c, &e);
  int nprog = 0, ordered = 1, last = -1, states = 0, ids_ok = 1;
  for (size_t i = 0; i < e.n; i++) {
    if (strcmp(ev_str(&e, i, "jobId"), id)) ids_ok = 0;
    if (!strcmp(e.name[i], "job-progress")) {
      int p = (int)json_object_get_int(jget(e.data[i], "progress"));
      if (p < last) ordered = 0;
      last = p;
      nprog++;
      if (!jget(e.data[i], "timestamp") || !jget(e.data[i], "status")) ids_ok = 0;
    } else if (!strcmp(e.name[i], "job-state")) {
      states++;
    }
  }
  ok(ids_ok && e.n > 0, "[%s] every event names job %s and has its fields", label, id);
  ok(nprog >= want_progress, "[%s] %d job-progress events (>= %d)", label, nprog, want_progress);
  ok(ordered, "[%s] progress never goes backwards", label);
  size_t k = e.n ? e.n - 1 : 0;
  ok(e.n && !strcmp(e.name[k], "job-state") && !strcmp(ev_str(&e, k, "status"), "completed") &&
         json_object_get_int(jget(e.data[k], "result.result")) == 5,
     "[%s] last event: job-state completed with the result (%zu events, %d states)", label, e.n,
     states);
  ok(c->err == 0 && c->status == 200, "[%s] the stream ended by itself (err %d status %d)", label,
     c->err, c->status);
  evs_free(&e);
}

static void test_jobs(dsys_server *gwsrv) {
  /* run by B, streamed from A (another instance: the poller) */
  char *id = submit(A.url, 700, NULL);
  char path[80];
  snprintf(path, sizeof path, "/api/compute/job/%s/events", id);
  coll *c = coll_start(A.url, path, NULL, 20000);
  ok(coll_wait_done(c, 15000), "[A streams B's job] stream ended");
  check_job_stream(c, id, "A streams B's job", 2);
  ok(count_named(c, "job-state") >= 2, "[A streams B's job] more than one state change seen");
  coll_free(c);
  free(id);

  /* streamed from B, whose own worker runs it (local progress) */
  id = submit(B.url, 700, NULL);
  snprintf(path, sizeof path, "/api/compute/job/%s/events", id);
  c = coll_start(B.url, path, NULL, 20000);
  ok(coll_wait_done(c, 15000), "[B streams its own job] stream ended");
  check_job_stream(c, id, "B streams its own job", 4);
  coll_free(c);

  /* an already finished job: its final state, then the end */
  c = coll_start(A.url, path, NULL, 20000);
  ok(coll_wait_done(c, 5000), "[finished job] stream ended at once");
  evs e;
  evs_parse(c, &e);
  ok(e.n >= 1 && !strcmp(e.name[e.n - 1], "job-state") &&
         !strcmp(ev_str(&e, e.n - 1, "status"), "completed") &&
         json_object_get_boolean(jget(e.data[e.n - 1], "final")),
     "[finished job] final job-state completed (%zu events)", e.n);
  evs_free(&e);
  coll_free(c);
  free(id);

  /* unknown job: 404 JSON */
  resp *r = call(A.url, "GET", "/api/compute/job/999999/events", NULL);
  ok(r->status == 404 && !strcmp(js(r, "error"), "Job not found"), "unknown job -> 404 (%d %s)",
     r->status, r->body);
  resp_free(r);
  r = call(A.url, "GET", "/api/compute/job/abc/events", NULL);
  ok(r->status == 404 && r->j && ji(r, "error") != -999999, "malformed job id -> 404 JSON (%d)",
     r->status);
  resp_free(r);

  /* through the gateway on an event loop: unbuffered */
  const char *gw = dsys_server_url(gwsrv, 0);
  id = submit(gw, 900, NULL);
  ok(id != NULL, "[gateway] job submitted through the gateway");
  snprintf(path, sizeof path, "/api/compute/job/%s/events", id ? id : "0");
  int64_t t0 = now_ms();
  c = coll_start(gw, path, NULL, 20000);
  ok(coll_wait_done(c, 15000), "[gateway] stream ended");
  check_job_stream(c, id ? id : "", "gateway", 2);
  ok(c->first_ms && c->first_ms + 300 < c->end_ms,
     "[gateway] first bytes arrived before the stream ended (%lld ms vs %lld ms)",
     (long long)(c->first_ms - t0), (long long)(c->end_ms - t0));
  coll_free(c);
  free(id);
}

/* ---- tracing and access logs (stderr captured to a file) ---- */
static void test_trace(dsys_server *gwsrv) {
  char logpath[400];
  snprintf(logpath, sizeof logpath, "%s/stderr.log", db_);
  fflush(stderr);
  int saved = dup(2);
  int fd = open(logpath, O_CREAT | O_TRUNC | O_WRONLY, 0600);
  if (fd < 0 || saved < 0) tap_bail("log file");
  dup2(fd, 2);
  close(fd);
  dsys_log_set_format(DSYS_LOG_JSON);
  const char *trace = "4bf92f3577b34da6a3ce929d0e0e4736";
  char tp[64];
  snprintf(tp, sizeof tp, "00-%s-00f067aa0ba902b7-01", trace);
  const char *gw = dsys_server_url(gwsrv, 0);
  char *id = submit(gw, 0, tp);
  int done = 0;
  char path[80];
  snprintf(path, sizeof path, "/api/compute/job/%s", id ? id : "0");
  resp *r = NULL;
  for (int i = 0; i < 300 && !done; i++) {
    resp_free(r);
    r = call(A.url, "GET", path, NULL);
    done = !strcmp(js(r, "status"), "completed");
    if (!done) msleep(10);
  }
  msleep(100); /* the worker's last log line */
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  dsys_log_set_format(DSYS_LOG_TEXT);
  ok(done, "[trace] job through the gateway completed");
  is_str(js(r, "traceId"), trace, "[trace] GET /job/:id shows the submitting request's trace id");
  resp_free(r);

  FILE *f = fopen(logpath, "r");
  char line[4096];
  int lines = 0, bad_json = 0, worker_line = 0, gw_access = 0, svc_access = 0;
  const char *gw_up = dsys_server_url(A.srv, 1);
  while (f && fgets(line, sizeof line, f)) {
    json_object *o = NULL;
    lines++;
    if (dsysi_json_parse(line, strlen(line), &o) || !json_object_is_type(o, json_type_object)) {
      bad_json++;
      json_object_put(o);
      continue;
    }
    const char *tid = dsysi_json_str(o, "traceId");
    const char *jid = dsysi_json_str(o, "jobId");
    if (tid && jid && id && !strcmp(tid, trace) && !strcmp(jid, id) &&
        strstr(dsysi_json_str(o, "msg") ? dsysi_json_str(o, "msg") : "", "started"))
      worker_line = 1;
    const char *type = dsysi_json_str(o, "type");
    const char *tr = dsysi_json_str(o, "trace_id");
    json_object *st, *dur;
    if (type && !strcmp(type, "access") && tr && !strcmp(tr, trace) &&
        json_object_object_get_ex(o, "status", &st) && json_object_get_int(st) == 202 &&
        json_object_object_get_ex(o, "duration_ms", &dur) &&
        (json_object_is_type(dur, json_type_double) || json_object_is_type(dur, json_type_int)) &&
        dsysi_json_str(o, "request_id") && dsysi_json_str(o, "route")) {
      const char *up = dsysi_json_str(o, "upstream");
      const char *comp = dsysi_json_str(o, "component");
      if (up && gw_up && !strcmp(up, gw_up) && comp && !strcmp(comp, "gateway")) gw_access = 1;
      if (comp && !strcmp(comp, "A") && !strcmp(dsysi_json_str(o, "route"), "/api/compute/job"))
        svc_access = 1;
    }
    json_object_put(o);
  }
  if (f) fclose(f);
  ok(lines > 0 && bad_json == 0, "[log] %d stderr lines, all JSON (%d not)", lines, bad_json);
  ok(worker_line, "[log] the worker's line for job %s carries traceId %s", id ? id : "?", trace);
  ok(gw_access, "[log] gateway access record: trace_id, request_id, route, status 202, "
                "duration_ms, upstream %s", gw_up ? gw_up : "?");
  ok(svc_access, "[log] compute access record: route /api/compute/job and the same trace_id");
  if (!worker_line || !gw_access || !svc_access) {
    char cmd[500];
    snprintf(cmd, sizeof cmd, "sed 's/^/# /' '%s' | tail -20", logpath);
    if (system(cmd)) tap_diag("cat failed");
  }
  free(id);
}

/* ---- data change streams ---- */
typedef struct dinst {
  dsys_server *srv;
  dsys_store *store;
  dsys_data_service *svc;
  char url[64];
} dinst;

static void dinst_start(dinst *I, const char *name) {
  char url[400];
  snprintf(url, sizeof url, "sqlite://%s/d.sqlite", db_);
  if (dsys_store_open(&I->store, url, NULL)) tap_bail("store open");
  I->srv = svc_server(name, 0);
  dsys_data_options o = {.size = sizeof o, .store = I->store, .name = name,
                         .events_poll_ms = 50};
  svc_listen(I->srv, dsys_service_data_mount(I->srv, &o, &I->svc), name, I->url,
             sizeof I->url);
}
static void dinst_stop(dinst *I) {
  dsys_server_stop(I->srv, 2000);
  dsys_service_data_free(I->svc);
  dsys_server_free(I->srv);
  dsys_store_close(I->store);
}

static void test_data(void) {
  dinst D1, D2;
  dinst_start(&D1, "D1");
  dinst_start(&D2, "D2");
  coll *c = coll_start(D1.url, "/api/data/events", NULL, 4000);
  msleep(100);
  resp *r = call(D1.url, "POST", "/api/data", "{\"key\":\"ev-a\",\"value\":1}");
  ok(r->status == 201, "[data] create on D1");
  resp_free(r);
  ok(wait_named(c, "data-created", 1, 2000), "[data] data-created from this instance");
  int64_t t0 = now_ms();
  r = call(D2.url, "POST", "/api/data", "{\"key\":\"ev-b\",\"value\":{\"x\":2}}");
  ok(r->status == 201, "[data] create on D2 (another instance, same file)");
  resp_free(r);
  ok(wait_named(c, "data-created", 2, 3000), "[data] data-created from the other instance "
                                             "(after %lld ms)", (long long)(now_ms() - t0));
  r = call(D2.url, "PUT", "/api/data/ev-a", "{\"value\":7}");
  ok(r->status == 200, "[data] update on D2");
  resp_free(r);
  ok(wait_named(c, "data-updated", 1, 3000), "[data] data-updated from the other instance");
  r = call(D1.url, "DELETE", "/api/data/ev-b", NULL);
  ok(r->status == 200, "[data] delete on D1");
  resp_free(r);
  ok(wait_named(c, "data-deleted", 1, 3000), "[data] data-deleted");
  evs e;
  evs_parse(c, &e);
  ok(e.n == 4, "[data] exactly 4 events, no duplicates (%zu)", e.n);
  int order = e.n == 4 && !strcmp(e.name[0], "data-created") && !strcmp(e.name[1], "data-created") &&
              !strcmp(e.name[2], "data-updated") && !strcmp(e.name[3], "data-deleted");
  ok(order, "[data] in the order of the writes");
  ok(e.n == 4 && !strcmp(ev_str(&e, 0, "key"), "ev-a") &&
         !strcmp(ev_str(&e, 0, "data.key"), "ev-a") &&
         json_object_get_int(jget(e.data[0], "data.value")) == 1 &&
         !strcmp(ev_str(&e, 0, "service"), "D1"),
     "[data] data-created carries the item and the writing instance");
  ok(e.n == 4 && json_object_get_int(jget(e.data[2], "data.value")) == 7 &&
         !strcmp(ev_str(&e, 2, "service"), "D2"),
     "[data] data-updated carries the new value (written by D2)");
  ok(e.n == 4 && !strcmp(ev_str(&e, 3, "key"), "ev-b") &&
         !strncmp(ev_str(&e, 3, "id"), "data-", 5) && !jget(e.data[3], "data"),
     "[data] data-deleted carries id and key only");
  int ids_up = e.n == 4;
  for (size_t i = 1; i < e.n; i++) ids_up = ids_up && e.id[i] > e.id[i - 1];
  ok(ids_up, "[data] event ids increase");
  /* resume after the first event: the other three, none before */
  char lid[32];
  snprintf(lid, sizeof lid, "%llu", e.n ? (unsigned long long)e.id[0] : 0ULL);
  coll *c2 = coll_start(D1.url, "/api/data/events", lid, 800);
  coll_wait_done(c2, 5000);
  evs e2;
  evs_parse(c2, &e2);
  ok(e2.n == 3 && e.n == 4 && e2.id[0] == e.id[1] && e2.id[2] == e.id[3],
     "[data] Last-Event-ID resumes after the given event (%zu events)", e2.n);
  evs_free(&e2);
  evs_free(&e);
  coll_free(c2);
  coll_free(c);
  dinst_stop(&D1);
  dinst_stop(&D2);
}

int main(void) {
  dsys_log_set_level(DSYS_LOG_WARN);
  make_tmpdir("streams");
  snprintf(db_, sizeof db_, "%s", tmpdir_);
  if (dsys_client_new(&cli_, NULL)) tap_bail("client");
  cinst_start(&A, "A", 0);
  cinst_start(&B, "B", 1);
  /* a gateway on an event-loop server in front of A */
  dsys_gateway *gw = NULL;
  dsys_gateway_options go = {.size = sizeof go, .try_timeout_ms = 20000};
  const char *urls[] = {dsys_server_url(A.srv, 1)};
  if (dsys_gateway_new(&gw, &go) || dsys_gateway_add_upstream(gw, "compute", urls, 1, NULL) ||
      dsys_gateway_add_route(gw, "/api/compute", "compute"))
    tap_bail("gateway");
  dsys_server *gwsrv = NULL;
  dsys_server_options so = {.size = sizeof so, .event_loops = 1, .access_log = 1,
                            .name = "gateway"};
  if (dsys_server_new(&gwsrv, &so) || dsys_gateway_mount(gw, gwsrv) ||
      dsys_server_listen(gwsrv, "http://127.0.0.1:0"))
    tap_bail("gateway server");

  test_jobs(gwsrv);
  dsys_log_set_level(DSYS_LOG_INFO);
  test_trace(gwsrv);
  dsys_log_set_level(DSYS_LOG_WARN);
  test_data();

  dsys_server_stop(gwsrv, 2000);
  dsys_gateway_free(gw);
  dsys_server_free(gwsrv);
  cinst_stop(&A);
  cinst_stop(&B);
  dsys_client_free(cli_);
  rm_tmpdir();
  return tap_done();
}
