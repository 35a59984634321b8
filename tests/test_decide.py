"""Unit tests of the pure steps: choosing a track's genres from its ranking (aggregate.py) and deciding
what a scan does with a track the index knows (decide.py)."""
from __future__ import annotations

import pytest
import torch

from tagger.aggregate import choose_genres, rank_labels
from tagger.decide import FROM_EMBEDDING, FROM_INDEX, PREDICT, Rules, decide
from tagger.labels import identity_map

RANKING = [("Rock", 0.62), ("Pop", 0.30), ("Jazz", 0.05), ("Blues", 0.03)]


@pytest.mark.parametrize("threshold, top_k, expected", [
    (0.0, 1, ("ok", ["Rock"])),
    (0.0, 3, ("ok", ["Rock", "Pop", "Jazz"])),
    (0.3, 2, ("ok", ["Rock", "Pop"])),       # exactly at the threshold counts
    (0.31, 2, ("ok", ["Rock"])),
    (0.62, 1, ("ok", ["Rock"])),
    (0.6200001, 1, ("abstained", [])),
    (0.5, 4, ("ok", ["Rock"])),
    (0.99, 4, ("abstained", [])),
    (1.0, 1, ("abstained", [])),
])
def test_choose_genres_at_thresholds_between_0_and_1(threshold, top_k, expected):
    status, labels, scores = choose_genres(RANKING, top_k, threshold)
    assert (status, labels) == expected
    assert scores == [dict(RANKING)[label] for label in labels]


def test_choose_genres_never_reaches_past_top_k_for_a_genre_above_the_threshold():
    assert choose_genres([("A", 0.2), ("B", 0.9)], 1, 0.5)[1] == []  # a ranking is best first; not re-sorted


def test_rank_labels_is_the_mean_over_windows_best_first():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.5, 0.4], [0.2, 0.3, 0.5]])
    ranking = rank_labels(probs, ["a", "b", "c"], identity_map(), multi_label=True)
    assert [label for label, _ in ranking] == ["a", "b", "c"]
    assert [round(s, 6) for _, s in ranking] == [0.4, 0.3, 0.3]


def row(**overrides) -> dict:
    base = {"path": "/m/a.flac", "size": 100, "mtime_ns": 7, "status": "ok", "written": 0,
            "labels": '["Rock"]', "scores": "[0.62]", "ranking": RANKING,
            "label_map": "map1", "windows": 3, "error": None, "duration": 200.0, "codec": "flac", "genres": []}
    return {**base, **overrides}


def rules(**overrides) -> Rules:
    base = dict(rescan=False, write_tags=False, top_k=1, min_confidence=0.4, label_map="map1", genre_count=4)
    return Rules(**{**base, **overrides})


@pytest.mark.parametrize("stored, given, why", [
    (None, rules(), "nothing stored"),
    (row(size=101), rules(), "size changed"),
    (row(mtime_ns=8), rules(), "mtime changed"),
    (row(), rules(rescan=True), "--rescan"),
    (row(label_map="other"), rules(), "another label map"),
    (row(ranking=RANKING[:2]), rules(top_k=3), "more genres asked for than stored"),
])
def test_what_is_predicted_again(stored, given, why):
    assert decide(100, 7, stored, given).action == PREDICT, why


def test_an_unchanged_track_is_served_as_it_is():
    decision = decide(100, 7, row(written=1), rules(write_tags=True))
    assert (decision.action, decision.write, decision.pending, decision.relabelled) == (FROM_INDEX, False, False, False)


def test_an_unwritten_prediction_is_written_or_pending():
    assert decide(100, 7, row(), rules(write_tags=True)).write
    pending = decide(100, 7, row(), rules(write_tags=False))
    assert pending.pending and not pending.write
    in_file = decide(100, 7, row(genres=["Rock"]), rules(write_tags=False))
    assert not in_file.pending  # the file holds those genres already


@pytest.mark.parametrize("threshold, expected_status, expected_labels", [
    (0.7, "abstained", []), (0.4, "ok", ["Rock"]), (0.25, "ok", ["Rock"]),
])
def test_genres_are_decided_again_from_the_stored_ranking(threshold, expected_status, expected_labels):
    decision = decide(100, 7, row(written=1), rules(min_confidence=threshold))
    assert decision.action == FROM_INDEX
    assert (decision.row["status"], decision.row["labels"]) == (expected_status, expected_labels)
    assert decision.relabelled == (expected_status != "ok")
    if decision.relabelled:
        assert decision.row["written"] == 0 and not decision.write


def test_a_wider_top_k_relabels_and_asks_for_a_write():
    decision = decide(100, 7, row(written=1), rules(top_k=2, min_confidence=0.3, write_tags=True))
    assert decision.row["labels"] == ["Rock", "Pop"] and decision.relabelled and decision.write


def test_a_failure_is_served_as_stored():
    failed = row(status="failed", labels="[]", scores="[]", ranking=[], error="no audio")
    decision = decide(100, 7, failed, rules(write_tags=True))
    assert (decision.action, decision.row["status"], decision.write) == (FROM_INDEX, "failed", False)


# -- the embedding a head can score ------------------------------------------------------------------------
@pytest.mark.parametrize("stored, given, why", [
    (None, rules(), "nothing stored by this model"),
    (row(size=101), rules(), "the file changed since this model's prediction"),
    (row(label_map="other"), rules(), "the stored ranking went through another label map"),
    (row(ranking=RANKING[:2]), rules(top_k=3), "more genres asked for than stored"),
])
def test_a_track_the_index_cannot_serve_is_scored_from_its_embedding_of_this_version(stored, given, why):
    assert decide(100, 7, stored, given, embedding=(100, 7)).action == FROM_EMBEDDING, why


@pytest.mark.parametrize("embedding, given, why", [
    (None, rules(), "no embedding stored (or not a head)"),
    ((101, 7), rules(), "an embedding of another size of the file"),
    ((100, 8), rules(), "an embedding of another mtime of the file"),
    ((100, 7), rules(rescan=True), "--rescan decodes every file again"),
])
def test_an_embedding_of_another_version_or_rescan_predicts(embedding, given, why):
    assert decide(100, 7, None, given, embedding=embedding).action == PREDICT, why


def test_a_usable_stored_prediction_wins_over_the_embedding():
    decision = decide(100, 7, row(), rules(write_tags=True), embedding=(100, 7))
    assert (decision.action, decision.write) == (FROM_INDEX, True)
    relabelled = decide(100, 7, row(written=1), rules(min_confidence=0.7), embedding=(100, 7))
    assert (relabelled.action, relabelled.relabelled) == (FROM_INDEX, True)  # decided again, not scored again


def test_a_decision_from_the_embedding_carries_nothing_from_the_index():
    decision = decide(100, 7, row(size=5), rules(write_tags=True), embedding=(100, 7))
    assert (decision.row, decision.relabelled, decision.write, decision.pending) == (None, False, False, False)
