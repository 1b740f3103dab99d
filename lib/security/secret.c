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

/* Create path with 256 random bits (hex) unless it exists; racing
 * instances agree on the first file (dsysi_file_write without replace). */
static int generate(const char *path, int *created) {
  char hex[65];
  dsys_random_hex(hex, sizeof hex, 32);
  hex[64] = '\n';
  int rc = dsysi_file_write(path, hex, 65, 0600, 0, created);
  explicit_bzero(hex, sizeof hex);
  return rc;
}

int dsys_auth_load_secret(const char *secret_file, const char *db_path,
                          char **secret, size_t *len, const char **source) {
  if (!secret || !len) return DSYS_EINVAL;
  const char *src = "file";
  int rc;
  if (secret_file && *secret_file) {
    rc = dsysi_file_read(secret_file, MAX_SECRET, "auth", secret, len);
  } else if (getenv("DSYS_JWT_SECRET") && *getenv("DSYS_JWT_SECRET")) {
    src = "env";
    *secret = strdup(getenv("DSYS_JWT_SECRET"));
    *len = *secret ? strlen(*secret) : 0;
    rc = *secret ? 0 : DSYS_ENOMEM;
  } else {
    /* a database URI (postgresql://) has no directory to keep it in */
    if (!db_path || !*db_path || strstr(db_path, "://")) return DSYS_EINVAL;
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
    if (!rc) rc = dsysi_file_read(path, MAX_SECRET, "auth", secret, len);
    free(path);
  }
  if (!rc && source) *source = src;
  return rc;
}
