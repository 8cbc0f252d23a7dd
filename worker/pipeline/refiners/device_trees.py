"""The learned refiner's trees read on a CUDA device: every tree at once, one level a step.

scikit-learn's compiled predictor reads the trees on the CPU, one tree after another. Beside a
GPU that makes the learned refiner the slowest stage of a ``cam`` prediction (47 ms of 48 on an
H200, docs/performance.md). Here every (pixel, tree) pair walks down its tree together: each
step gathers the feature each pair's node splits on and moves to a child, and a leaf is its own
child, so ``depth`` steps bring every pair to its leaf with no test in between. On a CPU this
is nine times slower than scikit-learn's predictor, so only a CUDA device uses it (the values
are float64, which some accelerators, Apple's MPS among them, do not have).

The split is scikit-learn's: a value at or below the node's threshold goes left, a missing one
(NaN) where the node says, and the log-odds are the baseline plus the leaves' values, in float64.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


class DeviceTrees:
    """One class's trees (``ClassTrees.nodes`` and ``starts``) as tensors on ``device``."""

    def __init__(
        self, nodes: Mapping[str, np.ndarray], starts: np.ndarray, baseline: float, device: str
    ) -> None:
        leaf = np.asarray(nodes["is_leaf"]).astype(bool)
        own = np.arange(len(leaf))
        first = np.repeat(starts[:-1], np.diff(starts))  # each node's tree's first node
        left = np.where(leaf, own, np.asarray(nodes["left"]).astype(np.int64) + first)
        right = np.where(leaf, own, np.asarray(nodes["right"]).astype(np.int64) + first)
        self.depth = _depth(left, right, leaf, starts[:-1])
        self.baseline = baseline
        self.device = torch.device(device)

        def tensor(values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.asarray(values), dtype=dtype, device=self.device)

        self.roots = tensor(starts[:-1].astype(np.int64), torch.int64)
        self.feature = tensor(np.asarray(nodes["feature_idx"]).astype(np.int64), torch.int64)
        self.threshold = tensor(nodes["num_threshold"], torch.float64)
        self.missing_left = tensor(np.asarray(nodes["missing_go_to_left"]).astype(bool), torch.bool)
        self.left = tensor(left, torch.int64)
        self.right = tensor(right, torch.int64)
        self.value = tensor(nodes["value"], torch.float64)

    @torch.inference_mode()
    def log_odds(self, features: np.ndarray) -> np.ndarray:
        """The trees' summed log-odds (n,) for each row of ``features`` (n, k)."""
        rows = torch.as_tensor(np.asarray(features, np.float64), device=self.device)
        node = self.roots.expand(len(rows), -1)
        for _ in range(self.depth):
            values = rows.gather(1, self.feature[node])
            left = (values <= self.threshold[node]) | (values.isnan() & self.missing_left[node])
            node = torch.where(left, self.left[node], self.right[node])
        return (self.value[node].sum(dim=1) + self.baseline).cpu().numpy()


def _depth(left: np.ndarray, right: np.ndarray, leaf: np.ndarray, roots: np.ndarray) -> int:
    """The most splits from any root to a leaf."""
    level, depth = roots, 0
    while not leaf[level].all():
        level = level[~leaf[level]]
        level = np.concatenate([left[level], right[level]])
        depth += 1
    return depth
