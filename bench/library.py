"""Deterministic benchmark libraries: music-like synthetic tracks of 3–5 min in six formats.

    python bench/library.py OUT_DIR --tracks 20

The same arguments always give the same audio (seeded synthesis, fixed encoder settings).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tagger.demo import FORMATS, STYLES, encode, synth  # noqa: E402


def make_library(folder: Path, tracks: int, seed: int = 0, min_s: float = 180, max_s: float = 300,
                 formats=FORMATS) -> list[Path]:
    import numpy as np

    rng = np.random.default_rng(seed)
    styles = list(STYLES)
    paths = []
    for i in range(tracks):
        seconds = float(rng.uniform(min_s, max_s))
        path = folder / styles[i % len(styles)] / f"track-{i:05d}.{formats[i % len(formats)]}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            encode(synth(styles[i % len(styles)], seconds, seed=seed + i), path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--tracks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for p in make_library(args.out, args.tracks, args.seed):
        print(p)
