"""Scan speed, side by side with what users run today, every contender timed the same way.

    python bench/scan_bench.py --tracks 6 --a-tracks 1 --b-tracks 3 --model wav2vec2-base [--repeat 2]

On the same files and in the same run, each contender in a process of its own:
  (A) the seed's inference: transformers.pipeline("audio-classification") called per file (whole file), fp32;
  (B) the same pipeline fed exactly the windows genretag analyses, one at a time, fp32;
  (C) genretag's own scan (load_classifier + tag_folder, dry run, fresh index), once in fp32, the
      precision B runs at, and once at the precision genretag picks (bf16 where the CPU computes it
      natively: AVX512-BF16 or AMX), its fast path.

Every contender's clock starts when its process is spawned, so the interpreter, its imports (torch,
transformers) and the model load count for all of them alike, and stops when its last track is done.
The table splits that wall time into the start (spawn to model loaded) and the tracks (model loaded to
the last track done), and gives the rate after the first track, which is what a large library sees.
Before each contender runs, its audio files are written back and dropped from the page cache, so each
one reads them from the disk as a first scan of a library does.

It prints the CPU every figure comes from (model name, and whether it has AVX512-BF16 / AMX), the load
average before and after each contender (other work on the machine), the host's steal time, C's model
phase in GFLOP/s against a matmul peak measured in the same run, and top-1 agreement between B and C
in fp32 (the same windows and the same mean over them, so they should agree) and between C's fp32 and
fast path. ``--repeat N`` runs the contenders N times, interleaved, and prints the spread.

``--distinct K`` builds K tracks and repeats them up to --tracks (for thousands of tracks on a GPU;
repeated files are read from memory after their first read); ``--a-tracks`` and ``--b-tracks`` time the
slow contenders on the first tracks only, and their whole-run figures add the per-track time measured
on those to their start (marked ``*``). ``--model`` is a full-size random-weight architecture built
from its default config (wav2vec2-base, distilhubert, ast) or any local checkpoint / builtin:NAME
(builtin models have no transformers pipeline: A and B are skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.host import StealClock  # noqa: E402
from bench.library import CD_RATE, drop_from_page_cache, make_library, page_cache_share  # noqa: E402

CONTENDERS = {
    "A": "A pipeline per file, whole file",
    "B": "B pipeline on genretag's windows",
    "C-fp32": "C genretag scan",
    "C-fast": "C genretag scan, fast path",
}


def cpu_description() -> str:
    """The CPU a figure comes from: its model name, family/model numbers (AMD names no generation) and
    the native bf16 instruction sets genretag's fast CPU paths use."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        return f"unknown CPU, {os.cpu_count()} CPUs"
    flags = set(info.get("flags", "").split())
    bf16 = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}), "
            f"{os.cpu_count()} CPUs, native bf16: {', '.join(bf16) or 'none (no avx512_bf16, no amx)'}")


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


def run_child(mode: str, args, model: str, files: list[str], precision: str) -> dict:
    """Run one contender in a process of its own (so its peak RSS is its own) on files just dropped
    from the page cache. Its times count from the moment the process is spawned."""
    drop_from_page_cache(files)
    cached = page_cache_share(files)
    load = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--child", mode, "--model-path", model, "--device", args.device,
           "--max-windows", str(args.max_windows), "--precision", precision,
           *(["--workers", str(args.workers)] if args.workers is not None else []),
           "--batch-size", str(args.batch_size or 0), "--concurrent-batches", str(args.concurrent_batches or 0),
           "--files", *files]
    spawned = time.time()  # the child reports wall-clock times too, so the two clocks compare
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"contender {mode} failed:\n" + "\n".join(l for l in out.stderr.splitlines() if not l.startswith("    "))[-4000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    done = r["done"] or [r["loaded"]]
    r.update(n=len(files), start_s=r["loaded"] - spawned, tracks_s=r["finished"] - r["loaded"],
             first_s=done[0] - spawned, wall_s=r["finished"] - spawned, cached=cached,
             load=(load, os.getloadavg()[0]))
    r["after_first"] = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] else None
    return r


def whole_run(r: dict, total: int) -> tuple[float, bool]:
    """The contender's wall time for ``total`` tracks, and whether it was extrapolated: a contender timed
    on the first tracks only gets its start plus the per-track time it showed on them."""
    if r["n"] == total:
        return r["wall_s"], False
    return r["start_s"] + r["tracks_s"] / r["n"] * total, True


def child(mode: str, model: str, files: list[str], args) -> dict:
    """One contender. Every time it reports is ``time.time()``: the parent started the clock at the spawn,
    before this process imported anything."""
    import torch

    if mode in ("A", "B"):
        from transformers import pipeline

        device = 0 if args.device == "cuda" else -1
        clf = pipeline("audio-classification", model=model, device=device)  # fp32, the pipeline's default
        loaded = time.time()
        labels = len(clf.model.config.id2label)
        top, done = [], []
        if mode == "A":
            for f in files:
                try:
                    top.append(clf(f)[0]["label"])
                except Exception as exc:  # the seed's loop crashes on some files; count them
                    top.append(f"error: {exc}"[:80])
                done.append(time.time())
        else:
            from tagger.decode import decode_file

            sr = clf.feature_extractor.sampling_rate
            for f in files:
                d = decode_file(f, sr, args.max_windows)
                scores: dict[str, float] = {}
                for w, n in zip(d.windows, d.lengths):
                    for s in clf({"raw": w[:n].numpy(), "sampling_rate": sr}, top_k=labels):
                        scores[s["label"]] = scores.get(s["label"], 0.0) + s["score"]
                top.append(max(scores, key=scores.get))  # the mean over windows, as genretag decides
                done.append(time.time())
        finished = time.time()
        return {"loaded": loaded, "done": done, "finished": finished, "rss_mib": peak_rss_mib(), "top": top,
                "precision": "fp32"}
    from tagger import ScanSettings, tag_folder
    from tagger.models.infer import load_classifier

    with tempfile.TemporaryDirectory() as tmp:
        link_dir = Path(tmp) / "lib"
        link_dir.mkdir()
        for i, f in enumerate(files):
            os.symlink(os.path.abspath(f), link_dir / f"{i:05d}{Path(f).suffix}")
        classifier = load_classifier(model, args.device, args.precision)
        loaded = time.time()
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
        done = []  # when each track's result came out
        summary = tag_folder(link_dir, settings, classifier=classifier, keep_results=True,
                             on_result=lambda result: done.append(time.time()))
        finished = time.time()
        rss_mib = peak_rss_mib()  # the scan's own peak, before the FLOP count copies the model
        windows = sum(r.windows for r in summary.results)
        from torch.utils.flop_counter import FlopCounterMode

        _count_cpu_flash_attention()
        flop = FlopCounterMode(display=False)
        counting = _without_parametrizations(classifier)
        with flop, _plain_musicnn_blocks():
            counting.predict(torch.zeros(1, 480000), torch.tensor([480000]))
        # The links are named by the files' order, so the results sorted by path follow it too.
        top = [r.labels[0] if r.labels else r.status for r in sorted(summary.results, key=lambda r: r.path)]
        return {"loaded": loaded, "done": done, "finished": finished, "rss_mib": rss_mib, "windows": windows,
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
    p.add_argument("--precision", default="auto", help="C's fast path (auto: what genretag picks); C also runs fp32")
    p.add_argument("--max-windows", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="C's decoding threads (default: genretag's)")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--concurrent-batches", type=int, default=0, help="C's batches at once (0: genretag's default)")
    p.add_argument("--skip-a", action="store_true", help="skip the per-file pipeline (slow on CPU)")
    p.add_argument("--a-tracks", type=int, default=0, help="run A on only this many tracks (extrapolated)")
    p.add_argument("--b-tracks", type=int, default=0, help="run B on only this many tracks (extrapolated)")
    p.add_argument("--repeat", type=int, default=1, help="run every contender this many times, interleaved")
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
    cpu = cpu_description()
    print(f"CPU: {cpu}")
    distinct = [str(f) for f in make_library(args.library, min(args.distinct or args.tracks, args.tracks),
                                             sample_rate=args.sample_rate, channels=args.channels)]
    files = [distinct[i % len(distinct)] for i in range(args.tracks)]
    if len(distinct) < len(files):
        print(f"note: {len(files)} tracks repeat {len(distinct)} files; after its first read a file comes from memory")
    import torch

    from tagger.models.infer import pick_precision

    fast = pick_precision(args.precision, torch.device(args.device))
    plan = [("C-fast", fast)] if fast != "fp32" else []
    plan.append(("C-fp32", "fp32"))
    if not args.model.startswith("builtin:"):  # no transformers pipeline loads the built-in models
        plan.append(("B", "fp32"))
        if not args.skip_a:
            plan.append(("A", "fp32"))
    subsets = {"A": args.a_tracks, "B": args.b_tracks}
    runs = []
    with tempfile.TemporaryDirectory() as tmp, StealClock() as steal:
        model = build_model(args.model, Path(tmp))
        before = matmul_peak(args.device)
        for _ in range(args.repeat):
            runs.append({key: run_child(key[0], args, model, files[: subsets.get(key) or len(files)], precision)
                         for key, precision in plan})
        after = matmul_peak(args.device)
    peak = {k: max(before[k], after[k]) for k in before}
    print(f"model {args.model}, device {args.device}; {len(files)} tracks ({len(distinct)} distinct, "
          f"{args.sample_rate} Hz, {args.channels} channel(s)), max {args.max_windows} windows/track; "
          f"C's fast path: {fast}")
    print(f"matmul peak (higher of before the first contender / after the last): fp32 {peak['float32']:.0f} "
          f"GFLOP/s ({before['float32']:.0f}/{after['float32']:.0f}), bf16 {peak['bfloat16']:.0f} GFLOP/s "
          f"({before['bfloat16']:.0f}/{after['bfloat16']:.0f})")
    for i, results in enumerate(runs):
        if args.repeat > 1:
            print(f"--- run {i + 1} of {args.repeat}")
        print_run(results, len(files), peak)
    if args.repeat > 1:
        print_spread(runs, len(files))
    print(steal.summary())
    print(f"every figure above: {cpu}")


def print_run(results: dict, total: int, peak: dict) -> None:
    """One table of every contender's times, then the ratios that matter."""
    print("times from the contender's process start; start = imports + model load; tracks = model loaded "
          "to last track; * = timed on the first tracks and extrapolated per track")
    print(f"{'contender':<34}{'prec':>5}{'tracks':>9}{'start s':>9}{'tracks s':>10}{'wall s':>9}"
          f"{'tracks/s':>10}{'after 1st':>10}{'RSS MiB':>9}{'cached':>7}{'load':>11}")
    for key, r in results.items():
        wall, guessed = whole_run(r, total)
        star = "*" if guessed else ""
        after = f"{r['after_first']:.3f}" if r["after_first"] else "-"
        counted = f"{r['n']}" if r["n"] == total else f"{r['n']} of {total}"
        print(f"{CONTENDERS[key]:<34}{r['precision']:>5}{counted:>9}{r['start_s']:9.1f}{r['tracks_s']:10.1f}"
              f"{wall:8.1f}{star:1}{total / wall:9.3f}{star:1}{after:>10}{r['rss_mib']:9.0f}"
              f"{r['cached']:7.0%}{r['load'][0]:6.1f}>{r['load'][1]:<4.1f}")
    fast = results.get("C-fast")
    pairs = [("C-fp32", "B", "the same precision"), ("C-fast", "B", "C's fast path against B's fp32"),
             ("C-fast", "A", ""), ("C-fp32", "A", "")]
    for c_key, other, why in pairs:
        if c_key in results and other in results:
            c, o = results[c_key], results[other]
            whole = whole_run(o, total)[0] / whole_run(c, total)[0]
            per_track = (o["tracks_s"] / o["n"]) / (c["tracks_s"] / c["n"])
            print(f"{c_key} ({c['precision']}) vs {other} (fp32){f', {why}' if why else ''}: {whole:.1f}x faster "
                  f"over the whole run, {per_track:.1f}x on the tracks alone")
    for key in ("C-fast", "C-fp32"):
        if key in results:
            c = results[key]
            gflops = c["gflop_per_window"] * c["windows"] / c["model_seconds"]
            ref = peak["bfloat16"] if c["precision"] in ("bf16", "fp16") else peak["float32"]
            print(f"{key} model phase: {c['model_seconds']:.1f} s with a batch in the model, "
                  f"{c['gflop_per_window']:.1f} GFLOP/window, {gflops:.0f} GFLOP/s = {100 * gflops / ref:.0f}% of "
                  f"the {c['precision']} matmul peak")
    c32 = results["C-fp32"]
    if "B" in results:
        b = results["B"]
        same = sum(x == y for x, y in zip(b["top"], c32["top"]))
        print(f"top-1 agreement B vs C, both fp32: {same} of {len(b['top'])} tracks")
    if fast:
        same = sum(x == y for x, y in zip(fast["top"], c32["top"]))
        print(f"top-1 agreement C fp32 vs C {fast['precision']}: {same} of {total} tracks")
    if c32.get("failed") or (fast or {}).get("failed"):
        print(f"failed tracks: C fp32 {c32['failed']}, C fast {(fast or {}).get('failed', '-')}")


def print_spread(runs: list[dict], total: int) -> None:
    """The lowest and highest of each rate over the interleaved runs."""
    print(f"--- spread over {len(runs)} interleaved runs (lowest to highest)")
    for key in runs[0]:
        rates = [total / whole_run(r[key], total)[0] for r in runs]
        after = [r[key]["after_first"] for r in runs if r[key]["after_first"]]
        steady = f", after the first track {min(after):.3f}-{max(after):.3f}" if after else ""
        print(f"{CONTENDERS[key]:<34} tracks/s {min(rates):.3f}-{max(rates):.3f} (median "
              f"{statistics.median(rates):.3f}){steady}")
    for c_key, other in (("C-fp32", "B"), ("C-fast", "B"), ("C-fast", "A")):
        if c_key in runs[0] and other in runs[0]:
            ratios = [whole_run(r[other], total)[0] / whole_run(r[c_key], total)[0] for r in runs]
            print(f"{c_key} vs {other}: {min(ratios):.1f}x-{max(ratios):.1f}x faster over the whole run")


if __name__ == "__main__":
    main()
