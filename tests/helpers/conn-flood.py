#!/usr/bin/python3
"""Connection flood against an HTTP server on 127.0.0.1, and ordinary
requests during it (tests/integration/conn-flood.test,
bench/run-conn-flood). Standard library only.

Opens --hold connections that send nothing (ADDRS:N, e.g. 127.0.0.1:1500
or 127.0.0.2-20:1000: N from each source address), then sends --requests
ordinary GETs of --path from --from, one new connection each, one after
another, and prints one "key value" line per result:

  opened N          connections whose connect completed
  refused N         connects that failed (refused, reset, timed out)
  closed_early N    held connections the server closed before the requests
  requests_ok N     ordinary requests answered 200 (of --requests)
  p50_ms, p99_ms, max_ms   their latency, connect to complete answer
  still_open N      held connections open after the requests
  rss_kib N         VmRSS of --rss-pid, read while the connections are held
  (--linger S: then keeps holding them S seconds)
  all_closed_ms N   with --wait-closed S: when the server had closed every
                    held connection, counted from the last one's connect
                    (-1: not within S seconds of the requests' end)
"""
import argparse
import errno
import os
import selectors
import socket
import sys
import time


def parse_hold(spec):
    """'127.0.0.2-20:1000' -> [('127.0.0.2', 1000), ..., ('127.0.0.20', 1000)]"""
    addrs, n = spec.rsplit(":", 1)
    base, _, last = addrs.rpartition(".")
    if "-" in last:
        lo, hi = last.split("-")
        return [("%s.%d" % (base, i), int(n)) for i in range(int(lo), int(hi) + 1)]
    return [(addrs, int(n))]


def open_batch(port, src, count, timeout=10.0):
    """Open count connections from src without sending; returns (socks, failed)."""
    sel = selectors.DefaultSelector()
    pending, socks, failed = {}, [], 0
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((src, 0))
            rc = s.connect_ex(("127.0.0.1", port))
        except OSError:
            s.close()
            failed += 1
            continue
        if rc in (0, errno.EINPROGRESS):
            pending[s.fileno()] = s
            sel.register(s, selectors.EVENT_WRITE)
        else:
            s.close()
            failed += 1
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            s = key.fileobj
            sel.unregister(s)
            del pending[s.fileno()]
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                socks.append(s)
            else:
                s.close()
                failed += 1
    for s in pending.values():
        s.close()
        failed += 1
    sel.close()
    return socks, failed


def closed(s):
    """True when the server closed s (EOF or reset)."""
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def request(port, src, path, timeout):
    """One GET on a new connection from src: (status, seconds)."""
    t0 = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(src, 0))
    except OSError:
        return 0, time.monotonic() - t0
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else 0
    except (OSError, ValueError, IndexError):
        status = 0
    finally:
        s.close()
    return status, time.monotonic() - t0


def vmrss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--hold", action="append", default=[], help="ADDRS:N")
    ap.add_argument("--from", dest="src", default="127.0.0.1", help="source of the ordinary requests")
    ap.add_argument("--path", default="/health")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=5.0, help="of one ordinary request")
    ap.add_argument("--batch", type=int, default=500, help="connects in flight at once")
    ap.add_argument("--rss-pid", type=int, default=0)
    ap.add_argument("--wait-closed", type=float, default=0)
    ap.add_argument("--linger", type=float, default=0, help="hold the connections this long at the end")
    a = ap.parse_args()

    held, failed = [], 0
    for spec in a.hold:
        for src, n in parse_hold(spec):
            while n > 0:
                socks, f = open_batch(a.port, src, min(n, a.batch))
                held += socks
                failed += f
                n -= min(n, a.batch)
    t_open = time.monotonic()
    print("opened", len(held))
    print("refused", failed)
    for s in held:
        s.setblocking(False)
    # the server closes what it evicts as it accepts, a little after our
    # connects: count once the number has settled (bounded: 3 s)
    early, t0, last_change = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - t0 < 3:
        now = sum(1 for s in held if closed(s))
        if now != early:
            early, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > 0.3:
            break
        time.sleep(0.05)
    print("closed_early", early)
    if a.rss_pid:
        print("rss_kib", vmrss_kib(a.rss_pid))
    lat, good = [], 0
    for _ in range(a.requests):
        st, sec = request(a.port, a.src, a.path, a.timeout)
        good += st == 200
        lat.append(sec * 1000)
        if st != 200:
            print("# request: status %d after %.0f ms" % (st, sec * 1000))
    lat.sort()
    if lat:
        pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
        print("requests_ok", good)
        print("p50_ms %.1f" % pick(0.5))
        print("p99_ms %.1f" % pick(0.99))
        print("max_ms %.1f" % lat[-1])
    print("still_open", sum(1 for s in held if not closed(s)))
    sys.stdout.flush()
    if a.wait_closed:
        t0 = time.monotonic()
        left = [s for s in held if not closed(s)]
        while left and time.monotonic() - t0 < a.wait_closed:
            time.sleep(0.05)
            left = [s for s in left if not closed(s)]
        print("all_closed_ms", -1 if left else int((time.monotonic() - t_open) * 1000))
    time.sleep(a.linger)
    for s in held:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
