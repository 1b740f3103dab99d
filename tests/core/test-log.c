/*
 * Logging to the systemd journal: with JOURNAL_STREAM naming stderr (as
 * systemd sets it for a service) or the "journal" format, every record
 * starts with its sd-daemon(3) priority: <7> debug, <6> info, <4> warn,
 * <3> error; text records lose their time stamp, JSON records keep their
 * shape. A JOURNAL_STREAM naming another file (stderr redirected) or
 * garbage changes nothing. Each case runs in a child process: the
 * detection happens once per process, at the first record.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <distsys/log.h>
#include "tap.h"

static char dir[] = "/tmp/dsys-test-log-XXXXXX";

/* Runs the records of one case in a child whose stderr is a new file;
 * env: "match" (JOURNAL_STREAM = that file), "other" (another file's),
 * "garbage", or NULL (unset). fmt: DSYS_LOG_FORMAT or NULL. Returns the
 * file's text (malloc'd). */
static char *run_case(const char *name, const char *env, const char *fmt) {
  char path[256], other[256];
  snprintf(path, sizeof path, "%s/%s.log", dir, name);
  snprintf(other, sizeof other, "%s/%s.other", dir, name);
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int ofd = open(other, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ofd < 0 || dup2(fd, 2) < 0) _exit(3);
    struct stat st;
    char v[64];
    unsetenv("JOURNAL_STREAM");
    unsetenv("DSYS_LOG_FORMAT");
    if (env && !strcmp(env, "match") && !fstat(2, &st)) {
      snprintf(v, sizeof v, "%ju:%ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
      setenv("JOURNAL_STREAM", v, 1);
    } else if (env && !strcmp(env, "other") && !fstat(ofd, &st)) {
      snprintf(v, sizeof v, "%ju:%ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
      setenv("JOURNAL_STREAM", v, 1);
    } else if (env) {
      setenv("JOURNAL_STREAM", env, 1);
    }
    if (fmt) setenv("DSYS_LOG_FORMAT", fmt, 1);
    setenv("DSYS_LOG_LEVEL", "debug", 1);
    dsys_log_write(DSYS_LOG_DEBUG, "test", "a debug record");
    dsys_log_write(DSYS_LOG_INFO, "test", "an info record");
    dsys_log_write(DSYS_LOG_WARN, "test", "a warning");
    dsys_log_write(DSYS_LOG_ERROR, "test", "an error\nover two lines");
    _exit(0);
  }
  int status = -1;
  waitpid(pid, &status, 0);
  ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: child ran", name);
  FILE *f = fopen(path, "r");
  char *buf = calloc(1, 8192);
  if (f && buf) fread(buf, 1, 8191, f);
  if (f) fclose(f);
  return buf;
}

/* The n-th line (from 0) of text, in a static buffer. */
static const char *line(const char *text, int n) {
  static char out[1024];
  for (; n > 0 && text; n--) {
    text = strchr(text, '\n');
    if (text) text++;
  }
  if (!text) return "";
  size_t len = strcspn(text, "\n");
  snprintf(out, sizeof out, "%.*s", (int)len, text);
  return out;
}

int main(void) {
  if (!mkdtemp(dir)) tap_bail("mkdtemp");
  dsys_log_format f;
  is_int(dsys_log_format_parse("journal", &f), 0, "\"journal\" is a format");
  is_int(f, DSYS_LOG_JOURNAL, "DSYS_LOG_JOURNAL");

  char *t = run_case("match", "match", NULL);
  is_str(line(t, 0), "<7>test: a debug record", "JOURNAL_STREAM = stderr: debug is <7>, no time stamp");
  is_str(line(t, 1), "<6>test: an info record", "info is <6>");
  is_str(line(t, 2), "<4>test: a warning", "warn is <4>");
  is_str(line(t, 3), "<3>test: an error over two lines", "error is <3>, one line per record");
  is_str(line(t, 4), "", "four lines");
  free(t);

  t = run_case("json", "match", "json");
  ok(!strncmp(line(t, 0), "<7>{\"time\":", 11), "json on the journal: <7> then the JSON object (%s)", line(t, 0));
  ok(!strncmp(line(t, 3), "<3>{", 4) && strstr(line(t, 3), "\"level\":\"error\""), "json error record: <3>");
  free(t);

  t = run_case("format", NULL, "journal");
  is_str(line(t, 1), "<6>test: an info record", "DSYS_LOG_FORMAT=journal without JOURNAL_STREAM: prefixed");
  is_str(line(t, 2), "<4>test: a warning", "and warn <4>");
  free(t);

  t = run_case("other", "other", NULL);
  ok(t[0] >= '0' && t[0] <= '9' && !strchr(t, '<') && strstr(line(t, 1), " INFO  test: an info record"),
     "JOURNAL_STREAM of another file (stderr redirected): plain text (%s)", line(t, 1));
  free(t);

  t = run_case("garbage", "12:x", NULL);
  ok(t[0] >= '0' && t[0] <= '9' && !strchr(t, '<'), "malformed JOURNAL_STREAM: plain text");
  free(t);

  t = run_case("unset", NULL, NULL);
  ok(strstr(line(t, 3), " ERROR test: an error") && !strchr(t, '<'), "no JOURNAL_STREAM: plain text");
  free(t);

  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd)) tap_diag("could not remove %s", dir);
  return tap_done();
}
