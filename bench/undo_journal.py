"""What exact undo costs: journal bytes and time per write, and whether every file comes back byte for byte.

    python bench/undo_journal.py [--tracks 12] [--large-minutes 60] [--work DIR] [--skip-large]

Three sets of files, each written with ``write_genres(["Rock", "Shoegaze"], provenance=...)`` the way a
scan writes (copy, mutagen, read-back, fsync, rename) without and then with the undo record, and given
back with ``restore_exact``; every file must then hash like the original and keep its modification time:

* the bench library (``bench/library.py``: 3–5 min tracks, 44.1 kHz stereo, six formats);
* every writable file of mutagen's corpus (``../shared/corpus/mutagen-data``, or
  ``$GENRETAG_MUTAGEN_CORPUS``);
* large files (``--large-minutes``, one process each, peak RSS measured): an MP3, a WAV and an Ogg Vorbis
  as FFmpeg writes it, whose first tag write makes mutagen lay the header out on more pages and so
  renumber (new sequence number and CRC) every later page of the file: the worst case for undo data.

Prints a table per set: undo data bytes (median, max), milliseconds per write without and with the undo
record, per undo, and the count of files that came back exactly.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CORPUS = Path(os.environ.get("GENRETAG_MUTAGEN_CORPUS", ROOT.parent / "shared" / "corpus" / "mutagen-data"))
GENRES = ["Rock", "Shoegaze"]
PROVENANCE = "model=builtin:musicnn-msd;fp=0123456789abcdef;score=0.8123;labels=Rock,Shoegaze"
OLD = 978_307_200 * 10**9


def state(path: Path) -> tuple[str, int]:
    from tagger.tagging.delta import file_sha256

    return file_sha256(str(path)), path.stat().st_mtime_ns


def measure(source: Path, work: Path) -> dict | None:
    """One file: write without the undo record, then (on a fresh copy) with it, then undo exactly."""
    from tagger.errors import TagWriteError
    from tagger.tagging.tags import restore_exact, write_genres

    path = work / source.name
    timings = {}
    for record in (False, True):
        shutil.copyfile(source, path)
        os.chmod(path, 0o644)
        os.utime(path, ns=(OLD, OLD))
        before = state(path)
        started = time.perf_counter()
        try:
            change = write_genres(path, GENRES, provenance=PROVENANCE, record_undo=record)
        except TagWriteError:
            return None
        timings[record] = time.perf_counter() - started
    started = time.perf_counter()
    restore_exact(path, change.undo)
    undo_s = time.perf_counter() - started
    exact = state(path) == before
    size = path.stat().st_size
    path.unlink()
    return {"file": source.name, "size": size, "undo_bytes": len(change.undo.data), "plain_ms": timings[False] * 1e3,
            "record_ms": timings[True] * 1e3, "undo_ms": undo_s * 1e3, "exact": exact}


def table(title: str, results: list[dict]) -> None:
    if not results:
        print(f"\n{title}: nothing measured")
        return
    by_ext: dict[str, list[dict]] = {}
    for r in results:
        by_ext.setdefault(Path(r["file"]).suffix.lower() or r["file"], []).append(r)
    print(f"\n{title}")
    print(f"{'format':10} {'files':>5} {'MB':>8} {'undo B med':>10} {'undo B max':>10} {'write ms':>9} "
          f"{'+record ms':>10} {'undo ms':>8} {'exact':>6}")
    for ext, rs in sorted(by_ext.items()) + [("all", results)]:
        print(f"{ext:10} {len(rs):5} {statistics.median(r['size'] for r in rs) / 1e6:8.2f} "
              f"{statistics.median(r['undo_bytes'] for r in rs):10,.0f} {max(r['undo_bytes'] for r in rs):10,} "
              f"{statistics.median(r['plain_ms'] for r in rs):9.1f} {statistics.median(r['record_ms'] for r in rs):10.1f} "
              f"{statistics.median(r['undo_ms'] for r in rs):8.1f} {sum(r['exact'] for r in rs):3}/{len(rs)}")


def bench_library(work: Path, tracks: int) -> list[dict]:
    from bench.library import make_library

    paths = make_library(work / "library", tracks)
    out = work / "out-library"
    out.mkdir(exist_ok=True)
    return [r for p in paths if (r := measure(p, out))]


def corpus(work: Path) -> list[dict]:
    import csv

    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.exists():
        return []
    out = work / "out-corpus"
    out.mkdir(exist_ok=True)
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["taggable_mutagen"] == "yes"]
    return [r for row in rows if (r := measure(CORPUS / row["file"], out))]


# -- large files, one process each -----------------------------------------------------------------------
def make_large(kind: str, minutes: float, work: Path) -> Path:
    path = work / f"large-{minutes:g}min.{'mp3' if kind == 'mp3' else 'wav' if kind == 'wav' else 'ogg'}"
    if path.exists():
        return path
    codec = {"mp3": ["-c:a", "libmp3lame", "-b:a", "320k"], "wav": ["-c:a", "pcm_s16le"],
             "ogg-renumbered": ["-c:a", "libvorbis", "-q:a", "6"]}[kind]
    partial = path.with_name(".partial-" + path.name)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "anoisesrc=color=pink:sample_rate=44100:amplitude=0.3", "-ac", "2", "-t", str(minutes * 60),
                    *codec, "-f", "mp3" if kind == "mp3" else "wav" if kind == "wav" else "ogg", str(partial)],
                   check=True)
    partial.rename(path)
    return path


def large_child(path: Path, work: Path) -> dict:
    """``measure`` in a process of its own; peak RSS growth over the plain write alone, and overall (a
    file mutagen moves data in is mapped, and its pages count as resident)."""
    from tagger.tagging.tags import write_genres

    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    out = work / "out-large"
    out.mkdir(exist_ok=True)
    base = peak()
    shutil.copyfile(path, out / path.name)
    write_genres(out / path.name, GENRES, provenance=PROVENANCE)
    plain = peak() - base
    result = measure(path, out)
    result["plain_peak_MiB"], result["peak_MiB"] = round(plain, 1), round(peak() - base, 1)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracks", type=int, default=12)
    p.add_argument("--large-minutes", type=float, default=60)
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "genretag-undo-bench")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(large_child(args.child, args.work)))
        return 0
    print(f"CPU: {_cpu()}")
    results = {"bench library": bench_library(args.work, args.tracks), "mutagen corpus": corpus(args.work)}
    for title, rs in results.items():
        table(title, rs)
    bad = sum(not r["exact"] for rs in results.values() for r in rs)
    if not args.skip_large:
        print(f"\nlarge files ({args.large_minutes:g} min, one process each)")
        for kind in ("mp3", "wav", "ogg-renumbered"):
            path = make_large(kind, args.large_minutes, args.work)
            proc = subprocess.run([sys.executable, __file__, "--child", str(path), "--work", str(args.work)],
                                  capture_output=True, text=True, cwd=ROOT)
            if proc.returncode:
                print(f"{kind}: failed\n{proc.stderr[-2000:]}")
                bad += 1
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            bad += not r["exact"]
            print(f"{kind:15} {r['size'] / 1e6:7.1f} MB: undo data {r['undo_bytes']:,} B, write {r['plain_ms']:.0f} ms, "
                  f"with undo record {r['record_ms']:.0f} ms, undo {r['undo_ms']:.0f} ms, peak RSS +{r['plain_peak_MiB']} MiB "
                  f"(plain write), +{r['peak_MiB']} MiB (all three), "
                  f"exact {r['exact']}")
    return 1 if bad else 0


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
