"""Where training starts: the hub's weights when they can be had (a local file stands in for the
download), from scratch with one line when not, never asking when told ``none``."""

from __future__ import annotations

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from worker.contract.errors import CheckpointError
from worker.data.dataset import Dataset
from worker.pipeline import pretrained
from worker.pipeline.classifier import create_model
from worker.pipeline.pretrained import hub_weights, resolve_start
from worker.training.classifier import TrainConfig, train

ARCH = "resnet10t"
REPO_ID = "timm/resnet10t.c3_in1k"


@pytest.fixture
def hub_file(tmp_path, monkeypatch):
    """ImageNet-shaped weights (1000 classes, random) where a download would have put them."""
    weights = timm.create_model(ARCH, num_classes=1000).state_dict()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    monkeypatch.setattr(pretrained, "hub_weights", lambda arch, timeout: (REPO_ID, str(path)))
    return weights


@pytest.fixture
def no_hub(monkeypatch):
    def unreachable(arch, timeout):
        raise CheckpointError(f"{REPO_ID} could not be downloaded: no network")

    monkeypatch.setattr(pretrained, "hub_weights", unreachable)


def _small(synthetic_dataset) -> Dataset:
    return Dataset(synthetic_dataset.samples[::3], synthetic_dataset.classes, ("Clean",))


def _quick(**changes) -> TrainConfig:
    return TrainConfig(
        image_size=48,
        epochs=1,
        batch_size=8,
        progress=False,
        tune_masks=False,
        gate=False,
        **changes,
    )


def test_by_default_training_starts_from_the_hubs_weights(hub_file, synthetic_dataset):
    start = resolve_start(ARCH, None)
    assert (start.kind, start.source) == ("hub", REPO_ID)
    model = create_model(ARCH, 3, start.pretrained)
    assert torch.equal(model.state_dict()["conv1.0.weight"], hub_file["conv1.0.weight"])
    assert model.get_classifier().out_features == 3  # the 1000-class head is not taken
    result = train(_small(synthetic_dataset), _quick())
    assert result.spec.recipe["start"]["kind"] == "hub"
    assert result.spec.recipe["start"]["source"] == REPO_ID


def test_without_the_hub_training_starts_from_scratch_and_says_so(
    no_hub, synthetic_dataset, capsys
):
    result = train(_small(synthetic_dataset), _quick())
    start = result.spec.recipe["start"]
    assert start["kind"] == "scratch" and "no network" in start["note"]
    said = [line for line in capsys.readouterr().err.splitlines() if "from scratch" in line]
    assert len(said) == 1 and REPO_ID in said[0]


def test_none_never_asks_and_hub_insists(no_hub, monkeypatch, tmp_path):
    assert resolve_start(ARCH, "none").kind == "scratch"
    assert resolve_start(ARCH, "none").note == ""
    with pytest.raises(CheckpointError, match="no network"):
        resolve_start(ARCH, "hub")
    with pytest.raises(CheckpointError, match="not found"):
        resolve_start(ARCH, str(tmp_path / "missing.pth"))


def test_a_local_file_is_a_start_of_its_own(tmp_path, no_hub):
    path = tmp_path / "backbone.pth"
    torch.save(create_model(ARCH, 7).state_dict(), path)
    start = resolve_start(ARCH, str(path))
    assert (start.kind, start.pretrained) == ("file", str(path))


def test_the_hub_is_asked_briefly_and_not_again_after_failing(monkeypatch, tmp_path):
    # The real download code, against a hub that refuses connections (no network here).
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for proxy in pretrained.PROXIES:
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(pretrained, "_unreachable", {})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    calls = []
    real = pretrained._reach
    monkeypatch.setattr(pretrained, "_reach", lambda *a: calls.append(a) or real(*a))
    with pytest.raises(CheckpointError, match="127.0.0.1:9"):
        hub_weights(ARCH, timeout=2.0)
    with pytest.raises(CheckpointError, match="127.0.0.1:9"):
        hub_weights(ARCH, timeout=2.0)
    assert len(calls) == 1  # the second call remembered the failure


def test_offline_or_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        hub_weights(ARCH, timeout=2.0)  # the tests run with HF_HUB_OFFLINE=1
    cached = tmp_path / "model.safetensors"
    cached.write_bytes(b"")
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, name: str(cached))
    assert hub_weights(ARCH, timeout=2.0) == (REPO_ID, str(cached))
    with pytest.raises(CheckpointError, match="no pretrained weights"):
        hub_weights("resnet_does_not_exist", timeout=2.0)
