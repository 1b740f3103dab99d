/* Registry backend "memory": instances of this handle only, in an
 * in-memory table (registry_table.c). */
#include <stdlib.h>
#include <string.h>
#include "core/internal.h"
#include "core/plugin.h"
#include "resilience/registry_table.h"

typedef struct mem_state {
  dsysi_regtab t;
} mem_state;

static int mem_open(void *st, const char *target, char *err, size_t errlen) {
  (void)st, (void)target, (void)err, (void)errlen;
  return 0;
}

static void mem_close(void *vst) { dsysi_regtab_free(&((mem_state *)vst)->t); }

static int mem_put(void *vst, const dsys_instance *in, int64_t now) {
  mem_state *s = vst;
  dsys_instance *copy;
  int rc = dsys_instances_copy(in, 1, &copy);
  if (rc) return rc;
  copy->registered_ms = copy->last_heartbeat_ms = now;
  copy->health = DSYS_INSTANCE_HEALTHY;
  return dsysi_regtab_upsert(&s->t, copy);
}

static int mem_heartbeat(void *vst, const char *id, int64_t now) {
  mem_state *s = vst;
  int found;
  size_t pos = dsysi_regtab_lower(&s->t, id, &found);
  if (!found) return DSYS_ENOTFOUND;
  dsys_instance *e = s->t.v[pos];
  if (e->health != DSYS_INSTANCE_HEALTHY) {
    int rc = dsysi_regtab_record(&s->t, DSYS_REG_HEALTHY, e->id, e->type);
    if (rc) return rc;
    e->health = DSYS_INSTANCE_HEALTHY;
  }
  e->last_heartbeat_ms = now;
  return 0;
}

static int mem_remove(void *vst, const char *id) {
  mem_state *s = vst;
  int found;
  size_t pos = dsysi_regtab_lower(&s->t, id, &found);
  return found ? dsysi_regtab_remove_at(&s->t, pos, DSYS_REG_DEREGISTERED) : DSYS_ENOTFOUND;
}

static int mem_get(void *vst, const char *id, dsys_instance **out) {
  return dsysi_regtab_get(&((mem_state *)vst)->t, id, out);
}

static int mem_list(void *vst, const char *type, dsys_instance **out, size_t *n) {
  return dsysi_regtab_list(&((mem_state *)vst)->t, type, out, n);
}

static int mem_expire(void *vst, int64_t unhealthy_before, int64_t reap_before) {
  return dsysi_regtab_expire(&((mem_state *)vst)->t, unhealthy_before, reap_before);
}

static int mem_expire_ids(void *vst, const dsys_registry_expiry *v, size_t n) {
  return dsysi_regtab_expire_ids(&((mem_state *)vst)->t, v, n);
}

static int mem_index(void *vst, uint64_t *out) {
  *out = ((mem_state *)vst)->t.index;
  return 0;
}

static int mem_changes(void *vst, uint64_t after, dsys_registry_change_fn fn,
                       void *ctx) {
  return dsysi_regtab_changes(&((mem_state *)vst)->t, after, fn, ctx);
}

static const dsys_registry_ops memory_ops = {
    .version = DSYS_REGISTRY_OPS_VERSION,
    .name = "memory",
    .state_size = sizeof(mem_state),
    .open = mem_open,
    .close = mem_close,
    .put = mem_put,
    .heartbeat = mem_heartbeat,
    .remove = mem_remove,
    .get = mem_get,
    .list = mem_list,
    .expire = mem_expire,
    .index = mem_index,
    .changes = mem_changes,
    .expire_ids = mem_expire_ids,
};
DSYSI_PLUGINS(registry_memory) = {{"registry", &memory_ops}, {0}};
