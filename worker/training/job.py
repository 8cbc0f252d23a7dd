"""The training job: a project's labels, read from Label Studio, become a new model version.

Label Studio is the record: webhooks only say "something changed", and the job reads every
labelled task through the API. The newest annotation of a task counts, skipped ones do not; an
image's classes are its Choices and its BrushLabels labels. A new version is published only when
every class has enough examples, it is not worse than the current one on the held-out share,
and the last version is old enough; otherwise the current one stays and the reason is recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from worker import __version__
from worker.contract.errors import CamsamError
from worker.contract.label_config import LabelConfig, parse_label_config
from worker.contract.leases import run_pending, store_for, submitter
from worker.contract.settings import Settings
from worker.contract.store import ModelDir, atomic_write, models_for, named_model_dir
from worker.data.dataset import (
    Dataset,
    Sample,
    newest_annotation,
    read_annotation,
)
from worker.labelstudio.client import connect, labelled_tasks, project_config
from worker.labelstudio.fetch import FetchLimits, ImageFetcher
from worker.pipeline.checkpoint import publish

log = logging.getLogger(__name__)
STATUS_FILE = "training.json"


def train_job(payload: dict) -> int:
    """The queued job: ``{"project", "settings"}``. Returns the number of runs it made."""
    settings = Settings.from_payload(payload["settings"])
    store = store_for(settings.redis_url)
    return run_pending(
        store,
        submitter(settings.redis_url),
        payload,
        lambda: train_project(payload["project"], settings),
        debounce=settings.train_debounce,
    )


def train_project(project: str, settings: Settings) -> dict:
    """One training run; the outcome is also written to ``<model dir>/training.json``."""
    models = models_for(settings, project)
    if models.root == Path(settings.model_dir) and models.current_version():
        own = (settings.model_dir, project, settings.redis_url, settings.model_store)
        models = named_model_dir(*own)  # own from now on
    try:
        outcome = _train(project, settings, models)
    except CamsamError as error:
        outcome = {"outcome": "failed", "reason": str(error)}
    except Exception as error:  # a crash: the current version stays; say so, then fail the job
        _record(models, project, {"outcome": "crashed", "reason": repr(error)})
        raise
    return _record(models, project, outcome)


def _record(models: ModelDir, project: str, outcome: dict) -> dict:
    outcome.update(project=project, finished=time.time())
    failed = outcome["outcome"] in ("failed", "crashed")
    level = logging.WARNING if failed else logging.INFO
    log.log(
        level, "project %s: training %s: %s", project, outcome["outcome"], outcome.get("reason")
    )
    status = json.dumps(outcome, indent=1).encode()
    atomic_write(models.root / STATUS_FILE, lambda f: f.write(status))
    return outcome


def _train(project: str, settings: Settings, models: ModelDir) -> dict:
    client = connect(settings.label_studio_url, settings.label_studio_api_key)
    xml = project_config(client, project)
    config = parse_label_config(xml)
    tasks = labelled_tasks(client, project)
    snapshot = annotation_snapshot(tasks)
    current = models.current_version()
    info = models.info(current) if current else None
    if info and info.get("lineage", {}).get("snapshot") == snapshot:
        return {"outcome": "skipped", "reason": f"no new labels since {current}"}
    dataset = labelled_dataset(tasks, config, settings, models.root / "images")
    short = {c: n for c, n in dataset.counts().items() if n < settings.min_per_class}
    if short:
        return {
            "outcome": "waiting",
            "reason": f"classes need {settings.min_per_class} labelled images each; have {short}",
            "counts": dataset.counts(),
        }
    lineage = {
        "snapshot": snapshot,
        "label_config_sha256": hashlib.sha256(xml.encode()).hexdigest(),
    }
    return train_version(dataset, settings, models, lineage)


def serving_sam2(settings: Settings):
    """The SAM2 the prediction workers serve with (the same ``SAM2_*`` settings, which a
    trainer shares with them), on this trainer's device: the gate is calibrated on its masks.
    None without SAM2 weights: then the ``cam`` segmenter serves, and calibrates."""
    if not settings.has_sam2:
        return None
    from worker.pipeline.classifier import resolve_device
    from worker.pipeline.segmenters.base import SegmenterOptions

    return SegmenterOptions(
        sam2_config=settings.sam2_config or None,
        sam2_checkpoint=settings.sam2_checkpoint or None,
        sam2_hub_id=settings.sam2_hub_id or None,
        device=resolve_device(settings.device),
    )


def train_version(
    dataset: Dataset, settings: Settings, models: ModelDir, lineage: dict | None = None
) -> dict:
    """Train a candidate on ``dataset`` with the ``TRAIN_*`` recipe (fine-tuned from the current
    version, for ``TRAIN_FINETUNE_EPOCHS``, when it knows the same classes), and publish it
    unless the publish rule keeps the current one. ``lineage`` adds to what the version records
    of its making. Returns the outcome (``published``, with ``version``, or ``kept``, with the
    reason)."""
    from worker.training.classifier import TrainConfig, train

    current = models.current_version()
    info = models.info(current) if current else None
    seed = len(models.versions())
    start = _start_from(models, current, info, dataset, settings)
    fine_tune = current is not None and start == str(models.path(current))
    epochs = settings.train_epochs
    if fine_tune and settings.train_finetune_epochs:
        epochs = min(settings.train_finetune_epochs, epochs)
    kept = (info or {}).get("recipe") or {}  # the project's choice, made at its first training
    recipe = TrainConfig(
        arch=settings.train_arch or TrainConfig.arch,
        image_size=settings.train_image_size or kept.get("image_size") or TrainConfig.image_size,
        input=settings.train_input or kept.get("input") or TrainConfig.input,
        output_stride=settings.train_output_stride or TrainConfig.output_stride,
        groups=settings.train_groups,
        epochs=epochs,
        seed=seed,
        pretrained=start,
        progress=False,
        serve_with=serving_sam2(settings),
    )
    if not fine_tune and recipe.input == "flat" and not settings.train_pretrained:
        recipe = replace(recipe, pretrained="none")  # as the choice judged it: from scratch
    started = time.perf_counter()
    given = {"input": settings.train_input, "image_size": settings.train_image_size}
    if not kept and not all(given.values()):
        from worker.training.choose import choose_recipe

        given = {name for name, value in given.items() if value}
        recipe = choose_recipe(dataset, recipe, given, settings.train_budget * 60, False)
    result = train(dataset, recipe)
    lineage = {
        **(lineage or {}),
        "seed": seed,
        "code_version": __version__,
        "started_from": recipe.pretrained,
        "start": result.spec.recipe.get("start", {}),
        "trained_at": time.time(),
    }
    spec = replace(result.spec, lineage=lineage)
    reason = _reason_to_keep(models, current, info, dataset, spec, result.validation, settings)
    metrics = spec.metrics
    seconds = time.perf_counter() - started
    if reason:
        return {
            "outcome": "kept",
            "reason": reason,
            "current": current,
            "candidate": metrics,
            "seconds": seconds,
        }
    published = publish(models, spec, result.state_dict)
    models.prune(settings.keep_versions)
    return {
        "outcome": "published",
        "version": published.version,
        "reason": f"{len(dataset.samples)} labelled images, val accuracy "
        f"{metrics['val_accuracy']:.3f}",
        "metrics": metrics,
        "seconds": seconds,
    }


def annotation_snapshot(tasks: list[dict]) -> list[list]:
    """What a model was trained from: per task, the annotation that counts and its update time."""
    rows = []
    for task in tasks:
        annotation = newest_annotation(task.get("annotations") or [])
        if annotation is not None:
            rows.append([task["id"], annotation["id"], str(annotation.get("updated_at") or "")])
    return sorted(rows)


def labelled_dataset(
    tasks: list[dict], config: LabelConfig, settings: Settings, cache: Path
) -> Dataset:
    """The labelled tasks as a Dataset; images fetched once into ``cache`` by task and URL."""
    fetcher = ImageFetcher(
        settings.label_studio_url,
        settings.label_studio_api_key,
        settings.local_files_document_root,
        FetchLimits.from_settings(settings),
    )
    labels = tuple(dict.fromkeys([*config.choice_labels, *config.mask_labels]))
    samples = []
    for task in tasks:
        annotation = newest_annotation(task.get("annotations") or [])
        ref = (task.get("data") or {}).get(config.image_key)
        if annotation is None or not isinstance(ref, str):
            continue
        classes, masks = read_annotation(annotation)
        classes = tuple(c for c in classes if c in labels)
        if not classes:
            continue
        name = hashlib.blake2b(ref.encode(), digest_size=8).hexdigest()
        path = cache / f"{task['id']}-{name}"
        if not path.is_file():
            data = fetcher.fetch(ref, task["id"])
            atomic_write(path, lambda f, data=data: f.write(data))
        samples.append(Sample(path, classes, {}, masks, key=str(task["id"])))
    background = tuple(c for c in config.choice_labels if c not in config.mask_labels)
    return Dataset(tuple(samples), labels, background)


def _start_from(models, current, info, dataset: Dataset, settings: Settings) -> str | None:
    """Fine-tune from the current version when it knows the same classes; else the configured
    pretrained file (or none)."""
    if current and info and tuple(info["classes"]) == dataset.classes:
        return str(models.fetch(current))
    return settings.train_pretrained or None


def _reason_to_keep(models, current, info, dataset, spec, held_out, settings) -> str | None:
    """Why the current version should stay, or None to publish the candidate (judged on
    ``held_out``, the images the candidate chose its best epoch on)."""
    if current is None or info is None:
        return None
    age = time.time() - float(info.get("created") or 0)
    if age < settings.min_publish_interval:
        return f"{current} is {age:.0f} s old: versions are published at most every " + (
            f"{settings.min_publish_interval:.0f} s (MIN_PUBLISH_INTERVAL)"
        )
    if tuple(info["classes"]) != dataset.classes:
        return None  # the labels changed: the current model cannot be compared, nor kept
    from worker.pipeline.classifier import Classifier
    from worker.training.classifier import classifier_accuracy

    old = classifier_accuracy(Classifier.load(models.fetch(current)), held_out)
    new = spec.metrics["val_accuracy"]
    if new < old:
        return (
            f"candidate val accuracy {new:.3f} < {old:.3f} of {current} on the same held-out "
            f"{len(held_out)} images: {current} stays"
        )
    return None


def training_status(models: ModelDir) -> dict | None:
    try:
        return json.loads((models.root / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
