"""Step 3b: load a model once and turn batches of windows into per-window probabilities.

Every model genretag runs, a transformers checkpoint or the built-in musicnn port, offers the same
small interface (a *classifier*): ``model_id``, ``fingerprint``, ``sampling_rate``, ``labels``,
``multi_label``, ``default_min_confidence``, ``label_thresholds`` (``{label: threshold}`` chosen when the
model was trained, possibly empty), ``label_map``, ``device`` and
``predict(windows, lengths) -> probabilities``. The pipeline knows nothing else about models.

Models that compute embeddings (the built-in musicnn, and heads trained on it, :mod:`tagger.models.head`)
also offer ``predict_with_embeddings(windows, lengths) -> (probabilities, embeddings)``, and name their
embeddings with ``embedding_space`` and ``embedding_dim``. A head also has ``head_space`` (the space it
reads, None for every other model) and ``head_scores(track_embeddings)``: a scan scores its tracks from
their mean embedding, and from embeddings the index stored, without decoding.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from pathlib import Path

from ..errors import ModelError
from ..settings import ScanSettings
from .identity import (ModelIdentity, config_label_thresholds, config_min_confidence, hub_unreachable,
                       is_head_config, model_identity, refuse_unloadable_name, resolve_model_name,
                       weights_fingerprint)


def pick_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(device)


def pick_precision(precision: str, device) -> str:
    """``auto``: bf16 where the hardware computes it natively (CUDA, CPUs with AVX512-BF16/AMX), else fp32.

    On CPUs without native bf16, autocast to bf16 is hundreds of times slower than fp32, so auto never
    chooses it there.
    """
    import torch

    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise ModelError("--precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def autocast(device, precision: str):
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def load_classifier(model: str | None = None, device: str = "auto", precision: str = "auto",
                    labels: str | None = None, *, deferred: bool = False, level: str = ScanSettings.level):
    """Load the classifier for ``model`` (see :func:`resolve_model_name`), once per scan, with its
    label map ranking genres at ``level`` (``--level``).

    ``deferred``: where the model's identity can be read from its files alone (built-in models, local
    checkpoint folders), return a :class:`DeferredClassifier` that loads torch and the network only
    when something is first predicted — a rescan of an unchanged library then never does.
    """
    name = resolve_model_name(model)
    refuse_unloadable_name(name)
    label_map = default_label_map(name, labels, level)  # a bad --labels file is refused before anything loads
    if deferred and (identity := model_identity(name)):
        return DeferredClassifier(identity, label_map,
                                  lambda: load_classifier(name, device, precision, labels, level=level))
    return _load_now(name, device, precision, labels, level)


def default_label_map(name: str, labels: str | None, level: str = ScanSettings.level):
    """``--labels FILE`` if given, else the built-in model's own map, else every label kept as is, at
    ``level``: what a loaded classifier's ``label_map`` is."""
    from ..labels import builtin_label_map, identity_map, load_label_map

    if labels:
        label_map = load_label_map(labels)
    elif name.startswith("builtin:"):
        label_map = builtin_label_map(name.removeprefix("builtin:"))
    else:
        label_map = identity_map()
    return label_map.with_level(level)


def _load_now(name: str, device: str, precision: str, labels: str | None, level: str):
    dev = pick_device(device)
    prec = pick_precision(precision, dev)
    if name.startswith("builtin:"):
        classifier = _load_builtin(name.removeprefix("builtin:"), dev, prec)
    elif _is_head_folder(name):
        from .head import load_head

        classifier = load_head(name, dev, prec)
    else:
        classifier = HFClassifier.load(name, dev, prec)
    classifier.label_map = default_label_map(name, labels, level)
    return classifier


def _is_head_folder(name: str) -> bool:
    import json

    try:
        return is_head_config(json.loads((Path(name).expanduser() / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False


class DeferredClassifier:
    """A classifier that knows its identity at once and loads its network on first use.

    Everything but the identity and the label map (``predict``, ``device`` …) is the loaded
    classifier's; the load checks that the weights are still the ones the identity was read from.
    """

    def __init__(self, identity: ModelIdentity, label_map, load):
        self.model_id = identity.model_id
        self.label_map = label_map  # the driver of a Ray scan aggregates with it and loads no model
        self.fingerprint = identity.fingerprint
        self.labels = identity.labels
        self.default_min_confidence = identity.default_min_confidence
        self.multi_label = identity.multi_label
        self.label_thresholds = dict(identity.label_thresholds)
        self.head_space = identity.head_space  # a scan scores stored embeddings by it without loading
        if identity.embedding_space:  # and names the embeddings it stores (a Ray driver loads no model)
            self.embedding_space = identity.embedding_space
        if identity.sampling_rate:
            self.sampling_rate = identity.sampling_rate
        self._load = load
        self._loaded = None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def classifier(self):
        """The loaded classifier (loading it the first time)."""
        if self._loaded is None:
            classifier = self._load()
            if classifier.fingerprint != self.fingerprint:
                raise ModelError(f"model '{self.model_id}' changed on disk after the scan started (weights "
                                 f"fingerprint {self.fingerprint}, now {classifier.fingerprint}); scan again")
            self._loaded = classifier
        return self._loaded

    def __getattr__(self, name: str):  # only reached for what the identity does not hold
        if name.startswith("__") or name in ("_load", "_loaded"):
            raise AttributeError(name)
        return getattr(self.classifier(), name)


def _load_builtin(name: str, device, precision: str):
    try:
        from .musicnn import load_builtin
    except ImportError as exc:  # pragma: no cover - only without the built-in model files
        raise ModelError(f"the built-in model is not available ({exc}); pass --model with a "
                         "checkpoint folder or train one with `genretag train`") from None
    return load_builtin(name, device=device, precision=precision)


def segment_seconds(feature_extractor) -> float | None:
    """How much audio one forward pass of the model sees, if the extractor caps it.

    AST's extractor keeps ``max_length`` 10 ms frames (10.24 s); Whisper's pads or cuts to
    ``chunk_length`` seconds. Waveform models (wav2vec2, HuBERT) take the whole window.
    """
    kind = type(feature_extractor).__name__
    if kind.startswith("ASTFeatureExtractor"):
        return feature_extractor.max_length / 100.0
    if hasattr(feature_extractor, "chunk_length") and hasattr(feature_extractor, "n_samples"):
        return float(feature_extractor.chunk_length)
    return None


def plan_segments(valid: int, segment: int) -> list[int]:
    """Offsets of the model-sized segments that together cover ``valid`` samples of a window.

    Segments are spread evenly from the window's start to its end (overlapping a little when the
    window is not a multiple of the segment), so nothing in the window goes unseen.
    """
    if valid <= segment:
        return [0]
    count = math.ceil(valid / segment)
    step = (valid - segment) / (count - 1)
    return [round(i * step) for i in range(count)]


class HFClassifier:
    """A transformers ``AutoModelForAudioClassification`` checkpoint behind genretag's interface."""

    def __init__(self, model_id: str, model, feature_extractor, device, precision: str, fingerprint: str):
        from ..labels import identity_map

        config = model.config
        self.model_id = model_id
        self.model = model
        self.feature_extractor = feature_extractor
        self.device = device
        self.precision = precision
        self.fingerprint = fingerprint
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.multi_label = config.problem_type == "multi_label_classification"
        self.default_min_confidence = config_min_confidence(config)
        self.label_thresholds = config_label_thresholds(config, self.labels, model_id)
        self.label_map = identity_map()
        self.raw_waveform = type(feature_extractor).__name__ == "Wav2Vec2FeatureExtractor" and (
            feature_extractor.feature_size == 1)
        seconds = segment_seconds(feature_extractor)
        self.segment_samples = int(seconds * self.sampling_rate) if seconds else None

    @classmethod
    def load(cls, name: str, device, precision: str) -> "HFClassifier":
        """Load from a local folder, else from the hub cache, else from the hub; fail fast and clearly."""
        local = Path(name).expanduser()
        if local.is_dir():
            model, extractor = _from_pretrained(str(local), local_files_only=True)
            fingerprint = weights_fingerprint(local)
        elif local.exists() or name.startswith((".", "/", "~")):
            raise ModelError(f"model '{name}' is not a checkpoint folder")
        else:
            model, extractor = _load_hub(name)
            fingerprint = _hub_fingerprint(model, name)
        model.eval().to(device)
        from .feature_encoder import use_time_major_encoder, wants_time_major

        if wants_time_major(device):
            use_time_major_encoder(model)
        if device.type == "cpu" and precision == "bf16":
            from .attention import use_head_by_head_attention

            use_head_by_head_attention(model)
        fold_parametrizations(model)
        store_matmul_weights_in(model, precision)
        if device.type == "cuda":
            import torch

            # Windows have one fixed length, so cuDNN's autotuned convolution algorithms pay off at once
            # (wav2vec2's feature encoder is most of its GPU time).
            torch.backends.cudnn.benchmark = True
        return cls(name, model, extractor, device, precision, fingerprint)

    def predict(self, windows, lengths=None):
        """Probabilities ``[B, n_labels]`` for ``windows`` ``[B, N]``; segment results are averaged."""
        import torch

        if lengths is None:
            lengths = torch.full((windows.shape[0],), windows.shape[1])
        if self.device.type == "cuda":  # one pinned, asynchronous copy per batch
            windows = windows.pin_memory().to(self.device, non_blocking=True)
        segments, owners = [], []
        for i, valid in enumerate(lengths.tolist()):
            valid = max(int(valid), 1)
            size = self.segment_samples or valid
            for offset in plan_segments(valid, size):
                segments.append(windows[i, offset:offset + min(size, valid)])
                owners.append(i)
        probs = self._forward(segments)
        owner = torch.tensor(owners, device=probs.device)
        sums = torch.zeros(windows.shape[0], probs.shape[1], device=probs.device).index_add_(0, owner, probs)
        counts = torch.bincount(owner, minlength=windows.shape[0]).clamp(min=1).unsqueeze(1)
        return (sums / counts).cpu()

    def _forward(self, segments: list):
        """Probabilities per segment. Segments of equal length run together; different lengths run apart,
        because padding changes the output of models that take no attention mask (wav2vec2-base), and a
        track's result must not depend on which tracks share its batch."""
        import torch

        by_length: dict[int, list[int]] = {}
        for i, segment in enumerate(segments):
            by_length.setdefault(len(segment), []).append(i)
        out = None
        for members in by_length.values():
            inputs = self._inputs([segments[i] for i in members])
            with torch.inference_mode(), autocast(self.device, self.precision):
                logits = self.model(**inputs).logits.float()
            probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
            if out is None:
                out = probs.new_empty(len(segments), probs.shape[1])
            out[members] = probs
        return out

    def _inputs(self, segments: list) -> dict:
        """Model inputs for equal-length segments. Raw-waveform extractors (wav2vec2, HuBERT) only
        normalise each segment, which is done here in torch on the model's device, as the extractor does
        it (zero mean, unit variance, eps 1e-7). On CUDA, AST's filterbank runs there too, for the whole
        batch (:mod:`tagger.models.fbank`); on the CPU its extractor's own per-segment loop was faster (45 against
        60 ms for nine segments on 2 cores). Other extractors run as shipped."""
        import torch

        from . import fbank

        fe = self.feature_extractor
        if self.device.type == "cuda" and fbank.supports(fe):
            return {"input_values": fbank.ast_features(torch.stack(segments), fe)}
        if self.raw_waveform:
            batch = torch.stack(segments).to(self.device, non_blocking=True).float()
            if fe.do_normalize:
                mean = batch.mean(dim=1, keepdim=True)
                var = batch.var(dim=1, keepdim=True, unbiased=False)
                batch = (batch - mean) / torch.sqrt(var + 1e-7)
            return {"input_values": batch}
        inputs = fe([s.cpu().numpy() for s in segments], sampling_rate=self.sampling_rate, return_tensors="pt")
        return {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}


def fold_parametrizations(model) -> None:
    """Compute parametrized weights once, as plain weights, for inference.

    wav2vec2 and its kin weight-normalise their positional convolution: as a parametrization, its
    weight is recomputed from float32 parts at every forward (4.7 M values for wav2vec2-base, and
    their bf16 copy under autocast, for each batch in flight), always to the same tensor. Computed
    once, it is a plain weight that :func:`store_matmul_weights_in` can store in bf16 like the others;
    outputs do not change (tests/test_feature_encoder.py checks that bit for bit).
    """
    import torch
    import torch.nn.utils.parametrize as P

    with torch.no_grad():
        for module in model.modules():
            if P.is_parametrized(module):
                for name in list(module.parametrizations):
                    P.remove_parametrizations(module, name, leave_parametrized=True)


def store_matmul_weights_in(model, precision: str) -> None:
    """Keep the weights of linear and convolution layers in the autocast dtype (bf16/fp16) of
    ``precision``, rather than in float32.

    Autocast rounds those weights to that dtype at every call anyway (in inference mode it caches
    nothing): storing them rounded gives bit-identical outputs without the per-call copies (95 M
    parameters, ~40 ms per window for wav2vec2-base on CPU) and halves their memory. Convolutions still
    parametrized (see :func:`fold_parametrizations`) keep float32, since their weight is computed from
    float32 parts. A stored weight would meet a float32 input only where a forward switches autocast
    off, which none of the audio-classification architectures in transformers 5 (AST, wav2vec2 and its
    kin, Whisper) does.

    The few tensors left in float32 are then copied too: until nothing refers to it, the memory map of
    the safetensors file the model was loaded from stays mapped, and its pages resident (290 MB of RSS
    for wav2vec2-base).
    """
    import torch
    import torch.nn.utils.parametrize as P
    from torch import nn

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and not P.is_parametrized(module):
            module.to(dtype)
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.dtype != dtype:
                tensor.data = tensor.data.clone()


def _from_pretrained(name: str, **kwargs):
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # genretag reports its own progress; no per-load bars
    hf_logging.disable_progress_bar()

    try:
        extractor = AutoFeatureExtractor.from_pretrained(name, **kwargs)
        model = AutoModelForAudioClassification.from_pretrained(name, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model '{name}': {' '.join(str(exc).split())[:300]}") from None
    return model, extractor


def _load_hub(name: str):
    """A hub id: the local cache first (works offline), then the network, reported in one line."""
    try:
        return _from_pretrained(name, local_files_only=True)
    except ModelError:
        pass
    unreachable = f"model '{name}' is not a local checkpoint folder and could not be fetched from the " \
                  "Hugging Face hub"
    if reason := hub_unreachable():
        raise ModelError(f"{unreachable} ({reason}); pass a local checkpoint folder")
    try:
        return _from_pretrained(name)
    except ModelError as exc:
        raise ModelError(f"{unreachable} (unknown id?): {str(exc)[:200]}") from None


def _hub_fingerprint(model, name: str) -> str:
    """Hub checkpoints: hash the resolved snapshot folder's weights (the commit is in its path)."""
    folder = getattr(model, "name_or_path", None) or name
    if Path(folder).is_dir():
        return weights_fingerprint(folder)
    try:
        from huggingface_hub import snapshot_download

        return weights_fingerprint(snapshot_download(name, local_files_only=True))
    except Exception:
        return hashlib.sha256(name.encode()).hexdigest()[:16]
