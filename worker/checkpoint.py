"""Self-describing classifier checkpoints and the model directory that holds their versions.

A checkpoint is one file: a dict of plain values plus the weights, loadable with
``torch.load(weights_only=True)``. The model directory keeps every version as
``<dir>/versions/<version>.pt`` and names the current one in ``<dir>/CURRENT``; both are written
atomically (temp file, then rename), so a reader never sees half a file. torch is imported only
where weights are read or written, so the web side reads the current version without it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from worker.errors import CheckpointError, NoModelError

if TYPE_CHECKING:
    import torch

FORMAT = "camsam-classifier/1"
VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
INPUTS = ("rgb", "flat")
AUGMENTATIONS = ("none", "flip", "flip+rot", "full")


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything needed to rebuild a classifier and read its outputs."""

    arch: str
    classes: tuple[str, ...]
    mask_classes: tuple[str, ...]
    image_size: int
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    thresholds: tuple[float, ...] = ()
    input: str = "rgb"
    pool: str = "avg"
    output_stride: int = 32
    exclusive: bool = False
    refine: dict = field(default_factory=dict)
    version: str = ""
    metrics: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    created: float = 0.0
    lineage: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.mask_classes) - set(self.classes)
        assert not unknown, f"mask classes {unknown} are not classes"
        assert self.input in INPUTS, f"unknown input encoding {self.input}"
        if not self.thresholds:
            object.__setattr__(self, "thresholds", tuple(0.5 for _ in self.classes))

    @property
    def background_classes(self) -> tuple[str, ...]:
        return tuple(c for c in self.classes if c not in self.mask_classes)


def save_checkpoint(path: str | Path, spec: ClassifierSpec, state_dict: Mapping) -> None:
    """Write spec and weights to ``path`` atomically."""
    import torch

    payload = {"format": FORMAT, "spec": _plain(asdict(spec)), "state_dict": dict(state_dict)}
    atomic_write(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path) -> tuple[ClassifierSpec, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: missing, unreadable, not a camsam checkpoint, or of an unknown format.
    """
    import torch

    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f"checkpoint {path} does not exist") from error
    except Exception as error:  # torch raises many kinds for a corrupt file
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a camsam classifier checkpoint (format {FORMAT!r}); "
            "to start from timm weights use --pretrained instead"
        )
    raw = dict(payload["spec"])
    for name in ("classes", "mask_classes", "mean", "std", "thresholds"):
        raw[name] = tuple(raw[name])
    return ClassifierSpec(**raw), payload["state_dict"]


def load_state_strict(model: torch.nn.Module, state_dict: Mapping, source: str) -> None:
    """Load weights and fail with the offending keys named, rather than half-loading a model."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    reshaped = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or reshaped:
        raise CheckpointError(
            f"{source} does not fit the model: missing keys {missing[:8]}, unexpected keys "
            f"{unexpected[:8]}, keys of another shape {reshaped[:8]} "
            "(was it saved for another --arch?)"
        )
    model.load_state_dict(state_dict)


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
        return sorted((n for n in names if VERSION_PATTERN.match(n)), key=_version_number)

    def next_version(self) -> str:
        existing = self.versions()
        number = _version_number(existing[-1]) + 1 if existing else 1
        return f"v{number:04d}"

    def path(self, version: str) -> Path:
        return self.versions_dir / f"{version}.pt"

    def current_version(self) -> str | None:
        if self.redis is not None:
            try:
                shared = self.redis.get(self.redis_key)
            except Exception:  # noqa: BLE001 (Redis down: the file is the fallback)
                shared = None
            if shared and self.path(shared.decode()).is_file():
                return shared.decode()
        try:
            version = self.pointer.read_text().strip()
        except FileNotFoundError:
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

    def publish(self, spec: ClassifierSpec, state_dict: Mapping) -> ClassifierSpec:
        """Store a new version and make it current; returns the spec with its version set."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        version = self.next_version()
        spec = replace(spec, version=version, created=time.time())
        save_checkpoint(self.path(version), spec, state_dict)
        info = json.dumps(_plain(asdict(spec)), indent=1).encode()
        atomic_write(self.info_path(version), lambda f: f.write(info))
        self._point(version)  # just written from these weights: no need to read them back
        return spec

    def info_path(self, version: str) -> Path:
        return self.versions_dir / f"{version}.json"

    def info(self, version: str) -> dict | None:
        """A version's spec as plain JSON (classes, metrics, recipe), readable without torch."""
        try:
            return json.loads(self.info_path(version).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def set_current(self, version: str) -> None:
        """Point at ``version``, once its checkpoint is known to load.

        Raises:
            CheckpointError: the version does not exist or its file is corrupt (the current
                version then stays).
        """
        if not self.path(version).is_file():
            raise CheckpointError(f"version {version} does not exist in {self.versions_dir}")
        load_checkpoint(self.path(version))
        self._point(version)

    def _point(self, version: str) -> None:
        atomic_write(self.pointer, lambda f: f.write(f"{version}\n".encode()))
        if self.redis is not None:
            self.redis.set(self.redis_key, version)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions (never the current one)."""
        current = self.current_version()
        old = [v for v in self.versions()[:-keep] if v != current] if keep > 0 else []
        for version in old:
            self.path(version).unlink(missing_ok=True)
            self.info_path(version).unlink(missing_ok=True)
        return old


def _version_number(version: str) -> int:
    return int(VERSION_PATTERN.match(version).group(1))


def _plain(value):
    """Tuples to lists, recursively: torch's safe unpickler loads lists, dicts and scalars."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
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


_connections: dict[str, object] = {}


def redis_connection(url: str):
    """One Redis client per URL and process."""
    if url not in _connections:
        from redis import Redis

        _connections[url] = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    return _connections[url]
