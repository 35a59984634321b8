"""Label maps: which of a model's labels are genres, what each genre is called, and which genre it
belongs to.

Tagging models rarely output genres only. musicnn's MSD model mixes genres with moods ("sad"),
decades ("80s") and voices ("female vocalists"); an AudioSet model has 527 classes, of which only the
music-genre ones belong in a GENRE tag. A :class:`LabelMap` turns a model's ``(labels, scores)`` into
the genre names to write, for any checkpoint. ``genretag --labels FILE`` loads one from TOML::

    # Labels not named below are dropped (the default). With `true`, they pass through unchanged.
    keep_unlisted = false

    # Labels to drop even when keep_unlisted = true. Listing them also documents the decision.
    drop = ["female vocalists", "80s", "sad"]

    # model label = genre name written to the tags. Several labels may share a genre name: they are
    # merged (see "Scores" below).
    [genres]
    "rnb" = "R&B"
    "classic" = "Classical"
    "classical" = "Classical"
    "alternative rock" = "Alternative Rock"
    "rock" = "Rock"

    # genre = its parent genre (genre names, not model labels). A parent may be a genre of its own
    # ("Rock" above) or only a parent. Chains are allowed ("Death Metal" = "Heavy Metal",
    # "Heavy Metal" = "Metal"); cycles are not.
    [parents]
    "Alternative Rock" = "Rock"

Model labels are matched exactly (case-sensitive), because they are the checkpoint's own strings.
A file with unknown keys, wrong types, a label both renamed and dropped, a parent that is dropped, a
cycle of parents or a control character in a name is rejected with :class:`LabelMapError`, so a typo
never silently changes what gets written.

Levels (``genretag scan --level``): ``leaf`` ranks every genre the map names on its own labels' scores
and ignores ``[parents]``; ``top`` ranks only top-level genres (those without a parent), each scored
over its own labels and those of every genre below it; ``both`` ranks every genre scored over itself
and everything below it, and a track gets each chosen top-level genre followed by its sub-genres as far
down as the model is confident (see :func:`tagger.aggregate.choose_genres`).

Scores. How the labels a genre gathers (merged labels, or a parent's own labels and its sub-genres'
at levels ``top`` and ``both``) become one score depends on the model, which is why
:meth:`LabelMap.apply` is told which kind it serves:

* Softmax (single-label) models: the labels' probabilities are **added**, since the classes are
  exclusive and P(A or B) = P(A) + P(B); and every genre's score is then divided by the total
  probability of the labels the map keeps. So when nothing is dropped, the genres at one level sum to 1;
  when labels are dropped ("speech", "silence"), a genre's score is P(genre | the answer is one of the
  kept labels), a proper distribution over the kept genres. The price: a track the model thinks is
  mostly a dropped class is judged by what little the kept classes hold, so a map for a model with a
  "not music" class should keep that class (and let it abstain the track by winning) rather than drop it.
* Sigmoid (multi-label) models: the genre gets the **highest** of the labels' probabilities, the
  strongest single piece of evidence. Their labels are not exclusive (last.fm's "rock", "classic rock"
  and "hard rock" are mostly given together), so their noisy-OR 1 - prod(1 - p), which assumes
  independent evidence, counts one piece of it several times. Measured with musicnn-msd at ``--level
  top`` (bench/thresholds.py, 50 GTZAN clips and 19 silence/noise clips), noisy-OR lifted the best
  noise score from 0.45 to 0.56 and lowered precision at every threshold that tags a useful share
  (0.71 against 0.83 at 0.45). With the max, a parent's score stays on the model's own scale: the best
  top-level score is the best leaf score, so one threshold abstains on the same tracks at every level.
"""
from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import GenretagError
from .settings import LEVELS

ALLOWED_KEYS = frozenset({"keep_unlisted", "drop", "genres", "parents"})


class LabelMapError(GenretagError, ValueError):
    """A label-map file that cannot be read or does not follow the format."""


@dataclass(frozen=True)
class LabelMap:
    """Rename / keep / drop rules from model labels to genre names, a tree of genres, and the level of
    that tree a scan writes.

    ``keep=None`` keeps every label that is not in ``drop``; otherwise only labels in ``keep`` (and not
    in ``drop``) survive. Labels without an entry in ``rename`` keep their own name. ``parents`` maps a
    genre name to its parent genre's name; ``level`` is one of :data:`LEVELS`.
    """

    rename: dict[str, str] = field(default_factory=dict)
    keep: frozenset[str] | None = None
    drop: frozenset[str] = frozenset()
    parents: dict[str, str] = field(default_factory=dict)
    level: str = "leaf"

    def __post_init__(self):
        if self.level not in LEVELS:
            raise LabelMapError(f"unknown level {self.level!r}; choose one of {', '.join(LEVELS)}")

    def with_level(self, level: str) -> "LabelMap":
        """The same rules, ranked at ``level``."""
        return replace(self, level=level)

    def digest(self, multi_label: bool | None = None) -> str:
        """16 hex digits that change whenever the ranking this map gives could: the index notes which
        map each prediction's genres went through, so that a scan with another map predicts the track
        again. ``multi_label=False`` (a softmax model) adds the scoring rule where the map merges or drops
        labels, since those scores are sums renormalised over the kept labels rather than the highest
        probability of earlier versions. The parents and the level count where they shape the ranking
        (levels top and both); at level leaf they change nothing, and leave the digest, and so the
        index's cached predictions, as they were."""
        rules = {"rename": sorted(self.rename.items()), "drop": sorted(self.drop),
                 "keep": None if self.keep is None else sorted(self.keep)}
        if self.parents and self.level != "leaf":
            rules["parents"], rules["level"] = sorted(self.parents.items()), self.level
        if multi_label is False and (self.drop or self.keep is not None or
                                     len(set(self.rename.values())) < len(self.rename)):
            rules["softmax"] = "sum, renormalised over the kept labels"
        return hashlib.sha256(json.dumps(rules, ensure_ascii=False).encode()).hexdigest()[:16]

    def kept(self, label: str) -> bool:
        """Whether a model label survives the map."""
        return label not in self.drop and (self.keep is None or label in self.keep)

    def genre(self, label: str) -> str:
        """The name a (kept) model label is written as at level leaf."""
        return self.rename.get(label, label)

    def ancestors(self, genre: str) -> list[str]:
        """``genre``'s parent, grandparent … up to its top-level genre (cycles are refused on load)."""
        chain = []
        while genre in self.parents and len(chain) <= len(self.parents):
            genre = self.parents[genre]
            chain.append(genre)
        return chain

    def sources(self, labels: Sequence[str]) -> dict[str, list[int]]:
        """Each genre of a complete ranking at this map's level, with the indices of the model labels
        its score gathers, in model-label order (the order ties are ranked in)."""
        gathered: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            if not self.kept(label):
                continue
            genre = self.genre(label)
            if self.level == "leaf":
                names = [genre]
            elif self.level == "top":
                names = (self.ancestors(genre) or [genre])[-1:]
            else:
                names = [genre, *self.ancestors(genre)]
            for name in names:
                gathered.setdefault(name, []).append(i)
        return gathered

    def genres(self, labels: Sequence[str]) -> list[str]:
        """The genres a complete ranking holds at this map's level."""
        return list(self.sources(labels))

    def ranking_needed(self, labels: Sequence[str]) -> int:
        """How many genres of a ranking must be stored for the index to decide a track's genres again
        exactly: all of them at level both, where the sub-genres under a chosen genre may rank anywhere
        below it; otherwise 0 (the top ``--top-k`` decide)."""
        return len(self.genres(labels)) if self.level == "both" and self.parents else 0

    def nesting(self) -> dict[str, str] | None:
        """The parents :func:`tagger.aggregate.choose_genres` needs to follow a chosen genre down to
        its sub-genres: only at level both; None at the others, where every ranked genre stands alone."""
        return dict(self.parents) if self.level == "both" else None

    def apply(self, labels: Sequence[str], scores, *, multi_label: bool) -> list[tuple[str, float]]:
        """The genres at this map's level with their scores, highest first (ties in model-label order).

        ``scores`` is one probability per label (a 1-D torch tensor, numpy array or list);
        ``multi_label`` says whether they are independent sigmoid outputs (a genre gets the highest of
        its labels') or one softmax distribution (a genre gets the sum of its labels', divided by the
        sum over all kept labels). The module docstring says why.
        """
        values = _as_1d_floats(scores)
        if len(values) != len(labels):
            raise ValueError(f"{len(labels)} labels but {len(values)} scores")
        gathered = self.sources(labels)
        if multi_label:
            merged = {genre: max(values[i] for i in members) for genre, members in gathered.items()}
        else:
            kept_mass = sum(values[i] for i, label in enumerate(labels) if self.kept(label))
            scale = 1.0 / kept_mass if kept_mass > 0 else 0.0
            merged = {genre: sum(values[i] for i in members) * scale for genre, members in gathered.items()}
        return sorted(merged.items(), key=lambda item: -item[1])

    def genre_thresholds(self, thresholds: Mapping[str, float] | None,
                         labels: Sequence[str]) -> dict[str, float] | None:
        """Per-genre thresholds keyed by the genres this map ranks, from a model's own
        (``classifier.label_thresholds``, keyed by its labels, which are genre names for a trained
        checkpoint). A genre takes the threshold keyed by its own name, else that of the one model label
        it is made of; a genre that merges several labels gets none (the global threshold), because a
        threshold tuned on one label's scores does not fit a merged score."""
        if not thresholds:
            return None
        mapped = {}
        for genre, members in self.sources(labels).items():
            if genre in thresholds:
                mapped[genre] = float(thresholds[genre])
            elif len(members) == 1 and labels[members[0]] in thresholds:
                mapped[genre] = float(thresholds[labels[members[0]]])
        return mapped or None

    def unknown_labels(self, labels: Sequence[str]) -> list[str]:
        """Labels the map names that the model does not have: likely typos in a user's file. A genre in
        ``[parents]`` that no label is renamed to and that is no parent must be a model label too."""
        named = set(self.rename) | set(self.drop) | set(self.keep or ())
        written = set(self.rename.values()) | set(self.parents.values())
        named |= {genre for genre in self.parents if genre not in written}
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
    genres = _name_table(data.get("genres", {}), "[genres]", "model label", "genre name", source)
    drop = data.get("drop", [])
    if not isinstance(drop, list) or not all(isinstance(v, str) for v in drop):
        raise LabelMapError(f"{source}: drop must be a list of label strings")
    both = sorted(set(genres) & set(drop))
    if both:
        raise LabelMapError(f"{source}: label(s) both in [genres] and drop: {both}")
    if not keep_unlisted and not genres:
        raise LabelMapError(f"{source}: no [genres] and keep_unlisted = false would drop every label")
    renamed = {label: name.strip() for label, name in genres.items()}
    parents = _parse_parents(data.get("parents", {}), set(renamed.values()), set(drop), keep_unlisted, source)
    return LabelMap(rename=renamed, keep=None if keep_unlisted else frozenset(genres), drop=frozenset(drop),
                    parents=parents)


def _name_table(table, name: str, key_kind: str, value_kind: str, source: str) -> dict[str, str]:
    """A TOML table of non-empty, single-line strings, or a :class:`LabelMapError` saying what is wrong."""
    if not isinstance(table, dict) or not all(isinstance(v, str) and v.strip() for v in table.values()):
        raise LabelMapError(f"{source}: {name} must map each {key_kind} to a non-empty {value_kind}")
    unprintable = sorted(key for key, value in table.items() if not value.strip().isprintable())
    if unprintable:
        raise LabelMapError(f"{source}: the {value_kind} for {unprintable[0]!r} in {name} holds a line break "
                            "or control character, which no tag field keeps as one genre")
    return table


def _parse_parents(table, genres: set[str], drop: set[str], keep_unlisted: bool, source: str) -> dict[str, str]:
    """``[parents]``: checked for names no tag can hold, genres the map never writes, dropped parents
    and cycles, each refused in one line naming the file."""
    table = _name_table(table, "[parents]", "genre", "parent genre", source)
    parents = {}
    for child, parent in table.items():
        if not child.strip() or not child.strip().isprintable():
            raise LabelMapError(f"{source}: [parents] names the genre {child!r}, which is empty or holds a "
                                "line break or control character")
        parents[child.strip()] = parent.strip()
    written = genres | set(parents.values())
    for name in [*parents, *parents.values()]:
        if name in drop and name not in genres:
            raise LabelMapError(f"{source}: {name!r} is in drop and in [parents]; a dropped label is never "
                                "a genre, so it can be no parent or sub-genre")
    if not keep_unlisted:
        unwritten = sorted(child for child in parents if child not in written)
        if unwritten:
            raise LabelMapError(f"{source}: [parents] names {unwritten[0]!r}, which is no genre in [genres] "
                                "(genre names, not model labels, go in [parents])")
    for child in parents:
        chain = [child]
        while chain[-1] in parents:
            chain.append(parents[chain[-1]])
            if chain[-1] in chain[:-1]:
                raise LabelMapError(f"{source}: [parents] has a cycle: {' -> '.join(chain)}")
    return parents


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
