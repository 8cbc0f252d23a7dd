"""A held-out part judged again under the mask gate's rules, without training again.

    python scripts/regate_eval.py DATA_DIR --model-dir MODELS --split SPLIT.json
        [--background-class NAME] [--z 0 --z 1.645]

The model's current version is calibrated again on the validation share its training held out
(same images, same seed, accepted masks counted once per group), once for each ``--z`` (0: the
accept rate the masks show; the default ``GATE_Z``: its one-sided lower bound), and the split's
``test`` part is scored with each gate under ``camsam eval``'s cost model (default minutes).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from campaign_regate import _validation

from worker.cli.datasets import load_split
from worker.contract.defaults import GATE_Z
from worker.contract.settings import Settings
from worker.contract.store import ModelDir
from worker.data.dataset import load_dataset
from worker.evaluation.evaluate import labelling_cost, score_all
from worker.jobs.predict import load_pipeline
from worker.training.gate import calibrate_gate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--background-class", action="append", default=[])
    parser.add_argument("--z", type=float, action="append")
    args = parser.parse_args()
    dataset = load_dataset(args.data, args.background_class)
    learnt = dataset.subset(load_split(args.split, "train")).samples
    held_out = dataset.subset(load_split(args.split, "test")).samples
    models = ModelDir(args.model_dir)
    version = models.current_version()
    pipeline = load_pipeline(models, version, Settings(model_dir=args.model_dir, device="cpu"))
    classifier = pipeline.classifier
    _, validation, grouping = _validation(learnt, models.info(version)["recipe"])
    report = {"version": version, "recorded_gate": classifier.spec.gate, "rules": {}}
    for z in args.z or [0.0, GATE_Z]:
        rule, _ = calibrate_gate(classifier, validation, grouping, z)
        classifier.spec = replace(classifier.spec, gate=rule)
        scores = score_all(pipeline, held_out, f"z={z}", True)
        cost = labelling_cost(scores, classifier.spec.mask_classes, 1.0, 0.2)
        report["rules"][str(z)] = {"gate": rule, **cost}
        print(
            f"z={z}: gate {rule}; by hand {cost['by_hand']:.1f} min, with camsam "
            f"{cost['with_camsam']:.1f} min, actions {cost['actions']}",
            flush=True,
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
