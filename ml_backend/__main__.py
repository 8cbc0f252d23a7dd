"""``python -m ml_backend``: ``camsam serve`` for the web image, which has no torch.

The ``camsam`` command line cannot start there: building its parser imports the worker side.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from ml_backend.server import serve
from worker.contract.errors import CamsamError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_backend",
        description="the camsam ML backend (the web side) under waitress",
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--model-dir", help="sets MODEL_DIR: models/<project id>/ or one model")
    args = parser.parse_args(argv)
    if args.model_dir:
        os.environ["MODEL_DIR"] = args.model_dir
    if not os.environ.get("REDIS_URL") and importlib.util.find_spec("torch") is None:
        parser.error(
            "REDIS_URL is not set and torch is not installed: without Redis the jobs run in "
            "this process, which needs the worker side (the camsam image's `camsam serve`); "
            "set REDIS_URL and run `camsam worker` beside this"
        )
    try:
        serve(args.host, args.port, args.workers, args.threads)
    except CamsamError as error:
        print(f"camsam: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
