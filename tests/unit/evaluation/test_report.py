"""The report picture: rows of any image shape stay apart and each image keeps its shape."""

from __future__ import annotations

import numpy as np
import pytest

from worker.evaluation.report import GAP, TILE, _tile, _wrap, framed_row


@pytest.mark.parametrize("shape", [(600, 100), (100, 700), (50, 50), (TILE, TILE)])
def test_a_tile_is_square_and_holds_the_whole_image_centred(shape):
    image = np.zeros((*shape, 3), np.uint8)
    tile = _tile(image)
    assert tile.shape == (TILE, TILE, 3)
    dark = np.argwhere((tile == 0).all(axis=2))
    (top, left), (bottom, right) = dark.min(axis=0), dark.max(axis=0)
    height, width = bottom - top + 1, right - left + 1
    assert max(height, width) == TILE  # shrunk or grown to fit, not cropped
    assert abs(height / width - shape[0] / shape[1]) < 0.05 * max(1, shape[0] / shape[1])
    assert abs(top - (TILE - bottom - 1)) <= 1 and abs(left - (TILE - right - 1)) <= 1


def test_rows_of_tall_images_do_not_touch_the_next_row():
    tall = _tile(np.zeros((900, 120, 3), np.uint8))  # fills the tile from top to bottom
    row = framed_row([np.full((TILE, 40, 3), 255, np.uint8), tall, tall])
    below = row[TILE:]
    assert below.shape[0] == 2 * GAP + 1
    assert (below[:GAP] == 255).all() and (below[GAP + 1 :] == 255).all()
    assert (below[GAP] < 255).all()  # the rule between rows
    picture = np.vstack([row, row])
    assert (picture[TILE : TILE + GAP] == 255).all()


def test_long_file_names_wrap_inside_the_caption():
    lines = _wrap("Uneven/exp4_num_274154_and_a_long_tail.jpg", 120)
    assert lines[0] == "Uneven/" and "".join(lines) == "Uneven/exp4_num_274154_and_a_long_tail.jpg"
    assert len(lines) >= 3
