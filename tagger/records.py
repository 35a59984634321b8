"""The plain records that flow between the pipeline's stages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and numpy are imported only by the stages that compute
    import numpy as np
    import torch

OK, ABSTAINED, FAILED, SKIPPED = "ok", "abstained", "failed", "skipped"


@dataclass(frozen=True)
class Track:
    """A discovered file and the stat that identifies this version of it."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class DecodedTrack:
    """A track's analysis windows, decoded at the model's rate, mono, zero-padded to one length."""

    track: Track
    windows: "torch.Tensor"  # [n_windows, window_samples] float32
    lengths: "torch.Tensor"  # [n_windows] valid samples in each window
    starts: list[float]  # seconds, where each window begins in the track
    duration: float  # seconds of audio in the track (header, else decoded)
    codec: str | None = None


PREDICTED, FROM_INDEX, FROM_EMBEDDING, DISCOVERY = "predicted", "index", "embedding", "discovery"
"""Where a result comes from: this run's prediction, the index (unchanged since), this run's prediction
from the embedding the index keeps (a head model on its backbone's embedding, the file not decoded), or
the walk itself (a folder or special file it could not read)."""
JSON_RANKING = 10
"""Genres of a track's ranking in its ``--json`` line: as many as the index keeps by default."""


@dataclass
class TrackResult:
    """What the scan concluded about one track; rows of the index and lines of ``--json`` come from it."""

    path: str
    status: str  # ok | abstained | failed | skipped (to be predicted again: not a final result)
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    ranking: list[tuple[str, float]] = field(default_factory=list)  # every mapped label, best first
    window_labels: list[list[tuple[str, float]]] = field(default_factory=list)  # per window, top labels
    windows: int = 0
    duration: float | None = None
    codec: str | None = None
    error: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    tags: dict | None = None  # genres/artist/album/title read from the file before any write
    written: bool = False  # this run wrote the genres into the file
    pending: bool = False  # genres the file does not hold yet, on a run that does not write them
    retry: bool = False  # a failure the next scan tries again (a decode that timed out), not one it skips
    source: str = PREDICTED  # predicted by this run (FROM_EMBEDDING: from a stored embedding), or FROM_INDEX
    relabelled: bool = False  # from the index, its genres decided again differently under this run's rules
    embedding: "np.ndarray | None" = field(default=None, repr=False)  # [D] float16: the mean of the
    # track's window embeddings, for the index to keep (None when the model computes none, or it is stored)
    embedding_space: str | None = None  # the space ``embedding`` is in (``classifier.embedding_space``)

    def as_json(self) -> dict:
        """The ``--json`` line for this track (schema: docs/json-output.md)."""
        return {
            "path": self.path, "status": self.status, "source": self.source,
            "labels": self.labels, "scores": [round(s, 6) for s in self.scores],
            "ranking": [{"label": label, "score": round(float(score), 6)}
                        for label, score in self.ranking[:JSON_RANKING]],
            "genres_in_file": (self.tags or {}).get("genres"), "written": self.written,
            "pending": self.pending, "relabelled": self.relabelled, "windows": self.windows,
            "duration": self.duration, "codec": self.codec, "error": self.error,
        }
