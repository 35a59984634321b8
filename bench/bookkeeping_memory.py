"""Memory and time of the per-track bookkeeping around a scan, by library size: none should grow with it.

    python bench/bookkeeping_memory.py [--sizes 20000,100000] [--skip-ray]

Each measurement runs in a fresh process and prints its peak RSS growth (over what the process held
after its imports) for every size:

* ``discovery``: ``discover`` over a tree of that many small files, the counting pass that gives the
  progress bar its total, and what listing the tracks first (as scans did) would hold;
* ``undo``: reading that many journal rows of one run (each with 4 kB of undo data) the way ``genretag
  undo`` does (``Journal.open_writes``, a page at a time, without the undo data), against reading them all
  at once;
* ``dry-run table``: a dry run's view fed that many planned changes, then its table printed;
* ``ray driver``: the Ray engine building its dataset for that many tracks (local 2-CPU cluster; the
  rows end up in the object store), skipped without Ray or with ``--skip-ray``. The driver hands
  tracks to Ray 100,000 at a time, so compare sizes above that (``--only "ray driver" --sizes
  150000,600000``).

Flat means the growth is the same for every size. Trees and journals are kept in ``--work`` for reuse.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample_path(i: int) -> str:
    return f"/home/user/Music/Artist {i % 500}/Album {i % 37}/{i:06d} - A Track Title.flac"


def prepare_discovery(size: int, work: Path) -> None:
    lib = work / f"lib-{size}"
    if lib.exists():
        return
    for i in range(size):
        path = lib / f"artist{i // 1000:03d}" / f"album{i // 100 % 10}" / f"{i:06d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"fLaC")


def measure_discovery(size: int, work: Path) -> dict:
    from tagger.discover import count_audio_files, discover

    lib = work / f"lib-{size}"
    base, started = peak_mib(), time.perf_counter()
    counted = count_audio_files(lib)
    count_s = time.perf_counter() - started
    walked = sum(1 for _ in discover(lib))
    streamed = peak_mib() - base
    listed = list(discover(lib))
    assert counted == walked == len(listed) == size
    return {"counting pass s": round(count_s, 2), "streamed MiB": round(streamed, 1),
            "listed first MiB": round(peak_mib() - base, 1)}


UNDO_DATA = 4096
"""Bytes of undo data per journalled write (a tag write records a few kB; the undo reads it one write at a
time, never a page of them)."""


def prepare_undo(size: int, work: Path) -> None:
    from tagger.index import Index

    db = work / f"journal-{size}.db"
    if not db.exists():
        with Index(db) as index:
            run = index.start_run("scan")
            before = {"format": "vorbis", "fields": {"genre": ["Shoegaze", "Dream Pop"]}}
            index.db["tag_writes"].insert_all(({
                "run_id": run, "path": sample_path(i), "raw_path": os.fsencode(sample_path(i)), "state": "written",
                "seq": i + 1, "before": json.dumps(before), "after": json.dumps({"format": "vorbis", "fields": {}}),
                "old_genres": '["Shoegaze", "Dream Pop"]', "new_genres": '["Rock"]', "before_sha256": "0" * 64,
                "after_sha256": "1" * 64, "undo_data": os.urandom(UNDO_DATA), "written_at": time.time()}
                for i in range(size)), batch_size=2000)


def measure_undo(size: int, work: Path) -> dict:
    from tagger.index import Index
    from tagger.tagging.journal import Journal

    with Index(work / f"journal-{size}.db") as index:
        journal = Journal(index)
        base = peak_mib()
        scope = journal.scope()
        assert journal.count(scope) == size
        started = time.perf_counter()
        assert sum(1 for _ in journal.open_writes(scope)) == size
        paged_s, paged = time.perf_counter() - started, peak_mib() - base
        everything = list(index.db.query("select * from tag_writes where state = 'written' order by seq desc"))
        assert len(everything) == size
        return {"paged MiB": round(paged, 1), "paged s": round(paged_s, 2),
                "all at once MiB": round(peak_mib() - base, 1)}


def measure_dry_run_table(size: int, work: Path) -> dict:
    from tagger.records import TrackResult
    from tagger.reporting.views import ScanView
    from tagger.settings import ScanSettings

    view = ScanView(ScanSettings(dry_run=True))
    base, started = peak_mib(), time.perf_counter()
    for i in range(size):
        view.result(TrackResult(sample_path(i), "ok", labels=["Rock"], scores=[0.83], tags={"genres": ["Pop"]}))
    collected = time.perf_counter() - started
    with open(os.devnull, "w") as sink:
        view.out.file = sink
        started = time.perf_counter()
        view._planned_table()
    return {"results s": round(collected, 2), "table s": round(time.perf_counter() - started, 2),
            "MiB": round(peak_mib() - base, 1)}


def measure_ray_driver(size: int, work: Path) -> dict:
    import logging

    import ray

    from tagger.engine_ray import RayEngine
    from tagger.records import Track
    from tagger.settings import ScanSettings

    ray.init("local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)

    class Classifier:
        sampling_rate, fingerprint = 16000, "bench"

    engine = RayEngine(Classifier(), ScanSettings(model="builtin:musicnn-msd", engine="ray",
                                                  ray_inference_workers=1))
    warm = engine._dataset(Track(sample_path(i), 1, 1) for i in range(1000))  # imports, first dataset
    del warm
    base, started = peak_mib(), time.perf_counter()
    engine._dataset(Track(sample_path(i), 30_000_000 + i, 1_700_000_000_000_000_000 + i) for i in range(size))
    result = {"MiB": round(peak_mib() - base, 1), "setup s": round(time.perf_counter() - started, 1)}
    ray.shutdown()
    return result


MEASUREMENTS = {"discovery": measure_discovery, "undo": measure_undo, "dry-run table": measure_dry_run_table,
                "ray driver": measure_ray_driver}
PREPARE = {"discovery": prepare_discovery, "undo": prepare_undo}
"""Fixtures made in a process of their own, so that making them does not raise the measured peak."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="20000,100000")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--only", choices=list(MEASUREMENTS), help="run this measurement alone")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "genretag-bookkeeping")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        if args.prepare:
            PREPARE[args.child](args.size, args.work)
        else:
            print(json.dumps(MEASUREMENTS[args.child](args.size, args.work)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    names = [args.only] if args.only else [
        n for n in MEASUREMENTS if not (n == "ray driver" and (args.skip_ray or not _has_ray()))]
    for name in names:
        for size in (int(s) for s in args.sizes.split(",")):
            command = [sys.executable, __file__, "--child", name, "--size", str(size), "--work", str(args.work)]
            if name in PREPARE:
                subprocess.run(command + ["--prepare"], check=True, cwd=ROOT)
            proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode:
                print(f"{name:14} {size:>9,}: failed\n{proc.stderr[-2000:]}")
                continue
            figures = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name:14} {size:>9,}: " + ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)


def _has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
