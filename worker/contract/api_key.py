"""Label Studio's API key as an ``Authorization`` header, for the web side and the worker alike.

A legacy token goes as ``Token <key>``. A personal access token is a JWT refresh token: it is
exchanged at ``/api/token/refresh`` for a short-lived access token, sent as ``Bearer``, and kept
for a few minutes so a burst of requests makes one exchange.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from worker.contract.errors import LabelStudioAuthError

ACCESS_SECONDS = 240  # Label Studio's access tokens live five minutes: renew a minute early


def is_personal_token(key: str) -> bool:
    return key.count(".") == 2 and key.startswith("ey")


class ApiKey:
    """The header for ``key`` at the Label Studio at ``base_url``; ``post`` sends the exchange
    (``requests.post`` unless the caller has a session of its own)."""

    def __init__(
        self, base_url: str, key: str, timeout: float, post: Callable | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.post = post
        self._access: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def headers(self) -> dict[str, str]:
        """Raises: LabelStudioAuthError when a personal access token cannot be exchanged."""
        if not self.key:
            return {}
        if not is_personal_token(self.key):
            return {"Authorization": f"Token {self.key}"}
        return {"Authorization": f"Bearer {self._access_token()}"}

    def _access_token(self) -> str:
        import requests

        with self._lock:
            if self._access and self._access[1] > time.monotonic():
                return self._access[0]
            url = f"{self.base_url}/api/token/refresh"
            try:
                response = (self.post or requests.post)(
                    url, json={"refresh": self.key}, timeout=self.timeout
                )
                response.raise_for_status()
                access = str(response.json()["access"])
            except (requests.RequestException, KeyError, ValueError) as error:
                raise LabelStudioAuthError(
                    f"cannot exchange the personal access token at {url}: {error}"
                ) from error
            self._access = (access, time.monotonic() + ACCESS_SECONDS)
            return access
