"""Step 2: decode only the windows that will be analysed, at the model's rate, in mono.

FFmpeg (through torchcodec's ``AudioDecoder``) resamples and downmixes while it decodes and seeks to
each window, so a 4-minute track costs three 30 s decodes rather than a full one.

Window placement: a track no longer than one window is one window, zero-padded. A longer one gets
``n = min(max_windows, duration // window)`` windows; the time the windows do not cover is split into
``n + 1`` equal gaps, so the windows are evenly spread, never overlap, and skip the same stretch at
the very start and end (intros, fade-outs, silence) that they leave between each other. For a 4-minute
track and 3 windows that is 37.5–67.5 s, 105–135 s and 172.5–202.5 s.
"""
from __future__ import annotations

import os

from .errors import UnreadableFile
from .records import DecodedTrack, Track
from .settings import MIN_DECODED_SECONDS, WINDOW_SECONDS

UNKNOWN_DURATION_SECONDS = 600.0
"""When a container states no duration, at most this much is decoded from the start to find windows."""


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

    try:
        decoder = AudioDecoder(_source(track.path), sample_rate=sample_rate, num_channels=1)
        meta = decoder.metadata
    except Exception as exc:  # torchcodec raises RuntimeError/ValueError with FFmpeg's words
        raise UnreadableFile(track.path, _one_line(exc, "cannot open audio")) from None
    header_duration = meta.duration_seconds
    window_samples = int(round(window * sample_rate))
    if header_duration and header_duration > 0:
        starts = plan_windows(header_duration, max_windows, window)
        clips = [_decode_range(decoder, track, s, s + window) for s in starts]
        kept = [(s, c) for s, c in zip(starts, clips) if c.numel() >= MIN_DECODED_SECONDS * sample_rate]
    else:
        kept = []
    duration = header_duration or 0.0
    if not kept:
        # No or wrong header duration (truncated downloads, empty containers): decode from the start
        # and place the windows over what really decodes.
        audio = _decode_range(decoder, track, 0.0, UNKNOWN_DURATION_SECONDS)
        duration = audio.numel() / sample_rate
        if audio.numel() < MIN_DECODED_SECONDS * sample_rate:
            raise UnreadableFile(track.path, f"no decodable audio ({duration:.2f} s decoded)")
        starts = plan_windows(duration, max_windows, window)
        kept = list(zip(starts, _slices(audio, starts, sample_rate, window)))
    windows, lengths = _stack([clip for _, clip in kept], window_samples)
    return DecodedTrack(track, windows, lengths, [s for s, _ in kept], duration, meta.codec)


def _source(path: str):
    """The path itself, or an open file where the name is not valid UTF-8 (torchcodec takes only
    UTF-8 paths, while Linux file names are bytes)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return open(path, "rb")  # closed with the decoder, when it is garbage-collected


def _decode_range(decoder, track: Track, start: float, stop: float):
    try:
        return decoder.get_samples_played_in_range(start, stop).data[0]
    except Exception as exc:
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


def _one_line(exc: Exception, prefix: str) -> str:
    text = " ".join(str(exc).split())
    return f"{prefix}: {text[:200]}" if text else prefix
