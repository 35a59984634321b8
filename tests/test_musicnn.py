"""The PyTorch musicnn port against the TensorFlow original (tests/data/musicnn, see its README)."""
from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tagger.errors import ModelError
from tagger.models.native import KERNELS, banded_max_kernel, kernel_isas
from tagger.models.musicnn import (BUILTIN_MODELS, EMBEDDING_LAYERS, PATCH_FRAMES, SAMPLE_RATE, ConvBlock,
                                   block_starts, load_builtin, log_compress, log_mel, patch_counts, valid_patches)

DATA = Path(__file__).parent / "data" / "musicnn"
REF = json.loads((DATA / "musicnn_reference.json").read_text())
SIGNALS = ("noise_seed0", "synth_music_seed1", "sweep_50_7000")
REF_NAMES = {"musicnn-msd": "MSD_musicnn", "musicnn-mtt": "MTT_musicnn"}
ATOL = 1e-4  # the reference's recommended tolerance on probabilities
FLOAT16_LIMIT = torch.log10(torch.tensor(65504.0, dtype=torch.float16)).item()  # the original's largest log-mel


def read_float_wav(path: Path) -> np.ndarray:
    """Samples of an IEEE-float32 mono WAV, read exactly (no resampling, no int conversion)."""
    raw = path.read_bytes()
    pos = 12
    while pos < len(raw):
        chunk, size = raw[pos:pos + 4], int.from_bytes(raw[pos + 4:pos + 8], "little")
        if chunk == b"data":
            return np.frombuffer(raw[pos + 8:pos + 8 + size], dtype="<f4")
        pos += 8 + size + (size & 1)
    raise ValueError(f"{path}: no data chunk")


def reference(signal: str, model: str) -> dict:
    return REF["signals"][signal][REF_NAMES[model]]


@pytest.fixture(scope="module")
def classifiers():
    return {name: load_builtin(name) for name in BUILTIN_MODELS}


@pytest.fixture(scope="module")
def wavs() -> torch.Tensor:
    return torch.from_numpy(np.stack([read_float_wav(DATA / f"{s}.wav") for s in SIGNALS]))


@pytest.fixture(scope="module")
def reference_logmel() -> torch.Tensor:
    npz = np.load(DATA / "logmel_float16.npz")
    return torch.from_numpy(np.stack([npz[s] for s in SIGNALS]).astype(np.float32))


def all_patches(logmel: torch.Tensor) -> torch.Tensor:
    """Every full patch of every signal, signal-major, as the reference lists them."""
    return valid_patches(logmel, torch.full((logmel.shape[0],), logmel.shape[1] // PATCH_FRAMES))


def per_patch_reference(model: str) -> np.ndarray:
    return np.concatenate([np.array(reference(s, model)["per_patch"]) for s in SIGNALS])


def test_labels_and_parameter_count_match_the_checkpoint(classifiers):
    for name, clf in classifiers.items():
        info = REF["checkpoints"][REF_NAMES[name]]
        assert clf.labels == REF["tags"][REF_NAMES[name]]
        state = clf.model.state_dict()
        assert len(state) == info["model_variables"]
        assert sum(t.numel() for t in state.values()) == info["params_total_incl_bn_moving_stats"]


def test_logmel_equals_reference_up_to_rare_float16_rounding_flips(wavs, reference_logmel):
    """Bins whose value sits on a float16 rounding boundary may round the other way (our float32 STFT
    rounds differently from librosa's). Allow that in at most 0.05 % of the bins, by at most one
    float16 ulp at the top of the log-mel range (2**-8); all other bins must be bit-identical."""
    ours = log_mel(wavs)
    assert ours.shape == reference_logmel.shape == (3, 1251, 96)
    diff = (ours - reference_logmel).abs()
    assert diff.max() <= 2.0**-8
    assert (diff > 0).sum() <= 0.0005 * diff.numel()


@pytest.mark.parametrize("model", BUILTIN_MODELS)
def test_per_patch_probabilities_from_reference_logmel(classifiers, reference_logmel, model):
    probs = classifiers[model].predict_patches(all_patches(reference_logmel))
    np.testing.assert_allclose(probs.numpy(), per_patch_reference(model), rtol=0, atol=ATOL)


@pytest.mark.parametrize("model", BUILTIN_MODELS)
def test_per_patch_probabilities_from_wav(classifiers, wavs, model):
    probs = classifiers[model].predict_patches(all_patches(log_mel(wavs)))
    np.testing.assert_allclose(probs.numpy(), per_patch_reference(model), rtol=0, atol=ATOL)


def test_predict_is_the_mean_over_patches_and_honours_lengths(classifiers, wavs):
    """Window 0 is a whole 20 s signal; window 1 holds the first 10 s of another, then 10 s of junk
    that ``lengths`` must exclude. 10 s gives 626 frames, i.e. the reference's first 3 patches."""
    windows = wavs[:2].clone()
    windows[1, 10 * SAMPLE_RATE:] = 0.5
    lengths = torch.tensor([windows.shape[1], 10 * SAMPLE_RATE])
    probs = classifiers["musicnn-mtt"].predict(windows, lengths)
    assert probs.dtype == torch.float32 and probs.device.type == "cpu"
    expected_0 = np.array(reference(SIGNALS[0], "musicnn-mtt")["mean"])
    expected_1 = np.array(reference(SIGNALS[1], "musicnn-mtt")["per_patch"])[:3].mean(axis=0)
    np.testing.assert_allclose(probs.numpy(), np.stack([expected_0, expected_1]), rtol=0, atol=ATOL)


@pytest.mark.parametrize("layer", EMBEDDING_LAYERS)
def test_predict_with_embeddings_gives_predicts_probabilities_and_patch_means_from_one_pass(classifiers, wavs,
                                                                                          layer):
    """Probabilities bit-identical to ``predict``; embeddings the mean over each window's valid patches of
    the layer's features; the network runs over the patches once (the dense layer is called as often as
    by ``predict``)."""
    clf = classifiers["musicnn-msd"]
    windows, lengths = wavs[:2], torch.tensor([wavs.shape[1], 10 * SAMPLE_RATE])
    calls = []
    hook = clf.model.dense.register_forward_hook(lambda *args: calls.append(1))
    try:
        expected_probs = clf.predict(windows, lengths)
        predict_calls = len(calls)
        probs, embeddings = clf.predict_with_embeddings(windows, lengths, layer=layer)
    finally:
        hook.remove()
    assert len(calls) == 2 * predict_calls
    assert torch.equal(probs, expected_probs)
    masked = windows * (torch.arange(windows.shape[1])[None, :] < lengths[:, None])
    logmel = log_mel(masked)
    counts = patch_counts(lengths, logmel.shape[1])
    with torch.inference_mode():
        pooled, hidden = clf.model.features(valid_patches(logmel, counts))
        tags = torch.sigmoid(clf.model.classifier(hidden))
    parts = {"pooled": pooled, "penultimate": hidden, "tags": tags}
    per_patch = torch.cat([parts[p] for p in layer.split("+")], dim=1)
    expected = torch.stack([chunk.mean(dim=0) for chunk in per_patch.split(counts.tolist())])
    assert embeddings.shape == (2, {"pooled": 1506, "penultimate": 200, "pooled+penultimate": 1706, "tags": 50}[layer])
    torch.testing.assert_close(embeddings, expected, rtol=1e-5, atol=1e-5)


def test_embedding_space_names_model_weights_and_layer(classifiers):
    clf = classifiers["musicnn-mtt"]
    assert clf.embedding_layer == "penultimate" and clf.embedding_dim == 200
    assert clf.embedding_space == f"builtin:musicnn-mtt@{clf.fingerprint}/penultimate"
    pooled = load_builtin("musicnn-mtt", embedding_layer="pooled")
    assert (pooled.embedding_dim, pooled.embedding_space.rsplit("/", 1)[1]) == (1506, "pooled")
    with pytest.raises(ModelError, match="unknown musicnn embedding layer"):
        load_builtin("musicnn-mtt", embedding_layer="logits")


def test_short_windows_get_one_zero_padded_patch(classifiers, wavs):
    clf = classifiers["musicnn-mtt"]
    one_second = wavs[1:2, :SAMPLE_RATE]
    padded = torch.nn.functional.pad(one_second, (0, 3 * SAMPLE_RATE))
    short = clf.predict(one_second)
    assert torch.equal(patch_counts(torch.tensor([SAMPLE_RATE, 0]), 1876), torch.tensor([1, 1]))
    torch.testing.assert_close(short, clf.predict(padded, torch.tensor([SAMPLE_RATE])), rtol=0, atol=1e-6)
    assert torch.isfinite(clf.predict(torch.zeros(2, 100), torch.tensor([0, 100]))).all()


def loud_signals() -> torch.Tensor:
    """A full-scale square wave and clipped noise: both overflow the original's float16 log-mel."""
    t = torch.arange(5 * SAMPLE_RATE) / SAMPLE_RATE
    square = torch.sign(torch.sin(2 * torch.pi * 220 * t))
    noise = torch.randn(t.shape[0], generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    return torch.stack([square, noise])


def test_loud_input_gives_finite_input_dependent_output(classifiers):
    loud = loud_signals()
    logmel = log_mel(loud)
    assert torch.isfinite(logmel).all()
    overflow = logmel > FLOAT16_LIMIT
    assert overflow.any(dim=(1, 2)).all()  # both signals exercise the overflow path
    # Beyond the limit the log-mel still tracks loudness: 4x the amplitude is 16x the power, +log10(16).
    quieter = log_mel(0.25 * loud)
    torch.testing.assert_close(logmel[overflow] - quieter[overflow],
                               torch.full((int(overflow.sum()),), float(np.log10(16))), rtol=0, atol=0.01)
    for clf in classifiers.values():
        probs = clf.predict(loud)
        assert torch.isfinite(probs).all()
        assert (probs[0] - probs[1]).abs().max() > 0.05
        assert (clf.predict(0.25 * loud) - probs).abs().max() > 0.01


def test_log_compress_is_float16_exact_in_range_and_continuous_beyond():
    mel = torch.cat([torch.logspace(-8, 0.8, 2000), torch.linspace(6.0, 7.0, 2001), torch.tensor([1e3, 1e6])])
    out = log_compress(mel)
    float16_path = torch.log10(mel.half() * 10000 + 1).float()
    in_range = torch.isfinite(float16_path)
    assert in_range.sum() < len(mel) - 3  # the test spans the float16 limit
    assert torch.equal(out[in_range], float16_path[in_range])
    torch.testing.assert_close(out, torch.log10(mel * 10000 + 1), rtol=0, atol=2.0**-8)  # <= 1 float16 ulp


def test_max_over_frequency_equals_the_plain_block_for_mixed_sign_batch_norm():
    torch.manual_seed(0)
    block = ConvBlock(torch.nn.Conv2d(1, 8, (7, 5)), (0, 0, 3, 3)).eval()
    with torch.no_grad():
        block.bn.weight.copy_(torch.randn(8))  # about half the channels get a negative scale
        block.bn.running_var.uniform_(0.5, 2.0)
        block.bn.running_mean.normal_()
    x = torch.randn(3, 1, 20, 16)
    # The channels-last conv sums in another order than the plain block's: equal up to float32 rounding.
    torch.testing.assert_close(block.max_over_frequency(x), block(x).amax(dim=3), rtol=0, atol=1e-5)


@pytest.fixture(params=[pytest.param(isa, marks=pytest.mark.skipif(isa not in kernel_isas(),
                                                                   reason=f"this CPU has no {isa}"))
                        for isa in KERNELS])
def native_kernel(request, monkeypatch):
    """musicnn's native path on each kernel version this CPU can run (AMX, AVX512-BF16)."""
    monkeypatch.setenv("GENRETAG_NATIVE", request.param)
    assert banded_max_kernel().__name__ == KERNELS[request.param]
    return request.param


@pytest.fixture
def one_thread():
    """musicnn takes the native path in calls with one torch thread (a scan's default on CPU)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _mixed_sign_block(kernel, channels=8, band=None, pad=(0, 0, 3, 3)):
    """A block whose channels mix both batch-norm signs with biases that push whole rows of the conv's
    output above or below zero, so that every case of the max/min selection occurs."""
    torch.manual_seed(0)
    block = ConvBlock(torch.nn.Conv2d(1, channels, kernel), pad, band).eval()
    with torch.no_grad():
        # Each bias (whole rows above zero, below zero, mixed) with each batch-norm sign.
        sign = torch.where(torch.arange(channels) % 8 < 4, 1.0, -1.0)
        block.bn.weight.copy_(sign * torch.rand(channels).add(0.5))
        block.bn.running_var.uniform_(0.5, 2.0)
        block.bn.running_mean.normal_()
        block.conv.bias.copy_(torch.tensor([4.0, -4.0, 0.0, 1.0])[torch.arange(channels) % 4])
    return block


def _bf16_reference(block, x):
    """The plain block on the bf16-rounded conv output of bf16-rounded inputs: what the banded path
    computes, up to the order in which its products are summed."""
    conv = block.conv
    out = F.conv2d(F.pad(x, block.pad).bfloat16().double(), conv.weight.bfloat16().double(),
                   conv.bias.bfloat16().double())
    active = F.relu(out.bfloat16().float())
    picked = torch.where(block.bn.weight[None, :, None] >= 0, active.amax(dim=3), active.amin(dim=3))
    return block.bn(active).amax(dim=3), out.abs().max(), picked == 0


def _assert_fast_max_matches(block, reference, ulp_exponent, x=None):
    """``block.max_over_frequency`` under bf16 autocast against ``reference(block, x)``. A wrong pick (a
    max for a min, a negative value not cut to zero) is off by about the output's spread; the paths'
    rounding by ``2**-ulp_exponent`` of it. Returns where the reference's picked value is cut to 0."""
    x = torch.randn(3, 1, 20, 16) if x is None else x
    with torch.no_grad():
        expected, peak, cut = reference(block, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = block.max_over_frequency(x)
        scale = block.bn.affine()[0].abs().max()
    assert fast.shape == expected.shape == (3, 8, 20) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, expected, rtol=0, atol=float(peak * scale) * 2.0**-ulp_exponent)
    return cut


def _assert_both_kinds_cut_and_kept(block, cut):
    """Both kinds of channel (batch-norm scale >= 0 and < 0) have outputs the ReLU cut to 0, and others."""
    for negative in (True, False):
        kind = cut[:, (block.bn.weight < 0) == negative]
        assert 0 < kind.float().mean() < 1


@pytest.mark.parametrize("kernel,band", [((7, 5), 1), ((7, 5), 3), ((7, 5), 5), ((7, 5), 12), ((7, 5), 40),
                                         ((6, 1), 1), ((6, 1), 3), ((6, 1), 7), ((6, 1), 40)])
def test_banded_max_equals_the_plain_block_in_bf16(kernel, band):
    """Timbral-like (7 x 5: 12 frequency positions in 16 bands) and temporal-like (6 x 1: 20 frames)
    kernels. Blocks of 5 or 7 end with one moved back to overlap; a block wider than the positions is
    narrowed to them."""
    pad = (0, 0, 3, 3) if kernel[1] > 1 else (0, 0, 2, 3)
    block = _mixed_sign_block(kernel, band=band, pad=pad)
    # Summation order moves a bf16-rounded output by at most one unit in its last place.
    _assert_both_kinds_cut_and_kept(block, _assert_fast_max_matches(block, _bf16_reference, ulp_exponent=7))


@pytest.mark.parametrize("kernel", [(7, 5), (6, 1)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_banded_max_with_every_batch_norm_scale_of_one_sign(kernel, sign):
    """One of the two channel groups is then empty."""
    block = _mixed_sign_block(kernel, band=4, pad=(0, 0, 3, 3) if kernel[1] > 1 else (0, 0, 2, 3))
    with torch.no_grad():
        block.bn.weight.abs_().mul_(sign)
    _assert_fast_max_matches(block, _bf16_reference, ulp_exponent=7)


@pytest.mark.parametrize("path", ["torch"] + [
    pytest.param(isa, marks=pytest.mark.skipif(isa not in kernel_isas(), reason=f"this CPU has no {isa}"))
    for isa in KERNELS])
def test_banded_weight_is_rebuilt_when_the_weights_change(path, one_thread, monkeypatch):
    """The banded weight (the torch path's, or the native kernel's) is built once per weights: loading
    other weights into the block must not leave the old one in use."""
    native = path != "torch"
    if native:
        monkeypatch.setenv("GENRETAG_NATIVE", path)
    first, second = _mixed_sign_block((7, 5), band=4), _mixed_sign_block((7, 5), band=4)
    first.native_band = second.native_band = 4 if native else None
    with torch.no_grad():
        second.conv.weight.mul_(-1.5)
        second.bn.weight.mul_(-1)  # the channels' signs, which both weights depend on
    x = torch.randn(2, 1, 20, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = first.max_over_frequency(x)
        first.load_state_dict(second.state_dict())
        after = first.max_over_frequency(x)
        assert torch.equal(after, second.max_over_frequency(x))
        first.conv.weight = torch.nn.Parameter(first.conv.weight / 2)  # a new tensor, not a new version
        halved = first.max_over_frequency(x)
    assert not torch.equal(before, after)
    assert not torch.equal(halved, after)


def test_banded_and_conv_paths_run_in_bf16_on_cpu_and_stay_close():
    block = _mixed_sign_block((7, 38), channels=16, band=4)
    x = torch.randn(2, 1, 40, 96)
    with torch.no_grad():
        exact = block(x).amax(dim=3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            banded = block.max_over_frequency(x)
            block.band = None
            conv = block.max_over_frequency(x)
    # bf16 rounding of inputs, weights and products: both fast paths are within a few bf16 ulps
    scale = exact.abs().max()
    assert (banded - exact).abs().max() < 0.02 * scale
    assert (conv - exact).abs().max() < 0.02 * scale
    assert not torch.equal(banded, conv)  # two different computations really ran


def _float32_product_reference(block, x):
    """The plain block on the exact conv of bf16-rounded inputs and weights, plus the float32 bias:
    what the native path computes (float32 accumulation), up to summation order."""
    conv = block.conv
    out = F.conv2d(F.pad(x, block.pad).bfloat16().double(), conv.weight.bfloat16().double(),
                   conv.bias.double()).float()
    active = F.relu(out)
    picked = torch.where(block.bn.weight[None, :, None] >= 0, active.amax(dim=3), active.amin(dim=3))
    return block.bn(active).amax(dim=3), out.abs().max(), picked == 0


@pytest.mark.parametrize("kernel,band", [((7, 5), 2), ((7, 5), 3), ((7, 5), 4), ((7, 5), 5), ((7, 5), 40),
                                         ((6, 1), 1), ((6, 1), 3), ((6, 1), 7), ((6, 1), 32)])
def test_native_max_equals_the_plain_block_on_float32_products(kernel, band, native_kernel, one_thread):
    """The native kernel's path, with blocks that overlap, divide and exceed the positions, odd blocks
    (whose channels are padded to 32), and 16 bands (repeated up to the kernel's 32-row groups)."""
    pad = (0, 0, 3, 3) if kernel[1] > 1 else (0, 0, 2, 3)
    block = _mixed_sign_block(kernel, band=4, pad=pad)
    block.native_band = band
    # float32 products: summation order only (bf16 products, the torch path's, would be off by 2**-8)
    _assert_both_kinds_cut_and_kept(block, _assert_fast_max_matches(block, _float32_product_reference, 16))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_native_max_with_every_batch_norm_scale_of_one_sign(sign, native_kernel, one_thread):
    block = _mixed_sign_block((7, 5), band=4)
    block.native_band = 4
    with torch.no_grad():
        block.bn.weight.abs_().mul_(sign)
    _assert_fast_max_matches(block, _float32_product_reference, 16)


@pytest.mark.parametrize("kernel", [(7, 5), (6, 1)])
def test_native_max_of_products_negative_everywhere(kernel, native_kernel, one_thread):
    """Positive input and negative weights: every product is negative, so rows that the native path
    adds to fill the kernel's tiles (zeros would give 0) must never be the max."""
    pad = (0, 0, 3, 3) if kernel[1] > 1 else (0, 0, 2, 3)
    block = _mixed_sign_block(kernel, band=4, pad=pad)
    block.native_band = 4
    with torch.no_grad():
        block.bn.weight.abs_()
        block.conv.weight.abs_().neg_().sub_(0.01)
        block.conv.bias.fill_(5.0)  # keeps the outputs above the ReLU's cut: a wrong max shows
    _assert_fast_max_matches(block, _float32_product_reference, 16, x=torch.rand(3, 1, 20, 16) + 0.5)


def test_the_built_in_model_runs_on_the_native_kernel_and_agrees_with_fp32(wavs, native_kernel, one_thread):
    """The whole network in bf16, on the native kernel and on the torch products: both near fp32
    (the mid- and back-end's bf16 dominate what is left), with fp32's top label for every signal."""
    fp32 = load_builtin("musicnn-msd", precision="fp32")
    bf16 = load_builtin("musicnn-msd", precision="bf16")
    exact = fp32.predict(wavs)
    native = bf16.predict(wavs)
    for name in ("timbral74", "timbral77", "temporal128", "temporal64", "temporal32"):
        getattr(bf16.model, name).native_band = None
    products = bf16.predict(wavs)
    assert not torch.equal(native, products)  # two different computations really ran
    for probs in (native, products):
        assert (probs - exact).abs().max() < 0.02
        assert torch.equal(probs.argmax(dim=1), exact.argmax(dim=1))


def test_block_starts_cover_every_position_once_or_twice():
    for positions, width in [(59, 4), (12, 5), (8, 4), (1, 1), (30, 30)]:
        starts = block_starts(positions, width)
        covered = [p for s in starts for p in range(s, s + width)]
        assert set(covered) == set(range(positions)) and max(covered) == positions - 1
        assert len(covered) < positions + width
    assert block_starts(59, 4)[-2:] == [52, 55]


def test_bf16_autocast_stays_close_to_fp32(classifiers, reference_logmel):
    patch = reference_logmel[1:2, :64]  # 1 s is enough here, and bf16 is slow on CPUs without AVX512-BF16
    bf16 = load_builtin("musicnn-msd", precision="bf16").predict_patches(patch)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, classifiers["musicnn-msd"].predict_patches(patch), rtol=0, atol=0.05)


def test_classifier_attributes(classifiers):
    for name, clf in classifiers.items():
        weights = (resources.files("tagger") / "builtin" / name / "model.safetensors").read_bytes()
        assert clf.model_id == f"builtin:{name}"
        assert clf.fingerprint == hashlib.sha256(weights).hexdigest()[:16]
        assert clf.sampling_rate == SAMPLE_RATE and clf.multi_label
        assert 0 < clf.default_min_confidence < 1 and clf.label_thresholds == {}
        assert clf.device == torch.device("cpu")
        # The built-in map decides every label explicitly and names no label the model lacks.
        assert clf.label_map.unknown_labels(clf.labels) == []
        assert all(label in clf.label_map.rename or label in clf.label_map.drop for label in clf.labels)
    assert classifiers["musicnn-msd"].fingerprint != classifiers["musicnn-mtt"].fingerprint


def test_signals_without_genre_evidence_stay_below_the_default_min_confidence(classifiers, wavs):
    """Silence and white noise must not be tagged with the model's prior (Rock, Classical...)."""
    windows = torch.cat([torch.zeros(1, 3 * SAMPLE_RATE), wavs[:1, : 3 * SAMPLE_RATE]])
    for clf in classifiers.values():
        for scores in clf.predict(windows):
            best = clf.label_map.apply(clf.labels, scores, multi_label=clf.multi_label)[0]
            assert best[1] < clf.default_min_confidence, best


@pytest.mark.parametrize("kwargs", [{"name": "musicnn-nope"}, {"name": "musicnn-msd", "precision": "int8"},
                                    {"name": "musicnn-msd", "precision": "fp16"}])
def test_bad_load_arguments_raise_model_error(kwargs):
    with pytest.raises(ModelError):
        load_builtin(**kwargs)


@pytest.mark.gpu
def test_cuda_windows_match_the_reference(wavs):
    clf = load_builtin("musicnn-msd", device="cuda")
    probs = clf.predict(wavs.cuda())
    assert probs.device.type == "cpu"
    expected = np.stack([np.array(reference(s, "musicnn-msd")["mean"]) for s in SIGNALS])
    np.testing.assert_allclose(probs.numpy(), expected, rtol=0, atol=ATOL)
    assert torch.isfinite(clf.predict(loud_signals().cuda())).all()
