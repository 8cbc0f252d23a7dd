from __future__ import annotations

import pytest
import torch

from worker.contract.errors import DatasetError
from worker.contract.store import ModelDir
from worker.data.dataset import Dataset, Sample
from worker.pipeline.checkpoint import load_checkpoint
from worker.training.classifier import TrainConfig, balanced_sampler, classification_loss, train


def test_trained_checkpoint_describes_itself(trained_model_dir):
    spec, _ = load_checkpoint(ModelDir(trained_model_dir).current_path())
    assert spec.classes == ("Clean", "Scratch", "Spot")
    assert spec.mask_classes == ("Scratch", "Spot")
    assert spec.exclusive  # every synthetic image has one class
    assert spec.metrics["val_accuracy"] >= 0.8
    assert spec.metrics["train_images"] + spec.metrics["val_images"] == 72
    # The validation share by near-duplicate groups (the synthetic images are all distinct).
    assert spec.recipe["groups"] == "auto"
    assert spec.metrics["val_groups"] == {"by": "near-duplicates", "groups": 72}
    assert spec.recipe["arch"] == "resnet10t" and spec.recipe["image_size"] == 96
    # Each mask class got its refinement chosen on the training masks.
    assert set(spec.refine) == {"Scratch", "Spot"}
    assert all(0.0 < v <= 1.0 for v in spec.metrics["refine_train_iou"].values())


def test_multi_label_data_trains_with_sigmoids(synthetic_dataset):
    samples = list(synthetic_dataset.samples)
    scratch = [s for s in samples if s.classes == ("Scratch",)]
    both = [Sample(s.image, ("Scratch", "Spot"), key=s.key) for s in scratch[:6]]
    dataset = Dataset(tuple(samples[:30] + both), synthetic_dataset.classes, ("Clean",))
    config = TrainConfig(image_size=48, epochs=1, batch_size=8, progress=False)
    result = train(dataset, config)
    assert not result.spec.exclusive
    assert len(result.history) == 1


def test_a_class_without_images_is_refused(synthetic_dataset):
    samples = tuple(s for s in synthetic_dataset.samples if s.classes != ("Spot",))
    dataset = Dataset(samples, synthetic_dataset.classes, ("Clean",))
    with pytest.raises(DatasetError, match="Spot"):
        train(dataset, TrainConfig(epochs=1, progress=False))


def test_balanced_sampler_draws_rare_classes_as_often():
    targets = torch.zeros(100, 2)
    targets[:90, 0] = 1
    targets[90:, 1] = 1
    sampler = balanced_sampler(targets, seed=0, minimum=4000)
    drawn = torch.tensor(list(sampler))
    assert len(drawn) == 4000
    rare_share = (drawn >= 90).float().mean().item()
    assert 0.4 < rare_share < 0.6


def test_losses_match_the_formulation():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    exclusive = type("S", (), {"exclusive": True})()
    multi = type("S", (), {"exclusive": False})()
    expected_ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0]))
    assert classification_loss(logits, targets, exclusive) == pytest.approx(float(expected_ce))
    expected_bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert classification_loss(logits, targets, multi) == pytest.approx(float(expected_bce))


def test_tuning_picks_the_best_refinement_on_training_masks(trained_model_dir, synthetic_dataset):
    from worker.pipeline.classifier import Classifier
    from worker.pipeline.refiners.base import from_plain, to_plain
    from worker.training.tune_refiners import GRID, tune_refiners

    classifier = Classifier.load(ModelDir(trained_model_dir).current_path())
    best, quality = tune_refiners(classifier, synthetic_dataset.samples, per_class=6)
    assert set(best) == {"Scratch", "Spot"}
    assert all(params in GRID for params in best.values())
    assert from_plain(to_plain(best)) == best
    # Too few masked images: the class keeps the default.
    few, _ = tune_refiners(classifier, synthetic_dataset.samples, per_class=2)
    assert few == {}
    assert all(0.0 < quality[label] <= 1.0 for label in best)
