"""Fine-tune an audio-classification checkpoint on labelled clips; the result is a folder that
``genretag scan --model DIR`` uses directly (and, with ``--make-default`` or ``genretag models use DIR``,
later scans by default). A built-in base model gets a head on its embeddings instead (:mod:`training.heads`).

The recipe is the classic one (wav2vec2 / AST / Whisper on GTZAN with the Hugging Face ``Trainer``:
lr 3e-5, 10 % warm-up, batch 8, 10 epochs, the best epoch by validation accuracy), with three changes:

* Clips are decoded once by the tagger's own decoder, at the feature extractor's rate, into the very
  windows a scan analyses (up to ``max_windows`` 30 s windows per track), and kept in memory as int16.
* Each training step sees a random crop of the model's input length (AST 10.24 s, Whisper and waveform
  models 30 s) from a random window, augmented on the fly: no copies of the data are materialized.
  All clips of a batch are cut to one length instead of zero-padded, because models that take no
  attention mask (wav2vec2-base) give different outputs for padded audio, and a scan never pads.
* The final numbers come from :mod:`training.evaluate`, which runs the saved checkpoint through
  :class:`tagger.pipeline.Tagger`: the same decoding, windows and aggregation as ``genretag scan``.
  The Trainer's per-epoch accuracy (one centre crop per clip) only picks the best epoch.
"""
from __future__ import annotations

import os
import platform
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from tagger.errors import GenretagError, ModelError
from tagger.settings import WINDOW_SECONDS

from .data import DataSettings, Dataset, Example, described_dataset

HEAD_PREFIXES = ("classifier", "projector", "head", "score")
"""Parameter-name prefixes of the classification head across audio models; --freeze-encoder keeps them."""

INT16_SCALE = 32767.0


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainSettings:
    """How to fine-tune. Each field's ``help`` is the CLI's help text for the option of that name."""

    output: str = _opt("", "Folder for the trained checkpoint (replaced if it holds an older one).")
    base_model: str = _opt("facebook/wav2vec2-base", "What to start from: builtin:musicnn-msd or "
                           "builtin:musicnn-mtt trains a head on the built-in model's embeddings (offline, "
                           "minutes on a CPU); a local folder or hub id of an audio-classification model "
                           "(wav2vec2, HuBERT, AST, Whisper, ...) is fine-tuned.")
    epochs: float = _opt(10.0, "Training epochs (the best one by validation accuracy is kept).")
    max_steps: int | None = _opt(None, "Stop after this many optimizer steps (overrides --epochs).")
    learning_rate: float = _opt(3e-5, "Peak learning rate.")
    lr_scheduler: str = _opt("linear", "Learning-rate decay after the warm-up: linear or cosine.")
    warmup_ratio: float = _opt(0.1, "Share of the steps spent warming the learning rate up.")
    batch_size: int = _opt(8, "Clips per device batch.")
    gradient_accumulation_steps: int = _opt(1, "Batches per optimizer step (effective batch = product).")
    augment: bool = _opt(True, "Augment training crops on the fly (noise, time shift, gain).")
    freeze_encoder: bool = _opt(False, "Train only the classification head; the pretrained encoder stays fixed.")
    patience: int = _opt(3, "Stop after this many epochs without a better validation score (accuracy, ties "
                            "broken by loss; 0: never).")
    crop_seconds: float | None = _opt(None, "Length of the training crops (default: the model's input "
                                            "length, AST 10.24 s, else 30 s).")
    max_windows: int = _opt(3, "Most 30 s windows used per track, the same windows a scan analyses.")
    cache_gb: float = _opt(8.0, "Decoded audio kept in memory (GB); clips beyond it are decoded per step.")
    workers: int | None = _opt(None, "Data-loading processes (default: 4 on CUDA, 0 on CPU).")
    make_default: bool = _opt(False, "Make the result the default model of later scans (or later: "
                                     "`genretag models use DIR`).")
    refit_all: bool = _opt(True, "Heads: once measured (cross-validation, test part), fit the head written on "
                                 "every labelled clip, the test part included, with the settings chosen; "
                                 "--no-refit-all writes the head the test part measured.")


FINE_TUNING_ONLY = ("epochs", "max_steps", "learning_rate", "lr_scheduler", "warmup_ratio", "batch_size",
                    "gradient_accumulation_steps", "augment", "freeze_encoder", "patience", "crop_seconds",
                    "cache_gb", "workers")
"""The options that only fine-tuning uses; a head on a built-in model ignores them."""


@dataclass
class TrainResult:
    output: Path
    dataset: Dataset
    metrics: dict
    seconds: float
    hardware: str
    command: str


# -- the whole run -----------------------------------------------------------------------------------------
def train(data: DataSettings, settings: TrainSettings, report: Callable[[str], None] = print) -> TrainResult:
    """Load and split the data, fine-tune, evaluate the best epoch the way ``scan`` runs it, write the
    checkpoint folder, list it in the model registry and (with ``settings.make_default``) make it the
    default model. A built-in base model gets a head trained on its embeddings instead
    (:mod:`training.heads`)."""
    from tagger.models.identity import register_trained_model, use_model

    from . import evaluate, metrics
    from .heads import is_head_base, train_head

    if is_head_base(settings.base_model):
        return train_head(data, settings, report)
    if not settings.refit_all:
        report("note: --no-refit-all applies to heads only; a fine-tuned checkpoint never trains on its test part")
    started = time.perf_counter()
    output = _check_output(settings.output)
    dataset = described_dataset(data, report)
    model, extractor = load_base_model(settings.base_model, dataset.labels, data.seed)
    report(f"base model {settings.base_model} ({type(model).__name__}), new head for {len(dataset.labels)} "
           f"genres: {', '.join(dataset.labels)}")
    if settings.freeze_encoder:
        freeze_encoder(model)
    store = ClipStore(int(extractor.sampling_rate), settings.max_windows, settings.cache_gb)
    bad = store.preflight([e for part in dataset.parts().values() for e in part],
                          on_error=lambda err: report(f"skipped {err}"))
    dataset = dataset.without(bad)
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    try:
        model, state = _fit(model, extractor, store, dataset, data, settings, staging, report)
        model.save_pretrained(staging)
        extractor.save_pretrained(staging)
        train_seconds = time.perf_counter() - started
        report("evaluating the best epoch with the tagger's own decoding, windows and aggregation")
        scores: dict = {}
        results = evaluate.evaluate_parts(staging, dataset, ("valid", "test"), on_skip=report, scores=scores)
        calibration = store_thresholds(staging, scores.get("valid"), report)
        hardware = describe_hardware()
        command = command_line(data, settings)
        metrics.write_artifacts(
            staging, results, dataset, info={
                "base_model": settings.base_model, "command": command, "hardware": hardware,
                "train_seconds": round(train_seconds, 1), "skipped_unreadable": sorted(bad),
                "settings": asdict(settings), "data": asdict(data), "calibration": calibration, **state})
        _replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not results:
        report("note: no held-out clips (every genre has fewer than 3): no accuracy was measured")
    headline = results.get("test") or results.get("valid") or {}
    register_trained_model(output, {
        "base_model": settings.base_model, "labels": dataset.labels, "split": headline.get("split"),
        "accuracy": headline.get("accuracy"), "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if settings.make_default:
        use_model(str(output))
    return TrainResult(output, dataset, results, time.perf_counter() - started, hardware, command)


def store_thresholds(folder: Path, valid, report: Callable[[str], None]) -> dict | None:
    """Choose the thresholds on the validation clips' scores (:mod:`training.calibration`) and store them
    in the checkpoint's config.json (``genretag_min_confidence``, ``genretag_label_thresholds``); returns
    what the model card records. Without validation clips the checkpoint keeps the fallback threshold."""
    import json

    from .calibration import choose_thresholds, expected_calibration_error, log_loss

    if not valid:
        report("note: no validation clips: the checkpoint keeps the fallback threshold")
        return None
    labels, true, probs = valid
    thresholds = choose_thresholds(probs, true, labels)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config.update(genretag_min_confidence=thresholds.global_threshold,
                  genretag_label_thresholds=thresholds.per_label)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return {"ece": expected_calibration_error(probs, true), "log_loss": log_loss(probs, true),
            "clips": int(len(true)), "measured_on": "valid", "thresholds": thresholds.as_dict()}


def _check_output(name: str) -> Path:
    if not name:
        raise GenretagError("--output is required: the folder the trained checkpoint goes to")
    output = Path(name).expanduser().absolute()
    if output.exists() and not output.is_dir():
        raise GenretagError(f"{output}: exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not (output / "config.json").is_file():
        raise GenretagError(f"{output}: folder is not empty and holds no checkpoint; choose another --output")
    output.parent.mkdir(parents=True, exist_ok=True)
    return output


def _replace_folder(staging: Path, output: Path) -> None:
    """Put the new checkpoint in place only once it is complete, so a failed run never leaves half a model
    where a scan would pick it up."""
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    if output.exists():
        output.rename(old)
    staging.rename(output)
    shutil.rmtree(old, ignore_errors=True)


# -- model -----------------------------------------------------------------------------------------------
def load_base_model(name: str, labels: list[str], seed: int):
    """The base checkpoint with a fresh head for ``labels`` (``label2id``/``id2label`` in its config)."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, set_seed
    from transformers.utils import logging as hf_logging

    from tagger.models.infer import hub_unreachable

    hf_logging.set_verbosity_error()  # the "newly initialized head" warning is the point of fine-tuning
    hf_logging.disable_progress_bar()  # per-load and per-save bars would bury the epoch lines
    set_seed(seed)  # the new head's initial weights
    kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                  label2id={label: i for i, label in enumerate(labels)},
                  problem_type="single_label_classification", ignore_mismatched_sizes=True)
    local = Path(name).expanduser()

    def load(source: str, **extra):
        extractor = AutoFeatureExtractor.from_pretrained(source, **extra)
        return AutoModelForAudioClassification.from_pretrained(source, **kwargs, **extra), extractor

    try:
        if local.is_dir():
            return load(str(local), local_files_only=True)
        if local.exists() or name.startswith((".", "/", "~")):
            raise ModelError(f"base model '{name}' is not a checkpoint folder")
        try:
            return load(name, local_files_only=True)
        except OSError:
            if reason := hub_unreachable():
                raise ModelError(f"base model '{name}' is neither a local folder nor in the hub cache, and "
                                 f"the hub cannot be reached ({reason})") from None
            return load(name)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load base model '{name}': {' '.join(str(exc).split())[:300]}") from None


def freeze_encoder(model) -> None:
    """Freeze everything but the head: the model's own method where it has one (wav2vec2, HuBERT:
    ``freeze_base_model``; Whisper: ``freeze_encoder``), else every parameter outside the head."""
    for method in ("freeze_base_model", "freeze_encoder"):
        if callable(getattr(model, method, None)):
            getattr(model, method)()
            break
    else:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(HEAD_PREFIXES))
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelError(f"--freeze-encoder left nothing to train in {type(model).__name__}")


def crop_seconds(extractor, requested: float | None) -> float:
    """The model's natural input length (AST 10.24 s, Whisper 30 s), capped at one 30 s window."""
    from tagger.models.infer import segment_seconds

    return requested or min(segment_seconds(extractor) or WINDOW_SECONDS, WINDOW_SECONDS)


# -- audio -----------------------------------------------------------------------------------------------
class ClipStore:
    """Decoded training audio: per clip the windows a scan would analyse, at the model's rate, mono.

    Kept in memory as int16 up to ``cache_gb``; clips past the budget are decoded again when drawn.
    """

    def __init__(self, sample_rate: int, max_windows: int, cache_gb: float):
        self.sample_rate = sample_rate
        self.max_windows = max_windows
        self.budget = int(cache_gb * 1e9)
        self.cache: dict[str, list] = {}
        self.cached_bytes = 0

    def decode(self, path: str) -> list:
        """The clip's windows as int16 tensors, trimmed to their decoded length."""
        import torch

        from tagger.decode import decode_file

        decoded = decode_file(path, self.sample_rate, self.max_windows)
        return [(w[:n] * INT16_SCALE).round().clamp(-32768, 32767).to(torch.int16)
                for w, n in zip(decoded.windows, decoded.lengths.tolist())]

    def preflight(self, examples: list[Example], on_error: Callable, workers: int | None = None) -> set[str]:
        """Decode every clip once (filling the cache): unreadable ones are reported and returned, so they
        are left out before training starts rather than failing it halfway."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        from tagger.errors import UnreadableFile

        def attempt(path):
            try:
                return path, self.decode(path), None
            except (UnreadableFile, OSError) as err:
                return path, None, err if isinstance(err, UnreadableFile) else UnreadableFile(path, str(err))

        bad: set[str] = set()
        paths = sorted({e.path for e in examples})
        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            for path, windows, err in tqdm(pool.map(attempt, paths), total=len(paths), desc="decoding clips",
                                           unit="clip", leave=False):
                if err is not None:
                    bad.add(path)
                    on_error(err)
                    continue
                size = sum(w.numel() * 2 for w in windows)
                if self.cached_bytes + size <= self.budget:
                    self.cache[path] = windows
                    self.cached_bytes += size
        return bad

    def windows(self, path: str) -> list:
        windows = self.cache.get(path)
        return windows if windows is not None else self.decode(path)


class ClipDataset:
    """``{"windows", "label", "train"}`` per clip; the collator does the cropping (it needs the batch).

    A training clip with several genres (a library track) is labelled, each time it is drawn, with one
    of them at random: each of its k genres is its target 1/k of the time, as a head weighs them
    (:func:`training.heads.fit_head`). Validation clips keep their first genre."""

    def __init__(self, store: ClipStore, examples: list[Example], label2id: dict, train: bool):
        self.store, self.examples, self.label2id, self.train = store, examples, label2id, train

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        label = e.label
        if self.train and len(e.all_genres) > 1:
            import torch

            label = e.all_genres[int(torch.randint(0, len(e.all_genres), ()))]  # the Trainer seeds torch
        return {"windows": self.store.windows(e.path), "label": self.label2id[label], "train": self.train}


@dataclass(frozen=True)
class Augment:
    """The seed recipe's three augmentations, each applied to a training crop with its own probability.

    Noise is set by signal-to-noise ratio rather than absolute level, so quiet and loud clips get the
    same audible amount; the shift is circular (the crop stays full); gain never pushes peaks past full
    scale. Drawn from torch's global RNG, which the Trainer seeds and DataLoader workers re-seed.
    """

    noise_p: float = 0.5
    snr_db: tuple[float, float] = (15.0, 40.0)
    shift_p: float = 0.5
    max_shift: float = 0.25  # share of the crop
    gain_p: float = 0.5
    gain_db: tuple[float, float] = (-6.0, 6.0)

    def __call__(self, x):
        import torch

        def chance(p):
            return torch.rand(()) < p

        def uniform(lo, hi):
            return float(torch.empty(()).uniform_(lo, hi))

        if chance(self.gain_p):
            peak = float(x.abs().max()) or 1.0
            x = x * min(10 ** (uniform(*self.gain_db) / 20), 1.0 / peak)
        if chance(self.shift_p):
            limit = max(1, int(self.max_shift * x.numel()))
            x = torch.roll(x, int(torch.randint(-limit, limit + 1, ())))
        if chance(self.noise_p):
            rms = x.pow(2).mean().sqrt()
            x = x + torch.randn_like(x) * rms * 10 ** (-uniform(*self.snr_db) / 20)
        return x


class CropCollator:
    """Training batches: a random window of each clip, a random crop, augmentation. Evaluation batches:
    the middle window, centre crop. All crops of a batch have the shortest clip's length (at most
    ``crop_samples``), so nothing is zero-padded."""

    def __init__(self, extractor, crop_samples: int, augment: Augment | None):
        self.extractor, self.crop_samples, self.augment = extractor, crop_samples, augment

    def __call__(self, items: list[dict]):
        import torch

        train = items[0]["train"]
        clips = [self._window(item["windows"], train) for item in items]
        length = min([self.crop_samples] + [c.numel() for c in clips])
        crops = []
        for clip in clips:
            slack = clip.numel() - length
            start = int(torch.randint(0, slack + 1, ())) if train else slack // 2
            crop = clip[start:start + length].float() / INT16_SCALE
            crops.append(self.augment(crop) if train and self.augment else crop)
        features = self.extractor([c.numpy() for c in crops], sampling_rate=self.extractor.sampling_rate,
                                  return_tensors="pt")
        features["labels"] = torch.tensor([item["label"] for item in items])
        return features

    @staticmethod
    def _window(windows: list, train: bool):
        import torch

        return windows[int(torch.randint(0, len(windows), ()))] if train else windows[len(windows) // 2]


# -- the Trainer -----------------------------------------------------------------------------------------
def _fit(model, extractor, store: ClipStore, dataset: Dataset, data: DataSettings, settings: TrainSettings,
         staging: Path, report: Callable[[str], None]):
    """Run the HF Trainer. Returns the best epoch's model and facts for the model card."""
    import torch
    from transformers import EarlyStoppingCallback, Trainer
    from transformers.trainer_callback import ProgressCallback

    cuda = torch.cuda.is_available()
    has_valid = bool(dataset.valid)
    if not has_valid:
        report("note: no validation clips: the last epoch is kept and there is no early stopping")
    label2id = {label: i for i, label in enumerate(dataset.labels)}
    crop = crop_seconds(extractor, settings.crop_seconds)
    augment = Augment() if settings.augment else None
    args = _training_args(settings, data.seed, staging / ".checkpoints", cuda, has_valid)
    trainer = Trainer(
        model=model, args=args, data_collator=CropCollator(extractor, int(crop * store.sample_rate), augment),
        train_dataset=ClipDataset(store, dataset.train, label2id, train=True),
        eval_dataset=ClipDataset(store, dataset.valid, label2id, train=False) if has_valid else None,
        compute_metrics=window_metrics,
        callbacks=[EarlyStoppingCallback(settings.patience)] if has_valid and settings.patience > 0 else [])
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_epoch_lines(report, f"{dataset.split_name('valid')}, {len(dataset.valid)} clips"))
    report(f"training on {describe_hardware()}: {len(dataset.train)} clips, {crop:g} s crops, augmentation "
           f"{'on' if augment else 'off'}{', encoder frozen' if settings.freeze_encoder else ''}")
    try:
        trainer.train()
        model = _best_model(trainer, model)
    finally:
        shutil.rmtree(staging / ".checkpoints", ignore_errors=True)
    state = trainer.state
    best = next((log for log in state.log_history if log.get("eval_selection") == state.best_metric), None)
    return model, {
        "steps": state.global_step, "epochs": round(state.epoch or 0, 2), "crop_seconds": crop,
        "best_epoch": best and round(best["epoch"], 2),
        "best_valid_window_accuracy": best and best["eval_accuracy"],
        "history": [{k: log[k] for k in ("epoch", "eval_accuracy", "eval_loss") if k in log}
                    for log in state.log_history if "eval_accuracy" in log]}


def _best_model(trainer, model):
    """The best epoch's weights, loaded with ``from_pretrained`` from its checkpoint.

    The Trainer's own ``load_best_model_at_end`` loads the state dict in place, and in transformers 5 that
    silently skips checkpoints saved under legacy key names (AST): the last epoch would be kept instead.
    """
    from transformers import AutoModelForAudioClassification

    best = trainer.state.best_model_checkpoint
    if not best:
        return model
    return AutoModelForAudioClassification.from_pretrained(best, local_files_only=True)


def _training_args(settings: TrainSettings, seed: int, folder: Path, cuda: bool, has_valid: bool):
    import torch
    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    # transformers 5 folded warmup_ratio into warmup_steps (a float below 1 is a ratio)
    warmup = ({"warmup_ratio": settings.warmup_ratio} if "warmup_ratio" in names
              else {"warmup_steps": settings.warmup_ratio})
    bf16 = cuda and torch.cuda.is_bf16_supported()
    strategy = "epoch" if has_valid else "no"
    workers = settings.workers if settings.workers is not None else (4 if cuda else 0)
    return TrainingArguments(
        output_dir=str(folder), seed=seed, data_seed=seed,
        num_train_epochs=settings.epochs, max_steps=settings.max_steps or -1,
        learning_rate=settings.learning_rate, lr_scheduler_type=settings.lr_scheduler, **warmup,
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        eval_strategy=strategy, save_strategy="epoch" if has_valid else "no", logging_strategy="epoch",
        load_best_model_at_end=has_valid, metric_for_best_model="selection" if has_valid else None,
        greater_is_better=True, save_total_limit=1, save_only_model=True,
        bf16=bf16, fp16=cuda and not bf16, use_cpu=not cuda,
        dataloader_num_workers=workers, remove_unused_columns=False,
        report_to="none", disable_tqdm=False, log_level="error")


def window_metrics(eval_pred) -> dict:
    """Per-epoch validation metrics on one centre crop per clip (model selection only).

    ``selection`` is the accuracy plus a bonus for low loss that is smaller than one clip's worth of
    accuracy: the best epoch is the most accurate one, and among equally accurate epochs (frequent on
    small validation sets) the most confident one rather than the first.
    """
    import numpy as np

    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    labels = eval_pred.label_ids
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean())
    accuracy = float((logits.argmax(-1) == labels).mean())
    return {"accuracy": accuracy, "selection": accuracy + 1 / (len(labels) + 1) / (1 + loss)}


def _epoch_lines(report: Callable[[str], None], valid_name: str):
    """The Trainer's progress bar, with one readable line per epoch instead of raw log dicts."""
    from transformers.trainer_callback import ProgressCallback

    class EpochLines(ProgressCallback):
        train_loss = None

        def on_prediction_step(self, *args, **kwargs):
            """No bar for the short per-epoch evaluation: it would only interleave with the epoch lines."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                self.train_loss = logs["loss"]
            if "eval_accuracy" not in logs and not ("loss" in logs and args.eval_strategy == "no"):
                return
            parts = [f"epoch {logs.get('epoch', state.epoch):.2f}", f"step {state.global_step}/{state.max_steps}"]
            if self.train_loss is not None:
                parts.append(f"train loss {self.train_loss:.3f}")
            if "eval_accuracy" in logs:
                parts.append(f"valid accuracy {logs['eval_accuracy']:.3f}, loss {logs['eval_loss']:.3f} "
                             f"({valid_name}, centre crops)")
            (self.training_bar.write if self.training_bar is not None else report)("  ".join(parts))

    return EpochLines()


# -- the card's facts ------------------------------------------------------------------------------------
def describe_hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)}"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def command_line(data: DataSettings, settings: TrainSettings) -> str:
    """The ``genretag train`` command that repeats this run (every option that differs from its default)."""
    args = ["genretag", "train", data.data]
    for obj, skip in ((data, {"data"}), (settings, {"make_default"})):
        defaults = type(obj)()
        for f in fields(obj):
            value = getattr(obj, f.name)
            if f.name in skip or value == getattr(defaults, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else f"--no-{f.name.replace('_', '-')}")
            elif isinstance(value, tuple):
                args += [flag, ",".join(value)]
            else:
                args += [flag, str(value)]
    return shlex.join(args)
