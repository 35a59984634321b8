"""Discovery: deterministic, loop-free, and never stuck on special files."""
import os
from pathlib import Path

import pytest

from tagger import ScanSettings, tag_folder
from tagger.discover import discover, is_audio_name


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
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert "cannot read directory" in errors[0].reason


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
