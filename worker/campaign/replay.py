"""A labelling campaign replayed: what a project costs by hand and with camsam, round by round.

A few images per class are labelled by hand and the first version trained. Then, each round,
the backend's pipeline pre-annotates the unlabelled pool, the next batch is taken in the chosen
order, the annotator's work on it is replayed with ``camsam eval``'s cost model (and, side by
side, the three annotators of :mod:`worker.campaign.annotators`: painting, clicking, and camsam's
pre-annotation then clicking), the batch joins
the labelled set (with its true classes and masks, as the annotator submits them) and the
backend's training step runs: fine-tuned from the current version, published only if the publish
rule lets it. Training, prediction and scoring are the backend's and ``camsam eval``'s own code
(:func:`worker.training.job.train_version`, :func:`worker.jobs.predict.load_pipeline`,
:func:`worker.evaluation.evaluate.score_all`).

The state is written after every round, so ``resume`` carries on from the last finished one.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from worker.campaign.annotators import batch_minutes, click_totals
from worker.campaign.options import CampaignOptions
from worker.campaign.orders import ORDERS, OrderContext, read_arrival
from worker.contract.errors import CamsamError
from worker.contract.settings import Settings
from worker.contract.store import ModelDir, atomic_write
from worker.data.dataset import Dataset
from worker.evaluation.evaluate import labelling_cost, score_all, summarise
from worker.jobs.predict import load_pipeline
from worker.pipeline.checkpoint import rollback
from worker.training.job import train_version


def run_campaign(
    dataset: Dataset,
    orders: list[str],
    settings: Settings,
    options: CampaignOptions,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    held_out: Dataset | None = None,
) -> dict:
    """Replay the campaign once per order; models go under ``settings.model_dir/<order>``.
    With ``held_out`` (images no order ever labels), every round's version is also judged
    there: a measure that does not change with what each order has taken from the pool.

    Returns the report also written to ``out`` after every round.

    Raises:
        CamsamError: an unknown order, a start that leaves no pool, or a state to resume from
            that was made with other options.
    """
    unknown = [o for o in orders if o not in ORDERS]
    if unknown:
        raise CamsamError(f"unknown order(s) {unknown}: choose from {', '.join(ORDERS)}")
    if options.start < 1 or options.batch < 1:
        raise CamsamError("--start and --batch must be at least 1 image")
    if options.max_clicks < 1 or options.seconds_per_click < 0:
        raise CamsamError("--max-clicks must be at least 1 and --seconds-per-click at least 0")
    report = _start_report(dataset, orders, settings, options, out, resume, held_out)
    for order in orders:
        _Replay(dataset, order, settings, options, report, out, progress, held_out).run()
    _totals(report, options)
    _save(report, out)
    return report


def _budget(settings) -> dict:
    """The budget of a first version that chooses its recipe (none when the flags fix it)."""
    if settings.train_input and settings.train_image_size:
        return {}
    return {"budget_minutes": settings.train_budget}


def _start_report(dataset, orders, settings, options, out: Path, resume: bool, held_out) -> dict:
    fresh = {
        "dataset": {"images": len(dataset.samples), "counts": dataset.counts()},
        "held_out": (
            {"images": len(held_out.samples), "counts": held_out.counts()} if held_out else None
        ),
        "options": asdict(options),
        "recipe": {
            "arch": settings.train_arch or "(default)",
            "input": settings.train_input,
            "image_size": settings.train_image_size,
            **_budget(settings),
            "epochs": settings.train_epochs,
            "finetune_epochs": settings.train_finetune_epochs,
            "output_stride": settings.train_output_stride,
            "pretrained": settings.train_pretrained,
            "groups": settings.train_groups,
            "sam2": settings.sam2_checkpoint or settings.sam2_hub_id,
            "mask_gate": settings.mask_gate,
        },
        "orders": {},
    }
    if not (resume and out.is_file()):
        return fresh
    report = json.loads(out.read_text())
    if any(report.get(k) != fresh[k] for k in ("options", "recipe", "held_out")):
        raise CamsamError(
            f"{out} was written by a campaign with other options or recipe: resume with the "
            "same ones, or write to another --out"
        )
    return report


class _Replay:
    """One order's campaign, carried on from ``report["orders"][order]`` where it stopped."""

    def __init__(self, dataset, order, settings, options, report, out, progress, held_out) -> None:
        self.dataset, self.order, self.options = dataset, order, options
        self.held_out = held_out
        self.samples = {s.key: s for s in dataset.samples}
        self.models = ModelDir(Path(settings.model_dir) / order)
        # Every version stays: resume rolls back to them, and later orders copy the first.
        self.settings = replace(settings, keep_versions=0)
        self.report, self.out, self.progress = report, out, progress
        self.state = report["orders"].setdefault(order, {"rounds": [], "labelled": []})
        arrival = read_arrival(options.arrival) if options.arrival else None
        self.context = OrderContext(dataset.samples, options.seed, options.group, arrival)

    def run(self) -> None:
        if not self.state["rounds"]:
            if self.models.versions():  # another campaign's (or a cut-off first round's)
                raise CamsamError(
                    f"{self.models.root} holds model versions no round of this campaign "
                    "recorded: remove it, or choose another --model-dir"
                )
            self._first_version()
        else:
            self._back_to_last_round()
        while self._pool() and self._more_rounds():
            self._round()

    def _pool(self) -> list[str]:
        labelled = set(self.state["labelled"])
        return [s.key for s in self.dataset.samples if s.key not in labelled]

    def _more_rounds(self) -> bool:
        return not self.options.rounds or len(self.state["rounds"]) <= self.options.rounds

    def _first_version(self) -> None:
        start = self._start_keys()
        if len(start) >= len(self.samples):
            raise CamsamError(
                f"--start {self.options.start} per class labels every image: nothing is left "
                "for camsam to pre-annotate"
            )
        minutes = self._by_hand(start)
        self.state["labelled"] = start
        outcome = self._first_of_another_order() or self._train()
        self._record(
            {
                "round": 0,
                "labelled": 0,
                "batch": {"images": len(start), "minutes_by_hand": minutes},
                "minutes_with_camsam": minutes,  # no model yet: all by hand
                **outcome,
            }
        )

    def _first_of_another_order(self) -> dict | None:
        """Every order starts from the same images with the same seed, so the first version one
        order trained is copied rather than trained again; None when no order has one yet."""
        for order, state in self.report["orders"].items():
            first = state["rounds"][0] if state["rounds"] and order != self.order else {}
            version = first.get("current")
            source = ModelDir(self.models.root.parent / order)
            if not version or not source.path(version).is_file():
                continue
            self.models.versions_dir.mkdir(parents=True, exist_ok=True)
            for path in (source.path(version), source.info_path(version)):
                shutil.copyfile(path, self.models.versions_dir / path.name)
            rollback(self.models, version)
            return {
                "training": first["training"],
                "training_seconds": first["training_seconds"],
                "current": version,
                "copied_from": order,
            }
        return None

    def _start_keys(self) -> list[str]:
        """``start`` images per class, seeded; an image counts for each of its classes."""
        rng = random.Random(self.options.seed)
        chosen: dict[str, None] = {}
        for label in self.dataset.classes:
            having = [s.key for s in self.dataset.samples if label in s.classes]
            have = sum(1 for k in chosen if label in self.samples[k].classes)
            for key in rng.sample(having, len(having)):
                if have >= self.options.start:
                    break
                if key not in chosen:
                    chosen[key] = None
                    have += 1
        return list(chosen)

    def _by_hand(self, keys: list[str]) -> float:
        """Minutes to paint ``keys``' masks by hand (images with no mask class cost none)."""
        masked = set(self.dataset.classes) - set(self.dataset.background_classes)
        objects = [k for k in keys if masked & set(self.samples[k].classes)]
        return len(objects) * self.options.minutes_manual

    def _back_to_last_round(self) -> None:
        """A run cut off during training may have published a version no round used: it is
        discarded, and the campaign carries on from the version its last finished round left
        current, as if the cut had not happened (version names and training seeds included)."""
        version = self.state["rounds"][-1].get("current")
        if not version:
            return
        if self.models.current_version() != version:
            rollback(self.models, version)
        versions = self.models.versions()
        for newer in versions[versions.index(version) + 1 :]:
            self.models.discard(newer)

    def _round(self) -> None:
        pool = self._pool()
        number = len(self.state["rounds"])
        version = self.models.current_version()
        pipeline = load_pipeline(self.models, version, self.settings)
        judged = [self.samples[k] for k in pool] + list(
            self.held_out.samples if self.held_out else []
        )
        scored = score_all(pipeline, judged, f"{self.order} round {number}", self.progress)
        scores = {s.key: s for s in scored[: len(pool)]}
        options = self.options
        mask_classes = pipeline.classifier.spec.mask_classes
        on_pool = _judged(scored[: len(pool)], mask_classes, options)
        on_held_out = _judged(scored[len(pool) :], mask_classes, options) if self.held_out else None
        chosen = ORDERS[self.order](pool, scores, options.batch, self.context)
        cost = labelling_cost(
            [scores[k] for k in chosen],
            mask_classes,
            options.minutes_manual,
            options.minutes_review,
            options.minutes_relabel,
        )
        annotators = batch_minutes(
            pipeline, [self.samples[k] for k in chosen], [scores[k] for k in chosen], options
        )
        labelled = len(self.state["labelled"])
        self.state["labelled"] = self.state["labelled"] + chosen
        outcome = self._train() if len(chosen) < len(pool) else {"current": version}
        self._record(
            {
                "round": number,
                "labelled": labelled,
                "version": version,
                "gate": pipeline.classifier.spec.gate,  # what the version pre-annotates
                "gate_borrowed": pipeline.classifier.spec.metrics.get("gate_borrowed", []),
                "pool": len(pool),
                **on_pool,
                "held_out": on_held_out,
                "batch": {
                    "images": len(chosen),
                    "actions": cost["actions"],
                    "minutes_by_hand": cost["by_hand"],
                    "minutes_with_camsam": cost["with_camsam"],
                    "annotators": annotators["minutes"],
                    "clicking": annotators["clicking"],
                },
                "minutes_with_camsam": cost["with_camsam"],
                **outcome,
            }
        )

    def _train(self) -> dict:
        """The backend's training step on the labelled set; what it did and how long it took."""
        started = time.perf_counter()
        outcome = train_version(
            self.dataset.subset(self.state["labelled"]),
            self.settings,
            self.models,
            {"campaign_order": self.order},
        )
        return {
            "training": outcome["outcome"],
            "training_seconds": time.perf_counter() - started,
            "current": self.models.current_version(),
        }

    def _record(self, row: dict) -> None:
        self.state["rounds"].append(row)
        if self.progress:
            shown = {k: row[k] for k in ("accuracy", "accept_rate") if row.get(k) is not None}
            print(
                f"{self.order} round {row['round']}: {len(self.state['labelled'])} labelled, "
                + ", ".join(f"{k} {v:.3f}" for k, v in shown.items())
                + f" -> {row.get('current')}",
                flush=True,
            )
        _save(self.report, self.out)


def _judged(scores, mask_classes, options: CampaignOptions) -> dict:
    """Accuracy, accept rate and false-mask rate of a version on ``scores``' images (a rate is
    None where they hold no image of that kind to judge by)."""
    figures = summarise(scores, mask_classes, options.minutes_manual, options.minutes_review)
    return {
        "accuracy": figures["accuracy"],
        "accept_rate": figures["accept_rate"] if figures["object_images"] else None,
        "false_mask_rate": figures["false_mask_rate"] if figures["background_images"] else None,
    }


def _totals(report: dict, options: CampaignOptions) -> None:
    """Per order: minutes by hand and with camsam over the whole campaign, and the labels it
    took to reach the target accuracy (by default, what ``random`` ends with), judged on the
    held-out images where there are some, else on the pool."""
    judge = "held_out" if report.get("held_out") else "pool"
    report["accuracy_on"] = judge

    def accuracy(row: dict) -> float | None:
        figures = row.get("held_out") if judge == "held_out" else row
        return (figures or {}).get("accuracy")

    target = options.target_accuracy
    if not target and "random" in report["orders"]:
        measured = [
            a for r in report["orders"]["random"]["rounds"] if (a := accuracy(r)) is not None
        ]
        target = measured[-1] if measured else 0.0
    report["target_accuracy"] = target
    for state in report["orders"].values():
        rounds = state["rounds"]
        hand = sum(r["batch"]["minutes_by_hand"] for r in rounds)
        assisted = sum(r["minutes_with_camsam"] for r in rounds)
        reached = [r["labelled"] for r in rounds if (accuracy(r) or -1.0) >= target]
        annotators = click_totals(rounds)
        clicking = annotators["clicks"]
        state["totals"] = {
            "images_labelled": len(state["labelled"]),
            "minutes_by_hand": hand,
            "minutes_with_camsam": assisted,
            "saved_fraction": 1.0 - assisted / hand if hand else 0.0,
            "annotators": annotators,
            "saved_against_paint": (
                1.0 - annotators["camsam"] / annotators["paint"] if annotators["paint"] else 0.0
            ),
            "saved_against_clicks": 1.0 - annotators["camsam"] / clicking if clicking else 0.0,
            "labels_to_reach_target": reached[0] if reached and target else None,
            "training_seconds": sum(r.get("training_seconds", 0.0) for r in rounds),
        }


def _save(report: dict, out: Path) -> None:
    text = json.dumps(report, indent=1).encode()
    atomic_write(out, lambda f: f.write(text))
