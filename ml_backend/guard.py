"""Who may call the backend, and how often: credentials, who may name Label Studio through
/setup, the webhook's secret and rate limit, and the warnings an unsafe setup earns."""

from __future__ import annotations

import base64
import hmac
import threading
import time
from collections.abc import Callable

from worker.contract.settings import Settings

# Label Studio calls /health without credentials, and sends its webhooks without any: a webhook
# is only a trigger (training re-reads Label Studio), so it stays open but rate-limited, and
# WEBHOOK_SECRET can close it.
OPEN_ENDPOINTS = ("health", "index", "webhook")
WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"


def needs_credentials(settings: Settings) -> bool:
    return bool(settings.basic_auth_user or settings.auth_token)


def authorised(header: str, settings: Settings) -> bool:
    """Basic auth (BASIC_AUTH_USER/PASS) or a bearer token (AUTH_TOKEN), compared in constant
    time."""
    if settings.auth_token and header.startswith("Bearer "):
        return _same(header[7:], settings.auth_token)
    if not settings.basic_auth_user or not header.startswith("Basic "):
        return False
    if not settings.basic_auth_pass:  # a user without a password lets nobody in
        return False
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    same_user = _same(user, settings.basic_auth_user)
    same_password = _same(password, settings.basic_auth_pass)
    return same_user and same_password


def webhook_allowed(header: str | None, settings: Settings) -> bool:
    """Whether a webhook carries WEBHOOK_SECRET (always, when none is set)."""
    return not settings.webhook_secret or _same(header or "", settings.webhook_secret)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def setup_trusted(settings: Settings) -> bool:
    """Whether a /setup's ``hostname`` and ``access_token`` may name Label Studio: with
    SETUP_CREDENTIALS=auth (the default) only when every /setup had to pass the credentials."""
    if settings.setup_credentials == "always":
        return True
    return settings.setup_credentials == "auth" and needs_credentials(settings)


def startup_warnings(settings: Settings) -> list[str]:
    """What is unsafe, or will not work, in this configuration; create_app logs each line and
    /health lists them."""
    warnings = []
    if settings.basic_auth_user and not settings.basic_auth_pass:
        warnings.append(
            "BASIC_AUTH_USER without BASIC_AUTH_PASS: Basic credentials are refused, since an "
            "empty password is none; set BASIC_AUTH_PASS (or AUTH_TOKEN for a bearer token)"
        )
    if settings.setup_credentials == "always" and not needs_credentials(settings):
        warnings.append(
            "SETUP_CREDENTIALS=always without BASIC_AUTH_USER/PASS or AUTH_TOKEN: anyone who "
            "can reach camsam can name, through /setup, the Label Studio that images, training "
            "reads and write-back go to, and the token they carry; set credentials, or "
            "SETUP_CREDENTIALS=auth"
        )
    if not settings.label_studio_url and not setup_trusted(settings):
        why = f"SETUP_CREDENTIALS={settings.setup_credentials}"
        if settings.setup_credentials == "auth":
            why += " and no BASIC_AUTH_USER/PASS or AUTH_TOKEN"
        warnings.append(
            f"no LABEL_STUDIO_URL, and /setup may not name one ({why}): images under "
            "/data/upload, training and write-back need LABEL_STUDIO_URL and "
            "LABEL_STUDIO_API_KEY (or credentials, set in Label Studio's model settings too)"
        )
    return warnings


class RateLimiter:
    """A token bucket per key: ``rate`` calls a second on average, bursts up to ``rate``.

    At most ``max_keys`` buckets are kept: a full bucket is the same as none, so those go
    first; while every kept bucket is busy, a new key is refused.
    """

    def __init__(
        self, rate: float, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def allow(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        with self.lock:
            if key not in self.buckets and len(self.buckets) >= self.max_keys:
                self._forget_full(now)
                if len(self.buckets) >= self.max_keys:
                    return False
            burst = max(1.0, self.rate)  # a rate under one a second still lets one through
            tokens, last = self.buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self.buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            return allowed

    def _forget_full(self, now: float) -> None:
        full = [
            k
            for k, (tokens, last) in self.buckets.items()
            if tokens + (now - last) * self.rate >= self.rate
        ]
        for key in full:
            del self.buckets[key]
