"""Which model a name means and what identifies it, read from files alone (no torch, no transformers).

A scan needs a model's identity (id, weights fingerprint, labels, threshold) before anything heavy loads:
an unchanged library is then served from the index without importing torch, and a bad name is refused
at once. :mod:`tagger.models.infer` loads the network; :mod:`tagger.models.musicnn` reads the built-in
weights through :func:`read_builtin` here.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError
from ..settings import DEFAULT_MODEL, data_dir

FALLBACK_MIN_CONFIDENCE = 0.3
BUILTIN_EMBEDDING_LAYER = "penultimate"
"""The layer a loaded built-in model's embeddings come from (``tagger.models.musicnn.EMBEDDING_LAYERS``)."""
LABEL_THRESHOLDS_KEY = "genretag_label_thresholds"
"""A checkpoint's config.json key for its per-genre thresholds (genre -> threshold), if it has any."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def resolve_model_name(requested: str | None) -> str:
    """``--model`` > ``$GENRETAG_MODEL`` > the model chosen with ``genretag models use`` > the built-in
    model. Training a checkpoint never changes this by itself (``genretag train --make-default`` does)."""
    if requested:
        return requested
    if env := os.environ.get("GENRETAG_MODEL"):
        return env
    if chosen := chosen_default_model():
        return chosen
    return DEFAULT_MODEL


def registry_path() -> Path:
    return data_dir() / "models.json"


def _read_registry() -> dict:
    try:
        data = json.loads(registry_path().read_text())
    except (OSError, ValueError):
        return {"trained": []}
    return data if isinstance(data, dict) else {"trained": []}


def _write_registry(data: dict) -> None:
    reg = registry_path()
    reg.parent.mkdir(parents=True, exist_ok=True)
    tmp = reg.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, reg)


def chosen_default_model() -> str | None:
    """The model ``genretag models use`` (or ``train --make-default``) chose, if any. A chosen folder that
    has gone is still returned: loading it then fails and says so, rather than a scan silently tagging
    with another model."""
    chosen = _read_registry().get("default")
    return chosen if isinstance(chosen, str) and chosen else None


def register_trained_model(path: str | os.PathLike, info: dict | None = None) -> None:
    """Record a new checkpoint, so ``genretag models`` lists it. It does not become the default."""
    data = _read_registry()
    data.setdefault("trained", []).append({"path": os.path.abspath(path), **(info or {})})
    _write_registry(data)


def use_model(name: str) -> str:
    """Make ``name`` (``builtin:NAME`` or a checkpoint folder) the model of later scans; returns the name
    stored (a folder as an absolute path). Refuses what cannot be identified from its files."""
    if name.startswith("builtin:"):
        if model_identity(name) is None:
            raise ModelError(f"no built-in model '{name}'")
        stored = name
    else:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ModelError(f"{name}: no such checkpoint folder")
        if model_identity(str(folder)) is None:
            raise ModelError(f"{name}: not a usable checkpoint folder (no config.json with labels, or its "
                             "backbone changed); `genretag scan --model` on it says more")
        stored = os.path.abspath(folder)
    data = _read_registry()
    data["default"] = stored
    if not stored.startswith("builtin:") and stored not in {e.get("path") for e in data.get("trained", [])}:
        data.setdefault("trained", []).append({"path": stored})
    _write_registry(data)
    return stored


@dataclass(frozen=True)
class ModelIdentity:
    """What the index needs of a model to tell which tracks it has already predicted."""

    model_id: str
    fingerprint: str
    labels: list[str]
    default_min_confidence: float
    sampling_rate: int | None = None  # where the files say it: a Ray driver then never loads the model
    multi_label: bool = False  # sigmoid outputs; the label map scores genres by it (tagger.labels)
    label_thresholds: dict[str, float] = field(default_factory=dict)  # per-label, chosen when trained
    embedding_space: str | None = None  # where the model computes embeddings: the space they are in
    head_space: str | None = None  # a head's: the embedding space it scores (its backbone's), else None


def model_identity(name: str) -> ModelIdentity | None:
    """The identity of the model ``name`` read from its files, without torch or transformers; None for
    models only loading can identify (hub ids, whose snapshot the hub library resolves), and for
    folders that loading would refuse (a head whose backbone changed)."""
    if name.startswith("builtin:"):
        try:
            config, weights = read_builtin(name.removeprefix("builtin:"))
        except ModelError:
            return None  # loading reports it, naming the models there are
        fingerprint = builtin_fingerprint(weights)
        return ModelIdentity(name, fingerprint, list(config["labels"]),
                             float(config["default_min_confidence"]), int(config["sample_rate"]),
                             bool(config["multi_label"]),  # no per-genre thresholds: musicnn has none
                             embedding_space=embedding_space(name, fingerprint, BUILTIN_EMBEDDING_LAYER))
    folder = Path(name).expanduser()
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        labels = config_labels(config)
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None  # not a checkpoint folder, or a broken one: loading says which
    head_space = None
    if is_head_config(config):
        if head_backbone_problem(config):
            return None
        backbone = config["backbone"]
        rate = int(read_builtin(backbone["model_id"].removeprefix("builtin:"))[0]["sample_rate"])
        head_space = embedding_space(backbone["model_id"], backbone["fingerprint"], backbone.get("layer", ""))
        if config.get("embedding_space") != head_space:
            return None  # loading refuses it, saying why
    else:
        try:
            extractor = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
            rate = int(extractor["sampling_rate"])
        except (OSError, ValueError, KeyError, TypeError):
            rate = None
    return ModelIdentity(name, weights_fingerprint(folder), labels, config_min_confidence(config), rate,
                         config.get("problem_type") == "multi_label_classification",
                         config_label_thresholds(config, labels, name), head_space, head_space)


def config_labels(config: dict) -> list[str]:
    """The labels of a checkpoint's config.json, in output order (``id2label``)."""
    id2label = {int(k): v for k, v in config["id2label"].items()}
    return [id2label[i] for i in range(len(id2label))]


def config_min_confidence(config) -> float:
    """``genretag_min_confidence`` of a checkpoint's config (a dict or a transformers config), chosen when
    it was trained; checkpoints without one get :data:`FALLBACK_MIN_CONFIDENCE`. 0 is a valid choice."""
    value = config.get("genretag_min_confidence") if isinstance(config, dict) else getattr(
        config, "genretag_min_confidence", None)
    return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else FALLBACK_MIN_CONFIDENCE


def config_label_thresholds(config, labels: list[str], model_id: str = "") -> dict[str, float]:
    """``genretag_label_thresholds`` ({label: threshold}) of a checkpoint's config (a dict or a
    transformers config), for its own labels; empty when it has none (``default_min_confidence`` then
    holds for every label). Thresholds that are not numbers from 0 to 1 stop the load with one line
    (:class:`ModelError`), before anything is predicted or written."""
    value = config.get(LABEL_THRESHOLDS_KEY) if isinstance(config, dict) else getattr(
        config, LABEL_THRESHOLDS_KEY, None)
    if value is None:
        return {}
    if not (isinstance(value, dict) and all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in value.values())):
        raise ModelError(f"model '{model_id}': its per-genre thresholds ({LABEL_THRESHOLDS_KEY}) must map "
                         f"labels to numbers from 0 to 1, not {str(value)[:80]}")
    return {label: float(t) for label, t in value.items() if label in labels}


# -- trained heads ----------------------------------------------------------------------------------------
HEAD_MODEL_TYPE = "genretag-head"
"""``model_type`` in the config.json of a head checkpoint (:mod:`tagger.models.head`): a classifier
trained on the embeddings of a built-in model, which the folder names but does not contain."""
HEAD_WEIGHTS = "head.safetensors"


def is_head_config(config: dict) -> bool:
    return isinstance(config, dict) and config.get("model_type") == HEAD_MODEL_TYPE


def head_backbone_problem(config: dict) -> str | None:
    """Why the head of ``config`` cannot run on the installed backbone, or None if it can: it was trained
    on embeddings of that backbone's weights, which the fingerprint names."""
    try:
        backbone = config["backbone"]
        model_id, recorded = str(backbone["model_id"]), str(backbone["fingerprint"])
    except (KeyError, TypeError):
        return "config.json names no backbone (model_id and fingerprint)"
    if not model_id.startswith("builtin:"):
        return f"its backbone {model_id!r} is not a built-in model"
    try:
        installed = builtin_fingerprint(read_builtin(model_id.removeprefix("builtin:"))[1])
    except ModelError as err:
        return str(err)
    if installed != recorded:
        return (f"it was trained on {model_id} weights {recorded}, but the installed {model_id} has weights "
                f"{installed}; train it again (genretag train DATA --base-model {model_id})")
    return None


def embedding_space(model_id: str, fingerprint: str, layer: str) -> str:
    """The name of an embedding space: the model, its weights and the layer, e.g.
    ``builtin:musicnn-msd@0123456789abcdef/penultimate``. Embeddings compare only within one space."""
    return f"{model_id}@{fingerprint}/{layer}"


def read_builtin(name: str) -> tuple[dict, bytes]:
    """A built-in model's config.json and model.safetensors bytes, from the package (a wheel or a zip
    too). Torch-free, so a scan can identify the model without loading it."""
    from importlib import resources

    folder = resources.files("tagger") / "builtin" / name
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return config, (folder / "model.safetensors").read_bytes()
    except (OSError, ValueError) as err:
        raise ModelError(f"builtin:{name}: model files missing or unreadable ({err})") from None


def builtin_fingerprint(weights: bytes) -> str:
    return hashlib.sha256(weights).hexdigest()[:16]


def weights_fingerprint(folder: str | os.PathLike) -> str:
    """First 16 hex digits of the SHA-256 over the checkpoint's weight files (names and bytes), its labels
    in output order (``id2label``), and for a head checkpoint its backbone's id and weights fingerprint.

    The index keys predictions by this, so a retrained model in the same folder re-predicts, and so do a
    checkpoint whose labels were renamed (the stored rankings name the old ones) and a head once its
    backbone changes.
    """
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.suffix in WEIGHT_SUFFIXES:
            digest.update(path.name.encode())
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    try:
        digest.update(("\0labels\0" + json.dumps(config_labels(config))).encode())
    except (KeyError, TypeError, ValueError, AttributeError):
        pass  # no labels to read: loading says what is wrong with the folder
    if is_head_config(config):
        backbone = config.get("backbone") or {}
        digest.update(f"\0backbone\0{backbone.get('model_id')}@{backbone.get('fingerprint')}".encode())
    return digest.hexdigest()[:16]


def builtin_names() -> list[str]:
    """The built-in models shipped in the package (``tagger/builtin/<name>/``, what
    :func:`tagger.models.musicnn.load_builtin` reads). Listed from the folder rather than from
    ``tagger.models.musicnn.BUILTIN_MODELS``, whose import loads torch (seconds); a test keeps the two equal."""
    from importlib import resources

    try:
        folder = resources.files("tagger") / "builtin"
        return sorted(p.name for p in folder.iterdir()
                      if (p / "config.json").is_file() and (p / "model.safetensors").is_file())
    except OSError:
        return []


def refuse_unloadable_name(name: str) -> None:
    """Refuse at once (:class:`ModelError`), with nothing heavy imported, a model name that cannot load:
    an unknown ``builtin:`` name, a path that is not a folder, or a hub id that is neither in the local
    Hugging Face cache nor reachable. Loading torch and transformers takes seconds; a typo should not.
    What is wrong inside a checkpoint folder, loading says."""
    if name.startswith("builtin:"):
        if name.removeprefix("builtin:") not in builtin_names():
            known = ", ".join(f"builtin:{n}" for n in builtin_names())
            raise ModelError(f"unknown built-in model '{name}'; the built-in models are {known}")
        return
    local = Path(name).expanduser()
    if local.is_dir():
        return
    if local.exists() or name.startswith((".", "/", "~")):
        raise ModelError(f"model '{name}' is not a checkpoint folder")
    if hub_cached(name):
        return
    if reason := hub_unreachable():
        raise ModelError(f"model '{name}' is not a local checkpoint folder nor in the Hugging Face cache, and "
                         f"the hub cannot be reached ({reason}); pass a local checkpoint folder")


def hub_cached(name: str) -> bool:
    """Whether the hub id ``name`` has a config in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except (HFValidationError, ValueError):
        raise ModelError(f"model '{name}' is neither a checkpoint folder nor a valid hub id") from None


def hub_unreachable(timeout: float = 1.0) -> str | None:
    """Why the hub cannot be reached, or None. Checked up front because huggingface_hub retries a dead
    network with back-off for minutes before it gives up; a connection to the hub takes well under a
    second where it works."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as exc:
        return f"{url.hostname} unreachable: {exc.strerror or exc}"
    return None
