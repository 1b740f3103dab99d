/* Registry backend "memory": instances of this handle only. */
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "resilience/registry-int.h"

typedef struct mchg {
  uint64_t index;
  int kind;
  char *id, *type;
} mchg;

typedef struct mem_state {
  dsys_instance **v; /* each one a dsys_instances_copy() block; sorted by id */
  size_t n, cap;
  uint64_t index;
  mchg log[DSYSI_REGISTRY_LOG_KEEP];
  size_t log_n; /* entries in use (the newest log_n ones, ring) */
} mem_state;

static int mem_open(void *st, const char *target, char *err, size_t errlen) {
  (void)st, (void)target, (void)err, (void)errlen;
  return 0;
}

static void mem_close(void *vst) {
  mem_state *s = vst;
  for (size_t i = 0; i < s->n; i++) free(s->v[i]);
  free(s->v);
  for (size_t i = 0; i < DSYSI_REGISTRY_LOG_KEEP; i++) {
    free(s->log[i].id);
    free(s->log[i].type);
  }
}

static size_t lower(mem_state *s, const char *id, int *found) {
  size_t lo = 0, hi = s->n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(s->v[mid]->id, id);
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  *found = lo < s->n && !strcmp(s->v[lo]->id, id);
  return lo;
}

static int record(mem_state *s, int kind, const char *id, const char *type) {
  char *i = strdup(id), *t = strdup(type);
  if (!i || !t) {
    free(i);
    free(t);
    return DSYS_ENOMEM;
  }
  s->index++;
  mchg *c = &s->log[s->index % DSYSI_REGISTRY_LOG_KEEP];
  free(c->id);
  free(c->type);
  c->index = s->index;
  c->kind = kind;
  c->id = i;
  c->type = t;
  if (s->log_n < DSYSI_REGISTRY_LOG_KEEP) s->log_n++;
  return 0;
}

static int mem_put(void *vst, const dsys_instance *in, int64_t now) {
  mem_state *s = vst;
  dsys_instance *copy;
  int rc = dsys_instances_copy(in, 1, &copy);
  if (rc) return rc;
  copy->registered_ms = copy->last_heartbeat_ms = now;
  copy->health = DSYS_INSTANCE_HEALTHY;
  int found;
  size_t pos = lower(s, in->id, &found);
  if (!found && s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 16;
    dsys_instance **nv = realloc(s->v, cap * sizeof *nv);
    if (!nv) {
      free(copy);
      return DSYS_ENOMEM;
    }
    s->v = nv;
    s->cap = cap;
  }
  if ((rc = record(s, DSYS_REG_REGISTERED, copy->id, copy->type))) {
    free(copy);
    return rc;
  }
  if (found) {
    free(s->v[pos]);
  } else {
    memmove(&s->v[pos + 1], &s->v[pos], (s->n - pos) * sizeof *s->v);
    s->n++;
  }
  s->v[pos] = copy;
  return 0;
}

static int mem_heartbeat(void *vst, const char *id, int64_t now) {
  mem_state *s = vst;
  int found;
  size_t pos = lower(s, id, &found);
  if (!found) return DSYS_ENOTFOUND;
  dsys_instance *e = s->v[pos];
  if (e->health != DSYS_INSTANCE_HEALTHY) {
    int rc = record(s, DSYS_REG_HEALTHY, e->id, e->type);
    if (rc) return rc;
    e->health = DSYS_INSTANCE_HEALTHY;
  }
  e->last_heartbeat_ms = now;
  return 0;
}

static int remove_at(mem_state *s, size_t pos, int kind) {
  int rc = record(s, kind, s->v[pos]->id, s->v[pos]->type);
  if (rc) return rc;
  free(s->v[pos]);
  memmove(&s->v[pos], &s->v[pos + 1], (s->n - pos - 1) * sizeof *s->v);
  s->n--;
  return 0;
}

static int mem_remove(void *vst, const char *id) {
  mem_state *s = vst;
  int found;
  size_t pos = lower(s, id, &found);
  return found ? remove_at(s, pos, DSYS_REG_DEREGISTERED) : DSYS_ENOTFOUND;
}

static int mem_get(void *vst, const char *id, dsys_instance **out) {
  mem_state *s = vst;
  int found;
  size_t pos = lower(s, id, &found);
  if (!found) return DSYS_ENOTFOUND;
  return dsys_instances_copy(s->v[pos], 1, out);
}

static int mem_list(void *vst, const char *type, dsys_instance **out, size_t *n) {
  mem_state *s = vst;
  dsys_instance *tmp = malloc((s->n ? s->n : 1) * sizeof *tmp);
  if (!tmp) return DSYS_ENOMEM;
  size_t k = 0;
  for (size_t i = 0; i < s->n; i++)
    if (!type || !strcmp(s->v[i]->type, type)) tmp[k++] = *s->v[i];
  int rc = dsys_instances_copy(tmp, k, out);
  free(tmp);
  if (!rc) *n = k;
  return rc;
}

static int mem_expire(void *vst, int64_t unhealthy_before, int64_t reap_before) {
  mem_state *s = vst;
  for (size_t i = 0; i < s->n;) {
    dsys_instance *e = s->v[i];
    if (e->last_heartbeat_ms < reap_before) {
      int rc = remove_at(s, i, DSYS_REG_REAPED);
      if (rc) return rc;
      continue;
    }
    if (e->health == DSYS_INSTANCE_HEALTHY && e->last_heartbeat_ms < unhealthy_before) {
      int rc = record(s, DSYS_REG_UNHEALTHY, e->id, e->type);
      if (rc) return rc;
      e->health = DSYS_INSTANCE_UNHEALTHY;
    }
    i++;
  }
  return 0;
}

static int mem_index(void *vst, uint64_t *out) {
  *out = ((mem_state *)vst)->index;
  return 0;
}

static int mem_changes(void *vst, uint64_t after, dsys_registry_change_fn fn,
                       void *ctx) {
  mem_state *s = vst;
  if (after >= s->index) return 0;
  uint64_t oldest = s->index - s->log_n + 1;
  if (after + 1 < oldest) return DSYS_ERANGE;
  for (uint64_t i = after + 1; i <= s->index; i++) {
    const mchg *c = &s->log[i % DSYSI_REGISTRY_LOG_KEEP];
    dsys_registry_change ch = {.index = c->index, .kind = c->kind, .id = c->id,
                               .type = c->type};
    fn(ctx, &ch);
  }
  return 0;
}

const dsys_registry_ops dsysi_registry_memory_ops = {
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
};
