"""Terminal output of the CLI with rich: the progress bar, one line per bad file, tables, summaries.

Progress and messages go to stderr, so ``--json`` output on stdout stays machine-readable.
"""
from __future__ import annotations

import json
import re

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from rich.table import Table

from ..records import ABSTAINED, FAILED, OK, SKIPPED

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PLANNED_TABLE_ROWS = 1000
"""A dry run's table shows at most this many planned changes. A first dry run of a library plans one
for every track, and rich lays a table out whole: 50,000 rows took 28 s and 200 MiB to print on a
2-core machine. ``--json`` lists every one, and ``genretag report`` sums them up."""


def shown_path(path: str) -> str:
    """``path`` as the terminal shows it: named as the index stores it (bytes that are not UTF-8 as
    ``\\xNN``, so an error line, ``report`` and ``show`` agree), with control characters escaped
    (``\\n``), so a name holding a newline still makes one line."""
    from ..index import path_key

    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], path_key(path))


def progress_bar(console: Console, name: str, *extra: TextColumn) -> Progress:
    """A transient bar on ``console`` (stderr), hidden where that is not a terminal: the count done,
    ``extra`` columns, the time elapsed and the ETA."""
    return Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(), *extra, TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True,
                    disable=not console.is_terminal)


class _LiveView:
    """A view whose progress bar shows while it is used as a context manager."""

    progress: Progress

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()


class ScanView(_LiveView):
    """Everything ``genretag scan`` shows while it runs and when it ends."""

    def __init__(self, settings, as_json: bool = False):
        self.settings = settings
        self.as_json = as_json
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.out = Console(highlight=False, soft_wrap=True)
        self.shows_progress = self.err.is_terminal  # else the bar's total is not worth a counting pass
        self.progress = progress_bar(self.err, "scan", TextColumn("{task.fields[rate]} tracks/s"))
        self.task = self.progress.add_task("scan", total=None, rate="–")
        self.planned: list[tuple[str, str, str, str]] = []  # the first PLANNED_TABLE_ROWS of them
        self.planned_count = 0
        self.from_index = 0  # planned changes predicted by an earlier scan

    def discovered(self, total: int) -> None:
        self.progress.update(self.task, total=total)

    def skipped(self, count: int) -> None:
        """``count`` tracks need no prediction: the bar counts, and its ETA covers, only the others."""
        total = self.progress.tasks[0].total
        if total is not None:
            self.progress.update(self.task, total=max(0, total - count))

    def result(self, result) -> None:
        if result.status != SKIPPED:  # skipped: counted by skipped(), or to be predicted again
            self.progress.advance(self.task)
        speed = self.progress.tasks[0].speed
        self.progress.update(self.task, rate=f"{speed:.2f}" if speed else "–")
        if result.status == FAILED:
            self.err.print(f"[red]error:[/] {escape(shown_path(result.path))}: "
                           f"{escape(result.error or 'failed')}")
        if self.as_json:
            if result.status != SKIPPED or result.error or result.labels:
                click.echo(json.dumps(result.as_json()))
            return
        if self.settings.dry_run and (result.status in (OK, ABSTAINED) or result.labels):
            if result.status == SKIPPED:  # unchanged since an earlier scan predicted it, never written
                self.from_index += 1
            self.planned_count += 1
            if len(self.planned) < PLANNED_TABLE_ROWS:
                self.planned.append(_planned_row(result))

    def interrupted(self) -> None:
        self.progress.stop()
        self.err.print("[yellow]Interrupted.[/] Results so far are in the index; run the same scan again "
                       "to continue where it stopped.")

    def finish(self, summary) -> None:
        self.progress.stop()
        if self.settings.dry_run and not self.as_json:
            self._planned_table()
        line = (f"Scanned {summary.scanned}, skipped (unchanged) {summary.skipped}, tagged {summary.tagged}, "
                f"abstained {summary.abstained}, failed {summary.failed}")
        if self.settings.write_tags:
            line += f", written {summary.written}"
        if summary.requeued:
            line += f", re-queued {summary.requeued}"
        if summary.relabelled:
            line += f", relabelled from the index {summary.relabelled}"
        self.err.print(f"{line} in {summary.seconds:.1f} s (model {summary.model_id}, run {summary.run_id}).")

    def _planned_table(self) -> None:
        if not self.planned:
            self.out.print("No tag changes planned (dry run: no file was touched).")
            return
        notes = []
        if self.planned_count > len(self.planned):
            notes.append(f"The first {len(self.planned):,} of {self.planned_count:,} planned changes are "
                         "shown; --json lists every one.")
        if self.from_index:
            notes.append(f"{self.from_index:,} of them predicted by an earlier scan (unchanged files, from "
                         "the index).")
        table = Table(title="Planned tag changes (dry run: no file was touched)",
                      caption="\n".join(notes) or None)
        for name in ("path", "current genre", "new genre", "confidence"):
            table.add_column(name, overflow="fold")
        for row in self.planned:
            table.add_row(*map(escape, row))
        self.out.print(table)


class UndoView(_LiveView):
    """``genretag undo``'s progress bar and error lines, shown as the files are restored: undoing a
    large scan rewrites every file it wrote, which takes as long as writing them did."""

    def __init__(self):
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.progress = progress_bar(self.err, "undo")
        self.task = self.progress.add_task("undo", total=None)

    def __enter__(self):
        return self  # the bar starts once there is something to undo

    def total(self, count: int) -> None:
        self.progress.update(self.task, total=count)
        self.progress.start()

    def file(self, path: str, error: str | None, note: str | None = None) -> None:
        self.progress.advance(self.task)
        if error:
            self.err.print(f"[red]error:[/] {escape(shown_path(error))}")  # names as `scan` shows them
        elif note:
            self.err.print(f"[yellow]note:[/] {escape(shown_path(path))}: {escape(note)}")


def _planned_row(result) -> tuple[str, str, str, str]:
    """A dry run's table row: path, the genres the file holds, the new ones and their confidence."""
    current = ", ".join((result.tags or {}).get("genres", [])) or "—"
    if result.status != ABSTAINED:
        new, scores = ", ".join(result.labels), result.scores
    else:  # show what the model leaned to, so a user can judge the threshold
        best = result.ranking[:1]
        new, scores = f"(abstain; best {best[0][0]})" if best else "(abstain)", [s for _, s in best]
    return shown_path(result.path), current, new, ", ".join(f"{s:.2f}" for s in scores)


def history_table(runs: list[dict], writes: dict[int, int]) -> None:
    import datetime as dt

    table = Table(title="genretag runs")
    for name in ("run", "command", "started", "model", "scanned", "tagged", "abstained", "failed",
                 "tag writes", "restored"):
        table.add_column(name)
    for run in runs:
        started = dt.datetime.fromtimestamp(run["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(run["id"]), run["command"], started, run.get("model_id") or "",
                      *(str(run.get(k) or 0) for k in ("scanned", "tagged", "abstained", "failed")),
                      str(writes.get(run["id"], 0)), str(run.get("restored") or 0))
    Console(highlight=False).print(table)
