"""``genretag report``, ``genretag show`` and ``genretag models``: read the index, render the answer.

Only click is imported here at module level, so ``genretag --help`` stays instant; the queries
(:mod:`tagger.reporting.report`) and the rendering (:mod:`tagger.reporting.render`) load inside the commands.
"""
from __future__ import annotations

import click

DB_HELP = "SQLite index file (default: $GENRETAG_DB or ~/.local/share/genretag/index.db)."
GROUPINGS = ("genre", "folder", "artist", "album")  # tagger.reporting.report.GROUPINGS
DEFAULT_REVIEW = 10  # tagger.reporting.report.ReportOptions.review; a test keeps the two equal


def _db_path(db: str | None):
    """The index a command reads: ``--db``, else the default. One that does not exist is refused
    (:class:`tagger.errors.IndexUnusable`), never created."""
    from ..index import check_index_path
    from ..settings import ScanSettings

    path = ScanSettings(db=db).db_path()
    check_index_path(path, create=False)
    return path


def _shown(text: str) -> str:
    from .safe import escape_controls

    return escape_controls(text)


def _fail(err: Exception | str):
    """The one-line error of a command; what it names (paths, labels) escaped, as in every output."""
    return click.ClickException(_shown(str(err)))


def _emit(text: str, output: str | None) -> None:
    if output:
        with open(output, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        click.echo(_shown(f"Wrote {output}"), err=True)
    else:
        click.echo(text, nl=not text.endswith("\n"))


@click.command("report")
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--db", help=DB_HELP)
@click.option("--model", help="Report this model's predictions: a model id or path (see `genretag models`), or "
                              "a fingerprint or its first 4+ hex digits. Default: for each track, the model "
                              "that last scanned it.")
@click.option("--folder", "folders", multiple=True, type=click.Path(file_okay=False),
              help="Only tracks under this folder (repeatable: under any of them).")
@click.option("--min-confidence", type=click.FloatRange(0, 1),
              help="Only tracks whose top score is at least this (failed and unpredicted ones drop out); "
                   "with --disputed, also the threshold every genre is judged by.")
@click.option("--since", help="Only tracks predicted since: an ISO date or date-time (2024-05-01, "
                              "2024-05-01T18:30) or an age (90s, 30m, 12h, 7d, 2w).")
@click.option("--by", type=click.Choice(GROUPINGS), default="genre", show_default=True,
              help="Group the distribution by genre (tagged tracks) or by folder, artist or album "
                   "(all tracks).")
@click.option("--review", type=click.IntRange(min=0), default=DEFAULT_REVIEW, show_default=True,
              help="How many of the least confident tracks to list for review.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--csv", "as_csv", is_flag=True,
              help="Print the distribution (one row per group) as CSV. Every cell is quoted, and text that "
                   "a spreadsheet would run as a formula (starting with = + - @) gets a leading ' "
                   "(\"-core\" is written '-core).")
@click.option("--tracks", is_flag=True, help="With --csv: one row per track instead; with --json: add them.")
@click.option("--disputed", is_flag=True,
              help="Audit your tags: list the tracks whose own genres (never the ones genretag wrote) the model "
                   "confidently contradicts: its top genre is none of them and scores at least its threshold "
                   "(the model's, or --min-confidence), most confident first. With --csv: one row per such "
                   "track; with --json and --html: added.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write --json/--csv here, not to stdout.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report (charts, sortable track table) to this file.")
def report(path, db, model, folders, min_confidence, since, by, review, as_json, as_csv, tracks, disputed,
           output, html_file):
    """Genre distribution, statuses, confidence and the tracks to review, for the indexed library (or
    the part of it under PATH). With --disputed, the tracks whose genre tag the model contradicts."""
    from ..errors import GenretagError
    from ..index import index_errors
    from .report import ReportOptions, build_report, parse_since

    if sum(map(bool, (as_json, as_csv, html_file))) > 1:
        raise click.UsageError("choose one of --json, --csv and --html")
    if output and not (as_json or as_csv):
        raise click.UsageError("--output goes with --json or --csv (use --html FILE for HTML)")
    if as_csv and tracks and disputed:
        raise click.UsageError("--csv writes the tracks (--tracks) or the disputed ones (--disputed), not both")
    try:
        since_ts = parse_since(since) if since else None
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--since") from None
    options = ReportOptions(path=path, folders=tuple(folders), model=model, min_confidence=min_confidence,
                            since=since_ts, by=by, review=review, tracks=bool(html_file or tracks),
                            disputed=disputed)
    try:
        db_path = _db_path(db)
        with index_errors(db_path):
            result = build_report(db_path, options)
    except GenretagError as err:
        raise _fail(err) from None
    from . import render

    if html_file:
        with open(html_file, "w", encoding="utf-8") as fh:
            fh.write(render.report_html(result))
        click.echo(_shown(f"Wrote {html_file} ({result.total:,} tracks)"), err=True)
    elif as_json:
        _emit(render.report_json(result), output)
    elif as_csv:
        _emit(render.report_csv(result, tracks=tracks, disputed=disputed), output)
    elif disputed:
        render.disputed_terminal(result)
    else:
        render.report_terminal(result)


@click.command("show")
@click.argument("file", type=click.Path())
@click.option("--db", help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def show(file, db, as_json):
    """Everything known about one track: its tags now, its index row, each model's prediction (ranking,
    per-window labels) and the history of genre writes."""
    from ..errors import GenretagError
    from ..index import index_errors
    from .report import track_details
    from .safe import dumps

    try:
        db_path = _db_path(db)
        with index_errors(db_path):
            details = track_details(db_path, file)
    except GenretagError as err:
        raise _fail(err) from None
    if details["track"] is None:
        if not details["exists"]:
            raise _fail(f"{details['path']}: no such file, and not in the index")
        if details["tags_error"]:
            raise _fail(f"{details['path']}: not an audio file genretag reads ({details['tags_error']}), "
                        "and not in the index")
    if as_json:
        click.echo(dumps(details, indent=2))
    else:
        from .render import show_terminal

        show_terminal(details)


@click.group("models", invoke_without_command=True)
@click.option("--db", help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the models as JSON.")
@click.pass_context
def models(ctx, db, as_json):
    """The models the index has seen (with prediction counts) and the checkpoints available to scan with.

    `genretag models use MODEL` chooses the model of later scans."""
    if ctx.invoked_subcommand is not None:
        return
    from ..errors import GenretagError
    from ..index import index_errors
    from .report import model_overview
    from .safe import dumps

    try:
        db_path = _db_path(db)
        with index_errors(db_path):
            overview = model_overview(db_path)
    except GenretagError as err:
        raise _fail(err) from None
    if as_json:
        click.echo(dumps(overview, indent=2))
    else:
        from .render import models_terminal

        models_terminal(overview)


@models.command("use")
@click.argument("model")
def use(model):
    """Make MODEL (a checkpoint folder, or builtin:musicnn-msd / builtin:musicnn-mtt) the model of later
    scans. --model and $GENRETAG_MODEL still win."""
    from ..errors import GenretagError
    from ..models.identity import use_model

    try:
        stored = use_model(model)
    except GenretagError as err:
        raise _fail(err) from None
    click.echo(f"later scans use {stored}")
