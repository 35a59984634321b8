"""tagger.tagging.tags over mutagen's own test files (real-world and malformed), read from the shared corpus.

The corpus is GPL test data and is never copied into this repository: it is read from
``<repo>/../shared/corpus/mutagen-data`` and each file is copied to a temp folder before writing.
"""
from __future__ import annotations

import csv
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mutagen.apev2 import APEv2
from mutagen.id3 import ID3

from tagger.errors import FileError, TagReadError, TagWriteError, UnsupportedFormat
from tagger.tagging.tags import audio_digest, read_genres, restore_genres, snapshot_genres, write_genres
from tests.shared_data import MUTAGEN_CORPUS

CORPUS = MUTAGEN_CORPUS
MANIFEST = CORPUS / "MANIFEST.tsv"
NEW = ["Rock", "Shoegaze"]
PROV = "model=builtin:musicnn-msd;fp=abc123;score=0.81;labels=Rock,Shoegaze"


def _rows() -> list[dict]:
    if not MANIFEST.exists():
        return []
    with open(MANIFEST, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


ROWS = _rows()
pytestmark = pytest.mark.skipif(not ROWS, reason=f"mutagen test corpus not found at {CORPUS}")
DECODABLE = ("yes", "partial")


@pytest.fixture(scope="module")
def digests():
    """Audio digests of the decodable corpus files, computed in parallel (FFmpeg start-up
    dominates the runtime)."""
    names = [r["file"] for r in ROWS if r["taggable_mutagen"] == "yes" and r["decodable"].startswith(DECODABLE)]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip(names, pool.map(lambda n: audio_digest(CORPUS / n), names)))


@pytest.fixture
def copy(tmp_path):
    def make(name: str) -> Path:
        dst = tmp_path / name
        shutil.copyfile(CORPUS / name, dst)  # a private, writable copy (the corpus is read-only)
        os.chmod(dst, 0o644)
        return dst
    return make


def _one_line_naming(err: FileError, path: Path) -> None:
    text = str(err)
    assert text.startswith(f"{path}: ") and "\n" not in text and err.reason, text


@pytest.mark.parametrize("row", [r for r in ROWS if r["taggable_mutagen"] == "yes"], ids=lambda r: r["file"])
def test_taggable_file(copy, digests, row):
    path = copy(row["file"])
    decodable = row["decodable"].startswith(DECODABLE)
    snap, genres = snapshot_genres(path), read_genres(path)
    if not decodable:  # nothing decodes: verify cannot vouch for the audio, so a verified write refuses
        before = path.read_bytes()
        with pytest.raises(TagWriteError) as err:
            write_genres(path, NEW, verify=True)
        _one_line_naming(err.value, path)
        assert path.read_bytes() == before
    change = write_genres(path, NEW, provenance=PROV)
    assert change.written and change.before == snap and change.old_genres == genres
    assert read_genres(path) == NEW and snapshot_genres(path) == change.after
    if decodable:
        assert audio_digest(path) == digests[row["file"]]
    assert not write_genres(path, NEW, provenance=PROV).written  # idempotent
    assert restore_genres(path, change.before) is True
    assert snapshot_genres(path) == snap and read_genres(path) == genres


def test_id3v22_is_upgraded_to_v23(copy):
    path = copy("id3v22-test.mp3")
    before = ID3(path)  # v2.2 frames as mutagen upgrades them
    assert before.version == (2, 2, 0)
    write_genres(path, ["Rock", "Pop"])
    tags = ID3(path, translate=False)
    assert tags.version == (2, 3, 0) and tags.getall("TCON")[0].text == ["Rock; Pop"]
    for key in ("TIT2", "TPE1", "TALB"):  # other frames survive the upgrade
        assert tags[key].text == before[key].text


def test_v23_with_v1_stays_v23_and_v1_follows(copy):
    path = copy("silence-44-s.mp3")
    v1 = path.read_bytes()[-128:]
    assert ID3(path).version == (2, 3, 0) and v1[127] == 255
    write_genres(path, ["Rock"])
    assert ID3(path).version == (2, 3, 0)
    assert path.read_bytes()[-128:] == v1[:127] + bytes([17])


def test_unknown_v23_frames_survive(copy):
    path = copy("97-unknown-23-update.mp3")
    before = ID3(path, translate=False)
    write_genres(path, ["Rock"])
    after = ID3(path, translate=False)
    assert after.unknown_frames == before.unknown_frames
    assert sorted(k for k in after.keys() if k != "TCON") == sorted(k for k in before.keys() if k != "TCON")


def test_four_tag_systems_stay_in_place(copy):
    path = copy("apev2-lyricsv2.mp3")  # ID3v2.4, audio, APEv2, Lyrics3v2, ID3v1
    data = path.read_bytes()
    assert read_genres(path) == ["House"]  # TCON "35"
    snap = snapshot_genres(path)
    assert snap["fields"]["ID3v1:genre"] == 35 and snap["fields"]["APEv2:Genre"] is None
    write_genres(path, ["Rock"], verify=True)
    new = path.read_bytes()
    lyrics = data.index(b"LYRICSBEGIN")
    assert new.endswith(data[lyrics:-1] + bytes([17]))  # Lyrics3v2 + ID3v1 in place, v1 genre = Rock
    ape = APEv2(path)
    assert list(ape["Genre"]) == ["Rock"] and str(ape["MP3GAIN_MINMAX"]) == "000,179"
    restore_genres(path, snap)
    assert snapshot_genres(path) == snap and path.read_bytes().endswith(data[lyrics:])


@pytest.mark.parametrize("row", [r for r in ROWS if r["taggable_mutagen"] != "yes"], ids=lambda r: r["file"])
def test_untaggable_file_is_refused_untouched(copy, row):
    path = copy(row["file"])
    before = path.read_bytes()
    try:
        assert read_genres(path) == []  # e.g. raw ADTS AAC: parses, has no tags
    except TagReadError as err:
        _one_line_naming(err, path)
    with pytest.raises((TagReadError, TagWriteError, UnsupportedFormat)) as err:
        write_genres(path, NEW)
    _one_line_naming(err.value, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    if row["file"].endswith(".aac"):
        assert isinstance(err.value, UnsupportedFormat)
