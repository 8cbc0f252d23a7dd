"""What the dataset layout scripts share: their command line and the size an image is kept at."""

from __future__ import annotations

import argparse
from pathlib import Path


def layout_parser(description: str, source_help: str) -> argparse.ArgumentParser:
    """``SOURCE OUT`` and the resizing options every layout script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("source", type=Path, help=source_help)
    parser.add_argument("out", type=Path, help="camsam DATA_DIR to write")
    parser.add_argument("--max-side-trigger", type=int, default=1024)
    parser.add_argument("--max-side", type=int, default=512)
    return parser


def fit(size: tuple[int, int], trigger: int, max_side: int) -> tuple[int, int]:
    """The output size: unchanged unless a side exceeds ``trigger``, then at most ``max_side``."""
    if max(size) <= trigger:
        return size
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
