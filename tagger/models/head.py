"""A genre classifier trained on the built-in musicnn model's embeddings (``genretag train DATA
--base-model builtin:musicnn-msd``): the built-in network computes features, a small linear head
trained on the user's genres turns them into genre probabilities.

The checkpoint folder holds no network, only what the head adds to the built-in one:

* ``config.json``: ``model_type`` ``genretag-head``, the ``backbone`` (its model id, weights fingerprint
  and embedding layer), ``embedding_space``, ``embedding_dim``, ``id2label``/``label2id``, the
  thresholds chosen on cross-validated predictions (``genretag_min_confidence``,
  ``genretag_label_thresholds``) and facts about the fit (``head``).
* ``head.safetensors`` (no pickle): ``mean`` and ``scale`` [D] (the standardisation fitted on the
  training embeddings), ``weight`` [L, D] and ``bias`` [L] (a multinomial logistic regression, with the
  temperature chosen on cross-validated predictions already folded in).

Scores: ``head_scores(e) = softmax(((fp16(e) - mean) / scale) @ weight.T + bias)``, where ``fp16`` rounds
the embedding to float16 first, because that is how an index stores embeddings: a prediction made now
and one made later from the stored embedding are the same.

Track scores. The head is affine in the embedding, so the head's score of a track's mean embedding,
``head_scores(mean_w e_w)``, is the softmax of the mean of the per-window logits, and that is also the
*normalised geometric mean* of the per-window probabilities that :meth:`HeadClassifier.predict`
returns (``softmax(mean_w log p_w)``: each window's log-normaliser is a constant that the softmax
cancels), up to the float16 rounding of the embeddings. ``track_reduction = "geometric"`` says so,
and :func:`geometric_track_scores` computes it; the pipeline's arithmetic mean of the window
probabilities agrees exactly for one-window tracks and closely otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ModelError
from ..labels import identity_map
from .identity import (HEAD_WEIGHTS, config_label_thresholds, config_labels, config_min_confidence,
                       head_backbone_problem, is_head_config, weights_fingerprint)

FLOAT16_MAX = 65504.0
HEAD_TENSORS = ("mean", "scale", "weight", "bias")


def round_to_float16(embeddings: torch.Tensor) -> torch.Tensor:
    """The float32 values of ``embeddings`` as float16 would store them (saturating, never inf)."""
    return embeddings.float().clamp(-FLOAT16_MAX, FLOAT16_MAX).to(torch.float16).float()


def geometric_track_scores(window_probs: torch.Tensor) -> torch.Tensor:
    """[W, L] per-window head probabilities -> [L] track probabilities ``softmax(mean_w log p_w)``: what
    :meth:`HeadClassifier.head_scores` gives for the track's mean embedding (up to float16 rounding)."""
    logs = torch.log(window_probs.float().clamp(min=torch.finfo(torch.float32).tiny))
    return torch.softmax(logs.mean(dim=0), dim=-1)


class HeadClassifier:
    """A head checkpoint behind genretag's classifier interface (see :mod:`tagger.models.infer`).

    ``predict(windows, lengths)`` gives each window's ``head_scores`` of its own embedding (for the
    per-window display, and for the pipeline's mean over windows). The track score of a head model
    should be ``head_scores(mean embedding)`` (``track_reduction``: see the module docstring).
    """

    multi_label = False
    track_reduction = "geometric"

    def __init__(self, model_id: str, folder: Path, config: dict, tensors: dict[str, torch.Tensor], backbone):
        self.model_id = model_id
        self.folder = folder
        self.config = config
        self.fingerprint = weights_fingerprint(folder)
        self.backbone = backbone
        self.sampling_rate = backbone.sampling_rate
        self.labels = config_labels(config)
        self.default_min_confidence = config_min_confidence(config)
        self.label_thresholds = config_label_thresholds(config, self.labels, self.model_id)
        self.label_map = identity_map()
        self.device = backbone.device
        self.precision = backbone.precision
        self.embedding_space = backbone.embedding_space
        self.embedding_dim = backbone.embedding_dim
        self.mean, self.scale, self.weight, self.bias = (tensors[name].float() for name in HEAD_TENSORS)

    def head_logits(self, embeddings) -> torch.Tensor:
        """[N, D] embeddings (float16 or float32, numpy or torch) -> [N, L] float32 logits."""
        x = round_to_float16(torch.as_tensor(embeddings).cpu())
        return ((x - self.mean) / self.scale) @ self.weight.T + self.bias

    def head_scores(self, track_embeddings):
        """[N, D] track-level embeddings (each the mean of a track's window embeddings; float16 or
        float32) -> [N, L] float32 probabilities, numpy for numpy input, else a torch tensor. The
        embeddings are rounded to float16 first, as an index stores them."""
        probs = torch.softmax(self.head_logits(track_embeddings), dim=-1)
        return probs if isinstance(track_embeddings, torch.Tensor) else probs.numpy()

    def predict_with_embeddings(self, windows: torch.Tensor, lengths: torch.Tensor | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs [B, L], embeddings [B, D])`` float32 on CPU from one backbone forward pass: each
        window's head probabilities and its embedding (the mean over its 3 s patches)."""
        _, embeddings = self.backbone.predict_with_embeddings(windows, lengths)
        return self.head_scores(embeddings), embeddings

    def predict(self, windows: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.predict_with_embeddings(windows, lengths)[0]


def read_head_config(folder: Path) -> dict | None:
    """The config.json of a head checkpoint folder, or None for any other folder."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if is_head_config(config) else None


def load_head(name: str, device, precision: str) -> HeadClassifier:
    """Load the head checkpoint folder ``name`` and its built-in backbone. Refuses, in one line, a head
    whose backbone is not the installed one, or whose tensors do not fit its config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .musicnn import load_builtin

    folder = Path(name).expanduser()
    config = read_head_config(folder)
    if config is None:
        raise ModelError(f"{name}: not a head checkpoint (config.json with model_type genretag-head)")
    if problem := head_backbone_problem(config):
        raise ModelError(f"{name}: cannot use this head: {problem}")
    try:
        tensors = load_file(folder / HEAD_WEIGHTS)
        labels = config_labels(config)
    except (OSError, SafetensorError, ValueError, KeyError, AttributeError) as err:
        raise ModelError(f"{name}: unreadable head checkpoint ({err})") from None
    backbone_id = config["backbone"]["model_id"]
    backbone = load_builtin(backbone_id.removeprefix("builtin:"), device=device, precision=precision,
                            embedding_layer=config["backbone"].get("layer", ""))
    expected = {"mean": (backbone.embedding_dim,), "scale": (backbone.embedding_dim,),
                "weight": (len(labels), backbone.embedding_dim), "bias": (len(labels),)}
    shapes = {k: tuple(tensors[k].shape) for k in HEAD_TENSORS if k in tensors}
    if shapes != expected:
        raise ModelError(f"{name}: head tensors {shapes} do not fit {len(labels)} labels on "
                         f"{backbone.embedding_space} ({backbone.embedding_dim}-d); expected {expected}")
    if config.get("embedding_space") != backbone.embedding_space:
        raise ModelError(f"{name}: trained on embeddings {config.get('embedding_space')!r}, but the backbone "
                         f"computes {backbone.embedding_space!r}")
    return HeadClassifier(name, folder, config, tensors, backbone)
