/* The JWT secret of the auth service: a file, the environment, or a file
 * generated once beside the database and shared by every instance. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <distsys/services.h>
#include <distsys/util.h>
#include "core/internal.h"

#define MAX_SECRET 4096

static int read_secret(const char *path, char **out, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    dsysi_log(DSYS_LOG_ERROR, "auth", "cannot open secret file %s: %s", path,
              strerror(errno));
    return DSYS_EIO;
  }
  struct stat st;
  if (fstat(fd, &st) == 0 && (st.st_mode & 077))
    dsysi_log(DSYS_LOG_WARN, "auth",
              "secret file %s is readable by group or others (chmod 600)", path);
  char *buf = malloc(MAX_SECRET + 1);
  if (!buf) {
    close(fd);
    return DSYS_ENOMEM;
  }
  size_t n = 0;
  for (;;) {
    ssize_t r = read(fd, buf + n, MAX_SECRET + 1 - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      close(fd);
      free(buf);
      return DSYS_EIO;
    }
    if (r == 0) break;
    n += (size_t)r;
    if (n > MAX_SECRET) {
      close(fd);
      free(buf);
      dsysi_log(DSYS_LOG_ERROR, "auth", "secret file %s is too large", path);
      return DSYS_EINVAL;
    }
  }
  close(fd);
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) n--;
  buf[n] = '\0';
  if (!n) {
    free(buf);
    dsysi_log(DSYS_LOG_ERROR, "auth", "secret file %s is empty", path);
    return DSYS_EINVAL;
  }
  *out = buf;
  *len = n;
  return 0;
}

/* Create dir/jwt-secret with 256 random bits unless it exists. The file is
 * complete before it appears under its name (link(2) of a private
 * temporary file created with O_EXCL), so racing instances agree. */
static int generate(const char *path, int *created) {
  size_t pl = strlen(path);
  char *tmp = malloc(pl + 40);
  if (!tmp) return DSYS_ENOMEM;
  char rnd[17];
  dsys_random_hex(rnd, sizeof rnd, 8);
  snprintf(tmp, pl + 40, "%s.tmp.%ld.%s", path, (long)getpid(), rnd);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    dsysi_log(DSYS_LOG_ERROR, "auth", "cannot create %s: %s", tmp, strerror(errno));
    free(tmp);
    return DSYS_EIO;
  }
  char hex[65];
  dsys_random_hex(hex, sizeof hex, 32);
  hex[64] = '\n';
  int rc = write(fd, hex, 65) == 65 && fsync(fd) == 0 ? 0 : DSYS_EIO;
  explicit_bzero(hex, sizeof hex);
  close(fd);
  *created = 0;
  if (!rc) {
    if (link(tmp, path) == 0) *created = 1;
    else if (errno != EEXIST) rc = DSYS_EIO;
  }
  unlink(tmp);
  free(tmp);
  return rc;
}

int dsys_auth_load_secret(const char *secret_file, const char *db_path,
                          char **secret, size_t *len, const char **source) {
  if (!secret || !len) return DSYS_EINVAL;
  const char *src = "file";
  int rc;
  if (secret_file && *secret_file) {
    rc = read_secret(secret_file, secret, len);
  } else if (getenv("DSYS_JWT_SECRET") && *getenv("DSYS_JWT_SECRET")) {
    src = "env";
    *secret = strdup(getenv("DSYS_JWT_SECRET"));
    *len = *secret ? strlen(*secret) : 0;
    rc = *secret ? 0 : DSYS_ENOMEM;
  } else {
    if (!db_path || !*db_path) return DSYS_EINVAL;
    const char *slash = strrchr(db_path, '/');
    size_t dl = slash ? (size_t)(slash - db_path) : 0;
    char *path = malloc(dl + 16);
    if (!path) return DSYS_ENOMEM;
    if (slash) snprintf(path, dl + 16, "%.*s/jwt-secret", (int)dl, db_path);
    else snprintf(path, dl + 16, "jwt-secret");
    if (slash && dl == 0) snprintf(path, 16, "/jwt-secret");
    int created = 0;
    rc = access(path, F_OK) == 0 ? 0 : generate(path, &created);
    src = created ? "generated" : "existing";
    if (!rc) rc = read_secret(path, secret, len);
    free(path);
  }
  if (!rc && source) *source = src;
  return rc;
}
