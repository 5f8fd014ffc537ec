"""Waiting on observable state, the one way tests synchronize with servers and threads.

A test that needs "the engine holds a batch", "8 rows are queued" or "Prometheus has scraped" waits for
that condition to become true, never for a guessed duration: machines differ by 2x or more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str, timeout: float = 60.0, interval: float = 0.01,
               ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Return the first truthy value of `condition()`; TimeoutError naming `what` after `timeout` seconds.
    Exceptions of the types in `ignore` (a server not listening yet) count as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
            if result:
                return result
        except ignore:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)  # polling interval of a wait on `condition`, not synchronization by duration
