/*
 * toy-store-demo: registers the example backend of examples/toy-store.c,
 * opens "toy:" like any store URL and puts, gets and lists a few items.
 * From here on nothing is specific to the toy backend: the same calls work
 * on "memory:" or "sqlite:///path".
 */
#include <stdio.h>
#include <distsys/distsys.h>
#include "toy-store.h"

static int fail(const char *what, int e) {
  fprintf(stderr, "%s: %s\n", what, dsys_strerror(e));
  return 1;
}

int main(void) {
  int e = toy_store_register();
  if (e) return fail("register", e);
  dsys_store *s = NULL;
  if ((e = dsys_store_open(&s, "toy:", NULL))) return fail("open", e);

  /* Inserted out of order: listing returns them in key order. */
  static const char *const kv[][2] = {
      {"fruit/pear", "{\"color\":\"green\"}"},
      {"veg/leek", "{\"color\":\"white\"}"},
      {"fruit/apple", "{\"color\":\"red\"}"},
  };
  for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
    dsys_item *it = NULL;
    if ((e = dsys_store_put(s, kv[i][0], kv[i][1], NULL, &it)))
      return fail("put", e);
    printf("put %s id=%lld version=%lld\n", it->key, (long long)it->id,
           (long long)it->version);
    dsys_item_free(it);
  }

  /* Replacing bumps the version; create refuses an existing key. */
  dsys_item *it = NULL;
  if ((e = dsys_store_put(s, "fruit/apple", "{\"color\":\"yellow\"}", NULL,
                          NULL)))
    return fail("put", e);
  if ((e = dsys_store_get(s, "fruit/apple", &it))) return fail("get", e);
  printf("get %s = %s version=%lld\n", it->key, it->value,
         (long long)it->version);
  dsys_item_free(it);
  e = dsys_store_create(s, "fruit/apple", "{}", NULL, NULL);
  printf("create fruit/apple: %s\n", e ? dsys_err_name(e) : "created");

  int64_t visits = 0;
  for (int i = 0; i < 3; i++)
    if ((e = dsys_store_incr(s, "visits", 1, &visits))) return fail("incr", e);
  printf("incr visits = %lld\n", (long long)visits);

  dsys_item **items = NULL;
  size_t n = 0;
  if ((e = dsys_store_list(s, "fruit/", NULL, 0, &items, &n, NULL)))
    return fail("list", e);
  printf("list fruit/: %zu items\n", n);
  for (size_t i = 0; i < n; i++)
    printf("  %s = %s\n", items[i]->key, items[i]->value);
  dsys_item_list_free(items, n);

  dsys_store_close(s);
  return 0;
}
