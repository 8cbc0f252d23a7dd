"""Fetching a task's image the way Label Studio serves it, and nothing else.

- ``/data/local-files/?d=<path>``: read from ``LOCAL_FILES_DOCUMENT_ROOT`` when this machine has
  it (never outside it), else through Label Studio;
- ``/data/upload/...`` and other relative URLs: from ``LABEL_STUDIO_URL`` with the API key
  (a legacy token is sent as ``Token``; a personal access token is exchanged for an access token);
- cloud storage URIs (``s3://``, ``gs://``, ``azure-blob://``): through Label Studio's task
  presign endpoint, which redirects to a signed URL (the key is not sent on to that host);
- plain ``http(s)`` URLs only from Label Studio's host or a host in ``IMAGE_HOSTS``;
- local paths only under the document root.

Every download has a size limit and one deadline, ``FETCH_TIMEOUT`` from the first connect to the
last byte of the last redirect hop. Redirects are followed only from the presign endpoint, each hop
checked. URLs are judged as requests will connect to them, and refused where URL parsers could
disagree on the host (backslashes, ``user:pass@``, control characters). Link-local addresses and
cloud metadata services are refused, in whatever IPv6 form embeds their IPv4 address.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import re
import socket
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urljoin, urlparse, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import LocationParseError
from urllib3.util import Url, parse_url

from worker.contract import defaults
from worker.contract.errors import ImageError
from worker.contract.settings import Settings

CLOUD_SCHEMES = ("s3", "gs", "gcs", "azure-blob", "azure-spi")
MAX_REDIRECTS = 3
DEFAULT_PORTS = {"http": 80, "https": 443}
# Cloud metadata services outside link-local space (AWS's IPv6 one, Alibaba Cloud's).
METADATA_ADDRESSES = frozenset(map(ipaddress.ip_address, ("fd00:ec2::254", "100.100.100.200")))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SCHEME_AND_HOST = re.compile(r"[^/?#]*(//[^/?#]*)?")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FetchLimits:
    timeout: float = defaults.FETCH_TIMEOUT  # seconds for a whole download, redirects included
    max_bytes: int = defaults.MAX_IMAGE_BYTES
    hosts: tuple[str, ...] = ()  # hosts (any port) or host:port besides Label Studio's

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchLimits:
        hosts = [h.strip() for h in settings.image_hosts.split(",")]
        return cls(
            settings.fetch_timeout or cls.timeout,
            settings.max_image_bytes or cls.max_bytes,
            tuple(h for h in hosts if h),
        )


class ImageFetcher:
    def __init__(
        self,
        label_studio_url: str = "",
        api_key: str = "",
        document_root: str = "",
        limits: FetchLimits | None = None,
    ) -> None:
        self.base = label_studio_url.rstrip("/")
        self.api_key = api_key
        self.document_root = Path(document_root).resolve() if document_root else None
        self.limits = limits or FetchLimits()
        self.session = requests.Session()
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, _DeadlineAdapter())
        try:
            self._own = _origin(parse_url(self.base)) if self.base else None
        except LocationParseError as error:
            raise ImageError(f"LABEL_STUDIO_URL {self.base!r} is not a URL: {error}") from error
        self._hosts = frozenset(h.lower() for h in self.limits.hosts)
        self._access: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def fetch(self, ref: str, task_id: int | None = None) -> bytes:
        """The encoded image bytes for a task's image reference (``task_id`` for presigning).

        Raises:
            ImageError: unreachable, refused, too large or slow, or not from an allowed place.
        """
        parsed = urlparse(ref)
        if parsed.scheme in CLOUD_SCHEMES:
            ref = self._presign_path(ref, task_id)
            parsed = urlparse(ref)
        if parsed.path.startswith("/data/local-files") and self.document_root:
            relative = unquote(parse_qs(parsed.query).get("d", [""])[0])
            return self._read(self.document_root / relative, ref)
        if parsed.scheme in ("http", "https"):
            return self._download(ref)
        if ref.startswith("/") and parsed.path.startswith(("/tasks/", "/projects/", "/data/")):
            if not self.base:
                raise ImageError(
                    f"image {ref} is relative to Label Studio: set LABEL_STUDIO_URL and "
                    "LABEL_STUDIO_API_KEY so camsam can fetch it"
                )
            _refuse_ambiguous(ref)  # urljoin drops tabs and newlines, which could move the host
            url = urljoin(self.base + "/", ref.lstrip("/"))
            if parsed.path.startswith(("/tasks/", "/projects/")):
                return self._download(url, redirects=MAX_REDIRECTS)
            return self._download(url)
        if parsed.scheme:
            raise ImageError(f"{ref}: camsam fetches http(s), Label Studio and storage URLs only")
        return self._read(Path(ref), ref)

    def _presign_path(self, uri: str, task_id: int | None) -> str:
        if task_id is None or not self.base:
            raise ImageError(
                f"{uri} is in cloud storage: camsam fetches it through Label Studio, so set "
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"
            )
        encoded = base64.urlsafe_b64encode(uri.encode()).decode()
        return f"/tasks/{int(task_id)}/presign/?fileuri={encoded}"

    def _read(self, path: Path, ref: str) -> bytes:
        """A local file, only under the document root."""
        root = self.document_root
        resolved = (root / path if root and not path.is_absolute() else path).resolve()
        if root is None or not resolved.is_relative_to(root):
            raise ImageError(
                f"{ref} is a local path outside LOCAL_FILES_DOCUMENT_ROOT: camsam reads local "
                "files only under it"
            )
        try:
            size = resolved.stat().st_size
            if size > self.limits.max_bytes:
                raise ImageError(f"{ref} is {size} bytes, above MAX_IMAGE_BYTES")
            return resolved.read_bytes()
        except OSError as error:
            raise ImageError(f"cannot read image {ref}: {error}") from error

    def _download(self, url: str, redirects: int = 0) -> bytes:
        """GET within the size limit and one deadline for every hop and every read, so a
        server that drips bytes cannot hold a worker past FETCH_TIMEOUT."""
        with _Deadline(self.limits.timeout) as deadline:
            try:
                return self._follow(url, redirects, deadline)
            except requests.RequestException as error:
                if isinstance(error, requests.Timeout) or deadline.passed():
                    raise ImageError(self._too_slow(url)) from error
                raise ImageError(f"cannot fetch {url}: {error}") from error

    def _follow(self, url: str, redirects: int, deadline: _Deadline) -> bytes:
        """``redirects`` hops followed, each checked; the first must be Label Studio's host or
        listed, and only it gets the credentials (when it is Label Studio's origin)."""
        for hop in range(redirects + 1):
            prepared, target = self._prepare(url)
            if hop == 0:
                self._check_listed(url, target)
                if _origin(target) == self._own:
                    prepared.headers.update(self._auth())
            _check_address(target)
            remaining = deadline.remaining()
            if remaining <= 0:
                raise ImageError(self._too_slow(url))
            settings = self.session.merge_environment_settings(prepared.url, {}, True, None, None)
            response = self.session.send(
                prepared,
                timeout=min(remaining, self.limits.timeout),
                allow_redirects=False,
                **settings,
            )
            if not response.is_redirect:
                return self._content(url, response, deadline)
            response.close()
            if redirects == 0:
                break
            url = urljoin(url, response.headers["Location"])
        raise ImageError(
            f"{url} redirects: camsam follows redirects only from Label Studio's presign "
            f"endpoint, and at most {MAX_REDIRECTS}"
        )

    def _prepare(self, url: str) -> tuple[requests.PreparedRequest, Url]:
        """The request exactly as it will be sent, and its URL as it will be connected to."""
        _refuse_ambiguous(url)
        try:
            prepared = self.session.prepare_request(requests.Request("GET", url))
        except requests.RequestException as error:
            raise ImageError(f"{url!r} is not a URL camsam can fetch: {error}") from error
        return prepared, _connect_target(str(prepared.url))

    def _check_listed(self, url: str, target: Url) -> None:
        host, port = target.host or "", _origin(target)[2]
        own = self._own is not None and (host, port) == self._own[1:]
        if not (own or host in self._hosts or f"{host}:{port}" in self._hosts):
            raise ImageError(
                f"{url} is not on Label Studio's host: add {host} to IMAGE_HOSTS to fetch "
                "images from it"
            )

    def _content(self, url: str, response: requests.Response, deadline: _Deadline) -> bytes:
        with response:
            if response.status_code in (401, 403):
                raise ImageError(
                    f"Label Studio refused {url} ({response.status_code}): check "
                    "LABEL_STUDIO_API_KEY"
                )
            if response.status_code != 200:
                raise ImageError(f"fetching {url} answered {response.status_code}")
            chunks, size = [], 0
            for chunk in response.iter_content(1 << 14):
                size += len(chunk)
                if size > self.limits.max_bytes:
                    raise ImageError(
                        f"{url} is larger than MAX_IMAGE_BYTES ({self.limits.max_bytes})"
                    )
                if deadline.passed():
                    raise ImageError(self._too_slow(url))
                chunks.append(chunk)
            if deadline.passed():  # the deadline's shutdown reads as the end of a body
                raise ImageError(self._too_slow(url))
            return b"".join(chunks)

    def _too_slow(self, url: str) -> str:
        return (
            f"cannot fetch {url}: it took longer than {self.limits.timeout:g} s "
            "(FETCH_TIMEOUT bounds a whole download, redirects included)"
        )

    def _auth(self) -> dict:
        if not self.api_key:
            return {}
        if not _is_jwt(self.api_key):
            return {"Authorization": f"Token {self.api_key}"}
        return {"Authorization": f"Bearer {self._access_token()}"}

    def _access_token(self) -> str:
        """Exchange a personal access token (a JWT refresh token) for a short-lived one."""
        with self._lock:
            if self._access and self._access[1] > time.time():
                return self._access[0]
            url = f"{self.base}/api/token/refresh"
            try:
                response = self.session.post(
                    url, json={"refresh": self.api_key}, timeout=self.limits.timeout
                )
                response.raise_for_status()
                access = response.json()["access"]
            except (requests.RequestException, KeyError, ValueError) as error:
                raise ImageError(
                    f"cannot exchange the personal access token at {url}: {error}"
                ) from error
            self._access = (access, time.time() + 240)
            return access


def _refuse_ambiguous(url: str) -> None:
    """Refuse what URL parsers read differently: a backslash ends the host for urllib3 but not
    for urllib, which also drops tabs and newlines. A plain space is allowed only after the host,
    where requests percent-encodes it (Label Studio file names have spaces)."""
    if "\\" in url:
        raise ImageError(
            f"{url!r}: a backslash in a URL is refused (URL parsers disagree on where its "
            "host ends)"
        )
    odd = [c for c in url if unicodedata.category(c)[0] in "CZ" and c != " "]
    head = _SCHEME_AND_HOST.match(url)
    if odd or (head and " " in head.group(0)):
        raise ImageError(
            f"{url!r}: control characters or whitespace in a URL are refused (URL parsers "
            "disagree on them)"
        )


def _connect_target(url: str) -> Url:
    """``url`` (as prepared by requests) parsed the way urllib3 connects, refused unless it is
    http(s) without ``user:pass@`` and urllib, which requests picks the connection by, agrees."""
    try:
        target = parse_url(url)
        split = urlsplit(url)
        other = (unquote(split.hostname or ""), split.port or DEFAULT_PORTS.get(split.scheme))
    except (LocationParseError, ValueError) as error:
        raise ImageError(f"{url!r} is not a URL camsam can fetch: {error}") from error
    if target.scheme not in DEFAULT_PORTS or not target.host:
        raise ImageError(f"{url}: only http(s) URLs are fetched")
    if target.auth is not None:
        raise ImageError(
            f"{url}: a user:pass@ part in an image URL is refused (it hides the real host); "
            "camsam sends Label Studio's key itself"
        )
    if other != (unquote(target.host.strip("[]").lower()), _origin(target)[2]):
        raise ImageError(f"{url}: URL parsers disagree on its host, so it is refused")
    return target


def _origin(url: Url) -> tuple[str, str, int]:
    scheme = url.scheme or "http"
    return scheme, (url.host or "").lower(), url.port or DEFAULT_PORTS.get(scheme, 80)


def _check_address(target: Url) -> None:
    """Refuse hosts that are or resolve to link-local, multicast or unspecified addresses or a
    cloud metadata service, judged on the IPv4 address an IPv6 one embeds."""
    host = unquote((target.host or "").strip("[]"))  # an IPv6 zone may arrive as %25
    try:
        infos = socket.getaddrinfo(host, _origin(target)[2], proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        raise ImageError(f"cannot resolve {host}: {error}") from error
    for info in infos:
        address = _embedded_ipv4(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
        if address.is_link_local or address.is_multicast or address.is_unspecified:
            raise ImageError(
                f"{host} resolves to {address}, a link-local or reserved address: "
                "refused (cloud metadata services live there)"
            )
        if address in METADATA_ADDRESSES:
            raise ImageError(f"{host} resolves to {address}, a cloud metadata service: refused")


def _embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped ``::ffff:a.b.c.d``, compatible ``::a.b.c.d``,
    6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``), since packets to it reach that IPv4 host."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or 1 < int(address) < 1 << 32:  # not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


class _Deadline:
    """The end of one download. Timeouts bound each read, not a server that sends one byte
    just inside them, so at the end a timer shuts the download's sockets, waking any read
    (TLS handshake, headers, body) blocked on them."""

    _current = threading.local()

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _Deadline._current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _Deadline._current.deadline = None

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def passed(self) -> bool:
        return self.expired or self.remaining() <= 0

    @classmethod
    def watch(cls, sock: socket.socket | None) -> None:
        """Shut ``sock`` at the deadline of the download running on this thread, if any."""
        deadline = getattr(cls._current, "deadline", None)
        if deadline is None or sock is None:
            return
        with deadline._lock:
            deadline._sockets.append(sock)
            if deadline.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    # socket.socket's own shutdown, not SSLSocket's, which would drop its TLS state under a read.
    with contextlib.suppress(OSError):  # already closed: nothing left to wake
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watched:
    """Connection mixin: new sockets and each response's socket go to the running deadline."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        _Deadline.watch(sock)
        return sock

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _Deadline.watch(self.sock)  # type: ignore[attr-defined]
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter with connections that the running download's deadline can shut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")
