/*
 * Events: ordering, drop-oldest with a count, resume from an id (and the
 * gap when history no longer reaches back), many subscribers with
 * concurrent publishers, unsubscribe during publish, SSE framing, and a
 * live SSE stream over inproc:// (resume by Last-Event-ID, heartbeat on a
 * fake clock, client going away, close_streams).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "tap.h"

static void msleep(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void pub(dsys_events *ev, const char *topic, const char *name, const char *data,
                uint64_t *id) {
  if (dsys_events_publish(ev, topic, name, data, strlen(data), id)) tap_bail("publish");
}

static void test_order_and_drop(void) {
  dsys_events *ev;
  dsys_events_options o = {.size = sizeof o, .queue_len = 4, .history = 8, .first_id = 100};
  is_int(dsys_events_new(&ev, &o), 0, "new hub");
  const char *topics[] = {"a"};
  dsys_events_sub *s;
  is_int(dsys_events_subscribe(ev, topics, 1, 0, NULL, NULL, &s), 0, "subscribe to a");
  uint64_t id;
  pub(ev, "a", "x", "1", &id);
  is_int(id, 100, "first id is first_id");
  pub(ev, "b", "x", "other topic", NULL);
  pub(ev, "a", "x", "2", NULL);
  const dsys_event *e;
  uint64_t dropped = 99;
  is_int(dsys_events_next(s, &e, &dropped), 0, "next");
  ok(e && !strcmp(e->data, "1") && e->id == 100 && !strcmp(e->topic, "a") && !strcmp(e->name, "x"),
     "first event in order");
  is_int(dropped, 0, "nothing dropped");
  dsys_event_release(e);
  is_int(dsys_events_next(s, &e, NULL), 0, "next");
  ok(e && !strcmp(e->data, "2") && e->id == 102, "second event (other topic skipped), id 102");
  dsys_event_release(e);
  is_int(dsys_events_next(s, &e, &dropped), DSYS_EAGAIN, "empty queue: EAGAIN");
  /* overflow: 10 events into a queue of 4 */
  for (int i = 0; i < 10; i++) {
    char d[8];
    snprintf(d, sizeof d, "n%d", i);
    pub(ev, "a", NULL, d, NULL);
  }
  is_int(dsys_events_next(s, &e, &dropped), 0, "next after overflow");
  is_int(dropped, 6, "told that the 6 oldest were dropped");
  ok(e && !strcmp(e->data, "n6"), "the oldest kept is n6 (got %s)", e ? e->data : "-");
  dsys_event_release(e);
  int seq_ok = 1;
  for (int i = 7; i < 10; i++) {
    char d[8];
    snprintf(d, sizeof d, "n%d", i);
    if (dsys_events_next(s, &e, &dropped) || strcmp(e->data, d) || dropped) seq_ok = 0;
    dsys_event_release(e);
  }
  ok(seq_ok, "then n7..n9 in order, no further drops");
  uint64_t np, nd;
  dsys_events_counters(ev, &np, &nd);
  ok(np == 13 && nd == 6, "counters: 13 published, 6 dropped (%llu, %llu)", (unsigned long long)np,
     (unsigned long long)nd);
  is_int(dsys_events_publish(ev, "a", "bad\nname", "x", 1, NULL), DSYS_EINVAL, "event name with LF rejected");
  is_int(dsys_events_publish(ev, "", NULL, "x", 1, NULL), DSYS_EINVAL, "empty topic rejected");
  is_int(dsys_events_publish(ev, "a", NULL, "x\0y", 3, NULL), DSYS_EINVAL, "NUL in data rejected");
  dsys_events_unsubscribe(s);
  dsys_events_free(ev);
}

static void test_resume(void) {
  dsys_events *ev;
  dsys_events_options o = {.size = sizeof o, .history = 4, .first_id = 1};
  dsys_events_new(&ev, &o);
  uint64_t a[6], b[3];
  pub(ev, "a", NULL, "a0", &a[0]);
  pub(ev, "b", NULL, "b0", &b[0]);
  pub(ev, "a", NULL, "a1", &a[1]);
  pub(ev, "b", NULL, "b1", &b[1]);
  pub(ev, "a", NULL, "a2", &a[2]);
  const char *ta[] = {"a"}, *tab[] = {"a", "b"};
  dsys_events_sub *s;
  const dsys_event *e;
  is_int(dsys_events_subscribe(ev, ta, 1, a[0], NULL, NULL, &s), 0, "resume a after a0");
  int okk = !dsys_events_next(s, &e, NULL) && !strcmp(e->data, "a1");
  dsys_event_release(e);
  okk = okk && !dsys_events_next(s, &e, NULL) && !strcmp(e->data, "a2");
  dsys_event_release(e);
  okk = okk && dsys_events_next(s, &e, NULL) == DSYS_EAGAIN;
  ok(okk, "replays a1, a2 only");
  is_int(dsys_events_resume_gap(s), 0, "no gap");
  dsys_events_unsubscribe(s);
  dsys_events_subscribe(ev, tab, 2, b[0], NULL, NULL, &s);
  char got[64] = "";
  while (!dsys_events_next(s, &e, NULL)) {
    strcat(got, e->data);
    strcat(got, " ");
    dsys_event_release(e);
  }
  is_str(got, "a1 b1 a2 ", "two topics resumed merged in id order");
  dsys_events_unsubscribe(s);
  /* evict: history 4 per topic; a0..a5 leaves a2..a5 */
  pub(ev, "a", NULL, "a3", &a[3]);
  pub(ev, "a", NULL, "a4", &a[4]);
  pub(ev, "a", NULL, "a5", &a[5]);
  dsys_events_subscribe(ev, ta, 1, a[0], NULL, NULL, &s);
  is_int(dsys_events_resume_gap(s), 1, "resume from an evicted id: gap reported");
  got[0] = 0;
  while (!dsys_events_next(s, &e, NULL)) {
    strcat(got, e->data);
    strcat(got, " ");
    dsys_event_release(e);
  }
  is_str(got, "a2 a3 a4 a5 ", "and the kept events replayed");
  dsys_events_unsubscribe(s);
  dsys_events_subscribe(ev, ta, 1, a[1], NULL, NULL, &s);
  is_int(dsys_events_resume_gap(s), 0, "resume from the id just before the kept ones: no gap");
  dsys_events_unsubscribe(s);
  dsys_events_subscribe(ev, ta, 1, 999999, NULL, NULL, &s);
  is_int(dsys_events_resume_gap(s), 1, "an id this hub never gave out: gap");
  is_int(dsys_events_next(s, &e, NULL), DSYS_EAGAIN, "and nothing replayed");
  dsys_events_unsubscribe(s);
  dsys_events_free(ev);
}

/* many subscribers, concurrent publishers */
#define NSUB 40
#define NPUB 4
#define PER 250
static dsys_events *g_ev;
static void *publisher(void *arg) {
  for (int i = 0; i < PER; i++) dsys_events_publish(g_ev, "t", NULL, "x", 1, NULL);
  return NULL;
}
static atomic_int notified;
static void count_notify(dsys_events_sub *s, void *ud) { atomic_fetch_add(&notified, 1); }

static void test_many(void) {
  dsys_events_options o = {.size = sizeof o, .queue_len = NPUB * PER};
  dsys_events_new(&g_ev, &o);
  dsys_events_sub *subs[NSUB];
  for (int i = 0; i < NSUB; i++) dsys_events_subscribe(g_ev, NULL, 0, 0, count_notify, NULL, &subs[i]);
  pthread_t th[NPUB];
  for (int i = 0; i < NPUB; i++) pthread_create(&th[i], NULL, publisher, NULL);
  for (int i = 0; i < NPUB; i++) pthread_join(th[i], NULL);
  int all = 1;
  for (int i = 0; i < NSUB; i++) {
    uint64_t last = 0, n = 0, dropped = 0, d;
    const dsys_event *e;
    while (!dsys_events_next(subs[i], &e, &d)) {
      if (e->id <= last) all = 0;
      last = e->id;
      n++;
      dropped += d;
      dsys_event_release(e);
    }
    if (n != NPUB * PER || dropped) all = 0;
    dsys_events_unsubscribe(subs[i]);
  }
  ok(all, "%d subscribers each got all %d events of %d threads in id order", NSUB, NPUB * PER, NPUB);
  is_int(atomic_load(&notified), NSUB * NPUB * PER, "notify once per queued event");
  dsys_events_free(g_ev);
}

/* unsubscribe during publish */
static atomic_int after_unsub;
static atomic_int self_calls;
static void self_unsub(dsys_events_sub *s, void *ud) {
  atomic_fetch_add(&self_calls, 1);
  dsys_events_unsubscribe(s); /* from inside its own notify */
}
static atomic_int stop_pub;
static void *spam(void *arg) {
  while (!atomic_load(&stop_pub)) dsys_events_publish(g_ev, "t", NULL, "x", 1, NULL);
  return NULL;
}
static atomic_int flag_closed;
static void slow_notify(dsys_events_sub *s, void *ud) {
  if (atomic_load(&flag_closed)) atomic_fetch_add(&after_unsub, 1);
  msleep(1);
}

static void test_unsub_during_publish(void) {
  dsys_events_new(&g_ev, NULL);
  dsys_events_sub *s;
  dsys_events_subscribe(g_ev, NULL, 0, 0, self_unsub, NULL, &s);
  dsys_events_publish(g_ev, "t", NULL, "x", 1, NULL);
  dsys_events_publish(g_ev, "t", NULL, "y", 1, NULL);
  is_int(atomic_load(&self_calls), 1, "a subscription unsubscribing itself in notify is not called again");
  pthread_t th[2];
  atomic_store(&stop_pub, 0);
  for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, spam, NULL);
  int clean = 1;
  for (int round = 0; round < 20; round++) {
    dsys_events_sub *x;
    dsys_events_subscribe(g_ev, NULL, 0, 0, slow_notify, NULL, &x);
    msleep(2);
    dsys_events_unsubscribe(x);
    atomic_store(&flag_closed, 1);
    msleep(3);
    if (atomic_load(&after_unsub)) clean = 0;
    atomic_store(&flag_closed, 0);
  }
  atomic_store(&stop_pub, 1);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  ok(clean, "no notify after unsubscribe returned, while 2 threads publish (20 rounds)");
  dsys_events_free(g_ev);
}

static void test_sse_framing(void) {
  char *s;
  size_t n;
  is_int(dsys_sse_encode(7, "update", "{\"a\":1}", 7, &s, &n), 0, "encode");
  is_str(s, "id: 7\nevent: update\ndata: {\"a\":1}\n\n", "id, event and data lines");
  ok(n == strlen(s), "length");
  dsys_free(s);
  const char *ml = "one\ntwo\r\nthree\rfour";
  dsys_sse_encode(0, NULL, ml, strlen(ml), &s, NULL);
  is_str(s, "data: one\ndata: two\ndata: three\ndata: four\n\n", "multi-line data: LF, CRLF, CR");
  dsys_free(s);
  dsys_sse_encode(0, "", "end\n", 4, &s, NULL);
  is_str(s, "data: end\ndata: \n\n", "trailing newline kept as an empty data line");
  dsys_free(s);
  dsys_sse_encode(0, NULL, NULL, 0, &s, NULL);
  is_str(s, "data: \n\n", "empty data");
  dsys_free(s);
  is_int(dsys_sse_encode(1, "a\rb", "x", 1, &s, NULL), DSYS_EINVAL, "CR in the name rejected");
}

/* ---- a live stream over inproc ---- */
static dsys_events *sev;
static pthread_mutex_t cmu = PTHREAD_MUTEX_INITIALIZER;
typedef struct rx {
  char buf[65536];
  size_t len;
  atomic_int done;
  int err;
  int status;
} rx;
static void on_chunk(const void *d, size_t n, void *ud) {
  rx *r = ud;
  pthread_mutex_lock(&cmu);
  if (r->len + n < sizeof r->buf) {
    memcpy(r->buf + r->len, d, n);
    r->len += n;
    r->buf[r->len] = 0;
  }
  pthread_mutex_unlock(&cmu);
}
static void on_done(int err, dsys_reply *rep, void *ud) {
  rx *r = ud;
  r->err = err;
  r->status = rep ? dsys_reply_status(rep) : 0;
  dsys_reply_free(rep);
  atomic_store(&r->done, 1);
}
static int has(rx *r, const char *needle) {
  pthread_mutex_lock(&cmu);
  int y = strstr(r->buf, needle) != NULL;
  pthread_mutex_unlock(&cmu);
  return y;
}
static int wait_has(rx *r, const char *needle) {
  for (int i = 0; i < 400; i++) {
    if (has(r, needle)) return 1;
    msleep(5);
  }
  return 0;
}
static int wait_done(rx *r) {
  for (int i = 0; i < 400 && !atomic_load(&r->done); i++) msleep(5);
  return atomic_load(&r->done);
}
static void on_open(dsys_sse_stream *st, dsys_request *req, void *ud) {
  dsys_sse_send(st, 0, "hello", "{\"snapshot\":true}", 17);
}
static void h_events(dsys_request *req, void *ud) {
  const char *t[] = {"news"};
  dsys_sse_options o = {.size = sizeof o, .on_open = on_open};
  dsys_events_serve_sse(sev, req, t, 1, &o);
}

static void test_sse_stream(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 1700000000000);
  dsys_events_options eo = {.size = sizeof eo, .clock = clk, .heartbeat_ms = 1000, .first_id = 500};
  dsys_events_new(&sev, &eo);
  dsys_server *srv;
  dsys_server_new(&srv, NULL);
  dsys_server_route(srv, "GET", "/events", h_events, NULL);
  if (dsys_server_listen(srv, "inproc://events-test")) tap_bail("listen");
  dsys_client *c;
  dsys_client_new(&c, NULL);
  static rx r1, r2, r3;
  dsys_call k = {.size = sizeof k, .url = "inproc://events-test", .path = "/events",
                 .on_chunk = on_chunk, .chunk_ud = &r1, .timeout_ms = 20000};
  is_int(dsys_client_send(c, &k, on_done, &r1), 0, "SSE client connects");
  ok(wait_has(&r1, "event: hello"), "on_open event arrives first");
  for (int i = 0; i < 100 && dsys_events_stream_count(sev) != 1; i++) msleep(5);
  is_int(dsys_events_stream_count(sev), 1, "one open stream");
  uint64_t id1, id2;
  dsys_events_publish(sev, "news", "story", "line1\nline2", 11, &id1);
  dsys_events_publish(sev, "sports", "score", "1-0", 3, NULL);
  dsys_events_publish(sev, "news", "story", "second", 6, &id2);
  ok(wait_has(&r1, "data: second"), "published events stream live");
  pthread_mutex_lock(&cmu);
  const char *h = strstr(r1.buf, "event: hello"), *a = strstr(r1.buf, "id: 500\nevent: story\ndata: line1\ndata: line2\n\n");
  int other = strstr(r1.buf, "score") != NULL;
  pthread_mutex_unlock(&cmu);
  ok(h && a && h < a, "hello before the first story, framed with id and two data lines");
  ok(!other, "another topic is not sent");
  dsys_clock_advance(clk, 1000 * 1000);
  ok(wait_has(&r1, ": heartbeat\n\n"), "heartbeat comment after heartbeat_ms on the hub clock");
  /* resume by Last-Event-ID */
  char lid[32];
  snprintf(lid, sizeof lid, "%llu", (unsigned long long)id1);
  dsys_header hd[] = {{"Last-Event-ID", lid}};
  dsys_call k2 = k;
  k2.headers = hd;
  k2.nheaders = 1;
  k2.chunk_ud = &r2;
  dsys_client_send(c, &k2, on_done, &r2);
  ok(wait_has(&r2, "data: second"), "Last-Event-ID resumes with the later event");
  ok(!has(&r2, "line1"), "and not the one already seen");
  /* a client that goes away: its call times out on the client's side */
  dsys_client *c3;
  dsys_client_options co = {.size = sizeof co, .clock = clk};
  dsys_client_new(&c3, &co);
  dsys_call k3 = k;
  k3.chunk_ud = &r3;
  k3.timeout_ms = 500;
  dsys_client_send(c3, &k3, on_done, &r3);
  ok(wait_has(&r3, "event: hello"), "third stream open");
  for (int i = 0; i < 100 && dsys_events_stream_count(sev) != 3; i++) msleep(5);
  is_int(dsys_events_stream_count(sev), 3, "three streams");
  dsys_client_free(c3); /* the client goes away */
  ok(wait_done(&r3), "third client finished");
  dsys_events_publish(sev, "news", "story", "after-close", 11, NULL);
  for (int i = 0; i < 200 && dsys_events_stream_count(sev) != 2; i++) {
    dsys_events_publish(sev, "news", "ping", "p", 1, NULL);
    msleep(5);
  }
  is_int(dsys_events_stream_count(sev), 2, "a gone client's stream is ended on the next write");
  dsys_events_close_streams(sev);
  ok(wait_done(&r1) && wait_done(&r2), "close_streams ends the open streams");
  is_int(r1.err, 0, "stream ended cleanly (%s)", dsys_strerror(r1.err));
  is_int(r1.status, 200, "status 200");
  is_int(dsys_events_stream_count(sev), 0, "no streams left");
  static rx r4;
  dsys_call k4 = k;
  k4.chunk_ud = &r4;
  dsys_client_send(c, &k4, on_done, &r4);
  ok(wait_done(&r4) && r4.status == 503, "after close_streams a new stream is refused with 503 (%d)", r4.status);
  dsys_client_free(c);
  dsys_server_stop(srv, 1000);
  dsys_server_free(srv);
  dsys_events_free(sev);
  dsys_clock_free(clk);
}

/* ---- per-stream filter, write-and-end, dsys_sse_end ---- */
static atomic_int freed;
static int only_mine(const dsys_event *e, void *ud) {
  const char *want = ud;
  if (strncmp(e->data, want, strlen(want))) return DSYS_SSE_SKIP;
  return !strcmp(e->name, "last") ? DSYS_SSE_WRITE_END : DSYS_SSE_WRITE;
}
static void mine_free(void *ud) { atomic_fetch_add(&freed, 1); }
static void open_end(dsys_sse_stream *st, dsys_request *req, void *ud) {
  dsys_sse_send(st, 0, "final", "done", 4);
  dsys_sse_end(st);
}
static void h_filtered(dsys_request *req, void *ud) {
  const char *t[] = {"jobs"};
  dsys_sse_options o = {.size = sizeof o, .filter = only_mine,
                        .filter_ud = (void *)dsys_request_query_param(req, "who") ? "a:" : "b:",
                        .filter_free = mine_free};
  if (dsys_request_query_param(req, "end")) o.on_open = open_end;
  dsys_events_serve_sse(sev, req, t, 1, &o);
}

static void test_sse_filter(void) {
  dsys_events_new(&sev, NULL);
  dsys_server *srv;
  dsys_server_new(&srv, NULL);
  dsys_server_route(srv, "GET", "/f", h_filtered, NULL);
  if (dsys_server_listen(srv, "inproc://events-filter")) tap_bail("listen");
  dsys_client *c;
  dsys_client_new(&c, NULL);
  static rx ra, rb, re;
  dsys_call k = {.size = sizeof k, .url = "inproc://events-filter", .path = "/f?who=a",
                 .on_chunk = on_chunk, .chunk_ud = &ra, .timeout_ms = 20000};
  dsys_client_send(c, &k, on_done, &ra);
  dsys_call kb = k;
  kb.path = "/f";
  kb.chunk_ud = &rb;
  dsys_client_send(c, &kb, on_done, &rb);
  for (int i = 0; i < 200 && dsys_events_stream_count(sev) != 2; i++) msleep(5);
  is_int(dsys_events_stream_count(sev), 2, "[filter] two streams");
  dsys_events_publish(sev, "jobs", "p", "a:1", 3, NULL);
  dsys_events_publish(sev, "jobs", "p", "b:1", 3, NULL);
  dsys_events_publish(sev, "jobs", "last", "a:2", 3, NULL);
  dsys_events_publish(sev, "jobs", "p", "a:3", 3, NULL);
  ok(wait_done(&ra), "[filter] WRITE_END ends the stream");
  ok(has(&ra, "data: a:1") && has(&ra, "data: a:2") && !has(&ra, "b:1") && !has(&ra, "a:3"),
     "[filter] only its events, up to the last one");
  is_int(ra.status, 200, "[filter] clean end");
  ok(wait_has(&rb, "data: b:1") && !has(&rb, "a:1"), "[filter] the other stream gets its own");
  is_int(dsys_events_stream_count(sev), 1, "[filter] one stream left");
  dsys_call ke = k;
  ke.path = "/f?end=1";
  ke.chunk_ud = &re;
  dsys_client_send(c, &ke, on_done, &re);
  ok(wait_done(&re) && has(&re, "event: final"), "[filter] dsys_sse_end in on_open: snapshot, then end");
  ok(dsys_sse_end(NULL) == DSYS_EINVAL, "[filter] dsys_sse_end outside on_open -> EINVAL");
  dsys_events_close_streams(sev);
  ok(wait_done(&rb), "[filter] close_streams ends the other");
  dsys_client_free(c);
  dsys_server_stop(srv, 1000);
  dsys_server_free(srv);
  dsys_events_free(sev);
  is_int(atomic_load(&freed), 3, "[filter] filter_free ran once per stream");
}

int main(void) {
  test_order_and_drop();
  test_resume();
  test_many();
  test_unsub_during_publish();
  test_sse_framing();
  test_sse_stream();
  test_sse_filter();
  return tap_done();
}
