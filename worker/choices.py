"""The names the command line offers, kept apart from the modules that import torch, so that
parsing a command (and ``camsam serve``'s web workers, forked after it) loads no model code."""

from __future__ import annotations

CAM_METHODS = ("gradcam", "gradcam++", "layercam", "xgradcam", "eigencam", "scorecam")
SEGMENTERS = ("sam2", "cam", "threshold")
MASK_CHOICES = ("cam", "best-iou", "0", "1", "2")
