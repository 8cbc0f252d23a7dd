"""Mask-gate rules compared on versions already trained, without training again.

    python scripts/gate_rules.py collect OUT.json --data DATA_DIR --model-dir MODELS \\
        --split SPLIT.json [--background-class NAME]
    python scripts/gate_rules.py collect OUT.json --data DATA_DIR --model-dir CAMPAIGN_MODELS \\
        --campaign campaign.json --order arrival [--background-class NAME]
    python scripts/gate_rules.py judge OUT.json [OUT.json ...]

``collect`` runs each version once with the gate open: on the validation share its training
held out (each mask's evidence, whether it would be accepted, the image's group) and on the part
it is judged on (a split's ``test`` part, or each campaign round's batch). ``judge`` then
calibrates every rule on the validation rows and replays ``camsam eval``'s annotator on the
judged part, so rules are compared on the same masks.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from campaign_regate import _validation

from worker.cli.datasets import load_split
from worker.contract.settings import Settings
from worker.contract.store import ModelDir
from worker.data.dataset import load_dataset
from worker.data.images import load_image
from worker.evaluation.evaluate import ImageScore, labelling_cost
from worker.jobs.predict import load_pipeline
from worker.pipeline.gate import best_threshold, class_thresholds, evidence, lend
from worker.pipeline.masks import iou
from worker.pipeline.pipeline import Pipeline
from worker.training.gate import MINUTES_MANUAL, MINUTES_REVIEW, gate_rows

SAVED, LOST = MINUTES_MANUAL - MINUTES_REVIEW, MINUTES_REVIEW  # as training calibrates


def collect(args) -> None:
    dataset = load_dataset(args.data, args.background_class)
    models = ModelDir(args.model_dir)
    cases = []
    if args.campaign:
        state = json.loads(Path(args.campaign).read_text())["orders"][args.order]
        sizes = [row["batch"]["images"] for row in state["rounds"]]
        for number, row in enumerate(state["rounds"][1:], start=1):
            metrics = models.info(row["version"])["metrics"]
            count = min(metrics["train_images"] + metrics["val_images"], sum(sizes[:number]))
            batch = state["labelled"][sum(sizes[:number]) : sum(sizes[: number + 1])]
            cases.append((f"round {number}", row["version"], state["labelled"][:count], batch))
    else:
        learnt, judged = load_split(args.split, "train"), load_split(args.split, "test")
        cases.append(("held out", models.current_version(), learnt, judged))
    settings = Settings(model_dir=str(models.root), device="cpu")
    out = []
    for name, version, learnt, judged in cases:
        pipeline = load_pipeline(models, version, settings)
        pipeline = Pipeline(
            pipeline.classifier, pipeline.segmenter, replace(pipeline.options, gate=False)
        )
        mask_classes = pipeline.classifier.spec.mask_classes
        _, validation, grouping = _validation(
            dataset.subset(learnt).samples, models.info(version)["recipe"]
        )
        rows = gate_rows(pipeline.classifier, validation, grouping)
        images = []
        for sample in dataset.subset(judged).samples:
            truth = [c for c in sample.classes if c in mask_classes and sample.has_mask(c)]
            masks = _masks(pipeline, sample, mask_classes)
            images.append({"truth": truth, "masks": masks, "classes": list(sample.classes)})
        out.append({"case": name, "version": version, "rows": rows, "images": images})
        print(name, version, {k: len(v) for k, v in rows.items()}, len(images), flush=True)
    Path(args.out).write_text(json.dumps({"source": vars(args), "cases": out}))


def _masks(pipeline, sample, mask_classes) -> list[tuple[str, float, float]]:
    image = load_image(sample.image)
    result = pipeline.run(image)
    return [
        (
            m.label,
            evidence(result.prediction, m),
            iou(m.mask, sample.mask(m.label, image.shape[:2])) if m.label in sample.classes else 0,
        )
        for m in result.masks
        if m.label in mask_classes
    ]


def per_class(rows: dict) -> dict:
    return {label: best_threshold(r, SAVED, LOST) for label, r in rows.items()}


def pooled(rows: dict) -> dict:
    """(Tried, not kept.) As ``borrowed``, but lending the threshold all classes' masks earn
    together, whether or not any class earned one of its own."""
    return lend(per_class(rows), rows, [row for r in rows.values() for row in r], SAVED, LOST)[0]


def borrowed(rows: dict) -> dict:
    """What training calibrates: per class, and a rare class borrowing the threshold the
    classes that earned one earn together (``class_thresholds``)."""
    return class_thresholds(rows, SAVED, LOST)[0]


RULES = {"per class": per_class, "pooled fallback": pooled, "borrowed": borrowed}


def judge(paths: list[str]) -> None:
    for path in paths:
        report = json.loads(Path(path).read_text())
        print(f"== {path}")
        for case in report["cases"]:
            line = [f"{case['case']:>9} {case['version']}"]
            for name, rule in RULES.items():
                gate = rule(case["rows"])
                hand, assisted, actions = _cost(case["images"], gate)
                opened = [k for k, v in gate.items() if v is not None]
                line.append(f"{name}: {assisted:.1f}/{hand:.1f} min {actions} open {opened}")
            print("\n    ".join(line))


def _cost(images: list[dict], gate: dict) -> tuple[float, float, dict]:
    """``camsam eval``'s annotator (``labelling_cost``) on ``images`` under ``gate``."""
    scores = []
    for image in images:
        shown = {
            label: overlap
            for label, value, overlap in image["masks"]
            if gate.get(label) is not None and value >= gate[label]
        }
        classes = tuple(image["classes"])
        background = not any(c in gate for c in classes)
        scores.append(
            ImageScore(
                "",
                classes,
                classes,  # classes are not judged here: nothing is relabelled
                iou={label: shown.get(label, 0.0) for label in image["truth"]},
                false_mask=background and bool(shown),
                shown=bool(shown),
            )
        )
    cost = labelling_cost(scores, tuple(gate), MINUTES_MANUAL, MINUTES_REVIEW)
    actions = {k: v for k, v in cost["actions"].items() if k != "relabelled"}
    return cost["by_hand"], cost["with_camsam"], actions


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    take = sub.add_parser("collect")
    take.add_argument("out")
    take.add_argument("--data", required=True)
    take.add_argument("--model-dir", required=True)
    take.add_argument("--split")
    take.add_argument("--campaign")
    take.add_argument("--order", default="arrival")
    take.add_argument("--background-class", action="append", default=[])
    judged = sub.add_parser("judge")
    judged.add_argument("paths", nargs="+")
    args = parser.parse_args()
    if args.command == "collect":
        collect(args)
    else:
        judge(args.paths)
