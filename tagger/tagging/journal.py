"""The undo journal: every tag write, its state, and undo.

One row per write in the index's ``tag_writes`` table (docs/index-schema.md), owned here: the pipeline
calls :meth:`Journal.begin` before a write, passes :meth:`Journal.replacing` to the writer as its
``before_replace`` and calls :meth:`Journal.written` after it; ``genretag undo`` calls :func:`undo`.
Each write moves through explicit states, and only this class moves it:

=============  ===============================================================================
``intent``     journalled before the write: the file may still be written (its temp name is known)
``replacing``  the written copy is complete and synced, its undo data recorded, and it is about to be
               renamed over the file (under the file's lock): the file holds the state before or
               after, and its sha256 tells which
``written``    the file was replaced
``undone``     an undo gave the file back (``undo_exact``: byte for byte, or 0: its genre fields)
``abandoned``  the write never reached the file (the scan died after the copy was ready, or an undo
               cancelled it before it was made)
``superseded`` a forced, field-level undo of an earlier write restored the file over this one: its
               recorded result is gone from the file
=============  ===============================================================================

A scan killed before its copy was complete leaves an ``intent`` that the next scan or undo deletes,
with the temp file it may have left. The order in which writes really replaced files is ``seq``
(assigned under the file's lock, in one index transaction), and undo unwinds a file's writes newest
first in that order; the hash chain (each write's before = the previous write's after) is checked at
each step: a file is restored only while it holds exactly what that write left (compare-and-swap).
"""
from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import FileChanged, GenretagError, TagWriteError
from .. import index as index_module
from ..index import Index, now, path_key, process_alive, undo_path_keys
from . import tags

ERRORS_KEPT = 100
"""An undo's summary keeps the reasons of its first this many failures; ``failed`` counts them all, and
``on_file`` is told each one as it happens."""
PATHS_RECORDED = 100
"""An undo's run records the first this many of the paths it was given, and their count: a run's options
are printed by ``genretag history --json``, and an undo may be given a whole library's paths."""

INTENT, REPLACING, WRITTEN, UNDONE, ABANDONED, SUPERSEDED = (
    "intent", "replacing", "written", "undone", "abandoned", "superseded")
OPEN = (INTENT, REPLACING, WRITTEN)
"""States an undo acts on."""
REACHED = (WRITTEN, UNDONE, SUPERSEDED)
"""States of writes that reached a file (what ``history`` counts)."""
STANDING = (REPLACING, WRITTEN)
"""States of writes whose result the file may hold now."""
_LIST = ("id", "run_id", "path", "raw_path", "state", "seq")
"""What an undo reads of each write a page at a time: the undo data is read one write at a time."""


class NoSuchRun(GenretagError):
    """``undo --run N`` of a run that is not in the index, or that wrote nothing."""


@dataclass(frozen=True)
class Entry:
    """A write journalled by :meth:`Journal.begin`: its row and the temp file it will use."""

    id: int
    path: str
    temp: str


@dataclass
class UndoSummary:
    restored: int = 0   # files restored (a file written by several runs in scope counts once)
    fields_only: int = 0  # of them, files whose genre fields only came back (not byte for byte)
    failed: int = 0     # files that could not be restored
    cancelled: int = 0  # writes of a running scan that an undo cancelled before they were made
    run_id: int | None = None
    undone_by: int | None = None  # nothing to do: the undo run that already undid the last writing run
    last_run: int | None = None   # that last writing run
    errors: list[str] = field(default_factory=list)  # the first ERRORS_KEPT reasons


class Journal:
    """The ``tag_writes`` table of an open :class:`Index`, for one run (``run_id``: the scan that writes, or
    the undo that restores)."""

    def __init__(self, index: Index, run_id: int | None = None):
        self.index, self.db, self.run_id = index, index.db, run_id

    # -- a scan's writes ---------------------------------------------------------------------------------
    def begin(self, path: str, new_genres: list[str], prediction: tuple | None = None, *,
              before: dict | None = None, old_genres: list[str] | None = None) -> Entry:
        """Journal a write *before* it happens (write-ahead): the file's genre fields now (``before``,
        ``old_genres``: read from the file unless given), the genres planned, and the temp file the write
        will use. ``prediction``, ``(TrackResult, model_id, fingerprint, label_map, ranking_kept)``, is
        committed in the same transaction, so that a crash during the write leaves the prediction in the
        index (the next scan writes it from the cache)."""
        before = tags.snapshot_genres(path) if before is None else before
        old = tags.read_genres(path) if old_genres is None else old_genres
        temp = tags.temp_path(path)
        with self.index._tx():
            if prediction is not None:
                result, model_id, fingerprint, label_map, ranking_kept = prediction
                self.index._upsert_results([result], model_id, fingerprint, self.run_id, label_map, ranking_kept)
            write_id = self.db["tag_writes"].insert({
                "run_id": self.run_id, "path": path_key(path), "raw_path": os.fsencode(path),
                "state": INTENT, "seq": self._next_seq(), "temp_path": os.fsencode(temp),
                "before": json.dumps(before), "old_genres": json.dumps(old), "new_genres": json.dumps(new_genres),
                "created_at": now()}).last_pk
        return Entry(write_id, path, temp)

    def replacing(self, entry: Entry, record: tags.UndoRecord) -> None:
        """The written copy is ready and about to replace the file (the writer holds the file's lock):
        record its undo data and hashes and its place in the order of writes. Refused if the write is no
        longer an intent (an undo cancelled it meanwhile): the writer then leaves the file as it is."""
        with self.index._tx():
            done = self.db.execute(
                "update tag_writes set state = ?, seq = ?, before_sha256 = ?, after_sha256 = ?, before_size = ?, "
                "after_size = ?, before_mtime_ns = ?, before_atime_ns = ?, after_mtime_ns = ?, undo_data = ? "
                "where id = ? and state = ?",
                [REPLACING, self._next_seq(), record.before_sha256, record.after_sha256, record.before_size,
                 record.after_size, record.before_mtime_ns, record.before_atime_ns, record.after_mtime_ns,
                 record.data, entry.id, INTENT]).rowcount
        if not done:
            note = self._note(entry.id)
            raise TagWriteError(entry.path, f"{note or 'its journal entry was withdrawn'}; not written")

    def written(self, entry: Entry, change: tags.TagChange, fingerprint: str, size: int, mtime_ns: int) -> None:
        """The file was replaced and has this stat: the write is ``written``, and the prediction and the
        track record the file's new version, in one transaction. An undo that already restored the file
        (it ran between the rename and this) keeps its word."""
        with self.index._tx():
            done = self.db.execute(
                "update tag_writes set state = ?, before = ?, after = ?, old_genres = ?, new_genres = ?, "
                "written_at = ? where id = ? and state = ?",
                [WRITTEN, json.dumps(change.before), json.dumps(change.after), json.dumps(change.old_genres),
                 json.dumps(change.new_genres), now(), entry.id, REPLACING]).rowcount
            if done:
                self.index._mark_written(change.path, fingerprint, size, mtime_ns, change.new_genres)

    def discard(self, entry: Entry) -> None:
        """The write did not happen (nothing to change, or it failed and left the file as it was): its
        entry goes, unless an undo cancelled it (that stays, as ``abandoned``)."""
        with self.index._tx():
            self.db.execute("delete from tag_writes where id = ? and state in (?, ?)", [entry.id, INTENT, REPLACING])

    # -- writes whose writer died ------------------------------------------------------------------------
    def recover(self, path: str | None = None) -> list[dict]:
        """Settle the writes whose writer is gone (its run finished, or its process on this host died)
        and never said how they ended: a ``replacing`` one is ``written`` or ``abandoned`` as the file's
        sha256 says (the prediction records the written file), an ``intent`` is deleted. The temp file
        each may have left is removed (a live writer's never is). Only ``path``'s writes, if given.
        Returns the writes found written."""
        completed = []
        for row in self._dead_writes(path):
            try:
                if row["temp_path"] is not None:
                    tags.remove_temp(os.fsdecode(row["temp_path"]))
                if row["state"] == INTENT:
                    with self.index._tx():
                        self.db.execute("delete from tag_writes where id = ? and state = ?", [row["id"], INTENT])
                elif self._settle_replacing(row):
                    completed.append(row)
            except (GenretagError, OSError):
                continue  # the file is gone or unreadable: its entry stays as it is
        return completed

    def _dead_writes(self, path: str | None) -> list[dict]:
        where, args = "w.state in (?, ?)", [INTENT, REPLACING]
        if path is not None:
            where, args = where + " and w.path = ?", args + [path_key(path)]
        rows = self.db.execute(f"select w.id, w.run_id, w.raw_path, w.state, w.temp_path, r.finished_at, r.pid, "
                               f"r.host from tag_writes w join runs r on r.id = w.run_id where {where}", args)
        host = socket.gethostname()
        return [{"id": i, "run_id": run, "raw_path": raw, "state": state, "temp_path": temp}
                for i, run, raw, state, temp, finished, pid, h in rows.fetchall()
                if finished is not None or (h == host and pid != os.getpid() and not process_alive(pid))]

    def _settle_replacing(self, row: dict) -> bool:
        path = os.fsdecode(row["raw_path"])
        with tags.file_lock(path):
            write = self._row(row["id"])
            if write is None or write["state"] != REPLACING:
                return False
            st = os.stat(path)
            if write["before_sha256"] is None:  # journalled by an older genretag: its stat tells
                reached = (st.st_size, st.st_mtime_ns) == (write["pending_size"], write["pending_mtime_ns"])
                before_now = False
            else:
                sha = tags.file_sha256(path)
                reached, before_now = sha == write["after_sha256"], sha == write["before_sha256"]
            if reached:
                self._complete(write, path, st)
            elif before_now:
                self._set_state(write["id"], ABANDONED, note="the scan died before its copy replaced the file")
            return reached

    def _complete(self, write: dict, path: str, st: os.stat_result) -> None:
        after, genres = tags.snapshot_genres(path), tags.read_genres(path)
        fingerprint = self.db.execute("select fingerprint from runs where id = ?", [write["run_id"]]).fetchone()[0]
        with self.index._tx():
            self.db.execute("update tag_writes set state = ?, after = ?, new_genres = ?, written_at = ? "
                            "where id = ? and state = ?",
                            [WRITTEN, json.dumps(after), json.dumps(genres), now(), write["id"], REPLACING])
            self.index._mark_written(path, fingerprint, st.st_size, st.st_mtime_ns, genres)

    # -- undo --------------------------------------------------------------------------------------------
    def scope(self, run_id: int | None = None, paths: list[str] | None = None) -> tuple[str, list] | None:
        """Which writes an undo covers, as an SQL condition and its arguments: those of run ``run_id``
        (default: the last run that wrote tags, if ``paths`` are not given), to ``paths`` (files, or
        folders: everything under them) if given, or both. None: the index has no write at all.
        Raises :class:`NoSuchRun` for a ``run_id`` the index does not have, or that wrote nothing.

        The default is the last run that wrote, even once it is undone: a second ``genretag undo``
        finds nothing to do instead of rolling back an older run (``--run`` does that)."""
        where, args = [], []
        if run_id is not None:
            self._check_run(run_id)
        elif not paths:
            run_id = self.last_writing_run()
            if run_id is None:
                return None
        if run_id is not None:
            where.append("run_id = ?")
            args.append(run_id)
        if paths:  # JSON arguments: an IN list of one ? per path stops at SQLite's variable limit
            files, folders = undo_path_keys(paths)
            where.append("(tag_writes.path in (select value from json_each(?)) or exists (select 1 from "
                         "json_each(?) d where substr(tag_writes.path, 1, length(d.value)) = d.value))")
            args += [json.dumps(files), json.dumps(folders)]
        return " and ".join(where), args

    def _check_run(self, run_id: int) -> None:
        run = self.db.execute("select command from runs where id = ?", [run_id]).fetchone()
        if run is None:
            raise NoSuchRun(f"run {run_id} is not in the index {self.index.path}; `genretag history` lists its runs")
        wrote = self.db.execute(f"select count(*) from tag_writes where run_id = ? and state in "
                                f"({', '.join('?' * 5)})", [run_id, *REACHED, INTENT, REPLACING]).fetchone()[0]
        if not wrote:
            raise NoSuchRun(f"run {run_id} (genretag {run[0]}) wrote no tags; nothing to undo "
                            "(`genretag history` shows which runs did)")

    def last_writing_run(self) -> int | None:
        """The last run that wrote tags (undone or not), or None."""
        return self.db.execute(f"select max(run_id) from tag_writes where state in ({', '.join('?' * 4)})",
                               [*REACHED, REPLACING]).fetchone()[0]

    def undone_by(self, run_id: int) -> int | None:
        """The undo run that undid the last of ``run_id``'s writes, or None if some are still open."""
        row = self.db.execute(f"select max(undo_run_id), sum(state in ({', '.join('?' * 3)})) from tag_writes "
                              "where run_id = ?", [*OPEN, run_id]).fetchone()
        return row[0] if not row[1] else None

    def count(self, scope: tuple[str, list] | None) -> int:
        if scope is None:
            return 0
        where, args = scope
        return self.db.execute(f"select count(*) from tag_writes where state in (?, ?, ?) and {where}",
                               [*OPEN, *args]).fetchone()[0]

    def open_writes(self, scope: tuple[str, list] | None) -> Iterator[dict]:
        """The writes in ``scope`` that an undo acts on, newest first (by ``seq``), ``UNDO_PAGE`` at a
        time and without their undo data: a run that wrote a million files is not held in memory. Each
        page is read whole before any write is undone, and the next starts below its last ``seq``."""
        if scope is None:
            return
        where, args = scope
        below: list = []
        while True:
            page = [dict(zip(_LIST, row)) for row in self.db.execute(
                f"select {', '.join(_LIST)} from tag_writes where state in (?, ?, ?) and {where}"
                f"{' and seq < ?' if below else ''} order by seq desc limit {index_module.UNDO_PAGE}",
                [*OPEN, *args, *below])]
            yield from page
            if len(page) < index_module.UNDO_PAGE:
                return
            below = [page[-1]["seq"]]

    def undo_write(self, write: dict, force: bool, keep_mtime: bool) -> str | None:
        """Undo one write, holding the file's lock from the check to the journal's record of it (a scan's
        write takes the same lock, so none can slip in between). Returns what happened: "exact",
        "fields" (genre fields only), "cancelled" (an intent that will now never be written), "nothing"
        (already settled, or the write never reached the file); raises GenretagError with the reason
        the file was left alone."""
        path = os.fsdecode(write["raw_path"])
        with tags.file_lock(path) as lock:
            row = self._row(write["id"])
            if row is None or row["state"] not in OPEN:
                return "nothing"
            if row["state"] == INTENT:
                if row["temp_path"] is not None:
                    tags.remove_temp(os.fsdecode(row["temp_path"]))  # no live writer's: we hold the lock
                self._set_state(row["id"], ABANDONED, note=f"cancelled by undo run {self.run_id} before it was "
                                                           "written")
                return "cancelled"
            return self._undo_locked(row, path, lock, force, keep_mtime)

    def _undo_locked(self, row: dict, path: str, lock, force: bool, keep_mtime: bool) -> str:
        later = self._standing_after(row)
        if later is not None and not force:
            raise FileChanged(path, f"written again by run {later['run_id']} since; undo that run first "
                                    "(or --force restores its genre fields)")
        if row["before_sha256"] is None:
            return self._undo_fields_legacy(row, path, lock, force, keep_mtime)
        sha = tags.file_sha256(path)
        if sha == row["after_sha256"]:
            tags.restore_exact(path, _record(row), lock=lock)
            self._mark_undone(row, path, exact=True)
            return "exact"
        if sha == row["before_sha256"]:
            if row["state"] == REPLACING:
                self._set_state(row["id"], ABANDONED, note="the file never held this write's result")
                return "nothing"
            self._mark_undone(row, path, exact=True)  # already back to its original bytes
            return "exact"
        if not force:
            raise FileChanged(path, "changed since genretag wrote it (by another program); not restored "
                                    "(--force restores its genre fields)")
        return self._undo_fields(row, path, lock, keep_mtime, later)

    def _undo_fields(self, row: dict, path: str, lock, keep_mtime: bool, later: dict | None) -> str:
        """``--force``: put the genre fields back as they were before the write, whatever the file holds."""
        tags.restore_genres(path, json.loads(row["before"]), keep_mtime=keep_mtime, lock=lock)
        self._mark_undone(row, path, exact=False, superseding=later is not None)
        return "fields"

    def _undo_fields_legacy(self, row: dict, path: str, lock, force: bool, keep_mtime: bool) -> str:
        """A write journalled by a genretag without undo data: its genre fields come back, as long as
        the file holds what it wrote (or what it held before: nothing changes then), unless ``force``."""
        only_if = None if force else _legacy_states(row, path)
        tags.restore_genres(path, json.loads(row["before"]), keep_mtime=keep_mtime, only_if=only_if, lock=lock)
        self._mark_undone(row, path, exact=False)
        return "fields"

    def _standing_after(self, row: dict) -> dict | None:
        """The newest write to the same file after ``row`` whose result the file may still hold."""
        found = self.db.execute("select id, run_id from tag_writes where path = ? and seq > ? and state in (?, ?) "
                                "order by seq desc limit 1", [row["path"], row["seq"], *STANDING]).fetchone()
        return {"id": found[0], "run_id": found[1]} if found else None

    def _mark_undone(self, row: dict, path: str, exact: bool, superseding: bool = False) -> None:
        st = os.stat(path)
        key = row["path"]
        with self.index._tx():
            self.db.execute("update tag_writes set state = ?, undone_at = ?, undo_run_id = ?, undo_exact = ? "
                            "where id = ?", [UNDONE, now(), self.run_id, int(exact), row["id"]])
            if superseding:
                self.db.execute("update tag_writes set state = ?, note = ? where path = ? and seq > ? and "
                                "state in (?, ?)", [SUPERSEDED, f"the forced undo run {self.run_id} restored "
                                                    f"run {row['run_id']}'s genres over it", key, row["seq"],
                                                    *STANDING])
            self.db.execute("update predictions set written = 0, size = ?, mtime_ns = ? where path = ?",
                            [st.st_size, st.st_mtime_ns, key])
            self.db.execute("update tracks set size = ?, mtime_ns = ?, genres = ? where path = ?",
                            [st.st_size, st.st_mtime_ns, row["old_genres"], key])

    def files_undone(self) -> tuple[int, int]:
        """How many files this undo run restored, and of them how many only by their genre fields."""
        total, fields_only = self.db.execute(
            "select count(distinct path), count(distinct case when undo_exact = 0 then path end) from tag_writes "
            "where undo_run_id = ? and state = ?", [self.run_id, UNDONE]).fetchone()
        return total, fields_only

    # -- rows --------------------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        return (self.db.execute("select max(seq) from tag_writes").fetchone()[0] or 0) + 1

    def _row(self, write_id: int) -> dict | None:
        cursor = self.db.execute("select * from tag_writes where id = ?", [write_id])
        row = cursor.fetchone()
        return dict(zip([c[0] for c in cursor.description], row)) if row else None

    def _note(self, write_id: int) -> str | None:
        row = self.db.execute("select note from tag_writes where id = ?", [write_id]).fetchone()
        return row[0] if row else None

    def _set_state(self, write_id: int, state: str, note: str | None = None) -> None:
        with self.index._tx():
            self.db.execute("update tag_writes set state = ?, note = coalesce(?, note) where id = ?",
                            [state, note, write_id])


def _record(row: dict) -> tags.UndoRecord:
    return tags.UndoRecord(row["before_sha256"], row["after_sha256"], row["before_size"], row["after_size"],
                           row["before_mtime_ns"], row["before_atime_ns"], row["after_mtime_ns"], row["undo_data"])


def _legacy_states(row: dict, path: str) -> list[dict] | None:
    """For a write journalled without undo data: the tag states in which the file may be restored, what
    genretag wrote or what it held before (restoring then changes nothing). A write whose scan was killed
    has no recorded result: it reached the file if the file has the stat noted just before the replace;
    any state is then genretag's, else only the state before is."""
    before = json.loads(row["before"])
    if row["after"] is not None:
        return [json.loads(row["after"]), before]
    if row["pending_size"] is not None:
        try:
            st = os.stat(path)
        except OSError:
            return [before]
        if (st.st_size, st.st_mtime_ns) == (row["pending_size"], row["pending_mtime_ns"]):
            return None
    return [before]


def undo(db_path, run_id: int | None = None, paths: list[str] | None = None,
         keep_mtime: bool = False, force: bool = False, on_total: Callable[[int], None] | None = None,
         on_file: Callable[..., None] | None = None) -> UndoSummary:
    """Give back the files written by run ``run_id`` (default: the last run that wrote tags) and/or the
    writes to ``paths`` (files or folders), each exactly as it was before: its bytes (sha256 checked)
    and its modification time. Each write is undone once: a second undo of the same run finds nothing
    to do, and does not go on to an older run.

    A file is restored only while it holds exactly what genretag wrote (compare-and-swap on its
    sha256): one changed since, by another program or by a later run (undo that first), is reported and
    left alone, unless ``force``, which then restores its genre fields only (not byte for byte; so are
    writes journalled by a genretag without undo data). Writes to one file are unwound newest first, in
    the order they really happened; once one cannot be, the file's older writes are left too.
    ``keep_mtime`` keeps the modification time of a field-level restore (an exact one always gives
    back the original's).

    ``on_total`` is told how many writes there are to undo before the first,
    ``on_file(path, error)`` each one as it is done, with the reason it failed or None (and a third
    argument, a note, for a restore that is not byte for byte), so that a long undo can show its
    progress and its errors as they happen."""
    summary = UndoSummary()
    on_file = on_file or (lambda path, error, note=None: None)
    with Index(db_path, create=False) as index:
        journal = Journal(index)
        scope = journal.scope(run_id, paths)
        journal.recover()
        total = journal.count(scope)
        if not total:
            if run_id is not None or (not paths and scope is not None):
                summary.last_run = run_id if run_id is not None else journal.last_writing_run()
                summary.undone_by = journal.undone_by(summary.last_run)
            return summary
        if on_total:
            on_total(total)
        journal.run_id = summary.run_id = index.start_run("undo", options=_recorded_options(run_id, paths or [],
                                                                                             force))
        failed_paths: set[str] = set()
        interrupted = True
        try:
            for write in journal.open_writes(scope):  # newest first: writes to one file unwind in order
                _undo_one(journal, write, summary, failed_paths, keep_mtime, force, on_file)
            interrupted = False
        finally:
            summary.restored, summary.fields_only = journal.files_undone()
            index.finish_run(summary.run_id, restored=summary.restored, failed=summary.failed,
                             interrupted=int(interrupted))
    return summary


def _recorded_options(run_id: int | None, paths: list[str], force: bool) -> dict:
    """What an undo's run records of what it was asked: the run, and a bounded sample of the paths."""
    return {"run": run_id, "paths": paths[:PATHS_RECORDED], "path_count": len(paths), "force": force}


FIELDS_NOTE = "genre fields restored, not byte for byte"


def _undo_one(journal: Journal, write: dict, summary: UndoSummary, failed_paths: set[str], keep_mtime: bool,
              force: bool, on_file: Callable[..., None]) -> None:
    """Undo one journalled write, or count the reason it could not be."""
    path = os.fsdecode(write["raw_path"])
    if path in failed_paths:
        on_file(path, None)  # a newer write to it could not be undone: its older ones stay
        return
    try:
        outcome = journal.undo_write(write, force, keep_mtime)
    except (GenretagError, OSError) as err:
        reason = str(err) if isinstance(err, GenretagError) else f"{path}: {err}"
        failed_paths.add(path)
        summary.failed += 1
        if len(summary.errors) < ERRORS_KEPT:
            summary.errors.append(reason)
        on_file(path, reason)
        return
    if outcome == "cancelled":
        summary.cancelled += 1
    if outcome == "fields":
        on_file(path, None, f"{FIELDS_NOTE} ({'--force' if force else 'written by a genretag without undo data'})")
    else:
        on_file(path, None)
