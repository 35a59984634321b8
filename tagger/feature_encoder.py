"""wav2vec2-family feature encoders run time-major on CPU: the same function in a fraction of the time.

wav2vec2, HuBERT, WavLM, data2vec-audio and their kin open with a stack of strided 1-D convolutions over
the raw waveform (seven layers, 512 channels, 320x downsampling). transformers runs them channels-first
through ``nn.Conv1d``, and on CPU oneDNN handles the first layer (one input channel, 96,000 output frames
of 512 channels per 30 s window) at a few GFLOP/s and reorders that activation between its own blocked
layout and PyTorch's: on a 2-core Xeon this was 0.6 s of a 1.3 s bf16 window, for 1 GFLOP of work.

Here the same layers run time-major ([frames, channels]), as plain matrix products:

* a strided convolution is a sum of matmuls over overlapping strided *views* of its input (row ``t``
  of the view starting at frame ``t * stride``), so no im2col copy is made except for the tiny first
  layer;
* the first layer's per-channel GroupNorm (wav2vec2-base, HuBERT-base) needs each channel's mean and
  variance over time; they follow exactly from the first two moments of the layer's input frames
  (a 10 x 10 matrix, in float64), so the normalisation folds into the conv's weights and bias and costs
  no pass over the 49 M-value activation;
* LayerNorm over channels (``feat_extract_norm="layer"``) is a contiguous ``layer_norm``.

The encoder's output is the same tensor (float32: within ~1e-5 relative; under bf16 autocast the
usual bf16 rounding), and transformers' next step, which wants ``[batch, frames, channels]``, gets it
without a transpose copy. :func:`use_time_major_encoder` installs it only after checking, on a short
random input, that it reproduces the module's own forward; any layer it does not recognise leaves the
model untouched.
"""
from __future__ import annotations

import logging
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

SMALL_IM2COL = 256
"""Input frames with at most this many values (kernel x input channels) are copied into one im2col
matrix; wider ones are read through strided views, one matmul per ``stride`` frames of kernel."""

CHECK_SAMPLES = 16000
CHECK_TOLERANCE = 1e-4


def use_time_major_encoder(model: nn.Module) -> bool:
    """Run ``model``'s convolutional feature encoder time-major; True if it now does.

    The encoder keeps its parameters and state dict; only its ``forward`` is replaced, and only when
    every layer is a plain conv -> optional norm -> activation block and the new forward matches the
    old one on a random second of audio.
    """
    encoder = getattr(getattr(model, "base_model", model), "feature_extractor", None)
    if encoder is None or not _supported(encoder):
        return False
    fast = partial(time_major_forward, encoder)
    if not _agrees(encoder, fast):
        log.warning("time-major feature encoder disagrees with %s; keeping the original",
                    type(encoder).__name__)
        return False
    encoder.forward = fast
    return True


def time_major_forward(encoder: nn.Module, input_values: torch.Tensor) -> torch.Tensor:
    """``encoder(input_values)`` for ``[batch, samples]`` audio: ``[batch, channels, frames]``, returned
    as a transposed view of a time-major tensor."""
    out = [_encode_one(encoder.conv_layers, audio) for audio in input_values]
    return torch.stack(out).transpose(1, 2)


def _encode_one(layers: nn.ModuleList, audio: torch.Tensor) -> torch.Tensor:
    x = audio.reshape(-1, 1)
    for layer in layers:
        norm = getattr(layer, "layer_norm", None)
        if isinstance(norm, nn.GroupNorm):
            x = _conv_group_norm(x, layer.conv, norm)
        else:
            x = _conv(x, layer.conv)
            if isinstance(norm, nn.LayerNorm):
                x = norm(x)
        x = layer.activation(x)
    return x


def _conv(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv`` on time-major ``x`` [frames, in] -> [frames', out], in the autocast dtype if one is on."""
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    dtype = _compute_dtype(x)
    x = x.to(dtype).contiguous()
    weight = _matmul_weight(conv).to(dtype)
    bias = None if conv.bias is None else conv.bias.to(dtype)
    frames, channels = x.shape
    n_out = _output_frames(frames, kernel, stride)
    if kernel * channels <= SMALL_IM2COL:
        cols = _strided_frames(x, n_out, stride, 0, kernel).contiguous()
        return cols @ weight if bias is None else torch.addmm(bias, cols, weight)
    y = None
    for first in range(0, kernel, stride):  # taps [first, first + stride) of every kernel position
        width = min(stride, kernel - first)
        part = _strided_frames(x, n_out, stride, first, width)
        rows = weight[first * channels:(first + width) * channels]
        if y is None:
            y = part @ rows if bias is None else torch.addmm(bias, part, rows)
        else:
            y.addmm_(part, rows)  # in place: no copy of the partial sum
    return y


def _output_frames(frames: int, kernel: int, stride: int) -> int:
    if frames < kernel:  # what nn.Conv1d refuses too
        raise RuntimeError(f"input of {frames} frames is shorter than the kernel ({kernel})")
    return (frames - kernel) // stride + 1


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on ``x`` run in: autocast's where it is on, else ``x``'s own."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _strided_frames(x: torch.Tensor, n_out: int, stride: int, first: int, width: int) -> torch.Tensor:
    """View [n_out, width * channels] of time-major ``x`` whose row ``t`` is frames
    ``t * stride + first`` .. ``+ width - 1``, laid end to end (they are adjacent in memory)."""
    channels = x.shape[1]
    return x.as_strided((n_out, width * channels), (stride * channels, 1),
                        x.storage_offset() + first * channels)


def _matmul_weight(conv: nn.Conv1d) -> torch.Tensor:
    """Conv1d weight [out, in, k] as [k * in, out], rows ordered (kernel tap, input channel) like the
    time-major frames they multiply."""
    out_channels, in_channels, kernel = conv.weight.shape
    return conv.weight.permute(2, 1, 0).reshape(kernel * in_channels, out_channels)


def _conv_group_norm(x: torch.Tensor, conv: nn.Conv1d, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm(conv(x))`` for a per-channel GroupNorm, folded into the conv.

    For y = X W + b (X: the input frames, one row per output frame), channel c's mean over time is
    mean(X) w_c + b_c and its variance w_c' Cov(X) w_c; both come from X's mean and second-moment
    matrix, computed in float64. Normalising is then an affine map per channel, which folds into W
    and b. Only worth it (and only used) when X is narrow, as in the first layer.
    """
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    x = x.contiguous()
    n_out = _output_frames(x.shape[0], kernel, stride)
    cols = _strided_frames(x, n_out, stride, 0, kernel).contiguous()
    weight = _matmul_weight(conv)
    with torch.autocast(x.device.type, enabled=False):
        wide = cols.double()
        mean_cols = wide.mean(dim=0)
        centred = wide - mean_cols
        cov = centred.T @ centred / n_out
        w = weight.double()
        variance = ((cov @ w) * w).sum(dim=0).clamp_min(0)
        scale = norm.weight.double() * torch.rsqrt(variance + norm.eps)
        shift = norm.bias.double() - (mean_cols @ w) * scale  # the conv's own bias cancels out
    return torch.addmm(shift.float(), cols, (weight.double() * scale).float())


def _supported(encoder: nn.Module) -> bool:
    """Every layer is conv -> [GroupNorm | LayerNorm | nothing] -> activation, with a plain conv."""
    layers = getattr(encoder, "conv_layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    for layer in layers:
        conv, norm = getattr(layer, "conv", None), getattr(layer, "layer_norm", None)
        if not isinstance(conv, nn.Conv1d) or not callable(getattr(layer, "activation", None)):
            return False
        plain = (conv.groups == 1 and conv.dilation == (1,) and conv.padding == (0,)
                 and conv.padding_mode == "zeros")
        if not plain:
            return False
        if isinstance(norm, nn.GroupNorm):
            narrow = conv.in_channels * conv.kernel_size[0] <= SMALL_IM2COL
            if norm.num_groups != norm.num_channels or not norm.affine or not narrow:
                return False
        elif isinstance(norm, nn.LayerNorm):
            if tuple(norm.normalized_shape) != (conv.out_channels,):
                return False
        elif norm is not None:
            return False
    return True


def _agrees(encoder: nn.Module, fast) -> bool:
    """Both forwards on one random second of audio, in float32, agree within ``CHECK_TOLERANCE``
    relative to the output's scale."""
    param = next(encoder.parameters())
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(1, CHECK_SAMPLES, generator=generator).to(param.device, param.dtype)
    with torch.inference_mode(), torch.autocast(param.device.type, enabled=False):
        expected, got = encoder(audio), fast(audio)
    if expected.shape != got.shape:
        return False
    scale = expected.abs().max().clamp_min(1e-6)
    return bool(((expected - got).abs().max() / scale) <= CHECK_TOLERANCE)
