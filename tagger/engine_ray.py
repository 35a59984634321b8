"""Steps 2–3 on a Ray cluster: decode on CPU workers, infer in a pool of model-holding actors.

The same stage functions as :class:`~tagger.engine.LocalEngine` — :func:`~tagger.engine.decode_or_fail`
and :func:`~tagger.batching.predict_in_batches` — scheduled by Ray Data instead of threads::

    driver: tracks ─► from_items ─► map(decode_row)      CPU tasks, one per block of tracks
                                 ─► map_batches(Predictor) actors, each loads the model once
    driver: ◄── iter_rows ── (track, probabilities) or (track, reason it failed)

The driver hands the tracks to ``from_items`` ``TRACKS_PER_PART`` at a time, each part going into Ray's
object store as it is made, so it never holds a list of the whole library. Discovery, the index and
tag writing stay on the driver: the undo journal and the index's write-ahead journal live in the
driver's SQLite file, so workers only read the audio files, which must be at the same paths on every
machine (a shared filesystem). Rows carry paths as bytes, because Arrow strings must be UTF-8 and
Linux file names need not be.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial

from .batching import predict_in_batches
from .engine import bounded_map, decode_or_fail, default_batch_size, failed_result, import_decoder, \
    predict_function, timed_out_result
from .errors import GenretagError, ModelError
from .records import DecodedTrack, Track, TrackResult
from .settings import ScanSettings

MAX_TRACKS_PER_DECODE_TASK = 256
"""A decode task of 256 tracks runs for about half a minute on one core, and 10 million tracks make
40,000 tasks, which the driver sets up in about a minute; small libraries get smaller tasks, so that
every CPU of the cluster has some."""

TRACKS_PER_PART = 100_000
"""The driver puts the tracks to predict into Ray's object store this many at a time, so that it holds
one part's rows (about 0.6 KB per track, 60 MB) rather than a list of the whole library's."""

MODEL_BATCHES_PER_CALL = 4
"""Tracks handed to an inference actor at once fill about this many model batches, so only one
batch in four is a partial one."""

DECODE_TASK_RETRIES = 3
"""A decode task whose worker died (a lost node) runs again, but not forever: a file that crashes
FFmpeg would otherwise loop. Setting it also keeps Ray Data from fusing decoding into the actors."""


class RayEngine:
    """Decode and infer on a Ray cluster; results stream back to this process (the driver)."""

    def __init__(self, classifier, settings: ScanSettings):
        from .models.identity import resolve_model_name

        self.classifier = classifier
        self.settings = settings
        self.ray = _import_ray()
        # Workers resolve nothing themselves: their environment (GENRETAG_MODEL, the trained-model
        # registry) is not the driver's.
        self.model = resolve_model_name(settings.model)

    def predictions(self, tracks: Iterable[Track]) -> Iterator[tuple]:
        try:
            with _quiet_ray_data():
                dataset = self._dataset(tracks)
                if dataset is None:
                    return
                for row in dataset.iter_rows():
                    yield _from_row(row)
        except self.ray.exceptions.RayError as err:
            raise GenretagError(f"the Ray job failed: {_reason(err)}") from None

    def _connect(self) -> None:
        if self.ray.is_initialized():
            return
        try:  # worker output and Ray's own INFO lines would garble genretag's progress and tables
            self.ray.init(address=self.settings.ray_address, log_to_driver=False,
                          logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as err:
            where = self.settings.ray_address or "$RAY_ADDRESS or a local cluster"
            raise GenretagError(f"cannot start or reach the Ray cluster ({where}): {err}") from None

    def _dataset(self, tracks: Iterable[Track]):
        """The whole job as one Ray dataset, or None when there is nothing to predict. Tracks go into
        Ray's object store ``TRACKS_PER_PART`` at a time, as the pipeline's cache check lets them
        through (it reads the index, so it runs here, on the driver)."""
        from ray.data import DataContext

        tracks = iter(tracks)
        chunk = list(itertools.islice(tracks, TRACKS_PER_PART))
        if not chunk:
            return None
        self._connect()
        cpus = max(int(self.ray.cluster_resources().get("CPU", 1)), 1)
        with warnings.catch_warnings():  # Ray 2.58's copy() warns about its own deprecated fields
            warnings.simplefilter("ignore", DeprecationWarning)
            context = DataContext.get_current().copy()
        context.enable_progress_bars = False  # genretag draws its own
        context.print_on_execution_start = context.enable_auto_log_stats = False
        with DataContext.current(context):
            parts = []
            while chunk:
                per_task = min(MAX_TRACKS_PER_DECODE_TASK, max(1, math.ceil(len(chunk) / (4 * cpus))))
                parts.append(self.ray.data.from_items([_track_row(t) for t in chunk],
                                                      override_num_blocks=math.ceil(len(chunk) / per_task)))
                chunk = list(itertools.islice(tracks, TRACKS_PER_PART))
            ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
            ds = ds.map(decode_row, num_cpus=1, max_retries=DECODE_TASK_RETRIES, fn_kwargs={
                "sample_rate": self.classifier.sampling_rate, "max_windows": self.settings.max_windows,
                "timeout": self.settings.decode_timeout})
            return self._infer(ds, self._inference_workers(cpus))

    def _infer(self, ds, workers: int):
        from ray.data import ActorPoolStrategy

        s = self.settings
        gpus = s.num_gpus_per_worker
        # An actor that reserves no GPU still sees every GPU of its node (Ray leaves CUDA_VISIBLE_DEVICES
        # alone), so "auto" must not let it take one that another actor reserved.
        device = s.device if s.device != "auto" or gpus else "cpu"
        batch_size = s.batch_size or default_batch_size(_torch_device("cuda" if gpus else device))
        return ds.map_batches(
            Predictor, batch_format="numpy", compute=ActorPoolStrategy(size=workers),
            batch_size=max(1, math.ceil(MODEL_BATCHES_PER_CALL * batch_size / s.max_windows)),
            num_cpus=1, num_gpus=gpus or None,
            # A restarted actor would need its constructor arguments back from the object store,
            # which Ray warns about on the console; a scan that stops here resumes where it was.
            max_restarts=0,
            fn_constructor_kwargs={"model": self.model, "device": device, "precision": s.precision,
                                   "batch_size": s.batch_size, "fingerprint": self.classifier.fingerprint})

    def _inference_workers(self, cpus: int) -> int:
        """The actor pool's size. Each actor holds a CPU for as long as the scan runs, so at least one
        must stay free for decoding, or the scan would wait forever."""
        s = self.settings
        workers = s.ray_inference_workers or 1
        if not s.ray_inference_workers and s.num_gpus_per_worker:
            gpus = self.ray.cluster_resources().get("GPU", 0)
            if gpus < s.num_gpus_per_worker:
                raise GenretagError(f"--num-gpus-per-worker {s.num_gpus_per_worker:g}: the Ray cluster has "
                                    f"{gpus:g} GPU(s); add GPU workers, set --ray-inference-workers, or "
                                    "use --num-gpus-per-worker 0 for inference on CPU workers")
            workers = int(gpus // s.num_gpus_per_worker)
        if workers >= cpus:
            raise GenretagError(f"{workers} Ray inference worker(s) would hold all {cpus} CPU(s) of the "
                                "cluster and leave none for decoding; use fewer (--ray-inference-workers)")
        return workers


def decode_row(row: dict, sample_rate: int, max_windows: int, timeout: float) -> dict:
    """Step 2 as a Ray task: one track's windows, or the reason it failed. A decode that hangs is
    given up after ``timeout`` seconds, as the local engine does it."""
    import numpy as np

    track = _track(row)
    import_decoder()
    on_timeout = partial(timed_out_result, timeout=timeout)
    item = next(bounded_map(partial(decode_or_fail, sample_rate=sample_rate, max_windows=max_windows),
                            [track], 1, timeout=timeout, on_timeout=on_timeout))
    if isinstance(item, TrackResult):
        return {**row, "error": os.fsencode(item.error), "retry": item.retry,
                "windows": np.zeros((0, 0), np.float32), "lengths": np.zeros(0, np.int64),
                "starts": np.zeros(0), "duration": 0.0, "codec": ""}
    return {**row, "error": b"", "retry": False, "windows": item.windows.numpy(),
            "lengths": item.lengths.numpy(), "starts": np.asarray(item.starts, dtype=np.float64),
            "duration": float(item.duration), "codec": item.codec or ""}


class Predictor:
    """Step 3 as a Ray actor: loads the classifier once, then runs the local engine's batching over
    each batch of decoded tracks. Failed tracks pass through with no probabilities."""

    def __init__(self, model: str, device: str, precision: str, batch_size: int | None, fingerprint: str):
        from .models.infer import load_classifier

        self.classifier = load_classifier(model, device, precision)
        if self.classifier.fingerprint != fingerprint:
            import socket

            raise ModelError(f"the model '{model}' on Ray worker {socket.gethostname()} has fingerprint "
                             f"{self.classifier.fingerprint}, the driver's has {fingerprint}: every "
                             "machine must see the same checkpoint at the same path")
        self.batch_size = batch_size or default_batch_size(self.classifier.device)
        self.predict = predict_function(self.classifier)  # probabilities, and embeddings where the model has them

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import torch

        count = len(batch["path"])
        items = [None if batch["error"][i] else DecodedTrack(
            _track({k: batch[k][i] for k in ("path", "size", "mtime_ns")}),
            torch.tensor(np.asarray(batch["windows"][i])), torch.tensor(np.asarray(batch["lengths"][i])),
            [], 0.0) for i in range(count)]
        probs = np.empty(count, dtype=object)  # one [n_windows, n_labels (+ D)] array per track
        empty = np.zeros((0, len(self.classifier.labels)), np.float32)
        for i, (_, p) in enumerate(predict_in_batches(items, self.predict, self.batch_size)):
            probs[i] = empty if p is None else p.float().numpy()
        keep = ("path", "size", "mtime_ns", "error", "retry", "starts", "duration", "codec")
        return {**{k: batch[k] for k in keep}, "probs": probs}


def _track_row(track: Track) -> dict:
    return {"path": os.fsencode(track.path), "size": track.size, "mtime_ns": track.mtime_ns}


def _track(row: dict) -> Track:
    return Track(os.fsdecode(row["path"]), int(row["size"]), int(row["mtime_ns"]))


def _from_row(row: dict) -> tuple:
    """What :meth:`LocalEngine.predictions` would have yielded for this track. The windows stay on the
    workers: aggregation needs only the probabilities (and embeddings), the duration and the codec."""
    import torch

    track = _track(row)
    if row["error"]:
        return failed_result(track, os.fsdecode(row["error"]), bool(row["retry"])), None
    decoded = DecodedTrack(track, torch.zeros(0), torch.zeros(0, dtype=torch.long),
                           [float(s) for s in row["starts"]], float(row["duration"]), row["codec"] or None)
    return decoded, torch.tensor(row["probs"])


def _torch_device(name: str):
    import torch

    return torch.device(name)


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise GenretagError("--engine ray needs Ray: pip install 'genretag[ray]'") from None
    return ray


@contextmanager
def _quiet_ray_data():
    """Ray Data reports progress and failures on the console; genretag reports its own, and the full
    traces stay in the Ray session's log files (logs/ray-data*.log)."""
    handlers = [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)]
    levels = [h.level for h in handlers]
    for handler in handlers:
        handler.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels):
            handler.setLevel(level)


def _reason(err: Exception) -> str:
    """The last line of a Ray error is the worker's own exception, e.g. ``ModelError: ...``."""
    import re

    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    return re.sub(r"^[\w.]*(Error|Exception): ", "", last)[:300]
