"""The defaults that more than one part of camsam reads, once, each with why it is what it is.

The command line's flags, the backend's settings (:class:`worker.contract.settings.Settings`) and
the training recipe (:class:`Recipe`, which ``worker.training.classifier.TrainConfig`` extends)
all read these from here, so a default changes in one place; a setting only the service reads
keeps its default beside it in ``Settings``. Figures behind a choice are in ``docs/quality.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

# The training recipe -------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How a classifier is trained, as ``camsam train``'s flags, the backend's ``TRAIN_*``
    settings and every checkpoint's ``recipe`` record it; these are the defaults."""

    arch: str = "resnet10t"  # a small timm CNN: minutes on a CPU, 7x7 CAMs at 224 px
    image_size: int = 224  # the classifier's input side in pixels
    input: str = "rgb"  # the image as it is; "flat" (gray + local difference) suits surfaces
    pool: str = "avg"  # global pooling; "avgmax" lets one small, strong response decide
    output_stride: int = 32  # 16 or 8 dilate the last stages: a finer CAM, slower
    epochs: int = 60  # validation accuracy levelled off by epoch 40 (docs/quality.md)
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    val_fraction: float = 0.15  # held out to pick the best epoch and to decide publishing
    augment: str = "flip"  # flips both ways beat heavier augmentation (docs/quality.md)
    groups: str = "auto"  # what the validation share keeps together: near-duplicates found,
    # "none", or a pattern over file names (worker.data.groups)
    seed: int = 0


TRAIN_BUDGET = 30.0
"""Minutes a first training may take when the recipe is chosen (``camsam train --budget``,
``TRAIN_BUDGET``): a few hundred images train within it on a 2-core CPU (docs/datasets.md)."""

PRETRAINED_TIMEOUT = 10.0
"""Seconds training waits for the model hub to answer before it starts from scratch instead
(``worker.pipeline.pretrained``): long enough for a slow network, short for none at all."""

FINETUNE_EPOCHS = 20
"""Epochs of a version fine-tuned from the current one (which already knows the classes): the
backend retrains after every batch of labels, and a full run each time would grow with the
project. A choice for time: what it costs in accuracy against full runs is not yet measured
(``camsam campaign --finetune-epochs 0`` replays full runs; docs/campaign.md)."""

GROUP_SIMILARITY = 0.88
"""Two images whose fingerprints (a 16x16 gray thumbnail less its shading, brightness and
contrast) are at least this alike (cosine) are candidates for one group. Chosen on magnetic-tile,
where it and ``GROUP_LINKAGE`` cut the share of validation images whose tile is also in training
from 0.87 (a random split) to 0.32, and on synthetic surfaces, where no two distinct images join
(docs/groups.md)."""

GROUP_LINKAGE = 0.85
"""Two candidate groups join only if their images are this alike on average: one chance look-alike
does not chain two objects (and all their other photographs) together."""

GROUP_MAX_SHARE = 0.1
"""No group found grows past this share of the images, so a validation share (15%) can still be
drawn by whole groups."""

INPUTS = ("rgb", "flat")
"""The input encodings a classifier can be trained on."""

AUGMENTATIONS = ("none", "flip", "flip+rot", "full")

# Judging masks --------------------------------------------------------------------------------

ACCEPT_IOU = 0.5
"""An annotator accepts a mask whose IoU with what they would have drawn reaches this."""

GATE_Z = 1.645
"""How sure the mask gate must be (a one-sided 95% bound): it judges a cut by the lowest accept
rate the held-out masks above it make plausible (the Wilson bound), not by their own rate, so a
few lucky masks on a small validation share do not open a class (docs/campaign.md)."""

GATE_MIN_ACCEPTED = 3
"""Groups (objects, parts, batches: photographs of one tile count once) whose held-out images
hold an accepted mask above a class's threshold before the mask gate opens for it: a first
version trained on 30 images has ~6 to be judged on, where one lucky mask opened a class whose
masks then cost more than painting by hand (docs/campaign.md)."""

GATE_BORROW_ALPHA = 0.05
"""A class with too few held-out masks to earn a threshold of its own borrows the one the
classes that earned theirs earn together, if its own masks there would save time at the rate
they show and that rate is not below theirs at this significance (Fisher's exact test,
one-sided): a project's masks share its imaging and its refiner, so a rare class is judged with
its common ones unless its own masks say otherwise (docs/campaign.md)."""

# The service ----------------------------------------------------------------------------------

TRAIN_LEASE = 300
"""Seconds after a training worker's last beat at which its project's flags expire."""

FETCH_TIMEOUT = 30.0
"""Seconds one image download may take."""

MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""The largest image file downloaded."""

MAX_IMAGE_PIXELS = 100_000_000
"""The largest image decoded (width x height): a decompression bomb stops here."""

MAX_WORK_SIDE = 2048
"""The longest side, in pixels, of the copy of an image the models work on; masks are scaled
back to the image's own size. The classifier sees 128-224 px and SAM2 1024 px, so a larger copy
adds memory, not detail; it bounds the memory one image takes whatever size it declares."""

PREDICT_BATCH_SIZE = 8
"""Images per pipeline pass: enough to keep a GPU busy, small enough for a CPU's latency."""
