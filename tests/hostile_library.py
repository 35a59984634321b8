"""A hostile music library, and a check that ``genretag scan --write-tags`` gets through it.

    python bench/hostile_library.py [--full] [--keep DIR]     (this module's main())

Real libraries hold zero-byte files, truncated downloads, FLAC named .mp3, HTML saved as .mp3, hour-long
mixes, voice memos, 192 kHz masters, 5.1 WAVs, names that are not UTF-8, read-only and hard-linked files,
symlink loops, FIFOs and device links. :func:`make_hostile_library` builds one of each (stdlib and the
``ffmpeg`` program only) and returns the :class:`Case` list that says what a scan must make of each.
The quick variant (what the tests use) builds in a few seconds: a 20-minute mix, a 10-minute Ogg, a
tree 12 levels deep, 24 tiny files; ``--full`` makes those a 2-hour mix, a 1-hour Ogg, 40 levels and
2,000 files. Both hold a folder nested 1,101 levels deep (past Python's recursion limit); delete the
library with :func:`remove_tree`, since ``shutil.rmtree`` recurses per level before Python 3.13. The
script runs ``genretag scan --write-tags`` on it as a real process, judges every case
from the SQLite index, the error lines and the files themselves (full-file sha256 for files that must
not change, ``tagger.tagging.tags.audio_digest`` for files that were written), and prints one row per case.
Then ``genretag undo`` runs, and every file must be back to its bytes (sha256) and modification time.
Exit status 1 if any case failed its expectation.

``--min-confidence 0`` is passed so that every decodable file is tagged, which puts every hostile format
through a real tag write. :mod:`tests.test_hostile` runs the quick variant.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLASSIFIED = "tagged-or-abstained"
"""Decodable: the scan must classify it (ok or abstained) and may write its tags."""
FAILED = "failed"
"""Must fail with a reason; the file stays byte-identical."""
NOT_SCANNED = "skipped-by-discovery"
"""Never becomes a track (not an audio name, genretag's own temp file): no index row, file unchanged."""

GENRETAG = str(Path(sys.executable).with_name("genretag"))
SUMMARY_RE = re.compile(r"[\d,]+ tracks: (?P<tagged>[\d,]+) tagged, (?P<abstained>[\d,]+) abstained, "
                        r"(?P<failed>[\d,]+) failed\. This run predicted (?P<scanned>[\d,]+) and took "
                        r"(?P<skipped>[\d,]+) unchanged from the index(?:[^.;]*; wrote (?P<written>[\d,]+) files?)?")


@dataclass(frozen=True)
class Case:
    """One hostile situation: the files it made and what a scan must make of them."""

    name: str
    kind: str                       # what the files are, in a few words
    paths: tuple[str, ...]          # relative to the library root; non-UTF-8 names as os.fsdecode gives them
    expect: str                     # CLASSIFIED, FAILED or NOT_SCANNED
    reason: tuple[str, ...] = ()    # FAILED: the reason holds at least one of these (any case)
    predicted: bool = False         # FAILED at the tag write: the prediction is still in the index
    absent: tuple[str, ...] = ()    # paths that must never become tracks (reached only through a loop)
    special: bool = False           # FIFOs, device links: no bytes to hash
    check: str | None = None        # a CHECKS entry run on the file after it was written


# -- FFmpeg and byte-level helpers --------------------------------------------------------------------------
def ffmpeg(out: Path, source: str, *args: str, seconds: float | None = None) -> Path:
    """Encode a lavfi ``source`` to ``out``; ``-bitexact`` and no metadata keep files reproducible."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", source]
    if seconds is not None:
        cmd += ["-t", f"{seconds:g}"]
    cmd += ["-bitexact", "-map_metadata", "-1", *args, str(out)]
    out.parent.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"ffmpeg failed for {out.name}: {res.stderr.strip()[-400:]}")
    return out


def tone(seconds: float, rate: int = 22050, freq: float = 330.0, volume: float = 0.3) -> str:
    """A lavfi sine with a slow tremolo: cheap to encode, not silent, not a pure constant."""
    return (f"sine=frequency={freq}:sample_rate={rate}:duration={seconds:g},"
            f"volume={volume},tremolo=f=2:d=0.4")


MP3 = ("-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3")
FLAC = ("-c:a", "flac", "-f", "flac")


def syncsafe(n: int) -> bytes:
    return bytes((n >> shift) & 0x7F for shift in (21, 14, 7, 0))


def id3v23(frames: dict[str, str], padding: int = 0) -> bytes:
    """An ID3v2.3 tag of Latin-1 text frames, followed by ``padding`` zero bytes inside the tag."""
    body = b"".join(fid.encode() + struct.pack(">I", len(text) + 1) + b"\0\0" + b"\0" + text.encode("latin-1")
                    for fid, text in frames.items())
    return b"ID3\x03\x00\x00" + syncsafe(len(body) + padding) + body + b"\0" * padding


def strip_id3v2(data: bytes) -> bytes:
    if data[:3] != b"ID3":
        return data
    size = 0
    for b in data[6:10]:
        size = (size << 7) | (b & 0x7F)
    return data[10 + size + (10 if data[5] & 0x10 else 0):]


def vorbis_comment_block(comments: list[str], last: bool) -> bytes:
    vendor = b"hostile-library"
    body = struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", len(comments))
    for text in comments:
        raw = text.encode()
        body += struct.pack("<I", len(raw)) + raw
    return bytes([(0x80 if last else 0) | 4]) + len(body).to_bytes(3, "big") + body


def flac_with_extra_comment_block(data: bytes, comments: list[str]) -> bytes:
    """Insert a second VORBIS_COMMENT metadata block (legal to parse, forbidden by the spec)."""
    assert data[:4] == b"fLaC"
    pos, blocks = 4, []
    while True:
        header = data[pos]
        length = int.from_bytes(data[pos + 1:pos + 4], "big")
        blocks.append(bytes([header & 0x7F]) + data[pos + 1:pos + 4 + length])
        pos += 4 + length
        if header & 0x80:
            break
    blocks.append(vorbis_comment_block(comments, last=False))
    last = blocks[-1]
    blocks[-1] = bytes([last[0] | 0x80]) + last[1:]
    return b"fLaC" + b"".join(blocks) + data[pos:]


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- the cases ----------------------------------------------------------------------------------------------
# Each builder makes its files under ``root`` and returns its Case; builders are independent, so they run
# in parallel (FFmpeg start-up dominates the quick variant).
Builder = Callable[[Path, bool], Case]
BUILDERS: dict[str, Builder] = {}
RUNAWAY_DEPTH = 1100
"""Folder levels of the runaway-nesting case: past Python's default recursion limit of 1,000."""


def case(name: str):
    def register(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn
    return register


def _made(root: Path, name: str, kind: str, expect: str, *paths: Path, **kw) -> Case:
    return Case(name, kind, tuple(os.path.relpath(p, root) for p in paths), expect, **kw)


@case("zero-byte")
def _zero_byte(root: Path, full: bool) -> Case:
    path = root / "broken" / "zero-byte.mp3"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return _made(root, "zero-byte", "0-byte .mp3", FAILED, path, reason=("empty file",))


@case("truncated-mp3")
def _truncated_mp3(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "downloads" / "truncated.mp3", tone(90), *MP3)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return _made(root, "truncated-mp3", "mp3 cut in half (header says 90 s)", CLASSIFIED, path)


@case("truncated-flac")
def _truncated_flac(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "downloads" / "truncated.flac", tone(90, rate=16000), *FLAC)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return _made(root, "truncated-flac", "flac cut in half (STREAMINFO says 90 s)", CLASSIFIED, path)


@case("truncated-wav")
def _truncated_wav(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "downloads" / "truncated.wav", tone(20, rate=16000), "-ac", "1", "-c:a", "pcm_s16le")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 5])
    # Decodes (8 s are there), but a tag chunk appended after a data chunk that claims more bytes than
    # the file holds would be unreadable: the write must be refused, saying why.
    return _made(root, "truncated-wav", "wav whose data chunk claims 20 s, holds 8 s", FAILED, path,
                 reason=("truncated",), predicted=True)


@case("flac-named-mp3")
def _flac_named_mp3(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "mislabelled" / "really-flac.mp3", tone(8), *FLAC)
    return _made(root, "flac-named-mp3", "FLAC stream named .mp3", CLASSIFIED, path)


@case("html-named-mp3")
def _html_named_mp3(root: Path, full: bool) -> Case:
    path = root / "broken" / "download.mp3"
    path.parent.mkdir(parents=True, exist_ok=True)
    page = "<!DOCTYPE html><html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>\n"
    path.write_text(page * 40)
    return _made(root, "html-named-mp3", "HTML error page saved as .mp3", FAILED, path,
                 reason=("not an audio file",))


@case("markup-name")
def _markup_name(root: Path, full: bool) -> Case:
    path = root / "broken" / "[red]not audio[/red] (1).mp3"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<html><body>login required</body></html>\n" * 20)
    return _made(root, "markup-name", "HTML .mp3 whose name looks like terminal markup", FAILED, path,
                 reason=("not an audio file",))


@case("random-bytes-ogg")
def _random_ogg(root: Path, full: bool) -> Case:
    path = root / "broken" / "noise.ogg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(7).randbytes(64 * 1024))
    return _made(root, "random-bytes-ogg", "64 KiB of random bytes named .ogg", FAILED, path,
                 reason=("not an audio file",))


@case("appledouble")
def _appledouble(root: Path, full: bool) -> Case:
    path = root / "mac" / "._song.mp3"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        " + b"\0" * 4072)
    return _made(root, "appledouble", "macOS ._ resource fork named .mp3", FAILED, path,
                 reason=("not an audio file",))


@case("id3-without-audio")
def _id3_only(root: Path, full: bool) -> Case:
    path = root / "broken" / "tag-only.mp3"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(id3v23({"TIT2": "Just a tag", "TCON": "Jazz"}, padding=1024))
    return _made(root, "id3-without-audio", "ID3v2 tag and no audio frames", FAILED, path,
                 reason=("not an audio file",))


@case("wav-header-only")
def _wav_header_only(root: Path, full: bool) -> Case:
    path = root / "broken" / "header-only.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = struct.pack("<HHIIHH", 1, 2, 44100, 44100 * 4, 4, 16)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
                     + b"data" + struct.pack("<I", 0))
    return _made(root, "wav-header-only", "44-byte WAV with no samples", FAILED, path,
                 reason=("no decodable audio (0.00 s decoded)",))


@case("long-mix")
def _long_mix(root: Path, full: bool) -> Case:
    seconds = 7200 if full else 1200
    path = ffmpeg(root / "mixes" / f"dj-mix-{seconds // 60}min.mp3", tone(seconds, rate=8000, freq=220),
                  "-ac", "1", "-c:a", "libmp3lame", "-b:a", "8k", "-f", "mp3")
    return _made(root, "long-mix", f"{seconds // 60}-minute mix (8 kHz mono mp3)", CLASSIFIED, path)


@case("long-ogg")
def _long_ogg(root: Path, full: bool) -> Case:
    seconds = 3600 if full else 600
    path = ffmpeg(root / "mixes" / f"radio-show-{seconds // 60}min.ogg", tone(seconds, rate=8000, freq=180),
                  "-ac", "1", "-c:a", "libvorbis", "-q:a", "0", "-f", "ogg")
    return _made(root, "long-ogg", f"{seconds // 60}-minute Ogg Vorbis (seeks by bisection)", CLASSIFIED, path)


@case("voice-memo")
def _voice_memo(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "memos" / "memo.m4a", tone(20, rate=8000, freq=300),
                  "-ac", "1", "-ar", "8000", "-c:a", "aac", "-b:a", "16k", "-f", "ipod")
    return _made(root, "voice-memo", "8 kHz mono AAC voice memo (.m4a)", CLASSIFIED, path)


@case("hires-master")
def _hires(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "masters" / "master-192k-24bit.flac", tone(4, rate=192000),
                  "-ac", "2", "-ar", "192000", "-sample_fmt", "s32", "-c:a", "flac", "-f", "flac")
    return _made(root, "hires-master", "192 kHz 24-bit stereo FLAC", CLASSIFIED, path)


@case("surround-wav")
def _surround(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "masters" / "surround-5.1.wav", tone(3, rate=48000),
                  "-ac", "6", "-channel_layout", "5.1", "-c:a", "pcm_s16le", "-f", "wav")
    return _made(root, "surround-wav", "5.1 (6-channel) 48 kHz WAV", CLASSIFIED, path)


@case("clip-50ms")
def _clip_50ms(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "clips" / "blip-50ms.flac", tone(0.05), *FLAC)
    return _made(root, "clip-50ms", "50 ms clip (below the 0.5 s minimum)", FAILED, path,
                 reason=("too short to classify (0.05 s of audio decoded, at least 0.5 s needed)",))


@case("clip-1s")
def _clip_1s(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "clips" / "sting-1s.mp3", tone(1), *MP3)
    return _made(root, "clip-1s", "1 s clip (one zero-padded window)", CLASSIFIED, path)


@case("silence")
def _silence(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "clips" / "silence-3min.flac", "anullsrc=r=22050:cl=stereo", *FLAC, seconds=180)
    return _made(root, "silence", "3 minutes of digital silence", CLASSIFIED, path)


@case("non-utf8-name")
def _non_utf8(root: Path, full: bool) -> Case:
    folder = root / "names"
    src = ffmpeg(folder / "tmp-latin1.flac", tone(3), *FLAC)
    path = folder / os.fsdecode(b"caf\xe9 - d\xe9j\xe0 vu.flac")  # Latin-1 bytes: not valid UTF-8
    os.rename(src, path)
    return _made(root, "non-utf8-name", "Latin-1 (not UTF-8) file name", CLASSIFIED, path)


@case("non-utf8-broken")
def _non_utf8_broken(root: Path, full: bool) -> Case:
    path = root / "names" / os.fsdecode(b"broken-\xff\xfe.mp3")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<html>gone</html>\n")
    return _made(root, "non-utf8-broken", "HTML .mp3 with a non-UTF-8 name", FAILED, path,
                 reason=("not an audio file",))


@case("newline-broken")
def _newline_broken(root: Path, full: bool) -> Case:
    path = root / "names" / "two\nlines.mp3"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<html>moved</html>\n")
    return _made(root, "newline-broken", "HTML .mp3 with a newline in its name", FAILED, path,
                 reason=("not an audio file",))


@case("odd-names")
def _odd_names(root: Path, full: bool) -> Case:
    folder = root / "names"
    long_name = folder / ("L" * 250 + ".mp3")  # 254 bytes: the longest name most file systems allow
    ffmpeg(long_name, tone(2), *MP3)
    newline = folder / "line\nbreak.flac"
    ffmpeg(newline, tone(2), *FLAC)
    upper = folder / "SHOUTING.MP3"
    ffmpeg(upper, tone(2), *MP3)
    only_ext = folder / ".mp3"
    ffmpeg(only_ext, tone(2), *MP3)
    dash_colon = folder / "-t 5 http: colon.flac"  # reads like an FFmpeg option and a protocol
    ffmpeg(dash_colon, tone(2), *FLAC)
    album_dir = root / "album.flac" / "track.ogg"  # a folder with an audio extension
    ffmpeg(album_dir, tone(2), "-c:a", "libvorbis", "-f", "ogg")
    return _made(root, "odd-names", "254-byte name, newline, '.mp3', '-t 5 http:', .MP3, folder named .flac",
                 CLASSIFIED, long_name, newline, only_ext, dash_colon, upper, album_dir)


@case("read-only")
def _read_only(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "perms" / "read-only.flac", tone(3), *FLAC)
    path.chmod(0o444)
    return _made(root, "read-only", "read-only file (mode 0444)", FAILED, path,
                 reason=("read-only",), predicted=True)


@case("hard-links")
def _hard_links(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "perms" / "linked-a.mp3", tone(3), *MP3)
    other = root / "perms" / "linked-b.mp3"
    os.link(path, other)
    return _made(root, "hard-links", "two hard links to one file", FAILED, path, other,
                 reason=("hard links",), predicted=True)


@case("symlink-loop")
def _symlink_loop(root: Path, full: bool) -> Case:
    folder = root / "loop"
    path = ffmpeg(folder / "song.flac", tone(3), *FLAC)
    os.symlink(".", folder / "self")
    os.symlink("..", folder / "up")
    return _made(root, "symlink-loop", "folder with links to itself and its parent", CLASSIFIED, path,
                 absent=("loop/self/song.flac", "loop/up/loop/song.flac"))


@case("symlink-cycle")
def _symlink_cycle(root: Path, full: bool) -> Case:
    folder = root / "links"
    folder.mkdir(parents=True, exist_ok=True)
    os.symlink("cycle-b.mp3", folder / "cycle-a.mp3")
    os.symlink("cycle-a.mp3", folder / "cycle-b.mp3")
    return _made(root, "symlink-cycle", "two .mp3 links pointing at each other", FAILED,
                 folder / "cycle-a.mp3", folder / "cycle-b.mp3", reason=("too many levels",), special=True)


@case("dangling-link")
def _dangling(root: Path, full: bool) -> Case:
    folder = root / "links"
    folder.mkdir(parents=True, exist_ok=True)
    os.symlink("/nonexistent/share/track.flac", folder / "on-unmounted-share.flac")
    return _made(root, "dangling-link", "link to a file on a share that is not mounted", FAILED,
                 folder / "on-unmounted-share.flac", reason=("no such file",), special=True)


@case("fifo")
def _fifo(root: Path, full: bool) -> Case:
    path = root / "special" / "pipe.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return _made(root, "fifo", "FIFO named .wav", FAILED, path, reason=("not a regular file",), special=True)


@case("dev-zero")
def _dev_zero(root: Path, full: bool) -> Case:
    path = root / "special" / "zero.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("/dev/zero", path)
    return _made(root, "dev-zero", "link to /dev/zero named .wav", FAILED, path,
                 reason=("not a regular file",), special=True)


@case("flac-two-comment-blocks")
def _flac_two_vc(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "tags" / "two-comment-blocks.flac", tone(3), *FLAC, "-metadata", "genre=Jazz")
    path.write_bytes(flac_with_extra_comment_block(path.read_bytes(), ["GENRE=Metal", "TITLE=second block"]))
    return _made(root, "flac-two-comment-blocks", "FLAC with two VORBIS_COMMENT blocks", CLASSIFIED, path,
                 check="one-genre-block")


@case("id3-before-flac")
def _id3_flac(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "tags" / "id3-in-front.flac", tone(3), *FLAC, "-metadata", "genre=Jazz")
    path.write_bytes(id3v23({"TIT2": "ID3 in front", "TCON": "Blues"}) + path.read_bytes())
    return _made(root, "id3-before-flac", "ID3v2 tag in front of a FLAC stream", CLASSIFIED, path,
                 check="front-id3-follows")


@case("id3v1-v2-disagree")
def _id3_disagree(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "tags" / "v1-v2-disagree.mp3", tone(3), *MP3, "-id3v2_version", "3", "-write_id3v1", "1",
                  "-metadata", "genre=Jazz", "-metadata", "title=Disagree")
    data = bytearray(path.read_bytes())
    assert data[-128:-125] == b"TAG"
    data[-1] = 17  # ID3v1 genre byte: Rock, while ID3v2 TCON says Jazz
    path.write_bytes(bytes(data))
    return _made(root, "id3v1-v2-disagree", "MP3: ID3v2 says Jazz, ID3v1 says Rock", CLASSIFIED, path,
                 check="id3v1-follows")


@case("wav-info-genre")
def _wav_info(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "tags" / "info-genre.wav", tone(3, rate=16000), "-c:a", "pcm_s16le",
                  "-metadata", "genre=Blues", "-metadata", "title=INFO", "-f", "wav")
    return _made(root, "wav-info-genre", "WAV with LIST/INFO IGNR genre", CLASSIFIED, path)


@case("id3-padding-4mib")
def _id3_padding(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "tags" / "padded-4mib.mp3", tone(3), *MP3, "-id3v2_version", "0")
    path.write_bytes(id3v23({"TIT2": "Padded", "TCON": "Pop"}, padding=4 << 20) + strip_id3v2(path.read_bytes()))
    return _made(root, "id3-padding-4mib", "MP3 with 4 MiB of ID3v2 padding", CLASSIFIED, path)


@case("m4a-moov-at-end")
def _moov_end(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "containers" / "moov-at-end.m4a", tone(5), "-c:a", "aac", "-b:a", "64k", "-f", "ipod")
    data = path.read_bytes()
    assert data.find(b"moov") > data.find(b"mdat"), "FFmpeg wrote moov first"
    return _made(root, "m4a-moov-at-end", "M4A with the moov atom after the audio", CLASSIFIED, path)


@case("opus-named-ogg")
def _opus_ogg(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "containers" / "really-opus.ogg", tone(3, rate=48000), "-c:a", "libopus", "-b:a", "32k",
                  "-f", "ogg")
    return _made(root, "opus-named-ogg", ".ogg holding Opus", CLASSIFIED, path)


@case("chained-ogg")
def _chained_ogg(root: Path, full: bool) -> Case:
    folder = root / "containers"
    parts = [ffmpeg(folder / f"part-{i}.ogg", tone(4, freq=f), "-c:a", "libvorbis", "-f", "ogg",
                    *(["-metadata", "genre=Jazz"] if i == 0 else []))
             for i, f in enumerate((300, 500))]
    path = folder / "stream-rip-chained.ogg"
    path.write_bytes(b"".join(p.read_bytes() for p in parts))
    for part in parts:
        part.unlink()
    return _made(root, "chained-ogg", "two Ogg Vorbis streams back to back (a stream rip)", CLASSIFIED, path)


@case("music-video")
def _music_video(root: Path, full: bool) -> Case:
    path = root / "containers" / "music-video.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=5:duration=4",
           "-f", "lavfi", "-i", tone(4), "-bitexact", "-map_metadata", "-1", "-c:v", "mpeg4", "-c:a", "aac",
           "-shortest", str(path)]
    subprocess.run(cmd, capture_output=True, check=True)
    return _made(root, "music-video", ".mp4 with a video stream before the audio", CLASSIFIED, path)


@case("mp3-named-wav")
def _mp3_wav(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "mislabelled" / "really-mp3.wav", tone(3), *MP3)
    return _made(root, "mp3-named-wav", "MP3 stream named .wav", CLASSIFIED, path)


@case("trailing-junk")
def _trailing_junk(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "downloads" / "trailing-junk.mp3", tone(4), *MP3)
    with open(path, "ab") as fh:
        fh.write(random.Random(3).randbytes(256 * 1024))
    return _made(root, "trailing-junk", "MP3 followed by 256 KiB of junk", CLASSIFIED, path)


@case("hidden-file")
def _hidden(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "hidden" / ".hidden-track.flac", tone(2), *FLAC)
    return _made(root, "hidden-file", "dot-file with an audio name", CLASSIFIED, path)


@case("genretag-temp")
def _temp(root: Path, full: bool) -> Case:
    path = ffmpeg(root / "hidden" / "tmp.flac", tone(2), *FLAC)
    leftover = path.with_name(".song.flac.genretag-tmp-0123456789ab")
    os.rename(path, leftover)
    cover = root / "hidden" / "cover.jpg"
    cover.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 512)
    return _made(root, "genretag-temp", "a killed writer's temp file, cover.jpg", NOT_SCANNED, leftover, cover)


@case("deep-tree")
def _deep(root: Path, full: bool) -> Case:
    depth = 40 if full else 12
    folder = root.joinpath("deep", *(f"level-{i:02d}" for i in range(1, depth + 1)))
    path = ffmpeg(folder / "bottom.flac", tone(2), *FLAC)
    return _made(root, "deep-tree", f"a file {depth} folders deep", CLASSIFIED, path)


@case("runaway-nesting")
def _runaway(root: Path, full: bool) -> Case:
    """A sync tool that copied a folder into itself over and over: deeper than Python's recursion
    limit (1,000), so a recursive walk fails. Built without recursion (os.makedirs recurses too)."""
    folder = root / "runaway"
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(RUNAWAY_DEPTH):
        folder = folder / "n"
        folder.mkdir()
    path = ffmpeg(folder / "nested.mp3", tone(2), *MP3)
    return _made(root, "runaway-nesting", f"a file {RUNAWAY_DEPTH + 1} folders deep", CLASSIFIED, path)


@case("wide-folder")
def _wide(root: Path, full: bool) -> Case:
    count = 2000 if full else 24
    folder = root / "wide"
    src = ffmpeg(folder / "tiny-0000.flac", tone(1, rate=8000), "-ac", "1", *FLAC)
    paths = [src]
    for i in range(1, count):  # copies, not links: hard-linked files are never written
        paths.append(folder / f"tiny-{i:04d}.flac")
        shutil.copyfile(src, paths[-1])
    return _made(root, "wide-folder", f"{count} tiny files in one folder", CLASSIFIED, *paths)


def case_names() -> list[str]:
    return list(BUILDERS)


def make_hostile_library(root: str | os.PathLike, *, full: bool, workers: int | None = None) -> list[Case]:
    """Build every case under ``root`` (which must not exist yet or be empty); return the cases in
    :func:`case_names` order."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(workers or max(2, os.cpu_count() or 2)) as pool:
        cases = list(pool.map(lambda build: build(root, full), BUILDERS.values()))
    assert [c.name for c in cases] == case_names(), "a builder named its case differently"
    return cases


# -- trees deeper than Python's recursion limit ---------------------------------------------------------------
# os.walk and shutil.rmtree recurse once per folder level before Python 3.12/3.13, so they fail on the
# runaway-nesting case; these two walk with an explicit stack.
def list_tree(root: Path) -> set[str]:
    """Relative paths of everything under ``root`` that is not a folder (symlinks to folders included),
    without following symlinks."""
    found, stack = set(), [str(root)]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    found.add(os.path.relpath(entry.path, root))
    return found


def remove_tree(path: str | os.PathLike) -> None:
    """Delete ``path`` and everything under it, at any depth and path length: one directory
    descriptor open at a time, names relative to it."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    fd, names = os.open(path, flags), []
    while True:
        sub = None
        with os.scandir(fd) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    sub = entry.name
                    break
                os.unlink(entry.name, dir_fd=fd)
        if sub is not None:
            fd = _swap_fd(fd, os.open(sub, flags, dir_fd=fd))
            names.append(sub)
            continue
        if not names:
            break
        fd = _swap_fd(fd, os.open("..", flags, dir_fd=fd))
        os.rmdir(names.pop(), dir_fd=fd)
    os.close(fd)
    os.rmdir(path)


def _swap_fd(old: int, new: int) -> int:
    os.close(old)
    return new


# -- checks of a written file that only some cases need -----------------------------------------------------
def _id3v1_follows(path: str, labels: list[str]) -> str | None:
    """After a write, ID3v1's genre byte names the new genre (or 255 = none), not the stale Rock."""
    from mutagen._constants import GENRES

    with open(path, "rb") as fh:
        fh.seek(-128, os.SEEK_END)
        tag = fh.read(128)
    codes = {name.casefold(): i for i, name in enumerate(GENRES)}
    want = codes.get(labels[0].casefold(), 255) if labels else 255
    if tag[:3] != b"TAG":
        return "the ID3v1 tag is gone"
    return None if tag[127] == want else f"ID3v1 genre byte {tag[127]}, want {want}"


def _comment_blocks(data: bytes) -> list[list[str]]:
    data = strip_id3v2(data)
    pos, blocks = 4, []
    while pos + 4 <= len(data):
        header, length = data[pos], int.from_bytes(data[pos + 1:pos + 4], "big")
        if header & 0x7F == 4:
            body = data[pos + 4:pos + 4 + length]
            at = 4 + struct.unpack_from("<I", body)[0]
            count, at = struct.unpack_from("<I", body, at)[0], at + 4
            comments = []
            for _ in range(count):
                size = struct.unpack_from("<I", body, at)[0]
                comments.append(body[at + 4:at + 4 + size].decode("utf-8", "replace"))
                at += 4 + size
            blocks.append(comments)
        pos += 4 + length
        if header & 0x80:
            break
    return blocks


def _one_genre_block(path: str, labels: list[str]) -> str | None:
    """The first VORBIS_COMMENT block holds the new genres; no later block keeps the stale Metal."""
    with open(path, "rb") as fh:
        blocks = _comment_blocks(fh.read(1 << 20))
    genres = [[c.split("=", 1)[1] for c in block if c.upper().startswith("GENRE=")] for block in blocks]
    if len(genres) < 2:
        return f"{len(genres)} comment blocks left (the file had 2)"
    if genres[0] != labels or any(genres[1:]):
        return f"GENRE per block {genres}, want {labels} then none"
    return None


def _front_id3_follows(path: str, labels: list[str]) -> str | None:
    """The ID3v2 tag in front of the FLAC stream says the new genre, not the stale Blues."""
    from mutagen.id3 import ID3

    got = [g for frame in ID3(path).getall("TCON") for g in frame.genres]
    return None if got == labels else f"front ID3 TCON {got}, want {labels}"


CHECKS = {"id3v1-follows": _id3v1_follows, "one-genre-block": _one_genre_block,
          "front-id3-follows": _front_id3_follows}


# -- judging a scan -----------------------------------------------------------------------------------------
@dataclass
class FileState:
    sha256: str | None           # None: not a regular file
    audio: str | None = None     # tagger.tagging.tags.audio_digest, for files a scan may write
    size: int = 0
    mtime_ns: int = 0


@dataclass
class Verdict:
    case: Case
    got: str
    reason: str = ""                                   # the first failure reason the index holds
    problems: list[str] = field(default_factory=list)
    changed: dict[str, int] = field(default_factory=dict)  # files changed against expectation: size

    @property
    def ok(self) -> bool:
        return not self.problems


def record_files(root: Path, cases: list[Case]) -> dict[str, FileState]:
    """What every case's files hold before the scan: bytes always, decoded audio for files that may be
    written (identical bytes are digested once)."""
    from tagger.tagging.tags import audio_digest

    def one(item: tuple[str, bool]) -> tuple[str, FileState]:
        rel, special = item
        if special:
            return rel, FileState(None)
        st = os.stat(root / rel)
        return rel, FileState(sha256(root / rel), size=st.st_size, mtime_ns=st.st_mtime_ns)

    items = [(rel, c.special) for c in cases for rel in c.paths]
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        states = dict(pool.map(one, items))
        writable = {states[rel].sha256: rel for c in cases if c.expect == CLASSIFIED for rel in c.paths}
        digests = dict(zip(writable, pool.map(lambda rel: audio_digest(root / rel), writable.values())))
    for state in states.values():
        state.audio = digests.get(state.sha256)
    return states


@dataclass
class ScanRun:
    """A finished scan: its exit code, time, error lines, summary and the index rows of its run."""

    returncode: int
    seconds: float
    stderr: str
    summary: dict[str, int]
    run_id: int
    rows: dict[str, dict]        # tracks row (+ its prediction's labels and written flag) by path key
    run_counts: dict[str, int]   # the runs row's own counts


def scan_command(root: Path, db: Path, *extra: str) -> list[str]:
    """``genretag scan ROOT --write-tags`` with the built-in model; ``--min-confidence 0`` tags every
    decodable file, so every hostile format goes through a real tag write."""
    return [GENRETAG, "scan", str(root), "--write-tags", "--min-confidence", "0", "--db", str(db),
            "--model", "builtin:musicnn-msd", *extra]


def run_scan(root: Path, db: Path, *extra: str, timeout: float = 1800, env: dict | None = None) -> ScanRun:
    started = time.perf_counter()
    proc = subprocess.run(scan_command(root, db, *extra), capture_output=True, timeout=timeout, env=env,
                          check=False)
    return read_run(db, proc.returncode, time.perf_counter() - started, proc.stderr)


def read_run(db: Path, returncode: int, seconds: float, stderr: bytes) -> ScanRun:
    """The index rows of the last scan run in ``db``. stderr is decoded the way Python wrote it."""
    text = stderr.decode("utf-8", "backslashreplace")
    match = SUMMARY_RE.search(text)
    summary = {k: int(v.replace(",", "")) for k, v in match.groupdict().items() if v is not None} if match else {}
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        run = dict(conn.execute("select * from runs where command = 'scan' order by id desc limit 1").fetchone())
        rows = {r["path"]: dict(r) for r in conn.execute(
            "select t.*, p.labels, p.written from tracks t left join predictions p "
            "on p.path = t.path and p.fingerprint = t.fingerprint where t.run_id = ?", [run["id"]])}
    finally:
        conn.close()
    return ScanRun(returncode, seconds, text, summary, run["id"], rows,
                   {k: run[k] or 0 for k in ("scanned", "skipped", "tagged", "abstained", "failed") if k in run})


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def shown_names(path: str) -> set[str]:
    """How an error line may name ``path``: as the index stores it (``\\xNN`` for bytes that are not
    UTF-8) or as Python's stderr writes the undecodable bytes (``\\udcNN``); control characters
    escaped (``\\n``), since one line per file is the contract."""
    from tagger.index import path_key

    python = path.encode("utf-8", "backslashreplace").decode("utf-8")
    return {CONTROL.sub(lambda m: repr(m.group())[1:-1], name) for name in (path_key(path), python)}


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def judge(case: Case, root: Path, scan: ScanRun, before: dict[str, FileState]) -> Verdict:
    """Compare what the scan did to ``case``'s files with what it should have done."""
    from tagger.index import path_key

    base = os.path.abspath(root)
    statuses, verdict = Counter(), Verdict(case, "")
    lines = error_lines(scan.stderr)
    for rel in case.paths:
        path = os.path.join(base, rel)
        row = scan.rows.get(path_key(path))
        statuses[row["status"] if row else "no row"] += 1
        if row and row["error"] and not verdict.reason:
            verdict.reason = row["error"]
        problems = _judge_file(case, path, row, lines) + _judge_bytes(case, path, row, before[rel])
        verdict.problems += [f"{rel!r}: {p}" for p in problems]
        if any("CHANGED" in p for p in problems):
            verdict.changed[rel] = before[rel].size
    for rel in case.absent:
        if path_key(os.path.join(base, rel)) in scan.rows:
            verdict.problems.append(f"{rel!r} was scanned through a loop")
    verdict.got = ", ".join(f"{status}×{n}" if n > 1 else status for status, n in sorted(statuses.items()))
    return verdict


def _judge_file(case: Case, path: str, row: dict | None, lines: list[str]) -> list[str]:
    from tagger.records import ABSTAINED, OK

    if case.expect == NOT_SCANNED:
        return [f"became a track ({row['status']})"] if row else []
    if row is None:
        return ["no index row"]
    if case.expect == CLASSIFIED and row["status"] not in (OK, ABSTAINED):
        return [f"expected ok/abstained, got {row['status']}: {row['error']}"]
    if case.expect == FAILED:
        return _judge_failure(case, path, row, lines)
    return []


def _judge_failure(case: Case, path: str, row: dict, lines: list[str]) -> list[str]:
    from tagger.records import FAILED as FAILED_STATUS

    if row["status"] != FAILED_STATUS:
        return [f"expected failed, got {row['status']}"]
    problems = []
    reason = row["error"] or ""
    if not any(word.lower() in reason.lower() for word in case.reason):
        problems.append(f"reason {reason!r} names none of {case.reason}")
    wanted = {f"error: {name}: {reason}" for name in shown_names(path)}
    if sum(line in wanted for line in lines) != 1:
        problems.append(f"{sum(line in wanted for line in lines)} error lines {min(wanted)!r} (want 1)")
    if case.predicted and not json.loads(row["labels"] or "[]"):
        problems.append("the prediction was not recorded")
    return problems


def _judge_bytes(case: Case, path: str, row: dict | None, state: FileState) -> list[str]:
    """A written file keeps its audio and reads back its new genres (through genretag, through ffprobe
    and through the case's own check); any other file keeps every byte."""
    if state.sha256 is None:
        return [] if os.path.lexists(path) else ["vanished"]
    if not (row and row.get("written")):
        return [] if sha256(path) == state.sha256 else ["BYTES CHANGED but not recorded as written"]
    return _judge_written(case, path, json.loads(row["labels"] or "[]"), state)


def _judge_written(case: Case, path: str, labels: list[str], state: FileState) -> list[str]:
    from tagger.errors import GenretagError
    from tagger.tagging.tags import audio_digest, read_genres

    fold = [g.casefold() for g in labels]
    problems = []
    try:
        if audio_digest(path) != state.audio:
            problems.append("AUDIO CHANGED by the tag write")
        if [g.casefold() for g in read_genres(path)] != fold:
            problems.append(f"genretag reads back {read_genres(path)}, predicted {labels}")
    except GenretagError as err:
        return [f"unreadable after the write: {err.reason}"]
    probed = ffprobe_genres(path)
    if probed and [g.casefold() for g in probed] != fold:
        problems.append(f"ffprobe reads back {probed}, predicted {labels}")
    if case.check and (problem := CHECKS[case.check](path, labels)):
        problems.append(problem)
    return problems


def undo_all(root: Path, db: Path, before: dict[str, FileState], env: dict | None = None,
             timeout: float = 1800) -> tuple[int, str, list[str]]:
    """``genretag undo`` of the scan as a real process, then every file's bytes and modification time
    against what they were before the scan: (exit code, its output, the files that did not come back)."""
    proc = subprocess.run([GENRETAG, "undo", "--db", str(db)], capture_output=True, timeout=timeout, env=env,
                          check=False)
    changed = []
    for rel, state in before.items():
        if state.sha256 is None:
            continue
        path = root / rel
        if sha256(path) != state.sha256 or os.stat(path).st_mtime_ns != state.mtime_ns:
            changed.append(rel)
    output = (proc.stdout + proc.stderr).decode("utf-8", "backslashreplace")
    return proc.returncode, output, changed


def ffprobe_genres(path: str) -> list[str]:
    """Every genre value ffprobe reports (format and stream tags): an independent reader."""
    out = subprocess.run(["ffprobe", "-v", "quiet", "-of", "json", "-show_entries", "format_tags:stream_tags",
                          "file:" + os.path.abspath(path)], capture_output=True, text=True, errors="replace",
                         check=False).stdout
    data = json.loads(out or "{}")
    tag_sets = [data.get("format", {}).get("tags", {})] + [s.get("tags", {}) for s in data.get("streams", [])]
    return [v for tags in tag_sets for k, v in tags.items() if k.lower() == "genre"]


def count_problems(scan: ScanRun) -> list[str]:
    """The printed summary, the runs row and the index rows of the run must tell the same story, with
    one error line per failed row."""
    if not scan.summary:
        return ["no summary line on stderr"]
    by_status = Counter(row["status"] for row in scan.rows.values())
    from_rows = {"tagged": by_status["ok"], "abstained": by_status["abstained"],
                 "failed": by_status["failed"], "written": sum(bool(r["written"]) for r in scan.rows.values())}
    problems = []
    if scan.summary.get("skipped") == 0 and scan.summary.get("scanned", 0) > len(scan.rows):
        problems.append(f"summary says {scan.summary['scanned']} predicted, the index has {len(scan.rows)} rows")
    for key, value in from_rows.items():
        if scan.summary.get(key) != value:
            problems.append(f"summary says {key} {scan.summary.get(key)}, the index rows {value}")
        if key in scan.run_counts and scan.run_counts[key] != value:
            problems.append(f"runs row says {key} {scan.run_counts[key]}, the index rows {value}")
    if len(error_lines(scan.stderr)) != by_status["failed"]:
        problems.append(f"{len(error_lines(scan.stderr))} error lines for {by_status['failed']} failed rows")
    return problems


# -- the script ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="2-hour and 1-hour files, depth 40, 2,000 files")
    parser.add_argument("--keep", type=Path, help="build here (a new folder) and keep it afterwards")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="hostile-"))
    root, db = work / "library", work / "index.db"
    try:
        started = time.perf_counter()
        cases = make_hostile_library(root, full=args.full)
        built = time.perf_counter() - started
        before = record_files(root, cases)
        megabytes = sum(s.size for s in before.values()) / 1e6
        print(f"built {len(cases)} cases, {len(before)} files, {megabytes:.1f} MB in {built:.1f} s", flush=True)
        env = {**os.environ, "GENRETAG_HOME": str(work / "home")}
        scan = run_scan(root, db, env=env)
        print(f"scan: exit {scan.returncode} in {scan.seconds:.1f} s; {scan.summary}", flush=True)
        failed = print_report(cases, root, scan, before)
        started = time.perf_counter()
        code, output, changed = undo_all(root, db, before, env)
        hashed = sum(s.sha256 is not None for s in before.values())
        print(f"undo: exit {code} in {time.perf_counter() - started:.1f} s; {output.strip().splitlines()[-1:]}; "
              f"files back to their bytes and modification time: {hashed - len(changed)}/{hashed}")
        for rel in changed[:10]:
            print(f"    not given back: {rel!r}")
        return 1 if failed or code != 0 or changed else 0
    finally:
        if not args.keep:
            remove_tree(work)


def print_report(cases: list[Case], root: Path, scan: ScanRun, before: dict[str, FileState]) -> int:
    """One row per case, then the totals; 1 if anything broke."""
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        verdicts = list(pool.map(lambda c: judge(c, root, scan, before), cases))
    print(f"\n{'case':24} {'expected':21} {'got':17} {'':5} reason")
    for v in verdicts:
        print(f"{v.case.name:24} {v.case.expect:21} {v.got:17} {'OK' if v.ok else 'FAIL':5} {v.reason[:70]}")
        for problem in v.problems[:3]:
            print(f"    {problem[:160]}")
    totals = count_problems(scan)
    for problem in totals:
        print(f"counts: {problem}")
    changed = {rel: size for v in verdicts for rel, size in v.changed.items()}
    print(f"\ncases {len(cases)}: OK {sum(v.ok for v in verdicts)}, FAIL {sum(not v.ok for v in verdicts)}; "
          f"files checked {len(before)}; files written {scan.summary.get('written')}; "
          f"files changed against expectation {len(changed)} ({sum(changed.values())} bytes); "
          f"summary = index: {'yes' if not totals else 'NO'}; exit code {scan.returncode} (want 3); "
          f"scan {scan.seconds:.1f} s")
    return 1 if totals or changed or any(not v.ok for v in verdicts) or scan.returncode != 3 else 0


if __name__ == "__main__":
    sys.exit(main())
