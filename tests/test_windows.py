"""Window planning and decoding: which parts of a track the model sees."""

import pytest

from tagger.decode import decode_file, plan_windows, windows_from_array
from tagger.errors import UnreadableFile
from tagger.models.infer import plan_segments


def test_short_track_is_one_window():
    assert plan_windows(2.0, max_windows=3) == [0.0]


def test_exact_window_is_one_window_from_the_start():
    assert plan_windows(30.0, max_windows=3) == [0.0]


@pytest.mark.parametrize("duration,max_windows,count", [(45, 3, 1), (60, 3, 2), (240, 3, 3), (240, 1, 1),
                                                       (3600, 5, 5)])
def test_long_track_windows_are_spread_inside_without_overlap(duration, max_windows, count):
    starts = plan_windows(duration, max_windows)
    assert len(starts) == count
    assert starts == sorted(starts)
    assert all(b - a >= 30.0 for a, b in zip(starts, starts[1:]))
    assert starts[0] >= 0 and starts[-1] + 30.0 <= duration
    head, tail = starts[0], duration - (starts[-1] + 30.0)
    assert head == pytest.approx(tail)  # the same stretch skipped at both ends


def test_four_minute_track_skips_intro_and_outro():
    assert plan_windows(240.0, 3) == pytest.approx([37.5, 105.0, 172.5])


def test_ast_segments_cover_the_whole_window():
    segment = int(10.24 * 16000)
    window = 30 * 16000
    offsets = plan_segments(window, segment)
    assert len(offsets) == 3
    assert offsets[0] == 0 and offsets[-1] + segment == window
    assert all(b <= a + segment for a, b in zip(offsets, offsets[1:]))  # no gap between segments


def test_short_valid_part_is_one_segment():
    assert plan_segments(5 * 16000, int(10.24 * 16000)) == [0]


@pytest.mark.parametrize("name,windows,valid_seconds", [
    ("b/pulse/t0.mp3", 1, 2.0), ("A/rockish/t1.flac", 1, 30.0), ("b/ambientish/t2.ogg", 3, 30.0),
    ("A/swingish/t3.opus", 1, 2.0), ("A/pulse/t5.wav", 3, 30.0), ("A/swingish/t7.m4a", 1, 30.0)])
def test_decoding_real_files_gives_planned_windows(mixed_library_src, name, windows, valid_seconds):
    decoded = decode_file(mixed_library_src / name, 16000, max_windows=3)
    assert decoded.windows.shape == (windows, 30 * 16000)
    for length in decoded.lengths.tolist():
        assert abs(length / 16000 - valid_seconds) < 0.1
    first = decoded.windows[0, : decoded.lengths[0]]
    assert first.abs().max() > 0.01  # real audio, not silence
    assert decoded.windows[0, decoded.lengths[0]:].abs().sum() == 0  # padding is zeros


def test_window_positions_match_the_plan(mixed_library_src):
    decoded = decode_file(mixed_library_src / "A/pulse/t5.wav", 16000, max_windows=3)
    assert decoded.starts == pytest.approx(plan_windows(decoded.duration, 3))
    assert decoded.duration == pytest.approx(240.0, abs=0.1)


def test_garbage_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "page.mp3"
    bad.write_text("<html><body>404 not found</body></html>")
    with pytest.raises(UnreadableFile) as err:
        decode_file(bad, 16000, 3)
    assert str(err.value).startswith(str(bad) + ": ")
    assert "\n" not in str(err.value)


def test_array_input_is_resampled_and_windowed():
    import torch

    audio = torch.randn(2, 44100 * 70) * 0.1
    decoded = windows_from_array(audio, 44100, 16000, max_windows=3)
    assert decoded.windows.shape == (2, 480000)
    assert decoded.duration == pytest.approx(70.0, abs=0.01)


@pytest.mark.parametrize("fmt", ["mp3", "flac", "ogg", "opus", "m4a", "wav"])
def test_seeked_windows_hold_the_samples_a_full_decode_has_there(tmp_path, fmt):
    """Each window is decoded after a seek; it must hold exactly what decoding the whole track from the
    start gives at the planned position (44.1 kHz stereo, resampled and downmixed on the way), not
    samples shifted by the seek. AAC is the exception: its decoder fills noise-coded bands with random
    noise whose sequence depends on where decoding began, so those bands differ by a little."""
    from torchcodec.decoders import AudioDecoder

    from tagger.demo import encode, stereo, synth

    path = encode(stereo(synth("rockish", 100.0, seed=3, sample_rate=44100), 44100), tmp_path / f"t.{fmt}",
                  44100, hifi=True)
    decoded = decode_file(path, 16000, max_windows=3)
    full = AudioDecoder(str(path), sample_rate=16000, num_channels=1).get_all_samples()
    assert len(decoded.starts) == 3
    for window, start, length in zip(decoded.windows, decoded.starts, decoded.lengths.tolist()):
        assert length == 30 * 16000
        at = int(round((start - full.pts_seconds) * 16000))
        expected = full.data[0, at:at + length]
        shifted = full.data[0, at + 1:at + 1 + length]  # one sample late: what a sloppy seek gives
        error = (window[:length] - expected).norm() / expected.norm()
        assert error < (0.03 if fmt == "m4a" else 1e-6)
        assert (window[:length] - shifted).norm() / expected.norm() > 0.1  # the check can tell
