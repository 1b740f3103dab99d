/* Throwaway PostgreSQL servers for the tests (see pgserver.h). */
#include "pgserver.h"
#include "reaper.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *script(void) {
  static char path[512];
  const char *src = getenv("top_srcdir");
  snprintf(path, sizeof path, "%s/scripts/pg-local", src ? src : ".");
  return path;
}

/* Run pg-local CMD DIR; the first output line goes to out (may be NULL). */
static int pg_local(const char *cmd, const char *dir, char *out, size_t outlen) {
  char line[1024];
  snprintf(line, sizeof line, "sh '%s' %s '%s'%s", script(), cmd, dir,
           !strcmp(cmd, "start") ? " --fsync off" : "");
  FILE *f = popen(line, "r");
  if (!f) return -1;
  char buf[512] = "";
  if (fgets(buf, sizeof buf, f) && out) {
    buf[strcspn(buf, "\n")] = 0;
    snprintf(out, outlen, "%s", buf);
  }
  while (fgets(line, sizeof line, f)) {}
  int st = pclose(f);
  if (st != 0) {
    printf("# pg-local %s %s failed (exit %d)\n", cmd, dir, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return -1;
  }
  return 0;
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
  char path[128], buf[32] = "";
  snprintf(path, sizeof path, "%s/pid", t->dir);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
  fclose(f);
  pid_t pid = (pid_t)atoi(buf);
  return pid > 0 ? pid : -1;
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
