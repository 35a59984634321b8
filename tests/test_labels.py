"""Label maps: renaming, dropping and merging model labels into genre names, and the TOML format."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tagger.errors import GenretagError
from tagger.labels import (LabelMap, LabelMapError, builtin_label_map, identity_map, load_label_map,
                           parse_label_map)

LABELS = ["rock", "rnb", "female vocalists", "classic", "classical", "80s"]
SCORES = [0.6, 0.3, 0.9, 0.2, 0.7, 0.5]

EXAMPLE = """
keep_unlisted = false
drop = ["female vocalists", "80s"]

[genres]
"rock" = "Rock"
"rnb" = "R&B"
"classic" = "Classical"
"classical" = "Classical"
"""


def test_identity_map_keeps_everything_sorted_by_score():
    assert identity_map().apply(LABELS, SCORES) == sorted(zip(LABELS, SCORES), key=lambda x: -x[1])


def test_rename_drop_and_max_merge():
    result = parse_label_map(EXAMPLE).apply(LABELS, SCORES)
    assert result == [("Classical", 0.7), ("Rock", 0.6), ("R&B", 0.3)]


def test_max_merge_does_not_depend_on_label_order():
    label_map = parse_label_map(EXAMPLE)
    flipped = label_map.apply(LABELS[::-1], SCORES[::-1])
    assert dict(flipped)["Classical"] == 0.7


@pytest.mark.parametrize("scores", [torch.tensor(SCORES), np.array(SCORES, dtype=np.float32), SCORES])
def test_apply_accepts_tensors_arrays_and_lists(scores):
    result = dict(parse_label_map(EXAMPLE).apply(LABELS, scores))
    assert result["R&B"] == pytest.approx(0.3)


def test_apply_rejects_mismatched_scores():
    with pytest.raises(ValueError):
        identity_map().apply(LABELS, SCORES[:-1])
    with pytest.raises(ValueError):
        identity_map().apply(LABELS, torch.zeros(2, len(LABELS)))


def test_keep_unlisted_passes_other_labels_through_but_still_drops():
    label_map = parse_label_map('keep_unlisted = true\ndrop = ["80s"]\n[genres]\n"rnb" = "R&B"\n')
    assert label_map.keep is None
    names = [name for name, _ in label_map.apply(LABELS, SCORES)]
    assert "R&B" in names and "rock" in names and "80s" not in names


def test_dataclass_api_directly():
    label_map = LabelMap(rename={"Rock music": "Rock"}, keep=frozenset({"Rock music", "Jazz"}))
    assert label_map.apply(["Speech", "Rock music", "Jazz"], [0.9, 0.4, 0.1]) == [("Rock", 0.4), ("Jazz", 0.1)]


def test_load_label_map_from_file(tmp_path):
    path = tmp_path / "labels.toml"
    path.write_text(EXAMPLE, encoding="utf-8")
    assert load_label_map(path) == parse_label_map(EXAMPLE)


def test_digest_follows_the_rules_not_their_order():
    a = parse_label_map('drop = ["80s", "sad"]\n[genres]\n"rnb" = "R&B"\n"rock" = "Rock"\n')
    b = parse_label_map('drop = ["sad", "80s"]\n[genres]\n"rock" = "Rock"\n"rnb" = "R&B"\n')
    assert a.digest() == b.digest()
    assert parse_label_map('keep_unlisted = true\n').digest() == identity_map().digest()  # the same rules
    assert len({a.digest(), parse_label_map('[genres]\n"rnb" = "RnB"\n"rock" = "Rock"\n').digest(),
                identity_map().digest(), builtin_label_map("musicnn-msd").digest()}) == 4


def test_unknown_labels_finds_typos():
    label_map = parse_label_map('[genres]\n"rock" = "Rock"\n"jaz" = "Jazz"\n')
    assert label_map.unknown_labels(LABELS) == ["jaz"]


@pytest.mark.parametrize("text", [
    "genres = [",                                          # not TOML
    'keep_unlisted = "no"\n[genres]\n"rock" = "Rock"',     # wrong type
    'drop = "80s"\n[genres]\n"rock" = "Rock"',             # drop is not a list
    '[genres]\n"rock" = 1',                                # genre name not a string
    '[genres]\n"rock" = " "',                              # empty genre name
    'dorp = ["80s"]\n[genres]\n"rock" = "Rock"',           # unknown key (typo)
    'drop = ["rock"]\n[genres]\n"rock" = "Rock"',          # renamed and dropped
    'drop = ["80s"]',                                      # would drop every label
])
def test_malformed_files_are_rejected(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LabelMapError) as err:
        load_label_map(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, GenretagError)


def test_missing_file_is_a_label_map_error(tmp_path):
    with pytest.raises(LabelMapError):
        load_label_map(tmp_path / "nope.toml")


def test_builtin_maps_load_and_rename():
    msd = builtin_label_map("musicnn-msd")
    assert msd.genre("rnb") == "R&B" and msd.genre("Hip-Hop") == "Hip-Hop"
    assert msd.genre("electronica") == "Electronica" and msd.genre("Progressive rock") == "Progressive Rock"
    assert not msd.kept("female vocalists") and not msd.kept("80s") and not msd.kept("sad")
    mtt = builtin_label_map("musicnn-mtt")
    assert mtt.genre("classic") == mtt.genre("classical") == "Classical"
    assert not mtt.kept("guitar") and not mtt.kept("no vocals")


@pytest.mark.parametrize("name", ["nope", "../musicnn-msd"])
def test_unknown_builtin_map(name):
    with pytest.raises(LabelMapError):
        builtin_label_map(name)
