#!/usr/bin/env python3
"""The servers bench/run-python-service compares: one trivial handler,
GET /hello -> {"hello": "world"}, on

  dsys N       distsys.Service (dsys_server) with N server threads
  stdlib       http.server.ThreadingHTTPServer (HTTP/1.1 keep-alive)
  waitress N   waitress (WSGI), N threads (Debian's python3-waitress)

Prints "listening URL" and serves until SIGTERM/SIGINT. (gunicorn is run
by the script itself, on the WSGI app below.)
"""
from __future__ import annotations

import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, List, Tuple

BODY = json.dumps({"hello": "world"}, separators=(",", ":")).encode()


def wsgi_app(environ: Any, start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The same handler as a WSGI application (waitress, gunicorn)."""
    if environ.get("PATH_INFO") != "/hello":
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    headers: List[Tuple[str, str]] = [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(BODY)))]
    start_response("200 OK", headers)
    return [BODY]


def run_dsys(threads: int) -> None:
    import distsys
    app = distsys.Service("bench", threads=threads, metrics=False)

    @app.get("/hello")
    def hello(req: distsys.Request) -> Any:
        return {"hello": "world"}

    app.serve_forever("http://127.0.0.1:0", drain_ms=1000)


class _H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    # headers and body go out in two writes: without this, Nagle plus the
    # client's delayed ACK stall each answer ~40 ms
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if self.path != "/hello":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *a: Any) -> None:
        pass


def run_stdlib() -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _H)
    srv.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print(f"listening http://127.0.0.1:{srv.server_address[1]}", flush=True)
    srv.serve_forever()


def run_waitress(threads: int) -> None:
    import waitress.server  # type: ignore[import]
    srv = waitress.server.create_server(wsgi_app, host="127.0.0.1", port=0,
                                        threads=threads)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print(f"listening http://127.0.0.1:{srv.effective_port}", flush=True)
    srv.run()


if __name__ == "__main__":
    kind = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    if kind == "dsys":
        run_dsys(n)
    elif kind == "stdlib":
        run_stdlib()
    elif kind == "waitress":
        run_waitress(n)
    else:
        sys.exit(f"unknown server {kind!r}")
