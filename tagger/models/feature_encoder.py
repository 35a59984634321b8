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
* LayerNorm over channels (``feat_extract_norm="layer"``) is a contiguous ``layer_norm``;
* with that one global step folded away, the convolutions are local, so the stack runs a few hundred
  output frames at a time over just the audio they see, and no intermediate tensor outgrows the caches.

The encoder's output is the same tensor (float32: within ~1e-5 relative; under bf16 autocast the
usual bf16 rounding), and transformers' next step, which wants ``[batch, frames, channels]``, gets it
without a transpose copy. :func:`use_time_major_encoder` installs it only after checking, on a short
random input, that it reproduces the module's own forward; any layer it does not recognise leaves the
model untouched.

On a GPU the same products run for the whole batch at once (:func:`_encode_batch`: one batched matmul
per layer and tap group over strided views, no chunks, since caches are not what bounds a GPU), but
only when ``GENRETAG_FEATURE_ENCODER=time-major`` asks for it: cuDNN's convolutions were 57 % of
wav2vec2-base's time on an H100, yet the time-major form has not been measured on one, so a scan keeps
transformers' encoder there (``bench/infer_throughput.py --feature-encoders auto time-major`` compares
the two). ``transformers`` keeps transformers' encoder on the CPU too.
"""
from __future__ import annotations

import logging
import os
from functools import partial

import torch
from torch import nn

log = logging.getLogger(__name__)

SMALL_IM2COL = 256
"""Input frames with at most this many values (kernel x input channels) are copied into one im2col
matrix; wider ones are read through strided views, one matmul per ``stride`` frames of kernel."""

CHUNK_FRAMES = 256
"""Output frames (20 ms each for wav2vec2) computed together: the first layer's output for them is
17 MB in bf16, against 98 MB for a whole 30 s window. In interleaved runs on a 2-core Xeon, 256 and 512
were 5-10 % faster than the whole window at once, and 128 slower."""

ENCODER_CHOICES = ("auto", "time-major", "transformers")
"""``GENRETAG_FEATURE_ENCODER``'s values: time-major on the CPU only, on every device, or on none."""

CHECK_SAMPLES = 96000
"""Six seconds: more than one chunk of wav2vec2 frames, so chunk boundaries are checked too."""
CHECK_TOLERANCE = 1e-4


def wants_time_major(device: torch.device) -> bool:
    """Whether a model loaded for ``device`` gets the time-major encoder (``GENRETAG_FEATURE_ENCODER``)."""
    choice = os.environ.get("GENRETAG_FEATURE_ENCODER", "auto")
    if choice not in ENCODER_CHOICES:
        log.warning("GENRETAG_FEATURE_ENCODER=%s is not one of %s; using auto", choice,
                    ", ".join(ENCODER_CHOICES))
        choice = "auto"
    return choice == "time-major" or (choice == "auto" and device.type == "cpu")


def use_time_major_encoder(model: nn.Module) -> bool:
    """Run ``model``'s convolutional feature encoder time-major; True if it now does.

    The encoder keeps its parameters and state dict; only its ``forward`` is replaced, and only when
    every layer is a plain conv -> optional norm -> activation block and the new forward matches the
    old one on six seconds of random audio.
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


def time_major_forward(encoder: nn.Module, input_values: torch.Tensor,
                       batched: bool | None = None) -> torch.Tensor:
    """``encoder(input_values)`` for ``[batch, samples]`` audio: ``[batch, channels, frames]``, returned
    as a transposed view of a time-major tensor. ``batched``: the whole batch at once rather than one
    waveform in cache-sized chunks at a time; by default off the CPU."""
    if batched is None:
        batched = input_values.device.type != "cpu"
    if batched:
        return _encode_batch(encoder.conv_layers, input_values).transpose(1, 2)
    out = [_encode_one(encoder.conv_layers, audio) for audio in input_values]
    return torch.stack(out).transpose(1, 2)


def _encode_batch(layers: nn.ModuleList, audio: torch.Tensor) -> torch.Tensor:
    """``[batch, samples]`` audio through the whole stack at once: ``[batch, frames, channels]``."""
    x = audio.unsqueeze(-1)
    norm = getattr(layers[0], "layer_norm", None)
    first = _folded_group_norm_batch(x, layers[0].conv, norm) if isinstance(norm, nn.GroupNorm) else None
    return _run_layers(layers, x, first, conv=_conv_batch)


def _encode_one(layers: nn.ModuleList, audio: torch.Tensor) -> torch.Tensor:
    """One waveform through the whole stack, ``CHUNK_FRAMES`` output frames at a time.

    Each chunk needs only its own stretch of audio (its receptive field); the one global step, the
    first layer's GroupNorm, is folded into that layer's weights from the whole waveform first.
    """
    x = audio.reshape(-1, 1)
    n_out = x.shape[0]
    for layer in layers:  # refuses audio shorter than the stack's kernels, as nn.Conv1d does
        n_out = _output_frames(n_out, layer.conv.kernel_size[0], layer.conv.stride[0])
    norm = getattr(layers[0], "layer_norm", None)
    first = _folded_group_norm(x, layers[0].conv, norm) if isinstance(norm, nn.GroupNorm) else None
    span, step = _receptive_field(layers)
    out = None
    for start in range(0, n_out, CHUNK_FRAMES):
        stop = min(n_out, start + CHUNK_FRAMES)
        y = _run_layers(layers, x[start * step:(stop - 1) * step + span], first)
        if out is None:
            out = y.new_empty(n_out, y.shape[1])
        out[start:stop] = y
    return out


def _run_layers(layers: nn.ModuleList, x: torch.Tensor, first: tuple | None, conv=None) -> torch.Tensor:
    """Every layer on audio ``x`` [samples, 1] (or [batch, samples, 1] with ``conv=_conv_batch``);
    ``first``: the first layer's (weight, bias) with its GroupNorm folded in, if it has one."""
    conv = conv or _conv
    for i, layer in enumerate(layers):
        norm = getattr(layer, "layer_norm", None)
        if i == 0 and first is not None:
            x, norm = conv(x, layer.conv, *first), None
        else:
            x = conv(x, layer.conv)
        x = layer.activation(x if norm is None else norm(x))
    return x


def _receptive_field(layers: nn.ModuleList) -> tuple[int, int]:
    """(samples one output frame sees, samples from one output frame to the next) of the stack.

    Audio of ``(n - 1) * step + span`` samples yields exactly ``n`` frames, the same as the matching
    stretch of a longer input would."""
    span, step = 1, 1
    for layer in layers:
        span += (layer.conv.kernel_size[0] - 1) * step
        step *= layer.conv.stride[0]
    return span, step


def _conv(x: torch.Tensor, conv: nn.Conv1d, weight: torch.Tensor | None = None,
          bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv`` on time-major ``x`` [frames, in] -> [frames', out], in the autocast dtype if one is on.
    ``weight`` [k * in, out] and ``bias`` replace the conv's own when given (a folded norm)."""
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    dtype = _compute_dtype(x)
    x = x.to(dtype).contiguous()
    if weight is None:
        weight, bias = _matmul_weight(conv), conv.bias
    weight = weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
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


def _conv_batch(x: torch.Tensor, conv: nn.Conv1d, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`_conv` for a batch, ``x`` [batch, frames, in] -> [batch, frames', out], as batched matmuls
    over strided views (rows ``stride * in`` apart and at most that wide, as a strided-batched GEMM's
    operand may be). ``weight`` [batch, k * in, out] and ``bias`` [batch, out]: one folded norm per
    waveform, when given."""
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    dtype = _compute_dtype(x)
    x = x.to(dtype).contiguous()
    batch, frames, channels = x.shape
    if weight is None:  # one weight for the whole batch: cast, then expanded without a copy
        weight = _matmul_weight(conv).to(dtype).expand(batch, -1, -1)
        bias = None if conv.bias is None else conv.bias.to(dtype).expand(batch, -1)
    weight = weight.to(dtype)
    bias = None if bias is None else bias.to(dtype).unsqueeze(1)  # broadcast over the frames
    n_out = _output_frames(frames, kernel, stride)
    if kernel * channels <= SMALL_IM2COL:
        cols = _strided_batch(x, n_out, stride, 0, kernel).contiguous()
        return torch.bmm(cols, weight) if bias is None else torch.baddbmm(bias, cols, weight)
    y = None
    for first in range(0, kernel, stride):
        width = min(stride, kernel - first)
        part = _strided_batch(x, n_out, stride, first, width)
        rows = weight[:, first * channels:(first + width) * channels]
        if y is None:
            y = torch.bmm(part, rows) if bias is None else torch.baddbmm(bias, part, rows)
        else:
            y.baddbmm_(part, rows)
    return y


def _strided_batch(x: torch.Tensor, n_out: int, stride: int, first: int, width: int) -> torch.Tensor:
    """:func:`_strided_frames` of every waveform of contiguous ``x`` [batch, frames, channels]."""
    batch, frames, channels = x.shape
    return x.as_strided((batch, n_out, width * channels), (frames * channels, stride * channels, 1),
                        x.storage_offset() + first * channels)


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


def _folded_group_norm(x: torch.Tensor, conv: nn.Conv1d, norm: nn.GroupNorm) -> tuple:
    """(weight [k * in, out], bias [out]), float32, such that ``_conv(x, conv, weight, bias)`` is
    ``norm(conv(x))`` for a per-channel GroupNorm over the whole of ``x``.

    For y = X W + b (X: the input frames, one row per output frame), channel c's mean over time is
    mean(X) w_c + b_c and its variance w_c' Cov(X) w_c; both come from X's mean and second-moment
    matrix, computed in float64. Normalising is then an affine map per channel, which folds into W
    and b. Only worth it (and only used) when X is narrow, as in the first layer.
    """
    weight, bias = _folded_group_norm_batch(x.unsqueeze(0), conv, norm)
    return weight[0], bias[0]


def _folded_group_norm_batch(x: torch.Tensor, conv: nn.Conv1d, norm: nn.GroupNorm) -> tuple:
    """:func:`_folded_group_norm` for each waveform of ``x`` [batch, samples, 1] at once: (weight
    [batch, k, out], bias [batch, out]), since GroupNorm normalises each waveform by its own moments.
    The conv's own bias cancels out of the normalised output."""
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    x = x.contiguous()
    n_out = _output_frames(x.shape[1], kernel, stride)
    with torch.autocast(x.device.type, enabled=False):
        frames = _strided_batch(x, n_out, stride, 0, kernel).double()
        mean_frame = frames.mean(dim=1)
        centred = frames - mean_frame.unsqueeze(1)
        covariance = centred.transpose(1, 2) @ centred / n_out
        w = _matmul_weight(conv).double()
        variance = ((covariance @ w) * w).sum(dim=1).clamp_min(0)
        scale = norm.weight.double() * torch.rsqrt(variance + norm.eps)
        shift = norm.bias.double() - (mean_frame @ w) * scale
    return (w * scale.unsqueeze(1)).float(), shift.float()


def _supported(encoder: nn.Module) -> bool:
    """Every layer is conv -> [LayerNorm | nothing] -> activation with a plain conv; the first may
    have a per-channel GroupNorm instead (a GroupNorm further in would need that layer's whole input
    before any output, which chunking cannot give)."""
    layers = getattr(encoder, "conv_layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    for i, layer in enumerate(layers):
        conv, norm = getattr(layer, "conv", None), getattr(layer, "layer_norm", None)
        if not isinstance(conv, nn.Conv1d) or not callable(getattr(layer, "activation", None)):
            return False
        plain = (conv.groups == 1 and conv.dilation == (1,) and conv.padding == (0,)
                 and conv.padding_mode == "zeros")
        if not plain:
            return False
        if isinstance(norm, nn.GroupNorm):
            narrow = conv.in_channels * conv.kernel_size[0] <= SMALL_IM2COL
            if i > 0 or norm.num_groups != norm.num_channels or not norm.affine or not narrow:
                return False
        elif isinstance(norm, nn.LayerNorm):
            if tuple(norm.normalized_shape) != (conv.out_channels,):
                return False
        elif norm is not None:
            return False
    return True


def _agrees(encoder: nn.Module, fast) -> bool:
    """Both forwards on ``CHECK_SAMPLES`` of random audio, in float32, agree within ``CHECK_TOLERANCE``
    relative to the output's scale."""
    param = next(encoder.parameters())
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(1, CHECK_SAMPLES, generator=generator).to(param.device, param.dtype)
    tf32 = torch.backends.cudnn.allow_tf32  # cuDNN's default TF32 convolutions would be the error here
    try:
        torch.backends.cudnn.allow_tf32 = False
        with torch.inference_mode(), torch.autocast(param.device.type, enabled=False):
            expected, got = encoder(audio), fast(audio)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    if expected.shape != got.shape:
        return False
    scale = expected.abs().max().clamp_min(1e-6)
    return bool(((expected - got).abs().max() / scale) <= CHECK_TOLERANCE)
