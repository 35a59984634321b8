"""Deterministic benchmark libraries: music-like synthetic tracks of 3–5 min in six formats.

    python bench/library.py OUT_DIR --tracks 20 [--sample-rate 22050 --channels 1]

The same arguments always give the same audio (seeded synthesis, fixed encoder settings). By default the
tracks are what a collection holds, 44.1 kHz stereo (Opus 48 kHz) at 320 kbit/s MP3, 256 kbit/s AAC,
Vorbis quality 6 and 160 kbit/s Opus, because decoding them costs about twice as much CPU as 22.05 kHz
mono, and decoding is what bounds a scan on a GPU. They go under ``OUT_DIR/<rate>hz-<channels>ch/``.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tagger.demo import FORMATS, STYLES, encode, stereo, synth  # noqa: E402

CD_RATE = 44100


def make_library(folder: Path, tracks: int, seed: int = 0, min_s: float = 180, max_s: float = 300,
                 formats=FORMATS, workers: int | None = None, sample_rate: int = CD_RATE,
                 channels: int = 2) -> list[Path]:
    """The tracks' paths, encoding those not there yet on ``workers`` processes (default: one per CPU;
    synthesis is mostly Python, so threads would not overlap)."""
    import numpy as np

    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {channels}")
    rng = np.random.default_rng(seed)
    styles = list(STYLES)
    root = folder / f"{sample_rate}hz-{channels}ch"  # libraries of other formats never mix
    plan = []
    for i in range(tracks):
        seconds = float(rng.uniform(min_s, max_s))
        path = root / styles[i % len(styles)] / f"track-{i:05d}.{formats[i % len(formats)]}"
        plan.append((path, styles[i % len(styles)], seconds, seed + i, sample_rate, channels))
    missing = [track for track in plan if not track[0].exists()]
    if len(missing) == 1 or workers == 1:
        for track in missing:
            _make_track(track)
    elif missing:
        context = multiprocessing.get_context("spawn")  # a child of a process with threads: no fork
        with ProcessPoolExecutor(workers or os.cpu_count(), mp_context=context) as pool:
            list(pool.map(_make_track, missing))
    return [track[0] for track in plan]


def _make_track(track: tuple) -> None:
    path, style, seconds, seed, sample_rate, channels = track
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".partial-{path.name}")
    samples = synth(style, seconds, seed=seed, sample_rate=sample_rate)
    if channels == 2:
        samples = stereo(samples, sample_rate)
    encode(samples, partial, sample_rate, hifi=channels == 2)
    os.replace(partial, path)  # an interrupted run leaves no half-written track behind



def drop_from_page_cache(paths) -> None:
    """Write the files back and drop their pages from the page cache, so that the next reader reads them
    from the disk as a first scan of a library does: tracks just generated, or just read by another
    contender, would otherwise come from memory. (Hard links share one file's pages, which is why the
    benches scan distinct files.)"""
    for path in {os.path.realpath(p) for p in paths}:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def page_cache_share(paths) -> float:
    """The share of the files' bytes that the page cache holds now, 0.0 to 1.0 (util-linux's ``fincore``),
    or NaN where that cannot be told; the benches print it to show that a scan read its files from disk."""
    import shutil
    import subprocess

    unique = sorted({os.path.realpath(p) for p in paths})
    if not unique or not shutil.which("fincore"):
        return float("nan")
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE", *unique],
                         capture_output=True, text=True)
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    size = sum(int(row[1]) for row in rows)
    return sum(int(row[0]) for row in rows) / size if out.returncode == 0 and size else float("nan")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--tracks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-rate", type=int, default=CD_RATE)
    parser.add_argument("--channels", type=int, default=2, choices=(1, 2))
    args = parser.parse_args()
    for p in make_library(args.out, args.tracks, args.seed, sample_rate=args.sample_rate, channels=args.channels):
        print(p)
