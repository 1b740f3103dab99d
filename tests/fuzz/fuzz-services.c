/* Fuzz target: the JSON handlers of the data, compute and auth services
 * through the in-process transport. One temporary SQLite database per
 * process (made on the first call, removed at exit); the three services
 * each listen on their own inproc:// name. The first byte picks the
 * endpoint, the rest is the request body. Every answer must be 2xx or 4xx,
 * never 5xx, and its body must be valid JSON.
 *
 * Cost: a signup or signin whose body has a string email and password may
 * hash a password once (tens of ms, yescrypt; an unknown user's signin
 * hashes a dummy for constant time). Such inputs are run only when
 * FUZZ_SERVICES_HASH is set (`make fuzz` sets it); make check's replay
 * skips them so the run stays short, and covers only the auth handlers'
 * validation before hashing. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <json-c/json.h>
#include <distsys/distsys.h>
#include "core/json.h"

static char dir_[64];
static dsys_store *st_data_, *st_auth_;
static dsys_queue *queue_;
static dsys_server *srv_[3];
static dsys_data_service *data_;
static dsys_compute_service *compute_;
static dsys_auth_service *auth_;
static dsys_client *cli_;
static int hash_ok_;

static const char SECRET[] = "fuzz-services-secret-0123456789abcdef0123";

static void listen_or_die(int i, const char *url) {
  if (dsys_server_listen(srv_[i], url)) abort();
}

static void init(void) {
  snprintf(dir_, sizeof dir_, "/tmp/dsys-fuzz-svc-XXXXXX");
  if (!mkdtemp(dir_)) abort();
  char url[128];
  snprintf(url, sizeof url, "sqlite://%s/fuzz.db", dir_);
  if (dsys_store_open(&st_data_, url, NULL) || dsys_store_open(&st_auth_, url, NULL) ||
      dsys_queue_open(&queue_, url, NULL))
    abort();
  for (int i = 0; i < 3; i++) {
    dsys_server_options so = {.size = sizeof so, .threads = 2, .name = "fuzz-svc"};
    if (dsys_server_new(&srv_[i], &so)) abort();
  }
  dsys_data_options d = {.size = sizeof d, .store = st_data_};
  dsys_compute_options c = {.size = sizeof c, .queue = queue_, .no_workers = 1};
  dsys_auth_options a = {.size = sizeof a, .store = st_auth_, .token_secret = SECRET,
                         .token_secret_len = sizeof SECRET - 1,
                         .max_failures = 1000000};
  if (dsys_service_data_mount(srv_[0], &d, &data_) ||
      dsys_service_compute_mount(srv_[1], &c, &compute_) ||
      dsys_service_auth_mount(srv_[2], &a, &auth_))
    abort();
  listen_or_die(0, "inproc://fuzz-data");
  listen_or_die(1, "inproc://fuzz-compute");
  listen_or_die(2, "inproc://fuzz-auth");
  dsys_client_options co = {.size = sizeof co, .timeout_ms = 30000};
  if (dsys_client_new(&cli_, &co)) abort();
  hash_ok_ = getenv("FUZZ_SERVICES_HASH") != NULL;
  /* One known user, so that signin of an existing email is reachable. */
  if (hash_ok_) {
    static const char b[] = "{\"email\":\"known@example.com\",\"password\":\"secret123\",\"name\":\"K\"}";
    dsys_call call = {.size = sizeof call, .method = "POST", .url = "inproc://fuzz-auth",
                      .path = "/api/auth/signup", .body = b, .body_len = sizeof b - 1};
    dsys_reply *r = NULL;
    if (dsys_client_do(cli_, &call, &r)) abort();
    dsys_reply_free(r);
  }
}

static void finish(void) {
  dsys_client_free(cli_);
  for (int i = 0; i < 3; i++) dsys_server_stop(srv_[i], 2000);
  dsys_service_data_free(data_);
  dsys_service_compute_free(compute_);
  dsys_service_auth_free(auth_);
  for (int i = 0; i < 3; i++) dsys_server_free(srv_[i]);
  dsys_store_close(st_data_);
  dsys_store_close(st_auth_);
  dsys_queue_close(queue_);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir_);
  if (system(cmd)) fprintf(stderr, "cleanup of %s failed\n", dir_);
}

/* Would this auth body make the service hash a password? (a string email
 * and password; for signin, only the known user hashes for real, but an
 * unknown user uses the dummy hash, which is just as slow, so all count). */
static int would_hash(const char *body, size_t len) {
  json_object *o = NULL;
  if (dsysi_json_parse(body, len, &o) || !o) return 0;
  json_object *e = NULL, *p = NULL;
  int h = json_object_is_type(o, json_type_object) &&
          json_object_object_get_ex(o, "email", &e) && json_object_is_type(e, json_type_string) &&
          json_object_object_get_ex(o, "password", &p) && json_object_is_type(p, json_type_string);
  json_object_put(o);
  return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!cli_) {
    init();
    atexit(finish);
  }
  if (size < 1 || size > 65536) return 0;
  static const struct { const char *url, *m, *path; } ep[] = {
    {"inproc://fuzz-data", "POST", "/api/data"},
    {"inproc://fuzz-data", "PUT", "/api/data/data-1"},
    {"inproc://fuzz-data", "POST", "/api/data/data-2/increment"},
    {"inproc://fuzz-compute", "POST", "/api/compute/direct"},
    {"inproc://fuzz-compute", "POST", "/api/compute/job"},
    {"inproc://fuzz-auth", "POST", "/api/auth/signup"},
    {"inproc://fuzz-auth", "POST", "/api/auth/signin"},
  };
  int i = data[0] % (int)(sizeof ep / sizeof ep[0]);
  const char *body = (const char *)data + 1;
  size_t blen = size - 1;
  if (i >= 5 && !hash_ok_ && would_hash(body, blen)) return 0;
  dsys_call c = {.size = sizeof c, .method = ep[i].m, .url = ep[i].url, .path = ep[i].path,
                 .headers = &(dsys_header){"Content-Type", "application/json"}, .nheaders = 1,
                 .body = body, .body_len = blen};
  dsys_reply *rep = NULL;
  int rc = dsys_client_do(cli_, &c, &rep);
  if (rc) {
    fprintf(stderr, "call failed: %s\n", dsys_strerror(rc));
    __builtin_trap();
  }
  int st = dsys_reply_status(rep);
  size_t len;
  const char *b = dsys_reply_body(rep, &len);
  if (st < 200 || st > 499) {
    fprintf(stderr, "%s %s -> %d %.*s\n", ep[i].m, ep[i].path, st, (int)len, b);
    __builtin_trap();
  }
  json_object *j = NULL;
  if (dsysi_json_parse(b, len, &j) || !j) {
    fprintf(stderr, "%s %s -> %d: body not JSON: %.*s\n", ep[i].m, ep[i].path, st, (int)len, b);
    __builtin_trap();
  }
  json_object_put(j);
  dsys_reply_free(rep);
  return 0;
}
