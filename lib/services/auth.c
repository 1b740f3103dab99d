/*
 * Auth service: sign-up and sign-in with slow salted password hashes
 * (libxcrypt, yescrypt by default), JWT tokens (libjwt, HMAC), throttling
 * of failed logins shared by every instance through the store.
 *
 * Store layout (shared with other instances on the same file):
 *   user:<email lowercased>        {id, username, email, passwordHash,
 *                                   createdAt}
 *   login-fail:<email lowercased>  {count, first} with a TTL that ends the
 *                                   window (first + window)
 *
 * Hashing takes tens of milliseconds, so sign-up and sign-in run on a small
 * pool of hashing threads and answer through dsys_request_defer(): server
 * threads keep serving other requests meanwhile.
 */
#include <crypt.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jwt.h>
#include <distsys/auth.h>
#include <distsys/services.h>
#include <distsys/util.h>
#include "core/internal.h"
#include "core/json.h"
#include "services/reply.h"
#include "services/svc.h"
#include "security/crypto.h"

#define MAX_PASSWORD DSYS_PASSWORD_MAX
#define MAX_EMAIL 254
#define MAX_USERNAME 256

struct dsys_auth_service {
  dsysi_svc svc;
  dsys_store *store;
  unsigned char *secret;
  size_t secret_len;
  jwt_alg_t alg;
  int64_t lifetime_s;
  char *prefix;
  uint32_t max_failures;
  int64_t window_ms;
  dsysi_pool *pool;
  char dummy_hash[CRYPT_OUTPUT_SIZE]; /* verified against for unknown users */
};

/* ---- passwords and tokens: the shared primitives of crypto.c ---- */

static int hash_password(const char *prefix, const char *pw, char *out) {
  return dsysi_password_hash(prefix, pw, out);
}

/* 1 when pw matches the stored hash (0 also when out of memory). */
static int verify_password(const char *pw, const char *stored) {
  return dsysi_password_check(pw, stored) == 1;
}

static char *sign_token(dsys_auth_service *a, const char *id,
                        const char *email) {
  jwt_t *j = NULL;
  if (jwt_new(&j)) return NULL;
  char *tok = NULL;
  if (!jwt_add_grant(j, "id", id) && !jwt_add_grant(j, "email", email))
    dsysi_token_encode(j, a->secret, a->secret_len, a->alg,
                       dsysi_svc_now(&a->svc) / 1000, a->lifetime_s, &tok);
  jwt_free(j);
  return tok;
}

/* Verify a token (dsysi_token_decode: signature, the configured algorithm
 * only, exp, nbf). On success *id and *email receive copies. */
static int check_token(dsys_auth_service *a, const char *token, char **id,
                       char **email) {
  jwt_t *j = NULL;
  int rc = dsysi_token_decode(token, a->secret, a->secret_len, a->alg,
                              dsysi_svc_now(&a->svc) / 1000, &j);
  if (rc) return rc;
  rc = DSYS_EAUTH;
  const char *i = jwt_get_grant(j, "id"), *e = jwt_get_grant(j, "email");
  if (!i || !e) goto out;
  *id = strdup(i);
  *email = strdup(e);
  if (!*id || !*email) {
    free(*id);
    free(*email);
    rc = DSYS_ENOMEM;
    goto out;
  }
  rc = 0;
out:
  jwt_free(j);
  return rc;
}

/* ---- helpers ---- */

static char *lower_key(const char *prefix, const char *email) {
  size_t pl = strlen(prefix), el = strlen(email);
  char *k = malloc(pl + el + 1);
  if (!k) return NULL;
  memcpy(k, prefix, pl);
  for (size_t i = 0; i < el; i++) k[pl + i] = (char)tolower((unsigned char)email[i]);
  k[pl + el] = '\0';
  return k;
}

/* /^[^\s@]+@[^\s@]+\.[^\s@]+$/ as the original checked it. */
static int email_ok(const char *e) {
  const char *at = strchr(e, '@');
  if (!at || at == e || strchr(at + 1, '@')) return 0;
  for (const char *p = e; *p; p++)
    if (isspace((unsigned char)*p)) return 0;
  const char *dot = strrchr(at + 1, '.');
  return dot && dot > at + 1 && dot[1];
}

/* Characters (code points) of a UTF-8 string. */
static size_t utf8_len(const char *s) {
  size_t n = 0;
  for (; *s; s++)
    if (((unsigned char)*s & 0xC0) != 0x80) n++;
  return n;
}

/* Well-formed UTF-8 (no overlongs, surrogates or code points past
 * U+10FFFF): the token library refuses claims that are not, so a user whose
 * name or email is not could sign up but never get a token. */
static int utf8_ok(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    unsigned c = *p;
    size_t n = c < 0x80 ? 0 : c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2
               : c >= 0xF0 && c <= 0xF4 ? 3 : 4;
    if (n == 4) return 0;
    unsigned lo = 0x80, hi = 0xBF;
    if (c == 0xE0) lo = 0xA0;
    else if (c == 0xED) hi = 0x9F;
    else if (c == 0xF0) lo = 0x90;
    else if (c == 0xF4) hi = 0x8F;
    p++;
    for (size_t i = 0; i < n; i++, p++) {
      if (*p < (i ? 0x80 : lo) || *p > (i ? 0xBF : hi)) return 0;
    }
  }
  return 1;
}

/* A string member: 1 present non-empty string, 0 absent/null/"",
 * -1 another type or an embedded NUL. */
static int get_str(json_object *o, const char *k, const char **out) {
  json_object *v;
  *out = NULL;
  if (!json_object_object_get_ex(o, k, &v) || !v) return 0;
  if (!json_object_is_type(v, json_type_string)) return -1;
  const char *s = json_object_get_string(v);
  if ((size_t)json_object_get_string_len(v) != strlen(s)) return -1;
  if (!*s) return 0;
  *out = s;
  return 1;
}

static json_object *user_public(json_object *u, int with_created) {
  json_object *o = json_object_new_object();
  const char *keys[] = {"id", "username", "email", "createdAt"};
  for (int i = 0; i < (with_created ? 4 : 3); i++) {
    json_object *v;
    if (json_object_object_get_ex(u, keys[i], &v))
      json_object_object_add(o, keys[i], json_object_get(v));
  }
  return o;
}

static void respond_token(dsys_auth_service *a, dsys_request *req, int status,
                          const char *message, json_object *user) {
  const char *id = dsysi_json_str(user, "id");
  const char *email = dsysi_json_str(user, "email");
  char *tok = id && email ? sign_token(a, id, email) : NULL;
  if (!tok) {
    dsysi_respond_err(req, 500, "DSYS_EINTERNAL", "Could not sign token");
    return;
  }
  json_object *o = json_object_new_object();
  json_object_object_add(o, "message", json_object_new_string(message));
  json_object_object_add(o, "token", json_object_new_string(tok));
  json_object_object_add(o, "user", user_public(user, 0));
  free(tok);
  dsysi_respond_obj(req, status, o);
}

/* ---- sign-up ---- */

typedef struct job {
  dsys_auth_service *a;
  dsys_request *req;
  char *username, *email, *password;
} job;

static void job_free(job *j) {
  if (!j) return;
  free(j->username);
  free(j->email);
  if (j->password) {
    explicit_bzero(j->password, strlen(j->password));
    free(j->password);
  }
  free(j);
}

static void do_signup(void *arg) {
  job *j = arg;
  dsys_auth_service *a = j->a;
  char hash[CRYPT_OUTPUT_SIZE];
  char *key = lower_key("user:", j->email);
  int rc = key ? hash_password(a->prefix, j->password, hash) : DSYS_ENOMEM;
  if (rc) {
    dsysi_respond_err(j->req, 500, dsys_err_name(rc), "Could not hash password");
    goto out;
  }
  unsigned char rnd[16];
  dsys_random_bytes(rnd, sizeof rnd);
  rnd[6] = (rnd[6] & 0x0f) | 0x40; /* a version 4 UUID */
  rnd[8] = (rnd[8] & 0x3f) | 0x80;
  char id[40];
  snprintf(id, sizeof id,
           "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
           rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7],
           rnd[8], rnd[9], rnd[10], rnd[11], rnd[12], rnd[13], rnd[14], rnd[15]);
  json_object *u = json_object_new_object();
  json_object_object_add(u, "id", json_object_new_string(id));
  json_object_object_add(u, "username", json_object_new_string(j->username));
  json_object_object_add(u, "email", json_object_new_string(j->email));
  json_object_object_add(u, "passwordHash", json_object_new_string(hash));
  json_object_object_add(u, "createdAt", dsysi_json_time(dsysi_svc_now(&a->svc)));
  char *text = dsysi_json_dump(u, NULL);
  rc = text ? dsys_store_create(a->store, key, text, NULL, NULL) : DSYS_ENOMEM;
  free(text);
  if (rc == DSYS_EEXIST)
    dsysi_respond_err(j->req, 409, "DSYS_EEXIST", "User already exists");
  else if (rc)
    dsysi_respond_storage_err(j->req, rc, "Could not store user");
  else
    respond_token(a, j->req, 201, "User registered successfully", u);
  json_object_put(u);
out:
  explicit_bzero(hash, sizeof hash);
  free(key);
  job_free(j);
}

static int submit(dsys_auth_service *a, dsys_request *req, dsysi_task_fn fn,
                  const char *username, const char *email,
                  const char *password) {
  job *j = calloc(1, sizeof *j);
  if (!j) return DSYS_ENOMEM;
  j->a = a;
  j->req = req;
  j->username = dsysi_strdup(username);
  j->email = strdup(email);
  j->password = strdup(password);
  if ((username && !j->username) || !j->email || !j->password) {
    job_free(j);
    return DSYS_ENOMEM;
  }
  dsys_request_defer(req);
  int rc = dsysi_pool_submit(a->pool, fn, j);
  if (rc) {
    job_free(j);
    dsysi_respond_err(req, 503, "DSYS_ESTOPPED", "Service is stopping");
  }
  return 0;
}

static void h_signup(dsys_request *req, void *ud) {
  dsys_auth_service *a = ud;
  json_object *b;
  if (dsysi_body_object(req, &b)) return;
  const char *user, *email, *pw;
  int r1 = get_str(b, "username", &user), r2 = get_str(b, "email", &email),
      r3 = get_str(b, "password", &pw);
  if (r1 < 0 || r2 < 0 || r3 < 0)
    dsysi_respond_err(req, 400, "DSYS_ETYPE",
                      "Username, email and password must be strings");
  else if (!r1 || !r2 || !r3)
    dsysi_respond_err(req, 400, "DSYS_EINVAL", "All fields are required");
  else if (strlen(email) > MAX_EMAIL || !email_ok(email) || !utf8_ok(email))
    dsysi_respond_err(req, 400, "DSYS_EINVAL", "Invalid email format");
  else if (!utf8_ok(user) || !utf8_ok(pw))
    dsysi_respond_err(req, 400, "DSYS_EINVAL",
                      "Username and password must be valid UTF-8");
  else if (utf8_len(pw) < 6)
    dsysi_respond_err(req, 400, "DSYS_EINVAL",
                      "Password must be at least 6 characters");
  else if (strlen(pw) > MAX_PASSWORD)
    dsysi_respond_err(req, 400, "DSYS_EINVAL",
                      "Password must be at most 1024 bytes");
  else if (strlen(user) > MAX_USERNAME)
    dsysi_respond_err(req, 400, "DSYS_EINVAL",
                      "Username must be at most 256 bytes");
  else {
    /* A quick answer for a taken email; the create below stays atomic. */
    char *key = lower_key("user:", email);
    dsys_item *it = NULL;
    int rc = key ? dsys_store_get(a->store, key, &it) : DSYS_ENOMEM;
    free(key);
    dsys_item_free(it);
    if (rc == 0)
      dsysi_respond_err(req, 409, "DSYS_EEXIST", "User already exists");
    else if (rc != DSYS_ENOTFOUND)
      dsysi_respond_storage_err(req, rc, "Storage error");
    else if ((rc = submit(a, req, do_signup, user, email, pw)))
      dsysi_respond_err(req, 500, dsys_err_name(rc), dsys_strerror(rc));
  }
  json_object_put(b);
}

/* ---- throttling of failed logins ---- */

/* Seconds until the window of a blocked account ends, or 0 when the
 * account is not blocked. */
static int64_t blocked_for(dsys_auth_service *a, const char *fkey) {
  dsys_item *it = NULL;
  if (dsys_store_get(a->store, fkey, &it)) return 0;
  json_object *o = NULL;
  int64_t count = 0, first = 0, left = 0;
  if (!dsysi_json_parse_object(it->value, strlen(it->value), &o) &&
      !dsysi_json_int64(o, "count", &count) &&
      !dsysi_json_int64(o, "first", &first)) {
    int64_t now = dsysi_svc_now(&a->svc);
    if (count >= a->max_failures && now - first < a->window_ms)
      left = (first + a->window_ms - now + 999) / 1000;
  }
  json_object_put(o);
  dsys_item_free(it);
  return left;
}

/* Count one failure (compare-and-swap on the shared counter). */
static void record_failure(dsys_auth_service *a, const char *fkey) {
  for (int attempt = 0; attempt < 8; attempt++) {
    int64_t now = dsysi_svc_now(&a->svc);
    dsys_item *it = NULL;
    int rc = dsys_store_get(a->store, fkey, &it);
    char val[96];
    if (rc == DSYS_ENOTFOUND) {
      snprintf(val, sizeof val, "{\"count\":1,\"first\":%lld}", (long long)now);
      dsys_store_write w = {.size = sizeof w, .ttl_ms = a->window_ms};
      rc = dsys_store_create(a->store, fkey, val, &w, NULL);
      if (rc != DSYS_EEXIST) return;
      continue;
    }
    if (rc) return;
    json_object *o = NULL;
    int64_t count = 0, first = now;
    if (!dsysi_json_parse_object(it->value, strlen(it->value), &o)) {
      dsysi_json_int64(o, "count", &count);
      dsysi_json_int64(o, "first", &first);
    }
    json_object_put(o);
    if (now - first >= a->window_ms) {
      count = 0;
      first = now;
    }
    snprintf(val, sizeof val, "{\"count\":%lld,\"first\":%lld}",
             (long long)(count + 1), (long long)first);
    dsys_store_write w = {.size = sizeof w,
                          .ttl_ms = first + a->window_ms - now,
                          .expected_version = it->version};
    dsys_item_free(it);
    rc = dsys_store_update(a->store, fkey, val, &w, NULL);
    if (rc != DSYS_ECONFLICT && rc != DSYS_ENOTFOUND) return;
  }
}

static void respond_throttled(dsys_request *req, int64_t secs) {
  char h[32];
  snprintf(h, sizeof h, "%lld", (long long)secs);
  dsys_response_header(req, "Retry-After", h);
  json_object *o = json_object_new_object();
  json_object_object_add(o, "error",
                         json_object_new_string("Too many failed login attempts"));
  json_object_object_add(o, "code", json_object_new_string("DSYS_ERATELIMIT"));
  json_object_object_add(o, "retryAfter", json_object_new_int64(secs));
  dsysi_respond_obj(req, 429, o);
}

static void do_signin(void *arg) {
  job *j = arg;
  dsys_auth_service *a = j->a;
  char *key = lower_key("user:", j->email);
  char *fkey = lower_key("login-fail:", j->email);
  json_object *u = NULL;
  dsys_item *it = NULL;
  if (!key || !fkey) {
    dsysi_respond_err(j->req, 500, "DSYS_ENOMEM", "Out of memory");
    goto out;
  }
  int64_t left = blocked_for(a, fkey);
  if (left > 0) {
    respond_throttled(j->req, left);
    goto out;
  }
  int rc = dsys_store_get(a->store, key, &it);
  if (rc && rc != DSYS_ENOTFOUND) {
    dsysi_respond_storage_err(j->req, rc, "Storage error");
    goto out;
  }
  const char *hash = NULL;
  if (it && !dsysi_json_parse_object(it->value, strlen(it->value), &u))
    hash = dsysi_json_str(u, "passwordHash");
  /* Unknown users cost a hash too, so timing does not tell them apart. */
  int ok = verify_password(j->password, hash ? hash : a->dummy_hash) && hash;
  if (!ok) {
    record_failure(a, fkey);
    dsysi_respond_err(j->req, 401, "DSYS_EAUTH", "Invalid credentials");
    goto out;
  }
  dsys_store_delete(a->store, fkey, 0);
  respond_token(a, j->req, 200, "Login successful", u);
out:
  json_object_put(u);
  dsys_item_free(it);
  free(key);
  free(fkey);
  job_free(j);
}

static void h_signin(dsys_request *req, void *ud) {
  dsys_auth_service *a = ud;
  json_object *b;
  if (dsysi_body_object(req, &b)) return;
  const char *email, *pw;
  int r1 = get_str(b, "email", &email), r2 = get_str(b, "password", &pw);
  if (r1 < 0 || r2 < 0)
    dsysi_respond_err(req, 400, "DSYS_ETYPE",
                      "Email and password must be strings");
  else if (!r1 || !r2)
    dsysi_respond_err(req, 400, "DSYS_EINVAL",
                      "Email and password are required");
  else if (strlen(email) > MAX_EMAIL || strlen(pw) > MAX_PASSWORD)
    dsysi_respond_err(req, 401, "DSYS_EAUTH", "Invalid credentials");
  else {
    int rc = submit(a, req, do_signin, NULL, email, pw);
    if (rc) dsysi_respond_err(req, 500, dsys_err_name(rc), dsys_strerror(rc));
  }
  json_object_put(b);
}

/* ---- token routes ---- */

/* Authenticate the bearer token and load the user; on failure responds. */
static json_object *authed_user(dsys_auth_service *a, dsys_request *req) {
  const char *h = dsys_request_header(req, "Authorization");
  const char *tok = NULL;
  if (h && strncasecmp(h, "Bearer ", 7) == 0) {
    tok = h + 7;
    while (*tok == ' ') tok++;
    if (!*tok) tok = NULL;
  }
  if (!tok) {
    dsysi_respond_err(req, 401, "DSYS_EAUTH", "No token provided");
    return NULL;
  }
  char *id = NULL, *email = NULL;
  int rc = check_token(a, tok, &id, &email);
  if (rc) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "error", json_object_new_string("Invalid token"));
    json_object_object_add(o, "code", json_object_new_string("DSYS_EAUTH"));
    json_object_object_add(o, "valid", json_object_new_boolean(0));
    dsysi_respond_obj(req, 401, o);
    return NULL;
  }
  char *key = lower_key("user:", email);
  dsys_item *it = NULL;
  rc = key ? dsys_store_get(a->store, key, &it) : DSYS_ENOMEM;
  json_object *u = NULL;
  if (!rc && dsysi_json_parse_object(it->value, strlen(it->value), &u))
    rc = DSYS_EBADJSON;
  if (!rc && (!dsysi_json_str(u, "id") || strcmp(dsysi_json_str(u, "id"), id)))
    rc = DSYS_ENOTFOUND; /* same email, another (re-created) account */
  if (rc == DSYS_ENOTFOUND)
    dsysi_respond_err(req, 404, "DSYS_ENOTFOUND", "User not found");
  else if (rc)
    dsysi_respond_storage_err(req, rc, "Storage error");
  if (rc) {
    json_object_put(u);
    u = NULL;
  }
  dsys_item_free(it);
  free(key);
  free(id);
  free(email);
  return u;
}

static void h_verify(dsys_request *req, void *ud) {
  json_object *u = authed_user(ud, req);
  if (!u) return;
  json_object *o = json_object_new_object();
  json_object_object_add(o, "valid", json_object_new_boolean(1));
  json_object_object_add(o, "user", user_public(u, 0));
  json_object_put(u);
  dsysi_respond_obj(req, 200, o);
}

static void h_profile(dsys_request *req, void *ud) {
  json_object *u = authed_user(ud, req);
  if (!u) return;
  json_object *o = json_object_new_object();
  json_object_object_add(o, "user", user_public(u, 1));
  json_object_put(u);
  dsysi_respond_obj(req, 200, o);
}

static int auth_ready(void *ud, const char **what, char *err, size_t errlen) {
  dsys_auth_service *a = ud;
  dsys_item *it = NULL;
  int rc = dsys_store_get(a->store, "ready-probe", &it);
  dsys_item_free(it);
  *what = "database";
  if (rc == DSYS_ENOTFOUND) return 0;
  if (rc) snprintf(err, errlen, "%s", dsys_strerror(rc));
  return rc;
}

/* ---- mount ---- */

int dsys_service_auth_mount(dsys_server *srv, const dsys_auth_options *opts,
                            dsys_auth_service **out) {
  if (!srv || !opts || !out || !opts->store || !opts->token_secret ||
      opts->token_secret_len < 32 || opts->token_secret_len > 4096)
    return DSYS_EINVAL;
  jwt_alg_t alg;
  if (dsysi_token_alg(opts->token_alg, &alg)) return DSYS_EINVAL;
  dsys_auth_service *a = calloc(1, sizeof *a);
  if (!a) return DSYS_ENOMEM;
  a->store = opts->store;
  a->alg = alg;
  a->lifetime_s = opts->token_lifetime_s > 0 ? opts->token_lifetime_s : 86400;
  a->max_failures = opts->max_failures ? opts->max_failures : 5;
  a->window_ms = opts->failure_window_ms > 0 ? opts->failure_window_ms : 15 * 60 * 1000;
  a->secret = malloc(opts->token_secret_len);
  a->secret_len = opts->token_secret_len;
  a->prefix = strdup(opts->hash_prefix ? opts->hash_prefix : "$y$");
  if (!a->secret || !a->prefix) {
    free(a->secret);
    free(a->prefix);
    free(a);
    return DSYS_ENOMEM;
  }
  memcpy(a->secret, opts->token_secret, opts->token_secret_len);
  /* A hash of a random password: checks the prefix works, and is what
   * unknown users are verified against. */
  char rnd[33];
  dsys_random_hex(rnd, sizeof rnd, 16);
  int rc = hash_password(a->prefix, rnd, a->dummy_hash);
  if (rc) goto fail_nosvc;
  int64_t delay = opts->work_delay_ms > 0 ? opts->work_delay_ms : 800;
  rc = dsysi_svc_init(&a->svc, srv, opts->clock,
                      opts->name ? opts->name : "auth-service", "auth",
                      auth_ready, a);
  if (rc) goto fail_nosvc;
  static const char *const slow[] = {"/auth-worker", "/auth-work",
                                     "/api/auth/auth-worker",
                                     "/api/auth/auth-work"};
  rc = dsysi_svc_slow_routes(&a->svc, slow, 4, delay, "Auth worker completed");
  const struct {
    const char *m, *p;
    dsys_handler_fn fn;
  } routes[] = {
      {"POST", "/api/auth/signup", h_signup},
      {"POST", "/api/auth/register", h_signup},
      {"POST", "/api/auth/signin", h_signin},
      {"POST", "/api/auth/login", h_signin},
      {"GET", "/api/auth/verify", h_verify},
      {"GET", "/api/auth/profile", h_profile},
  };
  for (size_t i = 0; !rc && i < sizeof routes / sizeof routes[0]; i++)
    rc = dsys_server_route(srv, routes[i].m, routes[i].p, routes[i].fn, a);
  if (!rc)
    rc = dsysi_pool_new(&a->pool, opts->hash_threads ? opts->hash_threads : 2,
                        "auth-hash");
  if (rc) {
    dsysi_svc_fini(&a->svc);
    goto fail_nosvc;
  }
  *out = a;
  return 0;
fail_nosvc:
  explicit_bzero(a->secret, a->secret_len);
  free(a->secret);
  free(a->prefix);
  free(a);
  return rc;
}

void dsys_service_auth_free(dsys_auth_service *a) {
  if (!a) return;
  dsysi_pool_free(a->pool); /* runs what is queued, then joins */
  dsysi_svc_fini(&a->svc);
  explicit_bzero(a->secret, a->secret_len);
  free(a->secret);
  free(a->prefix);
  free(a);
}
