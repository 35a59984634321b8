"""What `genretag scan --engine ray` does per worker on this machine, and what 10 million tracks a day
would take.

    python bench/ray_scaling.py --tracks 16 [--cpus N] [--library DIR] [--sample-rate 22050 --channels 1]

Runs the Ray engine's own stages on a local Ray cluster:
  decode     ``decode_row`` as Ray Data tasks over 3–5 min tracks (bench/library.py: six formats,
             44.1 kHz stereo unless ``--sample-rate``/``--channels`` say otherwise; 3 windows each),
             on 1 CPU worker and then on every CPU: tracks/s per CPU worker;
  inference  the ``Predictor`` actor with the built-in model on 1 CPU, fed decoded tracks:
             windows/s and tracks/s per CPU worker (model loading excluded).
Then sizes a cluster for 10M tracks in 24 h (116 tracks/s) from the measured decode rate and the
GPU inference rates measured on an H100 with bench/infer_throughput.py.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.library import CD_RATE, make_library

MODEL = "builtin:musicnn-msd"
TARGET_TRACKS, TARGET_SECONDS = 10_000_000, 24 * 3600
WINDOWS_PER_TRACK = 3
H100_WINDOWS_PER_S = {"wav2vec2-base bf16": 282.0, "musicnn bf16": 504.0}
"""bench/infer_throughput.py on one H100 (batch 64): windows/s per GPU."""


def decode_rate(tracks: list[dict], sample_rate: int, workers: int) -> tuple[float, int]:
    """Tracks/s of the engine's decode stage as Ray Data tasks, at most ``workers`` at a time."""
    import ray
    from ray.data import TaskPoolStrategy

    from tagger.engine_ray import _quiet_ray_data, decode_row

    started = time.perf_counter()
    ds = ray.data.from_items(tracks, override_num_blocks=len(tracks)).map(
        decode_row, compute=TaskPoolStrategy(size=workers), num_cpus=1,
        fn_kwargs={"sample_rate": sample_rate, "max_windows": WINDOWS_PER_TRACK, "timeout": 120.0})
    # The windows go to inference actors in a scan, not to this process: the count, fused into the
    # same task, keeps the driver (and on a small machine, its CPU) out of the measurement.
    ds = ds.map(lambda row: {"windows": len(row["lengths"])}, compute=TaskPoolStrategy(size=workers))
    with _quiet_ray_data():
        windows = sum(row["windows"] for row in ds.iter_rows())
    return len(tracks) / (time.perf_counter() - started), windows


def inference_rate(tracks: list[dict], sample_rate: int, seconds: float) -> tuple[float, str]:
    """Windows/s of one ``Predictor`` actor on 1 CPU, after its model is loaded and warmed up."""
    import ray

    from tagger.engine_ray import decode_row

    decoded = [decode_row(t, sample_rate, WINDOWS_PER_TRACK, 120.0) for t in tracks[:4]]
    return ray.get(ray.remote(num_cpus=1)(time_predictor).remote(decoded, seconds))


def time_predictor(rows: list[dict], seconds: float) -> tuple[float, str]:
    """Runs on a Ray worker: the engine's inference stage, timed without its model loading."""
    import numpy as np

    from tagger.engine_ray import Predictor
    from tagger.models.infer import load_classifier

    predictor = Predictor(MODEL, "cpu", "auto", None, load_classifier(MODEL, "cpu", "fp32").fingerprint)
    batch = {}  # the rows as the numpy batch Ray Data hands to Predictor.__call__
    for key in rows[0]:
        batch[key] = np.empty(len(rows), dtype=object)
        for i, row in enumerate(rows):
            batch[key][i] = row[key]
    windows = sum(len(r["lengths"]) for r in rows)
    predictor(batch)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor(batch)
        done += windows
    return done / (time.perf_counter() - started), predictor.classifier.precision


def estimate(decode_per_worker: float, cpu_windows_per_s: float) -> list[str]:
    need = TARGET_TRACKS / TARGET_SECONDS
    cores = math.ceil(need / decode_per_worker)
    lines = [(f"10M tracks in 24 h: {need:.0f} tracks/s ({need * WINDOWS_PER_TRACK:.0f} windows/s at "
              f"{WINDOWS_PER_TRACK} windows per track)"),
             f"  decode: {cores} CPU workers at the measured {decode_per_worker:.2f} tracks/s each"]
    gpus = {}
    for name, windows in H100_WINDOWS_PER_S.items():
        per_gpu = windows / WINDOWS_PER_TRACK
        gpus[name] = math.ceil(need / per_gpu)
        lines.append(f"  inference, {name}: {windows:.0f} windows/s = {per_gpu:.0f} tracks/s per H100 "
                     f"-> {gpus[name]} GPU worker(s)")
    cpu_tracks = cpu_windows_per_s / WINDOWS_PER_TRACK
    lines.append(f"  inference, musicnn on CPU (measured): {cpu_tracks:.2f} tracks/s per CPU worker -> "
                 f"{math.ceil(need / cpu_tracks)} CPU workers")
    for name, count in gpus.items():  # each inference actor also holds one CPU
        lines.append(f"  cluster for {name.split()[0]}: {count} H100 + {cores + count} CPU cores")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracks", type=int, default=16)
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--library", type=Path, default=Path("/tmp/genretag-bench/ray-scaling"))
    p.add_argument("--seconds", type=float, default=20.0, help="How long inference is timed.")
    p.add_argument("--rounds", type=int, default=3, help="Times each track is decoded per measurement.")
    p.add_argument("--sample-rate", type=int, default=CD_RATE, help="the generated library's rate")
    p.add_argument("--channels", type=int, default=2, choices=(1, 2), help="the generated library's channels")
    args = p.parse_args()
    import ray
    from ray.data import DataContext

    from tagger.engine_ray import _track_row
    from tagger.models.infer import load_classifier
    from tagger.records import Track

    paths = make_library(args.library, args.tracks, sample_rate=args.sample_rate, channels=args.channels)
    tracks = [_track_row(Track(str(p), p.stat().st_size, p.stat().st_mtime_ns)) for p in paths]
    sample_rate = load_classifier(MODEL, "cpu", "fp32").sampling_rate
    ray.init("local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    print(f"machine: {os.cpu_count()} CPUs; Ray cluster: {args.cpus} CPUs; {len(tracks)} tracks of 3-5 min "
          f"({args.sample_rate} Hz, {args.channels} channel(s)) in {args.library}", flush=True)
    DataContext.get_current().enable_progress_bars = False
    decode_rate(tracks[:2 * args.cpus], sample_rate, args.cpus)  # starts the workers, imports torch there
    rates = {}
    for workers in sorted({1, args.cpus}):
        rate, windows = decode_rate(tracks * args.rounds, sample_rate, workers)
        rates[workers] = rate / workers
        print(f"decode, {workers} CPU worker(s): {rate:.2f} tracks/s = {rates[workers]:.2f} tracks/s per "
              f"worker ({windows} windows, {windows / len(tracks) / args.rounds:.1f} per track)", flush=True)
    windows_per_s, precision = inference_rate(tracks, sample_rate, args.seconds)
    print(f"inference, {MODEL} {precision} on 1 CPU worker: {windows_per_s:.2f} windows/s = "
          f"{windows_per_s / WINDOWS_PER_TRACK:.2f} tracks/s", flush=True)
    for line in estimate(min(rates.values()), windows_per_s):
        print(line)
    ray.shutdown()


if __name__ == "__main__":
    main()
