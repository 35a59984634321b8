"""Discovery: deterministic, loop-free, and never stuck on special files."""
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tagger import ScanSettings, tag_folder
from tagger.cli import EXIT_FILES_FAILED, cli
from tagger.discover import count_audio_files, discover, is_audio_name


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_extensions_any_case_and_sorted(tmp_path):
    for name in ("b/Song.MP3", "a/z.flac", "a/readme.txt", "a/x.Opus", "c/cover.jpg", "a/y.wv"):
        touch(tmp_path / name)
    found = [Path(t.path).relative_to(tmp_path).as_posix() for t in discover(tmp_path)]
    assert found == ["a/x.Opus", "a/y.wv", "a/z.flac", "b/Song.MP3"]
    assert is_audio_name("x.AIFF") and not is_audio_name("mp3") and not is_audio_name(".x.mp3.genretag-tmp-ab")


def test_symlinks_are_followed_without_loops(tmp_path):
    touch(tmp_path / "music/a.mp3")
    os.symlink(tmp_path / "music", tmp_path / "music/loop")
    os.symlink(tmp_path / "music", tmp_path / "alias")
    found = [t.path for t in discover(tmp_path)]
    assert len(found) == 1  # the same folder is entered once, however it is reached


def test_fifo_and_device_links_are_reported_not_opened(tmp_path):
    touch(tmp_path / "ok.flac")
    os.mkfifo(tmp_path / "pipe.wav")
    os.symlink("/dev/zero", tmp_path / "zero.wav")
    errors = []
    found = [Path(t.path).name for t in discover(tmp_path, on_error=errors.append)]
    assert found == ["ok.flac"]
    assert sorted(Path(e.path).name for e in errors) == ["pipe.wav", "zero.wav"]
    assert all("not a regular file" in e.reason for e in errors)


def test_unreadable_directory_is_reported(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every directory; permissions cannot make one unreadable")
    touch(tmp_path / "locked/a.mp3")
    (tmp_path / "locked").chmod(0)
    errors = []
    try:
        assert list(discover(tmp_path, on_error=errors.append)) == []
        assert count_audio_files(tmp_path) == 1  # the error line is a result of its own
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert "cannot read directory" in errors[0].reason


def test_the_counting_pass_comes_to_what_discovery_yields_and_reports(tmp_path):
    """The progress bar's total: every track discovery yields and every file it reports, no more."""
    for name in ("a/1.flac", "a/b/2.MP3", "a/notes.txt", "c/3.opus", "cover.jpg"):
        touch(tmp_path / name)
    os.mkfifo(tmp_path / "c/pipe.wav")
    os.symlink("/dev/zero", tmp_path / "zero.wav")
    os.symlink(tmp_path / "a", tmp_path / "c/loop")  # a folder reached twice is walked once
    errors = []
    found = list(discover(tmp_path, on_error=errors.append))
    assert (len(found), len(errors)) == (3, 2)
    assert count_audio_files(tmp_path) == 5
    assert count_audio_files(tmp_path / "a/notes.txt") == count_audio_files(tmp_path / "a/1.flac") == 1
    missing = []
    assert list(discover(tmp_path / "missing", on_error=missing.append)) == []
    assert count_audio_files(tmp_path / "missing") == len(missing) == 1


def test_discovery_streams_into_the_scan(mixed_library_src, tmp_path, tiny_wav2vec2, monkeypatch):
    """The scan predicts tracks while the walk goes on, rather than holding a list of the whole library
    first (about 330 MiB per million tracks): a folder the walk has not entered when the first result
    comes is read only then, and what it holds by then is scanned."""
    import tagger.pipeline

    monkeypatch.setattr(tagger.pipeline, "CACHE_CHUNK", 1)  # look tracks up one at a time
    src = next(mixed_library_src.rglob("*.flac"))
    lib = tmp_path / "lib"
    for name in ("a/1.flac", "b/2.flac"):
        (lib / name).parent.mkdir(parents=True)
        shutil.copy(src, lib / name)
    (lib / "z").mkdir()
    late = lib / "z" / "late.flac"
    results = []

    def add_a_file_at_the_first_result(result) -> None:
        results.append(Path(result.path).name)
        if not late.exists():
            shutil.copy(src, late)

    summary = tag_folder(lib, ScanSettings(model=str(tiny_wav2vec2), db=str(tmp_path / "i.db"), workers=0,
                                           concurrent_batches=1, min_confidence=0.0),
                         on_result=add_a_file_at_the_first_result)
    assert results == ["1.flac", "2.flac", "late.flac"]
    assert summary.tagged == 3


def test_non_utf8_names_are_scanned_and_indexed(mixed_library_src, tmp_path, tiny_wav2vec2):
    lib = tmp_path / "lib"
    lib.mkdir()
    name = os.fsdecode(b"caf\xe9-latin1.flac")  # not valid UTF-8
    (lib / name).write_bytes(next(mixed_library_src.rglob("*.flac")).read_bytes())
    os.mkfifo(lib / "stuck.mp3")
    summary = tag_folder(lib, ScanSettings(model=str(tiny_wav2vec2), db=str(tmp_path / "i.db"),
                                           min_confidence=0.0, write_tags=True), keep_results=True)
    assert (summary.tagged, summary.failed, summary.written) == (1, 1, 1)
    again = tag_folder(lib, ScanSettings(model=str(tiny_wav2vec2), db=str(tmp_path / "i.db")))
    assert again.skipped == 1
    (lib / name).chmod(0o444)  # an undo that cannot restore it names it as the index does
    undo = CliRunner().invoke(cli, ["undo", "--db", str(tmp_path / "i.db")], catch_exceptions=False)
    assert undo.exit_code == EXIT_FILES_FAILED
    errors = [line for line in undo.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "caf\\xe9-latin1.flac" in errors[0]
