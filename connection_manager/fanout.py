"""Read several DynamoDB partitions at once and hand their rows over as one stream.

The live index is spread over as many shards as the capacity model asks for (dozens at
ten million connections); reading them one after another would make a sweep's wall time
grow with the shard count. Here each shard is read by its own thread, at most
``concurrency`` at a time, and rows pass through a small bounded queue, so memory stays
at a few pages whatever the number of rows, and a consumer that stops early (out of
Lambda time) stops the readers too.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()
#: Rows waiting between the readers and the consumer.
QUEUE_ROWS = 256


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def merged(
    sources: list[Callable[[], Iterable[T]]], concurrency: int, errors: list[BaseException] | None = None
) -> Iterator[T]:
    """Rows of every source, interleaved.

    A source's exception is raised to the consumer, or, when ``errors`` is given, appended
    there while the other sources carry on (one failing shard does not stop a sweep).
    """
    if len(sources) <= 1 or concurrency <= 1:
        for source in sources:
            try:
                yield from source()
            except Exception as exc:
                if errors is None:
                    raise
                errors.append(exc)
        return
    rows: queue.Queue[object] = queue.Queue(maxsize=QUEUE_ROWS)
    stop = threading.Event()
    slots = threading.BoundedSemaphore(concurrency)

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                rows.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read(source: Callable[[], Iterable[T]]) -> None:
        with slots:
            try:
                if stop.is_set():
                    return
                for row in source():
                    if not put(row):
                        return
            except BaseException as exc:  # handed to the consumer, which decides
                put(_Failure(exc))
            finally:
                put(_DONE)

    threads = [threading.Thread(target=read, args=(source,), daemon=True, name="cm-read") for source in sources]
    for thread in threads:
        thread.start()
    remaining = len(threads)
    try:
        while remaining:
            item = rows.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, _Failure):
                if errors is None or not isinstance(item.error, Exception):
                    raise item.error
                errors.append(item.error)
            else:
                yield item  # type: ignore[misc]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
