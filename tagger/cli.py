"""The ``genretag`` command: a thin layer that turns options into settings and renders results.

Exit codes: 0 every file was processed (abstentions included); 1 a fatal error (no model, bad index);
2 bad usage; 3 the scan finished but some files failed; 130 interrupted (Ctrl-C), with the index
resumable.
"""
from __future__ import annotations

import sys
from dataclasses import fields

import click

from .errors import GenretagError
from .settings import LEVELS, ScanSettings

EXIT_FILES_FAILED = 3
EXIT_INTERRUPTED = 130


def _option(name: str, *decls, **kwargs):
    """A click option whose default and help come from :class:`ScanSettings`."""
    field = next(f for f in fields(ScanSettings) if f.name == name)
    flag = "--" + name.replace("_", "-")
    kwargs.setdefault("default", field.default)
    kwargs.setdefault("show_default", field.default not in (None, False))
    return click.option(flag, *decls, name, help=field.metadata["help"], **kwargs)


def _check_separator(ctx, param, value):
    """Refuse a separator that could not be read back before any file is touched (exit 2)."""
    from .tagging.formats import separator_problem

    problem = separator_problem(value)
    if problem:
        raise click.BadParameter(f"{value!r}: {problem}")
    return value


def _fail(err: Exception) -> click.ClickException:
    """A library error as the command's one-line error, with what it names escaped (see
    :mod:`tagger.reporting.safe`): a path or label there can hold escape sequences too."""
    from .reporting.safe import escape_controls

    return click.ClickException(escape_controls(str(err)))


def db_option(fn):
    return click.option("--db", help=ScanSettings.help_for("db"))(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="genretag")
def cli():
    """Tag a music library with genres predicted from the audio."""


@cli.command()
@click.argument("path", type=click.Path(exists=True))
@_option("model")
@_option("labels", type=click.Path(exists=True, dir_okay=False))
@_option("level", type=click.Choice(LEVELS))
@_option("write_tags", is_flag=True)
@_option("dry_run", is_flag=True)
@db_option
@_option("device", type=click.Choice(["auto", "cpu", "cuda"]))
@_option("precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]))
@_option("batch_size", type=click.IntRange(min=1))
@_option("max_windows", type=click.IntRange(min=1))
@_option("top_k", type=click.IntRange(min=1))
@_option("min_confidence", type=click.FloatRange(0, 1))
@_option("workers", type=click.IntRange(min=0))
@_option("concurrent_batches", type=click.IntRange(min=1))
@_option("decode_timeout", type=click.FloatRange(min=0, min_open=True))
@_option("rescan", is_flag=True)
@_option("mode", type=click.Choice(["replace", "merge", "fill"]))
@_option("provenance", is_flag=True)
@_option("keep_mtime", is_flag=True)
@_option("verify", is_flag=True)
@_option("separator", callback=_check_separator)
@_option("engine", type=click.Choice(["local", "ray"]))
@_option("ray_address")
@_option("num_gpus_per_worker", type=click.FloatRange(min=0))
@_option("ray_inference_workers", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per track instead of tables.")
def scan(path, as_json, **options):
    """Predict the genres of every audio file under PATH and record them in the index.

    With --write-tags the genres are written into the files; with --dry-run the planned changes are
    shown and no audio file is touched.
    """
    from .index import index_errors
    from .pipeline import tag_folder
    from .reporting.views import ScanView

    if options["write_tags"] and options["dry_run"]:
        raise click.UsageError("--write-tags and --dry-run exclude each other")
    settings = ScanSettings(**options)
    view = ScanView(settings, as_json=as_json)
    try:
        with view, index_errors(settings.db_path()):
            summary = tag_folder(path, settings, on_result=view.result, on_skipped=view.skipped,
                                 on_phase=view.phase,
                                 on_discovered=view.discovered if view.shows_progress else None)
    except KeyboardInterrupt:
        view.interrupted()
        sys.exit(EXIT_INTERRUPTED)
    except GenretagError as err:
        raise _fail(err) from None
    view.finish(summary)
    if summary.failed:
        sys.exit(EXIT_FILES_FAILED)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--run", "run_id", type=int, help="Undo this run (see `genretag history`); default: the last "
                                                  "run that wrote tags. With PATHS: only its writes to them.")
@click.option("--force", is_flag=True, help="Restore the genre fields of files changed since genretag wrote "
                                            "them (by another program or a later run) too; not byte for byte.")
@click.option("--keep-mtime", is_flag=True, help="Keep the modification time of a file whose genre fields "
                                                "are restored (--force, older journals); an exact undo always "
                                                "gives back the original's.")
@db_option
def undo(paths, run_id, force, keep_mtime, db):
    """Give back the files a scan wrote, byte for byte, with their modification times.

    Each file is rebuilt from the journal, checked against the original's sha256 and put back
    atomically. PATHS (files or folders) limits the undo to the writes to them. A file changed since
    genretag wrote it is left alone and reported (exit 3), unless --force.
    """
    from .index import index_errors
    from .tagging.journal import undo as undo_writes
    from .reporting.views import UndoView

    view = UndoView()
    try:
        with view, index_errors(ScanSettings(db=db).db_path()):
            summary = undo_writes(ScanSettings(db=db).db_path(), run_id, list(paths) or None, keep_mtime,
                                  force=force, on_total=view.total, on_file=view.file)
    except KeyboardInterrupt:
        click.echo("Interrupted. The files restored so far are recorded; run the same undo again to "
                   "restore the others.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except GenretagError as err:
        raise _fail(err) from None
    if not summary.restored and not summary.failed and not summary.cancelled:
        if summary.undone_by is not None:
            what = (f"run {summary.last_run} was undone" if run_id is not None else
                    f"the last run that wrote tags (run {summary.last_run}) was undone")
            click.echo(f"Nothing to undo: {what} by run {summary.undone_by}; `genretag undo --run N` undoes "
                       "an older run.")
        else:
            click.echo("Nothing to undo.")
        return
    click.echo(_undo_line(summary))
    if summary.failed:
        sys.exit(EXIT_FILES_FAILED)


def _undo_line(summary) -> str:
    """``Restored N file(s); M failed.`` and how: byte for byte, or by their genre fields only."""
    line = f"Restored {summary.restored} file(s); {summary.failed} failed."
    exact = summary.restored - summary.fields_only
    if exact:
        line += f" {exact} byte for byte (sha256 checked, original modification time)."
    if summary.fields_only:
        line += f" {summary.fields_only} by their genre fields only (not byte for byte)."
    if summary.cancelled:
        line += f" {summary.cancelled} write(s) of a running scan cancelled before they were made."
    return line


@cli.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
def history(db, as_json):
    """List the runs recorded in the index, newest first, with what each one did."""
    from .index import Index, index_errors
    from .reporting.safe import dumps
    from .reporting.views import history_table, run_mode
    from .tagging.journal import REACHED

    db_path = ScanSettings(db=db).db_path()
    try:
        with index_errors(db_path), Index(db_path, create=False) as index:
            runs = index.runs()
            writes = {row["run_id"]: row["n"] for row in index.db.query(
                f"select run_id, count(*) as n from tag_writes where state in ({', '.join('?' * len(REACHED))}) "
                "group by run_id", REACHED)}
    except GenretagError as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(dumps([{**r, "mode": run_mode(r), "dry_run": run_mode(r) == "dry run",
                           "writes": writes.get(r["id"], 0)} for r in runs], indent=2, ensure_ascii=True))
    else:
        history_table(runs, writes)


@cli.command("demo-library")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--tracks", default=6, show_default=True, help="How many tracks to generate.")
@click.option("--seconds", default=40.0, show_default=True, help="Length of each track.")
def demo_library(folder, tracks, seconds):
    """Generate a small library of synthetic music-like tracks (several formats) to try genretag on."""
    from .demo import make_demo_library

    for path in make_demo_library(folder, tracks=tracks, seconds=seconds):
        click.echo(path)


def _register_commands() -> None:
    """Commands that live beside their library code; their modules import only click at load time."""
    from training.cli import evaluate, train

    from .reporting.commands import models, report, show

    for command in (train, evaluate, report, show, models):
        cli.add_command(command)


_register_commands()


def main():  # pragma: no cover - console-script entry point
    cli()
