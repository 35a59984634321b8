"""`genretag report`, `show` and `models`: real indexes (a real scan, and rows written through
Index.record_results), expected numbers computed from the rows the test created."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from tagger.index import Index
from tagger.records import TrackResult
from tagger.reporting.report import GROUPINGS, ReportOptions, build_report, model_overview, parse_since, track_details
from tagger.reporting.commands import DEFAULT_REVIEW, models, report, show

REPO = Path(__file__).resolve().parents[1]
DAY = 86400.0
NOW = 1_750_000_000.0

# -- an index written through Index.record_results, with known rows -------------------------------------

MODEL_A = ("model-a", "aaaa000011112222")
MODEL_B = ("model-b", "bbbb000011112222")
# path, artist, album, then per model: (status, best label, top score) or None
ROWS = [
    ("/m/Alpha/One/1.flac", "Alpha", "One", ("ok", "rock", 0.9), ("ok", "jazz", 0.6)),
    ("/m/Alpha/One/2.flac", "Alpha", "One", ("ok", "rock", 0.8), None),
    ("/m/Alpha/Two/3.flac", "Alpha", "Two", ("ok", "jazz", 0.55), ("ok", "jazz", 0.95)),
    ("/m/Beta/Three/4.flac", "Beta", "Three", ("abstained", "pop", 0.2), ("ok", "pop", 0.45)),
    ("/m/Beta/Three/5.flac", "Beta", "Three", ("failed", None, None), None),
    ("/m/Gamma/6 </script><b>&amp;.flac", None, None, ("abstained", "pop", 0.25), None),
    ("/m/Alpha2/7.flac", "Delta", "Four", ("ok", "metal", 0.7), None),
]
SCANNED_A, SCANNED_B = NOW - 10 * DAY, NOW - 1 * DAY


def _result(path, artist, album, outcome) -> TrackResult:
    status, label, score = outcome
    ranking = [] if status == "failed" else [(label, score), ("other", round(score / 4, 6))]
    ok = status == "ok"
    return TrackResult(path, status, labels=[label] if ok else [], scores=[score] if ok else [],
                       ranking=ranking, window_labels=[ranking[:1]] * 2 if ranking else [],
                       windows=2 if ranking else 0,
                       error="cannot decode: invalid data" if status == "failed" else None, size=1000,
                       mtime_ns=1, tags={"genres": [], "artist": artist, "album": album, "title": None})


@pytest.fixture
def known_index(tmp_path, monkeypatch) -> Path:
    """ROWS, scanned by model A ten days ago and partly by model B yesterday (B is then current)."""
    import tagger.index

    db = tmp_path / "known.db"
    for (model_id, fp), stamp, column in ((MODEL_A, SCANNED_A, 3), (MODEL_B, SCANNED_B, 4)):
        monkeypatch.setattr(tagger.index, "now", lambda stamp=stamp: stamp)
        with Index(db) as index:
            index.note_model(model_id, fp, ["rock", "jazz", "pop", "metal", "other"])
            run = index.start_run("scan", root="/m", model_id=model_id, fingerprint=fp)
            index.record_results([_result(p, a, al, row[column]) for row in ROWS
                                  for p, a, al in [row[:3]] if row[column]], model_id, fp, run)
    return db


def expected(model: str | None = None, keep=lambda row: True, min_confidence=None) -> dict:
    """Per track: (status, genre, confidence), the way the report should see ROWS."""
    out = {}
    for row in filter(keep, ROWS):
        a, b = row[3], row[4]
        outcome = {None: b or a, "a": a, "b": b}[model]
        status, label, score = outcome or ("unpredicted", None, None)
        if min_confidence is not None and (score is None or score < min_confidence):
            continue
        out[row[0]] = (status, label if status == "ok" else None, score)
    return out


def statuses(tracks: dict) -> dict:
    counts = Counter(s for s, _, _ in tracks.values())
    base = {s: counts.get(s, 0) for s in ("ok", "abstained", "failed", "unpredicted")}
    return {**base, "untagged": len(tracks) - base["ok"]}


@pytest.mark.parametrize("options, model, keep, min_conf", [
    (ReportOptions(), None, lambda r: True, None),
    (ReportOptions(model="model-a"), "a", lambda r: True, None),
    (ReportOptions(model="bbbb"), "b", lambda r: True, None),  # fingerprint prefix
    (ReportOptions(model=MODEL_B[1]), "b", lambda r: True, None),
    (ReportOptions(path="/m/Alpha"), None, lambda r: r[0].startswith("/m/Alpha/"), None),  # not /m/Alpha2
    (ReportOptions(folders=("/m/Beta", "/m/Gamma/")), None,
     lambda r: r[0].startswith(("/m/Beta/", "/m/Gamma/")), None),
    (ReportOptions(path="/m/Alpha", folders=("/m/Beta",)), None, lambda r: False, None),
    (ReportOptions(min_confidence=0.5), None, lambda r: True, 0.5),
    (ReportOptions(since=NOW - 2 * DAY), None, lambda r: r[4] is not None, None),
])
def test_statuses_genres_and_filters(known_index, options, model, keep, min_conf):
    want = expected(model, keep, min_conf)
    got = build_report(known_index, options)
    assert got.total == len(want)
    assert {k: got.status[k] for k in statuses(want)} == statuses(want)
    genres = Counter(g for s, g, _ in want.values() if s == "ok")
    assert {g["key"]: g["tracks"] for g in got.groups} == dict(genres)
    for g in got.groups:
        assert g["percent"] == pytest.approx(100 * genres[g["key"]] / sum(genres.values()), abs=0.01)
        scores = [c for s, genre, c in want.values() if s == "ok" and genre == g["key"]]
        assert g["mean_confidence"] == pytest.approx(sum(scores) / len(scores))
    assert [g["tracks"] for g in got.groups] == sorted((g["tracks"] for g in got.groups), reverse=True)
    scored = sorted((c, p) for p, (s, _, c) in want.items() if c is not None)
    assert [(r["confidence"], r["path"]) for r in got.review] == scored[:options.review]
    assert [r["path"] for r in got.failed] == sorted(p for p, (s, _, _) in want.items() if s == "failed")
    hist = Counter(min(int(c * 10), 9) for c, _ in scored)
    assert [b["tracks"] for b in got.confidence] == [hist.get(i, 0) for i in range(10)]


def test_default_report_in_numbers(known_index):
    """The same, spelled out once: B is current for tracks 1, 3, 4; A for the rest."""
    got = build_report(known_index, ReportOptions(review=2))
    assert got.status == {"ok": 5, "abstained": 1, "failed": 1, "unpredicted": 0, "untagged": 2, "written": 0}
    assert [(g["key"], g["tracks"], g["percent"]) for g in got.groups] == [
        ("jazz", 2, 40.0), ("metal", 1, 20.0), ("pop", 1, 20.0), ("rock", 1, 20.0)]
    assert got.groups[0]["mean_confidence"] == pytest.approx((0.6 + 0.95) / 2)
    assert [(r["path"], r["status"], r["genre"]) for r in got.review] == [
        ("/m/Gamma/6 </script><b>&amp;.flac", "abstained", "pop"), ("/m/Beta/Three/4.flac", "ok", "pop")]
    assert got.failed == [{"path": "/m/Beta/Three/5.flac", "error": "cannot decode: invalid data"}]
    assert {m["model_id"]: m["tracks"] for m in got.models} == {"model-a": 4, "model-b": 3}


@pytest.mark.parametrize("by, groups", [
    ("artist", [("Alpha", 3, 3, 0, 0, "jazz"), ("Beta", 2, 1, 0, 1, "pop"),
                ("(unknown artist)", 1, 0, 1, 0, None), ("Delta", 1, 1, 0, 0, "metal")]),
    ("album", [("One", 2, 2, 0, 0, "jazz"), ("Three", 2, 1, 0, 1, "pop"), ("(unknown album)", 1, 0, 1, 0, None),
               ("Four", 1, 1, 0, 0, "metal"), ("Two", 1, 1, 0, 0, "jazz")]),
    ("folder", [("/m/Alpha/One", 2, 2, 0, 0, "jazz"), ("/m/Beta/Three", 2, 1, 0, 1, "pop"),
                ("/m/Alpha/Two", 1, 1, 0, 0, "jazz"), ("/m/Alpha2", 1, 1, 0, 0, "metal"),
                ("/m/Gamma/6 <", 1, 0, 1, 0, None)]),  # "</script>" makes "6 <" a folder
])
def test_group_by_artist_album_folder(known_index, by, groups):
    got = build_report(known_index, ReportOptions(by=by))
    keys = ("key", "tracks", "ok", "abstained", "failed", "top_genre")
    assert [tuple(g[k] for k in keys) for g in got.groups] == groups
    assert [g["percent"] for g in got.groups] == [pytest.approx(100 * g[1] / len(ROWS), abs=0.01) for g in groups]


def test_parse_since():
    assert parse_since("7d", now=NOW) == NOW - 7 * DAY
    assert parse_since("12h", now=NOW) == NOW - 12 * 3600
    assert parse_since("2w", now=NOW) == NOW - 14 * DAY
    assert parse_since("2024-05-01T00:00:00+00:00") == 1714521600
    with pytest.raises(ValueError, match="neither an age"):
        parse_since("last tuesday")


# -- the CLI ----------------------------------------------------------------------------------------------

def invoke(command, args, code=0):
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def test_report_formats(known_index, tmp_path):
    terminal = invoke(report, ["--db", known_index]).output
    for text in ("7 track(s)", "tagged", "jazz", "40.0%", "Review queue", "Failed: 1 file(s)",
                 "cannot decode: invalid data", "model-b"):
        assert text in terminal, text

    data = json.loads(invoke(report, ["--db", known_index, "--json", "--review", "3"]).output)
    assert data["status"]["ok"] == 5 and data["total"] == 7 and len(data["review"]) == 3
    assert "tracks" not in data
    with_tracks = json.loads(invoke(report, ["--db", known_index, "--json", "--tracks"]).output)
    assert sorted(t["path"] for t in with_tracks["tracks"]) == sorted(r[0] for r in ROWS)

    by_album = invoke(report, ["--db", known_index, "--csv", "--by", "album"]).output
    rows = list(csv.DictReader(io.StringIO(by_album)))
    first_two = [(r["album"], r["tracks"], r["top_genre"]) for r in rows[:2]]
    assert first_two == [("One", "2", "jazz"), ("Three", "2", "pop")]
    out = tmp_path / "tracks.csv"
    invoke(report, ["--db", known_index, "--csv", "--tracks", "--model", "model-a", "-o", out])
    tracks = {r["path"]: r for r in csv.DictReader(out.open(newline=""))}
    assert (tracks["/m/Alpha/One/1.flac"]["genre"], tracks["/m/Alpha/One/1.flac"]["artist"]) == ("rock", "Alpha")
    assert tracks["/m/Beta/Three/4.flac"]["status"] == "abstained"
    assert tracks["/m/Gamma/6 </script><b>&amp;.flac"]["artist"] == ""

    page = tmp_path / "report.html"
    invoke(report, ["--db", known_index, "--html", page])
    html = page.read_text(encoding="utf-8")
    assert html.count("<svg") == 2 and 'id="groups-chart"' in html and 'id="confidence-chart"' in html
    assert not any(ref in html for ref in ("src=", "href=", "@import", "url(", "<link"))
    data = html.split('id="tracks-data">')[1].split("</script>")[0]
    assert "6 \\u003c/script\\u003e\\u003cb\\u003e\\u0026amp;.flac" in data  # nothing in it closes <script>
    assert sorted(row[0] for row in json.loads(data)) == sorted(r[0] for r in ROWS)  # and it is the data
    assert "6 &lt;/script&gt;&lt;b&gt;&amp;amp;.flac" in html  # and in the static review table


def test_report_usage_errors(known_index, tmp_path):
    assert "choose one of" in invoke(report, ["--db", known_index, "--json", "--csv"], code=2).output
    assert "--since" in invoke(report, ["--db", known_index, "--since", "soon"], code=2).output
    assert "not in the index" in invoke(report, ["--db", known_index, "--model", "nope"], code=1).output
    out = invoke(report, ["--db", tmp_path / "missing.db"], code=1).output
    assert "no genretag index at" in out and "Traceback" not in out
    assert not (tmp_path / "missing.db").exists()


def test_cli_defaults_match_the_library():
    assert DEFAULT_REVIEW == ReportOptions().review
    from tagger.reporting import commands as report_cli

    assert report_cli.GROUPINGS == GROUPINGS
    code = ("import sys, tagger.reporting.commands; heavy = {'torch', 'transformers', 'sqlite_utils', 'rich'} & "
            "set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- a real scan --------------------------------------------------------------------------------------------

LIBRARY = [("b/rockish/long.flac", "rockish", 65.0), ("b/pulse/short.ogg", "pulse", 4.0),
           ("b/pulse/short.wav", "pulse", 3.0), ("b/swingish/mid.mp3", "swingish", 8.0),
           ("A/breakish/a.m4a", "breakish", 5.0), ("A/ambientish/b.wav", "ambientish", 4.0),
           ("A/ambientish/c.flac", "ambientish", 4.0)]


@pytest.fixture(scope="module")
def scanned(tiny_wav2vec2, tmp_path_factory):
    """A small library plus an unreadable file: scanned with tags written (the 4 tracks under b/ stay
    tagged), then A/ scanned again with a threshold no score reaches (3 abstained)."""
    from tagger import ScanSettings, tag_folder
    from tagger.demo import encode, synth

    root = tmp_path_factory.mktemp("scanned")
    lib = root / "lib"
    for i, (name, style, seconds) in enumerate(LIBRARY):
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        encode(synth(style, seconds, seed=i, sample_rate=16000), lib / name, sample_rate=16000)
    (lib / "broken.mp3").write_text("not audio")
    db = root / "index.db"
    first = tag_folder(lib, ScanSettings(model=str(tiny_wav2vec2), db=str(db), min_confidence=0.0,
                                         write_tags=True), keep_results=True)
    second = tag_folder(lib / "A", ScanSettings(model=str(tiny_wav2vec2), db=str(db), min_confidence=1.0,
                                                rescan=True))
    assert (first.tagged, first.failed, second.abstained) == (7, 1, 3)
    return lib, db, {r.path: r for r in first.results}


def test_report_on_a_real_scan(scanned):
    lib, db, results = scanned
    got = build_report(db, ReportOptions(review=20))
    assert (got.total, got.status["ok"], got.status["abstained"], got.status["failed"]) == (8, 4, 3, 1)
    assert got.status["written"] == 4  # the A/ predictions were replaced by the abstentions
    under_b = [r for p, r in results.items() if p.startswith(str(lib / "b") + "/")]
    assert {g["key"]: g["tracks"] for g in got.groups} == dict(Counter(r.labels[0] for r in under_b))
    conn = sqlite3.connect(db)
    truth = dict(conn.execute("select t.path, coalesce(json_extract(p.scores, '$[0]'), "
                              "json_extract(p.ranking, '$[0][1]')) from tracks t join predictions p "
                              "on p.path = t.path and p.fingerprint = t.fingerprint "
                              "where p.status != 'failed'"))
    by_confidence = sorted(truth.items(), key=lambda kv: (kv[1], kv[0]))
    assert [(r["path"], r["confidence"]) for r in got.review] == by_confidence
    assert [r["path"] for r in got.failed] == [str(lib / "broken.mp3")] and got.failed[0]["error"]
    a_only = build_report(db, ReportOptions(path=str(lib / "A")))
    assert (a_only.total, a_only.status["abstained"]) == (3, 3)
    result = invoke(report, [str(lib / "b"), "--db", db, "--json"])
    assert json.loads(result.output)["status"]["ok"] == 4


def test_show_a_tagged_track(scanned):
    lib, db, results = scanned
    path, result = next((p, r) for p, r in sorted(results.items()) if "/b/" in p and r.windows > 1)
    details = json.loads(invoke(show, [path, "--db", db, "--json"]).output)
    assert details["tags"]["genres"] == result.labels  # read from the file now
    assert details["track"]["status"] == "ok" and details["track"]["size"] == os.stat(path).st_size
    (prediction,) = details["predictions"]
    assert prediction["current"] and prediction["labels"] == result.labels
    assert [label for label, _ in prediction["ranking"]] == [label for label, _ in result.ranking]
    assert prediction["window_top"] == [w[0][0] for w in result.window_labels]
    assert len(prediction["window_top"]) == result.windows
    (write,) = details["writes"]
    assert write["old_genres"] == [] and write["new_genres"] == result.labels and write["undone_at"] is None
    terminal = invoke(show, [path, "--db", db]).output
    assert "Tag writes" in terminal and result.labels[0] in terminal and "current" in terminal


def test_show_other_cases(scanned, tmp_path):
    lib, db, _ = scanned
    abstained = lib / "A/breakish/a.m4a"
    details = track_details(db, abstained)
    assert details["track"]["status"] == "abstained"
    assert details["predictions"][0]["labels"] == [] and details["predictions"][0]["ranking"]
    outside = tmp_path / "new.wav"
    shutil.copy(lib / "b/pulse/short.wav", outside)
    assert "Not in the index" in invoke(show, [outside, "--db", db]).output
    assert "not in the index" in invoke(show, [tmp_path / "gone.flac", "--db", db], code=1).output
    failed = json.loads(invoke(show, [lib / "broken.mp3", "--db", db, "--json"]).output)
    assert failed["track"]["status"] == "failed" and failed["track"]["error"]


def test_models(scanned, tiny_wav2vec2, tmp_path):
    from tagger.models.identity import register_trained_model, weights_fingerprint

    _, db, _ = scanned
    register_trained_model(tiny_wav2vec2, {"accuracy": 0.5})
    register_trained_model(tmp_path / "deleted-checkpoint")
    overview = json.loads(invoke(models, ["--db", db, "--json"]).output)
    fp = weights_fingerprint(tiny_wav2vec2)
    (seen,) = overview["seen"]
    counts = tuple(seen[k] for k in ("fingerprint", "predictions", "ok", "abstained", "failed"))
    assert counts == (fp, 8, 4, 3, 1)
    assert seen["labels"] == ["blues", "jazz", "metal", "pop"] and seen["current_tracks"] == 8
    available = {a["model"]: a for a in overview["available"]}
    trained = available[str(tiny_wav2vec2)]
    assert trained["fingerprint"] == fp and trained["in_index"] and trained["info"] == {"accuracy": 0.5}
    # registering lists a checkpoint; only `genretag models use` (or train --make-default) makes it the default
    assert not trained["default"] and overview["default"] == "builtin:musicnn-msd"
    assert available[str(tmp_path / "deleted-checkpoint")]["missing"]
    assert "Available checkpoints" in invoke(models, ["--db", db]).output
    empty = model_overview(tmp_path / "none.db")
    assert empty["seen"] == [] and not (tmp_path / "none.db").exists()


def test_models_reads_whole_in_an_80_column_terminal(scanned, tiny_wav2vec2):
    """No heading cut to "late…", no model name broken inside a word, and a trained model's figures
    rounded as a person reads them."""
    from tagger.models.identity import register_trained_model

    _, db, _ = scanned
    register_trained_model(tiny_wav2vec2, {"accuracy": 0.5, "cv_accuracy": 0.7744444444444445})
    result = CliRunner().invoke(models, ["--db", str(db)], env={"COLUMNS": "80"}, catch_exceptions=False)
    out = result.output
    assert max(len(line) for line in out.splitlines()) <= 80 and "…" not in out, out
    assert "builtin:musicnn-msd" in out and "builtin:musicnn-mtt" in out, out
    assert "cv_accuracy=0.774" in out and "0.77444" not in out, out
    for heading in ("preds", "ok", "abst.", "failed", "latest", "last seen"):
        assert heading in out, (heading, out)


def test_builtin_models_are_listed_with_the_fingerprint_scans_record():
    musicnn = pytest.importorskip("tagger.models.musicnn")
    overview = model_overview("/nonexistent/index.db")
    builtins = {a["model"]: a["fingerprint"] for a in overview["available"] if a["kind"] == "builtin"}
    assert sorted(builtins) == sorted(f"builtin:{n}" for n in musicnn.BUILTIN_MODELS)
    for name in musicnn.BUILTIN_MODELS:
        assert builtins[f"builtin:{name}"] == musicnn.load_builtin(name).fingerprint


def test_report_as_a_real_subprocess(known_index):
    proc = subprocess.run([sys.executable, "-c", "from tagger.reporting.commands import report; report()", "--db",
                           str(known_index), "--json"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"]["failed"] == 1


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs chromium (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "report_html_check.py"), "--tracks", "400",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok ") >= 8 and (tmp_path / "report.png").is_file()
