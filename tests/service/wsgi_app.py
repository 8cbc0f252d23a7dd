"""A tiny WSGI app served by ml_backend.wsgi, for tests/service/test_wsgi.py to stop and kill:
``python -m tests.service.wsgi_app PORT WORKERS THREADS``. Routes: /health, /pid, and /slow
(writes <file>.started, then answers once the file named in the query exists, so a test
holds a request in flight)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from urllib.parse import unquote

from ml_backend import wsgi


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/slow":
        release = Path(unquote(environ["QUERY_STRING"]))
        release.with_name(release.name + ".started").touch()
        while not release.exists():
            time.sleep(0.05)
    body = str(os.getpid()).encode() if path == "/pid" else b"ok"
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def main(port: int, workers: int, threads: int) -> int:
    listener = wsgi.listen("127.0.0.1", port)
    print("listening", flush=True)
    if workers == 1:
        wsgi.serve(app, listener, threads, None)
        return 0
    serve_one = lambda: wsgi.serve(app, listener, threads, None)  # noqa: E731
    return wsgi.prefork(workers, serve_one, lambda _: None, listener)


if __name__ == "__main__":
    sys.exit(main(*(int(value) for value in sys.argv[1:4])))
