"""Does the HTML report render in a real browser? Builds an index (bench/report_100k.py's rows), writes
`genretag report --html`, opens it in headless Chromium and checks the DOM after the page's script ran:
both SVG charts drawn, the track table filled, a `#q=...&status=...` filter applied. Saves a screenshot.

    apt-get install -y chromium
    .venv/bin/python bench/report_html_check.py [--tracks 3000] [--out DIR]

Exit status 0 when every check passes, 1 otherwise, 77 when chromium is not installed.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


class DomCounts(HTMLParser):
    """Counts what the checks need in the serialized DOM."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}

    def __init__(self):
        super().__init__()
        self.open: list[tuple[str, str]] = []  # (tag, id) of the open elements
        self.svgs = self.group_bars = self.histogram_rects = self.track_rows = 0
        self.rendered = None
        self.count_text = ""
        self.genres_in_rows: list[str] = []
        self._cell = -1

    def inside(self, tag: str = "", ident: str = "") -> bool:
        return any((not tag or t == tag) and (not ident or i == ident) for t, i in self.open)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.rendered = attrs.get("data-rendered")
        elif tag == "svg":
            self.svgs += 1
        elif tag == "rect" and self.inside("svg", "groups-chart"):
            self.group_bars += 1
        elif tag == "rect" and self.inside("svg", "confidence-chart"):
            self.histogram_rects += 1
        elif tag == "tr" and self.inside("table", "tracks") and self.inside("tbody"):
            self.track_rows += 1
            self._cell = -1
        elif tag == "td" and self.inside("table", "tracks"):
            self._cell += 1
        if tag not in self.VOID:
            self.open.append((tag, attrs.get("id") or ""))

    def handle_endtag(self, tag):
        while self.open:
            if self.open.pop()[0] == tag:
                break

    def handle_data(self, data):
        if self.inside("p", "count"):
            self.count_text += data
        elif self._cell == 2 and self.inside("td") and self.inside("table", "tracks") and data.strip():
            self.genres_in_rows.append(data.strip())


def chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)


def dom(url: str) -> DomCounts:
    proc = chromium("--virtual-time-budget=10000", "--dump-dom", url)
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise RuntimeError(f"chromium --dump-dom failed ({proc.returncode}): {proc.stderr[-2000:]}")
    counts = DomCounts()
    counts.feed(proc.stdout)
    return counts


def build_page(out: Path, tracks: int):
    from tagger.reporting.report import ReportOptions, build_report
    from tagger.reporting.render import report_html

    spec = importlib.util.spec_from_file_location("report_100k", HERE / "report_100k.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    db = out / "index.db"
    if not db.exists():
        bench.build(db, tracks)
    report = build_report(db, ReportOptions(tracks=True))
    page = out / "report.html"
    page.write_text(report_html(report), encoding="utf-8")
    return page, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=3000)
    parser.add_argument("--out", type=Path, help="where the index, the page and the screenshot go")
    args = parser.parse_args()
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        print("chromium is not installed (apt-get install -y chromium)")
        return 77
    out = args.out or Path(tempfile.mkdtemp(prefix="genretag-html-"))
    out.mkdir(parents=True, exist_ok=True)
    page, report = build_page(out, args.tracks)
    from tagger.reporting.render import HTML_BARS, HTML_TABLE_ROWS

    html = page.read_text(encoding="utf-8")
    failures = []

    def check(name: str, ok: bool, detail: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
        if not ok:
            failures.append(name)

    external = [m for m in ("src=", "href=", "@import", "url(", "//cdn", "<link") if m in html]
    check("self-contained", not external,
          f"{len(html) / 1e6:.2f} MB, external references: {external or 'none'}")

    t0 = time.perf_counter()
    full = dom(page.as_uri())
    check("script ran", full.rendered is not None, f"body data-rendered={full.rendered} "
          f"({time.perf_counter() - t0:.1f} s in chromium)")
    check("two SVG charts", full.svgs == 2, f"{full.svgs} <svg> elements")
    bars = min(len(report.groups), HTML_BARS)
    check("genre bars", full.group_bars == bars, f"{full.group_bars} bars drawn, {bars} groups expected")
    check("histogram", full.histogram_rects == 2 * len(report.confidence),
          f"{full.histogram_rects} rects for {len(report.confidence)} bins (tagged + abstained)")
    rows = min(report.total, HTML_TABLE_ROWS)
    check("track table", full.track_rows == rows, f"{full.track_rows} rows, {rows} expected; "
          f"caption: {full.count_text!r}")

    genre = report.groups[min(1, len(report.groups) - 1)]["key"]  # the second most common genre
    filtered = dom(page.as_uri() + f"#q={genre}&status=ok&sort=confidence&desc")
    expected = min(next(g["tracks"] for g in report.groups if g["key"] == genre), HTML_TABLE_ROWS)
    check("filter from #q=&status=",
          filtered.track_rows == expected and set(filtered.genres_in_rows) == {genre},
          f"#q={genre}&status=ok: {filtered.track_rows} rows, {expected} expected, genres shown "
          f"{sorted(set(filtered.genres_in_rows))}; caption {filtered.count_text!r}")

    shot = out / "report.png"
    proc = chromium(f"--screenshot={shot}", "--window-size=1200,1600", "--virtual-time-budget=10000",
                    page.as_uri())
    check("screenshot", shot.is_file() and shot.stat().st_size > 10_000,
          f"{shot} ({shot.stat().st_size / 1e3:.0f} kB)" if shot.is_file() else proc.stderr[-500:])
    print(f"page: {page}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
