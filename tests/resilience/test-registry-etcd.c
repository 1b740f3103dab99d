/* The etcd registry backend beyond the conformance suite, against a real
 * 3-member cluster on the real clock: push between two handles (as two
 * processes would be), the lease backstop, one member down (keeps
 * working), two members down (writes: bounded DSYS_EUNAVAIL, no hang;
 * lookups: the last view), members back (works again without reopening,
 * fresh view). And a secured cluster (TLS with client certificates, etcd
 * auth with a short token TTL): works, wrong CA / wrong password / bad
 * URLs give clear errors, an expired token is replaced. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <distsys/distsys.h>
#include "tap.h"
#include "etcdserver.h"

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct seen {
  _Atomic int n;
  _Atomic int64_t last_ms; /* when the last callback ran */
  char last_id[64];
  int kind[256];
  uint64_t index[256];
} seen;

static void on_change(void *ud, const dsys_registry_change *c) {
  seen *s = ud;
  snprintf(s->last_id, sizeof s->last_id, "%s", c->id);
  s->last_ms = now_ms();
  if (s->n < 256) {
    s->kind[s->n] = c->kind;
    s->index[s->n] = c->index;
  }
  s->n++;
}

/* Poll (bounded) until the watcher has seen more than n callbacks. */
static int wait_more(seen *s, int n, int64_t limit_ms) {
  int64_t end = now_ms() + limit_ms;
  while (s->n <= n && now_ms() < end) usleep(2000);
  return s->n > n;
}

static int reg(dsys_registry *r, const char *id, const char *type) {
  dsys_instance in = {.id = id, .type = type, .url = "http://127.0.0.1:9"};
  return dsys_registry_register(r, &in);
}

static int count(dsys_registry *r, const char *type) {
  dsys_instance *v;
  size_t n;
  if (dsys_registry_lookup(r, type, 0, &v, &n)) return -1;
  dsys_free(v);
  return (int)n;
}

static dsys_registry *open_reg(const char *url, int64_t ttl, int64_t reap, int64_t sweep) {
  dsys_registry_options o = {.size = sizeof o, .ttl_ms = ttl, .reap_ms = reap,
                             .sweep_interval_ms = sweep};
  dsys_registry *r = NULL;
  char err[256] = "";
  int rc = dsys_registry_open(&r, url, NULL, &o, err, sizeof err);
  if (rc) tap_diag("open %s: %s (%s)", url, dsys_strerror(rc), err);
  return r;
}

/* Two handles on one prefix: B has no sweep timer, so only the watch can
 * tell it about A's changes. */
static void test_push(const char *eps) {
  char url[400];
  snprintf(url, sizeof url, "etcd://%s/t/push", eps);
  dsys_registry *a = open_reg(url, 2000, 4000, 1000), *b = open_reg(url, 2000, 4000, -1);
  ok(a && b, "push: two handles open");
  if (!a || !b) return;
  seen s = {0};
  dsys_registry_watch(b, on_change, &s, NULL);
  int64_t worst = 0, total = 0, regs = 0;
  for (int i = 0; i < 10; i++) {
    char id[32];
    snprintf(id, sizeof id, "p-%d", i);
    int n = s.n;
    int64_t t0 = now_ms();
    int rc = reg(a, id, "push");
    int64_t t1 = now_ms();
    if (rc || !wait_more(&s, n, 3000) || strcmp(s.last_id, id)) {
      ok(0, "push: change %d reached B (rc %d, n %d)", i, rc, (int)s.n);
      break;
    }
    regs++;
    total += t1 - t0;
    if (s.last_ms - t0 > worst) worst = s.last_ms - t0;
  }
  is_int(regs, 10, "push: B's watcher saw each of A's 10 registrations");
  ok(worst < 900, "push: within %lld ms at worst (the sweep would take 1000)", (long long)worst);
  tap_diag("figure: register through etcd %.1f ms on average; seen by another handle's "
           "watcher after %lld ms at worst", regs ? (double)total / regs : 0.0, (long long)worst);
  is_int(count(b, "push"), 10, "push: B lists them");
  int64_t t0 = now_ms();
  int hb_ok = 0;
  for (int i = 0; i < 10; i++) {
    char id[32];
    snprintf(id, sizeof id, "p-%d", i);
    hb_ok += dsys_registry_heartbeat(a, id) == 0;
  }
  is_int(hb_ok, 10, "push: heartbeats");
  tap_diag("figure: heartbeat through etcd %.1f ms on average", (double)(now_ms() - t0) / 10);
  dsys_registry_close(a);
  dsys_registry_close(b);
}

typedef struct writer {
  dsys_registry *r;
  const char *prefix;
  int failures;
} writer;

static void *write_many(void *p) {
  writer *w = p;
  for (int i = 0; i < 40; i++) {
    char id[32];
    snprintf(id, sizeof id, "%s-%02d", w->prefix, i);
    if (reg(w->r, id, "conc")) w->failures++;
  }
  return NULL;
}

static void *sweep_now(void *p) {
  dsys_registry_sweep(p);
  return NULL;
}

/* Two handles (two processes) write at once: every change gets its own
 * index, consecutive, seen once by a third handle's watcher; two sweepers
 * at once record each transition once. On a fake clock shared by the
 * three handles (no sweep timers), so the test decides when TTLs pass. */
static void test_concurrent(const char *eps) {
  char url[400];
  snprintf(url, sizeof url, "etcd://%s/t/conc", eps);
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 1700000000000LL);
  dsys_registry_options o = {.size = sizeof o, .clock = clk, .ttl_ms = 30000,
                             .reap_ms = 120000, .sweep_interval_ms = -1};
  dsys_registry *a = NULL, *b = NULL, *w = NULL;
  dsys_registry_open(&a, url, NULL, &o, NULL, 0);
  dsys_registry_open(&b, url, NULL, &o, NULL, 0);
  dsys_registry_open(&w, url, NULL, &o, NULL, 0);
  ok(a && b && w, "concurrent: three handles");
  if (!a || !b || !w) return;
  seen s = {0};
  dsys_registry_watch(w, on_change, &s, NULL);
  writer wa = {a, "a", 0}, wb = {b, "b", 0};
  pthread_t ta, tb;
  pthread_create(&ta, NULL, write_many, &wa);
  pthread_create(&tb, NULL, write_many, &wb);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  is_int(wa.failures + wb.failures, 0, "concurrent: 80 registrations from two handles at once");
  uint64_t idx = 0;
  dsys_registry_index(w, &idx);
  is_int(idx, 80, "concurrent: index 80, one per change");
  int64_t end = now_ms() + 5000;
  while (s.n < 80 && now_ms() < end) usleep(2000);
  int seq = s.n == 80;
  for (int i = 0; seq && i < 80; i++) seq = s.index[i] == (uint64_t)i + 1;
  ok(seq, "concurrent: the watcher saw 80 changes, indexes 1..80 in order (%d)", (int)s.n);
  is_int(count(w, "conc"), 80, "concurrent: 80 listed");

  /* 31 s later both sweep at once: 80 UNHEALTHY, each once */
  dsys_clock_advance(clk, 31000 * 1000);
  int before = s.n;
  pthread_create(&ta, NULL, sweep_now, a);
  pthread_create(&tb, NULL, sweep_now, b);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  dsys_registry_index(w, &idx);
  is_int(idx, 160, "concurrent sweeps: 80 transitions recorded once each");
  end = now_ms() + 5000;
  while (s.n < before + 80 && now_ms() < end) usleep(2000);
  int unh = 0;
  for (int i = before; i < s.n && i < 256; i++) unh += s.kind[i] == DSYS_REG_UNHEALTHY;
  is_int(unh, 80, "concurrent sweeps: the watcher saw 80 UNHEALTHY");
  dsys_registry_sweep(a);
  dsys_registry_index(w, &idx);
  is_int(idx, 160, "a sweep with nothing to do writes nothing");
  dsys_registry_close(a);
  dsys_registry_close(b);
  dsys_registry_close(w);
  dsys_clock_free(clk);
}

/* Nobody sweeps: the lease (reap 1 s + 2 s margin) removes the instance. */
static void test_lease(const char *eps) {
  char url[400];
  snprintf(url, sizeof url, "etcd://%s/t/lease", eps);
  dsys_registry *x = open_reg(url, 500, 1000, -1);
  ok(x != NULL, "lease: open");
  if (!x) return;
  is_int(reg(x, "orphan", "lease"), 0, "lease: register");
  dsys_registry_close(x); /* the process is gone; nothing sweeps */
  x = open_reg(url, 500, 1000, -1);
  int64_t t0 = now_ms();
  int n = 1;
  while ((n = count(x, "lease")) != 0 && now_ms() - t0 < 10000) usleep(50000);
  is_int(n, 0, "lease: etcd removed the instance by itself after %lld ms (lease 3 s)",
         (long long)(now_ms() - t0));
  dsys_registry_close(x);
}

static void test_failures(tetcd *et) {
  char url[400];
  snprintf(url, sizeof url, "etcd://%s/t/fail", et->endpoints);
  /* a reap time longer than the test: the outage must not reap f-1 */
  dsys_registry *a = open_reg(url, 2000, 60000, 1000), *b = open_reg(url, 2000, 60000, -1);
  ok(a && b, "failures: two handles open");
  if (!a || !b) return;
  seen s = {0};
  dsys_registry_watch(b, on_change, &s, NULL);
  is_int(reg(a, "f-1", "fail"), 0, "failures: register");

  /* one member down: the handles' first endpoint */
  is_int(tetcd_kill_member(et, 1), 0, "failures: member 1 killed");
  int64_t t0 = now_ms();
  is_int(reg(a, "f-2", "fail"), 0, "one down: register still works");
  int64_t t1 = now_ms();
  is_int(dsys_registry_heartbeat(a, "f-1"), 0, "one down: heartbeat works");
  is_int(count(b, "fail"), 2, "one down: the other handle lists both");
  tap_diag("figure: first register after its member died took %lld ms", (long long)(t1 - t0));
  int n = s.n;
  is_int(dsys_registry_deregister(a, "f-2"), 0, "one down: deregister works");
  /* B's watch was on member 1: it reconnects to another one */
  ok(wait_more(&s, n, 3000), "one down: B's watch (reconnected) saw it");
  is_int(count(b, "fail"), 1, "one down: B lists f-1 (its last view before the quorum loss)");
  is_int(count(a, "fail"), 1, "one down: so does A");

  /* two members down: no quorum */
  is_int(tetcd_kill_member(et, 2), 0, "failures: member 2 killed");
  t0 = now_ms();
  int rc = reg(a, "f-3", "fail");
  t1 = now_ms();
  is_int(rc, DSYS_EUNAVAIL, "no quorum: register fails with DSYS_EUNAVAIL");
  ok(t1 - t0 < 5000, "no quorum: within %lld ms (bound: 3 s request, 1 s connect)",
     (long long)(t1 - t0));
  ok(strstr(dsys_registry_errmsg(a), "no healthy endpoint") != NULL, "no quorum: errmsg: %s",
     dsys_registry_errmsg(a));
  t0 = now_ms();
  dsys_instance *v = NULL;
  size_t nv = 0;
  rc = dsys_registry_lookup(b, "fail", 0, &v, &nv);
  t1 = now_ms();
  is_int(rc, 0, "no quorum: lookup answers from the last view");
  ok(nv == 1 && !strcmp(v[0].id, "f-1"), "no quorum: the view is the last one read: f-1 (n %zu)",
     nv);
  dsys_free(v);
  ok(t1 - t0 < 5000, "no quorum: lookup within %lld ms", (long long)(t1 - t0));
  dsys_instance *one = NULL;
  is_int(dsys_registry_get(b, "f-1", &one), 0, "no quorum: get f-1 from the view");
  ok(one && !strcmp(one->url, "http://127.0.0.1:9"), "no quorum: with its URL");
  dsys_free(one);
  is_int(dsys_registry_get(b, "f-2", &one), DSYS_ENOTFOUND,
         "no quorum: get of a deregistered one: DSYS_ENOTFOUND from the view");
  is_int(count(a, "fail"), 1, "no quorum: A answers from its view too");
  rc = dsys_registry_deregister(a, "f-1");
  is_int(rc, DSYS_EUNAVAIL, "no quorum: deregister fails with DSYS_EUNAVAIL");
  t0 = now_ms();
  rc = dsys_registry_heartbeat(a, "f-1");
  t1 = now_ms();
  /* A's requests have met "no leader" for longer than the election wait:
   * one pass over the members, not another wait (each request of a call
   * used to wait 2 s: 10 s calls) */
  ok(rc == DSYS_EUNAVAIL && t1 - t0 < 1000, "no quorum: heartbeat fails at once: in %lld ms (rc %d)",
     (long long)(t1 - t0), rc);

  /* back: same handles, no reopen */
  int n_out = s.n;
  is_int(tetcd_start_member(et, 1), 0, "failures: member 1 restarted");
  is_int(tetcd_start_member(et, 2), 0, "failures: member 2 restarted");
  t0 = now_ms();
  while ((rc = reg(a, "f-3", "fail")) != 0 && now_ms() - t0 < 15000) usleep(100000);
  is_int(rc, 0, "back: register works again after %lld ms", (long long)(now_ms() - t0));
  n = s.n;
  is_int(reg(a, "f-4", "fail"), 0, "back: another register");
  ok(wait_more(&s, n, 5000), "back: B's watch delivers again");
  /* B answered lookups from its view: its watchers are told to re-read
   * (a reader that started then may lack a change before its watch) */
  int resync = 0;
  for (int i = n_out; i < s.n && i < 256; i++) resync += s.kind[i] == DSYS_REG_RESYNC;
  ok(resync >= 1, "back: B's watch got a RESYNC (it answered from its view): %d", resync);
  is_int(count(b, "fail"), 3, "back: B lists f-1, f-3, f-4 (a fresh read: the same handle)");
  is_int(count(a, "fail"), 3, "back: so does A");
  dsys_registry_close(a);
  dsys_registry_close(b);
}

/* Nothing listens: the open fails within the bound and says why. */
static void test_down(void) {
  dsys_registry *r = NULL;
  char err[256] = "";
  int64_t t0 = now_ms();
  int rc = dsys_registry_open(&r, "etcd://127.0.0.1:1,127.0.0.1:2/x", NULL, NULL, err, sizeof err);
  is_int(rc, DSYS_EUNAVAIL, "down: open fails with DSYS_EUNAVAIL in %lld ms", (long long)(now_ms() - t0));
  ok(strstr(err, "no member answered") && strstr(err, "127.0.0.1:"), "down: errbuf: %s", err);
}

/* POST body to path on the first member of a TLS cluster with curl (not
 * through the library), with header hdr (may be ""); the answer in out. */
static int curl_etcd(tetcd *et, const char *hdr, const char *body, const char *path, char *out,
                     size_t n) {
  char cmd[1024], ep[64];
  snprintf(ep, sizeof ep, "%.*s", (int)strcspn(et->endpoints, ","), et->endpoints);
  snprintf(cmd, sizeof cmd,
           "curl -s -m 5 --cacert %s/tls/ca.pem --cert %s/tls/client.pem --key %s/tls/client.key "
           "%s -d '%s' https://%s%s",
           et->dir, et->dir, et->dir, hdr, body, ep, path);
  FILE *f = popen(cmd, "r");
  if (!f) return -1;
  size_t k = fread(out, 1, n - 1, f);
  out[k] = 0;
  pclose(f);
  return 0;
}

/* Whether etcd accepts token tok for a range: 1 yes, 0 refused, -1
 * cannot tell. */
static int token_accepted(tetcd *et, const char *tok) {
  char hdr[300], out[512];
  snprintf(hdr, sizeof hdr, "-H 'Authorization: %s'", tok);
  if (curl_etcd(et, hdr, "{\"key\":\"eA==\"}", "/v3/kv/range", out, sizeof out)) return -1;
  if (strstr(out, "\"header\"")) return 1;
  if (strstr(out, "token")) return 0; /* "invalid auth token" */
  tap_diag("token check: %s", out);
  return -1;
}

/* A token of root's, from the cluster itself (not through the library). */
static int root_token(tetcd *et, char *tok, size_t n) {
  char path[128], out[512], pw[128] = "", body[256];
  snprintf(path, sizeof path, "%s/root-password", et->dir);
  FILE *f = fopen(path, "r");
  if (!f || !fgets(pw, sizeof pw, f)) {
    if (f) fclose(f);
    return -1;
  }
  fclose(f);
  pw[strcspn(pw, "\n")] = 0;
  snprintf(body, sizeof body, "{\"name\":\"root\",\"password\":\"%s\"}", pw);
  if (curl_etcd(et, "", body, "/v3/auth/authenticate", out, sizeof out)) return -1;
  char *t = strstr(out, "\"token\":\"");
  if (!t) return -1;
  t += 9;
  snprintf(tok, n, "%.*s", (int)strcspn(t, "\""), t);
  return 0;
}

static int open_err(const char *url, char *err, size_t n) {
  dsys_registry *r = NULL;
  err[0] = 0;
  int rc = dsys_registry_open(&r, url, NULL, NULL, err, n);
  dsys_registry_close(r);
  return rc;
}

/* A cluster with TLS (client certificates required) and auth (token TTL
 * 2 s). */
static void test_secure(void) {
  tetcd et;
  if (!ok(tetcd_start_with(&et, 1, "--tls --auth --auth-token-ttl 2") == 0,
          "secure: a TLS + auth etcd started")) {
    tetcd_stop(&et);
    return;
  }
  char url[1024], bad[1200], err[256];
  tetcd_url(&et, "t/secure", url, sizeof url);
  ok(!strncmp(url, "etcds://", 8) && strstr(url, "user=root"), "secure: URL %s", url);
  dsys_registry *r = open_reg(url, 20000, 60000, -1), *w = open_reg(url, 20000, 60000, -1);
  ok(r && w, "secure: open over TLS with a client certificate, as root");
  if (!r || !w) {
    dsys_registry_close(r);
    dsys_registry_close(w);
    tetcd_stop(&et);
    return;
  }
  seen s = {0};
  dsys_registry_watch(w, on_change, &s, NULL);
  int n0 = s.n;
  is_int(reg(r, "s-1", "sec"), 0, "secure: register");
  ok(wait_more(&s, n0, 3000), "secure: the other handle's watch (its own token) saw it");
  is_int(count(w, "sec"), 1, "secure: the other handle lists it");

  /* tokens expire after 2 s unused: the handle's own (last used just
   * now) as well as this one, taken now to prove it */
  char tok[256];
  ok(root_token(&et, tok, sizeof tok) == 0, "secure: a token taken to watch expiry");
  is_int(token_accepted(&et, tok), 1, "secure: accepted at first");
  /* every check uses the token, which keeps it alive: checks far apart
   * (etcd's simple tokens are swept about every second) */
  int64_t t0 = now_ms();
  int acc = 1;
  for (int i = 0; i < 3 && acc == 1; i++) {
    usleep((3000 + 1000 * i) * 1000);
    acc = token_accepted(&et, tok);
  }
  is_int(acc, 0, "secure: etcd refuses it after %lld ms unused (token TTL 2 s)",
         (long long)(now_ms() - t0));
  is_int(count(r, "sec"), 1, "secure: after the token expired, a lookup authenticates again");
  t0 = now_ms();
  int hb = 0;
  for (int i = 0; i < 10; i++) hb += dsys_registry_heartbeat(r, "s-1") == 0;
  is_int(hb, 10, "secure: heartbeats");
  tap_diag("figure: heartbeat over TLS + auth %.1f ms on average (1 member)",
           (double)(now_ms() - t0) / 10);
  n0 = s.n;
  is_int(reg(r, "s-2", "sec"), 0, "secure: register");
  ok(wait_more(&s, n0, 5000), "secure: the watch still delivers");
  dsys_registry_close(r);
  dsys_registry_close(w);

  /* wrong CA: the system store (no ca=), and a certificate that is no CA */
  snprintf(bad, sizeof bad, "etcds://%s/t/x?cert=%s/tls/client.pem&key=%s/tls/client.key",
           et.endpoints, et.dir, et.dir);
  int64_t t1 = now_ms();
  is_int(open_err(bad, err, sizeof err), DSYS_EAUTH, "wrong CA (system store): DSYS_EAUTH");
  ok(strstr(err, "certificate") && strstr(err, "TLS"), "wrong CA: says so: %s", err);
  ok(now_ms() - t1 < 4000, "wrong CA: at once (%lld ms)", (long long)(now_ms() - t1));
  snprintf(bad, sizeof bad, "etcds://%s/t/x?ca=%s/tls/client.pem&cert=%s/tls/client.pem&key=%s/tls/client.key",
           et.endpoints, et.dir, et.dir, et.dir);
  is_int(open_err(bad, err, sizeof err), DSYS_EAUTH, "wrong CA (not a CA): DSYS_EAUTH: %s", err);
  /* no client certificate: the member refuses the handshake */
  snprintf(bad, sizeof bad, "etcds://%s/t/x?ca=%s/tls/ca.pem", et.endpoints, et.dir);
  int rc = open_err(bad, err, sizeof err);
  ok((rc == DSYS_EAUTH || rc == DSYS_EUNAVAIL) && strstr(err, "client certificate"),
     "no client certificate: refused, says what it may be (%s): %s", dsys_strerror(rc), err);
  /* plain http to a TLS member */
  snprintf(bad, sizeof bad, "etcd://%s/t/x", et.endpoints);
  ok(open_err(bad, err, sizeof err) != 0, "etcd:// to a TLS member fails: %s", err);
  /* wrong password */
  char pwf[128];
  snprintf(pwf, sizeof pwf, "%s/wrong-password", et.dir);
  FILE *f = fopen(pwf, "w");
  if (f) {
    fchmod(fileno(f), 0600);
    fputs("not-the-password\n", f);
    fclose(f);
  }
  snprintf(bad, sizeof bad,
           "etcds://%s/t/x?ca=%s/tls/ca.pem&cert=%s/tls/client.pem&key=%s/tls/client.key"
           "&user=root&password-file=%s",
           et.endpoints, et.dir, et.dir, et.dir, pwf);
  is_int(open_err(bad, err, sizeof err), DSYS_EAUTH, "wrong password: DSYS_EAUTH");
  ok(strstr(err, "authentication failed") && strstr(err, "root"), "wrong password: says so: %s", err);
  /* no user at all on an auth cluster: etcd refuses the requests */
  snprintf(bad, sizeof bad, "etcds://%s/t/x?ca=%s/tls/ca.pem&cert=%s/tls/client.pem&key=%s/tls/client.key",
           et.endpoints, et.dir, et.dir, et.dir);
  rc = open_err(bad, err, sizeof err);
  ok(rc == DSYS_EAUTH && strstr(err, "requires a user"), "no user: DSYS_EAUTH (%s): %s",
     dsys_strerror(rc), err);
  /* the password from the environment */
  char pw[128] = "";
  snprintf(pwf, sizeof pwf, "%s/root-password", et.dir);
  f = fopen(pwf, "r");
  if (f) {
    if (fgets(pw, sizeof pw, f)) pw[strcspn(pw, "\n")] = 0;
    fclose(f);
  }
  setenv("DSYS_ETCD_PASSWORD", pw, 1);
  snprintf(bad, sizeof bad,
           "etcds://%s/t/x?ca=%s/tls/ca.pem&cert=%s/tls/client.pem&key=%s/tls/client.key&user=root",
           et.endpoints, et.dir, et.dir, et.dir);
  is_int(open_err(bad, err, sizeof err), 0, "password from DSYS_ETCD_PASSWORD: opens (%s)", err);
  unsetenv("DSYS_ETCD_PASSWORD");
  is_int(open_err(bad, err, sizeof err), DSYS_EINVAL, "user= without a password: DSYS_EINVAL");
  ok(strstr(err, "password-file") != NULL, "no password: says where it goes: %s", err);
  tetcd_stop(&et);
}

/* URLs refused before any request. */
static void test_bad_urls(void) {
  static const struct { const char *url, *why, *says; } cases[] = {
      {"etcds://127.0.0.1:1/p?user=root&password=hunter2", "a password in the URL", "never"},
      {"etcd://127.0.0.1:1/p?ca=/x.pem", "ca= on etcd://", "etcds://"},
      {"etcds://127.0.0.1:1/p?cert=/x.pem", "cert= without key=", "together"},
      {"etcds://127.0.0.1:1/p?frobnicate=1", "an unknown parameter", "frobnicate"},
      {"etcds://127.0.0.1:1/p?ca=", "an empty value", "needs a value"},
      {"etcds://127.0.0.1:1/p?ca", "a parameter without =", "needs a value"},
      {"etcds://127.0.0.1:1/p?ca=/a&ca=/b", "a parameter twice", "twice"},
      {"etcds://127.0.0.1:1/p?user=root&password-file=/nonexistent/pw", "a missing password file",
       "/nonexistent/pw"},
      {"etcds://127.0.0.1:1/p?password-file=/x", "password-file= without user=", "user="},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char err[256];
    int rc = open_err(cases[i].url, err, sizeof err);
    ok((rc == DSYS_EINVAL || rc == DSYS_EIO) && strstr(err, cases[i].says) &&
           !strstr(err, "hunter2"),
       "bad URL, %s: %s: %s", cases[i].why, dsys_strerror(rc), err);
  }
}

int main(void) {
  test_bad_urls();
  test_secure();
  test_down();
  tetcd et;
  if (tetcd_start(&et, 3)) tap_bail("cannot start etcd");
  test_push(et.endpoints);
  test_lease(et.endpoints);
  test_concurrent(et.endpoints);
  test_failures(&et);
  tetcd_stop(&et);
  return tap_done();
}
