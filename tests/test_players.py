"""Several genres show in the written order in the common readers: TagLib (most Linux players, VLC, Kodi),
ffprobe (FFmpeg: mpv, MPD, Emby) and ExifTool, each where it is installed (the test skips that reader
otherwise). And genretag reads, in their writer's order, genres that other taggers wrote.

TagLib is Debian's ``python3-taglib`` (pytaglib), built for the system Python, so it runs in a subprocess of
``/usr/bin/python3``. What each reader can show differs: TagLib lists every value; ExifTool lists every value
or joins them ("/" for ID3v2.4, nothing for APEv2); ffprobe joins Vorbis comments with ";" and shows only
the first value of an ID3v2.4 frame, an MP4 atom or an APEv2 item. So the check is: every value a reader
shows holds written genre names and separators only, and the names, in the order shown, are the written
genres (TagLib, ExifTool) or their first ones (ffprobe; at least the primary genre).
"""
from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mutagen.asf import ASF
from mutagen.id3 import ID3, TCON

from tagger.tagging.tags import read_genres, restore_genres, snapshot_genres, write_genres
from tests.audio_fixtures import ffmpeg_available, have_encoder, make_audio
from tests.shared_data import MUTAGEN_CORPUS

pytestmark = pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg and ffprobe on PATH")

CORPUS = MUTAGEN_CORPUS
SYSTEM_PYTHON = "/usr/bin/python3"
TWO = ["Shoegaze", "Dream Pop"]
THREE = ["Shoegaze", "Dream Pop", "Ambient"]  # no name holds another, none holds a separator

# id -> (file name, make_audio options). Every multi-value layout genretag writes: ID3v2.4 lists (MP3, WAV,
# AIFF), ID3v2.3 joined values, the joined RIFF INFO copy, Vorbis comments, MP4 lists, ASF repeated
# attributes, APEv2 NUL-separated lists.
FORMATS = {
    "mp3-v23": ("a.mp3", {"id3_version": 3}),
    "mp3-v24": ("a.mp3", {"id3_version": 4}),
    "wav": ("a.wav", {}),
    "wav-info": ("a.wav", {"tags": {"genre": "Jazz"}}),  # LIST/INFO IGNR besides the id3 chunk
    "aiff": ("a.aiff", {}),
    "flac": ("a.flac", {}),
    "ogg-vorbis": ("a.ogg", {}),
    "opus": ("a.opus", {}),
    "speex": ("a.spx", {}),
    "ogg-flac": ("a.oga", {}),
    "m4a": ("a.m4a", {}),
    "wma": ("a.wma", {}),
    "wavpack": ("a.wv", {}),
    "ape": ("corpus:mac-399.ape", {}),  # FFmpeg has no Monkey's Audio encoder
    "musepack": ("a.mpc", {}),           # nor a Musepack one: mpcenc (musepack-tools)
}
ENCODER = {".mp3": "libmp3lame", ".ogg": "libvorbis", ".opus": "libopus", ".spx": "libspeex", ".wma": "wmav2",
           ".wv": "wavpack"}
# ExifTool 12.57 (Debian 12) answers "File format error" for WavPack and Musepack SV8 files and reads no
# Vorbis comments from Ogg Speex: for these formats a newer ExifTool that reads tags is checked, else skipped.
EXIFTOOL_MAY_NOT_READ = {"speex", "wavpack", "musepack"}


@functools.lru_cache(maxsize=None)
def have_taglib() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    return subprocess.run([SYSTEM_PYTHON, "-I", "-c", "import taglib"], capture_output=True).returncode == 0


def make(tmp_path: Path, fmt_id: str) -> Path:
    name, opts = FORMATS[fmt_id]
    dst = tmp_path / fmt_id / Path(name.removeprefix("corpus:")).name
    dst.parent.mkdir()
    if name.startswith("corpus:"):
        src = CORPUS / name[7:]
        if not src.exists():
            pytest.skip(f"{fmt_id}: FFmpeg cannot encode it and {src} is missing")
        shutil.copyfile(src, dst)
        dst.chmod(0o644)
        return dst
    if dst.suffix == ".mpc":
        if not shutil.which("mpcenc"):
            pytest.skip("musepack: FFmpeg cannot encode it and mpcenc (Debian: musepack-tools) is not installed")
        wav = make_audio(dst.with_suffix(".wav"), seconds=0.5)
        subprocess.run(["mpcenc", "--silent", "--overwrite", str(wav), str(dst)], check=True, capture_output=True)
        wav.unlink()
        return dst
    enc = ENCODER.get(dst.suffix)
    if enc and not have_encoder(enc):
        pytest.skip(f"{fmt_id}: this FFmpeg has no {enc} encoder")
    return make_audio(dst, seconds=0.5, **opts)


# ---------------------------------------------------------------------------------------------
# The readers: every genre value each one shows

def taglib_genres(path: Path) -> list[str]:
    """TagLib's GENRE property (one entry per value, in TagLib's order)."""
    if not have_taglib():
        pytest.skip(f"TagLib: {SYSTEM_PYTHON} cannot import taglib (Debian: python3-taglib)")
    code = "import json, sys, taglib; print(json.dumps(taglib.File(sys.argv[1]).tags.get('GENRE', [])))"
    out = subprocess.run([SYSTEM_PYTHON, "-I", "-c", code, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def ffprobe_genres(path: Path) -> list[str]:
    """Every genre value ffprobe reports, in format and stream tags."""
    out = subprocess.run(["ffprobe", "-v", "quiet", "-of", "json", "-show_entries", "format_tags:stream_tags",
                          str(path)], capture_output=True, text=True).stdout
    data = json.loads(out or "{}")
    tag_sets = [data.get("format", {}).get("tags", {})] + [s.get("tags", {}) for s in data.get("streams", [])]
    return [v for tags in tag_sets for k, v in tags.items() if k.lower() == "genre"]


def exiftool_genres(path: Path) -> dict[str, list[str]]:
    """ExifTool's Genre values by tag group (ID3v2_4, Vorbis, ASF, RIFF, APE...), in ExifTool's order."""
    if not shutil.which("exiftool"):
        pytest.skip("ExifTool: not installed (Debian: libimage-exiftool-perl)")
    out = subprocess.run(["exiftool", "-a", "-G1", "-s", "-Genre", str(path)], capture_output=True, text=True,
                         errors="surrogateescape").stdout
    groups: dict[str, list[str]] = {}
    for line in out.splitlines():
        match = re.fullmatch(r"\[(\w+)\]\s+Genre\s*: (.*)", line)
        if match:
            groups.setdefault(match[1], []).append(match[2])
    return groups


def names_shown(values: list[str], genres: list[str]) -> list[str]:
    """The written genre names in the order the values show them. A value may hold several, joined by any
    separator (ExifTool drops APEv2's NULs and joins with nothing); anything else in it fails the test."""
    pattern = "|".join(re.escape(g) for g in sorted(genres, key=len, reverse=True))
    shown = []
    for value in values:
        assert re.sub(pattern, "", value).strip(" ;/,\0") == "", f"{value!r} holds more than genres {genres}"
        shown += re.findall(pattern, value)
    return shown


def write(tmp_path: Path, fmt_id: str, genres: list[str]) -> Path:
    path = make(tmp_path, fmt_id)
    assert write_genres(path, genres).written
    return path


# ---------------------------------------------------------------------------------------------
# genretag's writes, read by each reader

@pytest.mark.parametrize("genres", [TWO, THREE], ids=["2", "3"])
@pytest.mark.parametrize("fmt_id", list(FORMATS))
def test_taglib_lists_genres_in_written_order(tmp_path, fmt_id, genres):
    if not have_taglib():
        pytest.skip(f"TagLib: {SYSTEM_PYTHON} cannot import taglib (Debian: python3-taglib)")
    path = write(tmp_path, fmt_id, genres)
    assert names_shown(taglib_genres(path), genres) == genres


@pytest.mark.parametrize("genres", [TWO, THREE], ids=["2", "3"])
@pytest.mark.parametrize("fmt_id", list(FORMATS))
def test_exiftool_lists_genres_in_written_order(tmp_path, fmt_id, genres):
    if not shutil.which("exiftool"):
        pytest.skip("ExifTool: not installed (Debian: libimage-exiftool-perl)")
    path = write(tmp_path, fmt_id, genres)
    groups = exiftool_genres(path)
    if not groups and fmt_id in EXIFTOOL_MAY_NOT_READ:
        pytest.skip(f"ExifTool: this version reads no tags from {path.suffix} ({fmt_id}) files")
    assert groups, "ExifTool shows no genre"
    for group, values in groups.items():  # each tag genretag wrote (ID3v2 and RIFF INFO in a WAV)
        assert names_shown(values, genres) == genres, group


@pytest.mark.parametrize("genres", [TWO, THREE], ids=["2", "3"])
@pytest.mark.parametrize("fmt_id", [f for f in FORMATS if f != "wma"])
def test_ffprobe_shows_the_primary_genre_first(tmp_path, fmt_id, genres):
    path = write(tmp_path, fmt_id, genres)
    shown = names_shown(ffprobe_genres(path), genres)
    assert shown and shown == genres[:len(shown)]


def test_ffprobe_shows_one_of_the_written_genres_of_a_wma(tmp_path):
    """FFmpeg's ASF demuxer keeps one WM/Genre, the last one in the file, while TagLib and ExifTool list them
    in file order: no layout shows the primary genre first in both. genretag's layout serves the readers
    that list several genres; FFmpeg-based players show the last one written."""
    path = write(tmp_path, "wma", THREE)
    assert names_shown(ffprobe_genres(path), THREE) == THREE[-1:]


# ---------------------------------------------------------------------------------------------
# genretag reading back, and reading what other taggers wrote

@pytest.mark.parametrize("fmt_id", list(FORMATS))
def test_genretag_reads_back_its_own_order(tmp_path, fmt_id):
    path = write(tmp_path, fmt_id, THREE)
    assert read_genres(path) == THREE
    reordered = [THREE[2], THREE[0], THREE[1]]
    write_genres(path, reordered)
    assert read_genres(path) == reordered
    write_genres(path, ["Krautrock"], mode="merge")
    assert read_genres(path) == reordered + ["Krautrock"]


@pytest.mark.parametrize("fmt_id", list(FORMATS))
def test_genretag_reads_taglib_written_genres_in_taglib_order(tmp_path, fmt_id):
    """Files tagged by a TagLib program (Kid3, Strawberry, Elisa...): genretag reads the order that program
    set, and a later genretag merge keeps it, for TagLib too."""
    if not have_taglib():
        pytest.skip(f"TagLib: {SYSTEM_PYTHON} cannot import taglib (Debian: python3-taglib)")
    path = make(tmp_path, fmt_id)
    code = ("import json, sys, taglib; f = taglib.File(sys.argv[1]); f.tags['GENRE'] = json.loads(sys.argv[2]); "
            "assert not f.save(); f.close()")
    out = subprocess.run([SYSTEM_PYTHON, "-I", "-c", code, str(path), json.dumps(THREE)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert read_genres(path) == THREE
    write_genres(path, ["Krautrock"], mode="merge")
    assert read_genres(path) == THREE + ["Krautrock"]
    if fmt_id != "ogg-flac":  # TagLib 1.13 cannot reopen the Ogg FLAC file it saved (mutagen and FFmpeg can)
        assert names_shown(taglib_genres(path), THREE + ["Krautrock"]) == THREE + ["Krautrock"]


@pytest.mark.parametrize("version, text", [
    (4, THREE),                              # ID3v2.4 list (Picard, foobar2000, Mp3tag, TagLib)
    (3, ["\0".join(THREE)]),                 # ID3v2.3 with NUL-separated values (mutagen's own v2.3 lists)
    (3, ["; ".join(THREE)]),                 # ID3v2.3 joined with "; " (genretag, Picard's "; " option)
], ids=["v24-list", "v23-nul", "v23-semicolon"])
def test_genretag_reads_other_taggers_id3_layouts_in_order(tmp_path, version, text):
    path = make(tmp_path, "mp3-v24")
    tags = ID3(path)
    tags.delall("TCON")
    tags.add(TCON(encoding=3 if version == 4 else 1, text=text))
    tags.save(path, v2_version=version, v23_sep=None)
    assert read_genres(path) == THREE
    if have_taglib():
        assert names_shown(taglib_genres(path), THREE) == THREE


def test_wma_tagged_like_picard_then_by_genretag(tmp_path):
    """Picard and other mutagen taggers (and TagLib) store the first WM/Genre in the Extended Content
    Description object and the others in the Metadata Library, inside the Header Extension object, which
    FFmpeg's files hold first: readers in file order then show the first genre last. genretag reads the
    writer's order, and its own write puts the first genre first for them."""
    path = make(tmp_path, "wma")
    audio = ASF(path)
    audio["WM/Genre"] = THREE
    audio.save()
    assert read_genres(path) == THREE
    if have_taglib():  # the layout the report was about: TagLib shows the primary genre last
        assert taglib_genres(path) == THREE[1:] + THREE[:1]
    write_genres(path, ["Krautrock"], mode="merge")
    assert read_genres(path) == THREE + ["Krautrock"]
    assert [str(v) for v in ASF(path)["WM/Genre"]] == THREE + ["Krautrock"]
    if have_taglib():
        assert taglib_genres(path) == THREE + ["Krautrock"]
    if shutil.which("exiftool"):
        assert exiftool_genres(path) == {"ASF": THREE + ["Krautrock"]}


@pytest.mark.parametrize("wma", sorted(p.name for p in CORPUS.glob("*.wma")) if CORPUS.is_dir() else [])
def test_wma_from_the_corpus_any_object_order(tmp_path, wma):
    """Real WMA files hold the ASF header objects in different orders (the Extended Content Description
    first, or after the Header Extension); genretag's write reads in order everywhere, and undoes."""
    path = tmp_path / wma
    shutil.copyfile(CORPUS / wma, path)
    path.chmod(0o644)
    before = snapshot_genres(path)
    write_genres(path, THREE, verify=True)
    assert read_genres(path) == THREE
    if have_taglib():
        assert taglib_genres(path) == THREE
    if shutil.which("exiftool"):
        assert exiftool_genres(path) == {"ASF": THREE}
    restore_genres(path, before)
    assert snapshot_genres(path) == before
