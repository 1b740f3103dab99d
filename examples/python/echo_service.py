#!/usr/bin/env python3
"""echo_service: examples/echo-service.c written in Python with
distsys.Service, so it can run beside the C instances behind dsys-gatewayd.

    echo_service.py [--listen URL] [--registry URL] [--type TYPE] [--id ID]
                    [--threads N] [--drain-ms MS]

Routes: GET /health, GET /ready, GET /metrics (built in), POST /echo
(answers the body back as {"echo": <body as a string>, "requestId": ...}),
GET /hello/{name}. With --registry (a dsys-registryd URL) it registers as
TYPE (default "echo") and the library heartbeats for it. Prints
"listening URL" once it serves; on SIGTERM or SIGINT it deregisters, lets
requests in flight finish (up to --drain-ms) and exits 0.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Dict, List, Optional

import distsys


def build(threads: int = 0) -> distsys.Service:
    """The service and its routes (also used by the benchmark)."""
    app = distsys.Service("echo", threads=threads, access_log=True)
    echoes = app.metrics.counter("echo_bytes_total", "bytes echoed")

    @app.post("/echo")
    def echo(req: distsys.Request) -> Any:
        body = req.body
        if len(body) > 1024:
            raise distsys.HTTPError(413, "echo takes at most 1024 bytes", "too_large")
        echoes.inc(len(body))
        return {"echo": body.decode("utf-8", "replace"), "requestId": req.id}

    @app.get("/hello/{name}")
    def hello(req: distsys.Request, name: str) -> Dict[str, str]:
        return {"hello": name}

    return app


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--listen", default="http://127.0.0.1:8080")
    ap.add_argument("--registry", help="dsys-registryd URL to register with")
    ap.add_argument("--type", default="echo", help="service type to register as")
    ap.add_argument("--id", help="instance id (default TYPE-PORT)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--drain-ms", type=int, default=5000)
    ap.add_argument("--heartbeat-ms", type=int, default=0)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    app = build(a.threads)
    try:
        app.listen(a.listen)
    except distsys.DistsysError as e:
        print(f"echo_service: cannot listen on {a.listen}: {e}", file=sys.stderr)
        return 1
    registry = None
    if a.registry:
        registry = distsys.Registry(a.registry)
        app.register(registry, a.id, type=a.type, tags=["python"],
                     heartbeat_ms=a.heartbeat_ms)
    clean = app.serve_forever(drain_ms=a.drain_ms)
    if registry is not None:
        registry.close()
    return 0 if clean else 3


if __name__ == "__main__":
    sys.exit(main())
