"""Reading ahead and writing behind in background threads, so that the model never waits on image I/O.

Decoding (OpenCV) and encoding (PNG/JPEG, overlays) release the GIL, so a reader thread and writer threads overlap
with the forward passes of the main thread (one writer suits a CPU run, whose cores the model uses; a GPU run
writes with several). Both keep the order of their inputs and are bounded (``depth``), so
memory does not grow when one side is faster. With ``threaded=False`` the same functions run inline, in the same
order: the outputs are identical by construction, which the tests check.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


def read_ahead(
    read: Callable[[T], R], items: Iterable[T], depth: int = 2, threaded: bool = True
) -> Iterator[tuple[T, R | None, Exception | None]]:
    """Yield ``(item, read(item), None)`` or ``(item, None, error)`` in order, reading up to ``depth`` items ahead.

    Leaving the loop early (``break``, an exception) stops the reader thread after the item it is reading.
    """
    if not threaded:
        for item in items:
            try:
                yield item, read(item), None
            except Exception as exc:
                yield item, None, exc
        return
    results: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    failure: list[BaseException] = []  # an error of the iteration itself, raised on the caller's thread

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                try:
                    entry = (item, read(item), None)
                except Exception as exc:
                    entry = (item, None, exc)
                while not stop.is_set():
                    try:
                        results.put(entry, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:
            failure.append(exc)
        finally:
            results.put(_DONE)

    thread = threading.Thread(target=work, name="mseg-read-ahead", daemon=True)
    thread.start()
    try:
        while (entry := results.get()) is not _DONE:
            yield entry
        if failure:
            raise failure[0]
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            with contextlib.suppress(queue.Empty):
                results.get(timeout=0.1)
        thread.join()


class WriteBehind(Generic[R]):
    """Run write tasks in ``workers`` background threads (or inline with ``threaded=False``), results in order.

    ``submit(task, on_done)`` queues ``task()``; ``on_done(result, error)`` is called later **on the caller's
    thread**, in submission order, from :meth:`submit` or :meth:`close`, so callers need no locks. With more than one
    worker, tasks run concurrently (encoding a 1080p overlay takes longer than a GPU's forward pass), so they must
    not depend on each other; at most ``depth`` tasks wait beyond the ones running, which bounds memory.
    """

    def __init__(self, depth: int = 2, threaded: bool = True, workers: int = 1) -> None:
        self.threaded = threaded
        self.limit = max(1, depth) + max(1, workers)
        self._pending: collections.deque[tuple[Future, Callable[[R | None, Exception | None], Any]]] = (
            collections.deque()
        )
        self._pool: ThreadPoolExecutor | None = None
        if threaded:
            self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mseg-write-behind")

    def submit(self, task: Callable[[], R], on_done: Callable[[R | None, Exception | None], Any]) -> None:
        if self._pool is None:
            try:
                result, error = task(), None
            except Exception as exc:
                result, error = None, exc
            on_done(result, error)
            return
        while len(self._pending) >= self.limit:  # wait for the oldest task
            self._deliver_first()
        self._pending.append((self._pool.submit(task), on_done))
        while self._pending and self._pending[0][0].done():
            self._deliver_first()

    def _deliver_first(self) -> None:
        future, on_done = self._pending.popleft()
        error = future.exception()  # waits for it
        if error is not None and not isinstance(error, Exception):
            raise error
        on_done(None if error is not None else future.result(), error)

    def close(self) -> None:
        """Wait for every queued task and deliver the remaining ``on_done`` calls."""
        try:
            while self._pending:
                self._deliver_first()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def __enter__(self) -> WriteBehind[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
