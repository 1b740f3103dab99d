/* Rows of the SQL registry backends (sqlite, postgresql) to and from
 * instances: the part of their work that does not depend on the engine. */
#include <stdlib.h>
#include <string.h>
#include "core/internal.h"
#include "core/json.h"
#include "resilience/registry_int.h"

char *dsysi_registry_tags_json(const dsys_instance *in) {
  json_object *a = json_object_new_array();
  if (!a) return NULL;
  for (size_t i = 0; i < in->ntags; i++) {
    json_object *t = json_object_new_string(in->tags[i]);
    if (!t || json_object_array_add(a, t)) {
      json_object_put(t);
      json_object_put(a);
      return NULL;
    }
  }
  char *out = dsysi_json_dump(a, NULL);
  json_object_put(a);
  return out;
}

int dsysi_registry_rows(dsysi_registry_row_fn next, void *src, dsys_instance **out, size_t *n) {
  dsys_instance *v = NULL;
  json_object **tagobjs = NULL;
  const char ***tagv = NULL;
  size_t cnt = 0, cap = 0;
  int rc = 0, more;
  /* a row source's texts may stay valid only until its next row: keep
   * copies */
  char **strs = NULL;
  size_t nstrs = 0, capstrs = 0;
#define KEEP(dst, col)                                                        \
  do {                                                                        \
    if (dsysi_grow(&strs, &capstrs, nstrs + 1, sizeof *strs, 64)) {           \
      rc = DSYS_ENOMEM;                                                       \
      goto done;                                                              \
    }                                                                         \
    if (!(strs[nstrs] = strdup(col[(dst##_col)] ? col[(dst##_col)] : ""))) {  \
      rc = DSYS_ENOMEM;                                                       \
      goto done;                                                              \
    }                                                                         \
    d->dst = strs[nstrs++];                                                   \
  } while (0)
  enum { id_col, type_col, name_col, url_col, tags_col, metadata_col, weight_col, healthy_col,
         registered_col, heartbeat_col };
  const char *col[DSYSI_REGISTRY_NCOLS];
  while ((more = next(src, col)) > 0) {
    /* The three arrays grow from the same capacity to the same new one;
     * cap moves last, so it never exceeds any array's size. */
    size_t cap_t = cap, cap_tv = cap;
    if (dsysi_grow(&tagobjs, &cap_t, cnt + 1, sizeof *tagobjs, 16) ||
        dsysi_grow(&tagv, &cap_tv, cnt + 1, sizeof *tagv, 16) ||
        dsysi_grow(&v, &cap, cnt + 1, sizeof *v, 16)) {
      rc = DSYS_ENOMEM;
      goto done;
    }
    dsys_instance *d = &v[cnt];
    memset(d, 0, sizeof *d);
    tagobjs[cnt] = NULL;
    tagv[cnt] = NULL;
    cnt++;
    KEEP(id, col);
    KEEP(type, col);
    KEEP(name, col);
    KEEP(url, col);
    KEEP(metadata, col);
    d->weight = (uint32_t)strtoll(col[weight_col] ? col[weight_col] : "0", NULL, 10);
    d->health = col[healthy_col] && atoi(col[healthy_col]) ? DSYS_INSTANCE_HEALTHY
                                                           : DSYS_INSTANCE_UNHEALTHY;
    d->registered_ms = strtoll(col[registered_col] ? col[registered_col] : "0", NULL, 10);
    d->last_heartbeat_ms = strtoll(col[heartbeat_col] ? col[heartbeat_col] : "0", NULL, 10);
    const char *tj = col[tags_col];
    json_object *a = NULL;
    if (tj && !dsysi_json_parse(tj, strlen(tj), &a) && a &&
        json_object_is_type(a, json_type_array)) {
      size_t nt = json_object_array_length(a);
      tagobjs[cnt - 1] = a;
      tagv[cnt - 1] = calloc(nt ? nt : 1, sizeof(char *));
      if (!tagv[cnt - 1]) {
        rc = DSYS_ENOMEM;
        goto done;
      }
      size_t k = 0;
      for (size_t i = 0; i < nt; i++) {
        const char *t = json_object_get_string(json_object_array_get_idx(a, i));
        if (t) tagv[cnt - 1][k++] = t;
      }
      d->tags = tagv[cnt - 1];
      d->ntags = k;
    } else if (a) {
      json_object_put(a);
    }
  }
  if (more < 0) rc = more;
  if (!rc) rc = dsys_instances_copy(v, cnt, out);
  if (!rc) *n = cnt;
done:
#undef KEEP
  for (size_t i = 0; i < cnt; i++) {
    if (tagobjs && tagobjs[i]) json_object_put(tagobjs[i]);
    if (tagv) free(tagv[i]);
  }
  for (size_t i = 0; i < nstrs; i++) free(strs[i]);
  free(strs);
  free(tagobjs);
  free(tagv);
  free(v);
  return rc;
}
