"""The report, the track and the model list, drawn: rich tables in the terminal, JSON, CSV, and one
self-contained HTML file (inline SVG charts, inline JS; nothing is fetched from anywhere).

Everything here takes the plain data of :mod:`tagger.reporting.report` and computes nothing from the index.
"""
from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

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


def _when(stamp: float | None) -> str:
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else "—"


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "—"


def _conf(value) -> str:
    return f"{value:.3f}" if value is not None else "—"


def _filters(options: dict) -> str:
    """The report's filters as the options that set them."""
    shown = []
    for key, value in options.items():
        if value in (None, (), []) or key in ("by", "review"):
            continue
        if key == "since":
            value = _when(value)
        elif key == "folders":
            value = ", ".join(value)
        flag = "folder" if key == "folders" else key.replace("_", "-")
        shown.append(f"--{flag} {value}")
    return "; ".join(shown)


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
    out.print(f"[bold]genretag report[/] — {total:,} track(s) in {escape(report.db)}")
    if filters := _filters(report.options):
        out.print("filters: " + escape(filters))
    if report.models:
        out.print("predictions of: " + escape(", ".join(
            f"{m['model_id']} ({m['fingerprint']}, {m['tracks']:,})" for m in report.models)))
    if not total:
        out.print("[yellow]No track matches.[/]")
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
            state = Text(STATUS_NAMES[row["status"]], style=STATUS_STYLES[row["status"]])
            table.add_row(_conf(row["confidence"]), state, escape(row["genre"] or "—"), escape(row["path"]))
        out.print(table)
    if report.failed:
        table = Table(title=f"Failed: {len(report.failed):,} file(s)", title_justify="left")
        table.add_column("path", overflow="fold")
        table.add_column("reason", overflow="fold", style="red")
        for row in report.failed[:TERMINAL_FAILED]:
            table.add_row(escape(row["path"]), escape(row["error"] or "—"))
        out.print(table)
        if len(report.failed) > TERMINAL_FAILED:
            out.print(f"… and {len(report.failed) - TERMINAL_FAILED:,} more (--json lists all)")


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
        cells = [escape(str(g["key"])), f"{g['tracks']:,}", f"{g['percent']:.1f}%",
                 Text(bar(g["tracks"], top, width), style="cyan")]
        if not by_genre:
            cells += [f"{g['ok']:,}", f"{g['failed']:,}", escape(g["top_genre"] or "—")]
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
    return json.dumps(report.as_json(), indent=2, ensure_ascii=False)


def report_csv(report, tracks: bool = False) -> str:
    """One row per group (the distribution), or with ``tracks`` one row per track."""
    buf = io.StringIO()
    if tracks:
        writer = csv.DictWriter(buf, TRACK_CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(report.tracks or [])
    else:
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([report.by if c == "key" else c for c in GROUP_CSV_COLUMNS])
        for g in report.groups:
            writer.writerow([_csv_value(g[c]) for c in GROUP_CSV_COLUMNS])
    return buf.getvalue()


def _csv_value(value):
    return round(value, 6) if isinstance(value, float) else ("" if value is None else value)


# -- html ----------------------------------------------------------------------------------------------

def report_html(report) -> str:
    """One self-contained page: inline CSS, inline SVG charts, a sortable/filterable track table."""
    e = html.escape
    status, total = report.status, report.total
    cards = "".join(
        f'<div class="card {k}"><b>{status[k]:,}</b>'
        f'<span>{STATUS_NAMES[k]} · {_pct(status[k], total)}</span></div>'
        for k in ("ok", "abstained", "failed", "unpredicted"))
    filters = _filters(report.options)
    models = ", ".join(f"{m['model_id']} ({m['fingerprint']}, {m['tracks']:,})" for m in report.models)
    review = "".join(f"<tr><td class=num>{_conf(r['confidence'])}</td><td class={r['status']}>"
                     f"{STATUS_NAMES[r['status']]}</td><td>{e(r['genre'] or '—')}</td>"
                     f"<td>{e(r['path'])}</td></tr>" for r in report.review)
    failed = "".join(f"<tr><td>{e(r['path'])}</td><td>{e(r['error'] or '—')}</td></tr>"
                     for r in report.failed)
    tracks = json.dumps([[t["path"], t["status"], t["genre"], t["confidence"], t["artist"], t["album"]]
                         for t in report.tracks or []], ensure_ascii=False, separators=(",", ":"))
    tracks = tracks.replace("<", "\\u003c")  # nothing in the data can close the <script> element
    title = {"genre": "Genres (tagged tracks)"}.get(report.by, f"Tracks by {report.by}")
    return HTML_PAGE.format(
        generated=e(_when(report.generated_at)), db=e(report.db), total=f"{total:,}", cards=cards,
        filters=f"<p>filters: {e(filters)}</p>" if filters else "",
        models=f"<p>predictions of: {e(models)}</p>" if models else "",
        groups_title=e(title), groups_svg=groups_svg(report.groups[:HTML_BARS]),
        groups_note=(f"<p class=note>{len(report.groups) - HTML_BARS:,} smaller group(s) not drawn.</p>"
                     if len(report.groups) > HTML_BARS else ""),
        histogram_svg=histogram_svg(report.confidence), review=review or "<tr><td colspan=4>none</td></tr>",
        failed_count=f"{len(report.failed):,}", failed=failed or "<tr><td colspan=2>none</td></tr>",
        tracks=tracks, max_rows=HTML_TABLE_ROWS, style=HTML_STYLE, script=HTML_SCRIPT)


def groups_svg(groups: list[dict]) -> str:
    """Horizontal bars, one per group, labelled with the group and its count and share."""
    if not groups:
        return '<svg class="chart" width="600" height="30"><text x="0" y="20">no tracks</text></svg>'
    row, label_w, bar_w, width = 22, 220, 420, 800
    top = max(g["tracks"] for g in groups)
    parts = []
    for i, g in enumerate(groups):
        y = i * row
        w = max(1.0, bar_w * g["tracks"] / top)
        name = str(g["key"])
        short = name if len(name) <= 34 else "…" + name[-33:]
        parts.append(
            f'<g class="bar"><title>{html.escape(name)}: {g["tracks"]:,} ({g["percent"]:.1f}%)</title>'
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{html.escape(short)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" rx="2"></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{g["tracks"]:,} · {g["percent"]:.1f}%</text></g>')
    height = len(groups) * row + 4
    return (f'<svg class="chart" id="groups-chart" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def histogram_svg(bins: list[dict]) -> str:
    """Vertical bars per confidence bin, tagged (green) stacked under abstained (amber)."""
    width, height, pad, axis = 640, 220, 40, 24
    top = max((b["tracks"] for b in bins), default=0) or 1
    slot = (width - pad) / max(len(bins), 1)
    scale = (height - axis - 16) / top
    parts = [f'<line x1="{pad}" y1="{height - axis}" x2="{width}" y2="{height - axis}" class="axis"></line>',
             f'<text x="{pad - 6}" y="{height - axis}" text-anchor="end">0</text>',
             f'<text x="{pad - 6}" y="22" text-anchor="end">{top:,}</text>']
    for i, b in enumerate(bins):
        x = pad + i * slot + 3
        ok_h, ab_h = b["ok"] * scale, b["abstained"] * scale
        base = height - axis
        parts.append(f'<g class="bin"><title>{b["low"]:.1f}–{b["high"]:.1f}: {b["tracks"]:,} '
                     f'({b["ok"]:,} tagged, {b["abstained"]:,} abstained)</title>'
                     f'<rect class="ok" x="{x:.1f}" y="{base - ok_h:.1f}" width="{slot - 6:.1f}" '
                     f'height="{ok_h:.1f}"></rect>'
                     f'<rect class="abstained" x="{x:.1f}" y="{base - ok_h - ab_h:.1f}" width="{slot - 6:.1f}" '
                     f'height="{ab_h:.1f}"></rect>'
                     f'<text x="{x + (slot - 6) / 2:.1f}" y="{height - 8}" text-anchor="middle">'
                     f'{b["low"]:.1f}</text></g>')
    return (f'<svg class="chart" id="confidence-chart" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


HTML_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1100px;
 color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}p{margin:4px 0;color:#555}
.cards{display:flex;gap:12px;margin:16px 0}.card{flex:1;border-radius:8px;padding:10px 14px;background:#f3f5f8}
.card b{display:block;font-size:22px}.card.ok{border-left:5px solid #2e9d57}
.card.abstained{border-left:5px solid #d89a10}.card.failed{border-left:5px solid #cc3b3b}
.card.unpredicted{border-left:5px solid #999}
svg.chart{font-size:12px;max-width:100%;height:auto}svg .bar rect{fill:#3a78c2}svg .bar:hover rect{fill:#1f4f8a}
svg rect.ok{fill:#2e9d57}svg rect.abstained{fill:#e0a82e}svg .axis{stroke:#888}svg text{fill:#333}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #e3e6eb;
 vertical-align:top;word-break:break-all}th{background:#f3f5f8;position:sticky;top:0}
#tracks th{cursor:pointer;user-select:none}#tracks th.sorted::after{content:" ▲"}
#tracks th.sorted.desc::after{content:" ▼"}
td.num{text-align:right;white-space:nowrap;word-break:normal}td.ok{color:#2e9d57}td.abstained{color:#b07c00}
td.failed{color:#cc3b3b}td.unpredicted{color:#888}.controls{display:flex;gap:8px;margin:8px 0}
.controls input{flex:1;padding:5px 8px}.note{font-size:12px;color:#777}
"""

HTML_SCRIPT = """
(function(){
  var rows=JSON.parse(document.getElementById('tracks-data').textContent);
  var cols=['path','status','genre','confidence','artist','album'];
  var names={ok:'tagged',abstained:'abstained',failed:'failed',unpredicted:'not predicted'};
  var sortCol=3, sortDir=1;
  var body=document.querySelector('#tracks tbody'), count=document.getElementById('count');
  var text=document.getElementById('filter'), status=document.getElementById('status');
  function cmp(a,b){var x=a[sortCol],y=b[sortCol];
    if(x===null||x===undefined)return 1; if(y===null||y===undefined)return -1;
    return (x<y?-1:x>y?1:0)*sortDir;}
  function render(){
    var q=text.value.toLowerCase(), s=status.value;
    var shown=rows.filter(function(r){
      if(s&&r[1]!==s)return false;
      if(!q)return true;
      for(var i=0;i<r.length;i++){if(r[i]!==null&&String(r[i]).toLowerCase().indexOf(q)>=0)return true;}
      return false;});
    shown.sort(cmp);
    var frag=document.createDocumentFragment();
    shown.slice(0,MAX_ROWS).forEach(function(r){
      var tr=document.createElement('tr');
      r.forEach(function(v,i){var td=document.createElement('td');
        if(i===3){td.className='num';td.textContent=v===null?'—':v.toFixed(3);}
        else if(i===1){td.className=v;td.textContent=names[v]||v;}
        else td.textContent=v===null?'—':v;
        tr.appendChild(td);});
      frag.appendChild(tr);});
    body.replaceChildren(frag);
    count.textContent=shown.length.toLocaleString()+' of '+rows.length.toLocaleString()+' tracks'+
      (shown.length>MAX_ROWS?' (first '+MAX_ROWS+' shown)':'');
    document.querySelectorAll('#tracks th').forEach(function(th,i){
      th.className=i===sortCol?(sortDir<0?'sorted desc':'sorted'):'';});
    document.body.setAttribute('data-rendered', String(Math.min(shown.length, MAX_ROWS)));
  }
  document.querySelectorAll('#tracks th').forEach(function(th,i){
    th.addEventListener('click',function(){
      if(sortCol===i)sortDir=-sortDir;else{sortCol=i;sortDir=1;}
      render();});});
  text.addEventListener('input',render); status.addEventListener('change',render);
  // #q=jazz&status=ok&sort=confidence&desc: a filtered view that can be bookmarked
  var hash=new URLSearchParams(location.hash.slice(1));
  if(hash.get('q'))text.value=hash.get('q');
  if(hash.get('status'))status.value=hash.get('status');
  if(cols.indexOf(hash.get('sort'))>=0)sortCol=cols.indexOf(hash.get('sort'));
  if(hash.has('desc'))sortDir=-1;
  render();
})();
"""

HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>genretag report</title><style>{style}</style></head>
<body>
<h1>genretag report</h1>
<p>{total} track(s) in {db} · generated {generated}</p>{filters}{models}
<div class="cards">{cards}</div>
<h2>{groups_title}</h2>
{groups_svg}{groups_note}
<h2>Confidence</h2>
<p class="note">Top score of each prediction; green: tagged, amber: abstained (below the threshold).</p>
{histogram_svg}
<h2>Review queue: least confident</h2>
<table id="review"><thead><tr><th>confidence</th><th>status</th><th>genre</th><th>path</th></tr></thead>
<tbody>{review}</tbody></table>
<h2>Failed files ({failed_count})</h2>
<table id="failed"><thead><tr><th>path</th><th>reason</th></tr></thead><tbody>{failed}</tbody></table>
<h2>Tracks</h2>
<div class="controls"><input id="filter" type="search" placeholder="Filter: path, genre, artist, album…">
<select id="status"><option value="">every status</option><option value="ok">tagged</option>
<option value="abstained">abstained</option><option value="failed">failed</option>
<option value="unpredicted">not predicted</option></select></div>
<p class="note" id="count"></p>
<table id="tracks"><thead><tr><th>path</th><th>status</th><th>genre</th><th>confidence</th><th>artist</th>
<th>album</th></tr></thead><tbody></tbody></table>
<script type="application/json" id="tracks-data">{tracks}</script>
<script>var MAX_ROWS={max_rows};{script}</script>
</body></html>
"""


# -- show ----------------------------------------------------------------------------------------------

def show_terminal(details: dict, console: Console | None = None) -> None:
    out = console or Console(highlight=False)
    out.print(f"[bold]{escape(details['path'])}[/]")
    if not details["exists"]:
        out.print("[yellow]The file is not on disk (any more).[/]")
    tags = details["tags"]
    if tags is not None:
        table = Table(title="Tags in the file now", title_justify="left", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        table.add_row("genres", escape(", ".join(tags.get("genres") or []) or "—"))
        for name in ("artist", "album", "title", "format"):
            table.add_row(name, escape(str(tags.get(name) or "—")))
        out.print(table)
    elif details["tags_error"]:
        out.print(f"[red]tags unreadable:[/] {escape(details['tags_error'])}")
    track = details["track"]
    if track is None:
        out.print("[yellow]Not in the index[/] (no scan has seen this file).")
        return
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
            table.add_row(name, escape(str(value)))
    out.print(table)
    for p in details["predictions"]:
        title = f"Prediction by {escape(p['model_id'] or '?')} ({p['fingerprint']})"
        out.print(f"[bold]{title}[/]" + (" — current" if p["current"] else ""))
        table = Table()
        table.add_column("rank", justify="right")
        table.add_column("label")
        table.add_column("score", justify="right")
        table.add_column("", no_wrap=True)
        ranking = p.get("ranking") or []
        chosen = set(p.get("labels") or [])
        for i, (label, score) in enumerate(ranking, 1):
            table.add_row(str(i), Text(label, style="bold green" if label in chosen else ""), f"{score:.3f}",
                          Text(bar(score, 1.0, 20), style="cyan"))
        out.print(table)
        line = (f"status {p['status']}, genres written: {'yes' if p['written'] else 'no'}, "
                f"{p['windows'] or 0} window(s), predicted {_when(p['created_at'])}")
        if p.get("error"):
            line += f", error: {p['error']}"
        out.print(escape(line))
        windows = p.get("window_labels") or []
        if windows:
            out.print("per window: " + escape(" | ".join(
                ", ".join(f"{label} {score:.2f}" for label, score in w) or "—" for w in windows)))
    if details["writes"]:
        table = Table(title="Tag writes", title_justify="left")
        for name in ("id", "run", "written", "before", "after", "undone"):
            table.add_column(name, overflow="fold")
        for w in details["writes"]:
            before = escape(", ".join(w["old_genres"] or []) or "—")
            after = escape(", ".join(w["new_genres"] or []) or "—")
            table.add_row(str(w["id"]), str(w["run_id"]), _when(w["written_at"]), before, after,
                          _when(w["undone_at"]) if w["undone_at"] else "no")
        out.print(table)
    else:
        out.print("No tag writes recorded.")


# -- models --------------------------------------------------------------------------------------------

def models_terminal(overview: dict, console: Console | None = None) -> None:
    out = console or Console(highlight=False)
    out.print(f"[bold]Models in the index[/] {escape(overview['db'])}")
    table = Table()
    table.add_column("model", overflow="fold")
    table.add_column("fingerprint", no_wrap=True)
    for name in ("preds", "ok", "abst.", "failed", "latest"):
        table.add_column(name, justify="right")
    table.add_column("last seen", no_wrap=True)
    for m in overview["seen"]:
        table.add_row(escape(m["model_id"] or "—"), m["fingerprint"], f"{m['predictions']:,}", f"{m['ok']:,}",
                      f"{m['abstained']:,}", f"{m['failed']:,}", f"{m['current_tracks']:,}",
                      _when(m["last_seen"])[:10])
    if not overview["seen"]:
        table.add_row("(none yet)", *[""] * 7)
    out.print(table)
    out.print("preds: predictions stored; latest: tracks whose latest scan used the model "
              "(--json has labels and first/last seen)")
    table = Table(title="Available checkpoints", title_justify="left")
    for name in ("model", "kind", "fingerprint", "in index", "note"):
        table.add_column(name, overflow="fold")
    for a in overview["available"]:
        note = ["default"] if a.get("default") else []
        if a.get("missing"):
            note.append("folder missing")
        note += [f"{k}={v}" for k, v in (a.get("info") or {}).items() if not isinstance(v, (dict, list))]
        table.add_row(escape(a["model"]), a["kind"], a["fingerprint"] or "—",
                      "yes" if a["in_index"] else "no", escape(", ".join(note)))
    out.print(table)
    out.print(f"A plain `genretag scan` uses: {escape(overview['default'])}")
