"""Lay out the BUSI breast-ultrasound dataset (normal, benign, malignant; lesion masks) for camsam.

Source: "Dataset of breast ultrasound images" (BUSI), Al-Dhabyani, Gomaa, Khaled, Fahmy, Data in
Brief 28 (2020) 104863, doi:10.1016/j.dib.2019.104863; collected at Baheya Hospital, Cairo, from
600 women aged 25-75 in 2018. The article is open access (CC BY 4.0); the data is published at
https://scholar.cu.edu.eg/?q=afahmy/pages/dataset and mirrored on Kaggle
("aryashah2k/breast-ultrasound-images-dataset", listed as CC0). Cite the article when using it.

Here it is taken from a course repository that commits the whole dataset (780 images, all masks):
github.com/yirutsai/Breast-ultrasound-dataset, commit 6c0fac85e26c5bf76d9c134e3d5bbfbe36dfe405,
folder ``data/<class>/{images,mask}/`` (the original ``Dataset_BUSI_with_GT/<class>/`` layout,
images and ``_mask`` files side by side, works as well):

    git clone https://github.com/yirutsai/Breast-ultrasound-dataset src   # or the Kaggle zip
    python scripts/layout_busi.py src/data /work/datasets/busi

Output (camsam DATA_DIR): ``benign/``, ``malignant/`` with ``masks/``, and ``normal/`` (the
background class, no masks; BUSI's all-black "normal" masks are dropped). Files are renamed from
``benign (12).png`` to ``benign_012.png``. An image with several masks (``_mask``, ``_mask_1``,
``_mask_2``: several lesions) gets their union. Images are about 500x600 and are copied as they
are; a source image over ``--max-side-trigger`` px a side would be scaled to ``--max-side``.

Groups: BUSI gives no patient id (780 images of 600 patients), so the files cannot be grouped by
patient; the stem is the only key (regex ``^(.+)$``). The dataset does hold near-duplicates: one
image is in two classes pixel for pixel (benign (433) = malignant (145)), and about 170 pairs
(about 250 images in about 110 clusters, 7 pairs across classes) have 96x96 thumbnails that
correlate above 0.95: other frames or crops of one lesion. Cluster such pairs into groups before
splitting. Many images also show the sonographer's calipers and text on or near the lesion.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
from layout_common import fit, layout_parser
from PIL import Image

CLASSES = ("benign", "malignant", "normal")
BACKGROUND = "normal"
NAME = re.compile(r"^(?P<cls>[a-z]+) \((?P<num>\d+)\)(?P<mask>_mask(?:_\d+)?)?$")


def collect(source: Path, cls: str) -> tuple[dict[int, Path], dict[int, list[Path]]]:
    """Images and mask files of one class, keyed by BUSI's image number."""
    images: dict[int, Path] = {}
    masks: dict[int, list[Path]] = {}
    for path in sorted((source / cls).rglob("*.png")):
        match = NAME.match(path.stem)
        if not match or match["cls"] != cls:
            raise SystemExit(f"unexpected file name {path}")
        num = int(match["num"])
        if match["mask"]:
            masks.setdefault(num, []).append(path)
        elif num in images:
            raise SystemExit(f"two images numbered {num}: {images[num]} and {path}")
        else:
            images[num] = path
    return images, masks


def union(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    """OR of the mask files, at ``size`` (nearest neighbour where a mask differs in size)."""
    merged = np.zeros((size[1], size[0]), dtype=bool)
    for path in paths:
        mask = Image.open(path).convert("L")
        if mask.size != size:
            mask = mask.resize(size, Image.NEAREST)
        merged |= np.asarray(mask) >= 128
    return merged


def main() -> None:
    parser = layout_parser(__doc__.split("\n")[0], "folder holding benign/ malignant/ normal/")
    args = parser.parse_args()

    for cls in CLASSES:
        images, masks = collect(args.source, cls)
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise SystemExit(f"{cls}: masks without an image: {orphans}")
        out_dir = args.out / cls
        (out_dir / "masks" if cls != BACKGROUND else out_dir).mkdir(parents=True, exist_ok=True)
        written = empty = 0
        for num, path in sorted(images.items()):
            stem = f"{cls}_{num:03d}"
            image = Image.open(path)
            size = fit(image.size, args.max_side_trigger, args.max_side)
            if size == image.size:
                shutil.copyfile(path, out_dir / f"{stem}.png")
            else:
                image.convert("RGB").resize(size, Image.BILINEAR).save(out_dir / f"{stem}.png")
            if cls == BACKGROUND:
                continue
            if num not in masks:
                raise SystemExit(f"{path} has no mask")
            mask = union(masks[num], image.size)
            if size != image.size:
                mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
            empty += not mask.any()
            Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / "masks" / f"{stem}.png")
            written += 1
        print(f"{cls}: {len(images)} images, {written} masks ({empty} empty)")


if __name__ == "__main__":
    main()
