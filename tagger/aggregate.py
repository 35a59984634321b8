"""Step 4: from per-window probabilities to the genres of a track.

Track scores are the **mean** of the window probabilities, label by label: every analysed part of the
track counts equally, and one odd window (a spoken intro, a breakdown) is outvoted rather than decisive.
A head trained on a built-in model's embeddings scores the **mean of the window embeddings** instead
(:func:`track_embedding`, which the index keeps, so the head can score it again later without the audio).
The label map then keeps, renames, merges and rolls labels up into genres at the scan's ``--level``
(e.g. drops musicnn's moods and instruments), and the top ``top_k`` genres that reach their threshold
are the track's genres. If none does, the track is *abstained*: it gets no tag rather than a guess.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .records import ABSTAINED, OK

if TYPE_CHECKING:
    import numpy as np


def rank_labels(window_probs, labels: list[str], label_map, multi_label: bool) -> list[tuple[str, float]]:
    """Mean over windows, mapped through ``label_map`` (scored as ``multi_label`` says), best first."""
    return rank_scores(window_probs.float().mean(dim=0), labels, label_map, multi_label)


def rank_scores(scores, labels: list[str], label_map, multi_label: bool) -> list[tuple[str, float]]:
    """A track's scores, one per model label, mapped through ``label_map``, best first."""
    ranked = label_map.apply(labels, scores, multi_label=multi_label)
    return sorted(ranked, key=lambda pair: (-pair[1], pair[0]))


def split_outputs(outputs, label_count: int):
    """``(probabilities [W, L], embeddings [W, D] or None)`` of a track's window outputs: a model that
    computes embeddings returns each window's probabilities followed by its embedding in one row
    (:func:`tagger.engine.predict_function`)."""
    if outputs.shape[1] == label_count:
        return outputs, None
    return outputs[:, :label_count], outputs[:, label_count:]


def track_embedding(window_embeddings) -> "np.ndarray":
    """[W, D] window embeddings -> the track's [D] float16 embedding: their mean, rounded to float16
    (saturating, never inf) as the index stores it and as a head reads it."""
    from .models.head import FLOAT16_MAX

    mean = window_embeddings.float().mean(dim=0)
    return mean.clamp(-FLOAT16_MAX, FLOAT16_MAX).half().numpy()


def decision_thresholds(classifier, min_confidence: float | None) -> tuple[float, dict[str, float] | None]:
    """The global threshold and the per-genre ones that a track's genres are chosen with.

    ``min_confidence`` is the user's ``--min-confidence``: when given, it is the one threshold for every
    genre, overriding the model's per-genre thresholds (the user asked for that number). Otherwise the
    model's ``default_min_confidence`` applies to the genres without a threshold of their own in
    ``classifier.label_thresholds`` (a trained checkpoint's, keyed by genre; None for most models)."""
    if min_confidence is not None:
        return min_confidence, None
    own = getattr(classifier, "label_thresholds", None)
    return classifier.default_min_confidence, classifier.label_map.genre_thresholds(own, classifier.labels)


def choose_genres(ranking: list[tuple[str, float]], top_k: int, min_confidence: float,
                  thresholds: Mapping[str, float] | None = None, parents: Mapping[str, str] | None = None
                  ) -> tuple[str, list[str], list[float]]:
    """``(status, labels, scores)``: those of the top-k genres that reach their threshold, else abstain.

    A genre's threshold is its own in ``thresholds`` if it has one, else ``min_confidence``. Only the
    ``top_k`` best-ranked genres are candidates, so a threshold decides whether a track abstains and
    never promotes a genre the model ranks lower: the genres written are always the model's best.

    ``parents`` (level both, :meth:`tagger.labels.LabelMap.nesting`): the candidates are the top-k
    top-level genres, and each one chosen is followed by its best-ranked sub-genre while that reaches its
    threshold, then by that sub-genre's best, and so on: "Rock", "Alternative Rock" when the model is sure
    of both, "Rock" alone when it is sure only that the track is rock.
    """
    thresholds = thresholds or {}

    def clears(genre: str, score: float) -> bool:
        return score >= thresholds.get(genre, min_confidence)

    if parents is None:
        chosen = [(genre, score) for genre, score in ranking[:top_k] if clears(genre, score)]
    else:
        top_level = [(genre, score) for genre, score in ranking if genre not in parents][:top_k]
        chosen = []
        for genre, score in top_level:
            if clears(genre, score):
                chosen += [(genre, score), *_confident_descent(genre, ranking, parents, clears)]
    if not chosen:
        return ABSTAINED, [], []
    return OK, [genre for genre, _ in chosen], [float(score) for _, score in chosen]


def _confident_descent(genre: str, ranking, parents: Mapping[str, str], clears) -> list[tuple[str, float]]:
    """Below ``genre``: its best-ranked sub-genre if it reaches its threshold, then that one's, …"""
    path = []
    while True:
        best = next(((g, s) for g, s in ranking if parents.get(g) == genre), None)
        if best is None or not clears(*best):
            return path
        path.append(best)
        genre = best[0]
