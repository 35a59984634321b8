"""musicnn (Pons & Serra, 2019) in PyTorch: genretag's built-in, offline music tagger.

The weights are the MSD_musicnn and MTT_musicnn checkpoints of the ``musicnn`` 0.1.0 wheel (ISC,
Jordi Pons / MTG-UPF), converted once by ``training/convert_musicnn.py``; see
``tagger/builtin/PROVENANCE.md``. This module needs no TensorFlow and no librosa.

Preprocessing (what the wheel's ``extractor.batch_data`` does with librosa 0.11)
    16 kHz mono -> STFT (n_fft 512, hop 256, periodic Hann, ``center=True`` with *zero* padding)
    -> power -> 96 Slaney-scale mel bands with Slaney area normalisation, 0-8000 Hz ->
    ``x = mel.astype(float16); log10(10000 * x + 1)`` with every step rounded to float16 ->
    patches of 187 frames (3 s), hop 187, incomplete tail dropped. Each patch is tagged on its own;
    the clip's score is the mean of the per-patch sigmoid outputs.

Parity with the TensorFlow original (tests/test_musicnn.py, reference data from TF 2.21 running the
wheel's own code) is within 1e-4 on per-patch probabilities. It depends on details that are easy to
get wrong: zero (not reflect) STFT padding; the float16 rounding of the mel *and* of each step of the
log; the filterbank computed in float64 and rounded to float32 as librosa does; TF 'same' padding of
the even temporal kernels split 63/64 (and 31/32, 15/16), i.e. the extra zero at the end; batch norm
with epsilon 1e-3 applied *after* the ReLU; and the back-end's max and mean pools interleaved
(``[max_0, mean_0, max_1, mean_1, ...]``) before the dense layer, as ``tf.concat(axis=2)`` +
``flatten`` lays them out.

Float16 overflow: deliberately *not* reproduced
    ``10000 * x`` exceeds the float16 range once a mel power passes 6.55, which a 0.3-amplitude sine
    already does and almost every mastered commercial track does in many frames. The original then
    feeds ``inf`` into the network, TF turns it into NaN and its ReLU into 0, and the tagger returns
    nearly the same answer for any loud track. Here the float16 steps are emulated only where every
    intermediate value fits in float16, which is exactly where the original was well-defined, so parity
    holds; elsewhere the same formula is computed in float32. The log-mel is therefore continuous
    across the float16 limit (log10(65504) ~ 4.816) and keeps growing with loudness, and loud input
    gives finite outputs that depend on the input.

Precision: "fp32" is IEEE float32 also on CUDA (TF32 is switched off around the call, see
:func:`ieee_float32`); "bf16" (and "fp16" on CUDA) autocast only the network, never the preprocessing.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from torch import nn

from ..errors import ModelError
from .identity import BUILTIN_EMBEDDING_LAYER, builtin_fingerprint, embedding_space, read_builtin
from ..labels import LabelMap, builtin_label_map
from .native import banded_max, banded_max_kernel, position_minor, to_vnni

SAMPLE_RATE = 16000
N_FFT = 512
HOP_LENGTH = 256          # 16 ms frames
N_MELS = 96
F_MAX = 8000.0            # Nyquist at 16 kHz
PATCH_FRAMES = 187        # 3 s: librosa.time_to_frames(3, sr=16000, hop_length=256) + 1
MIN_SAMPLES = (PATCH_FRAMES - 1) * HOP_LENGTH  # shortest audio that yields one full patch (2.98 s)
BN_EPS = 1e-3             # tf.compat.v1.layers.batch_normalization's default, not torch's 1e-5
CONV_CHANNEL_ALIGN = 16   # front-end filters are padded to a multiple of this (51 -> 64, 204 -> 208)

BUILTIN_MODELS = ("musicnn-msd", "musicnn-mtt")
EMBEDDING_LAYERS = ("penultimate", "pooled", "pooled+penultimate", "tags")
"""What :meth:`MusicnnClassifier.predict_with_embeddings` can return per patch: the 200-d penultimate
layer, the 1506-d pooled features the back end starts from (max and mean over time of every front-
and mid-end channel), both, or the tag probabilities themselves."""
DEFAULT_EMBEDDING_LAYER = BUILTIN_EMBEDDING_LAYER
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PATCHES_PER_FORWARD = {("cpu", "bf16"): 10, ("cpu", "fp32"): 3, "cuda": 128}
"""Patches per network call. On CPU the largest activation (the first timbral conv's output, 4.6 MB per
patch in bf16, 9.2 MB in fp32) decides: in bf16 one 30 s window's worth (10) ran 1.5-2x faster per patch
than 32 or 40 on a 2-core Xeon; in fp32, 3 keep it under glibc's 32 MB mmap threshold, so its buffer is
reused rather than mapped and page-faulted afresh by every call (20 % faster per window than 10)."""


# ---------------------------------------------------------------------------------------------------
# Preprocessing


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    linear = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    linear = mel * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


def slaney_mel_filterbank() -> np.ndarray:
    """[96, 257] triangular filters with Slaney area norm, like ``librosa.filters.mel``.

    Computed in float64 and rounded once to float32 as librosa does: torchaudio's float32 filterbank
    differs by ~1e-7, which flips several times more float16 log-mel values.
    """
    fft_hz = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.float64(0.0)), _hz_to_mel(np.float64(F_MAX)), N_MELS + 2))
    ramps = edges[:, None] - fft_hz[None, :]
    widths = np.diff(edges)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


@lru_cache(maxsize=8)
def _stft_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(window, filterbank) on ``device``, built once per device."""
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float32, device=device)
    return window, torch.from_numpy(slaney_mel_filterbank()).to(device)


def mel_power(audio: torch.Tensor) -> torch.Tensor:
    """[B, N] float32 audio -> [B, 1 + N // 256, 96] float32 mel power, on the audio's device."""
    window, filterbank = _stft_constants(audio.device)
    spec = torch.view_as_real(torch.stft(audio.float(), N_FFT, HOP_LENGTH, window=window, center=True,
                                         pad_mode="constant", return_complex=True))
    # |X|^2 as re^2 + im^2. librosa squares abs(X), which differs in the last bit; on the reference
    # signals this puts fewer log-mel bins across a float16 rounding boundary from librosa's (28
    # against 32 of 360,288) in 60 % of the time (torch's complex abs is not vectorised).
    real, imag = spec[..., 0], spec[..., 1]
    power = torch.addcmul(real * real, imag, imag)
    return torch.matmul(filterbank, power).transpose(1, 2)


def log_compress(mel: torch.Tensor) -> torch.Tensor:
    """``log10(10000 * x + 1)`` rounded to float16 at each step where that fits, float32 elsewhere.

    The float16 path reproduces the original bit for bit; where it overflows (mel power > ~6.55) the
    float32 value takes over instead of the original's inf (see the module docstring).
    """
    rounded = torch.log10(mel.to(torch.float16) * 10000 + 1).float()
    exact = torch.log10(mel.float() * 10000 + 1)
    return torch.where(torch.isfinite(rounded), rounded, exact)


def log_mel(audio: torch.Tensor) -> torch.Tensor:
    """[B, N] audio at 16 kHz -> [B, frames, 96] float32 network input (float16-valued where in range)."""
    return log_compress(mel_power(audio))


def patch_counts(lengths: torch.Tensor, total_frames: int) -> torch.Tensor:
    """Full 3 s patches in each window's valid part: at least 1, at most what the window holds."""
    valid_frames = 1 + torch.div(lengths, HOP_LENGTH, rounding_mode="floor")
    counts = torch.div(valid_frames, PATCH_FRAMES, rounding_mode="floor")
    return counts.clamp(min=1, max=max(1, total_frames // PATCH_FRAMES))


def valid_patches(logmel: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[B, frames, 96] + per-window counts -> [sum(counts), 187, 96], window-major."""
    n = logmel.shape[1] // PATCH_FRAMES
    patches = logmel[:, : n * PATCH_FRAMES].reshape(logmel.shape[0], n, PATCH_FRAMES, logmel.shape[2])
    keep = torch.arange(n, device=logmel.device)[None, :] < counts.to(logmel.device)[:, None]
    return patches[keep]


# ---------------------------------------------------------------------------------------------------
# Network


class FrozenBatchNorm(nn.Module):
    """Inference-only batch norm over dim 1 with TF's epsilon, and no ``num_batches_tracked``."""

    def __init__(self, channels: int, eps: float = BN_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) with ``forward(x) == x * scale + shift`` per channel, up to float rounding."""
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale


class ConvBlock(nn.Module):
    """Zero pad -> conv -> ReLU -> batch norm. musicnn normalises *after* the activation.

    ``band``: in bf16 on CPU, :meth:`max_over_frequency` computes a one-channel front-end conv as
    matrix products over that many output positions at a time — frequency positions for a kernel
    wider than one band, frames for a 1-band (temporal) kernel — instead of one oneDNN convolution
    (see :meth:`_banded_max_over_frequency`). None keeps the convolution.

    ``native_band``: the same for the native kernel (AMX or AVX512-BF16) of :mod:`tagger.models.native`, which
    is used instead in calls with one torch thread where the kernel can run
    (:meth:`_native_max_over_frequency`).
    """

    def __init__(self, conv: nn.Module, pad: tuple[int, ...], band: int | None = None,
                 native_band: int | None = None):
        super().__init__()
        self.pad = pad
        self.conv = conv
        self.bn = FrozenBatchNorm(conv.out_channels)
        self.band = band
        self.native_band = native_band
        self._banded_weight: tuple | None = None  # (what it was built from, weight), see _banded_operands
        self._native_weight: tuple | None = None  # the same for _native_operand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(F.pad(x, self.pad) if self.pad else x)))

    def max_over_frequency(self, x: torch.Tensor) -> torch.Tensor:
        """``self(x).amax(dim=3)`` for a one-channel input ``x`` [B, 1, T, F], computed the fast way.

        ReLU and batch norm are monotone per channel, so the max over frequency commutes with them: it
        is taken on the conv's output, before them — the max where the batch-norm scale is positive,
        the min where it is negative, which is the max of the conv with that channel's weights negated
        (exact: negation commutes with rounding). That skips two elementwise passes over the largest
        activations, and a second reduction.

        The conv runs channels-last, so its output is [B, T, F, C] in memory and the max over F is a
        contiguous, vectorised reduction (on a [B, C, T, F] layout it was a third of the CPU time, plus
        a layout reorder inside oneDNN). Output channels are padded to a multiple of
        ``CONV_CHANNEL_ALIGN``, which keeps that reduction vectorised for the 51-filter temporal convs.
        Conv inputs and weights are cast to the autocast dtype here, before they are given their
        channels-last strides, because autocast's own cast would lose them.
        """
        dtype = _compute_dtype(x)
        if self.band and x.device.type == "cpu" and dtype == torch.bfloat16:
            if self.native_band and torch.get_num_threads() == 1 and banded_max_kernel() is not None:
                return self._native_max_over_frequency(x)
            return self._banded_max_over_frequency(x)
        sign = self._max_sign(x.device)
        channels = sign.numel()
        extra = -channels % CONV_CHANNEL_ALIGN
        weight = F.pad(self.conv.weight * sign[:, None, None, None], (0, 0, 0, 0, 0, 0, 0, extra))
        bias = F.pad(self.conv.bias * sign, (0, extra))
        out = F.conv2d(_channels_last(F.pad(x, self.pad).to(dtype)), _channels_last(weight.to(dtype)),
                       bias.to(dtype))
        high = out.permute(0, 2, 3, 1).amax(dim=2)[..., :channels].float()  # [B, T, C]
        return self.bn(F.relu(high * sign).transpose(1, 2))

    def _banded_max_over_frequency(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`max_over_frequency` in bf16 as one matrix product per ``band`` output positions.

        Why: a front-end conv has one input channel, so oneDNN runs it far below the matmul peak and
        writes its whole output (23–46 MB per 10 patches) before the max reads it back; and torch
        reduces bf16 at a fraction of the speed it reduces 16-bit integers. Here:

        - Each row of a product is one output's input patch (frames x bands, copied out of the padded
          log-mel into a buffer whose last column is 1), and the weight is the banded matrix that maps
          it to the conv's output at ``band`` adjacent positions, plus the bias in its last row. The
          product (1–4 MB) is reduced while it is still in cache; the full output is never written.
        - For a kernel wider than one band, a row is a frame and the ``band`` positions are frequency
          positions: they are folded into a running min/max, block after block. For a 1-band temporal
          kernel, a row is a (patch, band) pair and the positions are frames, so the reduction over
          frequency runs down the rows of each product.
        - The reductions run on the bf16 bits read as int16. That order is the float order for values
          >= 0, and puts every negative value below every non-negative one. So for a channel whose
          batch-norm scale is >= 0, ``relu(int16 max)`` is exactly ``relu(max)``; for a negative scale,
          ``relu(int16 min)`` is exactly ``relu(min)`` (a negative min gives 0 either way). The two
          kinds of channel get separate column ranges of the product, so each range has one reduction.
        - The last block is moved back to end at the last position; positions it shares with the one
          before are reduced twice (frequency) or written twice with the same values (time).

        On a 2-core Xeon (AVX512-BF16, AMX), the three temporal blocks took 8–11 ms instead of 15–18 ms
        per 10 patches on one thread, and a whole window ran 1.16–1.32x faster (medians of 20 interleaved
        pairs against the channels-last convolutions, and the 7 x 38 block alone banded, with bf16
        reductions). In float32 the products run at a quarter of the rate, and the convolution is kept.
        """
        kt, kf = self.conv.kernel_size
        padded = F.pad(x, self.pad)[:, 0].to(torch.bfloat16)  # [B, T + kt - 1, F]
        batch, frames = padded.shape[0], padded.shape[1] - kt + 1
        n_min, order = self._channel_groups()
        if kf == 1:
            low, high = self._time_banded_extremes(padded.transpose(1, 2).contiguous(), n_min)
        else:
            low, high = self._frequency_banded_extremes(padded.contiguous(), n_min)
        # [B * T, C] in group order -> [C, B * T] in the model's order, which the caller's concatenation
        # along channels copies in runs of T (from a [B, T, C] view it was 4x slower).
        extremes = torch.cat([low, high], dim=1).t().index_select(0, torch.argsort(order).to(low.device))
        scale, shift = self.bn.affine()
        out = torch.addcmul(shift[:, None], F.relu(extremes.view(torch.bfloat16).float()), scale[:, None])
        return out.view(-1, batch, frames).transpose(0, 1)

    def _native_max_over_frequency(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`max_over_frequency` in bf16 with the native kernel of :mod:`tagger.models.native`, which folds
        each product into the maxima while it is computed, so no product is ever written.

        The products are those of :meth:`_banded_max_over_frequency` (``native_band`` positions each),
        accumulated in float32 and reduced in float32, without its int16 trick: the weights of a channel
        whose batch-norm scale is negative are negated, so its min is minus the max the kernel takes,
        and the bias is added after the reduction (``max(y) + b == max(y + b)``, also once rounded).
        The kernel reads the temporal products' rows straight from the bands-first input; a timbral
        row, one frame's 7-frame patch, is still copied into a row buffer per block of positions.
        """
        kt, kf = self.conv.kernel_size
        padded = F.pad(x, self.pad)[:, 0].to(torch.bfloat16)  # [B, T + kt - 1, F]
        batch, frames = padded.shape[0], padded.shape[1] - kt + 1
        if kf == 1:
            signed_max = self._native_time_banded(padded, frames)
        else:
            signed_max = self._native_frequency_banded(padded, frames)
        sign = self._max_sign(x.device)
        extremes = torch.addcmul(self.conv.bias.detach(), signed_max, sign)  # [B * T, C]
        scale, shift = self.bn.affine()
        out = torch.addcmul(shift[:, None], F.relu(extremes).t(), scale[:, None])
        return out.view(-1, batch, frames).transpose(0, 1)

    def _native_frequency_banded(self, padded: torch.Tensor, frames: int) -> torch.Tensor:
        """[B, T + kt - 1, F] bf16 -> [B * T, C] float32 max over frequency of the sign-flipped conv."""
        kt, kf = self.conv.kernel_size
        batch, _, bands = padded.shape
        positions = bands - kf + 1
        block = min(self.native_band, positions)
        weight = self._native_operand(block)
        reach, n_rows = block + kf - 1, batch * frames
        rows = padded.new_zeros(-(-n_rows // 32) * 32, weight.shape[0] * 2)
        signed_max = rows.new_full((rows.shape[0], weight.shape[1] // block), float("-inf"),
                                   dtype=torch.float32)
        for start in block_starts(positions, block):
            _copy_patches(rows[:n_rows, :kt * reach], padded, kt, reach, start)
            banded_max(rows, weight, block, 1, signed_max)
        return signed_max[:n_rows, :self.conv.out_channels]

    def _native_time_banded(self, padded: torch.Tensor, frames: int) -> torch.Tensor:
        """[B, T + k - 1, F] bf16 -> [B * T, C] float32 max over frequency of the sign-flipped conv."""
        batch, padded_frames, bands = padded.shape
        channels = self.conv.out_channels
        block = min(self.native_band, frames)
        weight = self._native_operand(block)
        depth, starts = weight.shape[0] * 2, block_starts(frames, block)
        # Rows are (patch, band) time series, read in place by the kernel; zeros past the end cover
        # the last block's read of `depth` samples, whose weights there are 0. The kernel reduces
        # groups of 32 rows: the last band is repeated up to a multiple of 32, which leaves each max as
        # it is (musicnn's 96 bands need none).
        group = -(-bands // 32) * 32
        bands_first = padded.new_zeros(batch, group, max(padded_frames, starts[-1] + depth))
        bands_first[:, :bands, :padded_frames] = padded.transpose(1, 2)
        bands_first[:, bands:, :padded_frames] = padded[:, :, -1:].transpose(1, 2)
        series = bands_first.view(batch * group, -1)
        signed_max = padded.new_empty(batch, frames, channels, dtype=torch.float32)
        block_max = padded.new_empty(batch, weight.shape[1], dtype=torch.float32)
        for start in starts:
            block_max.fill_(float("-inf"))
            banded_max(series[:, start:start + depth], weight, 1, group, block_max)
            signed_max[:, start:start + block] = block_max[:, :block * channels].view(batch, block, channels)
        return signed_max.view(batch * frames, channels)

    def _native_operand(self, block: int) -> torch.Tensor:
        """The banded weight for ``block`` positions in the kernel's layout, built once for these weights:
        rows (r, j) for r < span and j < block + width - 1, zero-padded to a multiple of 32; columns,
        for a timbral kernel, each position's channels zero-padded to a multiple of 16 in the kernel's
        order (:func:`tagger.models.native.position_minor`), for a temporal one (frame, channel), in all a
        multiple of 32; each channel's weights multiplied by its :meth:`_max_sign`."""
        key = (block, *((t.data_ptr(), t._version) for t in (self.conv.weight, self.bn.weight)))
        if self._native_weight is not None and self._native_weight[0] == key:
            return self._native_weight[1]
        kernel = (self.conv.weight.detach() * self._max_sign(self.conv.weight.device)[:, None, None, None])[:, 0]
        temporal = self.conv.kernel_size[1] == 1
        if temporal:
            kernel = kernel.permute(0, 2, 1)  # [C, k, 1] -> [C, 1, k]
        channels, span, width = kernel.shape
        reach = block + width - 1
        align = 16 if block % 2 == 0 else 32  # block * per_position must be a multiple of 32
        per_position = channels if temporal else -(-channels // align) * align
        banded = kernel.new_zeros(span, reach, block, per_position)
        for position in range(block):
            banded[:, position:position + width, position, :channels] = kernel.permute(1, 2, 0)
        banded = banded.reshape(span * reach, block * per_position)
        if not temporal:
            banded = position_minor(banded, block)
        banded = F.pad(banded, (0, -banded.shape[1] % 32, 0, -banded.shape[0] % 32))
        self._native_weight = key, to_vnni(banded)
        return self._native_weight[1]

    def _frequency_banded_extremes(self, padded: torch.Tensor, n_min: int):
        """[B, T + kt - 1, F] bf16 -> (min-channel, max-channel) int16 extremes over frequency,
        [B * T, n_min] and [B * T, C - n_min]."""
        kt, kf = self.conv.kernel_size
        batch, frames, bands = padded.shape
        block = min(self.band, bands - kf + 1)
        weight, rows = self._banded_operands(block, batch * (frames - kt + 1))
        low = high = None
        for start in block_starts(bands - kf + 1, block):
            _copy_patches(rows[:, :-1], padded, kt, block + kf - 1, start)
            out = (rows @ weight).view(torch.int16)
            low = _fold_positions(out[:, :block * n_min], block, torch.minimum, low)
            high = _fold_positions(out[:, block * n_min:], block, torch.maximum, high)
        return low, high

    def _time_banded_extremes(self, bands_first: torch.Tensor, n_min: int):
        """[B, F, T + k - 1] bf16 -> (min-channel, max-channel) int16 extremes over frequency,
        [B * T, n_min] and [B * T, C - n_min]."""
        kt = self.conv.kernel_size[0]
        batch, bands, padded_frames = bands_first.shape
        frames = padded_frames - kt + 1
        block = min(self.band, frames)
        weight, rows = self._banded_operands(block, batch * bands)
        n_max = self.conv.out_channels - n_min
        low = rows.new_empty(batch, frames, n_min, dtype=torch.int16)
        high = rows.new_empty(batch, frames, n_max, dtype=torch.int16)
        for start in block_starts(frames, block):
            _copy_patches(rows[:, :-1], bands_first, 1, block + kt - 1, start)
            out = (rows @ weight).view(torch.int16).view(batch, bands, -1)
            low[:, start:start + block] = out[:, :, :block * n_min].amin(dim=1).view(batch, block, n_min)
            high[:, start:start + block] = out[:, :, block * n_min:].amax(dim=1).view(batch, block, n_max)
        return low.view(batch * frames, n_min), high.view(batch * frames, n_max)

    def _banded_operands(self, block: int, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The banded bf16 weight for ``block`` positions, built once for these weights, and a row
        buffer for its products: [n_rows, weight rows], whose last column (1) multiplies the bias."""
        key = (block, *((t.data_ptr(), t._version) for t in (self.conv.weight, self.conv.bias, self.bn.weight)))
        if self._banded_weight is None or self._banded_weight[0] != key:
            self._banded_weight = key, self._build_banded_weight(block)
        weight = self._banded_weight[1]
        rows = weight.new_empty(n_rows, weight.shape[0])
        rows[:, -1] = 1
        return weight, rows

    def _build_banded_weight(self, block: int) -> torch.Tensor:
        """The kernel seen as [C, span, width] ([C, kt, kf] for a timbral conv, [C, 1, k] for a temporal
        one, whose frames are the banded axis) -> weight rows (r, j) for r < span and j < block + width
        - 1, then the bias; columns: the min channels, position-major, then the max channels."""
        n_min, order = self._channel_groups()
        kernel = self.conv.weight.detach()[order, 0]
        if self.conv.kernel_size[1] == 1:
            kernel = kernel.permute(0, 2, 1)  # [C, k, 1] -> [C, 1, k]
        channels, span, width = kernel.shape
        reach = block + width - 1
        banded = kernel.new_zeros(span, reach, block, channels)
        for position in range(block):
            banded[:, position:position + width, position] = kernel.permute(1, 2, 0)
        banded = torch.cat([banded.reshape(span * reach, block, channels),
                            self.conv.bias.detach()[order].expand(1, block, channels)])
        weight = torch.cat([banded[..., :n_min].flatten(1), banded[..., n_min:].flatten(1)], dim=1)
        return weight.to(torch.bfloat16)

    def _channel_groups(self) -> tuple[int, torch.Tensor]:
        """How many channels have a negative batch-norm scale (their min is wanted), and the channel
        order that puts them first."""
        negative = self.bn.weight < 0
        order = torch.cat([torch.nonzero(negative).flatten(), torch.nonzero(~negative).flatten()])
        return int(negative.sum()), order

    def _max_sign(self, device: torch.device) -> torch.Tensor:
        """+1 where the batch-norm scale is non-negative (take the max), -1 where it is negative (min)."""
        return torch.where(self.bn.weight >= 0, 1.0, -1.0).to(device)


def _copy_patches(rows: torch.Tensor, source: torch.Tensor, span: int, reach: int, start: int) -> None:
    """Fill ``rows`` [B * (M - span + 1), span * reach] with each output's ``span`` x ``reach`` input patch
    of ``source`` [B, M, N], whose banded axis (N) starts at ``start``: row (b, m) holds
    ``source[b, m:m + span, start:start + reach]``."""
    batch, extent, width = source.shape
    patches = source.as_strided((batch, extent - span + 1, span, reach), (extent * width, width, width, 1),
                                source.storage_offset() + start)
    rows.view(patches.shape).copy_(patches)


def _fold_positions(out: torch.Tensor, positions: int, op, acc: torch.Tensor | None) -> torch.Tensor:
    """Fold the position-major column groups of ``out`` [R, positions * channels] into ``acc`` with the
    elementwise ``op`` (min or max), starting ``acc`` from the first group when it is None."""
    channels = out.shape[1] // positions
    for position in range(positions):
        part = out[:, position * channels:(position + 1) * channels]
        if acc is None:
            acc = part.clone()
        else:
            op(acc, part, out=acc)
    return acc


def block_starts(positions: int, block: int) -> list[int]:
    """Starts of ``block``-wide windows (``block`` <= ``positions``) covering ``range(positions)``; the
    last is moved back to end at ``positions`` (overlapping the one before) when ``block`` does not
    divide it."""
    starts = list(range(0, positions - block + 1, block))
    if starts[-1] + block < positions:
        starts.append(positions - block)
    return starts


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype convolutions of ``x`` run in: autocast's where it is on, else ``x``'s own."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` [N, C, H, W] in channels-last memory order, with strides that say so. For one channel the
    two orders are the same bytes, and ``contiguous(memory_format=...)`` keeps the NCHW strides, from
    which the convolution would choose an NCHW output."""
    t = t.contiguous(memory_format=torch.channels_last)
    if t.shape[1] == 1:
        _, _, h, w = t.shape
        t = t.as_strided(t.shape, (h * w, 1, w, 1))
    return t


def _same_time_pad(kernel: int) -> tuple[int, int, int, int]:
    """TF 'same' padding along time for stride 1: the odd extra zero goes at the end (63/64)."""
    return (0, 0, (kernel - 1) // 2, kernel // 2)


class Musicnn(nn.Module):
    """The musicnn tagger: log-mel patch [B, 187, 96] -> logits [B, n_labels].

    Front end: "timbral" convs spanning 7 frames x 40 % / 70 % of the mel axis and "temporal" convs
    spanning 128 / 64 / 32 frames x 1 band, each max-pooled over frequency. Mid end: three 7-frame
    1-D convs with residual connections, densely concatenated with the front end. Back end: max and
    mean over time, two dense layers.
    """

    TIMBRAL = (("timbral74", 0.4), ("timbral77", 0.7))
    TEMPORAL = (("temporal128", 128), ("temporal64", 64), ("temporal32", 32))
    BAND = {"timbral74": 4, "timbral77": 4, "temporal128": 16, "temporal64": 16, "temporal32": 16}
    """Output positions per matrix product of each front-end block in bf16 on CPU (see
    :meth:`ConvBlock._banded_max_over_frequency`): frequency positions for the timbral blocks, frames
    for the temporal ones."""
    NATIVE_BAND = {"timbral74": 4, "timbral77": 6, "temporal128": 32, "temporal64": 32, "temporal32": 32}
    """The same for the native kernel (:meth:`ConvBlock._native_max_over_frequency`). Its products are not
    written, so a temporal block can be wider: 32 frames make the rows 160, 96 and 64 samples deep,
    whole multiples of AMX's 32."""

    def __init__(self, n_labels: int, n_mels: int = N_MELS, midend_filters: int = 64,
                 backend_units: int = 200, timbral_filters: int = 204, temporal_filters: int = 51):
        super().__init__()
        self.input_bn = FrozenBatchNorm(1)
        for name, span in self.TIMBRAL:
            conv = nn.Conv2d(1, timbral_filters, (7, int(span * n_mels)))
            setattr(self, name, ConvBlock(conv, (0, 0, 3, 3), self.BAND[name], self.NATIVE_BAND[name]))
        for name, frames in self.TEMPORAL:
            conv = nn.Conv2d(1, temporal_filters, (frames, 1))
            setattr(self, name, ConvBlock(conv, _same_time_pad(frames), self.BAND[name], self.NATIVE_BAND[name]))
        front = len(self.TIMBRAL) * timbral_filters + len(self.TEMPORAL) * temporal_filters
        # 'same' padding by the conv itself: a separate zero pad copied the 561-channel input first.
        self.mid1 = ConvBlock(nn.Conv1d(front, midend_filters, 7, padding=3), ())
        self.mid2 = ConvBlock(nn.Conv1d(midend_filters, midend_filters, 7, padding=3), ())
        self.mid3 = ConvBlock(nn.Conv1d(midend_filters, midend_filters, 7, padding=3), ())
        pooled = 2 * (front + 3 * midend_filters)
        self.pool_bn = FrozenBatchNorm(pooled)
        self.dense = nn.Linear(pooled, backend_units)
        self.dense_bn = FrozenBatchNorm(backend_units)
        self.classifier = nn.Linear(backend_units, n_labels)

    def frontend(self, logmel: torch.Tensor) -> torch.Tensor:
        """[B, T, 96] -> [B, 561, T]: every branch max-pooled over the whole frequency axis."""
        x = self.input_bn(logmel.unsqueeze(1))
        names = [name for name, _ in self.TIMBRAL + self.TEMPORAL]
        return torch.cat([getattr(self, name).max_over_frequency(x) for name in names], dim=1)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(logmel)[1])

    def features(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, 96] -> (pooled [B, 1506] float32, hidden [B, 200]): the back end's input (max and
        mean over time of every front- and mid-end channel) and the penultimate layer, which the
        classifier maps to the tags. Trained heads (:mod:`tagger.models.head`) learn from these."""
        front = self.frontend(logmel)
        m1 = self.mid1(front)
        m2 = self.mid2(m1) + m1
        m3 = self.mid3(m2) + m2
        # The features are [front, m1, m2, m3] (753 channels). Each part is pooled where it is, rather
        # than after copying all four into one [B, 753, T] tensor.
        pooled = torch.cat([_max_and_mean_over_time(part) for part in (front, m1, m2, m3)], dim=1)
        hidden = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return pooled, hidden


def _max_and_mean_over_time(part: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> [B, 2C] float32, interleaved [max_0, mean_0, max_1, ...]: the order TF's
    concat(axis=2) + flatten produces. Float32 even under autocast, where the mid-end is bf16: the
    concatenation of the features that this replaces promoted them to float32."""
    part = part.float()
    return torch.stack([part.amax(dim=2), part.mean(dim=2)], dim=2).flatten(1)


# ---------------------------------------------------------------------------------------------------
# genretag's model interface


@contextmanager
def ieee_float32(device: torch.device):
    """Plain IEEE float32 for CUDA convolutions and matmuls inside the block, restored afterwards.

    cuDNN runs float32 convs in TF32 by default on Ampere and later, which moves musicnn's
    probabilities by up to 2e-2 (parity needs 1e-4): "fp32" must mean fp32. Speed comes from bf16.
    """
    if device.type != "cuda":
        yield
        return
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


class MusicnnClassifier:
    """A loaded musicnn model behind the interface genretag's pipeline calls.

    Besides the tags, it computes embeddings (:meth:`predict_with_embeddings`): per window, the mean
    over its 3 s patches of one of :data:`EMBEDDING_LAYERS`. ``embedding_space`` names the model, its
    weights and the layer, so embeddings (and heads trained on them) from different spaces never mix.
    """

    def __init__(self, name: str, model: Musicnn, config: dict, weights: bytes,
                 device: torch.device, precision: str, embedding_layer: str = DEFAULT_EMBEDDING_LAYER):
        self.model_id = f"builtin:{name}"
        self.fingerprint = builtin_fingerprint(weights)
        self.sampling_rate = int(config["sample_rate"])
        self.labels = list(config["labels"])
        self.multi_label = bool(config["multi_label"])
        self.default_min_confidence = float(config["default_min_confidence"])
        self.label_thresholds: dict[str, float] = {}  # one threshold for all tags
        self.label_map: LabelMap = builtin_label_map(name)
        self.device = device
        self.precision = precision
        self.model = model.to(device).eval()
        self.patches_per_forward = PATCHES_PER_FORWARD.get(
            (device.type, precision), PATCHES_PER_FORWARD.get(device.type, 32))
        self.embedding_layer = check_embedding_layer(embedding_layer)

    @property
    def embedding_space(self) -> str:
        """E.g. ``builtin:musicnn-msd@<fingerprint>/penultimate``."""
        return embedding_space(self.model_id, self.fingerprint, self.embedding_layer)

    @property
    def embedding_dim(self) -> int:
        sizes = {"pooled": self.model.dense.in_features, "penultimate": self.model.dense.out_features,
                 "tags": self.model.classifier.out_features}
        return sum(sizes[part] for part in self.embedding_layer.split("+"))

    def predict_patches(self, logmel_patches: torch.Tensor) -> torch.Tensor:
        """[K, 187, 96] log-mel patches -> [K, n_labels] float32 sigmoid probabilities, on device."""
        dtype = PRECISIONS[self.precision]
        with torch.inference_mode(), ieee_float32(self.device), \
                torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            chunks = logmel_patches.to(self.device, torch.float32).split(self.patches_per_forward)
            return torch.cat([torch.sigmoid(self.model(c).float()) for c in chunks])

    def predict_patches_with_embeddings(self, logmel_patches: torch.Tensor, layer: str | None = None
                                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict_patches` plus each patch's ``layer`` features (float32), from the same forward."""
        layer = check_embedding_layer(layer or self.embedding_layer)
        dtype = PRECISIONS[self.precision]
        probs, embeddings = [], []
        with torch.inference_mode(), ieee_float32(self.device), \
                torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            for chunk in logmel_patches.to(self.device, torch.float32).split(self.patches_per_forward):
                pooled, hidden = self.model.features(chunk)
                probs.append(torch.sigmoid(self.model.classifier(hidden).float()))
                parts = {"pooled": pooled, "penultimate": hidden, "tags": probs[-1]}
                embeddings.append(torch.cat([parts[p].float() for p in layer.split("+")], dim=1))
        return torch.cat(probs), torch.cat(embeddings)

    def predict(self, windows: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N] float32 mono at 16 kHz -> [B, n_labels] float32 probabilities on CPU.

        Each window's score is the mean over the full 3 s patches of its first ``lengths[i]`` samples
        (one zero-padded patch when that is shorter than 3 s). All patches of all windows go through
        the network together.
        """
        with torch.inference_mode(), ieee_float32(self.device):
            patches, counts = self._patches(windows, lengths)
            return _mean_per_window(self.predict_patches(patches), counts).cpu()

    def predict_with_embeddings(self, windows: torch.Tensor, lengths: torch.Tensor | None = None,
                                layer: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs [B, n_labels], embeddings [B, D])`` float32 on CPU from one forward pass: the
        probabilities of :meth:`predict` and, per window, the mean over its patches of the ``layer``
        (default ``embedding_layer``) features."""
        with torch.inference_mode(), ieee_float32(self.device):
            patches, counts = self._patches(windows, lengths)
            probs, embeddings = self.predict_patches_with_embeddings(patches, layer)
            return _mean_per_window(probs, counts).cpu(), _mean_per_window(embeddings, counts).cpu()

    def _patches(self, windows: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-mel patches of every window, window-major, and how many each window has."""
        audio = windows.to(self.device, torch.float32)
        if audio.ndim != 2:
            raise ValueError(f"windows must be [batch, samples], got shape {tuple(audio.shape)}")
        n = audio.shape[1]
        if lengths is None:
            lengths = torch.full((audio.shape[0],), n, device=self.device)
        lengths = lengths.to(self.device, torch.long).clamp(0, n)
        # Samples past a track's end must be zeros, as librosa would pad them.
        if bool((lengths < n).any()):
            audio = audio * (torch.arange(n, device=self.device)[None, :] < lengths[:, None])
        audio = F.pad(audio, (0, max(0, MIN_SAMPLES - n)))
        logmel = log_mel(audio)
        counts = patch_counts(lengths, logmel.shape[1])
        return valid_patches(logmel, counts), counts


def _mean_per_window(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[sum(counts), C] per-patch values, window-major -> [len(counts), C] means per window."""
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=values.device), counts)
    sums = torch.zeros(counts.shape[0], values.shape[1], device=values.device).index_add_(0, owner, values)
    return sums / counts[:, None]


def check_embedding_layer(layer: str) -> str:
    if layer not in EMBEDDING_LAYERS:
        raise ModelError(f"unknown musicnn embedding layer {layer!r}; choose one of {', '.join(EMBEDDING_LAYERS)}")
    return layer


def build_model(config: dict, weights: bytes) -> Musicnn:
    """A Musicnn with the architecture named in ``config`` and the given safetensors weights."""
    arch = config["architecture"]
    model = Musicnn(len(config["labels"]), midend_filters=arch["midend_filters"],
                    backend_units=arch["backend_units"])
    model.load_state_dict(load_safetensors(weights))  # strict: every tensor must match by name and shape
    return model


def load_builtin(name: str, device: str | torch.device = "cpu", precision: str = "fp32",
                 embedding_layer: str = DEFAULT_EMBEDDING_LAYER) -> MusicnnClassifier:
    """Load ``builtin:musicnn-msd`` or ``builtin:musicnn-mtt``.

    ``precision`` "bf16" (or "fp16", CUDA only) runs the network under ``torch.autocast``; the
    preprocessing stays float32/float16 as the original, since parity depends on it.
    """
    if name not in BUILTIN_MODELS:
        raise ModelError(f"unknown built-in model {name!r}; choose one of {', '.join(BUILTIN_MODELS)}")
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("CUDA was requested but is not available")
    if precision == "fp16" and device.type != "cuda":
        raise ModelError("fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    config, weights = read_builtin(name)
    try:
        model = build_model(config, weights)
    except (KeyError, RuntimeError, ValueError) as err:
        raise ModelError(f"builtin:{name}: weights do not fit the musicnn architecture ({err})") from None
    return MusicnnClassifier(name, model, config, weights, device, precision, embedding_layer)
