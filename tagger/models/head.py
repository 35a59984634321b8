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
and one made later from the stored embedding are the same. So that they are the same to the last bit,
each row is computed on its own terms: a matrix product's sums run in an order that depends on how many
rows share the call (on a 2-core EPYC, torch's float32 ``@`` gave logits 1.3e-5 apart for one row and for
2,000), so the products are summed per row in float64 and the softmax is taken in float64; a track's
scores then do not depend on the other tracks of its batch (a scan scores one, a relabel thousands).

Track scores. A scan scores a head's track as ``head_scores`` of the mean of its window embeddings. The
head is affine in the embedding, so that is the softmax of the mean of the per-window logits, and also
the *normalised geometric mean* of the per-window probabilities that :meth:`HeadClassifier.predict`
returns (``softmax(mean_w log p_w)``: each window's log-normaliser is a constant that the softmax
cancels), up to the float16 rounding of the embeddings: :func:`geometric_track_scores`.

The backbone network is loaded on the first window to predict: scoring stored embeddings needs only the
head (a relabel of an indexed library never loads it).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError
from ..labels import identity_map
from .identity import (HEAD_WEIGHTS, config_label_thresholds, config_labels, config_min_confidence,
                       embedding_space, head_backbone_problem, is_head_config, read_builtin, weights_fingerprint)

FLOAT16_MAX = 65504.0
HEAD_TENSORS = ("mean", "scale", "weight", "bias")
SCORE_ROWS = 1024  # embeddings scored per step: a [1024, L, D] float64 product (16 MB at 10 x 200)


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

    ``predict(windows, lengths)`` gives each window's ``head_scores`` of its own embedding (the
    per-window display); a track's score is ``head_scores`` of its mean embedding (``head_space`` tells
    the pipeline so). The backbone loads when a window is first predicted, never for ``head_scores``.
    """

    multi_label = False
    track_reduction = "geometric"

    def __init__(self, model_id: str, folder: Path, config: dict, tensors: dict[str, torch.Tensor], load_backbone,
                 sampling_rate: int, device, precision: str):
        self.model_id = model_id
        self.folder = folder
        self.config = config
        self.fingerprint = weights_fingerprint(folder)
        self.sampling_rate = sampling_rate
        self.labels = config_labels(config)
        self.default_min_confidence = config_min_confidence(config)
        self.label_thresholds = config_label_thresholds(config, self.labels, self.model_id)
        self.label_map = identity_map()
        self.device = device
        self.precision = precision
        self.embedding_space = self.head_space = config["embedding_space"]
        self.embedding_dim = int(config["embedding_dim"])
        self.mean, self.scale, self.weight, self.bias = (tensors[name].float() for name in HEAD_TENSORS)
        self._weight64 = self.weight.double().numpy()
        self._bias64 = self.bias.double().numpy()
        self._load_backbone = load_backbone
        self._backbone = None
        self._backbone_lock = threading.Lock()

    @property
    def backbone(self):
        """The built-in network the head reads (loaded on first use; two predicting threads load it once)."""
        with self._backbone_lock:
            if self._backbone is None:
                self._backbone = self._load_backbone()
            return self._backbone

    @property
    def backbone_loaded(self) -> bool:
        return self._backbone is not None

    def head_logits(self, embeddings) -> np.ndarray:
        """[N, D] embeddings (float16 or float32, numpy or torch) -> [N, L] float64 logits, each row
        summed on its own (the module docstring says why)."""
        x = ((round_to_float16(torch.as_tensor(embeddings).cpu()) - self.mean) / self.scale).double().numpy()
        logits = np.empty((x.shape[0], self._weight64.shape[0]))
        for start in range(0, x.shape[0], SCORE_ROWS):
            rows = x[start:start + SCORE_ROWS]
            logits[start:start + SCORE_ROWS] = (rows[:, None, :] * self._weight64[None]).sum(axis=-1)
        return logits + self._bias64

    def head_scores(self, track_embeddings):
        """[N, D] track-level embeddings (each the mean of a track's window embeddings; float16 or
        float32) -> [N, L] float32 probabilities, numpy for numpy input, else a torch tensor. The
        embeddings are rounded to float16 first, as an index stores them; a row's scores do not depend
        on the other rows."""
        logits = self.head_logits(track_embeddings)
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
        return torch.from_numpy(probs) if isinstance(track_embeddings, torch.Tensor) else probs

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
    """Load the head checkpoint folder ``name``; its built-in backbone loads when first needed. Refuses,
    in one line, a head whose backbone is not the installed one, or whose tensors do not fit its config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(name).expanduser()
    config = read_head_config(folder)
    if config is None:
        raise ModelError(f"{name}: not a head checkpoint (config.json with model_type genretag-head)")
    if problem := head_backbone_problem(config):
        raise ModelError(f"{name}: cannot use this head: {problem}")
    try:
        tensors = load_file(folder / HEAD_WEIGHTS)
        labels = config_labels(config)
        dim = int(config["embedding_dim"])
    except (OSError, SafetensorError, ValueError, KeyError, AttributeError, TypeError) as err:
        raise ModelError(f"{name}: unreadable head checkpoint ({err})") from None
    backbone = config["backbone"]
    backbone_id, layer = backbone["model_id"], backbone.get("layer", "")
    space = embedding_space(backbone_id, backbone["fingerprint"], layer)
    if config.get("embedding_space") != space:
        raise ModelError(f"{name}: trained on embeddings {config.get('embedding_space')!r}, but the backbone "
                         f"computes {space!r}")
    expected = {"mean": (dim,), "scale": (dim,), "weight": (len(labels), dim), "bias": (len(labels),)}
    shapes = {k: tuple(tensors[k].shape) for k in HEAD_TENSORS if k in tensors}
    if shapes != expected:
        raise ModelError(f"{name}: head tensors {shapes} do not fit {len(labels)} labels on "
                         f"{space} ({dim}-d); expected {expected}")

    def load_backbone():
        from .musicnn import load_builtin

        loaded = load_builtin(backbone_id.removeprefix("builtin:"), device=device, precision=precision,
                              embedding_layer=layer)
        if (loaded.embedding_space, loaded.embedding_dim) != (space, dim):
            raise ModelError(f"{name}: the head reads {dim}-d embeddings {space!r}, the backbone computes "
                             f"{loaded.embedding_dim}-d {loaded.embedding_space!r}")
        return loaded

    rate = int(read_builtin(backbone_id.removeprefix("builtin:"))[0]["sample_rate"])
    return HeadClassifier(name, folder, config, tensors, load_backbone, rate, device, precision)
