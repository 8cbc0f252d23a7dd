"""Reading a Label Studio label config: what camsam predicts and under which names.

Pure XML parsing with the standard library, so both the web side (no torch) and the worker can
use it cheaply.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from worker.contract.errors import LabelConfigError


@dataclass(frozen=True)
class Control:
    """A control tag (Choices, BrushLabels, ...) with its name, target and label values."""

    tag: str
    name: str
    to_name: str
    labels: tuple[str, ...]
    smart: bool = False


@dataclass(frozen=True)
class LabelConfig:
    image_name: str
    image_value: str
    choices: Control | None
    brush: Control | None
    keypoints: Control | None = None
    rectangles: Control | None = None

    @property
    def image_key(self) -> str:
        """The task data key holding the image URL (``$image`` -> ``image``)."""
        return self.image_value.lstrip("$")

    @property
    def mask_labels(self) -> tuple[str, ...]:
        return self.brush.labels if self.brush else ()

    @property
    def choice_labels(self) -> tuple[str, ...]:
        return self.choices.labels if self.choices else ()


def parse_label_config(xml: str) -> LabelConfig:
    """Find the Image tag and the Choices / BrushLabels / smart KeyPoint / Rectangle tags on it.

    Raises:
        LabelConfigError: malformed XML, no Image tag, or neither Choices nor BrushLabels for it.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as error:
        raise LabelConfigError(f"the label config is not valid XML: {error}") from error
    images = [e for e in root.iter("Image")]
    if not images:
        raise LabelConfigError("the label config has no <Image> tag: camsam labels images only")
    image = images[0]
    name, value = image.get("name"), image.get("value", "")
    if not name or not value.startswith("$"):
        raise LabelConfigError('<Image> needs name="..." and value="$key"')

    def control(tag: str, label_tag: str) -> Control | None:
        for element in root.iter(tag):
            if name in (element.get("toName") or "").split(","):
                labels = tuple(e.get("value") for e in element.iter(label_tag) if e.get("value"))
                smart = (element.get("smart") or "").lower() == "true"
                return Control(tag, element.get("name", ""), name, labels, smart)
        return None

    config = LabelConfig(
        image_name=name,
        image_value=value,
        choices=control("Choices", "Choice"),
        brush=control("BrushLabels", "Label"),
        keypoints=control("KeyPointLabels", "Label"),
        rectangles=control("RectangleLabels", "Label"),
    )
    if config.choices is None and config.brush is None:
        raise LabelConfigError(
            f"no <Choices> or <BrushLabels> points at <Image name={name!r}>: camsam needs at "
            "least one of them (Choices for image classes, BrushLabels for masks)"
        )
    return config


def load_label_config(path: str | Path) -> LabelConfig:
    try:
        return parse_label_config(Path(path).read_text())
    except OSError as error:
        raise LabelConfigError(f"cannot read label config {path}: {error}") from error
