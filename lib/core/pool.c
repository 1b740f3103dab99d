/* A small fixed thread pool for blocking work (password hashing). */
#include <pthread.h>
#include <stdlib.h>
#include <distsys/common.h>
#include "core/pool.h"

typedef struct task {
  dsysi_task_fn fn;
  void *arg;
  struct task *next;
} task;

struct dsysi_pool {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  task *head, *tail;
  int stopping;
  unsigned n;
  pthread_t *threads;
};

static void *pool_main(void *arg) {
  dsysi_pool *p = arg;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->head && !p->stopping) pthread_cond_wait(&p->cv, &p->mu);
    task *t = p->head;
    if (!t) break; /* stopping and drained */
    p->head = t->next;
    if (!p->head) p->tail = NULL;
    pthread_mutex_unlock(&p->mu);
    t->fn(t->arg);
    free(t);
    pthread_mutex_lock(&p->mu);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

int dsysi_pool_new(dsysi_pool **out, unsigned n, const char *name) {
  (void)name;
  if (!out || n == 0 || n > 256) return DSYS_EINVAL;
  dsysi_pool *p = calloc(1, sizeof *p);
  if (!p) return DSYS_ENOMEM;
  p->threads = calloc(n, sizeof *p->threads);
  if (!p->threads) {
    free(p);
    return DSYS_ENOMEM;
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  for (unsigned i = 0; i < n; i++) {
    if (pthread_create(&p->threads[i], NULL, pool_main, p)) {
      p->n = i;
      dsysi_pool_free(p);
      return DSYS_ENOMEM;
    }
    p->n = i + 1;
  }
  *out = p;
  return 0;
}

int dsysi_pool_submit(dsysi_pool *p, dsysi_task_fn fn, void *arg) {
  task *t = calloc(1, sizeof *t);
  if (!t) return DSYS_ENOMEM;
  t->fn = fn;
  t->arg = arg;
  pthread_mutex_lock(&p->mu);
  if (p->stopping) {
    pthread_mutex_unlock(&p->mu);
    free(t);
    return DSYS_ESTOPPED;
  }
  if (p->tail) p->tail->next = t;
  else p->head = t;
  p->tail = t;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
  return 0;
}

void dsysi_pool_free(dsysi_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stopping = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  for (unsigned i = 0; i < p->n; i++) pthread_join(p->threads[i], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p->threads);
  free(p);
}
