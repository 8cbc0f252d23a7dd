"""The model store: a project's classifier versions on disk and which one is current.

The store keeps every version as ``<dir>/versions/<version>.pt`` beside a plain JSON copy of its
spec (``<version>.json``, readable without torch) and names the current one in ``<dir>/CURRENT``;
every file is written atomically (temp file, then rename), so a reader never sees half a file.
With ``MODEL_STORE=redis`` the versions live in Redis (:mod:`worker.contract.shared`) and the
directory is this host's cache of them, filled on first use.
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
from worker.contract.shared import SharedModels

log = logging.getLogger(__name__)
VERSION_PATTERN = re.compile(r"v(\d{4,9})")
# The model_version of a project that has no model yet (always a string: Label Studio needs one).
UNTRAINED = "untrained"
STORES = ("local", "redis")  # MODEL_STORE: where versions are kept for every host


class ModelDir:
    """Versions of one project's classifier, and which one is current.

    The current version is named in ``CURRENT``; with a Redis connection it is also recorded
    there, and read from there first, so every web and worker process agrees at once. With
    ``shared`` the versions themselves are in Redis too, and :meth:`fetch` brings one to disk.
    """

    def __init__(self, root: str | Path, redis=None, shared: SharedModels | None = None) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.pointer = self.root / "CURRENT"
        self.redis = redis
        self.redis_key = f"camsam:current:{self.root.resolve()}"
        self.shared = shared

    def versions(self) -> list[str]:
        """The versions on this disk, and with a shared store those Redis keeps."""
        names = (
            {p.stem for p in self.versions_dir.glob("*.pt")}
            if self.versions_dir.is_dir()
            else set()
        )
        if self.shared is not None:
            names |= set(self._kept())
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
        if self.shared is not None:
            try:
                shared = self.shared.current()
            except Exception as error:  # noqa: BLE001 (Redis down: this host's copy serves)
                log.warning(
                    "model %s: Redis unreachable (%s): serving the local copy", self.root, error
                )
                shared = None
            if shared and is_version(shared):
                return shared
        elif self.redis is not None:
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
        info = plain(asdict(spec))
        text = json.dumps(info, indent=1).encode()
        atomic_write(self.info_path(version), lambda f: f.write(text))
        if self.shared is not None:
            self._upload(version, info)
        self._point(version)  # just written from these weights: no need to read them back
        return spec

    def fetch(self, version: str) -> Path:
        """The file of ``version`` on this disk; with a shared store, downloaded from Redis
        when this host has no copy of it, or another one (checked against its sha256). A
        download also prunes the copies of versions Redis no longer keeps.

        Raises:
            CheckpointError: not a version name, or its download failed its checksum.
        """
        path = self.path(version)
        if self.shared is None:
            return path
        meta = self.shared.meta(version)
        if meta is None or self._local_sha(version) == meta["sha256"]:
            return path  # not shared (a version from before MODEL_STORE=redis), or here
        started = time.perf_counter()
        digest = []
        atomic_write(path, lambda f: digest.append(self.shared.download(version, f.write)))
        self._write_sha(version, digest[0])
        text = json.dumps(meta.get("info") or {}, indent=1).encode()
        atomic_write(self.info_path(version), lambda f: f.write(text))
        log.info(
            "model %s: %s (%.1f MB) fetched from Redis in %.2f s",
            self.shared.name,
            version,
            meta["size"] / 1e6,
            time.perf_counter() - started,
        )
        self._prune_copies()
        return path

    def _kept(self) -> dict[str, dict]:
        try:
            return self.shared.kept()
        except Exception as error:  # noqa: BLE001 (Redis down: the local copies are what there is)
            log.warning("model %s: Redis unreachable (%s)", self.root, error)
            return {}

    def _upload(self, version: str, info: dict | None) -> None:
        digest = self.shared.upload(version, self.path(version), info)
        self._write_sha(version, digest)

    def _local_sha(self, version: str) -> str | None:
        if not self.path(version).is_file():
            return None
        try:
            return self._sha_path(version).read_text().strip()
        except FileNotFoundError:
            return None

    def _write_sha(self, version: str, digest: str) -> None:
        atomic_write(self._sha_path(version), lambda f: f.write(digest.encode()))

    def _sha_path(self, version: str) -> Path:
        return self.versions_dir / f"{check_version(version)}.sha256"

    def _prune_copies(self) -> None:
        """Drop this host's copies of shared versions that Redis no longer keeps."""
        kept = self._kept()
        if not kept:
            return
        for stale in self.versions_dir.glob("*.sha256"):
            if stale.stem not in kept and is_version(stale.stem):
                self._delete_files(stale.stem)

    def info_path(self, version: str) -> Path:
        return self.versions_dir / f"{check_version(version)}.json"

    def info(self, version: str) -> dict | None:
        """A version's spec as plain JSON (classes, metrics, recipe), readable without torch."""
        try:
            return json.loads(self.info_path(version).read_text())
        except (FileNotFoundError, ValueError):
            pass
        if self.shared is None:
            return None
        meta = self._kept().get(version)
        return (meta or {}).get("info")

    def set_current(self, version: str, check: Callable[[Path], object]) -> None:
        """Point at ``version`` once ``check(path)`` has read its file without raising.

        Raises:
            CheckpointError: the version does not exist, or ``check`` refused its file (the
                current version then stays).
        """
        path = self.fetch(version)  # fetch() refuses what is not a version name
        if not path.is_file():
            raise CheckpointError(f"version {version} does not exist in {self.versions_dir}")
        check(path)
        if self.shared is not None and self.shared.meta(version) is None:
            self._upload(version, self.info(version))  # kept here only: share it first
        self._point(version)

    def _point(self, version: str) -> None:
        if self.shared is not None:
            self.shared.set_current(version)  # first: it refuses a version pruned meanwhile
        atomic_write(self.pointer, lambda f: f.write(f"{version}\n".encode()))
        if self.shared is None and self.redis is not None:
            self.redis.set(self.redis_key, version)

    def discard(self, version: str) -> None:
        """Delete ``version``, which must not be the current one.

        Raises:
            CheckpointError: it is the current version.
        """
        if version == self.current_version():
            raise CheckpointError(f"{version} is current: roll back before discarding it")
        if self.shared is not None:
            self.shared.drop(version)
        self._delete_files(version)

    def _delete_files(self, version: str) -> None:
        self.path(version).unlink(missing_ok=True)
        self.info_path(version).unlink(missing_ok=True)
        self._sha_path(version).unlink(missing_ok=True)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions (never the current one)."""
        current = self.current_version()
        old = [v for v in self.versions()[:-keep] if v != current] if keep > 0 else []
        dropped = []
        for version in old:
            try:
                self.discard(version)
            except CheckpointError as error:  # another host made it current meanwhile
                log.info("model %s: %s kept: %s", self.root, version, error)
                continue
            dropped.append(version)
        return dropped


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


def named_model_dir(root: str | Path, name: str, redis_url: str = "", store: str = "local"):
    """``root/<name>`` (``root`` itself for the name ""), with the Redis pointer when there is a
    ``redis_url``, and with ``store="redis"`` its versions shared through Redis.

    Raises:
        ValueError: an unknown store, or ``redis`` without a Redis to keep versions in.
    """
    if store not in STORES:
        raise ValueError(f"MODEL_STORE={store!r}: set it to one of {', '.join(STORES)}")
    if store == "redis" and not redis_url:
        raise ValueError("MODEL_STORE=redis keeps versions in Redis: set REDIS_URL too")
    redis = redis_connection(redis_url) if redis_url else None
    shared = SharedModels(redis, name) if store == "redis" else None
    return ModelDir(Path(root) / name if name else Path(root), redis, shared)


def project_model_dir(
    root: str | Path, project: str, redis_url: str = "", store: str = "local"
) -> ModelDir:
    """A project's models live in ``root/<project id>``; a single-project ``root`` serves all."""
    own = named_model_dir(root, project, redis_url, store)
    shared = named_model_dir(root, "", redis_url, store)
    if own.current_version() is None and shared.current_version() is not None:
        return shared
    return own


def models_for(settings, project: str) -> ModelDir:
    """``project_model_dir`` as ``settings`` (MODEL_DIR, REDIS_URL, MODEL_STORE) say."""
    return project_model_dir(settings.model_dir, project, settings.redis_url, settings.model_store)
