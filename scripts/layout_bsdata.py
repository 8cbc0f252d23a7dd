"""Lay out BSData (ball-screw-drive spindle surfaces, "Pitting" polygons) for camsam.

Source: T. Schlagenhauf, M. Landwehr, "Industrial machine tool component surface defect dataset",
Data in Brief 39 (2021) 107643, arXiv:2103.13003 (wbk, Karlsruhe Institute of Technology).
Licence CC BY-SA 4.0 (LICENSE file of the repository). Repository with all files:
github.com/2Obe/BSData, commit 7204b28a621733c01cd75899ed9ea27f6ea0b9e3: ``data/*.jpg`` (1104
images of ball screw drive spindles; ``data/BSD/test/`` holds one duplicate and is ignored) and
``label/*.json`` (labelme polygons, label "Pitting", for the 394 images that show pitting):

    git clone https://github.com/2Obe/BSData src
    python scripts/layout_bsdata.py src /work/datasets/bsdata

Output (camsam DATA_DIR): ``Pitting/`` (an image with a label file) with ``masks/`` (the union of
its polygons) and ``Free/`` (the background class: the 710 images without a label file). The
unlabelled images are the early frames of each time series, before pitting shows (one spot never
gets any); ``image_data.json`` leaves them out of the authors' train/test split, and a handful
sit between labelled frames of a series, so a few may show pitting nobody outlined. The images
are 1130x460, 1540x645 and about 2800x900 px; any with a side over ``--max-side-trigger`` (1024)
is scaled to ``--max-side`` (512) px on its long side (bilinear), and the polygons are drawn at
the scaled size. Outputs are PNG. Pittings are small: at 512 px a mask covers 0.01-1.5 % of its
image (median 0.3 %, a blob of about 18x18 px); ``--max-side 1024`` keeps more of them.

Groups: the images are time series of the same spots. ``01_<yymmddhhmmss>_<pos>_<angle>_crop_<n>``
(1035 images, BSD type 2) shows one of 15 spots (axial position, angle) of one spindle,
photographed every few hours while pitting grows (69 frames a spot: ``crop_2`` the first 57,
``crop_1`` the last 12); group by spot with ``^01_\\d{12}_(\\d+_\\d{3})_crop_\\d+$``.
``KGT<k>-<S|V>-<nnn>-A<aa>_crop_<c>`` (69 images, BSD type 1, all with pitting; spindles KGT1-3,
S/V presumably clean/soiled) has several crops of one photograph (``_crop_0``, ``_crop_4``);
group by spindle and section with ``^(KGT\\d)-[SV]-\\d+-(A\\d+)_crop_\\d+$`` (or, coarser, by
spindle). A random split puts near-identical frames of one spot on both sides.
"""

from __future__ import annotations

import json

import numpy as np
from layout_common import fit, layout_parser
from PIL import Image, ImageDraw

DEFECT, BACKGROUND = "Pitting", "Free"


def draw_mask(label: dict, source_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The union of a labelme file's polygons, drawn at ``size``."""
    if (label["imageWidth"], label["imageHeight"]) != source_size:
        raise ValueError(f"label is for {label['imageWidth']}x{label['imageHeight']}")
    sx, sy = size[0] / source_size[0], size[1] / source_size[1]
    canvas = Image.new("L", size, 0)
    pen = ImageDraw.Draw(canvas)
    for shape in label["shapes"]:
        if shape.get("shape_type", "polygon") != "polygon" or shape["label"] != DEFECT:
            raise ValueError(f"unexpected shape {shape.get('shape_type')} {shape['label']}")
        pen.polygon([(x * sx, y * sy) for x, y in shape["points"]], fill=255, outline=255)
    return np.asarray(canvas)


def main() -> None:
    parser = layout_parser(__doc__.split("\n")[0], "checkout of 2Obe/BSData (data/ and label/)")
    args = parser.parse_args()

    labels = {p.stem: p for p in (args.source / "label").glob("*.json")}
    images = sorted((args.source / "data").glob("*.jpg"))
    missing = sorted(set(labels) - {p.stem for p in images})
    if missing:
        raise SystemExit(f"label files without an image: {missing}")
    for cls in (DEFECT, BACKGROUND):
        (args.out / cls).mkdir(parents=True, exist_ok=True)
    (args.out / DEFECT / "masks").mkdir(exist_ok=True)

    counts = {DEFECT: 0, BACKGROUND: 0}
    for path in images:
        image = Image.open(path).convert("RGB")
        size = fit(image.size, args.max_side_trigger, args.max_side)
        cls = DEFECT if path.stem in labels else BACKGROUND
        if cls == DEFECT:
            label = json.loads(labels[path.stem].read_text())
            try:
                mask = draw_mask(label, image.size, size)
            except ValueError as error:
                raise SystemExit(f"{labels[path.stem]}: {error}") from None
            Image.fromarray(mask).save(args.out / cls / "masks" / f"{path.stem}.png")
        if size != image.size:
            image = image.resize(size, Image.BILINEAR)
        image.save(args.out / cls / f"{path.stem}.png")
        counts[cls] += 1
    for cls, n in counts.items():
        print(f"{cls}: {n} images" + (f", {n} masks" if cls == DEFECT else ""))


if __name__ == "__main__":
    main()
