from __future__ import annotations

import logging
import time

from worker.contract.errors import CamsamError
from worker.contract.leases import JobThreads


def refused(payload: dict) -> None:
    raise CamsamError(f"Label Studio refused: {payload['why']}")


def broken(payload: dict) -> None:
    raise ZeroDivisionError(payload["why"])


def test_a_background_job_that_fails_as_expected_says_why_in_a_line(caplog):
    jobs = JobThreads("camsam-test")
    with caplog.at_level(logging.ERROR, logger="worker.contract.leases"):
        assert jobs(f"{__name__}.refused", {"why": "no key"})
        assert jobs(f"{__name__}.broken", {"why": "a bug"})
        deadline = time.monotonic() + 10
        while len(caplog.records) < 2 and time.monotonic() < deadline:  # others' may come too
            time.sleep(0.01)
    expected, crash = [r for r in caplog.records if __name__ in r.getMessage()]
    assert "refused" in expected.getMessage() and "no key" in expected.getMessage()
    assert expected.exc_info is None  # a setting or an answer: no traceback
    assert "broken" in crash.getMessage() and crash.exc_info is not None  # a bug: the traceback
