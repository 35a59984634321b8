"""A hostile library (tests/hostile_library.py) through a real `genretag scan --write-tags`, and what can
only go wrong while a scan runs: a full disk, a folder that refuses new files, a decode that never
returns, a share that vanishes, reports read from the index meanwhile.

The scan uses the built-in model with ``--min-confidence 0``, so every decodable file is tagged and
every hostile format goes through a real tag write.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.hostile_library import (
    FLAC,
    GENRETAG,
    MP3,
    NOT_SCANNED,
    Case,
    FileState,
    ScanRun,
    case_names,
    count_problems,
    error_lines,
    ffmpeg,
    judge,
    list_tree,
    make_hostile_library,
    read_run,
    record_files,
    remove_tree,
    scan_command,
    sha256,
    tone,
    undo_all,
)
from tagger import ScanSettings, tag_folder
from tagger.cli import EXIT_FILES_FAILED, cli
from tagger.discover import discover
from tagger.index import path_key
from tagger.reporting.commands import report
from tagger.tagging.tags import TEMP_RE, audio_digest, read_genres
from tests.audio_fixtures import ffmpeg_available

pytestmark = pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg and ffprobe on PATH")

SCAN_TIMEOUT = 300  # seconds; a scan that hangs on a hostile file fails the test instead of the CI job
MODEL = "builtin:musicnn-msd"


@dataclass
class HostileScan:
    cases: list[Case]
    root: Path
    scan: ScanRun
    before: dict[str, FileState]
    reports: list  # (exit code, output) of `genretag report --json` run during the scan

    def case(self, name: str) -> Case:
        return next(c for c in self.cases if c.name == name)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The quick hostile library, scanned once by a `genretag scan --write-tags` process while this
    process and two `genretag report` processes read the same index. Removed afterwards: pytest's own
    clean-up of old temp folders (shutil.rmtree) cannot delete the runaway-nesting case."""
    work = tmp_path_factory.mktemp("hostile")
    try:
        yield scan_hostile_library(work)
    finally:
        if (work / "library").exists():
            remove_tree(work / "library")


def scan_hostile_library(work: Path) -> HostileScan:
    root, db = work / "library", work / "index.db"
    cases = make_hostile_library(root, full=False)
    before = record_files(root, cases)
    env = {k: v for k, v in os.environ.items() if k not in ("GENRETAG_DB", "GENRETAG_MODEL")}
    env.update(GENRETAG_HOME=str(work / "home"), HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
        proc = subprocess.Popen(scan_command(root, db), stdout=out, stderr=err, env=env)
        try:
            reports = reports_while_running(proc, db, env)
            proc.wait(timeout=SCAN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"the scan did not finish in {SCAN_TIMEOUT} s")
    scan = read_run(db, proc.returncode, time.perf_counter() - started, (work / "stderr").read_bytes())
    return HostileScan(cases, root, scan, before, reports)


def reports_while_running(proc: subprocess.Popen, db: Path, env: dict) -> list:
    """`genretag report --json` over and over until the scan ends: in this process, and twice as a
    separate process."""
    reports, children, deadline, last_child = [], [], time.monotonic() + SCAN_TIMEOUT, 0.0
    while proc.poll() is None and time.monotonic() < deadline:
        if db.exists() and has_predictions_table(db):
            result = CliRunner().invoke(report, ["--db", str(db), "--json"])
            reports.append((result.exit_code, result.output))
            mid_scan = result.exit_code == 0 and json.loads(result.output)["total"] > 0
            if mid_scan and len(children) < 2 and time.monotonic() - last_child > 1.0:
                last_child = time.monotonic()
                children.append(subprocess.Popen([GENRETAG, "report", "--db", str(db), "--json"], env=env,
                                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        time.sleep(0.2)  # a report every ~0.25 s: many snapshots, little CPU taken from the scan
    for child in children:
        out, _ = child.communicate(timeout=120)
        reports.append((child.returncode, out.decode()))
    return reports


def has_predictions_table(db: Path) -> bool:
    import sqlite3

    conn = sqlite3.connect(db, timeout=30)
    try:
        return bool(conn.execute("select count(*) from sqlite_master where name = 'predictions'").fetchone()[0])
    finally:
        conn.close()


# -- the hostile library ------------------------------------------------------------------------------------
def test_the_scan_finishes_and_its_counts_match_the_index(hostile):
    scan = hostile.scan
    assert scan.returncode == EXIT_FILES_FAILED, scan.stderr[-2000:]
    assert "Traceback" not in scan.stderr
    assert count_problems(scan) == []
    expected = {path_key(os.path.join(hostile.root, rel)) for c in hostile.cases if c.expect != NOT_SCANNED
                for rel in c.paths}
    assert set(scan.rows) == expected, "the index has tracks no case made, or lacks some"


@pytest.mark.parametrize("name", case_names())
def test_every_hostile_case(hostile, name):
    verdict = judge(hostile.case(name), hostile.root, hostile.scan, hostile.before)
    assert verdict.ok, "\n".join(verdict.problems)


def test_no_file_appears_or_disappears(hostile):
    """No temp file is left behind, nothing is deleted; the symlinks the cases made are still links."""
    made = {rel for c in hostile.cases for rel in c.paths} | {"loop/self", "loop/up"}
    assert list_tree(hostile.root) == made


def test_a_folder_nested_past_path_max_is_reported_and_the_walk_goes_on(tmp_path):
    """Runaway nesting ends where the OS refuses the path: that folder is reported (the scan's failed
    row), and the walk goes on with the folders after it."""
    top = tmp_path / "nest"
    (top / "z-after").mkdir(parents=True)
    (top / "z-after" / "found.mp3").write_bytes(b"x")
    limit = os.pathconf(top, "PC_PATH_MAX")
    flags = os.O_RDONLY | os.O_DIRECTORY
    try:
        fd, length = os.open(top, flags), len(str(top))
        try:
            while length <= limit + 100:  # relative to a descriptor: no path that long is ever passed
                os.mkdir("n", dir_fd=fd)
                fd, length = swap_fd(fd, os.open("n", flags, dir_fd=fd)), length + 2
            os.close(os.open("unreachable.mp3", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        finally:
            os.close(fd)
        errors = []
        found = [Path(t.path).name for t in discover(top, on_error=errors.append)]
        assert found == ["found.mp3"]
        assert len(errors) == 1 and errors[0].reason == "cannot read directory (File name too long)"
        assert len(os.fsencode(errors[0].path)) >= limit
    finally:
        remove_tree(top)


def swap_fd(old: int, new: int) -> int:
    os.close(old)
    return new


def test_an_error_line_names_a_non_utf8_file_as_the_index_does(hostile):
    rel = hostile.case("non-utf8-broken").paths[0]
    key = path_key(os.path.join(hostile.root, rel))
    assert [line for line in error_lines(hostile.scan.stderr) if line.startswith(f"error: {key}: ")]


def test_reports_during_the_scan_are_consistent(hostile):
    """Each `report --json` is one snapshot: statuses add up to the total, the genre groups to the
    tagged tracks; none fails with 'database is locked'."""
    assert hostile.reports, "no report ran while the scan ran"
    totals = []
    for code, output in hostile.reports:
        assert code == 0 and "locked" not in output, output[-500:]
        got = json.loads(output)
        status = got["status"]
        assert status["unpredicted"] == 0, "a track was visible without its prediction"
        assert got["total"] == status["ok"] + status["abstained"] + status["failed"]
        assert sum(g["tracks"] for g in got["groups"]) == status["ok"]
        totals.append(got["total"])
    final = len(hostile.scan.rows)
    assert max(totals) <= final and any(0 < t < final for t in totals), f"no report landed mid-scan: {totals}"


def test_undo_gives_back_every_file_byte_for_byte(hostile):
    """`genretag undo` of the scan (a real process): every file, whatever the scan made of it, has its
    bytes and its modification time back. It changes the library, so it runs after the tests above."""
    env = {k: v for k, v in os.environ.items() if k not in ("GENRETAG_DB", "GENRETAG_MODEL")}
    code, output, changed = undo_all(hostile.root, hostile.root.parent / "index.db", hostile.before, env)
    assert code == 0 and "failed." in output and " 0 failed." in output, output[-2000:]
    assert changed == []
    assert list_tree(hostile.root) == {rel for c in hostile.cases for rel in c.paths} | {"loop/self", "loop/up"}


# -- failures that happen while a scan runs ------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier():
    from tagger.models.infer import load_classifier

    return load_classifier(MODEL)


def make_files(folder: Path, names: list[str]) -> list[Path]:
    """Short tones; the codec follows the suffix (FLAC or MP3)."""
    return [ffmpeg(folder / name, tone(2 + i % 3, freq=200 + 50 * i), *(FLAC if name.endswith(".flac") else MP3))
            for i, name in enumerate(names)]


def scan_settings(tmp_path: Path, **kw) -> ScanSettings:
    return ScanSettings(db=str(tmp_path / "index.db"), min_confidence=0.0, write_tags=True, **kw)


def by_name(summary) -> dict:
    return {Path(r.path).name: r for r in summary.results}


def test_the_decoders_import_does_not_count_against_the_first_files_time_bound(tmp_path):
    """Importing torchcodec takes about 2 s (it imports torch._dynamo). In a fresh process, with a
    1 s bound per decode, every file of a first scan must still decode."""
    files = make_files(tmp_path / "lib", ["a.flac", "b.mp3"])
    script = (
        "import json, sys\n"
        "from tagger import ScanSettings, tag_folder\n"
        "from tagger.models.infer import load_classifier\n"
        f"classifier = load_classifier({MODEL!r}); classifier.predict\n"  # loaded: only decoding is timed
        "assert 'torchcodec' not in sys.modules\n"
        f"s = ScanSettings(db={str(tmp_path / 'i.db')!r}, decode_timeout=1.0, min_confidence=0.0)\n"
        f"summary = tag_folder({str(tmp_path / 'lib')!r}, s, classifier=classifier, keep_results=True)\n"
        "print(json.dumps({r.path: [r.status, r.error] for r in summary.results}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results == {str(f): ["ok", None] for f in files}


def test_a_fifo_swapped_in_after_discovery_times_out(tmp_path, classifier, monkeypatch):
    """Opening a FIFO blocks until someone writes to it, like a read from a vanished network share:
    the decode time bound fails that file and the scan goes on."""
    import tagger.pipeline

    lib = tmp_path / "lib"
    files = make_files(lib, ["a.flac", "b.mp3", "c.flac"])
    victim = lib / "b.mp3"
    original, st = victim.read_bytes(), victim.stat()

    def discover_then_swap(root, on_error=None):
        yield from discover(root, on_error=on_error)  # every file stat-ed as a regular file
        victim.unlink()
        os.mkfifo(victim)
        monkeypatch.undo()  # once

    monkeypatch.setattr(tagger.pipeline, "discover", discover_then_swap)
    started = time.monotonic()
    try:
        summary = tag_folder(lib, scan_settings(tmp_path, decode_timeout=2), classifier=classifier,
                             keep_results=True)
    finally:
        release_fifo_readers(victim)
    assert time.monotonic() - started < 60
    results = by_name(summary)
    assert results["b.mp3"].status == "failed"
    assert results["b.mp3"].error.startswith("decoding took longer than 2 s")
    assert [results[p.name].status for p in files if p != victim] == ["ok", "ok"]
    assert (summary.tagged, summary.failed, summary.written) == (2, 1, 2)
    # The share answers again, with the very file discovery saw: a timeout is retried, not cached.
    victim.unlink()
    victim.write_bytes(original)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = tag_folder(lib, scan_settings(tmp_path, decode_timeout=2), classifier=classifier, keep_results=True)
    assert (again.predicted, again.from_index, again.tagged) == (1, 2, 3)  # tagged: the library's total
    assert by_name(again)["b.mp3"].status == "ok" and read_genres(victim) == by_name(again)["b.mp3"].labels


def test_an_unexpected_decoder_fault_fails_that_file_only(tmp_path, classifier, monkeypatch):
    """Not a bad file but a fault in the decoding stack itself (here injected): the file fails with the
    exception named, and the scan goes on."""
    import tagger.engine

    lib = tmp_path / "lib"
    make_files(lib, ["a.flac", "b.mp3", "c.flac"])
    decode = tagger.engine.decode_track

    def faulty(track, *args, **kwargs):
        if track.path.endswith("b.mp3"):
            raise IndexError("index 3 is out of bounds")
        return decode(track, *args, **kwargs)

    monkeypatch.setattr(tagger.engine, "decode_track", faulty)
    summary = tag_folder(lib, scan_settings(tmp_path), classifier=classifier, keep_results=True)
    results = by_name(summary)
    assert results["b.mp3"].error == "decoding failed unexpectedly (IndexError: index 3 is out of bounds)"
    assert (summary.tagged, summary.failed, summary.written) == (2, 1, 2)


def release_fifo_readers(fifo: Path, seconds: float = 10.0) -> None:
    """Let the decoder threads blocked on ``fifo`` go: each writer that opens and closes it hands one
    blocked reader an end of file."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(t.name == "genretag-decode" for t in threading.enumerate()):
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader at the moment
                raise
        time.sleep(0.05)


def test_a_large_file_ffmpeg_cannot_parse_is_not_read_into_memory(tmp_path):
    """A recorder that crashed leaves a preallocated .wav of zeros. FFmpeg gives up after probing it;
    the fallback decoder must not read the whole file into memory (nor a device such as /dev/zero,
    swapped in after discovery, forever). The file is sparse, so it costs no disk."""
    import tracemalloc

    import torchcodec.decoders  # noqa: F401  (imported before tracing: only the decode is measured)

    from tagger.decode import decode_track
    from tagger.errors import UnreadableFile
    from tagger.records import Track

    path = tmp_path / "recording.wav"
    with open(path, "wb") as fh:
        fh.truncate(512 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(UnreadableFile, match="not an audio file FFmpeg recognises"):
            decode_track(Track(str(path), 512 << 20, 0), 16000, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB held while decoding a file that holds no audio"


def test_a_share_that_vanishes_mid_scan(tmp_path, classifier, monkeypatch):
    """The files of one folder disappear once inference has started (an unmounted share): each of them
    fails with its reason, at decoding or at the tag write, and the files elsewhere are tagged."""
    lib = tmp_path / "lib"
    local = make_files(lib / "local", ["a.flac", "b.mp3"])
    shared = make_files(lib / "share", ["c.flac", "d.mp3", "e.flac", "f.mp3", "g.flac"])
    # the model call a scan makes (with the embeddings, for a model that gives them)
    called = "predict_with_embeddings" if hasattr(classifier, "predict_with_embeddings") else "predict"
    predict = getattr(classifier, called)

    def predict_then_unmount(*args, **kwargs):
        shutil.rmtree(lib / "share", ignore_errors=True)
        return predict(*args, **kwargs)

    monkeypatch.setattr(classifier, called, predict_then_unmount)
    summary = tag_folder(lib, scan_settings(tmp_path), classifier=classifier, keep_results=True)
    results = by_name(summary)
    assert [results[p.name].status for p in local] == ["ok", "ok"]
    assert all(read_genres(p) == results[p.name].labels for p in local)
    for path in shared:
        result = results[path.name]
        assert result.status == "failed", result
        assert any(w in result.error.lower() for w in ("no such file", "not found")), result.error
    assert (summary.tagged, summary.failed) == (2, len(shared))


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs at tmp_path/lib/full (needs root or CAP_SYS_ADMIN)."""
    mnt = tmp_path / "lib" / "full"
    mnt.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or 'mount failed'}")
    yield mnt
    unmount(mnt)


def unmount(mnt: Path) -> None:
    if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def scan_cli(lib: Path, tmp_path: Path):
    return CliRunner().invoke(cli, ["scan", str(lib), "--write-tags", "--min-confidence", "0", "--model", MODEL,
                                    "--db", str(tmp_path / "index.db")], catch_exceptions=False)


def assert_refused(result, path: Path, before: str, words: tuple[str, ...]) -> None:
    """One error line naming ``path`` with one of ``words``; the file byte-identical; no temp left."""
    lines = [line for line in error_lines(result.stderr) if line.startswith(f"error: {path}: ")]
    assert len(lines) == 1, result.stderr
    assert any(w in lines[0] for w in words), lines[0]
    assert sha256(path) == before
    assert not [p for p in path.parent.iterdir() if TEMP_RE.match(p.name)]


def test_a_full_disk_during_a_tag_write(tmp_path, tiny_fs):
    """The temp copy of a file that fills its file system cannot be written: the scan reports it and
    tags the file beside it on another file system."""
    src = ffmpeg(tmp_path / "src.wav", tone(1.2, rate=44100), "-ac", "2", "-c:a", "pcm_s16le")  # ~210 kB
    big = tiny_fs / "big.wav"
    shutil.copyfile(src, big)
    [good] = make_files(tmp_path / "lib" / "ok", ["good.flac"])
    before, audio = sha256(big), audio_digest(good)
    result = scan_cli(tmp_path / "lib", tmp_path)
    assert result.exit_code == EXIT_FILES_FAILED
    assert_refused(result, big, before, ("no space left on device",))
    assert [p.name for p in tiny_fs.iterdir()] == ["big.wav"]
    assert read_genres(good) and audio_digest(good) == audio


@pytest.fixture
def write_protected(tmp_path):
    """tmp_path/lib/locked, where no new file can be created: without write permission, or (root
    ignores permissions) as a read-only bind mount."""
    folder = tmp_path / "lib" / "locked"
    folder.mkdir(parents=True)
    make_files(folder, ["song.flac"])
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    for cmd in (["mount", "--bind", str(folder), str(folder)],
                ["mount", "-o", "remount,bind,ro", str(folder)]):
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            unmount(folder)
            pytest.skip(f"running as root, and a read-only bind mount is not permitted: {res.stderr.strip()}")
    yield folder
    unmount(folder)


def test_a_folder_that_refuses_new_files(tmp_path, write_protected):
    song = write_protected / "song.flac"
    [good] = make_files(tmp_path / "lib" / "ok", ["good.mp3"])
    before = sha256(song)
    result = scan_cli(tmp_path / "lib", tmp_path)
    assert result.exit_code == EXIT_FILES_FAILED
    assert_refused(result, song, before, ("permission denied", "read-only file system"))
    assert "cannot create a temporary file" in result.stderr
    assert read_genres(good)
