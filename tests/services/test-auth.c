/*
 * Auth service over inproc:// with a temporary SQLite file: every route,
 * status and message of docs/reference/http-api.md; bad input; token tampering, alg
 * "none", a foreign algorithm, expiry on a fake clock; throttling shared
 * by two instances; bcrypt hashes; concurrent sign-up; the secret loader;
 * hashing does not stall other requests.
 */
#include <crypt.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <jwt.h>
#include "svc-test.h"

typedef struct inst {
  dsys_server *srv;
  dsys_store *st;
  dsys_auth_service *svc;
  char url[64];
} inst;

static char db_[300];
static const char SECRET[] = "0123456789abcdef0123456789abcdef-test-secret";
static dsys_clock *fake_;
static inst A, B; /* A: fake clock; B: real clock */

static void inst_start(inst *I, const char *name, dsys_clock *clk) {
  char url[400];
  snprintf(url, sizeof url, "sqlite://%s", db_);
  dsys_store_options so = {.size = sizeof so, .clock = clk};
  if (dsys_store_open(&I->st, url, &so)) tap_bail("store open");
  I->srv = svc_server(name, 0);
  dsys_auth_options o = {.size = sizeof o, .store = I->st, .clock = clk,
                         .token_secret = SECRET, .token_secret_len = strlen(SECRET)};
  svc_listen(I->srv, dsys_service_auth_mount(I->srv, &o, &I->svc), name, I->url,
             sizeof I->url);
}

static void inst_stop(inst *I) {
  dsys_server_stop(I->srv, 2000);
  dsys_service_auth_free(I->svc);
  dsys_server_free(I->srv);
  dsys_store_close(I->st);
}

static resp *bearer(const char *url, const char *path, const char *tok) {
  char h[4096];
  snprintf(h, sizeof h, "Authorization: Bearer %s", tok);
  const char *hs[] = {h, NULL};
  return call_h(url, "GET", path, NULL, 0, hs);
}

static char token_[2048];

static void test_signup(void) {
  const char *missing[] = {
      "{\"email\":\"a@b.co\",\"password\":\"secret1\"}",
      "{\"username\":\"u\",\"password\":\"secret1\"}",
      "{\"username\":\"u\",\"email\":\"a@b.co\"}",
      "{\"username\":\"\",\"email\":\"a@b.co\",\"password\":\"secret1\"}",
      "{\"username\":\"u\",\"email\":null,\"password\":\"secret1\"}",
      "",
      "{}",
  };
  for (size_t i = 0; i < sizeof missing / sizeof *missing; i++)
    is_err(call(A.url, "POST", "/api/auth/signup", missing[i]), 400,
           "All fields are required", missing[i]);
  is_err(call(A.url, "POST", "/api/auth/signup",
              "{\"username\":1,\"email\":\"a@b.co\",\"password\":\"secret1\"}"),
         400, "Username, email and password must be strings", "numeric username");
  const char *bad[] = {"plain", "a@b", "@b.co", "a b@c.de", "a@b.", "a@@b.co",
                       "\xe1@maxeple.com" /* not UTF-8: found by fuzz-services */,
                       "a\xc0\xaf@b.co" /* overlong */, "a@b\xed\xa0\x80.co" /* surrogate */};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char body[200];
    snprintf(body, sizeof body,
             "{\"username\":\"u\",\"email\":\"%s\",\"password\":\"secret1\"}", bad[i]);
    is_err(call(A.url, "POST", "/api/auth/register", body), 400, "Invalid email format",
           bad[i]);
  }
  is_err(call(A.url, "POST", "/api/auth/signup",
              "{\"username\":\"u\xff\",\"email\":\"utf@b.co\",\"password\":\"secret1\"}"),
         400, "Username and password must be valid UTF-8", "username not UTF-8");
  is_err(call(A.url, "POST", "/api/auth/signup",
              "{\"username\":\"u\",\"email\":\"utf@b.co\",\"password\":\"secret\x80\"}"),
         400, "Username and password must be valid UTF-8", "password not UTF-8");
  is_err(call(A.url, "POST", "/api/auth/signup",
              "{\"username\":\"u\",\"email\":\"a@b.co\",\"password\":\"12345\"}"),
         400, "Password must be at least 6 characters", "5-character password");
  is_err(call(A.url, "POST", "/api/auth/signup", "{\"username\":"), 400,
         "Invalid JSON body", "malformed JSON");
  is_err(call(A.url, "POST", "/api/auth/signup", "[\"u\"]"), 400,
         "Request body must be a JSON object", "array body");

  resp *r = call(A.url, "POST", "/api/auth/signup",
                 "{\"username\":\"alice\",\"email\":\"Alice@Example.com\","
                 "\"password\":\"p\\u00e4ssw\\u00f6\"}");
  ok(r->status == 201 && !strcmp(js(r, "message"), "User registered successfully") &&
         strlen(js(r, "token")) > 20 && !strcmp(js(r, "user.username"), "alice") &&
         !strcmp(js(r, "user.email"), "Alice@Example.com") &&
         strlen(js(r, "user.id")) == 36 && !jget(r->j, "user.passwordHash") &&
         !jget(r->j, "user.password"),
     "signup 201 with token and user, no hash (6-character unicode password): %s",
     r->body);
  snprintf(token_, sizeof token_, "%s", js(r, "token"));
  resp_free(r);
  dsys_item *it = NULL;
  ok(!dsys_store_get(A.st, "user:alice@example.com", &it) &&
         strstr(it->value, "\"passwordHash\":\"$y$") && !strstr(it->value, "p\\u00e4ss"),
     "stored under the lowercased email with a yescrypt hash");
  dsys_item_free(it);
  is_err(call(B.url, "POST", "/api/auth/signup",
              "{\"username\":\"x\",\"email\":\"alice@EXAMPLE.com\",\"password\":\"secret1\"}"),
         409, "User already exists", "same email (other case) through instance 2");
}

static void test_signin(void) {
  resp *r = call(B.url, "POST", "/api/auth/signin",
                 "{\"email\":\"alice@example.com\",\"password\":\"p\xc3\xa4ssw\xc3\xb6\"}");
  ok(r->status == 200 && !strcmp(js(r, "message"), "Login successful") &&
         strlen(js(r, "token")) > 20 && !strcmp(js(r, "user.username"), "alice") &&
         !jget(r->j, "user.passwordHash"),
     "signed up through instance 1, signed in through instance 2: %s", r->body);
  resp_free(r);
  r = call(A.url, "POST", "/api/auth/login",
           "{\"email\":\"ALICE@example.com\",\"password\":\"p\xc3\xa4ssw\xc3\xb6\"}");
  is_int(r->status, 200, "/login alias, email case-insensitive");
  resp_free(r);
  is_err(call(A.url, "POST", "/api/auth/signin", "{\"email\":\"alice@example.com\"}"), 400,
         "Email and password are required", "missing password");
  is_err(call(A.url, "POST", "/api/auth/signin", "{\"password\":\"x\"}"), 400,
         "Email and password are required", "missing email");
  is_err(call(A.url, "POST", "/api/auth/signin", "nope"), 400, "Invalid JSON body",
         "malformed");
  is_err(call(A.url, "POST", "/api/auth/signin",
              "{\"email\":\"alice@example.com\",\"password\":\"wrong-pass\"}"),
         401, "Invalid credentials", "wrong password");
  is_err(call(A.url, "POST", "/api/auth/signin",
              "{\"email\":\"nobody@example.com\",\"password\":\"whatever\"}"),
         401, "Invalid credentials", "unknown user");
  /* bcrypt hashes ($2a$, $2b$) made elsewhere also verify. */
  const char *pfx[] = {"$2a$", "$2b$"};
  for (int i = 0; i < 2; i++) {
    char *setting = crypt_gensalt_ra(pfx[i], 4, NULL, 0);
    struct crypt_data cd;
    memset(&cd, 0, sizeof cd);
    char *h = crypt_rn("bcrypt-pw", setting, &cd, sizeof cd);
    char val[512], key[64], body[128];
    snprintf(key, sizeof key, "user:bc%d@example.com", i);
    snprintf(val, sizeof val,
             "{\"id\":\"bc-%d\",\"username\":\"bc\",\"email\":\"bc%d@example.com\","
             "\"passwordHash\":\"%s\",\"createdAt\":\"2020-01-01T00:00:00.000Z\"}",
             i, i, h);
    free(setting);
    dsys_store_put(A.st, key, val, NULL, NULL);
    snprintf(body, sizeof body,
             "{\"email\":\"bc%d@example.com\",\"password\":\"bcrypt-pw\"}", i);
    r = call(B.url, "POST", "/api/auth/signin", body);
    ok(r->status == 200 && !strcmp(js(r, "user.id"), i ? "bc-1" : "bc-0"),
       "%s bcrypt hash verifies", pfx[i]);
    resp_free(r);
    snprintf(body, sizeof body,
             "{\"email\":\"bc%d@example.com\",\"password\":\"bcrypt-px\"}", i);
    is_err(call(B.url, "POST", "/api/auth/signin", body), 401, "Invalid credentials",
           "wrong password against bcrypt");
  }
}

static char *make_token(jwt_alg_t alg, const char *key, int64_t exp_delta,
                        const char *id, int nbf_future) {
  jwt_t *j;
  jwt_new(&j);
  int64_t now = dsys_clock_wall_ms(fake_) / 1000;
  jwt_add_grant(j, "id", id);
  jwt_add_grant(j, "email", "alice@example.com");
  jwt_add_grant_int(j, "iat", (long)now);
  jwt_add_grant_int(j, "exp", (long)(now + exp_delta));
  if (nbf_future) jwt_add_grant_int(j, "nbf", (long)(now + 3600));
  jwt_set_alg(j, alg, (const unsigned char *)key, (int)strlen(key));
  char *t = jwt_encode_str(j);
  jwt_free(j);
  return t;
}

static void invalid(const char *tok, const char *name) {
  resp *r = bearer(A.url, "/api/auth/verify", tok);
  json_object *v = jget(r->j, "valid");
  ok(r->status == 401 && !strcmp(js(r, "error"), "Invalid token") &&
         json_object_is_type(v, json_type_boolean) && !json_object_get_boolean(v),
     "%s -> 401 {error:\"Invalid token\", valid:false} (%s)", name, r->body);
  resp_free(r);
}

static void test_tokens(void) {
  resp *r = bearer(B.url, "/api/auth/verify", token_);
  json_object *v = jget(r->j, "valid");
  ok(r->status == 200 && v && json_object_get_boolean(v) &&
         !strcmp(js(r, "user.email"), "Alice@Example.com") &&
         !strcmp(js(r, "user.username"), "alice") && !jget(r->j, "user.passwordHash"),
     "verify 200 {valid:true, user} on the other instance: %s", r->body);
  char id[64];
  snprintf(id, sizeof id, "%s", js(r, "user.id"));
  resp_free(r);
  r = bearer(A.url, "/api/auth/profile", token_);
  ok(r->status == 200 && !strcmp(js(r, "user.id"), id) &&
         !strcmp(js(r, "user.username"), "alice") &&
         strlen(js(r, "user.createdAt")) == 24 && !jget(r->j, "user.passwordHash"),
     "profile 200 {user:{id, username, email, createdAt}}: %s", r->body);
  resp_free(r);
  is_err(call(A.url, "GET", "/api/auth/verify", NULL), 401, "No token provided",
         "verify without a token");
  is_err(call(A.url, "GET", "/api/auth/profile", NULL), 401, "No token provided",
         "profile without a token");
  const char *basic[] = {"Authorization: Basic dXNlcjpwdw==", NULL};
  is_err(call_h(A.url, "GET", "/api/auth/verify", NULL, 0, basic), 401,
         "No token provided", "Basic is not a bearer token");

  /* Tampering: change one character of the payload, then of the signature. */
  char t[2048];
  snprintf(t, sizeof t, "%s", token_);
  char *dot = strchr(t, '.');
  dot[5] = dot[5] == 'A' ? 'B' : 'A';
  invalid(t, "payload tampered");
  snprintf(t, sizeof t, "%s", token_);
  size_t n = strlen(t);
  t[n - 3] = t[n - 3] == 'A' ? 'B' : 'A';
  invalid(t, "signature tampered");
  invalid("abc.def.ghi", "garbage");
  invalid("not-a-jwt", "no dots");

  /* alg "none": header {"alg":"none"}, the genuine payload, no signature. */
  char *h64 = NULL;
  const char *hdr = "{\"alg\":\"none\",\"typ\":\"JWT\"}";
  dsys_base64url_encode(hdr, strlen(hdr), &h64);
  snprintf(t, sizeof t, "%s", token_);
  char *p = strchr(t, '.') + 1;
  *strchr(p, '.') = '\0';
  char none[2048];
  snprintf(none, sizeof none, "%s.%s.", h64, p);
  invalid(none, "alg none with the real payload");
  dsys_free(h64);
  char *tk = make_token(JWT_ALG_HS512, SECRET, 3600, id, 0);
  invalid(tk, "HS512 with the right secret (not the configured algorithm)");
  free(tk);
  tk = make_token(JWT_ALG_HS256, "another-secret-another-secret-another", 3600, id, 0);
  invalid(tk, "signed with another secret");
  free(tk);
  tk = make_token(JWT_ALG_HS256, SECRET, 3600, id, 1);
  invalid(tk, "nbf in the future");
  free(tk);
  tk = make_token(JWT_ALG_HS256, SECRET, 3600, id, 0);
  r = bearer(A.url, "/api/auth/verify", tk);
  is_int(r->status, 200, "a token made with the same secret and HS256 is accepted");
  resp_free(r);
  free(tk);
  tk = make_token(JWT_ALG_HS256, SECRET, 3600, "someone-else", 0);
  is_err(bearer(A.url, "/api/auth/verify", tk), 404, "User not found",
         "valid token of an account that no longer exists (id differs)");
  free(tk);

  /* Expiry: 24 h lifetime on instance A's fake clock. */
  r = call(A.url, "POST", "/api/auth/signin",
           "{\"email\":\"alice@example.com\",\"password\":\"p\xc3\xa4ssw\xc3\xb6\"}");
  char fresh[2048];
  snprintf(fresh, sizeof fresh, "%s", js(r, "token"));
  resp_free(r);
  dsys_clock_advance(fake_, (int64_t)(86400 - 5) * 1000000);
  r = bearer(A.url, "/api/auth/verify", fresh);
  is_int(r->status, 200, "token still valid 5 s before 24 h");
  resp_free(r);
  dsys_clock_advance(fake_, 6 * 1000000);
  invalid(fresh, "token expired after 24 h");

  /* User gone. */
  dsys_store_delete(A.st, "user:alice@example.com", 0);
  r = bearer(B.url, "/api/auth/profile", token_);
  ok(r->status == 404 && !strcmp(js(r, "error"), "User not found"), "profile of a deleted user -> 404");
  resp_free(r);
}

static void test_throttle(void) {
  resp *r = call(A.url, "POST", "/api/auth/signup",
                 "{\"username\":\"t\",\"email\":\"t@example.com\",\"password\":\"right-pw\"}");
  is_int(r->status, 201, "throttle user signed up");
  resp_free(r);
  const char *wrong = "{\"email\":\"t@example.com\",\"password\":\"wrong-pw\"}";
  const char *right = "{\"email\":\"t@example.com\",\"password\":\"right-pw\"}";
  int fails = 0;
  for (int i = 0; i < 5; i++) {
    r = call(i % 2 ? B.url : A.url, "POST", "/api/auth/signin", wrong);
    if (r->status == 401) fails++;
    resp_free(r);
  }
  is_int(fails, 5, "five failures (on both instances) answer 401");
  r = call(A.url, "POST", "/api/auth/signin", right);
  ok(r->status == 429 && !strcmp(js(r, "error"), "Too many failed login attempts") &&
         ji(r, "retryAfter") > 0 && ji(r, "retryAfter") <= 900 && r->retry_after &&
         atoi(r->retry_after) == ji(r, "retryAfter"),
     "sixth attempt, even with the right password: 429 + Retry-After (%s, %s)",
     r->body, r->retry_after ? r->retry_after : "no header");
  resp_free(r);
  r = call(B.url, "POST", "/api/auth/signin", wrong);
  is_int(r->status, 429, "the other instance shares the counter");
  resp_free(r);
  r = call(A.url, "POST", "/api/auth/signin",
           "{\"email\":\"other@example.com\",\"password\":\"whatever\"}");
  is_int(r->status, 401, "other accounts are not throttled");
  resp_free(r);
  dsys_clock_advance(fake_, (int64_t)15 * 60 * 1000000 + 1000);
  r = call(A.url, "POST", "/api/auth/signin", right);
  is_int(r->status, 200, "after the 15-minute window: login works (%s)", r->body);
  resp_free(r);
  r = call(A.url, "POST", "/api/auth/signin", wrong);
  is_int(r->status, 401, "success reset the counter: next failure is 401 again");
  resp_free(r);
}

/* ---- concurrency ---- */

static resp *signup_same(int round, int i) {
  char body[200];
  snprintf(body, sizeof body,
           "{\"username\":\"r%d\",\"email\":\"race%d@example.com\",\"password\":\"secret1\"}",
           i, round);
  return call(i % 2 ? B.url : A.url, "POST", "/api/auth/signup", body);
}

static atomic_int logins_done_, logins_ok_;
static void login_bg(int err, dsys_reply *rep, void *ud) {
  if (!err && dsys_reply_status(rep) == 200) atomic_fetch_add(&logins_ok_, 1);
  atomic_fetch_add(&logins_done_, 1);
  dsys_reply_free(rep);
}

static void test_concurrency(void) {
  int others = -1;
  is_int(race_create(6, signup_same, &others), 6,
         "simultaneous sign-up of one email on two instances: one 201, one 409");
  is_int(others, 0, "no other status");

  /* Hashing runs off the server threads: health answers while 16
   * sign-ins are being hashed. */
  resp *s = call(B.url, "POST", "/api/auth/signup",
                 "{\"username\":\"h\",\"email\":\"h@example.com\",\"password\":\"right-pw\"}");
  is_int(s->status, 201, "hashing user signed up");
  resp_free(s);
  dsys_client *ac;
  dsys_client_new(&ac, NULL);
  const char *body = "{\"email\":\"h@example.com\",\"password\":\"right-pw\"}";
  for (int i = 0; i < 16; i++) {
    dsys_call c = {.size = sizeof c, .method = "POST", .url = B.url,
                   .path = "/api/auth/signin", .body = body, .body_len = strlen(body)};
    dsys_client_send(ac, &c, login_bg, NULL);
  }
  usleep(2000);
  int64_t t0 = dsys_clock_now_us(dsys_clock_real());
  resp *r = call(B.url, "GET", "/health", NULL);
  int64_t dt = dsys_clock_now_us(dsys_clock_real()) - t0;
  int pending = 16 - atomic_load(&logins_done_);
  ok(r->status == 200 && pending > 0,
     "health answered in %lld us while %d sign-ins were still hashing", (long long)dt,
     pending);
  resp_free(r);
  for (int i = 0; i < 1000 && atomic_load(&logins_done_) < 16; i++) usleep(10000);
  dsys_client_free(ac);
  is_int(atomic_load(&logins_ok_), 16, "all 16 sign-ins succeeded");
}

static void test_health_slow(void) {
  resp *r = call(B.url, "GET", "/api/auth/health", NULL);
  ok(r->status == 200 && !strcmp(js(r, "status"), "healthy") &&
         !strcmp(js(r, "service"), "auth-service") && ji(r, "memory.rss") > 0,
     "/api/auth/health: %s", r->body);
  resp_free(r);
  r = call(B.url, "GET", "/ready", NULL);
  ok(r->status == 200 && !strcmp(js(r, "database"), "connected"), "/ready");
  resp_free(r);
  const char *paths[] = {"/auth-worker", "/auth-work", "/api/auth/auth-worker"};
  for (int i = 0; i < 3; i++) {
    int64_t t0 = dsys_clock_now_ms(dsys_clock_real());
    r = call(B.url, i == 1 ? "POST" : "GET", paths[i], NULL);
    int64_t dt = dsys_clock_now_ms(dsys_clock_real()) - t0;
    ok(r->status == 200 && !strcmp(js(r, "message"), "Auth worker completed") &&
           !strcmp(js(r, "service"), "auth-service") && dt >= 790,
       "%s answers after 800 ms (%lld ms)", paths[i], (long long)dt);
    resp_free(r);
  }
  r = call(A.url, "DELETE", "/api/auth/signup", NULL);
  ok(r->status == 405 && r->j, "wrong method: 405 JSON");
  resp_free(r);
}

static void test_secret(void) {
  char dbp[400], sp[420];
  snprintf(dbp, sizeof dbp, "%s/sub/db.sqlite", tmpdir_);
  snprintf(sp, sizeof sp, "%s/sub", tmpdir_);
  mkdir(sp, 0755);
  unsetenv("DSYS_JWT_SECRET");
  char *s1 = NULL, *s2 = NULL;
  size_t l1 = 0, l2 = 0;
  const char *src1 = NULL, *src2 = NULL;
  int rc1 = dsys_auth_load_secret(NULL, dbp, &s1, &l1, &src1);
  int rc2 = dsys_auth_load_secret(NULL, dbp, &s2, &l2, &src2);
  ok(!rc1 && !rc2 && l1 == 64 && l1 == l2 && !memcmp(s1, s2, l1) &&
         !strcmp(src1, "generated") && !strcmp(src2, "existing"),
     "a 256-bit secret is generated once beside the database and then reused");
  snprintf(sp, sizeof sp, "%s/sub/jwt-secret", tmpdir_);
  struct stat st;
  ok(!stat(sp, &st) && (st.st_mode & 0777) == 0600, "the generated file is mode 0600");
  dsys_free(s1);
  dsys_free(s2);
  setenv("DSYS_JWT_SECRET", "from-the-environment-0123456789abcdef", 1);
  dsys_auth_load_secret(NULL, dbp, &s1, &l1, &src1);
  ok(!strcmp(s1, "from-the-environment-0123456789abcdef") && !strcmp(src1, "env"),
     "DSYS_JWT_SECRET comes before the generated file");
  dsys_free(s1);
  char fp[420];
  snprintf(fp, sizeof fp, "%s/my-secret", tmpdir_);
  int fd = open(fp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (write(fd, "file-secret-0123456789abcdef0123456789\n", 39) != 39) tap_diag("write");
  close(fd);
  dsys_auth_load_secret(fp, dbp, &s1, &l1, &src1);
  ok(!strcmp(s1, "file-secret-0123456789abcdef0123456789") && !strcmp(src1, "file"),
     "--jwt-secret-file comes first; the trailing newline is dropped");
  dsys_free(s1);
  unsetenv("DSYS_JWT_SECRET");
  ok(dsys_auth_load_secret("/nonexistent/x", dbp, &s1, &l1, NULL) == DSYS_EIO,
     "an unreadable secret file is an error, not a fallback");
  ok(dsys_auth_load_secret(NULL, NULL, &s1, &l1, NULL) == DSYS_EINVAL,
     "no file, no environment, no database: no secret");
  dsys_server *srv;
  dsys_server_new(&srv, NULL);
  dsys_auth_service *svc = NULL;
  dsys_auth_options o = {.size = sizeof o, .store = A.st, .token_secret = "short",
                         .token_secret_len = 5};
  is_int(dsys_service_auth_mount(srv, &o, &svc), DSYS_EINVAL,
         "a secret under 32 bytes is refused");
  o.token_secret = SECRET;
  o.token_secret_len = strlen(SECRET);
  o.token_alg = "none";
  is_int(dsys_service_auth_mount(srv, &o, &svc), DSYS_EINVAL, "alg none is refused");
  o.token_alg = "RS256";
  is_int(dsys_service_auth_mount(srv, &o, &svc), DSYS_EINVAL,
         "public-key algorithms are refused (no key confusion)");
  dsys_server_free(srv);
}

int main(void) {
  make_tmpdir("auth");
  snprintf(db_, sizeof db_, "%s/distsys.sqlite", tmpdir_);
  dsys_clock_fake_new(&fake_, dsys_clock_wall_ms(dsys_clock_real()));
  dsys_client_new(&cli_, NULL);
  inst_start(&A, "auth-a", fake_);
  inst_start(&B, "auth-b", NULL);
  test_signup();
  test_signin();
  test_throttle(); /* before test_tokens moves the fake clock by a day */
  test_tokens();
  test_concurrency();
  test_health_slow();
  test_secret();
  inst_stop(&A);
  inst_stop(&B);
  dsys_client_free(cli_);
  dsys_clock_free(fake_);
  rm_tmpdir();
  return tap_done();
}
