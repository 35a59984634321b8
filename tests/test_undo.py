"""`genretag undo` gives back the exact bytes, never clobbers a later change, and shares the per-file lock
with scans: real files in every format, real scans and undos (CliRunner and real processes), the real
SQLite index."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mutagen
import pytest
from click.testing import CliRunner

from tagger.cli import EXIT_FILES_FAILED, cli
from tagger.errors import TagWriteError, UnsupportedFormat
from tagger.index import MIGRATIONS, Index, path_key
from tagger.tagging.tags import (TEMP_RE, UNDO_LIMIT, read_genres, restore_exact, snapshot_genres,
                                 write_genres)
from tests.audio_fixtures import encoder_for, ffmpeg_available, have_encoder, make_audio
from tests.index_rows import rows
from tests.shared_data import MUTAGEN_CORPUS

pytestmark = pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg and ffprobe on PATH")

GENRETAG = str(Path(sys.executable).with_name("genretag"))
CORPUS = MUTAGEN_CORPUS
OLD = 978_307_200 * 10**9  # 2001-01-01: a modification time no write can produce by accident

# One file per format audio_fixtures makes (and per tag layout that undo used to get wrong).
FILES = {
    "v23-latin1.mp3": {"id3_version": 3, "tags": {"genre": "Blues", "title": "T"}},
    "v24-v1.mp3": {"id3_version": 4, "with_id3v1": True},
    "untagged.mp3": {"id3_version": 0},
    "a.flac": {"tags": {"genre": "Blues"}},
    "a.ogg": {"tags": {"genre": "Blues"}},
    "a.opus": {},
    "a.oga": {},
    "a.spx": {},  # not a name a scan picks up (tagger.settings.AUDIO_EXTENSIONS): written by the API only
    "aac.m4a": {},
    "alac.m4a": {"codec": "alac"},
    "info.wav": {"tags": {"genre": "Blues"}},
    "plain.wav": {},
    "a.aiff": {},
    "a.wma": {},
    "a.wv": {"tags": {"genre": "Blues"}},
}


def state(path: Path) -> tuple[str, int]:
    """What undo must give back: every byte (sha256) and the modification time."""
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def scan(folder: Path, db: Path, model: Path, *extra: str):
    return CliRunner().invoke(cli, ["scan", str(folder), "--write-tags", "--model", str(model), "--db", str(db),
                                    "--min-confidence", "0", *extra], catch_exceptions=False)


def undo(db: Path, *args: str):
    return CliRunner().invoke(cli, ["undo", "--db", str(db), *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def formats_src(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("formats")
    for name, options in FILES.items():
        if have_encoder(encoder_for(Path(name).suffix, options.get("codec"))):
            make_audio(folder / name, seconds=1.0, **options)
    return folder


@pytest.fixture
def formats(formats_src, tmp_path) -> Path:
    """A private copy of one file per format a scan picks up, each modified long ago."""
    from tagger.settings import AUDIO_EXTENSIONS

    folder = tmp_path / "lib"
    folder.mkdir()
    for path in formats_src.iterdir():
        if path.suffix[1:].lower() in AUDIO_EXTENSIONS:
            shutil.copyfile(path, folder / path.name)
            os.utime(folder / path.name, ns=(OLD, OLD))
    return folder


# -- byte for byte ------------------------------------------------------------------------------------------
def test_scan_then_undo_gives_back_every_format_byte_for_byte(formats, tmp_path, tiny_wav2vec2):
    """After `scan --write-tags` and `undo` (even `undo --keep-mtime`) every file has its original bytes
    and modification time: no new padding, moved frames, renamed Vorbis keys, empty ID3 tag or chunk."""
    before = {p.name: state(p) for p in formats.iterdir()}
    db = tmp_path / "index.db"
    assert scan(formats, db, tiny_wav2vec2).exit_code == 0
    assert all(state(formats / name) != before[name] for name in before), "a file was not written"
    out = undo(db, "--keep-mtime")
    assert {p.name: state(p) for p in formats.iterdir()} == before
    assert out.exit_code == 0, out.output
    assert f"Restored {len(before)} file(s); 0 failed. {len(before)} byte for byte" in out.stdout
    history = json.loads(CliRunner().invoke(cli, ["history", "--db", str(db), "--json"]).output)
    assert [(r["command"], r["writes"]) for r in history] == [("undo", 0), ("scan", len(before))]


@pytest.mark.parametrize("name", list(FILES))
def test_restore_exact_gives_back_the_original_of_every_format(formats_src, tmp_path, name):
    if not (formats_src / name).exists():
        pytest.skip(f"this FFmpeg cannot make {name}")
    path = Path(shutil.copyfile(formats_src / name, tmp_path / name))
    os.utime(path, ns=(OLD, OLD))
    before = state(path)
    change = write_genres(path, ["Rock", "Shoegaze"], provenance="model=x", record_undo=True)
    assert change.written and state(path) != before
    assert change.undo.before_mtime_ns == OLD and change.undo.after_size == path.stat().st_size
    restore_exact(path, change.undo)
    assert state(path) == before


def test_an_ogg_whose_pages_are_all_renumbered_comes_back_from_little_undo_data(tmp_path):
    """The first tag write to an Ogg of a few MB as FFmpeg makes it (comment and setup header on one
    page) gives the comment kBs of padding, so mutagen lays the header out on more pages and renumbers
    every later page (sequence number and CRC): undo still needs a fraction of a percent."""
    from mutagen.ogg import OggPage

    def last_sequence(path: Path) -> int:
        with open(path, "rb") as f:
            return OggPage.find_last(f, OggPage(f).serial).sequence

    path = tmp_path / "noise.ogg"  # 4.4 MB: white noise at the highest Vorbis quality
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "anoisesrc=color=white:sample_rate=44100:amplitude=0.5:seed=1", "-ac", "2", "-t", "90",
                    "-c:a", "libvorbis", "-q:a", "10", "-bitexact", "-map_metadata", "-1", str(path)], check=True)
    os.utime(path, ns=(OLD, OLD))
    before, sequence = state(path), last_sequence(path)
    change = write_genres(path, ["Rock"], record_undo=True)
    assert last_sequence(path) != sequence, "no page was renumbered"
    assert len(change.undo.data) < path.stat().st_size // 200
    restore_exact(path, change.undo)
    assert state(path) == before


def _corpus_rows() -> list[dict]:
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.exists():
        return []
    with open(manifest, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f, delimiter="\t") if r["taggable_mutagen"] == "yes"]


@pytest.mark.skipif(not _corpus_rows(), reason=f"mutagen test corpus not found at {CORPUS}")
def test_every_writable_corpus_file_comes_back_byte_for_byte(tmp_path):
    """mutagen's own real-world and malformed files: each one genretag can write is given back exactly,
    with undo data far below the limit."""
    written, sizes = 0, {}
    for row in _corpus_rows():
        path = tmp_path / row["file"]
        shutil.copyfile(CORPUS / row["file"], path)
        os.chmod(path, 0o644)
        os.utime(path, ns=(OLD, OLD))
        before = state(path)
        try:
            change = write_genres(path, ["Rock", "Shoegaze"], provenance="model=x", record_undo=True)
        except (TagWriteError, UnsupportedFormat):
            assert state(path) == before, row["file"]
            continue
        assert change.written and state(path) != before, row["file"]
        restore_exact(path, change.undo)
        assert state(path) == before, row["file"]
        written += 1
        sizes[row["file"]] = len(change.undo.data)
    assert written >= 40, sizes
    assert max(sizes.values()) < UNDO_LIMIT // 16, sizes


def test_a_write_whose_undo_data_would_pass_the_limit_is_refused(formats):
    path = formats / "a.flac"
    before = state(path)
    with pytest.raises(TagWriteError, match=r"to undo this write exactly would take .* MB \(limit"):
        write_genres(path, ["Rock"], record_undo=True, undo_limit=10)
    assert state(path) == before and not [p for p in formats.iterdir() if TEMP_RE.match(p.name)]


# -- compare-and-swap ---------------------------------------------------------------------------------------
def test_undo_leaves_a_file_changed_since_and_force_restores_its_genre_fields(formats, tmp_path, tiny_wav2vec2):
    """A title edited by hand (genres untouched) and a genre edited by hand: undo leaves both, says why on
    one line each and exits 3; every other file comes back exactly. --force then restores their genre
    fields, says that this was not byte for byte, and keeps the hand-made title."""
    before = {p.name: state(p) for p in formats.iterdir()}
    genres = {p.name: read_genres(p) for p in formats.iterdir()}
    db = tmp_path / "index.db"
    assert scan(formats, db, tiny_wav2vec2).exit_code == 0
    titled, regenred = formats / "a.flac", formats / "a.ogg"
    audio = mutagen.File(titled)
    audio["title"] = ["Edited by hand"]
    audio.save()
    audio = mutagen.File(regenred)
    audio["genre"] = ["Polka"]
    audio.save()
    edited = {p.name: state(p) for p in (titled, regenred)}

    out = undo(db)
    assert out.exit_code == EXIT_FILES_FAILED, out.output
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert sorted(errors) == sorted(f"error: {p}: changed since genretag wrote it (by another program); not "
                                    "restored (--force restores its genre fields)" for p in (titled, regenred))
    assert f"Restored {len(before) - 2} file(s); 2 failed." in out.stdout
    assert {p.name: state(p) for p in formats.iterdir()} == {**before, **edited}

    forced = undo(db, "--force")
    assert forced.exit_code == 0, forced.output
    assert "Restored 2 file(s); 0 failed. 2 by their genre fields only (not byte for byte)." in forced.stdout
    notes = [line for line in forced.stderr.splitlines() if line.startswith("note:")]
    assert sorted(notes) == sorted(f"note: {p}: genre fields restored, not byte for byte (--force)"
                                   for p in (titled, regenred))
    assert read_genres(titled) == genres["a.flac"] and read_genres(regenred) == genres["a.ogg"]
    assert mutagen.File(titled)["title"] == ["Edited by hand"]


def _interleaved_writes(db: Path, path: Path) -> tuple[int, int]:
    """Two scans on one index writing ``path``: run A journals first, run B writes first, then A writes
    over B's result (the journal's ids and run numbers say A came first; the file says B did)."""
    from tagger.tagging.journal import Journal

    with Index(db) as index:
        run_a, run_b = index.start_run("scan", fingerprint="a" * 16), index.start_run("scan", fingerprint="b" * 16)
        a, b = Journal(index, run_a), Journal(index, run_b)
        entry_a, entry_b = a.begin(str(path), ["Rock"]), b.begin(str(path), ["Jazz"])
        for journal, entry, genre in ((b, entry_b, "Jazz"), (a, entry_a, "Rock")):
            change = write_genres(path, [genre], mode="merge", temp=entry.temp,
                                  before_replace=lambda record: journal.replacing(entry, record))
            st = path.stat()
            journal.written(entry, change, journal is a and "a" * 16 or "b" * 16, st.st_size, st.st_mtime_ns)
        for run in (run_a, run_b):
            index.finish_run(run)
    return run_a, run_b


def test_undo_unwinds_interleaved_runs_in_the_order_the_writes_happened(formats, tmp_path):
    db = tmp_path / "index.db"
    by_run, by_path = formats / "a.flac", formats / "a.ogg"
    original = {p: (state(p), read_genres(p)) for p in (by_run, by_path)}
    run_a, run_b = _interleaved_writes(db, by_run)
    _interleaved_writes(db, by_path)
    assert read_genres(by_run) == ["Blues", "Jazz", "Rock"]
    after_b = None

    out = undo(db, "--run", str(run_b), str(by_run))
    assert out.exit_code == EXIT_FILES_FAILED
    assert f"error: {by_run}: written again by run {run_a} since; undo that run first" in out.stderr
    assert read_genres(by_run) == ["Blues", "Jazz", "Rock"]
    assert undo(db, "--run", str(run_a), str(by_run)).exit_code == 0
    assert read_genres(by_run) == ["Blues", "Jazz"]
    after_b = state(by_run)
    assert undo(db, "--run", str(run_b), str(by_run)).exit_code == 0
    assert (state(by_run), read_genres(by_run)) == original[by_run] and after_b != original[by_run][0]

    both = undo(db, str(by_path))  # every run's writes to it, newest first
    assert both.exit_code == 0 and "Restored 1 file(s); 0 failed. 1 byte for byte" in both.stdout
    assert (state(by_path), read_genres(by_path)) == original[by_path] == (original[by_path][0], ["Blues"])


# -- one lock for scans and undo: real processes -------------------------------------------------------------
HOOKED = textwrap.dedent("""
    import os, signal, sys, time
    import tagger.tagging.tags as tags

    how, paused, go = sys.argv[1:4]

    def pause():
        open(paused, "w").close()
        while not os.path.exists(go):
            time.sleep(0.02)

    if how == "before-write":  # the write is journalled, the file not yet locked
        write = tags.write_genres
        def hooked(*args, **kwargs):
            pause()
            return write(*args, **kwargs)
        tags.write_genres = hooked
    else:  # at the rename: the copy is complete and the file locked
        rename = os.replace
        def hooked(src, dst, *args, **kwargs):
            if tags.TEMP_RE.match(os.path.basename(os.fspath(src))):
                if how == "kill-at-rename":
                    os.kill(os.getpid(), signal.SIGKILL)
                pause()
            return rename(src, dst, *args, **kwargs)
        os.replace = hooked
    sys.argv = ["genretag", *sys.argv[4:]]
    from tagger.cli import main
    main()
""")


def hooked_scan(how: str, folder: Path, db: Path, model: Path, tmp_path: Path) -> subprocess.Popen:
    """A real `genretag scan --write-tags` process that stops at ``how`` (``before-write``,
    ``at-rename``: until ``tmp_path/go`` exists; ``kill-at-rename``: SIGKILLs itself there)."""
    proc = subprocess.Popen([sys.executable, "-c", HOOKED, how, str(tmp_path / "paused"), str(tmp_path / "go"),
                             "scan", str(folder), "--write-tags", "--model", str(model), "--db", str(db),
                             "--min-confidence", "0", "--workers", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (tmp_path / "paused").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the scan never reached its write"
        time.sleep(0.05)
    return proc


@pytest.fixture
def one_flac(formats, tmp_path) -> Path:
    folder = tmp_path / "one"
    folder.mkdir()
    target = Path(shutil.copy2(formats / "a.flac", folder / "a.flac"))
    return target


def test_an_undo_during_a_scan_cancels_a_write_not_yet_made(one_flac, tmp_path, tiny_wav2vec2):
    """Undo of the run while its scan has journalled the write but not made it: the write is cancelled
    (never made, never marked undone), the scan reports the file as failed, and the file keeps its bytes."""
    before, db = state(one_flac), tmp_path / "index.db"
    scanning = hooked_scan("before-write", one_flac.parent, db, tiny_wav2vec2, tmp_path)
    out = subprocess.run([GENRETAG, "undo", "--db", str(db), "--run", "1"], capture_output=True, text=True,
                         timeout=120)
    (tmp_path / "go").touch()
    stdout, stderr = scanning.communicate(timeout=120)
    assert state(one_flac) == before
    assert out.returncode == 0 and "1 write(s) of a running scan cancelled" in out.stdout, out.stdout + out.stderr
    assert scanning.returncode == EXIT_FILES_FAILED, stderr
    assert "cancelled by undo run 2 before it was written; not written" in stderr
    assert state(one_flac) == before
    assert [(w["state"], w["undone_at"]) for w in rows(db, "select * from tag_writes")] == [("abandoned", None)]
    history = json.loads(CliRunner().invoke(cli, ["history", "--db", str(db), "--json"]).output)
    assert [(r["command"], r["writes"]) for r in history] == [("undo", 0), ("scan", 0)]


def test_an_undo_during_a_rename_waits_for_it_and_then_gives_the_file_back(one_flac, tmp_path, tiny_wav2vec2):
    """Undo while a scan holds the file's lock at its rename: the undo waits, then finds the written file
    and restores it exactly. A recovery meanwhile leaves the live writer's temp file alone."""
    from tagger.tagging.journal import Journal

    before, db = state(one_flac), tmp_path / "index.db"
    scanning = hooked_scan("at-rename", one_flac.parent, db, tiny_wav2vec2, tmp_path)
    (temp,) = [p for p in one_flac.parent.iterdir() if TEMP_RE.match(p.name)]
    with Index(db) as index:
        Journal(index).recover()
    assert temp.exists(), "a live writer's temp file was removed"
    undoing = subprocess.Popen([GENRETAG, "undo", "--db", str(db), "--run", "1"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    assert undoing.poll() is None, "the undo did not wait for the writer's lock"
    (tmp_path / "go").touch()
    _, scan_err = scanning.communicate(timeout=120)
    out, err = undoing.communicate(timeout=120)
    assert scanning.returncode == 0, scan_err
    assert undoing.returncode == 0 and "Restored 1 file(s); 0 failed. 1 byte for byte" in out, out + err
    assert state(one_flac) == before
    assert [w["state"] for w in rows(db, "select * from tag_writes")] == ["undone"]


@pytest.mark.parametrize("next_run", ["undo", "scan"])
def test_the_temp_copy_of_a_killed_write_is_removed_by_the_next_run(one_flac, tmp_path, tiny_wav2vec2, next_run):
    before, db = state(one_flac), tmp_path / "index.db"
    killed = hooked_scan("kill-at-rename", one_flac.parent, db, tiny_wav2vec2, tmp_path)
    killed.wait(timeout=180)
    assert killed.returncode == -signal.SIGKILL
    assert [p for p in one_flac.parent.iterdir() if TEMP_RE.match(p.name)], "the kill left no temp file"
    assert state(one_flac) == before
    if next_run == "undo":
        out = undo(db)
        assert out.exit_code == 0 and "Nothing to undo" in out.output
        assert state(one_flac) == before
        assert [w["state"] for w in rows(db, "select * from tag_writes")] == ["abandoned"]
    else:
        assert scan(one_flac.parent, db, tiny_wav2vec2).exit_code == 0
        assert [w["state"] for w in rows(db, "select * from tag_writes")] == ["abandoned", "written"]
    assert [p.name for p in one_flac.parent.iterdir()] == [one_flac.name]


# -- ownership ---------------------------------------------------------------------------------------------
OWNERSHIP = textwrap.dedent("""
    import json, os, sys
    from tagger.errors import TagWriteError
    from tagger.tagging.tags import restore_exact, write_genres

    other, mine = sys.argv[1:3]
    out = {}
    try:
        write_genres(other, ["Rock"], record_undo=True)
        out["other"] = "written"
    except TagWriteError as err:
        out["other"] = err.reason
    change = write_genres(mine, ["Rock"], record_undo=True)
    out["written"] = [os.stat(mine).st_uid, os.stat(mine).st_gid]
    restore_exact(mine, change.undo)
    out["undone"] = [os.stat(mine).st_uid, os.stat(mine).st_gid]
    print(json.dumps(out))
""")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to run without the capability to change owners")
def test_a_write_never_changes_the_owner_or_group_of_a_file(formats, tmp_path):
    """Without CAP_CHOWN (root with no capabilities obeys the rules every user does), in a setgid folder:
    another user's group-writable file is refused in one line, untouched; an own file keeps its group
    (the folder would give the copy another one) through the write and the undo. As root, another user's
    file keeps its owner and group."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, 0, 12346)
    os.chmod(shared, 0o2777)
    other, mine = shared / "other.flac", shared / "mine.flac"
    for path in (other, mine):
        shutil.copyfile(formats / "a.flac", path)
    os.chown(other, 12345, 0)
    os.chmod(other, 0o664)
    os.chown(mine, 0, 0)  # the setgid folder gave it its group
    before = state(other)
    proc = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c", OWNERSHIP,
                           str(other), str(mine)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["other"].startswith("owned by uid 12345, and genretag (running as root (uid 0)) may not give its "
                                   "rewritten copy that owner"), got["other"]
    assert state(other) == before and (other.stat().st_uid, other.stat().st_gid) == (12345, 0)
    assert got["written"] == got["undone"] == [0, 0]
    assert not [p for p in shared.iterdir() if TEMP_RE.match(p.name)]

    before = state(other)  # as root: the owner and group are given back
    change = write_genres(other, ["Rock"], record_undo=True)
    assert (other.stat().st_uid, other.stat().st_gid) == (12345, 0)
    restore_exact(other, change.undo)
    assert state(other) == before and (other.stat().st_uid, other.stat().st_gid) == (12345, 0)


# -- the index --------------------------------------------------------------------------------------------
def test_two_names_never_share_an_index_row(formats, tmp_path, tiny_wav2vec2):
    """A name holding the byte 0xff and one spelling it as the four characters backslash-x-f-f are two
    tracks, and undo of one leaves the other."""
    folder = tmp_path / "names"
    folder.mkdir()
    raw = folder / os.fsdecode(b"a\xff.flac")
    spelled = folder / "a\\xff.flac"
    for path in (raw, spelled):
        shutil.copy2(formats / "a.flac", path)
    db = tmp_path / "index.db"
    assert scan(folder, db, tiny_wav2vec2).exit_code == 0
    keys = sorted(r["path"] for r in rows(db, "select path from tracks"))
    assert keys == sorted([path_key(str(raw)), path_key(str(spelled))]) and len(set(keys)) == 2
    assert len(rows(db, "select * from tag_writes")) == 2
    written = state(raw)
    out = undo(db, str(spelled))
    assert out.exit_code == 0 and "Restored 1 file(s)" in out.stdout
    assert state(spelled) == state(formats / "a.flac") and state(raw) == written


def test_undo_of_a_run_the_index_does_not_have_says_so(formats, tmp_path, tiny_wav2vec2):
    db = tmp_path / "index.db"
    assert scan(formats, db, tiny_wav2vec2).exit_code == 0
    for run, reason in (("7", "run 7 is not in the index"), ("1", None)):
        out = undo(db, "--run", run)
        if reason is None:
            assert out.exit_code == 0
            continue
        assert out.exit_code == 1 and out.output.strip().splitlines() == [
            f"Error: {reason} {db}; `genretag history` lists its runs"]
    out = undo(db, "--run", "2")  # the undo run itself
    assert out.exit_code == 1 and "run 2 (genretag undo) wrote no tags" in out.output
    again = undo(db, "--run", "1")
    assert again.exit_code == 0 and "Nothing to undo: run 1 was undone by run 2" in again.output


def _index_at_schema_3(db: Path) -> None:
    import sqlite_utils

    conn = sqlite_utils.Database(db)
    for step in range(3):
        MIGRATIONS[step](conn)
    conn["meta"].upsert({"key": "schema_version", "value": "3"}, pk="key")
    conn.conn.close()


def test_an_index_from_an_older_genretag_still_undoes_by_genre_fields(formats, tmp_path):
    """A journal entry written before undo data existed is undone by its genre fields, as then, and said
    so; a name holding a backslash gets its new key, its prediction with it."""
    db, target = tmp_path / "index.db", formats / "a.flac"
    genres = read_genres(target)
    change = write_genres(target, ["Rock"])
    _index_at_schema_3(db)
    odd = "/m/a\\xff.flac"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("insert into runs (id, command, started_at, finished_at) values (1, 'scan', 1, 2)")
        conn.execute("insert into tag_writes (run_id, path, raw_path, before, after, old_genres, new_genres, "
                     "written_at) values (1, ?, ?, ?, ?, ?, ?, 3)",
                     [str(target), os.fsencode(str(target)), json.dumps(change.before), json.dumps(change.after),
                      json.dumps(genres), json.dumps(["Rock"])])
        conn.execute("insert into tracks (path, raw_path, status) values (?, ?, 'ok')", [odd, odd.encode()])
        conn.execute("insert into predictions (path, fingerprint, status) values (?, 'f', 'ok')", [odd])
    conn.close()
    out = undo(db)
    assert out.exit_code == 0, out.output
    assert "Restored 1 file(s); 0 failed. 1 by their genre fields only (not byte for byte)." in out.stdout
    assert f"note: {target}: genre fields restored, not byte for byte (written by a genretag without undo data)" \
        in out.stderr
    assert read_genres(target) == genres and snapshot_genres(target) == change.before
    assert [r["path"] for r in rows(db, "select path from tracks")] == ["/m/a\\\\xff.flac"]
    assert [r["path"] for r in rows(db, "select path from predictions")] == ["/m/a\\\\xff.flac"]
