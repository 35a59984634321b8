"""Terminal output of the CLI with rich: the progress bar, one line per bad file, tables, summaries.

Progress and messages go to stderr, so ``--json`` output on stdout stays machine-readable.
"""
from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..records import ABSTAINED, FAILED, FROM_INDEX, OK, PREDICTED
from .safe import dumps, escape_controls, rich_text, shown

PLANNED_TABLE_ROWS = 1000
"""A dry run's table shows at most this many planned changes. A first dry run of a library plans one
for every track, and rich lays a table out whole: 50,000 rows took 28 s and 200 MiB to print on a
2-core machine. ``--json`` lists every one, and ``genretag report`` sums them up."""


def shown_path(path: str) -> str:
    """``path`` as the terminal shows it: named as the index stores it (bytes that are not UTF-8 as
    ``\\xNN``, so an error line, ``report`` and ``show`` agree), with control characters escaped
    (``\\n``, ``\\x1b``: see :mod:`tagger.reporting.safe`), so a name holding a newline still makes one
    line and one holding an escape sequence cannot drive the terminal."""
    from ..index import path_key

    return escape_controls(path_key(path))


def progress_bar(console: Console, name: str, *extra: TextColumn) -> Progress:
    """A transient bar on ``console`` (stderr), hidden where that is not a terminal: the count done,
    ``extra`` columns, the time elapsed and the ETA."""
    label = shown(name).replace("{", "{{").replace("}", "}}")  # a format string, shown without markup
    return Progress(TextColumn(label, style="bold", markup=False), BarColumn(), MofNCompleteColumn(), *extra,
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    transient=True, disable=not console.is_terminal)


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
        self.progress = progress_bar(self.err, "scan", TextColumn("{task.fields[rate]}", markup=False),
                                     TextColumn("{task.fields[status]}", markup=False))
        self.task = self.progress.add_task("scan", total=None, rate="", status="reading the index…")
        self.planned: list[tuple[str, str, str, str]] = []  # the first PLANNED_TABLE_ROWS of them
        self.planned_count = 0
        self.from_index = 0  # planned changes predicted by an earlier scan
        self.rate = PredictionRate()

    def discovered(self, total: int) -> None:
        self.progress.update(self.task, total=total)

    def skipped(self, count: int) -> None:
        """``count`` tracks need no prediction: the bar counts, and its ETA covers, only the others."""
        total = self.progress.tasks[0].total
        if total is not None:
            self.progress.update(self.task, total=max(0, total - count))

    def phase(self, phase: str, model_id: str) -> None:
        """The model is loading (a first track waits for it), or predictions have started."""
        status = f"loading model {model_id}…" if phase == "loading" else ""
        self.progress.update(self.task, status=shown(status))

    def result(self, result) -> None:
        if result.source != FROM_INDEX:  # those from the index are counted by skipped()
            self.progress.advance(self.task)
        if result.source == PREDICTED:
            self.rate.add()
        self.progress.update(self.task, rate=self.rate.text())
        if result.status == FAILED:
            self.err.print(error_line(shown_path(result.path), result.error or "failed"))
        if self.as_json:
            click.echo(dumps(result.as_json(), ensure_ascii=True))
            return
        planned = result.pending or (result.source == PREDICTED and result.status in (OK, ABSTAINED))
        if self.settings.dry_run and planned:
            if result.source == FROM_INDEX:  # unchanged since an earlier scan predicted it, never written
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
        self.err.print(rich_text(summary_line(summary, self.settings)))

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
            table.add_row(*map(rich_text, row))
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
            self.err.print(error_line(shown_path(error)))  # names as `scan` shows them
        elif note:
            self.err.print(Text.assemble(("note:", "yellow"), " ", shown_path(path), ": ", shown(note)))


def error_line(*parts: str):
    """``error: PART: PART``, the label in red and the parts as written (escaped, never read as markup)."""
    return Text.assemble(("error:", "red"), " ", ": ".join(shown(p) for p in parts))


def _planned_row(result) -> tuple[str, str, str, str]:
    """A dry run's table row: path, the genres the file holds, the new ones and their confidence."""
    current = ", ".join((result.tags or {}).get("genres", [])) or "—"
    if result.status != ABSTAINED:
        new, scores = ", ".join(result.labels), result.scores
    else:  # show what the model leaned to, so a user can judge the threshold
        best = result.ranking[:1]
        new, scores = f"(abstain; best {best[0][0]})" if best else "(abstain)", [s for _, s in best]
    return shown_path(result.path), current, new, ", ".join(f"{s:.2f}" for s in scores)


def run_mode(run: dict) -> str:
    """What a run was asked to do with the files: ``write`` (--write-tags), ``dry run``, ``predict``
    (index only), or ``undo``."""
    if run["command"] != "scan":
        return run["command"]
    try:
        options = json.loads(run.get("options") or "{}")
    except ValueError:
        options = {}
    if options.get("dry_run"):
        return "dry run"
    return "write" if options.get("write_tags") else "predict"


def history_table(runs: list[dict], writes: dict[int, int]) -> None:
    """The runs, newest first: what each was asked to do, what it did, and the library's state it left.
    The figures are sentences that wrap within their cells, so a run reads whole in 80 columns."""
    from rich import box

    table = Table(title="genretag runs", box=box.SIMPLE_HEAD)
    table.add_column("run", justify="right", no_wrap=True)
    table.add_column("started")
    table.add_column("what")
    table.add_column("this run")
    table.add_column("library after")
    table.add_column("model", overflow="fold")
    for run in runs:
        table.add_row(str(run["id"]), _run_started(run), rich_text(_run_what(run)),
                      _run_did(run, writes.get(run["id"], 0)), _run_left(run), rich_text(run.get("model_id") or ""))
    Console(highlight=False).print(table)


def _run_started(run: dict) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(run["started_at"]).strftime("%Y-%m-%d %H:%M")


def _run_what(run: dict) -> str:
    mode = run_mode(run)
    what = run["command"] if mode == run["command"] else f"{run['command']}, {mode}"
    return what + (", interrupted" if run.get("interrupted") else "")


def _run_did(run: dict, written: int) -> str:
    if run["command"] != "scan":
        return f"{run.get('restored') or 0:,} restored"
    predicted, from_embedding = run.get("scanned") or 0, run.get("from_embedding") or 0
    did = [f"{predicted:,} predicted" + (f" ({from_embedding:,} from stored embeddings)" if from_embedding else ""),
           f"{run.get('skipped') or 0:,} from the index"]
    if run_mode(run) == "write":
        did.append(f"{written:,} written")
    return ", ".join(did)


def _run_left(run: dict) -> str:
    if run["command"] != "scan":
        return "—"
    return ", ".join(f"{run.get(k) or 0:,} {k}" for k in ("tagged", "abstained", "failed"))


class PredictionRate:
    """Tracks predicted per second, counted from the first prediction: the model's loading and the
    tracks the index serves would make the first figures meaningless."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.first: float | None = None
        self.count = 0

    def add(self) -> None:
        if self.first is None:
            self.first = self.clock()
        self.count += 1

    def per_second(self) -> float | None:
        elapsed = self.clock() - self.first if self.first is not None else 0.0
        return (self.count - 1) / elapsed if self.count > 1 and elapsed > 0 else None

    def text(self) -> str:
        rate = self.per_second()
        return f"{rate:.2f} tracks/s" if rate is not None else ""


def summary_line(summary, settings) -> str:
    """The scan's last line: the library as the scan leaves it, then what this run did."""
    total = summary.tagged + summary.abstained + summary.failed
    from_embedding = summary.from_embedding
    line = (f"{total:,} tracks: {summary.tagged:,} tagged, {summary.abstained:,} abstained, "
            f"{summary.failed:,} failed. This run predicted {summary.predicted + from_embedding:,}")
    if from_embedding:
        line += f" ({from_embedding:,} from their stored embeddings, without decoding)"
    line += f" and took {summary.from_index:,} unchanged from the index"
    if summary.relabelled:
        line += f" ({summary.relabelled:,} relabelled under this run's threshold)"
    if settings.write_tags and not settings.dry_run:
        line += f"; wrote {summary.written:,} file{'' if summary.written == 1 else 's'}"
    elif summary.pending:
        line += (f"; {summary.pending:,} tag changes pending"
                 + (" (dry run: no file was touched)" if settings.dry_run else " (--write-tags makes them)"))
    if summary.requeued:
        line += f"; {summary.requeued:,} changed on disk before their write and were predicted again"
    return f"{line}. {summary.seconds:.1f} s (model {summary.model_id}, run {summary.run_id})."
