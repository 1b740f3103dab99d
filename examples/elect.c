/*
 * elect: a candidate in a leader election; prints "leader TOKEN" when it
 * becomes the leader and "follower" when it stops being one, until SIGTERM
 * or SIGINT (then it resigns, handing the leadership over at once).
 *
 *   elect LOCKS_URL ELECTION NAME [TTL_MS]
 *   e.g. elect sqlite:///tmp/l.sqlite sweeper node-a 2000
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <distsys/distsys.h>

static void on_change(void *ud, int leader, int64_t token) {
  if (leader) printf("leader %lld\n", (long long)token);
  else printf("follower\n");
  fflush(stdout);
}

int main(int argc, char **argv) {
  if (argc < 4 || argc > 5) {
    fprintf(stderr, "usage: elect LOCKS_URL ELECTION NAME [TTL_MS]\n");
    return 2;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL); /* before the library's threads */
  dsys_locks *locks = NULL;
  int rc = dsys_locks_open(&locks, argv[1], NULL);
  dsys_election *e = NULL;
  dsys_election_options o = {.size = sizeof o, .candidate = argv[3],
                             .ttl_ms = argc == 5 ? atoll(argv[4]) : 0, .on_change = on_change};
  if (!rc) rc = dsys_election_campaign(locks, argv[2], &o, &e);
  if (rc) {
    fprintf(stderr, "elect: %s\n", dsys_strerror(rc));
    return 1;
  }
  if (!dsys_election_is_leader(e, NULL)) on_change(NULL, 0, 0);
  int sig;
  sigwait(&set, &sig);
  dsys_election_resign(e);
  dsys_locks_close(locks);
  return 0;
}
