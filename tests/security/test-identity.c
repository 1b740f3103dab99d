/* Service identity: key pairs, tokens and what an attacker would try
 * against the verifier (alg none, HMAC keyed with the public key, another
 * deployment's key, expiry, tampering), credentials that follow their file,
 * the server guard, and the registry service refusing rogue registrations. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "tap.h"

#define T0 1700000000000LL

static char dir[] = "/tmp/dsys-identity-XXXXXX";
static char key[300], pub[300], key2[300], pub2[300];

static void path(char *out, const char *name) { snprintf(out, 300, "%s/%s", dir, name); }

static char *slurp(const char *p) {
  FILE *f = fopen(p, "r");
  if (!f) return NULL;
  static char buf[8192];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  return buf;
}

static void spit(const char *p, const char *text) {
  FILE *f = fopen(p, "w");
  if (!f) tap_bail("cannot write %s", p);
  fputs(text, f);
  fclose(f);
}

/* base64url of s without padding */
static void b64url(const char *s, char *out) {
  static const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t n = strlen(s), o = 0;
  for (size_t i = 0; i < n; i += 3) {
    unsigned v = (unsigned char)s[i] << 16;
    if (i + 1 < n) v |= (unsigned char)s[i + 1] << 8;
    if (i + 2 < n) v |= (unsigned char)s[i + 2];
    out[o++] = a[(v >> 18) & 63];
    out[o++] = a[(v >> 12) & 63];
    if (i + 1 < n) out[o++] = a[(v >> 6) & 63];
    if (i + 2 < n) out[o++] = a[v & 63];
  }
  out[o] = '\0';
}

static void test_keys(void) {
  int created = -1;
  is_int(dsys_identity_keygen(key, pub, &created), 0, "keygen");
  is_int(created, 1, "keygen made a key");
  struct stat st;
  ok(stat(key, &st) == 0 && (st.st_mode & 0777) == 0600, "private key is 0600");
  ok(stat(pub, &st) == 0 && (st.st_mode & 0777) == 0644, "public key is 0644");
  ok(strstr(slurp(key), "BEGIN PRIVATE KEY") != NULL, "private key is PEM");
  char first_pub[1024];
  snprintf(first_pub, sizeof first_pub, "%s", slurp(pub));
  ok(strstr(first_pub, "BEGIN PUBLIC KEY") != NULL, "public key is PEM");
  is_int(dsys_identity_keygen(key, pub, &created), 0, "keygen again");
  is_int(created, 0, "an existing key is kept");
  is_str(slurp(pub), first_pub, "same public key");
  unlink(pub);
  is_int(dsys_identity_keygen(key, pub, NULL), 0, "a missing public key is rewritten");
  is_str(slurp(pub), first_pub, "from the same private key");
  is_int(dsys_identity_keygen(key2, pub2, NULL), 0, "a second deployment's key");
  ok(strcmp(slurp(pub2), first_pub) != 0, "keys differ");
  char junk[300];
  path(junk, "junk.key");
  spit(junk, "not a key\n");
  char junkpub[300];
  path(junkpub, "junk.pub");
  is_int(dsys_identity_keygen(junk, junkpub, NULL), DSYS_EIO, "a key file that is no key: EIO");
  is_int(dsys_identity_keygen(NULL, pub, NULL), DSYS_EINVAL, "NULL path: EINVAL");
  dsys_identity_verifier *v = NULL;
  is_int(dsys_identity_verifier_new(&v, key, NULL), DSYS_EINVAL,
         "a private key is not accepted as the public key");
  is_int(dsys_identity_verifier_new(&v, junk, NULL), DSYS_EINVAL, "junk public key: EINVAL");
  char none[300];
  path(none, "missing.pub");
  is_int(dsys_identity_verifier_new(&v, none, NULL), DSYS_EIO, "missing public key: EIO");
}

static void test_verify(void) {
  dsys_clock *clk = NULL;
  dsys_clock_fake_new(&clk, T0);
  dsys_identity_issue_options io = {.size = sizeof io, .lifetime_s = 600, .clock = clk};
  char *tok = NULL;
  is_int(dsys_identity_issue(key, "data-1", "data", &io, &tok), 0, "issue");
  dsys_identity_verifier *v = NULL, *v2 = NULL;
  is_int(dsys_identity_verifier_new(&v, pub, clk), 0, "verifier");
  is_int(dsys_identity_verifier_new(&v2, pub2, clk), 0, "verifier of another deployment");
  dsys_identity_claims c;
  memset(&c, 0, sizeof c);
  is_int(dsys_identity_verify(v, tok, &c), 0, "a fresh token verifies");
  is_str(c.instance, "data-1", "sub");
  is_str(c.service, "data", "svc");
  is_int(c.expires_s, T0 / 1000 + 600, "exp = now + lifetime");
  is_int(dsys_identity_verify(v, tok, &c), 0, "again (cached)");
  is_str(c.instance, "data-1", "cached claims");
  is_int(dsys_identity_verify(v2, tok, NULL), DSYS_EAUTH, "another deployment's key: refused");

  /* tampering: flip a character of the payload and of the signature */
  char bad[4096];
  snprintf(bad, sizeof bad, "%s", tok);
  char *dot = strchr(bad, '.');
  dot[3] = dot[3] == 'A' ? 'B' : 'A';
  is_int(dsys_identity_verify(v, bad, NULL), DSYS_EAUTH, "tampered payload: refused");
  snprintf(bad, sizeof bad, "%s", tok);
  size_t n = strlen(bad);
  bad[n - 5] = bad[n - 5] == 'A' ? 'B' : 'A';
  is_int(dsys_identity_verify(v, bad, NULL), DSYS_EAUTH, "tampered signature: refused");

  /* alg none: a header saying none and an empty signature */
  char h[256], p[512], forged[1024];
  b64url("{\"alg\":\"none\",\"typ\":\"JWT\"}", h);
  char claims[256];
  snprintf(claims, sizeof claims,
           "{\"sub\":\"rogue\",\"svc\":\"data\",\"use\":\"dsys-identity\",\"exp\":%lld}",
           (long long)(T0 / 1000 + 600));
  b64url(claims, p);
  snprintf(forged, sizeof forged, "%s.%s.", h, p);
  is_int(dsys_identity_verify(v, forged, NULL), DSYS_EAUTH, "alg none: refused");

  /* algorithm confusion: HS256 keyed with the (public) public key */
  char *pem = slurp(pub);
  size_t pl = strlen(pem);
  char pemcopy[2048];
  snprintf(pemcopy, sizeof pemcopy, "%s", pem);
  char *hs = NULL;
  dsys_token_options to = {.size = sizeof to, .alg = "HS256", .lifetime_s = 600, .clock = clk};
  is_int(dsys_token_issue(pemcopy, pl, "{\"sub\":\"rogue\",\"svc\":\"data\",\"use\":\"dsys-identity\"}",
                          &to, &hs),
         0, "an HS256 token keyed with the public key PEM");
  is_int(dsys_identity_verify(v, hs, NULL), DSYS_EAUTH, "HS256 keyed with the public key: refused");
  dsys_free(hs);

  /* a user JWT of the auth service is not an identity, even if the key
   * were shared: "use" must say dsys-identity */
  is_int(dsys_identity_verify(v, "a.b.c", NULL), DSYS_EAUTH, "garbage: refused");
  is_int(dsys_identity_verify(v, "", NULL), DSYS_EAUTH, "empty: refused");
  is_int(dsys_identity_verify(v, NULL, NULL), DSYS_EAUTH, "NULL token: refused");
  is_int(dsys_identity_verify(v, "x.y.z\r\nHost: evil", NULL), DSYS_EAUTH, "CRLF: refused");
  is_int(dsys_identity_verify(NULL, tok, NULL), DSYS_EINVAL, "NULL verifier: EINVAL");

  /* expiry: the cached answer does not outlive the token */
  dsys_clock_advance(clk, 601LL * 1000000);
  is_int(dsys_identity_verify(v, tok, NULL), DSYS_EAUTH, "expired (was cached): refused");

  char *t2 = NULL;
  is_int(dsys_identity_issue(key, "", "data", &io, &t2), DSYS_EINVAL, "empty instance: EINVAL");
  is_int(dsys_identity_issue(key, "a b", "data", &io, &t2), DSYS_EINVAL, "space in instance: EINVAL");
  is_int(dsys_identity_issue(key, "x", NULL, &io, &t2), DSYS_EINVAL, "NULL service: EINVAL");
  is_int(dsys_identity_issue(pub, "x", "data", &io, &t2), DSYS_EIO, "public key as signing key: EIO");
  char missing[300];
  path(missing, "nokey");
  is_int(dsys_identity_issue(missing, "x", "data", &io, &t2), DSYS_EIO, "missing key: EIO");
  dsys_identity_issue_options neg = {.size = sizeof neg, .lifetime_s = -1};
  is_int(dsys_identity_issue(key, "x", "data", &neg, &t2), DSYS_EINVAL, "negative lifetime: EINVAL");
  dsys_free(tok);
  dsys_identity_verifier_free(v);
  dsys_identity_verifier_free(v2);
  dsys_clock_free(clk);
}

static void test_credential(void) {
  dsys_clock *clk = NULL;
  dsys_clock_fake_new(&clk, T0);
  char tf[300];
  path(tf, "data-1.token");
  is_int(dsys_identity_issue_file(key, "data-1", "data", NULL, tf), 0, "issue to a file");
  struct stat st;
  ok(stat(tf, &st) == 0 && (st.st_mode & 0777) == 0600, "token file is 0600");
  dsys_identity_options o = {.size = sizeof o, .clock = clk, .reload_ms = 1000};
  dsys_identity *id = NULL;
  is_int(dsys_identity_open(&id, tf, &o), 0, "open the credential");
  char *a = NULL, *b = NULL;
  is_int(dsys_identity_token(id, &a), 0, "token");
  char want[4096];
  snprintf(want, sizeof want, "%s", slurp(tf));
  want[strcspn(want, "\n")] = '\0';
  is_str(a, want, "the file's token");
  /* rotation: a new token appears after the reload interval */
  dsys_identity_issue_options io = {.size = sizeof io, .lifetime_s = 7200};
  is_int(dsys_identity_issue_file(key, "data-1", "data", &io, tf), 0, "rotate the file");
  is_int(dsys_identity_token(id, &b), 0, "token before the interval");
  is_str(b, a, "still the old one before the reload interval");
  dsys_free(b);
  dsys_clock_advance(clk, 1001LL * 1000);
  is_int(dsys_identity_token(id, &b), 0, "token after the interval");
  ok(strcmp(a, b) != 0, "the rotated token is used");
  dsys_free(a);
  /* a broken file keeps the last good token */
  spit(tf, "garbage with spaces\n");
  dsys_clock_advance(clk, 1001LL * 1000);
  is_int(dsys_identity_token(id, &a), 0, "token after a broken rewrite");
  is_str(a, b, "the last good token is kept");
  dsys_free(a);
  dsys_free(b);
  dsys_identity_free(id);
  is_int(dsys_identity_open(&id, tf, &o), DSYS_EINVAL, "open a file that holds no token: EINVAL");
  char missing[300];
  path(missing, "none.token");
  is_int(dsys_identity_open(&id, missing, &o), DSYS_EIO, "open a missing file: EIO");
  is_int(dsys_identity_new(&id, "not a token"), DSYS_EINVAL, "fixed non-token: EINVAL");
  is_int(dsys_identity_new(&id, "a.b.c"), 0, "fixed token");
  is_int(dsys_identity_token(id, &a), 0, "fixed token read");
  is_str(a, "a.b.c", "fixed token value");
  dsys_free(a);
  dsys_identity_free(id);
  dsys_clock_free(clk);
}

static void hello(dsys_request *req, void *ud) {
  (void)ud;
  dsys_respond_json(req, 200, "{\"hello\":true}");
}

static int do_call(dsys_client *cli, const char *url, const char *method, const char *p,
                   const char *ident, const char *body, char *out, size_t outlen) {
  dsys_header h[2] = {{"Content-Type", "application/json"}, {DSYS_IDENTITY_HEADER, ident}};
  dsys_call c = {.size = sizeof c, .method = method, .url = url, .path = p, .headers = h,
                 .nheaders = ident ? 2 : 1, .body = body, .body_len = body ? strlen(body) : 0};
  dsys_reply *r = NULL;
  int rc = dsys_client_do(cli, &c, &r);
  if (rc) return rc;
  if (out) {
    size_t n;
    const char *b = dsys_reply_body(r, &n);
    snprintf(out, outlen, "%.*s", (int)n, b);
  }
  int st = dsys_reply_status(r);
  dsys_reply_free(r);
  return st;
}

static void test_guard(dsys_client *cli) {
  dsys_identity_verifier *v = NULL;
  dsys_identity_verifier_new(&v, pub, NULL);
  dsys_server *srv = NULL;
  dsys_server_new(&srv, NULL);
  dsys_server_route(srv, "GET", "/api/data/x", hello, NULL);
  dsys_server_route(srv, "*", "/health", hello, NULL);
  dsys_server_route(srv, "GET", "/api/:type/health", hello, NULL);
  dsys_server_route(srv, "GET", "/api/data/x/health", hello, NULL);
  is_int(dsys_server_require_identity(srv, v), 0, "require identity");
  is_int(dsys_server_require_identity(NULL, v), DSYS_EINVAL, "NULL server: EINVAL");
  is_int(dsys_server_listen(srv, "inproc://ident-guard"), 0, "listen");
  char *good = NULL, *other = NULL, body[512];
  dsys_identity_issue(key, "gateway-1", "gateway", NULL, &good);
  dsys_identity_issue(key2, "gateway-1", "gateway", NULL, &other);
  const char *u = "inproc://ident-guard";
  is_int(do_call(cli, u, "GET", "/api/data/x", NULL, NULL, body, sizeof body), 401,
         "no identity: 401");
  ok(strstr(body, "identity_required") != NULL, "JSON error code: %s", body);
  is_int(do_call(cli, u, "GET", "/api/data/x", other, NULL, NULL, 0), 401,
         "another deployment's identity: 401");
  is_int(do_call(cli, u, "GET", "/api/data/x", "x.y.z", NULL, NULL, 0), 401, "garbage: 401");
  is_int(do_call(cli, u, "GET", "/api/data/x", good, NULL, body, sizeof body), 200,
         "a valid identity: 200");
  is_int(do_call(cli, u, "GET", "/health", NULL, NULL, NULL, 0), 200, "/health stays open");
  is_int(do_call(cli, u, "GET", "/api/data/health", NULL, NULL, NULL, 0), 200,
         "/api/data/health stays open");
  is_int(do_call(cli, u, "GET", "/api/data/x/health", NULL, NULL, NULL, 0), 401,
         "a deeper path ending in /health does not");
  is_int(do_call(cli, u, "POST", "/health", NULL, "{}", NULL, 0), 401,
         "but only for GET and HEAD");
  dsys_server_stop(srv, 1000);
  dsys_server_free(srv);
  dsys_identity_verifier_free(v);
  dsys_free(good);
  dsys_free(other);
}

static void test_registry(dsys_client *cli) {
  dsys_identity_verifier *v = NULL;
  dsys_identity_verifier_new(&v, pub, NULL);
  dsys_registry *reg = NULL;
  dsys_registry_open(&reg, "memory", NULL, NULL, NULL, 0);
  dsys_server *srv = NULL;
  dsys_server_new(&srv, NULL);
  dsys_registry_service *svc = NULL;
  dsys_registry_service_options so = {.size = sizeof so, .identity = v};
  is_int(dsys_registry_service_mount(srv, reg, &so, &svc), 0, "registry with identities");
  is_int(dsys_server_listen(srv, "inproc://ident-reg"), 0, "listen");
  const char *u = "inproc://ident-reg";
  char *d1 = NULL, *a1 = NULL, *rogue = NULL, body[4096];
  dsys_identity_issue(key, "data-1", "data", NULL, &d1);
  dsys_identity_issue(key, "auth-1", "auth", NULL, &a1);
  dsys_identity_issue(key2, "data-1", "data", NULL, &rogue);
  const char *reg_d1 = "{\"serviceId\":\"data-1-4001\",\"serviceType\":\"data\","
                       "\"url\":\"http://127.0.0.1:4001\",\"name\":\"data-1\"}";
  is_int(do_call(cli, u, "POST", "/api/registry/register", NULL, reg_d1, body, sizeof body), 401,
         "registration without credentials: 401");
  ok(strstr(body, "identity_required") != NULL, "says why: %s", body);
  is_int(do_call(cli, u, "POST", "/api/registry/register", rogue, reg_d1, NULL, 0), 401,
         "registration signed by another key: 401");
  is_int(do_call(cli, u, "POST", "/api/registry/register", a1, reg_d1, body, sizeof body), 403,
         "another instance's token: 403");
  ok(strstr(body, "identity_mismatch") != NULL, "says why: %s", body);
  const char *as_auth = "{\"serviceId\":\"data-1-4001\",\"serviceType\":\"auth\","
                        "\"url\":\"http://127.0.0.1:4001\",\"name\":\"data-1\"}";
  is_int(do_call(cli, u, "POST", "/api/registry/register", d1, as_auth, NULL, 0), 403,
         "registering under another service type: 403");
  dsys_instance *got = NULL;
  is_int(dsys_registry_get(reg, "data-1-4001", &got), DSYS_ENOTFOUND,
         "nothing refused was registered");
  is_int(do_call(cli, u, "POST", "/api/registry/register", d1, reg_d1, NULL, 0), 200,
         "its own token: registered");
  is_int(dsys_registry_get(reg, "data-1-4001", &got), 0, "and it is in the registry");
  dsys_free(got);
  /* another instance may not take over or remove the id */
  const char *steal = "{\"serviceId\":\"data-1-4001\",\"serviceType\":\"auth\","
                      "\"url\":\"http://127.0.0.1:6666\",\"name\":\"auth-1\"}";
  is_int(do_call(cli, u, "POST", "/api/registry/register", a1, steal, NULL, 0), 403,
         "taking over another instance's id: 403");
  const char *hb = "{\"serviceId\":\"data-1-4001\"}";
  is_int(do_call(cli, u, "POST", "/api/registry/heartbeat", NULL, hb, NULL, 0), 401,
         "heartbeat without credentials: 401");
  is_int(do_call(cli, u, "POST", "/api/registry/heartbeat", a1, hb, NULL, 0), 403,
         "heartbeat for another instance: 403");
  is_int(do_call(cli, u, "POST", "/api/registry/heartbeat", d1, hb, NULL, 0), 200,
         "own heartbeat: 200");
  is_int(do_call(cli, u, "POST", "/api/registry/deregister", a1, hb, NULL, 0), 403,
         "deregistering another instance: 403");
  is_int(do_call(cli, u, "GET", "/api/registry/services", NULL, NULL, body, sizeof body), 200,
         "reads stay open");
  ok(strstr(body, "http://127.0.0.1:4001") != NULL && !strstr(body, "6666"),
     "the list holds the real instance only: %s", body);

  /* the http backend presents a credential, and the registration agent
   * registers with it */
  char tf[300];
  path(tf, "data-2.token");
  dsys_identity_issue_file(key, "data-2", "data", NULL, tf);
  dsys_identity *id = NULL;
  is_int(dsys_identity_open(&id, tf, NULL), 0, "credential of data-2");
  dsys_registry *remote = NULL, *anon = NULL;
  dsys_registry_options ro = {.size = sizeof ro, .identity = id};
  is_int(dsys_registry_open(&remote, u, NULL, &ro, NULL, 0), 0, "http backend with identity");
  is_int(dsys_registry_open(&anon, u, NULL, NULL, NULL, 0), 0, "http backend without");
  dsys_instance d2 = {.id = "data-2-4002", .type = "data", .url = "http://127.0.0.1:4002",
                      .name = "data-2", .metadata = "{}", .weight = 1};
  is_int(dsys_registry_register(anon, &d2), DSYS_EAUTH, "without identity: DSYS_EAUTH");
  dsys_registration *agent = NULL;
  dsys_registration_options rgo = {.size = sizeof rgo, .require_registered = 1};
  is_int(dsys_registration_start(&agent, remote, &d2, &rgo), 0, "agent registers with identity");
  is_int(dsys_registry_get(reg, "data-2-4002", &got), 0, "data-2 registered");
  dsys_free(got);
  dsys_instance d3 = {.id = "data-3-4003", .type = "data", .url = "http://127.0.0.1:4003",
                      .name = "data-3", .metadata = "{}", .weight = 1};
  is_int(dsys_registry_register(remote, &d3), DSYS_EPERM,
         "a token for data-2 cannot register data-3: DSYS_EPERM");
  is_int(dsys_registration_stop(agent), 0, "agent deregisters");
  is_int(dsys_registry_get(reg, "data-2-4002", &got), DSYS_ENOTFOUND, "data-2 gone");
  dsys_registry_close(remote);
  dsys_registry_close(anon);
  dsys_identity_free(id);
  dsys_registry_service_drain(svc);
  dsys_server_stop(srv, 1000);
  dsys_server_free(srv);
  dsys_registry_service_free(svc);
  dsys_registry_close(reg);
  dsys_identity_verifier_free(v);
  dsys_free(d1);
  dsys_free(a1);
  dsys_free(rogue);
}

int main(void) {
  dsys_log_set_level(DSYS_LOG_OFF);
  if (!mkdtemp(dir)) tap_bail("mkdtemp");
  path(key, "identity.key");
  path(pub, "identity.pub");
  path(key2, "other.key");
  path(pub2, "other.pub");
  test_keys();
  test_verify();
  test_credential();
  dsys_client *cli = NULL;
  dsys_client_new(&cli, NULL);
  test_guard(cli);
  test_registry(cli);
  dsys_client_free(cli);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) tap_diag("could not remove %s", dir);
  return tap_done();
}
