"""Learn the user's genres offline, in minutes on a CPU: a classification head on the built-in musicnn
model's embeddings (``genretag train DATA --base-model builtin:musicnn-msd``).

1. **Embed**: every clip goes through the tagger's own decoder and window plan (what ``scan`` analyses);
   the built-in model gives each window an embedding (the mean over its 3 s patches of the layer
   :data:`EMBEDDING_LAYER`), and a clip's embedding is the mean over its windows. One forward pass
   per window; nothing is fine-tuned.
2. **Fit** (:func:`fit_head`, which takes an embedding matrix, so embeddings stored in an index can be
   refitted without decoding): a multinomial logistic regression (scikit-learn) on standardised,
   float16-rounded embeddings. Its regularisation C is chosen by stratified k-fold cross-validation on
   the training clips, with folds that keep groups together (GTZAN: runs of neighbouring clip numbers,
   often one artist; elsewhere: the clip's folder, often an album, where every genre has enough of
   them). The cross-validated accuracy is *nested* (C chosen again inside each fold) up to
   :data:`NESTED_MAX` clips, so it is not flattered by the choice of C. The final head is fitted on
   all training clips.
3. **Calibrate**: one temperature fitted on the out-of-fold logits and folded into the weights, where
   it improves the log loss of out-of-fold predictions it was not fitted on; the thresholds
   (:mod:`training.calibration`) come from the out-of-fold probabilities.
4. **Write** a checkpoint folder (:mod:`tagger.models.head`) atomically, with the usual metrics, report,
   confusion matrix and model card, and evaluate the test part through :class:`tagger.pipeline.Tagger`.

Training clips are the train and valid parts of the split together: cross-validation does the
validation part's job, and small data (5-50 clips per genre) is the normal case.
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tagger.errors import GenretagError, ModelError

from .calibration import (Thresholds, choose_thresholds, ece_of_calibrated, expected_calibration_error,
                          fit_temperature, log_loss, softmax)
from .data import DataSettings, Dataset, Example, gtzan_number, load_dataset

BACKBONES = ("builtin:musicnn-msd", "builtin:musicnn-mtt")
EMBEDDING_LAYER = "penultimate"
"""Which musicnn features the head learns from; chosen on measurements (bench/train_heads.py, docs/heads.md)."""
C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 11))
"""Inverse regularisation strengths tried, weakest regularisation last."""
SELECTION = "log_loss"
"""How C is chosen from the cross-validation: by held-out log loss (see docs/heads.md for the measurements)."""
MAX_FOLDS = 5
NESTED_MAX = 2000
"""Up to this many clips, the reported cross-validated accuracy is nested. Beyond, the choice of C among
11 flatters it by little, and nesting would multiply the fitting time by the number of folds."""
MAX_ITER = 1000
FLOAT16_MAX = 65504.0


def is_head_base(name: str | None) -> bool:
    """True for the base models that ``genretag train`` trains a head on rather than fine-tunes."""
    return bool(name) and name.startswith("builtin:")


# -- fitting ---------------------------------------------------------------------------------------------
@dataclass
class HeadFit:
    """A fitted head: the arrays a checkpoint stores, and how they were chosen.

    ``weight``/``bias`` already include the temperature: ``softmax(((x - mean) / scale) @ weight.T + bias)``
    are the calibrated probabilities.
    """

    labels: list[str]
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    C: float
    temperature: float
    cv: dict
    oof_probs: np.ndarray  # out-of-fold probabilities of the training clips, as the head gives them
    oof_true: np.ndarray
    thresholds: Thresholds
    seconds: float = 0.0

    def scores(self, embeddings) -> np.ndarray:
        """[N, D] -> [N, L] probabilities, computed as :meth:`tagger.models.head.HeadClassifier.head_scores`."""
        return softmax(((float16_values(embeddings) - self.mean) / self.scale) @ self.weight.T + self.bias)


def float16_values(embeddings) -> np.ndarray:
    """float32 copies of ``embeddings`` rounded to float16, as an index stores them and the head reads them."""
    return np.clip(np.asarray(embeddings, dtype=np.float32), -FLOAT16_MAX, FLOAT16_MAX
                   ).astype(np.float16).astype(np.float32)


def fit_head(embeddings, labels: Sequence[str], groups: Sequence | None = None, *, seed: int = 0,
             standardize: bool = True, cs: Sequence[float] = C_GRID, nested: bool | None = None,
             selection: str = SELECTION) -> HeadFit:
    """Fit a head on track-level ``embeddings`` [N, D] with their ``labels`` (and CV ``groups``, e.g.
    albums: a group never spans a fold's training and held-out clips). Needs no audio: embeddings read
    back from an index fit the same way.

    BLAS runs on one thread: these problems are small, and a second thread's spinning cost 4x the CPU
    time on a busy 2-core machine (3.2 against 15 s for 40 clips)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_head(embeddings, labels, groups, seed, standardize, cs, nested, selection)


def _fit_head(embeddings, labels, groups, seed, standardize, cs, nested, selection) -> HeadFit:
    started = time.perf_counter()
    x = float16_values(embeddings)
    names = sorted(set(labels))
    y = np.searchsorted(names, np.asarray(labels))
    if len(names) < 2:
        raise GenretagError(f"a head needs at least 2 genres, got {len(names)}")
    folds, grouped = cv_folds(y, groups, seed)
    nested = len(y) <= NESTED_MAX if nested is None else nested
    # Nesting needs two clips of every genre in each fold's training part to cross-validate again.
    nested = nested and all(np.bincount(y[train], minlength=len(names)).min() >= 2 for train, _ in folds)
    table, logits_by_c = _cv_path(x, y, folds, cs, standardize)
    best = _best_c(table, selection)
    if nested:
        logits, inner_cs = _nested_logits(x, y, folds, groups, seed, cs, standardize, selection)
    else:
        logits, inner_cs = logits_by_c[best], None
    fold_accuracy = [float((logits[test].argmax(1) == y[test]).mean()) for _, test in folds]
    raw = softmax(logits)
    calibrated = _cross_fitted_temperature(logits, y, folds)
    # Temperature scaling only where it helps predictions it never saw: with a few clips per fold the
    # fitted temperature is noise (on gtzan-dev it made the log loss and the ECE worse).
    scaled = log_loss(calibrated, y) < log_loss(raw, y)
    temperature = fit_temperature(logits, y) if scaled else 1.0
    held_out = calibrated if scaled else raw
    mean, scale, coef, intercept = _fit_final(x, y, cs[best], standardize)
    cv = {
        "folds": len(folds), "grouped": grouped, "nested": nested, "clips": int(len(y)),
        "accuracy": float(np.mean(fold_accuracy)), "accuracy_std": float(np.std(fold_accuracy)),
        "fold_accuracies": fold_accuracy,
        "C": cs[best], "inner_C": inner_cs, "standardize": standardize, "selection_by": selection,
        "selection": [{"C": c, **row} for c, row in zip(cs, table)],
        "log_loss": log_loss(raw, y), "ece": expected_calibration_error(raw, y),
        "log_loss_calibrated": log_loss(calibrated, y),
        "ece_calibrated": expected_calibration_error(calibrated, y), "temperature_scaling": scaled,
        "temperature": temperature, "ece_if_calibrated": ece_of_calibrated(held_out),
    }
    return HeadFit(names, mean, scale, (coef / temperature).astype(np.float32),
                   (intercept / temperature).astype(np.float32), cs[best], temperature, cv, held_out, y,
                   choose_thresholds(held_out, y, names), time.perf_counter() - started)


def cv_folds(y: np.ndarray, groups: Sequence | None, seed: int, max_folds: int = MAX_FOLDS
             ) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
    """``(folds, grouped)``: stratified k-fold splits, k = min(``max_folds``, the rarest genre's clips).
    Grouped (StratifiedGroupKFold) where the groups allow every fold to train on every genre, else
    clip by clip."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    k = min(max_folds, int(np.bincount(y).min()))
    if k < 2:
        raise GenretagError("cross-validation needs at least 2 training clips of every genre")
    n_classes = len(np.unique(y))
    if groups is not None and len(set(groups)) >= k:
        groups = np.asarray(groups)
        folds = list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(y, y, groups))
        if len(folds) == k and all(len(np.unique(y[train])) == n_classes and len(test) for train, test in folds):
            return folds, True
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(y, y)), False


def _cv_path(x, y, folds, cs, standardize) -> tuple[list[dict], list[np.ndarray]]:
    """Per C: mean held-out accuracy and log loss over ``folds``, and the out-of-fold logits. Each fold
    fits the Cs in increasing order, each fit starting from the previous solution (``warm_start``)."""
    logits = [np.zeros((len(y), len(np.unique(y)))) for _ in cs]
    for train, test in folds:
        scaler, model = _scaler(x[train], standardize), _model(warm_start=True)
        xtr, xte = scaler(x[train]), scaler(x[test])
        for i, c in enumerate(cs):
            model.set_params(C=c).fit(xtr, y[train])
            logits[i][test] = class_logits(model, xte)
    table = []
    for i in range(len(cs)):
        per_fold = [((logits[i][test].argmax(1) == y[test]).mean(), log_loss(softmax(logits[i][test]), y[test]))
                    for _, test in folds]
        table.append({"accuracy": float(np.mean([a for a, _ in per_fold])),
                      "log_loss": float(np.mean([loss for _, loss in per_fold]))})
    return table, logits


def _best_c(table: list[dict], selection: str) -> int:
    """The C with the lowest held-out log loss (``selection`` "log_loss"), or the most accurate one
    ("accuracy"; ties, frequent with few held-out clips per fold, go to the lower log loss)."""
    if selection == "log_loss":
        return min(range(len(table)), key=lambda i: table[i]["log_loss"])
    return min(range(len(table)), key=lambda i: (-round(table[i]["accuracy"], 9), table[i]["log_loss"]))


def _nested_logits(x, y, folds, groups, seed, cs, standardize, selection) -> tuple[np.ndarray, list[float]]:
    """Out-of-fold logits where each outer fold's C is chosen by cross-validation on its own training
    clips only."""
    logits = np.zeros((len(y), len(np.unique(y))))
    chosen = []
    for train, test in folds:
        inner_groups = None if groups is None else np.asarray(groups)[train]
        inner, _ = cv_folds(y[train], inner_groups, seed)
        table, _ = _cv_path(x[train], y[train], inner, cs, standardize)
        c = cs[_best_c(table, selection)]
        chosen.append(c)
        scaler = _scaler(x[train], standardize)
        model = _model().set_params(C=c).fit(scaler(x[train]), y[train])
        logits[test] = class_logits(model, scaler(x[test]))
    return logits, chosen


def _cross_fitted_temperature(logits: np.ndarray, y: np.ndarray, folds) -> np.ndarray:
    """Calibrated out-of-fold probabilities whose temperature was fitted on the *other* folds' logits,
    so their calibration is measured on predictions the temperature never saw."""
    probs = np.zeros_like(logits, dtype=np.float64)
    for train, test in folds:
        probs[test] = softmax(logits[test] / fit_temperature(logits[train], y[train]))
    return probs


def _fit_final(x, y, c: float, standardize: bool):
    if standardize:
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-6, scale, 1.0)  # constant features: as StandardScaler does
    else:
        mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    model = _model().set_params(C=c).fit((x - mean) / scale, y)
    coef, intercept = class_weights(model)
    return mean.astype(np.float32), scale.astype(np.float32), coef, intercept


def class_weights(model) -> tuple[np.ndarray, np.ndarray]:
    """``(coef [L, D], intercept [L])`` whose softmax gives the model's probabilities. scikit-learn fits
    two classes as one logit z (class 1 against 0); the softmax of (-z/2, z/2) is the same sigmoid."""
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


def class_logits(model, x: np.ndarray) -> np.ndarray:
    """[N, L] logits of ``model`` on ``x``, one column per class also for two classes."""
    coef, intercept = class_weights(model)
    return x @ coef.T + intercept


def _scaler(x: np.ndarray, standardize: bool) -> Callable[[np.ndarray], np.ndarray]:
    if not standardize:
        return lambda a: a
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit(x).transform


def _model(warm_start: bool = False):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # the weakest Cs of the path, on few clips
    return LogisticRegression(max_iter=MAX_ITER, warm_start=warm_start)


def cv_groups(examples: Sequence[Example], source: str) -> list | None:
    """Groups for cross-validation that keep likely same-artist clips together: for GTZAN, runs of
    neighbouring clip numbers within each genre (as many runs as folds, run i of every genre sharing
    group i); elsewhere each clip's folder (an album, in most libraries), where every genre has at
    least as many folders as folds; else None (clip by clip)."""
    labels = [e.label for e in examples]
    k = min(MAX_FOLDS, min(labels.count(g) for g in set(labels)))
    if source == "gtzan":
        groups = [0] * len(examples)
        for label in set(labels):
            mine = sorted((i for i, e in enumerate(examples) if e.label == label),
                          key=lambda i: gtzan_number(examples[i].path))
            for rank, i in enumerate(mine):
                groups[i] = rank * k // len(mine)
        return groups
    folders = [os.path.dirname(e.path) for e in examples]
    per_label = {g: {f for f, lab in zip(folders, labels) if lab == g} for g in set(labels)}
    return folders if all(len(f) >= k for f in per_label.values()) else None


# -- embedding -------------------------------------------------------------------------------------------
@dataclass
class Embedded:
    """Track-level embeddings of the clips that decoded, and where the time went."""

    examples: list[Example]
    embeddings: np.ndarray  # [N, D] float32
    unreadable: list[str] = field(default_factory=list)
    decode_seconds: float = 0.0  # summed over the decoding threads
    embed_seconds: float = 0.0  # summed over the model calls (two at a time on a CPU, as in a scan)
    wall_seconds: float = 0.0


def embed_examples(backbone, examples: Sequence[Example], max_windows: int,
                   on_error: Callable[[str], None] = lambda line: None, workers: int = 2,
                   batch_size: int | None = None) -> Embedded:
    """Decode each clip into a scan's windows (threads running ahead) and embed them with ``backbone``
    (``predict_with_embeddings``); each clip's embedding is the mean over its windows."""
    from tagger.batching import predict_in_batches
    from tagger.engine import (bounded_map, cpu_threads_per_call, decode_or_fail, default_batch_size,
                               default_concurrent_batches, import_decoder)
    from tagger.records import DecodedTrack, Track

    started = time.perf_counter()
    import_decoder()
    clock = {"decode": 0.0, "embed": 0.0}

    def decode(example: Example):
        t = time.perf_counter()
        try:
            st = os.stat(example.path)
            return decode_or_fail(Track(example.path, st.st_size, st.st_mtime_ns), backbone.sampling_rate,
                                  max_windows)
        except OSError as err:
            from tagger.engine import failed_result

            return failed_result(Track(example.path, 0, 0), err.strerror or str(err))
        finally:
            clock["decode"] += time.perf_counter() - t

    def embed(windows, lengths):
        t = time.perf_counter()
        embeddings = backbone.predict_with_embeddings(windows, lengths)[1]
        clock["embed"] += time.perf_counter() - t
        return embeddings

    kept, rows, bad = [], [], []
    decoded = bounded_map(decode, examples, workers)
    size = batch_size or default_batch_size(backbone.device)
    concurrency = default_concurrent_batches(backbone.device)  # as a scan runs the model
    with cpu_threads_per_call(concurrency):
        for example, (item, window_embeddings) in zip(examples, predict_in_batches(decoded, embed, size,
                                                                                   concurrency)):
            if not isinstance(item, DecodedTrack):
                bad.append(example.path)
                on_error(f"skipped {example.path}: {item.error}")
                continue
            kept.append(example)
            rows.append(window_embeddings.float().mean(dim=0).numpy())
    embeddings = np.stack(rows) if rows else np.zeros((0, backbone.embedding_dim), np.float32)
    return Embedded(kept, embeddings, bad, clock["decode"], clock["embed"], time.perf_counter() - started)


# -- the whole run ---------------------------------------------------------------------------------------
def train_head(data: DataSettings, settings, report: Callable[[str], None] = print):
    """``genretag train`` for a built-in base model: split, embed, fit, write, evaluate, register."""
    from tagger.models.identity import register_trained_model, use_model
    from tagger.models.musicnn import load_builtin

    from . import evaluate, metrics
    from .train import TrainResult, _check_output, _replace_folder, command_line, describe_hardware

    started = time.perf_counter()
    if settings.base_model not in BACKBONES:
        raise ModelError(f"--base-model {settings.base_model}: heads train on {' or '.join(BACKBONES)}")
    output = _check_output(settings.output)
    dataset = load_dataset(data)
    for note in dataset.notes:
        report(f"note: {note}")
    report(dataset.summary())
    report(dataset.genre_counts())
    for ignored in ignored_options(settings):
        report(f"note: --{ignored.replace('_', '-')} applies to fine-tuning only; ignored for a head")
    backbone = load_builtin(settings.base_model.removeprefix("builtin:"), embedding_layer=EMBEDDING_LAYER,
                            precision=_scan_precision())
    report(f"embedding every clip with {backbone.embedding_space} ({backbone.embedding_dim}-d, "
           f"{backbone.precision}, up to {settings.max_windows} windows of 30 s per clip)")
    embedded = embed_examples(backbone, dataset.train + dataset.valid, settings.max_windows, on_error=report)
    dataset = dataset.without(set(embedded.unreadable))
    fit_examples = embedded.examples
    groups = cv_groups(fit_examples, dataset.source)
    fit = fit_head(embedded.embeddings, [e.label for e in fit_examples], groups, seed=data.seed)
    report(cv_line(fit, dataset))
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    try:
        staging.mkdir()
        save_head(staging, fit, backbone, settings.base_model)
        fit_seconds = time.perf_counter() - started
        results = {"cv": cv_metrics(fit, fit_examples, dataset)}
        evaluated = time.perf_counter()
        results.update(evaluate.evaluate_parts(staging, dataset, ("test",), on_skip=report))
        hardware = describe_hardware()
        command = command_line(data, settings)
        metrics.write_artifacts(staging, results, dataset, info={
            "kind": "head", "base_model": settings.base_model, "command": command, "hardware": hardware,
            "train_seconds": round(fit_seconds, 1), "skipped_unreadable": sorted(embedded.unreadable),
            "settings": asdict(settings), "data": asdict(data), "head": head_facts(fit, backbone),
            "calibration": {**{k: fit.cv[k] for k in ("ece", "ece_calibrated", "log_loss", "log_loss_calibrated",
                                                        "temperature", "temperature_scaling",
                                                        "ece_if_calibrated")},
                            "thresholds": fit.thresholds.as_dict()},
            "stages_seconds": {"decode_cpu": round(embedded.decode_seconds, 1),
                               "embed": round(embedded.embed_seconds, 1),
                               "decode_and_embed_wall": round(embedded.wall_seconds, 1),
                               "fit": round(fit.seconds, 1),
                               "evaluate": round(time.perf_counter() - evaluated, 1)}})
        _replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    headline = results.get("test") or results["cv"]
    register_trained_model(output, {
        "base_model": settings.base_model, "labels": dataset.labels, "split": headline.get("split"),
        "accuracy": headline.get("accuracy"), "cv_accuracy": fit.cv["accuracy"],
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if settings.make_default:
        use_model(str(output))
    return TrainResult(output, dataset, results, time.perf_counter() - started, hardware, command)


def _scan_precision() -> str:
    """The precision a scan on this machine runs the built-in model in by default, so the head learns
    from the embeddings it will see."""
    from tagger.models.infer import pick_device, pick_precision

    return pick_precision("auto", pick_device("cpu"))


def ignored_options(settings) -> list[str]:
    """Fine-tuning options set to something other than their default."""
    from .train import FINE_TUNING_ONLY, TrainSettings

    defaults = TrainSettings()
    return [name for name in FINE_TUNING_ONLY if getattr(settings, name) != getattr(defaults, name)]


def cv_line(fit: HeadFit, dataset: Dataset) -> str:
    cv = fit.cv
    how = "grouped" if cv["grouped"] else "clip by clip"
    nested = "nested, " if cv["nested"] else ""
    return (f"cross-validated accuracy {cv['accuracy']:.3f} ± {cv['accuracy_std']:.3f} over {cv['folds']} "
            f"folds ({nested}{how}; {cv['clips']} training clips, {dataset.source} {dataset.split}/train+valid); "
            f"C {fit.C:.3g}, temperature {fit.temperature:.2f}, threshold {fit.thresholds.global_threshold:.2f}")


def cv_metrics(fit: HeadFit, examples: list[Example], dataset: Dataset) -> dict:
    """The out-of-fold predictions as a part of the results, with the per-fold spread."""
    from .metrics import split_metrics

    predicted = [fit.labels[i] for i in fit.oof_probs.argmax(axis=1)]
    m = split_metrics([e.label for e in examples], predicted, fit.labels,
                      f"{dataset.source} {dataset.split}/train+valid, {fit.cv['folds']}-fold CV",
                      paths=[e.path for e in examples])
    m.update({k: fit.cv[k] for k in ("accuracy_std", "fold_accuracies", "folds", "grouped", "nested")})
    m["accuracy"] = fit.cv["accuracy"]  # the mean over folds, as cv_line says (equal folds: the same)
    return m


def head_facts(fit: HeadFit, backbone) -> dict:
    return {"kind": "multinomial logistic regression (scikit-learn lbfgs)", "C": fit.C,
            "temperature": fit.temperature, "standardize": fit.cv["standardize"],
            "embedding_space": backbone.embedding_space, "embedding_dim": backbone.embedding_dim,
            "precision": backbone.precision, "cv": {k: v for k, v in fit.cv.items() if k != "selection"},
            "selection": fit.cv["selection"]}


def save_head(folder: Path, fit: HeadFit, backbone, base_model: str) -> None:
    """``config.json`` and ``head.safetensors`` (see :mod:`tagger.models.head`)."""
    import json

    import torch
    from safetensors.torch import save_file

    from tagger.models.identity import HEAD_MODEL_TYPE, HEAD_WEIGHTS

    tensors = {"mean": fit.mean, "scale": fit.scale, "weight": fit.weight, "bias": fit.bias}
    save_file({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()},
              str(folder / HEAD_WEIGHTS))
    config = {
        "model_type": HEAD_MODEL_TYPE,
        "backbone": {"model_id": base_model, "fingerprint": backbone.fingerprint,
                     "layer": backbone.embedding_layer},
        "embedding_space": backbone.embedding_space, "embedding_dim": backbone.embedding_dim,
        "id2label": {str(i): label for i, label in enumerate(fit.labels)},
        "label2id": {label: i for i, label in enumerate(fit.labels)},
        "problem_type": "single_label_classification",
        "genretag_min_confidence": fit.thresholds.global_threshold,
        "genretag_label_thresholds": fit.thresholds.per_label,
        "head": {"kind": "logistic_regression", "C": fit.C, "temperature": fit.temperature,
                 "standardize": fit.cv["standardize"], "cv_accuracy": fit.cv["accuracy"]},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
