/* Error table, version query and dsys_free. */
#include <stdlib.h>
#include <distsys/common.h>

const char *dsys_strerror(int err) {
  switch (err) {
#define X(name, value, msg) \
  case value:               \
    return msg;
    DSYS_ERRORS(X)
#undef X
  default:
    return "unknown error";
  }
}

const char *dsys_err_name(int err) {
  switch (err) {
#define X(name, value, msg) \
  case value:               \
    return #name;
    DSYS_ERRORS(X)
#undef X
  default:
    return "DSYS_EUNKNOWN";
  }
}

int dsys_err_count(void) {
  int n = 0;
#define X(name, value, msg) n++;
  DSYS_ERRORS(X)
#undef X
  return n;
}

const char *dsys_version(void) { return DSYS_VERSION_STRING; }

int dsys_version_number(void) { return DSYS_VERSION_NUMBER; }

void dsys_free(void *ptr) { free(ptr); }
