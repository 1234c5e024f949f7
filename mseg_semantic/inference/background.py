"""Reading ahead and writing behind in background threads, so that the model never waits on image I/O.

Decoding (OpenCV) and encoding (PNG/JPEG, overlays) release the GIL, so one reader and one writer thread overlap
with the forward passes of the main thread. Both keep the order of their inputs and are bounded (``depth``), so
memory does not grow when one side is faster. With ``threaded=False`` the same functions run inline, in the same
order: the outputs are identical by construction, which the tests check.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
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
    """Run write tasks one at a time, in order, in a background thread (or inline with ``threaded=False``).

    ``submit(task, on_done)`` queues ``task()``; ``on_done(result, error)`` is called later **on the caller's
    thread**, in submission order, from :meth:`submit` or :meth:`close`, so callers need no locks.
    """

    def __init__(self, depth: int = 2, threaded: bool = True) -> None:
        self.threaded = threaded
        self._tasks: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._done: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._work, name="mseg-write-behind", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while (entry := self._tasks.get()) is not _DONE:
            task, on_done = entry
            try:
                self._done.put((on_done, task(), None))
            except Exception as exc:
                self._done.put((on_done, None, exc))

    def submit(self, task: Callable[[], R], on_done: Callable[[R | None, Exception | None], Any]) -> None:
        if not self.threaded:
            try:
                result, error = task(), None
            except Exception as exc:
                result, error = None, exc
            on_done(result, error)
            return
        self._tasks.put((task, on_done))  # blocks while `depth` tasks are waiting
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                on_done, result, error = self._done.get_nowait()
            except queue.Empty:
                return
            on_done(result, error)

    def close(self) -> None:
        """Wait for every queued task and deliver the remaining ``on_done`` calls."""
        if self._thread is not None:
            self._tasks.put(_DONE)
            self._thread.join()
            self._thread = None
        self._drain()

    def __enter__(self) -> WriteBehind[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
