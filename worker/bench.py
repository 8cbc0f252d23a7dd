"""``camsam bench``: what each stage costs, and how close the pipeline is to its bare models.

Measured in one run on the same images, as medians, so the ratios hold on a noisy machine:

- stages: image decode, classifier forward, Grad-CAM, prompts, SAM2 embedding, SAM2 decode per
  class, refinement, RLE;
- ``overhead_ratio``: end-to-end pre-annotation time per image over the bare models' time
  (``sam2``: SAM2 ``set_image`` + classifier forward and backward; ``cam``, whose refinement is
  part of the pipeline: the classifier's forward and the Grad-CAM pass alone);
- ``click_ratio``: the worker's decode on a cached embedding over a bare SAM2 decode, with the
  end-to-end click latency through the web app beside it;
- ``images_per_s``: batched pipeline throughput, and its ratio to one image at a time;
- ``queue_roundtrip_ms_p50`` and ``web_rss_mb`` (Redis mode; needs ``redis-server``);
- training: one epoch of camsam's loop over a bare timm loop on the same tensors.

SAM2 runs with random weights (its speed does not depend on them); without pretrained weights
anywhere, the classifier is a small one trained here on synthetic images.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SAM2_TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: lazy init, allocator, caches
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def run_bench(
    device: str = "cpu",
    images: int = 8,
    size: int = 512,
    sam2_config: str = SAM2_TINY,
    model_dir: str | None = None,
    repeat: int = 3,
) -> dict:
    import torch

    from worker.classify import resolve_device

    device = resolve_device(device)
    work = Path(tempfile.mkdtemp(prefix="camsam-bench-"))
    try:
        models = Path(model_dir) if model_dir else _train_small_model(work, device)
        pictures = _images(images, size)
        report: dict = {"device": device, "images": images, "image_size": size}
        report["torch_threads"] = torch.get_num_threads()
        report.update(_pipeline_figures(models, pictures, sam2_config, device, repeat))
        report.update(_training_figures(work, device))
        report.update(_service_figures(models, pictures[0], work))
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _train_small_model(work: Path, device: str) -> Path:
    from worker.checkpoint import ModelDir
    from worker.dataset import load_dataset
    from worker.synthetic import write_dataset
    from worker.train import TrainConfig, train

    data = load_dataset(write_dataset(work / "data", per_class=12), background_classes=["Clean"])
    config = TrainConfig(image_size=128, epochs=3, batch_size=16, device=device, progress=False)
    result = train(data, config)
    ModelDir(work / "models").publish(result.spec, result.state_dict)
    return work / "models"


def _images(count: int, size: int) -> list[np.ndarray]:
    from worker.synthetic import make_image

    rng = np.random.default_rng(0)
    kinds = ("Spot", "Scratch")
    return [make_image(rng, kinds[k % 2], (size, size))[0] for k in range(count)]


def _pipeline_figures(models: Path, images, sam2_config: str, device: str, repeat: int) -> dict:
    import cv2
    import torch

    from worker.cam import compute_cams
    from worker.checkpoint import ModelDir
    from worker.images import load_image
    from worker.ls_format import to_prediction
    from worker.pipeline import Pipeline
    from worker.prompts import make_prompts
    from worker.segment import CamSegmenter, Sam2Segmenter

    path = ModelDir(models).current_path()
    cam_pipeline = Pipeline.build(path, segmenter="cam", device=device)
    classifier = cam_pipeline.classifier
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(build_sam2(sam2_config, None, device=device))
    sam2 = Sam2Segmenter(predictor, cache_size=0)
    sam2_pipeline = Pipeline(classifier, sam2, cam_pipeline.options)
    image = images[0]
    label = classifier.spec.mask_classes[0]
    encoded = cv2.imencode(".png", image[:, :, ::-1])[1].tobytes()
    (cam,) = compute_cams(classifier, image, [label])
    prompts = make_prompts(cam.cam)
    result = cam_pipeline.run(image, labels=[label])

    def forward_backward():
        batch = classifier.to_tensor([image]).requires_grad_(True)
        with torch.enable_grad():
            classifier.model(batch)[0, 0].backward()
        classifier.model.zero_grad(set_to_none=True)

    def bare_decode():
        with torch.inference_mode():
            predictor.predict(prompts.points, prompts.labels, prompts.box, multimask_output=True)

    with torch.inference_mode():
        predictor.set_image(image)
    cheap = 5 * repeat  # stages of milliseconds need more samples for a steady median
    stages = {
        "decode": median_ms(lambda: load_image(encoded), cheap),
        "classifier_forward": median_ms(lambda: classifier.probabilities([image]), cheap),
        "gradcam": median_ms(lambda: compute_cams(classifier, image, [label]), cheap),
        "prompts": median_ms(lambda: make_prompts(cam.cam), cheap),
        "sam2_decode_per_class": median_ms(bare_decode, cheap),
        "refinement": median_ms(lambda: CamSegmenter().segment(image, [cam], [prompts]), cheap),
        "rle": median_ms(lambda: to_prediction(result, "v"), cheap),
    }
    embed = median_ms(lambda: predictor.set_image(image), repeat)
    stages["sam2_embedding"] = embed
    classifier_fb = median_ms(forward_backward, cheap)
    stages["classifier_forward_backward"] = classifier_fb

    def per_image(pipeline, batched: bool) -> float:
        """Every image pre-annotated with one masked class, the work a defect image costs."""

        def run():
            if batched:
                pipeline.run_batch(images, labels=[[label]] * len(images))
            else:
                for picture in images:
                    pipeline.run(picture, labels=[label])

        return median_ms(run, max(1, repeat // 2)) / len(images)

    figures: dict = {"stages_ms": {k: round(v, 3) for k, v in stages.items()}}
    for name, pipeline, bare in (
        ("cam", cam_pipeline, stages["classifier_forward"] + stages["gradcam"]),
        ("sam2", sam2_pipeline, embed + classifier_fb),
    ):
        single, batched = per_image(pipeline, False), per_image(pipeline, True)
        figures[name] = {
            "end_to_end_ms_per_image": round(single, 2),
            "bare_models_ms_per_image": round(bare, 2),
            "overhead_ratio": round(single / bare, 3),
            "images_per_s": round(1000 / batched, 2),
            "batched_over_single": round(single / batched, 3),
        }
    cached = Sam2Segmenter(predictor, cache_size=4)
    cached.segment(image, [cam], [prompts])
    click = median_ms(lambda: cached.segment(image, [cam], [prompts]), cheap)
    figures["click"] = {
        "cached_decode_ms": round(click, 3),
        "bare_decode_ms": round(stages["sam2_decode_per_class"], 3),
        "click_ratio": round(click / stages["sam2_decode_per_class"], 3),
    }
    figures["overhead_ratio"] = figures["sam2"]["overhead_ratio"]
    figures["click_ratio"] = figures["click"]["click_ratio"]
    figures["images_per_s"] = figures["sam2"]["images_per_s"]
    return figures


def _training_figures(work: Path, device: str) -> dict:
    """One epoch of camsam's training loop (two epochs' time less one's: the decoding, set-up
    and the final copy cancel out) over a bare timm loop of as many steps on the same tensors."""
    import torch

    from worker.classify import create_model, normalise
    from worker.dataset import load_dataset
    from worker.synthetic import write_dataset
    from worker.train import MIN_STEPS_PER_EPOCH, TrainConfig, _tensors, train

    data = load_dataset(write_dataset(work / "train", per_class=32), background_classes=["Clean"])
    timings = {}
    for epochs in (1, 2):
        config = TrainConfig(
            image_size=128, epochs=epochs, device=device, progress=False, tune_masks=False
        )
        started = time.perf_counter()
        result = train(data, config)
        timings[epochs] = time.perf_counter() - started
    ours = timings[2] - timings[1]
    x, y = _tensors(list(data.samples), result.spec, progress=False)
    model = create_model(config.arch, len(data.classes), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps = max(int(0.85 * len(x)) // config.batch_size, MIN_STEPS_PER_EPOCH)
    started = time.perf_counter()
    for _ in range(steps):
        index = torch.randint(0, len(x), (config.batch_size,))
        batch = normalise(x[index], result.spec).to(device)
        loss = loss_fn(model(batch), y[index].argmax(1).to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    bare = time.perf_counter() - started
    return {
        "training": {
            "epoch_s": round(ours, 3),
            "bare_epoch_s": round(bare, 3),
            "epoch_ratio": round(ours / bare, 3),
        }
    }


def _service_figures(models: Path, image: np.ndarray, work: Path) -> dict:
    """Queue round trip, HTTP pre-annotation latency and the web process's memory, against a
    redis-server, a ``camsam worker`` and a ``camsam serve`` started here."""
    import cv2
    import requests

    from ml_backend.runner import RqRunner

    figures: dict = {"queue_roundtrip_ms_p50": None, "web_rss_mb": None}
    if shutil.which("redis-server") is None:
        figures["service_note"] = "redis-server not installed: queue and web figures skipped"
        return figures
    redis_port, web_port = _free_port(), _free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    cv2.imwrite(str(work / "bench.png"), image[:, :, ::-1])
    env = {**_env(), "REDIS_URL": url, "MODEL_DIR": str(models)}
    env["LOCAL_FILES_DOCUMENT_ROOT"] = str(work)
    cli = [sys.executable, "-m", "worker.cli"]
    processes = [
        subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
    ]
    try:
        time.sleep(0.5)
        for command in (
            [*cli, "worker", "--name", "bench"],
            [*cli, "serve", "--host", "127.0.0.1", "--port", str(web_port), "--workers", "1"],
        ):
            processes.append(
                subprocess.Popen(
                    command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        runner = RqRunner(url)
        runner.run("worker.bench.noop", {}, 120)
        trips = [_timed(lambda: runner.run("worker.bench.noop", {}, 60)) for _ in range(50)]
        figures["queue_roundtrip_ms_p50"] = round(statistics.median(trips), 2)
        web = f"http://127.0.0.1:{web_port}"
        body = {
            "tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=bench.png"}}],
            "project": "1.1",
            "label_config": "",
        }
        _wait_http(web + "/health")
        requests.post(web + "/predict", json=body, timeout=120)  # the worker loads its models
        latencies = [
            _timed(lambda: requests.post(web + "/predict", json=body, timeout=120))
            for _ in range(10)
        ]
        figures["http_predict_ms_p50"] = round(statistics.median(latencies), 2)
        serving = _children(processes[2].pid) or [processes[2].pid]
        figures["web_rss_mb"] = round(max(_rss_mb(pid) for pid in serving), 1)
        figures["web_loads_torch"] = any(_maps_torch(pid) for pid in serving)
    finally:
        for process in processes[::-1]:
            process.terminate()
            process.wait(timeout=20)
    return figures


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - started)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str) -> None:
    import requests

    for _ in range(300):
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            time.sleep(0.2)


def _children(pid: int) -> list[int]:
    found = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(x) for x in path.read_text().split()]
    return found


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def noop(payload: dict) -> dict:
    """A job that does nothing: the queue's own round trip."""
    return {}


def _env() -> dict:
    import os

    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def format_report(report: dict) -> str:
    lines = [
        f"camsam bench on {report['device']} ({report['images']} images, "
        f"{report['image_size']} px, {report['torch_threads']} torch threads)"
    ]
    lines.append(
        "stages (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in report["stages_ms"].items())
    )
    for name in ("cam", "sam2"):
        row = report[name]
        lines.append(
            f"{name}: {row['end_to_end_ms_per_image']:.1f} ms/image vs bare models "
            f"{row['bare_models_ms_per_image']:.1f} -> overhead_ratio {row['overhead_ratio']:.2f}; "
            f"batched {row['images_per_s']:.2f} images/s ({row['batched_over_single']:.2f}x one "
            "at a time)"
        )
    click = report["click"]
    lines.append(
        f"click: cached decode {click['cached_decode_ms']:.1f} ms vs bare SAM2 decode "
        f"{click['bare_decode_ms']:.1f} -> click_ratio {click['click_ratio']:.2f}"
    )
    training = report["training"]
    lines.append(
        f"training: epoch {training['epoch_s']:.1f} s vs bare timm loop "
        f"{training['bare_epoch_s']:.1f} s -> {training['epoch_ratio']:.2f}"
    )
    lines.append(
        f"queue round trip p50 {report['queue_roundtrip_ms_p50']} ms; /predict over HTTP p50 "
        f"{report.get('http_predict_ms_p50')} ms; web RSS {report['web_rss_mb']} MB "
        f"(torch loaded: {report.get('web_loads_torch')})"
    )
    return "\n".join(lines)
