"""parse_label_config on the repository's config, a real Label Studio project's, and broken ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from worker.contract.errors import LabelConfigError
from worker.contract.label_config import load_label_config, parse_label_config
from worker.labelstudio import results as ls_format

REPO_CONFIG = REPO / "label_config.xml"
LS_FIXTURE_CONFIG = Path("/work/shared/fixtures/label-studio-1.23.2/label_config.xml")
DEFECTS = ("Blowhole", "Break", "Crack", "Fray", "Uneven")


def test_repository_config():
    config = load_label_config(REPO_CONFIG)

    assert config.image_name == "image"
    assert config.image_value == "$image"
    assert config.image_key == "image"
    assert config.choices.tag == "Choices"
    assert config.choices.name == "class"
    assert config.choices.to_name == "image"
    assert config.choice_labels == (*DEFECTS, "Free")
    assert config.brush.name == "mask"
    assert config.mask_labels == DEFECTS
    assert "Free" not in config.mask_labels
    assert config.keypoints.name == "kp" and config.keypoints.smart
    assert config.keypoints.labels == DEFECTS
    assert config.rectangles.name == "box" and config.rectangles.smart
    assert config.rectangles.labels == DEFECTS


def test_ls_format_defaults_match_the_repository_config():
    config = load_label_config(REPO_CONFIG)

    assert ls_format.DEFAULT_IMAGE_NAME == config.image_name
    assert ls_format.DEFAULT_CHOICES_NAME == config.choices.name
    assert ls_format.DEFAULT_BRUSH_NAME == config.brush.name


@pytest.mark.skipif(not LS_FIXTURE_CONFIG.is_file(), reason="Label Studio fixture not present")
def test_label_studio_project_config():
    config = load_label_config(LS_FIXTURE_CONFIG)

    assert config.image_name == "image"
    assert config.image_key == "image"
    assert config.choices.name == "defect"
    assert config.choice_labels == ("Crack", "Uneven", "Free")
    assert config.brush.name == "mask"
    assert config.mask_labels == ("Crack", "Uneven")
    assert config.keypoints.name == "kp" and config.keypoints.smart
    assert config.rectangles.name == "box" and config.rectangles.smart


def test_controls_for_another_image_are_ignored():
    config = parse_label_config(
        """
        <View>
          <Image name="photo" value="$url"/>
          <Image name="other" value="$other"/>
          <Choices name="wrong" toName="other"><Choice value="X"/></Choices>
          <BrushLabels name="paint" toName="photo"><Label value="Crack"/></BrushLabels>
          <KeyPointLabels name="points" toName="photo"><Label value="Crack"/></KeyPointLabels>
        </View>
        """
    )

    assert config.image_name == "photo"
    assert config.image_key == "url"
    assert config.choices is None
    assert config.choice_labels == ()
    assert config.brush.name == "paint"
    assert config.mask_labels == ("Crack",)
    assert config.keypoints.name == "points" and not config.keypoints.smart
    assert config.rectangles is None


def test_control_pointing_at_several_images():
    config = parse_label_config(
        '<View><Image name="a" value="$a"/>'
        '<Choices name="c" toName="b,a"><Choice value="Crack"/></Choices></View>'
    )

    assert config.choices.name == "c"
    assert config.brush is None
    assert config.mask_labels == ()


def test_invalid_xml_raises():
    with pytest.raises(LabelConfigError, match="not valid XML"):
        parse_label_config("<View><Image name='image' value='$image'></View>")


def test_config_without_image_raises():
    with pytest.raises(LabelConfigError, match="no <Image>"):
        parse_label_config(
            '<View><Text name="t" value="$text"/>'
            '<Choices name="c" toName="t"><Choice value="A"/></Choices></View>'
        )


def test_image_without_choices_or_brush_raises():
    with pytest.raises(LabelConfigError, match="Choices.*BrushLabels"):
        parse_label_config(
            '<View><Image name="image" value="$image"/>'
            '<RectangleLabels name="box" toName="image"><Label value="A"/></RectangleLabels>'
            '<Choices name="c" toName="elsewhere"><Choice value="A"/></Choices></View>'
        )


def test_image_without_a_data_key_raises():
    with pytest.raises(LabelConfigError, match="value"):
        parse_label_config(
            '<View><Image name="image" value="image.png"/>'
            '<Choices name="c" toName="image"><Choice value="A"/></Choices></View>'
        )


def test_missing_config_file_raises(tmp_path):
    with pytest.raises(LabelConfigError, match="cannot read"):
        load_label_config(tmp_path / "absent.xml")
