"""Where a classifier's weights start: a local file, the architecture's ImageNet weights, or none.

With a few hundred labels, weights pretrained on ImageNet are the strongest start a classifier
can have, and most users can download them. So unless told otherwise, training asks the hub
for them (timm's weights on the Hugging Face hub, or the local copy an earlier download left).
It waits about ``defaults.PRETRAINED_TIMEOUT`` seconds for the hub to answer. When they cannot
be had, training starts from scratch and says so in one line. ``--pretrained none``
(``TRAIN_PRETRAINED=none``) never asks.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from worker.contract import defaults
from worker.contract.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"  # the file timm publishes each model's weights as
PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
RETRY_SECONDS = 600.0  # a process that found the hub unreachable does not ask again for this long
_unreachable: dict[str, tuple[float, str]] = {}  # endpoint -> (when, why)


@dataclass(frozen=True)
class Start:
    """What a training run starts from: ``kind`` is ``hub`` (``source``: the hub id and the
    local file), ``file`` (``source``: its path) or ``scratch`` (``note``: why, when weights
    were wanted but could not be had)."""

    kind: str
    source: str = ""
    file: str = ""
    note: str = ""

    @property
    def pretrained(self) -> str | None:
        """The local file ``worker.pipeline.classifier.create_model`` loads, if any."""
        return self.file or None

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}


def resolve_start(arch: str, asked: str | None, timeout: float | None = None) -> Start:
    """The start ``asked`` for: ``None``, ``""`` or ``auto`` (the hub's weights when they can be
    had, else scratch with the reason), ``none`` (scratch), ``hub`` (the hub's weights, or an
    error), or a local weights file.

    Raises:
        CheckpointError: ``hub`` was asked for and the weights cannot be had; a file is missing.
    """
    timeout = defaults.PRETRAINED_TIMEOUT if timeout is None else timeout
    if asked == "none":
        return Start("scratch")
    if asked in (None, "", "auto", "hub"):
        try:
            source, file = hub_weights(arch, timeout)
        except CheckpointError as error:
            if asked == "hub":
                raise
            return Start("scratch", note=str(error))
        return Start("hub", source, file)
    if not Path(asked).is_file():
        raise CheckpointError(
            f"pretrained weights {asked} not found: name a weights file, 'hub', 'auto' or 'none'"
        )
    return Start("file", asked, asked)


def hub_weights(arch: str, timeout: float) -> tuple[str, str]:
    """(the hub id, a local file) of ``arch``'s pretrained weights: the local copy an earlier
    download left, else downloaded, waiting ``timeout`` seconds at most for the hub to answer.

    Raises:
        CheckpointError: timm has no pretrained weights for ``arch``, or they cannot be had
            (offline, the hub unreachable, the download failed); the message says which.
    """
    import timm
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    try:
        config = timm.models.get_pretrained_cfg(arch)
    except RuntimeError as error:  # a tag timm does not know
        raise CheckpointError(f"timm has no pretrained weights for {arch}: {error}") from error
    repo = getattr(config, "hf_hub_id", None) if config is not None else None
    if not repo:
        raise CheckpointError(f"timm has no pretrained weights on the hub for {arch}")
    name = getattr(config, "hf_hub_filename", None) or WEIGHTS_FILE
    cached = try_to_load_from_cache(repo, name)
    if isinstance(cached, str):
        return repo, cached
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise CheckpointError(f"{repo} is not in the local cache and HF_HUB_OFFLINE is set")
    endpoint = constants.ENDPOINT
    failed = _unreachable.get(endpoint)
    if failed and time.monotonic() - failed[0] < RETRY_SECONDS:
        raise CheckpointError(failed[1])
    try:
        if not any(os.environ.get(v) for v in PROXIES):  # a proxy is reached by the download
            _reach(endpoint, timeout)
    except OSError as error:
        why = f"{repo} could not be downloaded: {endpoint} did not answer: {error}"
        _unreachable[endpoint] = (time.monotonic(), why)  # the same for every architecture
        raise CheckpointError(why) from error
    try:
        return repo, hf_hub_download(repo, name, etag_timeout=timeout)
    except Exception as error:  # a missing or gated file, a full disk: the reason is in the text
        raise CheckpointError(f"{repo} could not be downloaded from {endpoint}: {error}") from error


def _reach(endpoint: str, timeout: float) -> None:
    """Connect to the hub within ``timeout`` seconds (the download itself retries for longer;
    the name's lookup is the system resolver's, usually quick to fail where there is no network).

    Raises:
        OSError: the name does not resolve or nothing answers in time.
    """
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname, port), timeout=timeout):
        pass
