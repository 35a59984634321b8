"""Step 3a: pack windows from many tracks into fixed-size batches and map the results back.

A batch may hold the last window of one track and the first windows of the next; each window keeps a
reference to its track's slot, so every probability row lands with the track it came from. Tracks come
out in the order they went in, whatever the batch size, and items that carry no windows (files that
failed to decode) pass through in their place.

Several batches can be in the model at once (``concurrency``): on a CPU, two single-threaded calls
get through more windows than one call spread over both cores, because a window's many small and
memory-bound operations do not split well between threads.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .records import DecodedTrack


class _Slot:
    __slots__ = ("item", "outputs", "missing")

    def __init__(self, item: Any, windows: int):
        self.item = item
        self.outputs: list = [None] * windows
        self.missing = windows


def predict_in_batches(items: Iterable[Any], predict: Callable, batch_size: int, concurrency: int = 1
                       ) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, probabilities [n_windows, n_labels])`` for each :class:`DecodedTrack` in ``items``,
    and ``(item, None)`` for anything else, in input order.

    ``predict(windows [B, N], lengths [B]) -> [B, n_labels]`` is called with at most ``batch_size``
    windows; only the final batch may be smaller. With ``concurrency`` > 1, up to that many calls run
    at once on worker threads (torch releases the GIL inside its operators), so ``predict`` must be
    safe to call from several threads; results are still collected, in order, on this thread.
    """
    import torch

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    slots: deque[_Slot] = deque()
    queue: list[tuple[_Slot, int]] = []
    calls = _Calls(predict, concurrency)

    def run(chunk: list[tuple[_Slot, int]]) -> None:
        windows = torch.stack([slot.item.windows[i] for slot, i in chunk])
        lengths = torch.stack([slot.item.lengths[i] for slot, i in chunk])
        for done, rows in calls.submit(chunk, windows, lengths):
            record(done, rows)

    def record(chunk: list[tuple[_Slot, int]], rows) -> None:
        for (slot, i), row in zip(chunk, rows):
            slot.outputs[i] = row
            slot.missing -= 1

    def finished() -> Iterator[tuple[Any, Any]]:
        while slots and slots[0].missing == 0:
            slot = slots.popleft()
            yield slot.item, torch.stack(slot.outputs) if slot.outputs else None

    try:
        for item in items:
            count = item.windows.shape[0] if isinstance(item, DecodedTrack) else 0
            slot = _Slot(item, count)
            slots.append(slot)
            queue.extend((slot, i) for i in range(count))
            while len(queue) >= batch_size:
                run(queue[:batch_size])
                del queue[:batch_size]
            yield from finished()
        for start in range(0, len(queue), batch_size):
            run(queue[start:start + batch_size])
        for done, rows in calls.drain():
            record(done, rows)
        yield from finished()
    finally:
        calls.close()


class _Calls:
    """``predict`` calls, at most ``limit`` running at once, whose results come back in the order the
    calls were made. With a limit of 1 each call runs inline, on the caller's thread."""

    def __init__(self, predict: Callable, limit: int):
        self.predict = predict
        self.limit = limit
        self.pool = ThreadPoolExecutor(limit, thread_name_prefix="genretag-infer") if limit > 1 else None
        self.running: deque[tuple[Any, Future]] = deque()

    def submit(self, key: Any, *args) -> Iterator[tuple[Any, Any]]:
        """Start ``predict(*args)``; yield ``(key, result)`` for the calls that had to finish first so
        that no more than ``limit`` are running."""
        if self.pool is None:
            yield key, self.predict(*args)
            return
        self.running.append((key, self.pool.submit(self.predict, *args)))
        while len(self.running) >= self.limit:
            yield self._oldest()

    def drain(self) -> Iterator[tuple[Any, Any]]:
        while self.running:
            yield self._oldest()

    def _oldest(self) -> tuple[Any, Any]:
        key, future = self.running.popleft()
        return key, future.result()

    def close(self) -> None:
        """Wait for calls still running (after an error or an abandoned scan) and stop the threads."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
