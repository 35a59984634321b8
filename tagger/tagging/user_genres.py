"""The genres the user gave each track, as opposed to the ones genretag wrote: the labels genretag may
learn from (``genretag train --from-index``) and the tags a model may dispute (``genretag report
--disputed``). One rule, here, and nothing else decides it.

The index knows what a file's tags hold (``tracks.genres``: read at the last scan, updated after each
genretag write and undo) and every genre genretag wrote (``tag_writes``: ``old_genres`` read just before
the write, ``new_genres`` read back after it). A track's *user genres* are:

1. **Never written** (no standing write): the genres its tags hold. Origin ``tags``.
2. **Holding genretag's write** (``tracks.genres`` equals the ``new_genres`` of the file's last standing
   write): what the file held before genretag first touched it, i.e. the ``old_genres`` of the earliest
   write of the unbroken chain that led there. A chain is unbroken while each write's ``old_genres``
   equal the previous standing write's ``new_genres`` (genretag wrote over its own genres: a second
   scan, another model, a new ``--provenance`` score). Possibly none: the track is then unlabelled,
   never labelled with genretag's own genres. Origin ``before-genretag``.
3. **Changed since** (the file's genres differ from what genretag's last standing write left: the user
   or another tool edited the genre after genretag wrote it, and a scan read the edit): its genres now.
   A chain broken the same way (the user's edit, then a later genretag write over it) starts at the
   edit: the write over it has the edit as its ``old_genres``. Origin ``edited``.

*Standing* writes are ``written`` ones, and ``replacing`` ones (the scan died while renaming its copy
over the file) whose result the file holds; a ``replacing`` write whose result the file does not hold
never reached it. The other states leave no genre of genretag's in the file:

- ``undone``: an undo gave the file its earlier tags back, and ``tracks.genres`` with them (the
  ``old_genres`` of the undone write). Undoing the last run of a chain makes the previous write the
  last standing one; undoing them all leaves case 1.
- ``superseded``: a forced, field-level undo of an earlier write restored that write's ``before`` over
  this one; the earlier write is ``undone`` and this one no longer in the file.
- ``abandoned`` and ``intent``: never reached the file.

Write modes. ``replace``: the chain's first ``old_genres`` are the user's. ``merge`` (genretag added its
genre to the user's): ``old_genres`` are the user's alone, genretag's additions are not. ``fill``
(writes only files without a genre): ``old_genres`` are empty, so such a track is unlabelled. A write
that changed no genre (``--provenance`` only, or the same genres) has ``old_genres == new_genres``:
the user's genres pass through it unchanged.

What the rule cannot know: an edit not yet read by a scan (the index answers as of the last scan of
the file; ``genretag scan`` reads the tags of every changed file), a user who typed exactly the
genres genretag had written (counted as genretag's), and genres genretag wrote with another index or
before the index was deleted (counted as the user's: no journal remembers them).

Torch-free and numpy-free: the report imports it.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

TAGS, BEFORE_GENRETAG, EDITED = "tags", "before-genretag", "edited"
"""Where a track's user genres come from (see the module docs)."""
WRITTEN, REPLACING = "written", "replacing"  # tagger.tagging.journal's states (kept free of its imports)
STANDING = (WRITTEN, REPLACING)


@dataclass(frozen=True)
class Write:
    """One journalled write of a file, as the rule needs it."""

    seq: int
    state: str
    old_genres: tuple[str, ...]
    new_genres: tuple[str, ...]


@dataclass(frozen=True)
class UserGenres:
    """A track's user genres (empty: unlabelled), their origin, and what its tags hold."""

    genres: tuple[str, ...]
    origin: str  # TAGS, BEFORE_GENRETAG or EDITED
    file_genres: tuple[str, ...]

    @property
    def genretag_wrote_them(self) -> bool:
        """True when the file's genres are genretag's (in part, with ``merge``), not the user's."""
        return self.origin == BEFORE_GENRETAG and self.genres != self.file_genres


def user_genres(file_genres: Sequence[str], writes: Iterable[Write]) -> UserGenres:
    """The rule of the module docs, for a file whose tags hold ``file_genres`` and whose journalled
    writes (any order, any state) are ``writes``."""
    held = tuple(file_genres)
    standing = sorted((w for w in writes if w.state in STANDING), key=lambda w: w.seq)
    while standing and standing[-1].state == REPLACING and standing[-1].new_genres != held:
        standing.pop()  # its scan died before its copy replaced the file
    if not standing:
        return UserGenres(held, TAGS, held)
    first = standing[-1]
    if first.new_genres != held:
        return UserGenres(held, EDITED, held)
    for earlier in reversed(standing[:-1]):
        if earlier.new_genres != first.old_genres:
            break  # the file was edited between the two writes: the chain starts at the edit
        first = earlier
    return UserGenres(first.old_genres, BEFORE_GENRETAG, held)


# -- from an index -------------------------------------------------------------------------------------------
def genre_list(text: str | None) -> tuple[str, ...]:
    """A JSON genre list column as a tuple (NULL or unreadable: none)."""
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return ()
    return tuple(g for g in value if isinstance(g, str)) if isinstance(value, list) else ()


def standing_writes(conn: sqlite3.Connection, join: str = "", where: str = "", args: Sequence = ()
                    ) -> Iterator[tuple[str, Write]]:
    """``(path key, write)`` for the standing (and possibly standing) writes of the index, ordered by path
    and then by ``seq``, read as they are consumed. ``join``/``where``/``args`` narrow them (``tag_writes``
    is ``w``): e.g. to the tracks of one report."""
    sql = (f"select w.path, w.seq, w.state, w.old_genres, w.new_genres from tag_writes w {join} "
           f"where w.state in ({', '.join('?' * len(STANDING))}){f' and ({where})' if where else ''} "
           "order by w.path, w.seq")
    for path, seq, state, old, new in conn.execute(sql, [*STANDING, *args]):
        yield path, Write(seq if seq is not None else 0, state, genre_list(old), genre_list(new))


def with_writes(rows: Iterable[Sequence], writes: Iterable[tuple[str, Write]]) -> Iterator[tuple[Sequence, list[Write]]]:
    """Each of ``rows`` (their first item a path key, in SQLite's order of path keys) with its writes
    (:func:`standing_writes`, in the same order): a merge of two ordered queries, so a library of
    millions of tracks is never held in memory. Path keys are valid UTF-8, whose byte order (SQLite's)
    is Python's order of the text."""
    writes = iter(writes)
    pending = next(writes, None)
    for row in rows:
        key = row[0]
        while pending is not None and pending[0] < key:
            pending = next(writes, None)
        mine = []
        while pending is not None and pending[0] == key:
            mine.append(pending[1])
            pending = next(writes, None)
        yield row, mine


@dataclass(frozen=True)
class IndexedTrack:
    """A track of the index whose tags were read, with its user genres."""

    key: str  # tracks.path (tagger.index.path_key)
    raw_path: bytes | None
    artist: str | None
    album: str | None
    user: UserGenres


def indexed_user_genres(conn: sqlite3.Connection) -> Iterator[IndexedTrack]:
    """Every track whose tags a scan read (``tracks.genres`` not NULL), with its user genres, in path
    order: two ordered queries read side by side, whatever the size of the index."""
    rows = conn.execute("select path, raw_path, genres, artist, album from tracks where genres is not null "
                        "order by path")
    for (key, raw, genres, artist, album), writes in with_writes(rows, standing_writes(conn)):
        yield IndexedTrack(key, raw, artist, album, user_genres(genre_list(genres), writes))
