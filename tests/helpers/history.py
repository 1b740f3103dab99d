#!/usr/bin/python3
"""History of a multi-host test run, and the checks made on it (Jepsen-style).

Clients in the root namespace call the gateways of the hosts and append
every operation, acknowledged or not, to a JSON-lines history: data writes
(compare-and-swap on a version), reads, job submits. After a scenario the
checker asserts, from the history and from what the surviving gateways
answer:

- no acknowledged write is lost: every key's value is the list of the ids
  of the writes applied to it, one per version; the list is a gap-free
  chain (version = 1 + its length: the creation, then one write per
  version) and every acknowledged write sits at the version it was
  acknowledged with;
- no acknowledged job is lost: every acknowledged submit completes, with
  the right result;
- at most one accepted completion per job: from the compute instances'
  logs, a completion counts unless its instance logged the queue's
  refusal of it (a stale fencing token); each job has exactly one, and
  it is by the instance named in the job's result;
- the registry view of every surviving gateway converges to the live
  instances (`converge`).

Standard library only (no PyPI). Subcommands: load, check, converge,
failures; `python3 history.py -h`.
"""
import argparse
import json
import os
import re
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request


def now_ms():
    return int(time.time() * 1000)


# https:// URLs: verified with the CA of --ca (the deployment's), else the
# system store
TLS = None
# POST, PUT, DELETE carry "Authorization: Bearer TOKEN" (load --token: a
# gateway that protects writes)
TOKEN = None


def http(method, url, body=None, timeout=15.0, refused=0):
    """(status, parsed JSON or None, elapsed ms); status 0 for a transport
    failure or timeout (the client gave up: the outcome is unknown), and
    `refused` when the connection was refused (nothing was sent)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if TOKEN and method != "GET":
        req.add_header("Authorization", "Bearer " + TOKEN)
    t0 = now_ms()
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=TLS) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    except urllib.error.URLError as e:
        return (refused if isinstance(e.reason, ConnectionRefusedError) else 0), None, now_ms() - t0
    except Exception:  # reset, timeout: unknown outcome
        return 0, None, now_ms() - t0
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = None
    return status, doc, now_ms() - t0


class History:
    """Append-only JSON lines, shared by the client threads."""

    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.mu = threading.Lock()

    def add(self, **op):
        with self.mu:
            self.f.write(json.dumps(op, separators=(",", ":")) + "\n")


def read_history(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- load -------------------------------------------------------------


def load(args):
    """Steady load through the gateways until the stop file appears (or
    --duration): per gateway a CAS writer on the shared keys, a reader and
    a job submitter, each pausing --pause ms between operations. With
    --failover a client whose gateway refuses the connection (stopped:
    nothing was sent, so even a write may go elsewhere) sends the request
    to the next gateway of the list instead; the history records it as
    "via"."""
    gws = dict(g.split("=", 1) for g in args.gateway)
    order = list(gws)

    def call(gw, method, url, path, body=None):
        """(status, doc, ms, via): through gw's url, or with --failover the
        next gateways in turn while they refuse the connection."""
        i = order.index(gw)
        for j in range(len(order) if args.failover else 1):
            name = order[(i + j) % len(order)]
            st, doc, ms = http(method, (url if j == 0 else gws[name]) + path, body,
                               timeout=args.timeout, refused=-1 if args.failover else 0)
            if st != -1:
                return st, doc, ms, (name if j else None)
        return 0, None, ms, None
    hist = History(args.out)
    keys = ["%s-k%d" % (args.prefix, i) for i in range(args.keys)]
    # the keys exist first (a 409 from a second loader is fine)
    for k in keys:
        for _ in range(50):
            url = next(iter(gws.values()))
            st, _, _ = http("POST", url + "/api/data", {"key": k, "value": []})
            if st in (201, 409):
                break
            time.sleep(0.2)
        else:
            sys.exit("history load: cannot create key %s" % k)
    end = time.time() + args.duration
    stop = threading.Event()
    seq = [0]
    mu = threading.Lock()

    def next_id(gw):
        with mu:
            seq[0] += 1
            return "%s-%s-%d" % (args.prefix, gw, seq[0])

    def running():
        return not stop.is_set() and time.time() < end and not os.path.exists(args.stop_file)

    def writer(gw, url):
        i = 0
        while running():
            k = keys[i % len(keys)]
            i += 1
            t0 = now_ms()
            st, doc, ms, via = call(gw, "GET", url, "/api/data/%s" % k)
            if st != 200:
                hist.add(op="read", gw=gw, key=k, t0=t0, status=st, ms=ms, via=via)
                time.sleep(args.pause / 1000)
                continue
            d = doc["data"]
            wid = next_id(gw)
            t0 = now_ms()
            st, doc, ms, via = call(gw, "PUT", url, "/api/data/%s" % k,
                                    {"value": d["value"] + [wid], "expectedVersion": d["version"]})
            ver = doc["data"]["version"] if st == 200 and doc and "data" in doc else None
            hist.add(op="write", gw=gw, key=k, wid=wid, base=d["version"], version=ver,
                     status=st, t0=t0, ms=ms, body=(doc if st not in (200, 412) else None), via=via)
            time.sleep(args.pause / 1000)

    def reader(gw, url):
        i = 0
        while running():
            k = keys[i % len(keys)]
            i += 1
            t0 = now_ms()
            st, doc, ms, via = call(gw, "GET", url, "/api/data/%s" % k)
            hist.add(op="read", gw=gw, key=k, t0=t0, ms=ms, status=st, via=via,
                     version=(doc or {}).get("data", {}).get("version") if st == 200 else None)
            time.sleep(args.pause / 1000)

    def submitter(gw, url):
        n = 0
        while running():
            n += 1
            a = (hash(gw) % 1000) * 100000 + n
            t0 = now_ms()
            st, doc, ms, via = call(gw, "POST", url, "/api/compute/job",
                                    {"type": "add", "data": {"operands": [a, 1]}})
            hist.add(op="submit", gw=gw, t0=t0, ms=ms, status=st, expect=a + 1, via=via,
                     jobId=(doc or {}).get("jobId") if st == 202 else None,
                     body=(doc if st != 202 else None))
            time.sleep(args.pause * 4 / 1000)

    threads = []
    for gw, url in gws.items():
        for fn in (writer, reader, submitter):
            th = threading.Thread(target=fn, args=(gw, url), daemon=True)
            th.start()
            threads.append(th)
    try:
        while running():
            time.sleep(0.1)
    finally:
        stop.set()
        for th in threads:
            th.join(args.timeout + 5)


# ---- check ------------------------------------------------------------

COMPLETED = re.compile(r" job (\d+) completed .*attempt=(\d+)")
REFUSED = re.compile(r"job (\d+): recording outcome: ")
# the fencing token's refusal (DSYS_ELEASE); any other error recording an
# outcome (the database lost during the commit) leaves it unknown
STALE = "lease lost"


def completions(logs, unknown=None):
    """{jobId: {instance: accepted completions}} from the compute logs
    (name -> text): a "completed" line counts, a failure to record that
    job's outcome in the same log takes one back (a refused outcome that
    was a release, after the lease was lost, takes back nothing). A failure
    other than the fencing token's refusal may have been applied all the
    same: (jobId, instance) goes into the set `unknown` when given."""
    done, refused = {}, {}
    for name, text in logs.items():
        for m in COMPLETED.finditer(text):
            c = done.setdefault(m.group(1), {})
            c[name] = c.get(name, 0) + 1
        for m in REFUSED.finditer(text):
            r = refused.setdefault(m.group(1), {})
            r[name] = r.get(name, 0) + 1
            if unknown is not None and not text.startswith(STALE, m.end()):
                unknown.add((m.group(1), name))
    out = {}
    for job in set(done) | set(refused):
        for name in set(done.get(job, {})) | set(refused.get(job, {})):
            c, r = done.get(job, {}).get(name, 0), refused.get(job, {}).get(name, 0)
            out.setdefault(job, {})[name] = c - min(c, r)
    return out


def check_history(ops, finals, jobs, comp, uncertain=(), unknown=()):
    """The checks on data already fetched: ops (the history), finals
    {key: (version, value list)}, jobs {jobId: the job's JSON or None},
    comp (completions()), uncertain (instances whose logs may miss
    lines: on a killed host), unknown ((jobId, instance) whose completion's
    outcome is unknown: completions(unknown=)). A list of problems, empty
    when all hold."""
    bad = []
    writes = [o for o in ops if o["op"] == "write"]
    for k, (ver, val) in sorted(finals.items()):
        if not isinstance(val, list):
            bad.append("key %s: value is not a list of write ids: %r" % (k, val))
            continue
        if ver != len(val) + 1:
            bad.append("key %s: version %s but %d writes in its chain (a gap or a lost write)"
                       % (k, ver, len(val)))
        if len(set(val)) != len(val):
            bad.append("key %s: a write applied twice in its chain" % k)
    for o in writes:
        if o["status"] != 200:
            continue
        if o["key"] not in finals:
            bad.append("acknowledged write %s: key %s is gone" % (o["wid"], o["key"]))
            continue
        ver, val = finals[o["key"]]
        v = o["version"]
        if not isinstance(val, list) or not v or v - 2 >= len(val) or val[v - 2] != o["wid"]:
            bad.append("acknowledged write %s (key %s, version %s) is lost"
                       % (o["wid"], o["key"], v))
        elif v != o["base"] + 1:
            bad.append("write %s: acknowledged version %s after base %s" % (o["wid"], v, o["base"]))
    for o in ops:
        if o["op"] != "submit" or o["status"] != 202:
            continue
        j = jobs.get(str(o["jobId"]))
        if not j:
            bad.append("acknowledged job %s is lost" % o["jobId"])
            continue
        if j.get("status") != "completed":
            bad.append("acknowledged job %s is %s, not completed" % (o["jobId"], j.get("status")))
            continue
        res = j.get("result") or {}
        if res.get("result") != o["expect"]:
            bad.append("job %s: result %r, expected %r" % (o["jobId"], res.get("result"), o["expect"]))
        by = {n: c for n, c in comp.get(str(o["jobId"]), {}).items() if c}
        # an unknown outcome that the job's result shows was applied
        if not by and (str(o["jobId"]), res.get("service")) in unknown:
            by = {res.get("service"): 1}
        sure = {n: c for n, c in by.items() if n not in uncertain}
        if any(c > 1 for c in by.values()) or len(sure) > 1:
            bad.append("job %s: accepted completions %r (at most one)" % (o["jobId"], by))
        elif res.get("service") not in uncertain and list(sure) != [res.get("service")]:
            bad.append("job %s: completed by %r, but accepted completions are %r"
                       % (o["jobId"], res.get("service"), by))
    return bad


def check(args):
    ops = read_history(args.history)
    gws = [g.split("=", 1)[1] for g in args.gateway]
    keys = sorted({o["key"] for o in ops if o["op"] in ("write", "read")})

    def fetch(path):
        # through any surviving gateway, bounded retries: a read is idempotent
        for _ in range(args.retries):
            for url in gws:
                st, doc, _ = http("GET", url + path, timeout=10)
                if st in (200, 404):
                    return st, doc
            time.sleep(0.5)
        return 0, None

    finals = {}
    for k in keys:
        st, doc = fetch("/api/data/" + k)
        if st == 200:
            finals[k] = (doc["data"]["version"], doc["data"]["value"])
    jobs = {}
    deadline = time.time() + args.job_timeout
    for o in ops:
        if o["op"] == "submit" and o["status"] == 202:
            while True:
                st, doc = fetch("/api/compute/job/%s" % o["jobId"])
                if st != 200 or doc.get("status") in ("completed", "failed") or time.time() > deadline:
                    break
                time.sleep(0.3)
            jobs[str(o["jobId"])] = doc if st == 200 else None
    logs = {}
    for spec in args.worker_log:
        name, path = spec.split("=", 1)
        with open(path, errors="replace") as f:
            logs[name] = f.read()
    unknown = set()
    comp = completions(logs, unknown)
    bad = check_history(ops, finals, jobs, comp, set(args.uncertain), unknown)
    n = lambda op, st: sum(1 for o in ops if o["op"] == op and o["status"] == st)
    print("history: %d writes acknowledged (%d CAS conflicts, %d unknown), %d jobs acknowledged, "
          "%d reads; %d keys checked, %d jobs checked: %s"
          % (n("write", 200), n("write", 412),
             sum(1 for o in ops if o["op"] == "write" and o["status"] not in (200, 412)),
             n("submit", 202), sum(1 for o in ops if o["op"] == "read"), len(finals), len(jobs),
             "ok" if not bad else "%d problems" % len(bad)))
    for b in bad[:30]:
        print("history: " + b)
    return 1 if bad else 0


# ---- failures ---------------------------------------------------------


def failures(args):
    """Failed requests in the history: reads (idempotent) that did not get
    200 after --after (epoch ms; per gateway with GW=MS), and the slowest
    request and the statuses of the non-idempotent ones (writes, submits)
    from --after on. Prints one JSON object."""
    ops = read_history(args.history)
    after = {}
    default = 0
    for a in args.after:
        if "=" in a:
            gw, ms = a.split("=", 1)
            after[gw] = int(ms)
        else:
            default = int(a)
    since = lambda o: o["t0"] >= after.get(o["gw"], default)
    reads = [o for o in ops if o["op"] == "read" and since(o)]
    failed = [o for o in reads if o["status"] != 200]
    nonidem = [o for o in ops if o["op"] in ("write", "submit") and since(o)]
    statuses = {}
    for o in nonidem:
        statuses[str(o["status"])] = statuses.get(str(o["status"]), 0) + 1
    # a clear answer: done, a CAS conflict, or an error JSON: 503 (nothing
    # to serve it now) or 504 (sent to an instance that died with it: the
    # outcome is unknown, said after the gateway's try timeout)
    unclear = [o for o in nonidem if o["status"] not in (200, 202, 412) and not (
        o["status"] in (503, 504) and isinstance(o.get("body"), dict) and o["body"].get("error"))]
    # the client's timeout (--timeout of load, above the gateway's 30 s
    # deadline) passed without an answer: a hang
    hung = [o for o in ops if o["status"] == 0 and since(o)]
    out = {"reads": len(reads), "failedReads": len(failed), "noAnswer": len(hung),
           "firstFailed": failed[:3], "nonIdempotent": len(nonidem), "statuses": statuses,
           "unclear": len(unclear), "unclearSample": unclear[:3],
           "maxMs": max([o["ms"] for o in ops if since(o)] or [0])}
    print(json.dumps(out))
    return 0


# ---- converge ---------------------------------------------------------


def view(url):
    """A gateway's /status as ({type: healthy instance URLs}, {type: the
    ones it routes to now}), or None. Healthy = registered and passing its
    health checks: the view; an outlier ejection (the gateway resting an
    instance that answered errors) takes it out of rotation for a while
    without taking it out of the view."""
    st, doc, _ = http("GET", url + "/status", timeout=3)
    if st != 200 or not doc:
        return None
    svc = doc.get("services", {})
    healthy = {t: {i["url"] for i in l if i.get("healthy")} for t, l in svc.items()}
    routed = {t: {i["url"] for i in l if i.get("healthy") and not i.get("ejected")}
              for t, l in svc.items()}
    return healthy, routed


def converge(args):
    """Waits (at most --timeout s) until the view (healthy instances) of
    every gateway is exactly --live (URLs of instances), and records when
    it stopped routing to every --dead instance ("gone", ms since
    --since); prints both per gateway and returns 0 when every view
    converged."""
    live = set(u for u in args.live.split(",") if u)
    dead = set(u for u in args.dead.split(",") if u)
    t0 = args.since or now_ms()
    done, gone, last = {}, {}, {}
    names = [g.split("=", 1)[0] for g in args.gateway]
    end = time.time() + args.timeout
    while time.time() < end and len(done) < len(names):
        for g in args.gateway:
            name, url = g.split("=", 1)
            if name in done:
                continue
            v = view(url)
            if v is None:
                continue
            seen = set().union(*v[0].values())
            last[name] = seen
            # gone: no dead instance is routed to any more
            if name not in gone and not set().union(*v[1].values()) & dead:
                gone[name] = now_ms() - t0
            if seen == live:
                done[name] = now_ms() - t0
        time.sleep(0.05)
    out = {"gone": gone, "converged": done, "pending": {
        n: sorted(last[n] ^ live) if n in last else None for n in names if n not in done}}
    # what a view that did not converge shows of its pending instances:
    # their /status entries ("absent": the gateway does not have it at all)
    detail = {}
    for g in args.gateway:
        name, url = g.split("=", 1)
        if name in done or not out["pending"].get(name):
            continue
        st, doc, _ = http("GET", url + "/status", timeout=3)
        entries = [i for l in ((doc or {}).get("services") or {}).values() for i in l] if st == 200 else []
        detail[name] = {u: next((i for i in entries if i.get("url") == u), "absent")
                        for u in out["pending"][name]}
    if detail:
        out["detail"] = detail
    print(json.dumps(out))
    return 0 if len(done) == len(names) and len(gone) == len(names) else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ca", help="PEM CA that https:// gateways' certificates must verify with")
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("load", help="steady load through the gateways, recorded")
    lp.add_argument("--gateway", action="append", required=True, help="NAME=URL (repeat)")
    lp.add_argument("--out", required=True)
    lp.add_argument("--stop-file", required=True, help="stop when this file exists")
    lp.add_argument("--duration", type=float, default=300)
    lp.add_argument("--keys", type=int, default=4)
    lp.add_argument("--prefix", default="mh")
    lp.add_argument("--token", help="bearer token sent with writes and submits (a gateway "
                    "protecting writes)")
    lp.add_argument("--failover", action="store_true",
                    help="a refused connection goes to the next gateway of the list")
    lp.add_argument("--pause", type=float, default=50, help="ms between operations")
    lp.add_argument("--timeout", type=float, default=35,
                    help="s per request (above the gateway's 30 s deadline)")
    cp = sub.add_parser("check", help="the checks after a scenario")
    cp.add_argument("--history", required=True)
    cp.add_argument("--gateway", action="append", required=True, help="NAME=URL of a survivor")
    cp.add_argument("--worker-log", action="append", default=[], help="INSTANCE=PATH")
    cp.add_argument("--uncertain", action="append", default=[], help="INSTANCE whose log may miss lines")
    cp.add_argument("--job-timeout", type=float, default=60)
    cp.add_argument("--retries", type=int, default=20)
    fp = sub.add_parser("failures", help="failed requests from a time on")
    fp.add_argument("--history", required=True)
    fp.add_argument("--after", action="append", default=[], help="MS or GW=MS (epoch ms)")
    vp = sub.add_parser("converge", help="wait for the gateways' views")
    vp.add_argument("--gateway", action="append", required=True, help="NAME=URL")
    vp.add_argument("--live", required=True, help="URLs of the live instances, comma-separated")
    vp.add_argument("--dead", default="", help="URLs of the dead instances, comma-separated")
    vp.add_argument("--timeout", type=float, default=30)
    vp.add_argument("--since", type=int, default=0, help="epoch ms to measure from (default now)")
    a = p.parse_args()
    global TLS, TOKEN
    if a.ca:
        TLS = ssl.create_default_context(cafile=a.ca)
    TOKEN = getattr(a, "token", None)
    return {"load": load, "check": check, "failures": failures, "converge": converge}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main())
