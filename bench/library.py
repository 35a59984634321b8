"""Deterministic benchmark libraries: music-like synthetic tracks of 3–5 min in six formats.

    python bench/library.py OUT_DIR --tracks 20

The same arguments always give the same audio (seeded synthesis, fixed encoder settings).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tagger.demo import FORMATS, STYLES, encode, synth  # noqa: E402


def make_library(folder: Path, tracks: int, seed: int = 0, min_s: float = 180, max_s: float = 300,
                 formats=FORMATS, workers: int | None = None) -> list[Path]:
    """The tracks' paths, encoding those not there yet on ``workers`` processes (default: one per CPU;
    synthesis is mostly Python, so threads would not overlap)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    styles = list(STYLES)
    plan = []
    for i in range(tracks):
        seconds = float(rng.uniform(min_s, max_s))
        path = folder / styles[i % len(styles)] / f"track-{i:05d}.{formats[i % len(formats)]}"
        plan.append((path, styles[i % len(styles)], seconds, seed + i))
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
    path, style, seconds, seed = track
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".partial-{path.name}")
    encode(synth(style, seconds, seed=seed), partial)
    os.replace(partial, path)  # an interrupted run leaves no half-written track behind


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--tracks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for p in make_library(args.out, args.tracks, args.seed):
        print(p)
