#!/usr/bin/env python3
"""The fault detector's dashboard in a real headless Chromium (issue 7). TAP.

dsys-cluster starts the whole deployment on port-0 ports in a temporary
directory (registry, 3 auth, 3 data, 3 compute, gateway, dsys-faultd with a
500 ms check interval and a 1 s check timeout through DSYS_* variables).
Chromium is driven over the DevTools protocol by the small client below
(standard library only; the WebSocket handshake and framing are done by hand).

Checked: GET / headers (text/html, no-cache, CSP); the page loads with no
console error, no uncaught exception and no request leaving the detector's
origin; every instance element shows data-state="healthy"; the request
cards follow gateway traffic; then data-2 is stopped with SIGSTOP (dsys-cluster
would restart a SIGKILLed instance after 0.5 s, so a stopped process stands
for a dead one: it holds its port but never answers) and its element must
show data-state="unhealthy" within 10 s, the others staying healthy, and a
service-failure alert must appear. Screenshots of both states go to
$top_builddir/tests/artifacts/dashboard-{healthy,unhealthy}.png.
Every process is cleaned up by PID (SIGCONT before SIGTERM).
"""
import base64
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BLD = os.path.abspath(os.environ.get("top_builddir", "."))
ART = os.path.join(BLD, "tests", "artifacts")
N = 0
FAILED = False


def ok(cond, msg):
    global N, FAILED
    N += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (N, msg), flush=True)
    if not cond:
        FAILED = True
    return cond


def diag(msg):
    for line in str(msg).splitlines():
        print("# " + line, flush=True)


def bail(msg):
    print("Bail out! " + msg, flush=True)
    sys.exit(1)


# ---------------------------------------------------------------- CDP client
class CDP:
    """A minimal Chrome DevTools Protocol client over a WebSocket."""

    def __init__(self, ws_url, timeout=10):
        assert ws_url.startswith("ws://")
        hostport, _, path = ws_url[5:].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET /%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n" % (path, hostport, key)).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise IOError("DevTools closed the connection during the handshake")
            buf += chunk
        head, _, self.buf = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise IOError("WebSocket handshake refused: " + lines[0])
        want = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        accept = [l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("sec-websocket-accept:")]
        if accept != [want]:
            raise IOError("bad Sec-WebSocket-Accept")
        self.next_id = 0
        self.events = []          # every event received, in order

    def _exact(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise IOError("DevTools connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            hdr = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        self.sock.sendall(hdr + mask + masked)

    def _message(self, deadline):
        """One complete text message (fragments joined); None on timeout."""
        parts = []
        try:
            while True:
                b0, b1 = self._exact(2, deadline)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", self._exact(2, deadline))[0]
                elif n == 127:
                    n = struct.unpack("!Q", self._exact(8, deadline))[0]
                mask = self._exact(4, deadline) if b1 & 0x80 else None
                data = self._exact(n, deadline)
                if mask:
                    data = bytes(b ^ mask[i & 3] for i, b in enumerate(data))
                op = b0 & 0x0F
                if op == 0x9:            # ping
                    self._send_frame(0xA, data)
                    continue
                if op == 0x8:
                    raise IOError("DevTools sent close")
                if op in (0x1, 0x2, 0x0):
                    parts.append(data)
                    if b0 & 0x80:
                        return json.loads(b"".join(parts).decode())
        except TimeoutError:
            if parts:
                raise
            return None

    def call(self, method, params=None, timeout=15):
        self.next_id += 1
        mid = self.next_id
        self._send_frame(0x1, json.dumps({"id": mid, "method": method, "params": params or {}}).encode())
        deadline = time.monotonic() + timeout
        while True:
            m = self._message(deadline)
            if m is None:
                raise TimeoutError("no answer to %s in %s s" % (method, timeout))
            if m.get("id") == mid:
                if "error" in m:
                    raise RuntimeError("%s: %s" % (method, m["error"]))
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def pump(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            m = self._message(deadline)
            if m and "method" in m:
                self.events.append(m)

    def evaluate(self, expr):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True})
        if "exceptionDetails" in r:
            raise RuntimeError("evaluate failed: %s" % r["exceptionDetails"])
        return r["result"].get("value")


# ---------------------------------------------------------------- helpers
def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def read_state(path):
    procs = {}
    with open(path) as f:
        for line in f:
            w = line.split()
            if len(w) == 5:
                procs[w[0]] = {"url": w[1], "pid": int(w[2]), "state": w[4]}
    return procs


def console_errors(events):
    errs = []
    for e in events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errs.append("console.%s: %s" % (p["type"], " ".join(str(a.get("value", a.get("description", "")))
                                                                 for a in p.get("args", []))))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errs.append("exception: %s %s" % (d.get("text", ""), d.get("exception", {}).get("description", "")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            en = p["entry"]
            errs.append("log (%s): %s %s" % (en.get("source"), en.get("text"), en.get("url", "")))
    return errs


INSTANCES_JS = """JSON.stringify(Array.from(document.querySelectorAll('li.inst[data-instance]')).map(function (e) {
  return {name: e.dataset.instance, url: e.dataset.url, state: e.dataset.state, type: e.dataset.type}; }))"""


def instances(cdp):
    return json.loads(cdp.evaluate(INSTANCES_JS) or "[]")


def screenshot(cdp, path):
    h = cdp.evaluate("Math.ceil(document.documentElement.scrollHeight)") or 1000
    cdp.call("Emulation.setDeviceMetricsOverride",
             {"width": 1400, "height": int(h), "deviceScaleFactor": 1, "mobile": False})
    cdp.pump(0.3)
    png = base64.b64decode(cdp.call("Page.captureScreenshot", {"format": "png"}, timeout=30)["data"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png)
    return len(png)


def wait_for(cdp, cond, seconds, step=0.2):
    """Polls cond() (pumping DevTools events in between) for at most seconds."""
    end = time.monotonic() + seconds
    while True:
        v = cond()
        if v or time.monotonic() >= end:
            return v
        cdp.pump(step)


# ---------------------------------------------------------------- the test
def main():
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        bail("chromium is not installed: this test needs a real headless Chromium; "
             "install the Debian package: apt-get install chromium (or scripts/install-deps)")
    cluster_bin = os.path.join(BLD, "daemons", "dsys-cluster")
    if not os.access(os.path.join(BLD, "daemons", "dsys-faultd"), os.X_OK):
        bail("daemons/dsys-faultd is not built")

    tmp = tempfile.mkdtemp(prefix="dsys-dashboard-test-")
    conf = os.path.join(tmp, "cluster.conf")
    with open(conf, "w") as f:
        f.write("# every port picked at start\nregistry.port = 0\nauth.ports = 0,0,0\n"
                "data.ports = 0,0,0\ncompute.ports = 0,0,0\ngateway.port = 0\nfaultd.port = 0\n")
    env = dict(os.environ)
    # dsys-cluster passes its environment to the children; only dsys-faultd
    # reads these: a check every 500 ms, and a stopped instance fails a
    # check after 1 s.
    env.update(DSYS_INTERVAL_MS="500", DSYS_TIMEOUT_MS="1000")
    sup = None
    chrome = None
    stopped = None
    procs = {}
    load_stop = threading.Event()

    def cleanup():
        load_stop.set()
        if stopped:
            try:
                os.kill(stopped, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if chrome and chrome.poll() is None:
            os.killpg(chrome.pid, signal.SIGTERM)   # its own process group, started here
            try:
                chrome.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(chrome.pid, signal.SIGKILL)
                chrome.wait()
        if sup and sup.poll() is None:
            sup.send_signal(signal.SIGTERM)          # stops every child, then exits
            try:
                sup.wait(20)
            except subprocess.TimeoutExpired:
                sup.kill()
                sup.wait()
        for name, p in procs.items():               # children by PID, should be gone already
            try:
                os.kill(p["pid"], signal.SIGKILL)
                diag("%s (pid %d) was still running; killed" % (name, p["pid"]))
            except (ProcessLookupError, PermissionError):
                pass

    def on_term(signum, frame):
        cleanup()
        sys.exit(1)
    signal.signal(signal.SIGTERM, on_term)

    try:
        # ---- the deployment
        t0 = time.monotonic()
        sup = subprocess.Popen([cluster_bin, "--config", conf, "--data-dir", tmp], stdout=subprocess.PIPE,
                               stderr=open(os.path.join(tmp, "cluster.err"), "w"), env=env)
        out = b""
        while b"gateway: " not in out and time.monotonic() - t0 < 40:
            r, _, _ = select.select([sup.stdout], [], [], 0.5)
            if r:
                chunk = os.read(sup.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
        if not ok(b"processes healthy" in out and b"gateway: " in out,
                  "dsys-cluster started every process (%.1f s)" % (time.monotonic() - t0)):
            diag(out.decode(errors="replace"))
            with open(os.path.join(tmp, "cluster.err")) as f:
                diag(f.read()[-2000:])
            bail("cluster did not start; see %s/logs" % tmp)
        procs = read_state(os.path.join(tmp, "cluster.state"))
        fd_url = procs.get("faultd", {}).get("url")
        gw_url = procs["gateway"]["url"]
        if not ok(bool(fd_url), "cluster.state lists dsys-faultd (%s)" % fd_url):
            bail("no faultd in cluster.state")
        watched = {n: p for n, p in procs.items() if n not in ("registry", "faultd")}

        # ---- GET / over plain HTTP
        st, hdr, body = http_get(fd_url + "/")
        ok(st == 200 and hdr.get("content-type", "").startswith("text/html"), "GET / is 200 text/html")
        ok(hdr.get("cache-control") == "no-cache", "GET / has Cache-Control: no-cache")
        csp = hdr.get("content-security-policy", "")
        ok("default-src 'self'" in csp and "http:" not in csp and "https:" not in csp and "*" not in csp,
           "GET / has a CSP limited to 'self' (%s)" % csp)
        low = body.lower()
        ok(b"<script src" not in low and b"<link rel=\"stylesheet\"" not in low and b"@import" not in low
           and b"src=\"http" not in low and b"href=\"http" not in low,
           "the page references no external script, style or font")

        # ---- Chromium
        prof = os.path.join(tmp, "chromium-profile")
        chrome_log = open(os.path.join(tmp, "chromium.log"), "w")
        chrome = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                   "--disable-background-networking", "--disable-component-update",
                                   "--disable-sync", "--disable-extensions", "--no-first-run",
                                   "--no-default-browser-check", "--remote-debugging-port=0",
                                   "--remote-debugging-address=127.0.0.1", "--user-data-dir=" + prof,
                                   "--window-size=1400,1000", "--hide-scrollbars", "about:blank"],
                                  stdout=chrome_log, stderr=chrome_log, start_new_session=True)
        port_file = os.path.join(prof, "DevToolsActivePort")
        end = time.monotonic() + 30
        port = None
        while time.monotonic() < end and chrome.poll() is None:
            try:
                with open(port_file) as f:
                    port = int(f.readline().strip())
                break
            except (OSError, ValueError):
                time.sleep(0.1)
        if not ok(port is not None, "chromium started with DevTools on port %s" % port):
            with open(os.path.join(tmp, "chromium.log")) as f:
                diag(f.read()[-3000:])
            bail("chromium did not start")
        ws = None
        while time.monotonic() < end and not ws:
            try:
                _, _, lst = http_get("http://127.0.0.1:%d/json/list" % port)
                ws = next((t["webSocketDebuggerUrl"] for t in json.loads(lst) if t.get("type") == "page"), None)
            except OSError:
                pass
            if not ws:
                time.sleep(0.1)
        if not ws:
            bail("no page target in chromium")
        cdp = CDP(ws)
        for m in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
            cdp.call(m)
        cdp.call("Emulation.setDeviceMetricsOverride",
                 {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
        cdp.events.clear()
        t_nav = time.monotonic()
        cdp.call("Page.navigate", {"url": fd_url + "/"})

        # ---- every instance healthy
        def all_healthy():
            inst = instances(cdp)
            by_url = {i["url"]: i for i in inst}
            return inst if all(by_url.get(p["url"], {}).get("state") == "healthy" for p in watched.values()) else None
        inst = wait_for(cdp, all_healthy, 15)
        if not ok(bool(inst), "every instance shows data-state=healthy (%.1f s after navigation)"
                  % (time.monotonic() - t_nav)):
            diag(json.dumps(instances(cdp)))
        inst = instances(cdp)
        ok(len(inst) == len(watched) and
           sorted(i["name"] for i in inst if i["type"] != "gateway") ==
           sorted(n for n in watched if n != "gateway"),
           "one element per instance (%d: %s)" % (len(inst), " ".join(sorted(i["name"] for i in inst))))
        types = cdp.evaluate("Array.from(document.querySelectorAll('section.svc')).map(function (e) "
                             "{ return e.dataset.serviceType; }).join(' ')")
        ok(types == "gateway auth data compute", "one card per service type (%s)" % types)

        # ---- traffic through the gateway reaches the cards and graphs
        def load():
            i = 0
            while not load_stop.is_set():
                i += 1
                try:
                    http_get("%s/api/data/data-%d" % (gw_url, 1 + i % 10), timeout=3)
                except OSError:
                    pass
                load_stop.wait(0.03)
        for _ in range(3):
            threading.Thread(target=load, daemon=True).start()

        def traffic_shown():
            v = cdp.evaluate("(function () { var t = document.querySelector('[data-card=requests] .value').textContent;"
                             " var pl = document.querySelector('#chart-rps polyline');"
                             " var now = document.querySelector('#chart-rps [data-now]').textContent;"
                             " return JSON.stringify([t, !!pl, now]); })()")
            t, line, now = json.loads(v)
            n = int(t.replace(",", "")) if t.replace(",", "").isdigit() else 0
            try:
                rps = float(now)
            except ValueError:
                rps = 0.0
            return (n, now) if n > 0 and line and rps > 0 else None
        shown = wait_for(cdp, traffic_shown, 10)
        ok(bool(shown), "gateway traffic shows in the requests card and the requests/s graph (%s)" % (shown,))
        cdp.pump(1.5)  # a few more samples for the graphs

        errs = console_errors(cdp.events)
        if not ok(not errs, "no console errors or exceptions while loading"):
            diag("\n".join(errs))
        origin = fd_url.rstrip("/")
        urls = [e["params"]["request"]["url"] for e in cdp.events if e["method"] == "Network.requestWillBeSent"]
        foreign = [u for u in urls if not (u.startswith(origin + "/") or u.startswith("data:"))]
        ok(urls and not foreign, "every request the page made went to the detector (%d requests%s)"
           % (len(urls), "; foreign: " + " ".join(foreign) if foreign else ""))
        ok(any(u.endswith("/api/events") for u in urls), "the page opened the event stream")
        size = screenshot(cdp, os.path.join(ART, "dashboard-healthy.png"))
        ok(size > 10000, "screenshot tests/artifacts/dashboard-healthy.png (%d bytes)" % size)

        # ---- data-2 stops answering
        victim = procs["data-2"]
        cdp.events.clear()
        os.kill(victim["pid"], signal.SIGSTOP)
        stopped = victim["pid"]
        t_kill = time.monotonic()

        def victim_unhealthy():
            return next((i for i in instances(cdp) if i["url"] == victim["url"] and i["state"] == "unhealthy"), None)
        gone = wait_for(cdp, victim_unhealthy, 10, step=0.1)
        el = time.monotonic() - t_kill
        ok(bool(gone) and el <= 10, "data-2 (pid %d, SIGSTOP) shows data-state=unhealthy after %.1f s (limit 10 s)"
           % (victim["pid"], el))
        others = [i for i in instances(cdp) if i["url"] != victim["url"]]
        ok(others and all(i["state"] == "healthy" for i in others), "every other instance stays healthy")
        n_unhealthy = cdp.evaluate("document.getElementById('dashboard').dataset.unhealthy")
        card = cdp.evaluate("document.querySelector('[data-card=unhealthy] .value').textContent")
        ok(n_unhealthy == "1" and card.startswith("1"), "the unhealthy card counts it (%s)" % card)
        alert = wait_for(cdp, lambda: cdp.evaluate(
            "(function () { var a = document.querySelector('#alerts li[data-kind=\"service-failure\"][data-instance=\"data-2\"]');"
            " return a ? a.textContent : null; })()"), max(0.5, 10 - (time.monotonic() - t_kill)))
        ok(bool(alert), "a CRITICAL service-failure alert for data-2 in the feed within 10 s (%s)" % alert)
        errs = console_errors(cdp.events)
        if not ok(not errs, "no console errors while the instance is down"):
            diag("\n".join(errs))
        size = screenshot(cdp, os.path.join(ART, "dashboard-unhealthy.png"))
        ok(size > 10000, "screenshot tests/artifacts/dashboard-unhealthy.png (%d bytes)" % size)
    finally:
        cleanup()
        pids = [p["pid"] for p in procs.values()] + ([sup.pid] if sup else [])
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        ok(not alive and (chrome is None or chrome.poll() is not None),
           "every process is gone (%s)" % (" ".join(map(str, alive)) or "none left"))
        if not FAILED:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            diag("kept %s for inspection" % tmp)
    print("1..%d" % N)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
