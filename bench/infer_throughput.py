"""Model-phase throughput of genretag's classifiers on one device, without decoding.

    python bench/infer_throughput.py --device cuda --models wav2vec2-base builtin:musicnn-msd \
        [--feature-encoders auto time-major]

Feeds batches of 30 s windows (random audio, already at the model's rate) through the same
``predict`` the scan uses, for several batch sizes and precisions, and prints windows/s and the
tracks/s that gives at 3 windows per track. Decoding is measured separately (bench/scan_bench.py), so
the two numbers bound a full scan from above. ``--feature-encoders`` measures wav2vec2-family models
once per ``GENRETAG_FEATURE_ENCODER`` value (``auto``: transformers' convolutions on a GPU, the
time-major products on the CPU; ``time-major``; ``transformers``).
"""
from __future__ import annotations

import argparse
import os
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
    from tagger.models.infer import load_classifier

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", default=["wav2vec2-base", "builtin:musicnn-msd"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--feature-encoders", nargs="+", default=["auto"],
                   choices=("auto", "time-major", "transformers"), help="GENRETAG_FEATURE_ENCODER values")
    p.add_argument("--profile", action="store_true",
                   help="after each model and precision, the operators that took the most device time "
                        "over three calls of the largest batch (torch.profiler)")
    args = p.parse_args()
    import torch

    if args.device == "cuda":
        print("device:", torch.cuda.get_device_name())
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = build_model(name, Path(tmp))
            for precision in args.precisions:
                measured = set()
                for encoder in args.feature_encoders:
                    os.environ["GENRETAG_FEATURE_ENCODER"] = encoder
                    classifier = load_classifier(model, args.device, precision)
                    used = feature_encoder_of(classifier)
                    if used in measured:
                        continue  # this choice gave an encoder already measured (or none at all)
                    measured.add(used)
                    for batch in args.batches:
                        rate = measure(classifier, batch, args.seconds)
                        print(f"{name:22} {precision:5} {used or '':12} batch {batch:4}: {rate:8.1f} "
                              f"windows/s = {rate / 3:7.1f} tracks/s at 3 windows", flush=True)
                    if args.profile:
                        print(profile(classifier, max(args.batches)), flush=True)


def feature_encoder_of(classifier) -> str | None:
    """"time-major" or "transformers" for a wav2vec2-family model, None for a model without that encoder."""
    base = getattr(getattr(classifier, "model", None), "base_model", None)
    encoder = getattr(base, "feature_extractor", None)
    if not hasattr(encoder, "conv_layers"):
        return None
    return "time-major" if "forward" in vars(encoder) else "transformers"


def profile(classifier, batch: int, calls: int = 3, rows: int = 15) -> str:
    """The top operators by self time on the classifier's device (CUDA kernels on a GPU), over
    ``calls`` predictions of ``batch`` windows after a warm-up one: what bounds the model phase."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    samples = int(30 * classifier.sampling_rate)
    windows, lengths = (torch.rand(batch, samples) - 0.5) * 0.5, torch.full((batch,), samples)
    classifier.predict(windows, lengths)
    cuda = classifier.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as run:
        for _ in range(calls):
            classifier.predict(windows, lengths)
        if cuda:
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return run.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


if __name__ == "__main__":
    main()
