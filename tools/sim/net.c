/*
 * The simulated network: the inproc transport's link hook
 * (lib/transport/inproc.h) decides, from the simulation's random stream,
 * each message's latency (which also reorders messages between the same
 * nodes), whether it is lost, and whether its link is cut; and the fault
 * driver, a thread of node 0, cuts links, pauses nodes and skews clocks
 * for a while, then heals. All of it runs with the baton (sched.c), so it
 * needs no lock.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "net.h"
#include "sim.h"
#include "core/clock_hook.h"
#include "transport/inproc.h"

#define MAX_NAMES 128

static struct {
  unsigned mask;
  struct {
    char name[64];
    int node;
  } names[MAX_NAMES];
  int nnames;
  /* cut[a][b]: virtual time until which messages a -> b are lost */
  int64_t cut[SIM_MAX_NODES][SIM_MAX_NODES];
  int pick[SIM_MAX_NODES];
  int npick;
  int stop, running;
  int64_t started, limit; /* the faults must have stopped by limit */
  uint64_t dropped, faults, crashes;
  int down[SIM_MAX_NODES];
  int64_t watch_since; /* the watcher's current incarnation started then */
  int (*crash)(int node, int64_t down_ns, void *ud);
  void *crash_ud;
  /* the dead-instance checker */
  int watcher;
  int64_t allow, health_timeout;
  /* the watcher's health checks in flight (the reply's tag names the
   * slot) and, per node, when their answers reached the watcher in time:
   * the watcher then rightly saw the node alive */
  struct probe {
    int node;
    int64_t sent;
  } probes[256];
  unsigned nprobes;
  int64_t alive[SIM_MAX_NODES][8];
  unsigned nalive[SIM_MAX_NODES];
  char group[SIM_MAX_NODES][24];
  /* outages seen by the watcher: node unreachable over [from, until) */
  struct outage {
    int node;
    int64_t from, until;
  } out[4096];
  int nout;
} N;

void sim_net_group(int node, const char *group) {
  snprintf(N.group[node], sizeof N.group[node], "%s", group);
}

static int (*other_usable)(const char *, const char *, void *);
static void *other_ud;

void sim_net_watch(int watcher, int64_t allow_ns, int64_t health_timeout_ns,
                   int (*usable)(const char *group, const char *except, void *ud), void *ud) {
  N.watcher = watcher;
  N.allow = allow_ns;
  N.health_timeout = health_timeout_ns;
  other_usable = usable;
  other_ud = ud;
}

static void outage(int node, int64_t from, int64_t until) {
  if (!N.watcher || node == N.watcher || N.nout == (int)(sizeof N.out / sizeof *N.out)) return;
  N.out[N.nout++] = (struct outage){node, from, until};
}

/* Since when has the watcher been unable to reach `node` without a break
 * (INT64_MAX: it can now)? Outages chain when they overlap. */
static int64_t down_since(int node, int64_t now) {
  int64_t since = INT64_MAX;
  for (int changed = 1; changed;) {
    changed = 0;
    for (int i = 0; i < N.nout; i++) {
      struct outage *o = &N.out[i];
      if (o->node != node || o->from >= since) continue;
      if (since == INT64_MAX ? (o->from <= now && o->until > now) : o->until >= since) {
        since = o->from;
        changed = 1;
      }
    }
  }
  return since;
}

static int is_health(const char *path) {
  size_t pl = path ? strcspn(path, "?") : 0;
  return pl >= 7 && !strncmp(path + pl - 7, "/health", 7);
}

/* The last time up to now a health check's answer from `node` reached the
 * watcher within the check's timeout (INT64_MIN: never). */
static int64_t seen_alive(int node, int64_t now) {
  int64_t t = INT64_MIN;
  for (unsigned i = 0; i < N.nalive[node] && i < 8; i++)
    if (N.alive[node][i] <= now && N.alive[node][i] > t) t = N.alive[node][i];
  return t;
}

static void check_dead(int to, const char *path, int64_t now) {
  size_t pl = path ? strcspn(path, "?") : 0;
  if (!N.watcher || !N.group[to][0] || is_health(path)) return;
  if (N.down[N.watcher]) return; /* a dead gateway's leftovers: lost anyway */
  int64_t since = down_since(to, now);
  if (since == INT64_MAX) return;
  if (since < N.watch_since) since = N.watch_since; /* a new gateway knew nothing earlier */
  /* A health check's answer that got through (sent before a cut, or held
   * by a paused node and answered when it resumed) shows the node alive
   * to the gateway: its health rules start again from then. */
  int64_t alive = seen_alive(to, now);
  if (alive > since) since = alive;
  if (now - since <= N.allow) return;
  /* only if a sibling was reachable all along and takes traffic (else
   * the balancer's panic mode rightly tries every instance) */
  if (other_usable && !other_usable(N.group[to], sim_node_name(to), other_ud)) return;
  for (int b = 1; b < sim_node_count(); b++)
    if (b != to && !strcmp(N.group[b], N.group[to]) && down_since(b, now) == INT64_MAX &&
        down_since(b, since) == INT64_MAX)
      sim_fail("%s sent %.*s to %s, unreachable for %.3f s (health rules allow %.3f s) while %s "
               "was reachable",
               sim_node_name(N.watcher), (int)pl, path, sim_node_name(to), (now - since) / 1e9,
               N.allow / 1e9, sim_node_name(b));
}

int sim_faults_parse(const char *spec, unsigned *mask) {
  static const struct {
    const char *name;
    unsigned bit;
  } kinds[] = {{"latency", SIM_F_LATENCY}, {"drop", SIM_F_DROP}, {"partition", SIM_F_PARTITION},
               {"pause", SIM_F_PAUSE},     {"skew", SIM_F_SKEW},
               {"crash", SIM_F_CRASH}};
  unsigned m = 0;
  if (!spec) return -1;
  if (!strcmp(spec, "none")) m = 0;
  else if (!strcmp(spec, "all")) m = SIM_F_ALL;
  else {
    const char *p = spec;
    while (*p) {
      size_t n = strcspn(p, ",");
      size_t k = 0;
      for (; k < sizeof kinds / sizeof *kinds; k++)
        if (strlen(kinds[k].name) == n && !strncmp(p, kinds[k].name, n)) break;
      if (k == sizeof kinds / sizeof *kinds) return -1;
      m |= kinds[k].bit;
      p += n;
      if (*p == ',') p++;
    }
  }
  if (mask) *mask = m;
  return 0;
}

void sim_net_name(const char *name, int node) {
  if (N.nnames >= MAX_NAMES) sim_fail("too many inproc names");
  snprintf(N.names[N.nnames].name, sizeof N.names[N.nnames].name, "%s", name);
  N.names[N.nnames++].node = node;
}

static int node_of(const char *name) {
  for (int i = 0; i < N.nnames; i++)
    if (!strcmp(N.names[i].name, name)) return N.names[i].node;
  return 0;
}

/* One message a -> b: lost (1) or delivered after *delay (0). Messages
 * inside a node, and those of node 0 (the timer thread, the driver), are
 * never delayed or lost. */
static int fate(int a, int b, int64_t *delay) {
  *delay = 0;
  if (a == b || a == 0 || b == 0) return 0;
  if (N.down[a] || N.down[b]) {
    N.dropped++;
    return 1;
  }
  if (N.cut[a][b] > sim_now_ns()) {
    N.dropped++;
    return 1;
  }
  if ((N.mask & SIM_F_DROP) && sim_chance(0.004)) {
    N.dropped++;
    sim_trace("net: lost %s -> %s", sim_node_name(a), sim_node_name(b));
    return 1;
  }
  if (N.mask & SIM_F_LATENCY) {
    /* 50-500 us usually; a spike of 5-400 ms one time in 50. */
    *delay = 50 + (int64_t)sim_rand_below(450);
    if (sim_chance(0.02)) *delay = 5000 + (int64_t)sim_rand_below(395000);
  }
  return 0;
}

/* A message's tag: caller a, callee b, and 1 + the slot of a watcher's
 * health check (0: another request). */
#define TAG_NODES (SIM_MAX_NODES * SIM_MAX_NODES)
#define NPROBES (sizeof N.probes / sizeof *N.probes)

static int on_request(const char *to, const char *path, int *tag, int64_t *delay_us) {
  int a = sim_node_current(), b = node_of(to);
  int64_t now = sim_now_ns();
  if (a == N.watcher) check_dead(b, path, now);
  *tag = a * SIM_MAX_NODES + b;
  if (N.watcher && a == N.watcher && b && is_health(path)) {
    unsigned k = N.nprobes++ % NPROBES;
    N.probes[k] = (struct probe){b, now};
    *tag += (int)(k + 1) * TAG_NODES;
  }
  int lost = fate(a, b, delay_us);
  return lost ? DSYSI_LINK_DROP : DSYSI_LINK_DELIVER;
}

static int on_reply(int tag, int64_t *delay_us) {
  int p = tag / TAG_NODES, a = tag % TAG_NODES / SIM_MAX_NODES, b = tag % SIM_MAX_NODES;
  if (fate(b, a, delay_us)) return DSYSI_LINK_DROP;
  if (p && N.probes[p - 1].node == b) {
    int64_t at = sim_now_ns() + *delay_us * 1000;
    if (at - N.probes[p - 1].sent < N.health_timeout) N.alive[b][N.nalive[b]++ % 8] = at;
  }
  return DSYSI_LINK_DELIVER;
}

/* The caller's completion callback acts for the caller's node (it runs on
 * the answering node's thread). */
static int on_enter(int tag) { return sim_node_enter(tag % TAG_NODES / SIM_MAX_NODES); }
static void on_leave(int prev) { sim_node_enter(prev); }

static const dsysi_inproc_link link_ops = {
    .request = on_request, .reply = on_reply, .enter = on_enter, .leave = on_leave};

/* A timer's callback acts for the node that added the timer (the clock's
 * one timer thread serves every node). */
static int timer_tag(void) { return sim_node_current(); }
static int timer_enter(int node) { return sim_node_enter(node); }
static const dsysi_timer_hook timer_hook = {.tag = timer_tag, .enter = timer_enter};

void sim_net_start(unsigned mask) {
  N.mask = mask;
  dsysi_inproc_link_hook = &link_ops;
  dsysi_timer_hook_ptr = &timer_hook;
}

void sim_net_counts(uint64_t *dropped, uint64_t *faults) {
  if (dropped) *dropped = N.dropped;
  if (faults) *faults = N.faults;
}

uint64_t sim_net_crashes(void) { return N.crashes; }

/* ---- the fault driver ---- */

static void vsleep_ms(int64_t ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

/* Cut a -> b until then (a cut already longer stays). */
static void cut(int a, int b, int64_t until) {
  if (N.cut[a][b] < until) N.cut[a][b] = until;
}

void sim_faults_on_crash(int (*crash)(int, int64_t, void *), void *ud) {
  N.crash = crash;
  N.crash_ud = ud;
}

int sim_net_is_down(int node) { return N.down[node]; }

void sim_net_down(int node, int down) {
  int64_t now = sim_now_ns();
  N.down[node] = down;
  if (down) {
    if (node != N.watcher) outage(node, now, INT64_MAX);
    return;
  }
  /* up again: its open-ended outage ends now */
  for (int i = 0; i < N.nout; i++)
    if (N.out[i].node == node && N.out[i].until == INT64_MAX) N.out[i].until = now;
  if (node == N.watcher) N.watch_since = now;
}

static void inject(void) {
  unsigned kinds[4];
  int nk = 0;
  if (N.mask & SIM_F_PARTITION) kinds[nk++] = SIM_F_PARTITION;
  if (N.mask & SIM_F_PAUSE) kinds[nk++] = SIM_F_PAUSE;
  if (N.mask & SIM_F_SKEW) kinds[nk++] = SIM_F_SKEW;
  if (N.npick < 2) return;
  unsigned k;
  /* A crash one time in ten: a restart costs the run seconds of outage
   * (and the simulation a new process's threads). */
  if ((N.mask & SIM_F_CRASH) && N.crash && (!nk || sim_chance(0.1))) k = SIM_F_CRASH;
  else if (nk) k = kinds[sim_rand_below(nk)];
  else return;
  int a = N.pick[sim_rand_below(N.npick)];
  int64_t now = sim_now_ns();
  N.faults++;
  if (k == SIM_F_PARTITION) {
    int64_t until = now + (200 + (int64_t)sim_rand_below(4800)) * 1000000;
    if (sim_chance(0.1)) until += (int64_t)(5000 + sim_rand_below(10000)) * 1000000; /* long */
    if (sim_chance(0.5)) { /* isolate a */
      for (int b = 1; b < sim_node_count(); b++)
        if (b != a) {
          cut(a, b, until);
          cut(b, a, until);
        }
      if (a == N.watcher) {
        for (int b = 1; b < sim_node_count(); b++) outage(b, now, until);
      } else {
        outage(a, now, until);
      }
      sim_trace("fault: %s isolated for %.3f s", sim_node_name(a), (until - now) / 1e9);
    } else {
      int b = N.pick[sim_rand_below(N.npick)];
      if (b == a) return;
      int oneway = sim_chance(0.3);
      cut(a, b, until);
      if (!oneway) cut(b, a, until);
      if (a == N.watcher) outage(b, now, until);
      if (b == N.watcher) outage(a, now, until);
      sim_trace("fault: link %s %s %s cut for %.3f s", sim_node_name(a), oneway ? "->" : "<->",
                sim_node_name(b), (until - now) / 1e9);
    }
  } else if (k == SIM_F_PAUSE) {
    int64_t d = (50 + (int64_t)sim_rand_below(2950)) * 1000000;
    sim_node_pause(a, now + d);
    if (a == N.watcher) { /* sends nothing while paused */
    } else {
      outage(a, now, now + d);
    }
  } else if (k == SIM_F_CRASH) {
    int64_t d = (200 + (int64_t)sim_rand_below(2800)) * 1000000;
    if (N.crash(a, d, N.crash_ud)) N.faults--;
    else N.crashes++;
  } else {
    int64_t s = ((int64_t)sim_rand_below(4001) - 2000) * 1000000;
    sim_node_skew(a, s);
    sim_trace("fault: %s wall clock skewed %+.3f s", sim_node_name(a), s / 1e9);
  }
}

static void *driver(void *arg) {
  (void)arg;
  while (!N.stop) {
    vsleep_ms(100 + (int64_t)sim_rand_below(900));
    /* The clients' run is bounded (each call by its deadline): faults
     * still going long after are a hang the deadline checks cannot see
     * (e.g. the clock's timer thread blocked: nothing times out). */
    if (N.limit && sim_now_ns() > N.limit)
      sim_fail("the clients' run is still going %.0f s after it began (a hang)",
               (N.limit - N.started) / 1e9);
    if (!N.stop) inject();
  }
  N.running = 0;
  return NULL;
}

void sim_faults_limit(int64_t run_ns) { N.limit = sim_now_ns() + run_ns; }

void sim_faults_start(const int *nodes, int n) {
  N.npick = n < SIM_MAX_NODES ? n : SIM_MAX_NODES;
  memcpy(N.pick, nodes, N.npick * sizeof *nodes);
  /* Every node's wall clock is a little off for the whole run (as NTP
   * leaves machines): up to 200 ms, and running up to 100 ppm fast or
   * slow; the skew fault steps it by up to 2 s more for a while. */
  if (N.mask & SIM_F_SKEW)
    for (int i = 0; i < N.npick; i++)
      sim_node_clock(N.pick[i], ((int64_t)sim_rand_below(401) - 200) * 1000000,
                     (int64_t)sim_rand_below(201) - 100);
  N.stop = 0;
  N.running = 1;
  N.started = sim_now_ns();
  int old = sim_node_enter(0);
  pthread_t th;
  pthread_create(&th, NULL, driver, NULL);
  pthread_detach(th);
  sim_node_enter(old);
}

void sim_faults_stop(void) {
  N.stop = 1;
  while (N.running) vsleep_ms(10);
  memset(N.cut, 0, sizeof N.cut);
  int64_t now = sim_now_ns();
  for (int i = 0; i < N.nout; i++)
    if (N.out[i].until > now) N.out[i].until = now;
  for (int i = 1; i < sim_node_count(); i++) {
    if (sim_node_paused(i)) sim_node_pause(i, 0);
    sim_node_skew(i, 0);
  }
  N.mask &= ~(unsigned)SIM_F_DROP;
  sim_trace("faults stopped, network healed");
}
