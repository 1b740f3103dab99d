/* Kill tracked server PIDs on every way out of a test (see reaper.h). */
#include "reaper.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define MAX_TRACKED 64

/* plain array: read from a signal handler, written by the test's thread */
static volatile pid_t tracked[MAX_TRACKED];

static void kill_all(void) {
  for (int i = 0; i < MAX_TRACKED; i++)
    if (tracked[i] > 0) kill(tracked[i], SIGKILL);
}

static void on_signal(int sig) {
  kill_all();
  signal(sig, SIG_DFL);
  raise(sig);
}

void reaper_track(pid_t pid) {
  static int hooked;
  if (pid <= 0) return;
  if (!hooked++) {
    atexit(kill_all);
    /* every signal whose default action ends the test; SIGPIPE too (a
     * test whose output pipe closed left an etcd cluster running), but
     * only where the test has not chosen to ignore one */
    int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGABRT, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGPIPE};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) {
      struct sigaction cur;
      if (sigaction(sigs[i], NULL, &cur) == 0 && cur.sa_handler == SIG_IGN) continue;
      signal(sigs[i], on_signal);
    }
  }
  for (int i = 0; i < MAX_TRACKED; i++)
    if (tracked[i] == pid) return;
  for (int i = 0; i < MAX_TRACKED; i++)
    if (tracked[i] <= 0) {
      tracked[i] = pid;
      return;
    }
}

void reaper_untrack(pid_t pid) {
  for (int i = 0; i < MAX_TRACKED; i++)
    if (tracked[i] == pid) tracked[i] = 0;
}

int reaper_run_script(const char *script, const char *args, char *first, size_t n) {
  const char *src = getenv("top_srcdir");
  char line[1024];
  snprintf(line, sizeof line, "sh '%s/scripts/%s' %s", src ? src : ".", script, args);
  FILE *f = popen(line, "r");
  if (!f) return -1;
  char buf[512] = "";
  if (fgets(buf, sizeof buf, f) && first) {
    buf[strcspn(buf, "\n")] = 0;
    snprintf(first, n, "%s", buf);
  }
  while (fgets(buf, sizeof buf, f)) {} /* drain: the script must not block */
  int st = pclose(f);
  if (st != 0) {
    printf("# %s %s failed (exit %d)\n", script, args, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return -1;
  }
  return 0;
}

pid_t reaper_pid_file(const char *path) {
  char buf[32] = "";
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
  fclose(f);
  pid_t pid = (pid_t)atoi(buf);
  return pid > 0 ? pid : -1;
}
