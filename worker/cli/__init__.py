"""``camsam``, the command line: ``main.py`` parses and runs the dataset commands (train, predict,
eval, split, rank, demo); ``service.py`` adds the service ones (serve, worker, preannotate,
versions, rollback, bench); ``campaign.py`` the campaign replay."""

from worker.cli.main import main

__all__ = ["main"]
