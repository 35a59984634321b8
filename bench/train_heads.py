"""Which embedding and head should `genretag train --base-model builtin:musicnn-*` use, and how fast is it?

For a labelled folder (GTZAN layout or <label>/ folders), split as `genretag train` splits it:

1. decodes every clip into a scan's windows (timed), embeds every window once with the built-in model
   (timed; all layers from one forward pass), and takes each clip's mean over its windows;
2. for each candidate (embedding layer x standardisation x how C is chosen, plus a small MLP), fits on
   the train+valid clips with :func:`training.heads.fit_head` (nested cross-validation, the folds
   `train` uses) and prints the cross-validated accuracy (mean ± spread over folds), the accuracy on the
   test part, calibration (ECE before/after temperature scaling), the chosen threshold and its coverage,
   and the time to fit and to evaluate;
3. for GTZAN folders, also a stricter cross-validation over *all* clips with folds of two neighbouring
   clip numbers (fewer training clips per fold, fewer same-artist neighbours split across train/test);
4. times :func:`fit_head` on 10,000 synthetic 200-d and 1506-d embeddings (the "retrain from the index"
   case).

    python bench/train_heads.py ../shared/gtzan-dev [--models msd,mtt] [--precision auto] [--synthetic 10000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.host import StealClock  # noqa: E402
from training.calibration import choose_thresholds, expected_calibration_error  # noqa: E402
from training.data import DataSettings, gtzan_number, load_dataset  # noqa: E402
from training.heads import cv_folds, cv_groups, fit_head  # noqa: E402

LAYERS = ("penultimate", "pooled", "pooled+penultimate", "tags")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def embed(model: str, examples, precision: str, max_windows: int):
    """Every layer's clip embeddings {layer: [N, D]} from one forward pass per window, decoding every clip
    first so the two stages are timed apart; the model runs as `train` and a scan run it (one window
    per call, two calls at a time on a CPU, each on half the cores)."""
    import torch

    from tagger.batching import predict_in_batches
    from tagger.decode import decode_file
    from tagger.engine import cpu_threads_per_call, default_concurrent_batches
    from tagger.models.infer import pick_device, pick_precision
    from tagger.models.musicnn import load_builtin

    prec = pick_precision(precision, pick_device("cpu"))
    backbone = load_builtin(model, precision=prec, embedding_layer="pooled+penultimate")
    started = time.perf_counter()
    decoded = [decode_file(e.path, backbone.sampling_rate, max_windows) for e in examples]
    decode_s = time.perf_counter() - started

    def both(windows, lengths):
        probs, embeddings = backbone.predict_with_embeddings(windows, lengths)
        return torch.cat([probs, embeddings], dim=1)

    started = time.perf_counter()
    concurrency = default_concurrent_batches(backbone.device)
    with cpu_threads_per_call(concurrency):
        rows = [out.mean(dim=0).numpy() for _, out in predict_in_batches(decoded, both, 1, concurrency)]
    embed_s = time.perf_counter() - started
    rows = np.stack(rows)
    tags, pooled = len(backbone.labels), backbone.model.dense.in_features
    layers = {"penultimate": rows[:, tags + pooled:], "pooled": rows[:, tags:tags + pooled],
              "pooled+penultimate": rows[:, tags:], "tags": rows[:, :tags]}
    return layers, decode_s, embed_s, sum(d.windows.shape[0] for d in decoded), backbone.embedding_space, prec


def mlp_cv(x, y, folds) -> tuple[float, float, np.ndarray]:
    """A small MLP (128 hidden units, L2 1e-2) on standardised embeddings, same folds: (mean, std, oof probs)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    probs = np.zeros((len(y), len(np.unique(y))))
    accs = []
    for train, test in folds:
        model = make_pipeline(StandardScaler(), MLPClassifier((128,), alpha=1e-2, max_iter=2000, random_state=0))
        model.fit(x[train], y[train])
        probs[test] = model.predict_proba(x[test])
        accs.append((probs[test].argmax(1) == y[test]).mean())
    return float(np.mean(accs)), float(np.std(accs)), probs


def candidates(layers: dict, fit_rows, test_rows, labels, groups, strict_groups, seed: int) -> None:
    names = sorted(set(labels))
    y_all = np.searchsorted(names, labels)
    print(f"{'layer':<20} {'prep':<4} {'C by':<8} {'cv acc':>13} {'test':>6} {'strict cv':>13} {'ECE':>11} "
          f"{'thr':>5} {'cover':>5} {'C':>7} {'fit s':>6} {'eval ms':>7}")
    for layer in LAYERS:
        x = layers[layer]
        for standardize in (True, False):
            for selection in ("log_loss", "accuracy"):
                if not standardize and selection == "accuracy":
                    continue
                started = time.perf_counter()
                fit = fit_head(x[fit_rows], labels[fit_rows], None if groups is None else groups[fit_rows],
                               seed=seed, standardize=standardize, selection=selection)
                fit_s = time.perf_counter() - started
                started = time.perf_counter()
                test_acc = float((fit.scores(x[test_rows]).argmax(1) == y_all[test_rows]).mean()) \
                    if len(test_rows) else float("nan")
                eval_ms = (time.perf_counter() - started) * 1000
                strict = ""
                if strict_groups is not None:
                    whole = fit_head(x, labels, strict_groups, seed=seed, standardize=standardize,
                                     selection=selection)
                    strict = f"{whole.cv['accuracy']:.3f}±{whole.cv['accuracy_std']:.3f}"
                cv = fit.cv
                print(f"{layer:<20} {'std' if standardize else 'raw':<4} {selection[:8]:<8} "
                      f"{cv['accuracy']:.3f}±{cv['accuracy_std']:.3f} {test_acc:6.3f} {strict:>13} "
                      f"{cv['ece']:.2f}->{cv['ece_calibrated']:.2f} {fit.thresholds.global_threshold:5.2f} "
                      f"{fit.thresholds.coverage:5.2f} {fit.C:7.3g} {fit_s:6.1f} {eval_ms:7.1f}", flush=True)
        if layer in ("penultimate", "pooled"):
            folds, _ = cv_folds(np.searchsorted(names, labels[fit_rows]),
                                None if groups is None else groups[fit_rows], seed)
            mean, std, probs = mlp_cv(x[fit_rows], np.searchsorted(names, labels[fit_rows]), folds)
            t = choose_thresholds(probs, np.searchsorted(names, labels[fit_rows]), names)
            print(f"{layer:<20} {'std':<4} {'mlp128':<8} {mean:.3f}±{std:.3f} {'':>6} {'':>13} "
                  f"{expected_calibration_error(probs, np.searchsorted(names, labels[fit_rows])):.2f}"
                  f"{'':>6} {t.global_threshold:5.2f} {t.coverage:5.2f}", flush=True)


def synthetic_fit_times(n: int, seed: int) -> None:
    """fit_head on n synthetic clips of 10 genres, 200-d and 1506-d: Gaussian clusters whose noise
    (0.35 sqrt(D) per dimension) leaves about one clip in ten on the wrong side, as real genres do, so
    the solver works as hard as on real embeddings rather than converging at once."""
    rng = np.random.default_rng(seed)
    for dim in (200, 1506):
        centres = rng.normal(size=(10, dim))
        y = rng.integers(0, 10, n)
        x = (centres[y] + 0.35 * np.sqrt(dim) * rng.normal(size=(n, dim))).astype(np.float32)
        started, cpu = time.perf_counter(), time.process_time()
        fit = fit_head(x, [f"g{i}" for i in y], seed=seed)
        print(f"fit_head on {n:,} x {dim}: {time.perf_counter() - started:.1f} s wall, "
              f"{time.process_time() - cpu:.1f} s CPU ({fit.cv['folds']}-fold CV over {len(fit.cv['selection'])} Cs, "
              f"{'nested' if fit.cv['nested'] else 'not nested'}), cv accuracy {fit.cv['accuracy']:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?")
    parser.add_argument("--models", default="msd,mtt")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--max-windows", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic", type=int, default=10000, help="clips for the fit-time check (0: skip)")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.1f} "
          "(other work on a shared machine slows every figure)")
    with StealClock() as steal:
        run(args)
    print(f"\n{steal.summary()}; load average after: {os.getloadavg()[0]:.1f}")


def run(args) -> None:
    if args.data:
        dataset = load_dataset(DataSettings(data=args.data, seed=args.seed))
        print(dataset.summary())
        print(dataset.genre_counts())
        examples = dataset.train + dataset.valid + dataset.test
        fit_rows = np.arange(len(dataset.train) + len(dataset.valid))
        test_rows = np.arange(len(fit_rows), len(examples))
        labels = np.array([e.label for e in examples])
        groups = cv_groups(examples[:len(fit_rows)], dataset.source)
        groups = None if groups is None else np.array(list(groups) + [None] * len(test_rows), dtype=object)
        strict = (np.array([gtzan_number(e.path) // 2 for e in examples]) if dataset.source == "gtzan"
                  else None)
        for model in args.models.split(","):
            layers, decode_s, embed_s, windows, space, prec = embed(f"musicnn-{model}", examples, args.precision,
                                                                   args.max_windows)
            print(f"\nmusicnn-{model} ({prec}): decode {decode_s:.1f} s, embed {embed_s:.1f} s for "
                  f"{len(examples)} clips / {windows} windows; {space.rsplit('/', 1)[0]}")
            candidates(layers, fit_rows, test_rows, labels, groups, strict, args.seed)
    if args.synthetic:
        print()
        synthetic_fit_times(args.synthetic, args.seed)


if __name__ == "__main__":
    main()
