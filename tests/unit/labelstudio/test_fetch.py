"""Fetching is safe: only Label Studio's host, its presign redirects and listed hosts; local
files only under the document root; limits on size and time; no link-local addresses."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from worker.contract.errors import ImageError
from worker.labelstudio.fetch import FetchLimits, ImageFetcher


class _Images(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/slow.png":
            time.sleep(2)
        if self.path == "/redirect.png":
            self.send_response(302)
            self.send_header("Location", "/ok.png")
            self.end_headers()
            return
        if self.path == "/missing.png":
            self.send_error(404)
            return
        body = b"x" * (200_000 if self.path == "/big.png" else 100)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def fetcher(tmp_path, **limits) -> ImageFetcher:
    return ImageFetcher("", "", str(tmp_path), FetchLimits(**limits))


def test_local_files_only_under_the_document_root(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    outside = tmp_path.parent / "secret.txt"
    outside.write_text("no")
    fetch = fetcher(tmp_path).fetch
    assert fetch("/data/local-files/?d=a.png") == b"png"
    assert fetch("a.png") == b"png"
    for ref in ("/data/local-files/?d=../secret.txt", str(outside), "../secret.txt", "/etc/passwd"):
        with pytest.raises(ImageError, match="outside LOCAL_FILES_DOCUMENT_ROOT|Label Studio"):
            fetch(ref)
    with pytest.raises(ImageError, match="outside"):
        ImageFetcher().fetch(str(tmp_path / "a.png"))  # no document root: no local files at all


def test_other_hosts_only_when_listed(tmp_path, server):
    with pytest.raises(ImageError, match="IMAGE_HOSTS"):
        fetcher(tmp_path).fetch(f"http://{server}/ok.png")
    assert fetcher(tmp_path, hosts=(server,)).fetch(f"http://{server}/ok.png") == b"x" * 100
    assert ImageFetcher(f"http://{server}").fetch(f"http://{server}/ok.png")  # Label Studio's


def test_redirects_only_from_the_presign_endpoint(tmp_path, server):
    with pytest.raises(ImageError, match="redirects"):
        fetcher(tmp_path, hosts=(server,)).fetch(f"http://{server}/redirect.png")


def test_size_time_and_status_limits(tmp_path, server):
    listed = (server,)
    with pytest.raises(ImageError, match="MAX_IMAGE_BYTES"):
        fetcher(tmp_path, hosts=listed, max_bytes=100_000).fetch(f"http://{server}/big.png")
    started = time.monotonic()
    with pytest.raises(ImageError, match="cannot fetch"):
        fetcher(tmp_path, hosts=listed, timeout=0.3).fetch(f"http://{server}/slow.png")
    assert time.monotonic() - started < 1.9  # gave up before the server answered
    with pytest.raises(ImageError, match="404"):
        fetcher(tmp_path, hosts=listed).fetch(f"http://{server}/missing.png")
    (tmp_path / "big.png").write_bytes(b"x" * 200)
    with pytest.raises(ImageError, match="MAX_IMAGE_BYTES"):
        fetcher(tmp_path, max_bytes=100).fetch("big.png")


def test_link_local_addresses_are_refused_even_when_listed(tmp_path):
    metadata = fetcher(tmp_path, hosts=("169.254.169.254",))
    with pytest.raises(ImageError, match="link-local"):
        metadata.fetch("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(ImageError, match="http"):
        fetcher(tmp_path).fetch("file:///etc/passwd")
