from __future__ import annotations

import logging

import pytest

from ml_backend.server import log_to_stderr, serve
from worker.contract.errors import CamsamError


def test_the_served_backend_says_camsams_own_lines_and_leaves_the_libraries_out(capsys):
    root = logging.getLogger()
    loggers = [logging.getLogger(name) for name in ("ml_backend", "worker")]
    before = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    configured = root.handlers[:]  # pytest's own: a logging set up already is left alone
    try:
        log_to_stderr()
        assert [lg.handlers for lg in loggers] == [h for h, _, _ in before]
        root.handlers[:] = []  # as under waitress: nothing configured
        log_to_stderr()
        logging.getLogger("worker.training.job").warning("project 4: training failed: no key")
        logging.getLogger("httpx").info("HTTP Request: GET /api/projects/4/")
        err = capsys.readouterr().err
        assert "WARNING worker.training.job: project 4: training failed: no key" in err
        assert "HTTP Request" not in err
        log_to_stderr()  # a second call adds no second handler
        logging.getLogger("ml_backend.app").info("once")
        assert capsys.readouterr().err.count("once") == 1
    finally:
        root.handlers[:] = configured
        for lg, (handlers, level, propagate) in zip(loggers, before, strict=True):
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate


@pytest.mark.parametrize(("workers", "threads"), [(0, 4), (1, 0), (-1, 4)])
def test_no_worker_or_no_thread_is_refused_before_anything_starts(workers, threads):
    with pytest.raises(CamsamError, match="must be 1 or more"):
        serve("127.0.0.1", 0, workers, threads)
