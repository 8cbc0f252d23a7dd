"""Every error camsam raises on purpose, in one flat module; each message says what to do."""

from __future__ import annotations


class CamsamError(Exception):
    """Base class: an error a user can act on (the CLI prints it without a traceback)."""


class ImageError(CamsamError):
    """An image could not be read or decoded."""


class MaskError(CamsamError):
    """A brush mask (Label Studio RLE) does not decode to the size its region declares."""


class DatasetError(CamsamError):
    """A dataset directory or Label Studio export does not have the expected shape."""


class CheckpointError(CamsamError):
    """A checkpoint file is missing, corrupt, or does not match its architecture."""


class NoModelError(CheckpointError):
    """A model directory has no current version yet."""


class LabelConfigError(CamsamError):
    """A Label Studio label config lacks what camsam needs to serve it."""


class SegmenterError(CamsamError):
    """A segmenter could not be built (missing SAM2 config or checkpoint, bad options)."""


class LabelStudioAuthError(CamsamError):
    """A personal access token could not be exchanged for an access token."""
