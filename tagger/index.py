"""Step 5b: the SQLite index — every track's state, every prediction, every tag write (the undo journal).

Tables (schema version in ``meta``; documented in the README):

* ``runs``: one row per ``scan``/``undo`` run, with its options and final counts.
* ``tracks``: one row per file (``path`` key): the stat that identifies the version last seen, duration,
  codec, artist/album/title, the genres in the file's tags, and the last status (ok, abstained, failed)
  with the failure reason.
* ``predictions``: one row per (path, model fingerprint): the version of the file it was computed on,
  top-k labels and scores, the mapped ranking, per-window top labels, window count.
* ``embeddings``: one row per (path, embedding space): the track's embedding (the mean of its windows'
  embeddings, float16) and the version of the file it was computed on, so that a head trained on that
  space scores the track without decoding it, and training reads a library's embeddings back.
* ``models``: every model the index has seen, by weights fingerprint.
* ``tag_writes``: every genre write: the complete previous and new tag state, so ``undo`` can restore
  the file exactly.

The database runs in WAL mode with a busy timeout, so a ``report`` can read while a ``scan`` writes and
two scans can share one index. Results are written in batches, one transaction each, not row by row.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from .errors import IndexUnusable

if TYPE_CHECKING:
    import numpy as np

SCHEMA_VERSION = 5
BUSY_TIMEOUT_MS = 30_000
LOOKUP_CHUNK = 500  # paths per query; SQLite builds before 3.32 allow at most 999 parameters
UNDO_PAGE = 1000  # journal rows an undo reads at a time
EMBEDDING_PAGE = 1000  # embeddings iter_embeddings reads at a time (400 kB of 200-d vectors)
EMBEDDING_DTYPE = "<f2"  # little-endian float16, whatever the machine
CACHE_COLUMNS = ("p.path", "p.size", "p.mtime_ns", "p.status", "p.written", "p.labels", "p.scores", "p.ranking",
                 "p.label_map", "p.windows", "p.error", "t.duration", "t.codec", "t.genres")
"""What a scan needs of a stored prediction to skip its track, to decide its genres again under the
scan's own settings, to write them from the cache, and to report the track as fully as when it was
predicted (its ``--json`` line, its row in a dry run's table)."""
CACHE_NAMES = [c.split(".")[1] for c in CACHE_COLUMNS]


def _parsed(row: dict) -> dict:
    """A cached prediction with its ranking and the file's genres as Python lists (``genres`` None when
    the tags were never read). ``labels`` and ``scores`` stay JSON text: a scan decides them again from
    the ranking (:func:`tagger.decide.decided_again`) and only compares the text, so a rescan of 100,000
    tracks parses each row's JSON twice, not four times."""
    row["ranking"] = json.loads(row["ranking"]) if row["ranking"] else []
    if row["genres"] is not None:
        row["genres"] = json.loads(row["genres"])
    return row
STORED_RANKING = 10
"""Genres of each prediction's ranking kept in the index, best first (more when ``--top-k`` asks for
more): enough to decide a track's genres again for any ``--top-k`` up to this many."""


def now() -> float:
    return time.time()


def path_key(path: str | bytes) -> str:
    """The text stored for a path: its name where that is valid UTF-8, with a backslash doubled, and each
    byte that is not UTF-8 as ``\\xNN``. Two different names never share a key (a name holding the
    four characters ``\\xff`` is ``\\\\xff``, the byte 0xff is ``\\xff``); names without a backslash
    keep their text."""
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def _use_wal(conn: sqlite3.Connection) -> None:
    """Put the index in WAL mode, waiting for other processes as the busy timeout does elsewhere.

    Two processes opening one new index at once can both hold a shared lock and both need the exclusive
    one that the switch to WAL takes; SQLite then answers one of them SQLITE_BUSY at once, without its
    busy handler (which would deadlock), so the switch is retried here until the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.002
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.1)


def check_index_path(path: Path, create: bool) -> None:
    """Refuse, before SQLite is asked, a path that cannot hold an index: a folder, or (unless
    ``create``) no file at all, since SQLite would silently create an empty index there."""
    if path.is_dir():
        raise IndexUnusable(path, "is a folder, not an index file (pass the file with --db)")
    if not create and not path.is_file():
        raise IndexUnusable(path, "no genretag index at this path; run `genretag scan` first (or pass --db)")


def unusable_reason(err: BaseException) -> str:
    """One line saying why SQLite cannot use a file as an index."""
    text = str(err)
    if isinstance(err, sqlite3.DatabaseError) and "not a database" in text:
        return "not a genretag index (not an SQLite database file)"
    if "malformed" in text or isinstance(err, sqlite3.DatabaseError) and "corrupt" in text:
        return f"the index file is damaged ({text}); restore it from a backup or move it away"
    if "readonly" in text or "read-only" in text:
        return f"the index is read-only here ({text}); genretag needs to write to it and to its folder"
    if "unable to open" in text:
        return f"cannot open the index ({text}: check the permissions of the file and its folder)"
    return f"index error: {text}"


@contextmanager
def index_errors(path: str | os.PathLike):
    """Turn any SQLite failure inside the block into :class:`IndexUnusable` naming ``path``: a damaged
    index may open and only fail at the page a query reaches."""
    try:
        yield
    except sqlite3.Error as err:
        raise IndexUnusable(path, unusable_reason(err)) from None


class Index:
    """A genretag index file. Use as a context manager or call :meth:`close`.

    ``create=False`` opens only an index that exists (``history``, ``undo``, ``show`` …): a mistyped
    ``--db`` is refused instead of answered from a new empty file. Every way an index can be unusable
    (:func:`check_index_path`, :func:`unusable_reason`) raises :class:`IndexUnusable`, one line."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        import sqlite_utils

        self.path = Path(path)
        check_index_path(self.path, create)
        with index_errors(self.path):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise IndexUnusable(self.path, f"cannot create its folder ({err.strerror})") from None
            # mode=rw: SQLite must not create the file between the check above and the open.
            target = self.path if create else f"file:{quote(os.fsencode(self.path.absolute()))}?mode=rw"
            conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   uri=not create)
            try:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                _use_wal(conn)
                conn.execute("PRAGMA synchronous = NORMAL")
                self.db = sqlite_utils.Database(conn)
                self._migrate()
            except BaseException:
                conn.close()
                raise

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.db.conn.close()

    @contextmanager
    def _tx(self):
        """One write transaction. IMMEDIATE takes the write lock up front, so two processes sharing the
        index wait for each other (busy timeout) instead of failing on a lock upgrade."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            with self.db.atomic():
                yield
        except BaseException:
            if self.db.conn.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- schema ---------------------------------------------------------------------------------------
    def schema_version(self) -> int:
        if "meta" not in self.db.table_names():
            return 0
        row = self.db.execute("select value from meta where key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        """Bring an older (or new, empty) index up to :data:`SCHEMA_VERSION`, one step at a time."""
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise IndexUnusable(self.path, f"index schema {version} is newer than this genretag "
                                           f"({SCHEMA_VERSION}); upgrade genretag")
        for step in range(version, SCHEMA_VERSION):
            with self._tx():
                if self.schema_version() == step:  # another process may have migrated meanwhile
                    MIGRATIONS[step](self.db)
                    self.db["meta"].upsert({"key": "schema_version", "value": str(step + 1)}, pk="key")

    # -- runs -----------------------------------------------------------------------------------------
    def start_run(self, command: str, **info) -> int:
        with self._tx():
            return self.db["runs"].insert({"command": command, "started_at": now(), "pid": os.getpid(),
                                           "host": socket.gethostname(), **_jsonable(info)}).last_pk

    def finish_run(self, run_id: int, **counts) -> None:
        with self._tx():
            self.db["runs"].update(run_id, {"finished_at": now(), **counts})

    def runs(self, command: str | None = None) -> list[dict]:
        where, args = ("where command = ?", [command]) if command else ("", [])
        return list(self.db.query(f"select * from runs {where} order by id desc", args))

    # -- cache ----------------------------------------------------------------------------------------
    def cached_predictions(self, paths: list[str], fingerprint: str) -> dict[str, dict]:
        """The stored predictions of this model for ``paths``, by :func:`path_key`, in one query per
        ``LOOKUP_CHUNK`` paths: a rescan of 100,000 tracks asks 200 questions, not 100,000. Each row has
        :data:`CACHE_COLUMNS`, its JSON ones parsed (:func:`_parsed`)."""
        found = {}
        keys = [path_key(p) for p in paths]
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[start:start + LOOKUP_CHUNK]
            rows = self.db.execute(f"select {', '.join(CACHE_COLUMNS)} from predictions p left join tracks t "
                                   f"on t.path = p.path where p.fingerprint = ? "
                                   f"and p.path in ({', '.join('?' * len(chunk))})", [fingerprint, *chunk])
            found.update((row[0], _parsed(dict(zip(CACHE_NAMES, row)))) for row in rows)
        return found

    def stored_embeddings(self, paths: list[str], space: str) -> dict[str, tuple[int, int, "np.ndarray"]]:
        """The embeddings kept in ``space`` for ``paths``, by :func:`path_key`: ``(size, mtime_ns,
        vector)``, the stat of the file version the vector (float16 [dim], read-only) was computed on, in
        one query per ``LOOKUP_CHUNK`` paths. Paths without one are left out; compare the stat with the
        file's before trusting a vector."""
        return {key: (row["size"], row["mtime_ns"], row["vector"])
                for key, row in self.embedded_tracks(paths, space).items()}

    def embedded_tracks(self, paths: list[str], space: str) -> dict[str, dict]:
        """What a scan needs to predict ``paths`` from their embeddings in ``space``, by :func:`path_key`:
        ``size``, ``mtime_ns`` and ``vector`` as :meth:`stored_embeddings` gives them, ``windows`` (how
        many the vector is the mean of), and the track's ``duration``, ``codec`` and ``tags`` (genres,
        artist, album, title; None unless the track row describes the same file version and its tags
        were read)."""
        import numpy as np

        found = {}
        keys = [path_key(p) for p in paths]
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[start:start + LOOKUP_CHUNK]
            rows = self.db.execute(
                "select e.path, e.size, e.mtime_ns, e.dim, e.windows, e.vector, t.size = e.size and "
                "t.mtime_ns = e.mtime_ns, t.duration, t.codec, t.genres, t.artist, t.album, t.title "
                "from embeddings e left join tracks t on t.path = e.path "
                f"where e.space = ? and e.path in ({', '.join('?' * len(chunk))})", [space, *chunk])
            for key, size, mtime_ns, dim, windows, blob, same, duration, codec, genres, *names in rows:
                if blob is None or len(blob) != 2 * dim:
                    continue  # not a vector of its stated size: as if none were stored
                tags = None
                if same and genres is not None:
                    tags = {"genres": json.loads(genres), **dict(zip(("artist", "album", "title"), names))}
                found[key] = {"size": size, "mtime_ns": mtime_ns, "vector": np.frombuffer(blob, EMBEDDING_DTYPE),
                              "windows": windows, "duration": duration if same else None,
                              "codec": codec if same else None, "tags": tags}
        return found

    def iter_embeddings(self, space: str, under: str | os.PathLike | None = None
                        ) -> Iterator[tuple[bytes, int, int, "np.ndarray"]]:
        """Every embedding kept in ``space`` (only those of files under the folder ``under``, if given),
        as ``(raw_path, size, mtime_ns, vector)``: the file's name as bytes (``os.fsdecode`` makes it a
        path), the stat of the version the float16 vector was computed on, and the vector. Read
        ``EMBEDDING_PAGE`` rows at a time in path order, so a whole library streams in constant memory;
        the stat may be older than the file on disk."""
        import numpy as np

        low, high = "", None
        if under is not None:
            low = path_key(os.path.abspath(os.fspath(under)).rstrip("/") + "/")
            high = low[:-1] + "0"  # "0" follows "/": keys below it are those under the folder
        after = None
        while True:
            where, args = ["e.space = ?", "e.path >= ?"], [space, low]
            if high is not None:
                where, args = where + ["e.path < ?"], args + [high]
            if after is not None:
                where, args = where + ["e.path > ?"], args + [after]
            rows = self.db.execute(
                "select e.path, t.raw_path, e.size, e.mtime_ns, e.dim, e.vector from embeddings e "
                f"left join tracks t on t.path = e.path where {' and '.join(where)} "
                f"order by e.path limit {EMBEDDING_PAGE}", args).fetchall()
            for key, raw, size, mtime_ns, dim, blob in rows:
                if blob is not None and len(blob) == 2 * dim:
                    yield (raw if raw is not None else os.fsencode(key)), size, mtime_ns, \
                        np.frombuffer(blob, EMBEDDING_DTYPE)
            if len(rows) < EMBEDDING_PAGE:
                return
            after = rows[-1][0]

    def genres(self, paths: list[str]) -> dict[str, list[str]]:
        """The genres each of ``paths`` held when the index last read its tags, by :func:`path_key`,
        in one query per ``LOOKUP_CHUNK`` paths; tracks never read are left out."""
        found = {}
        keys = [path_key(p) for p in paths]
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[start:start + LOOKUP_CHUNK]
            rows = self.db.execute(f"select path, genres from tracks where genres is not null "
                                   f"and path in ({', '.join('?' * len(chunk))})", chunk)
            found.update((path, json.loads(genres)) for path, genres in rows)
        return found

    def track(self, path: str) -> dict | None:
        rows = list(self.db.query("select * from tracks where path = ?", [path_key(path)]))
        return rows[0] if rows else None

    # -- writing results ------------------------------------------------------------------------------
    def record_results(self, results: Iterable, model_id: str, fingerprint: str, run_id: int,
                       label_map: str | None = None, ranking_kept: int = STORED_RANKING) -> None:
        """Store a batch of :class:`TrackResult` in one transaction. ``label_map``: the digest of the
        label map their rankings went through (:meth:`tagger.labels.LabelMap.digest`); ``ranking_kept``:
        how many of each ranking's genres to store (at least ``STORED_RANKING``)."""
        with self._tx():
            self._upsert_results(results, model_id, fingerprint, run_id, label_map, ranking_kept)

    def relabel(self, decisions: list[dict], fingerprint: str) -> None:
        """Store genres decided again from cached rankings (``path`` as :func:`path_key`, ``status``,
        ``labels``, ``scores``, ``written``), in one transaction; the track's status follows when its
        row is this model's."""
        with self._tx():
            for d in decisions:
                self.db.execute("update predictions set status = ?, labels = ?, scores = ?, written = ? "
                                "where path = ? and fingerprint = ?",
                                [d["status"], json.dumps(d["labels"]), json.dumps(d["scores"]), d["written"],
                                 d["path"], fingerprint])
                self.db.execute("update tracks set status = ?, updated_at = ? "
                                "where path = ? and fingerprint = ?", [d["status"], now(), d["path"], fingerprint])

    def _upsert_results(self, results: Iterable, model_id: str, fingerprint: str, run_id: int,
                        label_map: str | None = None, ranking_kept: int = STORED_RANKING) -> None:
        ranking_kept = max(ranking_kept, STORED_RANKING)
        stamp = now()
        tracks, predictions, embeddings = [], [], []
        for r in results:
            key = path_key(r.path)
            if r.embedding is not None and r.embedding_space and not r.retry:
                vector = r.embedding.astype(EMBEDDING_DTYPE, copy=False)
                embeddings.append((key, r.embedding_space, r.size, r.mtime_ns, len(vector), r.windows,
                                   vector.tobytes(), run_id, stamp))
            track = {"path": key, "raw_path": os.fsencode(r.path), "size": r.size, "mtime_ns": r.mtime_ns,
                     "status": r.status, "error": r.error, "model_id": model_id, "fingerprint": fingerprint,
                     "run_id": run_id, "updated_at": stamp}
            for name in ("duration", "codec"):
                if getattr(r, name) is not None:
                    track[name] = getattr(r, name)
            if r.tags is not None:
                track.update(genres=json.dumps(r.tags.get("genres", [])), artist=r.tags.get("artist"),
                             album=r.tags.get("album"), title=r.tags.get("title"))
            tracks.append(track)
            # A failure to retry is stored against no version of the file, so no scan serves it from cache.
            version = (None, None) if r.retry else (r.size, r.mtime_ns)
            predictions.append({
                "path": key, "fingerprint": fingerprint, "model_id": model_id, "size": version[0],
                "mtime_ns": version[1], "status": r.status, "labels": json.dumps(r.labels),
                "scores": json.dumps(r.scores), "ranking": json.dumps(r.ranking[:ranking_kept]),
                "window_labels": json.dumps(r.window_labels), "windows": r.windows, "error": r.error,
                "written": int(r.written), "run_id": run_id, "created_at": stamp, "label_map": label_map})
        self.db["tracks"].upsert_all(tracks, pk="path", alter=True)
        self.db["predictions"].upsert_all(predictions, pk=("path", "fingerprint"))
        if embeddings:
            self.db.conn.executemany(
                "insert into embeddings (path, space, size, mtime_ns, dim, windows, vector, run_id, created_at) "
                "values (?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict (path, space) do update set size = excluded.size, "
                "mtime_ns = excluded.mtime_ns, dim = excluded.dim, windows = excluded.windows, "
                "vector = excluded.vector, run_id = excluded.run_id, created_at = excluded.created_at", embeddings)

    def note_model(self, model_id: str, fingerprint: str, labels: list[str]) -> None:
        stamp = now()
        with self._tx():
            self.db.execute(
                "insert into models (fingerprint, model_id, labels, first_seen, last_seen) "
                "values (?, ?, ?, ?, ?) on conflict(fingerprint) do update set last_seen = excluded.last_seen, "
                "model_id = excluded.model_id", [fingerprint, model_id, json.dumps(labels), stamp, stamp])

    def mark_written(self, path: str, fingerprint: str, size: int, mtime_ns: int, genres: list[str]) -> None:
        """The file holds the predicted genres (written, or already there) at this stat: remember it, so
        the next scan sees the file unchanged and has nothing to write."""
        with self._tx():
            self._mark_written(path, fingerprint, size, mtime_ns, genres)

    def _mark_written(self, path: str, fingerprint: str, size: int, mtime_ns: int, genres: list[str]) -> None:
        key = path_key(path)
        self.db.execute("update predictions set written = 1, size = ?, mtime_ns = ? "
                        "where path = ? and fingerprint = ?", [size, mtime_ns, key, fingerprint])
        # A tag write changes no audio: embeddings of the version written over follow it to its new stat.
        self.db.execute("update embeddings set size = ?, mtime_ns = ? where path = ? and exists (select 1 from "
                        "tracks t where t.path = embeddings.path and t.size = embeddings.size and "
                        "t.mtime_ns = embeddings.mtime_ns)", [size, mtime_ns, key])
        self.db.execute("update tracks set size = ?, mtime_ns = ?, genres = ? where path = ?",
                        [size, mtime_ns, json.dumps(genres), key])


def undo_path_keys(paths: list[str]) -> tuple[list[str], list[str]]:
    """The :func:`path_key` of each path an undo is given, as the scan recorded it (absolute) and with
    symlinks resolved, split into files and folders (these as a prefix ending in "/")."""
    files, folders = set(), set()
    for given in paths:
        for path in dict.fromkeys((os.path.abspath(given), os.path.realpath(given))):
            if os.path.isdir(path):
                folders.add(path_key(path.rstrip("/") + "/"))
            else:
                files.add(path_key(path))
    return sorted(files), sorted(folders)


def process_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs on this machine; unknown (None) counts as alive."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _jsonable(info: dict) -> dict:
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in info.items()}


def _schema_1(db) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db["runs"].create({"id": int, "command": str, "started_at": float, "finished_at": float,
                       "root": str, "model_id": str, "fingerprint": str, "options": str,
                       "scanned": int, "skipped": int, "tagged": int, "abstained": int, "failed": int,
                       "restored": int, "interrupted": int}, pk="id", if_not_exists=True)
    db["tracks"].create({"path": str, "raw_path": bytes, "size": int, "mtime_ns": int, "duration": float,
                         "codec": str, "status": str, "error": str, "genres": str, "artist": str,
                         "album": str, "title": str, "model_id": str, "fingerprint": str, "run_id": int,
                         "updated_at": float}, pk="path", if_not_exists=True)
    db["predictions"].create({"path": str, "fingerprint": str, "model_id": str, "size": int,
                              "mtime_ns": int, "status": str, "labels": str, "scores": str,
                              "ranking": str, "window_labels": str, "windows": int, "error": str,
                              "written": int, "run_id": int, "created_at": float},
                             pk=("path", "fingerprint"), if_not_exists=True)
    db["models"].create({"fingerprint": str, "model_id": str, "labels": str, "first_seen": float,
                         "last_seen": float}, pk="fingerprint", if_not_exists=True)
    db["tag_writes"].create({"id": int, "run_id": int, "path": str, "raw_path": bytes, "before": str,
                             "after": str, "old_genres": str, "new_genres": str, "written_at": float,
                             "undone_at": float, "undo_run_id": int}, pk="id", if_not_exists=True)
    db["tracks"].create_index(["status"], if_not_exists=True)
    db["predictions"].create_index(["fingerprint", "status"], if_not_exists=True)
    db["tag_writes"].create_index(["run_id"], if_not_exists=True)
    db["tag_writes"].create_index(["path"], if_not_exists=True)


def _schema_2(db) -> None:
    """``tag_writes.pending_size`` / ``pending_mtime_ns``: the stat a file will have once written, noted
    just before it is replaced, so that a scan killed between the replace and the journal's completion
    is recognised as written by the next scan, which then neither predicts nor writes the file again."""
    db["tag_writes"].add_column("pending_size", int)
    db["tag_writes"].add_column("pending_mtime_ns", int)
    db["runs"].add_column("pid", int)   # with host: whether a run that never finished is still running
    db["runs"].add_column("host", str)


def _schema_3(db) -> None:
    """``predictions.label_map``: the digest of the label map a prediction's ranking went through, so
    that a scan with another map predicts the track again instead of serving genres it would not give.
    Older rows have none and are taken as made with the scan's map."""
    db["predictions"].add_column("label_map", str)


def _schema_4(db) -> None:
    """The journal's states and exact undo (tagger.tagging.journal), and keys two names never share.

    ``tag_writes`` gets ``state`` and ``seq`` (the order writes replaced files), the temp file a write
    uses, the sha256/size/times of the file before and after, the undo data, and whether an undo was
    byte for byte. Older entries keep their field-level undo: their state comes from their timestamps,
    their order from their id. ``path`` keys are made again from ``raw_path`` where the old key held a
    backslash (only those change: :func:`path_key` doubles it now); a prediction follows its track."""
    for name, kind in (("state", str), ("seq", int), ("temp_path", bytes), ("before_sha256", str),
                       ("after_sha256", str), ("before_size", int), ("after_size", int), ("before_mtime_ns", int),
                       ("before_atime_ns", int), ("after_mtime_ns", int), ("undo_data", bytes), ("undo_exact", int),
                       ("note", str), ("created_at", float)):
        db["tag_writes"].add_column(name, kind)
    db.execute("update tag_writes set seq = id, state = case when undone_at is not null then 'undone' "
               "when written_at is not null then 'written' when pending_size is not null then 'replacing' "
               "else 'intent' end")
    db["tag_writes"].create_index(["state"], if_not_exists=True)
    db["tag_writes"].create_index(["seq"], if_not_exists=True)
    db["tag_writes"].create_index(["run_id", "seq"], if_not_exists=True)  # an undo's pages of one run
    db.conn.create_function("genretag_path_key", 1, path_key, deterministic=True)
    moved = "instr(path, char(92)) > 0 and raw_path is not null"
    db.execute(f"create temp table moved_keys as select path as old, genretag_path_key(raw_path) as new "
               f"from tracks where {moved}")
    db.execute("update predictions set path = (select new from moved_keys where old = predictions.path) "
               "where path in (select old from moved_keys)")
    db.execute(f"update tracks set path = genretag_path_key(raw_path) where {moved}")
    db.execute(f"update tag_writes set path = genretag_path_key(raw_path) where {moved}")
    db.execute("drop table moved_keys")


def _schema_5(db) -> None:
    """``embeddings``: each track's embedding per embedding space (little-endian float16, ``dim`` values),
    with the stat of the file version it was computed on and how many windows it is the mean of, so a
    head on that space predicts the track without decoding it; ``runs.from_embedding`` counts the
    tracks a scan predicted that way."""
    db["embeddings"].create({"path": str, "space": str, "size": int, "mtime_ns": int, "dim": int, "windows": int,
                             "vector": bytes, "run_id": int, "created_at": float},
                            pk=("path", "space"), if_not_exists=True)
    db["runs"].add_column("from_embedding", int)


MIGRATIONS = {0: _schema_1, 1: _schema_2, 2: _schema_3, 3: _schema_4, 4: _schema_5}
