"""Rescan speed: a library whose every track is already indexed and unchanged.

    python bench/rescan_bench.py --tracks 100000

Makes a tree of small files, fills the index with a prediction for each (same size and mtime, the
model's fingerprint), then times ``tag_folder`` — which must skip them all — in-process, the quick
counting pass that gives an interactive scan's progress bar its total, and the whole ``genretag scan``
command (imports and model load included) as a subprocess, with that command's peak RSS: discovery
streams, so it should not grow with the library.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


PEAK_RSS_AT_EXIT = ("import atexit, sys\n"
                    "def peak(): print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')),"
                    " file=sys.stderr)\n"
                    "atexit.register(peak)\n"
                    "from tagger.cli import main\n"
                    "main()\n")


def command_peak_rss_mib(args: list[str]) -> float:
    """Peak RSS of ``genretag ARGS`` (Linux: the process's own VmHWM). Not the children's ``ru_maxrss``:
    that keeps the high-water mark of the process it was forked from, this benchmark with torch loaded."""
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS_AT_EXIT, *args], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[1])
    line = next(line for line in proc.stderr.splitlines() if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracks", type=int, default=100_000)
    args = p.parse_args()
    from tagger import ScanSettings, tag_folder
    from tagger.discover import count_audio_files
    from tagger.index import Index
    from tagger.models.infer import load_classifier
    from tagger.records import OK, TrackResult
    from tests.models import make_tiny_wav2vec2

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = str(make_tiny_wav2vec2(tmp / "model"))
        classifier = load_classifier(model, "cpu", "fp32")
        started = time.perf_counter()
        results = []
        for i in range(args.tracks):
            path = tmp / "lib" / f"artist{i // 1000:03d}" / f"album{i // 100 % 10}" / f"{i:06d}.mp3"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xff\xfb" + i.to_bytes(4, "little"))
            st = path.stat()
            results.append(TrackResult(str(path), OK, labels=["pop"], scores=[0.9], windows=3,
                                       ranking=[("pop", 0.9), ("jazz", 0.06), ("blues", 0.03), ("metal", 0.01)],
                                       size=st.st_size, mtime_ns=st.st_mtime_ns))
        db = tmp / "index.db"
        with Index(db) as index:
            run = index.start_run("scan")
            for start in range(0, len(results), 5000):
                index.record_results(results[start:start + 5000], model, classifier.fingerprint, run,
                                     classifier.label_map.digest())
        print(f"setup: {args.tracks} files and index rows in {time.perf_counter() - started:.1f} s")
        settings = ScanSettings(model=model, db=str(db), min_confidence=0.3)
        started = time.perf_counter()
        summary = tag_folder(tmp / "lib", settings, classifier=classifier)
        lib_s = time.perf_counter() - started
        assert summary.skipped == args.tracks and summary.scanned == summary.relabelled == 0, summary.counts()
        started = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("genretag")), "scan", str(tmp / "lib"),
                        "--model", model, "--db", str(db), "--min-confidence", "0.3"], check=True,
                       capture_output=True)
        cli_s = time.perf_counter() - started
        cli_mib = command_peak_rss_mib(["scan", str(tmp / "lib"), "--model", model, "--db", str(db),
                                        "--min-confidence", "0.3"])
        started = time.perf_counter()
        counted = count_audio_files(tmp / "lib")
        count_s = time.perf_counter() - started
        assert counted == args.tracks, counted
        print(f"rescan of {args.tracks} unchanged tracks: tag_folder {lib_s:.1f} s "
              f"({args.tracks / lib_s:.0f} tracks/s); `genretag scan` subprocess {cli_s:.1f} s, "
              f"peak RSS {cli_mib:.0f} MiB; the progress bar's counting pass {count_s:.2f} s")


if __name__ == "__main__":
    main()
