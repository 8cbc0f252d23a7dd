"""A small synthetic defect dataset: textured surfaces with drawn defects and exact masks.

Used by the tests and the demo, so both run anywhere in seconds with no data to download.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CLASSES = ("Scratch", "Spot", "Clean")


def surface(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A grey, gently shaded, grainy surface (H, W) uint8."""
    height, width = size
    grain = cv2.GaussianBlur(rng.normal(0, 1, size).astype(np.float32), (0, 0), 1.5)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    shade = 20 * np.sin(xs / width * rng.uniform(1, 3) + rng.uniform(0, 6))
    return np.clip(120 + shade + 12 * grain, 0, 255).astype(np.uint8)


def draw_defect(rng: np.random.Generator, label: str, size: tuple[int, int]) -> np.ndarray:
    """The defect's mask (H, W) bool: a bent thick line for Scratch, a blob for Spot."""
    height, width = size
    mask = np.zeros(size, dtype=np.uint8)
    if label == "Scratch":
        x0, y0 = rng.uniform(0.1, 0.4) * width, rng.uniform(0.1, 0.9) * height
        x1, y1 = rng.uniform(0.6, 0.9) * width, rng.uniform(0.1, 0.9) * height
        xm, ym = (x0 + x1) / 2 + rng.uniform(-10, 10), (y0 + y1) / 2 + rng.uniform(-10, 10)
        points = np.array([[x0, y0], [xm, ym], [x1, y1]], dtype=np.int32)
        cv2.polylines(mask, [points], False, 1, thickness=max(3, width // 30))
    else:
        centre = (int(rng.uniform(0.25, 0.75) * width), int(rng.uniform(0.25, 0.75) * height))
        axes = (int(rng.uniform(0.08, 0.16) * width), int(rng.uniform(0.08, 0.16) * height))
        cv2.ellipse(mask, centre, axes, rng.uniform(0, 180), 0, 360, 1, -1)
    return mask.astype(bool)


def make_image(rng: np.random.Generator, label: str, size: tuple[int, int]):
    """(RGB uint8 image, mask or None) for one synthetic sample."""
    gray = surface(rng, size).astype(np.int16)
    mask = None
    if label != "Clean":
        mask = draw_defect(rng, label, size)
        gray[mask] += -70 if label == "Spot" else 80
    rgb = np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return rgb, mask


def write_dataset(root: str | Path, per_class: int = 24, seed: int = 0) -> Path:
    """Write ``root/<Class>/<stem>.png`` (+ ``masks/``) for the synthetic classes; returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            size = (int(rng.integers(96, 144)), int(rng.integers(96, 160)))
            rgb, mask = make_image(rng, label, size)
            stem = f"{label.lower()}_{index:03d}"
            suffix = ".jpg" if index % 3 == 0 else ".png"
            cv2.imwrite(str(root / label / f"{stem}{suffix}"), rgb[:, :, ::-1])
            if mask is not None:
                (root / label / "masks").mkdir(exist_ok=True)
                cv2.imwrite(
                    str(root / label / "masks" / f"{stem}.png"), mask.astype(np.uint8) * 255
                )
    return root
