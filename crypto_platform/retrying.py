"""One way to retry: exponential backoff while a server is away, each wait logged, a stop honoured.

Built on tenacity. The producer's reconnect loop keeps its own shape (full jitter, and a reset after a
healthy minute) because it is a reconnect supervisor, not a retried call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_never, wait_exponential

T = TypeVar("T")


def retry_while_unavailable(call: Callable[[], T], errors: type[BaseException] | tuple[type[BaseException], ...], *,
                            initial_s: float, max_s: float, log: logging.Logger, message: str,
                            extra: dict[str, object] | None = None,
                            stop: threading.Event | None = None) -> T | None:
    """``call()`` until it does not raise one of ``errors``: waits ``initial_s``, doubling up to ``max_s``,
    logging ``message`` (with the delay and the error) before each wait. With ``stop`` set during a
    wait, returns None without calling again; any other exception propagates at once."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(message, extra={**(extra or {}), "delay_s": state.upcoming_sleep,
                                    "error": str(error).strip()[:200]})

    def sleep(seconds: float) -> None:
        if stop is None:
            time.sleep(seconds)
        elif stop.wait(seconds):
            raise _Stopped

    retrying = Retrying(retry=retry_if_exception_type(errors), wait=wait_exponential(multiplier=initial_s, max=max_s),
                        stop=stop_never, sleep=sleep, before_sleep=before_sleep)
    try:
        return retrying(call)
    except _Stopped:
        return None


class _Stopped(Exception):
    """The stop event was set during a wait."""
