/*
 * The simulated disk (disk.h): an SQLite VFS whose files live in memory,
 * one "disk" per first path component ("/db/items.sqlite" is on disk
 * "db"). Each file keeps what the OS shows (what processes read and
 * write: the page cache) and what is durable (as of its last xSync), and
 * remembers which 512-byte sectors changed since that sync. A process
 * crash (sim_disk_process_crash) only kills that process's handles: the
 * page cache survives. A power loss (sim_disk_power_loss) also puts every
 * file of the disk back to its durable image, keeping each changed sector
 * or not as the seed says (torn and reordered writes within what SQLite's
 * WAL tolerates: a sector holds its old or its newest content) and the
 * file's old or new length.
 *
 * Locks follow SQLite's unix VFS: a lock level per handle on the file
 * (shared, reserved, pending, exclusive) and the 8 shared-memory locks of
 * WAL mode, with their shared-memory regions kept in memory per file. All
 * of it runs with the baton (sched.c) and never blocks or yields, so it
 * needs no lock of its own and no scheduling point lies inside an SQLite
 * write sequence.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>
#include "disk.h"
#include "sim.h"

#define SECTOR 512
#define NSHMLOCK 8

typedef struct inode {
  char *name;
  int disk;       /* index in D.disks, -1: a temporary file (never lost) */
  unsigned char *cur, *dur;
  size_t cur_len, cur_cap, dur_len;
  size_t *dirty;  /* sectors changed since the last sync */
  size_t ndirty, dirty_cap;
  unsigned char *dmap; /* bitmap of dirty sectors */
  size_t dmap_len;
  int nref, unlinked;
  /* file locks */
  int nshared;
  void *reserved, *pending, *exclusive;
  /* WAL shared memory */
  char **shm;
  int nshm, shm_size, shm_refs; /* shm_refs: handles that mapped it */
  int shm_shared[NSHMLOCK];
  void *shm_excl[NSHMLOCK];
  struct inode *next;
} inode;

typedef struct sfile {
  sqlite3_file base;
  inode *ino;
  int lock, node, dead;
  unsigned char shm_sh, shm_ex; /* shared-memory locks held (bit per slot) */
  int shm_mapped;
  struct sfile *next_open;
} sfile;

static struct {
  inode *files;
  sfile *open;
  char disks[16][24];
  int ndisks;
  uint64_t synced, lost_sectors, kept_sectors, crashes;
} D;

static int disk_of(const char *path) {
  if (!path || path[0] != '/') return -1;
  const char *p = path + 1;
  size_t n = strcspn(p, "/");
  if (!n || !p[n] || n >= sizeof D.disks[0]) return -1;
  for (int i = 0; i < D.ndisks; i++)
    if (strlen(D.disks[i]) == n && !strncmp(D.disks[i], p, n)) return i;
  if (D.ndisks == (int)(sizeof D.disks / sizeof *D.disks)) sim_fail("too many simulated disks");
  memcpy(D.disks[D.ndisks], p, n);
  D.disks[D.ndisks][n] = 0;
  return D.ndisks++;
}

static inode *find(const char *name) {
  for (inode *i = D.files; i; i = i->next)
    if (!i->unlinked && !strcmp(i->name, name)) return i;
  return NULL;
}

static void inode_free(inode *i) {
  inode **pp = &D.files;
  while (*pp && *pp != i) pp = &(*pp)->next;
  if (*pp) *pp = i->next;
  for (int k = 0; k < i->nshm; k++) free(i->shm[k]);
  free(i->shm);
  free(i->name);
  free(i->cur);
  free(i->dur);
  free(i->dirty);
  free(i->dmap);
  free(i);
}

static void mark_dirty(inode *i, size_t from, size_t to) {
  if (i->disk < 0 || to <= from) return;
  size_t s0 = from / SECTOR, s1 = (to - 1) / SECTOR;
  if (s1 / 8 + 1 > i->dmap_len) {
    size_t n = (s1 / 8 + 1) * 2;
    i->dmap = realloc(i->dmap, n);
    memset(i->dmap + i->dmap_len, 0, n - i->dmap_len);
    i->dmap_len = n;
  }
  for (size_t s = s0; s <= s1; s++) {
    if (i->dmap[s / 8] & (1u << (s % 8))) continue;
    i->dmap[s / 8] |= (unsigned char)(1u << (s % 8));
    if (i->ndirty == i->dirty_cap) {
      i->dirty_cap = i->dirty_cap ? i->dirty_cap * 2 : 64;
      i->dirty = realloc(i->dirty, i->dirty_cap * sizeof *i->dirty);
    }
    i->dirty[i->ndirty++] = s;
  }
}

static void clear_dirty(inode *i) {
  for (size_t k = 0; k < i->ndirty; k++) i->dmap[i->dirty[k] / 8] = 0;
  i->ndirty = 0;
}

static void ensure_cap(unsigned char **buf, size_t *cap, size_t need) {
  if (need <= *cap) return;
  size_t n = *cap ? *cap : 4096;
  while (n < need) n *= 2;
  *buf = realloc(*buf, n);
  memset(*buf + *cap, 0, n - *cap);
  *cap = n;
}

/* The durable image becomes what the OS shows: only the sectors changed
 * since the last sync are copied. */
static void sync_inode(inode *i) {
  unsigned char *d = realloc(i->dur, i->cur_len ? i->cur_len : 1);
  if (!d) abort();
  if (i->cur_len > i->dur_len) memset(d + i->dur_len, 0, i->cur_len - i->dur_len);
  i->dur = d;
  for (size_t k = 0; k < i->ndirty; k++) {
    size_t off = i->dirty[k] * SECTOR;
    if (off >= i->cur_len) continue;
    size_t n = i->cur_len - off < SECTOR ? i->cur_len - off : SECTOR;
    memcpy(d + off, i->cur + off, n);
  }
  i->dur_len = i->cur_len;
  clear_dirty(i);
  D.synced++;
}

/* ---- io methods ---- */

static int x_close(sqlite3_file *f) {
  sfile *s = (sfile *)f;
  inode *i = s->ino;
  if (!i) return SQLITE_OK;
  if (s->lock >= SQLITE_LOCK_SHARED && !s->dead) i->nshared--;
  if (i->reserved == s) i->reserved = NULL;
  if (i->pending == s) i->pending = NULL;
  if (i->exclusive == s) i->exclusive = NULL;
  for (int k = 0; k < NSHMLOCK; k++) {
    if ((s->shm_sh & (1u << k)) && !s->dead) i->shm_shared[k]--;
    if (i->shm_excl[k] == s) i->shm_excl[k] = NULL;
  }
  if (s->shm_mapped) i->shm_refs--;
  sfile **pp = &D.open;
  while (*pp && *pp != s) pp = &(*pp)->next_open;
  if (*pp) *pp = s->next_open;
  s->ino = NULL;
  if (--i->nref == 0 && (i->unlinked || i->disk < 0)) inode_free(i);
  return SQLITE_OK;
}

static int x_read(sqlite3_file *f, void *buf, int amt, sqlite3_int64 off) {
  sfile *s = (sfile *)f;
  inode *i = s->ino;
  if (s->dead) return SQLITE_IOERR_READ;
  size_t have = (size_t)off < i->cur_len ? i->cur_len - (size_t)off : 0;
  size_t n = have < (size_t)amt ? have : (size_t)amt;
  if (n) memcpy(buf, i->cur + off, n);
  if (n < (size_t)amt) {
    memset((char *)buf + n, 0, (size_t)amt - n);
    return SQLITE_IOERR_SHORT_READ;
  }
  return SQLITE_OK;
}

static int x_write(sqlite3_file *f, const void *buf, int amt, sqlite3_int64 off) {
  sfile *s = (sfile *)f;
  inode *i = s->ino;
  if (s->dead) return SQLITE_IOERR_WRITE;
  size_t end = (size_t)off + (size_t)amt;
  ensure_cap(&i->cur, &i->cur_cap, end);
  if ((size_t)off > i->cur_len) mark_dirty(i, i->cur_len, (size_t)off);
  memcpy(i->cur + off, buf, (size_t)amt);
  if (end > i->cur_len) i->cur_len = end;
  mark_dirty(i, (size_t)off, end);
  return SQLITE_OK;
}

static int x_truncate(sqlite3_file *f, sqlite3_int64 size) {
  sfile *s = (sfile *)f;
  inode *i = s->ino;
  if (s->dead) return SQLITE_IOERR_TRUNCATE;
  if ((size_t)size < i->cur_len) {
    memset(i->cur + size, 0, i->cur_len - (size_t)size);
    /* the cut sectors count as changed: a power loss may keep them */
    mark_dirty(i, (size_t)size, i->cur_len);
    i->cur_len = (size_t)size;
  } else if ((size_t)size > i->cur_len) {
    ensure_cap(&i->cur, &i->cur_cap, (size_t)size);
    mark_dirty(i, i->cur_len, (size_t)size);
    i->cur_len = (size_t)size;
  }
  return SQLITE_OK;
}

static int x_sync(sqlite3_file *f, int flags) {
  (void)flags;
  sfile *s = (sfile *)f;
  if (s->dead) return SQLITE_IOERR_FSYNC;
  if (s->ino->disk >= 0) sync_inode(s->ino);
  return SQLITE_OK;
}

static int x_size(sqlite3_file *f, sqlite3_int64 *out) {
  sfile *s = (sfile *)f;
  if (s->dead) return SQLITE_IOERR_FSTAT;
  *out = (sqlite3_int64)s->ino->cur_len;
  return SQLITE_OK;
}

static int x_lock(sqlite3_file *f, int lvl) {
  sfile *s = (sfile *)f;
  inode *i = s->ino;
  if (s->dead) return SQLITE_IOERR_LOCK;
  if (s->lock >= lvl) return SQLITE_OK;
  if (lvl == SQLITE_LOCK_SHARED) {
    if ((i->pending && i->pending != s) || (i->exclusive && i->exclusive != s)) return SQLITE_BUSY;
    i->nshared++;
    s->lock = SQLITE_LOCK_SHARED;
    return SQLITE_OK;
  }
  if (lvl == SQLITE_LOCK_RESERVED) {
    if (i->reserved && i->reserved != s) return SQLITE_BUSY;
    if (i->pending && i->pending != s) return SQLITE_BUSY;
    i->reserved = s;
    s->lock = SQLITE_LOCK_RESERVED;
    return SQLITE_OK;
  }
  /* EXCLUSIVE (PENDING is never asked for directly) */
  if (i->pending && i->pending != s) return SQLITE_BUSY;
  if (s->lock < SQLITE_LOCK_RESERVED && i->reserved && i->reserved != s) return SQLITE_BUSY;
  i->pending = s;
  if (i->nshared > 1) {
    s->lock = SQLITE_LOCK_PENDING;
    return SQLITE_BUSY;
  }
  i->exclusive = s;
  s->lock = SQLITE_LOCK_EXCLUSIVE;
  return SQLITE_OK;
}

static int x_unlock(sqlite3_file *f, int lvl) {
  sfile *s = (sfile *)f;
  inode *i = s->ino;
  if (s->lock <= lvl) return SQLITE_OK;
  if (i->reserved == s) i->reserved = NULL;
  if (i->pending == s) i->pending = NULL;
  if (i->exclusive == s) i->exclusive = NULL;
  if (lvl == SQLITE_LOCK_NONE && !s->dead) i->nshared--;
  s->lock = lvl;
  return SQLITE_OK;
}

static int x_check_reserved(sqlite3_file *f, int *out) {
  sfile *s = (sfile *)f;
  if (s->dead) return SQLITE_IOERR_CHECKRESERVEDLOCK;
  *out = s->ino->reserved || s->ino->pending || s->ino->exclusive;
  return SQLITE_OK;
}

static int x_fcntl(sqlite3_file *f, int op, void *arg) {
  (void)f;
  (void)op;
  (void)arg;
  return SQLITE_NOTFOUND;
}

static int x_sector(sqlite3_file *f) {
  (void)f;
  return 4096;
}

static int x_devchar(sqlite3_file *f) {
  (void)f;
  /* as the unix VFS reports by default: a write damages no byte outside
   * the range written (a sector holds its old or its new content) */
  return SQLITE_IOCAP_POWERSAFE_OVERWRITE;
}

static int x_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **pp) {
  sfile *s = (sfile *)f;
  inode *i = s->ino;
  *pp = NULL;
  if (s->dead) return SQLITE_IOERR_SHMMAP;
  if (!s->shm_mapped) {
    s->shm_mapped = 1;
    i->shm_refs++;
  }
  if (i->nshm && i->shm_size != size) return SQLITE_IOERR_SHMSIZE;
  i->shm_size = size;
  if (region >= i->nshm) {
    if (!extend) return SQLITE_OK;
    i->shm = realloc(i->shm, (size_t)(region + 1) * sizeof *i->shm);
    for (int k = i->nshm; k <= region; k++) i->shm[k] = calloc(1, (size_t)size);
    i->nshm = region + 1;
  }
  *pp = i->shm[region];
  return SQLITE_OK;
}

static int x_shm_lock(sqlite3_file *f, int ofs, int n, int flags) {
  sfile *s = (sfile *)f;
  inode *i = s->ino;
  if (flags & SQLITE_SHM_UNLOCK) {
    for (int k = ofs; k < ofs + n; k++) {
      if (s->shm_sh & (1u << k)) {
        s->shm_sh &= (unsigned char)~(1u << k);
        if (!s->dead) i->shm_shared[k]--;
      }
      if (s->shm_ex & (1u << k)) {
        s->shm_ex &= (unsigned char)~(1u << k);
        if (i->shm_excl[k] == s) i->shm_excl[k] = NULL;
      }
    }
    return SQLITE_OK;
  }
  /* a dead process takes no lock: it can no longer read or write */
  if (s->dead) return SQLITE_IOERR_SHMLOCK;
  if (flags & SQLITE_SHM_SHARED) {
    int k = ofs; /* n is 1 for shared locks */
    if (s->shm_sh & (1u << k)) return SQLITE_OK;
    if (i->shm_excl[k] && i->shm_excl[k] != s) return SQLITE_BUSY;
    i->shm_shared[k]++;
    s->shm_sh |= (unsigned char)(1u << k);
    return SQLITE_OK;
  }
  for (int k = ofs; k < ofs + n; k++) {
    if (i->shm_excl[k] && i->shm_excl[k] != s) return SQLITE_BUSY;
    if (i->shm_shared[k] - ((s->shm_sh >> k) & 1) > 0) return SQLITE_BUSY;
  }
  for (int k = ofs; k < ofs + n; k++) {
    i->shm_excl[k] = s;
    s->shm_ex |= (unsigned char)(1u << k);
  }
  return SQLITE_OK;
}

static void x_shm_barrier(sqlite3_file *f) { (void)f; }

static int x_shm_unmap(sqlite3_file *f, int del) {
  sfile *s = (sfile *)f;
  inode *i = s->ino;
  x_shm_lock(f, 0, NSHMLOCK, SQLITE_SHM_UNLOCK | SQLITE_SHM_EXCLUSIVE);
  if (s->shm_mapped) {
    s->shm_mapped = 0;
    i->shm_refs--;
  }
  /* As the unix VFS: the memory goes with its last mapping (a dead
   * handle not yet closed may still read it), the file when asked. */
  if (del && !i->shm_refs) {
    for (int k = 0; k < i->nshm; k++) free(i->shm[k]);
    free(i->shm);
    i->shm = NULL;
    i->nshm = 0;
  }
  return SQLITE_OK;
}

static const sqlite3_io_methods io = {
    .iVersion = 2,
    .xClose = x_close,
    .xRead = x_read,
    .xWrite = x_write,
    .xTruncate = x_truncate,
    .xSync = x_sync,
    .xFileSize = x_size,
    .xLock = x_lock,
    .xUnlock = x_unlock,
    .xCheckReservedLock = x_check_reserved,
    .xFileControl = x_fcntl,
    .xSectorSize = x_sector,
    .xDeviceCharacteristics = x_devchar,
    .xShmMap = x_shm_map,
    .xShmLock = x_shm_lock,
    .xShmBarrier = x_shm_barrier,
    .xShmUnmap = x_shm_unmap,
};

/* ---- the VFS ---- */

static int v_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *oflags) {
  (void)vfs;
  sfile *s = (sfile *)f;
  memset(s, 0, sizeof *s);
  inode *i = name ? find(name) : NULL;
  if (!i) {
    if (!(flags & SQLITE_OPEN_CREATE) && name) return SQLITE_CANTOPEN;
    i = calloc(1, sizeof *i);
    static unsigned anon;
    char tmp[32];
    if (!name) snprintf(tmp, sizeof tmp, "/tmp/anon-%u", ++anon);
    i->name = strdup(name ? name : tmp);
    i->disk = name ? disk_of(name) : -1;
    i->next = D.files;
    D.files = i;
  }
  i->nref++;
  s->ino = i;
  s->node = sim_node_current();
  s->next_open = D.open;
  D.open = s;
  s->base.pMethods = &io;
  if (oflags) *oflags = flags;
  return SQLITE_OK;
}

static int v_delete(sqlite3_vfs *vfs, const char *name, int syncdir) {
  (void)vfs;
  (void)syncdir;
  inode *i = find(name);
  if (!i) return SQLITE_IOERR_DELETE_NOENT;
  /* A deletion is durable at once (simplification, documented). */
  i->unlinked = 1;
  if (!i->nref) inode_free(i);
  return SQLITE_OK;
}

static int v_access(sqlite3_vfs *vfs, const char *name, int flags, int *out) {
  (void)vfs;
  (void)flags;
  *out = find(name) != NULL;
  return SQLITE_OK;
}

static int v_fullpath(sqlite3_vfs *vfs, const char *name, int n, char *out) {
  (void)vfs;
  snprintf(out, (size_t)n, "%s", name);
  return SQLITE_OK;
}

static int v_random(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  for (int k = 0; k < n; k++) out[k] = (char)sim_rand();
  return n;
}

static int v_sleep(sqlite3_vfs *vfs, int us) {
  (void)vfs;
  usleep((useconds_t)us);
  return us;
}

static int v_time64(sqlite3_vfs *vfs, sqlite3_int64 *out) {
  (void)vfs;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  *out = (sqlite3_int64)210866760000000LL + (sqlite3_int64)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  return SQLITE_OK;
}

static int v_time(sqlite3_vfs *vfs, double *out) {
  sqlite3_int64 t;
  v_time64(vfs, &t);
  *out = t / 86400000.0;
  return SQLITE_OK;
}

static int v_lasterr(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  if (n > 0) out[0] = 0;
  return 0;
}

static sqlite3_vfs vfs = {
    .iVersion = 2,
    .szOsFile = sizeof(sfile),
    .mxPathname = 512,
    .zName = "simdisk",
    .xOpen = v_open,
    .xDelete = v_delete,
    .xAccess = v_access,
    .xFullPathname = v_fullpath,
    .xRandomness = v_random,
    .xSleep = v_sleep,
    .xCurrentTime = v_time,
    .xGetLastError = v_lasterr,
    .xCurrentTimeInt64 = v_time64,
};

void sim_disk_counts(uint64_t *syncs, uint64_t *power_losses) {
  if (syncs) *syncs = D.synced;
  if (power_losses) *power_losses = D.crashes;
}

size_t sim_disk_bytes(void) {
  size_t n = 0;
  for (inode *i = D.files; i; i = i->next)
    n += i->cur_cap + i->dur_len + (size_t)i->nshm * (size_t)i->shm_size + i->dmap_len +
         i->dirty_cap * sizeof *i->dirty;
  return n;
}

void sim_disk_install(void) {
  if (sqlite3_vfs_register(&vfs, 1) != SQLITE_OK) sim_fail("register the simulated disk");
}

int sim_disk_process_crash(int node) {
  int n = 0;
  for (sfile *s = D.open; s; s = s->next_open) {
    if (s->node != node || s->dead) continue;
    /* The OS releases a dead process's locks; its handles do nothing
     * from now on (the process's threads are torn down after the crash). */
    inode *i = s->ino;
    if (s->lock >= SQLITE_LOCK_SHARED) i->nshared--;
    if (i->reserved == s) i->reserved = NULL;
    if (i->pending == s) i->pending = NULL;
    if (i->exclusive == s) i->exclusive = NULL;
    for (int k = 0; k < NSHMLOCK; k++) {
      if (s->shm_sh & (1u << k)) i->shm_shared[k]--;
      if (i->shm_excl[k] == s) i->shm_excl[k] = NULL;
    }
    s->dead = 1;
    n++;
  }
  return n;
}

int sim_disk_id(const char *name) {
  for (int i = 0; i < D.ndisks; i++)
    if (!strcmp(D.disks[i], name)) return i;
  return -1;
}

void sim_disk_power_loss(int disk) {
  /* The processes using the disk's files are crashed by the caller first
   * (sim_disk_process_crash): no live handle may remain. */
  for (sfile *s = D.open; s; s = s->next_open)
    if (s->ino->disk == disk && !s->dead)
      sim_fail("power loss of disk %s with a live handle on %s (node %s)", D.disks[disk],
               s->ino->name, sim_node_name(s->node));
  /* How much of what was not synced reached the platters: nothing, all,
   * or each sector by chance. */
  unsigned mode = (unsigned)sim_rand_below(3);
  uint64_t kept = 0, lost = 0;
  for (inode *i = D.files; i; i = i->next) {
    if (i->disk != disk) continue;
    size_t len = mode == 1 || (mode == 2 && sim_chance(0.5)) ? i->cur_len : i->dur_len;
    unsigned char *img = calloc(1, len ? len : 1);
    memcpy(img, i->dur, i->dur_len < len ? i->dur_len : len);
    for (size_t k = 0; k < i->ndirty; k++) {
      size_t off = i->dirty[k] * SECTOR;
      if (off >= len) continue;
      size_t n = len - off < SECTOR ? len - off : SECTOR;
      int keep = mode == 1 || (mode == 2 && sim_chance(0.5));
      if (keep) {
        /* the newest content (zeros past the end of what the OS shows) */
        size_t have = off < i->cur_len ? i->cur_len - off : 0;
        memcpy(img + off, i->cur + off, have < n ? have : n);
        if (have < n) memset(img + off + have, 0, n - have);
        kept++;
      } else {
        lost++;
      }
    }
    free(i->cur);
    i->cur = img;
    i->cur_cap = len ? len : 1;
    i->cur_len = len;
    free(i->dur);
    i->dur = malloc(len ? len : 1);
    memcpy(i->dur, img, len);
    i->dur_len = len;
    clear_dirty(i);
    /* Shared memory does not survive a reboot: zeroed (not freed: the
     * dead handles, not yet closed, still have it mapped). */
    for (int k = 0; k < i->nshm; k++) memset(i->shm[k], 0, (size_t)i->shm_size);
  }
  D.crashes++;
  D.kept_sectors += kept;
  D.lost_sectors += lost;
  sim_trace("disk %s: power loss (%s): %llu unsynced sectors kept, %llu lost", D.disks[disk],
            mode == 0 ? "nothing unsynced kept" : mode == 1 ? "all kept" : "each by chance",
            (unsigned long long)kept, (unsigned long long)lost);
}
