"""Synthesize short audio files with FFmpeg, for tests.

    from tests.audio_fixtures import make_audio, have_encoder
    make_audio(tmp_path / "a.flac", seconds=1.0)
    make_audio(tmp_path / "b.mp3", id3_version=3, with_id3v1=True, tags={"genre": "Jazz"})

The codec and container follow the file suffix (see ``FORMATS``); ``codec=`` overrides the codec
(``make_audio(p.with_suffix(".m4a"), codec="alac")``). The signal is a sine tone from FFmpeg's
``lavfi`` source, so files are small, non-silent and decode deterministically. ``-bitexact`` keeps
FFmpeg's version string out of the file. Requires ``ffmpeg`` on PATH; ``ffmpeg_available()`` and
``have_encoder(name)`` let a test skip with a clear reason when a tool or encoder is missing.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

__all__ = ["FORMATS", "make_audio", "ffmpeg_available", "have_encoder", "encoder_for"]

# suffix -> (codec, muxer or None for FFmpeg's default for the suffix, forced sample rate, forced channels)
FORMATS: dict[str, tuple[str, str | None, int | None, int | None]] = {
    ".mp3": ("libmp3lame", "mp3", None, None),
    ".flac": ("flac", "flac", None, None),
    ".ogg": ("libvorbis", "ogg", None, None),
    ".oga": ("flac", "ogg", None, None),          # FLAC in Ogg ("Ogg FLAC")
    ".opus": ("libopus", "opus", 48000, None),     # Opus only runs at 48 kHz (and fractions)
    ".spx": ("libspeex", "ogg", 16000, 1),         # Speex: wideband mono
    ".m4a": ("aac", "ipod", None, None),           # codec="alac" for Apple Lossless
    ".wav": ("pcm_s16le", "wav", None, None),
    ".aiff": ("pcm_s16be", "aiff", None, None),
    ".aif": ("pcm_s16be", "aiff", None, None),
    ".wma": ("wmav2", "asf", None, None),
    ".wv": ("wavpack", "wv", None, None),
    ".aac": ("aac", "adts", None, None),          # raw ADTS stream: no tag format at all
}


@functools.lru_cache(maxsize=None)
def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


@functools.lru_cache(maxsize=None)
def _encoders() -> frozenset[str]:
    if not ffmpeg_available():
        return frozenset()
    out = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] in "AVS":
            names.add(parts[1])
    return frozenset(names)


def have_encoder(name: str) -> bool:
    """True if the installed FFmpeg has encoder ``name`` (e.g. ``"libspeex"``)."""
    return name in _encoders()


def encoder_for(suffix: str, codec: str | None = None) -> str:
    """The FFmpeg encoder ``make_audio`` would use for ``suffix``."""
    suffix = suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"make_audio: no codec known for suffix {suffix!r} (known: {', '.join(FORMATS)})")
    return codec or FORMATS[suffix][0]


def make_audio(
    path: Path,
    seconds: float = 2.0,
    freq: float = 440.0,
    sample_rate: int = 44100,
    channels: int = 2,
    *,
    codec: str | None = None,
    id3_version: int = 4,
    with_id3v1: bool = False,
    tags: dict[str, str] | None = None,
) -> Path:
    """Write ``seconds`` of a ``freq`` Hz sine tone to ``path`` and return ``path``.

    ``id3_version`` (MP3 only): 3 or 4 writes an ID3v2.3 / v2.4 tag (FFmpeg writes one even with no
    ``tags``: a header plus padding), 0 writes none. ``with_id3v1`` (MP3 only) appends an
    ID3v1 tag (with the file stem as title when ``tags`` is empty: FFmpeg writes v1 only when
    there is some metadata). ``tags`` become ``-metadata key=value`` (e.g. ``{"genre": "Jazz", "title": "T"}``);
    for WAV they land in a RIFF ``LIST/INFO`` chunk (``genre`` -> ``IGNR``), for AIFF in an ID3v2.4
    chunk. ``.aac`` makes a raw ADTS stream (no tag format at all).
    Opus is always 48 kHz and Speex 16 kHz mono, whatever ``sample_rate``/``channels`` say.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    enc = encoder_for(suffix, codec)
    _codec, muxer, force_rate, force_channels = FORMATS[suffix]
    if not ffmpeg_available():
        raise RuntimeError("make_audio needs ffmpeg and ffprobe on PATH")
    if not have_encoder(enc):
        raise RuntimeError(f"make_audio: this FFmpeg has no {enc!r} encoder for {suffix}")
    rate = force_rate or sample_rate
    chans = force_channels or channels
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-y",
        "-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate={rate}:duration={seconds}",
        "-ac", str(chans), "-ar", str(rate), "-c:a", enc, "-bitexact", "-map_metadata", "-1",
    ]
    tags = dict(tags or {})
    if with_id3v1 and not tags:
        tags["title"] = path.stem  # FFmpeg writes ID3v1 only when there is some metadata
    for key, value in tags.items():
        cmd += ["-metadata", f"{key}={value}"]
    if suffix == ".mp3":
        if id3_version not in (0, 3, 4):
            raise ValueError("id3_version must be 0 (no ID3v2), 3 or 4")
        # FFmpeg skips ID3v1 when id3v2_version is 0, so a v1-only file is made by stripping the v2 tag.
        cmd += ["-id3v2_version", str(id3_version or 4), "-write_id3v1", "1" if with_id3v1 else "0"]
    elif with_id3v1:
        raise ValueError("with_id3v1 is only supported for .mp3")
    elif suffix in (".aiff", ".aif") and tags:
        cmd += ["-write_id3v2", "1"]  # AIFF keeps tags only in an ID3 chunk
    if muxer:
        cmd += ["-f", muxer]
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd.append(str(path))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not path.exists():
        raise RuntimeError(f"ffmpeg failed for {path.name}: {res.stderr.strip()[-500:]}")
    if suffix == ".mp3" and id3_version == 0:
        data = path.read_bytes()
        if data[:3] == b"ID3":
            size = 0
            for b in data[6:10]:
                size = (size << 7) | (b & 0x7F)
            path.write_bytes(data[10 + size + (10 if data[5] & 0x10 else 0):])
    return path
