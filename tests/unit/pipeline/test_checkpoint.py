from __future__ import annotations

import pytest
import torch

from worker.contract.errors import CheckpointError, NoModelError
from worker.contract.store import ModelDir
from worker.pipeline.checkpoint import (
    ClassifierSpec,
    load_checkpoint,
    load_state_strict,
    publish,
    rollback,
    save_checkpoint,
)


def spec(**changes) -> ClassifierSpec:
    base = dict(
        arch="resnet10t", classes=("A", "B", "Free"), mask_classes=("A", "B"), image_size=64
    )
    return ClassifierSpec(**{**base, **changes})


def test_checkpoint_round_trip_is_self_describing(tmp_path):
    path = tmp_path / "model.pt"
    original = spec(metrics={"val_accuracy": 0.9, "per_class_f1": {"A": 1.0}}, recipe={"lr": 0.1})
    save_checkpoint(path, original, {"w": torch.ones(2)})
    loaded, state = load_checkpoint(path)
    assert loaded == original
    assert loaded.background_classes == ("Free",)
    assert loaded.thresholds == (0.5, 0.5, 0.5)
    assert torch.equal(state["w"], torch.ones(2))
    # Readable with the safe loader alone: no pickled classes inside.
    raw = torch.load(path, weights_only=True)
    assert raw["spec"]["classes"] == ["A", "B", "Free"]


def test_corrupt_or_foreign_files_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match="--pretrained"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_strict_load_names_the_keys():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="missing keys.*bias"):
        load_state_strict(model, {"weight": torch.zeros(2, 2)}, "x.pt")


def test_model_dir_versions_are_monotonic_strings(tmp_path):
    models = ModelDir(tmp_path / "m")
    with pytest.raises(NoModelError, match="camsam train"):
        models.current_path()
    first = publish(models, spec(), {"w": torch.zeros(1)})
    second = publish(models, spec(), {"w": torch.ones(1)})
    assert (first.version, second.version) == ("v0001", "v0002")
    assert isinstance(second.version, str)
    assert models.current_version() == "v0002"
    assert load_checkpoint(models.current_path())[0].version == "v0002"
    rollback(models, "v0001")
    assert models.current_version() == "v0001"
    with pytest.raises(CheckpointError):
        rollback(models, "v0009")
    # Atomic writes leave no temporary files behind.
    leftovers = [p.name for p in (tmp_path / "m").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_versions_sort_numerically_past_9999(tmp_path):
    models = ModelDir(tmp_path)
    models.versions_dir.mkdir()
    for name in ("v9999", "v10000", "v0002"):
        save_checkpoint(models.path(name), spec(), {})
    assert models.versions() == ["v0002", "v9999", "v10000"]
    assert models.next_version() == "v10001"


@pytest.mark.parametrize(
    "name", ["../../../outside/evil", "/etc/passwd", "v0001/../../x", "v1", "v0001\n", "", "V0001"]
)
def test_only_version_names_are_read_as_versions(tmp_path, name):
    models = ModelDir(tmp_path / "models")
    publish(models, spec(), {"w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not a model version"):
        rollback(models, name)
    with pytest.raises(CheckpointError, match="not a model version"):
        models.path(name)
    assert models.current_version() == "v0001"
    (tmp_path / "models" / "CURRENT").write_text(name + "\n")
    # A pointer that names no version is no current version, never a path outside versions/.
    assert models.current_version() in (None, "v0001") and models.current_version() != name
