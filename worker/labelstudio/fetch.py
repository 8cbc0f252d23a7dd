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
import functools
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlparse

import requests
from urllib3.exceptions import LocationParseError
from urllib3.util import Url, parse_url

from worker.contract import defaults
from worker.contract.api_key import ApiKey
from worker.contract.errors import ImageError, LabelStudioAuthError
from worker.contract.settings import Settings
from worker.labelstudio.deadline import Deadline, DeadlineAdapter
from worker.labelstudio.urls import (
    check_address,
    check_peer,
    connect_target,
    origin,
    refuse_ambiguous,
)

CLOUD_SCHEMES = ("s3", "gs", "gcs", "azure-blob", "azure-spi")
MAX_REDIRECTS = 3


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
            self.session.mount(scheme, DeadlineAdapter())
        try:
            self._own = origin(parse_url(self.base)) if self.base else None
        except LocationParseError as error:
            raise ImageError(f"LABEL_STUDIO_URL {self.base!r} is not a URL: {error}") from error
        self._hosts = frozenset(h.lower() for h in self.limits.hosts)
        self._key = ApiKey(self.base, api_key, self.limits.timeout, post=self.session.post)

    def fetch(self, ref: str, task_id: int | None = None) -> bytes:
        """The encoded image bytes for a task's image reference (``task_id`` for presigning).

        Raises:
            ImageError: unreachable, refused, too large or slow, or not from an allowed place.
        """
        parsed = urlparse(ref)
        if parsed.scheme in CLOUD_SCHEMES:
            ref = self._presign_path(ref, task_id)
            parsed = urlparse(ref)
        here = self.document_root is not None and self.document_root.is_dir()  # another host:
        if parsed.path.startswith("/data/local-files") and here:  # through Label Studio
            relative = unquote(parse_qs(parsed.query).get("d", [""])[0])
            return self._read(self.document_root / relative, ref)
        if parsed.scheme in ("http", "https"):
            return self._download(ref)
        if ref.startswith("/") and parsed.path.startswith(("/tasks/", "/projects/", "/data/")):
            if not self.base:
                raise ImageError(
                    f"image {ref} is relative to Label Studio: set LABEL_STUDIO_URL and "
                    "LABEL_STUDIO_API_KEY so camsam can fetch it" + self._local_hint(parsed.path)
                )
            refuse_ambiguous(ref)  # urljoin drops tabs and newlines, which could move the host
            if {".", ".."} & set(unquote(parsed.path).split("/")):
                # urljoin resolves them: /data/../api/... would take the key to any endpoint.
                raise ImageError(f"{ref}: '.' and '..' segments in a Label Studio path are refused")
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

    def _local_hint(self, path: str) -> str:
        if not path.startswith("/data/local-files"):
            return ""
        if self.document_root is None:
            return ", or LOCAL_FILES_DOCUMENT_ROOT to read local-files storage here"
        return f" (LOCAL_FILES_DOCUMENT_ROOT {self.document_root} is not a folder on this host)"

    def _download(self, url: str, redirects: int = 0) -> bytes:
        """GET within the size limit and one deadline for every hop and every read, so a
        server that drips bytes cannot hold a worker past FETCH_TIMEOUT."""
        with Deadline(self.limits.timeout) as deadline:
            try:
                return self._follow(url, redirects, deadline)
            except requests.RequestException as error:
                if isinstance(error, requests.Timeout) or deadline.passed():
                    raise ImageError(self._too_slow(url)) from error
                raise ImageError(f"cannot fetch {url}: {error}") from error

    def _follow(self, url: str, redirects: int, deadline: Deadline) -> bytes:
        """``redirects`` hops followed, each checked; the first must be Label Studio's host or
        listed, and only it gets the credentials (when it is Label Studio's origin)."""
        for hop in range(redirects + 1):
            prepared, target = self._prepare(url)
            if hop == 0:
                self._check_listed(url, target)
                if origin(target) == self._own:
                    prepared.headers.update(self._auth())
            # A redirect (from the presign endpoint) may not lead to this machine's own services
            # (the first hop is Label Studio's host or listed, so always may).
            loopback = self._listed(target)
            check_address(target, loopback)
            deadline.peer_rule = functools.partial(check_peer, loopback=loopback)
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
        refuse_ambiguous(url)
        try:
            prepared = self.session.prepare_request(requests.Request("GET", url))
        except requests.RequestException as error:
            raise ImageError(f"{url!r} is not a URL camsam can fetch: {error}") from error
        return prepared, connect_target(str(prepared.url))

    def _listed(self, target: Url) -> bool:
        """Whether ``target`` is Label Studio's host or in IMAGE_HOSTS."""
        host, port = target.host or "", origin(target)[2]
        own = self._own is not None and (host, port) == self._own[1:]
        return own or host in self._hosts or f"{host}:{port}" in self._hosts

    def _check_listed(self, url: str, target: Url) -> None:
        if not self._listed(target):
            host = target.host or ""
            raise ImageError(
                f"{url} is not on Label Studio's host: add {host} to IMAGE_HOSTS to fetch "
                "images from it"
            )

    def _content(self, url: str, response: requests.Response, deadline: Deadline) -> bytes:
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
        try:
            return self._key.headers()
        except LabelStudioAuthError as error:
            raise ImageError(str(error)) from error
