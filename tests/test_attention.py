"""Head-by-head bf16 attention (tagger/models/attention.py) against torch's own attention, and its installation
on a real (tiny) transformers checkpoint."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tagger.models import attention
from tagger.models.infer import load_classifier

BF16_ATOL = 0.05
"""Scores rounded to bf16 give errors of about 0.005 on these inputs; a misplaced block gives ~0.5."""


def _qkv(batch, heads, queries, keys, dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, queries, dim), (batch, heads, keys, dim), (batch, heads, keys, dim)]
    return [torch.randn(s, generator=gen).to(torch.bfloat16) for s in shapes]


def _reference(query, key, value, scaling):
    """float64 attention of the same bf16 inputs, [B, Tq, H, D] like transformers' attention functions."""
    out = F.scaled_dot_product_attention(query.double(), key.double(), value.double(), scale=scaling)
    return out.transpose(1, 2)


@pytest.mark.parametrize("shape", [(2, 3, 37, 53, 16), (1, 2, 64, 64, 32), (3, 1, 5, 200, 16)])
@pytest.mark.parametrize("row_block_rows", [1, 7, 10_000])
def test_attend_matches_attention_for_every_query_block(shape, row_block_rows, monkeypatch):
    batch, heads, queries, keys, dim = shape
    monkeypatch.setattr(attention, "ROW_BLOCK_ELEMENTS", row_block_rows * keys)
    query, key, value = _qkv(*shape)
    scaling = dim ** -0.5
    with torch.inference_mode():
        out = attention.attend(query, key, value, scaling)
    assert out.shape == (batch, queries, heads, dim) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), _reference(query, key, value, scaling), atol=BF16_ATOL, rtol=0)


def test_attention_function_uses_the_module_scaling_and_default_scaling():
    query, key, value = _qkv(1, 2, 20, 30, 16, seed=1)
    module = torch.nn.Module()
    module.is_causal = False  # transformers treats a module that does not say so as causal
    with torch.inference_mode():
        scaled, none = attention.head_by_head_attention(module, query, key, value, None, scaling=0.5)
        default, _ = attention.head_by_head_attention(module, query, key, value, None)
    assert none is None
    torch.testing.assert_close(scaled.double(), _reference(query, key, value, 0.5), atol=BF16_ATOL, rtol=0)
    torch.testing.assert_close(default.double(), _reference(query, key, value, 16 ** -0.5), atol=BF16_ATOL,
                               rtol=0)


@pytest.mark.parametrize("case", ["mask", "grad", "float32", "causal", "unsaid", "dropout"])
def test_calls_it_does_not_cover_go_to_transformers_sdpa(case):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    query, key, value = _qkv(1, 2, 12, 12, 16, seed=2)
    if case == "float32":
        query, key, value = query.float(), key.float(), value.float()
    module = torch.nn.Module()
    if case != "unsaid":  # a module without is_causal: transformers' sdpa takes it as causal
        module.is_causal = case == "causal"
    mask = None
    if case == "mask":
        mask = torch.zeros(1, 1, 12, 12, dtype=torch.bfloat16)
        mask[..., 6:] = float("-inf")
    dropout = 0.5 if case == "dropout" else 0.0
    with torch.inference_mode(case != "grad"):
        torch.manual_seed(3)  # the same dropout draw for both
        ours, _ = attention.head_by_head_attention(module, query, key, value, mask, dropout=dropout)
        torch.manual_seed(3)
        theirs, _ = sdpa_attention_forward(module, query, key, value, mask, dropout=dropout)
        plain = attention.attend(query.bfloat16(), key.bfloat16(), value.bfloat16(), 16 ** -0.5)
    assert torch.equal(ours, theirs)
    if case in ("mask", "causal", "unsaid", "dropout"):  # the fallback matters: plain attention differs
        assert not torch.allclose(plain.float(), ours.float(), atol=BF16_ATOL)


def test_installed_on_a_real_checkpoint_where_wanted_and_close_to_sdpa(tiny_wav2vec2, monkeypatch):
    windows = (torch.rand(2, 16000 * 4, generator=torch.Generator().manual_seed(4)) - 0.5) * 0.5
    monkeypatch.setenv("GENRETAG_ATTENTION", "sdpa")
    sdpa = load_classifier(str(tiny_wav2vec2), device="cpu", precision="bf16")
    monkeypatch.setenv("GENRETAG_ATTENTION", "head-by-head")
    ours = load_classifier(str(tiny_wav2vec2), device="cpu", precision="bf16")
    assert sdpa.model.config._attn_implementation == "sdpa"
    assert ours.model.config._attn_implementation == attention.NAME
    calls = []
    monkeypatch.setattr(attention, "attend", lambda *a: calls.append(1) or _original_attend(*a))
    got = ours.predict(windows)
    assert calls and len(calls) % ours.model.config.num_hidden_layers == 0  # every layer, every forward
    torch.testing.assert_close(got, sdpa.predict(windows), atol=0.02, rtol=0)


_original_attend = attention.attend


@pytest.mark.parametrize("choice", ["auto", "bogus"])
def test_auto_follows_the_cpu_and_fp32_keeps_sdpa(tiny_wav2vec2, monkeypatch, choice):
    monkeypatch.setenv("GENRETAG_ATTENTION", choice)
    bf16 = load_classifier(str(tiny_wav2vec2), device="cpu", precision="bf16")
    expected = attention.NAME if attention.cpu_prefers_head_by_head() else "sdpa"
    assert bf16.model.config._attn_implementation == expected
    fp32 = load_classifier(str(tiny_wav2vec2), device="cpu", precision="fp32")
    assert fp32.model.config._attn_implementation == "sdpa"


def test_a_model_with_eager_attention_is_left_alone(tiny_ast, monkeypatch):
    from transformers import AutoModelForAudioClassification

    monkeypatch.setenv("GENRETAG_ATTENTION", "head-by-head")
    model = AutoModelForAudioClassification.from_pretrained(str(tiny_ast), attn_implementation="eager")
    assert not attention.use_head_by_head_attention(model)
    assert model.config._attn_implementation == "eager"
    model = AutoModelForAudioClassification.from_pretrained(str(tiny_ast))
    assert attention.use_head_by_head_attention(model)
    assert model.config._attn_implementation == attention.NAME
