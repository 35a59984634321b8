"""`genretag train` / `genretag evaluate`: real tiny models trained on synthetic clips, the real Trainer,
the real index, then the trained checkpoint used by `scan`. No mocks."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tagger import ScanSettings, tag_folder
from tagger.cli import cli
from tagger.demo import encode, write_wav
from tagger.models.identity import model_identity, resolve_model_name
from tagger.models.infer import load_classifier
from tagger.tagging.tags import read_genres
from training.cli import evaluate, train
from training.data import DataError, DataSettings, Example, load_dataset, random_split
from training.train import Augment, ClipStore, CropCollator, TrainSettings, freeze_encoder
from training.train import train as run_training
from tests.models import GENRES as GENRES_OF_TINY_MODEL, make_tiny_whisper

GENRES = ["blues", "classical", "metal", "pop"]
CLIPS_PER_GENRE = 16
CLIP_SECONDS = 4.0
SOURCE_RATE = 22050  # GTZAN's rate: the decoder resamples to the model's 16 kHz
REPO = Path(__file__).resolve().parents[1]


def synth_clip(genre: str, seconds: float, seed: int) -> np.ndarray:
    """Four clearly different sounds (timbre and rhythm), varied per clip in pitch, tempo and level."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SOURCE_RATE)) / SOURCE_RATE
    j = rng.uniform(0.9, 1.1)
    if genre == "classical":  # soft high sustained tones with vibrato
        f = 880 * j * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))
        phase = 2 * np.pi * np.cumsum(f) / SOURCE_RATE
        x = np.sin(phase) + 0.5 * np.sin(2 * phase)
    elif genre == "metal":  # clipped low sawtooth under fast noise bursts
        x = np.clip(3 * ((t * 90 * j) % 1 - 0.5), -0.5, 0.5)
        x = x + 0.6 * rng.standard_normal(t.size) * ((t * 8 * j) % 1 < 0.3)
    elif genre == "pop":  # a kick twice a second over a quiet mid tone
        x = np.exp(-((t * 2 * j) % 1) * 25) * np.sin(2 * np.pi * 60 * t) + 0.15 * np.sin(2 * np.pi * 440 * j * t)
    else:  # blues: a mid tone with slow tremolo and a little hiss
        x = (np.sin(2 * np.pi * 196 * j * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t))
             + 0.05 * rng.standard_normal(t.size))
    return (x * rng.uniform(0.3, 1.0) / np.abs(x).max() * 0.9).astype(np.float32)


def make_tiny_ast_4s(folder: Path, seed: int = 0) -> Path:
    """A 2-layer AST whose input is 4 s (400 frames) of 64 mel bins in 16x16 patches: learns these
    sounds in about a hundred CPU steps."""
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(seed)
    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       max_length=400, num_mel_bins=64, frequency_stride=16, time_stride=16, num_labels=2)
    ASTForAudioClassification(config).save_pretrained(folder)
    ASTFeatureExtractor(max_length=400, num_mel_bins=64).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models train fastest on one thread, and a shared CI core is not fought over."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> Path:
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def gtzan_like(tmp_path_factory) -> Path:
    """GTZAN's layout (``genres/<genre>/<genre>.000NN.wav``, 22.05 kHz) with 4 synthetic genres and one
    corrupt clip."""
    root = tmp_path_factory.mktemp("gtzan")
    for g, genre in enumerate(GENRES):
        folder = root / "genres" / genre
        folder.mkdir(parents=True)
        for i in range(CLIPS_PER_GENRE):
            write_wav(folder / f"{genre}.{i:05d}.wav", synth_clip(genre, CLIP_SECONDS, 100 * g + i), SOURCE_RATE)
    (root / "genres" / "pop" / "pop.00099.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(64))
    return root


@pytest.fixture(scope="module")
def trained(gtzan_like, tmp_path_factory):
    """One real training run (tiny AST, random split) shared by the tests that inspect its output."""
    home = tmp_path_factory.mktemp("home")
    base = make_tiny_ast_4s(tmp_path_factory.mktemp("ast4s"))
    output = tmp_path_factory.mktemp("runs") / "model"
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENRETAG_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        result = run_training(DataSettings(data=str(gtzan_like), split="random", seed=0),
                              TrainSettings(output=str(output), base_model=str(base), max_steps=120,
                                            learning_rate=3e-3), report=lines.append)
    return result, home, lines


def test_training_learns_and_writes_a_complete_checkpoint(trained, gtzan_like):
    result, _, lines = trained
    out = result.output
    test = result.metrics["test"]
    assert test["split"] == "gtzan random/test"
    assert test["count"] == len(result.dataset.test) >= len(GENRES)
    assert test["accuracy"] >= 0.9, test
    assert result.metrics["valid"]["split"] == "gtzan random/valid"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "metrics.json",
                 "confusion_matrix.png", "classification_report.txt", "README.md"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "config.json", "model.safetensors", "preprocessor_config.json", "metrics.json",
        "confusion_matrix.png", "classification_report.txt", "README.md"])  # no checkpoint-*/, no .bin
    assert [p.name for p in out.parent.iterdir()] == ["model"]  # no staging folder left behind
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {str(i): g for i, g in enumerate(GENRES)}
    assert config["label2id"] == {g: i for i, g in enumerate(GENRES)}

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["splits"]["test"]["accuracy"] == test["accuracy"]
    assert set(metrics["splits"]["test"]["per_class"]) == set(GENRES)
    assert sum(metrics["dataset"]["counts"].values()) == len(GENRES) * CLIPS_PER_GENRE  # all but the corrupt clip
    corrupt = str(gtzan_like / "genres" / "pop" / "pop.00099.wav")
    assert metrics["training"]["skipped_unreadable"] == [corrupt]
    assert any(line.startswith(f"skipped {corrupt}: ") for line in lines)  # one line: path + reason
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"gtzan random/test: {test['count']} clips" in (out / "classification_report.txt").read_text()
    card = (out / "README.md").read_text()
    assert "genretag train" in card and "--max-steps 120" in card and "gtzan random/test" in card
    assert "CPU" in card or "CUDA" in card


def test_a_trained_model_is_listed_but_not_made_the_default(trained, monkeypatch):
    result, home, lines = trained
    monkeypatch.setenv("GENRETAG_HOME", str(home))
    assert resolve_model_name(None) == "builtin:musicnn-msd"
    entry = json.loads((home / "models.json").read_text())["trained"][-1]
    assert entry["path"] == str(result.output)
    assert entry["split"] == "gtzan random/test" and entry["labels"] == GENRES
    assert any(line == "clips per genre: blues 12/2/2, classical 12/2/2, metal 12/2/2, pop 13/2/2 "
               "(train/valid/test)" for line in lines)  # said before training starts


def test_thresholds_chosen_on_the_validation_clips_are_stored_and_exposed(trained):
    result, _, _ = trained
    config = json.loads((result.output / "config.json").read_text())
    calibration = json.loads((result.output / "metrics.json").read_text())["training"]["calibration"]
    assert config["genretag_min_confidence"] == calibration["thresholds"]["min_confidence"]
    assert 0 <= config["genretag_min_confidence"] <= 1 and config["genretag_min_confidence"] != 0.3
    assert config["genretag_label_thresholds"] == {}  # 8 validation clips: too few for per-genre thresholds
    assert 0 <= calibration["ece"] <= 1 and calibration["clips"] == len(result.dataset.valid)
    clf = load_classifier(str(result.output), device="cpu")
    assert clf.default_min_confidence == config["genretag_min_confidence"] and clf.label_thresholds == {}
    identity = model_identity(str(result.output))
    assert identity.default_min_confidence == config["genretag_min_confidence"]
    config["genretag_label_thresholds"] = {"metal": 0.7, "unknown": 0.1}
    (result.output / "config.json").write_text(json.dumps(config))
    try:
        assert load_classifier(str(result.output), device="cpu").label_thresholds == {"metal": 0.7}
        assert model_identity(str(result.output)).label_thresholds == {"metal": 0.7}
        assert load_classifier(str(result.output), deferred=True).label_thresholds == {"metal": 0.7}
    finally:
        config["genretag_label_thresholds"] = {}
        (result.output / "config.json").write_text(json.dumps(config))


def test_scan_with_the_trained_model_tags_held_out_tracks(trained, tmp_path):
    """The proof: tracks the model never saw, in other formats and lengths, get the right genre tags."""
    result, _, _ = trained
    library = tmp_path / "library"
    expected = {}
    for g, genre in enumerate(GENRES):
        for k, fmt in enumerate(("mp3", "flac")):
            path = library / genre / f"new-{k}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            encode(synth_clip(genre, 9.0, 5000 + 10 * g + k), path, sample_rate=SOURCE_RATE)
            expected[str(path)] = genre
    settings = ScanSettings(model=str(result.output), db=str(tmp_path / "index.db"), write_tags=True)
    summary = tag_folder(library, settings, keep_results=True)
    got = {r.path: r.labels for r in summary.results}
    assert got == {path: [genre] for path, genre in expected.items()}
    assert all(read_genres(path) == [genre] for path, genre in expected.items())


def test_evaluate_cli_reproduces_the_training_numbers(trained, gtzan_like):
    """The same seed gives the same held-out clips and the same code path, so the same accuracy."""
    result, _, _ = trained
    runner = CliRunner()
    out = runner.invoke(evaluate, [str(result.output), str(gtzan_like), "--split", "random", "--seed", "0"],
                        catch_exceptions=False)
    assert out.exit_code == 0, out.output
    test = result.metrics["test"]
    assert f"gtzan random/test: {test['count']} clips, accuracy {test['accuracy']:.3f}" in out.output
    as_json = runner.invoke(evaluate, [str(result.output), str(gtzan_like), "--split", "random", "--part", "all",
                                       "--json"], catch_exceptions=False)
    metrics = json.loads(as_json.stdout)
    assert set(metrics) == {"train", "valid", "test"}
    assert metrics["test"]["accuracy"] == result.metrics["test"]["accuracy"]
    assert metrics["train"]["count"] == len(result.dataset.train)


def test_train_cli_with_every_training_option(gtzan_like, tiny_wav2vec2, tmp_path):
    output = tmp_path / "w2v-model"
    out = CliRunner().invoke(train, [
        str(gtzan_like), "--base-model", str(tiny_wav2vec2), "--output", str(output), "--split", "random",
        "--max-steps", "3", "--batch-size", "4", "--gradient-accumulation-steps", "2", "--lr-scheduler",
        "cosine", "--learning-rate", "1e-3", "--no-augment", "--freeze-encoder", "--seed", "1",
        "--genres", "metal,pop", "--make-default"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert re.search(r"^test accuracy [01]\.\d{3}, macro-F1 .* \(gtzan random/test, \d+ clips\)$", out.stdout, re.M)
    assert "now the default model" in out.stdout
    assert resolve_model_name(None) == str(output)
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {"0": "metal", "1": "pop"} and config["model_type"] == "wav2vec2"
    training = json.loads((output / "metrics.json").read_text())["training"]
    assert training["steps"] == 3 and training["settings"]["freeze_encoder"] is True
    assert "--freeze-encoder" in training["command"] and "--no-augment" in training["command"]


def test_whisper_trains_evaluates_and_scans(gtzan_like, tiny_whisper, tmp_path):
    """The third model family: WhisperForAudioClassification, whose extractor pads every crop to 30 s."""
    output = tmp_path / "whisper-model"
    out = CliRunner().invoke(train, [str(gtzan_like), "--base-model", str(tiny_whisper), "--output", str(output),
                                     "--split", "random", "--max-steps", "2", "--batch-size", "4", "--genres",
                                     "metal,pop"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert json.loads((output / "config.json").read_text())["model_type"] == "whisper"
    test = json.loads((output / "metrics.json").read_text())["splits"]["test"]
    assert test["count"] == 4 and set(test["per_class"]) <= {"metal", "pop"}
    evaluated = CliRunner().invoke(evaluate, [str(output), str(gtzan_like), "--split", "random", "--genres",
                                              "metal,pop"], catch_exceptions=False)
    assert f"gtzan random/test: 4 clips, accuracy {test['accuracy']:.3f}" in evaluated.output
    summary = tag_folder(gtzan_like / "genres" / "metal", ScanSettings(model=str(output), min_confidence=0.0,
                                                                      db=str(tmp_path / "i.db")), keep_results=True)
    assert summary.tagged == CLIPS_PER_GENRE and summary.failed == 0
    assert {label for r in summary.results for label in r.labels} <= {"metal", "pop"}


def test_train_refuses_a_folder_that_is_not_a_checkpoint(gtzan_like, tiny_wav2vec2, tmp_path):
    (tmp_path / "music").mkdir()
    (tmp_path / "music" / "song.mp3").write_bytes(b"x")
    out = CliRunner().invoke(train, [str(gtzan_like), "--base-model", str(tiny_wav2vec2), "--output",
                                     str(tmp_path / "music")])
    assert out.exit_code == 1 and "not empty and holds no checkpoint" in out.output
    assert (tmp_path / "music" / "song.mp3").read_bytes() == b"x"


def test_train_explains_a_base_model_it_cannot_get(gtzan_like, tmp_path):
    out = CliRunner().invoke(train, [str(gtzan_like), "--base-model", "genretag-tests/no-such-model", "--output",
                                     str(tmp_path / "m"), "--split", "random"])
    assert out.exit_code == 1 and "HF_HUB_OFFLINE is set" in out.output, out.output
    assert not (tmp_path / "m").exists()


# -- data ------------------------------------------------------------------------------------------------
def fake_gtzan(root: Path, folder: str, ext: str = "wav") -> Path:
    """The full GTZAN file tree, 10 genres x 100 empty files."""
    from training.data import GTZAN_GENRES

    for genre in GTZAN_GENRES:
        d = root / folder / genre if folder else root / genre
        d.mkdir(parents=True)
        for i in range(100):
            (d / f"{genre}.{i:05d}.{ext}").touch()
    return root


@pytest.mark.parametrize("folder,ext,data", [("genres_original", "wav", ""), ("genres", "au", ""),
                                              ("genres", "wav", "genres")])
def test_filtered_split_lists_give_443_197_290(tmp_path, folder, ext, data):
    root = fake_gtzan(tmp_path, folder, ext)
    ds = load_dataset(DataSettings(data=str(root / data)))
    assert (ds.source, ds.split) == ("gtzan", "filtered")
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (443, 197, 290)
    assert len(ds.labels) == 10
    assert any(e.path.endswith(f"jazz/jazz.00054.{ext}") for e in ds.train)  # listed; decoding decides
    assert not {e.path for e in ds.train} & {e.path for e in ds.test}
    assert any("70 clips are in none of the filtered split's lists" in n for n in ds.notes)
    assert ds.split_name("test") == "gtzan filtered/test"


def test_filtered_split_only_for_gtzan(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "x.wav").touch()
    with pytest.raises(DataError, match="filtered split is defined for GTZAN only"):
        load_dataset(DataSettings(data=str(tmp_path), split="filtered"))


def test_random_split_is_stratified_disjoint_and_seeded():
    examples = [Example(f"/m/{label}/{i}.mp3", label) for label, n in (("a", 30), ("b", 10), ("c", 3))
                for i in range(n)]
    parts, _ = random_split(examples, seed=0)
    assert {k: len(v) for k, v in parts.items()} == {"train": 24 + 8 + 1, "valid": 3 + 1 + 1, "test": 3 + 1 + 1}
    for part in parts.values():
        assert {e.label for e in part} == {"a", "b", "c"}
    assert sum(len(v) for v in parts.values()) == len({e.path for v in parts.values() for e in v}) == 43
    assert random_split(list(reversed(examples)), seed=0)[0] == parts
    assert random_split(examples, seed=1)[0] != parts
    only_a, _ = random_split([e for e in examples if e.label == "a"], seed=0)  # e.g. another --genres
    assert only_a == {k: [e for e in v if e.label == "a"] for k, v in parts.items()}


def test_folder_dataset_with_genre_map_and_whitelist(tmp_path):
    for label, n in (("Hip Hop", 4), ("hip-hop", 2), ("Rock", 5), ("Jazz", 2)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "data" / label / f"{i}.flac").touch()
    (tmp_path / "map.toml").write_text('"Hip Hop" = "Hip-Hop"\n')
    ds = load_dataset(DataSettings(data=str(tmp_path / "data"), genre_map=str(tmp_path / "map.toml")))
    assert (ds.source, ds.split, ds.labels) == ("folder", "random", ["Hip-Hop", "Rock"])
    assert sum(e.label == "Hip-Hop" for part in ds.parts().values() for e in part) == 6  # merged, any case
    assert any("dropped 1 genres with fewer than 3 clips: Jazz (2)" in n for n in ds.notes)
    only = load_dataset(DataSettings(data=str(tmp_path / "data"), genres=("rock", "HIP HOP")))
    assert only.labels == ["HIP HOP", "rock"]  # the whitelist's spelling names the genre
    with pytest.raises(DataError, match="a genre needs at least 3 clips"):
        load_dataset(DataSettings(data=str(tmp_path / "data"), min_per_genre=2))


@pytest.mark.parametrize("clips", [5, 20])
def test_a_partial_gtzan_copy_gets_the_grouped_split_and_says_so(tmp_path, clips):
    """Like ../shared/gtzan-dev (5 clips per genre): the filtered lists would leave genres without training
    clips, so each genre's clip numbers are cut into runs, and no part is empty."""
    from training.data import GTZAN_GENRES

    for genre in GTZAN_GENRES:
        (tmp_path / genre).mkdir()
        for i in range(clips):
            (tmp_path / genre / f"{genre}.{i:05d}.wav").touch()
    ds = load_dataset(DataSettings(data=str(tmp_path)))
    assert (ds.source, ds.split, len(ds.labels)) == ("gtzan", "grouped", 10)
    n_valid = n_test = max(1, round(clips / 10))
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (10 * (clips - 2 * n_valid), 10 * n_valid, 10 * n_test)
    numbers = {part: {int(Path(e.path).stem.split(".")[1]) for e in examples if e.label == "jazz"}
               for part, examples in ds.parts().items()}
    assert max(numbers["train"]) < min(numbers["valid"]) <= max(numbers["valid"]) < min(numbers["test"])
    assert any("too few for that split: using the grouped split" in n for n in ds.notes)
    assert ds.genre_counts().startswith(f"clips per genre: blues {clips - 2 * n_valid}/{n_valid}/{n_test}, ")
    if clips != 5:
        return
    filtered = load_dataset(DataSettings(data=str(tmp_path), split="filtered"))  # asked for: given, with notes
    assert filtered.split == "filtered" and len(filtered.labels) == 6  # blues, classical... have no train clip
    assert all(filtered.parts().values())
    assert any("dropped clips of genres with no training clip" in n for n in filtered.notes)


# -- --from-index ----------------------------------------------------------------------------------------
def tag(path: Path, genres: list[str], artist: str | None = None) -> None:
    """The owner's tags, set with mutagen (not by genretag)."""
    import mutagen

    audio = mutagen.File(path, easy=True)
    if genres:
        audio["genre"] = genres
    if artist:
        audio["artist"] = artist
    audio.save()


LIBRARY_PLAN = ([(["Hip Hop"], "metal", f"MC {i}") for i in range(3)] + [(["hip-hop"], "metal", "MC 3")]
                + [(["Rock", "Pop"], "pop", f"Band {i}") for i in range(4)]
                + [(["Jazz"], "blues", "Trio")] * 2 + [([], "classical", "Quartet")])
"""(genres, sound, artist): four artists of hip-hop, four of rock-and-pop, one jazz trio (two tracks:
too rare) and an untagged track."""


@pytest.fixture
def tagged_library(tmp_path, tiny_wav2vec2) -> tuple[Path, Path]:
    """A library whose files carry genre and artist tags, scanned into an index (tracks.genres filled)."""
    library, db = tmp_path / "music", tmp_path / "index.db"
    for i, (genres, sound, artist) in enumerate(LIBRARY_PLAN):
        path = library / f"album{i % 2}" / f"{i:02d}.{('mp3', 'flac')[i % 2]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        encode(synth_clip(sound, 2.0, i), path, sample_rate=SOURCE_RATE)
        tag(path, genres, artist)
    tag_folder(library, ScanSettings(model=str(tiny_wav2vec2), db=str(db)))
    return library, db


def test_from_index_labels_tracks_with_every_genre_in_their_tags_and_splits_by_artist(tagged_library, tmp_path):
    library, db = tagged_library
    (tmp_path / "map.toml").write_text('[genres]\n"Hip Hop" = "Hip-Hop"\n')
    ds = load_dataset(DataSettings(data=str(library), from_index=True, db=str(db),
                                   genre_map=str(tmp_path / "map.toml")))
    assert (ds.source, ds.split, ds.labels) == ("index", "artist", ["Hip-Hop", "Pop", "Rock"])
    examples = {Path(e.path).name: e for part in ds.parts().values() for e in part}
    assert len(examples) == 8 and {e.all_genres for e in examples.values()} == {("Hip-Hop",), ("Rock", "Pop")}
    assert {e.group for e in examples.values()} == {f"artist:mc {i}" for i in range(4)} | {
        f"artist:band {i}" for i in range(4)}
    artists = {part: {e.group for e in items} for part, items in ds.parts().items()}
    assert not (artists["train"] & artists["valid"] or artists["train"] & artists["test"]
                or artists["valid"] & artists["test"])
    assert [len(artists[p]) for p in ("train", "valid", "test")] == [4, 2, 2]  # per genre: 2 / 1 / 1 artists
    assert "artist split: 4 train / 2 valid / 2 test clips, 3 genres; 4 / 2 / 2 artists" in ds.summary()
    assert ds.genre_counts() == "clips per genre: Hip-Hop 2/1/1, Pop 2/1/1, Rock 2/1/1 (train/valid/test)"
    assert any("Jazz (2)" in n for n in ds.notes) and any("4 clips have several genres" in n for n in ds.notes)

    pop = load_dataset(DataSettings(data=str(library), from_index=True, db=str(db), genres=("Pop", "Hip Hop")))
    assert pop.labels == ["Hip Hop", "Pop"]  # the whitelist keeps Pop of "Rock; Pop"
    by_track = load_dataset(DataSettings(data=str(library), from_index=True, db=str(db), split="random"))
    assert by_track.split == "random"

    with pytest.raises(DataError, match="no index at"):
        load_dataset(DataSettings(data=str(library), from_index=True, db=str(tmp_path / "none.db")))
    with pytest.raises(DataError, match="the artist split needs --from-index"):
        load_dataset(DataSettings(data=str(library), split="artist"))


def test_from_index_never_learns_the_genres_genretag_wrote(tagged_library, tiny_wav2vec2):
    """After `scan --write-tags` replaced every genre (the tiny model's are blues/jazz/metal/pop), the
    labels are still the owner's: their genres before the write. The untagged track got one of
    genretag's genres and stays unlabelled."""
    library, db = tagged_library
    before = load_dataset(DataSettings(data=str(library), from_index=True, db=str(db)))
    out = CliRunner().invoke(cli, ["scan", str(library), "--write-tags", "--model", str(tiny_wav2vec2), "--db",
                                   str(db), "--min-confidence", "0"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    untagged = library / f"album{(len(LIBRARY_PLAN) - 1) % 2}" / f"{len(LIBRARY_PLAN) - 1:02d}.mp3"
    assert read_genres(untagged)[0] in GENRES_OF_TINY_MODEL  # genretag wrote it
    after = load_dataset(DataSettings(data=str(library), from_index=True, db=str(db)))
    assert after.labels == before.labels == ["Hip Hop", "Pop", "Rock"]  # hip-hop: one track, too rare
    assert not set(after.labels) & set(GENRES_OF_TINY_MODEL)
    assert after.parts() == before.parts()
    assert any("11 tracks hold genres genretag wrote" in n and "(1 had none and are left out)" in n
               for n in after.notes), after.notes


def test_train_cli_from_index(tagged_library, tiny_wav2vec2, tmp_path):
    """Fine-tuning from the library: the same labels and artist split as a head."""
    library, db = tagged_library
    output = tmp_path / "from-index"
    out = CliRunner().invoke(train, [str(library), "--from-index", "--db", str(db), "--base-model",
                                     str(tiny_wav2vec2), "--output", str(output), "--max-steps", "2"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "artist split: 3 train / 2 valid / 2 test clips, 3 genres; 3 / 2 / 2 artists" in out.output, out.output
    assert "(index artist/test," in out.stdout
    assert json.loads((output / "config.json").read_text())["id2label"] == {"0": "Hip Hop", "1": "Pop", "2": "Rock"}


# -- pieces ----------------------------------------------------------------------------------------------
def test_unreadable_clips_are_reported_not_fatal(gtzan_like, tmp_path):
    bad = gtzan_like / "genres" / "pop" / "pop.00099.wav"
    good = gtzan_like / "genres" / "pop" / "pop.00000.wav"
    errors = []
    store = ClipStore(16000, 3, cache_gb=1)
    assert store.preflight([Example(str(bad), "pop"), Example(str(good), "pop")], errors.append) == {str(bad)}
    assert [e.path for e in errors] == [str(bad)] and "\n" not in str(errors[0])
    (clip,) = store.windows(str(good))
    assert abs(clip.numel() - 4 * 16000) < 400  # decoded once at the model's rate, kept as int16


def test_collator_crops_to_one_length_without_padding():
    import torch
    from transformers import Wav2Vec2FeatureExtractor

    fe = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True)
    long, short = torch.ones(40000, dtype=torch.int16), torch.ones(24000, dtype=torch.int16)
    collate = CropCollator(fe, crop_samples=32000, augment=Augment())
    batch = collate([{"windows": [long], "label": 0, "train": True}, {"windows": [short], "label": 1, "train": True}])
    assert batch["input_values"].shape == (2, 24000) and batch["labels"].tolist() == [0, 1]
    assert "attention_mask" not in batch or bool(batch["attention_mask"].all())
    eval_batch = collate([{"windows": [long, torch.zeros(32000, dtype=torch.int16), long], "label": 0,
                           "train": False}])
    assert eval_batch["input_values"].shape == (1, 32000)  # middle window, centre crop


def test_augment_is_seeded_and_keeps_length():
    import torch

    x = torch.sin(torch.linspace(0, 100, 16000)) * 0.5
    torch.manual_seed(3)
    a = Augment(noise_p=1, shift_p=1, gain_p=1)(x)
    torch.manual_seed(3)
    assert torch.equal(a, Augment(noise_p=1, shift_p=1, gain_p=1)(x))
    assert a.shape == x.shape and not torch.equal(a, x) and a.abs().max() <= 1.5
    assert torch.equal(Augment(noise_p=0, shift_p=0, gain_p=0)(x), x)


def test_freeze_encoder_leaves_only_the_head(tiny_wav2vec2, tmp_path):
    from training.train import load_base_model

    ast, _ = load_base_model(str(make_tiny_ast_4s(tmp_path / "ast")), ["a", "b", "c"], seed=0)
    freeze_encoder(ast)  # no freeze method: everything outside the head
    assert {n.split(".")[0] for n, p in ast.named_parameters() if p.requires_grad} == {"classifier"}
    w2v, _ = load_base_model(str(tiny_wav2vec2), ["a", "b"], seed=0)
    assert w2v.config.num_labels == 2 and w2v.config.id2label == {0: "a", 1: "b"}
    freeze_encoder(w2v)  # Wav2Vec2ForSequenceClassification.freeze_base_model
    assert not any(p.requires_grad for n, p in w2v.named_parameters() if n.startswith("wav2vec2."))
    assert any(p.requires_grad for n, p in w2v.named_parameters() if n.startswith("classifier"))


def test_cli_module_imports_no_torch():
    code = "import sys, training.cli; assert not {'torch', 'transformers'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
