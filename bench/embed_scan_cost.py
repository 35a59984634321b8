"""What keeping embeddings costs a scan: the built-in model's scan, this checkout against another.

    git archive BASE_COMMIT | tar -x -C /tmp/base
    python bench/embed_scan_cost.py --baseline /tmp/base --tracks 6 --pairs 4

Builds ``--tracks`` bench/library.py tracks (3-5 min, six formats, 44.1 kHz stereo), then scans them
``--pairs`` times with each source tree, alternating (baseline, this, baseline, this …), each scan a
fresh process with a fresh index (``tag_folder``, dry run, builtin:musicnn-msd, default settings), and
prints each scan's wall time (in all, and from the first result's arrival to the last) and the medians.
Interleaving keeps the machine's other work from favouring one side.

The scans' spread on a shared machine hides a few percent, so it also times the one change in the
model's hot path on its own: ``classifier.predict`` against what the engines now call,
``predict_function(classifier)`` (the same forward pass, also returning each window's embedding),
one 30 s window at a time on one thread as a CPU scan's calls run, alternating, ``--calls`` of each.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

CHILD = """
import json, sys, time
from tagger import ScanSettings, tag_folder
times = []
started = time.perf_counter()
summary = tag_folder(sys.argv[1], ScanSettings(model="builtin:musicnn-msd", db=sys.argv[2], dry_run=True),
                     on_result=lambda r: times.append(time.perf_counter()))
print(json.dumps({"total": time.perf_counter() - started, "first_to_last": times[-1] - times[0],
                  "tracks": summary.predicted, "failed": summary.failed}))
"""


def scan(source: Path, library: Path, db: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(source)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(library), str(db)], env=env, capture_output=True,
                         text=True, check=True, cwd=source).stdout
    return json.loads(out.strip().splitlines()[-1])


def model_calls(calls: int) -> None:
    import torch

    from tagger.demo import synth
    from tagger.engine import predict_function
    from tagger.models.infer import pick_precision
    from tagger.models.musicnn import load_builtin

    torch.set_num_threads(1)
    classifier = load_builtin("musicnn-msd", precision=pick_precision("auto", torch.device("cpu")))
    window = torch.from_numpy(synth("rockish", 30.0, sample_rate=16000))
    windows, lengths = window[None], torch.tensor([window.numel()])
    sides = {"predict": classifier.predict, "predict_function": predict_function(classifier)}
    for call in sides.values():  # warm up
        call(windows, lengths)
    seconds = {name: [] for name in sides}
    for _ in range(calls):
        for name, call in sides.items():
            started = time.perf_counter()
            call(windows, lengths)
            seconds[name].append(time.perf_counter() - started)
    for name, values in seconds.items():
        print(f"{name:>17}: median {statistics.median(values) * 1000:.1f} ms per 30 s window "
              f"(min {min(values) * 1000:.1f}, {calls} calls, 1 thread, {classifier.precision})")
    ratio = statistics.median(b / a for a, b in zip(seconds["predict"], seconds["predict_function"]))
    print(f"predict_function / predict, median of the paired ratios: {ratio:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, help="Source tree of the version to compare with.")
    p.add_argument("--tracks", type=int, default=6)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--work", type=Path, help="Keep the generated library here (default: a temp dir).")
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--calls-only", action="store_true", help="Only time the model calls.")
    args = p.parse_args()
    model_calls(args.calls)
    if args.calls_only or args.baseline is None:
        return
    from bench.library import make_library

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        paths = make_library(work / "library", args.tracks)
        library = paths[0].parents[1]
        results = {"baseline": [], "this": []}
        for i in range(args.pairs):
            for name, source in (("baseline", args.baseline), ("this", HERE)):
                got = scan(source, library, Path(tmp) / f"{name}-{i}.db")
                assert got["failed"] == 0 and got["tracks"] == args.tracks, got
                results[name].append(got)
                print(f"{name:>8} #{i + 1}: {got['total']:.1f} s in all, {got['first_to_last']:.1f} s from the "
                      f"first result to the last", flush=True)
        for name, runs in results.items():
            print(f"{name:>8}: median {statistics.median(r['total'] for r in runs):.1f} s in all, "
                  f"{statistics.median(r['first_to_last'] for r in runs):.1f} s first to last result "
                  f"({args.tracks} tracks)")
        print(f"load average now: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
