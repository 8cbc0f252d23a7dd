"""Configuration, read once from the environment (Label Studio's ML backend conventions)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from worker.contract import defaults

_CASTS = {"float": float, "int": int}


@dataclass(frozen=True)
class Settings:
    model_dir: str = "models"
    redis_url: str = ""
    label_studio_url: str = ""
    label_studio_api_key: str = ""
    local_files_document_root: str = ""
    device: str = "auto"
    sam2_config: str = ""
    sam2_checkpoint: str = ""
    sam2_hub_id: str = ""
    cam_refiner: str = ""  # the cam segmenter's refiner for every class ("": as training chose)
    classifier_mirror: int = 1  # 1: classify on the image and its mirror image; 0: the image alone
    predict_timeout: float = 90.0
    predict_batch_size: int = defaults.PREDICT_BATCH_SIZE
    predict_inline_max_tasks: int = 0
    min_per_class: int = 5
    train_debounce: float = 10.0
    min_publish_interval: float = 0.0
    keep_versions: int = 5
    reconcile_seconds: float = 300.0
    train_lease: int = defaults.TRAIN_LEASE
    train_arch: str = ""
    train_epochs: int = defaults.Recipe.epochs
    train_image_size: int = defaults.Recipe.image_size
    train_input: str = defaults.Recipe.input
    train_output_stride: int = defaults.Recipe.output_stride
    train_pretrained: str = ""
    image_hosts: str = ""
    fetch_timeout: float = defaults.FETCH_TIMEOUT
    max_image_bytes: int = defaults.MAX_IMAGE_BYTES
    max_image_pixels: int = defaults.MAX_IMAGE_PIXELS
    webhook_rate: float = 20.0
    auth_token: str = ""
    basic_auth_user: str = ""
    basic_auth_pass: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Each field from its upper-case environment variable (MODEL_DIR, REDIS_URL, ...)."""
        env = os.environ if env is None else env
        values = {}
        for field in fields(cls):
            raw = env.get(field.name.upper())
            if raw is not None and raw != "":
                try:
                    values[field.name] = _CASTS.get(field.type, str)(raw)
                except ValueError:
                    raise ValueError(
                        f"{field.name.upper()}={raw!r} is not a number: set it to a {field.type}"
                    ) from None
        return cls(**values)

    @property
    def has_sam2(self) -> bool:
        return bool(self.sam2_checkpoint or self.sam2_hub_id)

    def with_label_studio(self, url: str, api_key: str) -> Settings:
        """Label Studio's address and key as ``/setup`` sent them, where the environment named
        none (the environment always wins)."""
        return replace(
            self,
            label_studio_url=self.label_studio_url or url or "",
            label_studio_api_key=self.label_studio_api_key or api_key or "",
        )

    def for_worker(self) -> dict:
        """What a job needs to know, as JSON for the queue; the worker never reads the web
        process's environment (and never sees the web side's own credentials)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not f.name.startswith(("basic", "auth"))
        }

    @classmethod
    def from_payload(cls, values: Mapping[str, object]) -> Settings:
        """The typed settings a job was sent (``for_worker``'s dict); what it leaves out keeps
        its default, and a value of the wrong type is cast as the environment's would be.

        Raises:
            ValueError: a value that is not a number where one is needed.
        """
        known = {f.name: f for f in fields(cls)}
        typed = {}
        for name, value in values.items():
            if name in known and value is not None:
                cast = _CASTS.get(known[name].type, str)
                try:
                    typed[name] = cast(value)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"setting {name}={value!r} is not a {known[name].type}"
                    ) from None
        return cls(**typed)
