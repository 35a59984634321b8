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
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..settings import DEFAULT_MODEL, data_dir

FALLBACK_MIN_CONFIDENCE = 0.3
LABEL_THRESHOLDS_KEY = "genretag_label_thresholds"
"""A checkpoint's config.json key for its per-genre thresholds (genre -> threshold), if it has any."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def resolve_model_name(requested: str | None) -> str:
    """``--model`` > ``$GENRETAG_MODEL`` > the last ``genretag train`` output > the built-in model."""
    if requested:
        return requested
    if env := os.environ.get("GENRETAG_MODEL"):
        return env
    if trained := latest_trained_model():
        return trained
    return DEFAULT_MODEL


def registry_path() -> Path:
    return data_dir() / "models.json"


def latest_trained_model() -> str | None:
    """The checkpoint most recently registered by ``genretag train``, if it still exists."""
    try:
        entries = json.loads(registry_path().read_text())["trained"]
    except (OSError, ValueError, KeyError):
        return None
    for entry in reversed(entries):
        if Path(entry["path"]).is_dir():
            return entry["path"]
    return None


def register_trained_model(path: str | os.PathLike, info: dict | None = None) -> None:
    """Record a new checkpoint so later scans use it by default."""
    reg = registry_path()
    try:
        data = json.loads(reg.read_text())
    except (OSError, ValueError):
        data = {"trained": []}
    data.setdefault("trained", []).append({"path": os.path.abspath(path), **(info or {})})
    reg.parent.mkdir(parents=True, exist_ok=True)
    tmp = reg.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, reg)


@dataclass(frozen=True)
class ModelIdentity:
    """What the index needs of a model to tell which tracks it has already predicted."""

    model_id: str
    fingerprint: str
    labels: list[str]
    default_min_confidence: float
    sampling_rate: int | None = None  # where the files say it: a Ray driver then never loads the model
    multi_label: bool = False  # sigmoid outputs; the label map scores genres by it (tagger.labels)
    label_thresholds: dict[str, float] | None = None  # per-genre thresholds a checkpoint carries


def model_identity(name: str) -> ModelIdentity | None:
    """The identity of the model ``name`` read from its files, without torch or transformers; None for
    models only loading can identify (hub ids, whose snapshot the hub library resolves)."""
    if name.startswith("builtin:"):
        try:
            config, weights = read_builtin(name.removeprefix("builtin:"))
        except ModelError:
            return None  # loading reports it, naming the models there are
        return ModelIdentity(name, builtin_fingerprint(weights), list(config["labels"]),
                             float(config["default_min_confidence"]), int(config["sample_rate"]),
                             bool(config["multi_label"]))  # no per-genre thresholds: musicnn has none
    folder = Path(name).expanduser()
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        id2label = {int(k): v for k, v in config["id2label"].items()}
        labels = [id2label[i] for i in range(len(id2label))]
    except (OSError, ValueError, KeyError, AttributeError):
        return None  # not a checkpoint folder, or a broken one: loading says which
    try:
        extractor = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
        rate = int(extractor["sampling_rate"])
    except (OSError, ValueError, KeyError, TypeError):
        rate = None
    return ModelIdentity(name, weights_fingerprint(folder), labels,
                         config.get("genretag_min_confidence") or FALLBACK_MIN_CONFIDENCE, rate,
                         config.get("problem_type") == "multi_label_classification",
                         config.get(LABEL_THRESHOLDS_KEY))


def checked_label_thresholds(model_id: str, thresholds) -> dict[str, float] | None:
    """A checkpoint's per-genre thresholds (:data:`LABEL_THRESHOLDS_KEY`), or a one-line
    :class:`ModelError` when they are not genre names mapped to numbers from 0 to 1."""
    if thresholds is None:
        return None
    if not (isinstance(thresholds, dict) and all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in thresholds.values())):
        raise ModelError(f"model '{model_id}': its per-genre thresholds ({LABEL_THRESHOLDS_KEY}) must map genre "
                         f"names to numbers from 0 to 1, not {str(thresholds)[:80]}")
    return {str(genre): float(t) for genre, t in thresholds.items()}


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
    """First 16 hex digits of the SHA-256 over the checkpoint's weight files (names and bytes).

    The index keys predictions by this, so a retrained model in the same folder re-predicts.
    """
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.suffix in WEIGHT_SUFFIXES:
            digest.update(path.name.encode())
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]
