"""Label maps: which of a model's labels are genres, and what each genre is called in the tags.

Tagging models rarely output genres only. musicnn's MSD model mixes genres with moods ("sad"),
decades ("80s") and voices ("female vocalists"); an AudioSet model has 527 classes, of which only the
music-genre ones belong in a GENRE tag. A :class:`LabelMap` turns a model's ``(labels, scores)`` into
the genre names to write, for any checkpoint. ``genretag --labels FILE`` loads one from TOML::

    # Labels not named below are dropped (the default). With `true`, they pass through unchanged.
    keep_unlisted = false

    # Labels to drop even when keep_unlisted = true. Listing them also documents the decision.
    drop = ["female vocalists", "80s", "sad"]

    # model label = genre name written to the tags. Several labels may share a genre name: the
    # genre then gets the highest of their scores.
    [genres]
    "rnb" = "R&B"
    "classic" = "Classical"
    "classical" = "Classical"

Model labels are matched exactly (case-sensitive), because they are the checkpoint's own strings.
A file with unknown keys, wrong types, or a label both renamed and dropped is rejected with
:class:`LabelMapError`, so a typo never silently changes what gets written.
"""
from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import GenretagError

ALLOWED_KEYS = frozenset({"keep_unlisted", "drop", "genres"})


class LabelMapError(GenretagError, ValueError):
    """A label-map file that cannot be read or does not follow the format."""


@dataclass(frozen=True)
class LabelMap:
    """Rename / keep / drop rules from model labels to genre names.

    ``keep=None`` keeps every label that is not in ``drop``; otherwise only labels in ``keep`` (and not
    in ``drop``) survive. Labels without an entry in ``rename`` keep their own name.
    """

    rename: dict[str, str] = field(default_factory=dict)
    keep: frozenset[str] | None = None
    drop: frozenset[str] = frozenset()

    def digest(self) -> str:
        """16 hex digits that change whenever the rules do: the index notes which map each prediction's
        genres went through, so that a scan with another map predicts the track again."""
        rules = {"rename": sorted(self.rename.items()), "drop": sorted(self.drop),
                 "keep": None if self.keep is None else sorted(self.keep)}
        return hashlib.sha256(json.dumps(rules, ensure_ascii=False).encode()).hexdigest()[:16]

    def kept(self, label: str) -> bool:
        """Whether a model label survives the map."""
        return label not in self.drop and (self.keep is None or label in self.keep)

    def genre(self, label: str) -> str:
        """The name a (kept) model label is written as."""
        return self.rename.get(label, label)

    def apply(self, labels: Sequence[str], scores) -> list[tuple[str, float]]:
        """The kept genres with their scores, highest score first (ties in model-label order).

        ``scores`` is one score per label (a 1-D torch tensor, numpy array or list). When several
        labels map to the same genre, the genre's score is the highest of theirs: the strongest
        evidence for it, and still a value on the model's own probability scale.
        """
        values = _as_1d_floats(scores)
        if len(values) != len(labels):
            raise ValueError(f"{len(labels)} labels but {len(values)} scores")
        merged: dict[str, float] = {}
        for label, score in zip(labels, values):
            if self.kept(label):
                name = self.genre(label)
                merged[name] = max(score, merged.get(name, float("-inf")))
        return sorted(merged.items(), key=lambda item: -item[1])

    def unknown_labels(self, labels: Sequence[str]) -> list[str]:
        """Labels the map names that the model does not have: likely typos in a user's file."""
        named = set(self.rename) | set(self.drop) | set(self.keep or ())
        return sorted(named - set(labels))


def _as_1d_floats(scores) -> list[float]:
    if hasattr(scores, "detach"):  # torch.Tensor, without importing torch here
        scores = scores.detach().float().cpu().numpy()
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"scores must be 1-D (one per label), got shape {array.shape}")
    return array.tolist()


def identity_map() -> LabelMap:
    """Keep every label under its own name: the map for models that output genres only."""
    return LabelMap()


def parse_label_map(text: str, source: str = "<string>") -> LabelMap:
    """Build a :class:`LabelMap` from TOML text (format in the module docstring)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise LabelMapError(f"{source}: not valid TOML: {err}") from None
    _refuse_control_characters(data, source)
    unknown = set(data) - ALLOWED_KEYS
    if unknown:
        raise LabelMapError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(ALLOWED_KEYS)}")
    keep_unlisted = data.get("keep_unlisted", False)
    if not isinstance(keep_unlisted, bool):
        raise LabelMapError(f"{source}: keep_unlisted must be true or false")
    genres = data.get("genres", {})
    if not isinstance(genres, dict) or not all(isinstance(v, str) and v.strip() for v in genres.values()):
        raise LabelMapError(f"{source}: [genres] must map each model label to a non-empty genre name")
    unprintable = sorted(label for label, name in genres.items() if not name.strip().isprintable())
    if unprintable:
        raise LabelMapError(f"{source}: the genre name for {unprintable[0]!r} holds a line break or control "
                            "character, which no tag field keeps as one genre")
    drop = data.get("drop", [])
    if not isinstance(drop, list) or not all(isinstance(v, str) for v in drop):
        raise LabelMapError(f"{source}: drop must be a list of label strings")
    both = sorted(set(genres) & set(drop))
    if both:
        raise LabelMapError(f"{source}: label(s) both in [genres] and drop: {both}")
    if not keep_unlisted and not genres:
        raise LabelMapError(f"{source}: no [genres] and keep_unlisted = false would drop every label")
    return LabelMap(
        rename={label: name.strip() for label, name in genres.items()},
        keep=None if keep_unlisted else frozenset(genres),
        drop=frozenset(drop),
    )


def _refuse_control_characters(data, source: str) -> None:
    """Refuse a map holding a control character (C0, DEL, C1), bidi override or line separator anywhere:
    in a model label, a genre name, a drop entry or whatever else the file holds. A genre name is written
    into tags, where such a character would reach every player and terminal that shows the tag; a model
    label never holds one that a user means. The error shows the text escaped."""
    from .reporting.safe import escape_controls, unsafe_characters

    for text in _strings(data):
        if found := unsafe_characters(text):
            raise LabelMapError(f'{source}: "{escape_controls(text)}" holds the control character(s) '
                                f"{', '.join(found)}; label maps take printable text only")


def _strings(data):
    """Every key and string value in parsed TOML, however deep."""
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield key
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)


def load_label_map(path: str | Path) -> LabelMap:
    """Read a label-map TOML file (``--labels FILE``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LabelMapError(f"{path}: cannot read label map: {err}") from None
    return parse_label_map(text, str(path))


def builtin_label_map(name: str) -> LabelMap:
    """The default map shipped for a built-in model, e.g. ``"musicnn-msd"``."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise LabelMapError(f"no built-in label map named {name!r}")
    resource = resources.files("tagger") / "builtin" / "labels" / f"{name}.toml"
    if not resource.is_file():
        raise LabelMapError(f"no built-in label map named {name!r}")
    return parse_label_map(resource.read_text(encoding="utf-8"), f"builtin:{name}")
