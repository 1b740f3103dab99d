/* Small whole-file reads and atomic writes, for secrets, keys and tokens. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <distsys/util.h>
#include "core/internal.h"

int dsysi_file_read(const char *path, size_t max, const char *component,
                    char **out, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    dsysi_log(DSYS_LOG_ERROR, component, "cannot open %s: %s", path, strerror(errno));
    return DSYS_EIO;
  }
  struct stat st;
  if (fstat(fd, &st) == 0 && (st.st_mode & 077) && component)
    dsysi_log(DSYS_LOG_WARN, component,
              "%s is readable by group or others (chmod 600)", path);
  char *buf = malloc(max + 1);
  if (!buf) {
    close(fd);
    return DSYS_ENOMEM;
  }
  size_t n = 0;
  int rc = 0;
  for (;;) {
    ssize_t r = read(fd, buf + n, max + 1 - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      rc = DSYS_EIO;
      break;
    }
    if (r == 0) break;
    n += (size_t)r;
    if (n > max) {
      dsysi_log(DSYS_LOG_ERROR, component, "%s is too large (over %zu bytes)", path, max);
      rc = DSYS_EINVAL;
      break;
    }
  }
  close(fd);
  while (!rc && n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) n--;
  if (!rc && !n) {
    dsysi_log(DSYS_LOG_ERROR, component, "%s is empty", path);
    rc = DSYS_EINVAL;
  }
  if (rc) {
    explicit_bzero(buf, max + 1);
    free(buf);
    return rc;
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return 0;
}

int dsysi_file_write(const char *path, const void *data, size_t len, unsigned mode,
                     int replace, int *created) {
  size_t pl = strlen(path);
  char *tmp = malloc(pl + 40);
  if (!tmp) return DSYS_ENOMEM;
  char rnd[17];
  dsys_random_hex(rnd, sizeof rnd, 8);
  snprintf(tmp, pl + 40, "%s.tmp.%ld.%s", path, (long)getpid(), rnd);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode);
  if (fd < 0) {
    dsysi_log(DSYS_LOG_ERROR, "file", "cannot create %s: %s", tmp, strerror(errno));
    free(tmp);
    return DSYS_EIO;
  }
  /* the mode argument of open is filtered by the umask; keys must get
   * exactly what was asked */
  int rc = fchmod(fd, (mode_t)mode) == 0 && write(fd, data, len) == (ssize_t)len &&
                   fsync(fd) == 0
               ? 0
               : DSYS_EIO;
  close(fd);
  if (created) *created = 0;
  if (!rc && replace) {
    if (rename(tmp, path) == 0) {
      if (created) *created = 1;
    } else {
      rc = DSYS_EIO;
    }
  } else if (!rc) {
    /* link(2) fails with EEXIST instead of replacing: racing writers agree
     * on whichever file appeared first */
    if (link(tmp, path) == 0) {
      if (created) *created = 1;
    } else if (errno != EEXIST) {
      rc = DSYS_EIO;
    }
  }
  if (rc) dsysi_log(DSYS_LOG_ERROR, "file", "cannot write %s: %s", path, strerror(errno));
  unlink(tmp);
  free(tmp);
  return rc;
}
