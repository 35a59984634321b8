"""Training data: labelled clips and their train / valid / test split.

Four sources, one result (a :class:`Dataset` of ``(path, label)`` examples):

* **GTZAN** in a local folder: ``genres/<genre>/<genre>.000NN.wav`` (the original ``.au`` too),
  ``genres_original/`` (the Kaggle/HF copy), or DATA pointing at the folder that holds the genre dirs.
  Default split: the fault-filtered, artist-conscious split of Kereliuk, Sturm & Larsen (2015), shipped
  in ``training/splits/`` (see its README). GTZAN's random splits leak artists and replicated excerpts
  between train and test and overstate accuracy by ten points or more.
* **A class-per-folder dataset** ``<root>/<label>/**/*.{wav,mp3,flac,...}`` for any taxonomy.
* **The user's own library** (``from_index``): the labels are the genres the *user* gave each track
  (:mod:`tagger.tagging.user_genres`): the genres in its tags as ``genretag scan`` read them, except
  where those are genretag's own writes, which are replaced by what the file held before genretag
  wrote (possibly nothing: the track is then left out). A track keeps every genre that survives the
  genre map and the whitelist (``Example.genres``, in tag order; the first is ``Example.label``), and
  its group (``Example.group``): its artist tag, else its album, else its folder.
* **A Hugging Face hub dataset id** (needs network and the ``datasets`` package): its clips are
  written once as WAV files under the genretag data dir and then read like a class-per-folder dataset.

Splits (``--split``), made from paths only, before any audio is decoded, so ``genretag evaluate`` with
the same options sees exactly the clips ``genretag train`` held out:

* ``filtered``: the fault-filtered GTZAN lists. The default for a GTZAN copy that holds (nearly) all
  of the clips those lists name.
* ``grouped``: for GTZAN copies that do not (a few clips per genre, like a development subset): each
  genre's clips in clip-number order are cut into three runs, 80/10/10 with at least one clip in
  each, train first, then valid, then test. GTZAN's neighbouring excerpts often come from one artist
  or album, so contiguous runs keep most of an artist's clips in one part, which a random split would
  scatter. The filtered lists would leave such a copy with empty parts or genres without training clips.
* ``artist``: for the user's library, the default there: each artist's tracks (its group, see above)
  all go to one part, so no accuracy is measured on an artist the model was trained on. Per genre (a
  group counted under its most common first genre), its groups in a seeded hash order are cut 80/10/10,
  at least one group in valid and in test where the genre has three or more; a genre with fewer
  trains on all of its tracks, unmeasured (a note says which).
* ``random``: stratified by label, 80/10/10 with at least one clip of each genre in each part, seeded.
  The default for the other sources.

Every genre needs ``MIN_PER_GENRE`` clips, so no part of a by-clip split is ever empty; the artist split
of a library whose genres all have fewer than three artists would leave valid and test empty, and is
refused with the reason. Nothing here imports torch.
"""
from __future__ import annotations

import os
import re
import tomllib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from tagger.errors import GenretagError

PARTS = ("train", "valid", "test")
RANDOM_FRACTIONS = (0.8, 0.1, 0.1)
MIN_PER_GENRE = 3
"""A genre needs one clip in each of train, valid and test to be learned and measured at all."""
FILTERED_COVERAGE = 0.9
"""A GTZAN copy gets the filtered split by default only if it holds this share of the clips the filtered
lists name; a smaller copy gets the grouped split."""
SPLITS = ("filtered", "grouped", "random", "artist")
MIN_GROUPS_HELD_OUT = 3
"""Artists (groups) a genre needs before the artist split holds any of them out: one each to train,
validate and test on."""

GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
GTZAN_FILE = re.compile(r"\A(?P<genre>[a-z]+)\.(?P<number>\d{5})\.(?:wav|au)\Z")
GTZAN_LAYOUTS = ("", "genres", "genres_original", "Data/genres_original")


class DataError(GenretagError):
    """The training data cannot be found, read or split as asked."""


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DataSettings:
    """Which clips to learn from and how to split them. ``help`` is the CLI's help text."""

    data: str = _opt("", "GTZAN folder, class-per-folder dataset, music library (--from-index) or hub id.")
    split: str | None = _opt(None, "filtered (GTZAN's fault-filtered artist-conscious split; the default "
                                   "for a complete GTZAN), grouped (GTZAN clip-number runs per genre, 80/10/10; "
                                   "the default for partial GTZAN copies), artist (each artist's tracks in one "
                                   "part, 80/10/10 of the artists per genre; the default with --from-index) or "
                                   "random (stratified 80/10/10 by track; the default elsewhere).")
    seed: int = _opt(0, "Seed of the random split, the crops, the augmentation and the new head.")
    from_index: bool = _opt(False, "DATA is your library: learn the genres you gave its tracks, as "
                                   "`genretag scan` read them into the index (never the ones genretag wrote: "
                                   "those tracks count with the genres they had before).")
    db: str | None = _opt(None, "Index to read with --from-index (default: $GENRETAG_DB or "
                                "~/.local/share/genretag/index.db).")
    min_per_genre: int = _opt(MIN_PER_GENRE, f"Drop genres with fewer clips than this (at least {MIN_PER_GENRE}: "
                                             "one each to train, validate and test on).")
    genres: tuple[str, ...] | None = _opt(None, "Only these genres (comma-separated, after --genre-map).")
    genre_map: str | None = _opt(None, 'TOML file renaming genres, e.g. "Hip Hop" = "Hip-Hop"; '
                                       "renamed genres merge.")


@dataclass(frozen=True)
class Example:
    """A labelled clip: ``label`` is its first genre, ``genres`` all of them (a library track may have
    several), ``group`` what keeps it with its neighbours (the artist of a library track)."""

    path: str
    label: str
    genres: tuple[str, ...] = ()
    group: str | None = None

    @property
    def all_genres(self) -> tuple[str, ...]:
        return self.genres or (self.label,)

    def counted_truth(self, predicted: str) -> str:
        """The true genre a top-1 ``predicted`` genre is scored against: the prediction itself when it is
        any of the clip's genres (right), else its first genre (wrong)."""
        return predicted if predicted in self.all_genres else self.label


@dataclass
class Dataset:
    """Labelled clips in three parts. ``notes`` says, one line each, what was left out and why."""

    source: str  # gtzan | folder | index | hub
    root: str
    split: str  # filtered | random
    labels: list[str]
    train: list[Example]
    valid: list[Example]
    test: list[Example]
    notes: list[str] = field(default_factory=list)

    def parts(self) -> dict[str, list[Example]]:
        return {"train": self.train, "valid": self.valid, "test": self.test}

    def split_name(self, part: str) -> str:
        """How a reported number names its clips, e.g. ``gtzan filtered/test``."""
        return f"{self.source} {self.split}/{part}"

    def summary(self) -> str:
        counts = " / ".join(f"{len(v)} {k}" for k, v in self.parts().items())
        line = f"{self.source} dataset at {self.root}, {self.split} split: {counts} clips, {len(self.labels)} genres"
        if any(e.group for part in self.parts().values() for e in part):
            groups = " / ".join(str(len({e.group for e in v})) for v in self.parts().values())
            line += f"; {groups} artists (train/valid/test; an artist's tracks are in one part only)" \
                if self.split == "artist" else f"; {groups} artists (train/valid/test)"
        return line

    def genre_counts(self) -> str:
        """Clips per genre and part, one line: ``blues 3/1/1, classical 3/1/1 (train/valid/test)``. A clip
        with several genres counts under each."""
        counts = {part: Counter(g for e in examples for g in e.all_genres) for part, examples in self.parts().items()}
        per_genre = [f"{g} {'/'.join(str(counts[p][g]) for p in PARTS)}" for g in self.labels]
        return f"clips per genre: {', '.join(per_genre)} ({'/'.join(PARTS)})"

    def without(self, bad: set[str]) -> "Dataset":
        """The same dataset minus the clips at ``bad`` paths (unreadable audio)."""
        keep = {part: [e for e in examples if e.path not in bad] for part, examples in self.parts().items()}
        return Dataset(self.source, self.root, self.split, self.labels, **keep, notes=list(self.notes))


def described_dataset(settings: DataSettings, report) -> Dataset:
    """:func:`load_dataset`, telling ``report`` what was left out, the split and the clips per genre and
    part, before any audio is decoded."""
    dataset = load_dataset(settings)
    for note in dataset.notes:
        report(f"note: {note}")
    report(dataset.summary())
    report(dataset.genre_counts())
    return dataset


def load_dataset(settings: DataSettings) -> Dataset:
    """Find the clips of ``settings.data``, label them, filter the genres and split them."""
    if settings.min_per_genre < MIN_PER_GENRE:
        raise DataError(f"--min-per-genre {settings.min_per_genre}: a genre needs at least {MIN_PER_GENRE} "
                        "clips (one each to train, validate and test on)")
    source, root, pairs, notes, groups = _read_source(settings)
    examples, label_notes = relabel(pairs, settings)
    notes += label_notes
    if groups:
        examples = [replace(e, group=groups.get(e.path)) for e in examples]
    split, why = choose_split(settings.split, source, examples, Path(root))
    if why:
        notes.append(why)
    if split == "filtered":
        parts, split_notes = filtered_split(examples, Path(root))
    elif split == "grouped":
        parts, split_notes = grouped_split(examples)
    elif split == "artist":
        parts, split_notes = artist_split(examples, settings.seed)
    else:
        parts, split_notes = random_split(examples, settings.seed)
    notes += split_notes
    labels = sorted({g for e in parts["train"] for g in e.all_genres})
    for part in ("valid", "test"):
        parts[part], unseen = known_genres_only(parts[part], set(labels))
        if unseen:
            notes.append(f"{part}: dropped clips of genres with no training clip: {', '.join(unseen)}")
    if len(labels) < 2:
        raise DataError(f"{root}: need at least 2 genres with training clips, found {len(labels)}"
                        + (" (is the filtered split right for this copy? try --split grouped)"
                           if split == "filtered" else ""))
    if empty := [part for part in PARTS if not parts[part]]:
        raise DataError(f"{root}: the {split} split leaves no clips in {' and '.join(empty)}" + {
            "filtered": " (this GTZAN copy lacks most of the filtered split; use --split grouped)",
            "artist": f" (a genre needs tracks by at least {MIN_GROUPS_HELD_OUT} artists to be held out by "
                      "artist; --split random splits track by track, letting one artist's tracks sit on both "
                      "sides, which flatters the accuracy)"}.get(split, ""))
    return Dataset(source, str(root), split, labels, parts["train"], parts["valid"], parts["test"], notes)


def known_genres_only(examples: list[Example], known: set[str]) -> tuple[list[Example], list[str]]:
    """``examples`` with only the genres in ``known`` (a clip left with none is dropped), and the genres
    taken away."""
    kept, unseen = [], set()
    for e in examples:
        genres = tuple(g for g in e.all_genres if g in known)
        unseen.update(g for g in e.all_genres if g not in known)
        if genres:
            kept.append(e if genres == e.all_genres else replace(e, label=genres[0], genres=genres))
    return kept, sorted(unseen)


# -- sources ---------------------------------------------------------------------------------------------
def _read_source(settings: DataSettings
                 ) -> tuple[str, str, list[tuple[str, list[str]]], list[str], dict[str, str]]:
    """``(source, root, [(path, genres)], notes, {path: group})``; groups only for the user's library."""
    data = Path(settings.data).expanduser()
    if settings.from_index:
        if not data.is_dir():
            raise DataError(f"{data}: not a folder (--from-index takes the library folder you scanned)")
        pairs, notes, groups = index_pairs(data, settings.db)
        return "index", str(data.resolve()), pairs, notes, groups
    if data.is_dir():
        if gtzan := find_gtzan_root(data):
            return "gtzan", str(gtzan.resolve()), gtzan_pairs(gtzan), [], {}
        return "folder", str(data.resolve()), *folder_pairs(data), {}
    if data.exists():
        raise DataError(f"{data}: not a folder")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", settings.data) and not settings.data.startswith((".", "/", "~")):
        folder = hub_to_folder(settings.data)
        return "hub", settings.data, *folder_pairs(folder), {}
    raise DataError(f"{data}: no such folder")


def find_gtzan_root(data: Path) -> Path | None:
    """The folder holding GTZAN's genre dirs, in any of the layouts GTZAN copies come in."""
    for layout in GTZAN_LAYOUTS:
        folder = data / layout if layout else data
        dirs = _subdirs(folder)
        if dirs and all(d.name in GTZAN_GENRES for d in dirs) and any(
                GTZAN_FILE.match(f.name) and f.name.startswith(d.name + ".") for d in dirs for f in d.iterdir()):
            return folder
    return None


def gtzan_pairs(root: Path) -> list[tuple[str, list[str]]]:
    return [(str(f), [d.name]) for d in _subdirs(root) for f in sorted(d.iterdir())
            if GTZAN_FILE.match(f.name) and f.name.startswith(d.name + ".")]


def folder_pairs(root: Path) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """Every audio file under ``root/<label>/`` (recursively, via the tagger's own discovery)."""
    from tagger.discover import discover

    notes: list[str] = []
    pairs = [(track.path, [label_dir.name]) for label_dir in _subdirs(root)
             for track in discover(label_dir, on_error=lambda err: notes.append(f"skipped {err}"))]
    loose = [p.name for p in root.iterdir() if p.is_file()]
    if loose:
        notes.append(f"{len(loose)} files directly in {root} have no label folder and were left out")
    if not pairs:
        raise DataError(f"{root}: no audio files in label folders (expected <root>/<genre>/*.wav|mp3|...)")
    return pairs, notes


def index_pairs(library: Path, db: str | None
                ) -> tuple[list[tuple[str, list[str]]], list[str], dict[str, str]]:
    """Tracks under ``library`` with genres of the user's (:mod:`tagger.tagging.user_genres`: never the
    ones genretag wrote), their groups (:func:`track_group`) and notes on what the rule changed."""
    from tagger.index import Index, index_errors
    from tagger.settings import default_db_path
    from tagger.tagging.user_genres import EDITED, indexed_user_genres

    db_path = Path(db).expanduser() if db else default_db_path()
    if not db_path.is_file():
        raise DataError(f"no index at {db_path}; run `genretag scan {library}` first so the genres in "
                        "your files' tags are read into it")
    prefix = os.path.join(os.path.abspath(library), "")
    pairs, groups, seen = [], {}, Counter()
    with index_errors(db_path), Index(db_path, create=False) as index:
        for track in indexed_user_genres(index.db.conn):  # read as it goes: keep the index open
            path = os.path.abspath(os.fsdecode(track.raw_path) if track.raw_path else track.key)  # a scan
            if not path.startswith(prefix):  # given a relative folder stores it so
                continue
            user = track.user
            seen["genretag"] += user.genretag_wrote_them
            seen["genretag_only"] += user.genretag_wrote_them and not user.genres
            seen["edited"] += user.origin == EDITED and bool(user.genres)
            if not user.genres:
                continue
            if not os.path.isfile(path):
                seen["gone"] += 1
                continue
            pairs.append((path, list(user.genres)))
            groups[path] = track_group(track.artist, track.album, path)
    notes = _user_genre_notes(seen)
    if not pairs:
        raise DataError(f"the index {db_path} has no tracks with genres of your own under {library}"
                        + (f" ({seen['genretag_only']} hold only genres genretag wrote)" if seen["genretag_only"]
                           else "") + f"; tag some, then run `genretag scan {library}`")
    return sorted(pairs), notes, groups


def _user_genre_notes(seen: Counter) -> list[str]:
    notes = []
    if seen["genretag"]:
        notes.append(f"{seen['genretag']} tracks hold genres genretag wrote: they are labelled with the genres "
                     f"they had before genretag wrote ({seen['genretag_only']} had none and are left out)")
    if seen["edited"]:
        notes.append(f"{seen['edited']} tracks were given other genres after genretag wrote: those are their labels")
    if seen["gone"]:
        notes.append(f"{seen['gone']} indexed tracks no longer exist and were left out")
    return notes


def track_group(artist: str | None, album: str | None, path: str) -> str:
    """What keeps a library track with the tracks that sound like it, on one side of a split: its artist
    tag, else its album tag, else its folder (case and surrounding spaces ignored)."""
    for kind, value in (("artist", artist), ("album", album)):
        if value and value.strip():
            return f"{kind}:{value.strip().casefold()}"
    return f"folder:{os.path.dirname(path)}"


def hub_to_folder(name: str) -> Path:
    """Write a hub dataset's clips once as ``<data dir>/datasets/<name>/<label>/<n>.wav``."""
    from tagger.settings import data_dir

    folder = data_dir() / "datasets" / name.replace("/", "--")
    if (folder / ".complete").exists():
        return folder
    try:
        import datasets
    except ImportError:
        raise DataError(f"'{name}' is not a local folder; reading hub datasets needs the `datasets` "
                        "package (pip install datasets) and network access") from None
    import numpy as np

    from tagger.demo import write_wav

    try:
        splits = datasets.load_dataset(name)
    except Exception as exc:
        raise DataError(f"cannot load hub dataset '{name}': {' '.join(str(exc).split())[:300]}") from None
    for split_name, split in splits.items():
        audio_col = next(k for k, f in split.features.items() if isinstance(f, datasets.Audio))
        label_col = next(k for k, f in split.features.items() if isinstance(f, datasets.ClassLabel))
        names = split.features[label_col].names
        for i, row in enumerate(split):
            target = folder / names[row[label_col]] / f"{split_name}-{i:06d}.wav"
            target.parent.mkdir(parents=True, exist_ok=True)
            audio = row[audio_col]
            samples = np.clip(np.asarray(audio["array"], dtype=np.float32), -1, 1)
            write_wav(target, samples, int(audio["sampling_rate"]))
    (folder / ".complete").touch()
    return folder


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:
        return []


# -- labels ----------------------------------------------------------------------------------------------
def load_genre_map(path: str | os.PathLike) -> dict[str, str]:
    """``{"Hip Hop" = "Hip-Hop"}`` pairs, top-level or under ``[genres]`` (as in label maps)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read genre map ({exc})") from None
    table = data.get("genres", data) if isinstance(data.get("genres"), dict) else data
    bad = [k for k, v in table.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise DataError(f"{path}: genre map values must be genre names (text); check {', '.join(bad)}")
    return {k: v.strip() for k, v in table.items()}


def relabel(pairs: Iterable[tuple[str, list[str]]], settings: DataSettings) -> tuple[list[Example], list[str]]:
    """Each clip's genres mapped and whitelisted (in tag order, each once), then the genres rarer than
    ``min_per_genre`` clips dropped; a clip left with no genre is left out. Its first genre is its
    ``label``. Genre names compare case-insensitively ("rock" and "Rock" are one genre, spelled as the
    whitelist, the map, or else most often)."""
    mapping = {k.casefold(): v for k, v in (load_genre_map(settings.genre_map) if settings.genre_map else {}).items()}
    allowed = {g.casefold(): g for g in settings.genres} if settings.genres else None
    chosen: list[tuple[str, list[str]]] = []
    unlabelled = 0
    for path, genres in pairs:
        names = [mapping.get(g.casefold(), g) for g in genres]
        names = [n for n in names if allowed is None or n.casefold() in allowed]
        if names:
            first_spelling: dict[str, str] = {}
            for name in names:
                first_spelling.setdefault(name.casefold(), name)
            chosen.append((path, list(first_spelling.values())))
        else:
            unlabelled += 1
    spelling = _spellings([name for _, names in chosen for name in names], allowed, set(mapping.values()))
    counts = Counter(spelling[name.casefold()] for _, names in chosen for name in names)
    rare = sorted(g for g, n in counts.items() if n < settings.min_per_genre)
    notes = []
    if unlabelled:
        notes.append(f"{unlabelled} clips have no genre left after the genre map and whitelist")
    if allowed and (missing := sorted(g for k, g in allowed.items() if k not in {n.casefold() for n in counts})):
        notes.append(f"whitelisted genres with no clips: {', '.join(missing)}")
    if rare:
        notes.append(f"dropped {len(rare)} genres with fewer than {settings.min_per_genre} clips: "
                     + ", ".join(f"{g} ({counts[g]})" for g in rare))
    examples = []
    for path, names in chosen:
        kept = tuple(spelling[n.casefold()] for n in names if spelling[n.casefold()] not in rare)
        if kept:
            examples.append(Example(path, kept[0], kept))
    if several := sum(len(e.genres) > 1 for e in examples):
        notes.append(f"{several} clips have several genres: each of a clip's k genres counts 1/k in training, "
                     "and a prediction is right when it is any of them")
    return examples, notes


def _spellings(names: list[str], allowed: dict | None, mapped: set[str]) -> dict[str, str]:
    preferred = {**{m.casefold(): m for m in mapped}, **(allowed or {})}
    common = Counter(names)
    out = {}
    for name in sorted(set(names), key=lambda n: (-common[n], n)):
        out.setdefault(name.casefold(), preferred.get(name.casefold(), name))
    return out


# -- splits ----------------------------------------------------------------------------------------------
def choose_split(requested: str | None, source: str, examples: list[Example], root: Path
                 ) -> tuple[str, str | None]:
    """``(split, why)``: the split asked for, else the default for the source (``why`` says why a GTZAN
    copy does not get the filtered split)."""
    if requested is not None and requested not in SPLITS:
        raise DataError(f"unknown split '{requested}' ({', '.join(SPLITS)})")
    if requested in ("filtered", "grouped") and source != "gtzan":
        raise DataError(f"the {requested} split is defined for GTZAN only; {root} is a {source} dataset "
                        "(use --split random)")
    if requested == "artist" and source != "index":
        raise DataError(f"the artist split needs --from-index (the index knows each track's artist); {root} "
                        f"is a {source} dataset (use --split random)")
    if requested or source != "gtzan":
        return requested or ("artist" if source == "index" else "random"), None
    listed = {_gtzan_key(entry, None) for entries in filtered_split_lists().values() for entry in entries}
    labels = {e.label for e in examples}
    listed = {key for key in listed if key.split("/")[0] in labels}  # the genres kept (--genres)
    present = len(listed & {_gtzan_key(e.path, root) for e in examples})
    if listed and present >= FILTERED_COVERAGE * len(listed):
        return "filtered", None
    return "grouped", (f"this GTZAN copy holds {present} of the {len(listed)} clips of the fault-filtered split "
                       f"(of its genres), too few for that split: using the grouped split (each genre's clips "
                       "in clip-number runs, 80/10/10), which keeps neighbouring excerpts, often one "
                       "artist's, mostly in one part")


def grouped_split(examples: list[Example], fractions=RANDOM_FRACTIONS) -> tuple[dict[str, list[Example]], list[str]]:
    """GTZAN clips cut, per genre and in clip-number order, into a train run, a valid run and a test run
    (80/10/10, at least one clip in valid and in test)."""
    parts: dict[str, list[Example]] = {part: [] for part in PARTS}
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    for items in by_label.values():
        items = sorted(items, key=lambda e: gtzan_number(e.path))
        n = len(items)
        n_valid, n_test = max(1, round(n * fractions[1])), max(1, round(n * fractions[2]))
        n_train = n - n_valid - n_test
        parts["train"] += items[:n_train]
        parts["valid"] += items[n_train:n_train + n_valid]
        parts["test"] += items[n_train + n_valid:]
    return {part: sorted(items, key=lambda e: e.path) for part, items in parts.items()}, []


def gtzan_number(path: str) -> int:
    """The clip number of a GTZAN file name (``blues.00042.wav`` -> 42)."""
    match = GTZAN_FILE.match(Path(path).name)
    return int(match["number"]) if match else -1


def filtered_split_lists() -> dict[str, list[str]]:
    """The fault-filtered GTZAN lists: ``genre/genre.000NN.wav`` entries per part."""
    folder = resources.files("training") / "splits"
    return {part: [line.strip() for line in (folder / f"{part}_filtered.txt").read_text().splitlines()
                   if line.strip()] for part in PARTS}


def filtered_split(examples: list[Example], root: Path) -> tuple[dict[str, list[Example]], list[str]]:
    """Place each GTZAN clip where the filtered lists put it; clips in no list are left out."""
    by_key = {_gtzan_key(e.path, root): e for e in examples}
    parts, missing, used = {}, [], set()
    for part, entries in filtered_split_lists().items():
        keys = [_gtzan_key(entry, None) for entry in entries]
        parts[part] = [by_key[k] for k in keys if k in by_key]
        missing += [e for e, k in zip(entries, keys) if k not in by_key]
        used.update(keys)
    notes = []
    left_out = len(set(by_key) - used)
    if left_out:
        notes.append(f"{left_out} clips are in none of the filtered split's lists (replicas, mislabelings, "
                     "distortions) and were left out")
    if missing:
        notes.append(f"{len(missing)} clips of the filtered split are not in {root} (or were filtered "
                     f"out by genre), e.g. {missing[0]}")
    return parts, notes


def _gtzan_key(path: str, root: Path | None) -> str:
    """``genre/genre.000NN`` whatever the folder and extension (.wav, .au)."""
    p = Path(path)
    rel = p.relative_to(root) if root else p
    return f"{rel.parent.name}/{rel.stem}"


def random_split(examples: list[Example], seed: int, fractions=RANDOM_FRACTIONS
                 ) -> tuple[dict[str, list[Example]], list[str]]:
    """Stratified split: each genre's clips are ordered by a seeded hash of their path and cut 80/10/10,
    with at least one valid and one test clip per genre, so every genre is measured.

    Hashing rather than shuffling makes a genre's split depend on its own clips only: evaluating with
    a different --genres whitelist still finds the held-out clips of the genres the model knows.
    """
    import hashlib

    def order(e: Example) -> str:
        return hashlib.sha256(f"{seed}\0{e.path}".encode("utf-8", "surrogateescape")).hexdigest()

    parts: dict[str, list[Example]] = {part: [] for part in PARTS}
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    for label, items in by_label.items():
        items = sorted(items, key=order)
        n = len(items)
        n_valid = max(1, round(n * fractions[1])) if n >= 3 else 0
        n_test = max(1, round(n * fractions[2])) if n >= 3 else 0
        parts["test"] += items[:n_test]
        parts["valid"] += items[n_test:n_test + n_valid]
        parts["train"] += items[n_test + n_valid:]
    return {part: sorted(items, key=lambda e: e.path) for part, items in parts.items()}, []


def artist_split(examples: list[Example], seed: int, fractions=RANDOM_FRACTIONS
                 ) -> tuple[dict[str, list[Example]], list[str]]:
    """Whole groups (artists) to each part, stratified by genre: each group counts under its most common
    first genre, and each genre's groups, ordered by a seeded hash, are cut 80/10/10 with at least one
    in valid and one in test when the genre has :data:`MIN_GROUPS_HELD_OUT` or more. A genre with fewer
    groups trains on all of them: holding out one of its few artists would leave it nothing to learn
    that artist's sound from, and keeping the artist on both sides would flatter the accuracy."""
    import hashlib

    def order(group: str) -> str:
        return hashlib.sha256(f"{seed}\0{group}".encode("utf-8", "surrogateescape")).hexdigest()

    members: dict[str, list[Example]] = {}
    for e in examples:
        members.setdefault(e.group or f"clip:{e.path}", []).append(e)
    by_label: dict[str, list[str]] = {}
    for group, items in members.items():
        common = Counter(e.label for e in items)
        label = min(common, key=lambda g: (-common[g], g))
        by_label.setdefault(label, []).append(group)
    parts: dict[str, list[Example]] = {part: [] for part in PARTS}
    unmeasured = []
    for label, groups in sorted(by_label.items()):
        groups = sorted(groups, key=order)
        n = len(groups)
        held = n >= MIN_GROUPS_HELD_OUT
        n_test = max(1, round(n * fractions[2])) if held else 0
        n_valid = max(1, round(n * fractions[1])) if held else 0
        if not held:
            unmeasured.append(f"{label} ({n})")
        for part, chosen in (("test", groups[:n_test]), ("valid", groups[n_test:n_test + n_valid]),
                             ("train", groups[n_test + n_valid:])):
            parts[part] += [e for g in chosen for e in members[g]]
    notes = []
    if unmeasured:
        notes.append(f"{len(unmeasured)} genres have tracks by fewer than {MIN_GROUPS_HELD_OUT} artists and are "
                     f"trained on, not measured: {', '.join(unmeasured)}")
    return {part: sorted(items, key=lambda e: e.path) for part, items in parts.items()}, notes
