"""summarise: the report's numbers from hand-made per-image scores."""

from __future__ import annotations

import json

import pytest

from worker.evaluation.evaluate import ImageScore, summarise

MASK_CLASSES = ("Crack", "Uneven", "Fray")  # "Free" is the background class; no Fray image


def _score(
    key, true, predicted, iou=None, iou_given=None, false_mask=False, seconds=1.0, shown=None
):
    iou = iou or {}
    return ImageScore(
        shown=any(v > 0 for v in iou.values()) if shown is None else shown,
        key=key,
        true_classes=true,
        predicted_classes=predicted,
        iou=iou,
        iou_given=iou_given if iou_given is not None else dict(iou),
        dice={label: min(1.0, 2 * value / (1 + value)) for label, value in iou.items()},
        false_mask=false_mask,
        seconds=seconds,
    )


@pytest.fixture
def scores() -> list[ImageScore]:
    return [
        _score("a", ("Crack",), ("Crack",), {"Crack": 0.8}, seconds=1.0),
        # Missed Uneven: IoU 0 with predicted classes, but 0.7 once the class is given.
        _score(
            "b",
            ("Crack", "Uneven"),
            ("Crack",),
            {"Crack": 0.6, "Uneven": 0.0},
            {"Crack": 0.6, "Uneven": 0.7},
            seconds=2.0,
        ),
        _score("c", ("Uneven",), ("Uneven",), {"Uneven": 0.4}, seconds=3.0),
        _score("d", ("Free",), ("Free",), seconds=4.0),
        _score("e", ("Free",), ("Crack",), false_mask=True, seconds=5.0),
        # Same set in another order is correct; IoU exactly 0.5 is accepted.
        _score(
            "f",
            ("Crack", "Uneven"),
            ("Uneven", "Crack"),
            {"Crack": 0.9, "Uneven": 0.5},
            seconds=6.0,
        ),
        _score("g", ("Crack",), ("Crack",), {"Crack": 1.0}, seconds=7.0),
        # An object image without ground truth: neither an object image nor a background one.
        _score("h", ("Crack",), (), seconds=8.0),
    ]


def test_accuracy_is_exact_set_match(scores):
    report = summarise(scores, MASK_CLASSES, 1.0, 0.2)

    # Correct: a, c, d, f, g; wrong: b (missed Uneven), e (Crack on Free), h (nothing).
    assert report["images"] == 8
    assert report["accuracy"] == pytest.approx(5 / 8)


def test_miou_is_the_mean_over_classes_of_per_class_means(scores):
    report = summarise(scores, MASK_CLASSES, 1.0, 0.2)

    crack = (0.8 + 0.6 + 0.9 + 1.0) / 4
    uneven = (0.0 + 0.4 + 0.5) / 3
    assert report["per_class"]["Crack"]["images"] == 4
    assert report["per_class"]["Uneven"]["images"] == 3
    assert report["per_class"]["Crack"]["iou"] == pytest.approx(crack)
    assert report["per_class"]["Uneven"]["iou"] == pytest.approx(uneven)
    assert "Fray" not in report["per_class"]  # no image: it must not count as IoU 0
    assert "Free" not in report["per_class"]
    assert report["miou"] == pytest.approx((crack + uneven) / 2)
    assert report["miou"] != pytest.approx((0.8 + 0.6 + 0.9 + 1.0 + 0.0 + 0.4 + 0.5) / 7)
    uneven_given = (0.7 + 0.4 + 0.5) / 3
    assert report["per_class"]["Uneven"]["iou_given_class"] == pytest.approx(uneven_given)
    assert report["miou_given_class"] == pytest.approx((crack + uneven_given) / 2)
    crack_dice = sum(2 * v / (1 + v) for v in (0.8, 0.6, 0.9, 1.0)) / 4
    assert report["per_class"]["Crack"]["dice"] == pytest.approx(crack_dice)


def test_accept_rates_need_every_true_class_at_half_iou(scores):
    report = summarise(scores, MASK_CLASSES, 1.0, 0.2)

    # Object images a, b, c, f, g. Accepted: a, f, g; given the classes also b.
    assert report["object_images"] == 5
    assert report["accept_rate"] == pytest.approx(3 / 5)
    assert report["accept_rate_given_class"] == pytest.approx(4 / 5)


def test_false_mask_rate_is_over_background_images_only(scores):
    report = summarise(scores, MASK_CLASSES, 1.0, 0.2)

    assert report["background_images"] == 2  # d and e; h is an object image without a mask
    assert report["false_mask_rate"] == pytest.approx(1 / 2)


def test_labelling_minutes(scores):
    report = summarise(scores, MASK_CLASSES, minutes_manual=2.0, minutes_review=0.5)

    minutes = report["labelling_minutes"]
    # 5 object images by hand; with camsam review all 5, redo the 2 rejected, review 1 false mask.
    assert minutes["by_hand"] == pytest.approx(5 * 2.0)
    assert minutes["with_camsam"] == pytest.approx(5 * 0.5 + 2 * 2.0 + 1 * 0.5)
    assert minutes["saved_share"] == pytest.approx(1 - 7.0 / 10.0)
    assert minutes["minutes_per_mask_by_hand"] == 2.0
    assert minutes["minutes_per_review"] == 0.5


def test_an_image_given_no_mask_is_painted_as_by_hand_not_reviewed(scores):
    hidden = [
        _score("a", ("Crack",), ("Crack",), {"Crack": 0.0}, shown=False),  # the gate held it back
        _score("b", ("Crack",), ("Crack",), {"Crack": 0.9}),
    ]
    minutes = summarise(hidden, MASK_CLASSES, minutes_manual=2.0, minutes_review=0.5)[
        "labelling_minutes"
    ]
    assert minutes["with_camsam"] == pytest.approx(2.0 + 0.5)
    assert minutes["actions"] == {
        "accepted": 1,
        "redrawn": 0,
        "painted": 1,
        "relabelled": 0,
        "deleted": 0,
    }


def test_median_seconds_and_details(scores):
    report = summarise(scores, MASK_CLASSES, 1.0, 0.2)

    assert report["seconds_per_image_median"] == pytest.approx(4.5)
    assert [row["key"] for row in report["images_detail"]] == list("abcdefgh")
    json.dumps(report)


def test_only_background_images():
    scores = [
        _score("x", ("Free",), ("Free",)),
        _score("y", ("Free",), ("Crack",), false_mask=True),
    ]

    report = summarise(scores, MASK_CLASSES, 1.0, 0.2)

    assert report["object_images"] == 0
    assert report["miou"] == 0.0
    assert report["accept_rate"] == 0.0
    assert report["false_mask_rate"] == pytest.approx(0.5)
    assert report["labelling_minutes"]["by_hand"] == 0.0
    assert report["labelling_minutes"]["saved_share"] == 0.0


def test_scoring_in_batches_scores_each_image_as_alone(trained_model_dir, synthetic_dataset):
    from worker.contract.settings import Settings
    from worker.contract.store import ModelDir
    from worker.evaluation.evaluate import score_all, score_image
    from worker.jobs.predict import load_pipeline

    models = ModelDir(trained_model_dir)
    settings = Settings(model_dir=str(trained_model_dir), device="cpu")
    pipeline = load_pipeline(models, models.current_version(), settings)
    samples = synthetic_dataset.samples[::6]  # every class; a full batch of 8 and a part one
    batched = score_all(pipeline, samples, "eval", progress=False)
    alone = [score_image(pipeline, sample) for sample in samples]
    assert [s.key for s in batched] == [s.key for s in samples]
    for a, b in zip(batched, alone, strict=True):
        assert (a.predicted_classes, a.shown, a.false_mask) == (
            b.predicted_classes,
            b.shown,
            b.false_mask,
        )
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert a.iou == pytest.approx(b.iou, abs=1e-3)
        assert a.iou_given == pytest.approx(b.iou_given, abs=1e-3)
    assert any(s.iou_given for s in batched)  # masks were judged, not only classes


def test_a_mask_the_gate_held_back_is_judged_with_the_class_given(
    trained_model_dir, synthetic_dataset
):
    """The gate hides a mask from the pre-annotation, not from the given-class figure, which
    judges the mask camsam draws when told the class: with every class abstaining nothing is
    shown, yet the given-class IoU is the same as with the gate open."""
    from dataclasses import replace

    from worker.contract.store import ModelDir
    from worker.evaluation.evaluate import score_all
    from worker.pipeline.pipeline import Pipeline

    pipeline = Pipeline.build(ModelDir(trained_model_dir).current_path())
    samples = synthetic_dataset.samples[::4]
    pipeline.classifier.spec = replace(pipeline.classifier.spec, gate={})
    open_scores = score_all(pipeline, samples, "eval", progress=False)
    labels = pipeline.classifier.spec.mask_classes
    pipeline.classifier.spec = replace(pipeline.classifier.spec, gate=dict.fromkeys(labels))
    shut_scores = score_all(pipeline, samples, "eval", progress=False)

    assert any(s.shown for s in open_scores) and not any(s.shown for s in shut_scores)
    assert any(s.true_classes == ("Clean",) for s in shut_scores)
    assert not any(s.false_mask for s in shut_scores)  # nothing shown: nothing to delete
    assert all(v == 0.0 for s in shut_scores for v in s.iou.values())
    assert any(v > 0.3 for s in shut_scores for v in s.iou_given.values())
    for shut, opened in zip(shut_scores, open_scores, strict=True):
        assert shut.iou_given == pytest.approx(opened.iou_given, abs=1e-3)
