"""Fetching is safe: only Label Studio's host, its presign redirects and listed hosts; local
files only under the document root; limits on size and time; no link-local addresses."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

import pytest

from tests.conftest import reply
from worker.contract.errors import ImageError
from worker.labelstudio.deadline import DeadlineAdapter
from worker.labelstudio.fetch import FetchLimits, ImageFetcher


class _Images(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.startswith("/tasks/go?to="):  # a presign endpoint: redirects to ``to``
            self.send_response(302)
            self.send_header("Location", unquote(self.path.removeprefix("/tasks/go?to=")))
            self.end_headers()
            return
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
        if self.path == "/auth.png":  # echoes the credentials it was sent
            reply(self, self.headers.get("Authorization", "none").encode())
            return
        reply(self, b"x" * (200_000 if self.path == "/big.png" else 100))

    def log_message(self, *args):
        pass


def serve(handler: type[BaseHTTPRequestHandler]):
    """A threaded HTTP server on a free loopback port: yields ``host:port``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def server():
    yield from serve(_Images)


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


# --- what the security review found: parser mismatches, IPv6 spellings, slow drips ------------


class _Drips(BaseHTTPRequestHandler):
    """Answers a byte at a time, each just inside any per-read timeout, for a few seconds at most
    (so a test cannot hang); ``/tasks/hopN`` redirects N times, each hop a little slow."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        try:
            if self.path.startswith("/tasks/hop"):
                hops = int(self.path.removeprefix("/tasks/hop"))
                time.sleep(0.5)
                self.send_response(302)
                self.send_header("Location", f"/tasks/hop{hops - 1}" if hops > 1 else "/body")
                self.end_headers()
                return
            if self.path == "/slow-headers":
                self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
                self._drip(b"a" * 12)
                self.wfile.write(b"\r\nContent-Length: 3\r\n\r\nabc")
                return
            self.send_response(200)
            self.send_header("Content-Length", "12")
            self.end_headers()
            if self.path == "/slow-body":
                self._drip(b"x" * 12)
            else:
                self.wfile.write(b"x" * 12)
        except OSError:  # the client gave up, as it should
            return

    def _drip(self, data: bytes) -> None:
        for byte in data:  # 3 s in all: less than 4 x FETCH_TIMEOUT, the old per-chunk check
            self.wfile.write(bytes([byte]))
            time.sleep(0.25)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def drips():
    yield from serve(_Drips)


def test_the_host_checked_is_the_host_connected_to(tmp_path, server, drips):
    """urllib reads the host after the ``@``, urllib3 (so requests) before the backslash."""
    listed = fetcher(tmp_path, hosts=(server,))
    with pytest.raises(ImageError, match="backslash"):
        listed.fetch(f"http://{drips}\\@{server}/ok.png")
    with pytest.raises(ImageError, match="user:pass@"):
        listed.fetch(f"http://user:secret@{server}/ok.png")
    with pytest.raises(ImageError, match="user:pass@"):
        fetcher(tmp_path, hosts=(server, drips)).fetch(f"http://{drips}@{server}/ok.png")


def test_control_characters_and_whitespace_are_refused(tmp_path, server):
    listed = fetcher(tmp_path, hosts=(server,))
    for url in (
        f"http://{server}/ok.png\r\nX-Injected: 1",
        f"http://{server}/ok\t.png",
        f"http://{server} /ok.png",
        f"http://{server}/ok\u200b.png",  # zero-width space
    ):
        with pytest.raises(ImageError, match="control characters or whitespace"):
            listed.fetch(url)
    # urllib drops the tab, and "//data/x" would have been another host, with the API key
    with pytest.raises(ImageError, match="control characters or whitespace"):
        ImageFetcher(f"http://{server}", "secret").fetch("/\t//data/x")
    assert listed.fetch(f"http://{server}/my image.png") == b"x" * 100  # a plain space is fine


@pytest.mark.parametrize(
    "host",
    [
        "[::ffff:169.254.169.254]",  # IPv4-mapped
        "[::ffff:a9fe:a9fe]",  # the same, in hex
        "[::169.254.169.254]",  # IPv4-compatible
        "[2002:a9fe:a9fe::1]",  # 6to4
        "[64:ff9b::169.254.169.254]",  # NAT64
    ],
)
def test_link_local_addresses_are_refused_in_their_ipv6_spellings(tmp_path, host):
    with pytest.raises(ImageError, match="link-local"):
        fetcher(tmp_path, hosts=(host,), timeout=1).fetch(f"http://{host}/latest/meta-data/")


def test_names_resolving_to_an_embedded_link_local_address_are_refused(tmp_path, monkeypatch):
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if host != "metadata.test":
            return real(host, *args, **kwargs)
        mapped = ("::ffff:169.254.169.254", 80, 0, 0)
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", mapped)]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(ImageError, match="link-local"):
        fetcher(tmp_path, hosts=("metadata.test",), timeout=1).fetch("http://metadata.test/")


def test_metadata_services_outside_link_local_space_are_refused(tmp_path):
    for host in ("100.100.100.200", "[fd00:ec2::254]", "[::ffff:100.100.100.200]"):
        with pytest.raises(ImageError, match="metadata"):
            fetcher(tmp_path, hosts=(host,), timeout=1).fetch(f"http://{host}/latest/")


@pytest.mark.parametrize("path", ["/slow-body", "/slow-headers"])
def test_the_timeout_bounds_a_dripping_download(tmp_path, drips, path):
    assert fetcher(tmp_path, hosts=(drips,)).fetch(f"http://{drips}/fast")  # the server works
    with pytest.raises(ImageError, match="took longer than 1 s"):
        fetcher(tmp_path, hosts=(drips,), timeout=1).fetch(f"http://{drips}{path}")


def test_the_timeout_bounds_all_redirect_hops_together(drips):
    assert ImageFetcher(f"http://{drips}").fetch("/tasks/hop1") == b"x" * 12  # hops work
    label_studio = ImageFetcher(f"http://{drips}", limits=FetchLimits(timeout=1))
    with pytest.raises(ImageError, match="took longer than 1 s"):
        label_studio.fetch("/tasks/hop3")  # three hops of half a second each


def test_the_api_key_goes_only_to_label_studios_origin(tmp_path, server):
    assert ImageFetcher(f"http://{server}", "secret").fetch(f"http://{server}/auth.png") == (
        b"Token secret"
    )
    # Label Studio is on https: the same host and port over plain http does not get the key
    downgraded = ImageFetcher(f"https://{server}", "secret", limits=FetchLimits(hosts=(server,)))
    assert downgraded.fetch(f"http://{server}/auth.png") == b"none"


@pytest.mark.parametrize(
    "ref", ["/data/../api/projects/", "/data/upload/%2e%2e/%2e%2e/api/x", "/tasks/1/./../../api/"]
)
def test_dot_segments_cannot_move_a_label_studio_path_to_another_endpoint(ref):
    fetcher = ImageFetcher("http://127.0.0.1:9", "secret")
    with pytest.raises(ImageError, match="segments in a Label Studio path are refused"):
        fetcher.fetch(ref, 1)


def presign_to(url: str) -> str:
    return "/tasks/go?to=" + quote(url, safe="")


def test_a_presign_redirect_to_this_machine_is_refused_unless_listed(server):
    port = server.rsplit(":", 1)[1]
    elsewhere = f"http://localhost:{port}/ok.png"  # loopback, and not Label Studio's host
    assert ImageFetcher(f"http://{server}").fetch(presign_to(f"http://{server}/ok.png"))
    with pytest.raises(ImageError, match="loopback address: a redirect there is refused"):
        ImageFetcher(f"http://{server}").fetch(presign_to(elsewhere))
    listed = ImageFetcher(f"http://{server}", limits=FetchLimits(hosts=(f"localhost:{port}",)))
    assert listed.fetch(presign_to(elsewhere)) == b"x" * 100


def test_the_address_connected_to_is_checked_not_only_the_one_resolved_first(server, monkeypatch):
    """DNS rebinding: the name answers a harmless address for the check, then loopback."""
    real, answers = socket.getaddrinfo, iter(["192.0.2.1"])

    def resolve(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        address = next(answers, "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    port = server.rsplit(":", 1)[1]
    with pytest.raises(ImageError, match="127.0.0.1, a loopback address"):
        ImageFetcher(f"http://{server}").fetch(presign_to(f"http://rebind.test:{port}/ok.png"))


class _DripProxy(BaseHTTPRequestHandler):
    """An HTTP proxy that drips 40 bytes over 10 s, and notes whether the client cut it short."""

    cut: list[bool] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", "40")
        self.end_headers()
        try:
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.25)
        except OSError:
            _DripProxy.cut.append(True)
            return
        _DripProxy.cut.append(False)

    def log_message(self, *args):
        pass


def test_the_deadline_holds_through_an_http_proxy(tmp_path, monkeypatch):
    real = socket.getaddrinfo

    def resolve(host, port, *args, **kwargs):
        if host == "images.test":  # resolvable here; the proxy does the real connecting
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.10", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    proxy = serve(_DripProxy)
    address = next(proxy)
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://{address}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        slow = fetcher(tmp_path, hosts=("images.test",), timeout=1)
        with pytest.raises(ImageError, match="took longer than 1 s"):
            slow.fetch("http://images.test/a.png")
        waited = time.monotonic() + 30
        while not _DripProxy.cut and time.monotonic() < waited:  # the proxy sees its end
            time.sleep(0.05)
        assert _DripProxy.cut == [True]
    finally:
        next(proxy, None)
    manager = DeadlineAdapter().proxy_manager_for(f"http://{address}")
    assert manager.pool_classes_by_scheme == DeadlineAdapter().poolmanager.pool_classes_by_scheme


def test_an_image_relative_to_label_studio_names_the_settings_that_would_fetch_it():
    with pytest.raises(ImageError, match="LABEL_STUDIO_URL.*or LOCAL_FILES_DOCUMENT_ROOT"):
        ImageFetcher().fetch("/data/local-files/?d=tiles/a.png")
    with pytest.raises(ImageError, match="LABEL_STUDIO_API_KEY so camsam can fetch it$"):
        ImageFetcher().fetch("/data/upload/4/a.png")  # an upload lives in Label Studio only
    with pytest.raises(ImageError, match="is not a folder on this host"):
        ImageFetcher(document_root="/no/such/folder").fetch("/data/local-files/?d=a.png")
