/*
 * dsys-datad: the data service (CRUD over the shared store) as a daemon.
 * Flags: see --help and docs/reference/services.md.
 */
#include <stdio.h>
#include <distsys/distsys.h>

static const dsys_option extra[] = {
    {"no-seed", "DSYS_NO_SEED", DSYS_OPT_BOOL, "false",
     "do not create data-1..data-10 on the first start"},
    {"cache-size", "DSYS_CACHE_SIZE", DSYS_OPT_SIZE, "0",
     "read-through cache of GET /api/data/:ref, in bytes (0: off); another "
     "instance's write reaches it within the change log poll (200 ms)"},
    {"cache-ttl", "DSYS_CACHE_TTL", DSYS_OPT_DURATION, "30s",
     "longest time a cached item is served without reading the store"},
};

static dsys_data_service *svc;
static dsys_cache *cache;

static int mount(dsys_daemon *d, void *ud) {
  const dsys_config *cfg = dsys_daemon_config(d);
  int64_t size = 0, ttl = 0;
  dsys_config_get_int(cfg, "cache-size", &size);
  dsys_config_get_int(cfg, "cache-ttl", &ttl);
  int rc = 0;
  if (size > 0) {
    if (ttl <= 0) {
      fprintf(stderr, "dsys-datad: --cache-ttl must be positive\n");
      return DSYS_EINVAL;
    }
    dsys_cache_options co = {.size = sizeof co, .max_bytes = (size_t)size, .ttl_ms = ttl};
    if (!(rc = dsys_cache_new(&cache, &co)))
      rc = dsys_metrics_cache(dsys_daemon_metrics(d), "data", cache);
  }
  dsys_data_options o = {.size = sizeof o, .store = dsys_daemon_store(d),
                         .name = dsys_daemon_name(d),
                         .no_seed = dsys_config_get_bool(cfg, "no-seed"), .cache = cache};
  if (!rc) rc = dsys_service_data_mount(dsys_daemon_server(d), &o, &svc);
  if (rc) fprintf(stderr, "dsys-datad: %s\n", dsys_strerror(rc));
  return rc ? 1 : 0;
}

static void unmount(dsys_daemon *d, void *ud) {
  dsys_service_data_free(svc);
  dsys_cache_free(cache);
}

int main(int argc, char **argv) {
  dsys_daemon_spec spec = {
      .size = sizeof spec, .progname = "dsys-datad",
      .summary = "The data service: items with versions over the shared store.",
      .default_name = "data-service", .default_listen = "http://127.0.0.1:4002",
      .extra = extra, .nextra = sizeof extra / sizeof extra[0],
      .open_store = 1, .mount = mount, .unmount = unmount, .service_type = "data"};
  return dsys_daemon_main(&spec, argc, argv);
}
