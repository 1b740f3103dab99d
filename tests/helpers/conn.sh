# Shell helpers for the integration tests; sourced, not run.

# await_conn PORT: waits (at most 5 s) until some TCP connection to the local
# PORT is established, i.e. a client started in the background has
# connected. A fixed sleep before acting on such a request (a SIGTERM, a
# kill) races with the client's start on a loaded machine.
await_conn() {
  _hex=$(printf '%04X' "$1"); _i=0
  while [ $_i -lt 100 ]; do
    # /proc/net/tcp: "sl local rem st ..."; state 01 is ESTABLISHED
    awk -v p=":$_hex" 'NR > 1 && $4 == "01" && substr($3, length($3) - 4) == p { f = 1 } END { exit !f }' \
      /proc/net/tcp && return 0
    sleep 0.05; _i=$((_i + 1))
  done
  return 1
}
