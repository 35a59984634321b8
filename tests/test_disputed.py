"""`genretag report --disputed`: the tracks whose own genres (never the ones genretag wrote) the current
model confidently contradicts. A real index with known predictions (written through Index.record_results,
judged by the thresholds in real checkpoint folders), and a real library that genretag scanned and wrote
into; every output format read back, the HTML table parsed."""
from __future__ import annotations

import csv
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import mutagen
import pytest
from click.testing import CliRunner

from tagger.cli import cli
from tagger.index import Index
from tagger.records import TrackResult
from tagger.reporting.report import ReportOptions, build_report
from tagger.tagging.tags import read_genres
from tests.audio_fixtures import ffmpeg_available, make_audio

LABELS = ["rock", "jazz", "metal", "pop"]
HOSTILE = "/m/x/\x1b[2J</script><b>=1+1.flac"
# path, the owner's genres, then per prediction: (status, top genre, its score)
KNOWN = [
    ("/m/a.flac", ["Jazz"], ("ok", "rock", 0.8)),            # disputed: 0.8 >= the model's 0.5
    ("/m/b.flac", ["Rock"], ("ok", "rock", 0.95)),           # agrees
    ("/m/c.flac", ["ROCK", "Blues"], ("ok", "rock", 0.97)),  # agrees, whatever the case
    ("/m/d.flac", ["Jazz"], ("ok", "metal", 0.85)),          # metal's own threshold is 0.9: not confident
    ("/m/e.flac", ["Jazz"], ("ok", "metal", 0.95)),          # disputed
    ("/m/f.flac", [], ("ok", "rock", 0.99)),                 # no genre of the owner's: nothing to dispute
    ("/m/g.flac", ["Jazz"], ("abstained", "pop", 0.4)),      # below 0.5
    ("/m/h.flac", ["Jazz"], ("abstained", "pop", 0.6)),      # disputed: the scan abstained at its own 0.7
    ("/m/i.flac", ["Jazz"], ("failed", None, None)),
    (HOSTILE, ["\x1b]0;pwned\x07Jazz"], ("ok", "rock", 0.7)),  # disputed; shown escaped everywhere
]
EXPECTED = ["/m/e.flac", "/m/a.flac", HOSTILE, "/m/h.flac"]  # most confident first
BUILTIN = [  # the built-in model's label map: Indie Rock is under Rock, so Rock does not dispute it
    ("/b/indie.flac", ["Indie Rock"], ("ok", "Rock", 0.9)),
    ("/b/jazz.flac", ["Jazz"], ("ok", "Rock", 0.9)),          # disputed: 0.9 >= the built-in 0.47
    ("/b/weak.flac", ["Jazz"], ("abstained", "Rock", 0.4)),
]


def _result(path: str, genres: list[str], outcome) -> TrackResult:
    status, genre, score = outcome
    ranking = [] if status == "failed" else [(genre, score), ("other", round((1 - score) / 2, 6))]
    ok = status == "ok"
    return TrackResult(path, status, labels=[genre] if ok else [], scores=[score] if ok else [], ranking=ranking,
                       window_labels=[ranking[:1]] if ranking else [], windows=1 if ranking else 0,
                       error="cannot decode" if status == "failed" else None, size=1, mtime_ns=1,
                       tags={"genres": genres, "artist": "Someone", "album": None, "title": None})


@pytest.fixture
def checkpoint(tiny_wav2vec2, tmp_path) -> Path:
    """A real checkpoint folder whose thresholds were chosen when it was trained: 0.5, metal 0.9."""
    folder = Path(shutil.copytree(tiny_wav2vec2, tmp_path / "model"))
    config = json.loads((folder / "config.json").read_text())
    config.update(genretag_min_confidence=0.5, genretag_label_thresholds={"metal": 0.9},
                  id2label=dict(enumerate(LABELS)), label2id={g: i for i, g in enumerate(LABELS)})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def known_index(checkpoint, tmp_path) -> Path:
    db = tmp_path / "index.db"
    with Index(db) as index:
        for model_id, fingerprint, rows in ((str(checkpoint), "cccc000011112222", KNOWN),
                                            ("builtin:musicnn-msd", "dddd000011112222", BUILTIN)):
            index.note_model(model_id, fingerprint, LABELS)
            run = index.start_run("scan", model_id=model_id, fingerprint=fingerprint)
            index.record_results([_result(*row) for row in rows], model_id, fingerprint, run)
    return db


def invoke(*args, code=0):
    result = CliRunner().invoke(cli, ["report", *map(str, args)], catch_exceptions=False,
                                env={"COLUMNS": "200"})  # wide enough that no cell is folded
    assert result.exit_code == code, result.output
    return result.output


class Table(HTMLParser):
    """The text of each cell of one table of a page, row by row."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.inside, self.rows, self.cell = table_id, False, [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def html_table(page: str, table_id: str) -> list[list[str]]:
    parser = Table(table_id)
    parser.feed(page)
    return parser.rows


def test_disputed_are_confident_contradictions_of_the_owners_genres(known_index, checkpoint):
    got = build_report(known_index, ReportOptions(disputed=True))
    assert [d["path"] for d in got.disputed] == ["/m/e.flac", "/b/jazz.flac", "/m/a.flac", HOSTILE, "/m/h.flac"]
    first = got.disputed[0]
    assert (first["genre"], first["score"], first["threshold"], first["user_genres"], first["origin"]) == (
        "metal", 0.95, 0.9, ["Jazz"], "tags")
    assert first["model_id"] == str(checkpoint) and first["status"] == "ok"
    assert next(d for d in got.disputed if d["path"] == "/b/jazz.flac")["threshold"] == 0.47  # built-in
    models = {m["model_id"]: m for m in got.disputed_models}
    assert (models[str(checkpoint)]["min_confidence"], models[str(checkpoint)]["label_thresholds"]) == (
        0.5, {"metal": 0.9})
    assert models["builtin:musicnn-msd"]["thresholds_from"] == "model"

    stricter = build_report(known_index, ReportOptions(disputed=True, min_confidence=0.9))
    assert [d["path"] for d in stricter.disputed] == ["/m/e.flac", "/b/jazz.flac"]
    assert {m["thresholds_from"] for m in stricter.disputed_models} == {"--min-confidence"}
    under = build_report(known_index, ReportOptions(disputed=True, path="/b"))
    assert [d["path"] for d in under.disputed] == ["/b/jazz.flac"]
    assert build_report(known_index, ReportOptions()).disputed is None


def test_the_current_model_or_the_one_asked_for(known_index, checkpoint):
    """A later scan by another model agrees with a.flac's Jazz: by default that is the current
    prediction; --model asks for the first one again. A model whose files are gone is judged by the
    fallback threshold, and says so."""
    with Index(known_index) as index:
        index.note_model("gone-model", "eeee000011112222", LABELS)
        run = index.start_run("scan", model_id="gone-model", fingerprint="eeee000011112222")
        index.record_results([_result("/m/a.flac", ["Jazz"], ("ok", "jazz", 0.9)),
                              _result("/m/b.flac", ["Rock"], ("ok", "pop", 0.31))], "gone-model",
                             "eeee000011112222", run)
    now = {d["path"]: d for d in build_report(known_index, ReportOptions(disputed=True)).disputed}
    assert "/m/a.flac" not in now and now["/m/b.flac"]["model_id"] == "gone-model"
    assert now["/m/b.flac"]["threshold"] == 0.3  # the fallback: no files to read thresholds from
    data = json.loads(invoke("--db", known_index, "--disputed", "--json"))
    assert {m["model_id"]: m["thresholds_from"] for m in data["disputed_models"]}["gone-model"] == "fallback"
    asked = build_report(known_index, ReportOptions(disputed=True, model=str(checkpoint)))
    assert [d["path"] for d in asked.disputed] == EXPECTED


def test_every_format(known_index, tmp_path):
    expected = build_report(known_index, ReportOptions(disputed=True)).disputed

    terminal = invoke("--db", known_index, "--disputed")
    assert "Disputed: 5 track(s)" in terminal and "metal" in terminal and "0.950" in terminal
    assert "\x1b" not in terminal and "\\x1b[2J</script>" in terminal and "\\x07Jazz" in terminal
    assert "thresholds of builtin:musicnn-msd" in terminal and "0.50 (per genre: metal 0.90)" in terminal
    assert "Review queue" not in terminal  # the audit only

    data = json.loads(invoke("--db", known_index, "--disputed", "--json"))
    assert data["disputed"] == expected and data["total"] == len(KNOWN) + len(BUILTIN)
    assert "\\u001b[2J" in invoke("--db", known_index, "--disputed", "--json")  # escaped, never raw

    rows = list(csv.DictReader(io.StringIO(invoke("--db", known_index, "--disputed", "--csv"))))
    assert [r["path"] for r in rows] == [d["path"].replace("\x1b", "\\x1b") for d in expected]
    hostile = next(r for r in rows if r["path"].startswith("/m/x/"))
    assert hostile["user_genres"] == "\\x1b]0;pwned\\x07Jazz" and hostile["origin"] == "tags"
    assert [float(r["score"]) for r in rows] == [d["score"] for d in expected]
    assert rows[0]["genre"] == "metal" and rows[0]["threshold"] == "0.9"
    assert "--tracks" in invoke("--db", known_index, "--disputed", "--csv", "--tracks", code=2)

    page = tmp_path / "report.html"
    invoke("--db", known_index, "--disputed", "--html", page)
    html = page.read_text(encoding="utf-8")
    table = html_table(html, "disputed")
    assert table[0] == ["score", "model says", "their genres", "where from", "file holds", "path", "model"]
    assert [(r[0], r[1], r[5]) for r in table[1:]] == [
        (f"{d['score']:.3f}", d["genre"], d["path"].replace("\x1b", "\\x1b").replace("\x07", "\\x07"))
        for d in expected]
    assert "<b>=1+1" not in html and "&lt;/script&gt;&lt;b&gt;=1+1.flac" in html and "\x1b" not in html
    plain = tmp_path / "plain.html"
    invoke("--db", known_index, "--html", plain)
    assert html_table(plain.read_text(encoding="utf-8"), "disputed") == []  # only when asked


# -- a library genretag wrote into ---------------------------------------------------------------------------
@pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg and ffprobe on PATH")
def test_genretag_written_tags_are_disputed_by_what_the_owner_had(tmp_path, tiny_wav2vec2):
    """After `scan --write-tags` every file holds the model's own genre, which it can never contradict:
    the audit compares the prediction with the owner's genres from before the write, and with an
    owner's later edit."""
    lib, db = tmp_path / "lib", tmp_path / "index.db"
    make_audio(lib / "polka.flac", seconds=1.0, tags={"genre": "Polka"})
    make_audio(lib / "zydeco.flac", seconds=1.0, freq=330.0, tags={"genre": "Zydeco"})
    make_audio(lib / "edited.flac", seconds=1.0, freq=550.0, tags={"genre": "Polka"})
    make_audio(lib / "plain.flac", seconds=1.0, freq=660.0)
    scan = ["scan", str(lib), "--model", str(tiny_wav2vec2), "--db", str(db), "--min-confidence", "0"]
    assert CliRunner().invoke(cli, [*scan, "--write-tags"]).exit_code == 0
    written = {p.name: read_genres(p) for p in lib.iterdir()}
    audio = mutagen.File(lib / "edited.flac")
    audio["genre"] = ["Tango"]
    audio.save()
    assert CliRunner().invoke(cli, scan).exit_code == 0  # reads the edit

    data = json.loads(invoke("--db", db, "--disputed", "--min-confidence", "0", "--json"))
    disputed = {Path(d["path"]).name: d for d in data["disputed"]}
    assert sorted(disputed) == ["edited.flac", "polka.flac", "zydeco.flac"]  # plain.flac: nothing of its owner's
    assert (disputed["polka.flac"]["user_genres"], disputed["polka.flac"]["origin"]) == (["Polka"], "before-genretag")
    assert disputed["polka.flac"]["file_genres"] == written["polka.flac"] == [disputed["polka.flac"]["genre"]]
    assert (disputed["edited.flac"]["user_genres"], disputed["edited.flac"]["origin"]) == (["Tango"], "edited")
    terminal = invoke("--db", db, "--disputed", "--min-confidence", "0")
    assert "Polka (before genretag wrote; the file holds: " in terminal
