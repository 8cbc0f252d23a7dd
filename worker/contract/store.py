"""The model store: a project's classifier versions on disk and which one is current.

The store keeps every version as ``<dir>/versions/<version>.pt`` beside a plain JSON copy of its
spec (``<version>.json``, readable without torch) and names the current one in ``<dir>/CURRENT``;
every file is written atomically (temp file, then rename), so a reader never sees half a file.
What is inside a ``.pt`` file is :mod:`worker.pipeline.checkpoint`'s business: this module never
reads weights, which keeps it importable by the web side.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from worker.contract.connections import redis_connection
from worker.contract.errors import CheckpointError, NoModelError

log = logging.getLogger(__name__)
VERSION_PATTERN = re.compile(r"v(\d{4,9})")
# The model_version of a project that has no model yet (always a string: Label Studio needs one).
UNTRAINED = "untrained"


class ModelDir:
    """Versions of one project's classifier, and which one is current.

    The current version is named in ``CURRENT``; with a Redis connection it is also recorded
    there, and read from there first, so every web and worker process agrees at once.
    """

    def __init__(self, root: str | Path, redis=None) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.pointer = self.root / "CURRENT"
        self.redis = redis
        self.redis_key = f"camsam:current:{self.root.resolve()}"

    def versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        names = (p.stem for p in self.versions_dir.glob("*.pt"))
        return sorted((n for n in names if VERSION_PATTERN.fullmatch(n)), key=_version_number)

    def next_version(self) -> str:
        existing = self.versions()
        number = _version_number(existing[-1]) + 1 if existing else 1
        return f"v{number:04d}"

    def path(self, version: str) -> Path:
        """The file of ``version``. Raises: CheckpointError for a name that is not ``vNNNN``
        (so no name read from a command line, Redis or a file leads outside ``versions/``)."""
        return self.versions_dir / f"{check_version(version)}.pt"

    def current_version(self) -> str | None:
        if self.redis is not None:
            try:
                shared = self.redis.get(self.redis_key)
            except Exception:  # noqa: BLE001 (Redis down: the file is the fallback)
                shared = None
            name = shared.decode(errors="replace") if shared else ""
            if is_version(name) and self.path(name).is_file():
                return name
        try:
            version = self.pointer.read_text().strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        if version and not is_version(version):
            log.error(
                "%s names %r, not a version (vNNNN): no current version", self.pointer, version
            )
            return None
        return version or None

    def current_path(self) -> Path:
        """Raises: NoModelError when nothing has been trained into this directory yet."""
        version = self.current_version()
        if version is None:
            raise NoModelError(
                f"no model in {self.root} yet: run `camsam train DATA_DIR --model-dir {self.root}`"
            )
        return self.path(version)

    def publish(self, spec, save: Callable[[Path, object], None]):
        """Store a new version and make it current; returns the spec with its version set.

        ``spec`` is a dataclass with ``version`` and ``created`` fields; ``save(path, spec)``
        writes the version's file (``worker.pipeline.checkpoint.publish`` passes the weights).
        """
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        version = self.next_version()
        spec = replace(spec, version=version, created=time.time())
        save(self.path(version), spec)
        info = json.dumps(plain(asdict(spec)), indent=1).encode()
        atomic_write(self.info_path(version), lambda f: f.write(info))
        self._point(version)  # just written from these weights: no need to read them back
        return spec

    def info_path(self, version: str) -> Path:
        return self.versions_dir / f"{check_version(version)}.json"

    def info(self, version: str) -> dict | None:
        """A version's spec as plain JSON (classes, metrics, recipe), readable without torch."""
        try:
            return json.loads(self.info_path(version).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def set_current(self, version: str, check: Callable[[Path], object]) -> None:
        """Point at ``version`` once ``check(path)`` has read its file without raising.

        Raises:
            CheckpointError: the version does not exist, or ``check`` refused its file (the
                current version then stays).
        """
        if not self.path(version).is_file():  # path() refuses what is not a version name
            raise CheckpointError(f"version {version} does not exist in {self.versions_dir}")
        check(self.path(version))
        self._point(version)

    def _point(self, version: str) -> None:
        atomic_write(self.pointer, lambda f: f.write(f"{version}\n".encode()))
        if self.redis is not None:
            self.redis.set(self.redis_key, version)

    def discard(self, version: str) -> None:
        """Delete ``version``, which must not be the current one.

        Raises:
            CheckpointError: it is the current version.
        """
        if version == self.current_version():
            raise CheckpointError(f"{version} is current: roll back before discarding it")
        self.path(version).unlink(missing_ok=True)
        self.info_path(version).unlink(missing_ok=True)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions (never the current one)."""
        current = self.current_version()
        old = [v for v in self.versions()[:-keep] if v != current] if keep > 0 else []
        for version in old:
            self.discard(version)
        return old


def is_version(name: str) -> bool:
    return bool(VERSION_PATTERN.fullmatch(name))


def check_version(name: str) -> str:
    """``name`` if it is a version name (``v`` and four to nine digits, as ``v0003``).

    Raises:
        CheckpointError: anything else (a path, ``..``, an empty name).
    """
    if not isinstance(name, str) or not is_version(name):
        raise CheckpointError(f"{name!r} is not a model version: versions are named like v0003")
    return name


def _version_number(version: str) -> int:
    return int(VERSION_PATTERN.fullmatch(version).group(1))


def plain(value):
    """Tuples to lists, recursively: torch's safe unpickler loads lists, dicts and scalars."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def project_model_dir(root: str | Path, project: str, redis_url: str = "") -> ModelDir:
    """A project's models live in ``root/<project id>``; a single-project ``root`` serves all."""
    redis = redis_connection(redis_url) if redis_url else None
    own = ModelDir(Path(root) / project, redis)
    shared = ModelDir(root, redis)
    if own.current_version() is None and shared.current_version() is not None:
        return shared
    return own
