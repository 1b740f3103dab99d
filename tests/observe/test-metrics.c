/* Unit tests of dsys_metrics: math, validation, escaping, exact render
 * output, exact totals from 4 threads, collect hooks, and the server and
 * store instrumentation (inproc server, memory store). TAP. */
#include <math.h>
#include <pthread.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include <distsys/metrics.h>
#include "tap.h"

static void test_counter_gauge(void) {
  dsys_metrics *m;
  is_int(dsys_metrics_new(&m), 0, "new");
  const char *ln[] = {"a", "b"};
  const char *v1[] = {"x", "y"}, *v2[] = {"x", "z"};
  dsys_counter *c1, *c1b, *c2;
  is_int(dsys_metrics_counter(m, "t_total", "help", ln, v1, 2, &c1), 0, "counter");
  is_int(dsys_metrics_counter(m, "t_total", "help", ln, v1, 2, &c1b), 0, "again");
  ok(c1 == c1b, "same labels resolve to the same handle");
  is_int(dsys_metrics_counter(m, "t_total", "help", ln, v2, 2, &c2), 0, "other labels");
  ok(c1 != c2, "other labels: another series");
  dsys_counter_inc(c1);
  dsys_counter_add(c1, 41);
  dsys_counter_inc(c2);
  is_int(dsys_counter_value(c1), 42, "inc + add");
  is_int(dsys_counter_value(c2), 1, "series are independent");
  dsys_counter_store(c2, 7);
  is_int(dsys_counter_value(c2), 7, "store");
  dsys_counter_inc(NULL); /* NULL-safe */

  dsys_gauge *g;
  is_int(dsys_metrics_gauge(m, "t_gauge", "g", NULL, NULL, 0, &g), 0, "gauge");
  dsys_gauge_set(g, 2.5);
  dsys_gauge_add(g, -4);
  ok(dsys_gauge_value(g) == -1.5, "gauge set + add negative = -1.5 (%g)", dsys_gauge_value(g));

  dsys_counter *bad = (dsys_counter *)1;
  is_int(dsys_metrics_counter(m, "1abc", "h", NULL, NULL, 0, &bad), DSYS_EINVAL, "bad metric name");
  ok(bad == NULL, "out cleared on error");
  const char *l_dunder[] = {"__x"}, *l_le[] = {"le"}, *l_dup[] = {"a", "a"}, *l_bad[] = {"a-b"};
  const char *vals[] = {"1", "2"};
  is_int(dsys_metrics_counter(m, "t2_total", "h", l_dunder, vals, 1, &bad), DSYS_EINVAL, "__ label");
  is_int(dsys_metrics_counter(m, "t2_total", "h", l_dup, vals, 2, &bad), DSYS_EINVAL, "duplicate label");
  is_int(dsys_metrics_counter(m, "t2_total", "h", l_bad, vals, 1, &bad), DSYS_EINVAL, "bad label name");
  dsys_histogram *h;
  is_int(dsys_metrics_histogram(m, "t_h", "h", NULL, 0, l_le, vals, 1, &h), DSYS_EINVAL, "le reserved in histograms");
  is_int(dsys_metrics_gauge(m, "t_total", "h", ln, v1, 2, &g), DSYS_ETYPE, "same name, other type");
  const char *ln2[] = {"a", "c"};
  is_int(dsys_metrics_counter(m, "t_total", "h", ln2, v1, 2, &c1b), DSYS_ETYPE, "same name, other labels");
  is_int(dsys_metrics_counter(m, "t_total", "h", ln, v1, 1, &c1b), DSYS_ETYPE, "same name, fewer labels");
  double nb[] = {1, 1};
  is_int(dsys_metrics_histogram(m, "t_h", "h", nb, 2, NULL, NULL, 0, &h), DSYS_EINVAL, "bounds must increase");
  double inf[] = {1, INFINITY};
  is_int(dsys_metrics_histogram(m, "t_h", "h", inf, 2, NULL, NULL, 0, &h), DSYS_EINVAL, "bounds must be finite");
  dsys_metrics_free(m);
}

static void test_histogram(void) {
  dsys_metrics *m;
  dsys_metrics_new(&m);
  double b[] = {1, 2, 5};
  dsys_histogram *h;
  is_int(dsys_metrics_histogram(m, "t_seconds", "h", b, 3, NULL, NULL, 0, &h), 0, "histogram");
  double obs[] = {0.5, 1, 1.5, 2, 3, 10, NAN};
  for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++) dsys_histogram_observe(h, obs[i]);
  uint64_t cum, cnt;
  double sum;
  uint64_t want[] = {2, 4, 5, 6};
  for (size_t i = 0; i < 4; i++) {
    dsys_histogram_read(h, i, &cum, &cnt, &sum);
    is_int(cum, want[i], "cumulative bucket %zu (bounds are inclusive)", i);
  }
  is_int(cnt, 6, "count (NaN ignored)");
  ok(sum == 18, "sum 18 (%g)", sum);
  is_int(dsys_histogram_read(h, 4, NULL, NULL, NULL), DSYS_EINVAL, "bucket out of range");
  double b2[] = {1, 2, 3};
  dsys_histogram *h2;
  is_int(dsys_metrics_histogram(m, "t_seconds", "h", b2, 3, NULL, NULL, 0, &h2), DSYS_ETYPE, "other bounds: ETYPE");
  is_int(dsys_metrics_histogram(m, "t_seconds", "h", NULL, 0, NULL, NULL, 0, &h2), 0, "NULL bounds: the family's");
  ok(h2 == h, "same series");
  uint64_t st[] = {1, 0, 0, 3};
  is_int(dsys_histogram_store(h, st, 4, 12.5), 0, "store");
  dsys_histogram_read(h, 0, &cum, &cnt, &sum);
  ok(cum == 1 && cnt == 4 && sum == 12.5, "stored contents read back");
  is_int(dsys_histogram_store(h, st, 3, 1), DSYS_EINVAL, "store with wrong n");

  dsys_histogram *hd;
  dsys_metrics_histogram(m, "t_default_seconds", "h", NULL, 0, NULL, NULL, 0, &hd);
  dsys_histogram_observe(hd, 0.003);
  dsys_histogram_read(hd, 2, &cum, NULL, NULL); /* le 0.0025 */
  is_int(cum, 0, "default buckets: 0.003 > 0.0025");
  dsys_histogram_read(hd, 3, &cum, NULL, NULL); /* le 0.005 */
  is_int(cum, 1, "default buckets: 0.003 <= 0.005");
  dsys_metrics_free(m);
}

static void test_render(void) {
  dsys_metrics *m;
  dsys_metrics_new(&m);
  const char *ln[] = {"path", "code"};
  const char *lv[] = {"a\"b\\c\nd", "200"};
  dsys_counter *c;
  dsys_metrics_counter(m, "req_total", "Requests \\ with\nnewline \"quoted\".", ln, lv, 2, &c);
  dsys_counter_add(c, 3);
  dsys_gauge *g;
  dsys_metrics_gauge(m, "temp", "T.", NULL, NULL, 0, &g);
  dsys_gauge_set(g, 0.1);
  dsys_gauge *gi;
  dsys_metrics_gauge(m, "inf_gauge", "I.", NULL, NULL, 0, &gi);
  dsys_gauge_set(gi, -INFINITY);
  dsys_histogram *h;
  double b[] = {0.25, 1};
  const char *hl[] = {"r"};
  const char *hv[] = {"/x"};
  dsys_metrics_histogram(m, "lat_seconds", "L.", b, 2, hl, hv, 1, &h);
  dsys_histogram_observe(h, 0.25);
  dsys_histogram_observe(h, 3);
  dsys_histogram *h0;
  dsys_metrics_histogram(m, "nolabel_seconds", "N.", b, 2, NULL, NULL, 0, &h0);
  dsys_counter *unused;
  dsys_metrics_counter(m, "zero_total", "Z.", NULL, NULL, 0, &unused);
  char *out = NULL;
  size_t len = 0;
  is_int(dsys_metrics_render(m, &out, &len), 0, "render");
  const char *want =
      "# HELP req_total Requests \\\\ with\\nnewline \"quoted\".\n"
      "# TYPE req_total counter\n"
      "req_total{path=\"a\\\"b\\\\c\\nd\",code=\"200\"} 3\n"
      "# HELP temp T.\n"
      "# TYPE temp gauge\n"
      "temp 0.1\n"
      "# HELP inf_gauge I.\n"
      "# TYPE inf_gauge gauge\n"
      "inf_gauge -Inf\n"
      "# HELP lat_seconds L.\n"
      "# TYPE lat_seconds histogram\n"
      "lat_seconds_bucket{r=\"/x\",le=\"0.25\"} 1\n"
      "lat_seconds_bucket{r=\"/x\",le=\"1\"} 1\n"
      "lat_seconds_bucket{r=\"/x\",le=\"+Inf\"} 2\n"
      "lat_seconds_sum{r=\"/x\"} 3.25\n"
      "lat_seconds_count{r=\"/x\"} 2\n"
      "# HELP nolabel_seconds N.\n"
      "# TYPE nolabel_seconds histogram\n"
      "nolabel_seconds_bucket{le=\"0.25\"} 0\n"
      "nolabel_seconds_bucket{le=\"1\"} 0\n"
      "nolabel_seconds_bucket{le=\"+Inf\"} 0\n"
      "nolabel_seconds_sum 0\n"
      "nolabel_seconds_count 0\n"
      "# HELP zero_total Z.\n"
      "# TYPE zero_total counter\n"
      "zero_total 0\n";
  is_str(out, want, "golden render (escaping, order, histogram lines)");
  is_int(len, strlen(want), "length");
  dsys_free(out);
  dsys_counter *cd;
  dsys_metrics_counter(m, "cpu_seconds_total", "C.", NULL, NULL, 0, &cd);
  dsys_counter_store_double(cd, 1.25);
  dsys_metrics_render(m, &out, NULL);
  ok(out && strstr(out, "\ncpu_seconds_total 1.25\n"), "store_double renders a float");
  dsys_free(out);
  dsys_metrics_free(m);

  /* Families without series are left out; an empty registry renders "". */
  dsys_metrics_new(&m);
  dsys_histogram *hx;
  ok(dsys_metrics_histogram(m, "e_seconds", "E.", NULL, 0, hl, NULL, 1, &hx) == DSYS_EINVAL,
     "NULL label values rejected");
  is_int(dsys_metrics_render(m, &out, &len), 0, "render empty");
  ok(out && len == 0 && !*out, "empty registry renders nothing");
  dsys_free(out);
  dsys_metrics_free(m);
}

#define NTHREADS 4
#define NITER 200000
typedef struct {
  dsys_metrics *m;
  dsys_counter *c;
  dsys_gauge *g;
  dsys_histogram *h;
} conc;

static void *worker(void *p) {
  conc *k = p;
  const char *ln[] = {"shared"};
  const char *lv[] = {"yes"};
  for (int i = 0; i < NITER; i++) {
    dsys_counter_inc(k->c);
    dsys_gauge_add(k->g, 1);
    dsys_histogram_observe(k->h, (i % 3) ? 0.5 : 2.0);
    if (i % 10000 == 0) { /* resolution races with updates and renders */
      dsys_counter *c2;
      dsys_metrics_counter(k->m, "conc_total", "c", ln, lv, 1, &c2);
      dsys_counter_inc(c2);
    }
  }
  return NULL;
}

static void test_concurrency(void) {
  dsys_metrics *m;
  dsys_metrics_new(&m);
  conc k = {.m = m};
  double b[] = {1};
  dsys_metrics_counter(m, "conc_total", "c", (const char *[]){"shared"}, (const char *[]){"no"}, 1, &k.c);
  dsys_metrics_gauge(m, "conc_gauge", "g", NULL, NULL, 0, &k.g);
  dsys_metrics_histogram(m, "conc_seconds", "h", b, 1, NULL, NULL, 0, &k.h);
  pthread_t t[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) pthread_create(&t[i], NULL, worker, &k);
  for (int i = 0; i < 20; i++) { /* render while they run */
    char *out;
    dsys_metrics_render(m, &out, NULL);
    dsys_free(out);
  }
  for (int i = 0; i < NTHREADS; i++) pthread_join(t[i], NULL);
  is_int(dsys_counter_value(k.c), (int64_t)NTHREADS * NITER, "exact counter total from 4 threads");
  ok(dsys_gauge_value(k.g) == (double)NTHREADS * NITER, "exact gauge total (%g)", dsys_gauge_value(k.g));
  uint64_t le1, cnt;
  double sum;
  dsys_histogram_read(k.h, 0, &le1, &cnt, &sum);
  is_int(cnt, (int64_t)NTHREADS * NITER, "exact histogram count");
  int64_t twos = NTHREADS * ((NITER + 2) / 3);
  is_int(le1, (int64_t)NTHREADS * NITER - twos, "exact bucket count");
  ok(sum == 0.5 * (double)(NTHREADS * NITER - twos) + 2.0 * (double)twos, "exact sum (%g)", sum);
  dsys_counter *c2;
  dsys_metrics_counter(m, "conc_total", "c", (const char *[]){"shared"}, (const char *[]){"yes"}, 1, &c2);
  is_int(dsys_counter_value(c2), NTHREADS * (NITER / 10000), "concurrent resolution found one series");
  dsys_metrics_free(m);
}

static int hook_calls;
static void hook(dsys_metrics *m, void *ud) {
  hook_calls++;
  dsys_gauge *g;
  if (!dsys_metrics_gauge(m, "hooked", "H.", NULL, NULL, 0, &g)) dsys_gauge_set(g, hook_calls);
}

static void test_hooks_process(void) {
  dsys_metrics *m;
  dsys_metrics_new(&m);
  is_int(dsys_metrics_on_collect(m, hook, NULL), 0, "on_collect");
  is_int(dsys_metrics_process(m), 0, "process metrics");
  char *out;
  dsys_metrics_render(m, &out, NULL);
  dsys_free(out);
  dsys_metrics_render(m, &out, NULL);
  is_int(hook_calls, 2, "hook ran once per render");
  ok(strstr(out, "\nhooked 2\n") != NULL, "hook's value rendered");
  const char *p = strstr(out, "\nprocess_resident_memory_bytes ");
  ok(p && strtod(p + 31, NULL) > 100000, "RSS read from /proc (%.0f)", p ? strtod(p + 31, NULL) : -1.0);
  ok(strstr(out, "# TYPE process_cpu_seconds_total counter") && strstr(out, "\nprocess_open_fds "),
     "cpu and fds");
  p = strstr(out, "\nprocess_threads ");
  ok(p && atoi(p + 17) >= 1, "threads");
  dsys_free(out);
  dsys_metrics_free(m);
}

static void h_item(dsys_request *req, void *ud) {
  dsys_respond_json(req, atoi(dsys_request_param(req, "id")) >= 500 ? 503 : 200, "{}");
}

static void test_server(void) {
  dsys_metrics *m;
  dsys_metrics_new(&m);
  dsys_server *srv;
  dsys_server_new(&srv, NULL);
  is_int(dsys_server_metrics(srv, m), 0, "dsys_server_metrics");
  is_int(dsys_server_metrics(srv, m), DSYS_EEXIST, "second instrumentation refused");
  is_int(dsys_metrics_mount(srv, m), 0, "mount /metrics");
  dsys_server_route(srv, "GET", "/items/:id", h_item, NULL);
  is_int(dsys_server_listen(srv, "inproc://metrics-test"), 0, "listen inproc");
  is_int(dsys_server_metrics(srv, m), DSYS_ESTATE, "after listen: ESTATE");
  dsys_client *cl;
  dsys_client_new(&cl, NULL);
  const char *paths[] = {"/items/1", "/items/2", "/items/503", "/nope", "/items/3"};
  for (size_t i = 0; i < 5; i++) {
    dsys_call call = {.size = sizeof call, .url = "inproc://metrics-test", .path = paths[i]};
    dsys_reply *r = NULL;
    dsys_client_do(cl, &call, &r);
    dsys_reply_free(r);
  }
  dsys_call post = {.size = sizeof post, .method = "BREW", .url = "inproc://metrics-test", .path = "/items/1"};
  dsys_reply *r = NULL;
  dsys_client_do(cl, &post, &r);
  dsys_reply_free(r);
  /* The transport side of a request (and so its observation) may finish
   * just after the client has the reply: wait until none is in flight. */
  for (int i = 0; i < 2000 && dsys_server_inflight(srv) > 0; i++) usleep(1000);
  dsys_call call = {.size = sizeof call, .url = "inproc://metrics-test", .path = "/metrics"};
  r = NULL;
  is_int(dsys_client_do(cl, &call, &r), 0, "GET /metrics");
  is_int(dsys_reply_status(r), 200, "200");
  const char *ct = dsys_reply_header(r, "Content-Type");
  is_str(ct, "text/plain; version=0.0.4; charset=utf-8", "content type");
  size_t len;
  const char *body = dsys_reply_body(r, &len);
  ok(strstr(body, "dsys_http_requests_total{route=\"/items/:id\",method=\"GET\",status=\"200\"} 3\n"),
     "route pattern label, 3 OK requests");
  ok(strstr(body, "dsys_http_requests_total{route=\"/items/:id\",method=\"GET\",status=\"503\"} 1\n"),
     "errors by status");
  ok(strstr(body, "dsys_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1\n"),
     "404s labelled unmatched");
  ok(strstr(body, "dsys_http_requests_total{route=\"unmatched\",method=\"OTHER\",status=\"405\"} 1\n"),
     "unknown method -> OTHER");
  ok(strstr(body, "dsys_http_request_duration_seconds_count{route=\"/items/:id\"} 4\n"),
     "latency histogram per route");
  ok(strstr(body, "dsys_http_requests_in_flight 1\n"), "in-flight gauge counts the scrape itself");
  ok(!strstr(body, "/items/1\""), "raw paths never become labels");
  dsys_reply_free(r);
  dsys_client_free(cl);
  dsys_server_free(srv);
  dsys_metrics_free(m);
}

static void test_store(void) {
  dsys_metrics *m;
  dsys_metrics_new(&m);
  dsys_store *s;
  is_int(dsys_store_open(&s, "memory:", NULL), 0, "memory store");
  is_int(dsys_metrics_store(m, s), 0, "observe the store");
  dsys_store_put(s, "k", "1", NULL, NULL);
  dsys_item *it = NULL;
  dsys_store_get(s, "k", &it);
  dsys_item_free(it);
  it = NULL;
  dsys_store_get(s, "missing", &it);
  int64_t v;
  dsys_store_incr(s, "k", 2, &v);
  dsys_store_incr(s, "k", 1, &v);
  dsys_store_get(s, "", &it); /* rejected before the backend: not observed */
  char *out;
  dsys_metrics_render(m, &out, NULL);
  ok(strstr(out, "dsys_store_operation_duration_seconds_count{op=\"get\"} 2\n"), "2 gets observed");
  ok(strstr(out, "dsys_store_operation_duration_seconds_count{op=\"write\"} 1\n"), "1 write");
  ok(strstr(out, "dsys_store_operation_duration_seconds_count{op=\"incr\"} 2\n"), "2 incrs");
  ok(!strstr(out, "dsys_store_operation_errors_total"), "not found is not an error");
  dsys_store_put(s, "s", "\"text\"", NULL, NULL);
  dsys_store_incr(s, "s", 1, &v); /* not an integer: ETYPE from the backend */
  dsys_free(out);
  dsys_metrics_render(m, &out, NULL);
  ok(strstr(out, "dsys_store_operation_errors_total{op=\"incr\",code=\"DSYS_ETYPE\"} 1\n"),
     "backend error counted by code");
  dsys_free(out);
  dsys_store_close(s);
  dsys_metrics_free(m);
}

int main(void) {
  test_counter_gauge();
  test_histogram();
  test_render();
  test_concurrency();
  test_hooks_process();
  test_server();
  test_store();
  return tap_done();
}
