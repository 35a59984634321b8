"""Model-phase throughput of genretag's classifiers on one device, without decoding.

    python bench/infer_throughput.py --device cuda --models wav2vec2-base builtin:musicnn-msd

Feeds batches of 30 s windows (random audio, already at the model's rate) through the same
``predict`` the scan uses, for several batch sizes and precisions, and prints windows/s and the
tracks/s that gives at 3 windows per track. Decoding is measured separately (bench/scan_bench.py), so
the two numbers bound a full scan from above.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.scan_bench import build_model  # noqa: E402


def measure(classifier, batch: int, seconds: float = 8.0) -> float:
    import torch

    samples = int(30 * classifier.sampling_rate)
    windows = (torch.rand(batch, samples) - 0.5) * 0.5
    if classifier.device.type == "cuda":
        windows = windows.pin_memory()
    lengths = torch.full((batch,), samples)
    classifier.predict(windows, lengths)  # warm-up (kernels, autotuning)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        classifier.predict(windows, lengths)
        done += batch
    return done / (time.perf_counter() - started)


def main() -> None:
    from tagger.infer import load_classifier

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", default=["wav2vec2-base", "builtin:musicnn-msd"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    import torch

    if args.device == "cuda":
        print("device:", torch.cuda.get_device_name())
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = build_model(name, Path(tmp))
            for precision in args.precisions:
                classifier = load_classifier(model, args.device, precision)
                for batch in args.batches:
                    rate = measure(classifier, batch, args.seconds)
                    print(f"{name:22} {precision:5} batch {batch:4}: {rate:8.1f} windows/s = "
                          f"{rate / 3:7.1f} tracks/s at 3 windows", flush=True)


if __name__ == "__main__":
    main()
