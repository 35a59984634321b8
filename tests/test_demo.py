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
