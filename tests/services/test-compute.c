/*
 * Compute service over inproc:// with a temporary SQLite file: every
 * operation with valid and invalid operands, exact messages, overflow,
 * jobs submitted on one instance and completed by the other's workers,
 * failed jobs, stats, slow work.
 */
#include <math.h>
#include <stdio.h>
#include "svc-test.h"

typedef struct inst {
  dsys_server *srv;
  dsys_queue *q;
  dsys_compute_service *svc;
  char url[64];
} inst;

static char db_[300];
static inst A, B; /* A has no workers; B runs them */

static void inst_start(inst *I, const char *name, int workers) {
  char url[400];
  snprintf(url, sizeof url, "sqlite://%s", db_);
  if (dsys_queue_open(&I->q, url, NULL)) tap_bail("queue open");
  I->srv = svc_server(name, 0);
  dsys_compute_options o = {.size = sizeof o, .queue = I->q, .workers = 2,
                            .no_workers = !workers, .worker_poll_ms = 20};
  svc_listen(I->srv, dsys_service_compute_mount(I->srv, &o, &I->svc), name, I->url,
             sizeof I->url);
}

static void inst_stop(inst *I) {
  dsys_server_stop(I->srv, 2000);
  dsys_service_compute_free(I->svc);
  dsys_server_free(I->srv);
  dsys_queue_close(I->q);
}

static resp *direct(const char *op, const char *operands) {
  char body[1024];
  snprintf(body, sizeof body, "{\"operation\":\"%s\",\"operands\":%s}", op, operands);
  return call(A.url, "POST", "/api/compute/direct", body);
}

static void good(const char *op, const char *operands, double want) {
  resp *r = direct(op, operands);
  ok(r->status == 200 && fabs(json_object_get_double(jget(r->j, "result")) - want) < 1e-9 &&
         !strcmp(js(r, "operation"), op) && jget(r->j, "operands") &&
         !strcmp(js(r, "service"), "compute-service") &&
         strlen(js(r, "computedAt")) == 24 &&
         (json_object_is_type(jget(r->j, "result"), json_type_int) ||
          json_object_is_type(jget(r->j, "result"), json_type_double)),
     "%s %s = %g (%s)", op, operands, want, r->body);
  resp_free(r);
}

static void bad(const char *op, const char *operands, const char *msg) {
  char name[256];
  snprintf(name, sizeof name, "%s %s", op, operands);
  is_err(direct(op, operands), 400, msg, name);
}

static void test_direct(void) {
  good("add", "[1,2,3.5]", 6.5);
  good("add", "[-1]", -1);
  good("subtract", "[10,3,2]", 5);
  good("subtract", "[4]", -4);
  good("multiply", "[2,3,4]", 24);
  good("divide", "[100,2,5]", 10);
  good("divide", "[1,4]", 0.25);
  good("power", "[2,10]", 1024);
  good("power", "[-2,3]", -8);
  good("power", "[5,0]", 1);
  good("factorial", "[0]", 1);
  good("factorial", "[5]", 120);
  good("fibonacci", "[0]", 0);
  good("fibonacci", "[10]", 55);
  good("fibonacci", "[90]", 2880067194370816120.0);
  good("sumOfSquares", "[3,4]", 25);
  good("average", "[1,2,3,4]", 2.5);
  resp *r = direct("factorial", "[170]");
  ok(r->status == 200 && isfinite(json_object_get_double(jget(r->j, "result"))) &&
         json_object_get_double(jget(r->j, "result")) > 7e306,
     "factorial [170] is finite");
  resp_free(r);
  r = direct("add", "[1,2]");
  ok(r->status == 200 && json_object_is_type(jget(r->j, "result"), json_type_int) &&
         strstr(r->body, "\"result\":3,"),
     "integral results are JSON integers: %s", r->body);
  resp_free(r);
  const char *primes[][2] = {{"[97]", "true"}, {"[1]", "false"}, {"[0]", "false"},
                             {"[2]", "true"}, {"[91]", "false"},
                             {"[9007199254740881]", "true"},
                             {"[9007199254740993.0]", "x"}};
  for (int i = 0; i < 6; i++) {
    r = direct("primeCheck", primes[i][0]);
    json_object *v = jget(r->j, "result");
    ok(r->status == 200 && json_object_is_type(v, json_type_boolean) &&
           json_object_get_boolean(v) == !strcmp(primes[i][1], "true"),
       "primeCheck %s = %s (%s)", primes[i][0], primes[i][1], r->body);
    resp_free(r);
  }
  r = direct("matrixMultiply", "[[[1,2],[3,4]],[[5,6],[7,8]]]");
  ok(r->status == 200 && ji(r, "result.0.0") == 19 && ji(r, "result.0.1") == 22 &&
         ji(r, "result.1.0") == 43 && ji(r, "result.1.1") == 50,
     "matrixMultiply 2x2 by 2x2: %s", r->body);
  resp_free(r);
  r = direct("matrixMultiply", "[[[1,2,3]],[[1],[2],[3]]]");
  ok(r->status == 200 && ji(r, "result.0.0") == 14, "matrixMultiply 1x3 by 3x1");
  resp_free(r);

  /* Bad operands, with the reason. */
  bad("add", "[1,\"2\"]", "Operand at index 1 is not a number");
  bad("add", "[]", "Operands must be a non-empty array of numbers");
  bad("add", "5", "Operands must be a non-empty array of numbers");
  bad("add", "[true]", "Operand at index 0 is not a number");
  bad("multiply", "[null,1]", "Operand at index 0 is not a number");
  bad("average", "[[1]]", "Operand at index 0 is not a number");
  bad("multiply", "[1e308,10]", "Result is not a finite number (overflow)");
  bad("add", "[1.7e308,1.7e308]", "Result is not a finite number (overflow)");
  bad("sumOfSquares", "[1e200]", "Result is not a finite number (overflow)");
  bad("power", "[10,400]", "Result is not a finite number (overflow)");
  bad("divide", "[1,0]", "Division by zero is not allowed");
  bad("divide", "[1,2,0]", "Division by zero is not allowed");
  bad("divide", "[1]", "Division requires at least 2 operands");
  bad("power", "[2]", "Power requires exactly 2 operands: [base, exponent]");
  bad("power", "[2,-1]", "Exponent must be a non-negative integer");
  bad("power", "[2,0.5]", "Exponent must be a non-negative integer");
  bad("factorial", "[171]", "Factorial too large (max 170)");
  bad("factorial", "[-1]", "Factorial requires a non-negative integer");
  bad("factorial", "[2.5]", "Factorial requires a non-negative integer");
  bad("factorial", "[1,2]", "Factorial requires exactly 1 operand: [n]");
  bad("factorial", "[\"5\"]", "Factorial requires a non-negative integer");
  bad("fibonacci", "[1477]", "Fibonacci result overflows (max n is 1476)");
  bad("fibonacci", "[-3]", "Fibonacci requires a non-negative integer");
  bad("primeCheck", "[-7]", "Prime check requires a non-negative integer");
  bad("primeCheck", "[1e17]", "Prime check supports integers up to 2^53");
  bad("matrixMultiply", "[[[1,2,3]],[[1,2]]]",
      "Matrix dimensions mismatch: 1x3 cannot multiply 1x2");
  bad("matrixMultiply", "[[[1,2],[3]],[[1],[2]]]", "Matrix A rows must all have 2 numbers");
  bad("matrixMultiply", "[[[1]],[[\"x\"]]]", "Matrix B element [0][0] is not a number");
  bad("matrixMultiply", "[[],[[1]]]", "Matrix A must be a non-empty array of non-empty rows");
  bad("matrixMultiply", "[[[1]]]", "Matrix multiplication requires exactly 2 operands: [A, B]");

  is_err(call(A.url, "POST", "/api/compute/direct", "{\"operation\":\"add\"}"), 400,
         "Operation and operands are required", "missing operands");
  is_err(call(A.url, "POST", "/api/compute/direct", "{\"operands\":[1]}"), 400,
         "Operation and operands are required", "missing operation");
  is_err(call(A.url, "POST", "/api/compute/direct", "{oops"), 400, "Invalid JSON body",
         "malformed");
  is_err(call(A.url, "POST", "/api/compute/direct", "[]"), 400,
         "Request body must be a JSON object", "array body");
  r = direct("modulo", "[1,2]");
  json_object *sup = jget(r->j, "supported");
  ok(r->status == 400 && !strcmp(js(r, "error"), "Invalid operation") &&
         json_object_is_type(sup, json_type_array) && json_object_array_length(sup) == 11 &&
         !strcmp(js(r, "supported.10"), "matrixMultiply"),
     "unknown operation: 400 with the supported list: %s", r->body);
  resp_free(r);
  r = call(A.url, "POST", "/api/compute/direct", "{\"operation\":7,\"operands\":[1]}");
  ok(r->status == 400 && !strcmp(js(r, "error"), "Invalid operation"),
     "non-string operation is an invalid operation");
  resp_free(r);
}

/* Poll a job until it reaches a final state. */
static resp *wait_job(const char *url, const char *id, const char *want) {
  char path[96];
  snprintf(path, sizeof path, "/api/compute/job/%s", id);
  for (int i = 0; i < 500; i++) {
    resp *r = call(url, "GET", path, NULL);
    if (!strcmp(js(r, "status"), want)) return r;
    resp_free(r);
    usleep(10000);
  }
  return call(url, "GET", path, NULL);
}

static void test_jobs(void) {
  resp *r = call(A.url, "POST", "/api/compute/job",
                 "{\"type\":\"fibonacci\",\"data\":{\"operands\":[20]}}");
  ok(r->status == 202 && !strcmp(js(r, "message"), "Job submitted successfully") &&
         !strcmp(js(r, "status"), "pending") && strlen(js(r, "jobId")) > 0,
     "submit 202: %s", r->body);
  char id[32];
  snprintf(id, sizeof id, "%s", js(r, "jobId"));
  resp_free(r);
  r = wait_job(A.url, id, "completed");
  ok(!strcmp(js(r, "status"), "completed") && ji(r, "result.result") == 6765 &&
         ji(r, "progress") == 100 && ji(r, "attempts") == 1 &&
         ji(r, "data.operands.0") == 20 && !strcmp(js(r, "jobId"), id) &&
         jget(r->j, "error") == NULL && !strcmp(js(r, "result.operation"), "fibonacci"),
     "submitted on instance 1 (no workers), completed by instance 2, read on 1: %s",
     r->body);
  resp_free(r);
  r = call(A.url, "POST", "/api/compute/job",
           "{\"type\":\"computation\",\"data\":{\"operation\":\"matrixMultiply\","
           "\"operands\":[[[1,2]],[[3],[4]]]}}");
  snprintf(id, sizeof id, "%s", js(r, "jobId"));
  is_int(r->status, 202, "computation job submitted");
  resp_free(r);
  r = wait_job(B.url, id, "completed");
  ok(ji(r, "result.result.0.0") == 11 && !strcmp(js(r, "type"), "computation"),
     "type computation with data.operation: %s", r->body);
  resp_free(r);

  is_err(call(A.url, "POST", "/api/compute/job", "{\"type\":\"add\"}"), 400,
         "Type and data are required", "missing data");
  is_err(call(A.url, "POST", "/api/compute/job", "{\"data\":{\"operands\":[1]}}"), 400,
         "Type and data are required", "missing type");
  is_err(call(A.url, "POST", "/api/compute/job", "{\"type\":\"add\",\"data\":[1]}"), 400,
         "Data must be an object", "data not an object");
  is_err(call(A.url, "POST", "/api/compute/job", "{\"type\":\"add\",\"data\":{}}"), 400,
         "Operation and operands are required", "data without operands");
  is_err(call(A.url, "POST", "/api/compute/job",
              "{\"type\":\"nope\",\"data\":{\"operands\":[1]}}"),
         400, "Invalid operation", "unknown job type");
  is_err(call(A.url, "POST", "/api/compute/job",
              "{\"type\":\"add\",\"data\":{\"operands\":[1,\"2\"]}}"),
         400, "Operand at index 1 is not a number", "bad operands refused at submit");
  is_err(call(A.url, "POST", "/api/compute/job", "{"), 400, "Invalid JSON body",
         "malformed job");
  is_err(call(A.url, "GET", "/api/compute/job/999999", NULL), 404, "Job not found",
         "unknown job");
  is_err(call(A.url, "GET", "/api/compute/job/abc", NULL), 404, "Job not found",
         "non-numeric job id");

  /* A job the worker cannot run ends failed, with its error. */
  dsys_submit_options so = {.size = sizeof so, .max_attempts = 1};
  int64_t jid = 0;
  dsys_queue_submit(A.q, DSYS_COMPUTE_QUEUE,
                    "{\"type\":\"divide\",\"data\":{\"operands\":[1,0]}}", &so, &jid, NULL);
  snprintf(id, sizeof id, "%lld", (long long)jid);
  r = wait_job(A.url, id, "failed");
  ok(!strcmp(js(r, "status"), "failed") &&
         !strcmp(js(r, "error"), "Division by zero is not allowed") &&
         ji(r, "attempts") == 1 && jget(r->j, "result") == NULL,
     "a failing job: status failed with its error: %s", r->body);
  resp_free(r);
  /* The id as the job has it, not as the path spelled it. */
  char path0[64];
  snprintf(path0, sizeof path0, "/api/compute/job/00%s", id);
  r = call(A.url, "GET", path0, NULL);
  ok(r->status == 200 && !strcmp(js(r, "jobId"), id), "GET %s: jobId %s: %s", path0, id,
     r->body);
  resp_free(r);
  /* A job of another queue is not a compute job. */
  dsys_queue_submit(A.q, "other", "{}", NULL, &jid, NULL);
  char path[64];
  snprintf(path, sizeof path, "/api/compute/job/%lld", (long long)jid);
  is_err(call(A.url, "GET", path, NULL), 404, "Job not found", "job of another queue");
  strcat(path, "/events");
  is_err(call(A.url, "GET", path, NULL), 404, "Job not found", "events of another queue's job");
  is_err(call(A.url, "GET", "/api/compute/job/999999/events", NULL), 404, "Job not found",
         "events of an unknown job");
  is_err(call(A.url, "GET", "/api/compute/job/-1/events", NULL), 404, "Job not found",
         "events of a negative job id");
  /* Delayed state. */
  so.delay_ms = 60000;
  dsys_queue_submit(A.q, DSYS_COMPUTE_QUEUE,
                    "{\"type\":\"add\",\"data\":{\"operands\":[1]}}", &so, &jid, NULL);
  snprintf(path, sizeof path, "/api/compute/job/%lld", (long long)jid);
  r = call(A.url, "GET", path, NULL);
  ok(!strcmp(js(r, "status"), "delayed") && ji(r, "progress") == 0, "delayed job");
  resp_free(r);

  r = call(B.url, "GET", "/api/compute/stats", NULL);
  ok(r->status == 200 && !strcmp(js(r, "service"), "compute-service") &&
         ji(r, "queue.completed") == 2 && ji(r, "queue.failed") == 1 &&
         ji(r, "queue.delayed") == 1 && ji(r, "queue.waiting") == 0 &&
         ji(r, "queue.active") == 0 && ji(r, "queue.paused") == 0,
     "stats: %s", r->body);
  resp_free(r);
}

static void test_misc(void) {
  resp *r = call(B.url, "GET", "/ready", NULL);
  ok(r->status == 200 && !strcmp(js(r, "queue"), "connected") &&
         !strcmp(js(r, "status"), "ready"),
     "/ready with queue connected: %s", r->body);
  resp_free(r);
  r = call(B.url, "GET", "/api/compute/health", NULL);
  ok(r->status == 200 && !strcmp(js(r, "service"), "compute-service"), "/api/compute/health");
  resp_free(r);
  int64_t t0 = dsys_clock_now_ms(dsys_clock_real());
  r = call(B.url, "POST", "/api/compute/compute-worker", NULL);
  int64_t dt = dsys_clock_now_ms(dsys_clock_real()) - t0;
  ok(r->status == 200 && !strcmp(js(r, "message"), "Compute worker completed") && dt >= 540,
     "compute-worker after 550 ms (%lld ms)", (long long)dt);
  resp_free(r);
  r = call(B.url, "GET", "/compute-worker", NULL);
  is_int(r->status, 200, "GET /compute-worker");
  resp_free(r);
}

int main(void) {
  make_tmpdir("compute");
  snprintf(db_, sizeof db_, "%s/distsys.sqlite", tmpdir_);
  dsys_client_new(&cli_, NULL);
  inst_start(&A, "compute-a", 0);
  inst_start(&B, "compute-b", 1);
  test_direct();
  test_jobs();
  test_misc();
  inst_stop(&A);
  inst_stop(&B);
  dsys_client_free(cli_);
  rm_tmpdir();
  return tap_done();
}
