/*
 * Store conformance suite: the same checks run against every backend
 * (memory:, sqlite: and the example backend toy: of examples/toy-store.c,
 * which registers itself through the public API, and postgresql: on a
 * real throwaway server), plus checks across processes (SQLite, PostgreSQL)
 * and PostgreSQL outages.
 */
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "pgserver.h"
#include "tap.h"
#include "../../examples/toy-store.h" /* examples/ is not on the include path */

static char tmpdir[256];

static void rmtree(void) {
  if (!tmpdir[0]) return;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) tap_diag("cleanup failed");
}

typedef struct hookrec {
  pthread_mutex_t mu;
  int n;
  int last_change;
  char last_key[64];
} hookrec;

static void hook(void *ud, int change, const dsys_item *it) {
  hookrec *h = ud;
  pthread_mutex_lock(&h->mu);
  h->n++;
  h->last_change = change;
  snprintf(h->last_key, sizeof h->last_key, "%s", it->key);
  pthread_mutex_unlock(&h->mu);
}

typedef struct incr_arg {
  dsys_store *s;
  int n;
  int errors;
} incr_arg;

static void *incr_thread(void *p) {
  incr_arg *a = p;
  for (int i = 0; i < a->n; i++)
    if (dsys_store_incr(a->s, "counter", 1, NULL)) a->errors++;
  return NULL;
}

/* dsys_store_put_many: all or none, in order, each item returned and
 * hooked; bad entries named by index. The toy backend has no put_many. */
static void put_many_checks(const char *url, dsys_store *s, dsys_clock *clk,
                            hookrec *h) {
  dsys_store_entry one = {"many/x", "1", NULL, 0};
  if (!strcmp(url, "toy:")) {
    is_int(dsys_store_put_many(s, &one, 1, NULL, NULL), DSYS_ENOTSUP,
           "[toy:] put_many on a backend without it: DSYS_ENOTSUP");
    return;
  }
  is_int(dsys_store_put(s, "many/old", "0", NULL, NULL), 0, "[%s] put_many: an item to replace", url);
  pthread_mutex_lock(&h->mu);
  int hooks0 = h->n;
  pthread_mutex_unlock(&h->mu);
  int64_t now = dsys_clock_wall_ms(clk);
  dsys_store_entry ents[] = {
      {"many/a", "{\"n\":1}", NULL, 0},
      {"many/b", "[2]", "{\"tag\":\"b\"}", 5000},
      {"many/old", "3", NULL, 0},
      {"many/a", "4", NULL, 0}, /* again: applied in order */
  };
  dsys_item *items[4] = {0};
  size_t failed = 99;
  is_int(dsys_store_put_many(s, ents, 4, items, &failed), 0, "[%s] put_many of 4", url);
  is_int(failed, 99, "[%s] put_many: failed untouched on success", url);
  ok(items[0] && items[0]->version == 1 && !strcmp(items[0]->value, "{\"n\":1}"),
     "[%s] put_many: new key at version 1", url);
  ok(items[1] && !strcmp(items[1]->metadata, "{\"tag\":\"b\"}") &&
         items[1]->expires_at == now + 5000,
     "[%s] put_many: metadata and TTL of an entry", url);
  ok(items[2] && items[2]->version == 2 && !strcmp(items[2]->metadata, "{}"),
     "[%s] put_many: a replaced key at version 2, metadata {}", url);
  ok(items[3] && items[3]->version == 2 && items[0] && items[3]->id == items[0]->id,
     "[%s] put_many: a key given twice: version 2, same id", url);
  for (int i = 0; i < 4; i++) dsys_item_free(items[i]);
  pthread_mutex_lock(&h->mu);
  int hooks = h->n - hooks0, last = h->last_change;
  char last_key[64];
  snprintf(last_key, sizeof last_key, "%s", h->last_key);
  pthread_mutex_unlock(&h->mu);
  ok(hooks == 4 && last == DSYS_STORE_PUT && !strcmp(last_key, "many/a"),
     "[%s] put_many: the hook saw 4 puts, in order (%d, last %s)", url, hooks, last_key);
  dsys_item *it = NULL;
  is_int(dsys_store_get(s, "many/a", &it), 0, "[%s] put_many: read back", url);
  is_str(it ? it->value : NULL, "4", "[%s] put_many: ... the later value", url);
  dsys_item_free(it);
  is_int(dsys_store_put_many(s, &one, 1, NULL, NULL), 0, "[%s] put_many of 1, items not wanted", url);

  /* bad input: nothing of the call is stored */
  dsys_store_entry bad[] = {
      {"many/c", "1", NULL, 0},
      {"many/d", "{bad", NULL, 0},
  };
  items[0] = (dsys_item *)1; /* must come back NULL */
  failed = 99;
  is_int(dsys_store_put_many(s, bad, 2, items, &failed), DSYS_EBADJSON,
         "[%s] put_many: bad JSON in entry 1", url);
  ok(failed == 1 && items[0] == NULL && items[1] == NULL,
     "[%s] put_many: ... named by index (%zu), no items", url, failed);
  is_int(dsys_store_get(s, "many/c", &it), DSYS_ENOTFOUND, "[%s] put_many: ... entry 0 not stored", url);
  bad[1] = (dsys_store_entry){"many/d", "1", "[1]", 0};
  is_int(dsys_store_put_many(s, bad, 2, NULL, &failed), DSYS_ETYPE, "[%s] put_many: metadata not an object", url);
  bad[1] = (dsys_store_entry){"many/d", "1", NULL, -1};
  is_int(dsys_store_put_many(s, bad, 2, NULL, &failed), DSYS_EINVAL, "[%s] put_many: negative TTL", url);
  bad[1] = (dsys_store_entry){"", "1", NULL, 0};
  is_int(dsys_store_put_many(s, bad, 2, NULL, &failed), DSYS_EINVAL, "[%s] put_many: empty key", url);
  bad[1] = (dsys_store_entry){"many/d", NULL, NULL, 0};
  failed = 99;
  is_int(dsys_store_put_many(s, bad, 2, NULL, &failed), DSYS_EINVAL, "[%s] put_many: NULL value", url);
  is_int(failed, 1, "[%s] put_many: ... entry 1", url);
  is_int(dsys_store_put_many(s, bad, 0, NULL, NULL), DSYS_EINVAL, "[%s] put_many: n = 0", url);
  is_int(dsys_store_put_many(s, NULL, 1, NULL, NULL), DSYS_EINVAL, "[%s] put_many: NULL entries", url);
  is_int(dsys_store_put_many(s, bad, DSYS_STORE_MAX_MANY + 1, NULL, NULL), DSYS_EINVAL,
         "[%s] put_many: n over DSYS_STORE_MAX_MANY", url);
  is_int(dsys_store_put_many(NULL, bad, 1, NULL, NULL), DSYS_EINVAL, "[%s] put_many: NULL store", url);
  is_int(dsys_store_get(s, "many/c", &it), DSYS_ENOTFOUND, "[%s] put_many: nothing of the bad calls stored", url);

  /* the most entries in one call */
  dsys_store_entry *big = calloc(DSYS_STORE_MAX_MANY, sizeof *big);
  char (*keys)[16] = calloc(DSYS_STORE_MAX_MANY, 16);
  for (int i = 0; i < DSYS_STORE_MAX_MANY; i++) {
    snprintf(keys[i], 16, "many/k%04d", i);
    big[i] = (dsys_store_entry){keys[i], "true", NULL, 0};
  }
  is_int(dsys_store_put_many(s, big, DSYS_STORE_MAX_MANY, NULL, NULL), 0,
         "[%s] put_many of DSYS_STORE_MAX_MANY entries", url);
  dsys_item **list = NULL;
  size_t nl = 0;
  dsys_store_list(s, "many/k", NULL, 1000, &list, &nl, NULL);
  is_int(nl, DSYS_STORE_MAX_MANY, "[%s] put_many: ... all listed", url);
  dsys_item_list_free(list, nl);
  free(big);
  free(keys);
}

static void conformance(const char *url) {
  tap_diag("conformance on %s", url);
  dsys_clock *clk = NULL;
  dsys_clock_fake_new(&clk, 1700000000000LL);
  hookrec h = {.mu = PTHREAD_MUTEX_INITIALIZER};
  dsys_store_options o = {.size = sizeof o, .clock = clk, .hook = hook,
                          .hook_ud = &h, .max_value = 4096};
  dsys_store *s = NULL;
  int e = dsys_store_open(&s, url, &o);
  is_int(e, 0, "[%s] open", url);
  if (e) tap_bail("cannot open %s: %s", url, dsys_strerror(e));

  /* put / get */
  dsys_item *it = NULL;
  is_int(dsys_store_put(s, "a", "{\"x\":1}", NULL, &it), 0, "put a");
  ok(it && it->version == 1 && it->id > 0, "put returns version 1 and an id");
  ok(it && !strcmp(it->metadata, "{}"), "default metadata {}");
  ok(it && it->created_at == 1700000000000LL && it->updated_at == it->created_at,
     "timestamps from the clock");
  int64_t id_a = it ? it->id : 0;
  dsys_item_free(it);
  is_int(h.n, 1, "hook ran once");
  is_int(h.last_change, DSYS_STORE_PUT, "hook saw PUT");
  dsys_clock_advance(clk, 5000 * 1000);
  dsys_store_write w = {.size = sizeof w, .metadata = "{\"owner\":\"bob\"}"};
  is_int(dsys_store_put(s, "a", "[1,2,3]", &w, &it), 0, "put replaces");
  ok(it && it->version == 2 && it->id == id_a, "version 2, same id");
  ok(it && it->updated_at == it->created_at + 5000, "updated_at advanced");
  dsys_item_free(it);
  is_int(dsys_store_get(s, "a", &it), 0, "get a");
  is_str(it ? it->value : NULL, "[1,2,3]", "value round trip");
  is_str(it ? it->metadata : NULL, "{\"owner\":\"bob\"}", "metadata round trip");
  dsys_item_free(it);
  is_int(dsys_store_get_by_id(s, id_a, &it), 0, "get by id");
  is_str(it ? it->key : NULL, "a", "get by id finds key a");
  dsys_item_free(it);
  it = (dsys_item *)1;
  is_int(dsys_store_get(s, "nope", &it), DSYS_ENOTFOUND, "get missing");
  ok(it == NULL, "out cleared on error");
  is_int(dsys_store_get_by_id(s, 999999, &it), DSYS_ENOTFOUND, "get missing id");

  /* create */
  is_int(dsys_store_create(s, "a", "1", NULL, NULL), DSYS_EEXIST, "create existing");
  is_int(dsys_store_create(s, "b", "\"hello\"", NULL, &it), 0, "create new");
  ok(it && it->version == 1 && it->id != id_a, "create: version 1, new id");
  dsys_item_free(it);
  is_int(h.last_change, DSYS_STORE_CREATE, "hook saw CREATE");

  /* update with CAS */
  dsys_store_write cas = {.size = sizeof cas, .expected_version = 1};
  is_int(dsys_store_update(s, "b", "\"v2\"", &cas, &it), 0, "update with right version");
  ok(it && it->version == 2, "update bumps version");
  dsys_item_free(it);
  is_int(dsys_store_update(s, "b", "\"v3\"", &cas, NULL), DSYS_ECONFLICT, "stale version conflicts");
  is_int(dsys_store_update(s, "zz", "1", NULL, NULL), DSYS_ENOTFOUND, "update missing");
  is_int(dsys_store_update(s, "b", "\"v3\"", NULL, NULL), 0, "update without CAS");
  dsys_store_get(s, "b", &it);
  is_str(it ? it->value : NULL, "\"v3\"", "updated value");
  ok(it && it->version == 3, "version 3");
  dsys_item_free(it);
  is_int(dsys_store_update(s, "a", "{}", NULL, NULL), 0, "update keeps metadata");
  dsys_store_get(s, "a", &it);
  is_str(it ? it->metadata : NULL, "{\"owner\":\"bob\"}", "metadata kept on update");
  dsys_item_free(it);

  /* delete with CAS */
  is_int(dsys_store_delete(s, "b", 1), DSYS_ECONFLICT, "delete wrong version");
  is_int(dsys_store_delete(s, "b", 3), 0, "delete right version");
  is_int(h.last_change, DSYS_STORE_DELETE, "hook saw DELETE");
  is_str(h.last_key, "b", "hook got deleted key");
  is_int(dsys_store_delete(s, "b", 0), DSYS_ENOTFOUND, "delete again");
  is_int(dsys_store_get(s, "b", &it), DSYS_ENOTFOUND, "deleted item gone");
  is_int(dsys_store_create(s, "b", "1", NULL, NULL), 0, "re-create after delete");

  /* increment */
  int64_t r = 0;
  is_int(dsys_store_incr(s, "n", 5, &r), 0, "incr creates");
  is_int(r, 5, "value 5");
  is_int(dsys_store_incr(s, "n", -7, &r), 0, "incr negative");
  is_int(r, -2, "value -2");
  is_int(h.last_change, DSYS_STORE_INCR, "hook saw INCR");
  is_int(dsys_store_incr(s, "a", 1, &r), DSYS_ETYPE, "incr of non-number");
  dsys_store_put(s, "f", "1.5", NULL, NULL);
  is_int(dsys_store_incr(s, "f", 1, &r), DSYS_ETYPE, "incr of fractional number");
  dsys_store_put(s, "big", "9223372036854775807", NULL, NULL);
  is_int(dsys_store_incr(s, "big", 1, &r), DSYS_ERANGE, "incr overflow");
  dsys_store_get(s, "big", &it);
  is_str(it ? it->value : NULL, "9223372036854775807", "value unchanged after overflow");
  dsys_item_free(it);

  /* concurrent increments: atomic */
  incr_arg ia[2] = {{s, 300, 0}, {s, 300, 0}};
  pthread_t th[2];
  for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, incr_thread, &ia[i]);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  dsys_store_get(s, "counter", &it);
  is_str(it ? it->value : NULL, "600", "600 concurrent increments add up");
  ok(it && it->version == 600, "counter version 600");
  is_int(ia[0].errors + ia[1].errors, 0, "no increment failed");
  dsys_item_free(it);

  /* list with prefix, limit and cursor */
  char key[32];
  for (int i = 0; i < 25; i++) {
    snprintf(key, sizeof key, "user/%03d", i);
    dsys_store_put(s, key, "true", NULL, NULL);
  }
  dsys_store_put(s, "user0", "0", NULL, NULL); /* after the prefix range */
  dsys_store_put(s, "usep", "0", NULL, NULL);  /* before it */
  dsys_item **items = NULL;
  size_t n = 0, total = 0;
  char *cur = NULL;
  int pages = 0, inorder = 1;
  char last[32] = "";
  do {
    char *next = NULL;
    e = dsys_store_list(s, "user/", cur, 10, &items, &n, &next);
    if (e) break;
    for (size_t i = 0; i < n; i++) {
      if (strcmp(items[i]->key, last) <= 0 || strncmp(items[i]->key, "user/", 5))
        inorder = 0;
      snprintf(last, sizeof last, "%s", items[i]->key);
    }
    total += n;
    pages++;
    if (pages == 1) {
      /* insert before and delete ahead of the cursor: pages stay stable */
      dsys_store_put(s, "user/000a", "1", NULL, NULL);
      dsys_store_delete(s, "user/015", 0);
    }
    dsys_item_list_free(items, n);
    dsys_free(cur);
    cur = next;
  } while (cur && pages < 10);
  dsys_free(cur);
  is_int(e, 0, "list ok");
  is_int(total, 24, "24 items listed (one deleted ahead, one added behind)");
  is_int(pages, 3, "3 pages");
  ok(inorder, "keys strictly increasing, all with prefix");
  is_int(dsys_store_list(s, "", "garbage", 10, &items, &n, NULL), DSYS_EINVAL, "bad cursor");
  is_int(dsys_store_list(s, "", NULL, 0, &items, &n, NULL), 0, "list all");
  ok(n > 25, "list all returns everything (%zu)", n);
  dsys_item_list_free(items, n);

  /* TTL */
  dsys_store_write tw = {.size = sizeof tw, .ttl_ms = 1000};
  is_int(dsys_store_put(s, "tmp", "1", &tw, &it), 0, "put with ttl");
  ok(it && it->expires_at == dsys_clock_wall_ms(clk) + 1000, "expires_at set");
  dsys_item_free(it);
  dsys_clock_advance(clk, 999 * 1000);
  is_int(dsys_store_get(s, "tmp", &it), 0, "visible before expiry");
  dsys_item_free(it);
  dsys_clock_advance(clk, 1000);
  is_int(dsys_store_get(s, "tmp", &it), DSYS_ENOTFOUND, "invisible at expiry");
  dsys_store_list(s, "tmp", NULL, 10, &items, &n, NULL);
  is_int(n, 0, "expired item not listed");
  dsys_item_list_free(items, n);
  is_int(dsys_store_update(s, "tmp", "2", NULL, NULL), DSYS_ENOTFOUND, "expired item cannot be updated");
  is_int(dsys_store_create(s, "tmp", "2", NULL, &it), 0, "create over expired item");
  ok(it && it->version == 1, "fresh item version 1");
  dsys_item_free(it);
  dsys_store_put(s, "tmp2", "1", &tw, NULL);
  dsys_clock_advance(clk, 2000 * 1000);
  size_t removed = 0;
  is_int(dsys_store_purge_expired(s, &removed), 0, "purge");
  is_int(removed, 1, "one expired item purged");

  /* bad input */
  is_int(dsys_store_put(s, "x", "{bad", NULL, NULL), DSYS_EBADJSON, "invalid JSON");
  is_int(dsys_store_put(s, "x", "{'a':1}", NULL, NULL), DSYS_EBADJSON, "single quotes");
  is_int(dsys_store_put(s, "x", "1 2", NULL, NULL), DSYS_EBADJSON, "trailing garbage");
  is_int(dsys_store_put(s, "x", "", NULL, NULL), DSYS_EBADJSON, "empty value");
  is_int(dsys_store_put(s, "x", NULL, NULL, NULL), DSYS_EINVAL, "NULL value");
  is_int(dsys_store_put(s, "", "1", NULL, NULL), DSYS_EINVAL, "empty key");
  is_int(dsys_store_put(s, NULL, "1", NULL, NULL), DSYS_EINVAL, "NULL key");
  dsys_store_write bm = {.size = sizeof bm, .metadata = "[1]"};
  is_int(dsys_store_put(s, "x", "1", &bm, NULL), DSYS_ETYPE, "metadata must be an object");
  char *huge = malloc(5000);
  memset(huge, 'a', 5000);
  huge[0] = '"';
  huge[4998] = '"';
  huge[4999] = 0;
  is_int(dsys_store_put(s, "x", huge, NULL, NULL), DSYS_ETOOBIG, "value over max_value");
  huge[3000] = '"';
  huge[3001] = 0;
  is_int(dsys_store_put(s, "x", huge, NULL, NULL), 0, "value under max_value");
  free(huge);
  char longkey[DSYS_STORE_MAX_KEY + 2];
  memset(longkey, 'k', sizeof longkey - 1);
  longkey[sizeof longkey - 1] = 0;
  is_int(dsys_store_put(s, longkey, "1", NULL, NULL), DSYS_EINVAL, "key too long");
  const char *odd[] = {"it's \"quoted\"", "'; DROP TABLE dsys_store_items; --",
                       "\xe2\x98\x83 snow/\xf0\x9f\x98\x80", "\x01\x02\x7f\xff\xfe",
                       "back\\slash"};
  for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
    is_int(dsys_store_put(s, odd[i], "\"\\u00e9\\n\xc3\xa9\"", NULL, NULL), 0, "odd key %zu put", i);
    e = dsys_store_get(s, odd[i], &it);
    ok(!e && !strcmp(it->key, odd[i]) && !strcmp(it->value, "\"\\u00e9\\n\xc3\xa9\""),
       "odd key %zu round trips", i);
    dsys_item_free(it);
  }
  is_int(dsys_store_get(s, "a", &it), 0, "store intact after odd keys");
  dsys_item_free(it);

  put_many_checks(url, s, clk, &h);
  dsys_store_close(s);
  dsys_clock_free(clk);
}

/* Several processes race to create the same keys: exactly one wins each. */
static void cross_process_create(const char *url) {
  int fds[2];
  if (pipe(fds)) tap_bail("pipe");
  pid_t kids[4];
  for (int k = 0; k < 4; k++) {
    kids[k] = fork();
    if (kids[k] == 0) {
      close(fds[0]);
      dsys_store *s = NULL;
      if (dsys_store_open(&s, url, NULL)) _exit(2);
      int wins = 0;
      char key[32];
      for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "race/%d", i);
        int e = dsys_store_create(s, key, "1", NULL, NULL);
        if (e == 0) wins++;
        else if (e != DSYS_EEXIST) _exit(3);
      }
      dsys_store_close(s);
      if (write(fds[1], &wins, sizeof wins) != sizeof wins) _exit(4);
      _exit(0);
    }
  }
  close(fds[1]);
  int total = 0, bad = 0;
  for (int k = 0; k < 4; k++) {
    int st = 0;
    waitpid(kids[k], &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st)) bad++;
  }
  int w;
  while (read(fds[0], &w, sizeof w) == sizeof w) total += w;
  close(fds[0]);
  is_int(bad, 0, "4 creating processes exited cleanly");
  is_int(total, 100, "each of 100 keys created exactly once across processes");
}

static void sqlite_persistence(const char *url) {
  dsys_store *s = NULL;
  is_int(dsys_store_open(&s, url, NULL), 0, "reopen file");
  dsys_item *it = NULL;
  is_int(dsys_store_get(s, "counter", &it), 0, "data persisted across close");
  is_str(it ? it->value : NULL, "600", "counter persisted");
  dsys_item_free(it);
  dsys_store_close(s);
  dsys_store_options o = {.size = sizeof o, .full_sync = 1};
  is_int(dsys_store_open(&s, url, &o), 0, "open with synchronous=FULL");
  is_int(dsys_store_put(s, "full", "1", NULL, NULL), 0, "put under FULL");
  dsys_store_close(s);
}

static void open_errors(void) {
  dsys_store *s = NULL;
  is_int(dsys_store_open(&s, "redis://x", NULL), DSYS_ESCHEME, "unknown scheme");
  is_int(dsys_store_open(&s, "nocolon", NULL), DSYS_EURL, "malformed url");
  is_int(dsys_store_open(&s, "sqlite://", NULL), DSYS_EURL, "empty path");
  is_int(dsys_store_open(&s, NULL, NULL), DSYS_EINVAL, "NULL url");
  ok(dsys_store_open(&s, "sqlite:///nonexistent-dir/x/y.sqlite", NULL) < 0, "unopenable path fails");
  ok(s == NULL, "out stays NULL");
  dsys_store_ops bad = *dsys_store_ops_memory();
  bad.get = NULL;
  is_int(dsys_store_open_ops(&s, &bad, "", NULL), DSYS_EINVAL, "ops table missing get rejected");
  bad = *dsys_store_ops_memory();
  bad.version = 99;
  is_int(dsys_store_open_ops(&s, &bad, "", NULL), DSYS_EINVAL, "future ops version rejected");
  dsys_store_close(NULL);
}

/* A backend added through the public API, under both URL forms. */
static void toy_backend(void) {
  is_int(toy_store_register(), 0, "register the toy backend");
  is_int(toy_store_register(), DSYS_EEXIST, "a second backend named toy is refused");
  dsys_store *s = NULL;
  is_int(dsys_store_open(&s, "toy://", NULL), 0, "toy:// opens (NAME://location form)");
  dsys_store_close(s);
  s = NULL;
  is_int(dsys_store_open(&s, "toy:/var/x", NULL), DSYS_EURL, "toy: refuses a location");
  ok(s == NULL, "out stays NULL");
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Two handles (as two processes would): compare-and-swap lets exactly one
 * of two writers that read the same version win. */
static void pg_cas_two_handles(const char *url) {
  dsys_store *a = NULL, *b = NULL;
  is_int(dsys_store_open(&a, url, NULL), 0, "pg: open handle A");
  is_int(dsys_store_open(&b, url, NULL), 0, "pg: open handle B");
  if (!a || !b) goto out;
  int wins = 0, conflicts = 0;
  for (int i = 0; i < 20; i++) {
    dsys_item *it = NULL;
    dsys_store_put(a, "cas/k", "0", NULL, NULL);
    if (dsys_store_get(b, "cas/k", &it)) break;
    dsys_store_write w = {.size = sizeof w, .expected_version = it->version};
    dsys_item_free(it);
    int ea = dsys_store_update(a, "cas/k", "\"a\"", &w, NULL);
    int eb = dsys_store_update(b, "cas/k", "\"b\"", &w, NULL);
    wins += (ea == 0) + (eb == 0);
    conflicts += (ea == DSYS_ECONFLICT) + (eb == DSYS_ECONFLICT);
  }
  ok(wins == 20 && conflicts == 20, "pg: 20 CAS races between two handles: one winner each (%d wins, %d conflicts)", wins, conflicts);
  is_int(dsys_store_delete(b, "cas/k", 1), DSYS_ECONFLICT, "pg: delete with a stale version conflicts");
out:
  dsys_store_close(a);
  dsys_store_close(b);
}

/* Increments from 4 threads on 2 handles: none lost. */
static void pg_incr_many(const char *url) {
  dsys_store *a = NULL, *b = NULL;
  dsys_store_open(&a, url, NULL);
  dsys_store_open(&b, url, NULL);
  if (!ok(a && b, "pg: two handles for the increments")) goto out;
  dsys_store_delete(a, "counter", 0);
  incr_arg ia[4] = {{a, 250, 0}, {a, 250, 0}, {b, 250, 0}, {b, 250, 0}};
  pthread_t th[4];
  for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, incr_thread, &ia[i]);
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  dsys_item *it = NULL;
  dsys_store_get(b, "counter", &it);
  is_str(it ? it->value : NULL, "1000", "pg: 1000 increments from 4 threads on 2 handles add up");
  is_int(ia[0].errors + ia[1].errors + ia[2].errors + ia[3].errors, 0, "pg: no increment failed");
  dsys_item_free(it);
out:
  dsys_store_close(a);
  dsys_store_close(b);
}

/* TTL on the real clock: the server's own now() plays no part. */
static void pg_ttl(const char *url) {
  dsys_store *s = NULL;
  dsys_store_open(&s, url, NULL);
  if (!ok(s != NULL, "pg: open for TTL")) return;
  dsys_store_write tw = {.size = sizeof tw, .ttl_ms = 200};
  dsys_item *it = NULL;
  is_int(dsys_store_put(s, "ttl/a", "1", &tw, &it), 0, "pg: put with a 200 ms TTL");
  int64_t id1 = it ? it->id : 0;
  dsys_item_free(it);
  is_int(dsys_store_incr(s, "ttl/a", 1, NULL), 0, "pg: incr keeps the TTL");
  int e = 0;
  int64_t t0 = mono_ms();
  while ((e = dsys_store_get(s, "ttl/a", &it)) == 0 && mono_ms() - t0 < 5000) {
    dsys_item_free(it);
    usleep(20 * 1000);
  }
  is_int(e, DSYS_ENOTFOUND, "pg: the item is gone once expired");
  int64_t r = 0;
  is_int(dsys_store_incr(s, "ttl/a", 5, &r), 0, "pg: incr of an expired item");
  is_int(r, 5, "pg: ... starts again from the delta");
  dsys_store_get(s, "ttl/a", &it);
  ok(it && it->version == 1 && it->id != id1 && it->expires_at == 0,
     "pg: ... as a new item (version 1, a new id, no TTL)");
  dsys_item_free(it);
  dsys_store_close(s);
}

/* Kill the server under a store handle: calls fail with DSYS_EUNAVAIL in
 * bounded time; after a restart the same handle works again. */
static void pg_outage(tpg *srv, const char *url) {
  dsys_store *s = NULL;
  dsys_store_open(&s, url, NULL);
  if (!ok(s != NULL, "pg: open for the outage")) return;
  is_int(dsys_store_put(s, "out/before", "1", NULL, NULL), 0, "pg: write before the outage");
  tpg_kill(srv);
  int64_t t0 = mono_ms(), worst = 0;
  int unavail = 0;
  for (int i = 0; i < 5; i++) {
    int64_t t1 = mono_ms();
    dsys_item *it = NULL;
    int e = i % 2 ? dsys_store_get(s, "out/before", &it) : dsys_store_put(s, "out/during", "1", NULL, NULL);
    dsys_item_free(it);
    unavail += e == DSYS_EUNAVAIL;
    if (mono_ms() - t1 > worst) worst = mono_ms() - t1;
  }
  is_int(unavail, 5, "pg: server killed: every call fails with DSYS_EUNAVAIL");
  ok(worst < 6000, "pg: ... each within the connect timeout (worst %lld ms, all %lld ms)",
     (long long)worst, (long long)(mono_ms() - t0));
  if (!ok(tpg_restart(srv) == 0, "pg: server restarted")) {
    dsys_store_close(s);
    return;
  }
  int e = -1;
  t0 = mono_ms();
  while (e && mono_ms() - t0 < 10000) {
    if ((e = dsys_store_put(s, "out/after", "2", NULL, NULL))) usleep(50 * 1000);
  }
  is_int(e, 0, "pg: the same handle writes again after the restart (%lld ms)",
         (long long)(mono_ms() - t0));
  dsys_item *it = NULL;
  is_int(dsys_store_get(s, "out/before", &it), 0, "pg: the write made before the outage is there");
  dsys_item_free(it);
  dsys_store_close(s);
}

static tpg pgsrv;
static void stop_pg(void) { tpg_stop(&pgsrv); }

static void postgresql(void) {
  if (!ok(tpg_start(&pgsrv) == 0, "start a throwaway PostgreSQL")) return;
  atexit(stop_pg); /* also when a check bails out */
  conformance(pgsrv.url);
  cross_process_create(pgsrv.url);
  pg_cas_two_handles(pgsrv.url);
  pg_incr_many(pgsrv.url);
  pg_ttl(pgsrv.url);
  /* the postgres:// alias opens the same data */
  char alias[300];
  snprintf(alias, sizeof alias, "postgres://%s", pgsrv.url + strlen("postgresql://"));
  dsys_store *s = NULL;
  dsys_item *it = NULL;
  is_int(dsys_store_open(&s, alias, NULL), 0, "pg: postgres:// opens too");
  is_int(s ? dsys_store_get(s, "counter", &it) : -1, 0, "pg: ... the same database");
  dsys_item_free(it);
  dsys_store_close(s);
  s = NULL;
  int64_t t0 = mono_ms();
  is_int(dsys_store_open(&s, "postgresql://x@/dsys?host=/nonexistent&port=1", NULL),
         DSYS_EUNAVAIL, "pg: no server: open fails with DSYS_EUNAVAIL");
  ok(mono_ms() - t0 < 3000 && s == NULL, "pg: ... at once");
  pg_outage(&pgsrv, pgsrv.url);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "%s/dsys-store-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(tmpdir)) tap_bail("mkdtemp");
  char url[400];
  snprintf(url, sizeof url, "sqlite://%s/store.sqlite", tmpdir);
  toy_backend();
  conformance("memory:");
  conformance("toy:");
  conformance(url);
  sqlite_persistence(url);
  cross_process_create(url);
  open_errors();
  postgresql();
  rmtree();
  return tap_done();
}
