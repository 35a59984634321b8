"""AST's input features for a whole batch, computed in torch on the model's device.

transformers' ``ASTFeatureExtractor`` takes numpy arrays and calls torchaudio's Kaldi-compatible
``fbank`` once per segment on the CPU, then pads, normalises and hands back numpy. On a GPU scan that is
one host-side loop of small operations per 10.24 s segment, nine segments per track, in the process that
feeds the GPU. Here the same filterbank runs once for the batch where the windows already are: frames are
a strided view of the batch, each frame's steps (DC offset, pre-emphasis, Hann window, power spectrum,
Kaldi mel banks, log) are batched tensor operations, and the mel matrix is torchaudio's own
(``torchaudio.compliance.kaldi.get_mel_banks``). The result equals the extractor's to float32 rounding
(checked in the tests against the extractor itself).
"""
from __future__ import annotations

from functools import lru_cache

import torch

FRAME_MS, SHIFT_MS = 25.0, 10.0  # Kaldi's defaults, which the extractor keeps
PREEMPHASIS = 0.97
LOW_HZ = 20.0
EPSILON = torch.finfo(torch.float32).eps  # Kaldi's log floor


def supports(feature_extractor) -> bool:
    """Whether :func:`ast_features` reproduces this extractor: AST's, mono, with the settings it computes
    with (it passes only the sample rate and the number of mel bins on to ``fbank``)."""
    return (type(feature_extractor).__name__ == "ASTFeatureExtractor"
            and getattr(feature_extractor, "feature_size", 1) == 1)


def ast_features(batch: torch.Tensor, feature_extractor) -> torch.Tensor:
    """``[B, samples]`` float32 audio at the extractor's rate -> ``[B, max_length, num_mel_bins]``, as
    ``ASTFeatureExtractor`` gives them: log mel energies, zero-padded or cut to ``max_length`` frames,
    then normalised with its mean and std."""
    rate = int(feature_extractor.sampling_rate)
    window = int(rate * FRAME_MS / 1000)
    shift = int(rate * SHIFT_MS / 1000)
    padded = 1 << (window - 1).bit_length()
    frames = batch.float().unfold(1, window, shift)  # [B, F, window], snip_edges: whole frames only
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # Kaldi repeats the first sample
    frames = (frames - PREEMPHASIS * previous) * _hann(window, batch.device)
    power = torch.fft.rfft(frames, n=padded).abs().pow(2)  # [B, F, padded / 2 + 1]
    mel = torch.matmul(power, _mel_banks(feature_extractor.num_mel_bins, padded, rate, batch.device))
    logs = mel.clamp_min(EPSILON).log()
    out = logs.new_zeros(batch.shape[0], feature_extractor.max_length, logs.shape[-1])
    kept = min(logs.shape[1], feature_extractor.max_length)
    out[:, :kept] = logs[:, :kept]
    if feature_extractor.do_normalize:
        out = (out - feature_extractor.mean) / (feature_extractor.std * 2)
    return out


@lru_cache(maxsize=8)
def _hann(window: int, device: torch.device) -> torch.Tensor:
    return torch.hann_window(window, periodic=False, device=device)


@lru_cache(maxsize=8)
def _mel_banks(bins: int, padded: int, rate: int, device: torch.device) -> torch.Tensor:
    """``[padded / 2 + 1, bins]``: torchaudio's Kaldi mel banks, with the zero column for the Nyquist bin
    that ``fbank`` adds, transposed for the product."""
    from torchaudio.compliance.kaldi import get_mel_banks

    banks, _ = get_mel_banks(bins, padded, float(rate), LOW_HZ, 0.0, 100.0, -500.0, 1.0)
    return torch.nn.functional.pad(banks, (0, 1)).t().contiguous().to(device)
