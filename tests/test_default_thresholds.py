"""The built-in models' default thresholds on real music: a default scan of the 50 GTZAN clips in
../shared/gtzan-dev gives the coverage and precision that bench/thresholds.py measured and config.json
reports, and silence and noise abstain. Skipped without the clips."""
from __future__ import annotations

import pytest

from bench.thresholds import GTZAN_DEV, accepted, noise_clips
from tagger import ScanSettings, tag_folder

pytestmark = pytest.mark.skipif(not GTZAN_DEV.is_dir(), reason=f"no GTZAN clips at {GTZAN_DEV}")

# Measured at the default level (top) and --top-k 1; the tolerance allows two clips either way (scores
# differ by up to 0.015 between fp32, used here on every CPU, and the bf16 a scan may pick).
REPORTED = {"musicnn-msd": {"coverage": 0.24, "precision": 0.83}, "musicnn-mtt": {"coverage": 0.02, "precision": 1.0}}
CLIPS = 50
TOLERANCE = 2 / CLIPS


def default_scan(folder, model: str, tmp_path):
    settings = ScanSettings(model=f"builtin:{model}", device="cpu", precision="fp32", db=str(tmp_path / "i.db"))
    return tag_folder(folder, settings, keep_results=True)


@pytest.mark.parametrize("model", sorted(REPORTED))
def test_default_threshold_on_real_music_and_on_noise(model, tmp_path):
    from tagger.demo import write_wav
    from tagger.models.infer import load_classifier

    label_map = load_classifier(f"builtin:{model}", deferred=True).label_map
    summary = default_scan(GTZAN_DEV, model, tmp_path)
    assert summary.scanned == CLIPS and summary.failed == 0
    given = [(r.path, label) for r in summary.results for label in r.labels]
    right = sum(label in accepted(path.split("/")[-2], label_map) for path, label in given)
    coverage = summary.tagged / CLIPS
    assert coverage == pytest.approx(REPORTED[model]["coverage"], abs=TOLERANCE)
    assert right >= len(given) * REPORTED[model]["precision"] - 1  # at most one more wrong genre

    noise = tmp_path / "noise"
    noise.mkdir()
    for name, samples in noise_clips(16000).items():
        if name == "silence" or "σ0.1 #0" in name or "brown noise σ0.1" in name:  # the highest scoring
            write_wav(noise / f"{len(list(noise.iterdir()))}.wav", samples, 16000)
    heard = default_scan(noise, model, tmp_path)
    assert heard.scanned == heard.abstained > 0, [(r.path, r.ranking[:1]) for r in heard.results]
