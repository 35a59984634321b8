"""Schedulers for steps 2–3: turn the tracks a scan must predict into ``(item, probabilities)`` pairs.

The pipeline (:mod:`tagger.pipeline`) decides *which* tracks to predict and what to do with each
result; an engine decides *where* decoding and inference run. Every engine uses the same stage
functions — :func:`decode_or_fail` for step 2, :func:`tagger.batching.predict_in_batches` over a
classifier's ``predict`` for step 3 — so the local engine and the Ray engine
(:mod:`tagger.engine_ray`) cannot disagree on what a track's windows or probabilities are.

An engine's ``predictions(tracks)`` yields ``(DecodedTrack, outputs [n_windows, n_labels (+ D)])`` for
a predicted track and ``(TrackResult, None)`` for a track that failed before inference. A model that
computes embeddings gives each window's embedding after its probabilities, from the same forward pass
(:func:`predict_function`); :func:`tagger.aggregate.split_outputs` takes them apart.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial

from .batching import predict_in_batches
from .decode import decode_track
from .errors import FileError
from .records import FAILED, Track, TrackResult
from .settings import ScanSettings


def predict_function(classifier) -> Callable:
    """What the engines call on each batch: ``classifier.predict``, or for a model with
    ``predict_with_embeddings`` a function giving each window's probabilities and then its embedding in
    one ``[B, L + D]`` float32 row, from one forward pass. Batching, threads and Ray carry the rows as
    they carry probabilities; the pipeline splits them by the number of labels."""
    with_embeddings = getattr(classifier, "predict_with_embeddings", None)
    if with_embeddings is None:
        return classifier.predict

    def predict(windows, lengths=None):
        import torch

        probs, embeddings = with_embeddings(windows, lengths)
        return torch.cat([probs.float(), embeddings.float()], dim=1)

    return predict


def default_batch_size(device) -> int:
    """On CPU one window at a time is fastest per window; a GPU wants full batches."""
    return 64 if device.type == "cuda" else 1


MAX_DECODE_WORKERS = 32
"""Enough threads to keep a GPU fed at several hundred tracks a second; each holds up to two decoded
tracks (5.8 MiB each at 16 kHz), so 32 of them keep at most 370 MiB of windows in flight."""


def default_decode_workers(device) -> int:
    """Decoding threads for a scan that does not set ``--workers``.

    Decoding a track's three windows costs 60–310 ms of one core for 44.1 kHz stereo files (WAV the
    least, Opus the most; ``bench/decode_throughput.py``), against seconds of model time on a CPU: there
    two threads keep inference fed, and more would only take cores from the model. A GPU infers those
    windows in milliseconds, so decoding bounds a GPU scan: it gets a thread per core it may use, but
    one for the thread that feeds the GPU.
    """
    if device.type == "cpu":
        return 2
    return max(2, min(MAX_DECODE_WORKERS, usable_cpu_count() - 1))


def usable_cpu_count() -> int:
    """Cores this process may run on: its affinity mask (a container's or ``taskset``'s), not the
    machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_concurrent_batches(device) -> int:
    """Two batches at once on a CPU with two or more cores, each on half of them; one on a GPU.

    On a 2-core Xeon, two single-threaded calls took a median 23 % less time per wav2vec2-base window
    (11 interleaved pairs) and 8–29 % less per musicnn window than one call on both cores: much of a
    window is operators too small or too memory-bound to split well between threads.
    """
    import torch

    return 2 if device.type == "cpu" and torch.get_num_threads() >= 2 else 1


M_ARENA_TEST, M_ARENA_MAX = -7, -8  # mallopt() parameters, from glibc's <malloc.h>


def bound_malloc_arenas(arenas: int) -> None:
    """Let glibc's malloc create no more than ``arenas`` arenas in this process from now on.

    glibc gives threads arenas of their own, up to 8 per core, and each arena keeps the memory freed
    into it for reuse. With two inference threads, and decoding threads (a new one per file), a scan's
    buffers spread over ever more arenas: a wav2vec2-base scan with two batches at once grew from 1,511
    to 1,608 MiB of RSS over 100 tracks and peaked at 1,656; with 3 arenas it stayed at 1,505–1,552
    (peak 1,577), with 1 at 1,377–1,497 (peak 1,497), no slower over four interleaved pairs of 8-track
    scans: allocations are few and large, so one shared arena is not contended. glibc fixes the limit
    when the arena count first passes ``M_ARENA_TEST`` (8 by default), so both are set; arenas that
    already exist stay. Without glibc's mallopt (macOS, Windows) this does nothing.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):
        return
    mallopt(M_ARENA_TEST, 1)
    mallopt(M_ARENA_MAX, arenas)


@contextmanager
def cpu_threads_per_call(concurrency: int):
    """Give each of ``concurrency`` simultaneous model calls an equal share of torch's CPU threads, for
    the duration of the block. torch's thread count is per process, so it is restored afterwards."""
    import torch

    total = torch.get_num_threads()
    if concurrency > 1:
        torch.set_num_threads(max(1, total // concurrency))
    try:
        yield
    finally:
        torch.set_num_threads(total)


def decode_or_fail(track: Track, sample_rate: int, max_windows: int):
    """Step 2 for one track: its :class:`DecodedTrack`, or a ``failed`` :class:`TrackResult` naming
    the reason — a bad file is a result, never an exception that would stop the scan."""
    try:
        return decode_track(track, sample_rate, max_windows)
    except FileError as err:
        return failed_result(track, err.reason)
    except Exception as exc:  # a decoder fault on one odd file must not end the scan of all the others
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:200].removesuffix(":")
        return failed_result(track, f"decoding failed unexpectedly ({text})")


def failed_result(track: Track, reason: str, retry: bool = False) -> TrackResult:
    return TrackResult(track.path, FAILED, error=reason, size=track.size, mtime_ns=track.mtime_ns,
                       retry=retry)


def timed_out_result(track: Track, timeout: float) -> TrackResult:
    """A decode given up after ``timeout`` seconds. Marked for retry: a share that stopped answering
    may answer next time, and the file itself may be fine."""
    return failed_result(track, f"decoding took longer than {timeout:g} s (file hangs or is unreadable); "
                                "skipped", retry=True)


class LocalEngine:
    """Decode on ``settings.workers`` threads (:func:`default_decode_workers` unless set) running ahead
    of inference in this process.

    FFmpeg releases the GIL while it decodes, so threads overlap decoding with the model. On a GPU the
    model runs on the calling thread; on a CPU ``settings.concurrent_batches`` batches (default 2)
    run at once on their own threads, each with an equal share of torch's threads, and every thread
    allocates from one malloc arena (:func:`bound_malloc_arenas`).
    """

    def __init__(self, classifier, settings: ScanSettings):
        self.classifier = classifier
        self.settings = settings

    def predictions(self, tracks: Iterable[Track]) -> Iterator[tuple]:
        tracks = unless_empty(tracks)
        if tracks is None:  # nothing to predict: the model need not even be loaded
            return
        rate, max_windows = self.classifier.sampling_rate, self.settings.max_windows
        device = self.classifier.device
        import_decoder()
        batch_size = self.settings.batch_size or default_batch_size(device)
        concurrency = 1 if device.type != "cpu" else (
            self.settings.concurrent_batches or default_concurrent_batches(device))
        workers = self.settings.workers
        decoded = bounded_map(lambda t: decode_or_fail(t, rate, max_windows), tracks,
                              default_decode_workers(device) if workers is None else workers,
                              timeout=self.settings.decode_timeout,
                              on_timeout=partial(timed_out_result, timeout=self.settings.decode_timeout))
        if concurrency > 1:
            bound_malloc_arenas(1)
        with cpu_threads_per_call(concurrency):
            yield from predict_in_batches(decoded, predict_function(self.classifier), batch_size, concurrency)


def import_decoder() -> None:
    """Import torchcodec before the first decode starts its clock: the import (about 2 s of a 2-core
    machine, most of it ``torch._dynamo``) must not count against the first file's ``decode_timeout``.
    If it fails, each decode fails with the reason."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:  # noqa: BLE001 - reported per file by decode_or_fail
        pass


def unless_empty(items: Iterable) -> Iterator | None:
    """``items`` as an iterator, or None if it is empty. Taking the first item runs the pipeline's cache
    check up to the first track that needs predicting, so an engine knows whether to load anything."""
    items = iter(items)
    first = next(items, _NOTHING)
    return None if first is _NOTHING else itertools.chain([first], items)


_NOTHING = object()


def bounded_map(fn: Callable, items: Iterable, workers: int, *, timeout: float | None = None,
                on_timeout: Callable | None = None) -> Iterator:
    """``map(fn, items)`` in input order on ``workers`` threads, with at most ``2 × workers`` items in
    flight, so decoding runs ahead of inference without holding the whole library in memory.

    ``timeout`` bounds each call from the moment it starts: a call still running then is given up and
    ``on_timeout(item)`` is yielded in its place. Each call runs on its own daemon thread, because a
    decoder stuck in a read (a vanished network share, a FIFO swapped in after discovery) cannot be
    interrupted: the scan moves on, the stuck thread holds no slot, and it cannot keep the process
    from exiting. ``workers=0`` runs inline, without a time bound.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    slots = threading.Semaphore(workers)
    in_flight: deque[_Call] = deque()
    for item in items:
        in_flight.append(_Call(fn, item, slots))
        if len(in_flight) >= 2 * workers:
            yield in_flight.popleft().result(timeout, on_timeout)
    while in_flight:
        yield in_flight.popleft().result(timeout, on_timeout)


class _Call:
    """One ``fn(item)`` on a daemon thread that waits for one of the pool's slots. The slot is handed
    back exactly once: when the call ends, or when the consumer gives up on it."""

    def __init__(self, fn: Callable, item, slots: threading.Semaphore):
        self.fn, self.item, self.slots = fn, item, slots
        self.started = threading.Event()
        self.done = threading.Event()
        self.value = self.error = None
        self.start_time = 0.0
        self._slot_lock = threading.Lock()
        self._holds_slot = False
        threading.Thread(target=self._run, daemon=True, name="genretag-decode").start()

    def _run(self) -> None:
        self.slots.acquire()
        self._holds_slot = True
        self.start_time = time.monotonic()
        self.started.set()
        try:
            self.value = self.fn(self.item)
        except BaseException as exc:  # re-raised on the consumer's thread
            self.error = exc
        finally:
            self.done.set()
            self._release_slot()

    def _release_slot(self) -> None:
        with self._slot_lock:
            if self._holds_slot:
                self._holds_slot = False
                self.slots.release()

    def result(self, timeout: float | None, on_timeout: Callable | None):
        self.started.wait()
        if timeout is not None and on_timeout is not None:
            remaining = self.start_time + timeout - time.monotonic()
            if not self.done.wait(max(remaining, 0.0)):
                self._release_slot()  # the stuck thread runs on, outside the pool's count
                return on_timeout(self.item)
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value
