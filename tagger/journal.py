"""Undo: put back the genre tags a scan wrote, exactly as they were, from the index's journal."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import GenretagError
from .index import Index

ERRORS_KEPT = 100
"""An undo's summary keeps the reasons of its first this many failures; ``failed`` counts them all, and
``on_file`` is told each one as it happens."""
PATHS_RECORDED = 100
"""An undo's run records the first this many of the paths it was given, and their count: a run's options
are printed by ``genretag history --json``, and an undo may be given a whole library's paths."""


@dataclass
class UndoSummary:
    restored: int = 0
    failed: int = 0
    run_id: int | None = None
    errors: list[str] = field(default_factory=list)  # the first ERRORS_KEPT reasons


def undo(db_path, run_id: int | None = None, paths: list[str] | None = None,
         keep_mtime: bool = False, on_total: Callable[[int], None] | None = None,
         on_file: Callable[[str, str | None], None] | None = None) -> UndoSummary:
    """Restore the tags written by run ``run_id`` (default: the last run that wrote tags), or the last
    writes to ``paths``. Each write is undone once: a second undo of the same run finds nothing to do.

    ``on_total`` is told how many writes there are to undo before the first, ``on_file`` each file
    as it is done, with the reason it failed or None, so that a long undo can show its progress and
    its errors as they happen. The journal is read a page at a time (``Index.writes_to_undo``)."""
    summary = UndoSummary()
    with Index(db_path) as index:
        scope = index.undo_scope(run_id, paths)
        total = index.count_writes_to_undo(scope)
        if not total:
            return summary
        if on_total:
            on_total(total)
        summary.run_id = index.start_run("undo", options=_recorded_options(run_id, paths or []))
        interrupted = True
        try:
            for write in index.writes_to_undo(scope):  # newest first: writes to one file unwind in order
                _undo_one(index, write, summary, keep_mtime, on_file or (lambda path, error: None))
            interrupted = False
        finally:
            index.finish_run(summary.run_id, restored=summary.restored, failed=summary.failed,
                             interrupted=int(interrupted))
    return summary


def _recorded_options(run_id: int | None, paths: list[str]) -> dict:
    """What an undo's run records of what it was asked: the run, and a bounded sample of the paths."""
    return {"run": run_id, "paths": paths[:PATHS_RECORDED], "path_count": len(paths)}


def _undo_one(index: Index, write: dict, summary: UndoSummary, keep_mtime: bool,
              on_file: Callable[[str, str | None], None]) -> None:
    """Restore one journalled write and mark it undone, or count the reason it could not be."""
    from .tags import restore_genres

    path = os.fsdecode(write["raw_path"])
    try:
        restore_genres(path, json.loads(write["before"]), keep_mtime=keep_mtime)
        st = os.stat(path)
    except (GenretagError, OSError) as err:
        reason = str(err) if isinstance(err, GenretagError) else f"{path}: {err}"
        summary.failed += 1
        if len(summary.errors) < ERRORS_KEPT:
            summary.errors.append(reason)
        on_file(path, reason)
        return
    index.mark_undone(write["id"], summary.run_id, st.st_size, st.st_mtime_ns, path,
                      json.loads(write["old_genres"]))
    summary.restored += 1
    on_file(path, None)
