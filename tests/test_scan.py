"""`genretag scan` end to end: real tiny models, real audio files, the real SQLite index."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mutagen
import pytest
from click.testing import CliRunner

from tagger import ScanSettings, Tagger, tag_folder
from tagger.cli import EXIT_FILES_FAILED, cli
from tagger.errors import ModelError
from tagger.tagging.journal import PATHS_RECORDED
from tagger.models.infer import DeferredClassifier, load_classifier
from tests.index_rows import rows
from tests.models import make_tiny_whisper

TRACKS = 8


def mutagen_genres(path) -> list[str]:
    """Genres as mutagen itself reads them (ID3 frames for MP3/WAV/AIFF, easy keys elsewhere)."""
    tags = mutagen.File(path).tags
    if tags is not None and hasattr(tags, "getall"):
        return [g for frame in tags.getall("TCON") for g in frame.genres]
    return list((mutagen.File(path, easy=True) or {}).get("genre", []))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def settings(tmp_path, model, **kw) -> ScanSettings:
    return ScanSettings(model=str(model), db=str(tmp_path / "index.db"), min_confidence=0.0, **kw)


def test_scan_records_every_track_in_the_index(library, tmp_path, tiny_wav2vec2):
    summary = tag_folder(library, settings(tmp_path, tiny_wav2vec2))
    assert (summary.scanned, summary.tagged, summary.failed, summary.skipped) == (TRACKS, TRACKS, 0, 0)
    tracks = rows(tmp_path / "index.db", "select * from tracks order by path")
    assert len(tracks) == TRACKS
    for row in tracks:
        st = os.stat(row["path"])
        assert (row["size"], row["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
        assert row["status"] == "ok" and row["duration"] > 1.5 and row["codec"]
    preds = rows(tmp_path / "index.db", "select * from predictions")
    labels = {"blues", "jazz", "metal", "pop"}
    for row in preds:
        assert set(json.loads(row["labels"])) <= labels and len(json.loads(row["labels"])) == 1
        assert row["windows"] in (1, 3)
        assert row["fingerprint"] == load_classifier(str(tiny_wav2vec2)).fingerprint


def test_concurrent_batches_scan_like_one_batch_at_a_time_and_restore_torch_threads(library, tmp_path,
                                                                                      tiny_wav2vec2):
    import threading

    import torch

    threads = torch.get_num_threads()
    classifier = load_classifier(str(tiny_wav2vec2), device="cpu", precision="fp32")
    predict, seen = classifier.predict, set()

    def observed(windows, lengths):  # where each call ran, and on how many torch threads
        seen.add((threading.current_thread().name.split("_")[0], torch.get_num_threads()))
        return predict(windows, lengths)

    classifier.predict = observed
    results = {}
    for concurrency in (1, 2):
        seen.clear()
        summary = tag_folder(library, settings(tmp_path, tiny_wav2vec2, rescan=True,
                                               concurrent_batches=concurrency),
                             classifier=classifier, keep_results=True)
        assert (summary.scanned, summary.failed) == (TRACKS, 0)
        assert torch.get_num_threads() == threads
        expected = ("MainThread", threads) if concurrency == 1 else ("genretag-infer", max(1, threads // 2))
        assert seen == {expected}
        results[concurrency] = {r.path: (r.labels, r.scores) for r in summary.results}
    assert results[1].keys() == results[2].keys()
    for path, (labels, scores) in results[1].items():
        assert results[2][path][0] == labels
        assert results[2][path][1] == pytest.approx(scores, abs=1e-5)


def test_unchanged_rescan_predicts_nothing_and_changes_are_seen(library, tmp_path, tiny_wav2vec2, tiny_ast):
    first = tag_folder(library, settings(tmp_path, tiny_wav2vec2))
    again = tag_folder(library, settings(tmp_path, tiny_wav2vec2))
    assert (again.scanned, again.skipped) == (0, TRACKS)
    touched = next(library.rglob("*.flac"))
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    third = tag_folder(library, settings(tmp_path, tiny_wav2vec2), keep_results=True)
    assert (third.scanned, third.skipped) == (1, TRACKS - 1)
    assert third.results[-1].path == str(touched) or str(touched) in [r.path for r in third.results]
    other_model = tag_folder(library, settings(tmp_path, tiny_ast))
    assert (other_model.scanned, other_model.skipped) == (TRACKS, 0)
    forced = tag_folder(library, settings(tmp_path, tiny_ast, rescan=True))
    assert forced.scanned == TRACKS
    assert first.run_id < again.run_id < third.run_id


@pytest.mark.parametrize("model", ["tiny_wav2vec2", "builtin:musicnn-msd"])
def test_a_rescan_with_nothing_to_predict_never_loads_the_model(library, tmp_path, request, model):
    """Only the model's identity is read (config and weights' fingerprint): a real `genretag scan` that
    skips every track imports neither torch nor transformers, and one changed track loads the model."""
    model = str(request.getfixturevalue(model)) if model == "tiny_wav2vec2" else model
    db = tmp_path / "index.db"
    tag_folder(library, settings(tmp_path, model))
    code = ("import sys; from tagger.cli import main; sys.argv = ['genretag', 'scan', *sys.argv[1:]]\n"
            "try:\n    main()\nfinally:\n    print(sorted({'torch', 'transformers', 'torchcodec'} & set(sys.modules)))")
    run = [sys.executable, "-c", code, str(library), "--model", model, "--db", str(db), "--min-confidence", "0"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    assert f"This run predicted 0 and took {TRACKS} unchanged from the index" in proc.stderr
    touched = next(library.rglob("*.ogg"))
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "torch" in proc.stdout, proc.stdout + proc.stderr
    assert f"This run predicted 1 and took {TRACKS - 1} unchanged from the index" in proc.stderr


def test_a_checkpoint_replaced_after_the_scan_started_is_refused(library, tmp_path, tiny_wav2vec2):
    """The identity (fingerprint) the index keys predictions by is read before the weights load; if they
    differ by then, the scan stops rather than file predictions under the wrong model."""
    model = Path(shutil.copytree(tiny_wav2vec2, tmp_path / "model"))
    classifier = load_classifier(str(model), deferred=True)
    assert isinstance(classifier, DeferredClassifier) and not classifier.loaded
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelError, match="changed on disk after the scan started"):
        tag_folder(library, settings(tmp_path, model), classifier=classifier)


def test_dry_run_touches_no_file(library, tmp_path, tiny_wav2vec2):
    before = snapshot(library)
    result = CliRunner().invoke(cli, ["scan", str(library), "--model", str(tiny_wav2vec2), "--dry-run",
                                      "--min-confidence", "0", "--db", str(tmp_path / "i.db")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Planned tag changes" in result.output
    assert "t2.ogg" in result.output
    assert snapshot(library) == before


def test_a_dry_run_of_a_large_library_shows_the_first_rows_and_says_how_many_more(library, tmp_path,
                                                                                  tiny_wav2vec2, monkeypatch):
    """A first dry run plans a change for every track; laying out a table of a million rows would take
    minutes and gigabytes, so the table stops at PLANNED_TABLE_ROWS and says so; --json has them all."""
    import tagger.reporting.views

    monkeypatch.setattr(tagger.reporting.views, "PLANNED_TABLE_ROWS", 3)
    args = ["scan", str(library), "--model", str(tiny_wav2vec2), "--dry-run", "--min-confidence", "0",
            "--db", str(tmp_path / "i.db")]
    result = CliRunner().invoke(cli, args, catch_exceptions=False, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    rows_shown = [line for line in result.stdout.splitlines() if str(library) in line]
    assert len(rows_shown) == 3
    assert f"The first 3 of {TRACKS} planned changes are shown; --json lists every one." in result.stdout
    listed = CliRunner().invoke(cli, args + ["--json"], catch_exceptions=False)
    assert len([line for line in listed.stdout.splitlines() if line.startswith("{")]) == TRACKS
    again = CliRunner().invoke(cli, args, catch_exceptions=False, env={"COLUMNS": "300"})
    assert f"The first 3 of {TRACKS} planned changes are shown" in again.stdout
    assert f"{TRACKS} of them predicted by an earlier scan" in again.stdout


def test_write_tags_reads_back_with_mutagen(library, tmp_path, tiny_wav2vec2):
    summary = tag_folder(library, settings(tmp_path, tiny_wav2vec2, write_tags=True), keep_results=True)
    assert summary.written == TRACKS
    for result in summary.results:
        assert mutagen_genres(result.path) == result.labels, result.path
    journal = rows(tmp_path / "index.db", "select * from tag_writes")
    assert len(journal) == TRACKS
    indexed = {r["path"]: json.loads(r["genres"]) for r in rows(tmp_path / "index.db", "select * from tracks")}
    assert all(indexed[r.path] == r.labels for r in summary.results)
    again = tag_folder(library, settings(tmp_path, tiny_wav2vec2, write_tags=True))
    assert (again.scanned, again.skipped, again.written) == (0, TRACKS, 0)  # the written files count as unchanged


def test_dry_run_then_write_tags_uses_the_cached_predictions(library, tmp_path, tiny_wav2vec2):
    dry = tag_folder(library, settings(tmp_path, tiny_wav2vec2, dry_run=True), keep_results=True)
    write = tag_folder(library, settings(tmp_path, tiny_wav2vec2, write_tags=True))
    assert (write.scanned, write.skipped, write.written) == (0, TRACKS, TRACKS)
    for result in dry.results:
        assert mutagen_genres(result.path) == result.labels


def test_a_second_dry_run_still_shows_the_changes_the_first_one_planned(library, tmp_path, tiny_wav2vec2):
    """A dry run of unchanged files predicts nothing, but --write-tags would still write the cached
    predictions: the preview must show them, with the genres the files hold, and touch no file."""
    flac = next(library.rglob("*.flac"))
    audio = mutagen.File(flac)
    audio["genre"] = ["Shoegaze"]
    audio.save()
    before = snapshot(library)
    db = tmp_path / "i.db"
    args = ["scan", str(library), "--model", str(tiny_wav2vec2), "--dry-run", "--min-confidence", "0",
            "--db", str(db)]
    runner = CliRunner()
    first = tag_folder(library, ScanSettings(model=str(tiny_wav2vec2), db=str(db), dry_run=True,
                                             min_confidence=0.0), keep_results=True)
    planned = {r.path: r.labels for r in first.results}
    assert len(planned) == TRACKS and all(planned.values())

    table = runner.invoke(cli, args, catch_exceptions=False, env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    assert "This run predicted 0 and took 8 unchanged from the index" in table.output
    assert "Planned tag changes" in table.stdout
    assert f"{TRACKS} of them predicted by an earlier scan" in table.stdout
    rows_shown = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if "│" in line}
    assert set(rows_shown) == set(planned)
    for path, labels in planned.items():
        assert ", ".join(labels) in rows_shown[path].split("│")[3]
    assert "Shoegaze" in rows_shown[str(flac)].split("│")[2]

    as_json = runner.invoke(cli, args + ["--json"], catch_exceptions=False)
    lines = [json.loads(line) for line in as_json.stdout.splitlines() if line.startswith("{")]
    assert {line["path"]: line["labels"] for line in lines} == planned
    assert {(line["status"], line["source"], line["pending"]) for line in lines} == {("ok", "index", True)}
    assert all(line["windows"] and line["duration"] and line["ranking"] for line in lines)
    assert snapshot(library) == before

    written = tag_folder(library, ScanSettings(model=str(tiny_wav2vec2), db=str(db), write_tags=True,
                                               min_confidence=0.0))
    assert written.written == TRACKS
    after = runner.invoke(cli, args, catch_exceptions=False)
    assert "No tag changes planned" in after.stdout and "│" not in after.stdout
    lines = [json.loads(line) for line in runner.invoke(cli, args + ["--json"]).stdout.splitlines() if line]
    assert len(lines) == TRACKS and not any(line["pending"] for line in lines)  # one line per file, always


def test_a_rescan_decides_cached_genres_again_under_its_own_threshold_and_top_k(library, tmp_path,
                                                                                tiny_wav2vec2):
    """Lowering --min-confidence or raising --top-k on a rescan changes the genres of unchanged tracks
    from their stored rankings, without predicting them again; --write-tags then writes them."""
    first = tag_folder(library, ScanSettings(model=str(tiny_wav2vec2), db=str(tmp_path / "i.db"),
                                             min_confidence=1.0), keep_results=True)
    assert first.abstained == TRACKS
    ranking = {r.path: r.ranking for r in first.results}

    lower = tag_folder(library, ScanSettings(model=str(tiny_wav2vec2), db=str(tmp_path / "i.db"),
                                             min_confidence=0.0, write_tags=True))
    assert (lower.scanned, lower.skipped, lower.relabelled, lower.written) == (0, TRACKS, TRACKS, TRACKS)
    for path, ranked in ranking.items():
        assert mutagen_genres(path) == [ranked[0][0]]
    stored = {r["path"]: r for r in rows(tmp_path / "i.db", "select * from predictions")}
    assert {r["status"] for r in stored.values()} == {"ok"} and all(r["written"] for r in stored.values())
    assert {r["status"] for r in rows(tmp_path / "i.db", "select status from tracks")} == {"ok"}

    two = tag_folder(library, ScanSettings(model=str(tiny_wav2vec2), db=str(tmp_path / "i.db"),
                                           min_confidence=0.0, top_k=2, write_tags=True))
    assert (two.scanned, two.relabelled, two.written) == (0, TRACKS, TRACKS)
    for path, ranked in ranking.items():
        assert sorted(mutagen_genres(path)) == sorted(label for label, _ in ranked[:2])

    same = tag_folder(library, ScanSettings(model=str(tiny_wav2vec2), db=str(tmp_path / "i.db"),
                                            min_confidence=0.0, top_k=2, write_tags=True))
    assert (same.scanned, same.skipped, same.relabelled, same.written) == (0, TRACKS, 0, 0)


def test_a_top_k_beyond_the_stored_ranking_predicts_once_then_decides_from_the_cache(library, tmp_path):
    """The index keeps 10 genres of each ranking; musicnn's map has 30. --top-k 12 needs more, so the
    first such rescan predicts again (and stores 12), the next one decides from the cache."""
    args = dict(model="builtin:musicnn-msd", db=str(tmp_path / "i.db"), min_confidence=0.0)
    assert tag_folder(library, ScanSettings(**args)).scanned == TRACKS
    stored = rows(tmp_path / "i.db", "select ranking from predictions")
    assert {len(json.loads(r["ranking"])) for r in stored} == {10}
    wider = tag_folder(library, ScanSettings(**args, top_k=12), keep_results=True)
    assert (wider.scanned, wider.relabelled) == (TRACKS, 0)
    assert {len(r.labels) for r in wider.results} == {12}
    again = tag_folder(library, ScanSettings(**args, top_k=11))
    assert (again.scanned, again.skipped, again.relabelled) == (0, TRACKS, TRACKS)
    stored = rows(tmp_path / "i.db", "select labels from predictions")
    assert {len(json.loads(r["labels"])) for r in stored} == {11}


def test_a_rescan_with_another_label_map_predicts_again(library, tmp_path, tiny_wav2vec2):
    """Cached rankings went through the old map; a changed map (an edited --labels file) must give the
    genres it names, so those tracks are predicted again."""
    labels = tmp_path / "labels.toml"
    labels.write_text('keep_unlisted = true\n')
    args = dict(model=str(tiny_wav2vec2), db=str(tmp_path / "i.db"), min_confidence=0.0, top_k=4,
                labels=str(labels))
    first = tag_folder(library, ScanSettings(**args), keep_results=True)
    assert first.scanned == TRACKS
    assert tag_folder(library, ScanSettings(**args)).scanned == 0
    labels.write_text('keep_unlisted = true\n[genres]\n"jazz" = "Jazz"\n"blues" = "Jazz"\n')
    again = tag_folder(library, ScanSettings(**args), keep_results=True)
    assert (again.scanned, again.skipped, again.relabelled) == (TRACKS, 0, 0)
    for result in again.results:
        assert "jazz" not in result.labels and "blues" not in result.labels and "Jazz" in result.labels


def test_the_progress_bar_of_a_rescan_counts_only_the_tracks_it_predicts(library, tmp_path, tiny_wav2vec2):
    """A rescan of a big library with a few new files must not show (nor time its ETA for) every
    unchanged track as still to do."""
    from tagger.reporting.views import ScanView

    tag_folder(library, settings(tmp_path, tiny_wav2vec2))
    new = library / "new.flac"
    shutil.copy(next(library.rglob("*.flac")), new)
    skips = []
    view = ScanView(settings(tmp_path, tiny_wav2vec2))
    summary = tag_folder(library, settings(tmp_path, tiny_wav2vec2), on_result=view.result,
                         on_discovered=view.discovered, on_skipped=lambda n: (skips.append(n), view.skipped(n)))
    assert (summary.scanned, summary.skipped) == (1, TRACKS)
    assert sum(skips) == TRACKS
    task = view.progress.tasks[0]
    assert (task.total, task.completed) == (1, 1)


def _tag_library_over_a_shoegaze_flac(library, tmp_path, model) -> tuple[Path, Path]:
    """Give one FLAC the genre Shoegaze, then scan the library with --write-tags: (that file, index)."""
    target = next(library.rglob("*.flac"))
    audio = mutagen.File(target)
    audio["genre"] = ["Shoegaze"]
    audio.save()
    tag_folder(library, settings(tmp_path, model, write_tags=True))
    assert mutagen_genres(target) != ["Shoegaze"]
    return target, tmp_path / "index.db"


def test_undo_restores_the_previous_tags(library, tmp_path, tiny_wav2vec2):
    target, db = _tag_library_over_a_shoegaze_flac(library, tmp_path, tiny_wav2vec2)
    runner = CliRunner()
    out = runner.invoke(cli, ["undo", "--db", str(db)], catch_exceptions=False)
    assert out.exit_code == 0 and f"Restored {TRACKS} file(s)" in out.output
    assert mutagen_genres(target) == ["Shoegaze"]
    assert mutagen_genres(next(library.rglob("*.ogg"))) == []
    assert "Nothing to undo" in runner.invoke(cli, ["undo", "--db", str(db)]).output
    history = runner.invoke(cli, ["history", "--db", str(db), "--json"])
    assert [r["command"] for r in json.loads(history.output)] == ["undo", "scan"]


def test_history_reads_in_an_80_column_terminal(library, tmp_path, tiny_wav2vec2):
    """Each run's figures are whole words at 80 columns, not columns cut to "pr…" and "abs…"."""
    db = tmp_path / "index.db"
    tag_folder(library, settings(tmp_path, tiny_wav2vec2, dry_run=True))
    tag_folder(library, settings(tmp_path, tiny_wav2vec2, write_tags=True))
    runner = CliRunner()
    assert runner.invoke(cli, ["undo", "--db", str(db)]).exit_code == 0
    narrow = runner.invoke(cli, ["history", "--db", str(db)], env={"COLUMNS": "80"}, catch_exceptions=False).output
    assert max(len(line) for line in narrow.splitlines()) <= 80 and "…" not in narrow, narrow
    wide = runner.invoke(cli, ["history", "--db", str(db)], env={"COLUMNS": "300"}).output
    rows = [line for line in wide.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 3, wide
    for row, said in zip(rows, (("undo", f"{TRACKS} restored"),
                                ("scan, write", f"0 predicted, {TRACKS} from the index, {TRACKS} written",
                                 f"{TRACKS} tagged, 0 abstained, 0 failed"),
                                ("scan, dry run", f"{TRACKS} predicted, 0 from the index",
                                 f"{TRACKS} tagged, 0 abstained, 0 failed", str(tiny_wav2vec2)))):
        assert all(part in row for part in said), (said, row)


def test_undo_of_more_paths_than_sqlite_takes_variables_restores_the_written_one(library, tmp_path,
                                                                                  tiny_wav2vec2):
    """`genretag undo PATH...` with a long list of names: one SQL variable per path would pass SQLite's
    limit (32,766 by default; Debian builds it with 250,000) and fail the whole undo."""
    import sqlite3

    from tagger.tagging.journal import undo

    target, db = _tag_library_over_a_shoegaze_flac(library, tmp_path, tiny_wav2vec2)
    limit = sqlite3.connect(":memory:").getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    others = [str(library / f"missing-{i:06d}.flac") for i in range(limit)]
    paths = others[:limit // 2] + [str(target)] + others[limit // 2:]
    summary = undo(db, paths=paths)
    assert (summary.restored, summary.failed) == (1, 0)
    assert mutagen_genres(target) == ["Shoegaze"]
    assert mutagen_genres(next(library.rglob("*.ogg"))) != []  # not in the list: still as the scan wrote it
    # The run records how many paths it was given and the first few, not a multi-megabyte list.
    recorded = rows(db, "select options from runs where id = ?", [summary.run_id])[0]["options"]
    assert json.loads(recorded)["path_count"] == limit + 1
    assert json.loads(recorded)["paths"] == paths[:PATHS_RECORDED]


def test_a_large_undo_reads_its_journal_in_pages_and_reports_each_file_as_it_goes(library, tmp_path,
                                                                                  tiny_wav2vec2, monkeypatch):
    """Undoing a scan that wrote a million files must not hold its journal in memory: pages of 3 rows
    restore all 8 files. A file that cannot be restored fails alone, named on its own error line; the
    next undo of the run restores it, and only it."""
    import tagger.index

    monkeypatch.setattr(tagger.index, "UNDO_PAGE", 3)
    files = sorted(p for p in library.rglob("*") if p.is_file())
    before = {p: mutagen_genres(p) for p in files}
    tag_folder(library, settings(tmp_path, tiny_wav2vec2, write_tags=True))
    written = {p: mutagen_genres(p) for p in files}
    assert all(written[p] != before[p] for p in files)
    stuck = files[3]
    stuck.chmod(0o444)
    db = str(tmp_path / "index.db")
    out = CliRunner().invoke(cli, ["undo", "--db", db], catch_exceptions=False)
    assert out.exit_code == EXIT_FILES_FAILED, out.output
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(stuck) in errors[0] and "read-only" in errors[0]
    assert f"Restored {TRACKS - 1} file(s); 1 failed." in out.stdout
    assert {p: mutagen_genres(p) for p in files} == {**before, stuck: written[stuck]}
    stuck.chmod(0o644)
    again = CliRunner().invoke(cli, ["undo", "--db", db], catch_exceptions=False)
    assert again.exit_code == 0 and "Restored 1 file(s); 0 failed." in again.stdout
    assert {p: mutagen_genres(p) for p in files} == before
    undone = rows(tmp_path / "index.db", "select count(*) as n from tag_writes where undone_at is not null")
    assert undone[0]["n"] == TRACKS


def test_an_undo_keeps_only_its_first_failure_reasons_and_counts_every_failure(library, tmp_path, tiny_wav2vec2,
                                                                              monkeypatch):
    """An undo over a library on a share that went read-only fails for every file: its summary keeps
    the first ERRORS_KEPT reasons, not one per file, while ``failed`` and ``on_file`` see them all."""
    import tagger.tagging.journal

    monkeypatch.setattr(tagger.tagging.journal, "ERRORS_KEPT", 2)
    tag_folder(library, settings(tmp_path, tiny_wav2vec2, write_tags=True))
    stuck = sorted(p for p in library.rglob("*") if p.is_file())[:3]
    for path in stuck:
        path.chmod(0o444)
    told = []
    try:
        summary = tagger.tagging.journal.undo(tmp_path / "index.db", on_file=lambda path, error: told.append(error))
    finally:
        for path in stuck:
            path.chmod(0o644)
    reasons = [error for error in told if error]
    assert (summary.restored, summary.failed) == (TRACKS - 3, 3)
    assert len(reasons) == 3 and summary.errors == reasons[:2]


def test_an_undo_stopped_by_ctrl_c_is_finished_by_running_it_again(library, tmp_path, tiny_wav2vec2,
                                                                    monkeypatch):
    import tagger.tagging.tags

    files = sorted(p for p in library.rglob("*") if p.is_file())
    before = {p: mutagen_genres(p) for p in files}
    tag_folder(library, settings(tmp_path, tiny_wav2vec2, write_tags=True))
    restore, calls = tagger.tagging.tags.restore_exact, []

    def ctrl_c_at_the_third_file(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return restore(*args, **kwargs)

    monkeypatch.setattr(tagger.tagging.tags, "restore_exact", ctrl_c_at_the_third_file)
    db = str(tmp_path / "index.db")
    out = CliRunner().invoke(cli, ["undo", "--db", db])
    assert out.exit_code == 130 and "run the same undo again" in out.stderr
    assert sum(mutagen_genres(p) == before[p] for p in files) == 2
    monkeypatch.undo()
    again = CliRunner().invoke(cli, ["undo", "--db", db], catch_exceptions=False)
    assert again.exit_code == 0 and f"Restored {TRACKS - 2} file(s); 0 failed." in again.stdout
    assert {p: mutagen_genres(p) for p in files} == before
    undos = rows(tmp_path / "index.db",
                 "select interrupted, restored from runs where command = 'undo' order by id")
    assert [(r["interrupted"], r["restored"]) for r in undos] == [(1, 2), (0, TRACKS - 2)]


def test_bad_files_are_reported_and_the_scan_goes_on(library, tmp_path, tiny_wav2vec2):
    (library / "broken.mp3").write_text("<html>not audio</html>")
    (library / "empty.flac").write_bytes(b"")
    result = CliRunner().invoke(cli, ["scan", str(library), "--model", str(tiny_wav2vec2), "--json",
                                      "--min-confidence", "0", "--db", str(tmp_path / "i.db")])
    assert result.exit_code == EXIT_FILES_FAILED
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == TRACKS + 2
    failed = {Path(x["path"]).name: x["error"] for x in lines if x["status"] == "failed"}
    assert set(failed) == {"broken.mp3", "empty.flac"} and all(failed.values())
    assert f"error: {library / 'broken.mp3'}: " in result.stderr
    assert "2 failed" in result.stderr
    db_failed = rows(tmp_path / "i.db", "select path, error from tracks where status = 'failed'")
    assert {Path(r["path"]).name for r in db_failed} == {"broken.mp3", "empty.flac"}


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> Path:
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper"))


def test_scan_with_a_whisper_checkpoint(library, tmp_path, tiny_whisper):
    """Whisper's extractor pads or cuts every segment to 30 s: each window is one segment, and tracks of
    2 s to 4 min are all predicted, recorded and tagged."""
    summary = tag_folder(library, settings(tmp_path, tiny_whisper, write_tags=True), keep_results=True)
    assert (summary.scanned, summary.tagged, summary.failed) == (TRACKS, TRACKS, 0)
    for result in summary.results:
        assert result.windows in (1, 3) and result.labels[0] in {"blues", "jazz", "metal", "pop"}
        assert mutagen_genres(result.path) == result.labels
    fingerprint = load_classifier(str(tiny_whisper)).fingerprint
    assert {r["fingerprint"] for r in rows(tmp_path / "index.db", "select * from predictions")} == {fingerprint}


def test_tagger_api_on_paths_and_arrays(mixed_library_src, tiny_ast):
    tagger = Tagger(str(tiny_ast))
    path = next(mixed_library_src.rglob("*.flac"))
    ranked = tagger.classify(str(path))
    assert [r["label"] for r in ranked] and sorted(r["label"] for r in ranked) == ["blues", "jazz", "metal", "pop"]
    assert ranked == sorted(ranked, key=lambda r: -r["score"])
    batch = tagger.classify([str(path), str(next(mixed_library_src.rglob("*.ogg")))])
    assert batch[0] == ranked and len(batch) == 2
    from torchcodec.decoders import AudioDecoder

    samples = AudioDecoder(str(path)).get_all_samples()
    from_array = tagger.classify(samples.data.numpy(), sampling_rate=samples.sample_rate)
    assert [r["label"] for r in from_array] == [r["label"] for r in ranked]


def test_a_missing_model_fails_fast_with_a_clear_message(tmp_path, library):
    with pytest.raises(ModelError, match="not a checkpoint folder"):
        load_classifier(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="nor in the Hugging Face cache, and the hub cannot be reached"):
        load_classifier("someone/not-a-real-genre-model")
    result = CliRunner().invoke(cli, ["scan", str(library), "--model", "someone/not-a-real-model",
                                      "--db", str(tmp_path / "i.db")])
    assert result.exit_code == 1 and "Error: model 'someone/not-a-real-model'" in result.output
    assert "Traceback" not in result.output


def test_real_subprocess(library, tmp_path, tiny_wav2vec2):
    env = {**os.environ, "GENRETAG_DB": str(tmp_path / "sub.db")}
    exe = Path(sys.executable).with_name("genretag")
    proc = subprocess.run([str(exe), "scan", str(library), "--model", str(tiny_wav2vec2), "--json",
                           "--min-confidence", "0", "--batch-size", "4", "--concurrent-batches", "2"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == TRACKS and all(x["status"] == "ok" for x in lines)
    assert f"This run predicted {TRACKS} and took 0 unchanged" in proc.stderr
    assert len(rows(tmp_path / "sub.db", "select * from predictions")) == TRACKS


def test_help_is_fast_and_lists_the_options():
    exe = Path(sys.executable).with_name("genretag")
    proc = subprocess.run([str(exe), "scan", "--help"], capture_output=True, text=True, timeout=30)
    for option in ("--model", "--write-tags", "--dry-run", "--db", "--device", "--batch-size",
                   "--max-windows", "--top-k", "--min-confidence", "--workers", "--concurrent-batches",
                   "--rescan"):
        assert option in proc.stdout
    code = "import sys, tagger.cli; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_file_changed_before_its_write_is_not_written_but_predicted_again(library, tmp_path, tiny_wav2vec2):
    """The file is touched while its windows are being classified: the write must not use the stale
    prediction; the track is re-queued, predicted again and then written."""
    classifier = load_classifier(str(tiny_wav2vec2))
    target = sorted(p for p in library.rglob("*") if p.is_file())[0]
    original_predict = classifier.predict
    calls = []

    def predict_and_touch(windows, lengths):
        if not calls:
            st = target.stat()
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
        calls.append(windows.shape[0])
        return original_predict(windows, lengths)

    classifier.predict = predict_and_touch
    summary = tag_folder(library, settings(tmp_path, tiny_wav2vec2, write_tags=True, batch_size=1),
                         classifier=classifier, keep_results=True)
    assert summary.requeued == 1
    assert summary.written == TRACKS
    assert len(summary.results) == TRACKS and summary.predicted == TRACKS  # one final result per file
    final = [r for r in summary.results if r.path == str(target)]
    assert len(final) == 1 and final[0].written and mutagen_genres(target) == final[0].labels


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs in the scan (``except Exception`` does not catch it)."""


def crash_in(monkeypatch, journal_method: str) -> None:
    """Make the scan stop dead at ``Journal.<journal_method>``."""
    import tagger.tagging.journal

    def crash(self, *args):
        raise Crash

    monkeypatch.setattr(tagger.tagging.journal.Journal, journal_method, crash)


def shoegaze_flac(source: Path, folder: Path | None = None) -> Path:
    """``source`` (a FLAC), or a copy of it in ``folder``, holding the genre Shoegaze."""
    target = Path(shutil.copy(source, folder)) if folder else source
    audio = mutagen.File(target)
    audio["genre"] = ["Shoegaze"]
    audio.save()
    return target


def test_the_undo_journal_is_written_before_the_file(library, tmp_path, tiny_wav2vec2, monkeypatch):
    """A crash right after a file was replaced, before the journal entry is completed, must still leave
    the previous genres undoable: the entry is written ahead of the file."""
    target = shoegaze_flac(next(library.rglob("*.flac")))
    crash_in(monkeypatch, "written")  # between os.replace and the journal's completion
    with pytest.raises(Crash):
        tag_folder(target.parent, settings(tmp_path, tiny_wav2vec2, write_tags=True))
    assert mutagen_genres(target) != ["Shoegaze"]  # the file was written, the journal not completed
    monkeypatch.undo()
    out = CliRunner().invoke(cli, ["undo", "--db", str(tmp_path / "index.db")], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert mutagen_genres(target) == ["Shoegaze"]


@pytest.mark.parametrize("crash_at", ["replacing", "written"])
def test_a_scan_killed_during_a_write_is_finished_without_predicting_again(library, tmp_path, tiny_wav2vec2,
                                                                          monkeypatch, crash_at):
    """Killed with the written copy complete but the file not yet replaced (Journal.replacing), or
    replaced but the journal not completed (Journal.written): the rerun neither predicts the file again
    nor leaves the journal open — it writes from the cached prediction, or recognises its own write by the
    stat noted before the replace — and undo still restores the original genres."""
    folder = tmp_path / "one"
    folder.mkdir()
    target = shoegaze_flac(next(library.rglob("*.flac")), folder)
    crash_in(monkeypatch, crash_at)
    with pytest.raises(Crash):
        tag_folder(folder, settings(tmp_path, tiny_wav2vec2, write_tags=True))
    replaced = crash_at == "written"
    assert (mutagen_genres(target) != ["Shoegaze"]) == replaced
    assert [p.name for p in folder.iterdir()] == [target.name]  # no temp copy left either way
    monkeypatch.undo()
    rerun = tag_folder(folder, settings(tmp_path, tiny_wav2vec2, write_tags=True), keep_results=True)
    assert (rerun.scanned, rerun.skipped, rerun.written) == (0, 1, 0 if replaced else 1)
    # One journal entry either way: killed before the replace, the first one never happened and is dropped.
    (write,) = rows(tmp_path / "index.db", "select * from tag_writes")
    assert write["written_at"] is not None and json.loads(write["new_genres"]) == mutagen_genres(target)
    (prediction,) = rows(tmp_path / "index.db", "select * from predictions")
    assert (prediction["size"], prediction["mtime_ns"], prediction["written"]) == (
        target.stat().st_size, target.stat().st_mtime_ns, 1)
    again = tag_folder(folder, settings(tmp_path, tiny_wav2vec2, write_tags=True))
    assert (again.scanned, again.skipped, again.written) == (0, 1, 0)
    out = CliRunner().invoke(cli, ["undo", "--db", str(tmp_path / "index.db")], catch_exceptions=False)
    assert out.exit_code == 0 and mutagen_genres(target) == ["Shoegaze"], out.output


def test_the_scan_says_when_it_waits_for_the_model_and_when_predictions_start(library, tmp_path, tiny_wav2vec2):
    phases = []
    tag_folder(library, settings(tmp_path, tiny_wav2vec2), on_phase=lambda *p: phases.append(p))
    model_id = str(tiny_wav2vec2)
    assert phases == [("loading", model_id), ("predicting", model_id)]
    phases.clear()
    tag_folder(library, settings(tmp_path, tiny_wav2vec2), on_phase=lambda *p: phases.append(p))
    assert phases == []  # everything came from the index: no model was loaded


def test_the_rate_counts_from_the_first_prediction():
    from tagger.reporting.views import PredictionRate

    now = [100.0]
    rate = PredictionRate(clock=lambda: now[0])
    assert rate.text() == ""
    rate.add()  # the first prediction, after however long the model took to load
    now[0] += 2.0
    rate.add()
    rate.add()
    assert rate.per_second() == 1.0 and rate.text() == "1.00 tracks/s"


def test_renaming_a_checkpoints_labels_predicts_again(library, tmp_path, tiny_wav2vec2):
    """Same weights, other id2label: the stored rankings name the old labels, so nothing is served."""
    renamed = Path(shutil.copytree(tiny_wav2vec2, tmp_path / "renamed"))
    config = json.loads((renamed / "config.json").read_text())
    config["id2label"] = {k: v.upper() for k, v in config["id2label"].items()}
    config["label2id"] = {k.upper(): v for k, v in config["label2id"].items()}
    (renamed / "config.json").write_text(json.dumps(config))
    first = tag_folder(library, settings(tmp_path, tiny_wav2vec2), keep_results=True)
    again = tag_folder(library, settings(tmp_path, renamed), keep_results=True)
    assert (again.predicted, again.from_index) == (TRACKS, 0)
    before = {r.path: r.labels for r in first.results}
    assert {r.path: r.labels for r in again.results} == {p: [g.upper() for g in labels] for p, labels in before.items()}
