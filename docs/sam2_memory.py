"""The resident memory SAM2 costs a worker process: two projects, then a new version of one.

    .venv/bin/python docs/sam2_memory.py [--config configs/sam2.1/sam2.1_hiera_b+.yaml]

Random SAM2 weights (their size is what counts) and two tiny classifiers trained here on the
synthetic set; every pipeline is built the way a worker builds it (``load_pipeline``) and predicts
the same 8 images at 256 px. Prints RSS (MB) after each step as JSON. The figures in
docs/performance.md ("SAM2 memory") come from this script, run against the code before and after
the SAM2 segmenter became one per process (``PYTHONPATH`` pointing at each checkout).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import tempfile
from pathlib import Path

import numpy as np
import torch


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/sam2.1/sam2.1_hiera_t.yaml")
    args = parser.parse_args()

    from sam2.build_sam import build_sam2

    from worker.contract.settings import Settings
    from worker.contract.store import ModelDir
    from worker.data.dataset import load_dataset
    from worker.data.synthetic import make_image, write_dataset
    from worker.jobs.predict import load_pipeline
    from worker.pipeline.checkpoint import publish
    from worker.training.classifier import TrainConfig, train

    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="sam2-memory-"))
    checkpoint = root / "sam2_random.pt"
    model = build_sam2(args.config, None, device="cpu")
    torch.save({"model": model.state_dict()}, checkpoint)
    del model
    dataset = load_dataset(write_dataset(root / "data", per_class=6), background_classes=["Clean"])
    config = TrainConfig(image_size=64, epochs=1, batch_size=8, progress=False, pretrained="none")
    projects = {name: ModelDir(root / "models" / name) for name in ("a", "b")}
    for models in projects.values():
        result = train(dataset, config)
        publish(models, result.spec, result.state_dict)
    rng = np.random.default_rng(1)
    images = [make_image(rng, "Spot", (256, 256))[0] for _ in range(8)]
    settings = Settings.from_env(
        {"SAM2_CONFIG": args.config, "SAM2_CHECKPOINT": str(checkpoint), "DEVICE": "cpu"}
    )
    gc.collect()
    import worker

    figures = {"code": str(Path(worker.__file__).parent.parent), "config": args.config}
    figures["start"] = rss_mb()

    def predict(models: ModelDir) -> None:
        pipeline = load_pipeline(models, models.current_version(), settings)
        pipeline.run_batch(images, [["Spot"]] * len(images))

    predict(projects["a"])
    figures["project_a"] = rss_mb()
    predict(projects["b"])
    figures["projects_a_and_b"] = rss_mb()
    result = train(dataset, config)
    publish(projects["a"], result.spec, result.state_dict)
    gc.collect()
    predict(projects["a"])
    gc.collect()
    figures["after_a_new_version_of_a"] = rss_mb()
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
