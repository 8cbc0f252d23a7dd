"""``camsam bench``: what each stage costs, and how close the pipeline is to its bare models.

Measured in one run on the same images, as medians, so the ratios hold on a noisy machine:

- stages: image decode, classifier forward, Grad-CAM, prompts, SAM2 embedding, SAM2 decode per
  class, refinement, RLE;
- ``overhead_ratio``: end-to-end pre-annotation time per image over the bare models' time
  (``sam2``: SAM2 ``set_image`` + classifier forward and backward; ``cam`` and ``cam_contrast``
  (the checkpoint's refiners, or the hand-made contrast refiner), whose refinement is
  part of the pipeline: the classifier's forward and pytorch-grad-cam's ``GradCAM`` alone; the
  pipeline's own Grad-CAM shares the forward pass and backpropagates through the head only, so
  its figure is timed beside the library's);
- ``click_ratio``: the worker's decode on a cached embedding over a bare SAM2 decode, with the
  end-to-end click latency through the web app beside it; without SAM2, a click answered by
  the click model and by the focused CAM (``stages``);
- ``images_per_s``: batched pipeline throughput, and its ratio to one image at a time;
- ``queue_roundtrip_ms_p50`` and ``web_rss_mb`` (Redis mode; needs ``redis-server``);
- training: one epoch of camsam's loop over a bare timm loop on the same tensors.

SAM2 runs with random weights (its speed does not depend on them); without pretrained weights
anywhere, the classifier is a small one trained here on synthetic images.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAM2_TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
SAM2_BASE_PLUS = "configs/sam2.1/sam2.1_hiera_b+.yaml"


def median_ms(
    fn: Callable[[], object], repeat: int, sync: Callable[[], None] | None = None
) -> float:
    """Median wall time of ``fn`` after one warm-up call; ``sync`` waits for queued GPU work."""
    sync = sync or (lambda: None)
    fn()  # warm-up: lazy init, allocator, caches
    sync()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def run_bench(
    device: str = "cpu",
    images: int = 8,
    size: int = 512,
    sam2_configs: Sequence[str] | None = None,
    model_dir: str | None = None,
    repeat: int = 3,
    project: str | None = None,
    *,
    queue_runner: Callable[[str], object],
) -> dict:
    """Every figure in one run. ``sam2_configs``: the first gives the stage and ratio figures,
    each adds its throughput (default: hiera-tiny, and on a GPU also base-plus). ``project``:
    also time ``preannotate`` over that Label Studio project. ``queue_runner``: see
    ``service_figures``."""
    import torch

    from worker.bench.service import preannotate_figures, service_figures
    from worker.pipeline.classifier import resolve_device

    device = resolve_device(device)
    if not sam2_configs:
        sam2_configs = [SAM2_TINY, SAM2_BASE_PLUS] if device.startswith("cuda") else [SAM2_TINY]
    work = Path(tempfile.mkdtemp(prefix="camsam-bench-"))
    try:
        models = Path(model_dir) if model_dir else train_small_model(work, device)
        pictures = _images(images, size)
        report: dict = {"device": device, "images": images, "image_size": size}
        report["torch_threads"] = torch.get_num_threads()
        report.update(_pipeline_figures(models, pictures, sam2_configs, device, repeat))
        report.update(_training_figures(work, device))
        report.update(service_figures(models, pictures[0], work, queue_runner))
        if project is not None:
            report["preannotate"] = preannotate_figures(project)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sync(device: str) -> Callable[[], None] | None:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else None


def train_small_model(work: Path, device: str) -> Path:
    from worker.contract.store import ModelDir
    from worker.data.dataset import load_dataset
    from worker.data.synthetic import write_dataset
    from worker.pipeline.checkpoint import publish
    from worker.training.classifier import TrainConfig, train

    data = load_dataset(write_dataset(work / "data", per_class=12), background_classes=["Clean"])
    config = TrainConfig(image_size=128, epochs=3, batch_size=16, device=device, progress=False)
    result = train(data, config)
    publish(ModelDir(work / "models"), result.spec, result.state_dict)
    return work / "models"


def bare_forward(classifier, image: np.ndarray) -> None:
    """The classifier's one forward pass, as the bare model (no mirrored pass, no decision)."""
    import torch

    with torch.inference_mode():
        classifier.model(classifier.to_tensor([image]))


def _images(count: int, size: int) -> list[np.ndarray]:
    from worker.data.synthetic import make_image

    rng = np.random.default_rng(0)
    kinds = ("Spot", "Scratch")
    return [make_image(rng, kinds[k % 2], (size, size))[0] for k in range(count)]


@dataclass
class _Scene:
    """What the pipeline timings share: the images, the class masked in each, the GPU sync, and
    how many samples a median takes."""

    images: list[np.ndarray]
    label: str
    sync: Callable[[], None] | None
    repeat: int

    @property
    def cheap(self) -> int:
        return 5 * self.repeat  # stages of milliseconds need more samples for a steady median

    def per_image(self, pipeline, batched: bool, samples: int) -> float:
        """Every image pre-annotated with one masked class, the work a defect image costs."""

        def run():
            if batched:
                pipeline.run_batch(self.images, labels=[[self.label]] * len(self.images))
            else:
                for picture in self.images:
                    pipeline.run(picture, labels=[self.label])

        return median_ms(run, samples, self.sync) / len(self.images)

    def pipeline_row(self, pipeline, bare: float, samples: int) -> dict:
        single = self.per_image(pipeline, False, samples)
        batched = self.per_image(pipeline, True, samples)
        return {
            "end_to_end_ms_per_image": round(single, 2),
            "bare_models_ms_per_image": round(bare, 2),
            "overhead_ratio": round(single / bare, 3),
            "images_per_s": round(1000 / batched, 2),
            "batched_over_single": round(single / batched, 3),
        }


def _pipeline_figures(
    models: Path, images, sam2_configs: Sequence[str], device: str, repeat: int
) -> dict:
    from worker.contract.store import ModelDir
    from worker.pipeline.cam.base import compute_cams
    from worker.pipeline.pipeline import Pipeline
    from worker.pipeline.prompts import make_prompts

    checkpoint = ModelDir(models).current_path()
    cam_pipeline = Pipeline.build(checkpoint, segmenter="cam", device=device)
    # ``cam`` refines as the checkpoint says (the learned refiner where training had masks);
    # ``cam_contrast`` with the hand-made contrast refiner, the fast choice (``--refiner``).
    contrast = Pipeline.build(checkpoint, segmenter="cam", refiner="contrast", device=device)
    classifier = cam_pipeline.classifier
    scene = _Scene(images, classifier.spec.mask_classes[0], _sync(device), repeat)
    (cam,) = compute_cams(classifier, images[0], [scene.label])
    prompts = make_prompts(cam.cam)
    stages = _stage_figures(scene, cam_pipeline, contrast, cam, prompts)
    bare_cam = stages["classifier_forward"] + stages["gradcam_pytorch_grad_cam"]
    figures: dict = {
        "cam": scene.pipeline_row(cam_pipeline, bare_cam, scene.cheap),
        "cam_contrast": scene.pipeline_row(contrast, bare_cam, scene.cheap),
    }
    # Against camsam's own one-pass classifier + Grad-CAM: what prompts, refinement and the
    # result cost on top of the models.
    own = stages["gradcam"]
    for name in ("cam", "cam_contrast"):
        row = figures[name]
        row["one_pass_cam_ms_per_image"] = round(own, 2)
        row["over_one_pass_cam"] = round(row["end_to_end_ms_per_image"] / own, 3)
    figures.update(_sam2_figures(scene, cam_pipeline, cam, prompts, sam2_configs, stages, device))
    figures["stages_ms"] = {k: round(v, 3) for k, v in stages.items()}
    figures["overhead_ratio"] = figures["sam2"]["overhead_ratio"]
    figures["click_ratio"] = figures["click"]["click_ratio"]
    figures["images_per_s"] = figures["sam2"]["images_per_s"]
    return figures


def _stage_figures(scene: _Scene, cam_pipeline, contrast, cam, prompts) -> dict[str, float]:
    """Each stage alone on the first image, and the bare classifier and library Grad-CAM."""
    import cv2
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from worker.data.images import load_image
    from worker.labelstudio.results import to_prediction
    from worker.pipeline.cam.base import compute_cams, target_layers
    from worker.pipeline.pipeline import Pipeline
    from worker.pipeline.prompts import Prompts, make_prompts

    classifier, image, label = cam_pipeline.classifier, scene.images[0], scene.label
    encoded = cv2.imencode(".png", image[:, :, ::-1])[1].tobytes()
    # RLE costs what the mask holds: time it on one the contrast refiner always draws.
    result = contrast.run(image, labels=[label])
    layers, reshape = target_layers(classifier.model)
    library_cam = GradCAM(classifier.model, layers, reshape_transform=reshape)
    target = [ClassifierOutputTarget(classifier.spec.classes.index(label))]

    def library_gradcam():
        with torch.enable_grad():
            library_cam(input_tensor=classifier.to_tensor([image]), targets=target)
        classifier.model.zero_grad(set_to_none=True)

    def forward_backward():
        batch = classifier.to_tensor([image]).requires_grad_(True)
        with torch.enable_grad():
            classifier.model(batch)[0, 0].backward()
        classifier.model.zero_grad(set_to_none=True)

    cheap, sync = scene.cheap, scene.sync
    stages = {
        "decode": median_ms(lambda: load_image(encoded), cheap),
        "classifier_forward": median_ms(lambda: bare_forward(classifier, image), cheap, sync),
        "gradcam": median_ms(lambda: compute_cams(classifier, image, [label]), cheap, sync),
        "gradcam_pytorch_grad_cam": median_ms(library_gradcam, cheap, sync),
        "prompts": median_ms(lambda: make_prompts(cam.cam), cheap),
        "refinement": median_ms(
            lambda: cam_pipeline.segmenter.segment(image, [cam], [prompts]), cheap
        ),
        "rle": median_ms(lambda: to_prediction(result, "v"), cheap),
        "classifier_forward_backward": median_ms(forward_backward, cheap, sync),
    }
    # A person's click without SAM2: the click model training fitted, and the focused CAM
    # that answers where a checkpoint has none.
    row, column = np.unravel_index(int(np.argmax(cam.cam)), cam.cam.shape)
    point = Prompts(np.array([[column, row]], np.float32), np.ones(1, np.int32))
    segmenter = cam_pipeline.segmenter
    if segmenter.clicker is not None:  # a checkpoint trained with masks has one
        stages["click_model"] = median_ms(
            lambda: cam_pipeline.segment_prompted(image, label, point), cheap
        )
    own = (segmenter.default, segmenter.per_class, segmenter.learned)
    without = Pipeline(classifier, type(segmenter)(*own), cam_pipeline.options)  # no click model
    stages["click_focused_cam"] = median_ms(
        lambda: without.segment_prompted(image, label, point), cheap, sync
    )
    library_cam.activations_and_grads.release()
    return stages


def _sam2_figures(
    scene: _Scene, cam_pipeline, cam, prompts, configs: Sequence[str], stages: dict, device: str
) -> dict:
    """Per SAM2 config, the pipeline against bare ``set_image`` + classifier forward and
    backward; for the first, also its stages (added to ``stages``) and the cached click."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from worker.pipeline.pipeline import Pipeline
    from worker.pipeline.segmenters.sam2 import (
        Sam2Segmenter,
        answers_with_three,
        sam2_context,
        sam2_precision,
    )

    image, cheap, sync = scene.images[0], scene.cheap, scene.sync
    # On a CPU a SAM2 pass takes seconds, so few samples; on a GPU milliseconds, where one
    # sample is noise.
    heavy = max(1, scene.repeat // 2) if device == "cpu" else cheap
    figures: dict = {"sam2_configs": {}}
    for number, config in enumerate(configs):
        predictor = SAM2ImagePredictor(build_sam2(config, None, device=device))

        def bare_embed(predictor=predictor):
            with sam2_context(device):
                predictor.set_image(image)

        def bare_decode(predictor=predictor):
            with sam2_context(device):
                predictor.predict(
                    prompts.points,
                    prompts.labels,
                    prompts.box,
                    multimask_output=answers_with_three(prompts),
                )

        embed = median_ms(bare_embed, scene.repeat if device == "cpu" else cheap, sync)
        decode = median_ms(bare_decode, cheap, sync)  # on the image bare_embed left set
        sam2_pipeline = Pipeline(
            cam_pipeline.classifier, Sam2Segmenter(predictor, cache_size=0), cam_pipeline.options
        )
        bare = embed + stages["classifier_forward_backward"]
        row = scene.pipeline_row(sam2_pipeline, bare, heavy)
        row["bare_sam2_images_per_s"] = round(1000 / embed, 2)
        row["precision"] = sam2_precision(device)
        # The pipeline decodes once per masked class; bare ``set_image`` leaves that out, a
        # sliver of an embedding on a CPU and a fifth of the models' time on a GPU.
        with_decode = bare + decode
        row["bare_with_decode_ms_per_image"] = round(with_decode, 2)
        row["over_models_with_decode"] = round(row["end_to_end_ms_per_image"] / with_decode, 3)
        figures["sam2_configs"][config] = row
        if number == 0:
            stages["sam2_embedding"], stages["sam2_decode_per_class"] = embed, decode
            figures["sam2"] = row
            cached = Sam2Segmenter(predictor, cache_size=4)
            cached.segment(image, [cam], [prompts])
            click = median_ms(lambda c=cached: c.segment(image, [cam], [prompts]), cheap, sync)
            figures["click"] = {
                "cached_decode_ms": round(click, 3),
                "bare_decode_ms": round(decode, 3),
                "click_ratio": round(click / decode, 3),
            }
        del predictor, sam2_pipeline
    return figures


def _training_figures(work: Path, device: str) -> dict:
    """One epoch of camsam's training loop (the time of 1 + ``extra`` epochs less one's, over
    ``extra``: the decoding, set-up and the final copy cancel out) over a bare timm loop of as
    many steps on the same tensors. On a GPU an epoch here is a tenth of a second, below the
    set-up's noise, so there the difference spans more epochs."""
    import torch

    from worker.data.dataset import load_dataset
    from worker.data.synthetic import write_dataset
    from worker.pipeline.classifier import create_model, normalise
    from worker.training.classifier import MIN_STEPS_PER_EPOCH, TrainConfig, _tensors, train

    data = load_dataset(write_dataset(work / "train", per_class=32), background_classes=["Clean"])
    extra = 1 if device == "cpu" else 8
    timings = {}
    for epochs in (1, 1 + extra):
        config = TrainConfig(  # no hub probe or grouping: set-up the second run would skip
            image_size=128,
            epochs=epochs,
            device=device,
            progress=False,
            tune_masks=False,
            pretrained="none",
            groups="none",
        )
        started = time.perf_counter()
        result = train(data, config)
        timings[epochs] = time.perf_counter() - started
    ours = (timings[1 + extra] - timings[1]) / extra
    x, y = _tensors(list(data.samples), result.spec, progress=False)
    model = create_model(config.arch, len(data.classes), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps = max(int(0.85 * len(x)) // config.batch_size, MIN_STEPS_PER_EPOCH)

    def step() -> None:
        index = torch.randint(0, len(x), (config.batch_size,))
        batch = normalise(x[index], result.spec).to(device)
        loss = loss_fn(model(batch), y[index].argmax(1).to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # the first step builds what later ones reuse; training's epochs start warm too
    sync = _sync(device)
    started = time.perf_counter()
    for _ in range(steps * extra):
        step()
    if sync:
        sync()
    bare = (time.perf_counter() - started) / extra
    return {
        "training": {
            "epoch_s": round(ours, 3),
            "bare_epoch_s": round(bare, 3),
            "epoch_ratio": round(ours / bare, 3),
        }
    }


def format_report(report: dict) -> str:
    lines = [
        f"camsam bench on {report['device']} ({report['images']} images, "
        f"{report['image_size']} px, {report['torch_threads']} torch threads)"
    ]
    lines.append(
        "stages (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in report["stages_ms"].items())
    )
    rows = {"cam": report["cam"], "cam_contrast": report["cam_contrast"], **report["sam2_configs"]}
    for name, row in rows.items():
        lines.append(
            f"{name}: {row['end_to_end_ms_per_image']:.1f} ms/image vs bare models "
            f"{row['bare_models_ms_per_image']:.1f} -> overhead_ratio {row['overhead_ratio']:.2f}; "
            f"batched {row['images_per_s']:.2f} images/s ({row['batched_over_single']:.2f}x one "
            "at a time)"
        )
    for name, row in report["sam2_configs"].items():
        lines.append(
            f"{name}: against the bare models with one SAM2 decode per class "
            f"({row['bare_with_decode_ms_per_image']:.1f} ms): {row['over_models_with_decode']:.2f}"
        )
    cam, fast = report["cam"], report["cam_contrast"]
    lines.append(
        f"cam over its own one-pass classifier + Grad-CAM ({cam['one_pass_cam_ms_per_image']:.1f} "
        f"ms): {cam['over_one_pass_cam']:.2f}; with the contrast refiner "
        f"{fast['over_one_pass_cam']:.2f}"
    )
    click = report["click"]
    lines.append(
        f"click: cached decode {click['cached_decode_ms']:.1f} ms vs bare SAM2 decode "
        f"{click['bare_decode_ms']:.1f} -> click_ratio {click['click_ratio']:.2f}"
    )
    stages = report["stages_ms"]
    lines.append(
        f"click without SAM2: the click model {stages.get('click_model', float('nan')):.1f} ms, "
        f"the focused CAM {stages['click_focused_cam']:.1f} ms"
    )
    training = report["training"]
    lines.append(
        f"training: epoch {training['epoch_s']:.2f} s vs bare timm loop "
        f"{training['bare_epoch_s']:.2f} s -> {training['epoch_ratio']:.2f}"
    )
    lines.append(
        f"queue round trip p50 {report['queue_roundtrip_ms_p50']} ms; /predict over HTTP p50 "
        f"{report.get('http_predict_ms_p50')} ms; web RSS {report['web_rss_mb']} MB "
        f"(torch loaded: {report.get('web_loads_torch')})"
    )
    if "preannotate" in report:
        pre = report["preannotate"]
        lines.append(
            f"preannotate: {pre['tasks']} tasks in {pre['seconds']} s, {pre['images_per_s']} "
            f"images/s ({pre['written']} written, {pre['failed']} failed); the pipeline alone "
            f"{pre.get('pipeline_images_per_s')} images/s"
        )
    return "\n".join(lines)
