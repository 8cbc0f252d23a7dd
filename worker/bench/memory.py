"""``camsam bench --memory``: the peak memory one large image, and a batch of them, costs.

Each case runs in a fresh process that first loads the model and predicts one small image, so
its baseline includes the warm models. The figure is the growth of the peak resident set
(``VmHWM``, reset after the warm-up) over that baseline while the case runs the worker's own
steps, with the model's first class given so that every image gets a mask: decode at most
``MAX_WORK_SIDE`` per side (four decodes at a time, as the predict job's downloads), one
pipeline pass over the batch, and the brush RLE at the image's own size.
"""

from __future__ import annotations

import io
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from worker.contract.defaults import MAX_IMAGE_PIXELS, MAX_WORK_SIDE

CASES = (
    # (format, side, batch, max work side)
    ("JPEG", 9000, 1, MAX_WORK_SIDE),
    ("JPEG", 9000, 8, MAX_WORK_SIDE),
    ("PNG", 9000, 1, MAX_WORK_SIDE),
    ("PNG", 9000, 8, MAX_WORK_SIDE),
    ("JPEG", 9000, 1, 0),  # 0: the models work on the full size
)


def run_memory(model_dir: str | None = None) -> list[dict]:
    """The memory figures for ``model_dir``'s model, or for a small one trained here."""
    import shutil
    import tempfile

    from worker.bench.pipeline import train_small_model

    work = Path(tempfile.mkdtemp(prefix="camsam-bench-"))
    try:
        models = Path(model_dir) if model_dir else train_small_model(work, "cpu")
        return memory_figures(models)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def memory_figures(models: Path, cases=CASES) -> list[dict]:
    """One row per case: ``peak_growth_mb``, ``seconds``, masks written and RLE bytes."""
    context = multiprocessing.get_context("spawn")
    rows = []
    for fmt, side, batch, work_side in cases:
        with context.Pool(1) as pool:
            row = pool.apply(_case, (str(models), fmt, side, batch, work_side))
        rows.append({"format": fmt, "side": side, "batch": batch, "work_side": work_side, **row})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["memory per image (peak RSS growth over a warm worker):"]
    for row in rows:
        work = row["work_side"] or "full size"
        lines.append(
            f"  {row['format']:<4} {row['side']}x{row['side']} x{row['batch']} "
            f"(work side {work}): +{row['peak_growth_mb']:.0f} MB, {row['seconds']:.1f} s, "
            f"{row['masks']} masks, RLE {row['rle_kb']:.0f} kB"
        )
    return "\n".join(lines)


def large_image(fmt: str, side: int, height: int = 0, orientation: int = 1) -> bytes:
    """A ``side`` x ``side`` (or ``height``) defect image encoded as ``fmt``, stored with an EXIF
    ``orientation``: a small synthetic one scaled up."""
    from PIL import Image

    from worker.data.synthetic import make_image

    small, _ = make_image(np.random.default_rng(0), "Scratch", (512, 512))
    image = Image.fromarray(small).resize((side, height or side), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"quality": 90} if fmt == "JPEG" else {"compress_level": 1}
    encoded = io.BytesIO()
    image.save(encoded, fmt, exif=exif.tobytes(), **options)
    return encoded.getvalue()


def _case(models: str, fmt: str, side: int, batch: int, work_side: int) -> dict:
    from worker.contract.store import ModelDir
    from worker.data.images import read_image
    from worker.labelstudio.results import to_prediction
    from worker.pipeline.pipeline import Pipeline

    encoded = large_image(fmt, side)
    pipeline = Pipeline.build(ModelDir(models).current_path())
    label = pipeline.classifier.spec.mask_classes[0]  # the class given: every image gets a mask
    small = read_image(large_image("PNG", 256))
    to_prediction(pipeline.run(small.pixels, [label]), pipeline.version, size=small.size)
    baseline = _reset_peak()
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        images = list(
            pool.map(lambda _: read_image(encoded, MAX_IMAGE_PIXELS, work_side), range(batch))
        )
    results = pipeline.run_batch([image.pixels for image in images], [[label]] * batch)
    predictions = [
        to_prediction(result, pipeline.version, size=image.size)
        for image, result in zip(images, results, strict=True)
    ]
    regions = [r for p in predictions for r in p["result"] if r["type"] == "brushlabels"]
    return {
        "peak_growth_mb": _peak_mb() - baseline,
        "seconds": time.perf_counter() - started,
        "masks": len(regions),
        "rle_kb": sum(len(r["value"]["rle"]) for r in regions) / 1024,
        "encoded_mb": len(encoded) / 2**20,
    }


def _reset_peak() -> float:
    """Reset this process's peak resident set to its current one (Linux); returns it in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    """This process's peak resident set since the last reset (Linux ``VmHWM``), in MB."""
    return _status_mb("VmHWM")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status: the memory bench needs Linux")
