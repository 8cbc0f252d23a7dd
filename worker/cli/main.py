"""``camsam``: train, predict, eval, split and demo from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from worker.cli.campaign import add_campaign_command
from worker.cli.datasets import dataset_options, read_dataset
from worker.cli.service import add_service_commands
from worker.contract.errors import CamsamError

GROUP_HELP = (
    "what stays on one side of the split: auto (default) finds near-duplicate images, the same "
    "object under another light or crop; a REGEX keeps images whose file names share its match "
    "(its first group if it has one): a part, a batch, a tile; none splits image by image"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except CamsamError as error:
        print(f"camsam: error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    from worker.contract import defaults

    parser = argparse.ArgumentParser(
        prog="camsam", description="Masks nobody had to click: classifier Grad-CAM prompts SAM2."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a classifier version from image-level labels")
    train.add_argument("data", help="dataset folder (<Class>/<image>) or Label Studio JSON export")
    train.add_argument("--model-dir", required=True)
    dataset_options(train)
    recipe = defaults.Recipe()
    train.add_argument(
        "--arch", default=recipe.arch, help=f"any timm architecture (default {recipe.arch})"
    )
    for name, kind in (("batch_size", int), ("lr", float)):
        train.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(recipe, name))
    train.add_argument(
        "--epochs",
        type=int,
        help=f"{recipe.epochs} by default, fewer where --budget is too short for them",
    )
    train.add_argument(
        "--image-size", type=int, help="the classifier's input side (default: chosen, see --input)"
    )
    train.add_argument(
        "--budget",
        type=float,
        default=defaults.TRAIN_BUDGET,
        metavar="MINUTES",
        help="when --input or --image-size is not given, candidate recipes are tried on a "
        "validation share and the best is trained, all within about this many minutes "
        f"(default {defaults.TRAIN_BUDGET:.0f})",
    )
    choices = {
        "input": (defaults.INPUTS, "flat: gray + difference from the local background (surfaces)"),
        "pool": (("avg", "max", "avgmax"), "max and avgmax let one small object decide"),
        "augment": (
            defaults.AUGMENTATIONS,
            "flip (default), flip+rot (90-degree turns too), full (+ crops, jitter), none",
        ),
    }
    for name, (offered, text) in choices.items():
        default = None if name == "input" else getattr(recipe, name)  # the input is chosen
        train.add_argument(f"--{name}", choices=offered, default=default, help=text)
    train.add_argument(
        "--output-stride",
        type=int,
        choices=(32, 16, 8),
        default=recipe.output_stride,
        help="16 or 8: dilated last stages, a 2x or 4x finer CAM for small defects (slower)",
    )
    train.add_argument("--val-fraction", type=float, default=recipe.val_fraction)
    train.add_argument(
        "--group",
        dest="groups",
        metavar="auto|none|REGEX",
        default=recipe.groups,
        help=GROUP_HELP + " in the validation share",
    )
    train.add_argument("--seed", type=int, default=recipe.seed)
    train.add_argument(
        "--pretrained",
        help="a local weights file (timm's or a camsam checkpoint), 'hub' (download, or fail), or "
        "'none' (from scratch); by default the architecture's ImageNet weights when they can be "
        f"had within {defaults.PRETRAINED_TIMEOUT:.0f} s, else from scratch",
    )
    train.add_argument(
        "--no-tune-masks",
        action="store_true",
        help="skip choosing each class's CAM refinement on the training masks",
    )
    train.add_argument("--device", default="auto")
    serving = train.add_argument_group(
        "the SAM2 predictions will use: the mask gate is then calibrated on its masks"
    )
    serving.add_argument("--sam2-config", help="e.g. configs/sam2.1/sam2.1_hiera_t.yaml")
    serving.add_argument("--sam2-checkpoint", help="SAM2 checkpoint file (.pt)")
    serving.add_argument("--sam2-hub-id", help="Hugging Face id, e.g. facebook/sam2.1-hiera-tiny")
    train.set_defaults(handler=run_train)

    predict = commands.add_parser("predict", help="pre-annotate images as Label Studio tasks")
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("--model-dir", required=True)
    predict.add_argument("--out", required=True, help="JSON file of Label Studio tasks")
    predict.add_argument("--label-config", help="label config XML (default: camsam's names)")
    predict.add_argument("--overlays", help="folder for PNG overlays (mask outlines, CAM points)")
    _pipeline_options(predict)
    predict.set_defaults(handler=run_predict)

    rank = commands.add_parser(
        "rank", help="images in the order to label them next (most informative first)"
    )
    rank.add_argument("inputs", nargs="+", help="image files or folders")
    rank.add_argument("--model-dir", required=True)
    _pipeline_options(rank)
    rank.set_defaults(handler=run_rank)

    evaluate = commands.add_parser("eval", help="measure masks and classes against ground truth")
    evaluate.add_argument("data")
    evaluate.add_argument("--model-dir", required=True)
    dataset_options(evaluate)
    evaluate.add_argument("--out", help="write the full report as JSON")
    evaluate.add_argument("--report", help="folder for report.png: IoU bars, best/worst images")
    evaluate.add_argument(
        "--clicks",
        type=int,
        default=0,
        metavar="N",
        help="also replay up to N clicks per object, as interactive segmentation is measured "
        "(mean IoU after each click, NoC@0.5/0.85, accepted at one click)",
    )
    evaluate.add_argument(
        "--minutes-per-mask",
        type=float,
        default=1.0,
        help="minutes to paint one image's masks by hand",
    )
    evaluate.add_argument(
        "--minutes-per-review",
        type=float,
        default=0.2,
        help="minutes to check (and accept) one pre-annotated image",
    )
    _pipeline_options(evaluate)
    evaluate.set_defaults(handler=run_eval)

    split = commands.add_parser("split", help="write a stratified train/test split file")
    split.add_argument("data")
    split.add_argument("--out", required=True)
    split.add_argument("--test-fraction", type=float, default=0.2)
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--folds", type=int, help="cross-validation: the number of folds")
    split.add_argument("--fold", type=int, default=0, help="which fold is the test part (0-based)")
    split.add_argument(
        "--group",
        metavar="auto|none|REGEX",
        default=defaults.Recipe.groups,
        help=GROUP_HELP,
    )
    split.set_defaults(handler=run_split)

    add_service_commands(commands)
    add_campaign_command(commands)

    demo = commands.add_parser("demo", help="synthetic dataset -> train -> predict -> eval")
    demo.add_argument("--out", default="demo", help="folder for everything the demo writes")
    demo.add_argument("--epochs", type=int, default=8)
    demo.set_defaults(handler=run_demo)
    return parser


def _pipeline_options(parser: argparse.ArgumentParser) -> None:
    from worker.pipeline.cam import CAM_METHODS
    from worker.pipeline.prompts import STRATEGIES
    from worker.pipeline.refiners import REFINERS
    from worker.pipeline.segmenters import MASK_CHOICES, SEGMENTERS

    parser.add_argument(
        "--segmenter",
        choices=SEGMENTERS,
        default=None,
        help="default: sam2 when a SAM2 checkpoint is given, else cam",
    )
    parser.add_argument(
        "--sam2-config", help="SAM2 config, e.g. configs/sam2.1/sam2.1_hiera_t.yaml"
    )
    parser.add_argument("--sam2-checkpoint", help="SAM2 checkpoint file (.pt)")
    parser.add_argument("--sam2-hub-id", help="Hugging Face id, e.g. facebook/sam2.1-hiera-tiny")
    parser.add_argument(
        "--mask-choice",
        choices=MASK_CHOICES,
        default="cam",
        help="which of SAM's three masks: agreement with the CAM, SAM's IoU, index",
    )
    parser.add_argument("--cam-method", choices=CAM_METHODS, default="gradcam")
    parser.add_argument("--cam-stages", type=int, default=1, help="fuse CAMs of the last N stages")
    parser.add_argument("--prompts", choices=STRATEGIES, default="peaks+box")
    parser.add_argument(
        "--refiner",
        choices=REFINERS,
        default=None,
        help="cam segmenter: default is what training chose per class, else guided",
    )
    parser.add_argument("--instances", action="store_true", help="one region per connected part")
    parser.add_argument(
        "--no-mirror",
        action="store_true",
        help="classify on the image alone, not on it and its mirror image (one pass fewer)",
    )
    parser.add_argument(
        "--no-gate",
        action="store_true",
        help="every mask, not only those above the threshold training chose per class",
    )
    parser.add_argument("--version", help="model version to use (default: the current one)")
    parser.add_argument("--device", default="auto")


def run_train(args: argparse.Namespace) -> int:
    import os
    from dataclasses import fields

    from worker.contract.connections import redis_connection
    from worker.contract.defaults import Recipe
    from worker.contract.store import ModelDir
    from worker.pipeline.checkpoint import publish
    from worker.pipeline.classifier import resolve_device
    from worker.pipeline.segmenters.base import SegmenterOptions
    from worker.training.choose import CHOSEN, choose_recipe, describe_choice
    from worker.training.classifier import TrainConfig, train

    dataset = read_dataset(args, "train")
    given = {f.name: getattr(args, f.name, None) for f in fields(Recipe)}
    device = resolve_device(args.device)
    serve_with = None
    if args.sam2_checkpoint or args.sam2_hub_id:
        serve_with = SegmenterOptions(
            sam2_config=args.sam2_config,
            sam2_checkpoint=args.sam2_checkpoint,
            sam2_hub_id=args.sam2_hub_id,
            device=device,
        )
    config = TrainConfig(
        **{name: value for name, value in given.items() if value is not None},
        tune_masks=not args.no_tune_masks,
        pretrained=args.pretrained,
        device=device,
        serve_with=serve_with,
    )
    started = time.perf_counter()
    chosen = {name for name in CHOSEN if given[name] is not None}
    if chosen != set(CHOSEN):
        print(f"choosing a recipe for {len(dataset.samples)} images within {args.budget:g} min")
        epochs_given = args.epochs is not None
        config = choose_recipe(dataset, config, chosen, args.budget * 60, epochs_given, print)
        print(describe_choice(config))
    print(f"training {config.arch} on {len(dataset.samples)} images: {dataset.counts()}")
    result = train(dataset, config)
    redis_url = os.environ.get("REDIS_URL")
    redis = redis_connection(redis_url) if redis_url else None  # every process sees it at once
    spec = publish(ModelDir(args.model_dir, redis), result.spec, result.state_dict)
    if os.environ.get("MODEL_STORE") == "redis":
        print(
            f"MODEL_STORE=redis: {spec.version} is in {args.model_dir} only; `camsam rollback "
            f"{spec.version} --project ID` shares it with every host",
            file=sys.stderr,
        )
    metrics = spec.metrics
    print(
        f"version {spec.version} is current in {args.model_dir}: validation accuracy "
        f"{metrics['val_accuracy']:.3f} (epoch {metrics['best_epoch']}) on "
        f"{metrics['val_images']} images, {_grouped(metrics['val_groups'])}; "
        f"{time.perf_counter() - started:.0f} s"
    )
    return 0


def _grouped(groups: dict) -> str:
    if groups["by"] == "none":
        return "split image by image"
    if groups["by"] == "near-duplicates":
        return f"split by {groups['groups']} groups (images that are near-duplicates joined)"
    return f"split by {groups['groups']} groups of --group {groups['by']!r}"


def build_pipeline(args: argparse.Namespace):
    from worker.contract.store import ModelDir
    from worker.pipeline.classifier import resolve_device
    from worker.pipeline.pipeline import Pipeline, PipelineOptions

    model_dir = ModelDir(args.model_dir)
    path = model_dir.path(args.version) if args.version else model_dir.current_path()
    has_sam2 = bool(args.sam2_hub_id or args.sam2_checkpoint)
    name = args.segmenter or ("sam2" if has_sam2 else "cam")
    if name != "sam2" and not has_sam2:
        how = "the CAM refined with the image" if name == "cam" else "the bare CAM threshold"
        print(
            f"no SAM2 checkpoint configured: masks come from the '{name}' segmenter "
            f"({how}), not SAM2",
            file=sys.stderr,
        )
    options = PipelineOptions(
        cam_method=args.cam_method,
        cam_stages=args.cam_stages,
        prompt_strategy=args.prompts,
        instances=args.instances,
        gate=not args.no_gate,
    )
    return Pipeline.build(
        path,
        segmenter=name,
        sam2_config=args.sam2_config,
        sam2_checkpoint=args.sam2_checkpoint,
        sam2_hub_id=args.sam2_hub_id,
        mask_choice=args.mask_choice,
        refiner=args.refiner,
        options=options,
        device=resolve_device(args.device),
        mirror=not args.no_mirror,
    )


def run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worker.contract.label_config import load_label_config
    from worker.contract.settings import Settings
    from worker.data.images import read_image
    from worker.evaluation.overlays import draw_overlay, save_png
    from worker.labelstudio.results import to_prediction

    config = load_label_config(args.label_config) if args.label_config else None
    work_side = Settings.from_env().max_work_side  # as the backend would (MAX_WORK_SIDE)
    files = image_files(args.inputs)
    pipeline = build_pipeline(args)
    tasks = []
    for path in tqdm(files, desc="predict", unit="img"):
        image = read_image(path, max_side=work_side)
        result = pipeline.run(image.pixels)
        prediction = to_prediction(result, pipeline.version, config, image.size)
        key = config.image_key if config else "image"
        tasks.append({"data": {key: str(path.resolve())}, "predictions": [prediction]})
        if args.overlays:
            overlay = draw_overlay(image.pixels, result, pipeline.classifier.spec.classes)
            save_png(Path(args.overlays) / f"{path.stem}.png", overlay)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(tasks))
    masks = sum(len(t["predictions"][0]["result"]) for t in tasks)
    print(f"wrote {len(tasks)} tasks ({masks} regions, model {pipeline.version}) to {args.out}")
    return 0


def image_files(inputs: Sequence[str]) -> list[Path]:
    """Image files named, and those under folders named (ground-truth ``masks/`` left out)."""
    from worker.data.images import IMAGE_SUFFIXES

    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(
                p
                for p in item.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES and "masks" not in p.parts
            )
        elif item.is_file():
            files.append(item)
        else:
            raise CamsamError(f"{item} is neither an image file nor a folder")
    return files


def run_rank(args: argparse.Namespace) -> int:
    """Images in the order to label them: ascending prediction score, as Label Studio sorts."""
    from tqdm import tqdm

    from worker.data.images import load_image

    pipeline = build_pipeline(args)
    rows = []
    for path in tqdm(image_files(args.inputs), desc="rank", unit="img"):
        result = pipeline.run(load_image(path))
        rows.append((result.score, ",".join(result.prediction.classes), str(path)))
    for score, classes, path in sorted(rows):
        print(f"{score:.4f}  {classes:<20}  {path}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from worker.evaluation.evaluate import evaluate

    if args.clicks < 0:
        raise CamsamError(f"--clicks must be 0 (none) or more, not {args.clicks}")
    dataset = read_dataset(args, "test")
    pipeline = build_pipeline(args)
    report = evaluate(pipeline, dataset, args.minutes_per_mask, args.minutes_per_review)
    print(format_report(report))
    if args.clicks:
        from worker.evaluation.clicks import evaluate_clicks, format_clicks

        report["clicks"] = evaluate_clicks(pipeline, dataset, args.clicks)
        print(format_clicks(report["clicks"]))
    if args.report:
        from worker.evaluation.report import write_report

        print(f"report picture: {write_report(report, pipeline, dataset, args.report)}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


def format_report(report: dict) -> str:
    lines = [
        f"model {report['model_version']}, segmenter {report['segmenter']}, "
        f"{report['images']} images, {report['cpu_seconds']:.0f} CPU s",
        f"{'class':<14}{'images':>7}{'IoU':>8}{'IoU|class':>11}{'Dice':>8}",
    ]
    for name, row in report["per_class"].items():
        lines.append(
            f"{name:<14}{row['images']:>7}{row['iou']:>8.3f}"
            f"{row['iou_given_class']:>11.3f}{row['dice']:>8.3f}"
        )
    minutes = report["labelling_minutes"]
    lines += [
        f"accuracy {report['accuracy']:.3f}   mIoU {report['miou']:.3f}   "
        f"mIoU|class {report['miou_given_class']:.3f}   Dice {report['dice']:.3f}",
        f"accept rate {report['accept_rate']:.3f} (|class {report['accept_rate_given_class']:.3f})"
        f"   false-mask rate {report['false_mask_rate']:.3f}",
        f"labelling: {minutes['by_hand']:.0f} min by hand, {minutes['with_camsam']:.0f} min with "
        f"camsam ({100 * minutes['saved_share']:.0f}% saved)",
    ]
    return "\n".join(lines)


def run_split(args: argparse.Namespace) -> int:
    from worker.data.dataset import load_dataset, stratified_folds, stratified_split
    from worker.data.groups import groups_for

    dataset = load_dataset(args.data)
    groups = groups_for(dataset.samples, args.group)
    group = groups.grouping
    print(f"{groups.count} groups among {len(dataset.samples)} images ({groups.by})")
    if args.folds:
        if not 0 <= args.fold < args.folds:
            raise CamsamError(f"--fold must be between 0 and {args.folds - 1}")
        parts = stratified_folds(dataset.samples, args.folds, args.seed, group)
        held = parts[args.fold]
        rest = [s for i, part in enumerate(parts) if i != args.fold for s in part]
    else:
        rest, held = stratified_split(dataset.samples, args.test_fraction, args.seed, group)
    payload = {"train": sorted(s.key for s in rest), "test": sorted(s.key for s in held)}
    Path(args.out).write_text(json.dumps(payload, indent=1))
    print(f"{len(rest)} train / {len(held)} test images written to {args.out}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from worker.data.synthetic import write_dataset

    out = Path(args.out)
    data = write_dataset(out / "data")
    models = str(out / "models")
    split = str(out / "split.json")
    common = ["--model-dir", models]
    # eval judges images training never saw: on its own training images a model flatters itself
    steps = [
        ["split", str(data), "--out", split, "--test-fraction", "0.25"],
        [
            "train",
            str(data),
            "--split",
            split,
            *common,
            "--background-class",
            "Clean",
            "--epochs",
            str(args.epochs),
            "--image-size",
            "96",
            "--input",
            "rgb",
        ],
        [
            "predict",
            str(data),
            *common,
            "--out",
            str(out / "predictions.json"),
            "--overlays",
            str(out / "overlays"),
        ],
        [
            "eval",
            str(data),
            "--split",
            split,
            *common,
            "--background-class",
            "Clean",
            "--out",
            str(out / "report.json"),
        ],
    ]
    for step in steps:
        print("$ camsam " + " ".join(step))
        if main(step):
            return 1
    return 0
