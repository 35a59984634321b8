"""Relabel speed: a head predicting an indexed library from the embeddings the index keeps.

    python bench/relabel_bench.py --tracks 100000

Makes a tree of tiny stand-in files (as bench/rescan_bench.py), and an index in which each has what a
``builtin:musicnn-msd`` scan leaves: its prediction, its tags and its 200-d float16 embedding (synthetic
draws around 10 genre centres). A head is fitted on other draws (``training.heads.fit_head``, saved with
``save_head``). Then, each time on a fresh copy of that index (no prediction by the head yet):

* ``genretag scan LIB --model HEAD --db DB`` as a subprocess, end to end (imports, loading the head,
  discovery, lookups, scoring, index writes): the figure the target is about;
* ``tag_folder`` in-process with each stage timed: discovery (walk and stat), lookup (the stored
  predictions and the embeddings, a chunk at a time), scoring (``head_scores``), index writes
  (``record_results``), and the rest (deciding, building results).

It also prints what the embeddings add to the index file: the same 100,000 predictions written once
with and once without their embeddings, the files' sizes compared after a checkpoint.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.host import StealClock  # noqa: E402

GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
DIM = 200
BATCH = 5000


def clusters(n: int, seed: int):
    """``n`` 200-d draws around 10 fixed centres (seed 0), and their genre indices."""
    import numpy as np

    centres = np.random.default_rng(0).normal(size=(len(GENRES), DIM))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(GENRES), n)
    return (centres[y] + 2.0 * rng.normal(size=(n, DIM))).astype(np.float16), y


def make_head(folder: Path) -> tuple[Path, str]:
    """A head fitted on 2,000 synthetic embeddings, saved as `genretag train` saves one; its space."""
    from tagger.models.identity import BUILTIN_EMBEDDING_LAYER, embedding_space, model_identity
    from training.heads import fit_head, save_head

    identity = model_identity("builtin:musicnn-msd")
    space = embedding_space(identity.model_id, identity.fingerprint, BUILTIN_EMBEDDING_LAYER)
    backbone = SimpleNamespace(fingerprint=identity.fingerprint, embedding_layer=BUILTIN_EMBEDDING_LAYER,
                               embedding_space=space, embedding_dim=DIM)
    x, y = clusters(2000, seed=1)
    fit = fit_head(x, [GENRES[i] for i in y], nested=False)
    folder.mkdir(parents=True)
    save_head(folder, fit, backbone, "builtin:musicnn-msd")
    return folder, space


def make_library(root: Path, tracks: int) -> list[tuple[str, int, int]]:
    paths = []
    for i in range(tracks):
        path = root / f"artist{i // 1000:03d}" / f"album{i // 100 % 10}" / f"{i:06d}.mp3"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xfb" + i.to_bytes(4, "little"))
        st = path.stat()
        paths.append((str(path), st.st_size, st.st_mtime_ns))
    return paths


def fill_index(db: Path, files, space: str, with_embeddings: bool) -> float:
    """The index a builtin:musicnn-msd scan of ``files`` would leave; returns its size in bytes."""
    from tagger.index import Index
    from tagger.models.identity import model_identity
    from tagger.records import OK, TrackResult

    identity = model_identity("builtin:musicnn-msd")
    vectors, _ = clusters(len(files), seed=2)
    with Index(db) as index:
        run = index.start_run("scan")
        for start in range(0, len(files), BATCH):
            index.record_results([
                TrackResult(path, OK, labels=["Rock"], scores=[0.61], windows=3, duration=241.0, codec="mp3",
                            ranking=[("Rock", 0.61), ("Pop", 0.2), ("Electronic", 0.1), ("Jazz", 0.05)],
                            window_labels=[[("Rock", 0.6)]] * 3, size=size, mtime_ns=mtime_ns,
                            tags={"genres": ["Rock"], "artist": f"Artist {i // 1000}", "album": "Album",
                                  "title": f"Track {i}"},
                            embedding=vectors[i] if with_embeddings else None,
                            embedding_space=space if with_embeddings else None)
                for i, (path, size, mtime_ns) in enumerate(files[start:start + BATCH], start)],
                "builtin:musicnn-msd", identity.fingerprint, run)
    return db.stat().st_size  # the last connection's close checkpointed the WAL into the file


class Stages:
    """Wall time spent inside chosen functions, by stage, while a block runs."""

    def __init__(self):
        self.seconds = defaultdict(float)

    @contextmanager
    def timing(self, targets: dict[str, list[tuple[object, str]]]):
        saved = []
        for stage, functions in targets.items():
            for owner, name in functions:
                original = getattr(owner, name)
                saved.append((owner, name, original))
                setattr(owner, name, self._timed(stage, original))
        try:
            yield self
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)

    def _timed(self, stage: str, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - started
        return timed


def in_process(lib: Path, head: Path, db: Path, tracks: int) -> tuple[float, dict[str, float]]:
    """One relabel through ``tag_folder``: its wall time, and the time spent in each stage."""
    import tagger.pipeline
    from tagger import ScanSettings, tag_folder
    from tagger.index import Index
    from tagger.models.head import HeadClassifier

    stages = Stages()
    targets = {"lookup (predictions, embeddings)": [(Index, "cached_predictions"), (Index, "embedded_tracks")],
               "scoring (head_scores)": [(HeadClassifier, "head_scores")],
               "index writes (record_results)": [(Index, "record_results")]}
    original = tagger.pipeline.discover
    tagger.pipeline.discover = timed_discovery(original, stages)
    started = time.perf_counter()
    try:
        with stages.timing(targets):
            summary = tag_folder(lib, ScanSettings(model=str(head), db=str(db)))
    finally:
        tagger.pipeline.discover = original
    total = time.perf_counter() - started
    assert summary.from_embedding == tracks and summary.predicted == summary.from_index == 0, summary.counts()
    return total, dict(stages.seconds)


def timed_discovery(original, stages: Stages):
    """discover() is a generator: its time is spent while the scan pulls from it, which a wrapper of
    the call would not see; this one times each step."""

    def discover(*args, **kwargs):
        items = original(*args, **kwargs)
        while True:
            started = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                stages.seconds["discovery (walk, stat)"] += time.perf_counter() - started
            yield item
    return discover


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracks", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        head, space = make_head(tmp / "head")
        files = make_library(tmp / "lib", args.tracks)
        plain = fill_index(tmp / "plain.db", files, space, with_embeddings=False)
        full = fill_index(tmp / "prepared.db", files, space, with_embeddings=True)
        print(f"setup: {args.tracks:,} files, a head and two indexes in {time.perf_counter() - started:.0f} s")
        print(f"index file: {plain / 2**20:.1f} MiB without embeddings, {full / 2**20:.1f} MiB with them: "
              f"{(full - plain) / args.tracks:.0f} bytes per track for a {DIM}-d float16 embedding "
              f"({2 * DIM} bytes of vector); {(full - plain) / args.tracks * 1e5 / 2**20:.0f} MiB per 100,000 tracks")
        genretag = str(Path(sys.executable).with_name("genretag"))
        for repeat in range(args.repeats):
            db = Path(shutil.copy(tmp / "prepared.db", tmp / "run.db"))
            with StealClock() as steal:
                started = time.perf_counter()
                proc = subprocess.run([genretag, "scan", str(tmp / "lib"), "--model", str(head), "--db", str(db)],
                                      capture_output=True, text=True)
                cli_s = time.perf_counter() - started
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            print(f"[{repeat + 1}] `genretag scan --model HEAD` of {args.tracks:,} tracks: {cli_s:.1f} s wall "
                  f"({args.tracks / cli_s:,.0f} tracks/s); {steal.summary()}")
            print("    " + proc.stderr.strip().splitlines()[-1])
            db = Path(shutil.copy(tmp / "prepared.db", tmp / "run.db"))
            total, seconds = in_process(tmp / "lib", head, db, args.tracks)
            rest = total - sum(seconds.values())
            parts = ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items())
            print(f"    tag_folder in-process: {total:.1f} s = {parts}, deciding and building results {rest:.1f} s")
        print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average before the last run: "
              f"{os.getloadavg()[0]:.1f}")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
