/* Small files: secrets, keys, state (file.c). Thread-safety: any thread. */
#ifndef DSYSI_FILE_H
#define DSYSI_FILE_H

#include <stddef.h>

/**
 * Read a whole small file (secrets, keys, tokens) into a new NUL-terminated
 * buffer, trailing newlines removed. Logs under component (and warns when
 * the file is readable by group or others).
 * @return 0, DSYS_EIO (cannot open or read), DSYS_EINVAL (empty, or more
 *         than max bytes), DSYS_ENOMEM.
 */
int dsysi_file_read(const char *path, size_t max, const char *component,
                    char **out, size_t *len);
/**
 * Write a file atomically with exactly this mode: a private temporary file
 * is written and synced, then renamed over path (replace) or linked to
 * path, keeping an existing file (!replace; *created says whether it was
 * this call's). @return 0, DSYS_EIO, DSYS_ENOMEM.
 */
int dsysi_file_write(const char *path, const void *data, size_t len, unsigned mode,
                     int replace, int *created);

#endif
