"""Self-describing classifier checkpoints: the spec a classifier is rebuilt from, and its weights.

A checkpoint is one file: a dict of plain values plus the weights, loadable with
``torch.load(weights_only=True)``. Where the files live and which version is current is the
model store's business (:mod:`worker.contract.store`); this module reads and writes one file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from worker.contract.defaults import INPUTS
from worker.contract.errors import CheckpointError
from worker.contract.store import ModelDir, atomic_write, plain

FORMAT = "camsam-classifier/1"


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
    gate: dict = field(default_factory=dict)  # mask class -> evidence threshold (pipeline.gate)
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
    payload = {"format": FORMAT, "spec": plain(asdict(spec)), "state_dict": dict(state_dict)}
    atomic_write(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path) -> tuple[ClassifierSpec, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: missing, unreadable, not a camsam checkpoint, or of an unknown format.
    """
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


def publish(models: ModelDir, spec: ClassifierSpec, state_dict: Mapping) -> ClassifierSpec:
    """Store ``spec`` and its weights as the store's next version and make it current."""
    return models.publish(spec, lambda path, stamped: save_checkpoint(path, stamped, state_dict))


def rollback(models: ModelDir, version: str) -> None:
    """Make ``version`` current again once its checkpoint is known to load.

    Raises:
        CheckpointError: the version does not exist or its file is corrupt.
    """
    models.set_current(version, load_checkpoint)
