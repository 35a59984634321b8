"""Undo: put back the genre tags a scan wrote, exactly as they were, from the index's journal."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .errors import GenretagError
from .index import Index


@dataclass
class UndoSummary:
    restored: int = 0
    failed: int = 0
    run_id: int | None = None
    errors: list[str] = field(default_factory=list)


def undo(db_path, run_id: int | None = None, paths: list[str] | None = None,
         keep_mtime: bool = False) -> UndoSummary:
    """Restore the tags written by run ``run_id`` (default: the last run that wrote tags), or the last
    writes to ``paths``. Each write is undone once: a second undo of the same run finds nothing to do."""
    from .tags import restore_genres

    summary = UndoSummary()
    with Index(db_path) as index:
        writes = index.writes_to_undo(run_id, paths)
        if not writes:
            return summary
        summary.run_id = index.start_run("undo", options={"run": run_id, "paths": paths or []})
        done_paths: set[str] = set()
        for write in writes:  # newest first, so several writes to one file unwind in order
            path = os.fsdecode(write["raw_path"])
            try:
                restore_genres(path, json.loads(write["before"]), keep_mtime=keep_mtime)
                st = os.stat(path)
            except (GenretagError, OSError) as err:
                summary.failed += 1
                summary.errors.append(str(err) if isinstance(err, GenretagError) else f"{path}: {err}")
                continue
            index.mark_undone(write["id"], summary.run_id, st.st_size, st.st_mtime_ns, path,
                              json.loads(write["old_genres"]))
            done_paths.add(path)
            summary.restored += 1
        index.finish_run(summary.run_id, restored=summary.restored, failed=summary.failed)
    return summary
