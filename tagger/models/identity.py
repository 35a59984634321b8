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
