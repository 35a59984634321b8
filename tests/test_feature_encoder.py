"""The time-major feature encoder computes what transformers' own encoder computes, for every layout
it accepts, and leaves alone what it does not."""
from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

from tagger.models.feature_encoder import time_major_forward, use_time_major_encoder, wants_time_major

SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
             conv_dim=(24,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def _wav2vec2(**extra):
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    return Wav2Vec2Model(Wav2Vec2Config(**SMALL, **extra))


def _hubert():
    from transformers import HubertConfig, HubertModel
    return HubertModel(HubertConfig(**SMALL))


def _data2vec():
    from transformers import Data2VecAudioConfig, Data2VecAudioModel
    return Data2VecAudioModel(Data2VecAudioConfig(**SMALL))


def _wavlm():
    from transformers import WavLMConfig, WavLMModel
    return WavLMModel(WavLMConfig(**SMALL))


MODELS = {
    "wav2vec2-group": _wav2vec2,
    "wav2vec2-layer-bias": partial(_wav2vec2, feat_extract_norm="layer", conv_bias=True),
    "wav2vec2-group-bias": partial(_wav2vec2, conv_bias=True),
    "hubert": _hubert,
    "data2vec-audio": _data2vec,
    "wavlm": _wavlm,
}


def _pair(build):
    """The same random model twice: as transformers runs it, and with the time-major encoder."""
    torch.manual_seed(0)
    original = build().eval()
    # Non-trivial norm parameters, so that a wrong fold of GroupNorm/LayerNorm would show.
    with torch.no_grad():
        for module in original.modules():
            if isinstance(module, (nn.GroupNorm, nn.LayerNorm)) and module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    fast = copy.deepcopy(original)
    assert use_time_major_encoder(fast)
    return original, fast


def _audio(batch=2, seconds=12.3):  # 614 frames: two full chunks of the stack and a partial one
    generator = torch.Generator().manual_seed(1)
    n = int(seconds * 16000)
    tone = torch.sin(torch.arange(n) * 0.05) * 0.5 + 0.1  # a DC offset too: means must be right
    return tone + 0.3 * torch.randn(batch, n, generator=generator)


@pytest.mark.parametrize("name", MODELS)
def test_float32_matches_transformers(name):
    original, fast = _pair(MODELS[name])
    audio = _audio()
    with torch.inference_mode():
        want_features = original.feature_extractor(audio)
        got_features = fast.feature_extractor(audio)
        want = original(audio).last_hidden_state
        got = fast(audio).last_hidden_state
    assert got_features.shape == want_features.shape
    scale = want_features.abs().max()
    assert (got_features - want_features).abs().max() <= 1e-5 * scale
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["wav2vec2-group", "data2vec-audio"])
def test_bf16_autocast_stays_close_to_float32(name):
    original, fast = _pair(MODELS[name])
    audio = _audio()
    with torch.inference_mode():
        reference = original.feature_extractor(audio)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fast.feature_extractor(audio).float()
            theirs = original.feature_extractor(audio).float()
    ours_error = (got - reference).norm() / reference.norm()
    their_error = (theirs - reference).norm() / reference.norm()
    assert ours_error < 3e-2
    assert ours_error < 2 * their_error + 1e-3  # no worse than transformers' own bf16 path


@pytest.mark.parametrize("name", MODELS)
def test_the_whole_batch_at_once_matches_transformers(name):
    """The GPU form (one batched product per layer, each waveform's own GroupNorm folded), run here."""
    original, fast = _pair(MODELS[name])
    audio = _audio(batch=3)
    audio[1] *= 4.0  # waveforms of different loudness: each must be normalised by its own moments
    with torch.inference_mode():
        want = original.feature_extractor(audio)
        got = time_major_forward(fast.feature_extractor, audio, batched=True)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_the_whole_batch_at_once_under_bf16_stays_close_to_float32():
    original, fast = _pair(MODELS["wav2vec2-group"])
    audio = _audio(batch=3)
    with torch.inference_mode():
        reference = original.feature_extractor(audio)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = time_major_forward(fast.feature_extractor, audio, batched=True).float()
            theirs = original.feature_extractor(audio).float()
    ours_error = (got - reference).norm() / reference.norm()
    assert ours_error < 2 * (theirs - reference).norm() / reference.norm() + 1e-3


@pytest.mark.parametrize("choice,cpu,cuda", [(None, True, False), ("auto", True, False),
                                             ("time-major", True, True), ("transformers", False, False)])
def test_the_environment_chooses_the_encoder_per_device(monkeypatch, choice, cpu, cuda):
    if choice is None:
        monkeypatch.delenv("GENRETAG_FEATURE_ENCODER", raising=False)
    else:
        monkeypatch.setenv("GENRETAG_FEATURE_ENCODER", choice)
    assert wants_time_major(torch.device("cpu")) is cpu
    assert wants_time_major(torch.device("cuda")) is cuda


def test_an_unknown_encoder_choice_warns_and_means_auto(monkeypatch, caplog):
    monkeypatch.setenv("GENRETAG_FEATURE_ENCODER", "fastest")
    assert wants_time_major(torch.device("cpu")) and not wants_time_major(torch.device("cuda"))
    assert "GENRETAG_FEATURE_ENCODER=fastest" in caplog.text


def test_state_dict_and_parameters_are_untouched():
    original, fast = _pair(_wav2vec2)
    assert original.state_dict().keys() == fast.state_dict().keys()
    for key, value in original.state_dict().items():
        assert torch.equal(value, fast.state_dict()[key])


class _ActivationFirst(nn.Module):
    """A conv layer that applies its activation *before* its norm: looks supported, computes
    something else."""

    def __init__(self, layer):
        super().__init__()
        self.conv, self.layer_norm, self.activation = layer.conv, layer.layer_norm, layer.activation

    def forward(self, x):
        x = self.activation(self.conv(x))
        return self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)


def test_a_layer_that_computes_something_else_is_left_alone():
    torch.manual_seed(0)
    model = _wav2vec2(feat_extract_norm="layer").eval()
    layers = model.feature_extractor.conv_layers
    layers[2] = _ActivationFirst(layers[2])
    audio = _audio(batch=1)
    with torch.inference_mode():
        before = model.feature_extractor(audio)
    assert not use_time_major_encoder(model)
    assert "forward" not in vars(model.feature_extractor)
    with torch.inference_mode():
        assert torch.equal(model.feature_extractor(audio), before)


def test_unsupported_convolutions_are_left_alone():
    torch.manual_seed(0)
    model = _wav2vec2().eval()
    conv = model.feature_extractor.conv_layers[3].conv
    model.feature_extractor.conv_layers[3].conv = nn.Conv1d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding=1, bias=False)
    assert not use_time_major_encoder(model)
    assert "forward" not in vars(model.feature_extractor)


def test_models_without_a_conv_encoder_are_left_alone():
    from transformers import ASTConfig, ASTModel

    model = ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).eval()
    assert not use_time_major_encoder(model)


def test_input_shorter_than_the_first_kernel_is_refused_like_conv1d():
    _, fast = _pair(_wav2vec2)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="shorter than the kernel"):
        fast.feature_extractor(torch.randn(1, 5))


def test_cpu_classifier_runs_the_time_major_encoder(tmp_path):
    """A checkpoint loaded for scanning uses it, and predicts what transformers' own model predicts."""
    from transformers import AutoModelForAudioClassification

    from tagger.models.infer import load_classifier
    from tests.models import make_tiny_wav2vec2

    folder = make_tiny_wav2vec2(tmp_path / "model")
    classifier = load_classifier(str(folder), device="cpu", precision="fp32")
    encoder = classifier.model.base_model.feature_extractor
    assert isinstance(vars(encoder).get("forward"), partial)

    reference = AutoModelForAudioClassification.from_pretrained(folder).eval()
    windows = _audio(batch=2, seconds=3.0)
    got = classifier.predict(windows)
    with torch.inference_mode():
        normalised = (windows - windows.mean(1, keepdim=True)) / torch.sqrt(
            windows.var(1, keepdim=True, unbiased=False) + 1e-7)
        want = torch.softmax(reference(normalised).logits, dim=-1)
    assert torch.allclose(got, want, atol=1e-5)


def test_transformers_choice_keeps_transformers_encoder_on_the_cpu(tmp_path, monkeypatch):
    from tagger.models.infer import load_classifier
    from tests.models import make_tiny_wav2vec2

    folder = make_tiny_wav2vec2(tmp_path / "model")
    monkeypatch.setenv("GENRETAG_FEATURE_ENCODER", "transformers")
    classifier = load_classifier(str(folder), device="cpu", precision="fp32")
    assert "forward" not in vars(classifier.model.base_model.feature_extractor)


@pytest.mark.parametrize("build", ["wav2vec2", "ast"])
def test_weights_stored_in_bf16_give_what_autocast_gives(tmp_path, build):
    """Storing linear/conv weights rounded to bf16, the weight-normalised positional conv's weight
    computed once included, changes no output bit under bf16 autocast."""
    import torch.nn.utils.parametrize as P
    from transformers import AutoModelForAudioClassification

    from tagger.models.infer import fold_parametrizations, load_classifier, store_matmul_weights_in
    from tests.models import make_tiny_ast, make_tiny_wav2vec2

    make = make_tiny_wav2vec2 if build == "wav2vec2" else make_tiny_ast
    folder = make(tmp_path / "model")
    model = AutoModelForAudioClassification.from_pretrained(folder).eval()
    assert any(P.is_parametrized(m) for m in model.modules()) == (build == "wav2vec2")
    # A second load, not a deepcopy: a copy shares its parametrized class with the original, and
    # removing the parametrization from one takes the weight property away from both.
    stored = AutoModelForAudioClassification.from_pretrained(folder).eval()
    fold_parametrizations(stored)
    store_matmul_weights_in(stored, "bf16")
    assert not any(P.is_parametrized(m) for m in stored.modules())
    linears = [m for m in stored.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    inputs = {"input_values": _audio(batch=1)} if build == "wav2vec2" else {
        "input_values": torch.randn(1, 1024, 128, generator=torch.Generator().manual_seed(2))}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(**inputs).logits
        got = stored(**inputs).logits
    assert torch.equal(got, want)

    classifier = load_classifier(str(folder), device="cpu", precision="bf16")
    assert all(m.weight.dtype == torch.bfloat16 for m in classifier.model.modules()
               if isinstance(m, (nn.Linear, nn.Conv1d)))


def _mapped(path) -> bool:
    with open("/proc/self/maps") as maps:
        return str(path) in maps.read()


def test_a_bf16_classifier_lets_go_of_the_checkpoint_file(tmp_path):
    """In float32 the weights live in the safetensors file's memory map; once a bf16 classifier holds
    its own copies, nothing refers to the map and it is gone, with its resident pages."""
    import gc

    from tagger.models.infer import load_classifier
    from tests.models import make_tiny_wav2vec2

    folder = make_tiny_wav2vec2(tmp_path / "model")
    weights = folder / "model.safetensors"
    fp32 = load_classifier(str(folder), device="cpu", precision="fp32")
    assert _mapped(weights)
    del fp32
    gc.collect()
    assert not _mapped(weights)
    bf16 = load_classifier(str(folder), device="cpu", precision="bf16")
    assert not _mapped(weights)
    assert bf16.predict(_audio(batch=1, seconds=3.0)).shape == (1, 4)


def test_a_group_norm_past_the_first_layer_is_left_alone():
    """Such a norm needs its layer's whole input before any output, which chunking cannot give."""
    torch.manual_seed(0)
    model = _wav2vec2(feat_extract_norm="layer").eval()
    model.feature_extractor.conv_layers[2].layer_norm = nn.GroupNorm(24, 24)
    assert not use_time_major_encoder(model)
    assert "forward" not in vars(model.feature_extractor)
