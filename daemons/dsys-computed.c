/*
 * dsys-computed: the compute service (direct computations and durable
 * jobs run by a worker pool) as a daemon.
 * Flags: see --help and docs/reference/services.md.
 */
#include <stdio.h>
#include <distsys/distsys.h>

static const dsys_option extra[] = {
    {"workers", "DSYS_WORKERS", DSYS_OPT_INT, "2",
     "job worker threads of this instance (0: submit and read only)"},
    {"lease", "DSYS_JOB_LEASE", DSYS_OPT_DURATION, "30s",
     "job lease: a job held by an instance that died runs again after this long (at least 300ms)"},
    {"lease-ms", "DSYS_JOB_LEASE_MS", DSYS_OPT_ALIAS, "lease", NULL},
};

static dsys_compute_service *svc;

static int mount(dsys_daemon *d, void *ud) {
  int64_t workers = 0, lease = 0;
  dsys_config_get_int(dsys_daemon_config(d), "workers", &workers);
  dsys_config_get_duration_ms(dsys_daemon_config(d), "lease", &lease);
  if (lease < 300) {
    fprintf(stderr, "dsys-computed: --lease must be at least 300ms\n");
    return DSYS_EINVAL;
  }
  if (workers < 0 || workers > 256) {
    fprintf(stderr, "dsys-computed: --workers must be 0..256\n");
    return DSYS_EINVAL;
  }
  dsys_compute_options o = {.size = sizeof o, .queue = dsys_daemon_queue(d),
                            .name = dsys_daemon_name(d),
                            .workers = (uint32_t)workers, .no_workers = workers == 0,
                            .lease_ms = lease};
  int rc = dsys_service_compute_mount(dsys_daemon_server(d), &o, &svc);
  if (rc) fprintf(stderr, "dsys-computed: %s\n", dsys_strerror(rc));
  return rc ? 1 : 0;
}

static void unmount(dsys_daemon *d, void *ud) { dsys_service_compute_free(svc); }

int main(int argc, char **argv) {
  dsys_daemon_spec spec = {
      .size = sizeof spec, .progname = "dsys-computed",
      .summary = "The compute service: direct computations and queued jobs.",
      .default_name = "compute-service", .default_listen = "http://127.0.0.1:5002",
      .extra = extra, .nextra = sizeof extra / sizeof extra[0],
      .open_queue = 1, .mount = mount, .unmount = unmount, .service_type = "compute"};
  return dsys_daemon_main(&spec, argc, argv);
}
