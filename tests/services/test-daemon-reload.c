/*
 * The daemon shell's SIGHUP: the daemon keeps running and serving, the
 * spec's reload hook runs once per SIGHUP (a failing hook changes
 * nothing), a spec whose size ends before the reload field never has it
 * called, and SIGTERM still stops it cleanly (exit 0, unmount ran). Each
 * daemon runs dsys_daemon_main() in a child process.
 */
#include <signal.h>
#include <sys/select.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "net.h"
#include "tap.h"

static int events = -1; /* the child's end of the event pipe */

static void say(const char *what) {
  ssize_t w = write(events, what, strlen(what));
  (void)w;
}
static int mount(dsys_daemon *d, void *ud) { return 0; }
static void unmount(dsys_daemon *d, void *ud) { say("U"); }
static int reload_ok(dsys_daemon *d, void *ud) {
  /* the daemon is fully there: its server and config */
  say(dsys_daemon_server(d) && dsys_daemon_config(d) ? "R" : "?");
  return 0;
}
static int reload_fails(dsys_daemon *d, void *ud) {
  say("F");
  return DSYS_EIO;
}

typedef struct {
  pid_t pid;
  int out, ev; /* parent's ends: the child's stdout, the event pipe */
  char url[256];
} child;

static int start(child *c, dsys_daemon_reload_fn fn, size_t size) {
  int po[2], pe[2];
  if (pipe(po) || pipe(pe)) return -1;
  c->pid = fork();
  if (c->pid == 0) {
    close(po[0]);
    close(pe[0]);
    dup2(po[1], 1);
    events = pe[1];
    dsys_daemon_spec spec = {.size = size, .progname = "test-daemon",
                             .summary = "test", .default_name = "reload-test",
                             .mount = mount, .unmount = unmount, .reload = fn,
                             .without = DSYS_DAEMON_NO_REGISTRY};
    char *argv[] = {"test-daemon", "--listen", "http://127.0.0.1:0", "--log-level", "warn", NULL};
    _exit(dsys_daemon_main(&spec, 5, argv));
  }
  close(po[1]);
  close(pe[1]);
  c->out = po[0];
  c->ev = pe[0];
  /* "listening URL\n" */
  size_t n = 0;
  char ch;
  while (n + 1 < sizeof c->url && read(c->out, &ch, 1) == 1 && ch != '\n') c->url[n++] = ch;
  c->url[n] = '\0';
  return strncmp(c->url, "listening http://", 17) ? -1 : 0;
}

/* Waits up to 5 s for want bytes of events into buf. */
static void await_events(child *c, char *buf, size_t want) {
  size_t n = strlen(buf);
  for (int i = 0; i < 500 && n < want; i++) {
    fd_set r;
    FD_ZERO(&r);
    FD_SET(c->ev, &r);
    struct timeval tv = {0, 10000};
    if (select(c->ev + 1, &r, NULL, NULL, &tv) > 0) {
      ssize_t k = read(c->ev, buf + n, want - n);
      if (k <= 0) break;
      n += (size_t)k;
    }
  }
  buf[n] = '\0';
}

/* The daemon answers GET /metrics, which the shell mounts (raw HTTP:
 * the parent starts no thread, it forks the daemons). */
static int serving(child *c) {
  int fd = test_connect(c->url + 10);
  if (fd < 0) return 0;
  const char *req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  char buf[64] = "";
  int okay = write(fd, req, strlen(req)) == (ssize_t)strlen(req) && read(fd, buf, sizeof buf - 1) > 12 &&
             !strncmp(buf, "HTTP/1.1 200", 12);
  close(fd);
  return okay;
}

static int stop(child *c) {
  kill(c->pid, SIGTERM);
  int st = -1;
  waitpid(c->pid, &st, 0);
  close(c->out);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

int main(void) {
  child c;
  char ev[64] = "";
  ok(!start(&c, reload_ok, sizeof(dsys_daemon_spec)), "daemon started (%s)", c.url);
  kill(c.pid, SIGHUP);
  await_events(&c, ev, 1);
  kill(c.pid, SIGHUP);
  await_events(&c, ev, 2);
  is_str(ev, "RR", "one reload per SIGHUP, with the daemon's server and config");
  ok(kill(c.pid, 0) == 0 && serving(&c), "still running and serving after SIGHUP");
  is_int(stop(&c), 0, "SIGTERM: exit 0");
  await_events(&c, ev, 3);
  is_str(ev, "RRU", "unmount ran after the reloads");
  close(c.ev);

  ev[0] = '\0';
  ok(!start(&c, reload_fails, sizeof(dsys_daemon_spec)), "daemon with a failing reload started");
  kill(c.pid, SIGHUP);
  await_events(&c, ev, 1);
  is_str(ev, "F", "the failing hook ran");
  ok(kill(c.pid, 0) == 0 && serving(&c), "a failed reload keeps the daemon running");
  is_int(stop(&c), 0, "and SIGTERM stops it: exit 0");
  close(c.ev);

  /* A caller built before the reload field: its size ends before it, so
   * whatever the memory after it holds is never called. */
  ev[0] = '\0';
  ok(!start(&c, reload_fails, offsetof(dsys_daemon_spec, reload)), "older spec size started");
  kill(c.pid, SIGHUP);
  usleep(300000);
  ok(kill(c.pid, 0) == 0 && serving(&c), "SIGHUP without a reload hook: still running");
  is_int(stop(&c), 0, "exit 0");
  await_events(&c, ev, 1);
  is_str(ev, "U", "the hook past the caller's size was not called");
  close(c.ev);
  return tap_done();
}
