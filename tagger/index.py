"""Step 5b: the SQLite index — every track's state, every prediction, every tag write (the undo journal).

Tables (schema version in ``meta``; documented in the README):

* ``runs``: one row per ``scan``/``undo`` run, with its options and final counts.
* ``tracks``: one row per file (``path`` key): the stat that identifies the version last seen, duration,
  codec, artist/album/title, the genres in the file's tags, and the last status (ok, abstained, failed)
  with the failure reason.
* ``predictions``: one row per (path, model fingerprint): the version of the file it was computed on,
  top-k labels and scores, the mapped ranking, per-window top labels, window count.
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
from urllib.parse import quote

from .errors import IndexUnusable

SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 30_000
LOOKUP_CHUNK = 500  # paths per query; SQLite builds before 3.32 allow at most 999 parameters
UNDO_PAGE = 1000  # journal rows an undo reads at a time
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


def path_key(path: str) -> str:
    """The text stored for a path. Names that are not valid UTF-8 keep their bytes as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


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
        tracks, predictions = [], []
        for r in results:
            key = path_key(r.path)
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

    def note_model(self, model_id: str, fingerprint: str, labels: list[str]) -> None:
        stamp = now()
        with self._tx():
            self.db.execute(
                "insert into models (fingerprint, model_id, labels, first_seen, last_seen) "
                "values (?, ?, ?, ?, ?) on conflict(fingerprint) do update set last_seen = excluded.last_seen, "
                "model_id = excluded.model_id", [fingerprint, model_id, json.dumps(labels), stamp, stamp])

    def journal_intent(self, run_id: int, path: str, before: dict, old_genres: list[str],
                       new_genres: list[str], prediction: tuple | None = None) -> int:
        """Journal a tag write *before* it happens (write-ahead), so that a crash between the file's
        replacement and the journal's commit still leaves the previous tags undoable. Until
        :meth:`complete_tag_write` runs, ``written_at`` is NULL; ``undo`` restores such a row too, which
        changes nothing if the write never reached the file.

        ``prediction``, ``(TrackResult, model_id, fingerprint, label_map, ranking_kept)`` (as
        :meth:`record_results` takes them), is committed in the same transaction: a crash during the
        write then leaves the file's prediction in the index, so the next scan writes it from the cache
        instead of predicting the file again."""
        with self._tx():
            if prediction is not None:
                result, model_id, fingerprint, label_map, ranking_kept = prediction
                self._upsert_results([result], model_id, fingerprint, run_id, label_map, ranking_kept)
            self._drop_writes_that_never_happened(path)
            return self.db["tag_writes"].insert({
                "run_id": run_id, "path": path_key(path), "raw_path": os.fsencode(path),
                "before": json.dumps(before), "after": None, "old_genres": json.dumps(old_genres),
                "new_genres": json.dumps(new_genres), "written_at": None, "undone_at": None,
                "undo_run_id": None}).last_pk

    def complete_tag_write(self, write_id: int, change, fingerprint: str, size: int, mtime_ns: int) -> None:
        """The write (a :class:`tagger.tagging.tags.TagChange`) reached the file, which now has this stat: the
        journal and the prediction's file version are brought up to date in one transaction."""
        with self._tx():
            self.db["tag_writes"].update(write_id, {
                "before": json.dumps(change.before), "after": json.dumps(change.after),
                "old_genres": json.dumps(change.old_genres), "new_genres": json.dumps(change.new_genres),
                "written_at": now()})
            self._mark_written(change.path, fingerprint, size, mtime_ns, change.new_genres)

    def _drop_writes_that_never_happened(self, path: str) -> None:
        """Journal entries for ``path`` whose scan ended, or was killed, before its written copy was even
        ready to replace the file (no pending stat): that write never reached the file, and the entry
        would only make ``history`` count it and an ``undo`` of that run restore an older state."""
        rows = self.db.execute(
            "select w.id, r.finished_at, r.pid, r.host from tag_writes w join runs r on r.id = w.run_id "
            "where w.path = ? and w.written_at is null and w.undone_at is null and w.pending_size is null",
            [path_key(path)]).fetchall()
        dead = [write_id for write_id, finished, pid, host in rows
                if finished is not None or (host == socket.gethostname() and not _process_alive(pid))]
        if dead:
            self.db.execute(f"delete from tag_writes where id in ({', '.join('?' * len(dead))})", dead)

    def forget_if_never_written(self, write_id: int, path: str) -> bool:
        """Drop the journal entries for ``path`` whose write never reached the file (see
        :meth:`_drop_writes_that_never_happened`); True if ``write_id`` was one of them."""
        with self._tx():
            self._drop_writes_that_never_happened(path)
            return self.db.execute("select 1 from tag_writes where id = ?", [write_id]).fetchone() is None

    def note_pending_write(self, write_id: int, size: int, mtime_ns: int) -> None:
        """The written copy is complete and about to replace the file; this will be the file's stat."""
        with self._tx():
            self.db["tag_writes"].update(write_id, {"pending_size": size, "pending_mtime_ns": mtime_ns})

    def unfinished_write(self, path: str, fingerprint: str) -> dict | None:
        """The latest write to ``path`` by a scan with this model that was journaled but never
        completed (the scan was killed), or None."""
        rows = self.db.execute(
            "select w.* from tag_writes w join runs r on r.id = w.run_id where w.path = ? and "
            "w.written_at is null and w.undone_at is null and r.fingerprint = ? order by w.id desc limit 1",
            [path_key(path), fingerprint])
        row = rows.fetchone()
        return dict(zip([c[0] for c in rows.description], row)) if row else None

    def discard_tag_write(self, write_id: int) -> None:
        """The write did not happen (nothing to change, or it failed and left the file as it was)."""
        with self._tx():
            self.db["tag_writes"].delete(write_id)

    def mark_written(self, path: str, fingerprint: str, size: int, mtime_ns: int, genres: list[str]) -> None:
        """The file holds the predicted genres (written, or already there) at this stat: remember it, so
        the next scan sees the file unchanged and has nothing to write."""
        with self._tx():
            self._mark_written(path, fingerprint, size, mtime_ns, genres)

    def _mark_written(self, path: str, fingerprint: str, size: int, mtime_ns: int, genres: list[str]) -> None:
        key = path_key(path)
        self.db.execute("update predictions set written = 1, size = ?, mtime_ns = ? "
                        "where path = ? and fingerprint = ?", [size, mtime_ns, key, fingerprint])
        self.db.execute("update tracks set size = ?, mtime_ns = ?, genres = ? where path = ?",
                        [size, mtime_ns, json.dumps(genres), key])

    # -- undo -----------------------------------------------------------------------------------------
    def undo_scope(self, run_id: int | None = None, paths: list[str] | None = None) -> tuple[str, list] | None:
        """Which not-yet-undone writes an undo covers, as an SQL condition and its arguments: those of run
        ``run_id`` (default: the last run that wrote tags, if ``paths`` are not given), to ``paths``
        (files, or folders: everything under them) if given, or both. None: nothing to undo.

        The default is the last run that wrote, even once it is undone: a second ``genretag undo``
        finds nothing to do instead of rolling back an older run (``--run`` does that)."""
        where, args = [], []
        if run_id is None and not paths:
            run_id = self.last_writing_run()
            if run_id is None:
                return None
        if run_id is not None:
            where.append("run_id = ?")
            args.append(run_id)
        if paths:  # JSON arguments: an IN list of one ? per path stops at SQLite's variable limit
            files, folders = _undo_path_keys(paths)
            where.append("(tag_writes.path in (select value from json_each(?)) or exists (select 1 from "
                         "json_each(?) d where substr(tag_writes.path, 1, length(d.value)) = d.value))")
            args += [json.dumps(files), json.dumps(folders)]
        return " and ".join(where), args

    def last_writing_run(self) -> int | None:
        """The last run that wrote tags (undone or not), or None."""
        return self.db.execute("select max(run_id) from tag_writes").fetchone()[0]

    def undone_by(self, run_id: int) -> int | None:
        """The undo run that undid the last of ``run_id``'s writes, or None if some are not undone."""
        row = self.db.execute("select count(*), max(undo_run_id), sum(undone_at is null) from tag_writes "
                              "where run_id = ?", [run_id]).fetchone()
        return row[1] if row[0] and not row[2] else None

    def later_write(self, path: str, write_id: int) -> dict | None:
        """The newest write to ``path`` after ``write_id`` that is not undone, or None: the file holds
        that write's genres, not those of ``write_id``."""
        rows = self.db.execute("select id, run_id from tag_writes where path = ? and id > ? and undone_at is null "
                               "order by id desc limit 1", [path_key(path), write_id]).fetchone()
        return {"id": rows[0], "run_id": rows[1]} if rows else None

    def files_undone(self, undo_run_id: int) -> int:
        """How many files the undo run ``undo_run_id`` restored (a file written twice counts once)."""
        return self.db.execute("select count(distinct path) from tag_writes where undo_run_id = ?",
                               [undo_run_id]).fetchone()[0]

    def count_writes_to_undo(self, scope: tuple[str, list] | None) -> int:
        if scope is None:
            return 0
        where, args = scope
        return self.db.execute(f"select count(*) from tag_writes where undone_at is null and {where}",
                               args).fetchone()[0]

    def writes_to_undo(self, scope: tuple[str, list] | None) -> Iterator[dict]:
        """The writes in ``scope`` (:meth:`undo_scope`) not yet undone, newest first, read
        ``UNDO_PAGE`` at a time: a run that wrote a million files is not held in memory. Each page is
        read whole before the caller marks any write undone, and the next starts below its last id."""
        if scope is None:
            return
        where, args = scope
        below: list = []
        while True:
            page = list(self.db.query(
                f"select * from tag_writes where undone_at is null and {where}{' and id < ?' if below else ''} "
                f"order by id desc limit {UNDO_PAGE}", args + below))
            yield from page
            if len(page) < UNDO_PAGE:
                return
            below = [page[-1]["id"]]

    def mark_undone(self, write_id: int, undo_run_id: int, size: int | None, mtime_ns: int | None,
                    path: str, genres: list[str]) -> None:
        with self._tx():
            self.db.execute("update tag_writes set undone_at = ?, undo_run_id = ? where id = ?",
                            [now(), undo_run_id, write_id])
            key = path_key(path)
            self.db.execute("update predictions set written = 0, size = ?, mtime_ns = ? where path = ?",
                            [size, mtime_ns, key])
            self.db.execute("update tracks set size = ?, mtime_ns = ?, genres = ? where path = ?",
                            [size, mtime_ns, json.dumps(genres), key])


def _undo_path_keys(paths: list[str]) -> tuple[list[str], list[str]]:
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


def _process_alive(pid: int | None) -> bool:
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


MIGRATIONS = {0: _schema_1, 1: _schema_2, 2: _schema_3}
