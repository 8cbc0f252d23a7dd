"""Configuration, read once from the environment (Label Studio's ML backend conventions)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from urllib.parse import urlsplit

from worker.contract import defaults

_CASTS = {"float": float, "int": int}
# Who may name Label Studio's address and key through /setup (SETUP_CREDENTIALS):
SETUP_TRUST = {
    "auth": "only a caller that passed BASIC_AUTH_USER/PASS or AUTH_TOKEN",
    "never": "nobody: the environment alone names them",
    "always": "any caller (insecure unless only Label Studio can reach camsam)",
}
# Fields a job is never sent: the web side's own credentials.
_WEB_ONLY = ("basic_auth_user", "basic_auth_pass", "auth_token", "webhook_secret")


@dataclass(frozen=True)
class Settings:
    model_dir: str = "models"
    model_store: str = "local"  # local: MODEL_DIR is the record; redis: versions kept in Redis
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
    mask_gate: int = 1  # 1: a class's masks only above the threshold training chose; 0: always
    predict_timeout: float = 90.0
    predict_batch_size: int = defaults.PREDICT_BATCH_SIZE
    predict_inline_max_tasks: int = 0
    preannotate_chunk: int = 64  # tasks a bulk job: pre-annotation spreads over workers by these
    min_per_class: int = 5
    train_debounce: float = 10.0
    min_publish_interval: float = 0.0
    keep_versions: int = 5
    reconcile_seconds: float = 300.0
    train_lease: int = defaults.TRAIN_LEASE
    train_arch: str = ""
    train_epochs: int = defaults.Recipe.epochs
    train_finetune_epochs: int = defaults.FINETUNE_EPOCHS  # 0: as many as TRAIN_EPOCHS
    train_image_size: int = 0  # 0: chosen at the project's first training, then kept
    train_input: str = ""  # "": chosen likewise (worker.training.choose)
    train_budget: float = defaults.TRAIN_BUDGET  # minutes for a first training that chooses
    train_output_stride: int = defaults.Recipe.output_stride
    train_pretrained: str = ""
    train_groups: str = defaults.Recipe.groups  # the validation share's groups: auto, none, REGEX
    image_hosts: str = ""
    fetch_timeout: float = defaults.FETCH_TIMEOUT
    max_image_bytes: int = defaults.MAX_IMAGE_BYTES
    max_image_pixels: int = defaults.MAX_IMAGE_PIXELS
    max_work_side: int = defaults.MAX_WORK_SIDE
    webhook_rate: float = 20.0
    max_request_bytes: int = 16 * 1024 * 1024  # a /predict body of 10,000 tasks is ~2 MB
    max_tasks_per_request: int = 10_000
    max_projects: int = 1000  # projects a webhook may name (set up, or confirmed in Label Studio)
    setup_credentials: str = "auth"  # see SETUP_TRUST
    webhook_secret: str = ""  # when set, /webhook needs it in the X-Webhook-Secret header
    auth_token: str = ""
    basic_auth_user: str = ""
    basic_auth_pass: str = ""

    def __post_init__(self) -> None:
        if self.max_work_side < 0:
            raise ValueError(f"MAX_WORK_SIDE={self.max_work_side}: set 0 (full size) or a side")
        if self.preannotate_chunk < 1:
            raise ValueError(f"PREANNOTATE_CHUNK={self.preannotate_chunk}: set 1 task or more")
        if self.model_store not in ("local", "redis"):
            raise ValueError(
                f"MODEL_STORE={self.model_store!r}: set local (one MODEL_DIR, shared by every "
                "process) or redis (versions kept in Redis for workers on other hosts)"
            )
        if self.setup_credentials not in SETUP_TRUST:
            raise ValueError(
                f"SETUP_CREDENTIALS={self.setup_credentials!r}: set it to one of "
                f"{', '.join(SETUP_TRUST)} (auth: {SETUP_TRUST['auth']})"
            )

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

    @property
    def reaches_label_studio(self) -> bool:
        """Whether Label Studio's address and key are both known: what reading labels and
        writing predictions back need."""
        return bool(self.label_studio_url and self.label_studio_api_key)

    def with_label_studio(self, url: str, api_key: str) -> Settings:
        """Label Studio's address and key as a trusted ``/setup`` sent them, filling in only
        what the environment left unset (the environment always wins). A key goes only where
        it came from: where the environment names the address, a ``/setup`` key is taken only
        if ``/setup`` names that same address."""
        if self.label_studio_url:
            same = same_origin(self.label_studio_url, url)
            return replace(
                self, label_studio_api_key=self.label_studio_api_key or (api_key if same else "")
            )
        # The address comes from /setup: so does the key (the environment's never goes there).
        return replace(
            self, label_studio_url=url or "", label_studio_api_key=api_key if url else ""
        )

    def for_worker(self) -> dict:
        """What a job needs to know, as JSON for the queue; the worker never reads the web
        process's environment (and never sees the web side's own credentials)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _WEB_ONLY}

    @classmethod
    def from_payload(cls, values: Mapping[str, object]) -> Settings:
        """The typed settings a job was sent (``for_worker``'s dict); what it leaves out keeps
        its default, and a value of the wrong type is cast as the environment's would be.

        Raises:
            ValueError: a value that is not a number where one is needed.
        """
        known = {f.name: f for f in fields(cls)}
        typed = {}
        for name, value in {**values, **_host}.items():
            if name in known and value is not None:
                cast = _CASTS.get(known[name].type, str)
                try:
                    typed[name] = cast(value)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"setting {name}={value!r} is not a {known[name].type}"
                    ) from None
        return cls(**typed)


# What a worker's own environment says of its host, and wins over what a job was sent.
HOST_SETTINGS = (
    "model_dir",
    "label_studio_url",
    "label_studio_api_key",
    "local_files_document_root",
    "device",
)
_host: dict[str, str] = {}


def use_host_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Let this process's ``MODEL_DIR`` (and Label Studio's address and key, the local-files
    root, the device: ``HOST_SETTINGS``) win over those each job carries: a worker on another
    host keeps its models where its own disk has room (with ``MODEL_STORE=redis`` they come
    from Redis) and reaches Label Studio by another name. Called once by ``camsam worker``;
    returns what it took."""
    env = os.environ if env is None else env
    _host.clear()
    _host.update({k: env[k.upper()] for k in HOST_SETTINGS if env.get(k.upper())})
    return dict(_host)


def same_origin(a: str, b: str) -> bool:
    """Whether two Label Studio addresses are the same: scheme, host, port and path."""

    def key(url: str) -> tuple:
        try:
            parts = urlsplit(url.strip())
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        except ValueError:
            return ("", url)
        return parts.scheme.lower(), (parts.hostname or "").lower(), port, parts.path.rstrip("/")

    return bool(a and b) and key(a) == key(b)
