/* Group commit: leader/follower batching of many threads' operations
 * (group.h). */
#include "core/group.h"

void dsysi_group_init(dsysi_group *g, int max_batch, int max_groups,
                      dsysi_group_run_fn run, void *ud) {
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->cv, NULL);
  g->pending = NULL;
  g->tail = &g->pending;
  g->running = 0;
  g->groups = 0;
  g->max_batch = max_batch > 0 ? max_batch : 1;
  g->max_groups = max_groups > 0 ? max_groups : 1;
  g->run = run;
  g->ud = ud;
}

void dsysi_group_destroy(dsysi_group *g) {
  pthread_cond_destroy(&g->cv);
  pthread_mutex_destroy(&g->mu);
}

void dsysi_group_execute(dsysi_group *g, dsysi_group_op *first,
                         dsysi_group_op *last) {
  last->next = NULL;
  int left = 0;
  for (dsysi_group_op *o = first; o; o = o->next) {
    o->left = &left;
    left++;
  }
  pthread_mutex_lock(&g->mu);
  *g->tail = first;
  g->tail = &last->next;
  while (left > 0) {
    /* my ops may be in a group another leader is running: wait for it */
    if (g->running >= g->max_groups || !g->pending) {
      pthread_cond_wait(&g->cv, &g->mu);
      continue;
    }
    /* Become the leader for up to max_batch pending ops (mine or not). */
    dsysi_group_op *group = g->pending, **pp = &g->pending;
    int n = 0;
    while (*pp && n < g->max_batch) {
      pp = &(*pp)->next;
      n++;
    }
    g->pending = *pp;
    *pp = NULL;
    if (!g->pending) g->tail = &g->pending;
    g->running++;
    g->groups++;
    pthread_mutex_unlock(&g->mu);
    g->run(g->ud, group);
    pthread_mutex_lock(&g->mu);
    for (dsysi_group_op *o = group, *nx; o; o = nx) {
      nx = o->next; /* o may be gone once its caller's count reaches 0 */
      (*o->left)--;
    }
    g->running--;
    pthread_cond_broadcast(&g->cv);
  }
  pthread_mutex_unlock(&g->mu);
}

int dsysi_group_pending(dsysi_group *g) {
  pthread_mutex_lock(&g->mu);
  int n = 0;
  for (dsysi_group_op *o = g->pending; o; o = o->next) n++;
  pthread_mutex_unlock(&g->mu);
  return n;
}

unsigned long long dsysi_group_count(dsysi_group *g) {
  pthread_mutex_lock(&g->mu);
  unsigned long long n = g->groups;
  pthread_mutex_unlock(&g->mu);
  return n;
}
