"""Fetching a task's image the way Label Studio serves it.

- ``/data/local-files/?d=<path>``: read from ``LOCAL_FILES_DOCUMENT_ROOT`` when this machine has
  it, else through Label Studio;
- ``/data/upload/...`` and other relative URLs: from ``LABEL_STUDIO_URL`` with the API key
  (a legacy token is sent as ``Token``; a personal access token is exchanged for an access token);
- cloud storage URIs (``s3://``, ``gs://``, ``azure-blob://``): through Label Studio's task
  presign endpoint, which redirects to a signed URL (the key is not sent on to that host);
- plain ``http(s)`` URLs and local paths as they are.
"""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlparse

import requests

from worker.errors import ImageError

TIMEOUT = 30
CLOUD_SCHEMES = ("s3", "gs", "gcs", "azure-blob", "azure-spi")


class ImageFetcher:
    def __init__(self, label_studio_url: str = "", api_key: str = "", document_root: str = ""):
        self.base = label_studio_url.rstrip("/")
        self.api_key = api_key
        self.document_root = Path(document_root) if document_root else None
        self.session = requests.Session()
        self._access: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def fetch(self, ref: str, task_id: int | None = None) -> bytes:
        """The encoded image bytes for a task's image reference (``task_id`` for presigning).

        Raises:
            ImageError: unreachable, refused, or a relative URL with no LABEL_STUDIO_URL set.
        """
        parsed = urlparse(ref)
        if parsed.scheme in CLOUD_SCHEMES:
            ref = self._presign_path(ref, task_id)
            parsed = urlparse(ref)
        if parsed.path.startswith("/data/local-files") and self.document_root:
            relative = unquote(parse_qs(parsed.query).get("d", [""])[0])
            path = (self.document_root / relative).resolve()
            if not path.is_relative_to(self.document_root.resolve()):
                raise ImageError(f"{ref} points outside LOCAL_FILES_DOCUMENT_ROOT")
            return self._read(path)
        if parsed.scheme in ("http", "https"):
            return self._get(ref, self._auth_for(ref))
        if ref.startswith("/"):
            if parsed.path.startswith(("/tasks/", "/projects/")) and self.base:
                return self._get_presigned(urljoin(self.base + "/", ref.lstrip("/")))
            if parsed.path.startswith("/data/") and self.base:
                return self._get(urljoin(self.base + "/", ref.lstrip("/")), self._auth())
            if Path(ref).is_file():
                return self._read(Path(ref))
            raise ImageError(
                f"image {ref} is relative to Label Studio: set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY so camsam can fetch it"
            )
        return self._read(Path(ref))

    def _presign_path(self, uri: str, task_id: int | None) -> str:
        if task_id is None or not self.base:
            raise ImageError(
                f"{uri} is in cloud storage: camsam fetches it through Label Studio, so set "
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"
            )
        encoded = base64.urlsafe_b64encode(uri.encode()).decode()
        return f"/tasks/{int(task_id)}/presign/?fileuri={encoded}"

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as error:
            raise ImageError(f"cannot read image {path}: {error}") from error

    def _get_presigned(self, url: str) -> bytes:
        """Label Studio's presign endpoint either proxies the file or redirects to a signed URL;
        the signed URL gets no Label Studio credentials, whatever host it is on."""
        response = self._request(url, self._auth(), redirects=False)
        if response.is_redirect:
            return self._get(urljoin(url, response.headers["Location"]), {})
        return self._content(url, response)

    def _get(self, url: str, headers: dict) -> bytes:
        return self._content(url, self._request(url, headers))

    def _request(self, url: str, headers: dict, redirects: bool = True) -> requests.Response:
        try:
            return self.session.get(
                url, headers=headers, timeout=TIMEOUT, allow_redirects=redirects
            )
        except requests.RequestException as error:
            raise ImageError(f"cannot fetch {url}: {error}") from error

    def _content(self, url: str, response: requests.Response) -> bytes:
        if response.status_code in (401, 403):
            raise ImageError(
                f"Label Studio refused {url} ({response.status_code}): check LABEL_STUDIO_API_KEY"
            )
        if response.status_code != 200:
            raise ImageError(f"fetching {url} answered {response.status_code}")
        return response.content

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
                response = self.session.post(url, json={"refresh": self.api_key}, timeout=TIMEOUT)
                response.raise_for_status()
                access = response.json()["access"]
            except (requests.RequestException, KeyError, ValueError) as error:
                raise ImageError(
                    f"cannot exchange the personal access token at {url}: {error}"
                ) from error
            self._access = (access, time.time() + 240)
            return access


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")
