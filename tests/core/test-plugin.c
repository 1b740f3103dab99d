/*
 * Plugin families (lib/core/plugin.h): registration checks, lookup by
 * scheme, the built-ins of every family, and URL splitting.
 */
#include <string.h>
#include <distsys/distsys.h>
#include "core/internal.h"
#include "core/plugin.h"
#include "transport/transport.h"
#include "tap.h"

typedef struct toy_ops {
  int version;
  const char *name;
  void (*op)(void);
} toy_ops;

static void noop(void) {}
static int usable(const void *p) { return ((const toy_ops *)p)->version == 1 && ((const toy_ops *)p)->op; }
static const char *key(const void *p) { return ((const toy_ops *)p)->name; }

static void test_family(void) {
  /* a family no built-in names: only what the test registers */
  static dsysi_family fam = DSYSI_FAMILY("test-toy", usable, key);
  static toy_ops ok1 = {1, "alpha", noop}, ok2 = {1, "beta", noop}, dup = {1, "alpha", noop},
                 badv = {2, "gamma", noop}, noop_missing = {1, "delta", NULL}, noname = {1, "", noop};
  ok(dsysi_family_find(&fam, "alpha", 5) == NULL, "empty family finds nothing");
  is_int(dsysi_family_register(&fam, &ok1), 0, "register alpha");
  is_int(dsysi_family_register(&fam, &ok2), 0, "register beta");
  is_int(dsysi_family_register(&fam, &dup), DSYS_EEXIST, "a second alpha: DSYS_EEXIST");
  is_int(dsysi_family_register(&fam, &badv), DSYS_EINVAL, "unknown version: DSYS_EINVAL");
  is_int(dsysi_family_register(&fam, &noop_missing), DSYS_EINVAL, "mandatory op missing: DSYS_EINVAL");
  is_int(dsysi_family_register(&fam, &noname), DSYS_EINVAL, "empty name: DSYS_EINVAL");
  is_int(dsysi_family_register(&fam, NULL), DSYS_EINVAL, "NULL ops: DSYS_EINVAL");
  ok(dsysi_family_find(&fam, "alpha", 5) == &ok1, "find alpha");
  ok(dsysi_family_find(&fam, "alphabet", 5) == &ok1, "find compares exactly len bytes");
  ok(dsysi_family_find(&fam, "alp", 3) == NULL, "a prefix of a name is not the name");
  ok(dsysi_family_at(&fam, 1) == &ok2 && dsysi_family_at(&fam, 2) == NULL, "at: registration order");
  /* fill up: 30 more fit, the 33rd does not */
  static toy_ops more[DSYSI_FAMILY_MAX];
  static char names[DSYSI_FAMILY_MAX][8];
  int e = 0, i;
  for (i = 0; i < DSYSI_FAMILY_MAX && !e; i++) {
    snprintf(names[i], sizeof names[i], "m%d", i);
    more[i] = (toy_ops){1, names[i], noop};
    e = dsysi_family_register(&fam, &more[i]);
  }
  is_int(e, DSYS_ENOMEM, "a full family: DSYS_ENOMEM");
  is_int(i, DSYSI_FAMILY_MAX - 1, "... after 32 backends in all");
}

static void test_builtins(void) {
  static const char *const schemes[] = {"http", "https", "unix", "inproc"};
  for (size_t i = 0; i < 4; i++) {
    char url[64];
    snprintf(url, sizeof url, "%s://x", schemes[i]);
    ok(dsysi_listener_find(url) != NULL, "built-in listener %s", schemes[i]);
    ok(dsysi_dialer_find(url) != NULL, "built-in dialer %s", schemes[i]);
  }
  ok(dsysi_dialer_find("http:x") == NULL, "a transport URL needs ://");
  ok(dsysi_dialer_find("ftp://x") == NULL, "no ftp dialer");
  ok(!strcmp(dsysi_dialer_find("https://x")->engine, dsysi_dialer_find("unix:///x")->engine),
     "http, https and unix dialers share one engine");
  dsys_store *s = NULL;
  is_int(dsys_store_open(&s, "memory:", NULL), 0, "built-in store memory");
  dsys_store_close(s);
  is_int(dsys_store_register_backend(dsys_store_ops_memory()), DSYS_EEXIST,
         "registering a second 'memory' store: DSYS_EEXIST");
  dsys_store_ops bad = *dsys_store_ops_memory();
  bad.name = "bad";
  bad.list = NULL;
  is_int(dsys_store_register_backend(&bad), DSYS_EINVAL, "a store backend without list: DSYS_EINVAL");
  is_int(dsys_store_open(&s, "bad:", NULL), DSYS_ESCHEME, "... and it is not there");
  is_int(dsys_queue_register_backend(dsys_queue_ops_sqlite()), DSYS_EEXIST, "a second sqlite queue: DSYS_EEXIST");
  dsys_registry *r = NULL;
  is_int(dsys_registry_open(&r, "memory", NULL, NULL, NULL, 0), 0, "built-in registry memory");
  dsys_registry_close(r);
}

static void test_url(void) {
  const char *sc, *loc;
  size_t n;
  is_int(dsysi_plugin_url("sqlite:///var/x.db", &sc, &n, &loc), 0, "sqlite URL");
  ok(n == 6 && !strncmp(sc, "sqlite", 6) && !strcmp(loc, "/var/x.db"), "scheme sqlite, location /var/x.db");
  is_int(dsysi_plugin_url("memory:", &sc, &n, &loc), 0, "memory:");
  ok(n == 6 && !strcmp(loc, ""), "empty location");
  is_int(dsysi_plugin_url("toy:abc", &sc, &n, &loc), 0, "NAME:location");
  ok(n == 3 && !strcmp(loc, "abc"), "location abc");
  is_int(dsysi_plugin_url("nocolon", &sc, &n, &loc), DSYS_EURL, "no scheme: DSYS_EURL");
  is_int(dsysi_plugin_url(":x", &sc, &n, &loc), DSYS_EURL, "empty scheme: DSYS_EURL");
  is_int(dsysi_plugin_url("a b://x", &sc, &n, &loc), DSYS_EURL, "space in scheme: DSYS_EURL");
  is_int(dsysi_plugin_url(NULL, &sc, &n, &loc), DSYS_EINVAL, "NULL: DSYS_EINVAL");
}

int main(void) {
  test_family();
  test_builtins();
  test_url();
  return tap_done();
}
