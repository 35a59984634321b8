"""How well do the built-in models' thresholds and genre levels work on real music?

Decodes and scores each of the 50 GTZAN clips in ../shared/gtzan-dev once per built-in model (and a
few synthetic silence and noise clips), then sweeps the threshold over the stored scores and prints,
for each model, merge rule, level and threshold:

* coverage: the share of the 50 clips given a genre;
* precision: the share of the genres given that are right (see ACCEPTED: what counts as right for each
  GTZAN genre; where a model has no label for the genre, every answer is wrong and abstaining is right);
* noise abstained: the share of the silence / noise clips that get no genre.

"before" is the scoring of earlier versions (the highest score of merged labels, no parents, the
thresholds in config.json before they were measured: MSD 0.40, MTT 0.30); for a multi-label model
it is exactly what ``--level leaf`` computes now. Run (about a minute on 2 cores):

    python bench/thresholds.py [--gtzan ../shared/gtzan-dev] [--precision auto] [--target 0.8]

The threshold picked for each model and level is the lowest one (on a 0.01 grid) that stays NOISE_MARGIN
above the best score of every silence / noise clip and keeps precision >= --target at every threshold from
NOISE_MARGIN below it up; where no threshold does, the summary shows the noise floor.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.host import StealClock  # noqa: E402
from tagger.aggregate import choose_genres, rank_labels  # noqa: E402
from tagger.labels import LabelMap, builtin_label_map  # noqa: E402
from tagger.settings import LEVELS  # noqa: E402

GTZAN_DEV = Path(os.environ.get("GENRETAG_GTZAN_DEV") or Path(__file__).resolve().parents[2] / "shared" / "gtzan-dev")
"""The 50 clips: $GENRETAG_GTZAN_DEV, else ../shared/gtzan-dev beside the checkout."""
MODELS = ("musicnn-msd", "musicnn-mtt")
BEFORE = {"musicnn-msd": 0.40, "musicnn-mtt": 0.30}
GRID = [round(0.01 * i, 2) for i in range(10, 96)]  # 0.10 … 0.95, where a threshold is picked
SHOWN = [t for t in GRID if round(t * 100) % 5 == 0]  # the rows printed
NOISE_MARGIN = 0.02
"""How far above the highest silence/noise score a threshold must stay: bf16 and fp32 inference differ
by up to 0.015 on these clips, and noise of another seed by about as much."""
NOISE_SECONDS = 20.0  # as long as the GTZAN clips: one window each
NOISE_SEEDS = (0, 1, 2)

# What counts as a right genre for each GTZAN genre: the genre of that name with every genre the map
# puts below it, plus, where the model has no label of that name, the genres the style is filed under
# (Discogs files disco under Electronic and Funk / Soul; "dance" is last.fm's and MagnaTagATune's name
# for what disco became). Genres the model does not have are simply never given: for MSD, classical and
# reggae clips can only be right by abstaining; for MTT, blues, hiphop, jazz and reggae clips.
ACCEPTED = {
    "blues": {"Blues"}, "classical": {"Classical"}, "country": {"Country"},
    "disco": {"Disco", "Dance", "Funk", "Soul", "Electronic"}, "hiphop": {"Hip-Hop"}, "jazz": {"Jazz"},
    "metal": {"Metal"}, "pop": {"Pop"}, "reggae": {"Reggae"}, "rock": {"Rock"},
}
NAMESAKE_SUBTREE = {"classical", "metal", "pop", "rock"}  # sub-genres of these count as right too


@dataclass
class Clip:
    name: str
    genre: str | None  # the GTZAN genre; None for a synthetic silence / noise clip
    probs: dict  # model -> [n_windows, n_labels] probabilities


def accepted(genre: str, label_map: LabelMap) -> set[str]:
    """The genre names that are a right answer for a clip of GTZAN ``genre``."""
    names = set(ACCEPTED[genre])
    if genre in NAMESAKE_SUBTREE:
        names |= {child for child in label_map.parents if set(label_map.ancestors(child)) & names}
    return names


def noise_clips(sample_rate: int) -> dict[str, np.ndarray]:
    """Audio with no music in it: digital silence and white, pink and brown noise at two levels."""
    n = int(NOISE_SECONDS * sample_rate)
    clips = {"silence": np.zeros(n, np.float32)}
    for seed in NOISE_SEEDS:
        rng = np.random.default_rng(seed)
        white = rng.standard_normal(n)
        spectrum = np.fft.rfft(rng.standard_normal(n))
        pink = np.fft.irfft(spectrum / np.sqrt(np.maximum(np.arange(spectrum.size), 1)), n)
        brown = np.cumsum(rng.standard_normal(n))
        brown -= np.convolve(brown, np.ones(4001) / 4001, mode="same")  # no drift out of range
        for kind, signal in (("white", white), ("pink", pink), ("brown", brown)):
            unit = signal / signal.std()
            for level in (0.1, 0.01):
                clips[f"{kind} noise σ{level} #{seed}"] = (level * unit).astype(np.float32)
    return clips


def score_clips(gtzan: Path, precision: str) -> tuple[list[Clip], dict]:
    """Every clip decoded once (at 16 kHz, as a scan does) and scored by every built-in model."""
    import torch

    from tagger.decode import decode_file, windows_from_array
    from tagger.models.infer import load_classifier

    paths = sorted(gtzan.glob("*/*.wav"))
    if len(paths) != 50:
        sys.exit(f"{gtzan}: expected 50 GTZAN clips, found {len(paths)}")
    classifiers = {name: load_classifier(f"builtin:{name}", "cpu", precision) for name in MODELS}
    rate = classifiers[MODELS[0]].sampling_rate
    decoded = [(p.stem, p.parent.name, decode_file(p, rate, 3)) for p in paths]
    decoded += [(name, None, windows_from_array(audio, rate, rate, 3)) for name, audio in noise_clips(rate).items()]
    clips = []
    with torch.inference_mode():
        for name, genre, item in decoded:
            clips.append(Clip(name, genre, {m: c.predict(item.windows, item.lengths)
                                            for m, c in classifiers.items()}))
    info = {m: {"multi_label": c.multi_label, "precision": c.precision} for m, c in classifiers.items()}
    return clips, info


def save_scores(path: Path, clips: list[Clip], info: dict) -> None:
    """The scores of every clip, as plain arrays (numpy's npz, no pickle)."""
    arrays = {f"{model}/{i}": clip.probs[model].numpy() for i, clip in enumerate(clips) for model in MODELS}
    np.savez(path, names=np.array([c.name for c in clips]), genres=np.array([c.genre or "" for c in clips]),
             precisions=np.array([info[m]["precision"] for m in MODELS]),
             multi_label=np.array([info[m]["multi_label"] for m in MODELS]), **arrays)


def load_scores(path: Path) -> tuple[list[Clip], dict]:
    import torch

    data = np.load(path, allow_pickle=False)
    clips = [Clip(str(name), str(genre) or None, {m: torch.from_numpy(data[f"{m}/{i}"]) for m in MODELS})
             for i, (name, genre) in enumerate(zip(data["names"], data["genres"]))]
    info = {m: {"precision": str(p), "multi_label": bool(ml)}
            for m, p, ml in zip(MODELS, data["precisions"], data["multi_label"])}
    return clips, info


def noisy_or_ranking(probs, labels, label_map: LabelMap) -> list[tuple[str, float]]:
    """The alternative rule for multi-label models: 1 - prod(1 - p) over the labels a genre gathers."""
    mean = probs.float().mean(dim=0).numpy().astype(np.float64)
    scores = {g: 1.0 - float(np.prod(1.0 - mean[idx])) for g, idx in label_map.sources(labels).items()}
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))


def rankings(clips: list[Clip], model: str, rule: str, label_map: LabelMap, multi_label: bool) -> list:
    labels = builtin_labels(model)
    if rule == "noisy-or":
        return [noisy_or_ranking(c.probs[model], labels, label_map) for c in clips]
    return [rank_labels(c.probs[model], labels, label_map, multi_label) for c in clips]


def builtin_labels(model: str) -> list[str]:
    from tagger.models.identity import read_builtin

    return list(read_builtin(model)[0]["labels"])


@dataclass
class Row:
    coverage: float
    precision: float | None
    given: int
    right: int
    noise_abstained: float
    noise_max: float  # the highest score a silence / noise clip reaches (what a threshold must beat)
    unanswerable_abstained: float  # clips of a genre the model has no label for that get no genre


def evaluate(clips: list[Clip], ranked: list, label_map: LabelMap, threshold: float) -> Row:
    """Coverage, precision and noise abstention of top-1 decisions (``--top-k 1``) at ``threshold``."""
    nesting = label_map.nesting()
    tagged = given = right = noise_tagged = noise = unanswerable = unanswerable_tagged = 0
    noise_max = 0.0
    for clip, ranking in zip(clips, ranked):
        status, genres, _ = choose_genres(ranking, 1, threshold, None, nesting)
        if clip.genre is None:
            noise += 1
            noise_tagged += status == "ok"
            noise_max = max(noise_max, ranking[0][1])
            continue
        ok = accepted(clip.genre, label_map)
        tagged += bool(genres)
        given += len(genres)
        right += sum(g in ok for g in genres)
        if not ok & {genre for genre, _ in ranking}:
            unanswerable += 1
            unanswerable_tagged += bool(genres)
    music = sum(c.genre is not None for c in clips)
    return Row(tagged / music, right / given if given else None, given, right, 1 - noise_tagged / noise,
               noise_max, 1 - unanswerable_tagged / unanswerable if unanswerable else 1.0)


def noise_floor(rows: dict[float, Row]) -> float:
    """The lowest threshold that keeps NOISE_MARGIN above every silence / noise clip's best score."""
    return min(t for t, row in rows.items() if t >= row.noise_max + NOISE_MARGIN)


def pick_threshold(rows: dict[float, Row], target: float) -> float | None:
    """The lowest threshold at or above :func:`noise_floor` at which precision is at least ``target``
    at every threshold from NOISE_MARGIN below it up (that still tags a clip): so neither one lucky
    point nor scores that move by the margin (fp32 against bf16) undo the choice. None where no
    threshold on the grid keeps it."""
    grid = sorted(rows)
    for t in grid:
        above = [rows[u] for u in grid if u >= t - NOISE_MARGIN - 1e-9 and rows[u].given]
        if t >= noise_floor(rows) and above and all(r.precision >= target for r in above):
            return t
    return None


HEADER = "  thr   coverage  precision (right/given)  noise abstained  unanswerable abstained"


def fmt(row: Row) -> str:
    precision = "  -  " if row.precision is None else f"{row.precision:5.2f}"
    return (f"{row.coverage:8.2f}  {precision} ({row.right:2d}/{row.given:2d})        {row.noise_abstained:13.2f}"
            f"  {row.unanswerable_abstained:21.2f}")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gtzan", type=Path, default=GTZAN_DEV)
    ap.add_argument("--precision", default="auto", help="as genretag scan --precision (default: auto, "
                                                        "what a scan uses)")
    ap.add_argument("--target", type=float, default=0.8, help="precision the picked threshold must keep")
    ap.add_argument("--scores", type=Path, help="an .npz file: the scores are stored there on the first "
                                                "run and read back on the next (for trying other targets)")
    args = ap.parse_args()
    if not args.gtzan.is_dir():
        sys.exit(f"{args.gtzan}: no GTZAN clips (pass --gtzan)")
    started = time.perf_counter()
    with StealClock() as clock:
        clips, info = load_scores(args.scores) if args.scores and args.scores.exists() else (
            score_clips(args.gtzan, args.precision))
    if args.scores and not args.scores.exists():
        save_scores(args.scores, clips, info)
    print(f"# {cpu_name()}, {os.cpu_count()} cores; scored {len(clips)} clips ({sum(c.genre is None for c in clips)} "
          f"silence/noise) with both models in {time.perf_counter() - started:.0f} s; {clock.summary()}")
    summary = []
    for model in MODELS:
        base, multi = builtin_label_map(model), info[model]["multi_label"]
        print(f"\n## {model} ({'sigmoid' if multi else 'softmax'} outputs, {info[model]['precision']} inference)")
        before = evaluate(clips, rankings(clips, model, "max", base, multi), base, BEFORE[model])
        print(f"before (max merge, no parents, {BEFORE[model]:.2f}):\n{HEADER}\n  {BEFORE[model]:4.2f}{fmt(before)}")
        for rule in ("max", "noisy-or"):
            for level in LEVELS:
                label_map = base.with_level(level)
                ranked = rankings(clips, model, rule, label_map, multi)
                rows = {t: evaluate(clips, ranked, label_map, t) for t in GRID}
                picked = pick_threshold(rows, args.target)
                print(f"\n{rule} rule, --level {level}: highest silence/noise score {rows[GRID[0]].noise_max:.3f}, "
                      f"noise floor {noise_floor(rows):.2f}; picked (precision >= {args.target:.2f} from "
                      f"{NOISE_MARGIN} below it up): {picked}")
                print(HEADER)
                for t in sorted({*SHOWN, picked} - {None}):
                    print(f"  {t:4.2f}{fmt(rows[t])}{'  <- picked' if t == picked else ''}")
                if rule == "max":
                    summary.append((model, level, before, picked, rows.get(picked), noise_floor(rows), rows))
    print("\n## Summary (max rule, --top-k 1): before = leaf level at the old threshold")
    print("model        level  threshold  coverage  precision  noise abstained   (before: coverage, precision, noise)")
    for model, level, before, picked, row, floor, rows in summary:
        shown = row or rows[floor]
        print(f"{model:12s} {level:5s}  {picked or floor:9.2f}  {shown.coverage:8.2f}  {shown.precision or 0:9.2f}  "
              f"{shown.noise_abstained:15.2f}   ({BEFORE[model]:.2f}: {before.coverage:.2f}, {before.precision:.2f}, "
              f"{before.noise_abstained:.2f}){'' if picked else '  target not reached: noise floor shown'}")


if __name__ == "__main__":
    main()
