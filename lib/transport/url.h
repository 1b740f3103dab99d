/* Internal endpoint URL parsing: http://host:port[/base], unix:///path,
 * inproc://name. */
#ifndef DSYSI_URL_H
#define DSYSI_URL_H

typedef struct dsysi_url {
  char scheme[16];
  char host[256]; /* http: host without brackets; inproc: the name */
  int port;       /* http: port (80 when absent) */
  char *path;     /* http: base path ("" when none); unix: socket path */
} dsysi_url;

/** @return 0, DSYS_EURL (malformed), DSYS_ENOMEM. */
int dsysi_url_parse(const char *url, dsysi_url *out);
void dsysi_url_free(dsysi_url *u);

/** Whether a client can call url: 0, DSYS_ESCHEME (no transport has its
 * scheme), DSYS_EURL (no scheme, or malformed), DSYS_ENOMEM. */
int dsysi_url_check(const char *url);

#endif
