"""``camsam campaign``: replay a labelling project on a dataset with ground truth."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_campaign_command(commands) -> None:
    from worker.campaign.options import ORDER_NAMES, CampaignOptions
    from worker.cli.datasets import dataset_options
    from worker.contract import defaults

    defaults_ = CampaignOptions()
    recipe = defaults.Recipe()
    campaign = commands.add_parser(
        "campaign",
        help="replay a labelling project: minutes by hand and with camsam, round by round",
    )
    campaign.add_argument("data", help="dataset folder (<Class>/<image>, masks) or LS export")
    campaign.add_argument(
        "--model-dir",
        default="campaign-models",
        help="where each order's versions go (<dir>/<order>/)",
    )
    dataset_options(campaign)
    campaign.add_argument(
        "--start", type=int, default=defaults_.start, help="images per class labelled by hand"
    )
    campaign.add_argument("--batch", type=int, default=defaults_.batch, help="images per round")
    campaign.add_argument("--rounds", type=int, default=0, help="0: until the pool is empty")
    campaign.add_argument(
        "--order",
        default="random,score",
        help=f"comma-separated, compared side by side: {', '.join(ORDER_NAMES)}",
    )
    campaign.add_argument(
        "--group",
        metavar="REGEX",
        help="arrival takes whole groups of images whose file names share this pattern's match",
    )
    campaign.add_argument(
        "--arrival",
        metavar="FILE",
        help="arrival takes images in this JSON list's order: keys, or lists of keys that "
        "arrived together (whole groups at a time)",
    )
    campaign.add_argument("--seed", type=int, default=0)
    campaign.add_argument("--minutes-per-mask", type=float, default=defaults_.minutes_manual)
    campaign.add_argument("--minutes-per-review", type=float, default=defaults_.minutes_review)
    campaign.add_argument("--minutes-per-relabel", type=float, default=defaults_.minutes_relabel)
    campaign.add_argument(
        "--seconds-per-click",
        type=float,
        default=defaults_.seconds_per_click,
        help="a click of the clicking annotators (clicks, camsam), the look at its mask included",
    )
    campaign.add_argument(
        "--max-clicks",
        type=int,
        default=defaults_.max_clicks,
        help="clicks on one object before the clicking annotators paint it by hand",
    )
    campaign.add_argument(
        "--target-accuracy",
        type=float,
        default=0.0,
        help="report the labels each order needs to reach it (default: what random ends with)",
    )
    campaign.add_argument("--arch", default="", help=f"timm architecture (default {recipe.arch})")
    campaign.add_argument("--epochs", type=int, default=recipe.epochs)
    campaign.add_argument(
        "--finetune-epochs",
        type=int,
        default=defaults.FINETUNE_EPOCHS,
        help="epochs of a version fine-tuned from the current one (TRAIN_FINETUNE_EPOCHS; "
        "0: as --epochs)",
    )
    campaign.add_argument(
        "--image-size", type=int, default=0, help="default: chosen by the first version"
    )
    campaign.add_argument(
        "--input", choices=defaults.INPUTS, default="", help="default: chosen by the first version"
    )
    campaign.add_argument(
        "--budget",
        type=float,
        default=defaults.TRAIN_BUDGET,
        metavar="MINUTES",
        help="the first version's time when it chooses the recipe (TRAIN_BUDGET)",
    )
    campaign.add_argument("--output-stride", type=int, default=recipe.output_stride)
    campaign.add_argument(
        "--pretrained",
        default="",
        help="the first version's start: a weights file, 'hub' or 'none' (default: the hub's "
        "weights when they can be had, as the backend's TRAIN_PRETRAINED)",
    )
    campaign.add_argument("--sam2-config", default="")
    campaign.add_argument("--sam2-checkpoint", default="")
    campaign.add_argument(
        "--no-gate", action="store_true", help="show every mask (MASK_GATE=0 in the backend)"
    )
    campaign.add_argument("--device", default="auto")
    campaign.add_argument("--out", default="campaign.json")
    campaign.add_argument("--plot", help="PNG of minutes and accuracy against labels")
    campaign.add_argument(
        "--resume", action="store_true", help="carry on from the last round --out recorded"
    )
    campaign.set_defaults(handler=run_campaign_command)


def run_campaign_command(args: argparse.Namespace) -> int:
    from worker.campaign.options import CampaignOptions
    from worker.campaign.plot import plot_campaign
    from worker.campaign.replay import run_campaign
    from worker.cli.datasets import read_dataset
    from worker.contract.settings import Settings
    from worker.pipeline.classifier import resolve_device

    dataset = read_dataset(args, "train")
    # With a split, its test part is held out: every round's version is also judged there.
    held_out = read_dataset(args, "test") if args.split else None
    settings = Settings(
        model_dir=args.model_dir,
        train_arch=args.arch,
        train_epochs=args.epochs,
        train_finetune_epochs=args.finetune_epochs,
        train_image_size=args.image_size,
        train_input=args.input,
        train_budget=args.budget,
        train_output_stride=args.output_stride,
        train_pretrained=args.pretrained,
        sam2_config=args.sam2_config,
        sam2_checkpoint=args.sam2_checkpoint,
        device=resolve_device(args.device),
        mask_gate=0 if args.no_gate else 1,
    )
    options = CampaignOptions(
        start=args.start,
        batch=args.batch,
        rounds=args.rounds,
        seed=args.seed,
        group=args.group,
        arrival=args.arrival,
        minutes_manual=args.minutes_per_mask,
        minutes_review=args.minutes_per_review,
        minutes_relabel=args.minutes_per_relabel,
        target_accuracy=args.target_accuracy,
        seconds_per_click=args.seconds_per_click,
        max_clicks=args.max_clicks,
    )
    orders = [o.strip() for o in args.order.split(",") if o.strip()]
    started = time.perf_counter()
    report = run_campaign(
        dataset, orders, settings, options, Path(args.out), args.resume, held_out=held_out
    )
    for order, state in report["orders"].items():
        totals = state["totals"]
        reached = totals["labels_to_reach_target"]
        print(
            f"{order}: {totals['minutes_with_camsam']:.0f} min with camsam vs "
            f"{totals['minutes_by_hand']:.0f} by hand (saved {totals['saved_fraction']:.1%}); "
            f"accuracy {report['target_accuracy']:.3f} reached with "
            + (f"{reached} labels" if reached is not None else "no round")
        )
        minutes = totals["annotators"]
        print(
            f"{order}: annotators paint {minutes['paint']:.0f} min, clicks "
            f"{minutes['clicks']:.0f}, camsam {minutes['camsam']:.0f} (camsam / paint "
            f"{minutes['camsam'] / max(minutes['paint'], 1e-9):.2f}, camsam / clicks "
            f"{minutes['camsam'] / max(minutes['clicks'], 1e-9):.2f})"
        )
    if args.plot:
        plot_campaign(report, args.plot)
    print(f"{args.out} written in {time.perf_counter() - started:.0f} s")
    return 0
