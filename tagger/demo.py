"""Deterministic music-like synthetic tracks: the demo library and the benchmark corpora.

Each style is a tempo, a drum pattern, a chord progression and a timbre; the same seed always gives
the same samples. FFmpeg encodes them to the requested formats: the ``ffmpeg`` program where there is one,
else torchcodec's encoder over the FFmpeg libraries that genretag decodes with.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 22050
STYLES = {  # tempo (bpm), drums (kick/snare/hat per 16th), harmonics of the chord voice, brightness
    "pulse": (124, "k...h...k...h...", 1, 0.2),
    "rockish": (140, "k.h.s.h.k.k.s.h.", 6, 0.8),
    "ambientish": (70, "................", 2, 0.1),
    "swingish": (110, "k..h..s..h.k.s..", 3, 0.4),
    "breakish": (170, "k.h.s.hkh.k.s.hh", 4, 0.6),
}
CHORDS = [(0, 4, 7), (5, 9, 12), (7, 11, 14), (9, 12, 16)]
FORMATS = ("mp3", "flac", "ogg", "opus", "m4a", "wav")
CODEC_ARGS = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "128k"], "flac": ["-c:a", "flac"],
    "ogg": ["-c:a", "libvorbis", "-q:a", "3"], "opus": ["-c:a", "libopus", "-b:a", "96k"],
    "m4a": ["-c:a", "aac", "-b:a", "128k"], "wav": ["-c:a", "pcm_s16le"],
}


def synth(style: str, seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples in [-0.5, 0.5] of a track in ``style``."""
    bpm, pattern, harmonics, bright = STYLES[style]
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    step = 60.0 / bpm / 4  # one 16th note
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    chord_index = (t // (step * 16)).astype(int) % len(CHORDS)
    out = np.zeros(n)
    for voice in range(3):
        freq = root * 2 ** (np.array([c[voice] for c in CHORDS])[chord_index] / 12)
        phase = 2 * np.pi * np.cumsum(freq) / sample_rate
        out += sum(np.sin(h * phase) / h ** (2 - bright) for h in range(1, harmonics + 1)) * 0.08
    out += 0.15 * np.sin(np.pi * np.cumsum(root * 2 ** (np.array([c[0] for c in CHORDS])[chord_index] / 12))
                         / sample_rate)
    for i, hit in enumerate(pattern * int(seconds / (step * 16) + 1)):
        start = int(i * step * sample_rate)
        if start >= n or hit == ".":
            continue
        length = min(int(0.15 * sample_rate), n - start)
        env = np.exp(-np.arange(length) / (0.03 * sample_rate))
        if hit == "k":
            out[start:start + length] += 0.5 * env * np.sin(2 * np.pi * 55 * np.arange(length) / sample_rate)
        else:
            out[start:start + length] += (0.2 if hit == "s" else 0.06) * env * rng.standard_normal(length)
    return (out / max(1e-9, np.abs(out).max()) * 0.5).astype(np.float32)


HIFI_CODEC_ARGS = {
    **CODEC_ARGS, "mp3": ["-c:a", "libmp3lame", "-b:a", "320k"], "ogg": ["-c:a", "libvorbis", "-q:a", "6"],
    "opus": ["-c:a", "libopus", "-b:a", "160k"], "m4a": ["-c:a", "aac", "-b:a", "256k"],
}
"""What a collection's stereo files use: 320 kbit/s MP3, iTunes' 256 kbit/s AAC, Vorbis quality 6
(about 192 kbit/s), 160 kbit/s Opus. The benchmark library is encoded with these."""


def stereo(samples: np.ndarray, sample_rate: int, delay_s: float = 0.011) -> np.ndarray:
    """``[2, n]`` channels made from mono ``samples``: each leans towards a copy delayed by ``delay_s``,
    so the channels differ as a real mix's do and an encoder must code both."""
    delayed = np.concatenate([np.zeros(int(delay_s * sample_rate), samples.dtype), samples])[: samples.size]
    return np.stack([0.75 * samples + 0.25 * delayed, 0.25 * samples + 0.75 * delayed]).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """16-bit PCM of ``[n]`` (mono) or ``[channels, n]`` samples."""
    frames = np.atleast_2d(samples)
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(frames.shape[0])
        fh.setsampwidth(2)
        fh.setframerate(sample_rate)
        fh.writeframes((frames.T * 32767).astype("<i2").tobytes())
    return path


def encode(samples: np.ndarray, path: Path, sample_rate: int = SAMPLE_RATE, title: str | None = None,
           hifi: bool = False) -> Path:
    """Encode ``[n]`` mono or ``[channels, n]`` samples to ``path``; the codec follows the suffix, at
    :data:`CODEC_ARGS`' rates, or :data:`HIFI_CODEC_ARGS`' with ``hifi``."""
    if shutil.which("ffmpeg") is None:
        return encode_with_libraries(samples, path, sample_rate, title, hifi)
    fmt = path.suffix.lstrip(".").lower()
    with tempfile.TemporaryDirectory() as tmp:
        src = write_wav(Path(tmp) / "src.wav", samples, sample_rate)
        meta = ["-metadata", f"title={title}"] if title else []
        out_rate = ["-ar", "48000"] if fmt == "opus" else []
        codec = (HIFI_CODEC_ARGS if hifi else CODEC_ARGS)[fmt]
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), *codec,
                        *out_rate, *meta, str(path)], check=True)
    return path


LIBRARY_BIT_RATES = {"mp3": 128_000, "opus": 96_000, "m4a": 128_000}
""":data:`CODEC_ARGS`' rates for torchcodec's encoder, which picks the codec from the suffix as the ffmpeg
program does (libmp3lame, libvorbis, libopus, aac, flac, 16-bit PCM). Vorbis keeps libvorbis' default
quality: it refuses most fixed rates for 22.05 kHz mono."""
HIFI_LIBRARY_BIT_RATES = {"mp3": 320_000, "opus": 160_000, "m4a": 256_000, "ogg": 192_000}
""":data:`HIFI_CODEC_ARGS`' rates for torchcodec's encoder (which has no quality scale: Vorbis gets
quality 6's nominal rate)."""


def encode_with_libraries(samples: np.ndarray, path: Path, sample_rate: int = SAMPLE_RATE,
                          title: str | None = None, hifi: bool = False) -> Path:
    """:func:`encode` without the ``ffmpeg`` program, as on a machine that has only FFmpeg's shared
    libraries (a wheel's, say): torchcodec encodes, and mutagen writes the title."""
    import torch
    from torchcodec.encoders import AudioEncoder

    fmt = path.suffix.lstrip(".").lower()
    if fmt not in CODEC_ARGS:
        raise ValueError(f"{path}: no encoder settings for .{fmt}")
    out_rate = {"sample_rate": 48000} if fmt == "opus" else {}
    frames = torch.from_numpy(np.ascontiguousarray(np.atleast_2d(samples), dtype=np.float32))
    encoder = AudioEncoder(frames, sample_rate=sample_rate)
    encoder.to_file(path, bit_rate=(HIFI_LIBRARY_BIT_RATES if hifi else LIBRARY_BIT_RATES).get(fmt), **out_rate)
    if title:
        _write_title(path, title)
    return path


def _write_title(path: Path, title: str) -> None:
    """The title where the ffmpeg program puts it: Vorbis comments, ID3, MP4 atoms, and a WAV's RIFF
    INFO list (which FFmpeg's encoder always writes, and which players read before an ID3 chunk)."""
    import mutagen

    from .tagging.formats import riff_info_value, riff_set_info

    if path.suffix.lower() == ".wav" and riff_info_value(str(path), b"INAM")[0]:
        riff_set_info(str(path), b"INAM", title)
        return
    audio = mutagen.File(path, easy=True)
    if audio.tags is None:
        audio.add_tags()
    if hasattr(audio.tags, "getall"):  # a WAV without an INFO list: ID3, which has no "easy" keys there
        from mutagen.id3 import TIT2

        audio.tags.add(TIT2(encoding=3, text=[title]))
    else:
        audio.tags["title"] = [title]
    audio.save()


def make_demo_library(folder: str | os.PathLike, tracks: int = 6, seconds: float = 40.0,
                      formats: tuple[str, ...] = FORMATS, seed: int = 0) -> list[Path]:
    """Write ``tracks`` synthetic tracks into ``folder/<style>/`` cycling through styles and formats."""
    root = Path(folder)
    styles = list(STYLES)
    paths = []
    for i in range(tracks):
        style = styles[i % len(styles)]
        fmt = formats[i % len(formats)]
        target = root / style / f"{style}-{i:03d}.{fmt}"
        target.parent.mkdir(parents=True, exist_ok=True)
        paths.append(encode(synth(style, seconds, seed + i), target, title=f"{style} {i}"))
    return paths
