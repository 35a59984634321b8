"""How fast is the built-in musicnn tagger, and how close to the hardware's matmul peak does it run?

Prints, for fp32 and bf16 autocast: the model phase (network forward on the log-mel patches) and the
preprocessing (STFT + mel + log) per 30 s window, the FLOPs per window counted by
``torch.utils.flop_counter.FlopCounterMode``, the dense-matmul peak of this machine measured in the
same run, and the fraction of that peak the model reaches. The fraction uses the architecture's own
FLOPs (the plain front-end blocks), not the few percent more the fast path spends on padded filters.
Run:

    python bench/musicnn_speed.py [--device cpu|cuda] [--windows 4] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.host import StealClock  # noqa: E402
from tagger.models.musicnn import (SAMPLE_RATE, ConvBlock, load_builtin, log_mel, patch_counts,  # noqa: E402
                            valid_patches)

WINDOW_SAMPLES = 30 * SAMPLE_RATE  # 480000 samples in a 30 s window -> 10 patches of 3 s


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up: the least disturbed measurement.

    A warm-up that takes over 10 s (bf16 on a CPU without native bf16) is timing enough by itself.
    """
    start = time.perf_counter()
    fn()
    sync(device)
    times = [time.perf_counter() - start]
    if times[0] > 10:
        return times[0]
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def count_flops(classifier, patches: torch.Tensor, plain: bool) -> int:
    """FLOPs of one forward over ``patches``; ``plain``: through the plain front-end blocks (conv, ReLU,
    batch norm, max), i.e. the architecture's FLOPs rather than those of the fast path's padded convs."""
    from unittest import mock

    fast = ConvBlock.max_over_frequency
    with FlopCounterMode(display=False) as counter, mock.patch.object(
            ConvBlock, "max_over_frequency", (lambda self, x: self(x).amax(dim=3)) if plain else fast):
        classifier.predict_patches(patches)
    return counter.get_total_flops()


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """FLOP/s of a square matmul: the practical ceiling for the model's conv and dense work.

    The size doubles until one call takes 100 ms, so a fast BLAS gets a large, efficient problem while
    a slow path (bf16 on a CPU without native bf16 runs far below fp32) still finishes quickly.
    """
    n, loops = 512, (10 if device.type == "cuda" else 1)
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        seconds = best_time(lambda: [a @ b for _ in range(loops)], device, repeats)
        if seconds > 0.1 or n >= 8192:
            return 2 * n**3 * loops / seconds
        n *= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--windows", type=int, default=4, help="30 s windows per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="musicnn-msd")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per call (0: torch's default); a scan's calls get 1, which "
                             "is where the native kernel runs")
    args = parser.parse_args()
    with StealClock() as clock:
        run(args)
    print(clock.summary())


def run(args) -> None:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    audio = 0.1 * torch.randn(args.windows, WINDOW_SAMPLES, generator=torch.Generator().manual_seed(0))
    audio = audio.to(device)
    logmel = log_mel(audio)
    patches = valid_patches(logmel, patch_counts(torch.full((args.windows,), WINDOW_SAMPLES, device=device),
                                                 logmel.shape[1]))
    per_window = patches.shape[0] // args.windows
    print(f"device {device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}, "
          f"batch {args.windows} x 30 s windows = {patches.shape[0]} patches of 3 s")

    pre = best_time(lambda: log_mel(audio), device, args.repeats) / args.windows
    print(f"preprocessing (STFT + mel + log): {pre * 1e3:.2f} ms per window")

    classifier = load_builtin(args.model, device)
    flops = count_flops(classifier, patches[:per_window], plain=True)
    executed = count_flops(classifier, patches[:per_window], plain=False)
    print(f"model FLOPs: {flops / 1e9:.2f} GFLOP per 30 s window ({flops / per_window / 1e9:.2f} per 3 s patch); "
          f"the fast path executes {executed / 1e9:.2f}")

    if device.type == "cpu":
        from tagger.models.native import banded_max_kernel

        kernel = banded_max_kernel() if torch.get_num_threads() == 1 else None
        print("bf16 front end: " + (f"the native kernel {kernel.__name__} (tagger/models/native.py)" if kernel
                                    else "torch matrix products"))
    peaks = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        classifier = load_builtin(args.model, device, precision)
        seconds = best_time(lambda: classifier.predict_patches(patches), device, args.repeats) / args.windows
        peak = matmul_peak(dtype, device, args.repeats)
        achieved = flops / seconds
        print(f"{precision}: model phase {seconds * 1e3:.1f} ms per window, {achieved / 1e9:.1f} GFLOP/s; "
              f"{precision} matmul peak {peak / 1e9:.1f} GFLOP/s; fraction of peak {achieved / peak:.1%}")
        peaks[precision] = peak
    if peaks["bf16"] < peaks["fp32"]:
        print("note: bf16 matmul is slower than fp32 here (no native bf16 on this CPU); prefer fp32")


if __name__ == "__main__":
    main()
