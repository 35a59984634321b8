"""The real recipe: fine-tune on GTZAN's fault-filtered split and print the time and the accuracy.

    python bench/train_gtzan.py --gtzan ~/data/gtzan --base-model facebook/wav2vec2-base

wav2vec2-base, lr 3e-5, 10 % warm-up, batch 8, up to 10 epochs (early stopping after 3 without a better
validation accuracy), bf16 (fp16 on GPUs without bf16) on CUDA. The accuracies are genretag's own
track-level numbers on the filtered valid (197) and test (290) clips, measured through the tagger. It
refuses to run on a CPU (hours) unless --allow-cpu. The last line of output is one JSON object.

To check a GPU machine without the dataset or the weights (no accuracy worth reading, only time):

    python bench/train_gtzan.py --gtzan /tmp/fake-gtzan --synthetic 100 --base-model random:wav2vec2-base
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data import GTZAN_GENRES, DataSettings  # noqa: E402
from training.train import TrainSettings, describe_hardware, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gtzan", required=True, help="GTZAN folder (genres/ or genres_original/ inside)")
    ap.add_argument("--base-model", default="facebook/wav2vec2-base",
                    help="hub id or local folder; random:wav2vec2-base or random:ast for an untrained model "
                         "of that size (timing only)")
    ap.add_argument("--output", help="checkpoint folder (default: a temporary folder, removed)")
    ap.add_argument("--split", default="filtered", choices=["filtered", "random"])
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--freeze-encoder", action="store_true")
    ap.add_argument("--synthetic", type=int, metavar="N",
                    help="first write N synthetic 30 s clips per GTZAN genre into --gtzan")
    ap.add_argument("--allow-cpu", action="store_true")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("no CUDA GPU: the GTZAN recipe takes hours on a CPU (pass --allow-cpu to run it anyway)")
    if args.synthetic:
        write_synthetic_gtzan(Path(args.gtzan), args.synthetic)
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base_model
        if base.startswith("random:"):
            base = str(make_random_base(base.removeprefix("random:"), Path(tmp) / "base"))
        output = args.output or str(Path(tmp) / "model")
        if not args.output:  # a checkpoint removed at exit stays out of the user's list of trained models
            os.environ["GENRETAG_HOME"] = str(Path(tmp) / "home")
        started = time.perf_counter()
        result = train(DataSettings(data=args.gtzan, split=args.split, seed=0),
                       TrainSettings(output=output, base_model=base, epochs=args.epochs, max_steps=args.max_steps,
                                     batch_size=args.batch_size, freeze_encoder=args.freeze_encoder))
        seconds = time.perf_counter() - started
        for part in ("valid", "test"):
            m = result.metrics.get(part)
            if m:
                print(f"{part} accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} ({m['split']}, "
                      f"{m['count']} clips)")
        print(f"{seconds / 60:.1f} min on {describe_hardware()} (base model {args.base_model})")
        print(json.dumps({"base_model": args.base_model, "hardware": describe_hardware(),
                          "seconds": round(seconds, 1), "split": args.split,
                          "steps": json.loads((Path(output) / "metrics.json").read_text())["training"]["steps"],
                          **{f"{part}_accuracy": m["accuracy"] for part, m in result.metrics.items()}}))


def make_random_base(kind: str, folder: Path) -> Path:
    """An untrained model with the architecture of a base checkpoint (built from its default config)."""
    from transformers import (ASTConfig, ASTFeatureExtractor, ASTForAudioClassification, Wav2Vec2Config,
                              Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification)

    if kind == "wav2vec2-base":
        Wav2Vec2ForSequenceClassification(Wav2Vec2Config()).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(folder)
    elif kind == "ast":
        ASTForAudioClassification(ASTConfig()).save_pretrained(folder)
        ASTFeatureExtractor().save_pretrained(folder)
    else:
        sys.exit(f"unknown random base '{kind}' (wav2vec2-base or ast)")
    return folder


def write_synthetic_gtzan(root: Path, per_genre: int) -> None:
    """``genres/<genre>/<genre>.000NN.wav``, 30 s at 22.05 kHz, from the demo synthesizer's styles."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(root / "genres" / g / f"{g}.{i:05d}.wav", i, k) for k, g in enumerate(GTZAN_GENRES)
            for i in range(per_genre)]
    for path, _, _ in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_clip, jobs, chunksize=8))


def _write_clip(job) -> None:
    from tagger.demo import STYLES, synth, write_wav

    path, i, k = job
    write_wav(path, synth(list(STYLES)[k % len(STYLES)], 30.0, seed=1000 * k + i))


if __name__ == "__main__":
    main()
