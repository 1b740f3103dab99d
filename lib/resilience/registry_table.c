/* In-memory instance table with a change log (see registry_table.h). */
#include <stdlib.h>
#include <string.h>
#include <distsys/common.h>
#include "core/internal.h"
#include "resilience/registry_table.h"

void dsysi_regtab_free(dsysi_regtab *t) {
  for (size_t i = 0; i < t->n; i++) free(t->v[i]);
  free(t->v);
  for (size_t i = 0; i < DSYSI_REGISTRY_LOG_KEEP; i++) {
    free(t->log[i].id);
    free(t->log[i].type);
  }
  memset(t, 0, sizeof *t);
}

size_t dsysi_regtab_lower(const dsysi_regtab *t, const char *id, int *found) {
  size_t lo = 0, hi = t->n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (strcmp(t->v[mid]->id, id) < 0) lo = mid + 1;
    else hi = mid;
  }
  *found = lo < t->n && !strcmp(t->v[lo]->id, id);
  return lo;
}

int dsysi_regtab_record(dsysi_regtab *t, int kind, const char *id, const char *type) {
  char *i = strdup(id), *ty = strdup(type);
  if (!i || !ty) {
    free(i);
    free(ty);
    return DSYS_ENOMEM;
  }
  t->index++;
  dsysi_regchg *c = &t->log[t->index % DSYSI_REGISTRY_LOG_KEEP];
  free(c->id);
  free(c->type);
  c->index = t->index;
  c->kind = kind;
  c->id = i;
  c->type = ty;
  if (t->log_n < DSYSI_REGISTRY_LOG_KEEP) t->log_n++;
  return 0;
}

int dsysi_regtab_upsert(dsysi_regtab *t, dsys_instance *copy) {
  int found;
  size_t pos = dsysi_regtab_lower(t, copy->id, &found);
  if (!found && dsysi_grow(&t->v, &t->cap, t->n + 1, sizeof *t->v, 16)) {
    free(copy);
    return DSYS_ENOMEM;
  }
  int rc = dsysi_regtab_record(t, DSYS_REG_REGISTERED, copy->id, copy->type);
  if (rc) {
    free(copy);
    return rc;
  }
  if (found) {
    free(t->v[pos]);
  } else {
    memmove(&t->v[pos + 1], &t->v[pos], (t->n - pos) * sizeof *t->v);
    t->n++;
  }
  t->v[pos] = copy;
  return 0;
}

int dsysi_regtab_remove_at(dsysi_regtab *t, size_t pos, int kind) {
  int rc = dsysi_regtab_record(t, kind, t->v[pos]->id, t->v[pos]->type);
  if (rc) return rc;
  free(t->v[pos]);
  memmove(&t->v[pos], &t->v[pos + 1], (t->n - pos - 1) * sizeof *t->v);
  t->n--;
  return 0;
}

int dsysi_regtab_get(const dsysi_regtab *t, const char *id, dsys_instance **out) {
  int found;
  size_t pos = dsysi_regtab_lower(t, id, &found);
  return found ? dsys_instances_copy(t->v[pos], 1, out) : DSYS_ENOTFOUND;
}

int dsysi_regtab_list(const dsysi_regtab *t, const char *type, dsys_instance **out,
                      size_t *n) {
  dsys_instance *tmp = malloc((t->n ? t->n : 1) * sizeof *tmp);
  if (!tmp) return DSYS_ENOMEM;
  size_t k = 0;
  for (size_t i = 0; i < t->n; i++)
    if (!type || !strcmp(t->v[i]->type, type)) tmp[k++] = *t->v[i];
  int rc = dsys_instances_copy(tmp, k, out);
  free(tmp);
  if (!rc) *n = k;
  return rc;
}

int dsysi_regtab_expire(dsysi_regtab *t, int64_t unhealthy_before, int64_t reap_before) {
  for (size_t i = 0; i < t->n;) {
    dsys_instance *e = t->v[i];
    if (e->last_heartbeat_ms < reap_before) {
      int rc = dsysi_regtab_remove_at(t, i, DSYS_REG_REAPED);
      if (rc) return rc;
      continue;
    }
    if (e->health == DSYS_INSTANCE_HEALTHY && e->last_heartbeat_ms < unhealthy_before) {
      int rc = dsysi_regtab_record(t, DSYS_REG_UNHEALTHY, e->id, e->type);
      if (rc) return rc;
      e->health = DSYS_INSTANCE_UNHEALTHY;
    }
    i++;
  }
  return 0;
}

int dsysi_regtab_expire_ids(dsysi_regtab *t, const dsys_registry_expiry *v, size_t n) {
  for (size_t i = 0; i < n; i++) {
    int found;
    size_t pos = dsysi_regtab_lower(t, v[i].id, &found);
    if (!found || t->v[pos]->last_heartbeat_ms != v[i].heartbeat_ms) continue; /* gone or alive */
    dsys_instance *e = t->v[pos];
    int rc = 0;
    if (v[i].reap) {
      rc = dsysi_regtab_remove_at(t, pos, DSYS_REG_REAPED);
    } else if (e->health == DSYS_INSTANCE_HEALTHY) {
      rc = dsysi_regtab_record(t, DSYS_REG_UNHEALTHY, e->id, e->type);
      if (!rc) e->health = DSYS_INSTANCE_UNHEALTHY;
    }
    if (rc) return rc;
  }
  return 0;
}

int dsysi_regtab_changes(const dsysi_regtab *t, uint64_t after,
                         dsys_registry_change_fn fn, void *ctx) {
  if (after >= t->index) return 0;
  uint64_t oldest = t->index - t->log_n + 1;
  if (after + 1 < oldest) return DSYS_ERANGE;
  for (uint64_t i = after + 1; i <= t->index; i++) {
    const dsysi_regchg *c = &t->log[i % DSYSI_REGISTRY_LOG_KEEP];
    dsys_registry_change ch = {.index = c->index, .kind = c->kind, .id = c->id,
                               .type = c->type};
    fn(ctx, &ch);
  }
  return 0;
}
