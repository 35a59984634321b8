"""Step 3a: pack windows from many tracks into fixed-size batches and map the results back.

A batch may hold the last window of one track and the first windows of the next; each window keeps a
reference to its track's slot, so every probability row lands with the track it came from. Tracks come
out in the order they went in, whatever the batch size, and items that carry no windows (files that
failed to decode) pass through in their place.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .records import DecodedTrack


class _Slot:
    __slots__ = ("item", "outputs", "missing")

    def __init__(self, item: Any, windows: int):
        self.item = item
        self.outputs: list = [None] * windows
        self.missing = windows


def predict_in_batches(items: Iterable[Any], predict: Callable, batch_size: int
                       ) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, probabilities [n_windows, n_labels])`` for each :class:`DecodedTrack` in ``items``,
    and ``(item, None)`` for anything else, in input order.

    ``predict(windows [B, N], lengths [B]) -> [B, n_labels]`` is called with at most ``batch_size``
    windows; only the final batch may be smaller.
    """
    import torch

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    slots: deque[_Slot] = deque()
    queue: list[tuple[_Slot, int]] = []

    def run(chunk: list[tuple[_Slot, int]]) -> None:
        windows = torch.stack([slot.item.windows[i] for slot, i in chunk])
        lengths = torch.stack([slot.item.lengths[i] for slot, i in chunk])
        for (slot, i), row in zip(chunk, predict(windows, lengths)):
            slot.outputs[i] = row
            slot.missing -= 1

    def finished() -> Iterator[tuple[Any, Any]]:
        while slots and slots[0].missing == 0:
            slot = slots.popleft()
            yield slot.item, torch.stack(slot.outputs) if slot.outputs else None

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
    yield from finished()
