"""Learn the user's genres offline, in minutes on a CPU: a classification head on the built-in musicnn
model's embeddings (``genretag train DATA --base-model builtin:musicnn-msd``).

1. **Embed** (:func:`embeddings_for`, the one place a head's clips get their embeddings): every clip
   goes through the tagger's own decoder and window plan (what ``scan`` analyses); the built-in model
   gives each window an embedding (the mean over its 3 s patches of the layer :data:`EMBEDDING_LAYER`),
   and a clip's embedding is the mean over its windows. Where the index stores a track's embedding
   (:func:`stored_embeddings_for`) for the file as it is, it is used instead of decoding.
2. **Measure** (:func:`fit_measure_refit`, which needs no audio): :func:`fit_head` fits a multinomial
   logistic regression (scikit-learn) on the standardised, float16-rounded embeddings of the train and
   valid parts. Its regularisation C is chosen by stratified k-fold cross-validation, with folds that
   keep groups together (the user's library: artists; GTZAN: runs of neighbouring clip numbers, often
   one artist; elsewhere: the clip's folder, where every genre has enough of them). The
   cross-validated accuracy is *nested* (C chosen again inside each fold) up to :data:`NESTED_MAX`
   clips, so it is not flattered by the choice of C. A track with k genres is k examples of weight 1/k,
   and a prediction is right when it is any of them. A temperature is fitted on the out-of-fold logits
   and folded into the weights where it improves the log loss of predictions it was not fitted on; the
   thresholds (:mod:`training.calibration`) come from the out-of-fold probabilities. The test part is
   scored from its embeddings by this head, fitted without it.
3. **Refit** (:func:`refit`, ``--refit-all``, the default): the head written is fitted again on every
   labelled clip, the test part included, with the C, temperature and thresholds chosen in step 2: with
   5 clips per genre it learns from 5, not 4. metrics.json, the model card and ``genretag evaluate``
   say which clips the figures measured and which the head was fitted on.
4. **Write** a checkpoint folder (:mod:`tagger.models.head`) atomically, with the usual metrics, report,
   confusion matrix and model card.

Small data (5-50 clips per genre) is the normal case: cross-validation does the validation part's job.
"""
from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from tagger.errors import GenretagError, ModelError

from .calibration import (Thresholds, choose_thresholds, ece_of_calibrated, expected_calibration_error,
                          fit_temperature, log_loss, softmax, target_matrix, top_right)
from .data import DataSettings, Dataset, Example, described_dataset, gtzan_number, known_genres_only

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
    oof_true: np.ndarray  # their targets [N, L] (1/k at each of a clip's k genres)
    thresholds: Thresholds
    seconds: float = 0.0
    fitted_clips: int = 0  # the clips the weights were fitted on (more than cv["clips"] after refit)

    def scores(self, embeddings) -> np.ndarray:
        """[N, D] -> [N, L] probabilities, computed as :meth:`tagger.models.head.HeadClassifier.head_scores`."""
        return softmax(((float16_values(embeddings) - self.mean) / self.scale) @ self.weight.T + self.bias)


def float16_values(embeddings) -> np.ndarray:
    """float32 copies of ``embeddings`` rounded to float16, as an index stores them and the head reads them."""
    return np.clip(np.asarray(embeddings, dtype=np.float32), -FLOAT16_MAX, FLOAT16_MAX
                   ).astype(np.float16).astype(np.float32)


def fit_head(embeddings, labels: Sequence[str | Sequence[str]], groups: Sequence | None = None, *, seed: int = 0,
             standardize: bool = True, cs: Sequence[float] = C_GRID, nested: bool | None = None,
             selection: str = SELECTION) -> HeadFit:
    """Fit a head on track-level ``embeddings`` [N, D] with their ``labels`` (and CV ``groups``, e.g.
    artists: a group never spans a fold's training and held-out clips). Needs no audio: embeddings read
    back from an index fit the same way.

    A label is a genre, or a track's genres (a sequence): each of a track's k genres is then an example
    of weight 1/k (scikit-learn's ``sample_weight``), so a track weighs as much as any other however many
    genres it has, and a top-1 prediction counts as right when it is any of them. Folds are stratified
    by each track's first genre.

    BLAS runs on one thread: these problems are small, and a second thread's spinning cost 4x the CPU
    time on a busy 2-core machine (3.2 against 15 s for 40 clips)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_head(embeddings, labels, groups, seed, standardize, cs, nested, selection)


def genre_lists(labels: Sequence[str | Sequence[str]]) -> list[tuple[str, ...]]:
    """Each label as a tuple of genres (a plain genre is a tuple of one)."""
    return [(label,) if isinstance(label, str) else tuple(label) for label in labels]


def _fit_head(embeddings, labels, groups, seed, standardize, cs, nested, selection) -> HeadFit:
    started = time.perf_counter()
    x = float16_values(embeddings)
    genres = genre_lists(labels)
    names = sorted({g for track in genres for g in track})
    if len(names) < 2:
        raise GenretagError(f"a head needs at least 2 genres, got {len(names)}")
    targets = target_matrix(genres, names)
    first = np.searchsorted(names, [track[0] for track in genres])
    folds, grouped = cv_folds(first, groups, seed, present=targets > 0)
    nested = len(first) <= NESTED_MAX if nested is None else nested
    # Nesting needs two clips of every genre in each fold's training part to cross-validate again.
    nested = nested and all((targets[train] > 0).sum(axis=0).min() >= 2 for train, _ in folds)
    table, logits_by_c = _cv_path(x, targets, folds, cs, standardize, selection)
    best = _best_c(table, selection)
    if nested:
        logits, inner_cs = _nested_logits(x, targets, first, folds, groups, seed, cs, standardize, selection)
    else:
        logits, inner_cs = logits_by_c[best], None
    fold_accuracy = [float(top_right(logits[test], targets[test]).mean()) for _, test in folds]
    raw = softmax(logits)
    calibrated = _cross_fitted_temperature(logits, targets, folds)
    # Temperature scaling only where it helps predictions it never saw: with a few clips per fold the
    # fitted temperature is noise (on gtzan-dev it made the log loss and the ECE worse).
    scaled = log_loss(calibrated, targets) < log_loss(raw, targets)
    temperature = fit_temperature(logits, targets) if scaled else 1.0
    held_out = calibrated if scaled else raw
    mean, scale, coef, intercept = _fit_final(x, targets, cs[best], standardize)
    cv = {
        "folds": len(folds), "grouped": grouped, "nested": nested, "clips": int(len(first)),
        "clips_with_several_genres": int(((targets > 0).sum(axis=1) > 1).sum()),
        "accuracy": float(np.mean(fold_accuracy)), "accuracy_std": float(np.std(fold_accuracy)),
        "fold_accuracies": fold_accuracy,
        "C": cs[best], "inner_C": inner_cs, "standardize": standardize, "selection_by": selection,
        "selection": [{"C": c, **row} for c, row in zip(cs, table)],
        "log_loss": log_loss(raw, targets), "ece": expected_calibration_error(raw, targets),
        "log_loss_calibrated": log_loss(calibrated, targets),
        "ece_calibrated": expected_calibration_error(calibrated, targets), "temperature_scaling": scaled,
        "temperature": temperature, "ece_if_calibrated": ece_of_calibrated(held_out),
    }
    return HeadFit(names, mean, scale, (coef / temperature).astype(np.float32),
                   (intercept / temperature).astype(np.float32), cs[best], temperature, cv, held_out, targets,
                   choose_thresholds(held_out, targets, names), time.perf_counter() - started, int(len(first)))


def refit(fit: HeadFit, embeddings, labels: Sequence[str | Sequence[str]]) -> HeadFit:
    """The head ``fit`` chose (its C, temperature and thresholds), fitted again on ``embeddings`` and
    ``labels``: every labelled clip, the held-out test clips included. Nothing is chosen again, so the
    figures ``fit`` measured (cross-validation, the test part) describe how this head was made; with
    5 clips per genre it learns from 5 rather than 4. Every genre must be one of ``fit.labels``."""
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    targets = target_matrix(genre_lists(labels), fit.labels)
    if (targets.sum(axis=0) == 0).any():
        raise GenretagError("refit: every genre of the head needs clips")
    with threadpool_limits(limits=1, user_api="blas"):
        mean, scale, coef, intercept = _fit_final(float16_values(embeddings), targets, fit.C, fit.cv["standardize"])
    return replace(fit, mean=mean, scale=scale, weight=(coef / fit.temperature).astype(np.float32),
                   bias=(intercept / fit.temperature).astype(np.float32),
                   seconds=fit.seconds + time.perf_counter() - started, fitted_clips=int(len(targets)))


def cv_folds(y: np.ndarray, groups: Sequence | None, seed: int, max_folds: int = MAX_FOLDS,
             present: np.ndarray | None = None) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
    """``(folds, grouped)``: k-fold splits stratified by ``y`` (each clip's first genre), k = min(``max_folds``,
    the rarest genre's clips; ``present`` [N, L] says which genres each clip has, default ``y``'s).
    Grouped (StratifiedGroupKFold) where the groups allow every fold to train on every genre, else
    clip by clip."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y)
    if present is None:
        present = np.eye(int(y.max()) + 1, dtype=bool)[y]
    k = min(max_folds, int(present.sum(axis=0).min()))
    if k < 2:
        raise GenretagError("cross-validation needs at least 2 training clips of every genre")
    with warnings.catch_warnings():  # a genre that is never a clip's first is rarer in y than k: expected
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        if groups is not None and len(set(groups)) >= k:
            groups = np.asarray(groups)
            folds = list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(y, y, groups))
            if len(folds) == k and all(present[train].any(axis=0).all() and len(test) for train, test in folds):
                return folds, True
        return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(y, y)), False


def _fit_rows(model, x: np.ndarray, targets: np.ndarray):
    """Fit ``model`` with one row per (clip, genre) of ``targets``, weighted by the target (1/k)."""
    rows, genres = np.nonzero(targets)
    weights = targets[rows, genres]
    return model.fit(x[rows], genres, sample_weight=None if np.all(weights == 1) else weights)


def _cv_path(x, targets, folds, cs, standardize, selection: str = SELECTION
             ) -> tuple[list[dict], list[np.ndarray]]:
    """Per C, in increasing order: mean held-out accuracy and log loss over ``folds``, and the
    out-of-fold logits. Each fold's model starts each C from its solution for the previous one
    (``warm_start``). Choosing by log loss, the path stops :data:`PATH_PATIENCE` Cs past the best so far:
    the held-out log loss rises steadily past its best C, and the weakest regularisations cost the most
    solver iterations (with clips of several genres, four times as many)."""
    n_labels = targets.shape[1]
    prepared = []
    for train, test in folds:
        scaler = _scaler(x[train], standardize)
        prepared.append((train, test, scaler(x[train]), scaler(x[test]), _model(warm_start=True)))
    table, logits, best = [], [], 0
    for i, c in enumerate(cs):
        held_out = np.zeros((len(targets), n_labels))
        for train, test, xtr, xte, model in prepared:
            _fit_rows(model.set_params(C=c), xtr, targets[train])
            held_out[test] = class_logits(model, xte, n_labels)
        per_fold = [(top_right(held_out[test], targets[test]).mean(),
                     log_loss(softmax(held_out[test]), targets[test])) for _, test in folds]
        table.append({"accuracy": float(np.mean([a for a, _ in per_fold])),
                      "log_loss": float(np.mean([loss for _, loss in per_fold]))})
        logits.append(held_out)
        best = _best_c(table, selection)
        if selection == "log_loss" and i - best >= PATH_PATIENCE:
            break
    return table, logits


PATH_PATIENCE = 2
"""Cs tried past the one with the best held-out log loss before the path stops."""


def _best_c(table: list[dict], selection: str) -> int:
    """The C with the lowest held-out log loss (``selection`` "log_loss"), or the most accurate one
    ("accuracy"; ties, frequent with few held-out clips per fold, go to the lower log loss)."""
    if selection == "log_loss":
        return min(range(len(table)), key=lambda i: table[i]["log_loss"])
    return min(range(len(table)), key=lambda i: (-round(table[i]["accuracy"], 9), table[i]["log_loss"]))


def _nested_logits(x, targets, first, folds, groups, seed, cs, standardize, selection
                   ) -> tuple[np.ndarray, list[float]]:
    """Out-of-fold logits where each outer fold's C is chosen by cross-validation on its own training
    clips only."""
    n_labels = targets.shape[1]
    logits = np.zeros((len(targets), n_labels))
    chosen = []
    for train, test in folds:
        inner_groups = None if groups is None else np.asarray(groups)[train]
        inner, _ = cv_folds(first[train], inner_groups, seed, present=targets[train] > 0)
        table, _ = _cv_path(x[train], targets[train], inner, cs, standardize, selection)
        c = cs[_best_c(table, selection)]
        chosen.append(c)
        scaler = _scaler(x[train], standardize)
        model = _fit_rows(_model().set_params(C=c), scaler(x[train]), targets[train])
        logits[test] = class_logits(model, scaler(x[test]), n_labels)
    return logits, chosen


def _cross_fitted_temperature(logits: np.ndarray, targets: np.ndarray, folds) -> np.ndarray:
    """Calibrated out-of-fold probabilities whose temperature was fitted on the *other* folds' logits,
    so their calibration is measured on predictions the temperature never saw."""
    probs = np.zeros_like(logits, dtype=np.float64)
    for train, test in folds:
        probs[test] = softmax(logits[test] / fit_temperature(logits[train], targets[train]))
    return probs


def _fit_final(x, targets, c: float, standardize: bool):
    if standardize:
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-6, scale, 1.0)  # constant features: as StandardScaler does
    else:
        mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    model = _fit_rows(_model().set_params(C=c), (x - mean) / scale, targets)
    coef, intercept = class_weights(model)
    return mean.astype(np.float32), scale.astype(np.float32), coef, intercept


def class_weights(model) -> tuple[np.ndarray, np.ndarray]:
    """``(coef [L, D], intercept [L])`` whose softmax gives the model's probabilities. scikit-learn fits
    two classes as one logit z (class 1 against 0); the softmax of (-z/2, z/2) is the same sigmoid."""
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


MISSING_LOGIT = -1e4
"""The logit of a genre a fold had no training clip of (possible only for a genre that is no clip's
first): the fold's model cannot predict it."""


def class_logits(model, x: np.ndarray, n_labels: int | None = None) -> np.ndarray:
    """[N, L] logits of ``model`` on ``x``, one column per class also for two classes, in the columns of
    the genres it was fitted on (``n_labels``: all of them)."""
    coef, intercept = class_weights(model)
    logits = x @ coef.T + intercept
    if n_labels is None or logits.shape[1] == n_labels:
        return logits
    full = np.full((len(x), n_labels), MISSING_LOGIT)
    full[:, model.classes_] = logits
    return full


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
    group i); for the user's library, each track's artist (else album, else folder: ``Example.group``);
    elsewhere each clip's folder (an album, in most libraries), where every genre has at least as many
    folders as folds; else None (clip by clip)."""
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
    if all(e.group for e in examples):
        return [e.group for e in examples]  # cv_folds goes clip by clip where they cannot be kept apart
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
    from_index: int = 0  # of them, embeddings read from the index instead of decoded


def embeddings_for(examples: Sequence[Example], backbone, max_windows: int, index=None,
                   on_error: Callable[[str], None] = lambda line: None) -> Embedded:
    """THE place a head's training gets its clips' embeddings (``examples``' order; unreadable clips are
    reported and left out): the ones the index stores for the very version of the file on disk
    (:func:`stored_embeddings_for`) are used as they are, the others decoded and embedded
    (:func:`embed_examples`). Retraining on a scanned library then decodes nothing."""
    started = time.perf_counter()
    stored = stored_embeddings_for(index, examples, backbone.embedding_space, max_windows)
    missing = [e for e in examples if e.path not in stored]
    decoded = embed_examples(backbone, missing, max_windows, on_error=on_error) if missing else \
        Embedded([], np.zeros((0, backbone.embedding_dim), np.float32))
    found = {**dict(zip((e.path for e in decoded.examples), decoded.embeddings)), **stored}
    kept = [e for e in examples if e.path in found]
    matrix = np.stack([np.asarray(found[e.path], dtype=np.float32) for e in kept]) if kept else \
        np.zeros((0, backbone.embedding_dim), np.float32)
    return Embedded(kept, matrix, decoded.unreadable, decoded.decode_seconds, decoded.embed_seconds,
                    time.perf_counter() - started, from_index=len(stored))


def stored_embeddings_for(index, examples: Sequence[Example], space: str,
                          max_windows: int) -> dict[str, np.ndarray]:
    """The embeddings the open :class:`tagger.index.Index` ``index`` keeps in ``space`` (the backbone's
    ``embedding_space``: same weights, same layer) that are exactly what decoding would give:
    ``{example path: float16 [D]}``. A stored vector is used only for the version of the file on disk
    now (same size and mtime) and only if it is the mean of the windows this training would analyse
    (a scan with another ``--max-windows`` averaged others): any other clip is decoded."""
    from tagger.decode import plan_windows
    from tagger.index import path_key

    if index is None or not examples:
        return {}
    rows = index.embedded_tracks([e.path for e in examples], space)
    out = {}
    for e in examples:
        row = rows.get(path_key(e.path))
        if row is None or row["duration"] is None or not _same_version(e.path, row["size"], row["mtime_ns"]):
            continue
        if row["windows"] == len(plan_windows(row["duration"], max_windows)):
            out[e.path] = row["vector"]
    return out


def _same_version(path: str, size: int, mtime_ns: int) -> bool:
    """Whether the file at ``path`` still has this size and mtime (False if it cannot be read)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (size, mtime_ns)


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
    """``genretag train`` for a built-in base model: split, embed, measure (nested CV on train+valid, the
    test part scored by the head fitted without it), refit on every labelled clip (``refit_all``), write,
    register."""
    from tagger.models.identity import register_trained_model, use_model
    from tagger.models.musicnn import load_builtin

    from . import metrics
    from .train import TrainResult, _check_output, _replace_folder, command_line, describe_hardware

    started = time.perf_counter()
    if settings.base_model not in BACKBONES:
        raise ModelError(f"--base-model {settings.base_model}: heads train on {' or '.join(BACKBONES)}")
    output = _check_output(settings.output)
    dataset = described_dataset(data, report)
    for ignored in ignored_options(settings):
        report(f"note: --{ignored.replace('_', '-')} applies to fine-tuning only; ignored for a head")
    backbone = load_builtin(settings.base_model.removeprefix("builtin:"), embedding_layer=EMBEDDING_LAYER,
                            precision=_scan_precision())
    report(f"embedding every clip with {backbone.embedding_space} ({backbone.embedding_dim}-d, "
           f"{backbone.precision}, up to {settings.max_windows} windows of 30 s per clip)")
    with library_index(data) as index:
        embedded = embeddings_for(dataset.train + dataset.valid + dataset.test, backbone, settings.max_windows,
                                  index=index, on_error=report)
        if index is not None:
            report(f"{embedded.from_index} of {len(embedded.examples)} clips' embeddings read from the index "
                   f"(not decoded) in {embedded.wall_seconds:.1f} s")
    dataset = dataset.without(set(embedded.unreadable))
    made = fit_measure_refit(dataset, embedded, data.seed, settings.refit_all, report)
    fit, shipped, results, fitted_on = made.fit, made.shipped, made.results, made.fitted_on
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    try:
        staging.mkdir()
        save_head(staging, shipped, backbone, settings.base_model, fitted_on)
        hardware, command = describe_hardware(), command_line(data, settings)
        metrics.write_artifacts(staging, results, dataset, info={
            "kind": "head", "base_model": settings.base_model, "command": command,
            "hardware": hardware, "train_seconds": round(time.perf_counter() - started, 1),
            "skipped_unreadable": sorted(embedded.unreadable), "settings": asdict(settings), "data": asdict(data),
            "head": head_facts(shipped, backbone), "fitted_on": fitted_on, "measured": MEASURED,
            "calibration": {**{k: fit.cv[k] for k in ("ece", "ece_calibrated", "log_loss", "log_loss_calibrated",
                                                        "temperature", "temperature_scaling",
                                                        "ece_if_calibrated")},
                            "thresholds": fit.thresholds.as_dict()},
            "stages_seconds": {"decode_cpu": round(embedded.decode_seconds, 1),
                               "embed": round(embedded.embed_seconds, 1),
                               "decode_and_embed_wall": round(embedded.wall_seconds, 1),
                               "embeddings_from_index": embedded.from_index,
                               "fit": round(shipped.seconds, 1)}})
        _replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    headline = results.get("test") or results["cv"]
    register_trained_model(output, {
        "base_model": settings.base_model, "labels": dataset.labels, "split": headline.get("split"),
        "accuracy": headline.get("accuracy"), "cv_accuracy": fit.cv["accuracy"],
        "fitted_on": "+".join(fitted_on["parts"]), "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if settings.make_default:
        use_model(str(output))
    return TrainResult(output, dataset, results, time.perf_counter() - started, hardware, command)


@dataclass
class MadeHead:
    """What :func:`fit_measure_refit` made: the head measured, the head to write, the figures."""

    fit: HeadFit  # fitted on train+valid: what the figures measure
    shipped: HeadFit  # the head written: ``fit`` refitted on every labelled clip, or ``fit`` itself
    results: dict  # {"cv": metrics, "test": metrics}
    fitted_on: dict  # fitted_parts() of ``shipped``


def fit_measure_refit(dataset: Dataset, embedded: Embedded, seed: int, refit_all: bool,
                      report: Callable[[str], None] = lambda line: None) -> MadeHead:
    """Everything after the embeddings, and nothing that decodes: fit on train+valid (nested CV, C,
    temperature and thresholds chosen there), score the test part with that head, then (``refit_all``)
    fit the head written again on every labelled clip with what was chosen. ``embedded`` holds the
    embeddings of (at least) every clip of ``dataset``."""
    rows = {e.path: i for i, e in enumerate(embedded.examples)}
    fit_examples = dataset.train + dataset.valid
    x_fit = embedded.embeddings[[rows[e.path] for e in fit_examples]]
    fit = fit_head(x_fit, [e.all_genres for e in fit_examples], cv_groups(fit_examples, dataset.source), seed=seed)
    report(cv_line(fit, dataset))
    results = {"cv": cv_metrics(fit, fit_examples, dataset)}
    test, _ = known_genres_only(dataset.test, set(fit.labels))
    if test:
        results["test"] = scored_metrics(fit, embedded.embeddings[[rows[e.path] for e in test]], test,
                                         dataset.split_name("test"))
    shipped, fitted_on = fit, fitted_parts(dataset, ("train", "valid"), seed, len(fit_examples))
    if refit_all and test:
        every = fit_examples + test
        shipped = refit(fit, embedded.embeddings[[rows[e.path] for e in every]], [e.all_genres for e in every])
        fitted_on = fitted_parts(dataset, ("train", "valid", "test"), seed, len(every))
        report(f"the head written is fitted on all {len(every)} labelled clips (train+valid+test) with that C, "
               "temperature and threshold; the accuracies are of heads fitted without the clips they score")
    return MadeHead(fit, shipped, results, fitted_on)


MEASURED = {
    "cv": "out-of-fold predictions of the train+valid clips: nested cross-validation (C chosen again inside "
          "each fold), folds keeping groups (artists) together where possible",
    "test": "the test clips scored from their embeddings (what a scan computes from a stored embedding) by the "
            "head fitted on train+valid only, with the C, temperature and thresholds chosen on train+valid",
}
"""What each figure of a head's metrics.json measured, whatever the head written was fitted on."""


def fitted_parts(dataset: Dataset, parts: tuple[str, ...], seed: int, clips: int) -> dict:
    """Which clips the written head's weights were fitted on: ``genretag evaluate`` on one of these parts
    of the same data and split says that its figure is not held out."""
    return {"parts": list(parts), "clips": clips, "source": dataset.source, "root": dataset.root,
            "split": dataset.split, "seed": seed}


@contextmanager
def library_index(data: DataSettings):
    """The index a ``--from-index`` run reads (open, for stored embeddings), else None."""
    if not data.from_index:
        yield None
        return
    from tagger.index import Index, index_errors
    from tagger.settings import default_db_path

    path = Path(data.db).expanduser() if data.db else default_db_path()
    with index_errors(path), Index(path, create=False) as index:
        yield index


def scored_metrics(fit: HeadFit, embeddings: np.ndarray, examples: list[Example], split: str) -> dict:
    """Top-1 metrics of ``fit`` on clips it was not fitted on, from their embeddings; a clip with several
    genres is right when the top genre is any of them."""
    from .metrics import split_metrics

    predicted = [fit.labels[i] for i in fit.scores(embeddings).argmax(axis=1)]
    return split_metrics([e.counted_truth(p) for e, p in zip(examples, predicted)], predicted, fit.labels, split,
                         paths=[e.path for e in examples])


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
    m = split_metrics([e.counted_truth(p) for e, p in zip(examples, predicted)], predicted, fit.labels,
                      f"{dataset.source} {dataset.split}/train+valid, {fit.cv['folds']}-fold CV",
                      paths=[e.path for e in examples])
    m.update({k: fit.cv[k] for k in ("accuracy_std", "fold_accuracies", "folds", "grouped", "nested")})
    m["accuracy"] = fit.cv["accuracy"]  # the mean over folds, as cv_line says (equal folds: the same)
    return m


def head_facts(fit: HeadFit, backbone) -> dict:
    return {"kind": "multinomial logistic regression (scikit-learn lbfgs)", "C": fit.C,
            "fitted_clips": fit.fitted_clips,
            "temperature": fit.temperature, "standardize": fit.cv["standardize"],
            "embedding_space": backbone.embedding_space, "embedding_dim": backbone.embedding_dim,
            "precision": backbone.precision, "cv": {k: v for k, v in fit.cv.items() if k != "selection"},
            "selection": fit.cv["selection"]}


def save_head(folder: Path, fit: HeadFit, backbone, base_model: str, fitted_on: dict | None = None) -> None:
    """``config.json`` and ``head.safetensors`` (see :mod:`tagger.models.head`); ``fitted_on``
    (:func:`fitted_parts`) goes into its ``head`` facts."""
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
                 "standardize": fit.cv["standardize"], "cv_accuracy": fit.cv["accuracy"],
                 **({"fitted_on": fitted_on} if fitted_on else {})},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
