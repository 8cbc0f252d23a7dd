"""``camsam`` commands for running the service: serve, worker, preannotate, versions, rollback."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from worker.contract.errors import CamsamError


def add_service_commands(commands) -> None:
    serve = commands.add_parser("serve", help="run the Label Studio ML backend (waitress)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=9090)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--threads", type=int, default=4)
    serve.add_argument("--model-dir", help="sets MODEL_DIR: models/<project id>/ or one model")
    serve.set_defaults(handler=run_serve)

    worker = commands.add_parser("worker", help="run a worker for the backend's Redis queues")
    worker.add_argument("--redis-url", help="default: REDIS_URL")
    worker.add_argument("--burst", action="store_true", help="stop when the queues are empty")
    worker.add_argument("--name", help="unique worker name (default: camsam-<host>-<pid>)")
    worker.add_argument(
        "--role",
        choices=("predict", "train", "all"),
        default="predict",
        help="predict: clicks and batches (default); train: training runs and reconciliation",
    )
    worker.set_defaults(handler=run_worker)

    pre = commands.add_parser(
        "preannotate", help="predict a whole Label Studio project and store the predictions"
    )
    pre.add_argument("--project", required=True, type=int, help="Label Studio project id")
    pre.add_argument("--url", help="Label Studio's address (default: LABEL_STUDIO_URL)")
    pre.add_argument("--api-key", help="legacy or personal access token (LABEL_STUDIO_API_KEY)")
    pre.add_argument("--model-dir", help="default: MODEL_DIR, else ./models")
    pre.add_argument("--batch-size", type=int, help="images per pass (PREDICT_BATCH_SIZE)")
    pre.add_argument(
        "--all", action="store_true", help="also tasks that hold a prediction of this version"
    )
    pre.add_argument(
        "--chunk", type=int, help="tasks per job on the workers' queue (PREANNOTATE_CHUNK)"
    )
    pre.add_argument(
        "--here",
        action="store_true",
        help="predict in this process even with REDIS_URL set (default: on every worker)",
    )
    pre.set_defaults(handler=run_preannotate)

    bench = commands.add_parser(
        "bench", help="time each stage and the pipeline against its bare models"
    )
    bench.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    bench.add_argument("--images", type=int, default=8)
    bench.add_argument("--size", type=int, default=512, help="image side in pixels")
    bench.add_argument(
        "--sam2-config",
        action="append",
        help="repeat for several; default hiera-tiny, and on a GPU also base-plus",
    )
    bench.add_argument("--model-dir", help="a trained model (default: one trained here)")
    bench.add_argument("--repeat", type=int, default=3)
    bench.add_argument("--json", help="also write the figures to this JSON file")
    bench.add_argument(
        "--project",
        help="also time preannotate over this Label Studio project (LABEL_STUDIO_URL, "
        "LABEL_STUDIO_API_KEY and MODEL_DIR as for preannotate)",
    )
    bench.add_argument(
        "--workers",
        type=int,
        help="with --project: only the many-hosts figures, with one worker and with this many "
        "(REDIS_URL, MODEL_STORE=redis)",
    )
    bench.add_argument(
        "--memory",
        action="store_true",
        help="only the peak memory of large images (9000x9000 JPEG and PNG, one and eight)",
    )
    bench.set_defaults(handler=run_bench)

    versions = commands.add_parser(
        "versions", help="a project's model versions: metrics, lineage, live accept rate"
    )
    versions.add_argument("--project", help="Label Studio project id (models/<id>/)")
    versions.add_argument("--model-dir", help="default: MODEL_DIR, else ./models")
    versions.add_argument("--json", action="store_true", help="print JSON")
    versions.set_defaults(handler=run_versions)

    rollback = commands.add_parser("rollback", help="make an earlier version current again")
    rollback.add_argument("version", help="e.g. v0003 (see camsam versions)")
    rollback.add_argument("--project", help="Label Studio project id (models/<id>/)")
    rollback.add_argument("--model-dir", help="default: MODEL_DIR, else ./models")
    rollback.set_defaults(handler=run_rollback)


def run_serve(args: argparse.Namespace) -> int:
    import os

    from ml_backend.server import serve

    if args.model_dir:
        os.environ["MODEL_DIR"] = args.model_dir
    serve(args.host, args.port, args.workers, args.threads)
    return 0


def run_worker(args: argparse.Namespace) -> int:
    import os

    from worker.jobs.queue_worker import work

    url = args.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise CamsamError("camsam worker needs --redis-url or REDIS_URL (redis://host:6379/0)")
    work(url, burst=args.burst, name=args.name, role=args.role)
    return 0


def run_preannotate(args: argparse.Namespace) -> int:
    """The same job a long ``/predict`` batch becomes, over every task of a project: with
    REDIS_URL, chunks of it on the queue for every worker; without, in this process."""
    from worker.contract.settings import Settings
    from worker.contract.store import models_for
    from worker.labelstudio.client import connect, project_config, project_tasks

    given = {
        "model_dir": args.model_dir,
        "label_studio_url": args.url,
        "label_studio_api_key": args.api_key,
        "predict_batch_size": args.batch_size,
        "preannotate_chunk": args.chunk,
    }
    settings = replace(Settings.from_env(), **{k: v for k, v in given.items() if v})
    project = str(args.project)
    version = models_for(settings, project).current_version()
    if version is None:
        raise CamsamError(f"no model for project {project} in {settings.model_dir}: train first")
    client = connect(settings.label_studio_url, settings.label_studio_api_key)
    listed = {"skipped": 0}
    skip = None if args.all else version
    tasks = list(project_tasks(client, project, skip_version=skip, counts=listed))
    payload = {
        "project": project,
        "label_config": project_config(client, project),
        "tasks": tasks,
        "settings": settings.for_worker(),
    }
    title = f"project {project} ({version})"
    if settings.redis_url and not args.here:
        answer = fan_out(settings, payload, title)
    else:
        from tqdm import tqdm

        from worker.jobs.predict import preannotate

        with tqdm(total=len(tasks), desc=title, unit="task") as bar:
            answer = preannotate(payload, progress=bar)
    skipped = listed["skipped"] + answer["skipped"]
    print(
        f"{answer['written']} predictions written, {skipped} skipped (they hold this "
        f"version's already), {answer['failed']} tasks failed"
    )
    return 1 if answer["failed"] and not answer["written"] else 0


def fan_out(settings, payload: dict, title: str, poll: float = 0.5) -> dict:
    """``payload``'s tasks as chunk jobs for every worker on every host; one progress bar over
    them all until every chunk is over; the totals."""
    from rq import Queue, Worker
    from tqdm import tqdm

    from worker.contract.connections import redis_connection
    from worker.contract.fanout import Progress, enqueue_chunks
    from worker.contract.queues import BULK_QUEUE

    connection = redis_connection(settings.redis_url)
    if payload["tasks"] and not Worker.count(queue=Queue(BULK_QUEUE, connection=connection)):
        raise CamsamError(
            f"no `camsam worker` serves {BULK_QUEUE} on {settings.redis_url}: start one (workers "
            "started before pre-annotation fanned out must be restarted), or pass --here to "
            "predict in this process"
        )
    jobs = enqueue_chunks(connection, payload, settings.preannotate_chunk)
    progress = Progress(connection, jobs)
    with tqdm(total=progress.totals.tasks, desc=title, unit="task") as bar:
        bar.write(
            f"{len(jobs)} chunk jobs queued for the `camsam worker` processes (Ctrl-C stops "
            "waiting for them, not them)"
        )
        totals = progress.poll()
        while not totals.over:
            time.sleep(poll)
            totals = progress.poll()
            bar.update(totals.done - bar.n)
    if totals.lost_chunks:
        print(
            f"{totals.lost_chunks} chunks failed on every try: their errors are in rq's failed jobs"
        )
    return {"written": totals.written, "skipped": totals.skipped, "failed": totals.failed}


def model_dir_for(args: argparse.Namespace):
    """The model directory the command means, with the shared Redis pointer when REDIS_URL is
    set (so web and worker processes see a rollback at once), and with MODEL_STORE=redis the
    versions every host shares."""
    from worker.contract.settings import Settings
    from worker.contract.store import named_model_dir

    settings = Settings.from_env()
    root = args.model_dir or settings.model_dir
    return named_model_dir(root, args.project or "", settings.redis_url, settings.model_store)


def run_versions(args: argparse.Namespace) -> int:
    from worker.contract.live import live_stats
    from worker.training.job import training_status

    models = model_dir_for(args)
    current, live = models.current_version(), live_stats(models)
    rows = []
    for version in models.versions():
        info = models.info(version) or {}
        metrics = info.get("metrics") or {}
        rows.append(
            {
                "version": version,
                "current": version == current,
                "created": info.get("created"),
                "val_accuracy": metrics.get("val_accuracy"),
                "train_images": metrics.get("train_images"),
                "labels_snapshot": len((info.get("lineage") or {}).get("snapshot") or []),
                "live": live.get(version),
            }
        )
    status = training_status(models)
    if args.json:
        print(json.dumps({"versions": rows, "last_training": status}, indent=1))
        return 0
    if not rows:
        print(f"no versions in {models.root}")
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["created"] or 0))
        accuracy = row["val_accuracy"]
        live_text = "no reviewed masks yet"
        if row["live"]:
            live_text = (
                f"live accept {row['live']['accept_rate']:.2f}, mean IoU "
                f"{row['live']['mean_iou']:.2f} over {row['live']['masks']} masks"
            )
        print(
            f"{'*' if row['current'] else ' '} {row['version']}  {created}  val acc "
            f"{'-' if accuracy is None else f'{accuracy:.3f}'}  {live_text}"
        )
    if status:
        print(f"last training: {status['outcome']}: {status.get('reason', '')}")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from worker.pipeline.checkpoint import rollback

    models = model_dir_for(args)
    rollback(models, args.version)
    print(f"{args.version} is current in {models.root}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from worker.bench.pipeline import format_report, run_bench

    if args.workers and args.project:
        from worker.bench.hosts import hosts_figures

        figures = hosts_figures(args.project, args.workers)
        print("\n".join(f"{k}: {v}" for k, v in figures.items()))
        if args.json:
            Path(args.json).write_text(json.dumps({"hosts": figures}, indent=1))
        return 0
    if args.memory:
        from worker.bench.memory import format_rows, run_memory

        rows = run_memory(args.model_dir)
        print(format_rows(rows))
        if args.json:
            Path(args.json).write_text(json.dumps({"memory": rows}, indent=1))
        return 0
    from ml_backend.runner import RqRunner

    report = run_bench(
        args.device,
        args.images,
        args.size,
        args.sam2_config,
        args.model_dir,
        args.repeat,
        args.project,
        queue_runner=RqRunner,
    )
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0
