"""Fetching a task's image the way Label Studio serves it, and nothing else.

- ``/data/local-files/?d=<path>``: read from ``LOCAL_FILES_DOCUMENT_ROOT`` when this machine has
  it (never outside it), else through Label Studio;
- ``/data/upload/...`` and other relative URLs: from ``LABEL_STUDIO_URL`` with the API key
  (a legacy token is sent as ``Token``; a personal access token is exchanged for an access token);
- cloud storage URIs (``s3://``, ``gs://``, ``azure-blob://``): through Label Studio's task
  presign endpoint, which redirects to a signed URL (the key is not sent on to that host);
- plain ``http(s)`` URLs only from Label Studio's host or a host in ``IMAGE_HOSTS``;
- local paths only under the document root.

Every download has a time and a size limit; redirects are followed only from the presign
endpoint, each hop checked; link-local addresses (cloud metadata services) are refused.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlparse

import requests

from worker.contract import defaults
from worker.contract.errors import ImageError
from worker.contract.settings import Settings

CLOUD_SCHEMES = ("s3", "gs", "gcs", "azure-blob", "azure-spi")
MAX_REDIRECTS = 3


@dataclass(frozen=True)
class FetchLimits:
    timeout: float = defaults.FETCH_TIMEOUT
    max_bytes: int = defaults.MAX_IMAGE_BYTES
    hosts: tuple[str, ...] = ()  # hosts besides Label Studio's that images may come from

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
            if not self._allowed_host(parsed.netloc):
                raise ImageError(
                    f"{ref} is not on Label Studio's host: add {parsed.hostname} to IMAGE_HOSTS "
                    "to fetch images from it"
                )
            return self._download(ref, self._auth_for(ref))
        if ref.startswith("/") and parsed.path.startswith(("/tasks/", "/projects/", "/data/")):
            if not self.base:
                raise ImageError(
                    f"image {ref} is relative to Label Studio: set LABEL_STUDIO_URL and "
                    "LABEL_STUDIO_API_KEY so camsam can fetch it"
                )
            url = urljoin(self.base + "/", ref.lstrip("/"))
            if parsed.path.startswith(("/tasks/", "/projects/")):
                return self._download(url, self._auth(), redirects=MAX_REDIRECTS)
            return self._download(url, self._auth())
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

    def _download(self, url: str, headers: dict, redirects: int = 0) -> bytes:
        """GET with the time and size limits; ``redirects`` hops followed, each checked, and
        the credentials go to the first host only."""
        for _ in range(redirects + 1):
            _check_address(url)
            try:
                response = self.session.get(
                    url,
                    headers=headers,
                    timeout=self.limits.timeout,
                    allow_redirects=False,
                    stream=True,
                )
                if not response.is_redirect:
                    return self._content(url, response)
            except requests.RequestException as error:
                raise ImageError(f"cannot fetch {url}: {error}") from error
            if redirects == 0:
                break
            url, headers = urljoin(url, response.headers["Location"]), {}
        raise ImageError(
            f"{url} redirects: camsam follows redirects only from Label Studio's presign "
            f"endpoint, and at most {MAX_REDIRECTS}"
        )

    def _content(self, url: str, response: requests.Response) -> bytes:
        if response.status_code in (401, 403):
            raise ImageError(
                f"Label Studio refused {url} ({response.status_code}): check LABEL_STUDIO_API_KEY"
            )
        if response.status_code != 200:
            raise ImageError(f"fetching {url} answered {response.status_code}")
        chunks, size, deadline = [], 0, time.monotonic() + 4 * self.limits.timeout
        for chunk in response.iter_content(1 << 16):
            size += len(chunk)
            if size > self.limits.max_bytes:
                raise ImageError(f"{url} is larger than MAX_IMAGE_BYTES ({self.limits.max_bytes})")
            if time.monotonic() > deadline:
                raise ImageError(f"{url} took longer than {4 * self.limits.timeout:.0f} s")
            chunks.append(chunk)
        return b"".join(chunks)

    def _allowed_host(self, netloc: str) -> bool:
        own = urlparse(self.base).netloc if self.base else None
        host = netloc.rsplit("@", 1)[-1]
        return host == own or host in self.limits.hosts or host.split(":")[0] in self.limits.hosts

    def _auth_for(self, url: str) -> dict:
        same_host = self.base and urlparse(url).netloc == urlparse(self.base).netloc
        return self._auth() if same_host else {}

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


def _check_address(url: str) -> None:
    """Refuse schemes other than http(s) and hosts that resolve to link-local addresses (the
    cloud metadata services live there)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ImageError(f"{url}: only http(s) URLs are fetched")
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise ImageError(f"cannot resolve {parsed.hostname}: {error}") from error
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if address.is_link_local or address.is_multicast or address.is_unspecified:
            raise ImageError(
                f"{parsed.hostname} resolves to {address}, a link-local or reserved address: "
                "refused (cloud metadata services live there)"
            )


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")
