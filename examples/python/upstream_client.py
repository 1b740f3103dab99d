#!/usr/bin/env python3
"""Call the data service by name through distsys.Upstream (discovery,
balancing, per-endpoint circuit breakers, timeouts, retries).

    upstream_client.py --url http://127.0.0.1:4002 [--url ...] [PATH ...]
    upstream_client.py --registry http://127.0.0.1:4000 [PATH ...]
    upstream_client.py --registry-file /var/lib/dsys/registry.sqlite [PATH ...]

PATH defaults to /api/data (the item list). Prints the status, the
endpoint that answered, the number of attempts and the JSON body of each
call, then the per-endpoint statistics.
"""
import argparse
import json
import sys

import distsys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", action="append", default=[],
                    help="static endpoint of the data service (repeatable)")
    ap.add_argument("--registry", help="registry daemon URL (dsys-registryd)")
    ap.add_argument("--registry-file", help="shared SQLite registry file")
    ap.add_argument("--service", default="data", help="service type (data)")
    ap.add_argument("--policy", default="round_robin")
    ap.add_argument("paths", nargs="*", default=["/api/data"])
    a = ap.parse_args()
    if not (a.url or a.registry or a.registry_file):
        ap.error("give --url, --registry or --registry-file")
    reg = None
    try:
        if a.registry:
            reg = distsys.Registry(a.registry)
        elif a.registry_file:
            reg = distsys.Registry("sqlite", a.registry_file)
        with distsys.Upstream(a.service, registry=reg, policy=a.policy,
                              endpoints={f"static-{i}": u for i, u in enumerate(a.url)},
                              per_try_timeout_ms=2000, deadline_ms=8000) as up:
            for path in a.paths:
                r = up.call("GET", path)
                body = r.json() if r.body else None
                print(f"GET {path} -> {r.status} from {r.endpoint} "
                      f"in {r.attempts} attempt(s)")
                print(json.dumps(body, indent=2)[:2000])
            for s in up.stats():
                print(f"endpoint {s.id} {s.url}: {s.requests} requests, "
                      f"{s.successes} ok, {s.failures} failed, breaker {s.breaker_state}")
    except distsys.DistsysError as e:
        print(f"upstream_client: {e}", file=sys.stderr)
        return 1
    finally:
        if reg is not None:
            reg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
