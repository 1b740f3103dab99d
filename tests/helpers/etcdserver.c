/* Throwaway etcd clusters for the tests (see etcdserver.h). */
#include "etcdserver.h"
#include "reaper.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t member_pid(const tetcd *t, int i) {
  char path[128];
  snprintf(path, sizeof path, "%s/m%d/pid", t->dir, i);
  return reaper_pid_file(path);
}

/* The members' PIDs are killed on the exit paths where the script cannot
 * run (reaper.h). */
static void note_pids(const tetcd *t) {
  for (int i = 1; i <= t->members; i++) reaper_track(member_pid(t, i));
}

/* Run etcd-local CMD DIR ARGS; the first output line goes to out. */
static int etcd_local(const char *cmd, const tetcd *t, const char *args, char *out,
                      size_t outlen) {
  char all[256];
  snprintf(all, sizeof all, "%s '%s' %s", cmd, t->dir, args);
  return reaper_run_script("etcd-local", all, out, outlen);
}

int tetcd_start(tetcd *t, int members) { return tetcd_start_with(t, members, ""); }

int tetcd_start_with(tetcd *t, int members, const char *options) {
  memset(t, 0, sizeof *t);
  t->tls = strstr(options, "--tls") != NULL;
  t->auth = strstr(options, "--auth") != NULL;
  struct stat st;
  snprintf(t->dir, sizeof t->dir, "%s/dsys-etcd.XXXXXX",
           stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp");
  if (!mkdtemp(t->dir)) {
    perror("# mkdtemp");
    return -1;
  }
  t->members = members;
  char args[160];
  snprintf(args, sizeof args, "--members %d %s", members, options);
  if (etcd_local("start", t, args, t->endpoints, sizeof t->endpoints) ||
      strncmp(t->endpoints, "127.0.0.1:", 10)) {
    printf("# could not start etcd in %s (is etcd-server installed?)\n", t->dir);
    return -1;
  }
  note_pids(t);
  return 0;
}

void tetcd_url(const tetcd *t, const char *prefix, char *out, size_t n) {
  int k = snprintf(out, n, "%s://%s/%s", t->tls ? "etcds" : "etcd", t->endpoints, prefix);
  if (t->tls && k > 0 && (size_t)k < n)
    k += snprintf(out + k, n - k, "?ca=%s/tls/ca.pem&cert=%s/tls/client.pem&key=%s/tls/client.key",
                  t->dir, t->dir, t->dir);
  if (t->auth && k > 0 && (size_t)k < n)
    snprintf(out + k, n - k, "%cuser=root&password-file=%s/root-password", t->tls ? '&' : '?',
             t->dir);
}

int tetcd_kill_member(tetcd *t, int i) {
  reaper_untrack(member_pid(t, i)); /* its PID may be reused later */
  char args[16];
  snprintf(args, sizeof args, "%d", i);
  return etcd_local("kill-member", t, args, NULL, 0);
}

int tetcd_start_member(tetcd *t, int i) {
  char args[16];
  snprintf(args, sizeof args, "%d", i);
  int rc = etcd_local("start-member", t, args, NULL, 0);
  note_pids(t);
  return rc;
}

void tetcd_stop(tetcd *t) {
  if (!t->dir[0]) return;
  for (int i = 1; i <= t->members; i++) reaper_untrack(member_pid(t, i));
  etcd_local("stop", t, "", NULL, 0);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
  if (system(cmd)) {}
  t->dir[0] = 0;
}
