/*
 * An in-memory instance table with a change log: the whole "memory"
 * registry backend, and the local view of the "http" backend. Not
 * thread-safe: the caller serialises (the generic registry layer holds its
 * lock around backend calls; the http backend holds its own).
 */
#ifndef DSYSI_REGISTRY_TABLE_H
#define DSYSI_REGISTRY_TABLE_H

#include "resilience/registry_int.h"

typedef struct dsysi_regchg {
  uint64_t index;
  int kind;
  char *id, *type;
} dsysi_regchg;

typedef struct dsysi_regtab {
  dsys_instance **v; /* dsys_instances_copy() blocks, sorted by id */
  size_t n, cap;
  uint64_t index;    /* raised by every recorded change */
  dsysi_regchg log[DSYSI_REGISTRY_LOG_KEEP];
  size_t log_n;      /* entries in use (the newest log_n ones, a ring) */
} dsysi_regtab;

void dsysi_regtab_free(dsysi_regtab *t);
/** Position of id (or where it would go); *found says whether it is there. */
size_t dsysi_regtab_lower(const dsysi_regtab *t, const char *id, int *found);
/** Append a change to the log. @return 0 or DSYS_ENOMEM. */
int dsysi_regtab_record(dsysi_regtab *t, int kind, const char *id, const char *type);
/** Insert or replace by id, taking ownership of copy (a
 *  dsys_instances_copy() block), recording REGISTERED. On failure copy is
 *  freed. @return 0 or DSYS_ENOMEM. */
int dsysi_regtab_upsert(dsysi_regtab *t, dsys_instance *copy);
/** Remove the entry at pos, recording kind. @return 0 or DSYS_ENOMEM (then
 *  nothing changed). */
int dsysi_regtab_remove_at(dsysi_regtab *t, size_t pos, int kind);
/** Copy of one instance. @return 0, DSYS_ENOTFOUND, DSYS_ENOMEM. */
int dsysi_regtab_get(const dsysi_regtab *t, const char *id, dsys_instance **out);
/** Copies of every instance (of type, or all). @return 0, DSYS_ENOMEM. */
int dsysi_regtab_list(const dsysi_regtab *t, const char *type, dsys_instance **out,
                      size_t *n);
/** TTL and reap: instances silent since reap_before go (REAPED); healthy
 *  ones silent since unhealthy_before turn unhealthy. @return 0 or ENOMEM. */
int dsysi_regtab_expire(dsysi_regtab *t, int64_t unhealthy_before, int64_t reap_before);
/** The version-3 expiry (dsys_registry_ops.expire_ids): each instance of v
 *  whose heartbeat is still the one given is reaped or turned unhealthy.
 *  @return 0 or DSYS_ENOMEM. */
int dsysi_regtab_expire_ids(dsysi_regtab *t, const dsys_registry_expiry *v, size_t n);
/** Replay the changes after index `after`. @return 0, DSYS_ERANGE (older
 *  than the log keeps). */
int dsysi_regtab_changes(const dsysi_regtab *t, uint64_t after,
                         dsys_registry_change_fn fn, void *ctx);

#endif
