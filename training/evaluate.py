"""Judge a checkpoint the way ``genretag scan`` will use it.

Every clip goes through :class:`tagger.pipeline.Tagger`: the tagger's decoder, its window plan (up to
three 30 s windows per track), the model's segmenting of each window and the mean over windows. The
prediction is the top-1 label of the track's ranking, so no confidence threshold hides a mistake.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from tagger.errors import FileError, UnreadableFile

from .data import Dataset, DataSettings, Example, load_dataset

CHUNK = 16
"""Tracks decoded per call to the tagger: bounds memory (a chunk's windows are held at once)."""


def evaluate_parts(checkpoint, dataset: Dataset, parts: Sequence[str] = ("test",), *, device: str = "auto",
                   batch_size: int | None = None, on_skip: Callable[[str], None] | None = None,
                   scores: dict | None = None) -> dict:
    """``{part: metrics}`` (see :func:`training.metrics.split_metrics`) for the non-empty ``parts``.

    ``scores``, if given, receives ``{part: (labels, targets [N, L], track scores [N, L])}`` (targets:
    1/k at each of a clip's k genres, :func:`training.calibration.target_matrix`): what the thresholds
    are chosen from."""
    import numpy as np

    from tagger.pipeline import Tagger

    from .calibration import target_matrix
    from .data import known_genres_only
    from .metrics import split_metrics

    report = on_skip or (lambda line: None)
    tagger = Tagger(model=os.fspath(checkpoint), device=device, batch_size=batch_size)
    labels = tagger.classifier.labels
    results = {}
    for part in parts:
        examples, unknown = known_genres_only(dataset.parts()[part], set(labels))
        if unknown:
            report(f"{part}: genres the model does not know were left out (and clips with no other): "
                   f"{', '.join(unknown)}")
        if not examples:
            continue
        scored = classify(tagger, examples, report)
        predicted = [r[0][0] for _, r in scored]
        results[part] = split_metrics([e.counted_truth(p) for (e, _), p in zip(scored, predicted)], predicted,
                                      labels, dataset.split_name(part), paths=[e.path for e, _ in scored])
        if scores is not None and scored:
            index = {label: i for i, label in enumerate(labels)}
            probs = np.zeros((len(scored), len(labels)))
            for row, (_, ranking) in enumerate(scored):
                for label, score in ranking:
                    probs[row, index[label]] = score
            scores[part] = (labels, target_matrix([e.all_genres for e, _ in scored], labels), probs)
    return results


def classify(tagger, examples: list[Example], report: Callable[[str], None]
             ) -> list[tuple[Example, list[tuple[str, float]]]]:
    """``(example, ranking)`` per readable clip, best label first; unreadable clips are reported and left
    out."""
    out = []
    for start in range(0, len(examples), CHUNK):
        chunk = examples[start:start + CHUNK]
        try:
            results = tagger.classify_tracks([e.path for e in chunk])
            out += [(e, r.ranking) for e, r in zip(chunk, results)]
        except (FileError, OSError):  # find the bad clip(s); the rest of the chunk still counts
            for e in chunk:
                try:
                    out.append((e, tagger.classify_tracks([e.path])[0].ranking))
                except (FileError, OSError) as err:
                    report(f"skipped {err if isinstance(err, FileError) else UnreadableFile(e.path, str(err))}")
    return out


def evaluate_checkpoint(checkpoint, data: DataSettings, parts: Sequence[str] = ("test",), *,
                        device: str = "auto", batch_size: int | None = None,
                        report: Callable[[str], None] = print) -> tuple[Dataset, dict]:
    """Rebuild the dataset split of ``data`` (same options and seed as training give the same held-out
    clips) and evaluate ``checkpoint`` on ``parts``."""
    dataset = load_dataset(data)
    for note in dataset.notes:
        report(f"note: {note}")
    if line := fitted_on_note(checkpoint, dataset, data, parts):
        report(line)
    return dataset, evaluate_parts(checkpoint, dataset, parts, device=device, batch_size=batch_size,
                                   on_skip=report)


def fitted_on_note(checkpoint, dataset: Dataset, data: DataSettings, parts: Sequence[str]) -> str | None:
    """One line when ``checkpoint`` (a head written with ``--refit-all``) was fitted on some of ``parts``
    of this very split: its accuracy there is not a held-out figure."""
    import json

    try:
        config = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
        fitted = config["head"]["fitted_on"]
        same = (fitted["source"], fitted["root"], fitted["split"], fitted["seed"]) == (
            dataset.source, dataset.root, dataset.split, data.seed)
        seen = [part for part in parts if part in fitted["parts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (same and seen):
        return None
    named = seen[0] if len(seen) == 1 else f"{', '.join(seen[:-1])} and {seen[-1]}"
    return (f"note: this head was fitted on the {named} part{'s' if len(seen) > 1 else ''} of this "
            f"split ({'+'.join(fitted['parts'])}, --refit-all): the accuracy below is not held out; the held-out "
            "figures are in its metrics.json")
