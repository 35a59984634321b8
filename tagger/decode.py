"""Step 2: decode only the windows that will be analysed, at the model's rate, in mono.

FFmpeg (through torchcodec's ``AudioDecoder``) resamples and downmixes while it decodes and seeks to
each window, so a 4-minute track costs three 30 s decodes rather than a full one. (torchcodec seeks in
audio since 0.14; 0.11-0.13 decoded from the start of the stream up to each window, the same samples
at up to 2x the cost, which is one reason pyproject.toml pins the release.)

Window placement: a track no longer than one window is one window, zero-padded. A longer one gets
``n = min(max_windows, duration // window)`` windows; the time the windows do not cover is split into
``n + 1`` equal gaps, so the windows are evenly spread, never overlap, and skip the same stretch at
the very start and end (intros, fade-outs, silence) that they leave between each other. For a 4-minute
track and 3 windows that is 37.5–67.5 s, 105–135 s and 172.5–202.5 s.
"""
from __future__ import annotations

import os
import re

from .errors import UnreadableFile
from .records import DecodedTrack, Track
from .settings import MIN_DECODED_SECONDS, WINDOW_SECONDS

UNKNOWN_DURATION_SECONDS = 600.0
"""When a container states no duration, at most this much is decoded from the start to find windows."""
FFMPEG_SECONDS = 120.0
"""The ``ffmpeg`` fallback decoder is stopped after this long: decoding ten minutes takes seconds, so it
is stuck (a FIFO, a share that stopped answering); the scan's own ``decode_timeout`` has given up too."""


def plan_windows(duration: float, max_windows: int, window: float = WINDOW_SECONDS) -> list[float]:
    """Start times (seconds) of the windows analysed in a track of ``duration`` seconds."""
    if duration <= window:
        return [0.0]
    count = max(1, min(max_windows, int(duration // window)))
    gap = (duration - count * window) / (count + 1)
    return [gap * (i + 1) + window * i for i in range(count)]


def decode_track(track: Track, sample_rate: int, max_windows: int,
                 window: float = WINDOW_SECONDS) -> DecodedTrack:
    """Decode ``track``'s planned windows. Raises :class:`UnreadableFile` with a one-line reason."""
    from torchcodec.decoders import AudioDecoder

    if track.size == 0:  # FFmpeg would only say "Invalid argument"
        raise UnreadableFile(track.path, "empty file (0 bytes)")
    try:
        decoder = AudioDecoder(_source(track.path), sample_rate=sample_rate, num_channels=1)
        meta = decoder.metadata
    except Exception as exc:  # torchcodec raises RuntimeError/ValueError with FFmpeg's words
        return _decode_from_start(track, None, sample_rate, max_windows, window,
                                  _open_failure(exc, track.path))
    duration = meta.duration_seconds
    if not duration or duration <= 0:
        return _decode_from_start(track, decoder, sample_rate, max_windows, window, None, meta.codec)
    starts = plan_windows(duration, max_windows, window)
    clips = [_decode_range(decoder, track, s, s + window, tolerant=True) for s in starts]
    kept = [(s, c) for s, c in zip(starts, clips) if c.numel() >= MIN_DECODED_SECONDS * sample_rate]
    if not kept:
        return _decode_from_start(track, decoder, sample_rate, max_windows, window, None, meta.codec)
    windows, lengths = _stack([clip for _, clip in kept], int(round(window * sample_rate)))
    return DecodedTrack(track, windows, lengths, [s for s, _ in kept], duration, meta.codec)


def _decode_from_start(track: Track, decoder, sample_rate: int, max_windows: int, window: float,
                       error: str | None, codec: str | None = None) -> DecodedTrack:
    """No, or a wrong, header duration (truncated downloads, empty containers), or a file torchcodec
    cannot open or seek in: decode from the start — with torchcodec, then with FFmpeg's own
    command-line decoder, which gets through some damaged streams — and place the windows over what
    really decodes."""
    import torch

    audio = torch.zeros(0)
    if decoder is not None:
        try:
            audio = decoder.get_samples_played_in_range(0.0, UNKNOWN_DURATION_SECONDS).data[0]
        except Exception as exc:  # "no frames" is not an error of its own: the file holds no audio
            error = None if _NO_FRAMES in str(exc) else _one_line(exc, "decoding failed")
    if audio.numel() < MIN_DECODED_SECONDS * sample_rate:
        audio = max(audio, _decode_with_ffmpeg(track.path, sample_rate), key=lambda a: a.numel())
    duration = audio.numel() / sample_rate
    if audio.numel() < MIN_DECODED_SECONDS * sample_rate:
        if not audio.numel():
            raise UnreadableFile(track.path, error or "no decodable audio (0.00 s decoded)")
        raise UnreadableFile(track.path, f"too short to classify ({duration:.2f} s of audio decoded, "
                                         f"at least {MIN_DECODED_SECONDS:g} s needed)")
    starts = plan_windows(duration, max_windows, window)
    windows, lengths = _stack(_slices(audio, starts, sample_rate, window), int(round(window * sample_rate)))
    return DecodedTrack(track, windows, lengths, starts, duration, codec)


def _decode_with_ffmpeg(path: str, sample_rate: int):
    """Mono float samples at ``sample_rate`` decoded by the ``ffmpeg`` program, or empty on failure.

    At most ``UNKNOWN_DURATION_SECONDS`` are read, and whatever decoded before an error is kept. The
    program, not a library that reads the file into memory first, because a file swapped for a device
    or a FIFO after discovery would then be read forever; and a time bound, because a read that never
    returns would leave the process behind after the scan has given the file up."""
    import subprocess

    import torch

    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-t", f"{UNKNOWN_DURATION_SECONDS:g}", "-i", "file:" + path,
           "-map", "0:a:0", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_SECONDS, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return torch.zeros(0)
    usable = len(out) - len(out) % 4  # 4-byte float samples; frombuffer refuses an empty buffer
    return torch.frombuffer(bytearray(out[:usable]), dtype=torch.float32) if usable else torch.zeros(0)


def _source(path: str):
    """The path itself, or an open file where the name is not valid UTF-8 (torchcodec takes only
    UTF-8 paths, while Linux file names are bytes)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return open(path, "rb")  # closed with the decoder, when it is garbage-collected


def _decode_range(decoder, track: Track, start: float, stop: float, tolerant: bool = False):
    """Samples in ``[start, stop)``. ``tolerant``: a window that cannot be decoded (a truncated file
    whose header promises more, a seek past the real end) is empty rather than fatal, so the caller can
    fall back to what decodes from the start."""
    import torch

    try:
        return decoder.get_samples_played_in_range(start, stop).data[0]
    except Exception as exc:
        if tolerant:
            return torch.zeros(0)
        raise UnreadableFile(track.path, _one_line(exc, "decoding failed")) from None


def decode_file(path: str | os.PathLike, sample_rate: int, max_windows: int) -> DecodedTrack:
    """Decode a path given directly (library use), without discovery."""
    st = os.stat(path)
    return decode_track(Track(os.fspath(path), st.st_size, st.st_mtime_ns), sample_rate, max_windows)


def windows_from_array(audio, sampling_rate: int, target_rate: int, max_windows: int,
                       window: float = WINDOW_SECONDS) -> DecodedTrack:
    """Window audio already in memory (``[samples]`` or ``[channels, samples]``), resampled with torchaudio."""
    import torch
    import torchaudio.functional as AF

    samples = torch.as_tensor(audio, dtype=torch.float32)
    if samples.ndim == 2:  # downmix channels-first audio; (samples, channels) arrays are transposed
        samples = samples.mean(dim=0 if samples.shape[0] <= samples.shape[1] else 1)
    if sampling_rate != target_rate:
        samples = AF.resample(samples, sampling_rate, target_rate)
    duration = samples.numel() / target_rate
    starts = plan_windows(duration, max_windows, window)
    windows, lengths = _stack(_slices(samples, starts, target_rate, window), int(round(window * target_rate)))
    return DecodedTrack(Track("<array>", 0, 0), windows, lengths, starts, duration, None)


def _slices(audio, starts: list[float], sample_rate: int, window: float) -> list:
    size = int(round(window * sample_rate))
    return [audio[int(s * sample_rate):int(s * sample_rate) + size] for s in starts]


def _stack(clips: list, window_samples: int):
    """Zero-pad clips to one window length; the lengths let models ignore the padding."""
    import torch

    windows = torch.zeros(len(clips), window_samples)
    lengths = torch.zeros(len(clips), dtype=torch.long)
    for i, clip in enumerate(clips):
        n = min(clip.numel(), window_samples)
        windows[i, :n] = clip[:n]
        lengths[i] = n
    return windows, lengths


_INTERNAL_LOCATION = re.compile(r"\b\w+, /\S+\.cpp:\d+, ")  # "SingleStreamDecoder, /__w/.../x.cpp:41, "
_OPEN_WORDS = re.compile(r"^(Could not open input file:|Failed to open input buffer:)\s*")
_NOT_AUDIO = {"Invalid argument", "Invalid data found when processing input"}
"""What FFmpeg says when no demuxer recognises the bytes (HTML pages, random data, resource forks)."""
_NO_FRAMES = "No audio frames were decoded"


def _one_line(exc: Exception, prefix: str) -> str:
    """FFmpeg's/torchcodec's message on one line, without torchcodec's source locations."""
    text = _INTERNAL_LOCATION.sub("", " ".join(str(exc).split()))
    return f"{prefix}: {text[:200]}" if text else prefix


def _open_failure(exc: Exception, path: str) -> str:
    """Why FFmpeg could not open ``path``, in words a user can act on. torchcodec repeats the path
    (which the error line already names) and wraps FFmpeg's reason in its own words; both go."""
    text = _INTERNAL_LOCATION.sub("", str(exc).replace(path, ""))
    cause = _OPEN_WORDS.sub("", " ".join(text.split()))
    if cause in _NOT_AUDIO:
        return f"not an audio file FFmpeg recognises ({cause})"
    return f"cannot open audio: {cause[:200]}" if cause else "cannot open audio"
