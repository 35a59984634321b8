"""Label maps: renaming, dropping, merging and rolling model labels up into genres, the TOML format, and
choosing a track's genres from the ranking (global and per-genre thresholds, levels)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tagger.aggregate import choose_genres, rank_labels
from tagger.errors import GenretagError
from tagger.labels import (LabelMap, LabelMapError, builtin_label_map, identity_map, load_label_map,
                           parse_label_map)
from tagger.records import ABSTAINED, OK

LABELS = ["rock", "rnb", "female vocalists", "classic", "classical", "80s"]
SCORES = [0.6, 0.3, 0.9, 0.2, 0.7, 0.5]
SOFTMAX = [0.3, 0.1, 0.2, 0.1, 0.2, 0.1]  # one distribution over LABELS

EXAMPLE = """
keep_unlisted = false
drop = ["female vocalists", "80s"]

[genres]
"rock" = "Rock"
"rnb" = "R&B"
"classic" = "Classical"
"classical" = "Classical"
"""

TREE = """
[genres]
"rock" = "Rock"
"hard rock" = "Hard Rock"
"alternative rock" = "Alternative Rock"
"heavy metal" = "Heavy Metal"
"doom" = "Doom Metal"
"jazz" = "Jazz"

[parents]
"Hard Rock" = "Rock"
"Alternative Rock" = "Rock"
"Doom Metal" = "Heavy Metal"
"Heavy Metal" = "Metal"
"""
TREE_LABELS = ["rock", "hard rock", "alternative rock", "heavy metal", "doom", "jazz", "speech"]
TREE_SIGMOID = [0.30, 0.50, 0.20, 0.10, 0.40, 0.05, 0.9]
TREE_SOFTMAX = [0.20, 0.10, 0.15, 0.05, 0.20, 0.10, 0.20]


def test_identity_map_keeps_everything_sorted_by_score():
    expected = sorted(zip(LABELS, SCORES), key=lambda x: -x[1])
    assert identity_map().apply(LABELS, SCORES, multi_label=True) == expected


def test_sigmoid_rename_drop_and_max_merge():
    result = parse_label_map(EXAMPLE).apply(LABELS, SCORES, multi_label=True)
    assert result == [("Classical", 0.7), ("Rock", 0.6), ("R&B", 0.3)]


def test_max_merge_does_not_depend_on_label_order():
    label_map = parse_label_map(EXAMPLE)
    flipped = label_map.apply(LABELS[::-1], SCORES[::-1], multi_label=True)
    assert dict(flipped)["Classical"] == 0.7


def test_softmax_merge_adds_probabilities_and_renormalises_over_the_kept_labels():
    """Dropped: 0.3 of the mass. Classical = (0.1 + 0.2) / 0.7, Rock = 0.3 / 0.7, R&B = 0.1 / 0.7."""
    result = dict(parse_label_map(EXAMPLE).apply(LABELS, SOFTMAX, multi_label=False))
    assert result == pytest.approx({"Classical": 0.3 / 0.7, "Rock": 0.3 / 0.7, "R&B": 0.1 / 0.7})
    assert math.fsum(result.values()) == pytest.approx(1.0)


def test_softmax_scores_sum_to_one_when_nothing_is_dropped():
    merged = parse_label_map('keep_unlisted = true\n[genres]\n"classic" = "Classical"\n"classical" = "Classical"\n')
    for label_map in (identity_map(), merged):
        result = label_map.apply(LABELS, SOFTMAX, multi_label=False)
        assert math.fsum(score for _, score in result) == pytest.approx(1.0)
    assert dict(merged.apply(LABELS, SOFTMAX, multi_label=False))["Classical"] == pytest.approx(0.3)


def test_softmax_with_nothing_kept_scores_zero_rather_than_dividing_by_zero():
    result = parse_label_map(EXAMPLE).apply(LABELS, [0, 0, 0.5, 0, 0, 0.5], multi_label=False)
    assert result == [("Rock", 0.0), ("R&B", 0.0), ("Classical", 0.0)]


def test_the_same_scores_rank_differently_for_sigmoid_and_softmax_models():
    """Two weak labels of one genre beat one stronger label as probabilities of exclusive classes, not
    as independent evidence."""
    label_map = parse_label_map('[genres]\n"a" = "A"\n"b" = "A"\n"c" = "C"\n')
    scores = [0.3, 0.3, 0.4]
    assert label_map.apply(["a", "b", "c"], scores, multi_label=True)[0] == ("C", 0.4)
    assert label_map.apply(["a", "b", "c"], scores, multi_label=False)[0] == ("A", pytest.approx(0.6))


@pytest.mark.parametrize("scores", [torch.tensor(SCORES), np.array(SCORES, dtype=np.float32), SCORES])
def test_apply_accepts_tensors_arrays_and_lists(scores):
    result = dict(parse_label_map(EXAMPLE).apply(LABELS, scores, multi_label=True))
    assert result["R&B"] == pytest.approx(0.3)


def test_apply_rejects_mismatched_scores_and_needs_the_kind_of_model():
    with pytest.raises(ValueError):
        identity_map().apply(LABELS, SCORES[:-1], multi_label=True)
    with pytest.raises(ValueError):
        identity_map().apply(LABELS, torch.zeros(2, len(LABELS)), multi_label=True)
    with pytest.raises(TypeError):
        identity_map().apply(LABELS, SCORES)


def test_keep_unlisted_passes_other_labels_through_but_still_drops():
    label_map = parse_label_map('keep_unlisted = true\ndrop = ["80s"]\n[genres]\n"rnb" = "R&B"\n')
    assert label_map.keep is None
    names = [name for name, _ in label_map.apply(LABELS, SCORES, multi_label=True)]
    assert "R&B" in names and "rock" in names and "80s" not in names


def test_dataclass_api_directly():
    label_map = LabelMap(rename={"Rock music": "Rock"}, keep=frozenset({"Rock music", "Jazz"}))
    assert label_map.apply(["Speech", "Rock music", "Jazz"], [0.9, 0.4, 0.1], multi_label=True) == [
        ("Rock", 0.4), ("Jazz", 0.1)]


def test_rank_labels_means_windows_then_maps_them():
    probs = torch.tensor([[0.2, 0.1, 0.0, 0.3, 0.4, 0.0], [0.4, 0.1, 0.2, 0.1, 0.0, 0.2]])
    ranking = rank_labels(probs, LABELS, parse_label_map(EXAMPLE), multi_label=False)
    assert dict(ranking) == pytest.approx({"Classical": 0.4 / 0.8, "Rock": 0.3 / 0.8, "R&B": 0.1 / 0.8})


# -- levels ---------------------------------------------------------------------------------------------
def tree(level: str) -> LabelMap:
    return parse_label_map(TREE).with_level(level)


def test_leaf_level_ignores_parents():
    result = dict(tree("leaf").apply(TREE_LABELS, TREE_SIGMOID, multi_label=True))
    assert set(result) == {"Rock", "Hard Rock", "Alternative Rock", "Heavy Metal", "Doom Metal", "Jazz"}
    assert result["Rock"] == 0.30


def test_top_level_rolls_every_sub_genre_into_its_top_level_genre():
    sigmoid = dict(tree("top").apply(TREE_LABELS, TREE_SIGMOID, multi_label=True))
    assert sigmoid == {"Rock": 0.50, "Metal": 0.40, "Jazz": 0.05}  # "Metal" is only a parent
    softmax = dict(tree("top").apply(TREE_LABELS, TREE_SOFTMAX, multi_label=False))
    assert softmax == pytest.approx({"Rock": 0.45 / 0.8, "Metal": 0.25 / 0.8, "Jazz": 0.10 / 0.8})
    assert math.fsum(softmax.values()) == pytest.approx(1.0)


def test_both_level_scores_each_genre_over_itself_and_everything_below_it():
    sigmoid = dict(tree("both").apply(TREE_LABELS, TREE_SIGMOID, multi_label=True))
    assert sigmoid == {"Rock": 0.50, "Hard Rock": 0.50, "Alternative Rock": 0.20, "Metal": 0.40,
                       "Heavy Metal": 0.40, "Doom Metal": 0.40, "Jazz": 0.05}
    softmax = dict(tree("both").apply(TREE_LABELS, TREE_SOFTMAX, multi_label=False))
    assert softmax["Rock"] == pytest.approx(0.45 / 0.8) and softmax["Hard Rock"] == pytest.approx(0.1 / 0.8)
    assert softmax["Metal"] == softmax["Heavy Metal"] == pytest.approx(0.25 / 0.8)


def test_a_map_without_parents_ranks_the_same_at_every_level():
    label_map = parse_label_map(EXAMPLE)
    rankings = [label_map.with_level(level).apply(LABELS, SCORES, multi_label=True) for level in ("leaf", "top", "both")]
    assert rankings[0] == rankings[1] == rankings[2]
    assert len({label_map.with_level(level).digest() for level in ("leaf", "top", "both")}) == 1


def test_an_unknown_level_is_refused():
    with pytest.raises(LabelMapError, match="level"):
        parse_label_map(TREE).with_level("middle")


# -- choosing genres ----------------------------------------------------------------------------------------
RANKING = [("Rock", 0.6), ("Jazz", 0.3), ("Pop", 0.1)]


def test_choose_genres_with_one_threshold():
    assert choose_genres(RANKING, 1, 0.5) == (OK, ["Rock"], [0.6])
    assert choose_genres(RANKING, 2, 0.25) == (OK, ["Rock", "Jazz"], [0.6, 0.3])
    assert choose_genres(RANKING, 2, 0.7) == (ABSTAINED, [], [])


def test_a_genre_with_its_own_threshold_is_judged_by_it():
    assert choose_genres(RANKING, 1, 0.5, {"Rock": 0.7}) == (ABSTAINED, [], [])
    assert choose_genres(RANKING, 2, 0.5, {"Jazz": 0.2}) == (OK, ["Rock", "Jazz"], [0.6, 0.3])
    assert choose_genres(RANKING, 2, 0.5, {"Rock": 0.9, "Jazz": 0.3}) == (OK, ["Jazz"], [0.3])
    assert choose_genres(RANKING, 1, 0.9, {"Pop": 0.1}) == (ABSTAINED, [], [])  # only the top k are candidates


def test_level_both_follows_a_chosen_genre_down_while_the_model_is_sure():
    label_map = tree("both")
    ranking = label_map.apply(TREE_LABELS, TREE_SIGMOID, multi_label=True)
    nesting = label_map.nesting()
    assert choose_genres(ranking, 1, 0.3, None, nesting) == (OK, ["Rock", "Hard Rock"], [0.5, 0.5])
    assert choose_genres(ranking, 1, 0.3, {"Hard Rock": 0.6}, nesting)[1] == ["Rock"]
    assert choose_genres(ranking, 2, 0.3, None, nesting)[1] == [
        "Rock", "Hard Rock", "Metal", "Heavy Metal", "Doom Metal"]
    assert choose_genres(ranking, 2, 0.45, None, nesting)[1] == ["Rock", "Hard Rock"]
    assert choose_genres(ranking, 1, 0.6, None, nesting) == (ABSTAINED, [], [])
    assert tree("top").nesting() is None and tree("leaf").nesting() is None


def test_with_max_scores_the_top_level_decision_is_the_leaf_decision_rolled_up():
    """Why the levels abstain on the same tracks: the best top-level score is the best leaf score."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.random(len(TREE_LABELS))
        leaf = tree("leaf").apply(TREE_LABELS, scores, multi_label=True)[0]
        top = tree("top").apply(TREE_LABELS, scores, multi_label=True)[0]
        assert top[1] == leaf[1] and top[0] == ([leaf[0], *tree("leaf").ancestors(leaf[0])])[-1]


def test_per_label_thresholds_follow_the_map_to_genre_names():
    label_map = parse_label_map(EXAMPLE)
    thresholds = label_map.genre_thresholds({"rnb": 0.2, "classic": 0.5, "Rock": 0.4, "80s": 0.1}, LABELS)
    assert thresholds == {"R&B": 0.2, "Rock": 0.4}  # Classical merges two labels: the global threshold
    assert label_map.genre_thresholds(None, LABELS) is None and label_map.genre_thresholds({}, LABELS) is None
    assert tree("top").genre_thresholds({"hard rock": 0.2, "jazz": 0.3}, TREE_LABELS) == {"Jazz": 0.3}


# -- digest -------------------------------------------------------------------------------------------------
def test_digest_follows_the_rules_not_their_order():
    a = parse_label_map('drop = ["80s", "sad"]\n[genres]\n"rnb" = "R&B"\n"rock" = "Rock"\n')
    b = parse_label_map('drop = ["sad", "80s"]\n[genres]\n"rock" = "Rock"\n"rnb" = "R&B"\n')
    assert a.digest() == b.digest()
    assert parse_label_map('keep_unlisted = true\n').digest() == identity_map().digest()  # the same rules
    assert len({a.digest(), parse_label_map('[genres]\n"rnb" = "RnB"\n"rock" = "Rock"\n').digest(),
                identity_map().digest(), builtin_label_map("musicnn-msd").digest()}) == 4


def test_digest_changes_with_the_parents_and_the_level_where_they_shape_the_ranking():
    other = TREE.replace('"Alternative Rock" = "Rock"', '"Alternative Rock" = "Hard Rock"')
    digests = {(text, level): parse_label_map(text).with_level(level).digest()
               for text in (TREE, other) for level in ("leaf", "top", "both")}
    assert len({digests[text, level] for text in (TREE, other) for level in ("top", "both")}) == 4
    assert digests[TREE, "leaf"] not in {digests[TREE, "top"], digests[TREE, "both"]}
    # At level leaf the parents change no score and no choice: the index's cached predictions stay valid.
    assert digests[TREE, "leaf"] == digests[other, "leaf"]
    assert digests[TREE, "leaf"] == parse_label_map(TREE.split("[parents]")[0]).digest()


def test_digest_of_a_softmax_model_notes_the_summing_rule_where_it_changes_scores():
    merging = parse_label_map(EXAMPLE)
    assert merging.digest(multi_label=False) != merging.digest(multi_label=True) == merging.digest()
    assert identity_map().digest(multi_label=False) == identity_map().digest(multi_label=True)


# -- the TOML format ------------------------------------------------------------------------------------
def test_load_label_map_from_file(tmp_path):
    path = tmp_path / "labels.toml"
    path.write_text(TREE, encoding="utf-8")
    assert load_label_map(path) == parse_label_map(TREE)
    assert load_label_map(path).parents["Doom Metal"] == "Heavy Metal"


def test_unknown_labels_finds_typos():
    label_map = parse_label_map('[genres]\n"rock" = "Rock"\n"jaz" = "Jazz"\n')
    assert label_map.unknown_labels(LABELS) == ["jaz"]
    passing = parse_label_map('keep_unlisted = true\n[parents]\n"rnb" = "Soul"\n"rokc" = "Rock"\n')
    assert passing.unknown_labels(LABELS) == ["rokc"]


@pytest.mark.parametrize("text", [
    "genres = [",                                          # not TOML
    'keep_unlisted = "no"\n[genres]\n"rock" = "Rock"',     # wrong type
    'drop = "80s"\n[genres]\n"rock" = "Rock"',             # drop is not a list
    '[genres]\n"rock" = 1',                                # genre name not a string
    '[genres]\n"rock" = " "',                              # empty genre name
    '[genres]\n"rock" = "Rock\\nRoll"',                    # a line break in a genre name
    'dorp = ["80s"]\n[genres]\n"rock" = "Rock"',           # unknown key (typo)
    'drop = ["rock"]\n[genres]\n"rock" = "Rock"',          # renamed and dropped
    'drop = ["80s"]',                                      # would drop every label
    'parents = ["Rock"]\n[genres]\n"rock" = "Rock"',       # parents is not a table
    '[genres]\n"rock" = "Rock"\n[parents]\n"Rock" = 1',    # parent not a string
    '[genres]\n"rock" = "Rock"\n[parents]\n"Rock" = ""',   # empty parent
    '[genres]\n"rock" = "Rock"\n[parents]\n"Rock" = "Music\\u0007"',     # control character in a parent
    '[genres]\n"rock" = "Rock"\n[parents]\n"Ro\\tck" = "Music"',          # control character in a genre
    '[genres]\n"rock" = "Rock"\n[parents]\n"Rokc" = "Music"',             # no such genre (typo)
    '[genres]\n"rock" = "Rock"\n[parents]\n"rock" = "Music"',             # a model label, not a genre
    '[genres]\n"rock" = "Rock"\n[parents]\n"Rock" = "Rock"',              # its own parent
    '[genres]\n"a" = "A"\n"b" = "B"\n[parents]\n"A" = "B"\n"B" = "A"',    # a cycle
    '[genres]\n"a" = "A"\n[parents]\n"A" = "B"\n"B" = "C"\n"C" = "B"',    # a cycle above a genre
    'drop = ["80s"]\n[genres]\n"rock" = "Rock"\n[parents]\n"Rock" = "80s"',  # a dropped parent
    'keep_unlisted = true\ndrop = ["80s"]\n[parents]\n"80s" = "Oldies"',  # a dropped sub-genre
    '[genres]\n"rock" = "Rock"\n[parent]\n"Rock" = "Music"',              # [parent]: a typo
])
def test_malformed_files_are_rejected_in_one_line_naming_the_file(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LabelMapError) as err:
        load_label_map(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    assert isinstance(err.value, GenretagError)


def test_a_cycle_is_named():
    with pytest.raises(LabelMapError, match="cycle: A -> B -> A"):
        parse_label_map('[genres]\n"a" = "A"\n"b" = "B"\n[parents]\n"A" = "B"\n"B" = "A"', "x.toml")


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


@pytest.mark.parametrize("name", ["musicnn-msd", "musicnn-mtt"])
def test_builtin_parents_roll_sub_genres_into_genres_the_map_writes(name):
    from tagger.models.identity import read_builtin

    labels = read_builtin(name)[0]["labels"]
    label_map = builtin_label_map(name)
    leaf, top = set(label_map.genres(labels)), label_map.with_level("top").genres(labels)
    assert set(label_map.parents) <= leaf and set(top) <= leaf and len(top) < len(leaf)
    assert not any(label_map.ancestors(genre) for genre in top)


def test_builtin_msd_top_level_rock():
    msd = builtin_label_map("musicnn-msd").with_level("top")
    from tagger.models.identity import read_builtin

    labels = read_builtin("musicnn-msd")[0]["labels"]
    scores = [0.9 if label == "hard rock" else 0.1 if label == "rock" else 0.0 for label in labels]
    assert msd.apply(labels, scores, multi_label=True)[0] == ("Rock", 0.9)
    assert "Hard Rock" not in dict(msd.apply(labels, scores, multi_label=True))


@pytest.mark.parametrize("name", ["nope", "../musicnn-msd"])
def test_unknown_builtin_map(name):
    with pytest.raises(LabelMapError):
        builtin_label_map(name)
