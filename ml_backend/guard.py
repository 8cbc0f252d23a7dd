"""Who may call the backend, and how often: credentials and the webhook rate limit."""

from __future__ import annotations

import base64
import hmac
import threading
import time

from worker.contract.settings import Settings

# Label Studio calls /health without credentials, and sends its webhooks without any: a webhook
# is only a trigger (training re-reads Label Studio), so it stays open but rate-limited.
OPEN_ENDPOINTS = ("health", "index", "webhook")


def needs_credentials(settings: Settings) -> bool:
    return bool(settings.basic_auth_user or settings.auth_token)


def authorised(header: str, settings: Settings) -> bool:
    """Basic auth (BASIC_AUTH_USER/PASS) or a bearer token (AUTH_TOKEN), compared in constant
    time."""
    if settings.auth_token and header.startswith("Bearer "):
        return hmac.compare_digest(header[7:].encode(), settings.auth_token.encode())
    if not settings.basic_auth_user or not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    same_user = hmac.compare_digest(user.encode(), settings.basic_auth_user.encode())
    same_password = hmac.compare_digest(password.encode(), settings.basic_auth_pass.encode())
    return same_user and same_password


class RateLimiter:
    """A token bucket per key: ``rate`` calls a second on average, bursts up to ``rate``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def allow(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        with self.lock:
            tokens, last = self.buckets.get(key, (self.rate, now))
            tokens = min(self.rate, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self.buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            return allowed
