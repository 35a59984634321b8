"""Genre levels and per-genre thresholds end to end: real scans with a tiny (softmax) wav2vec2 model,
tags read back from the written files, rows from the real index, the CLI in-process and as a program."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tagger import ScanSettings, Tagger, tag_folder
from tagger.cli import cli
from tests.index_rows import rows
from tests.test_scan import TRACKS, mutagen_genres

MAP = """
[genres]
"blues" = "Blues"
"jazz" = "Jazz"
"metal" = "Heavy Metal"
"pop" = "Pop"

[parents]
"Blues" = "Roots"
"Jazz" = "Roots"
"Heavy Metal" = "Metal"
"""
TOP = {"Blues": "Roots", "Jazz": "Roots", "Heavy Metal": "Metal", "Pop": "Pop"}


@pytest.fixture
def label_file(tmp_path) -> Path:
    path = tmp_path / "levels.toml"
    path.write_text(MAP, encoding="utf-8")
    return path


def scan(library, tmp_path, model, db="i.db", **kw):
    settings = ScanSettings(model=str(model), db=str(tmp_path / db), **{"min_confidence": 0.0, **kw})
    return tag_folder(library, settings, keep_results=True)


def leaf_probabilities(library, tmp_path, model, label_file) -> dict[str, dict[str, float]]:
    """Each track's probability per leaf genre: the softmax over the model's four labels."""
    first = scan(library, tmp_path, model, db="leaf.db", labels=str(label_file), level="leaf", top_k=4)
    return {r.path: dict(r.ranking) for r in first.results}


def expected_top(leaf: dict[str, float]) -> dict[str, float]:
    sums: dict[str, float] = {}
    for genre, p in leaf.items():
        sums[TOP[genre]] = sums.get(TOP[genre], 0.0) + p
    return sums


def test_level_top_writes_each_track_its_top_level_genre_scored_by_summed_probabilities(
        library, tmp_path, tiny_wav2vec2, label_file):
    leaf = leaf_probabilities(library, tmp_path, tiny_wav2vec2, label_file)
    assert all(sum(p.values()) == pytest.approx(1.0, abs=1e-5) for p in leaf.values())
    top = scan(library, tmp_path, tiny_wav2vec2, labels=str(label_file), level="top", write_tags=True)
    assert (top.scanned, top.written) == (TRACKS, TRACKS)
    for result in top.results:
        sums = expected_top(leaf[result.path])
        assert dict(result.ranking) == pytest.approx(sums, abs=1e-5)
        best = max(sums, key=sums.get)
        assert mutagen_genres(result.path) == [best] == result.labels


def test_level_both_writes_the_top_level_genre_and_its_sub_genre_also_when_decided_from_the_index(
        library, tmp_path, tiny_wav2vec2, label_file):
    leaf = leaf_probabilities(library, tmp_path, tiny_wav2vec2, label_file)
    # Everything abstains first; a rescan at a lower threshold decides from the stored rankings alone.
    none = scan(library, tmp_path, tiny_wav2vec2, labels=str(label_file), level="both", min_confidence=1.0)
    assert none.abstained == TRACKS
    both = scan(library, tmp_path, tiny_wav2vec2, labels=str(label_file), level="both", write_tags=True)
    assert (both.scanned, both.relabelled, both.written) == (0, TRACKS, TRACKS)
    for path, probs in leaf.items():
        sums = expected_top(probs)
        parent = max(sums, key=sums.get)
        children = {g: p for g, p in probs.items() if TOP[g] == parent and g != parent}
        expected = [parent, max(children, key=children.get)] if children else [parent]
        assert sorted(mutagen_genres(path)) == sorted(expected)
    stored = rows(tmp_path / "i.db", "select labels from predictions")
    assert all(json.loads(r["labels"])[0] in {"Roots", "Metal", "Pop"} for r in stored)


def test_level_both_stores_whole_rankings_so_the_index_can_decide_sub_genres_again(library, tmp_path):
    """At level both a sub-genre may rank anywhere below its parent: the index keeps every genre of the
    ranking (musicnn-msd: 30), not the usual 10, so that a rescan decides exactly as a prediction."""
    from tagger.labels import builtin_label_map
    from tagger.models.identity import read_builtin

    short = [p for p in library.rglob("*") if p.suffix in (".mp3", ".opus") and p.stat().st_size < 100_000]
    folder = tmp_path / "short"
    folder.mkdir()
    for path in short:
        shutil.copy(path, folder / path.name)
    scan(folder, tmp_path, "builtin:musicnn-msd", level="both")
    genres = builtin_label_map("musicnn-msd").with_level("both").genres(read_builtin("musicnn-msd")[0]["labels"])
    stored = rows(tmp_path / "i.db", "select ranking from predictions")
    assert len(stored) == len(short) > 0 and {len(json.loads(r["ranking"])) for r in stored} == {len(genres)}
    assert len(genres) > 10


def test_another_level_predicts_again_the_same_level_is_served_from_the_index(
        library, tmp_path, tiny_wav2vec2, label_file):
    args = dict(labels=str(label_file))
    assert scan(library, tmp_path, tiny_wav2vec2, level="leaf", **args).scanned == TRACKS
    assert scan(library, tmp_path, tiny_wav2vec2, level="leaf", **args).scanned == 0
    assert scan(library, tmp_path, tiny_wav2vec2, level="top", **args).scanned == TRACKS
    again = scan(library, tmp_path, tiny_wav2vec2, level="top", **args)
    assert (again.scanned, again.skipped) == (0, TRACKS)


@pytest.fixture
def checkpoint_with_thresholds(library, tmp_path, tiny_wav2vec2):
    """A copy of the tiny checkpoint whose config carries per-genre thresholds, set from a first scan so
    that the track with the lowest best score abstains (its genre's threshold is just above it) and the
    others, judged by the global 0.01 or by that threshold, are tagged where they reach it."""
    first = scan(library, tmp_path, tiny_wav2vec2, db="probe.db")
    best = {r.path: r.ranking[0] for r in first.results}
    genre, score = min(best.values(), key=lambda pair: pair[1])
    thresholds = {genre: score + 1e-4}
    folder = Path(shutil.copytree(tiny_wav2vec2, tmp_path / "with-thresholds"))
    config = json.loads((folder / "config.json").read_text())
    config.update(genretag_label_thresholds=thresholds, genretag_min_confidence=0.01)
    (folder / "config.json").write_text(json.dumps(config))
    expected = {path: s >= thresholds.get(g, 0.01) for path, (g, s) in best.items()}
    assert 0 < sum(expected.values()) < TRACKS
    return folder, expected


def test_per_genre_thresholds_decide_a_scan_and_min_confidence_overrides_them(
        library, tmp_path, checkpoint_with_thresholds):
    model, expected = checkpoint_with_thresholds
    own = scan(library, tmp_path, model, min_confidence=None, write_tags=True)
    assert {r.path: r.status == "ok" for r in own.results} == expected
    for path, tagged in expected.items():
        assert bool(mutagen_genres(path)) == tagged
    # --min-confidence overrides every per-genre threshold, decided again from the index.
    forced = scan(library, tmp_path, model, min_confidence=0.0, write_tags=True)
    abstained = TRACKS - sum(expected.values())
    assert (forced.scanned, forced.relabelled, forced.written) == (0, abstained, abstained)
    assert all(mutagen_genres(path) for path in expected)
    back = scan(library, tmp_path, model, min_confidence=None)
    assert back.relabelled == abstained
    statuses = {r["path"]: r["status"] for r in rows(tmp_path / "i.db", "select path, status from predictions")}
    assert {path: statuses[path] == "ok" for path in expected} == expected


def test_per_genre_thresholds_through_the_cli_and_the_library(library, tmp_path, checkpoint_with_thresholds):
    model, expected = checkpoint_with_thresholds
    args = ["scan", str(library), "--model", str(model), "--db", str(tmp_path / "cli.db"), "--json"]
    own = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert own.exit_code == 0, own.output
    lines = [json.loads(line) for line in own.stdout.splitlines() if line.startswith("{")]
    assert {line["path"]: line["status"] == "ok" for line in lines} == expected
    forced = CliRunner().invoke(cli, args + ["--min-confidence", "0", "--rescan"], catch_exceptions=False)
    assert {json.loads(line)["status"] for line in forced.stdout.splitlines() if line.startswith("{")} == {"ok"}
    results = Tagger(str(model), device="cpu", precision="fp32").classify_tracks(sorted(expected))
    assert {r.path: r.status == "ok" for r in results} == expected


def test_level_option_in_a_real_process_and_in_the_help(library, tmp_path, tiny_wav2vec2, label_file):
    exe = Path(sys.executable).with_name("genretag")
    env = {**os.environ, "GENRETAG_DB": str(tmp_path / "sub.db")}
    proc = subprocess.run([str(exe), "scan", str(library), "--model", str(tiny_wav2vec2), "--labels",
                           str(label_file), "--level", "top", "--min-confidence", "0", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == TRACKS and all(line["labels"][0] in {"Roots", "Metal", "Pop"} for line in lines)
    bad = CliRunner().invoke(cli, ["scan", str(library), "--level", "middle"])
    assert bad.exit_code == 2 and "--level" in bad.output
    assert "--level" in CliRunner().invoke(cli, ["scan", "--help"]).output


def test_tagger_ranks_at_the_level_asked_for(library, tiny_wav2vec2, label_file):
    track = sorted(p for p in library.rglob("*") if p.is_file())[0]
    ranked = Tagger(str(tiny_wav2vec2), device="cpu", labels=str(label_file), level="top").classify(track)
    assert {item["label"] for item in ranked} == {"Roots", "Metal", "Pop"}
    assert sum(item["score"] for item in ranked) == pytest.approx(1.0, abs=1e-5)


def test_malformed_per_genre_thresholds_stop_the_scan_with_one_line(library, tmp_path, tiny_wav2vec2):
    """A checkpoint's thresholds are checked when it loads, before anything is predicted or written."""
    folder = Path(shutil.copytree(tiny_wav2vec2, tmp_path / "bad-thresholds"))
    config = json.loads((folder / "config.json").read_text())
    config["genretag_label_thresholds"] = {"jazz": "high"}
    (folder / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(cli, ["scan", str(library), "--model", str(folder), "--db", str(tmp_path / "i.db")])
    assert result.exit_code == 1 and "per-genre thresholds" in result.output and str(folder) in result.output
    assert "Traceback" not in result.output and not (tmp_path / "i.db").exists()
