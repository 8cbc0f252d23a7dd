"""Judge a finished campaign again under the current mask-gate rule, without training again.

The gate changes neither what a version learns nor the order images are taken in (a held-back
mask still scores the image), so a campaign run under another gate rule has the same versions
and the same batches. This recalibrates each round's version on the validation share its
training held out (same images, same seed) and replays the annotator on that round's batch.

    python scripts/campaign_regate.py campaign.json DATA_DIR --model-dir campaign-models \\
        --background-class Free --out regated.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from worker.contract.defaults import Recipe
from worker.contract.settings import Settings
from worker.contract.store import ModelDir
from worker.data.dataset import load_dataset, stratified_split
from worker.evaluation.evaluate import labelling_cost, score_all
from worker.jobs.predict import load_pipeline
from worker.training.gate import calibrate_gate


def main(report_path: str, data: str, model_dir: str, background: list[str], out: str) -> None:
    report = json.loads(Path(report_path).read_text())
    dataset = load_dataset(data, background)
    samples = {s.key: s for s in dataset.samples}
    options = report["options"]
    regated: dict = {"source": report_path, "orders": {}}
    for order, state in report["orders"].items():
        models = ModelDir(Path(model_dir) / order)
        settings = Settings(model_dir=str(models.root), device="cpu")
        sizes = [row["batch"]["images"] for row in state["rounds"]]
        rows = []
        for number, row in enumerate(state["rounds"][1:], start=1):
            version = row["version"]
            info = models.info(version)
            if info is None:
                raise SystemExit(f"{order}: {version} is no longer in {models.root}")
            # What the version learnt from (a round whose training was kept left an older one).
            metrics = info["metrics"]
            count = min(metrics["train_images"] + metrics["val_images"], sum(sizes[:number]))
            learnt = state["labelled"][:count]
            recipe = info["recipe"]
            _, val, grouping = _validation(dataset.subset(learnt).samples, recipe)
            pipeline = load_pipeline(models, version, settings)
            classifier = pipeline.classifier
            gate, _ = calibrate_gate(classifier, val, grouping)
            classifier.spec = replace(classifier.spec, gate=gate)
            batch = state["labelled"][sum(sizes[:number]) : sum(sizes[: number + 1])]
            scores = score_all(pipeline, [samples[k] for k in batch], order, False)
            cost = labelling_cost(
                scores,
                classifier.spec.mask_classes,
                options["minutes_manual"],
                options["minutes_review"],
                options["minutes_relabel"],
            )
            rows.append(
                {
                    "round": number,
                    "version": version,
                    "gate_recorded": row["gate"],
                    "gate": classifier.spec.gate,
                    "actions": cost["actions"],
                    "minutes_by_hand": cost["by_hand"],
                    "minutes_with_camsam": cost["with_camsam"],
                    "recorded_minutes_with_camsam": row["minutes_with_camsam"],
                }
            )
            print(order, rows[-1], flush=True)
        start = state["rounds"][0]["batch"]["minutes_by_hand"]
        hand = start + sum(r["minutes_by_hand"] for r in rows)
        assisted = start + sum(r["minutes_with_camsam"] for r in rows)
        regated["orders"][order] = {
            "rounds": rows,
            "totals": {
                "minutes_by_hand": hand,
                "minutes_with_camsam": assisted,
                "saved_fraction": 1.0 - assisted / hand if hand else 0.0,
            },
        }
        print(order, regated["orders"][order]["totals"], flush=True)
    Path(out).write_text(json.dumps(regated, indent=1) + "\n")


def _validation(samples, recipe: dict):
    """The version's own validation share, and its grouping: by groups where its recipe names
    them, else the seeded random share versions made before groups existed."""
    if "groups" not in recipe:
        return (*stratified_split(samples, recipe["val_fraction"], recipe["seed"]), None)
    from worker.training.classifier import validation_split

    known = {k: v for k, v in recipe.items() if k in Recipe.__dataclass_fields__}
    rest, held, groups = validation_split(samples, Recipe(**known))
    return rest, held, groups.grouping


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("data")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--background-class", action="append", default=[])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    main(args.report, args.data, args.model_dir, args.background_class, args.out)
