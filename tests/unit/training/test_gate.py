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


def test_where_sam2_serves_the_gate_is_calibrated_on_sams_masks(
    trained_model_dir, synthetic_dataset, sam2_checkpoint, monkeypatch
):
    """SAM2's evidence (probability times its predicted IoU) is on another scale than the cam
    segmenter's (probability squared): the rows that set the thresholds are SAM2's own."""
    import pytest

    from tests.conftest import SAM2_TINY_CONFIG
    from worker.pipeline.gate import evidence
    from worker.pipeline.segmenters.base import SegmenterOptions
    from worker.training import gate as module
    from worker.training.gate import gate_rows, gate_segmenter

    classifier = Classifier.load(ModelDir(trained_model_dir).current_path())
    held_out = [s for s in synthetic_dataset.samples if "Scratch" in s.classes][:2]
    options = SegmenterOptions(sam2_config=SAM2_TINY_CONFIG, sam2_checkpoint=sam2_checkpoint)
    assert gate_segmenter(options) == "sam2" and gate_segmenter(None) == "cam"
    judged = []

    def recording(prediction, mask):
        judged.append(mask.segmenter)
        return evidence(prediction, mask)

    monkeypatch.setattr(module, "evidence", recording)
    rows = gate_rows(classifier, held_out, segmenter=options)
    assert judged and set(judged) == {"sam2"}
    assert sum(len(r) for r in rows.values()) == len(judged)
    judged.clear()
    gate_rows(classifier, held_out)
    assert judged and set(judged) == {"cam"}
    with pytest.raises(Exception, match="sam2 knows no hub id"):
        gate_rows(classifier, held_out, segmenter=SegmenterOptions(sam2_hub_id="x/y"))


def test_training_records_the_segmenter_its_gate_was_calibrated_on(trained_model_dir):
    classifier = Classifier.load(ModelDir(trained_model_dir).current_path())
    assert classifier.spec.metrics["gate_segmenter"] == "cam"


def test_a_trainer_with_the_workers_sam2_settings_calibrates_on_sam2(tmp_path):
    from worker.contract.settings import Settings
    from worker.pipeline.classifier import resolve_device
    from worker.training.job import serving_sam2

    assert serving_sam2(Settings.from_env({})) is None
    options = serving_sam2(
        Settings.from_env(
            {"SAM2_CONFIG": "configs/sam2.1/sam2.1_hiera_t.yaml", "SAM2_CHECKPOINT": "/w/t.pt"}
        )
    )
    assert options.has_sam2 and options.sam2_checkpoint == "/w/t.pt"
    assert options.device == resolve_device("auto")  # the trainer's own
    hub = serving_sam2(Settings.from_env({"SAM2_HUB_ID": "facebook/sam2.1-hiera-tiny"}))
    assert hub.sam2_hub_id == "facebook/sam2.1-hiera-tiny" and hub.sam2_config is None


def test_serving_with_another_segmenter_than_the_gate_was_calibrated_on_is_said(
    trained_model_dir, caplog
):
    from dataclasses import replace
    from types import SimpleNamespace

    from worker.jobs.predict import warn_of_another_gate

    classifier = Classifier.load(ModelDir(trained_model_dir).current_path())
    classifier.spec = replace(classifier.spec, gate={"Scratch": 0.5})
    pipeline = SimpleNamespace(
        classifier=classifier,
        segmenter=SimpleNamespace(name="sam2"),
        options=SimpleNamespace(gate=True),
    )
    with caplog.at_level("WARNING"):
        warn_of_another_gate(pipeline)
    assert "calibrated on cam masks, and sam2 serves" in caplog.text
    caplog.clear()
    pipeline.segmenter.name = "cam"
    warn_of_another_gate(pipeline)
    assert not caplog.text


def test_a_sam2_the_trainer_cannot_build_keeps_the_weights_and_calibrates_on_cam(
    synthetic_dataset, caplog
):
    """A checkpoint only the workers have, or no internet on the trainer: the epochs are not
    thrown away at the end; the version says its gate is the cam segmenter's."""
    from worker.pipeline.segmenters.base import SegmenterOptions
    from worker.training.classifier import TrainConfig, train

    unknown = SegmenterOptions(sam2_hub_id="facebook/no-such-sam")
    config = TrainConfig(
        image_size=64,
        epochs=1,
        batch_size=16,
        progress=False,
        tune_masks=False,
        pretrained="none",
        serve_with=unknown,
    )
    with caplog.at_level("WARNING"):
        result = train(synthetic_dataset, config)
    assert result.spec.metrics["gate_segmenter"] == "cam" and result.state_dict
    assert "calibrated on the cam segmenter's masks" in caplog.text
    assert "sam2 knows no hub id" in caplog.text
