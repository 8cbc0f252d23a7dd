from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.contract.errors import CheckpointError, SegmenterError
from worker.contract.store import ModelDir
from worker.data.synthetic import make_image
from worker.pipeline.cam.base import compute_cams
from worker.pipeline.checkpoint import load_checkpoint
from worker.pipeline.classifier import Classifier
from worker.pipeline.clicker import ClickModel
from worker.pipeline.masks import iou
from worker.pipeline.pipeline import Pipeline
from worker.pipeline.refiners.base import RefineParams, refine_cam
from worker.pipeline.refiners.learned import (
    FEATURES,
    PREFIX,
    ClassTrees,
    LearnedRefiner,
    feature_maps,
    pixel_features,
    split_state,
)
from worker.pipeline.segmenters.base import SegmenterOptions
from worker.pipeline.segmenters.cam import CamSegmenter
from worker.training.learned_refiner import fit_learned_refiner


@pytest.fixture(scope="module")
def classifier(trained_model_dir) -> Classifier:
    return Classifier.load(ModelDir(trained_model_dir).current_path())


@pytest.fixture(scope="module")
def fitted(classifier, synthetic_dataset):
    return fit_learned_refiner(classifier, synthetic_dataset.samples)


def held_out(classifier, kind: str, seed: int):
    image, truth = make_image(np.random.default_rng(seed), kind, (120, 160))
    (cam,) = compute_cams(classifier, image, [kind])
    return image, truth, cam


def test_features_are_per_pixel_at_the_working_size():
    image = np.full((100, 300, 3), 90, np.uint8)
    features = pixel_features(image, np.zeros((100, 300), np.float32))
    assert features.shape == (64, 192, FEATURES) and features.dtype == np.float32
    assert np.isfinite(features).all()


def test_trees_learn_each_class_and_report_out_of_fold_iou(classifier, fitted):
    refiner, quality, frame = fitted
    assert set(quality) == {"Scratch", "Spot"} and set(refiner.classes) == set(quality)
    assert all(0.4 < q <= 1.0 for q in quality.values()), quality
    for label, figures in frame.items():  # the synthetic defects are anywhere in the frame
        assert quality[label] == figures["without"] and not refiner.classes[label].frame
    for label in ("Scratch", "Spot"):
        assert refiner.threshold(label) in (0.5, 0.6, 0.7, 0.8, 0.9)
        assert refiner.classes[label].parts in (0.0, 0.3, 1.0)
        scores = []
        for seed in range(100, 105):
            image, truth, cam = held_out(classifier, label, seed)
            mask = refiner.mask(image, cam.cam, label)
            assert mask.shape == truth.shape and mask.dtype == bool
            scores.append(iou(mask, truth))
        assert np.mean(scores) > 0.4, (label, scores)


def test_trees_read_coarse_to_fine_what_reading_every_pixel_gives(classifier, fitted, monkeypatch):
    refiner, *_ = fitted
    rows: list[int] = []
    log_odds = ClassTrees.log_odds
    monkeypatch.setattr(
        ClassTrees, "log_odds", lambda self, x: rows.append(len(x)) or log_odds(self, x)
    )
    read = []
    for label in ("Scratch", "Spot"):
        trees = refiner.classes[label]
        cut = np.log(trees.threshold / (1 - trees.threshold))
        for seed in range(200, 204):
            image, _, cam = held_out(classifier, label, seed)
            maps = feature_maps(image, cam.cam)
            features = pixel_features(image, cam.cam)
            exact = log_odds(trees, features.reshape(-1, FEATURES)).reshape(features.shape[:2])
            np.testing.assert_allclose(trees.log_odds_map(maps, np.inf), exact)
            rows.clear()
            coarse = trees.log_odds_map(maps)
            read.append(sum(rows) / exact.size)
            np.testing.assert_allclose(coarse[::2, ::2], exact[::2, ::2])
            assert iou(coarse > cut, exact > cut) > 0.97
    assert max(read) < 0.5 and min(read) >= 0.25, read


def test_trees_survive_plain_tensors_and_weights_only_loading(classifier, fitted, tmp_path):
    refiner, *_ = fitted
    state = refiner.to_state()
    assert all(k.startswith(PREFIX) and isinstance(v, torch.Tensor) for k, v in state.items())
    path = tmp_path / "refiner.pt"
    torch.save(state, path)
    loaded = LearnedRefiner.from_state(torch.load(path, weights_only=True))
    image, _, cam = held_out(classifier, "Spot", 7)
    np.testing.assert_array_equal(
        loaded.mask(image, cam.cam, "Spot"), refiner.mask(image, cam.cam, "Spot")
    )
    kept = {label: trees.parts for label, trees in refiner.classes.items()}
    assert {label: trees.parts for label, trees in loaded.classes.items()} == kept
    assert loaded.classes["Spot"].frame == refiner.classes["Spot"].frame
    del state[f"{PREFIX}Spot.parts"]  # saved before the choice existed: every part is kept
    del state[f"{PREFIX}Spot.frame"]  # and the place in the frame was read
    old = LearnedRefiner.from_state(state).classes["Spot"]
    assert old.parts == 0.0 and old.frame
    del state[f"{PREFIX}Spot.left"]
    with pytest.raises(CheckpointError, match="incomplete learned refiner for 'Spot'"):
        LearnedRefiner.from_state(state, "x.pt")


def test_training_keeps_the_trees_of_the_classes_it_gives_them(trained_model_dir):
    path = ModelDir(trained_model_dir).current_path()
    spec, state = load_checkpoint(path)
    weights, extras = split_state(state)
    learned = {k for k, p in spec.refine.items() if p["method"] == "learned"}
    assert set(spec.metrics["learned_refiner_iou"]) == {"Scratch", "Spot"}
    assert set(spec.metrics["learned_refiner_frame"]) == {"Scratch", "Spot"}
    for label in spec.metrics["learned_refiner_iou"]:
        chosen = spec.metrics["refine_train_iou"][label]
        assert chosen >= spec.metrics["learned_refiner_iou"][label]
    assert {k[len(PREFIX) :].rpartition(".")[0] for k in extras} == learned
    assert not any(k.startswith(PREFIX) for k in weights)
    pipeline = Pipeline.build(path, segmenter="cam")
    assert set(pipeline.segmenter.learned.classes) == learned
    loaded = Classifier.load(path).extras  # the learned refiner's and the click model's
    assert {k for k in loaded if k.startswith(PREFIX)} == extras.keys()
    assert {k for k in loaded if not k.startswith(PREFIX)} == set(
        ClickModel.from_state(loaded).to_state()
    )


def test_the_cam_segmenter_runs_the_trees_and_falls_back_without_them(classifier, fitted):
    refiner, *_ = fitted
    image, truth, cam = held_out(classifier, "Spot", 11)
    learned = RefineParams("learned")
    (result,) = CamSegmenter(per_class={"Spot": learned}, learned=refiner).segment(
        image, [cam], [None]
    )
    assert result.details["refiner"] == "learned" and result.mask.shape == truth.shape
    (fallback,) = CamSegmenter(per_class={"Spot": learned}).segment(image, [cam], [None])
    assert fallback.details["refiner"] == "guided"
    prompted = CamSegmenter(per_class={"Spot": learned}, learned=refiner).for_prompts()
    (focused,) = prompted.segment(image, [cam], [None])
    assert focused.details["refiner"] == "guided"  # no click to pick parts: as before clicks did
    with pytest.raises(SegmenterError, match="learned refiner needs the trees"):
        refine_cam(image, cam.cam, learned)


def test_the_backend_can_trade_the_trees_for_a_hand_made_refiner(trained_model_dir):
    from worker.contract.settings import Settings
    from worker.jobs.predict import load_pipeline

    model_dir = ModelDir(trained_model_dir)
    version = model_dir.current_version()
    env = {"MODEL_DIR": str(trained_model_dir), "DEVICE": "cpu"}
    default = load_pipeline(model_dir, version, Settings.from_env(env))
    fast = load_pipeline(model_dir, version, Settings.from_env({**env, "CAM_REFINER": "contrast"}))
    assert default.segmenter.learned.classes and not fast.segmenter.per_class
    assert fast.segmenter.default == RefineParams("contrast")
    image, _, cam = held_out(default.classifier, "Spot", 3)
    (result,) = fast.segmenter.segment(image, [cam], [None])
    assert result.details["refiner"] == "contrast"


def test_the_cam_segmenter_reads_the_trees_where_the_pipeline_runs(trained_model_dir):
    path = ModelDir(trained_model_dir).current_path()
    on_cpu = Pipeline.build(path, segmenter="cam").segmenter.learned
    assert on_cpu.classes and all(t.device == "cpu" for t in on_cpu.classes.values())
    classifier = Classifier.load(path)  # no GPU needed: the tensors are made on first use
    on_gpu = CamSegmenter.from_options(SegmenterOptions(device="cuda"), classifier).learned
    assert on_gpu.classes.keys() == on_cpu.classes.keys()
    assert all(trees.device == "cuda" for trees in on_gpu.classes.values())


@pytest.mark.gpu
@pytest.mark.slow
def test_a_gpu_reads_the_trees_to_the_masks_the_cpu_reads(trained_model_dir):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    path = ModelDir(trained_model_dir).current_path()
    on_cpu = Pipeline.build(path, segmenter="cam")
    on_gpu = Pipeline.build(path, segmenter="cam", device="cuda")
    assert on_gpu.segmenter.learned.classes
    for label in on_gpu.segmenter.learned.classes:
        image, _, cam = held_out(on_cpu.classifier, label, 31)
        maps = feature_maps(image, cam.cam)
        trees_cpu = on_cpu.segmenter.learned.classes[label]
        trees_gpu = on_gpu.segmenter.learned.classes[label]
        assert trees_gpu.device == "cuda" and "_on_device" not in vars(trees_gpu)
        exact = trees_cpu.log_odds_map(maps)
        np.testing.assert_allclose(trees_gpu.log_odds_map(maps), exact, atol=1e-9)
        assert "_on_device" in vars(trees_gpu)  # read as tensors, not by scikit-learn
        assert "_on_device" not in vars(trees_cpu)
