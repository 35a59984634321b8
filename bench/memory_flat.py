"""Memory over a long scan: peak RSS and RSS along the way for 100 and for 1,000 tracks.

    python bench/memory_flat.py [--distinct 100] [--sizes 100,1000] [--model tiny|wav2vec2-base|PATH]

Builds ``--distinct`` different 3–5 min tracks (bench/library.py, six formats) and a tree with as many
hard links to them as the largest size asks for (so 1,000 tracks cost the disk of 100), then runs
``tag_folder`` (dry run, fresh index) once per size, each in a fresh process, and prints its peak RSS
and its RSS after every 10 % of the tracks. Flat memory means the 1,000-track peak equals the
100-track peak: nothing is kept per track (results stream to the index in batches).

``--model tiny`` (default) is a 2-layer wav2vec2 so the run takes minutes and shows the pipeline's own
memory; ``wav2vec2-base`` adds the full-size model's weights and activations on top (slow on CPU).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.host import StealClock  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(folder: str, model: str, db: str, total: int) -> None:
    """One scan in this process; prints a JSON line with the peak and the RSS samples."""
    from tagger import ScanSettings, tag_folder

    samples, seen = [], [0]
    every = max(1, total // 10)

    def on_result(_result) -> None:
        seen[0] += 1
        if seen[0] % every == 0:
            samples.append((seen[0], round(rss_mib())))

    started = time.perf_counter()
    summary = tag_folder(folder, ScanSettings(model=model, db=db, dry_run=True, device="cpu"),
                         on_result=on_result)
    print(json.dumps({"tracks": summary.scanned, "failed": summary.failed,
                      "seconds": round(time.perf_counter() - started, 1),
                      "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "samples": samples}))


def link_tree(distinct: list[Path], folder: Path, count: int) -> Path:
    """``count`` paths (hard links, cycling over ``distinct``) under ``folder``."""
    for i in range(count):
        path = folder / f"copy{i // len(distinct):03d}" / f"{i:05d}{distinct[i % len(distinct)].suffix}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(distinct[i % len(distinct)], path)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--distinct", type=int, default=100)
    p.add_argument("--sizes", default="100,1000")
    p.add_argument("--model", default="tiny")
    p.add_argument("--work", type=Path, help="Keep the generated library here (default: a temp dir).")
    p.add_argument("--child", nargs=4, metavar=("FOLDER", "MODEL", "DB", "TOTAL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        folder, model, db, total = args.child
        child(folder, model, db, int(total))
        return
    from bench.library import make_library
    from bench.scan_bench import build_model
    from tests.models import make_tiny_wav2vec2

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        started = time.perf_counter()
        distinct = make_library(work / "distinct", args.distinct)
        print(f"{len(distinct)} distinct tracks ready in {time.perf_counter() - started:.0f} s")
        model = (str(make_tiny_wav2vec2(Path(tmp) / "tiny")) if args.model == "tiny"
                 else build_model(args.model, Path(tmp)))
        print(f"model: {args.model}; machine: {os.cpu_count()} cores")
        print(f"{'tracks':>7} {'seconds':>8} {'failed':>6} {'peak RSS MiB':>13}  RSS MiB after each 10 %")
        for size in (int(s) for s in args.sizes.split(",")):
            folder = link_tree(distinct, work / f"tree{size}", size)
            with StealClock() as steal:
                out = subprocess.run([sys.executable, __file__, "--child", str(folder), model,
                                      str(Path(tmp) / f"index{size}.db"), str(size)],
                                     capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            got = json.loads(out)
            curve = " ".join(str(mib) for _, mib in got["samples"])
            print(f"{got['tracks']:>7} {got['seconds']:>8} {got['failed']:>6} {got['peak_mib']:>13}  {curve}")
            print(f"{'':>7} {steal.summary()}")


if __name__ == "__main__":
    main()
