"""What a scan does with each discovered track, given what the index knows of it: a pure decision.

:func:`decide` looks at a track's stat, the index's stored prediction for it (a row of
:meth:`tagger.index.Index.cached_predictions`) and the scan's rules, and answers one of:

* **predict** — no stored prediction by this model, the file changed (size or mtime), ``--rescan``,
  a different label map, or ``--top-k`` asking for more genres than the index kept;
* **from the embedding** — as for *predict*, but the scan's model is a head and the index keeps the
  track's embedding in the head's embedding space, made from this version of the file (same size and
  mtime): the head scores that embedding, and the file is not decoded (not with ``--rescan``);
* **from the index** — the stored prediction stands. Its genres are decided again from the stored
  ranking under this scan's ``--top-k`` and thresholds (*relabelled* when that changes them), and then:
  *write* them now (``--write-tags`` and the file does not hold them yet), leave them *pending* (genres
  the file does not hold, on a run that does not write), or nothing (written before, abstained, failed).

Nothing here reads a file or the index; :class:`tagger.pipeline._Scan` carries decisions out, so the
counts and the ``--json`` lines of every path come from one place.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from .aggregate import choose_genres
from .records import ABSTAINED, OK

PREDICT = "predict"
FROM_INDEX = "index"
FROM_EMBEDDING = "embedding"


@dataclass(frozen=True)
class Rules:
    """The settings of a scan that decide what happens to an unchanged track."""

    rescan: bool
    write_tags: bool  # --write-tags without --dry-run
    top_k: int
    min_confidence: float
    label_map: str  # digest of the scan's label map
    genre_count: int  # how many genres a complete ranking holds under that map
    thresholds: Mapping[str, float] | None = None  # per-genre thresholds (a trained checkpoint's)
    parents: Mapping[str, str] | None = None  # --level both: the genre tree to descend


@dataclass(frozen=True)
class Decision:
    action: str  # PREDICT, FROM_INDEX or FROM_EMBEDDING
    row: dict | None = None  # the stored prediction (JSON columns parsed), its genres decided again
    # under the rules; ``genres`` is what the file's tags held when the index last read them (or None)
    relabelled: bool = False  # the decided genres differ from the stored ones
    write: bool = False  # write the genres into the file now
    pending: bool = False  # genres the file does not hold, on a run that does not write them


def decide(size: int, mtime_ns: int, row: dict | None, rules: Rules,
           embedding: tuple[int, int] | None = None) -> Decision:
    """The decision for a track whose file has this ``size`` and ``mtime_ns``; ``row`` is the index's
    prediction for it by the scan's model (None if there is none), ``embedding`` the ``(size,
    mtime_ns)`` of the file version the index keeps an embedding of in the space the scan's model scores
    (None if there is none, or the model scores no stored embeddings)."""
    if rules.rescan:
        return Decision(PREDICT)
    stat = (size, mtime_ns)
    decided = decided_again(row, rules) if row is not None and (row["size"], row["mtime_ns"]) == stat else None
    if decided is None:
        return Decision(FROM_EMBEDDING if embedding == stat else PREDICT)
    relabelled = decided is not row
    if decided["status"] != OK or decided["written"]:
        return Decision(FROM_INDEX, decided, relabelled)
    in_file = decided["genres"] == decided["labels"]
    return Decision(FROM_INDEX, decided, relabelled, write=rules.write_tags,
                    pending=not rules.write_tags and not in_file)


def decided_again(row: dict, rules: Rules) -> dict | None:
    """The row with ``labels`` and ``scores`` as lists: ``row`` itself when this scan decides as the
    stored prediction did (its labels and scores then read from the ranking, not parsed), else a copy with the status, labels and
    scores decided again from its stored ranking under the rules' ``top_k``, thresholds and level, and
    ``written`` cleared (the file does not hold them). None when the index cannot decide: the ranking went
    through another label map, or ``top_k`` asks for more genres than were stored; the track is then
    predicted again. Failures, and rows without a ranking, stand as stored."""
    ranking = row["ranking"]
    if row["status"] not in (OK, ABSTAINED) or not ranking:
        return _with_stored_choice(row)
    if row["label_map"] not in (None, rules.label_map):
        return None
    if rules.top_k > len(ranking) < rules.genre_count:  # more asked for than was stored
        return None
    status, labels, scores = choose_genres(ranking, rules.top_k, rules.min_confidence, rules.thresholds,
                                           rules.parents)
    if status == row["status"] and json.dumps(labels) == row["labels"]:  # stored as json.dumps wrote it
        row["labels"], row["scores"] = labels, scores  # the same choice (scores from the rounded ranking)
        return row
    return {**row, "status": status, "labels": labels, "scores": scores, "written": 0}


def _with_stored_choice(row: dict) -> dict:
    if isinstance(row["labels"], str):
        row["labels"], row["scores"] = json.loads(row["labels"]), json.loads(row["scores"] or "[]")
    return row
