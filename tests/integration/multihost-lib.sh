# Shared by the multi-host scenarios (tests/integration/multihost-*.test;
# sourced, not run): three hosts as network namespaces
# (scripts/netns-hosts), each running its share of one deployment with
# `dsys-cluster --deployment FILE --host hI`: an etcd member, a Patroni/
# PostgreSQL node, one auth, data and compute instance, a gateway and a
# fault detector. Clients run in the root namespace (tests/helpers/
# history.py). Everything started here is stopped by PID on every way out
# (trap), and the namespaces are removed.
src=${top_srcdir:-.}
bld=${top_builddir:-.}
PY=/usr/bin/python3
HOSTS="$src/scripts/netns-hosts"
HIST="$PY $src/tests/helpers/history.py"
n=0; fail=0
t() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fail=1; fi; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }

# the servers run as postgres: they must reach the directory
tmp=$(mktemp -d /tmp/dsys-mh.XXXXXX) && chmod 755 "$tmp" || exit 1
net=$tmp/net
sups="" loader=""
mh_cleanup() {
  [ -n "$loader" ] && kill -KILL "$loader" 2>/dev/null
  for p in ${MH_CONT:-}; do kill -CONT "$p" 2>/dev/null; done # paused by a scenario
  for p in $sups; do kill -CONT "$p" 2>/dev/null; kill -TERM "$p" 2>/dev/null; done
  # the supervisors stop their children (SIGTERM, then SIGKILL after 10 s)
  for p in $sups; do
    i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt 150 ]; do sleep 0.1; i=$((i + 1)); done
  done
  "$HOSTS" destroy "$net" >/dev/null 2>&1 # kills whatever is left, by PID
  [ -n "${MH_KEEP:-}" ] && echo "# kept $tmp" || rm -rf "$tmp"
}
trap mh_cleanup EXIT
trap 'exit 1' INT TERM
# A test killed outright runs no trap (tests/helpers/run-test's timeout
# ends with SIGKILL to the whole process group, and a shell runs its TERM
# trap only once its foreground command returns): hosts, and PostgreSQL
# servers whose Patroni was killed, were seen left behind for an hour. A
# guard in a session of its own removes the hosts (and so every process
# in them, by PID) once this shell is gone; at most 3 hours.
setsid sh -c 'i=0; while kill -0 "$1" 2>/dev/null && [ $i -lt 10800 ]; do sleep 1; i=$((i + 1)); done
  "$2" destroy "$3" >/dev/null 2>&1; [ -n "$4" ] || rm -rf "$5"' mh-guard $$ "$HOSTS" "$net" \
  "${MH_KEEP:-}" "$tmp" < /dev/null > /dev/null 2>&1 &

# mh_up: creates the hosts, writes the deployment, starts the three
# supervisors and waits (at most 120 s) until each reports all its
# processes healthy. Environment for the daemons: MH_ENV ("VAR=value ...").
# MH_TLS=1: the deployment with TLS (deploy/tls-certs makes the CA and
# the hosts' certificates in $tmp/tls); then URLs are https and the
# clients trust that CA (curl: mh_curl). MH_FLAGS: more dsys-cluster flags.
mh_up() {
  X=$("$HOSTS" create "$net" 3) || { echo "Bail out! cannot create the hosts"; exit 1; }
  (umask 077 && head -c 32 /dev/urandom | base64 > "$tmp/jwt")
  {
    echo "registry.prefix = /dsys/mh"
    echo "db.trusted = $X.0/24"
    echo "patroni.template = $src/deploy/patroni/patroni.yml.in"
    echo "jwt-secret-file = $tmp/jwt"
    for i in 1 2 3; do
      echo "h$i.address = $X.$i"
      echo "h$i.etcd = 2379,2380"
      echo "h$i.postgres = 5432,8008"
      echo "h$i.auth.ports = 3001"
      echo "h$i.data.ports = 4002"
      echo "h$i.compute.ports = 5002"
      echo "h$i.gateway.port = 3000"
      echo "h$i.faultd.port = 3004"
    done
    [ -n "${MH_TLS:-}" ] && echo "tls.dir = $tmp/tls"
  } > "$tmp/deployment.conf"
  if [ -n "${MH_TLS:-}" ]; then
    "$src/deploy/tls-certs" "$tmp/deployment.conf" "$tmp/tls" 1 >/dev/null ||
      { echo "Bail out! cannot make the certificates"; exit 1; }
  fi
  for _h in 1 2 3; do mh_start $_h; done
  for _h in 1 2 3; do
    mh_wait_healthy $_h 120 || { mh_dump; echo "Bail out! host $_h did not come up within 120 s"; exit 1; }
  done
  # Patroni acknowledges commits without waiting for a standby until it
  # has named a synchronous one (synchronous_mode, not strict): only from
  # then on may a scenario expect an acknowledged write to survive.
  _end=$(( $(ms) + 60000 ))
  until mh_sync_standby >/dev/null; do
    [ "$(ms)" -lt $_end ] || { mh_dump; echo "Bail out! no synchronous standby within 60 s"; exit 1; }
    sleep 0.2
  done
}

# mh_start I: host I's supervisor (its PID in $tmp/sup$i); MH_ENV_I: more
# environment for host I only
mh_start() {
  eval "_env=\${MH_ENV_$1:-}"
  env ${MH_ENV:-} $_env "$HOSTS" exec "$net" "$1" "$bld/daemons/dsys-cluster" --deployment "$tmp/deployment.conf" \
    --host "h$1" --data-dir "$tmp/d$1" ${MH_FLAGS:-} >> "$tmp/s$1.out" 2>> "$tmp/s$1.err" &
  echo $! > "$tmp/sup$1"
  sups="$sups $!"
}

# (the helpers' variables start with _: a caller's loop variable survives)
mh_wait_healthy() {
  _end=$(( $(ms) + $2 * 1000 ))
  while [ "$(ms)" -lt $_end ]; do
    grep -q "processes healthy" "$tmp/s$1.out" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

mh_addr() { echo "$X.$1"; }
S=http
[ -n "${MH_TLS:-}" ] && S=https HIST="$HIST --ca $tmp/tls/ca.pem"
# curl as host 1's processes (its certificate) when TLS is on
mh_curl() {
  if [ -n "${MH_TLS:-}" ]; then curl --cacert "$tmp/tls/ca.pem" --cert "$tmp/tls/h1.pem" --key "$tmp/tls/h1.key" "$@"
  else curl "$@"; fi
}
mh_gw() { echo "$S://$X.$1:3000"; }
# the live instance URLs of the hosts given (auth, data, compute)
mh_instances() {
  _out=""
  for _h in "$@"; do _out="$_out${_out:+,}$S://$X.$_h:3001,$S://$X.$_h:4002,$S://$X.$_h:5002"; done
  echo "$_out"
}
# the host whose PostgreSQL is the primary (Patroni's GET /primary: 200)
mh_leader() {
  for _h in 1 2 3; do
    [ "$(mh_curl -s -o /dev/null -m 2 -w '%{http_code}' "$S://$X.$_h:8008/primary")" = 200 ] && { echo $_h; return 0; }
  done
  return 1
}

# the host of the streaming synchronous standby (Patroni's GET /cluster)
mh_sync_standby() {
  for _h in 1 2 3; do
    mh_curl -s -m 2 "$S://$X.$_h:8008/cluster" 2>/dev/null | $PY -c '
import json, sys
try:
    m = json.load(sys.stdin)["members"]
except Exception:
    sys.exit(1)
s = [x["name"] for x in m if x["role"] == "sync_standby" and x["state"] in ("running", "streaming")]
sys.exit(0 if s and print(s[0][1:]) is None else 1)' && return 0
  done
  return 1
}

# mh_load NAME=URL...: history.py load in the background until mh_unload
mh_load() {
  _args=""
  for _g in "$@"; do _args="$_args --gateway $_g"; done
  rm -f "$tmp/stop"
  $HIST load $_args --out "$tmp/history.jsonl" --stop-file "$tmp/stop" --duration 600 \
    ${MH_LOAD_ARGS:-} > "$tmp/load.out" 2>&1 &
  loader=$!
}
mh_unload() {
  touch "$tmp/stop"
  _end=$(( $(ms) + 45000 )) # a request may wait up to the client's 35 s
  while kill -0 "$loader" 2>/dev/null && [ "$(ms)" -lt $_end ]; do sleep 0.1; done
  kill -KILL "$loader" 2>/dev/null
  loader=""
}

# the logs of a failed run, briefly; and every gateway's membership
# changes (which instance joined or left which upstream, and why)
mh_dump() {
  for f in "$tmp"/s*.err "$tmp"/d*/logs/*.log "$tmp"/load.out; do
    [ -s "$f" ] && tail -n 5 "$f" | cut -c1-240 | sed "s|^|# ${f#$tmp/}: |"
  done
  for f in "$tmp"/d*/logs/gateway.log; do
    [ -s "$f" ] && grep ' upstream: ' "$f" | head -n 60 | cut -c1-240 | sed "s|^|# ${f#$tmp/} membership: |"
  done
}
