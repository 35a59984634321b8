"""The report, the track and the model list, drawn: rich tables in the terminal, JSON, CSV, and one
self-contained HTML file (inline SVG charts, inline JS; nothing is fetched from anywhere).

Everything here takes the plain data of :mod:`tagger.reporting.report` and computes nothing from the index.
Every string from the index (paths, tags, labels, errors, model ids) is shown through
:mod:`tagger.reporting.safe`: escaped, as a rich ``Text`` (never parsed as markup), as a neutralised CSV
cell, or autoescaped by Jinja2.
"""
from __future__ import annotations

import csv
import datetime as dt
import functools
import io

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .safe import csv_cell, dumps, rich_text as T, shown

TERMINAL_GROUPS = 25  # groups listed in the terminal; --json/--csv/--html have them all
TERMINAL_FAILED = 50
BAR_WIDTH = 32
HTML_BARS = 30  # groups drawn in the HTML chart
HTML_TABLE_ROWS = 1000  # table rows drawn at once; filtering and sorting see every track
STATUS_NAMES = {"ok": "tagged", "abstained": "abstained", "failed": "failed", "unpredicted": "not predicted"}
STATUS_STYLES = {"ok": "green", "abstained": "yellow", "failed": "red", "unpredicted": "dim"}
GROUP_CSV_COLUMNS = ("key", "tracks", "percent", "ok", "abstained", "failed", "unpredicted",
                     "mean_confidence", "top_genre")
TRACK_CSV_COLUMNS = ("path", "artist", "album", "status", "genre", "confidence", "model_id")
DISPUTED_CSV_COLUMNS = ("path", "artist", "album", "user_genres", "origin", "file_genres", "genre", "score",
                        "threshold", "status", "model_id")
TERMINAL_DISPUTED = 50
GENRE_JOIN = "; "
ORIGINS = {"tags": "in its tags", "before-genretag": "before genretag wrote", "edited": "edited since genretag wrote"}
"""Where a track's own genres come from (:mod:`tagger.tagging.user_genres`), as the outputs say it."""


def _when(stamp: float | None) -> str:
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else "—"


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "—"


def _conf(value) -> str:
    return f"{value:.3f}" if value is not None else "—"


def _filters(options: dict) -> str:
    """The report's filters as the options that set them."""
    parts = []
    for key, value in options.items():
        if value in (None, (), []) or key in ("by", "review"):
            continue
        if key == "since":
            value = _when(value)
        elif key == "folders":
            value = ", ".join(value)
        flag = "folder" if key == "folders" else key.replace("_", "-")
        parts.append(f"--{flag} {value}")
    return "; ".join(parts)


def bar(value: float, maximum: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar in eighths of a character."""
    if maximum <= 0 or value <= 0:
        return ""
    eighths = max(1, round(8 * width * value / maximum))
    return "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]


# -- terminal ------------------------------------------------------------------------------------------

def report_terminal(report, console: Console | None = None) -> None:
    out = console or Console(highlight=False)
    status, total = report.status, report.total
    out.print(Text.assemble(("genretag report", "bold"), f" — {total:,} track(s) in ", shown(report.db)))
    if filters := _filters(report.options):
        out.print(T("filters: " + filters))
    if report.models:
        out.print(T("predictions of: " + _models(report.models)))
    if not total:
        out.print(Text("No track matches.", style="yellow"))
        return

    table = Table(title="Status", title_justify="left")
    for name, justify in (("status", "left"), ("tracks", "right"), ("share", "right"), ("", "left")):
        table.add_column(name, justify=justify)
    for key in ("ok", "abstained", "failed", "unpredicted"):
        table.add_row(Text(STATUS_NAMES[key], style=STATUS_STYLES[key]), f"{status[key]:,}",
                      _pct(status[key], total), Text(bar(status[key], total, 20), style=STATUS_STYLES[key]))
    table.add_row("untagged (all but tagged)", f"{status['untagged']:,}", _pct(status["untagged"], total), "")
    table.add_row("genres written to files", f"{status['written']:,}", _pct(status["written"], total), "")
    out.print(table)

    _groups_table(out, report)
    _histogram_table(out, report)

    if report.review:
        table = Table(title=f"Review queue: the {len(report.review)} least confident", title_justify="left")
        for name in ("confidence", "status", "genre", "path"):
            table.add_column(name, overflow="fold", justify="right" if name == "confidence" else "left")
        for row in report.review:
            table.add_row(_conf(row["confidence"]), _status(row["status"]), T(row["genre"] or "—"), T(row["path"]))
        out.print(table)
    if report.failed:
        table = Table(title=f"Failed: {len(report.failed):,} file(s)", title_justify="left")
        table.add_column("path", overflow="fold")
        table.add_column("reason", overflow="fold", style="red")
        for row in report.failed[:TERMINAL_FAILED]:
            table.add_row(T(row["path"]), T(row["error"] or "—"))
        out.print(table)
        if len(report.failed) > TERMINAL_FAILED:
            out.print(f"… and {len(report.failed) - TERMINAL_FAILED:,} more (--json lists all)")


def disputed_terminal(report, console: Console | None = None) -> None:
    """``genretag report --disputed``: the tracks whose own genres the model confidently contradicts,
    most confident first, and the thresholds that decided it."""
    out = console or Console(highlight=False)
    rows = report.disputed or []
    out.print(Text.assemble(("genretag report --disputed", "bold"), f" — {report.total:,} track(s) in ",
                            shown(report.db)))
    if filters := _filters(report.options):
        out.print(T("filters: " + filters))
    for m in report.disputed_models or []:
        out.print(T(f"thresholds of {m['model_id'] or '?'} ({m['fingerprint']}): {_thresholds(m)}"))
    if not rows:
        out.print(Text("No track's own genres are confidently contradicted.", style="green"))
        return
    table = Table(title=f"Disputed: {len(rows):,} track(s) whose own genres the model contradicts",
                  title_justify="left")
    for name in ("score", "model says", "their genres", "path", "model"):
        table.add_column(name, overflow="fold", justify="right" if name == "score" else "left")
    for row in rows[:TERMINAL_DISPUTED]:
        table.add_row(_conf(row["score"]), T(row["genre"], style="bold"), _own_genres(row), T(row["path"]),
                      T(row["model_id"] or "—"))
    out.print(table)
    if len(rows) > TERMINAL_DISPUTED:
        out.print(f"… and {len(rows) - TERMINAL_DISPUTED:,} more (--json, --csv or --html lists all)")


def _thresholds(model: dict) -> str:
    own = ", ".join(f"{genre} {t:.2f}" for genre, t in sorted(model["label_thresholds"].items()))
    where = {"model": "the model's", "fallback": "the fallback: the model's files are not here",
             "--min-confidence": "--min-confidence"}[model["thresholds_from"]]
    return f"{model['min_confidence']:.2f}{f' (per genre: {own})' if own else ''}, {where}"


def _own_genres(row: dict) -> Text:
    text = T(GENRE_JOIN.join(row["user_genres"]))
    if row["origin"] != "tags":
        text.append(f" ({ORIGINS[row['origin']]}; the file holds: ", style="dim")
        text.append(shown(GENRE_JOIN.join(row["file_genres"]) or "none"), style="dim")
        text.append(")", style="dim")
    return text


def _models(models: list[dict]) -> str:
    return ", ".join(f"{m['model_id']} ({m['fingerprint']}, {m['tracks']:,})" for m in models)


def _status(status: str) -> Text:
    return T(STATUS_NAMES.get(status, status), style=STATUS_STYLES.get(status, ""))


def _groups_table(out: Console, report) -> None:
    groups = report.groups
    title = {"genre": "Genres (tagged tracks)"}.get(report.by, f"By {report.by}")
    table = Table(title=title, title_justify="left")
    table.add_column(report.by, overflow="fold", min_width=12)
    table.add_column("tracks", justify="right")
    table.add_column("share", justify="right")
    table.add_column("", no_wrap=True)
    by_genre = report.by == "genre"
    if not by_genre:
        for name in ("tagged", "failed", "top genre"):
            table.add_column(name, justify="left" if name == "top genre" else "right")
    table.add_column("conf.", justify="right")
    # the bar takes what the other columns leave of the terminal
    width = max(3, min(BAR_WIDTH, out.width - (46 if by_genre else 78)))
    top = max((g["tracks"] for g in groups), default=0)
    for g in groups[:TERMINAL_GROUPS]:
        cells = [T(g["key"]), f"{g['tracks']:,}", f"{g['percent']:.1f}%",
                 Text(bar(g["tracks"], top, width), style="cyan")]
        if not by_genre:
            cells += [f"{g['ok']:,}", f"{g['failed']:,}", T(g["top_genre"] or "—")]
        table.add_row(*cells, _conf(g["mean_confidence"]))
    out.print(table)
    if len(groups) > TERMINAL_GROUPS:
        rest = groups[TERMINAL_GROUPS:]
        out.print(f"… {len(rest):,} more group(s) with {sum(g['tracks'] for g in rest):,} track(s) "
                  "(--json, --csv or --html lists all)")


def _histogram_table(out: Console, report) -> None:
    table = Table(title="Confidence (top score of each prediction)", title_justify="left")
    for name, justify in (("score", "left"), ("tracks", "right"), ("tagged", "right"), ("abstained", "right"),
                          ("", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    top = max((b["tracks"] for b in report.confidence), default=0)
    for b in report.confidence:
        shape = Text(bar(b["ok"], top), style="green")
        shape.append(bar(b["abstained"], top), style="yellow")
        table.add_row(f"{b['low']:.1f}–{b['high']:.1f}", f"{b['tracks']:,}", f"{b['ok']:,}",
                      f"{b['abstained']:,}", shape)
    out.print(table)


# -- json / csv ----------------------------------------------------------------------------------------

def report_json(report) -> str:
    """The report as data: every string exactly as the index holds it (``\\u``-escaped where a terminal
    would act on it, see :func:`tagger.reporting.safe.dumps`)."""
    return dumps(report.as_json(), indent=2)


def report_csv(report, tracks: bool = False, disputed: bool = False) -> str:
    """One row per group (the distribution), with ``tracks`` one row per track, or with ``disputed``
    one row per disputed track (genre lists joined with ``"; "``).

    Every cell is quoted, text is escaped, and text that a spreadsheet would run as a formula (starting
    with ``=``, ``+``, ``-``, ``@``, tab or CR) starts with a single quote: see
    :func:`tagger.reporting.safe.csv_cell`. Quoting every cell keeps a ``;`` or ``,`` inside a name from
    starting a cell in a spreadsheet that splits on either.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    if disputed:
        writer.writerow(DISPUTED_CSV_COLUMNS)
        writer.writerows([_csv_value(_joined(d, c)) for c in DISPUTED_CSV_COLUMNS] for d in report.disputed or [])
    elif tracks:
        writer.writerow(TRACK_CSV_COLUMNS)
        writer.writerows([_csv_value(t.get(c)) for c in TRACK_CSV_COLUMNS] for t in report.tracks or [])
    else:
        writer.writerow([report.by if c == "key" else c for c in GROUP_CSV_COLUMNS])
        writer.writerows([_csv_value(g[c]) for c in GROUP_CSV_COLUMNS] for g in report.groups)
    return buf.getvalue()


def _joined(row: dict, column: str):
    value = row.get(column)
    return GENRE_JOIN.join(value) if isinstance(value, list) else value


def _csv_value(value):
    return round(value, 6) if isinstance(value, float) else ("" if value is None else csv_cell(value))


# -- html ----------------------------------------------------------------------------------------------

def report_html(report) -> str:
    """One self-contained page: inline CSS, inline SVG charts, a sortable/filterable track table.

    Rendered by Jinja2 with autoescaping (``templates/report.html``); every value the template prints
    is escaped for the terminal too (its ``finalize``), and the track rows for the table's script are
    embedded with ``tojson``, which escapes ``<``, ``>``, ``&`` and ``'``: nothing in the data can close
    the ``<script>`` element or open a comment in it."""
    status, total = report.status, report.total
    tracks = [[shown(t["path"]), shown(t["status"]), _shown_or_none(t["genre"]), t["confidence"],
               _shown_or_none(t["artist"]), _shown_or_none(t["album"])] for t in report.tracks or []]
    return _templates().get_template("report.html").render(
        generated=_when(report.generated_at), db=report.db, total=f"{total:,}",
        cards=[{"key": k, "count": f"{status[k]:,}", "name": STATUS_NAMES[k], "share": _pct(status[k], total)}
               for k in ("ok", "abstained", "failed", "unpredicted")],
        filters=_filters(report.options), models=_models(report.models),
        groups_title={"genre": "Genres (tagged tracks)"}.get(report.by, f"Tracks by {report.by}"),
        groups=groups_chart(report.groups[:HTML_BARS]), groups_hidden=max(0, len(report.groups) - HTML_BARS),
        confidence=confidence_chart(report.confidence),
        review=[{**r, "confidence": _conf(r["confidence"]), "status_name": STATUS_NAMES.get(r["status"], r["status"]),
                 "genre": r["genre"] or "—"} for r in report.review],
        failed=[{"path": r["path"], "error": r["error"] or "—"} for r in report.failed],
        disputed=None if report.disputed is None else [
            {**d, "score": _conf(d["score"]), "threshold": _conf(d["threshold"]),
             "user_genres": GENRE_JOIN.join(d["user_genres"]), "origin": ORIGINS[d["origin"]],
             "file_genres": GENRE_JOIN.join(d["file_genres"]) or "none", "model_id": d["model_id"] or "—"}
            for d in report.disputed],
        disputed_models=[f"{m['model_id'] or '?'} ({m['fingerprint']}): {_thresholds(m)}"
                         for m in report.disputed_models or []],
        tracks=tracks, max_rows=HTML_TABLE_ROWS)


def _shown_or_none(value):
    return None if value is None else shown(value)


@functools.cache
def _templates():
    """The Jinja2 environment of the HTML report (jinja2 loads only when a page is written)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined
    from markupsafe import Markup

    env = Environment(loader=PackageLoader("tagger.reporting", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      finalize=lambda value: value if isinstance(value, Markup) else shown(value))
    env.policies["json.dumps_function"] = dumps  # raw DEL, C1 or U+2028 never reach the page either
    env.policies["json.dumps_kwargs"] = {"separators": (",", ":")}
    return env


def groups_chart(groups: list[dict]) -> dict:
    """Horizontal bars, one per group, labelled with the group and its count and share: the geometry
    the template draws."""
    row, label_w, bar_w, width = 22, 220, 420, 800
    top = max((g["tracks"] for g in groups), default=0)
    bars = []
    for i, g in enumerate(groups):
        y, w = i * row, max(1.0, bar_w * g["tracks"] / top)
        name = shown(g["key"])
        bars.append({"name": name, "short": name if len(name) <= 34 else "…" + name[-33:],
                     "label": f"{g['tracks']:,} · {g['percent']:.1f}%",
                     "title": f"{g['tracks']:,} ({g['percent']:.1f}%)",
                     "label_x": label_w - 8, "text_y": y + 15, "bar_x": label_w, "bar_y": y + 3,
                     "bar_w": f"{w:.1f}", "bar_h": row - 6, "value_x": f"{label_w + w + 6:.1f}"})
    return {"bars": bars, "width": width, "height": len(groups) * row + 4}


def confidence_chart(bins: list[dict]) -> dict:
    """Vertical bars per confidence bin, tagged (green) stacked under abstained (amber): the geometry
    the template draws."""
    width, height, pad, axis = 640, 220, 40, 24
    top = max((b["tracks"] for b in bins), default=0) or 1
    slot = (width - pad) / max(len(bins), 1)
    scale = (height - axis - 16) / top
    base = height - axis
    columns = []
    for i, b in enumerate(bins):
        x, ok_h, ab_h = pad + i * slot + 3, b["ok"] * scale, b["abstained"] * scale
        columns.append({"title": f"{b['low']:.1f}–{b['high']:.1f}: {b['tracks']:,} ({b['ok']:,} tagged, "
                                 f"{b['abstained']:,} abstained)",
                        "x": f"{x:.1f}", "w": f"{slot - 6:.1f}", "ok_y": f"{base - ok_h:.1f}", "ok_h": f"{ok_h:.1f}",
                        "ab_y": f"{base - ok_h - ab_h:.1f}", "ab_h": f"{ab_h:.1f}",
                        "label_x": f"{x + (slot - 6) / 2:.1f}", "label": f"{b['low']:.1f}"})
    return {"columns": columns, "width": width, "height": height, "pad": pad, "base": base, "top": f"{top:,}",
            "label_y": height - 8}


# -- show ----------------------------------------------------------------------------------------------

def show_terminal(details: dict, console: Console | None = None) -> None:
    out = console or Console(highlight=False)
    out.print(T(details["path"], style="bold"))
    if not details["exists"]:
        out.print(Text("The file is not on disk (any more).", style="yellow"))
    tags = details["tags"]
    if tags is not None:
        table = Table(title="Tags in the file now", title_justify="left", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        table.add_row("genres", T(", ".join(tags.get("genres") or []) or "—"))
        for name in ("artist", "album", "title", "format"):
            table.add_row(name, T(tags.get(name) or "—"))
        out.print(table)
    elif details["tags_error"]:
        out.print(Text.assemble(("tags unreadable:", "red"), " ", shown(details["tags_error"])))
    track = details["track"]
    if track is None:
        out.print(Text.assemble(("Not in the index", "yellow"), " (no scan has seen this file)."))
        return
    _index_table(out, track)
    for p in details["predictions"]:
        _prediction(out, p)
    if details["writes"]:
        table = Table(title="Tag writes", title_justify="left")
        for name in ("id", "run", "written", "before", "after", "undone"):
            table.add_column(name, overflow="fold")
        for w in details["writes"]:
            table.add_row(str(w["id"]), str(w["run_id"]), _when(w["written_at"]),
                          T(", ".join(w["old_genres"] or []) or "—"), T(", ".join(w["new_genres"] or []) or "—"),
                          _when(w["undone_at"]) if w["undone_at"] else "no")
        out.print(table)
    else:
        out.print("No tag writes recorded.")


def _index_table(out: Console, track: dict) -> None:
    table = Table(title="Index", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name in ("status", "error", "size", "mtime_ns", "duration", "codec", "genres", "artist", "album",
                 "title", "model_id", "fingerprint", "run_id", "updated_at"):
        value = track.get(name)
        if name == "updated_at":
            value = _when(value)
        elif name == "genres":
            value = ", ".join(value or []) or "—"
        elif name == "duration" and value is not None:
            value = f"{value:.1f} s"
        if value is not None:
            table.add_row(name, T(value))
    out.print(table)


def _prediction(out: Console, p: dict) -> None:
    """One model's prediction of the track: its ranking with bars, its status and per-window labels."""
    title = T(f"Prediction by {p['model_id'] or '?'} ({p['fingerprint']})", style="bold")
    out.print(title + (" — current" if p["current"] else ""))
    table = Table()
    table.add_column("rank", justify="right")
    table.add_column("label")
    table.add_column("score", justify="right")
    table.add_column("", no_wrap=True)
    chosen = set(p.get("labels") or [])
    for i, (label, score) in enumerate(p.get("ranking") or [], 1):
        table.add_row(str(i), T(label, style="bold green" if label in chosen else ""), f"{score:.3f}",
                      Text(bar(score, 1.0, 20), style="cyan"))
    out.print(table)
    line = (f"status {p['status']}, genres written: {'yes' if p['written'] else 'no'}, "
            f"{p['windows'] or 0} window(s), predicted {_when(p['created_at'])}")
    if p.get("error"):
        line += f", error: {p['error']}"
    out.print(T(line))
    windows = p.get("window_labels") or []
    if windows:
        out.print(T("per window: " + " | ".join(
            ", ".join(f"{label} {score:.2f}" for label, score in w) or "—" for w in windows)))


# -- models --------------------------------------------------------------------------------------------

def _named_model(name: str, fingerprint: str | None) -> Text:
    """A model's name over its fingerprint (dimmed), for a table cell."""
    return Text.assemble(shown(name), "\n", (shown(fingerprint) or "—", "dim"))


def models_terminal(overview: dict, console: Console | None = None) -> None:
    """The models the index has seen and those a scan can use. A model's name and its fingerprint share a
    cell, one above the other, so every heading and figure stays whole in 80 columns."""
    from rich import box

    out = console or Console(highlight=False)
    out.print(Text.assemble(("Models in the index", "bold"), " ", shown(overview["db"])))
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("model, fingerprint", overflow="fold")
    for name in ("preds", "ok", "abst.", "failed", "latest"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("last seen", no_wrap=True)
    for m in overview["seen"]:
        table.add_row(_named_model(m["model_id"] or "—", m["fingerprint"]), f"{m['predictions']:,}",
                      f"{m['ok']:,}", f"{m['abstained']:,}", f"{m['failed']:,}", f"{m['current_tracks']:,}",
                      _when(m["last_seen"])[:10])
    if not overview["seen"]:
        table.add_row("(none yet)", *[""] * 6)
    out.print(table)
    out.print("preds: predictions stored; latest: tracks whose latest scan used the model "
              "(--json has labels and first/last seen)")
    table = Table(title="Available checkpoints", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("model, fingerprint", overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("in index", no_wrap=True)
    table.add_column("note", overflow="fold")
    for a in overview["available"]:
        note = ["default"] if a.get("default") else []
        if a.get("missing"):
            note.append("folder missing")
        note += [f"{k}={round(v, 3) if isinstance(v, float) else v}" for k, v in (a.get("info") or {}).items()
                 if not isinstance(v, (dict, list))]
        table.add_row(_named_model(a["model"], a["fingerprint"]), T(a["kind"]), "yes" if a["in_index"] else "no",
                      Text("\n").join(T(item) for item in note))  # one item a line
    out.print(table)
    out.print(Text.assemble("A plain `genretag scan` uses: ", shown(overview["default"])))
