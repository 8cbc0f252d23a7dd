"""Lay out the WBC white-blood-cell datasets (five cell types, cell masks) for camsam.

Source: X. Zheng, Y. Wang, G. Wang, J. Liu, "Fast and robust segmentation of white blood cell
images by self-supervised learning", Micron 107 (2018) 55-71, doi:10.1016/j.micron.2018.01.010.
Repository: github.com/zxaoyou/segmentation_WBC, commit fa9c01622f52bccb9aeb8a6f2628f564e377767d,
licence GPL-3.0 (LICENSE file). Acknowledge Jiangxi Tecom Science Corporation (Dataset 1) and the
CellaVision blog (Dataset 2) when using them.

    git clone https://github.com/zxaoyou/segmentation_WBC src
    python scripts/layout_wbc.py src /work/datasets/wbc             # Dataset 1: 300 x 120x120
    python scripts/layout_wbc.py src OUT --dataset 2                 # Dataset 2: 100 x 300x300

Each ``Dataset N/<nnn>.bmp`` is one stained blood-smear crop centred on one white blood cell;
``<nnn>.png`` is its expert mask (255 nucleus, 128 cytoplasm, 0 background with red cells), and
``Class Labels of Dataset N.csv`` its class, 1-5: neutrophil, lymphocyte, monocyte, eosinophil,
basophil. The authors warn that some class labels were added by themselves, not by experts.

Output (camsam DATA_DIR): one folder per cell type, each image with ``masks/`` holding the whole
cell (nucleus and cytoplasm; ``--part nucleus`` keeps the nucleus only). No background class:
every image shows a cell. Stems are ``d<N>_<nnn>``. Dataset 1 is unbalanced: 176 neutrophils,
53 lymphocytes, 48 monocytes, 22 eosinophils, 1 basophil (Dataset 2: 33/37/15/12/3); drop or
merge the basophils. Some Dataset 1 images are a few pixels smaller than 120x120.

Groups: none known; each image is its own group (regex ``^(d\\d_\\d{3})$``). Dataset 1 and
Dataset 2 come from different microscopes and stains, so use one of them, or hold one out whole.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {1: "Neutrophil", 2: "Lymphocyte", 3: "Monocyte", 4: "Eosinophil", 5: "Basophil"}


def read_labels(path: Path) -> dict[int, int]:
    """Image number to class number, from the dataset's CSV (header row, then id,class)."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return {int(row[0]): int(row[1]) for row in rows[1:] if row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="checkout of zxaoyou/segmentation_WBC")
    parser.add_argument("out", type=Path, help="camsam DATA_DIR to write")
    parser.add_argument("--dataset", choices=("1", "2", "both"), default="1")
    parser.add_argument("--part", choices=("cell", "nucleus"), default="cell")
    args = parser.parse_args()

    threshold = 192 if args.part == "nucleus" else 64  # levels are 0, 128, 255
    counts: dict[str, int] = {}
    for n in ("1", "2") if args.dataset == "both" else (args.dataset,):
        labels = read_labels(args.source / f"Class Labels of Dataset {n}.csv")
        for image_path in sorted((args.source / f"Dataset {n}").glob("*.bmp")):
            number = int(image_path.stem)
            if number not in labels:
                raise SystemExit(f"{image_path} has no class label")
            cls = CLASSES[labels[number]]
            image = Image.open(image_path).convert("RGB")
            truth = np.asarray(Image.open(image_path.with_suffix(".png")).convert("L"))
            if truth.shape != (image.height, image.width):
                raise SystemExit(f"{image_path}: mask {truth.shape} vs image {image.size}")
            stem = f"d{n}_{number:03d}"
            (args.out / cls / "masks").mkdir(parents=True, exist_ok=True)
            image.save(args.out / cls / f"{stem}.png")
            mask = (truth >= threshold).astype(np.uint8) * 255
            Image.fromarray(mask).save(args.out / cls / "masks" / f"{stem}.png")
            counts[cls] = counts.get(cls, 0) + 1
    for cls in CLASSES.values():
        print(f"{cls}: {counts.get(cls, 0)} images and masks")


if __name__ == "__main__":
    main()
