"""How fast is `genretag report` on a big index? Builds an index of N tracks (default 100,000) through
tagger.index.Index, so the schema is the real one, then times the library call and the CLI.

    .venv/bin/python bench/report_100k.py [--tracks 100000] [--db /tmp/report-100k.db] [--repeat 3]

Rows: /music/<artist>/<album>/<nnnnnn>.flac (2,000 artists, 5 albums each), 12 genres with a skewed
distribution, ~86 % tagged, ~9 % abstained, ~5 % failed; 30 % of the tracks also carry an older model's
prediction, and a fifth of the tagged ones a tag write. Rows are inserted in path order, as a scan
writes them; --shuffle inserts them in random order, the worst case for the join.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GENRES = ["rock", "pop", "electronic", "jazz", "hip-hop", "classical", "metal", "folk", "blues",
          "country", "reggae", "soul"]
MODELS = [("builtin:musicnn-msd", "a1b2c3d4e5f60718"), ("/models/gtzan-ast", "0f1e2d3c4b5a6978")]
CHUNK = 10_000


def prediction(rng: random.Random, path: str, model: tuple[str, str], run_id: int, stamp: float) -> dict:
    """A plausible row: a skewed top genre, a top score around 0.6, abstained below 0.3, 5 % failed."""
    top = rng.choices(GENRES, weights=[1 / (i + 1) for i in range(len(GENRES))])[0]
    score = rng.betavariate(3.0, 2.2)
    rest = sorted(((g, rng.random()) for g in GENRES if g != top), key=lambda x: -x[1])
    norm = sum(s for _, s in rest) / (1 - score)
    ranking = [(top, round(score, 6))] + [(g, round(s / norm, 6)) for g, s in rest]
    ranking.sort(key=lambda x: -x[1])
    status = "failed" if rng.random() < 0.05 else "abstained" if ranking[0][1] < 0.3 else "ok"
    if status == "failed":
        ranking = []
    labels, scores = ([ranking[0][0]], [ranking[0][1]]) if status == "ok" else ([], [])
    return {"path": path, "fingerprint": model[1], "model_id": model[0], "size": 30_000_000,
            "mtime_ns": 1_700_000_000 * 10**9, "status": status, "labels": json.dumps(labels),
            "scores": json.dumps(scores), "ranking": json.dumps(ranking[:10]),
            "window_labels": json.dumps([ranking[:3]] * 3 if ranking else []), "windows": 3 if ranking else 0,
            "error": "cannot decode: invalid data found" if status == "failed" else None,
            "written": int(status == "ok" and rng.random() < 0.2), "run_id": run_id, "created_at": stamp}


def build(db: Path, n: int, shuffle: bool = False, seed: int = 0) -> None:
    """Rows in path order, as a scan writes them (it walks folders sorted); ``shuffle`` writes them in
    random order, the worst case for the tracks ⨝ predictions join."""
    from tagger.index import Index

    rng = random.Random(seed)
    artists = [f"Artist {i:04d}" for i in range(max(1, n // 50))]
    paths = sorted(f"/music/{rng.choice(artists)}/Album {rng.randrange(5)}/{i:06d}.flac" for i in range(n))
    if shuffle:
        rng.shuffle(paths)
    with Index(db) as index:
        for model_id, fp in MODELS:
            index.note_model(model_id, fp, GENRES)
        old_run = index.start_run("scan", root="/music", model_id=MODELS[1][0], fingerprint=MODELS[1][1])
        run = index.start_run("scan", root="/music", model_id=MODELS[0][0], fingerprint=MODELS[0][1])
        now = time.time()
        for start in range(0, n, CHUNK):
            tracks, preds, writes = [], [], []
            for i, path in enumerate(paths[start:start + CHUNK], start):
                _, artist, album, _ = path.rsplit("/", 3)
                stamp = now - rng.random() * 30 * 86400
                p = prediction(rng, path, MODELS[0], run, stamp)
                preds.append(p)
                if rng.random() < 0.3:
                    preds.append(prediction(rng, path, MODELS[1], old_run, stamp - 86400))
                if p["written"]:
                    writes.append({"run_id": run, "path": path, "raw_path": os.fsencode(path), "before": "{}",
                                   "after": "{}", "old_genres": "[]", "new_genres": p["labels"],
                                   "written_at": stamp, "undone_at": None, "undo_run_id": None})
                tracks.append({"path": path, "raw_path": os.fsencode(path), "size": 30_000_000,
                               "mtime_ns": 1_700_000_000 * 10**9, "duration": 180.0 + i % 120, "codec": "flac",
                               "status": p["status"], "error": p["error"], "genres": p["labels"],
                               "artist": artist, "album": album, "title": f"Track {i}",
                               "model_id": MODELS[0][0], "fingerprint": MODELS[0][1], "run_id": run,
                               "updated_at": stamp})
            with index._tx():
                index.db["tracks"].insert_all(tracks, batch_size=1000)
                index.db["predictions"].insert_all(preds, batch_size=1000)
                index.db["tag_writes"].insert_all(writes, batch_size=1000)


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def cli_command() -> list[str]:
    """`genretag report` once the command is registered in the main group; until then the command alone."""
    exe = str(Path(sys.executable).with_name("genretag"))
    probe = subprocess.run([exe, "report", "--help"], capture_output=True, text=True)
    if probe.returncode == 0:
        return [exe, "report"]
    return [sys.executable, "-c", "from tagger.reporting.commands import report; report()"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shuffle", action="store_true", help="insert the rows in random path order")
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp()) / "report-100k.db"
    if not db.exists():
        t0 = time.perf_counter()
        build(db, args.tracks, args.shuffle)
        order = " in random order" if args.shuffle else ""
        print(f"built {db} ({args.tracks:,} tracks{order}, {db.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.1f} s")

    from tagger.reporting.report import ReportOptions, build_report
    from tagger.reporting.render import report_html

    def lib(**kw):
        return lambda: build_report(db, ReportOptions(**kw))

    result = build_report(db, ReportOptions())
    assert result.total == args.tracks, result.total
    print(f"report: {result.total:,} tracks, status {result.status}")
    cases = [("library: default", lib()), ("library: --by album", lib(by="album")),
             ("library: --by folder", lib(by="folder")), ("library: --model <old>", lib(model=MODELS[1][1])),
             ("library: --min-confidence 0.5 --since 7d",
              lib(min_confidence=0.5, since=time.time() - 7 * 86400)),
             ("library: with every track (HTML data)", lib(tracks=True)),
             ("library: HTML rendering", lambda: report_html(build_report(db, ReportOptions(tracks=True))))]
    base = cli_command()
    for flags in ([], ["--json"], ["--by", "artist"], ["--csv"]):
        cmd = [*base, "--db", str(db), *flags]
        cases.append((f"CLI subprocess: report {' '.join(flags)}".rstrip(),
                      lambda cmd=cmd: subprocess.run(cmd, check=True, capture_output=True)))
    html = Path(tempfile.mkdtemp()) / "report.html"
    cases.append(("CLI subprocess: report --html", lambda: subprocess.run(
        [*base, "--db", str(db), "--html", str(html)], check=True, capture_output=True)))
    print(f"{'case':48} {'best':>8} {'median':>8}   ({args.repeat} runs, {os.cpu_count()} CPU, "
          f"load average before: {os.getloadavg()[0]:.2f})")
    for name, fn in cases:
        times = timed(fn, args.repeat)
        print(f"{name:48} {min(times):7.3f}s {statistics.median(times):7.3f}s")
    print(f"HTML file: {html.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
