/*
 * Deterministic simulation runtime (tools/sim, linked into dsys-sim, the
 * simulation tests and examples/sim-*; never into libdistsys).
 *
 * The program that links it runs the library's production code unchanged:
 * this runtime defines pthread_create/join, the mutex, condition variable,
 * rwlock and once functions, clock_gettime and the sleeps, the random
 * sources (arc4random*, getrandom) and the futex system call, so that
 *   - exactly one thread runs at a time (a baton passed through one
 *     semaphore per thread), and every blocking or synchronisation point
 *     lets a seeded pseudo-random generator pick the next thread;
 *   - time is virtual: it advances only when no thread can run, jumping to
 *     the earliest timed wait (so a simulated hour takes milliseconds);
 *   - every random byte comes from the same seeded generator.
 * Same seed, same program: the same interleaving, bit for bit (checked by
 * the hash of the trace).
 *
 * Nodes: every thread belongs to a node (a simulated process); a thread
 * inherits the node of the thread that created it. A node can be paused
 * (its threads are not scheduled) and have its wall clock skewed.
 * docs/reference/simulation.md.
 */
#ifndef DSYS_SIM_H
#define DSYS_SIM_H

#include <stdint.h>
#include <stdio.h>

#define SIM_MAX_NODES 64

typedef struct sim_options {
  uint64_t seed;
  /* Probability (per mille) that a synchronisation point (mutex, rwlock,
   * condition signal) switches to another runnable thread. Default 50. */
  unsigned preempt_permille;
  /* Virtual nanoseconds one clock read costs (so loops that poll the
   * clock progress). Default 200. */
  int64_t clock_read_ns;
  /* Abort when no scheduling step happened for this many real seconds
   * (a thread blocked outside the simulation, or spinning). Default 20. */
  unsigned watchdog_s;
  /* Keep this many trace events for sim_trace_dump. Default 4096. */
  unsigned trace_keep;
  /* Echo every trace event to this file as it happens (NULL: off). */
  FILE *trace_out;
} sim_options;

/** Start the simulation in the calling (main) thread; call once, before
 *  any other thread exists. */
void sim_start(const sim_options *opts);
/** The seed given to sim_start. */
uint64_t sim_seed(void);

/** A new node named `name` (copied); returns its id (>= 1; node 0 is the
 *  world: the main thread and the shared machinery). */
int sim_node_new(const char *name);
const char *sim_node_name(int node);
int sim_node_count(void);
/** The calling thread's node; threads it creates from now on belong to
 *  `node`, and what it does counts as node's (its messages, its wall
 *  clock); pauses still follow the node it was created in (returns the
 *  previous one). */
int sim_node_current(void);
int sim_node_enter(int node);
/** Pause a node: its threads are not scheduled until virtual time `until_ns`
 *  (0: resume now). */
void sim_node_pause(int node, int64_t until_ns);
int sim_node_paused(int node);
/** Skew of a node's wall clock (CLOCK_REALTIME), nanoseconds: a step set
 *  by the skew fault (0: healed). */
void sim_node_skew(int node, int64_t skew_ns);
/** The node's own wall clock error for the whole run: an offset and a rate
 *  error (parts per million of virtual time), added to the skew. Monotonic
 *  clocks are the same on every node (docs/reference/simulation.md). */
void sim_node_clock(int node, int64_t offset_ns, int64_t drift_ppm);

/** Virtual monotonic time in nanoseconds. */
int64_t sim_now_ns(void);
/** The simulation's random stream (the one every decision draws from). */
uint64_t sim_rand(void);
/** A uniform integer in [0, n). */
uint64_t sim_rand_below(uint64_t n);
/** 1 with probability p (0..1). */
int sim_chance(double p);

/** Record a scenario event in the trace (printf format; the text is
 *  hashed). */
void sim_trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/** The running hash of every event so far (scheduling decisions, time
 *  jumps, scenario events). */
uint64_t sim_trace_hash(void);
/** Print the last `last` events kept (time, node, thread, event). */
void sim_trace_dump(FILE *f, unsigned last);

/** Real (wall-clock) monotonic time in nanoseconds, for measurements. */
int64_t sim_real_ns(void);

/** The program is ending: the watchdog stays quiet from now on. */
void sim_finishing(void);

/** Counters. */
typedef struct sim_stats {
  uint64_t switches, steps, threads, time_jumps, clock_reads;
} sim_stats;
void sim_get_stats(sim_stats *out);

/** Print the failure, the seed, the trace, and exit with status 1. */
void sim_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/** A hook run by the scheduler each time virtual time jumps forward
 *  (with the new time); used by the network model and the checkers. */
void sim_on_time(void (*fn)(int64_t now_ns, void *ud), void *ud);

#endif
