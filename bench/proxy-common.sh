# Shared by bench/run-gateway and bench/ab-gateway (sourced, POSIX sh).
# Expects: bld (build dir), tmp (scratch dir), pids (list to kill), dur.

# The file may not exist yet (the process's redirection races this loop).
url_of() { i=0; u=; while [ -z "$u" ] && [ $i -lt 100 ]; do u=$(sed -n 's/^listening //p' "$1" 2>/dev/null || true); sleep 0.05; i=$((i+1)); done; echo "$u"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# CPU time (user + system, clock ticks) of a process so far
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# Three backends, the bare libmicrohttpd JSON server (1 thread each):
# sets B1 B2 B3.
start_backends() {
  b=
  for i in 1 2 3; do
    "$bld/bench/bench-server" mhd 1 > "$tmp/b$i" & pids="$pids $!"
    b="$b $(url_of "$tmp/b$i")"
  done
  set -- $b
  B1=$1; B2=$2; B3=$3
}

# dsys-gatewayd in front of B1..B3 with THREADS loops (default 2): binary
# $1 (default the build's), libdistsys from directory $2 if given. Sets
# GPID and G; prints the gateway's log and fails if it does not start.
start_gateway() {
  rm -f "$tmp/gw" # else url_of may read a previous gateway's address
  env LD_LIBRARY_PATH="${2:-${LD_LIBRARY_PATH:-}}" "${1:-$bld/daemons/dsys-gatewayd}" \
    --listen http://127.0.0.1:0 --loops "${THREADS:-2}" --upstream "bench=$B1,$B2,$B3" \
    --route /=bench --log-format text > "$tmp/gw" 2>"$tmp/gw.log" & GPID=$!; pids="$pids $GPID"
  G=$(url_of "$tmp/gw")
  [ -n "$G" ] || { echo "the gateway did not start"; cat "$tmp/gw.log"; return 1; }
}

# HAProxy in front of B1..B3 on port $1, THREADS threads (default 2):
# sets HPID and H.
start_haproxy() {
  cat > "$tmp/haproxy.cfg" <<CFG
global
  nbthread ${THREADS:-2}
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend f
  bind 127.0.0.1:$1
  default_backend b
backend b
  balance roundrobin
  server s1 ${B1#http://}
  server s2 ${B2#http://}
  server s3 ${B3#http://}
CFG
  haproxy -f "$tmp/haproxy.cfg" -db > "$tmp/haproxy.log" 2>&1 & HPID=$!; pids="$pids $!"
  H=http://127.0.0.1:$1
  i=0; while [ $i -lt 100 ] && ! curl -sf "$H/json" >/dev/null; do sleep 0.05; i=$((i+1)); done
}

# WRK_PATH (default /json) is appended to the url; WRK_SCRIPT, if set, is
# a Lua script given to wrk (-s).
measure() { # url conns pid -> "rps p99ms cpu_us_per_request [errors]"
  wrk -t2 -c"$2" -d2s ${WRK_SCRIPT:+-s "$WRK_SCRIPT"} "$1${WRK_PATH-/json}" >"$tmp/warm" 2>&1 || { echo "warmup failed"; cat "$tmp/warm"; return 1; }
  t0=$(ticks "$3")
  wrk -t2 -c"$2" -d"${dur}s" --latency ${WRK_SCRIPT:+-s "$WRK_SCRIPT"} "$1${WRK_PATH-/json}" > "$tmp/w"
  t1=$(ticks "$3")
  reqs=$(awk '/requests in/ {print $1}' "$tmp/w")
  cpu=$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$hz" 'BEGIN { printf "%.1f", n ? (b - a) / hz / n * 1e6 : 0 }')
  rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/w")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' "$tmp/w")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' "$tmp/w" | tr '\n' ' ')
  echo "$rps $p99 $cpu $errs"
}
# median of column $2 (default 1) of file $1
median() { awk -v c="${2:-1}" '{print $c}' "$1" | sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
