"""Write a magnetic-tile split that keeps every photograph of one tile on the same side.

The dataset photographs each tile under several lightings (``exp1_num_135544``,
``exp2_num_135572``, ...: the numbers of one tile lie within a few dozen of each other). A random
split puts one lighting of a tile in training and another in the test part; this one groups
numbers less than ``GAP`` apart within a class and holds out whole groups, about ``FRACTION`` of
each class's images.

    python scripts/tile_split.py ../shared/data/magnetic-tile splits/magnetic-tile-tiles.json
    python scripts/tile_split.py DATA OUT --folds 5 --fold 2   # cross-validation by tile
    python scripts/tile_split.py DATA OUT --arrival tiles.json  # and the tiles in capture order

``--arrival`` writes the training side's tiles for ``camsam campaign --arrival``: one list of
images per tile, tiles in the order of their lowest number (the order they were photographed).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

GAP = 100
FRACTION = 0.2


def main(
    root: str,
    out: str,
    folds: int | None = None,
    fold: int = 0,
    seed: int = 0,
    arrival: str | None = None,
) -> None:
    rng = random.Random(seed)
    split = {"train": [], "test": []}
    tiles = []
    for groups in tile_groups(root).values():
        count = sum(len(group) for group in groups)
        tiles += [(_number(Path(group[0])), group) for group in groups]
        rng.shuffle(groups)
        if folds:  # each group to the fold with the fewest of this class's images so far
            sizes = [0] * folds
            for group in sorted(groups, key=len, reverse=True):
                chosen = sizes.index(min(sizes))
                sizes[chosen] += len(group)
                split["test" if chosen == fold else "train"].extend(group)
            continue
        held = 0
        for group in groups:
            side = "test" if held < FRACTION * count else "train"
            split[side].extend(group)
            held += len(group) if side == "test" else 0
    for side in split.values():
        side.sort()
    Path(out).write_text(json.dumps(split, indent=1) + "\n")
    print({k: len(v) for k, v in split.items()})
    if arrival:
        training = set(split["train"])
        stream = [group for _, group in sorted(tiles) if group[0] in training]
        Path(arrival).write_text(json.dumps(stream, indent=1) + "\n")
        print(f"{len(stream)} tiles in the order photographed")


def tile_groups(root: str | Path) -> dict[str, list[list[str]]]:
    """Per class folder, its tiles: lists of ``Class/name.jpg`` keys, each tile's numbers less
    than ``GAP`` apart, in the order they were photographed."""
    tiles = {}
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        images = sorted(folder.glob("*.jpg"), key=lambda p: _number(p))
        groups, last = [], None
        for image in images:
            number = _number(image)
            if last is None or number - last >= GAP:
                groups.append([])
            groups[-1].append(f"{folder.name}/{image.name}")
            last = number
        tiles[folder.name] = groups
    return tiles


def _number(path: Path) -> int:
    return int(re.search(r"_num_(\d+)", path.stem).group(1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--folds", type=int)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--arrival", help="also write the training side's tiles in order")
    args = parser.parse_args()
    main(args.data, args.out, args.folds, args.fold, arrival=args.arrival)
