/* Single-threaded event loop: epoll, timer heap, wakeup eventfd. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <distsys/common.h>
#include "core/internal.h"
#include "transport/evloop.h"

typedef struct ltimer {
  int64_t at;
  uint64_t id;
  dsysi_loop_fn fn;
  void *ud;
} ltimer;

typedef struct posted {
  dsysi_loop_fn fn;
  void *ud;
  struct posted *next;
} posted;

/* A kind's cached objects (dsysi_loop_cache): a list through each
 * object's first word. */
typedef struct lcache {
  void *head;
  unsigned n;
  void (*dtor)(void *);
} lcache;

#define MAX_KINDS 8

struct dsysi_loop {
  int ep;
  int wake_fd;
  dsysi_watch wake_w;
  ltimer *t;
  size_t nt, capt;
  uint64_t next_id;
  pthread_mutex_t mu; /* guards posted and stop */
  /* Set (after the queue or stop changed, mu released) by post and stop:
   * the loop takes mu only when something may be waiting for it. */
  atomic_int pending;
  posted *head, *tail;
  int stop;
  dsysi_tick_fn tick;
  dsysi_timeout_fn timeout;
  void *tick_ud;
  posted *on_free;
  struct llocal *locals; /* dsysi_loop_local blocks, newest first */
  lcache caches[MAX_KINDS]; /* dsysi_loop_cache, by kind slot (0: none) */
};

static _Thread_local dsysi_loop *tl_current; /* the loop this thread runs */

typedef struct llocal {
  const void *key;
  dsysi_loop_fn fini;
  struct llocal *next;
  _Alignas(16) char blk[]; /* the module's state */
} llocal;

int64_t dsysi_loop_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void drain_wake(dsysi_loop *l, int fd, uint32_t ev, void *ud) {
  uint64_t v;
  while (read(fd, &v, sizeof v) > 0) {
  }
}

int dsysi_loop_new(dsysi_loop **out) {
  dsysi_loop *l = calloc(1, sizeof *l);
  if (!l) return DSYS_ENOMEM;
  l->ep = epoll_create1(EPOLL_CLOEXEC);
  l->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (l->ep < 0 || l->wake_fd < 0) {
    if (l->ep >= 0) close(l->ep);
    if (l->wake_fd >= 0) close(l->wake_fd);
    free(l);
    return DSYS_EIO;
  }
  pthread_mutex_init(&l->mu, NULL);
  l->next_id = 1;
  l->wake_w.fd = l->wake_fd;
  l->wake_w.fn = drain_wake;
  dsysi_loop_add(l, &l->wake_w, EPOLLIN, 0);
  *out = l;
  return 0;
}

int dsysi_loop_on_free(dsysi_loop *l, dsysi_loop_fn fn, void *ud) {
  posted *p = malloc(sizeof *p);
  if (!p) return DSYS_ENOMEM;
  p->fn = fn;
  p->ud = ud;
  pthread_mutex_lock(&l->mu);
  p->next = l->on_free;
  l->on_free = p;
  pthread_mutex_unlock(&l->mu);
  return 0;
}

void *dsysi_loop_local(dsysi_loop *l, const void *key, size_t size,
                       dsysi_loop_fn fini) {
  if (!l) return NULL;
  for (llocal *x = l->locals; x; x = x->next)
    if (x->key == key) return x->blk;
  llocal *x = calloc(1, sizeof *x + size);
  if (!x) return NULL;
  x->key = key;
  x->fini = fini;
  x->next = l->locals;
  l->locals = x;
  return x->blk;
}

static atomic_int n_kinds; /* cache kinds given a slot so far */

/* The slot of a kind: given on first use, the same in every loop. */
static int kind_slot(int *kind) {
  int k = atomic_load_explicit((atomic_int *)kind, memory_order_relaxed);
  if (k) return k;
  int want = atomic_fetch_add(&n_kinds, 1) + 1, zero = 0;
  if (want >= MAX_KINDS) return 0; /* no room: never cached */
  if (!atomic_compare_exchange_strong((atomic_int *)kind, &zero, want)) return zero;
  return want;
}

void *dsysi_loop_cache_get(int *kind) {
  dsysi_loop *l = tl_current;
  int k = l ? kind_slot(kind) : 0;
  if (!k || !l->caches[k].head) return NULL;
  lcache *c = &l->caches[k];
  void *o = c->head;
  c->head = *(void **)o;
  c->n--;
  return o;
}

int dsysi_loop_cache_put(int *kind, void *obj, unsigned max, void (*dtor)(void *)) {
  dsysi_loop *l = tl_current;
  int k = l ? kind_slot(kind) : 0;
  if (!k || l->caches[k].n >= max) return -1;
  lcache *c = &l->caches[k];
  c->dtor = dtor;
  *(void **)obj = c->head;
  c->head = obj;
  c->n++;
  return 0;
}

void dsysi_loop_free(dsysi_loop *l) {
  if (!l) return;
  /* Modules' per-loop state first, newest first: a dialer's exchanges end
   * (their completions may still use older blocks). */
  while (l->locals) {
    llocal *x = l->locals;
    l->locals = x->next;
    if (x->fini) x->fini(l, x->blk);
    free(x);
  }
  for (int k = 1; k < MAX_KINDS; k++) {
    lcache *c = &l->caches[k];
    while (c->head) {
      void *o = c->head;
      c->head = *(void **)o;
      c->dtor(o);
    }
  }
  while (l->on_free) {
    posted *p = l->on_free;
    l->on_free = p->next;
    p->fn(l, p->ud);
    free(p);
  }
  close(l->ep);
  close(l->wake_fd);
  while (l->head) {
    posted *p = l->head;
    l->head = p->next;
    free(p);
  }
  free(l->t);
  pthread_mutex_destroy(&l->mu);
  free(l);
}

static int ctl(dsysi_loop *l, int op, dsysi_watch *w, uint32_t events, int et) {
  struct epoll_event ev = {.events = events | (et ? EPOLLET : 0), .data.ptr = w};
  return epoll_ctl(l->ep, op, w->fd, &ev) == 0 ? 0 : DSYS_EIO;
}

int dsysi_loop_add(dsysi_loop *l, dsysi_watch *w, uint32_t events, int et) {
  return ctl(l, EPOLL_CTL_ADD, w, events, et);
}

int dsysi_loop_mod(dsysi_loop *l, dsysi_watch *w, uint32_t events, int et) {
  return ctl(l, EPOLL_CTL_MOD, w, events, et);
}

void dsysi_loop_del(dsysi_loop *l, dsysi_watch *w) {
  epoll_ctl(l->ep, EPOLL_CTL_DEL, w->fd, NULL);
}

static void t_swap(ltimer *t, size_t a, size_t b) {
  ltimer x = t[a];
  t[a] = t[b];
  t[b] = x;
}

static int t_less(const ltimer *a, const ltimer *b) {
  return a->at < b->at || (a->at == b->at && a->id < b->id);
}

static void t_up(ltimer *t, size_t i) {
  while (i && t_less(&t[i], &t[(i - 1) / 2])) {
    t_swap(t, i, (i - 1) / 2);
    i = (i - 1) / 2;
  }
}

static void t_down(ltimer *t, size_t n, size_t i) {
  for (;;) {
    size_t a = 2 * i + 1, b = a + 1, m = i;
    if (a < n && t_less(&t[a], &t[m])) m = a;
    if (b < n && t_less(&t[b], &t[m])) m = b;
    if (m == i) return;
    t_swap(t, i, m);
    i = m;
  }
}

uint64_t dsysi_loop_timer(dsysi_loop *l, int64_t delay_us, dsysi_loop_fn fn,
                          void *ud) {
  if (dsysi_grow(&l->t, &l->capt, l->nt + 1, sizeof *l->t, 64)) return 0;
  ltimer e = {.at = dsysi_loop_now_us() + (delay_us > 0 ? delay_us : 0),
              .id = l->next_id++, .fn = fn, .ud = ud};
  l->t[l->nt] = e;
  t_up(l->t, l->nt++);
  return e.id;
}

void dsysi_loop_cancel(dsysi_loop *l, uint64_t id) {
  if (!id) return;
  for (size_t i = 0; i < l->nt; i++)
    if (l->t[i].id == id) {
      l->t[i] = l->t[--l->nt];
      if (i < l->nt) {
        t_down(l->t, l->nt, i);
        t_up(l->t, i);
      }
      return;
    }
}

int dsysi_loop_post(dsysi_loop *l, dsysi_loop_fn fn, void *ud) {
  posted *p = malloc(sizeof *p);
  if (!p) return DSYS_ENOMEM;
  p->fn = fn;
  p->ud = ud;
  p->next = NULL;
  pthread_mutex_lock(&l->mu);
  if (l->tail) l->tail->next = p;
  else l->head = p;
  l->tail = p;
  pthread_mutex_unlock(&l->mu);
  /* Only the post that raises the flag wakes the loop: the loop clears it
   * before it takes the queue and looks at it before it sleeps, so a post
   * that finds it raised is taken with the one that raised it (a batch of
   * answers from another thread costs one eventfd write, not one each). */
  if (atomic_exchange_explicit(&l->pending, 1, memory_order_acq_rel)) return 0;
  uint64_t one = 1;
  ssize_t w = write(l->wake_fd, &one, sizeof one);
  (void)w;
  return 0;
}

void dsysi_loop_set_tick(dsysi_loop *l, dsysi_tick_fn tick,
                         dsysi_timeout_fn timeout, void *ud) {
  l->tick = tick;
  l->timeout = timeout;
  l->tick_ud = ud;
}

void dsysi_loop_stop(dsysi_loop *l) {
  pthread_mutex_lock(&l->mu);
  l->stop = 1;
  pthread_mutex_unlock(&l->mu);
  atomic_store_explicit(&l->pending, 1, memory_order_release);
  uint64_t one = 1;
  ssize_t w = write(l->wake_fd, &one, sizeof one);
  (void)w;
}


dsysi_loop *dsysi_loop_current(void) { return tl_current; }

void dsysi_loop_run(dsysi_loop *l) {
  struct epoll_event evs[128];
  tl_current = l;
  for (;;) {
    /* Posted tasks first (they may resume requests). The flag is cleared
     * before the queue is taken: a post that lands in between leaves it
     * set for the next round (and its eventfd write wakes us anyway). */
    posted *p = NULL;
    int stop = 0;
    if (atomic_exchange_explicit(&l->pending, 0, memory_order_acq_rel)) {
      pthread_mutex_lock(&l->mu);
      p = l->head;
      l->head = l->tail = NULL;
      stop = l->stop;
      l->stop = 0; /* consumed: a later dsysi_loop_run runs again */
      pthread_mutex_unlock(&l->mu);
    }
    while (p) {
      posted *n = p->next;
      p->fn(l, p->ud);
      free(p);
      p = n;
    }
    if (stop) {
      tl_current = NULL;
      return;
    }
    /* Due timers. */
    int64_t now = dsysi_loop_now_us();
    while (l->nt && l->t[0].at <= now) {
      ltimer e = l->t[0];
      l->t[0] = l->t[--l->nt];
      t_down(l->t, l->nt, 0);
      e.fn(l, e.ud);
    }
    if (l->tick) l->tick(l, l->tick_ud);
    /* Sleep until the next timer, the tick's bound, or I/O. */
    int64_t wait_ms = -1;
    if (l->nt) {
      int64_t d = l->t[0].at - dsysi_loop_now_us();
      wait_ms = d <= 0 ? 0 : (d + 999) / 1000;
    }
    if (l->timeout) {
      int64_t t = l->timeout(l, l->tick_ud);
      if (t >= 0 && (wait_ms < 0 || t < wait_ms)) wait_ms = t;
    }
    if (atomic_load_explicit(&l->pending, memory_order_acquire)) wait_ms = 0;
    int n = epoll_wait(l->ep, evs, 128, wait_ms > 60000 ? 60000 : (int)wait_ms);
    if (n < 0 && errno != EINTR) {
      tl_current = NULL;
      return;
    }
    for (int i = 0; i < n; i++) {
      dsysi_watch *w = evs[i].data.ptr;
      w->fn(l, w->fd, evs[i].events, w->ud);
    }
  }
}
