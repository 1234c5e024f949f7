"""Micro-batching: requests of the same size class share forward passes, and one thread owns the model.

Why one thread: a model is large and not thread-safe to load; a web server runs many requests at once. So the
requests queue here (a bounded queue: admission is refused, not delayed without end, when it is full) and a single
worker thread takes them in order of arrival, each time with the other waiting requests of the same key (the same
output taxonomy and window shapes: their windows can go through the network together), up to ``max_batch``,
waiting at most ``max_wait`` for more to arrive. The caller awaits an asyncio future that the worker resolves; a
caller that gives up (its client disconnected) cancels the future and its job leaves the queue at once.

Nothing here knows about HTTP or models: ``run`` is any function from a list of payloads to a list of results (or
exceptions, one per payload), called on the worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mseg_semantic.errors import MsegError


class QueueFullError(MsegError):
    """The queue holds ``max_queue`` requests already; ``retry_after``: seconds after which a retry likely fits."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(eq=False)
class _Job:
    key: Hashable
    payload: Any
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued: float = field(default_factory=time.monotonic)


class Slot:
    """A place in the queue, held from admission (before the upload is read) until the answer is sent."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._batcher._release()


@dataclass
class BatchStats:
    """What the worker has done: batches and items run, and the seconds an item took lately (for Retry-After)."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    cancelled: int = 0  # jobs dropped because their caller gave up before they ran
    seconds_per_item: float = 0.0


class Batcher:
    """A bounded queue in front of one worker thread that calls ``run(payloads)`` on batches of one key.

    ``run`` returns one result per payload, in order; a result that is an exception is raised to its caller. An
    exception raised by ``run`` itself goes to every caller of that batch.
    """

    def __init__(
        self,
        run: Callable[[Sequence[Any]], Sequence[Any]],
        *,
        max_batch: int = 4,
        max_wait: float = 0.01,
        max_queue: int = 64,
        name: str = "mseg-batcher",
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait >= 0")
        self._run, self.max_batch, self.max_wait, self.max_queue = run, max_batch, max_wait, max_queue
        self._pending: deque[_Job] = deque()
        self._admitted = 0
        self._lock = threading.Condition()
        self._closed = False
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the callers' side (event loop)
    def acquire(self) -> Slot:
        """A place in the queue, or :class:`QueueFullError` when ``max_queue`` requests hold one already."""
        with self._lock:
            if self._closed:
                raise QueueFullError("the server is shutting down", retry_after=1)
            if self._admitted >= self.max_queue:
                raise QueueFullError(
                    f"the server is busy: {self._admitted} requests queued (--max-queue {self.max_queue}); retry later",
                    retry_after=self._retry_after(),
                )
            self._admitted += 1
            return Slot(self)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def _retry_after(self) -> int:
        """Seconds the queue needs to drain at the recent pace (at least 1)."""
        return max(1, math.ceil(self._admitted * self.stats.seconds_per_item))

    @property
    def queued(self) -> int:
        """Requests admitted and not yet answered."""
        return self._admitted

    def snapshot(self) -> dict[str, int | float]:
        """The queue and what the worker has done, for ``GET /v1/models``."""
        stats = self.stats
        return {"queued": self._admitted, "max_queue": self.max_queue, "max_batch": self.max_batch,
                "max_wait_ms": self.max_wait * 1000, "batches": stats.batches, "items": stats.items,
                "largest_batch": stats.largest, "cancelled": stats.cancelled,
                "seconds_per_item": round(stats.seconds_per_item, 4)}  # fmt: skip

    async def submit(self, key: Hashable, payload: Any) -> Any:
        """Run ``payload`` in a batch of its ``key``; returns its result. Cancelling the await drops the job."""
        loop = asyncio.get_running_loop()
        job = _Job(key, payload, loop.create_future(), loop)
        with self._lock:
            if self._closed:
                raise QueueFullError("the server is shutting down", retry_after=1)
            self._pending.append(job)
            self._lock.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            with self._lock:
                if job in self._pending:
                    self._pending.remove(job)
                    self.stats.cancelled += 1
            raise

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the batch it runs; jobs still queued get an error."""
        with self._lock:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._lock.notify_all()
        for job in left:
            _resolve(job, QueueFullError("the server is shutting down", retry_after=1))
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the worker thread
    def _next_batch(self) -> list[_Job] | None:
        """The oldest job and up to ``max_batch - 1`` more of its key, waiting until ``max_wait`` after the oldest
        arrived for more to come; None when closed."""
        with self._lock:
            while not self._pending and not self._closed:
                self._lock.wait()
            if self._closed:
                return None
            first = self._pending[0]
            deadline = first.queued + self.max_wait
            while True:
                batch = [job for job in self._pending if job.key == first.key][: self.max_batch]
                left = deadline - time.monotonic()
                if len(batch) >= self.max_batch or left <= 0 or self._closed or first not in self._pending:
                    break
                self._lock.wait(left)
            batch = [job for job in self._pending if job.key == first.key][: self.max_batch]
            for job in batch:
                self._pending.remove(job)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [job for job in batch if not job.future.cancelled()]
            with self._lock:
                self.stats.cancelled += len(batch) - len(live)
            batch = live
            if not batch:
                continue
            began = time.perf_counter()
            try:
                results: Sequence[Any] = self._run([job.payload for job in batch])
            except BaseException as exc:  # one failed batch must not stop the worker
                results = [exc] * len(batch)
            self._record(len(batch), time.perf_counter() - began)
            for job, result in zip(batch, results, strict=True):
                _resolve(job, result)

    def _record(self, size: int, seconds: float) -> None:
        stats = self.stats
        per_item = seconds / size
        stats.seconds_per_item = per_item if not stats.items else 0.8 * stats.seconds_per_item + 0.2 * per_item
        stats.batches += 1
        stats.items += size
        stats.largest = max(stats.largest, size)


def _resolve(job: _Job, result: Any) -> None:
    """Hand ``result`` (or raise it, an exception) to the job's caller on its event loop, unless it gave up."""

    def deliver() -> None:
        if job.future.done():
            return
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        job.loop.call_soon_threadsafe(deliver)
