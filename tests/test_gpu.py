"""The CUDA paths of the transformers classifiers and of a scan, against the CPU (run where a GPU is)."""
from __future__ import annotations

import pytest
import torch

from tagger import ScanSettings, tag_folder
from tagger.models.infer import load_classifier

pytestmark = pytest.mark.gpu


def windows_for(classifier, seconds=(30.0, 30.0, 12.5, 3.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Full and short windows, padded to one tensor as the scan's batches are."""
    rate = classifier.sampling_rate
    torch.manual_seed(0)
    batch = (torch.rand(len(seconds), int(max(seconds) * rate)) - 0.5) * 0.5
    lengths = torch.tensor([int(s * rate) for s in seconds])
    for row, valid in zip(batch, lengths):
        row[valid:] = 0
    return batch, lengths


@pytest.mark.parametrize("model", ["tiny_wav2vec2", "tiny_ast"])
def test_cuda_predictions_match_the_cpu(model, request):
    """fp32 on the GPU (AST's filterbank computed there too) gives the CPU's probabilities; bf16 autocast
    stays close. cuDNN may use TF32 in convolutions, hence the tolerance."""
    folder = str(request.getfixturevalue(model))
    cpu = load_classifier(folder, device="cpu", precision="fp32")
    batch, lengths = windows_for(cpu)
    expected = cpu.predict(batch, lengths)
    fp32 = load_classifier(folder, device="cuda", precision="fp32").predict(batch, lengths)
    bf16 = load_classifier(folder, device="cuda", precision="bf16").predict(batch, lengths)
    assert fp32.device.type == bf16.device.type == "cpu"
    torch.testing.assert_close(fp32, expected, rtol=0, atol=2e-3)
    torch.testing.assert_close(bf16, expected, rtol=0, atol=3e-2)


def test_the_time_major_encoder_on_cuda_predicts_what_the_cpu_predicts(tiny_wav2vec2, monkeypatch):
    """``GENRETAG_FEATURE_ENCODER=time-major``: installed on CUDA (its check against cuDNN passes) and
    run for the whole batch at once, in fp32 and under bf16 autocast."""
    from functools import partial

    cpu = load_classifier(str(tiny_wav2vec2), device="cpu", precision="fp32")
    batch, lengths = windows_for(cpu)
    expected = cpu.predict(batch, lengths)
    monkeypatch.setenv("GENRETAG_FEATURE_ENCODER", "time-major")
    for precision, tolerance in (("fp32", 2e-3), ("bf16", 3e-2)):
        cuda = load_classifier(str(tiny_wav2vec2), device="cuda", precision=precision)
        assert isinstance(vars(cuda.model.base_model.feature_extractor).get("forward"), partial)
        torch.testing.assert_close(cuda.predict(batch, lengths), expected, rtol=0, atol=tolerance)


def test_a_cuda_scan_records_what_a_cpu_scan_records(library, tmp_path, tiny_wav2vec2):
    """The whole scan on CUDA (decode workers, pinned batches): the same tracks, labels and scores."""
    results = {}
    for device in ("cpu", "cuda"):
        settings = ScanSettings(model=str(tiny_wav2vec2), db=str(tmp_path / f"{device}.db"), device=device,
                                precision="fp32", min_confidence=0.0, workers=2, dry_run=True)
        summary = tag_folder(library, settings, keep_results=True)
        assert summary.failed == 0
        results[device] = {r.path: (r.labels, r.scores) for r in summary.results}
    assert results["cuda"].keys() == results["cpu"].keys() and results["cpu"]
    for path, (labels, scores) in results["cpu"].items():
        assert results["cuda"][path][0] == labels
        assert results["cuda"][path][1] == pytest.approx(scores, abs=2e-3)
