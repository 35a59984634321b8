"""No file name, tag, model label, index row or label map can drive the terminal, a spreadsheet or a
browser: a hostile library scanned for real (a tiny model whose own labels are hostile, in a hostile
folder), then every command's output in every format checked.

Checked everywhere: no raw control character (Unicode Cc: C0, DEL, C1), no bidirectional control
(Trojan Source), no line or paragraph separator; rich markup printed as written; the hostile text still
recognisable (``\\x1b[2J`` shown as those six characters). CSV: no cell starts a formula. HTML: parsed
back, only the report's own elements and attributes. JSON: the exact data, with those characters
``\\u``-escaped.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from html.parser import HTMLParser
from pathlib import Path

import mutagen
import pytest
from click.testing import CliRunner

from tagger.cli import cli
from tagger.labels import LabelMapError, load_label_map, parse_label_map
from tests.audio_fixtures import have_encoder, make_audio
from tests.models import make_tiny_wav2vec2

REPO = Path(__file__).resolve().parents[1]

CLEAR = "\x1b[2J"                                              # clear screen
TITLE = "\x1b]0;pwned\x07"                                     # set the window title
OSC8 = "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\"  # a hyperlink
C1_CSI = "\x9b2J"                                              # clear screen through the 8-bit CSI
RLO = "\u202eevil\u202c"                                       # right-to-left override ... pop
ISOLATE = "\u2066iso\u2069"                                    # left-to-right isolate ... pop
MARKUP = "[bold red]x[/]"
NAME_MARKUP = "[bold red]x [link=file:etc]y"  # no "/" in a file name: opening tags only, still markup
RICH_LINK = "[link=file:///etc/passwd]open[/link]"
HTML_IMG = "<img src=x onerror=alert(1)>"
SCRIPT_BREAK = "</script><!--<script>alert(1)</script>"

# The model's own labels (a stranger's checkpoint): formula starts, escapes, bidi, markup. No "/" or ";",
# which tag formats read as separators.
LABELS = ["=1+1" + CLEAR, "+cmd\x07" + C1_CSI, "-core" + RLO, "@SUM(1)" + MARKUP]
MODEL_DIR = f"model{TITLE}{NAME_MARKUP}"
# Labels that may reach a tag: formula starts and markup, no control character (genres that hold one
# are never written). A second model with these writes the files.
WRITTEN_LABELS = ["=2+2", "+cmd", "-core", "@SUM(1)" + MARKUP]  # none equal to a genre in FILES: all written
SUB = f"sub{TITLE}"
FILES = {  # relative name -> tags written with mutagen before the scan
    f"clear{CLEAR}.flac": {"artist": f'=HYPERLINK("https://evil.example"){HTML_IMG}', "album": f"album{TITLE}",
                           "title": MARKUP, "genre": OSC8},
    f"title{TITLE}.mp3": {"artist": "+1+1", "album": SCRIPT_BREAK, "title": RICH_LINK, "genre": MARKUP},
    f"csi{C1_CSI} {RLO}.ogg": {"artist": "-core", "album": ISOLATE, "title": OSC8, "genre": "=1+1"},
    f"{SUB}/{NAME_MARKUP}.m4a": {"artist": "@SUM(1)", "album": "tab\tcr\rlf\nend",
                                 "title": RICH_LINK, "genre": RLO},
    f"{SUB}/line\nbreak\u2028sep\x7f.flac": {"artist": RICH_LINK, "album": "\u061cALM\u200fRLM",
                                            "title": C1_CSI, "genre": "@x"},
}
BROKEN = f"broken{CLEAR}{NAME_MARKUP}{RLO}.mp3"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def raw_controls(text: str, allowed: str = "\n") -> list[str]:
    """The characters in ``text`` that a terminal (or a bidi-aware viewer) acts on instead of showing."""
    return sorted({c for c in text if c not in allowed and (
        unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in BIDI)})


def escaped(text: str) -> str:
    """``text`` as the output must show it: each of those characters as its Python escape."""
    return "".join(repr(c)[1:-1] if raw_controls(c, allowed="") else c for c in text)


def assert_safe(text: str, allowed: str = "\n") -> None:
    assert text, "no output"
    assert raw_controls(text, allowed) == [], text


# -- the hostile library, scanned for real, and every command's output ------------------------------------

class Outputs(dict):
    """name -> (exit code, everything the command printed)."""


def write_tags(path: Path, tags: dict[str, str]) -> None:
    audio = mutagen.File(path, easy=True)
    if audio.tags is None:
        audio.add_tags()
    for key, value in tags.items():
        audio[key] = [value]
    audio.save()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    if not all(have_encoder(e) for e in ("flac", "libmp3lame", "libvorbis", "aac")):
        pytest.skip("needs FFmpeg with flac, libmp3lame, libvorbis and aac encoders")
    root = tmp_path_factory.mktemp("output-safety")
    with pytest.MonkeyPatch.context() as mp:  # the autouse home fixture is per test; this one is per module
        mp.setenv("GENRETAG_HOME", str(root / "home"))
        mp.delenv("GENRETAG_DB", raising=False)
        mp.delenv("GENRETAG_MODEL", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield run_everything(root)


def run_everything(root: Path) -> tuple[Path, Path, Path, Outputs]:
    from tagger.models.identity import register_trained_model

    model = make_tiny_wav2vec2(root / MODEL_DIR, genres=LABELS)
    writer = make_tiny_wav2vec2(root / f"writer{NAME_MARKUP}", genres=WRITTEN_LABELS)
    register_trained_model(model, {"note": f"trained on {TITLE}{MARKUP}", "accuracy": 0.5})
    lib = root / "lib"
    for name, tags in FILES.items():
        make_audio(lib / name, seconds=1.0, sample_rate=16000, channels=1)
        write_tags(lib / name, tags)
    (lib / BROKEN).write_bytes(b"not audio")
    db = root / "index.db"
    out = Outputs()
    env = {"COLUMNS": "400"}

    def run(name, *args, stdout_only=False):
        result = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
        out[name] = (result.exit_code, result.stdout if stdout_only else result.output)
        return out[name]

    scan = ["scan", lib, "--model", model, "--db", db, "--min-confidence", "0"]
    run("scan --dry-run", *scan, "--dry-run")  # the genres the files hold, and the hostile labels planned
    run("scan --json", *scan, "--dry-run", "--rescan", "--json", stdout_only=True)
    run("scan --write-tags, hostile labels", *scan, "--write-tags", "--rescan")  # every write refused
    run("scan --write-tags", "scan", lib, "--model", writer, "--db", db, "--min-confidence", "0", "--write-tags")
    report = ["report", "--db", db]
    run("report", *report, "--review", "20")
    run("report --by artist", *report, "--by", "artist")
    run("report --by folder --folder", *report, "--by", "folder", "--folder", lib / SUB)
    run("report --json", *report, "--json", "--tracks", stdout_only=True)
    run("report --csv", *report, "--csv", stdout_only=True)
    run("report --csv --by artist", *report, "--csv", "--by", "artist", stdout_only=True)
    run("report --csv --tracks", *report, "--csv", "--tracks", stdout_only=True)
    for name in ("genre", "artist"):
        page = root / f"report-{name}.html"
        code, _ = run(f"report --html --by {name}", *report, "--html", page, "--by", name)
        out[f"report --html --by {name}"] = (code, page.read_text(encoding="utf-8"))
    for name in sorted(FILES) + [BROKEN]:
        run(f"show {name!r}", "show", lib / name, "--db", db)
        run(f"show --json {name!r}", "show", lib / name, "--db", db, "--json", stdout_only=True)
    run("show a missing file", "show", lib / f"gone{CLEAR}{NAME_MARKUP}.flac", "--db", db)
    run("models", "models", "--db", db)
    run("models --json", "models", "--db", db, "--json", stdout_only=True)
    changed = lib / f"title{TITLE}.mp3"  # another program changes its genres: undo leaves it, and says so
    write_tags(changed, {"genre": "Edited"})
    run("undo", "undo", "--db", db)
    run("history", "history", "--db", db)
    run("history --json", "history", "--db", db, "--json", stdout_only=True)
    return lib, db, model, out


TERMINAL = ["scan --write-tags", "scan --write-tags, hostile labels", "scan --dry-run", "report", "report --by artist", "report --by folder --folder",
            "models", "undo", "history", "show a missing file"] + [f"show {n!r}" for n in sorted(FILES) + [BROKEN]]
JSON = ["report --json", "models --json", "history --json"] + [f"show --json {n!r}" for n in sorted(FILES)]


def test_genres_holding_control_characters_are_never_written(hostile):
    lib, _, _, out = hostile
    code, text = out["scan --write-tags, hostile labels"]
    assert code == 3 and f"{len(FILES) + 1} failed" in text and "wrote 0 files" in text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(FILES) + 1
    assert sum("holds a line break or control character" in line for line in errors) == len(FILES)


def test_the_scan_ran_for_real(hostile):
    lib, db, _, out = hostile
    code, text = out["scan --write-tags"]
    assert code == 3  # the broken file failed, every other one was tagged and written
    assert f"{len(FILES) + 1} tracks: {len(FILES)} tagged, 0 abstained, 1 failed." in text
    assert f"wrote {len(FILES)} files" in text
    assert json.loads(out["report --json"][1])["status"]["written"] == len(FILES)
    for name, tags in FILES.items():  # undo gave each file back the genre it held, except the one edited since
        edited = name == f"title{TITLE}.mp3"
        assert mutagen.File(lib / name, easy=True)["genre"] == ["Edited" if edited else tags["genre"]]


@pytest.mark.parametrize("name", TERMINAL)
def test_terminal_output_carries_no_control_character(hostile, name):
    assert_safe(hostile[3][name][1])


@pytest.mark.parametrize("name", JSON + ["scan --json"])
def test_json_output_carries_no_control_character_and_keeps_the_exact_data(hostile, name):
    text = hostile[3][name][1]
    assert_safe(text)
    if name == "scan --json":
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert {r["path"] for r in lines} >= {str(hostile[0] / n) for n in FILES}
    else:
        json.loads(text)


def test_json_is_the_exact_data(hostile):
    lib, _, model, out = hostile
    report = json.loads(out["report --json"][1])
    tracks = {t["path"]: t for t in report["tracks"]}
    for name, tags in FILES.items():
        track = tracks[str(lib / name)]  # the exact path, tags and labels, escapes decoded
        assert (track["artist"], track["album"]) == (tags["artist"], tags["album"])
        assert track["genre"] in WRITTEN_LABELS
    assert report["failed"][0]["path"] == str(lib / BROKEN)
    shown = json.loads(out[f"show --json {sorted(FILES)[0]!r}"][1])
    (hostile_prediction,) = [p for p in shown["predictions"] if p["model_id"] == str(model)]
    assert {label for label, _ in hostile_prediction["ranking"]} == set(LABELS)
    seen = {m["model_id"]: m for m in json.loads(out["models --json"][1])["seen"]}
    assert seen[str(model)]["labels"] == LABELS


def test_markup_prints_as_written_and_escapes_stay_recognisable(hostile):
    lib, _, model, out = hostile
    scan = out["scan --write-tags"][1]
    error_line = next(line for line in scan.splitlines() if line.startswith("error: "))
    assert escaped(str(lib / BROKEN)) in error_line  # "\x1b[2J[bold red]x ...\u202eevil\u202c" as text
    assert escaped(str(model)) in out["scan --write-tags, hostile labels"][1]  # the summary names the model
    dry = out["scan --dry-run"][1]
    for name in FILES:
        assert escaped(str(lib / name)) in dry
    assert escaped(OSC8) in dry and MARKUP in dry  # genres the files held before (the write) ...
    assert escaped(LABELS[0]) in dry  # ... and the new ones
    report = out["report"][1]
    assert escaped(str(lib / BROKEN)) in report
    for name in FILES:
        assert escaped(str(lib / name)) in report  # the review queue lists every track
    by_artist = out["report --by artist"][1]
    assert RICH_LINK in by_artist and escaped(FILES[f"clear{CLEAR}.flac"]["artist"]) in by_artist
    assert escaped(str(lib / SUB)) in out["report --by folder --folder"][1]
    show = out[f"show {sorted(FILES)[0]!r}"][1]
    assert escaped(str(lib / sorted(FILES)[0])) in show
    shown_tags = FILES[sorted(FILES)[0]]
    assert escaped(shown_tags["title"]) in show and escaped(shown_tags["artist"]) in show
    assert all(escaped(label) in show for label in LABELS)  # the model's ranking
    models = out["models"][1]
    assert escaped(str(model)) in models and escaped(f"note=trained on {TITLE}{MARKUP}") in models
    undo = out["undo"][1]
    assert escaped(str(lib / f"title{TITLE}.mp3")) in undo and "Restored 4 file(s); 1 failed." in undo
    assert escaped(str(model)) in out["history"][1]
    assert escaped(f"gone{CLEAR}{NAME_MARKUP}.flac") in out["show a missing file"][1]


def test_csv_cells_never_start_a_formula(hostile):
    from tagger.reporting.safe import from_csv_cell

    lib, _, _, out = hostile
    for name in ("report --csv", "report --csv --by artist", "report --csv --tracks"):
        text = out[name][1]
        assert_safe(text, allowed="\r\n")
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert len(rows) > 1
        for row in rows:
            for cell in row:
                assert not cell.startswith(FORMULA_STARTS), (name, cell)
    tracks = {from_csv_cell(r["path"]): r for r in csv.DictReader(io.StringIO(out["report --csv --tracks"][1]))}
    assert {from_csv_cell(r["artist"]) for r in tracks.values()} >= {"+1+1", "-core", "@SUM(1)"}
    clear = tracks[escaped(str(lib / f"clear{CLEAR}.flac"))]
    assert clear["artist"] == "'" + escaped(FILES[f"clear{CLEAR}.flac"]["artist"])
    assert from_csv_cell(clear["genre"]) in {escaped(label) for label in WRITTEN_LABELS}
    artists = [from_csv_cell(r["artist"]) for r in csv.DictReader(io.StringIO(out["report --csv --by artist"][1]))]
    assert set(artists) >= {escaped(tags["artist"]) for tags in FILES.values()}


class Elements(HTMLParser):
    """Every element and attribute of a page, and its text."""

    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.text: list[str] = []
        self.script: dict[str, str] = {}
        self._in_script = None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)
        if tag == "script":
            self._in_script = dict(attrs).get("id") or "inline"

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = None

    def handle_data(self, data):
        if self._in_script:
            self.script[self._in_script] = self.script.get(self._in_script, "") + data
        else:
            self.text.append(data)


PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "div", "b", "span", "svg", "g",
             "text", "rect", "line", "table", "thead", "tbody", "tr", "th", "td", "input", "select", "option",
             "script"}
PAGE_ATTRS = {"lang", "charset", "name", "content", "class", "id", "viewbox", "width", "height", "role", "xmlns",
              "x", "y", "x1", "y1", "x2", "y2", "rx", "text-anchor", "type", "placeholder", "value", "colspan"}


@pytest.mark.parametrize("by", ["genre", "artist"])
def test_html_shows_the_hostile_text_as_text(hostile, by):
    lib, _, _, out = hostile
    code, page = out[f"report --html --by {by}"]
    assert code == 0
    assert_safe(page)
    parsed = Elements()
    parsed.feed(page)
    parsed.close()
    assert parsed.tags <= PAGE_TAGS and parsed.attrs <= PAGE_ATTRS, (parsed.tags - PAGE_TAGS,
                                                                      parsed.attrs - PAGE_ATTRS)
    assert set(parsed.script) == {"tracks-data", "inline"}  # no other script, none opened by the data
    text = "".join(parsed.text)
    assert escaped(str(lib / BROKEN)) in text  # the failed table
    if by == "artist":
        assert escaped(FILES[f"clear{CLEAR}.flac"]["artist"]) in text  # in the chart: "<img ...>" as text
    rows = json.loads(parsed.script["tracks-data"])
    albums = {row[5] for row in rows}
    assert escaped(SCRIPT_BREAK) in albums and escaped(FILES[f"{SUB}/{NAME_MARKUP}.m4a"]["album"]) in albums
    assert "</script" not in parsed.script["tracks-data"] and "<!--" not in parsed.script["tracks-data"]


def report_html_check():
    """bench/report_html_check.py, for its headless-Chromium runner."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("report_html_check", REPO / "bench" / "report_html_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs chromium (apt-get install -y chromium)")
@pytest.mark.parametrize("by", ["genre", "artist"])
def test_html_in_a_browser_draws_the_hostile_text_as_text(hostile, by):
    """The page's own script builds the track table from the embedded data: in the DOM Chromium ends
    with, the hostile names are text in the table and no element came from them."""
    lib = hostile[0]
    proc = report_html_check().chromium("--virtual-time-budget=10000", "--dump-dom",
                                        (lib.parent / f"report-{by}.html").as_uri())
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    assert_safe(proc.stdout)
    parsed = Elements()
    parsed.feed(proc.stdout)
    assert parsed.tags <= PAGE_TAGS and parsed.attrs <= PAGE_ATTRS | {"data-rendered"}
    assert 'data-rendered="6"' in proc.stdout  # every track drawn by the script
    text = "".join(parsed.text)
    assert all(escaped(str(lib / name)) in text for name in FILES)
    assert escaped(SCRIPT_BREAK) in text and escaped(FILES[f"clear{CLEAR}.flac"]["artist"]) in text


# -- a real terminal: the commands as processes, rich told it writes to one --------------------------------

RICH_OWN = re.compile(r"\x1b\[[0-9;]*m|\x1b\[\?25[lh]|\x1b\[2K|\x1b\[\d*A|\r")
"""What rich itself writes to a terminal: colours (SGR), the cursor hidden and shown, a line erased and
the cursor moved up (the progress bar). The hostile text holds none of these."""


@pytest.mark.parametrize("command", ["scan", "report", "show", "models", "history"])
def test_a_terminal_gets_only_the_sequences_rich_writes(hostile, command):
    lib, db, model, _ = hostile
    args = {"scan": ["scan", lib, "--model", model, "--db", db, "--min-confidence", "0", "--dry-run", "--rescan"],
            "report": ["report", "--db", db], "show": ["show", lib / f"csi{C1_CSI} {RLO}.ogg", "--db", db],
            "models": ["models", "--db", db], "history": ["history", "--db", db]}[command]
    code = "import sys; from tagger.cli import main; sys.argv = ['genretag', *sys.argv[1:]]; main()"
    env = {**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "300", "GENRETAG_HOME": str(db.parent / "home")}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode in (0, 3), proc.stderr
    both = proc.stdout + proc.stderr
    assert "\x1b[" in both  # rich did style its output as for a terminal
    assert_safe(RICH_OWN.sub("", both))


def test_evaluate_names_genres_and_clips_escaped(hostile, tmp_path):
    """`genretag evaluate` on <genre>/ folders named like the model's labels, one clip unreadable: the
    notes, the skipped clip and the metrics table all name them."""
    from training.cli import evaluate

    model = hostile[2]
    data = tmp_path / f"data{TITLE}"
    for i, label in enumerate(LABELS[:3]):  # the fourth holds a "/"
        for j in range(3):
            make_audio(data / label / f"clip{j}{CLEAR}.wav", seconds=1.0, freq=220.0 * (i + 1) + 10 * j,
                       sample_rate=16000, channels=1)
    (data / LABELS[0] / f"broken{CLEAR}{NAME_MARKUP}.wav").write_bytes(b"not audio")
    (data / f"loose{RLO}.wav").write_bytes(b"no label folder")
    result = CliRunner().invoke(evaluate, [str(model), str(data), "--split", "random", "--part", "all"],
                                env={"COLUMNS": "300"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert_safe(result.output)
    assert all(escaped(label) in result.output for label in LABELS[:3])  # the metrics table
    assert escaped(f"broken{CLEAR}{NAME_MARKUP}.wav") in result.output  # skipped
    assert escaped(str(data)) in result.output  # the note on the loose file


# -- errors at the command line's boundary ------------------------------------------------------------------

def test_error_messages_escape_what_they_name(hostile, tmp_path):
    lib, db, model, _ = hostile
    labels = tmp_path / f"map{CLEAR}{NAME_MARKUP}.toml"
    labels.write_text('[genres]\n"rock" = "Rock"\n"jazz\\u001b[2J" = "Jazz"\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["scan", str(lib), "--model", str(model), "--db", str(db),
                                      "--labels", str(labels)], catch_exceptions=False)
    assert result.exit_code == 1
    assert_safe(result.output)
    assert escaped(str(labels)) in result.output and "control character" in result.output


# -- label maps -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, where", [
    ('[genres]\n"rock\\u001b[2J" = "Rock"\n', "rock"),                          # a model label (key)
    ('[genres]\n"rock" = "Rock\\u009b2J"\n', "Rock"),                           # a genre name, C1
    ('[genres]\n"rock" = "Rock\\u007f"\n', "Rock"),                             # DEL
    ('drop = ["80s\\u202e"]\n[genres]\n"rock" = "Rock"\n', "80s"),              # a drop entry, bidi
    ('keep_unlisted = true\ndrop = ["sad", "\\u2066x\\u2069"]\n', "x"),        # isolates
    ('[genres]\n"rock" = "Rock"\n[more]\n"a\\u0007" = "b"\n', "a"),             # whatever else a map holds
])
def test_label_maps_refuse_control_characters_anywhere(tmp_path, text, where):
    path = tmp_path / "labels.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LabelMapError) as err:
        load_label_map(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "control character" in message and where in message
    assert raw_controls(message.removeprefix(str(path))) == []  # the offending text shown escaped


def test_label_maps_keep_printable_names():
    label_map = parse_label_map('[genres]\n"rnb" = "R&B"\n"k" = "K-Pop ☆"\n"a" = "عربي"\n')
    assert label_map.genre("k") == "K-Pop ☆" and label_map.genre("a") == "عربي"


# -- the helpers -------------------------------------------------------------------------------------------

def test_escape_controls_and_csv_cells_round_trip():
    from tagger.reporting.safe import csv_cell, dumps, escape_controls, from_csv_cell

    hostile = CLEAR + TITLE + C1_CSI + RLO + ISOLATE + "\x7f\u2028\n\t\ud800"
    shown = escape_controls(hostile)
    assert raw_controls(shown, allowed="") == [] and shown == escaped(hostile)
    assert escape_controls("Beyoncé – Déjà Vu ☆ 東京") == "Beyoncé – Déjà Vu ☆ 東京"
    assert escape_controls("a\nb", keep_newlines=True) == "a\nb"
    for value in ("-core", "=1+1", "+44", "@home", "\tx", "'=x", "''-y", "'quoted", "plain", "-"):
        cell = csv_cell(value)
        assert not str(cell).startswith(FORMULA_STARTS) and from_csv_cell(cell) == escape_controls(value)
    assert csv_cell("plain") == "plain" and csv_cell(0.5) == 0.5
    data = {"path": hostile, "n": 1}
    assert raw_controls(dumps(data), allowed="") == [] and json.loads(dumps(data)) == data
