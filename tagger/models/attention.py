"""Self-attention for bf16 inference on CPUs without Intel AMX: one head at a time, as plain matrix
products, instead of torch's fused CPU flash-attention kernel.

Without AMX, torch's CPU flash-attention kernel runs far below the matmul rate (its packed-brgemm path,
``cpublas::need_pack``, is AMX's; elsewhere its small blocks go through generic products). On a 2-core
AMD EPYC (Zen 5, AVX512-BF16, no AMX) it ran wav2vec2-base's attention ([1, 12, 1499, 64] bf16) at 84
GFLOP/s on one thread, 45 % of the model's time, while one head's [1499, 64] x [64, 1499] product alone
runs at about 400. Here each head's scores for ``ROW_BLOCK_ELEMENTS / keys`` queries at a time (a block
that stays in cache) are one product, a softmax and a second product: 36-43 ms per layer instead of
82-98, and a 30 s wav2vec2-base window in 1.61 s instead of 2.27 s.

The scores are rounded to bf16 before the softmax, where the flash kernel keeps them in float32
(the softmax itself, like the flash kernel's, computes in float32 and gives bf16 probabilities). On
wav2vec2-base that moved the largest class probability 2.9e-4 from float32 against flash's 2.4e-4
(distilhubert 8.2e-5 against 9.5e-5, AST 9.3e-4 against 9.6e-4, the same top-1 everywhere).

:func:`use_head_by_head_attention` installs it, through transformers' ``AttentionInterface``, on a
model whose attention is ``sdpa``, and only on CPUs where it applies: native bf16 without AMX. Any
call it does not cover (a mask, dropout, gradients, causal attention, another device or dtype) goes
to transformers' own sdpa function. ``GENRETAG_ATTENTION=sdpa`` keeps sdpa everywhere.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

NAME = "genretag_head_by_head"
ROW_BLOCK_ELEMENTS = 768 * 1024
"""Scores per product (1.5 MiB in bf16): 524 queries x 1,499 keys for wav2vec2. On the EPYC, blocks of
512 queries ran 36-43 ms per layer, 768 ran 66 and whole heads (1,499) 82-100."""


def use_head_by_head_attention(model: torch.nn.Module) -> bool:
    """Switch ``model`` (a transformers model on CPU, about to run in bf16) to head-by-head attention
    where this CPU gains from it; True if it now uses it."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa" or not _wanted():
        return False
    register()
    try:
        model.set_attn_implementation(NAME)
    except (AttributeError, ValueError) as exc:  # a model that does not dispatch through the interface
        log.debug("keeping sdpa attention for %s: %s", type(model).__name__, exc)
        return False
    return config._attn_implementation == NAME


def _wanted() -> bool:
    """``GENRETAG_ATTENTION``: ``auto`` (default) by :func:`cpu_prefers_head_by_head`; ``sdpa`` never;
    ``head-by-head`` always (to measure it on a CPU with AMX)."""
    choice = os.environ.get("GENRETAG_ATTENTION", "auto")
    if choice not in ("auto", "sdpa", "head-by-head"):
        log.warning("GENRETAG_ATTENTION=%s is not auto, sdpa or head-by-head; using auto", choice)
        choice = "auto"
    return choice == "head-by-head" or (choice == "auto" and cpu_prefers_head_by_head())


def cpu_prefers_head_by_head() -> bool:
    """Native bf16 products (AVX512-BF16) without AMX, where torch's flash kernel has no brgemm path."""
    from .native import cpu_has_amx_bf16

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and not cpu_has_amx_bf16()


def register() -> None:
    """Make :data:`NAME` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, head_by_head_attention)


def head_by_head_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                           value: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float = 0.0,
                           scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: [B, H, Tq, D] query, [B, H, Tk, D] key and value ->
    ([B, Tq, H, D] output, None), like its ``sdpa_attention_forward``, which handles what this does not."""
    if not _covers(module, query, key, value, attention_mask, dropout, kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    return attend(query, key, value, query.shape[-1] ** -0.5 if scaling is None else scaling), None


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
    """softmax(q k^T * scaling) v for every batch item and head: [B, H, Tq, D] x 3 -> [B, Tq, H, D].

    The scaling is applied to the queries (exact for a power of two, such as 64 ** -0.5)."""
    batch, heads, queries, _ = query.shape
    keys = key.shape[2]
    out = query.new_empty(batch, queries, heads, value.shape[-1])
    rows = max(1, ROW_BLOCK_ELEMENTS // keys)
    for b in range(batch):
        for h in range(heads):
            scaled, keys_t, values = query[b, h] * scaling, key[b, h].t(), value[b, h]
            for start in range(0, queries, rows):
                scores = torch.mm(scaled[start:start + rows], keys_t)
                torch.mm(torch.softmax(scores, dim=-1), values, out=out[b, start:start + rows, h])
    return out


def _covers(module, query, key, value, attention_mask, dropout, kwargs) -> bool:
    """Plain, unmasked, non-causal inference self- or cross-attention in bf16 on CPU."""
    return (attention_mask is None and not dropout and not torch.is_grad_enabled()
            and query.device.type == "cpu" and query.dtype == key.dtype == value.dtype == torch.bfloat16
            and query.shape[1] == key.shape[1] == value.shape[1] and key.shape[2] == value.shape[2]
            and not kwargs.get("is_causal", getattr(module, "is_causal", True))  # transformers' default
            and kwargs.get("position_bias") is None and not kwargs.get("output_attentions")
            and kwargs.get("softcap") is None)
