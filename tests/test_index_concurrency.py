"""The index is safe to share: versioned schema with step-by-step migrations, and several real processes
(scans, writers, reports) on one file at once without corruption or inconsistent answers."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import tagger.cli
import tagger.index
from tagger.errors import GenretagError
from tagger.index import MIGRATIONS, SCHEMA_VERSION, Index
from tagger.reporting.report import ReportOptions, build_report
from tagger.reporting.commands import report

REPORT_CMD = [sys.executable, "-c", "from tagger.reporting.commands import report; report()"]


def schema(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return sorted(conn.execute("select type, name, tbl_name, sql from sqlite_master "
                                   "where name != 'sqlite_sequence'"))
    finally:
        conn.close()


def index_at_version(path: Path, version: int) -> Path:
    """An index as genretag at schema ``version`` left it, holding one track and its prediction."""
    import sqlite_utils

    db = sqlite_utils.Database(path)
    for step in range(version):
        MIGRATIONS[step](db)
    db["meta"].upsert({"key": "schema_version", "value": str(version)}, pk="key")
    db["tracks"].insert({"path": "/m/x.flac", "status": "ok", "fingerprint": "f" * 16, "model_id": "m",
                         "updated_at": 1.0})
    db["predictions"].insert({"path": "/m/x.flac", "fingerprint": "f" * 16, "model_id": "m", "status": "ok",
                              "labels": '["rock"]', "scores": "[0.9]", "ranking": '[["rock", 0.9]]',
                              "created_at": 1.0})
    db.conn.close()
    return path


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("pragma integrity_check").fetchone()[0]
    finally:
        conn.close()


def query(db: Path, sql: str, args=()) -> list[tuple]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# -- lookups ----------------------------------------------------------------------------------------------
def test_cached_predictions_answers_for_many_paths_and_only_for_one_model(tmp_path):
    """More paths than one query takes, two models, a name that is not UTF-8: each path gets its own
    model's row or none."""
    from tagger.records import OK, TrackResult

    count = 2 * tagger.index.LOOKUP_CHUNK + 7
    paths = [f"/music/{i:05d}.flac" for i in range(count)] + [os.fsdecode(b"/music/caf\xe9.mp3")]
    with Index(tmp_path / "i.db") as index:
        run = index.start_run("scan")
        for fingerprint, label in (("a" * 16, "rock"), ("b" * 16, "jazz")):
            index.record_results([TrackResult(p, OK, labels=[label], scores=[0.5], size=i, mtime_ns=i)
                                  for i, p in enumerate(paths) if i % 3], "m", fingerprint, run)
        asked = [*paths, "/music/never-scanned.mp3"]
        found = index.cached_predictions(asked, "a" * 16)
    expected = {tagger.index.path_key(p): i for i, p in enumerate(paths) if i % 3}
    assert {k: row["size"] for k, row in found.items()} == expected
    assert {row["labels"] for row in found.values()} == {'["rock"]'}  # labels stay JSON: decide() compares the text


# -- versions ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION + 1))
def test_an_index_of_every_known_version_opens_at_the_current_one(tmp_path, version):
    Index(tmp_path / "fresh.db").close()
    old = index_at_version(tmp_path / "old.db", version)
    with Index(old) as index:
        assert index.schema_version() == SCHEMA_VERSION
        assert index.track("/m/x.flac")["status"] == "ok"
    assert schema(old) == schema(tmp_path / "fresh.db")
    assert build_report(old).status["ok"] == 1


def test_a_version_1_index_is_migrated_step_by_step(tmp_path, monkeypatch):
    """Every step from version 1 runs, in order, once, when a version-1 index is opened — here with a
    stand-in last step that records itself and adds an index; the report's own connection migrates too."""
    ran, last = [], SCHEMA_VERSION + 1
    steps = {step: tagger.index.MIGRATIONS[step] for step in range(1, SCHEMA_VERSION)}

    def recorded(step):
        def run(db):
            ran.append(step + 1)
            if step + 1 == last:
                db["tracks"].create_index(["artist"], if_not_exists=True)
            else:
                steps[step](db)
        return run

    monkeypatch.setattr(tagger.index, "SCHEMA_VERSION", last)
    for step in range(1, last):
        monkeypatch.setitem(tagger.index.MIGRATIONS, step, recorded(step))
    old = index_at_version(tmp_path / "v1.db", 1)
    report_ = build_report(old)  # opens through tagger.reporting.report.connect
    assert report_.total == 1 and ran == list(range(2, last + 1))
    with Index(old) as index:
        assert index.schema_version() == last
    assert ran == list(range(2, last + 1))
    assert ("index", "idx_tracks_artist") in [(t, n) for t, n, _, _ in schema(old)]
    columns = [r[1] for r in query(old, "pragma table_info(tag_writes)")]
    assert columns[-2:] == ["note", "created_at"]


def test_a_newer_index_is_refused_and_left_alone(tmp_path):
    db = index_at_version(tmp_path / "future.db", SCHEMA_VERSION)
    query(db, "select 1")
    conn = sqlite3.connect(db)
    conn.execute("update meta set value = ? where key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    conn.commit()
    conn.close()
    before = schema(db)
    message = (f"index schema {SCHEMA_VERSION + 1} is newer than this genretag ({SCHEMA_VERSION}); "
               "upgrade genretag")
    with pytest.raises(GenretagError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Index(db)
    with pytest.raises(GenretagError, match="newer than this genretag"):
        build_report(db)
    result = CliRunner().invoke(report, ["--db", str(db)])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert schema(db) == before


def test_a_file_that_is_not_an_index_is_not_written(tmp_path):
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("create table notes (x)")
    conn.commit()
    conn.close()
    with pytest.raises(GenretagError, match="not a genretag index"):
        build_report(other)
    assert [n for _, n, _, _ in schema(other)] == ["notes"]


# -- several processes ------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    from types import SimpleNamespace
    from tagger.index import Index
    from tagger.records import TrackResult
    from tagger.tagging.journal import Journal
    from tagger.tagging.tags import UndoRecord

    db, first, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    with Index(db) as index:
        index.note_model("stress", "5" * 16, ["a", "b"])
        run = index.start_run("scan", root="/stress")
        for i in range(first, first + count, 3):
            batch = [TrackResult(f"/stress/{j:04d}.flac", "ok" if (j + seed) % 4 else "abstained",
                                 labels=["a"] if (j + seed) % 4 else [], scores=[0.5] if (j + seed) % 4 else [],
                                 ranking=[("a", 0.5), ("b", 0.2)], windows=1, size=j, mtime_ns=seed,
                                 tags={"genres": [], "artist": f"w{seed}", "album": None, "title": None})
                     for j in range(i, min(i + 3, first + count))]
            index.record_results(batch, "stress", "5" * 16, run)
            if i % 30 == 0:
                change = SimpleNamespace(path=batch[0].path, before={}, after={}, old_genres=[],
                                         new_genres=["a"])
                journal = Journal(index, run)
                entry = journal.begin(change.path, ["a"], before={}, old_genres=[])
                journal.replacing(entry, UndoRecord("0" * 64, "1" * 64, 1, 1, seed, seed, seed, b""))
                journal.written(entry, change, "5" * 16, 1, seed)
        index.finish_run(run, scanned=count)
""")


def test_connections_opening_one_new_index_at_once_all_succeed(tmp_path):
    """Opening a new index switches it to WAL, which needs an exclusive lock; when two connections race
    for it, SQLite answers one 'database is locked' at once, without a busy wait (1 in 6 trials failed
    before Index retried)."""
    import threading

    for trial in range(30):
        path, ready, errors = tmp_path / f"{trial}.db", threading.Barrier(6), []

        def open_it():
            ready.wait()
            try:
                Index(path).close()
            except sqlite3.OperationalError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [], f"trial {trial}"
        with Index(path) as index:
            assert index.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert index.schema_version() == SCHEMA_VERSION


def test_two_writer_processes_and_reports_on_one_index(tmp_path):
    """Two processes each commit ~100 small batches through Index, on overlapping paths, while this
    process reports: no lock error, no corruption, one row per track, and every report is a snapshot in
    which each track already has its prediction (both are written in one transaction)."""
    db = tmp_path / "stress.db"
    Index(db).close()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(first), "300", str(seed)],
                                stderr=subprocess.PIPE, text=True)
               for first, seed in ((0, 1), (150, 2))]
    totals = []
    while any(w.poll() is None for w in writers):
        got = build_report(db, ReportOptions(by="artist"))
        assert got.status["unpredicted"] == 0
        assert got.total == got.status["ok"] + got.status["abstained"] + got.status["failed"]
        assert sum(g["tracks"] for g in got.groups) == got.total
        totals.append(got.total)
    for w in writers:
        assert w.wait() == 0, w.stderr.read()
    assert totals == sorted(totals), "a later report saw fewer tracks than an earlier one"
    assert any(0 < total < 450 for total in totals), totals
    assert integrity(db) == "ok"
    assert query(db, "select count(*), count(distinct path) from tracks") == [(450, 450)]
    assert query(db, "select count(*) from predictions") == [(450,)]
    assert query(db, "select count(*) from tag_writes") == [(20,)]
    assert query(db, "select count(*) from runs where finished_at is not null") == [(2,)]
    assert build_report(db).total == 450


TRACKS, IN_Y = 80, 20  # the scan of Y/ ends (and commits) well before the scan of everything


@pytest.fixture(scope="module")
def short_library(tmp_path_factory) -> Path:
    """Two-second WAV tracks: X/ and the smaller Y/."""
    from tagger.demo import STYLES, synth, write_wav

    root = tmp_path_factory.mktemp("short")
    styles = list(STYLES)
    for i in range(TRACKS):
        folder = root / ("X" if i < TRACKS - IN_Y else "Y") / styles[i % len(styles)]
        folder.mkdir(parents=True, exist_ok=True)
        samples = synth(styles[i % len(styles)], 2.0, seed=i, sample_rate=16000)
        write_wav(folder / f"{i:03d}.wav", samples, 16000)
    return root


SCAN_AT_BARRIER = textwrap.dedent("""
    import os, sys, time
    import tagger.cli, tagger.pipeline, tagger.models.infer, torch, transformers  # the slow part of starting up
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
    from transformers import Wav2Vec2ForSequenceClassification
    ready, go = sys.argv[1:3]
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    sys.argv = ["genretag", *sys.argv[3:]]
    tagger.cli.main()
""")


def scans_started_together(runs: list[list[str]], tmp_path: Path) -> list[subprocess.Popen]:
    """`genretag scan ...` processes (the console script's own entry point, tagger.cli:main) that import
    their heavy modules first and then start at the same moment, so that the scans surely overlap."""
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", SCAN_AT_BARRIER, str(tmp_path / f"ready{i}"), str(go),
                               *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, args in enumerate(runs)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(len(runs))):
        assert time.monotonic() < deadline, "the scan processes did not get ready"
        assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs if p.poll() is not None]
        time.sleep(0.05)
    go.touch()
    return procs


def test_two_scans_on_overlapping_folders_and_a_report_meanwhile(short_library, tiny_wav2vec2, tmp_path):
    """`genretag scan` of the whole library and of Y/ at once, on one index, while reports run (in this
    process and as `genretag report` processes)."""
    db = tmp_path / "shared.db"
    options = ["--model", str(tiny_wav2vec2), "--db", str(db), "--workers", "1", "--min-confidence", "0"]
    scans = scans_started_together([["scan", str(short_library), *options],
                                    ["scan", str(short_library / "Y"), *options]], tmp_path)
    seen, cli_reports, last_cli = [], [], 0.0
    while any(s.poll() is None for s in scans):
        if db.exists() and query(db, "select count(*) from sqlite_master where name = 'predictions'")[0][0]:
            result = CliRunner().invoke(report, ["--db", str(db), "--json"], catch_exceptions=False)
            got = json.loads(result.output)
            status = got["status"]
            assert status["unpredicted"] == 0, "a track was visible without its prediction"
            assert got["total"] == status["ok"] + status["abstained"] + status["failed"]
            assert sum(g["tracks"] for g in got["groups"]) == status["ok"]
            assert sum(b["tracks"] for b in got["confidence"]) == status["ok"] + status["abstained"]
            seen.append(got["total"])
            if time.monotonic() - last_cli > 1.0 and len(cli_reports) < 2:
                last_cli = time.monotonic()
                cli_reports.append(subprocess.Popen([*REPORT_CMD, "--db", str(db), "--json"],
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(0.05)
    for s in scans:
        out, err = s.communicate()
        assert s.returncode == 0, err
    for proc in cli_reports:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        status = json.loads(out)["status"]
        assert json.loads(out)["total"] == status["ok"] + status["abstained"] + status["failed"]

    assert integrity(db) == "ok"
    assert query(db, "select count(*), count(distinct path) from tracks") == [(TRACKS, TRACKS)]
    rows = query(db, "select path, size, mtime_ns, status from predictions")
    assert len(rows) == TRACKS and {r[3] for r in rows} == {"ok"}
    for path, size, mtime_ns, _ in rows:
        st = os.stat(path)
        assert (size, mtime_ns) == (st.st_size, st.st_mtime_ns)
    runs = query(db, "select root, scanned + skipped, started_at, finished_at from runs order by id")
    expected_runs = sorted([(short_library.name, TRACKS), ("Y", IN_Y)])
    assert sorted((Path(r[0]).name, r[1]) for r in runs) == expected_runs
    (_, _, start_a, end_a), (_, _, start_b, end_b) = runs
    assert start_a < end_b and start_b < end_a, "the two scans did not overlap in time"
    assert any(0 < total < TRACKS for total in seen), f"no report landed mid-scan: {seen}"
    assert build_report(db).total == TRACKS


@pytest.mark.parametrize("shared_index", [True, False], ids=["one-index", "two-indexes"])
def test_two_writing_scans_on_the_same_files(short_library, tiny_wav2vec2, tmp_path, shared_index):
    """Two `scan --write-tags` processes over the same files at once: every file is written exactly
    once (the per-file lock makes the later writer see the file replaced), holds the predicted genre,
    keeps its audio, and undo restores it."""
    import shutil

    from tagger.tagging.tags import TEMP_RE, audio_digest, read_genres, snapshot_genres

    lib = Path(shutil.copytree(short_library / "Y", tmp_path / "Y"))
    files = sorted(p for p in lib.rglob("*.wav"))
    before = {p: (audio_digest(p), snapshot_genres(p)) for p in files}
    dbs = [tmp_path / "a.db", tmp_path / ("a.db" if shared_index else "b.db")]
    options = ["--model", str(tiny_wav2vec2), "--write-tags", "--workers", "1", "--min-confidence", "0"]
    scans = scans_started_together([["scan", str(lib), *options, "--db", str(db)] for db in dbs], tmp_path)
    for s in scans:
        out, err = s.communicate(timeout=300)
        assert s.returncode == 0, err

    writes: dict[str, int] = {}
    for db in set(dbs):
        assert integrity(db) == "ok"
        for (path,) in query(db, "select path from tag_writes where state = 'written'"):
            writes[path] = writes.get(path, 0) + 1
        labels = dict(query(db, "select path, labels from predictions"))
        for p in files:
            assert read_genres(p) == json.loads(labels[str(p)])
    assert writes == {str(p): 1 for p in files}, "a file was written twice, or not at all"
    assert not [p for p in lib.rglob("*") if TEMP_RE.match(p.name)]
    assert all(audio_digest(p) == before[p][0] for p in files)

    for db in set(dbs):
        for (run_id,) in query(db, "select distinct run_id from tag_writes"):
            result = CliRunner().invoke(tagger.cli.cli, ["undo", "--db", str(db), "--run", str(run_id)],
                                        catch_exceptions=False)
            assert result.exit_code == 0, result.output
    assert all(snapshot_genres(p) == before[p][1] for p in files)
