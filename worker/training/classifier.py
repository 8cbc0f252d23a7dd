"""Training the classifier from image-level labels: augmentation, class balance, validation.

Defects are rare, so batches are drawn class-balanced (each image weighted by its rarest class);
augmentation is selectable (flips by default); the epoch with the best validation accuracy is the
one kept.
"""

from __future__ import annotations

import copy
import logging
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler
from torchvision.transforms import v2
from tqdm import tqdm

from worker.contract import defaults
from worker.contract.errors import DatasetError, SegmenterError
from worker.data.dataset import Dataset, Grouping, Sample, stable_split
from worker.data.groups import Groups, groups_for
from worker.data.images import load_image
from worker.pipeline.checkpoint import ClassifierSpec
from worker.pipeline.classifier import (
    Classifier,
    create_model,
    decide,
    normalise,
    prepare,
    to_probabilities,
)
from worker.pipeline.pretrained import resolve_start
from worker.pipeline.refiners.base import RefineParams, to_plain
from worker.pipeline.refiners.learned import LearnedRefiner
from worker.pipeline.segmenters.base import SegmenterOptions
from worker.training.click_model import fit_click_model
from worker.training.gate import calibrate_gate, gate_segmenter
from worker.training.learned_refiner import fit_learned_refiner
from worker.training.tune_refiners import tune_refiners

MIN_STEPS_PER_EPOCH = 8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig(defaults.Recipe):
    """The recipe (``worker.contract.defaults.Recipe``) and how this run goes about it."""

    pretrained: str | None = None  # a weights file, "hub", "none", or None/"auto": the hub's if
    # they can be had (worker.pipeline.pretrained)
    tune_masks: bool = True
    gate: bool = True  # calibrate the mask gate on the validation share (pipeline.gate)
    device: str = "cpu"
    progress: bool = True
    choice: dict | None = None  # how the recipe was chosen, when it was (worker.training.choose)
    serve_with: SegmenterOptions | None = None  # the SAM2 that will serve, to calibrate the gate


@dataclass(frozen=True)
class TrainResult:
    spec: ClassifierSpec
    state_dict: dict
    history: list[dict]
    validation: list[Sample]  # the images the best epoch was chosen on (the publish rule's too)


def train(dataset: Dataset, config: TrainConfig) -> TrainResult:
    """Train a classifier on ``dataset``; a validation share held out by whole groups
    (near-duplicates found, unless the recipe names a pattern or none), each class on both sides.

    Raises:
        DatasetError: a class has no image to learn from.
    """
    empty = [c for c, n in dataset.counts().items() if n == 0]
    if empty:
        raise DatasetError(f"classes {empty} have no images: add examples or drop the class")
    seed_everything(config.seed)
    train_samples, val_samples, groups = validation_split(dataset.samples, config)
    if not val_samples:
        val_samples = train_samples
    classes = dataset.classes
    start = resolve_start(config.arch, config.pretrained)
    if start.note:
        print(
            f"camsam: no pretrained weights, training from scratch: {start.note}", file=sys.stderr
        )
    spec = ClassifierSpec(
        arch=config.arch,
        classes=classes,
        mask_classes=dataset.mask_classes,
        image_size=config.image_size,
        input=config.input,
        pool=config.pool,
        output_stride=config.output_stride,
        exclusive=all(len(s.classes) == 1 for s in dataset.samples),
        recipe={
            **{k: v for k, v in asdict(config).items() if k not in ("device", "progress")},
            "start": start.record(),
        },
    )
    train_x, train_y = _tensors(train_samples, spec, config.progress)
    val_x, val_y = _tensors(val_samples, spec, config.progress)
    model = create_model(
        config.arch,
        len(classes),
        start.pretrained,
        config.device,
        config.pool,
        config.output_stride,
    )
    loader = DataLoader(
        TensorDataset(train_x, train_y),
        batch_size=config.batch_size,
        sampler=balanced_sampler(train_y, config.seed, config.batch_size * MIN_STEPS_PER_EPOCH),
        drop_last=len(train_x) > config.batch_size,
    )
    history, best, best_state = _fit(model, loader, spec, config, (val_x, val_y))
    summary = {
        "val_accuracy": best["accuracy"],
        "val_loss": best["val_loss"],
        "best_epoch": best["epoch"],
        "per_class_f1": best["per_class_f1"],
        "train_images": len(train_samples),
        "val_images": len(val_samples),
        "val_groups": groups.summary(),
        "class_counts": dataset.counts(),
    }
    state = {k: v.cpu() for k, v in best_state.items()}
    model.load_state_dict(best_state)
    refine, extras = {}, {}
    if config.tune_masks:
        refine, extras, quality = _fit_masks(
            Classifier(spec, model), dataset.samples, config, groups.grouping
        )
        state.update(extras)
        summary.update(quality)
    spec = ClassifierSpec(**{**asdict(spec), "metrics": summary, "refine": refine})
    if config.gate and spec.mask_classes:
        # Calibrated on the validation share, which the weights did not learn from (with no
        # share to spare, nothing is known yet: every class abstains).
        held_out = val_samples if val_samples is not train_samples else []
        # Mirrored, as the backend classifies by default (CLASSIFIER_MIRROR=1).
        classifier = Classifier(spec, model, extras, mirror=True)
        serve_with = config.serve_with
        try:
            gate, borrowed = calibrate_gate(
                classifier, held_out, groups.grouping, segmenter=serve_with
            )
        except SegmenterError as error:
            # The weights are trained: a SAM2 this trainer cannot build (a checkpoint only
            # the workers have, no internet) must not lose them. The workers say the gate is
            # another segmenter's (worker.jobs.predict.warn_of_another_gate).
            log.warning("the gate is calibrated on the cam segmenter's masks: %s", error)
            serve_with = None
            gate, borrowed = calibrate_gate(classifier, held_out, groups.grouping)
        metrics = {
            **spec.metrics,
            "gate_borrowed": borrowed,
            "gate_segmenter": gate_segmenter(serve_with),
        }
        spec = ClassifierSpec(**{**asdict(spec), "gate": gate, "metrics": metrics})
    return TrainResult(spec, state, history, val_samples)


def validation_split(
    samples: Sequence[Sample], recipe: defaults.Recipe
) -> tuple[list[Sample], list[Sample], Groups]:
    """(training, validation, the grouping): the share that picks the best epoch, calibrates the
    gate and decides publishing. It holds no other photograph of an object in training, and
    stays put as labels arrive, so a version fine-tuned from the last is judged on images
    neither of them learnt from.

    Raises:
        DatasetError: the recipe's ``groups`` is not ``auto``, ``none`` or a pattern.
    """
    groups = groups_for(samples, recipe.groups)
    rest, held = stable_split(samples, recipe.val_fraction, groups.grouping)
    return rest, held, groups


def _fit(
    model: torch.nn.Module,
    loader: DataLoader,
    spec: ClassifierSpec,
    config: TrainConfig,
    validation: tuple[torch.Tensor, torch.Tensor],
) -> tuple[list[dict], dict, dict]:
    """The epochs: AdamW under a one-cycle schedule; returns the history, the best epoch's
    metrics (validation accuracy, then loss) and its weights."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps = config.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(steps, 1), pct_start=0.15
    )
    augment = augmentation(config.image_size, config.augment)
    history: list[dict] = []
    best, best_state = None, None
    bar = tqdm(range(config.epochs), desc="train", unit="epoch", disable=not config.progress)
    for epoch in bar:
        model.train()
        total = 0.0
        for images, targets in loader:
            images = torch.stack([augment(image) for image in images])
            images = normalise(images, spec).to(config.device)
            loss = classification_loss(model(images), targets.to(config.device), spec)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(images)
        metrics = evaluate_classifier(model, spec, *validation, config.device)
        metrics.update(epoch=epoch + 1, train_loss=total / max(len(loader.sampler), 1))
        history.append(metrics)
        bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", val_acc=f"{metrics['accuracy']:.3f}")
        key = (metrics["accuracy"], -metrics["val_loss"])
        if best is None or key > (best["accuracy"], -best["val_loss"]):
            best, best_state = metrics, copy.deepcopy(model.state_dict())
    return history, best, best_state


def _fit_masks(
    trained: Classifier,
    samples: Sequence[Sample],
    config: TrainConfig,
    grouping: Grouping | None = None,
) -> tuple[dict, dict, dict]:
    """Per class, the refiner whose out-of-fold IoU on the images with masks is best: the tuned
    hand-made ones, or the learned one where it beats them; and the click model, for every
    label. Returns the refine settings, the learned refiner's and the click model's tensors for
    the checkpoint, and their out-of-fold figures for its metrics."""
    tuned, quality = tune_refiners(trained, samples, progress=config.progress)
    learned, learned_quality, frame_iou = fit_learned_refiner(
        trained, samples, progress=config.progress, seed=config.seed, grouping=grouping
    )
    clicker, click_figures = fit_click_model(samples, config.seed, grouping, config.progress)
    for label, score in learned_quality.items():
        if score > quality.get(label, 0.0):
            tuned[label], quality[label] = RefineParams("learned"), score
    kept = {
        k: v for k, v in learned.classes.items() if tuned.get(k, None) == RefineParams("learned")
    }
    figures = {
        "refine_train_iou": quality,
        "learned_refiner_iou": learned_quality,
        "learned_refiner_frame": {
            label: {**frame_iou[label], "chosen": learned.classes[label].frame}
            for label in frame_iou
        },
    }
    extras = LearnedRefiner(kept).to_state()
    if clicker is not None:
        extras.update(clicker.to_state())
        figures["click_model"] = click_figures
    return to_plain(tuned), extras, figures


@torch.inference_mode()
def evaluate_classifier(
    model: torch.nn.Module, spec: ClassifierSpec, x: torch.Tensor, y: torch.Tensor, device: str
) -> dict:
    model.eval()
    logits = torch.cat(
        [
            model(normalise(x[i : i + 64], spec).to(device)).float().cpu()
            for i in range(0, len(x), 64)
        ]
    )
    loss = float(classification_loss(logits, y, spec))
    probabilities = to_probabilities(logits, spec)
    truth = y.numpy() > 0.5
    predicted = np.array(
        [[c in decide(p, spec).classes for c in spec.classes] for p in probabilities]
    )
    accuracy = float(np.mean(np.all(predicted == truth, axis=1)))
    f1 = {}
    for index, name in enumerate(spec.classes):
        tp = np.sum(predicted[:, index] & truth[:, index])
        denominator = np.sum(predicted[:, index]) + np.sum(truth[:, index])
        f1[name] = float(2 * tp / denominator) if denominator else 1.0
    return {"accuracy": accuracy, "val_loss": loss, "per_class_f1": f1}


def classifier_accuracy(classifier: Classifier, samples: Sequence[Sample]) -> float:
    """A trained classifier's accuracy on ``samples`` (its own classes, set equality)."""
    x, y = _tensors(samples, classifier.spec, progress=False)
    metrics = evaluate_classifier(classifier.model, classifier.spec, x, y, str(classifier.device))
    return metrics["accuracy"]


def classification_loss(
    logits: torch.Tensor, targets: torch.Tensor, spec: ClassifierSpec
) -> torch.Tensor:
    """Cross-entropy for exclusive labels, per-class binary cross-entropy for multi-label."""
    if spec.exclusive:
        return torch.nn.functional.cross_entropy(logits, targets.argmax(dim=1))
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)


def balanced_sampler(targets: torch.Tensor, seed: int, minimum: int) -> WeightedRandomSampler:
    """Weight each image by its rarest class so every class is seen about equally often.

    An epoch draws at least ``minimum`` images: a project with 60 labels still gets enough
    optimiser steps per epoch for batch norm and the schedule to settle.
    """
    counts = targets.sum(dim=0).clamp(min=1)
    per_class = 1.0 / counts
    weights = (targets * per_class).max(dim=1).values
    weights = torch.where(weights > 0, weights, per_class.min())
    generator = torch.Generator().manual_seed(seed)
    count = max(len(targets), minimum)
    return WeightedRandomSampler(weights.double(), count, replacement=True, generator=generator)


def augmentation(size: int, name: str):
    """Label-preserving changes, from none to many.

    ``flip`` (the default) mirrors both ways; ``flip+rot`` adds 90-degree turns (surfaces and cells
    have no 'up'); ``full`` adds crops and light jitter. More augmentation needs more epochs to pay
    off: on a few hundred images and a CPU budget, flips win (docs/quality.md).

    Raises:
        DatasetError: an unknown name.
    """
    steps = {
        "none": [],
        "flip": [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()],
        "flip+rot": [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()],
        "full": [
            v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.75, 1.33), antialias=True),
            RandomRot90(),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ],
    }
    if name not in steps:
        raise DatasetError(f"unknown augmentation {name!r}: choose one of {defaults.AUGMENTATIONS}")
    return v2.Compose(steps[name]) if steps[name] else torch.nn.Identity()


class RandomRot90(torch.nn.Module):
    """Turn by a random multiple of 90 degrees: surfaces and cells have no 'up'."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.rot90(image, random.randrange(4), dims=(-2, -1))


def _tensors(
    samples: Sequence[Sample], spec: ClassifierSpec, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and prepare every image once: uint8 NCHW inputs and multi-hot targets."""
    size = spec.image_size
    images = np.empty((len(samples), 3, size, size), dtype=np.uint8)
    for i, sample in enumerate(tqdm(samples, desc="load", disable=not progress, leave=False)):
        images[i] = prepare(load_image(sample.image), spec).transpose(2, 0, 1)
    targets = torch.tensor(
        [[float(c in s.classes) for c in spec.classes] for s in samples], dtype=torch.float32
    )
    return torch.from_numpy(images), targets


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
