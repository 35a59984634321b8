"""Undo: put back the genre tags a scan wrote, exactly as they were, from the index's journal."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import FileChanged, GenretagError
from ..index import Index

ERRORS_KEPT = 100
"""An undo's summary keeps the reasons of its first this many failures; ``failed`` counts them all, and
``on_file`` is told each one as it happens."""
PATHS_RECORDED = 100
"""An undo's run records the first this many of the paths it was given, and their count: a run's options
are printed by ``genretag history --json``, and an undo may be given a whole library's paths."""


@dataclass
class UndoSummary:
    restored: int = 0   # files restored (a file written by several runs in scope counts once)
    failed: int = 0     # files that could not be restored
    run_id: int | None = None
    undone_by: int | None = None  # nothing to do: the undo run that already undid the last writing run
    last_run: int | None = None   # that last writing run
    errors: list[str] = field(default_factory=list)  # the first ERRORS_KEPT reasons


def undo(db_path, run_id: int | None = None, paths: list[str] | None = None,
         keep_mtime: bool = False, force: bool = False, on_total: Callable[[int], None] | None = None,
         on_file: Callable[[str, str | None], None] | None = None) -> UndoSummary:
    """Restore the tags written by run ``run_id`` (default: the last run that wrote tags) and/or the
    writes to ``paths`` (files or folders). Each write is undone once: a second undo of the same run
    finds nothing to do, and does not go on to an older run.

    A file is restored only while it still holds what genretag wrote: genres changed since, by another
    program or by a later run (undo that first), are reported and left alone unless ``force``. Writes to
    one file are unwound newest first; once one cannot be, the file's older writes are left too.

    ``on_total`` is told how many writes there are to undo before the first, ``on_file`` each one
    as it is done, with the reason it failed or None, so that a long undo can show its progress and
    its errors as they happen. The journal is read a page at a time (``Index.writes_to_undo``)."""
    summary = UndoSummary()
    with Index(db_path, create=False) as index:
        scope = index.undo_scope(run_id, paths)
        total = index.count_writes_to_undo(scope)
        if not total:
            if run_id is None and not paths and scope is not None:
                summary.last_run = index.last_writing_run()
                summary.undone_by = index.undone_by(summary.last_run)
            return summary
        if on_total:
            on_total(total)
        summary.run_id = index.start_run("undo", options=_recorded_options(run_id, paths or [], force))
        failed_paths: set[str] = set()
        interrupted = True
        try:
            for write in index.writes_to_undo(scope):  # newest first: writes to one file unwind in order
                _undo_one(index, write, summary, failed_paths, keep_mtime, force,
                          on_file or (lambda path, error: None))
            interrupted = False
        finally:
            summary.restored = index.files_undone(summary.run_id)
            index.finish_run(summary.run_id, restored=summary.restored, failed=summary.failed,
                             interrupted=int(interrupted))
    return summary


def _recorded_options(run_id: int | None, paths: list[str], force: bool) -> dict:
    """What an undo's run records of what it was asked: the run, and a bounded sample of the paths."""
    return {"run": run_id, "paths": paths[:PATHS_RECORDED], "path_count": len(paths), "force": force}


def _undo_one(index: Index, write: dict, summary: UndoSummary, failed_paths: set[str], keep_mtime: bool,
              force: bool, on_file: Callable[[str, str | None], None]) -> None:
    """Restore one journalled write and mark it undone, or count the reason it could not be."""
    from .tags import restore_genres

    path = os.fsdecode(write["raw_path"])
    never_replaced = write["written_at"] is None and write["pending_size"] is None
    if path in failed_paths or (never_replaced and index.forget_if_never_written(write["id"], path)):
        on_file(path, None)  # a newer write to it could not be undone (its older ones stay), or there
        return               # is nothing to undo: the write never reached the file
    try:
        only_if = None if force else _states_to_undo(index, write, path)
        restore_genres(path, json.loads(write["before"]), keep_mtime=keep_mtime, only_if=only_if)
        st = os.stat(path)
    except (GenretagError, OSError) as err:
        reason = str(err) if isinstance(err, GenretagError) else f"{path}: {err}"
        if isinstance(err, FileChanged) and (later := index.later_write(path, write["id"])):
            reason = f"{path}: written again by run {later['run_id']} since; undo that run first"
        failed_paths.add(path)
        summary.failed += 1
        if len(summary.errors) < ERRORS_KEPT:
            summary.errors.append(reason)
        on_file(path, reason)
        return
    index.mark_undone(write["id"], summary.run_id, st.st_size, st.st_mtime_ns, path,
                      json.loads(write["old_genres"]))
    on_file(path, None)


def _states_to_undo(index: Index, write: dict, path: str) -> list[dict] | None:
    """The tag states in which the file may be restored: what genretag wrote, or what it held before
    (restoring then changes nothing). A write the scan never completed (it was killed) has no recorded
    result: it reached the file if the file has the stat noted just before the replace; any state is
    then genretag's, else only the state before is."""
    before = json.loads(write["before"])
    if write["after"] is not None:
        return [json.loads(write["after"]), before]
    if write["pending_size"] is not None:
        try:
            st = os.stat(path)
        except OSError:
            return [before]
        if (st.st_size, st.st_mtime_ns) == (write["pending_size"], write["pending_mtime_ns"]):
            return None
    return [before]
