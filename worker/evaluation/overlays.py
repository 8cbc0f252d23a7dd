"""Pictures a person can check at a glance: mask outlines and CAM prompts over the image."""

from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np

from worker.pipeline.pipeline import ImageResult


def label_colour(label: str, labels: tuple[str, ...]) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour per label."""
    index = labels.index(label) if label in labels else abs(hash(label)) % 12
    r, g, b = colorsys.hsv_to_rgb((index * 0.61803) % 1.0, 0.9, 1.0)
    return int(255 * r), int(255 * g), int(255 * b)


def draw_overlay(image: np.ndarray, result: ImageResult, labels: tuple[str, ...]) -> np.ndarray:
    """RGB image with each mask tinted and outlined, positive points green, negatives red."""
    canvas = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 300))
    for mask in result.masks:
        colour = label_colour(mask.label, labels)
        tint = canvas.copy()
        tint[mask.mask] = colour
        canvas = cv2.addWeighted(canvas, 0.65, tint, 0.35, 0)
        contours, _ = cv2.findContours(
            mask.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(canvas, contours, -1, colour, thickness)
        if mask.prompts is None:
            continue
        if mask.prompts.box is not None:
            x0, y0, x1, y1 = mask.prompts.box.astype(int)
            cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, 1)
        for (x, y), positive in zip(mask.prompts.points, mask.prompts.labels, strict=True):
            dot = (0, 220, 0) if positive else (230, 0, 0)
            cv2.circle(canvas, (int(x), int(y)), 2 * thickness + 2, dot, -1)
            cv2.circle(canvas, (int(x), int(y)), 2 * thickness + 2, (255, 255, 255), 1)
    caption = ", ".join(
        f"{c} {result.prediction.probabilities[c]:.2f}" for c in result.prediction.classes
    )
    cv2.putText(canvas, caption, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1)
    return canvas


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
