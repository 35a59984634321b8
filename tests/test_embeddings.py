"""Embeddings in the index: a scan with the built-in model keeps every track's embedding (the mean of its
window embeddings, float16) with the stat of the file version it came from; `Index.stored_embeddings` and
`Index.iter_embeddings` read them back; a head trained on that space then predicts those tracks from the
index without decoding them, and gets exactly what decoding them again gives. Real musicnn scans of
synthesized tracks, a head fitted on the embeddings the index kept, the real SQLite file."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import tagger.index
from tagger import ScanSettings, tag_folder
from tagger.decode import decode_file
from tagger.demo import encode, synth
from tagger.index import MIGRATIONS, SCHEMA_VERSION, Index, path_key
from tagger.models.head import load_head
from tagger.models.infer import pick_precision
from tagger.models.musicnn import load_builtin
from tagger.records import OK, TrackResult
from tagger.tagging.tags import read_genres
from tests.index_rows import rows
from training.heads import fit_head, save_head

STYLES = ("pulse", "rockish", "ambientish", "swingish")
PER_STYLE = 3
TRACKS = len(STYLES) * PER_STYLE
LONG_SECONDS = 62.0  # two 30 s windows
RATE = 16000


@pytest.fixture(scope="module")
def backbone():
    """The built-in model as a scan on this machine runs it (same precision)."""
    import torch

    return load_builtin("musicnn-msd", precision=pick_precision("auto", torch.device("cpu")))


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    """Three tracks of each of four styles, in mp3 and flac: one of 62 s (two windows), the others 6-8 s."""
    root = tmp_path_factory.mktemp("songs")
    for s, style in enumerate(STYLES):
        for k in range(PER_STYLE):
            seconds = LONG_SECONDS if (s, k) == (0, 0) else 6.0 + k
            path = root / style / f"{style}-{k}.{('mp3', 'flac')[k % 2]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            encode(synth(style, seconds, seed=10 * s + k, sample_rate=RATE), path, sample_rate=RATE)
    return root


@pytest.fixture(scope="module")
def musicnn_scan(songs, tmp_path_factory):
    """One scan of the songs with builtin:musicnn-msd: (its index, its summary). Tests copy the index."""
    db = tmp_path_factory.mktemp("index") / "index.db"
    summary = tag_folder(songs, ScanSettings(model="builtin:musicnn-msd", db=str(db)), keep_results=True)
    assert summary.predicted == TRACKS and summary.failed == 0
    return db, summary


@pytest.fixture(scope="module")
def head(musicnn_scan, backbone, tmp_path_factory) -> Path:
    """A head fitted on the embeddings the index kept (each track's style its genre), saved as `genretag
    train` saves one: what training from an index does."""
    db, _ = musicnn_scan
    with Index(db) as index:
        stored = list(index.iter_embeddings(backbone.embedding_space))
    embeddings = np.stack([vector for *_, vector in stored])
    genres = [Path(os.fsdecode(raw)).parent.name for raw, *_ in stored]
    folder = tmp_path_factory.mktemp("head")
    save_head(folder, fit_head(embeddings, genres), backbone, "builtin:musicnn-msd")
    return folder


def index_copy(musicnn_scan, folder: Path) -> Path:
    return Path(shutil.copy(musicnn_scan[0], folder / "index.db"))


def embedding_rows(db: Path) -> dict[str, dict]:
    return {r["path"]: r for r in rows(db, "select * from embeddings")}


# -- storing ------------------------------------------------------------------------------------------------
def test_a_builtin_scan_keeps_each_tracks_embedding_with_its_files_stat(musicnn_scan, backbone):
    db, summary = musicnn_scan
    stored = embedding_rows(db)
    assert len(stored) == TRACKS
    assert sorted(r.windows for r in summary.results) == [1] * (TRACKS - 1) + [2]
    for result in summary.results:
        row = stored[path_key(result.path)]
        st = os.stat(result.path)
        assert (row["space"], row["size"], row["mtime_ns"], row["dim"], row["windows"], row["run_id"]) == (
            backbone.embedding_space, st.st_size, st.st_mtime_ns, 200, result.windows, summary.run_id)
        vector = np.frombuffer(row["vector"], "<f2")  # little-endian float16, 400 bytes
        assert len(row["vector"]) == 400 and np.isfinite(vector).all()
        np.testing.assert_array_equal(vector, result.embedding)
    assert json.dumps(summary.results[0].as_json())  # the --json line carries no vector
    assert "embedding" not in summary.results[0].as_json()


def test_the_stored_embedding_is_the_mean_of_the_window_embeddings(musicnn_scan, backbone):
    """Computed here from the decoded windows, outside the scan: the same up to float16 (and bf16 where
    the CPU has it: the scan's two concurrent calls split torch's threads differently)."""
    db, summary = musicnn_scan
    long = next(r for r in summary.results if r.windows == 2)
    decoded = decode_file(long.path, backbone.sampling_rate, 3)
    _, windows = backbone.predict_with_embeddings(decoded.windows, decoded.lengths)
    assert windows.shape == (2, 200) and not np.allclose(windows[0], windows[1], atol=1e-2)
    with Index(db) as index:
        size, mtime_ns, vector = index.stored_embeddings([long.path], backbone.embedding_space)[path_key(long.path)]
    assert (size, mtime_ns) == (long.size, long.mtime_ns) and vector.dtype == np.float16
    np.testing.assert_allclose(vector.astype(np.float32), windows.mean(dim=0).numpy(), rtol=0.02, atol=0.02)


def test_a_transformers_model_keeps_no_embedding(library, tmp_path, tiny_wav2vec2):
    summary = tag_folder(library, ScanSettings(model=str(tiny_wav2vec2), db=str(tmp_path / "i.db")),
                         keep_results=True)
    assert summary.predicted == 8 and all(r.embedding is None for r in summary.results)
    assert rows(tmp_path / "i.db", "select count(*) as n from embeddings") == [{"n": 0}]


def test_a_changed_file_gets_a_new_embedding(tmp_path, backbone):
    lib = tmp_path / "lib"
    lib.mkdir()
    for k, style in enumerate(("pulse", "rockish")):
        encode(synth(style, 6.0, seed=k, sample_rate=RATE), lib / f"{style}.flac", sample_rate=RATE)
    settings = ScanSettings(model="builtin:musicnn-msd", db=str(tmp_path / "i.db"))
    first = tag_folder(lib, settings)
    before = embedding_rows(tmp_path / "i.db")
    changed = lib / "pulse.flac"
    encode(synth("ambientish", 7.0, seed=5, sample_rate=RATE), changed, sample_rate=RATE)
    second = tag_folder(lib, settings)
    assert (second.predicted, second.from_index) == (1, 1)
    after = embedding_rows(tmp_path / "i.db")
    assert sorted(after) == sorted(before)  # one row per file and space
    old, new = before[path_key(str(changed))], after[path_key(str(changed))]
    st = changed.stat()
    assert (new["size"], new["mtime_ns"], new["run_id"]) == (st.st_size, st.st_mtime_ns, second.run_id)
    assert new["vector"] != old["vector"] and old["run_id"] == first.run_id
    kept = path_key(str(lib / "rockish.flac"))
    assert after[kept] == before[kept]


# -- predicting from them -----------------------------------------------------------------------------------
def test_a_head_predicts_indexed_tracks_from_their_embeddings_exactly_as_from_decoding(musicnn_scan, head, songs,
                                                                                        backbone, tmp_path):
    """The head's own thresholds and a top-k of 2. Exactly equal: the stored float16 vector is what the
    decoding scan rounds its mean embedding to, and the head scores each row on its own (not in a batch's
    matrix product, whose sums would run in another order for 12 rows than for 1)."""
    db = index_copy(musicnn_scan, tmp_path)
    settings = ScanSettings(model=str(head), db=str(db), top_k=2)
    relabel = tag_folder(songs, settings, keep_results=True)
    assert (relabel.from_embedding, relabel.predicted, relabel.from_index, relabel.failed) == (TRACKS, 0, 0, 0)
    assert {r.source for r in relabel.results} == {"embedding"} and relabel.tagged > 0
    by_relabel = {r["path"]: r for r in rows(db, "select * from predictions where model_id = ?", [str(head)])}
    decoded = tag_folder(songs, replace(settings, rescan=True), keep_results=True)
    assert (decoded.predicted, decoded.from_embedding) == (TRACKS, 0)
    by_decoding = {r["path"]: r for r in rows(db, "select * from predictions where model_id = ?", [str(head)])}
    with Index(db) as index:
        stored = index.stored_embeddings([r.path for r in decoded.results], backbone.embedding_space)
    again = {r.path: r for r in decoded.results}
    for result in relabel.results:
        fresh = again[result.path]
        assert (result.status, result.labels, result.scores, result.ranking) == (
            fresh.status, fresh.labels, fresh.scores, fresh.ranking), result.path
        assert (result.windows, result.duration, result.codec) == (fresh.windows, fresh.duration, fresh.codec)
        np.testing.assert_array_equal(fresh.embedding, stored[path_key(result.path)][2])  # decoded: the same vector
        assert result.window_labels == [] and len(fresh.window_labels) == fresh.windows
        key = path_key(result.path)
        for column in ("status", "labels", "scores", "ranking", "windows", "size", "mtime_ns", "label_map"):
            assert by_relabel[key][column] == by_decoding[key][column], (key, column)
    assert {r.labels[0] for r in relabel.results if r.labels} <= set(STYLES)
    unchanged = tag_folder(songs, settings)
    assert (unchanged.from_index, unchanged.from_embedding, unchanged.predicted) == (TRACKS, 0, 0)


def test_a_relabel_loads_the_head_but_never_decodes_nor_runs_the_backbone(musicnn_scan, head, songs, tmp_path):
    """A real `genretag scan --json`: torch is imported (the head is a torch model), torchcodec and the
    musicnn network never are; every line says where its prediction came from, and so does the summary."""
    db = index_copy(musicnn_scan, tmp_path)
    code = ("import sys; from tagger.cli import main; sys.argv = ['genretag', 'scan', *sys.argv[1:]]\n"
            "try:\n    main()\nfinally:\n    print('imported', sorted({'torch', 'torchcodec', 'tagger.models.musicnn'}"
            " & set(sys.modules)), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, str(songs), "--model", str(head), "--db", str(db), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "imported ['torch']" in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == TRACKS and {line["source"] for line in lines} == {"embedding"}
    assert all(line["windows"] >= 1 and line["codec"] in ("mp3", "flac") for line in lines)
    assert (f"This run predicted {TRACKS} ({TRACKS} from their stored embeddings, without decoding) and took 0 "
            "unchanged from the index") in proc.stderr
    run = rows(db, "select scanned, skipped, from_embedding from runs order by id desc limit 1")
    assert run == [{"scanned": TRACKS, "skipped": 0, "from_embedding": TRACKS}]


def test_a_relabel_writes_tags_and_the_embedding_follows_the_written_file(musicnn_scan, head, songs, backbone,
                                                                          tmp_path):
    """Copies of two songs (same audio and mtime), indexed through the Index API with the embeddings the
    scan kept: the head writes their genres from the index, and the embeddings move to the written files'
    stat (a tag write changes no audio), so the next head need not decode them either."""
    space = backbone.embedding_space
    originals = sorted(songs.rglob("*.flac"))[:2]
    with Index(musicnn_scan[0]) as index:
        kept = index.stored_embeddings([str(p) for p in originals], space)
    lib = tmp_path / "lib"
    lib.mkdir()
    copies = [Path(shutil.copy2(p, lib / p.name)) for p in originals]
    with Index(tmp_path / "i.db") as index:
        run = index.start_run("scan")
        index.record_results([TrackResult(str(c), OK, labels=["rock"], scores=[0.9], windows=1, size=c.stat().st_size,
                                          mtime_ns=c.stat().st_mtime_ns, embedding=kept[path_key(str(o))][2],
                                          embedding_space=space) for o, c in zip(originals, copies)],
                             "builtin:musicnn-msd", backbone.fingerprint, run)
    settings = ScanSettings(model=str(head), db=str(tmp_path / "i.db"), write_tags=True, min_confidence=0.0)
    before = {c: (c.stat().st_size, c.stat().st_mtime_ns) for c in copies}
    summary = tag_folder(lib, settings, keep_results=True)
    assert (summary.from_embedding, summary.written) == (2, 2)
    with Index(tmp_path / "i.db") as index:
        moved = index.stored_embeddings([str(c) for c in copies], space)
    for copy in copies:
        result = next(r for r in summary.results if r.path == str(copy))
        assert read_genres(copy) == result.labels and result.written
        size, mtime_ns, vector = moved[path_key(str(copy))]
        assert (size, mtime_ns) == (copy.stat().st_size, copy.stat().st_mtime_ns) != before[copy]
    again = tag_folder(lib, settings)
    assert (again.from_index, again.written, again.from_embedding) == (2, 0, 0)


# -- the index API ------------------------------------------------------------------------------------------
def test_stored_and_iterated_embeddings_by_space_and_folder(tmp_path, monkeypatch):
    """More paths than a lookup's chunk and a page, a name that is not UTF-8, a sibling folder whose name
    starts like the one asked for, two spaces."""
    monkeypatch.setattr(tagger.index, "LOOKUP_CHUNK", 2)
    monkeypatch.setattr(tagger.index, "EMBEDDING_PAGE", 3)
    names = [f"/m/a/{i}.flac" for i in range(7)] + [os.fsdecode(b"/m/a/caf\xe9.mp3"), "/m/ab/y.flac", "/m/b/z.ogg"]
    with Index(tmp_path / "i.db") as index:
        run = index.start_run("scan")
        for space, offset in (("s1", 0), ("s2", 100)):
            index.record_results([TrackResult(p, OK, windows=1, size=i, mtime_ns=10 + i, embedding_space=space,
                                              embedding=np.full(4, i + offset, np.float16))
                                  for i, p in enumerate(names)], "m", space, run)
        stored = index.stored_embeddings([*names, "/m/never.flac"], "s1")
        everything = list(index.iter_embeddings("s1"))
        under_a = list(index.iter_embeddings("s1", under="/m/a/"))
        other = list(index.iter_embeddings("s2", under="/m/b"))
    assert sorted(stored) == sorted(path_key(p) for p in names)
    for i, p in enumerate(names):
        size, mtime_ns, vector = stored[path_key(p)]
        assert (size, mtime_ns, vector.dtype, vector.tolist()) == (i, 10 + i, np.float16, [float(i)] * 4)
    assert [raw for raw, *_ in everything] == sorted(os.fsencode(p) for p in names)
    assert sorted(raw for raw, *_ in under_a) == sorted(os.fsencode(p) for p in names[:8])
    assert [(raw, size, mtime_ns, vector.tolist()) for raw, size, mtime_ns, vector in other] == [
        (b"/m/b/z.ogg", 9, 19, [109.0] * 4)]


def test_an_index_of_schema_4_gains_the_embeddings_table(tmp_path):
    import sqlite_utils

    path = tmp_path / "v4.db"
    db = sqlite_utils.Database(path)
    for step in range(4):
        MIGRATIONS[step](db)
    db["meta"].upsert({"key": "schema_version", "value": "4"}, pk="key")
    db["predictions"].insert({"path": "/m/x.flac", "fingerprint": "f" * 16, "model_id": "m", "status": "ok",
                              "size": 3, "mtime_ns": 4, "labels": '["rock"]', "scores": "[0.9]",
                              "ranking": '[["rock", 0.9]]', "created_at": 1.0})
    db.conn.close()
    assert SCHEMA_VERSION == 5
    with Index(path) as index:
        assert index.schema_version() == 5
        assert index.cached_predictions(["/m/x.flac"], "f" * 16)["/m/x.flac"]["size"] == 3
        assert index.stored_embeddings(["/m/x.flac"], "s") == {}
        run = index.start_run("scan")
        index.record_results([TrackResult("/m/x.flac", OK, windows=2, size=3, mtime_ns=4, embedding_space="s",
                                          embedding=np.arange(200, dtype=np.float16))], "m", "f" * 16, run)
        index.finish_run(run, scanned=1, from_embedding=0)
        assert index.stored_embeddings(["/m/x.flac"], "s")["/m/x.flac"][2].tolist() == list(range(200))
    conn = sqlite3.connect(path)
    try:
        columns = [r[1] for r in conn.execute("pragma table_info(embeddings)")]
        keys = [r[1] for r in conn.execute("pragma table_info(embeddings)") if r[5]]
        assert "from_embedding" in [r[1] for r in conn.execute("pragma table_info(runs)")]
    finally:
        conn.close()
    assert columns == ["path", "space", "size", "mtime_ns", "dim", "windows", "vector", "run_id", "created_at"]
    assert keys == ["path", "space"]


def test_head_scores_of_a_track_do_not_depend_on_the_other_tracks_of_its_batch(head):
    """A scan scores one track at a time, a relabel thousands at once: each row's scores are the same bits."""
    classifier = load_head(str(head), None, "fp32")
    embeddings = np.random.default_rng(0).normal(scale=0.5, size=(1500, 200)).astype(np.float16)
    together = classifier.head_scores(embeddings)
    assert together.shape == (1500, len(STYLES)) and together.dtype == np.float32
    for size in (1, 7, 1100):
        apart = np.concatenate([classifier.head_scores(embeddings[i:i + size]) for i in range(0, 1500, size)])
        np.testing.assert_array_equal(apart, together)
    np.testing.assert_allclose(together.sum(axis=1), 1, atol=1e-6)
    assert not classifier.backbone_loaded  # scoring needs only the head
