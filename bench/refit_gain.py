"""What does refitting the head written on every labelled clip (``genretag train --refit-all``, the default)
change, with 5 clips per genre?

    .venv/bin/python bench/refit_gain.py ../shared/gtzan-dev

With 5 clips per genre the default split holds one out for the test part; without the refit the head
written learns from 4, with it from 5. A head fitted on 5 cannot be scored on gtzan-dev (no sixth clip),
so the same step is measured one clip lower, on clips no head saw, leave-one-clip-per-genre-out:

for each held-out clip number r (0-4; the 10 clips numbered r are the test clips) and each of the 4 ways
to drop one more clip number d from the other 4 (so 3 clips per genre are "train+valid"):

* **3 chosen, 3 fitted** (what the head written was without the refit): ``fit_head`` on the 3 clips
  per genre, C, temperature and threshold chosen there by nested cross-validation;
* **3 chosen, 4 fitted** (``--refit-all``): that head's C, temperature and threshold, refitted on the
  3 + the dropped clip (:func:`training.heads.refit`);
* **4 chosen, 4 fitted** (for reference: choosing again on 4 as well).

Each is scored on the 10 held-out clips: accuracy, log loss, and at the threshold chosen on the 3 clips,
the share of clips reaching it and how many of those were right. 20 trials of 10 clips each.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.calibration import log_loss, target_matrix  # noqa: E402
from training.data import DataSettings, gtzan_number, load_dataset  # noqa: E402
from training.heads import _scan_precision, embed_examples, fit_head, refit  # noqa: E402


def cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def score(fit, x, labels, threshold: float) -> dict:
    probs = fit.scores(x)
    top = np.array(fit.labels)[probs.argmax(axis=1)]
    right = top == np.array(labels)
    reached = probs.max(axis=1) >= threshold
    return {"accuracy": right.mean(), "log_loss": log_loss(probs, target_matrix([(g,) for g in labels], fit.labels)),
            "top_score": probs.max(axis=1).mean(), "reached": reached.mean(),
            "right_reached": right[reached].sum(), "n_reached": reached.sum()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    args = parser.parse_args()
    print(f"CPU: {cpu()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before the run")
    from tagger.models.musicnn import load_builtin

    dataset = load_dataset(DataSettings(data=args.data))
    examples = sorted(dataset.train + dataset.valid + dataset.test, key=lambda e: (e.label, gtzan_number(e.path)))
    backbone = load_builtin("musicnn-msd", precision=_scan_precision())
    started = time.perf_counter()
    embedded = embed_examples(backbone, examples, max_windows=3)
    print(f"embedded {len(embedded.examples)} clips with {backbone.embedding_space} ({backbone.precision}) in "
          f"{time.perf_counter() - started:.0f} s")
    x = embedded.embeddings
    labels = np.array([e.label for e in embedded.examples])
    rank = np.array([gtzan_number(e.path) for e in embedded.examples])
    rows = {name: [] for name in ("3 chosen, 3 fitted", "3 chosen, 4 fitted", "4 chosen, 4 fitted")}
    for held in range(5):
        test = rank == held
        for dropped in sorted(set(range(5)) - {held}):
            three = ~test & (rank != dropped)
            four = ~test
            small = fit_head(x[three], list(labels[three]))
            threshold = small.thresholds.global_threshold
            refitted = refit(small, x[four], list(labels[four]))
            again = fit_head(x[four], list(labels[four]))
            for name, fit in zip(rows, (small, refitted, again)):
                rows[name].append(score(fit, x[test], list(labels[test]), threshold))
    print(f"{'':20} {'accuracy':>9} {'log loss':>9} {'top score':>9} {'reach thr':>9} {'right of those':>15}"
          "   (20 trials x 10 held-out clips; threshold chosen on the 3)")
    for name, results in rows.items():
        acc = np.array([r["accuracy"] for r in results])
        right, reached = sum(r["right_reached"] for r in results), sum(r["n_reached"] for r in results)
        print(f"{name:20} {acc.mean():9.3f} {np.mean([r['log_loss'] for r in results]):9.3f} "
              f"{np.mean([r['top_score'] for r in results]):9.3f} {np.mean([r['reached'] for r in results]):9.2f} "
              f"{right:>6}/{reached:<4} {right / max(reached, 1):.2f}   (accuracy per trial: min {acc.min():.1f}, "
              f"max {acc.max():.1f})")
    base, refits = (np.array([r["accuracy"] for r in rows[k]]) for k in list(rows)[:2])
    print(f"refit minus no refit, per trial: mean {np.mean(refits - base):+.3f}, better in {np.sum(refits > base)}, "
          f"worse in {np.sum(refits < base)}, equal in {np.sum(refits == base)} of {len(base)}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
