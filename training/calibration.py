"""How far a checkpoint's scores can be trusted: calibration, temperature, and the thresholds stored in it.

All of it is computed from held-out predictions: a head's cross-validated (out-of-fold) probabilities, or
a fine-tuned checkpoint's predictions on its validation clips. The track's decision that the thresholds
serve is the tagger's: the top genre is written if its score reaches the threshold, else the track is
*abstained*. So a threshold is chosen from (top score, was the top genre right) pairs:

    the lowest score at which the tracks that reach it were right at least ``TARGET_PRECISION`` of the
    time in held-out predictions,

i.e. the most tracks tagged for the precision asked. Per genre where at least ``MIN_PER_LABEL`` held-out
tracks had that genre on top; one global threshold for the others (and as ``genretag_min_confidence``).

The truth (``true``) is either each track's genre index [N], or, for tracks with several genres, a
target matrix [N, L] whose row holds 1/k at each of the track's k genres (:func:`target_matrix`): a top
genre is then right when it is any of them, and the log loss weighs each of them 1/k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TARGET_PRECISION = 0.9
"""Share of written genres that must have been right in held-out predictions at the chosen threshold."""
MIN_PER_LABEL = 30
"""Held-out tracks with a genre on top before that genre gets a threshold of its own: with fewer, one
wrong track moves the measured precision by more than 3 points."""
MIN_COVERAGE = 0.5
"""Where no threshold reaches the target precision, the most precise one that still tags this share."""
ECE_BINS = 10


@dataclass
class Thresholds:
    """The thresholds chosen and what they gave on the held-out predictions."""

    global_threshold: float
    per_label: dict[str, float]
    precision: float  # of the tracks reaching the global threshold
    coverage: float  # share of tracks reaching it
    target_reached: bool

    def as_dict(self) -> dict:
        return {"min_confidence": self.global_threshold, "label_thresholds": self.per_label,
                "target_precision": TARGET_PRECISION, "precision": self.precision, "coverage": self.coverage,
                "target_reached": self.target_reached, "min_per_label": MIN_PER_LABEL}


def target_matrix(genres: list[tuple[str, ...]], labels: list[str]) -> np.ndarray:
    """[N, L]: 1/k at each of a track's k genres (which must all be in ``labels``)."""
    index = {label: i for i, label in enumerate(labels)}
    targets = np.zeros((len(genres), len(labels)))
    for row, names in enumerate(genres):
        targets[row, [index[g] for g in names]] = 1.0 / len(names)
    return targets


def top_right(probs: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Whether each track's top genre is right: its genre index, or any genre of its target row."""
    top = np.asarray(probs).argmax(axis=1)
    true = np.asarray(true)
    return true[np.arange(len(top)), top] > 0 if true.ndim == 2 else top == true


def softmax(logits: np.ndarray) -> np.ndarray:
    from scipy.special import softmax as scipy_softmax

    return scipy_softmax(np.asarray(logits, dtype=np.float64), axis=1)


def expected_calibration_error(probs: np.ndarray, true: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the gap between confidence (top probability) and accuracy, averaged over
    ``bins`` equal-width confidence bins weighted by their share of the tracks."""
    probs = np.asarray(probs)
    confidence = probs.max(axis=1)
    correct = top_right(probs, true)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap)


def ece_of_calibrated(probs: np.ndarray, draws: int = 500, seed: int = 0) -> tuple[float, float]:
    """The 5th and 95th percentiles of the ECE that *perfectly* calibrated scores with these confidences
    would show on this many tracks (each top genre right with exactly its probability): on a few dozen
    tracks sampling alone gives an ECE of 0.1, so a measured ECE is only evidence against calibration
    when it lies above this range."""
    confidence = np.asarray(probs).max(axis=1)
    right = np.random.default_rng(seed).random((draws, len(confidence))) < confidence  # one draw per row
    which = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
    eces = np.zeros(draws)
    for b in range(ECE_BINS):  # expected_calibration_error of every draw at once
        members = which == b
        if members.any():
            eces += members.mean() * np.abs(right[:, members].mean(axis=1) - confidence[members].mean())
    low, high = np.percentile(eces, [5, 95])
    return float(low), float(high)


def log_loss(probs: np.ndarray, true: np.ndarray) -> float:
    """Mean cross-entropy; with a target matrix, each of a track's k genres weighs 1/k."""
    logs = np.log(np.clip(np.asarray(probs), 1e-12, 1.0))
    true = np.asarray(true)
    if true.ndim == 2:
        return float(-(true * logs).sum(axis=1).mean())
    return float(-logs[np.arange(len(true)), true].mean())


def fit_temperature(logits: np.ndarray, true: np.ndarray) -> float:
    """The temperature T that minimises the log loss of ``softmax(logits / T)`` (Guo et al., 2017), in
    [0.05, 20]: T > 1 softens over-confident scores, T < 1 sharpens timid ones; the ranking never changes."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda log_t: log_loss(softmax(logits / np.exp(log_t)), true),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def choose_thresholds(probs: np.ndarray, true: np.ndarray, labels: list[str],
                      target: float = TARGET_PRECISION) -> Thresholds:
    """Thresholds from held-out probabilities ``[N, L]`` and true label indices (see the module docstring)."""
    probs, true = np.asarray(probs, dtype=np.float64), np.asarray(true)
    top, score = probs.argmax(axis=1), probs.max(axis=1)
    correct = top_right(probs, true)
    global_t, precision, coverage, reached = _threshold(score, correct, target)
    per_label = {}
    for i, label in enumerate(labels):
        mine = top == i
        if mine.sum() >= MIN_PER_LABEL:
            t, _, _, ok = _threshold(score[mine], correct[mine], target)
            if ok:
                per_label[label] = t
    return Thresholds(global_t, per_label, precision, coverage, reached)


def _threshold(score: np.ndarray, correct: np.ndarray, target: float) -> tuple[float, float, float, bool]:
    """``(threshold, precision, coverage, target reached)``: the lowest observed score whose tracks at or
    above it are right at least ``target`` of the time; 0 when all are; else the most precise threshold
    that keeps ``MIN_COVERAGE`` of the tracks."""
    if not len(score):
        return 0.0, 0.0, 0.0, False
    order = np.argsort(-score, kind="stable")
    s, c = score[order], correct[order]
    precision = np.cumsum(c) / np.arange(1, len(c) + 1)
    # Only cut between different scores: a threshold takes every track with the same score or none.
    last_of_score = np.append(s[1:] != s[:-1], True)
    meets = np.flatnonzero(last_of_score & (precision >= target))
    if len(meets):
        m = meets[-1]
        reached = True
    else:
        keep = np.flatnonzero(last_of_score & (np.arange(1, len(c) + 1) >= MIN_COVERAGE * len(c)))
        m = keep[np.argmax(precision[keep])]
        reached = False
    threshold = 0.0 if m == len(c) - 1 and reached else math.floor(float(s[m]) * 1e4) / 1e4  # keeps s[m] in
    return threshold, float(precision[m]), float((m + 1) / len(c)), reached
