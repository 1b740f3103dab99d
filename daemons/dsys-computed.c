/*
 * dsys-computed: the compute service (direct computations and durable
 * jobs run by a worker pool) as a daemon, with the queue's retention
 * sweep (run by one elected instance when --leader-lock is given).
 * Flags: see --help and docs/reference/services.md.
 */
#include <stdio.h>
#include <distsys/distsys.h>
#include "leader.h"

static const dsys_option extra[] = {
    {"workers", "DSYS_WORKERS", DSYS_OPT_INT, "2",
     "job worker threads of this instance (0: submit and read only)"},
    {"loops", "DSYS_COMPUTE_LOOPS", DSYS_OPT_INT, "1",
     "event-loop threads serving HTTP (0: libmicrohttpd's thread pool)"},
    {"lease", "DSYS_JOB_LEASE", DSYS_OPT_DURATION, "30s",
     "job lease: a job held by an instance that died runs again after this long (at least 300ms)"},
    {"lease-ms", "DSYS_JOB_LEASE_MS", DSYS_OPT_ALIAS, "lease", NULL},
    {"retention", "DSYS_RETENTION", DSYS_OPT_DURATION, "7d",
     "retention sweep: delete completed, failed and canceled jobs of the queue database "
     "finished this long ago (0: keep them forever)"},
    {"sweep-interval", "DSYS_SWEEP_INTERVAL", DSYS_OPT_DURATION, "0",
     "time between retention sweeps (0: a tenth of --retention, within 1s..1h)"},
    {"leader-lock", "DSYS_LEADER_LOCK", DSYS_OPT_STRING, NULL,
     "locks URL (sqlite:///path, postgresql://..., etcd://... shared by the instances): the "
     "instances elect one leader, and only it runs the retention sweep (all keep running jobs)"},
    {"leader-ttl", "DSYS_LEADER_TTL", DSYS_OPT_DURATION, "10s",
     "lease of the leadership: a dead leader is replaced within it"},
};

static dsys_compute_service *svc;
static dsys_election *election;

static void on_role(void *ud, int leader, int64_t token) {
  fprintf(stderr, "dsys-computed: %s (token %lld)\n",
          leader ? "leading: this instance runs the retention sweep"
                 : "following: another instance sweeps",
          (long long)token);
}

/* HTTP on event loops (one by default): a submission is answered after
 * its batch's commit from the submitter thread; on a loop that answer
 * needs neither libmicrohttpd's suspend nor its resume (two epoll_ctl,
 * an eventfd write and a failed recv per request), a batch of answers
 * wakes the loop once, and one loop takes a batch of requests per wake-up
 * (jobs through HTTP, PERFORMANCE.md: 14.5-16.5 against 19-20 system
 * calls and 1.5-1.8 against 2.1-2.3 context switches per job). The
 * handlers are short: the queue's writes run on the submitter and worker
 * threads. */
static int prepare(dsys_daemon *d, dsys_server_options *so, void *ud) {
  int64_t loops = 1;
  dsys_config_get_int(dsys_daemon_config(d), "loops", &loops);
  if (loops < 0 || loops > 256) {
    fprintf(stderr, "dsys-computed: --loops must be 0..256\n");
    return DSYS_EINVAL;
  }
  so->event_loops = (uint32_t)loops;
  return 0;
}

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
  const dsys_config *cfg = dsys_daemon_config(d);
  int64_t retention = 0, every = 0;
  dsys_config_get_duration_ms(cfg, "retention", &retention);
  dsys_config_get_duration_ms(cfg, "sweep-interval", &every);
  if (retention < 0 || every < 0) {
    fprintf(stderr, "dsys-computed: --retention and --sweep-interval must not be negative\n");
    return DSYS_EINVAL;
  }
  int lrc = daemon_leader_open(cfg, "dsys-computed", "compute-sweep", on_role, &election);
  if (lrc) return lrc;
  dsys_compute_options o = {.size = sizeof o, .queue = dsys_daemon_queue(d),
                            .name = dsys_daemon_name(d),
                            .workers = (uint32_t)workers, .no_workers = workers == 0,
                            .lease_ms = lease, .retention_ms = retention,
                            .sweep_interval_ms = every, .election = election,
                            .metrics = dsys_daemon_metrics(d)};
  int rc = dsys_service_compute_mount(dsys_daemon_server(d), &o, &svc);
  if (rc) fprintf(stderr, "dsys-computed: %s\n", dsys_strerror(rc));
  return rc ? 1 : 0;
}

static void unmount(dsys_daemon *d, void *ud) {
  dsys_service_compute_free(svc);
  dsys_election_resign(election); /* another instance sweeps at once */
}

int main(int argc, char **argv) {
  dsys_daemon_spec spec = {
      .size = sizeof spec, .progname = "dsys-computed",
      .summary = "The compute service: direct computations and queued jobs.",
      .default_name = "compute-service", .default_listen = "http://127.0.0.1:5002",
      .extra = extra, .nextra = sizeof extra / sizeof extra[0],
      .open_queue = 1, .prepare = prepare, .mount = mount, .unmount = unmount, .service_type = "compute"};
  return dsys_daemon_main(&spec, argc, argv);
}
