"""Heads on the built-in musicnn model's embeddings (`genretag train DATA --base-model builtin:musicnn-msd`):
real embeddings of synthesized music, real scikit-learn fits, the real checkpoint loaded by scan, evaluate,
Tagger, `models use` and the Ray engine. Real GTZAN clips from ../shared/gtzan-dev where present."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tagger import ScanSettings, Tagger, tag_folder
from tagger.cli import cli
from tagger.demo import encode, synth, write_wav
from tagger.errors import ModelError
from tagger.models.head import HeadClassifier, geometric_track_scores, load_head
from tagger.models.identity import model_identity, resolve_model_name
from tagger.models.infer import DeferredClassifier, load_classifier
from tagger.tagging.tags import read_genres
from training.calibration import choose_thresholds, expected_calibration_error
from training.cli import evaluate, train
from training.data import DataSettings, Example, load_dataset
from training.heads import cv_folds, cv_groups, embed_examples, fit_head, refit
from tests.shared_data import GTZAN_DEV

REPO = Path(__file__).resolve().parents[1]
STYLES = {"blues": "ambientish", "disco": "pulse", "hiphop": "breakish", "metal": "rockish"}
"""GTZAN genre folder -> the demo style its synthetic clips are made of."""
CLIPS_PER_GENRE = 8
CLIP_SECONDS = 6.0  # two 3 s patches
RATE = 22050


@pytest.fixture(scope="module", autouse=True)
def _home(tmp_path_factory) -> Path:
    """One model registry for the module, so the shared training run registers where the tests look
    (and never in the user's)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENRETAG_HOME", str(home))
        yield home


@pytest.fixture(autouse=True)
def _keep_module_home(monkeypatch, _home):
    """conftest gives every test a home of its own; these tests share the module's."""
    monkeypatch.setenv("GENRETAG_HOME", str(_home))


def style_clip(genre: str, seconds: float, seed: int) -> np.ndarray:
    return synth(STYLES[genre], seconds, seed=seed, sample_rate=RATE)


@pytest.fixture(scope="module")
def synthetic_gtzan(tmp_path_factory) -> Path:
    """GTZAN's layout with 4 genres of synthetic music, 8 clips each, and a corrupt disco.00000 (in the
    training run of the grouped split: disco's good clips are numbered from 1)."""
    root = tmp_path_factory.mktemp("gtzan") / "genres"
    for g, genre in enumerate(STYLES):
        (root / genre).mkdir(parents=True)
        first = 1 if genre == "disco" else 0
        for i in range(CLIPS_PER_GENRE):
            write_wav(root / genre / f"{genre}.{first + i:05d}.wav", style_clip(genre, CLIP_SECONDS, 100 * g + i),
                      RATE)
    (root / "disco" / "disco.00000.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(64))
    return root.parent


@pytest.fixture(scope="module")
def trained_head(synthetic_gtzan, tmp_path_factory):
    """One `genretag train --base-model builtin:musicnn-msd` through the CLI, shared by the tests."""
    output = tmp_path_factory.mktemp("runs") / "head"
    result = CliRunner().invoke(train, [str(synthetic_gtzan), "--base-model", "builtin:musicnn-msd", "--output",
                                        str(output)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return output, result


@pytest.fixture(scope="module")
def held_out_library(tmp_path_factory) -> dict[str, str]:
    """Clips the head never saw (other seeds, other lengths, compressed formats): path -> genre."""
    root = tmp_path_factory.mktemp("library")
    expected = {}
    for g, genre in enumerate(STYLES):
        for k, fmt in enumerate(("mp3", "flac")):
            path = root / genre / f"new-{k}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            encode(style_clip(genre, 12.0 + 20 * k, 9000 + 10 * g + k), path, sample_rate=RATE)
            expected[str(path)] = genre
    return expected


def test_train_writes_a_complete_checkpoint_that_is_not_the_default(trained_head, synthetic_gtzan):
    output, result = trained_head
    out = result.output
    metrics = json.loads((output / "metrics.json").read_text())["training"]
    assert metrics["fitted_on"]["parts"] == ["train", "valid", "test"] and metrics["fitted_on"]["clips"] == 4 * 8
    assert metrics["head"]["fitted_clips"] == 32 and metrics["head"]["cv"]["clips"] == 28
    assert set(metrics["measured"]) == {"cv", "test"}
    assert json.loads((output / "config.json").read_text())["head"]["fitted_on"] == metrics["fitted_on"]
    assert "fitted on all 32 labelled clips (train+valid+test)" in out
    assert "**The head written was fitted on all 32 labelled clips**" in (output / "README.md").read_text()
    assert "grouped split" in out and "clips per genre: blues 6/1/1, disco 7/1/1" in out  # before training
    assert "skipped " + str(synthetic_gtzan / "genres" / "disco" / "disco.00000.wav") + ": " in out
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["training"]["skipped_unreadable"] == [str(synthetic_gtzan / "genres" / "disco" / "disco.00000.wav")]
    cv = metrics["splits"]["cv"]
    assert cv["accuracy"] >= 0.9 and cv["count"] == 4 * 7 and cv["grouped"] and cv["nested"]
    assert "cross-validated accuracy" in result.stdout and "test accuracy" in result.stdout
    assert f"genretag models use {output}" in result.stdout
    assert sorted(p.name for p in output.iterdir()) == sorted([
        "config.json", "head.safetensors", "metrics.json", "confusion_matrix.png", "classification_report.txt",
        "README.md"])  # nothing pickled; nothing but the head (the backbone is named, not copied)
    assert [p.name for p in output.parent.iterdir()] == ["head"]  # no staging folder left behind
    config = json.loads((output / "config.json").read_text())
    assert config["backbone"]["model_id"] == "builtin:musicnn-msd"
    assert config["embedding_space"] == f"builtin:musicnn-msd@{config['backbone']['fingerprint']}/penultimate"
    assert 0 <= config["genretag_min_confidence"] <= 1 and isinstance(config["genretag_label_thresholds"], dict)
    test = json.loads((output / "metrics.json").read_text())["splits"]["test"]
    assert test["split"] == "gtzan grouped/test" and test["count"] == 4 and test["accuracy"] == 1.0
    card = (output / "README.md").read_text()
    assert "cross-validated" in card.lower() and "genretag models use" in card and "Threshold" in card
    assert resolve_model_name(None) == "builtin:musicnn-msd"  # training changes no default


def test_the_checkpoint_loads_as_a_classifier_with_its_identity(trained_head):
    output, _ = trained_head
    config = json.loads((output / "config.json").read_text())
    clf = load_classifier(str(output), device="cpu")
    assert isinstance(clf, HeadClassifier)
    assert clf.labels == list(STYLES) and not clf.multi_label and clf.sampling_rate == 16000
    assert clf.default_min_confidence == config["genretag_min_confidence"]
    assert clf.label_thresholds == config["genretag_label_thresholds"]
    assert (clf.embedding_space, clf.embedding_dim) == (config["embedding_space"], 200)
    identity = model_identity(str(output))
    assert (identity.fingerprint, identity.labels, identity.sampling_rate) == (clf.fingerprint, clf.labels, 16000)
    assert identity.default_min_confidence == clf.default_min_confidence
    deferred = load_classifier(str(output), deferred=True)
    assert isinstance(deferred, DeferredClassifier) and not deferred.loaded
    assert deferred.label_thresholds == clf.label_thresholds and not deferred.loaded


def test_one_forward_gives_window_scores_and_embeddings_whose_mean_gives_the_track_score(trained_head):
    output, _ = trained_head
    clf = load_head(str(output), torch.device("cpu"), "fp32")
    audio = torch.from_numpy(np.stack([synth("pulse", 30.0, seed=s, sample_rate=16000) for s in (1, 2, 3)]))
    probs, embeddings = clf.predict_with_embeddings(audio, torch.tensor([480000, 480000, 200000]))
    assert probs.shape == (3, 4) and embeddings.shape == (3, 200) and embeddings.dtype == torch.float32
    torch.testing.assert_close(probs, clf.predict(audio, torch.tensor([480000, 480000, 200000])), rtol=0, atol=0)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    track = clf.head_scores(embeddings.mean(dim=0, keepdim=True))[0]
    torch.testing.assert_close(geometric_track_scores(probs), track, rtol=0, atol=2e-3)  # float16 rounding apart
    as_numpy = clf.head_scores(embeddings.numpy().astype(np.float16))
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    np.testing.assert_array_equal(as_numpy, clf.head_scores(embeddings).numpy())  # both round to float16 first


def test_scan_tagger_and_evaluate_use_the_head_like_any_model(trained_head, held_out_library, synthetic_gtzan,
                                                               tmp_path):
    output, result = trained_head
    library = Path(next(iter(held_out_library))).parents[1]
    summary = tag_folder(library, ScanSettings(model=str(output), db=str(tmp_path / "index.db"), write_tags=True,
                                               min_confidence=0.0), keep_results=True)
    assert {r.path: r.labels for r in summary.results} == {p: [g] for p, g in held_out_library.items()}
    assert all(read_genres(p) == [g] for p, g in held_out_library.items())
    tagger = Tagger(str(output))
    assert [tagger.classify(p)[0]["label"] for p in held_out_library] == list(held_out_library.values())
    test = json.loads((output / "metrics.json").read_text())["splits"]["test"]
    out = CliRunner().invoke(evaluate, [str(output), str(synthetic_gtzan)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert f"gtzan grouped/test: {test['count']} clips, accuracy {test['accuracy']:.3f}" in out.output
    # the head written was refitted on the test clips too (--refit-all, the default): evaluate says so
    assert out.output.count("note: this head was fitted on the test part of this split") == 1
    valid = CliRunner().invoke(evaluate, [str(output), str(synthetic_gtzan), "--part", "valid"])
    assert "note: this head was fitted on the valid part" in valid.output
    other = CliRunner().invoke(evaluate, [str(output), str(synthetic_gtzan), "--split", "random"])
    assert other.exit_code == 0 and "this head was fitted" not in other.output  # another split: no claim
    scan = CliRunner().invoke(cli, ["scan", str(library), "--model", str(output), "--db", str(tmp_path / "cli.db")],
                              catch_exceptions=False)
    assert scan.exit_code == 0, scan.output


def test_models_use_switches_the_default_and_back(trained_head, tmp_path):
    output, _ = trained_head
    from tagger.index import Index

    Index(tmp_path / "i.db").close()  # `models` reads an existing index only
    runner = CliRunner()
    listed = json.loads(runner.invoke(cli, ["models", "--db", str(tmp_path / "i.db"), "--json"]).output)
    assert str(output) in {a["model"] for a in listed["available"]}
    assert listed["default"] == "builtin:musicnn-msd"
    assert runner.invoke(cli, ["models", "use", str(output)]).exit_code == 0
    assert resolve_model_name(None) == str(output)
    assert resolve_model_name("builtin:musicnn-mtt") == "builtin:musicnn-mtt"
    assert "Available checkpoints" in runner.invoke(cli, ["models", "--db", str(tmp_path / "i.db")]).output
    back = runner.invoke(cli, ["models", "use", "builtin:musicnn-mtt"])
    assert back.exit_code == 0 and resolve_model_name(None) == "builtin:musicnn-mtt"
    for bad in ("builtin:nope", str(tmp_path / "missing"), str(tmp_path)):
        refused = runner.invoke(cli, ["models", "use", bad])
        assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1, refused.output
    assert resolve_model_name(None) == "builtin:musicnn-mtt"
    runner.invoke(cli, ["models", "use", "builtin:musicnn-msd"])


def test_train_make_default(synthetic_gtzan, tmp_path):
    output = tmp_path / "default-head"
    out = CliRunner().invoke(train, [str(synthetic_gtzan), "--base-model", "builtin:musicnn-mtt", "--output",
                                     str(output), "--genres", "blues,metal", "--make-default", "--epochs", "3"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "--epochs applies to fine-tuning only" in out.output
    assert resolve_model_name(None) == str(output) and "now the default model" in out.stdout
    assert load_classifier(None).labels == ["blues", "metal"]
    CliRunner().invoke(cli, ["models", "use", "builtin:musicnn-msd"])


def test_fingerprint_follows_the_head_and_the_backbone(trained_head, tmp_path):
    import shutil

    output, _ = trained_head
    copy = Path(shutil.copytree(output, tmp_path / "copy"))
    fingerprint = model_identity(str(copy)).fingerprint
    assert fingerprint == model_identity(str(output)).fingerprint
    weights = bytearray((copy / "head.safetensors").read_bytes())
    weights[-1] ^= 1  # one bit of the last bias
    (copy / "head.safetensors").write_bytes(bytes(weights))
    assert model_identity(str(copy)).fingerprint != fingerprint
    config = json.loads((copy / "config.json").read_text())
    config["backbone"]["fingerprint"] = "0" * 16  # trained on other backbone weights
    (copy / "config.json").write_text(json.dumps(config))
    assert model_identity(str(copy)) is None
    with pytest.raises(ModelError, match=r"trained on builtin:musicnn-msd weights 0{16}, but the installed") as err:
        load_classifier(str(copy), device="cpu")
    assert "\n" not in str(err.value)
    scan = CliRunner().invoke(cli, ["scan", str(tmp_path), "--model", str(copy), "--db", str(tmp_path / "i.db")])
    assert scan.exit_code != 0 and "train it again" in scan.output


# -- fitting on embeddings alone ------------------------------------------------------------------------
def clusters(n_per_class: int, dim: int, classes: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    return (centres[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32), y


def test_fit_head_learns_from_an_embedding_matrix_and_predicts_unseen_ones():
    x, y = clusters(12, 200, 5, seed=0, spread=2.0)
    names = [f"g{i}" for i in y]
    fit = fit_head(x * 50, names)  # a scale float16 still holds
    assert fit.labels == [f"g{i}" for i in range(5)] and fit.weight.shape == (5, 200) and fit.mean.shape == (200,)
    assert fit.cv["nested"] and fit.cv["folds"] == 5 and len(fit.cv["fold_accuracies"]) == 5
    assert fit.cv["accuracy"] >= 0.9
    new_x, new_y = clusters(20, 200, 5, seed=0, spread=2.0)
    new_x = new_x + np.random.default_rng(7).normal(scale=2.0, size=new_x.shape)  # new draws around the centres
    assert (fit.scores(new_x * 50).argmax(1) == new_y).mean() >= 0.9
    probs = fit.scores(new_x * 50)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    two = fit_head(x[y < 2], [names[i] for i in np.flatnonzero(y < 2)])  # scikit-learn's binary case
    assert two.weight.shape == (2, 200) and two.cv["accuracy"] >= 0.9
    few = np.concatenate([np.flatnonzero(y == g)[:2] for g in range(5)])  # 2 clips per genre: MIN_PER_GENRE's
    sparse = fit_head(x[few] * 50, [names[i] for i in few])                # train + valid
    assert sparse.cv["folds"] == 2 and not sparse.cv["nested"] and sparse.weight.shape == (5, 200)


def test_a_track_with_several_genres_counts_once_and_is_right_with_any_of_them():
    """Clips of genre pairs lie between the two clusters: each genre is an example of weight 1/2, and a
    top-1 prediction of either is right. A genre that is never a clip's first is learned too."""
    x, y = clusters(10, 50, 3, seed=1, spread=1.5)
    names = ["a", "b", "c"]
    labels = [names[i] for i in y]
    mixed = (x[y == 0][:6] + x[y == 2][:6]) / 2  # between a and c; "c" is never a mixed clip's first
    fit = fit_head(np.vstack([x, mixed]), labels + [("a", "c")] * 6, seed=0)
    assert fit.labels == names and fit.cv["clips"] == 36 and fit.cv["clips_with_several_genres"] == 6
    assert fit.oof_true.shape == (36, 3) and np.allclose(fit.oof_true.sum(axis=1), 1)
    np.testing.assert_array_equal(fit.oof_true[-1], [0.5, 0, 0.5])
    top = fit.oof_probs[-6:].argmax(axis=1)
    assert set(top) <= {0, 2}  # between a and c, never b
    right = fit.oof_probs.argmax(axis=1) == np.append(y, top)  # the mixed clips are right whatever of a/c
    assert fit.cv["accuracy"] == pytest.approx(np.mean(right), abs=0.1)
    probs = fit.scores(mixed)
    assert (probs[:, [0, 2]].sum(axis=1) > 0.8).all()  # both of their genres share the score
    with pytest.raises(Exception, match="at least 2 genres"):
        fit_head(x[:4], ["a"] * 4)


def test_refit_keeps_what_was_chosen_and_learns_from_every_clip():
    x, y = clusters(6, 40, 3, seed=2, spread=1.5)
    labels = [f"g{i}" for i in y]
    held = np.array([i % 6 == 5 for i in range(len(y))])  # one clip per genre: the test part
    fit = fit_head(x[~held], [labels[i] for i in np.flatnonzero(~held)])
    full = refit(fit, x, labels)
    assert (full.C, full.temperature, full.thresholds, full.cv, full.labels) == (
        fit.C, fit.temperature, fit.thresholds, fit.cv, fit.labels)
    assert (fit.fitted_clips, full.fitted_clips) == (15, 18) and not np.allclose(full.weight, fit.weight)
    again = fit_head(x, labels, cs=[fit.C])  # a fit on all of them with the same C: the same weights
    np.testing.assert_allclose(full.weight, again.weight * again.temperature / fit.temperature, atol=1e-4)
    with pytest.raises(Exception, match="every genre of the head needs clips"):
        refit(fit, x[y < 2], [labels[i] for i in np.flatnonzero(y < 2)])


def test_folds_keep_groups_together_and_train_on_every_genre():
    y = np.repeat(np.arange(4), 10)
    groups = np.tile(np.arange(10) // 2, 4)  # pairs of neighbouring clip numbers
    folds, grouped = cv_folds(y, groups, seed=0)
    assert grouped and len(folds) == 5
    for fit_rows, held_out in folds:
        assert not set(groups[fit_rows]) & set(groups[held_out])
        assert set(y[fit_rows]) == set(range(4))
    folds, grouped = cv_folds(y, None, seed=0)
    assert not grouped and len(folds) == 5
    examples = [Example(f"/g/{g}/{g}.{i:05d}.wav", g) for g in ("a", "b") for i in (7, 3, 5, 1, 9)]
    assert cv_groups(examples, "gtzan") == [3, 1, 2, 0, 4] * 2  # runs of clip numbers, one per fold


def test_thresholds_are_the_lowest_score_meeting_the_precision_target():
    # top scores 0.95..0.50 (descending), right except the 4th and the 7th
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5])
    right = np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1], bool)
    probs = np.stack([scores, 1 - scores], axis=1)
    true = np.where(right, 0, 1)
    t = choose_thresholds(probs, true, ["a", "b"])
    # precision of the top m: 1,1,1,.75,.8,.83,.71,.75,.78,.8 -> never >= 0.9 after the 3rd
    assert (t.global_threshold, t.coverage, t.target_reached) == (0.85, 0.3, True)
    assert t.per_label == {}  # 10 held-out tracks: too few for a genre of its own
    all_right = choose_thresholds(probs, np.zeros(10, int), ["a", "b"])
    assert all_right.global_threshold == 0.0 and all_right.coverage == 1.0
    assert expected_calibration_error(probs, np.zeros(10, int)) == pytest.approx(1 - scores.mean())


# -- real music ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gtzan_dev_embeddings():
    if not GTZAN_DEV.is_dir():
        pytest.skip("needs ../shared/gtzan-dev (50 real GTZAN clips)")
    from tagger.models.musicnn import load_builtin
    from training.heads import _scan_precision

    dataset = load_dataset(DataSettings(data=str(GTZAN_DEV)))
    backbone = load_builtin("musicnn-msd", precision=_scan_precision())  # what `train` uses
    examples = dataset.train + dataset.valid + dataset.test
    embedded = embed_examples(backbone, examples, max_windows=3)
    assert not embedded.unreadable
    return dataset, embedded


def test_real_music_cross_validated_and_on_held_out_clips(gtzan_dev_embeddings):
    """40 real clips (4 per genre) to fit, cross-validated with folds of neighbouring clip numbers; then
    the 10 test clips (clip number 4 of each genre), never used for fitting."""
    dataset, embedded = gtzan_dev_embeddings
    assert dataset.split == "grouped" and len(dataset.test) == 10
    train_paths = {e.path for e in dataset.train + dataset.valid}
    rows = [i for i, e in enumerate(embedded.examples) if e.path in train_paths]
    test_rows = [i for i, e in enumerate(embedded.examples) if e.path not in train_paths]
    train_examples = [embedded.examples[i] for i in rows]
    fit = fit_head(embedded.embeddings[rows], [e.label for e in train_examples],
                   cv_groups(train_examples, "gtzan"))
    assert fit.cv["grouped"] and fit.cv["folds"] == 4
    assert fit.cv["accuracy"] >= 0.7, fit.cv  # chance: 0.1; 0.8 on a 2-core EPYC, bf16 or fp32
    predicted = [fit.labels[i] for i in fit.scores(embedded.embeddings[test_rows]).argmax(1)]
    right = sum(p == embedded.examples[i].label for p, i in zip(predicted, test_rows))
    assert right >= 6, list(zip(predicted, [embedded.examples[i].label for i in test_rows]))  # 8 on a 2-core EPYC


# -- Ray ---------------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_the_ray_engine_loads_the_head_in_its_actors(trained_head, held_out_library, tmp_path):
    import logging

    ray = pytest.importorskip("ray")
    output, _ = trained_head
    library = Path(next(iter(held_out_library))).parents[1]
    ray.init("local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        summary = tag_folder(library, ScanSettings(model=str(output), db=str(tmp_path / "ray.db"), engine="ray",
                                                   min_confidence=0.0), keep_results=True)
    finally:
        ray.shutdown()
    assert summary.failed == 0
    assert {r.path: r.labels for r in summary.results} == {p: [g] for p, g in held_out_library.items()}


# -- the user's library ------------------------------------------------------------------------------------
LIBRARY_STYLES = {"Ambient": "ambientish", "Electro": "pulse", "Swing": "swingish"}
"""The owner's genres (none of them the tiny model's blues/jazz/metal/pop) -> the demo style played."""


def own_tags(path: Path, genres: list[str], artist: str | None, album: str | None) -> None:
    import mutagen

    audio = mutagen.File(path, easy=True)
    for key, value in (("genre", genres), ("artist", artist), ("album", album)):
        if value:
            audio[key] = value
        elif key in audio:
            del audio[key]
    audio.save()


@pytest.fixture(scope="module")
def scanned_library(tmp_path_factory, tiny_wav2vec2):
    """Four artists per genre, two tracks each (an album per artist; Electro 3 tagged Electro and
    Ambient), three untagged tracks; then `scan --write-tags` with a tiny model over all of them, so
    every file holds genretag's genres; then the owner re-tags one untagged track Ambient and a scan
    reads it."""
    root = tmp_path_factory.mktemp("owned")
    library, db = root / "music", root / "index.db"
    for g, (genre, style) in enumerate(LIBRARY_STYLES.items()):
        for a in range(4):
            for t in range(2):
                path = library / f"{genre} {a}" / f"{t}.{('mp3', 'flac')[t]}"
                path.parent.mkdir(parents=True, exist_ok=True)
                encode(synth(style, 8.0, seed=100 * g + 10 * a + t, sample_rate=RATE), path, sample_rate=RATE)
                genres = [genre, "Ambient"] if (genre, a) == ("Electro", 3) else [genre]
                own_tags(path, genres, f"{genre} Artist {a}", f"Album {a}")
    for t, style in enumerate(LIBRARY_STYLES.values()):
        path = library / "unsorted" / f"{t}.mp3"
        path.parent.mkdir(parents=True, exist_ok=True)
        encode(synth(style, 8.0, seed=900 + t, sample_rate=RATE), path, sample_rate=RATE)
    written = tag_folder(library, ScanSettings(model=str(tiny_wav2vec2), db=str(db), write_tags=True,
                                               min_confidence=0.0))
    assert written.written == 27
    own_tags(library / "unsorted" / "0.mp3", ["Ambient"], None, None)
    tag_folder(library, ScanSettings(model=str(tiny_wav2vec2), db=str(db)))
    return library, db


def test_train_from_index_learns_the_owners_genres_by_artist(scanned_library, tmp_path):
    library, db = scanned_library
    output = tmp_path / "mine"
    result = CliRunner().invoke(train, [str(library), "--from-index", "--db", str(db), "--base-model",
                                        "builtin:musicnn-msd", "--output", str(output)], catch_exceptions=False)
    out = result.output
    assert result.exit_code == 0, out
    # said before training: the split, its counts and the artists per part
    said = out.index("embedding every clip")
    assert 0 <= out.index("index dataset at") < said and 0 <= out.index("clips per genre:") < said
    said = re.search(r"artist split: (\d+) train / (\d+) valid / (\d+) test clips, 3 genres; (\d+) / (\d+) / (\d+) "
                     r"artists \(train/valid/test; an artist's tracks are in one part only\)", out)
    assert said, out
    assert "26 tracks hold genres genretag wrote" in out and "(2 had none and are left out)" in out
    assert "1 tracks were given other genres after genretag wrote" in out

    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["dataset"]["labels"] == sorted(LIBRARY_STYLES)  # never blues/jazz/metal/pop
    assert metrics["splits"]["cv"]["split"] == "index artist/train+valid, " + f"{metrics['splits']['cv']['folds']}-fold CV"
    assert metrics["splits"]["cv"]["grouped"] and metrics["splits"]["cv"]["accuracy"] >= 0.8
    assert metrics["splits"]["test"]["split"] == "index artist/test"
    assert metrics["training"]["fitted_on"]["parts"] == ["train", "valid", "test"]

    dataset = load_dataset(DataSettings(data=str(library), from_index=True, db=str(db)))
    artists = {part: {e.group for e in items} for part, items in dataset.parts().items()}
    assert not (artists["train"] & artists["valid"] or artists["train"] & artists["test"]
                or artists["valid"] & artists["test"])
    parts = ("train", "valid", "test")
    assert [int(n) for n in said.groups()] == [len(dataset.parts()[p]) for p in parts] + [len(artists[p]) for p in parts]
    assert all(genre in {g for e in dataset.test for g in e.all_genres} for genre in LIBRARY_STYLES)
    every = {Path(e.path).relative_to(library).as_posix(): e for part in dataset.parts().values() for e in part}
    assert "unsorted/1.mp3" not in every and "unsorted/2.mp3" not in every  # genretag's genres only
    assert every["unsorted/0.mp3"].all_genres == ("Ambient",)  # the owner's edit
    assert every["Electro 3/0.mp3"].all_genres == ("Electro", "Ambient")
    assert all(read_genres(library / name)[0] not in LIBRARY_STYLES for name in every if "unsorted" not in name)

    evaluated = CliRunner().invoke(evaluate, [str(output), str(library), "--from-index", "--db", str(db)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "note: this head was fitted on the test part of this split" in evaluated.output
    assert f"index artist/test: {len(dataset.test)} clips" in evaluated.output


def test_train_from_index_reads_the_embeddings_a_scan_stored_instead_of_decoding(tmp_path):
    """A built-in model's scan keeps every track's embedding; training a head on that backbone from the
    index uses them (the same vectors decoding gives), except for a file edited since its scan."""
    from tagger.index import Index
    from training.heads import embeddings_for
    from tagger.models.musicnn import load_builtin
    from training.heads import EMBEDDING_LAYER, _scan_precision

    library, db = tmp_path / "music", tmp_path / "index.db"
    for g, (genre, style) in enumerate(LIBRARY_STYLES.items()):
        for a in range(5):
            path = library / f"{genre} {a}.mp3"
            path.parent.mkdir(parents=True, exist_ok=True)
            encode(synth(style, 8.0, seed=50 * g + a, sample_rate=RATE), path, sample_rate=RATE)
            own_tags(path, [genre], f"{genre} Artist {a}", None)
    scanned = tag_folder(library, ScanSettings(model="builtin:musicnn-msd", db=str(db)))
    assert scanned.predicted == 15
    edited = library / "Swing 4.mp3"
    own_tags(edited, ["Swing"], "Swing Artist 4", "An album added after the scan")

    dataset = load_dataset(DataSettings(data=str(library), from_index=True, db=str(db)))
    examples = dataset.train + dataset.valid + dataset.test
    backbone = load_builtin("musicnn-msd", embedding_layer=EMBEDDING_LAYER, precision=_scan_precision())
    with Index(db, create=False) as index:
        stored = embeddings_for(examples, backbone, max_windows=3, index=index)
        assert embeddings_for(examples, backbone, max_windows=1, index=index).from_index == 15 - 1
    decoded = embeddings_for(examples, backbone, max_windows=3)
    assert (stored.from_index, decoded.from_index, len(stored.examples)) == (15 - 1, 0, 15)
    assert [e.path for e in stored.examples] == [e.path for e in decoded.examples]
    np.testing.assert_allclose(stored.embeddings, decoded.embeddings.astype(np.float16).astype(np.float32),
                               rtol=1e-3, atol=1e-4)  # a float16 rounding apart at most

    output = tmp_path / "mine"
    result = CliRunner().invoke(train, [str(library), "--from-index", "--db", str(db), "--base-model",
                                        "builtin:musicnn-msd", "--output", str(output)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "14 of 15 clips' embeddings read from the index (not decoded)" in result.output
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["training"]["stages_seconds"]["embeddings_from_index"] == 14


# -- without the training extras ---------------------------------------------------------------------------
BLOCK_SKLEARN = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, Blocker())
from tagger.cli import main
sys.argv = ["genretag", *sys.argv[1:]]
main()
"""


def test_train_without_the_training_extras_says_what_to_install(synthetic_gtzan, tmp_path):
    proc = subprocess.run([sys.executable, "-c", BLOCK_SKLEARN, "train", str(synthetic_gtzan), "--base-model",
                           "builtin:musicnn-msd", "--output", str(tmp_path / "m")], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "Error: training needs the training extras (missing: sklearn): pip install 'genretag[train]'"]
    assert not (tmp_path / "m").exists()
