"""The synthetic demo library: `genretag demo-library`, and encoding with or without the ffmpeg program."""
from __future__ import annotations

import shutil
import subprocess

import mutagen
import numpy as np
import pytest
from click.testing import CliRunner
from mutagen.flac import FLAC
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE
from torchcodec.decoders import AudioDecoder

from tagger.cli import cli
from tagger.demo import FORMATS, SAMPLE_RATE, encode, synth

KINDS = {"mp3": MP3, "flac": FLAC, "ogg": OggVorbis, "opus": OggOpus, "m4a": MP4, "wav": WAVE}


FFPROBE = shutil.which("ffprobe")


def title_of(path) -> str:
    """The title as FFmpeg reads it: from ID3, Vorbis comments, MP4 atoms or WAV's RIFF INFO alike."""
    out = subprocess.run([FFPROBE, "-v", "error", "-show_entries", "format_tags=title:stream_tags=title",
                          "-of", "default=nw=1:nk=1", str(path)], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def decoded(path) -> np.ndarray:
    return AudioDecoder(str(path), sample_rate=SAMPLE_RATE, num_channels=1).get_all_samples().data[0].numpy()


def test_demo_library_command_writes_a_track_of_each_format(tmp_path):
    result = CliRunner().invoke(cli, ["demo-library", str(tmp_path / "demo"), "--tracks", "6",
                                      "--seconds", "4"])
    assert result.exit_code == 0, result.output
    paths = sorted((tmp_path / "demo").rglob("*.*"))
    assert sorted(p.suffix[1:] for p in paths) == sorted(FORMATS)
    for path in paths:
        assert isinstance(mutagen.File(path), KINDS[path.suffix[1:]])
        assert title_of(path) == f"{path.parent.name} {int(path.stem.rsplit('-', 1)[1])}"
        assert abs(len(decoded(path)) / SAMPLE_RATE - 4.0) < 0.06


@pytest.mark.parametrize("fmt", FORMATS)
def test_without_the_ffmpeg_program_the_libraries_encode_the_same_format(fmt, tmp_path, monkeypatch):
    """A machine with FFmpeg's shared libraries (a wheel's, say) and no ffmpeg program still makes the
    demo and bench libraries: the same codec and container, the title, and the audio itself."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg program on it
    samples = synth("swingish", 3.0, seed=4)
    path = encode(samples, tmp_path / f"t.{fmt}", title="swing 4")
    audio = mutagen.File(path)
    assert isinstance(audio, KINDS[fmt])
    if fmt == "wav":
        assert audio.info.bits_per_sample == 16
    if fmt == "m4a":
        assert audio.info.codec == "mp4a.40.2"  # AAC-LC
    assert title_of(path) == "swing 4"
    out = decoded(path)
    if fmt in ("wav", "flac"):  # lossless: the 16-bit samples themselves
        np.testing.assert_allclose(out, np.round(samples * 32767) / 32768, atol=1.5 / 32768)
    else:  # lossy, with the codec's delay trimmed or not: the same length and loudness
        assert abs(len(out) - len(samples)) < 0.06 * SAMPLE_RATE
        assert np.sqrt(np.mean(out ** 2)) == pytest.approx(np.sqrt(np.mean(samples ** 2)), rel=0.15)


def test_a_wav_without_an_info_list_gets_its_title_in_id3(tmp_path):
    """Python's wave module writes no RIFF INFO list: the title then goes into an ID3 chunk."""
    from tagger.demo import _write_title, write_wav

    path = write_wav(tmp_path / "plain.wav", synth("pulse", 1.0))
    _write_title(path, "pulse 1")
    assert str(mutagen.File(path).tags["TIT2"]) == "pulse 1"
    assert len(decoded(path)) == SAMPLE_RATE


def stream_of(path):
    """Channels and sample rate of the file's own audio stream, as FFmpeg reads them."""
    meta = AudioDecoder(str(path)).metadata
    return meta.num_channels, meta.sample_rate


@pytest.mark.parametrize("encoder", ["ffmpeg program", "libraries"])
def test_hifi_stereo_encodes_two_distinct_channels_at_collection_bit_rates(encoder, tmp_path, monkeypatch):
    """The bench library's tracks are what a collection holds: 44.1 kHz stereo (Opus 48 kHz), 320 kbit/s
    MP3 and 256 kbit/s AAC, whichever encoder makes them, with channels that differ as a mix's do."""
    from tagger.demo import stereo

    if encoder == "libraries":
        monkeypatch.setenv("PATH", str(tmp_path))
    elif shutil.which("ffmpeg") is None:
        pytest.skip("no ffmpeg program")
    samples = stereo(synth("rockish", 4.0, seed=2, sample_rate=44100), 44100)
    assert samples.shape[0] == 2 and not np.allclose(samples[0], samples[1], atol=1e-3)
    for fmt in FORMATS:
        path = encode(samples, tmp_path / f"s.{fmt}", 44100, hifi=True)
        assert stream_of(path) == (2, 48000 if fmt == "opus" else 44100), fmt
        left, right = AudioDecoder(str(path)).get_all_samples().data.numpy()
        assert np.sqrt(np.mean((left - right) ** 2)) > 0.01, fmt
    assert abs(mutagen.File(tmp_path / "s.mp3").info.bitrate - 320_000) < 8_000
    assert mutagen.File(tmp_path / "s.m4a").info.bitrate > 200_000  # 128 kbit/s without hifi


def test_bench_library_keeps_each_rate_and_channel_layout_in_its_own_folder(tmp_path):
    from bench.library import make_library

    stereo_paths = make_library(tmp_path, 2, min_s=3, max_s=3, formats=("flac", "mp3"), workers=1)
    mono_paths = make_library(tmp_path, 2, min_s=3, max_s=3, formats=("flac", "mp3"), workers=1,
                              sample_rate=22050, channels=1)
    assert {p.relative_to(tmp_path).parts[0] for p in stereo_paths} == {"44100hz-2ch"}
    assert {p.relative_to(tmp_path).parts[0] for p in mono_paths} == {"22050hz-1ch"}
    assert [stream_of(p) for p in stereo_paths] == [(2, 44100)] * 2
    assert [stream_of(p) for p in mono_paths] == [(1, 22050)] * 2
    again = make_library(tmp_path, 2, min_s=3, max_s=3, formats=("flac", "mp3"), workers=1)
    assert again == stereo_paths and all(p.stat().st_size for p in again)
