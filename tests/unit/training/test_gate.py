"""Calibrating the gate on held-out images: thresholds where masks were accepted, abstention
where nothing was seen or every mask shown would have been deleted."""

from __future__ import annotations

from worker.contract.store import ModelDir
from worker.data.dataset import Dataset
from worker.pipeline.classifier import Classifier
from worker.training.gate import calibrate_gate


def test_a_class_with_nothing_held_out_abstains(trained_model_dir):
    classifier = Classifier.load(ModelDir(trained_model_dir).current_path())
    assert calibrate_gate(classifier, []) == (dict.fromkeys(classifier.spec.mask_classes), [])


def test_masks_accepted_on_held_out_images_open_the_gate(trained_model_dir, synthetic_dataset):
    classifier = Classifier.load(ModelDir(trained_model_dir).current_path())
    held_out = [s for s in synthetic_dataset.samples if "Scratch" in s.classes][:6]
    gate, borrowed = calibrate_gate(classifier, held_out)
    assert gate["Scratch"] is not None and 0.0 <= gate["Scratch"] < 1.0
    assert gate["Spot"] is None and borrowed == []  # no Spot image held out: nothing earned yet
    # The same six as photographs of two objects: two pieces of evidence, not enough.
    two, _ = calibrate_gate(classifier, held_out, lambda sample: str(held_out.index(sample) % 2))
    assert two["Scratch"] is None


def test_a_rare_class_borrows_the_threshold_a_common_one_earned(
    trained_model_dir, synthetic_dataset
):
    classifier = Classifier.load(ModelDir(trained_model_dir).current_path())
    scratches = [s for s in synthetic_dataset.samples if "Scratch" in s.classes][:6]
    spot = [s for s in synthetic_dataset.samples if "Spot" in s.classes][:1]
    alone, _ = calibrate_gate(classifier, spot)
    assert alone["Spot"] is None  # one accepted mask earns nothing by itself
    gate, borrowed = calibrate_gate(classifier, scratches + spot)
    # no lower than the Scratch masks that earned it
    assert borrowed == ["Spot"] and gate["Spot"] >= gate["Scratch"] is not None


def test_masks_on_background_images_alone_close_the_gate(trained_model_dir, synthetic_dataset):
    classifier = Classifier.load(ModelDir(trained_model_dir).current_path())
    backgrounds = [s for s in synthetic_dataset.samples if s.classes == ("Clean",)]
    assert isinstance(synthetic_dataset, Dataset)
    gate, _ = calibrate_gate(classifier, backgrounds)
    assert gate == dict.fromkeys(classifier.spec.mask_classes)


def test_a_gate_the_classifier_carries_hides_no_mask_from_calibration(
    trained_model_dir, synthetic_dataset
):
    from dataclasses import replace

    classifier = Classifier.load(ModelDir(trained_model_dir).current_path())
    held_out = [s for s in synthetic_dataset.samples if "Scratch" in s.classes][:6]
    classifier.spec = replace(classifier.spec, gate={})
    ungated, _ = calibrate_gate(classifier, held_out)
    classifier.spec = replace(classifier.spec, gate=dict.fromkeys(classifier.spec.mask_classes))
    assert calibrate_gate(classifier, held_out)[0] == ungated  # recalibrating a closed version
    assert ungated["Scratch"] is not None
