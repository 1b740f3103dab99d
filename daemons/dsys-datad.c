/*
 * dsys-datad: the data service (CRUD over the shared store) as a daemon.
 * Flags: see --help and docs/reference/services.md.
 */
#include <stdio.h>
#include <distsys/distsys.h>

static const dsys_option extra[] = {
    {"no-seed", "DSYS_NO_SEED", DSYS_OPT_BOOL, "false",
     "do not create data-1..data-10 on the first start"},
};

static dsys_data_service *svc;

static int mount(dsys_daemon *d, void *ud) {
  dsys_data_options o = {.size = sizeof o, .store = dsys_daemon_store(d),
                         .name = dsys_daemon_name(d),
                         .no_seed = dsys_config_get_bool(dsys_daemon_config(d), "no-seed")};
  int rc = dsys_service_data_mount(dsys_daemon_server(d), &o, &svc);
  if (rc) fprintf(stderr, "dsys-datad: %s\n", dsys_strerror(rc));
  return rc ? 1 : 0;
}

static void unmount(dsys_daemon *d, void *ud) { dsys_service_data_free(svc); }

int main(int argc, char **argv) {
  dsys_daemon_spec spec = {
      .size = sizeof spec, .progname = "dsys-datad",
      .summary = "The data service: items with versions over the shared store.",
      .default_name = "data-service", .default_listen = "http://127.0.0.1:4002",
      .extra = extra, .nextra = sizeof extra / sizeof extra[0],
      .open_store = 1, .mount = mount, .unmount = unmount, .service_type = "data"};
  return dsys_daemon_main(&spec, argc, argv);
}
