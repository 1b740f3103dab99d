#include "net.h"
#include <arpa/inet.h>
#include <poll.h>
#include <time.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int test_port_of(const char *url) {
  const char *c = url ? strrchr(url, ':') : NULL;
  return c ? atoi(c + 1) : 0;
}

int test_connect_fd(int fd, const char *url) {
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)test_port_of(url))};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  return connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 ? 0 : -1;
}

int test_connect(const char *url) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (test_connect_fd(fd, url)) {
    close(fd);
    return -1;
  }
  return fd;
}

int test_connect_timeout(const char *url, int recv_timeout_s) {
  int fd = test_connect(url);
  struct timeval tv = {.tv_sec = recv_timeout_s};
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

int test_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  int ok = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
           getsockname(fd, (struct sockaddr *)&sa, &sl) == 0;
  if (fd >= 0) close(fd);
  return ok ? ntohs(sa.sin_port) : 0;
}

int test_trickle(const char *url, const char *head, int step_ms, int max_ms) {
  int fd = test_connect(url);
  if (fd < 0) return -2;
  send(fd, head, strlen(head), MSG_NOSIGNAL);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int closed_at = -1;
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int pr = poll(&p, 1, step_ms);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int el = (int)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
    char c;
    if (pr > 0 && recv(fd, &c, 1, MSG_DONTWAIT) <= 0) {
      closed_at = el;
      break;
    }
    if (el >= max_ms) break;
    if (send(fd, "a", 1, MSG_NOSIGNAL) != 1) {
      closed_at = el;
      break;
    }
  }
  close(fd);
  return closed_at;
}
