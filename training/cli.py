"""``genretag train`` and ``genretag evaluate``: options in, one library call, results out.

The option defaults and help come from :class:`training.data.DataSettings` and
:class:`training.train.TrainSettings` (plain dataclasses; torch and transformers load only inside the
commands, so ``genretag --help`` stays instant).
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import fields

import click

from tagger.errors import GenretagError
from tagger.reporting.safe import dumps, escape_controls

from .data import MIN_PER_GENRE, SPLITS, DataSettings
from .train import TrainSettings

TRAINING_EXTRAS = ("sklearn", "matplotlib", "accelerate")
"""What ``pip install 'genretag[train]'`` adds (scikit-learn, matplotlib, accelerate), by import name."""

PARTS = ("train", "valid", "test")


def _option(settings_cls, name: str, *decls, **kwargs):
    """A click option whose default and help come from ``settings_cls``'s field ``name``."""
    field = next(f for f in fields(settings_cls) if f.name == name)
    flag = "--" + name.replace("_", "-")
    if kwargs.get("is_flag") and "/" not in flag and field.default is True:
        flag = f"{flag}/--no-{name.replace('_', '-')}"
    kwargs.setdefault("default", field.default)
    kwargs.setdefault("show_default", not any(field.default is v for v in (None, False, "")))
    return click.option(flag, *decls, name, help=field.metadata["help"], **kwargs)


def _say(text: str, err: bool = False) -> None:
    """A line (or lines) naming clips, genres and folders from the data, escaped: folder and file names
    can hold escape sequences (see :mod:`tagger.reporting.safe`)."""
    click.echo(escape_controls(text, keep_newlines=True), err=err)


def _fail(err: Exception | str) -> click.ClickException:
    return click.ClickException(escape_controls(str(err)))


def _genres(ctx, param, value):
    return tuple(g.strip() for g in value.split(",") if g.strip()) if value else None


def data_options(fn):
    """The options that pick and split the clips; train and evaluate share them, so the same options
    (and seed) give evaluate exactly the clips train held out."""
    for decorator in reversed([
        _option(DataSettings, "split", type=click.Choice(SPLITS)),
        _option(DataSettings, "seed", type=int),
        _option(DataSettings, "from_index", is_flag=True),
        _option(DataSettings, "db", type=click.Path(dir_okay=False)),
        _option(DataSettings, "min_per_genre", type=click.IntRange(min=MIN_PER_GENRE)),
        _option(DataSettings, "genres", type=str, callback=_genres, metavar="A,B,C"),
        _option(DataSettings, "genre_map", type=click.Path(exists=True, dir_okay=False)),
    ]):
        fn = decorator(fn)
    return fn


def require_training_extras(names: tuple[str, ...] = TRAINING_EXTRAS) -> None:
    """Exit with one line naming what to install when the training extras are missing (rather than an
    ImportError traceback halfway through)."""
    import importlib

    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise click.ClickException(f"training needs the training extras (missing: {', '.join(missing)}): "
                                   "pip install 'genretag[train]'")


def _data_settings(data: str, options: dict) -> DataSettings:
    names = {f.name for f in fields(DataSettings)}
    return DataSettings(data=data, **{k: options.pop(k) for k in list(options) if k in names})


@click.command()
@click.argument("data")
@_option(TrainSettings, "base_model", required=True, default=None, metavar="ID_OR_DIR")
@_option(TrainSettings, "output", "-o", required=True, type=click.Path(file_okay=False))
@data_options
@_option(TrainSettings, "epochs", type=click.FloatRange(min=0, min_open=True))
@_option(TrainSettings, "max_steps", type=click.IntRange(min=1))
@_option(TrainSettings, "learning_rate", type=click.FloatRange(min=0, min_open=True))
@_option(TrainSettings, "lr_scheduler", type=click.Choice(["linear", "cosine"]))
@_option(TrainSettings, "warmup_ratio", type=click.FloatRange(0, 1, max_open=True))
@_option(TrainSettings, "batch_size", type=click.IntRange(min=1))
@_option(TrainSettings, "gradient_accumulation_steps", type=click.IntRange(min=1))
@_option(TrainSettings, "augment", is_flag=True)
@_option(TrainSettings, "freeze_encoder", is_flag=True)
@_option(TrainSettings, "patience", type=click.IntRange(min=0))
@_option(TrainSettings, "crop_seconds", type=click.FloatRange(min=0.5))
@_option(TrainSettings, "max_windows", type=click.IntRange(min=1))
@_option(TrainSettings, "cache_gb", type=click.FloatRange(min=0))
@_option(TrainSettings, "workers", type=click.IntRange(min=0))
@_option(TrainSettings, "make_default", is_flag=True)
@_option(TrainSettings, "refit_all", is_flag=True)
def train(data, **options):
    """Train a genre classifier on labelled clips in DATA.

    With --base-model builtin:musicnn-msd (or -mtt), a classification head learns from the built-in
    model's embeddings: offline, minutes on a CPU, good with 5-50 clips per genre. Any other base model
    (a transformers audio-classification checkpoint) is fine-tuned.

    DATA is a GTZAN folder, a folder of <genre>/ subfolders, or, with --from-index, your scanned music
    library, labelled by the genres already in its tags. The result in --output is a checkpoint that
    `genretag scan --model DIR` uses; `genretag models use DIR` (or --make-default) makes it the default.
    """
    require_training_extras()
    from .train import train as run_training

    data_settings = _data_settings(data, options)
    settings = TrainSettings(**options)
    try:
        result = run_training(data_settings, settings, report=lambda line: _say(line, err=True))
    except KeyboardInterrupt:
        click.echo("interrupted; no checkpoint was written", err=True)
        sys.exit(130)
    except GenretagError as err:
        raise _fail(err) from None
    for part in ("cv", "test", "valid"):
        if m := result.metrics.get(part):
            spread = f" ± {m['accuracy_std']:.3f}" if "accuracy_std" in m else ""
            _say(f"{'cross-validated' if part == 'cv' else part} accuracy {m['accuracy']:.3f}{spread}, "
                 f"macro-F1 {m['macro_f1']:.3f} ({m['split']}, {m['count']} clips)")
    _say(f"checkpoint: {result.output}")
    if settings.make_default:
        _say("it is now the default model of `genretag scan`")
    else:
        _say(f"scan with it: genretag scan --model {shlex.quote(str(result.output))} MUSIC_DIR; make it the "
             f"default: genretag models use {shlex.quote(str(result.output))}")
    _say(f"took {result.seconds / 60:.1f} min on {result.hardware}")


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.argument("data")
@data_options
@click.option("--part", type=click.Choice(PARTS + ("all",)), default="test", show_default=True,
              help="Which part of the split to evaluate on.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the model runs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Windows per inference batch.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(checkpoint, data, part, device, batch_size, as_json, **options):
    """Measure CHECKPOINT on DATA the way `genretag scan` runs it (same decoding, windows, aggregation).

    Give the data options that training had (split, seed, genres, ...) to get the same held-out clips.
    """
    require_training_extras(("sklearn",))
    from .evaluate import evaluate_checkpoint
    from .metrics import report_text

    data_settings = _data_settings(data, options)
    parts = PARTS if part == "all" else (part,)
    try:
        _, results = evaluate_checkpoint(checkpoint, data_settings, parts, device=device, batch_size=batch_size,
                                         report=lambda line: _say(line, err=True))
    except GenretagError as err:
        raise _fail(err) from None
    if not results:
        raise click.ClickException(f"no clips to evaluate in the {'/'.join(parts)} part")
    if as_json:
        click.echo(dumps(results, indent=2, ensure_ascii=True))
        return
    for m in results.values():
        _say(report_text(m))
