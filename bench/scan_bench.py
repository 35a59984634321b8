"""Scan speed, side by side with what users run today.

    python bench/scan_bench.py --tracks 10 --model wav2vec2-base [--skip-a] [--device cuda]

On the same files and in the same run:
  (A) the seed's inference: transformers.pipeline("audio-classification") called per file (whole file);
  (B) the same pipeline fed exactly the windows genretag analyses, one at a time, fp32;
  (C) genretag's own scan (tag_folder, dry run, fresh index).
Prints wall time, tracks/s and peak RSS of each, C/A and C/B, the model-phase GFLOP/s of C against a
matmul peak measured in this run, and top-1 agreement between fp32 and the precision C used. C's
wall time counts the one-time start-up of a scan (the model is loaded before it, but importing
torchcodec, about 2 s of a 2-core machine, happens at the first decode), so C's rate after its first
track comes out is printed too: what a large library sees.
``--distinct K`` builds K tracks and repeats them (for thousands of tracks on a GPU); ``--a-tracks`` and
``--b-tracks`` time the slow contenders on the first tracks only and extrapolate per track.
``--model`` is a full-size random-weight architecture built from its default config (wav2vec2-base,
distilhubert, ast) or any local checkpoint / builtin:NAME.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.host import StealClock  # noqa: E402
from bench.library import CD_RATE, make_library  # noqa: E402


def build_model(name: str, folder: Path) -> str:
    """Full-size random-weight checkpoints from default configs (no hub access needed)."""
    from transformers import (ASTConfig, ASTFeatureExtractor, ASTForAudioClassification, HubertConfig,
                              HubertForSequenceClassification, Wav2Vec2Config, Wav2Vec2FeatureExtractor,
                              Wav2Vec2ForSequenceClassification)

    labels = {i: g for i, g in enumerate("blues classical country disco hiphop jazz metal pop reggae rock".split())}
    common = dict(num_labels=10, id2label=labels, label2id={v: k for k, v in labels.items()})
    if name == "wav2vec2-base":
        model, fe = Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**common)), Wav2Vec2FeatureExtractor()
    elif name == "distilhubert":
        model = HubertForSequenceClassification(HubertConfig(num_hidden_layers=2, **common))
        fe = Wav2Vec2FeatureExtractor()
    elif name == "ast":
        model, fe = ASTForAudioClassification(ASTConfig(**common)), ASTFeatureExtractor()
    else:
        return name
    target = folder / name
    model.save_pretrained(target)
    fe.save_pretrained(target)
    return str(target)


def peak_rss_mib(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def run_child(mode: str, args, model: str, files: list[str]) -> dict:
    """Each contender runs in its own process, so peak RSS is its own."""
    cmd = [sys.executable, __file__, "--child", mode, "--model-path", model, "--device", args.device,
           "--max-windows", str(args.max_windows), "--precision", args.precision,
           *(["--workers", str(args.workers)] if args.workers is not None else []),
           "--batch-size", str(args.batch_size or 0), "--concurrent-batches", str(args.concurrent_batches or 0),
           "--files", *files]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"contender {mode} failed:\n" + "\n".join(l for l in out.stderr.splitlines() if not l.startswith("    "))[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(mode: str, model: str, files: list[str], args) -> dict:
    import torch

    started = time.perf_counter()
    if mode in ("A", "B"):
        from transformers import pipeline

        device = 0 if args.device == "cuda" else -1
        clf = pipeline("audio-classification", model=model, device=device)
        top = []
        if mode == "A":
            for f in files:
                try:
                    top.append(clf(f)[0]["label"])
                except Exception as exc:  # the seed's loop crashes on some files; count them
                    top.append(f"error: {exc}"[:80])
        else:
            from tagger.decode import decode_file

            sr = clf.feature_extractor.sampling_rate
            for f in files:
                d = decode_file(f, sr, args.max_windows)
                for w, n in zip(d.windows, d.lengths):
                    clf({"raw": w[:n].numpy(), "sampling_rate": sr})
        return {"seconds": time.perf_counter() - started, "rss_mib": peak_rss_mib(), "top": top}
    from tagger import ScanSettings, tag_folder
    from tagger.models.infer import load_classifier

    with tempfile.TemporaryDirectory() as tmp:
        link_dir = Path(tmp) / "lib"
        link_dir.mkdir()
        for i, f in enumerate(files):
            os.symlink(os.path.abspath(f), link_dir / f"{i:05d}{Path(f).suffix}")
        classifier = load_classifier(model, args.device, args.precision)
        busy = BusyClock()
        predict = classifier.predict

        def timed(windows, lengths):
            if classifier.device.type == "cuda":
                torch.cuda.synchronize()
            with busy:
                return predict(windows, lengths)

        classifier.predict = timed
        settings = ScanSettings(model=model, db=str(Path(tmp) / "i.db"), device=args.device,
                                precision=args.precision, max_windows=args.max_windows, workers=args.workers,
                                concurrent_batches=args.concurrent_batches or None,
                                batch_size=args.batch_size or None, dry_run=True, min_confidence=0.0)
        finished = []  # when each track's result came out
        started = time.perf_counter()
        summary = tag_folder(link_dir, settings, classifier=classifier, keep_results=True,
                             on_result=lambda result: finished.append(time.perf_counter()))
        seconds = time.perf_counter() - started
        rss_mib = peak_rss_mib()  # the scan's own peak, before the FLOP count copies the model
        windows = sum(r.windows for r in summary.results)
        from torch.utils.flop_counter import FlopCounterMode

        _count_cpu_flash_attention()
        flop = FlopCounterMode(display=False)
        counting = _without_parametrizations(classifier)
        with flop, _plain_musicnn_blocks():
            counting.predict(torch.zeros(1, 480000), torch.tensor([480000]))
        top = [r.labels[0] if r.labels else r.status for r in sorted(summary.results, key=lambda r: r.path)]
        return {"seconds": seconds, "rss_mib": rss_mib, "windows": windows,
                "first_result": finished[0] - started if finished else seconds,
                "model_seconds": busy.seconds, "gflop_per_window": flop.get_total_flops() / 1e9,
                "precision": getattr(classifier, "precision", args.precision), "top": top,
                "failed": summary.failed}


class BusyClock:
    """Wall time during which at least one model call was running. Calls may overlap (several batches
    at once on CPU), so their durations are not summed: the clock runs from the moment the first call
    starts until the moment none is left."""

    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.running = 0
        self.since = 0.0
        self.seconds = 0.0

    def __enter__(self):
        with self.lock:
            if self.running == 0:
                self.since = time.perf_counter()
            self.running += 1

    def __exit__(self, *exc):
        with self.lock:
            self.running -= 1
            if self.running == 0:
                self.seconds += time.perf_counter() - self.since


def _count_cpu_flash_attention() -> None:
    """Count torch's CPU flash-attention op as attention. FlopCounterMode has a formula for the CUDA
    kernels only, so on CPU a transformer's attention counted 0: 83 of wav2vec2-base's 500 GFLOP per
    30 s window, which made torch's own attention look 17 % faster than genretag's head-by-head one
    (tagger/models/attention.py), whose products it counts."""
    import torch
    from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_flop_count

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op not in flop_registry:
        register_flop_formula(op)(lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v))


def _plain_musicnn_blocks():
    """Count the built-in model's architecture FLOPs (plain front-end blocks), not those of its fast
    path, which pads some conv filters to keep reductions vectorised."""
    from unittest import mock

    from tagger.models.musicnn import ConvBlock

    return mock.patch.object(ConvBlock, "max_over_frequency", lambda self, x: self(x).amax(dim=3))


def _without_parametrizations(classifier):
    """A copy whose weight-norm convolutions hold plain weights (FlopCounterMode cannot trace
    parametrized modules under inference_mode: wav2vec2/HuBERT positional convolution), running every
    module's own forward."""
    import copy

    import torch.nn.utils.parametrize as P

    clone = copy.copy(classifier)
    clone.__dict__.pop("predict", None)  # the timing wrapper would call the original model
    model = getattr(classifier, "model", None)
    if model is not None:
        clone.model = copy.deepcopy(model).cpu()
        clone.device = next(clone.model.parameters()).device
        for module in clone.model.modules():
            # The architecture's FLOPs, not those of a faster equivalent forward installed on a
            # module (the time-major feature encoder), which FlopCounterMode counts differently.
            module.__dict__.pop("forward", None)
            if P.is_parametrized(module):
                for name in list(module.parametrizations):
                    P.remove_parametrizations(module, name)
    return clone


def matmul_peak(device: str) -> dict:
    """Dense-matmul GFLOP/s per dtype: the best of five short timings, each of a few square products.

    This host's speed drifts by up to 2x within minutes, so one timing says little; the best of
    several is what the hardware can do at that moment, and the bench takes it before and after C.
    """
    import torch

    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        n = 4096 if device == "cuda" else 2048
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        reps = 50 if device == "cuda" else 3
        best = 0.0
        for _ in range(5):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            best = max(best, reps * 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
        out[str(dtype).removeprefix("torch.")] = best
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracks", type=int, default=10)
    p.add_argument("--library", type=Path, default=Path(tempfile.gettempdir()) / "genretag-bench-lib")
    p.add_argument("--model", default="wav2vec2-base")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--max-windows", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="C's decoding threads (default: genretag's)")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--concurrent-batches", type=int, default=0, help="C's batches at once (0: genretag's default)")
    p.add_argument("--skip-a", action="store_true", help="skip the per-file pipeline (slow on CPU)")
    p.add_argument("--a-tracks", type=int, default=0, help="run A on only this many tracks (extrapolated)")
    p.add_argument("--b-tracks", type=int, default=0, help="run B on only this many tracks (extrapolated)")
    p.add_argument("--distinct", type=int, default=0,
                   help="generate only this many tracks and repeat them up to --tracks (0: all distinct)")
    p.add_argument("--sample-rate", type=int, default=CD_RATE, help="the generated library's rate")
    p.add_argument("--channels", type=int, default=2, choices=(1, 2), help="the generated library's channels")
    p.add_argument("--child")
    p.add_argument("--model-path")
    p.add_argument("--files", nargs="*")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model_path, args.files, args)))
        return
    distinct = [str(f) for f in make_library(args.library, min(args.distinct or args.tracks, args.tracks),
                                             sample_rate=args.sample_rate, channels=args.channels)]
    files = [distinct[i % len(distinct)] for i in range(args.tracks)]
    with tempfile.TemporaryDirectory() as tmp, StealClock() as steal:
        model = build_model(args.model, Path(tmp))
        before = matmul_peak(args.device)
        results = {"C": run_child("C", args, model, files)}
        after = matmul_peak(args.device)
        peak = {k: max(before[k], after[k]) for k in before}
        if not args.model.startswith("builtin:"):
            b_files = files[: args.b_tracks or len(files)]
            results["B"] = run_child("B", args, model, b_files)
            results["B"]["per_track"] = results["B"]["seconds"] / len(b_files)
            if not args.skip_a:
                a_files = files[: args.a_tracks or len(files)]
                results["A"] = run_child("A", args, model, a_files)
                results["A"]["per_track"] = results["A"]["seconds"] / len(a_files)
        if results["C"]["precision"] != "fp32":  # while the model folder still exists
            args.precision = "fp32"
            results["fp32"] = run_child("C", args, model, files)
    c = results["C"]
    print(f"machine: {os.cpu_count()} CPUs, device {args.device}; model {args.model}; {len(files)} tracks "
          f"({len(distinct)} distinct, {args.sample_rate} Hz, {args.channels} channel(s)), "
          f"{c['windows']} windows (max {args.max_windows}/track); C precision {c['precision']}")
    print(f"matmul peak (higher of before/after C): fp32 {peak['float32']:.0f} GFLOP/s "
          f"({before['float32']:.0f}/{after['float32']:.0f}), bf16 {peak['bfloat16']:.0f} GFLOP/s "
          f"({before['bfloat16']:.0f}/{after['bfloat16']:.0f})")
    print(f"{'':4}{'wall s':>9}{'tracks/s':>10}{'s/track':>9}{'peak RSS MiB':>14}")
    for key in ("A", "B", "C"):
        if key in results:
            r = results[key]
            per = r.get("per_track", r["seconds"] / len(files))
            print(f"{key:4}{r['seconds']:9.1f}{1 / per:10.3f}{per:9.2f}{r['rss_mib']:14.0f}")
    if len(files) > 1 and c["seconds"] > c["first_result"]:
        print(f"C after its first track ({c['first_result']:.1f} s, the decoder's import included): "
              f"{(len(files) - 1) / (c['seconds'] - c['first_result']):.3f} tracks/s")
    c_per = c["seconds"] / len(files)
    for key in ("A", "B"):
        if key in results:
            per = results[key].get("per_track", results[key]["seconds"] / len(files))
            print(f"C is {per / c_per:.1f}x faster than {key}")
    gflops = c["gflop_per_window"] * c["windows"] / c["model_seconds"]
    ref = peak["bfloat16"] if c["precision"] in ("bf16", "fp16") else peak["float32"]
    print(f"C model phase: {c['model_seconds']:.1f} s, {c['gflop_per_window']:.1f} GFLOP/window, "
          f"{gflops:.0f} GFLOP/s = {100 * gflops / ref:.0f}% of the {c['precision']} matmul peak")
    if "fp32" in results:
        fp32 = results["fp32"]
        agree = sum(a == b for a, b in zip(fp32["top"], c["top"])) / len(files)
        print(f"top-1 agreement fp32 vs {c['precision']}: {100 * agree:.1f}% of {len(files)} tracks")
    if args.device == "cpu" and args.model.startswith("builtin:"):
        from tagger.models.native import banded_max_kernel

        kernel = banded_max_kernel()
        front = f"the native kernel {kernel.__name__}" if kernel else "torch products"
        print(f"musicnn bf16 front end: {front}")
    print(steal.summary())


if __name__ == "__main__":
    main()
