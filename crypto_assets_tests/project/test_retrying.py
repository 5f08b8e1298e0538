"""The one retry helper: backoff doubling to its cap, a stop honoured at once, other errors not retried."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from crypto_platform.retrying import retry_while_unavailable

log = logging.getLogger("test_retrying")


def test_it_retries_until_the_call_succeeds_with_doubling_capped_waits(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise ConnectionError(f"down {len(calls)}")
        return "up"

    with caplog.at_level(logging.WARNING, logger="test_retrying"):
        assert retry_while_unavailable(flaky, ConnectionError, initial_s=0.05, max_s=0.1, log=log,
                                       message="server unavailable; retrying", extra={"server": "x"}) == "up"
    waits = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert [round(w, 2) for w in waits] == pytest.approx([0.05, 0.1, 0.1], abs=0.04)
    assert [r.delay_s for r in caplog.records] == [0.05, 0.1, 0.1]
    assert all(r.server == "x" and r.error.startswith("down") for r in caplog.records)


def test_a_stop_during_a_wait_returns_none_without_calling_again() -> None:
    stop = threading.Event()
    calls = []

    def down() -> None:
        calls.append(1)
        stop.set()  # as SIGTERM would, while the next wait is ahead
        raise ConnectionError("down")

    started = time.monotonic()
    assert retry_while_unavailable(down, ConnectionError, initial_s=5, max_s=5, log=log, message="m", stop=stop) is None
    assert calls == [1] and time.monotonic() - started < 1


def test_an_error_it_was_not_asked_to_retry_propagates_at_once() -> None:
    with pytest.raises(ZeroDivisionError):
        retry_while_unavailable(lambda: 1 / 0, ConnectionError, initial_s=1, max_s=1, log=log, message="m")
