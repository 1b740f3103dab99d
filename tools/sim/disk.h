/*
 * The simulated disk (tools/sim/disk.c): an SQLite VFS, registered as the
 * default, that keeps files in memory per disk (the first component of the
 * path: "/db/items.sqlite" is on disk "db"), separates what was written
 * from what was synced, and loses what was not synced on a power loss.
 * docs/reference/simulation.md.
 */
#ifndef DSYS_SIM_DISK_H
#define DSYS_SIM_DISK_H

#include <stddef.h>
#include <stdint.h>

/** Register the VFS as SQLite's default; call before any database opens. */
void sim_disk_install(void);
/** The process of `node` crashed: its file handles do nothing from now on
 *  and their locks are released (the page cache survives). Returns how
 *  many handles it had. */
int sim_disk_process_crash(int node);
/** The disk's id (-1: no file on it yet). */
int sim_disk_id(const char *name);
/** Power loss of a disk: every file goes back to its last synced image
 *  plus, as the seed says, some of the sectors written since (each keeps
 *  its old or its newest content) and its old or new length; shared memory
 *  is cleared. Every process with a handle on it must have crashed. */
void sim_disk_power_loss(int disk);
/** Bytes the disks' files hold in memory (the heap checker leaves them
 *  out: they are not the processes' memory). */
size_t sim_disk_bytes(void);
/** Counters: syncs done, power losses. */
void sim_disk_counts(uint64_t *syncs, uint64_t *power_losses);

#endif
