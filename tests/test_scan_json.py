"""`genretag scan --json` is one object per discovered audio file on every run, and the counts add up:
through a real `genretag` process, on a first scan, a rescan, a write from the index, after undo and
with failures (schema: docs/json-output.md)."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tagger.settings import AUDIO_EXTENSIONS

GENRETAG = Path(sys.executable).with_name("genretag")
FIELDS = {"path", "status", "source", "labels", "scores", "ranking", "genres_in_file", "written", "pending",
          "relabelled", "windows", "duration", "codec", "error"}


def scan(library: Path, db: Path, model: Path, *extra: str, code: int = 0) -> tuple[list[dict], str]:
    proc = subprocess.run([str(GENRETAG), "scan", str(library), "--model", str(model), "--db", str(db), "--json",
                           *extra], capture_output=True, text=True, timeout=600)
    assert proc.returncode == code, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return lines, proc.stderr


def audio_files(library: Path) -> set[str]:
    return {str(p) for p in library.rglob("*") if p.suffix[1:].lower() in AUDIO_EXTENSIONS}


def check_lines(lines: list[dict], library: Path) -> dict[str, dict]:
    """Exactly one complete object per audio file; every classified track carries its ranking."""
    by_path = {line["path"]: line for line in lines}
    assert len(lines) == len(by_path) == len(audio_files(library)) and set(by_path) == audio_files(library)
    for line in lines:
        assert set(line) == FIELDS, line
        assert line["status"] in ("ok", "abstained", "failed") and line["source"] in ("predicted", "index")
        if line["status"] == "failed":
            assert line["error"] and not line["labels"]
            continue
        assert 1 <= len(line["ranking"]) <= 10 and line["windows"] >= 1 and line["duration"] > 0
        scores = [r["score"] for r in line["ranking"]]
        assert scores == sorted(scores, reverse=True)
        assert line["labels"] == [r["label"] for r in line["ranking"][:len(line["labels"])]]
    return by_path


def totals(stderr: str) -> tuple[int, ...]:
    """tagged, abstained, failed, predicted, from the index — as the summary line prints them."""
    import re

    match = re.search(r"(\d+) tracks: (\d+) tagged, (\d+) abstained, (\d+) failed\. This run predicted (\d+) and "
                      r"took (\d+) unchanged from the index", stderr)
    assert match, stderr
    total, *counts = map(int, match.groups())
    assert total == counts[0] + counts[1] + counts[2] == counts[3] + counts[4]
    return tuple(counts)


def test_one_object_per_file_on_every_run(library, tmp_path, tiny_wav2vec2):
    (library / "broken.mp3").write_text("<html>not audio</html>")
    db = tmp_path / "index.db"
    first, _ = scan(library, db, tiny_wav2vec2, "--min-confidence", "0", code=3)
    top = [line["scores"][0] for line in first if line["scores"]]
    threshold = f"{statistics.median(top):.6f}"  # about half the tracks clear it: the rest abstain

    dry, err = scan(library, db, tiny_wav2vec2, "--dry-run", "--min-confidence", threshold, code=3)
    by_path = check_lines(dry, library)
    abstained = {p for p, line in by_path.items() if line["status"] == "abstained"}
    tagged = {p for p, line in by_path.items() if line["status"] == "ok"}
    assert abstained and tagged and all(line["source"] == "index" for line in dry)
    assert all(by_path[p]["pending"] and not by_path[p]["relabelled"] for p in tagged)
    assert all(by_path[p]["relabelled"] and not by_path[p]["pending"] for p in abstained)
    assert totals(err) == (len(tagged), len(abstained), 1, 0, len(dry))

    written, err = scan(library, db, tiny_wav2vec2, "--write-tags", "--min-confidence", threshold, code=3)
    by_path = check_lines(written, library)
    assert {p for p, line in by_path.items() if line["written"]} == tagged
    assert totals(err) == (len(tagged), len(abstained), 1, 0, len(written))  # abstained ones count too
    assert f"wrote {len(tagged)} file{'' if len(tagged) == 1 else 's'}" in err

    again, err = scan(library, db, tiny_wav2vec2, "--dry-run", "--min-confidence", threshold, code=3)
    check_lines(again, library)
    assert not any(line["pending"] or line["written"] for line in again)

    undo = subprocess.run([str(GENRETAG), "undo", "--db", str(db)], capture_output=True, text=True, timeout=300)
    assert undo.returncode == 0, undo.stderr
    after_undo, err = scan(library, db, tiny_wav2vec2, "--dry-run", "--min-confidence", threshold, code=3)
    by_path = check_lines(after_undo, library)
    assert {p for p, line in by_path.items() if line["pending"]} == tagged
    assert totals(err)[3:] == (0, len(after_undo))


@pytest.mark.parametrize("args", [["--rescan"], []])
def test_every_line_is_complete_when_predicted(library, tmp_path, tiny_wav2vec2, args):
    lines, err = scan(library, tmp_path / "index.db", tiny_wav2vec2, *args)
    check_lines(lines, library)
    assert all(line["source"] == "predicted" for line in lines)
    assert totals(err)[3:] == (len(lines), 0)
