"""Every default camsam has, once, each with why it is what it is.

The command line's flags, the backend's settings (:class:`worker.contract.settings.Settings`) and
the training recipe (``worker.training.classifier.TrainConfig``) all read their defaults from
here, so a default changes in one place. Figures behind a choice are in ``docs/quality.md``.
"""

from __future__ import annotations

# The training recipe -------------------------------------------------------------------------

ARCH = "resnet10t"
"""A small timm CNN: trains in minutes on a CPU and gives 7x7 CAMs at 224 px."""

EPOCHS = 60
"""Validation accuracy still climbed at 30 epochs on magnetic-tile and levelled off by 40."""

IMAGE_SIZE = 224
"""The classifier's input side in pixels (timm's own default for most CNNs)."""

INPUT = "rgb"
"""The image as it is; ``flat`` (gray + difference from the local background) suits surfaces."""

INPUTS = ("rgb", "flat")
"""The input encodings a classifier can be trained on."""

POOL = "avg"
"""Global average pooling; ``avgmax`` lets one small, strong response decide."""

OUTPUT_STRIDE = 32
"""The backbone's own stride; 16 or 8 dilate the last stages for a finer CAM (slower)."""

BATCH_SIZE = 32
LR = 2e-3
WEIGHT_DECAY = 0.05
VAL_FRACTION = 0.15
"""The share of the labelled images held out to pick the best epoch and to decide publishing."""

AUGMENT = "flip"
"""Flips both ways: on a few hundred images and a CPU budget they beat heavier augmentation."""

AUGMENTATIONS = ("none", "flip", "flip+rot", "full")
SEED = 0

# Judging masks --------------------------------------------------------------------------------

ACCEPT_IOU = 0.5
"""An annotator accepts a mask whose IoU with what they would have drawn reaches this."""

# The service ----------------------------------------------------------------------------------

TRAIN_LEASE = 300
"""Seconds after a training worker's last beat at which its project's flags expire."""

FETCH_TIMEOUT = 30.0
"""Seconds one image download may take."""

MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""The largest image file downloaded."""

MAX_IMAGE_PIXELS = 100_000_000
"""The largest image decoded (width x height): a decompression bomb stops here."""

PREDICT_BATCH_SIZE = 8
"""Images per pipeline pass: enough to keep a GPU busy, small enough for a CPU's latency."""
