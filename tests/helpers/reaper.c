/* Kill tracked server PIDs on every way out of a test (see reaper.h). */
#include "reaper.h"

#include <signal.h>
#include <stdlib.h>

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
    int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGABRT, SIGSEGV, SIGBUS};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) signal(sigs[i], on_signal);
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
