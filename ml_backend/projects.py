"""The projects a webhook may name: those Label Studio set up through /setup, those it confirms
through its API, and those with a model directory; at most ``MAX_PROJECTS`` of the first two.

A /setup that anyone could have sent (no BASIC_AUTH_USER/PASS or AUTH_TOKEN) makes its project
known only until room is needed: when MAX_PROJECTS are known, the oldest such project makes way,
so made-up ids sent to an open /setup cannot lock Label Studio's real projects out for good.
Projects Label Studio confirms through its API, or an authenticated /setup names, stay.

An unauthenticated webhook can name any id; only a known one starts training, is remembered for
reconciliation or writes to disk, so what a stream of made-up ids costs stays bounded: a bucket
in the rate limiter, an entry in the cache of ids Label Studio does not have, and Label Studio
lookups at ``LOOKUP_RATE`` a second.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from ml_backend.errors import TooManyRequests, Unavailable
from ml_backend.guard import RateLimiter
from worker.contract.api_key import ApiKey
from worker.contract.connections import redis_connection
from worker.contract.errors import LabelStudioAuthError
from worker.contract.settings import Settings

log = logging.getLogger(__name__)

KNOWN = "camsam:known-projects"
EVICTABLE = "camsam:known-projects:open-setup"  # sorted by when an open /setup named them
LOOKUP_TIMEOUT = 5.0  # seconds Label Studio has to say whether a project exists
LOOKUP_RATE = 2.0  # lookups a second (and the burst), whatever the webhooks name
ABSENT_SECONDS = 300.0  # an id Label Studio does not have is not asked about again for this long
MAX_ABSENT = 4096


class KnownProjects:
    """Known project ids: in Redis (``camsam:known-projects``, shared by every web process) or,
    embedded, in this process."""

    def __init__(self, settings: Settings) -> None:
        self.limit = settings.max_projects
        self.redis = redis_connection(settings.redis_url) if settings.redis_url else None
        self.local: dict[str, str] = {}
        self.local_evictable: dict[str, None] = {}  # oldest first
        self.absent: dict[str, float] = {}  # id -> until when Label Studio is not asked again
        self.lookups = RateLimiter(LOOKUP_RATE)
        self.lock = threading.Lock()
        self._key: ApiKey | None = None

    def add(self, project: str, how: str, evictable: bool = False) -> bool:
        """Remember ``project``; False when MAX_PROJECTS are known already (and it is not), none
        of them ``evictable`` (named by an open /setup), which would otherwise make way, oldest
        first. With Redis down it is not remembered, which only the log says (/setup answers all
        the same)."""
        if self.redis is None:
            with self.lock:
                return self._add_local(project, how, evictable)
        from redis.exceptions import RedisError

        try:
            return self._add_redis(project, how, evictable)
        except RedisError as error:
            log.warning("project %s not remembered: Redis is unreachable: %s", project, error)
        return True

    def _add_local(self, project: str, how: str, evictable: bool) -> bool:
        if project in self.local:
            if project in self.local_evictable:
                del self.local_evictable[project]
                if evictable:  # named again: the newest to make way
                    self.local_evictable[project] = None
            return True
        if len(self.local) >= self.limit:
            if not self.local_evictable:
                return self._full(project)
            oldest = next(iter(self.local_evictable))
            del self.local_evictable[oldest], self.local[oldest]
            self._evicted(oldest, project)
        self.local[project] = how
        if evictable:
            self.local_evictable[project] = None
        return True

    def _add_redis(self, project: str, how: str, evictable: bool) -> bool:
        if self.redis.hexists(KNOWN, project):
            if not evictable:
                self.redis.zrem(EVICTABLE, project)
            else:  # named again: the newest to make way (if it still may)
                self.redis.zadd(EVICTABLE, {project: time.time()}, xx=True)
            return True
        if self.redis.hlen(KNOWN) >= self.limit:
            popped = self.redis.zpopmin(EVICTABLE)
            if not popped:
                return self._full(project)
            oldest = popped[0][0]
            oldest = oldest.decode() if isinstance(oldest, bytes) else str(oldest)
            self.redis.hdel(KNOWN, oldest)
            self._evicted(oldest, project)
        self.redis.hset(KNOWN, project, how)
        if evictable:
            self.redis.zadd(EVICTABLE, {project: time.time()})
        return True

    @staticmethod
    def _evicted(oldest: str, project: str) -> None:
        log.warning(
            "MAX_PROJECTS are known: project %s (named by an open /setup) makes way for %s",
            oldest,
            project,
        )

    def _full(self, project: str) -> bool:
        log.warning("project %s not remembered: MAX_PROJECTS (%d) are known", project, self.limit)
        return False

    def full(self) -> bool:
        """Whether MAX_PROJECTS are known and none of them would make way (False when Redis
        does not answer: /health must)."""
        if self.redis is None:
            return len(self.local) - len(self.local_evictable) >= self.limit
        try:
            return int(self.redis.hlen(KNOWN)) - int(self.redis.zcard(EVICTABLE)) >= self.limit
        except Exception:  # noqa: BLE001 (/health reports Redis itself)
            return False

    def _known(self, project: str) -> bool:
        if self.redis is not None:
            return bool(self.redis.hexists(KNOWN, project))
        return project in self.local

    def _evictable(self, project: str) -> bool:
        if self.redis is not None:
            return self.redis.zscore(EVICTABLE, project) is not None
        return project in self.local_evictable

    def why_unknown(self, project: str, settings: Settings) -> str | None:
        """None when a webhook may name ``project``, else why not (for the answer).

        Raises:
            TooManyRequests: Label Studio is being asked about new ids faster than LOOKUP_RATE.
            Unavailable: Label Studio did not answer whether the project exists.
        """
        url, key = settings.label_studio_url, settings.label_studio_api_key
        if self._known(project) or (Path(settings.model_dir) / project).is_dir():
            if url and key and self._evictable(project):
                self._confirm(project, url, key)
            return None
        if not (url and key):
            return (
                f"project {project} is not one camsam knows: Label Studio's /setup of the project "
                "(connecting the model) makes it known, or set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY so camsam can ask Label Studio"
            )
        if self._absent(project):
            return f"Label Studio has no project {project} (asked within {ABSENT_SECONDS:.0f} s)"
        if self.full():
            return f"project {project} is not known and MAX_PROJECTS ({self.limit}) are"
        if not self.lookups.allow("lookup"):
            raise TooManyRequests(
                "webhooks name projects camsam does not know faster than it asks Label Studio "
                f"about them ({LOOKUP_RATE:g} a second): this one is dropped"
            )
        if not self._in_label_studio(project, url, key):
            with self.lock:
                self._forget_absent()
                self.absent[project] = time.monotonic() + ABSENT_SECONDS
            return f"Label Studio has no project {project}"
        self.add(project, "label-studio")
        return None

    def _confirm(self, project: str, url: str, key: str) -> None:
        """A project only an open /setup named stays once Label Studio confirms it (asked
        within LOOKUP_RATE; until then, and if Label Studio cannot say, it stays as it is)."""
        if not self.lookups.allow("lookup"):
            return
        try:
            if self._in_label_studio(project, url, key):
                self.add(project, "label-studio")
        except Unavailable:
            pass  # logged by _in_label_studio; the project is known all the same

    def _absent(self, project: str) -> bool:
        with self.lock:
            until = self.absent.get(project)
            return until is not None and until > time.monotonic()

    def _forget_absent(self) -> None:
        now = time.monotonic()
        for project in [p for p, until in self.absent.items() if until <= now]:
            del self.absent[project]
        while len(self.absent) >= MAX_ABSENT:
            del self.absent[next(iter(self.absent))]  # the oldest

    def _in_label_studio(self, project: str, url: str, key: str) -> bool:
        """GET /api/projects/<id>/ with the key: 200 yes, 404 no; anything else is unavailable."""
        import requests

        try:
            response = requests.get(
                f"{url.rstrip('/')}/api/projects/{project}/",
                headers=self._auth(url, key),
                timeout=LOOKUP_TIMEOUT,
                allow_redirects=False,
            )
            response.close()
        except requests.RequestException as error:
            log.warning("cannot ask Label Studio about project %s: %s", project, error)
            raise Unavailable(
                f"cannot ask Label Studio whether project {project} exists: camsam logged why"
            ) from None
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        log.warning("Label Studio answered %d about project %s", response.status_code, project)
        raise Unavailable(
            f"Label Studio answered {response.status_code} about project {project}: check "
            "LABEL_STUDIO_API_KEY"
        )

    def _auth(self, url: str, key: str) -> dict:
        """The key's header (one ApiKey per address and key, so its access token is reused)."""
        with self.lock:
            if self._key is None or (self._key.base_url, self._key.key) != (url.rstrip("/"), key):
                self._key = ApiKey(url, key, LOOKUP_TIMEOUT)
            api_key = self._key
        try:
            return api_key.headers()
        except LabelStudioAuthError as error:
            log.warning("%s", error)
            raise Unavailable("cannot exchange LABEL_STUDIO_API_KEY for an access token") from None
