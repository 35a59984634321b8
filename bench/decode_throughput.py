"""Decoding throughput: what the scan's decode stage delivers, and what bounds a scan on a GPU.

    python bench/decode_throughput.py --workers 1 2 [--tracks 48 --distinct 12 --sample-rate 44100]

A GPU infers a track's three windows in milliseconds, so a GPU scan runs only as fast as its CPU
threads decode. This runs the scan's own decode stage (``bounded_map`` over ``decode_or_fail`` on
``--workers`` threads, the windows resampled to ``--rate``, no model) on a generated library
(bench/library.py: 44.1 kHz stereo by default, what a collection holds) and prints:
  - per format, the median CPU time of decoding one track on one thread (no contention);
  - per ``--workers`` value, tracks/s and CPU seconds per track;
  - the tracks/s this machine's cores could decode at the single-thread cost (the ceiling a GPU scan
    meets), and how many such cores 200 tracks/s would need.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.host import StealClock  # noqa: E402
from bench.library import CD_RATE, make_library  # noqa: E402


def tracks_of(paths: list[Path]):
    from tagger.records import Track

    return [Track(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]


def single_thread_costs(tracks, rate: int, max_windows: int, repeats: int) -> dict[str, float]:
    """Median CPU seconds (this thread's) of decoding one track, per format; the least of ``repeats``
    runs of each file, so the page cache and the first run's allocations do not count."""
    from tagger.engine import decode_or_fail

    per_format = defaultdict(list)
    for track in tracks:
        best = float("inf")
        for _ in range(repeats):
            started = time.thread_time()
            result = decode_or_fail(track, rate, max_windows)
            best = min(best, time.thread_time() - started)
        if not hasattr(result, "windows"):
            sys.exit(f"{track.path}: {result.error}")
        per_format[Path(track.path).suffix.lstrip(".")].append(best)
    return {fmt: statistics.median(costs) for fmt, costs in sorted(per_format.items())}


def stage_rate(tracks, rate: int, max_windows: int, workers: int) -> tuple[float, float]:
    """Tracks/s and process CPU seconds per track of the scan's decode stage on ``workers`` threads."""
    from tagger.engine import bounded_map, decode_or_fail

    cpu, started = time.process_time(), time.perf_counter()
    failed = sum(not hasattr(result, "windows")
                 for result in bounded_map(lambda t: decode_or_fail(t, rate, max_windows), tracks, workers))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    if failed:
        sys.exit(f"{failed} of {len(tracks)} tracks failed to decode")
    return len(tracks) / wall, cpu / len(tracks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tracks", type=int, default=48, help="tracks each --workers value decodes")
    p.add_argument("--distinct", type=int, default=12, help="generated tracks, repeated up to --tracks")
    p.add_argument("--library", type=Path, default=Path(tempfile.gettempdir()) / "genretag-bench-lib")
    p.add_argument("--sample-rate", type=int, default=CD_RATE, help="the library's rate")
    p.add_argument("--channels", type=int, default=2, choices=(1, 2), help="the library's channels")
    p.add_argument("--rate", type=int, default=16000, help="the model's rate the windows are decoded at")
    p.add_argument("--max-windows", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="runs per file of the single-thread cost")
    args = p.parse_args()

    paths = make_library(args.library, args.distinct, sample_rate=args.sample_rate, channels=args.channels)
    distinct = tracks_of(paths)
    tracks = [distinct[i % len(distinct)] for i in range(args.tracks)]
    import torchcodec.decoders  # noqa: F401 - its import (seconds) is not decoding

    with StealClock() as steal:
        costs = single_thread_costs(distinct, args.rate, args.max_windows, args.repeats)
        mean_cost = statistics.fmean(costs[Path(t.path).suffix.lstrip(".")] for t in tracks)
        rates = {workers: stage_rate(tracks, args.rate, args.max_windows, workers) for workers in args.workers}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"library: {len(distinct)} distinct tracks, {args.sample_rate} Hz, {args.channels} channel(s); "
          f"{args.max_windows} windows/track decoded at {args.rate} Hz; {cores} usable CPUs")
    print("single-thread CPU ms per track: "
          + ", ".join(f"{fmt} {1000 * cost:.0f}" for fmt, cost in costs.items())
          + f"; mean over the library's mix {1000 * mean_cost:.0f}")
    print(f"{'workers':>8}{'tracks/s':>10}{'CPU ms/track':>14}")
    for workers, (tracks_per_s, cpu_per_track) in rates.items():
        print(f"{workers:8}{tracks_per_s:10.1f}{1000 * cpu_per_track:14.0f}")
    print(f"ceiling at the single-thread cost: {cores / mean_cost:.0f} tracks/s on {cores} cores "
          f"({1 / mean_cost:.1f} per core); 200 tracks/s needs {200 * mean_cost:.0f} such cores")
    print(steal.summary())


if __name__ == "__main__":
    main()
