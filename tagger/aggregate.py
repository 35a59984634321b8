"""Step 4: from per-window probabilities to the genres of a track.

Track scores are the **mean** of the window probabilities, label by label: every analysed part of the
track counts equally, and one odd window (a spoken intro, a breakdown) is outvoted rather than decisive.
The label map then keeps, renames and merges labels (e.g. drops musicnn's moods and instruments), and the
top ``top_k`` genres scoring at least ``min_confidence`` are the track's genres. If none does, the track
is *abstained*: it gets no tag rather than a guess.
"""
from __future__ import annotations

from .records import ABSTAINED, OK


def rank_labels(window_probs, labels: list[str], label_map) -> list[tuple[str, float]]:
    """Mean over windows, mapped through ``label_map``, best first."""
    mean = window_probs.float().mean(dim=0)
    ranked = label_map.apply(labels, mean)
    return sorted(ranked, key=lambda pair: (-pair[1], pair[0]))


def choose_genres(ranking: list[tuple[str, float]], top_k: int, min_confidence: float
                  ) -> tuple[str, list[str], list[float]]:
    """``(status, labels, scores)``: the top-k labels at or above the threshold, else abstain."""
    chosen = [(label, score) for label, score in ranking[:top_k] if score >= min_confidence]
    if not chosen:
        return ABSTAINED, [], []
    return OK, [label for label, _ in chosen], [float(score) for _, score in chosen]
