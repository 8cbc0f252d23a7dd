"""Shared fixtures: a synthetic dataset, a classifier trained on it in seconds, a tiny SAM2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.checkpoint import ModelDir
from worker.dataset import load_dataset
from worker.synthetic import write_dataset
from worker.train import TrainConfig, train

SAM2_TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synthetic"), per_class=24, seed=0)


@pytest.fixture(scope="session")
def synthetic_dataset(synthetic_dir):
    return load_dataset(synthetic_dir, background_classes=["Clean"])


@pytest.fixture(scope="session")
def trained_model_dir(synthetic_dataset, tmp_path_factory) -> Path:
    """A model directory whose current version was trained on the synthetic dataset."""
    config = TrainConfig(image_size=96, epochs=8, batch_size=16, progress=False)
    result = train(synthetic_dataset, config)
    root = tmp_path_factory.mktemp("models")
    ModelDir(root).publish(result.spec, result.state_dict)
    return root


@pytest.fixture(scope="session")
def sam2_checkpoint(tmp_path_factory) -> Path:
    """SAM2 hiera-tiny with random weights, saved the way Meta's checkpoints are ({"model": sd})."""
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(SAM2_TINY_CONFIG, None, device="cpu")
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny_random.pt"
    torch.save({"model": model.state_dict()}, path)
    return path
