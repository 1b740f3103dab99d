/* Throwaway PostgreSQL servers for the tests (see pgserver.h). */
#include "pgserver.h"
#include "reaper.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Run pg-local CMD DIR; the first output line goes to out (may be NULL). */
static int pg_local(const char *cmd, const char *dir, char *out, size_t outlen) {
  char args[256];
  snprintf(args, sizeof args, "%s '%s'%s", cmd, dir, !strcmp(cmd, "start") ? " --fsync off" : "");
  return reaper_run_script("pg-local", args, out, outlen);
}

int tpg_start(tpg *t) {
  memset(t, 0, sizeof *t);
  snprintf(t->dir, sizeof t->dir, "/tmp/dsys-pg.XXXXXX");
  if (!mkdtemp(t->dir)) {
    perror("# mkdtemp");
    return -1;
  }
  if (pg_local("start", t->dir, t->url, sizeof t->url) || strncmp(t->url, "postgresql://", 13)) {
    printf("# could not start PostgreSQL in %s (is postgresql-15 installed?)\n", t->dir);
    return -1;
  }
  reaper_track(tpg_pid(t)); /* killed if the test dies before tpg_stop */
  return 0;
}

int tpg_restart(tpg *t) {
  char url[256];
  if (pg_local("start", t->dir, url, sizeof url)) return -1;
  reaper_track(tpg_pid(t));
  return 0;
}

pid_t tpg_pid(const tpg *t) {
  char path[128];
  snprintf(path, sizeof path, "%s/pid", t->dir);
  return reaper_pid_file(path);
}

void tpg_kill(tpg *t) {
  pid_t pid = tpg_pid(t);
  reaper_untrack(pid); /* its PID may be reused later */
  if (pid > 0) kill(pid, SIGKILL);
  /* the postmaster is not our child (popen's shell started it): poll */
  for (int i = 0; i < 200 && pid > 0 && kill(pid, 0) == 0; i++) usleep(10000);
  char path[128];
  snprintf(path, sizeof path, "%s/pid", t->dir);
  unlink(path);
  /* backends exit when they notice the postmaster is gone; a restart
   * waits for them (postmaster.pid / shared memory in use) */
}

void tpg_stop(tpg *t) {
  if (!t->dir[0]) return;
  reaper_untrack(tpg_pid(t));
  pg_local("stop", t->dir, NULL, 0);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
  if (system(cmd)) {}
  t->dir[0] = 0;
}
