"""tagger.tagging.tags on files synthesized with FFmpeg: real writes, read back with mutagen and ffprobe."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mutagen
import pytest
from mutagen.apev2 import APEv2
from mutagen.flac import FLAC, VCFLACDict
from mutagen.id3 import ID3, TCON, TIT2, TPE2

from tagger.errors import FileChanged, TagReadError, TagWriteError, UnreadableFile, UnsupportedFormat
from tagger.tagging.tags import (GENRE_KEYS, TEMP_RE, audio_digest, cleanup_stale_temps, read_genres, read_tags_summary,
                         restore_genres, snapshot_genres, write_genres)
from tests.audio_fixtures import ffmpeg_available, have_encoder, make_audio
from tests.shared_data import MUTAGEN_CORPUS

pytestmark = pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg and ffprobe on PATH")

REPO = Path(__file__).resolve().parents[1]
CORPUS = MUTAGEN_CORPUS
PROV = "model=builtin:musicnn-msd;fp=abc123;score=0.81;labels=Rock,Shoegaze"
NEW = ["Rock", "Shoegaze"]

# id -> (file name, make_audio options); "corpus:" sources are copied from the mutagen test data.
FORMATS = {
    "mp3-v23": ("a.mp3", {"id3_version": 3}),
    "mp3-v24+v1": ("a.mp3", {"id3_version": 4, "with_id3v1": True}),
    "flac": ("a.flac", {}),
    "ogg-vorbis": ("a.ogg", {}),
    "opus": ("a.opus", {}),
    "ogg-flac": ("a.oga", {}),
    "speex": ("a.spx", {}),
    "m4a-aac": ("a.m4a", {}),
    "m4a-alac": ("a.m4a", {"codec": "alac"}),
    "wav": ("a.wav", {}),
    "aiff": ("a.aiff", {}),
    "wma": ("a.wma", {}),
    "wavpack": ("a.wv", {}),
    "ape": ("corpus:mac-399.ape", {}),    # FFmpeg has no Monkey's Audio encoder
    "musepack": ("a.mpc", {}),             # nor a Musepack one: made with mpcenc (musepack-tools)
}
ENCODER = {".mp3": "libmp3lame", ".ogg": "libvorbis", ".opus": "libopus", ".spx": "libspeex", ".wma": "wmav2",
           ".wv": "wavpack"}


def make_musepack(out: Path, tagged: bool) -> Path:
    """A Musepack SV8 file from mpcenc, with an APEv2 tag like the other originals when ``tagged``."""
    import shutil
    import subprocess

    from mutagen.musepack import Musepack

    if not shutil.which("mpcenc"):
        pytest.skip("musepack: FFmpeg cannot encode it and mpcenc (Debian: musepack-tools) is not installed")
    wav = make_audio(out.with_suffix(".wav"), seconds=1.0)
    subprocess.run(["mpcenc", "--silent", "--overwrite", str(wav), str(out)], check=True, capture_output=True)
    wav.unlink()
    if tagged:
        audio = Musepack(out)
        audio.add_tags()
        audio.tags.update({"Genre": "Jazz", "Title": "Tone", "Artist": "Sine", "Album": "Tests"})
        audio.save()
    return out


@pytest.fixture(scope="session")
def originals(tmp_path_factory):
    """Synthesized originals, made once per session: ``get(fmt_id, tagged)``; ``get.digest(...)``
    is the audio digest of that original (FFmpeg calls dominate the runtime, so both are cached)."""
    root = tmp_path_factory.mktemp("originals")
    cache: dict = {}
    digests: dict = {}

    def digest(fmt_id: str, tagged: bool = True) -> str:
        if (fmt_id, tagged) not in digests:
            digests[fmt_id, tagged] = audio_digest(get(fmt_id, tagged))
        return digests[fmt_id, tagged]

    def get(fmt_id: str, tagged: bool) -> Path:
        key = (fmt_id, tagged)
        if key not in cache:
            name, opts = FORMATS[fmt_id]
            if name.startswith("corpus:"):
                found = sorted(CORPUS.glob(name[7:])) if CORPUS.is_dir() else []
                if not found:
                    pytest.skip(f"{fmt_id}: FFmpeg cannot encode it and {CORPUS} has no {name[7:]}")
                cache[key] = found[0]
            elif name.endswith(".mpc"):
                cache[key] = make_musepack(root / f"{fmt_id}-{int(tagged)}" / name, tagged)
            else:
                enc = opts.get("codec") or ENCODER.get(Path(name).suffix)
                if enc and not have_encoder(enc):
                    pytest.skip(f"{fmt_id}: this FFmpeg has no {enc} encoder")
                tags = {"genre": "Jazz", "title": "Tone", "artist": "Sine", "album": "Tests"} if tagged else {}
                out = root / f"{fmt_id}-{int(tagged)}" / name
                cache[key] = make_audio(out, seconds=1.0, tags=tags, **opts)
        return cache[key]

    get.digest = digest
    # Make every original up front, in parallel: FFmpeg start-up dominates the runtime.
    jobs = [(f, t) for f in FORMATS for t in (True, False) if not FORMATS[f][0].startswith("corpus:")]

    def build(job):
        try:
            get(*job)
            if job[1]:
                digest(*job)
        except BaseException:  # skips (missing encoder) surface when a test asks for it
            pass

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        list(pool.map(build, jobs))
    return get


def fresh(originals, tmp_path: Path, fmt_id: str, tagged: bool = True) -> Path:
    src = originals(fmt_id, tagged)
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)
    return dst


def ffprobe_genres(path: Path) -> list[str]:
    """Every genre value ffprobe reports, in format and stream tags."""
    out = subprocess.run(["ffprobe", "-v", "quiet", "-of", "json", "-show_entries",
                          "format_tags:stream_tags", str(path)], capture_output=True, text=True).stdout
    data = json.loads(out or "{}")
    tag_sets = [data.get("format", {}).get("tags", {})] + [s.get("tags", {}) for s in data.get("streams", [])]
    return [v for tags in tag_sets for k, v in tags.items() if k.lower() == "genre"]


def mutagen_genre_raw(path: Path):
    """Raw genre values straight from mutagen (independent of tagger.tagging.tags)."""
    f = mutagen.File(path)
    name = type(f).__name__
    tags = f.tags
    if tags is None:
        return None
    if GENRE_KEYS[name]["tags"] == "id3":
        frames = tags.getall("TCON")
        return [str(t) for fr in frames for t in fr.text] or None
    if GENRE_KEYS[name]["tags"] == "apev2":
        return list(tags["Genre"]) if "Genre" in tags else None
    key = GENRE_KEYS[name]["genre"]
    return [str(v) for v in tags[key]] if key in tags else None


def mutagen_provenance_raw(path: Path):
    f = mutagen.File(path)
    kind = GENRE_KEYS[type(f).__name__]
    if f.tags is None or kind["provenance"] not in f.tags:
        return None
    value = f.tags[kind["provenance"]]
    if kind["tags"] == "id3":
        return list(value.text)
    if kind["tags"] == "mp4":
        return [bytes(v).decode() for v in value]
    return [str(v) for v in value] if kind["tags"] != "apev2" else list(value)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------------
# Every format

@pytest.mark.parametrize("fmt_id", list(FORMATS))
def test_write_read_back_everywhere(originals, tmp_path, fmt_id):
    path = fresh(originals, tmp_path, fmt_id)
    change = write_genres(path, NEW, provenance=PROV)
    assert change.written
    assert read_genres(path) == NEW == change.new_genres
    raw = mutagen_genre_raw(path)
    v23 = fmt_id == "mp3-v23"
    assert raw == (["Rock; Shoegaze"] if v23 else NEW)  # native multi-value except in ID3v2.3
    assert mutagen_provenance_raw(path) == [PROV]
    assert snapshot_genres(path) == change.after
    json.dumps(change.before), json.dumps(change.after)  # JSON-serializable
    reported = ffprobe_genres(path)
    # FFmpeg keeps one WM/Genre, the last in the file: a WMA shows its last genre (tests/test_players.py)
    shown = NEW[-1] if fmt_id == "wma" else NEW[0]
    assert reported and all(v.startswith(shown) for v in reported), reported
    assert not any("Jazz" in v for v in reported)
    assert audio_digest(path) == originals.digest(fmt_id)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt_id", list(FORMATS))
def test_idempotent_rerun_writes_nothing(originals, tmp_path, fmt_id):
    path = fresh(originals, tmp_path, fmt_id)
    write_genres(path, NEW, provenance=PROV)
    os.utime(path, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    before = path.read_bytes()
    again = write_genres(path, NEW, provenance=PROV)
    assert not again.written and again.new_genres == NEW and again.before == again.after
    assert path.stat().st_mtime_ns == 1_500_000_000_000_000_000
    assert path.read_bytes() == before


@pytest.mark.parametrize("tagged", [True, False], ids=["had-genre", "no-genre-field"])
@pytest.mark.parametrize("fmt_id", list(FORMATS))
def test_undo_restores_exact_original(originals, tmp_path, fmt_id, tagged):
    path = fresh(originals, tmp_path, fmt_id, tagged)
    snap, genres, raw = snapshot_genres(path), read_genres(path), mutagen_genre_raw(path)
    change = write_genres(path, ["Ambient"], provenance=PROV)
    assert change.before == snap and change.old_genres == genres
    assert restore_genres(path, json.loads(json.dumps(change.before))) is True
    assert snapshot_genres(path) == snap
    assert read_genres(path) == genres
    assert mutagen_genre_raw(path) == raw  # "no genre field" comes back as no field
    assert mutagen_provenance_raw(path) is None
    if tagged:  # (FFmpeg calls are slow; one variant is enough for the audio check)
        assert audio_digest(path) == originals.digest(fmt_id, tagged)
    assert restore_genres(path, snap) is False  # already in that state


@pytest.mark.parametrize("fmt_id", ["mp3-v24+v1", "m4a-alac", "wavpack"])
def test_verify_passes_when_only_tags_change(originals, tmp_path, fmt_id):
    path = fresh(originals, tmp_path, fmt_id)
    assert write_genres(path, NEW, verify=True).written and read_genres(path) == NEW


def test_formats_with_no_tags_get_the_genre_field_removed_on_undo(originals, tmp_path):
    path = fresh(originals, tmp_path, "flac", tagged=False)
    assert mutagen_genre_raw(path) is None and snapshot_genres(path)["fields"]["GENRE"] is None
    change = write_genres(path, ["Ambient"])
    restore_genres(path, change.before)
    assert "genre" not in FLAC(path).tags


# ---------------------------------------------------------------------------------------------
# Modes, separators, ID3 versions

@pytest.mark.parametrize("fmt_id", ["mp3-v23", "mp3-v24+v1", "flac", "m4a-aac", "wma", "wavpack"])
def test_modes(originals, tmp_path, fmt_id):
    path = fresh(originals, tmp_path, fmt_id)
    assert read_genres(path) == ["Jazz"]
    merged = write_genres(path, ["rock", "JAZZ", "Pop"], mode="merge")
    assert merged.written and read_genres(path) == ["Jazz", "rock", "Pop"]
    filled = write_genres(path, ["Metal"], mode="fill")
    assert not filled.written and read_genres(path) == ["Jazz", "rock", "Pop"]
    write_genres(path, ["Metal"])
    assert read_genres(path) == ["Metal"]
    write_genres(path, [])  # replace with nothing: genre removed
    assert read_genres(path) == [] and mutagen_genre_raw(path) is None
    filled = write_genres(path, ["Metal", "Doom"], mode="fill")
    assert filled.written and read_genres(path) == ["Metal", "Doom"]


def test_id3v23_stays_v23_with_separator(originals, tmp_path):
    path = fresh(originals, tmp_path, "mp3-v23")
    assert ID3(path).version == (2, 3, 0)
    write_genres(path, ["Rock", "Pop"], separator=" | ")
    assert ID3(path).version == (2, 3, 0)
    assert ID3(path, translate=False).getall("TCON")[0].text == ["Rock | Pop"]
    assert read_genres(path, separator=" | ") == ["Rock", "Pop"]
    write_genres(path, ["Rock", "Pop"])
    assert ID3(path, translate=False).getall("TCON")[0].text == ["Rock; Pop"]
    assert read_genres(path) == ["Rock", "Pop"]
    with pytest.raises(ValueError):
        write_genres(path, ["Rock"], separator="/")


def test_id3v24_stays_v24_native_list(originals, tmp_path):
    path = fresh(originals, tmp_path, "mp3-v24+v1")
    write_genres(path, ["Rock", "Pop"])
    tags = ID3(path, translate=False)
    assert tags.version == (2, 4, 0) and tags.getall("TCON")[0].text == ["Rock", "Pop"]


def test_mp3_without_any_tag_gets_v24(originals, tmp_path):
    path = tmp_path / "bare.mp3"
    make_audio(path, seconds=0.5, id3_version=0)
    assert mutagen.File(path).tags is None
    write_genres(path, ["Rock", "Pop"])
    assert ID3(path).version == (2, 4, 0) and read_genres(path) == ["Rock", "Pop"]


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("raw, expected", [
    (["(17)"], ["Rock"]),
    (["(9)(138)Viking Metal"], ["Metal", "Black Metal", "Viking Metal"]),
    (["35"], ["House"]),
    (["(3)Dance"], ["Dance"]),
])
def test_numeric_id3_genres_are_normalized(tmp_path, raw, expected, version):
    path = make_audio(tmp_path / "n.mp3", seconds=0.3, id3_version=version)
    tags = ID3(path, translate=False)
    tags.add(TCON(encoding=0, text=raw))
    tags.save(path, v2_version=version, v23_sep=None)
    assert ID3(path, translate=False).getall("TCON")[0].text == raw  # stored raw
    assert read_genres(path) == expected
    snap = snapshot_genres(path)
    assert snap["fields"]["TCON"] == raw
    write_genres(path, ["Rock"])
    restore_genres(path, snap)
    assert ID3(path, translate=False).getall("TCON")[0].text == raw


# ---------------------------------------------------------------------------------------------
# Conflicting sources

def _v1(path: Path) -> bytes:
    data = path.read_bytes()[-128:]
    assert data[:3] == b"TAG"
    return data


def test_id3v1_kept_in_sync(originals, tmp_path):
    path = fresh(originals, tmp_path, "mp3-v24+v1")
    v1 = _v1(path)
    assert v1[127] == 8  # Jazz
    write_genres(path, ["Rock"])
    assert _v1(path)[:127] == v1[:127] and _v1(path)[127] == 17
    write_genres(path, ["Mathcore Lounge", "Metal"])  # first genre with a v1 code
    assert _v1(path)[127] == 9
    write_genres(path, ["Mathcore Lounge"])  # no v1 code: 255 = no genre, never a stale one
    assert _v1(path)[127] == 255
    assert ffprobe_genres(path) == ["Mathcore Lounge"]


def test_id3v1_only_file(tmp_path):
    path = make_audio(tmp_path / "v1.mp3", seconds=0.5, id3_version=0, with_id3v1=True,
                      tags={"title": "Old Title", "genre": "Jazz"})
    assert mutagen.File(path).tags is None or mutagen.File(path).tags.version[0] == 1
    assert read_genres(path) == ["Jazz"]
    original = path.read_bytes()
    snap = snapshot_genres(path)
    assert snap["fields"] == {"ID3v2": None, "TCON": None, "TXXX:GENRETAG": None, "ID3v1:genre": 8}
    write_genres(path, ["Rock"])
    tags = ID3(path)
    assert tags.version == (2, 4, 0) and str(tags["TIT2"]) == "Old Title"  # v1 fields carried over
    assert _v1(path)[127] == 17 and ffprobe_genres(path) == ["Rock"]
    restore_genres(path, snap)
    assert snapshot_genres(path) == snap and read_genres(path) == ["Jazz"]
    # The ID3v2 tag genretag added held only what ID3v1 already says: undo removes it again.
    assert path.read_bytes() == original


def test_id3v1_only_file_keeps_the_v2_tag_another_program_added(tmp_path):
    """Undo removes an ID3v2 tag only while it holds nothing beyond the carried-over v1 fields."""
    path = make_audio(tmp_path / "v1.mp3", seconds=0.5, id3_version=0, with_id3v1=True,
                      tags={"title": "Old Title", "genre": "Jazz"})
    snap = snapshot_genres(path)
    write_genres(path, ["Rock"])
    tags = ID3(path)
    tags.add(TPE2(encoding=3, text=["Album artist added later"]))  # a frame ID3v1 cannot hold
    tags.save(path, v1=1)
    restore_genres(path, snap)
    tags = ID3()
    tags.load(path, load_v1=False)  # mutagen fills frames missing from v2 with the v1 tag's otherwise
    assert str(tags["TPE2"]) == "Album artist added later" and "TCON" not in tags
    assert read_genres(path) == ["Jazz"]


def test_mp3_with_apev2_genre_and_id3v1(originals, tmp_path):
    path = fresh(originals, tmp_path, "mp3-v24+v1")
    v1 = _v1(path)
    body = path.read_bytes()[:-128]
    ape = APEv2()
    ape["Genre"] = "Jazz"
    ape["Replaygain_Track_Gain"] = "-3.0 dB"
    rendered = Path(tmp_path / "ape.bin")
    rendered.write_bytes(b"")
    ape.save(rendered)
    path.write_bytes(body + rendered.read_bytes() + v1)  # audio, APEv2, ID3v1
    rendered.unlink()
    snap = snapshot_genres(path)
    assert snap["fields"]["APEv2:Genre"] == ["Jazz"]
    write_genres(path, ["Rock", "Pop"], verify=True)
    tag = APEv2(path)
    assert list(tag["Genre"]) == ["Rock", "Pop"] and str(tag["Replaygain_Track_Gain"]) == "-3.0 dB"
    assert _v1(path)[:127] == v1[:127] and _v1(path)[127] == 17  # v1 still last, in sync
    assert all(v.startswith("Rock") for v in ffprobe_genres(path))
    restore_genres(path, snap)
    assert snapshot_genres(path) == snap and list(APEv2(path)["Genre"]) == ["Jazz"]


def test_mp3_apev2_tag_holding_only_the_genre(originals, tmp_path):
    path = fresh(originals, tmp_path, "mp3-v23")
    ape = APEv2()
    ape["Genre"] = "Jazz"
    ape.save(path)
    snap = snapshot_genres(path)
    write_genres(path, [])  # the APE tag is left empty, not deleted
    assert snapshot_genres(path)["fields"]["APEv2:Genre"] is None
    restore_genres(path, snap)
    assert list(APEv2(path)["Genre"]) == ["Jazz"]


def test_wav_riff_info_genre_is_synced(originals, tmp_path):
    path = fresh(originals, tmp_path, "wav")
    assert ffprobe_genres(path) == ["Jazz"]  # from LIST/INFO IGNR
    snap = snapshot_genres(path)
    assert snap["fields"]["INFO:IGNR"] == "Jazz" and snap["fields"]["TCON"] is None
    write_genres(path, ["Rock", "Pop"], verify=True)
    assert ffprobe_genres(path) == ["Rock; Pop"]
    assert mutagen_genre_raw(path) == ["Rock", "Pop"]
    write_genres(path, [])
    assert ffprobe_genres(path) == [] and read_genres(path) == []
    restore_genres(path, snap)
    assert ffprobe_genres(path) == ["Jazz"] and snapshot_genres(path) == snap


def test_wav_info_list_without_genre_gets_one(tmp_path):
    path = make_audio(tmp_path / "info.wav", seconds=0.5, tags={"title": "T"})
    snap = snapshot_genres(path)
    assert snap["fields"]["INFO:IGNR"] is None  # an INFO list exists, without IGNR
    write_genres(path, ["Rock"])
    assert ffprobe_genres(path) == ["Rock"]  # ffprobe ignores the id3 chunk when INFO exists
    restore_genres(path, snap)
    assert snapshot_genres(path) == snap and ffprobe_genres(path) == []


def test_flac_second_vorbis_comment_block(originals, tmp_path):
    path = fresh(originals, tmp_path, "flac")
    f = FLAC(path)
    extra = VCFLACDict()
    extra["GENRE"] = "Blues"
    extra["COMMENT"] = "second block"
    f.metadata_blocks.insert(2, extra)
    f.save()
    assert sorted(ffprobe_genres(path)[0].split(";")) == ["Blues", "Jazz"]
    snap = snapshot_genres(path)
    write_genres(path, ["Rock", "Pop"])
    assert ffprobe_genres(path) == ["Rock;Pop"]  # no leftover, no duplicate
    blocks = [b for b in FLAC(path).metadata_blocks if b.code == 4]
    assert len(blocks) == 2 and blocks[1]["COMMENT"] == ["second block"] and "GENRE" not in blocks[1]
    restore_genres(path, snap)
    assert snapshot_genres(path) == snap


def test_flac_with_id3v2_in_front(originals, tmp_path):
    path = fresh(originals, tmp_path, "flac", tagged=False)
    id3 = ID3()
    id3.add(TCON(encoding=0, text=["Ska"]))
    id3.add(TIT2(encoding=0, text=["kept"]))
    id3.save(path, v2_version=3)
    assert ffprobe_genres(path) == ["Ska"] and read_genres(path) == ["Ska"]
    snap = snapshot_genres(path)
    write_genres(path, ["Rock", "Pop"], verify=True)
    assert ffprobe_genres(path) == ["Rock;Pop"]
    prefix = ID3(path, translate=False)
    assert prefix.version == (2, 3, 0) and prefix.getall("TCON")[0].text == ["Rock; Pop"]
    assert str(prefix["TIT2"]) == "kept"
    restore_genres(path, snap)
    assert snapshot_genres(path) == snap and ffprobe_genres(path) == ["Ska"]


# ---------------------------------------------------------------------------------------------
# Safety

def test_read_only_file_is_refused_untouched(originals, tmp_path):
    path = fresh(originals, tmp_path, "flac")
    os.chmod(path, 0o444)
    before = path.read_bytes()
    with pytest.raises(TagWriteError) as err:
        write_genres(path, ["Rock"])
    assert "read-only" in str(err.value) and str(err.value).startswith(str(path))
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_folder_that_refuses_new_files(originals, tmp_path):
    """A permission error while creating the temp copy (here: an immutable folder, which even
    root cannot add files to) is a clear TagWriteError and leaves the file as it was."""
    folder = tmp_path / "locked"
    folder.mkdir()
    path = folder / "a.flac"
    shutil.copyfile(originals("flac", True), path)
    before = path.read_bytes()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        with pytest.raises(TagWriteError) as err:
            write_genres(path, ["Rock"])
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    assert "cannot create a temporary file" in str(err.value) and str(err.value).startswith(str(path))
    assert path.read_bytes() == before and [p.name for p in folder.iterdir()] == ["a.flac"]


def test_file_changed_guard(originals, tmp_path):
    path = fresh(originals, tmp_path, "mp3-v23")
    st = path.stat()
    before = path.read_bytes()
    with pytest.raises(FileChanged):
        write_genres(path, ["Rock"], expected=(st.st_size, st.st_mtime_ns - 1))
    with pytest.raises(FileChanged):
        write_genres(path, ["Rock"], expected=(st.st_size + 1, st.st_mtime_ns))
    assert path.read_bytes() == before
    assert write_genres(path, ["Rock"], expected=(st.st_size, st.st_mtime_ns)).written


def _hold_write_lock(path: Path) -> int:
    """Take the lock a writing genretag process holds, the way it takes it (flock on the file)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_writer_waits_for_another_writer_then_sees_its_file(originals, tmp_path):
    """A second writer blocks while the first holds the file; when the first has replaced the file,
    the second refuses (FileChanged) instead of overwriting it with tags planned from the old one."""
    path = fresh(originals, tmp_path, "flac")
    fd = _hold_write_lock(path)
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(write_genres, path, ["Zydeco"])
        time.sleep(0.5)
        assert not second.done()  # waiting for the lock, not writing
        replacement = tmp_path / "first-writer.flac"
        shutil.copyfile(path, replacement)
        write_genres(replacement, ["Blues"])  # what the first writer produced
        os.replace(replacement, path)
        os.close(fd)
        with pytest.raises(FileChanged):
            second.result(timeout=30)
    assert read_genres(path) == ["Blues"] and leftovers(tmp_path) == []


def test_writer_proceeds_when_the_lock_is_released_unchanged(originals, tmp_path):
    path = fresh(originals, tmp_path, "mp3-v23")
    fd = _hold_write_lock(path)
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(write_genres, path, ["Zydeco"])
        time.sleep(0.3)
        assert not second.done()
        os.close(fd)
        assert second.result(timeout=30).written
    assert read_genres(path) == ["Zydeco"]


def test_writer_gives_up_on_a_lock_held_too_long(originals, tmp_path, monkeypatch):
    import tagger.tagging.tags

    monkeypatch.setattr(tagger.tagging.tags, "WRITE_LOCK_SECONDS", 0.5)
    path = fresh(originals, tmp_path, "ogg-vorbis")
    before = path.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)"), str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TagWriteError) as err:
            write_genres(path, ["Rock"])
    finally:
        holder.kill()
        holder.wait()
    assert "locked" in str(err.value) and str(err.value).startswith(str(path))
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_keep_mtime_and_permissions(originals, tmp_path):
    path = fresh(originals, tmp_path, "ogg-vorbis")
    os.chmod(path, 0o640)
    if os.geteuid() == 0:
        os.chown(path, 4321, 4322)
    stamp = 1_400_000_000_123_456_789
    os.utime(path, ns=(stamp, stamp))
    write_genres(path, ["Rock"], keep_mtime=True)
    st = path.stat()
    assert st.st_mtime_ns == stamp and stat.S_IMODE(st.st_mode) == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (4321, 4322)
    write_genres(path, ["Pop"])
    assert path.stat().st_mtime_ns > stamp + 10**18 // 100  # now, not kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_symlink_target_is_written(originals, tmp_path):
    target = fresh(originals, tmp_path, "flac")
    link = tmp_path / "link.flac"
    link.symlink_to(target)
    write_genres(link, ["Rock"])
    assert link.is_symlink() and read_genres(target) == ["Rock"]


def test_hard_link_is_refused(originals, tmp_path):
    path = fresh(originals, tmp_path, "flac")
    other = tmp_path / "other.flac"
    os.link(path, other)
    before = path.read_bytes()
    with pytest.raises(TagWriteError, match="hard links"):
        write_genres(path, ["Rock"])
    assert path.read_bytes() == before and os.path.samefile(path, other)


def test_verify_refuses_audio_it_cannot_decode(originals, tmp_path):
    path = fresh(originals, tmp_path, "flac")
    data = path.read_bytes()
    pos = 4
    while True:  # keep only "fLaC" + metadata blocks: mutagen parses it, nothing decodes
        last, size = data[pos] & 0x80, int.from_bytes(data[pos + 1:pos + 4], "big")
        pos += 4 + size
        if last:
            break
    path.write_bytes(data[:pos])
    with pytest.raises(UnreadableFile):
        audio_digest(path)
    before = path.read_bytes()
    with pytest.raises(TagWriteError, match="cannot verify"):
        write_genres(path, ["Rock"], verify=True)
    assert path.read_bytes() == before and leftovers(tmp_path) == []
    assert write_genres(path, ["Rock"]).written  # without verify: tags only


def test_audio_digest_tracks_audio_not_tags(tmp_path):
    a = make_audio(tmp_path / "a.flac", seconds=0.5, freq=440)
    b = make_audio(tmp_path / "b.flac", seconds=0.5, freq=441)
    assert audio_digest(a) != audio_digest(b)
    d = audio_digest(a)
    write_genres(a, ["Rock"])
    assert audio_digest(a) == d


def test_unsupported_and_broken_files(tmp_path):
    aac = make_audio(tmp_path / "raw.aac", seconds=0.5)
    before = aac.read_bytes()
    assert read_genres(aac) == []
    with pytest.raises(UnsupportedFormat) as err:
        write_genres(aac, ["Rock"])
    assert str(err.value).startswith(str(aac)) and "\n" not in str(err.value)
    assert aac.read_bytes() == before
    junk = tmp_path / "notes.mp3"
    junk.write_bytes(b"not audio at all\n" * 10)
    with pytest.raises(TagReadError) as rerr:
        read_genres(junk)
    assert str(rerr.value).startswith(str(junk)) and "\n" not in str(rerr.value)
    with pytest.raises(TagWriteError):
        write_genres(junk, ["Rock"])
    assert junk.read_bytes() == b"not audio at all\n" * 10
    with pytest.raises(TagWriteError, match="not found"):
        write_genres(tmp_path / "missing.flac", ["Rock"])


def test_restore_refuses_a_snapshot_of_another_format(originals, tmp_path):
    flac = fresh(originals, tmp_path, "flac")
    mp3 = fresh(originals, tmp_path, "mp3-v23")
    with pytest.raises(TagWriteError, match="snapshot is for a FLAC"):
        restore_genres(mp3, snapshot_genres(flac))


def test_read_tags_summary(originals, tmp_path):
    for fmt_id in ("mp3-v23", "flac", "m4a-aac", "wma", "wavpack"):
        path = fresh(originals, tmp_path, fmt_id)
        summary = read_tags_summary(path)
        assert summary["genres"] == ["Jazz"] and summary["title"] == "Tone", fmt_id
        assert summary["artist"] == "Sine" and summary["album"] == "Tests", fmt_id
        assert summary["format"] == type(mutagen.File(path)).__name__
        path.unlink()


def test_cleanup_stale_temps(tmp_path):
    stale = tmp_path / ".song.flac.genretag-tmp-0123456789ab"
    stale.write_bytes(b"x")
    keep = [tmp_path / ".hidden", tmp_path / "song.flac", tmp_path / ".song.flac.genretag-tmp-xyz"]
    for p in keep:
        p.write_bytes(b"y")
    assert TEMP_RE.match(stale.name)
    assert cleanup_stale_temps(tmp_path, older_than=3600) == []
    assert cleanup_stale_temps(tmp_path) == [str(stale)]
    assert all(p.exists() for p in keep) and not stale.exists()


_CRASH_CHILD = """
import sys
sys.path.insert(0, {repo!r})
from tagger.tagging.tags import write_genres
print("ready", flush=True)
sys.stdin.readline()
for i in range({n}):
    write_genres({path!r}, ["Rock"] if i % 2 == 0 else ["Jazz", "Pop"], provenance="run=%d" % (i % 3))
print("done", flush=True)
"""


def test_killed_writer_leaves_old_or_new_file(originals, tmp_path):
    """SIGKILL a process that keeps rewriting the file: every observed state must be a complete
    state from the same sequence of writes, decodable with unchanged audio."""
    src = make_audio(tmp_path / "src" / "big.wav", seconds=3.0)
    n = 24
    ref = tmp_path / "ref" / "big.wav"
    ref.parent.mkdir()
    shutil.copyfile(src, ref)
    states = {ref.read_bytes()}
    t0 = time.monotonic()
    for i in range(n):
        write_genres(ref, ["Rock"] if i % 2 == 0 else ["Jazz", "Pop"], provenance="run=%d" % (i % 3))
        states.add(ref.read_bytes())
    per_write = (time.monotonic() - t0) / n
    digest = audio_digest(src)
    rng = random.Random(1234)
    work = tmp_path / "work"
    work.mkdir()
    target = work / "big.wav"
    for _ in range(3):
        shutil.copyfile(src, target)
        child = subprocess.Popen([sys.executable, "-c", _CRASH_CHILD.format(repo=str(REPO), n=n, path=str(target))],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(rng.uniform(0.2, 0.9) * per_write * n)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert target.read_bytes() in states
        assert audio_digest(target) == digest
        temps = [p for p in work.iterdir() if p.name != "big.wav"]
        assert all(TEMP_RE.match(p.name) for p in temps)
        assert sorted(cleanup_stale_temps(work)) == sorted(str(p) for p in temps)


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    yield mnt
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_leaves_original_and_no_temp(tmp_path, tiny_fs):
    src = make_audio(tmp_path / "full.wav", seconds=0.75)  # ~130 kB: a second copy cannot fit in 200 kB
    path = tiny_fs / "full.wav"
    shutil.copyfile(src, path)
    before = path.read_bytes()
    with pytest.raises(TagWriteError) as err:
        write_genres(path, ["Rock"])
    assert "no space left on device" in str(err.value) and str(err.value).startswith(str(path))
    assert path.read_bytes() == before
    assert [p.name for p in tiny_fs.iterdir()] == ["full.wav"]
