"""What the dataset commands (train, eval, campaign) share: the dataset options and reading."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from worker.contract.errors import CamsamError


def dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--background-class",
        action="append",
        default=[],
        metavar="NAME",
        help="an image-level class that never gets a mask (repeatable), e.g. a defect-free class",
    )
    parser.add_argument(
        "--split", help="split file from `camsam split`: train uses 'train', eval uses 'test'"
    )
    parser.add_argument("--image-root", help="where a Label Studio export's images live")


def load_split(path: str | None, part: str) -> list[str] | None:
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text())[part]
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise CamsamError(f"cannot read part {part!r} of split file {path}: {error}") from error


def read_dataset(args: argparse.Namespace, part: str):
    from worker.data.dataset import load_dataset

    extra = {"image_root": args.image_root} if str(args.data).endswith(".json") else {}
    dataset = load_dataset(args.data, args.background_class, **extra)
    keys = load_split(args.split, part)
    return dataset.subset(keys) if keys is not None else dataset
