/*
 * --leader-lock / --leader-ttl of the daemons that elect one instance for
 * a job (dsys-faultd: alerts; dsys-computed: the retention sweep): one
 * reading of the two flags, their check and the campaign, for both.
 */
#ifndef DSYS_DAEMONS_LEADER_H
#define DSYS_DAEMONS_LEADER_H

#include <stdio.h>
#include <distsys/distsys.h>

/* Campaigns for `name` on --leader-lock when it is set (*out stays NULL
 * otherwise). 0, or a code after a message on stderr (DSYS_EINVAL for a
 * bad flag or URL). */
static int daemon_leader_open(const dsys_config *cfg, const char *prog, const char *name,
                              dsys_election_fn on_change, dsys_election **out) {
  const char *ll = dsys_config_get(cfg, "leader-lock");
  if (!ll || !*ll) return 0;
  int64_t ttl = 0;
  dsys_config_get_duration_ms(cfg, "leader-ttl", &ttl);
  if (ttl < 100) {
    fprintf(stderr, "%s: --leader-ttl must be at least 100ms\n", prog);
    return DSYS_EINVAL;
  }
  dsys_election_options eo = {.size = sizeof eo, .ttl_ms = ttl, .on_change = on_change};
  int rc = dsys_election_open(ll, name, &eo, out);
  if (rc) {
    fprintf(stderr, "%s: cannot campaign on --leader-lock %s: %s\n", prog, ll,
            dsys_strerror(rc));
    return rc == DSYS_EURL || rc == DSYS_ESCHEME ? DSYS_EINVAL : rc;
  }
  return 0;
}

#endif
