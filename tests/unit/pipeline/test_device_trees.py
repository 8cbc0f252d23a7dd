from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from worker.pipeline.refiners.device_trees import DeviceTrees
from worker.pipeline.refiners.learned import FIELDS


@pytest.fixture(scope="module")
def boosted():
    """Trees fitted on rows with missing values, and their node arrays as a checkpoint keeps
    them (one concatenation, children counted within each tree)."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(600, 5))
    labels = (rows[:, 0] + rows[:, 1] * rows[:, 2] > 0.3).astype(int)
    rows[rng.random(rows.shape) < 0.05] = np.nan
    model = HistGradientBoostingClassifier(max_iter=20, max_leaf_nodes=15, random_state=0)
    model.fit(rows, labels)
    trees = [predictors[0] for predictors in model._predictors]
    nodes = {f: np.concatenate([t.nodes[f] for t in trees]) for f in FIELDS}
    starts = np.cumsum([0] + [len(t.nodes) for t in trees])
    return model, nodes, starts, float(model._baseline_prediction.ravel()[0])


def on_every_threshold(nodes: dict, width: int) -> np.ndarray:
    """One row per split, its feature exactly at the split's threshold (``<=`` goes left)."""
    splits = np.flatnonzero(~nodes["is_leaf"].astype(bool))
    rows = np.zeros((len(splits), width))
    rows[np.arange(len(splits)), nodes["feature_idx"][splits]] = nodes["num_threshold"][splits]
    return rows


def test_trees_read_as_tensors_give_what_scikit_learns_predictor_gives(boosted):
    model, nodes, starts, baseline = boosted
    tensors = DeviceTrees(nodes, starts, baseline, "cpu")
    assert tensors.depth >= 2
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(300, 5))
    rows[rng.random(rows.shape) < 0.2] = np.nan  # each missing value goes the way its node says
    rows = np.concatenate([rows, on_every_threshold(nodes, 5)])
    np.testing.assert_allclose(tensors.log_odds(rows), model.decision_function(rows), atol=1e-9)
    assert tensors.log_odds(np.zeros((0, 5))).shape == (0,)


def test_trees_that_are_single_leaves_take_no_step():
    nodes = {f: np.zeros(2, np.float64) for f in FIELDS}
    nodes["is_leaf"] = np.ones(2, np.uint8)
    nodes["value"] = np.array([0.5, -0.25])
    tensors = DeviceTrees(nodes, np.array([0, 1, 2]), 1.0, "cpu")
    assert tensors.depth == 0
    np.testing.assert_allclose(tensors.log_odds(np.zeros((3, 4))), [1.25] * 3)
