"""`genretag scan --engine ray` on a local two-CPU Ray cluster: the same results, resume and failures
as the local engine, with real tiny models, real audio files and the real SQLite index."""
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mutagen
import pytest
from click.testing import CliRunner

from tagger import ScanSettings, tag_folder
from tagger.cli import EXIT_FILES_FAILED, cli
from tagger.errors import GenretagError
from tagger.index import path_key
from tagger.models.infer import load_classifier
from tagger.tagging.tags import read_genres
from tests.index_rows import rows

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

TRACKS = 8
COUNTS = ("scanned", "skipped", "tagged", "abstained", "failed", "written", "requeued")


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    """One cluster for the whole module (starting one takes seconds); the engine joins it. Yields the
    address other processes can join it at."""
    ray.init("local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def scan(root, tmp_path, model, engine="ray", db="index.db", **kw):
    settings = ScanSettings(model=str(model), db=str(tmp_path / db), min_confidence=0.0, engine=engine, **kw)
    return tag_folder(root, settings, keep_results=True)


def indexed(db: Path) -> dict[str, dict]:
    """Each track's index row with its prediction, by path."""
    return {r["path"]: r for r in rows(db, """
        select t.path, t.status, t.error, t.duration, t.codec, t.size, t.mtime_ns,
               p.labels, p.scores, p.ranking, p.windows
        from tracks t left join predictions p on p.path = t.path and p.fingerprint = t.fingerprint""")}


def assert_same_results(local, remote):
    assert {k: getattr(remote, k) for k in COUNTS} == {k: getattr(local, k) for k in COUNTS}
    by_path = {r.path: r for r in remote.results}
    assert sorted(by_path) == sorted(r.path for r in local.results)
    for expected in local.results:
        got = by_path[expected.path]
        assert (got.status, got.labels, got.windows, got.codec, got.error) == (
            expected.status, expected.labels, expected.windows, expected.codec, expected.error), got.path
        assert got.scores == pytest.approx(expected.scores, abs=1e-5)
        assert [s for _, s in got.ranking] == pytest.approx([s for _, s in expected.ranking], abs=1e-5)
        assert got.duration == pytest.approx(expected.duration)


@pytest.mark.parametrize("model", ["tiny_wav2vec2", "builtin:musicnn-msd"])
def test_same_results_and_index_as_the_local_engine(library, tmp_path, request, model):
    model = request.getfixturevalue(model) if model == "tiny_wav2vec2" else model
    local = scan(library, tmp_path, model, engine="local", db="local.db")
    remote = scan(library, tmp_path, model, db="ray.db")
    assert (remote.scanned, remote.tagged, remote.failed) == (TRACKS, TRACKS, 0)
    assert_same_results(local, remote)
    want, got = indexed(tmp_path / "local.db"), indexed(tmp_path / "ray.db")
    assert sorted(got) == sorted(want)
    for path, row in got.items():
        for key in ("status", "error", "codec", "size", "mtime_ns", "labels", "windows"):
            assert row[key] == want[path][key], (path, key)
        assert json.loads(row["scores"]) == pytest.approx(json.loads(want[path]["scores"]), abs=1e-5)
        assert row["duration"] == pytest.approx(want[path]["duration"])
    embeds = str(model).startswith("builtin:")  # transformers checkpoints compute no embeddings
    assert_same_embeddings(tmp_path / "local.db", tmp_path / "ray.db", TRACKS if embeds else 0)


def assert_same_embeddings(local_db: Path, ray_db: Path, count: int) -> None:
    """The actors give each window's embedding with its probabilities: the index keeps the same track
    embeddings (up to float16 and the actors' own thread count) at the same stat."""
    import numpy as np

    query = "select path, space, size, mtime_ns, dim, windows, vector from embeddings order by path"
    local, remote = rows(local_db, query), rows(ray_db, query)
    assert len(remote) == len(local) == count
    for want, got in zip(local, remote):
        assert {k: got[k] for k in got if k != "vector"} == {k: want[k] for k in want if k != "vector"}
        np.testing.assert_allclose(np.frombuffer(got["vector"], "<f2"), np.frombuffer(want["vector"], "<f2"),
                                   rtol=0.02, atol=0.02)


def test_a_library_handed_to_ray_in_parts_scans_as_in_one(library, tmp_path, tiny_wav2vec2, monkeypatch):
    """The driver puts tracks into Ray's object store a part at a time rather than listing the whole
    library (0.6 KB per track): 8 tracks in parts of 3 give the local engine's results."""
    import tagger.engine_ray

    monkeypatch.setattr(tagger.engine_ray, "TRACKS_PER_PART", 3)
    local = scan(library, tmp_path, tiny_wav2vec2, engine="local", db="local.db")
    remote = scan(library, tmp_path, tiny_wav2vec2, db="ray.db")
    assert (remote.scanned, remote.tagged) == (TRACKS, TRACKS)
    assert_same_results(local, remote)


def test_a_second_scan_skips_unchanged_files_and_predicts_a_touched_one(library, tmp_path, tiny_wav2vec2):
    first = scan(library, tmp_path, tiny_wav2vec2)
    assert (first.scanned, first.skipped) == (TRACKS, 0)
    again = scan(library, tmp_path, tiny_wav2vec2)
    assert (again.scanned, again.skipped) == (0, TRACKS)
    touched = next(library.rglob("*.ogg"))
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = scan(library, tmp_path, tiny_wav2vec2)
    assert (third.scanned, third.skipped) == (1, TRACKS - 1)
    assert [r.path for r in third.results if r.source == "predicted"] == [str(touched)]
    assert indexed(tmp_path / "index.db")[str(touched)]["mtime_ns"] == st.st_mtime_ns + 10**9


def test_bad_files_fail_alone_and_odd_names_pass(library, tmp_path, tiny_wav2vec2):
    """Through the CLI: a zero-byte .mp3 and text saved as .flac fail with their reasons, counted as the
    index counts them; a name that is not UTF-8 (Arrow strings must be) is tagged like any other."""
    (library / "empty.mp3").write_bytes(b"")
    (library / "notes.flac").write_text("not audio, only text saved as .flac\n")
    odd = os.fsdecode(os.fsencode(library) + b"/caf\xe9.wav")
    shutil.copy(next(library.rglob("*.wav")), odd)
    result = CliRunner().invoke(cli, ["scan", str(library), "--engine", "ray", "--model", str(tiny_wav2vec2),
                                      "--json", "--min-confidence", "0", "--db", str(tmp_path / "i.db")],
                                catch_exceptions=False)
    assert result.exit_code == EXIT_FILES_FAILED, result.output
    lines = {x["path"]: x for x in map(json.loads, result.stdout.splitlines()) if x}
    failed = {Path(p).name: x["error"] for p, x in lines.items() if x["status"] == "failed"}
    assert set(failed) == {"empty.mp3", "notes.flac"} and all(failed.values())
    assert failed["empty.mp3"] == "empty file (0 bytes)"
    assert (lines[odd]["status"], lines[odd]["windows"]) == ("ok", 3)
    summary = (f"{TRACKS + 3} tracks: {TRACKS + 1} tagged, 0 abstained, 2 failed. This run predicted {TRACKS + 3} "
               "and took 0 unchanged from the index")
    assert summary in result.stderr
    index = indexed(tmp_path / "i.db")
    assert {Path(p).name: r["error"] for p, r in index.items() if r["status"] == "failed"} == failed
    assert index[path_key(odd)]["status"] == "ok"
    run = rows(tmp_path / "i.db", "select * from runs")[-1]
    assert (run["scanned"], run["tagged"], run["failed"]) == (
        len(index), sum(r["status"] == "ok" for r in index.values()), len(failed))


def test_tags_are_written_on_the_driver_and_undo_restores_them(library, tmp_path, tiny_wav2vec2):
    target = next(library.rglob("*.flac"))
    audio = mutagen.File(target)
    audio["genre"] = ["Shoegaze"]
    audio.save()
    summary = scan(library, tmp_path, tiny_wav2vec2, write_tags=True)
    assert summary.written == TRACKS
    for result in summary.results:
        assert read_genres(result.path) == result.labels, result.path
    assert len(rows(tmp_path / "index.db", "select * from tag_writes")) == TRACKS
    out = CliRunner().invoke(cli, ["undo", "--db", str(tmp_path / "index.db")], catch_exceptions=False)
    assert out.exit_code == 0 and f"Restored {TRACKS} file(s)" in out.output
    assert read_genres(target) == ["Shoegaze"]
    assert read_genres(next(library.rglob("*.ogg"))) == []


def test_a_worker_with_another_model_stops_the_scan_with_a_clear_error(mixed_library_src, tmp_path,
                                                                        tiny_wav2vec2):
    classifier = load_classifier(str(tiny_wav2vec2))
    classifier.fingerprint = "0" * 16  # as if the driver had loaded other weights than the workers
    settings = ScanSettings(model=str(tiny_wav2vec2), db=str(tmp_path / "i.db"), engine="ray")
    with pytest.raises(GenretagError, match="fingerprint .* the driver's has 0{16}: every machine must see"):
        tag_folder(next(mixed_library_src.rglob("*.opus")), settings, classifier=classifier)


def test_real_subprocess_joins_the_running_cluster(mixed_library_src, tmp_path, tiny_wav2vec2, ray_cluster):
    folder = tmp_path / "two"
    folder.mkdir()
    for suffix in ("*.opus", "*.flac"):
        shutil.copy(next(mixed_library_src.rglob(suffix)), folder)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["GENRETAG_DB"] = str(tmp_path / "sub.db")
    exe = Path(sys.executable).with_name("genretag")
    proc = subprocess.run([str(exe), "scan", str(folder), "--engine", "ray", "--ray-address", ray_cluster,
                           "--model", str(tiny_wav2vec2), "--min-confidence", "0"],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("2 tracks: 2 tagged, 0 abstained, 0 failed. This run predicted 2 and took 0 "
                                  "unchanged from the index")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # no Ray log lines around it
    assert len(rows(tmp_path / "sub.db", "select * from predictions")) == 2


def test_ray_is_imported_only_for_the_ray_engine():
    code = ("import sys, tagger.cli, tagger.pipeline; from tagger import ScanSettings; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
