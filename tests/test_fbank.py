"""AST's filterbank computed in torch for a whole batch (tagger.models.fbank), against transformers' extractor."""
from __future__ import annotations

import pytest
import torch
from transformers import ASTFeatureExtractor, Wav2Vec2FeatureExtractor

from tagger.models.fbank import ast_features, supports

RATE = 16000


def extractor_features(feature_extractor, batch: torch.Tensor) -> torch.Tensor:
    return feature_extractor([row.numpy() for row in batch], sampling_rate=RATE,
                             return_tensors="pt")["input_values"]


@pytest.mark.parametrize("samples", [163840, 48000, 400, 200000])  # AST's 10.24 s; shorter; one frame; cut
@pytest.mark.parametrize("settings", [{}, {"num_mel_bins": 64, "max_length": 512}, {"do_normalize": False}])
def test_features_equal_the_extractors(samples, settings):
    """Padded (short input), cut (long input), other mel and frame counts, and unnormalised."""
    feature_extractor = ASTFeatureExtractor(**settings)
    torch.manual_seed(samples)
    batch = (torch.rand(3, samples) - 0.5) * torch.tensor([[0.5], [0.01], [1.0]])
    expected = extractor_features(feature_extractor, batch)
    got = ast_features(batch, feature_extractor)
    assert got.shape == expected.shape == (3, feature_extractor.max_length, feature_extractor.num_mel_bins)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_silence_hits_the_log_floor_as_in_the_extractor():
    feature_extractor = ASTFeatureExtractor()
    batch = torch.zeros(2, 16000)
    expected = extractor_features(feature_extractor, batch)
    torch.testing.assert_close(ast_features(batch, feature_extractor), expected)


def test_only_ast_extractors_are_taken():
    assert supports(ASTFeatureExtractor())
    assert not supports(Wav2Vec2FeatureExtractor())
