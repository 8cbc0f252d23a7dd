from __future__ import annotations

import logging
import time

from ml_backend.runner import EmbeddedRunner

JOBS = "tests.unit.contract.test_leases"  # a job that fails as expected, and one that crashes


def test_a_write_back_that_fails_as_expected_says_why_in_a_line(caplog):
    runner = EmbeddedRunner()
    with caplog.at_level(logging.ERROR, logger="ml_backend.runner"):
        runner.submit(f"{JOBS}.refused", {"tasks": [{}], "why": "no key"})
        runner.submit(f"{JOBS}.broken", {"tasks": [{}], "why": "a bug"})
        deadline = time.monotonic() + 10
        while len(caplog.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    expected, crash = [r for r in caplog.records if JOBS in r.getMessage()]
    assert "no key" in expected.getMessage() and expected.exc_info is None
    assert "broken" in crash.getMessage() and crash.exc_info is not None
