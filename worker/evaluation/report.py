"""A picture of an evaluation a person reads at a glance: IoU per class, best and worst images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from worker.data.dataset import Dataset
from worker.data.images import load_image
from worker.evaluation.overlays import draw_overlay, label_colour, save_png
from worker.pipeline.pipeline import Pipeline

TILE = 200
CAPTION = 200  # the caption column's width
GAP = 8  # white pixels between tiles and between rows
FONT = cv2.FONT_HERSHEY_SIMPLEX


def write_report(
    report: dict, pipeline: Pipeline, dataset: Dataset, out: str | Path, rows: int = 4
):
    """Write ``out/report.png`` (bars + best/worst grid); returns its path."""
    out = Path(out)
    bars = class_bars(report, pipeline.classifier.spec.classes)
    scored = [d for d in report["images_detail"] if d["iou_given"]]
    scored.sort(key=lambda d: np.mean(list(d["iou_given"].values())), reverse=True)
    best, worst = scored[:rows], scored[::-1][:rows]
    by_key = {s.key: s for s in dataset.samples}
    grid = [
        example_row(pipeline, by_key[d["key"]], d, tag)
        for tag, group in (("best", best), ("worst", worst))
        for d in group
    ]
    width = max([bars.shape[1]] + [row.shape[1] for row in grid])
    parts = [_pad(bars, width)] + [_pad(row, width) for row in grid]
    path = out / "report.png"
    save_png(path, np.vstack(parts))
    return path


def class_bars(report: dict, labels: tuple[str, ...]) -> np.ndarray:
    """Horizontal bars: IoU with predicted classes (solid) and with the class given (outline)."""
    rows = list(report["per_class"].items())
    height = 60 + 28 * len(rows)
    canvas = np.full((height, 4 * TILE, 3), 255, np.uint8)
    title = (
        f"{report['segmenter']} masks, model {report['model_version']}: accuracy "
        f"{report['accuracy']:.2f}  mIoU {report['miou']:.2f}  mIoU|class "
        f"{report['miou_given_class']:.2f}  accept {report['accept_rate']:.2f}  "
        f"false masks {report['false_mask_rate']:.2f}"
    )
    cv2.putText(canvas, title, (8, 22), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    left, span = 130, canvas.shape[1] - 130 - 110
    for i, (label, row) in enumerate(rows):
        y = 44 + 28 * i
        colour = label_colour(label, labels)
        cv2.putText(canvas, f"{label} ({row['images']})", (8, y + 14), FONT, 0.42, (0, 0, 0), 1)
        cv2.rectangle(canvas, (left, y), (left + int(span * row["iou"]), y + 18), colour, -1)
        given = left + int(span * row["iou_given_class"])
        cv2.rectangle(canvas, (left, y), (given, y + 18), (0, 0, 0), 1)
        text = f"{row['iou']:.2f} / {row['iou_given_class']:.2f}"
        cv2.putText(canvas, text, (left + span + 6, y + 14), FONT, 0.42, (0, 0, 0), 1)
    return canvas


def example_row(pipeline: Pipeline, sample, detail: dict, tag: str) -> np.ndarray:
    """Image | ground truth | camsam's mask with CAM points, for the true classes."""
    image = load_image(sample.image)
    labels = [c for c in sample.classes if c in detail["iou_given"]]
    result = pipeline.run(image, labels=labels)
    truth = image.copy()
    for label in labels:
        mask = sample.mask(label, image.shape[:2])
        truth[mask] = (0.5 * truth[mask] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
    overlay = draw_overlay(image, result, pipeline.classifier.spec.classes)
    iou_text = ", ".join(f"{k} {v:.2f}" for k, v in detail["iou_given"].items())
    caption = np.full((TILE, CAPTION, 3), 255, np.uint8)
    lines = [tag, *_wrap(sample.key, CAPTION - 12), f"IoU {iou_text}"]
    for i, line in enumerate(lines):
        cv2.putText(caption, line, (6, 24 + 22 * i), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return framed_row([caption, _tile(image), _tile(truth), _tile(overlay)])


def framed_row(cells: list[np.ndarray]) -> np.ndarray:
    """Cells side by side with a white gap between them, and a white band and a grey rule
    below: a row never touches the next, whatever the shape of its images."""
    gap = np.full((TILE, GAP, 3), 255, np.uint8)
    row = np.hstack([part for cell in cells for part in (cell, gap)][:-1])
    band = np.full((GAP, row.shape[1], 3), 255, np.uint8)
    rule = np.full((1, row.shape[1], 3), 200, np.uint8)
    return np.vstack([row, band, rule, band])


def _tile(image: np.ndarray) -> np.ndarray:
    """``image`` shrunk to fit a TILE x TILE square and centred on white."""
    height, width = image.shape[:2]
    scale = TILE / max(height, width)
    size = (max(1, min(TILE, round(width * scale))), max(1, min(TILE, round(height * scale))))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    tile = np.full((TILE, TILE, 3), 255, np.uint8)
    top, left = (TILE - size[1]) // 2, (TILE - size[0]) // 2
    tile[top : top + size[1], left : left + size[0]] = resized
    return tile


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines that fit ``width`` pixels, broken after a ``/`` where it can be."""
    lines, current = [], ""
    for piece in text.replace("/", "/\n").split("\n"):
        for char in piece if _width(piece) > width else [piece]:
            if current and _width(current + char) > width:
                lines.append(current)
                current = ""
            current += char
        if current.endswith("/"):
            lines.append(current)
            current = ""
    return [*lines, current] if current else lines


def _width(text: str) -> int:
    return cv2.getTextSize(text, FONT, 0.4, 1)[0][0]


def _pad(image: np.ndarray, width: int) -> np.ndarray:
    extra = width - image.shape[1]
    return np.pad(image, ((0, 0), (0, extra), (0, 0)), constant_values=255)
