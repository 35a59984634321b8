"""Every command answers an index it cannot use — missing, a folder, not SQLite, damaged, truncated,
read-only, from a newer genretag — with one line naming the file and the reason, exit 1, no traceback,
no file created, and no audio file touched."""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tagger.cli import cli
from tagger.index import SCHEMA_VERSION

GENRETAG = Path(sys.executable).with_name("genretag")
COMMANDS = {
    "scan": lambda lib, db: ["scan", str(lib), "--write-tags", "--min-confidence", "0", "--db", str(db)],
    "scan-dry": lambda lib, db: ["scan", str(lib), "--dry-run", "--db", str(db)],
    "undo": lambda lib, db: ["undo", "--db", str(db)],
    "undo-paths": lambda lib, db: ["undo", str(lib), "--db", str(db)],
    "history": lambda lib, db: ["history", "--db", str(db)],
    "report": lambda lib, db: ["report", "--db", str(db)],
    "report-json": lambda lib, db: ["report", "--json", "--db", str(db)],
    "show": lambda lib, db: ["show", str(next(lib.rglob("*.flac"))), "--db", str(db)],
    "models": lambda lib, db: ["models", "--db", str(db)],
}


@pytest.fixture(scope="module")
def good_index(tmp_path_factory, mixed_library_src, tiny_wav2vec2) -> Path:
    """A real index of a written library: enough pages that damage lands in the data."""
    work = tmp_path_factory.mktemp("good")
    lib = Path(shutil.copytree(mixed_library_src, work / "lib"))
    db = work / "index.db"
    result = CliRunner().invoke(cli, ["scan", str(lib), "--model", str(tiny_wav2vec2), "--write-tags",
                                      "--min-confidence", "0", "--db", str(db)])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(db) as conn:  # fold the WAL in, so the damage below hits the only copy
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db


def _damaged(good: Path, dest: Path) -> Path:
    data = bytearray(good.read_bytes())
    page = 4096
    for start in range(page * 2, len(data), page * 3):  # overwrite every third page past the schema
        data[start:start + page] = os.urandom(min(page, len(data) - start))
    dest.write_bytes(bytes(data))
    return dest


def _truncated(good: Path, dest: Path) -> Path:
    dest.write_bytes(good.read_bytes()[: 4096 * 3])
    return dest


def _not_sqlite(good: Path, dest: Path) -> Path:
    dest.write_text("this is a playlist, not an index\n" * 200)
    return dest


def _future_schema(good: Path, dest: Path) -> Path:
    shutil.copy(good, dest)
    with sqlite3.connect(dest) as conn:
        conn.execute("update meta set value = ? where key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    return dest


def _folder(good: Path, dest: Path) -> Path:
    dest.mkdir()
    return dest


def _missing(good: Path, dest: Path) -> Path:
    return dest


KINDS = {"damaged": (_damaged, "damaged"), "truncated": (_truncated, "damaged"),
         "not-sqlite": (_not_sqlite, "not an SQLite database"), "future": (_future_schema, "newer"),
         "folder": (_folder, "is a folder"), "missing": (_missing, "no genretag index")}
READ_ONLY_COMMANDS = ("history", "report", "report-json", "show", "models", "undo", "undo-paths")


def _digests(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_an_unusable_index_in_one_line(kind, command, good_index, library, tmp_path,
                                                            tiny_wav2vec2, monkeypatch):
    if kind == "missing" and command.startswith("scan"):
        pytest.skip("a scan creates its index")
    make, reason = KINDS[kind]
    db = make(good_index, tmp_path / "index.db")
    monkeypatch.setenv("GENRETAG_MODEL", str(tiny_wav2vec2))
    before, db_before = _digests(library), (db.read_bytes() if db.is_file() else None)
    result = CliRunner().invoke(cli, COMMANDS[command](library, db))
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and str(db) in lines[-1] and reason in lines[-1], result.output
    assert "Traceback" not in result.output
    assert _digests(library) == before  # no audio file touched
    if kind == "missing":
        assert not db.exists() and not Path(str(db) + "-wal").exists()
    elif db_before is not None and kind != "future":
        assert db.read_bytes() == db_before


def without_privileges() -> list[str]:
    """A command prefix that runs as this user without any capability: root then obeys file modes
    (no CAP_DAC_OVERRIDE), as every other user does."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux) to drop root's capabilities")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]


def test_a_read_only_index_is_refused_in_one_line_through_a_real_process(good_index, library, tmp_path,
                                                                         tiny_wav2vec2):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "index.db"
    shutil.copy(good_index, db)
    os.chmod(db, 0o444)
    os.chmod(folder, 0o555)  # no -wal or -shm file can be made beside it either
    before, db_before = _digests(library), db.read_bytes()
    env = {**os.environ, "GENRETAG_MODEL": str(tiny_wav2vec2)}
    try:
        for args in (["history", "--db", str(db)], ["scan", str(library), "--dry-run", "--db", str(db)],
                     ["scan", str(library), "--write-tags", "--db", str(db)], ["undo", "--db", str(db)]):
            proc = subprocess.run([*without_privileges(), str(GENRETAG), *args], capture_output=True, text=True,
                                  env=env, timeout=300)
            assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
            lines = proc.stderr.strip().splitlines()
            assert "Traceback" not in proc.stderr and lines[-1].startswith("Error: "), proc.stderr
            assert str(db) in lines[-1] and "read-only" in lines[-1], lines[-1]
    finally:
        os.chmod(folder, 0o755)
    assert _digests(library) == before and db.read_bytes() == db_before


@pytest.mark.parametrize("command", ["history", "undo", "show", "models", "report"])
def test_a_missing_index_is_refused_without_creating_it_through_a_real_process(command, library, tmp_path):
    db = tmp_path / "new" / "index.db"
    proc = subprocess.run([str(GENRETAG), *COMMANDS[command](library, db)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"Error: {db}: no genretag index at this path; run "
                                                    "`genretag scan` first (or pass --db)")
    assert not db.parent.exists()


REFUSE_WITHOUT_TORCH = ("import sys; from tagger.cli import main; sys.argv = ['genretag', *sys.argv[1:]]\n"
                        "try:\n    main()\nfinally:\n"
                        "    print(sorted({'torch', 'transformers', 'sklearn'} & set(sys.modules)))")


@pytest.mark.parametrize("model, reason", [
    ("builtin:bogus", "unknown built-in model 'builtin:bogus'; the built-in models are builtin:musicnn-msd"),
    ("bogus-model", "not a local checkpoint folder nor in the Hugging Face cache, and the hub cannot be reached"),
    ("./no/such/folder", "is not a checkpoint folder"),
    ("not a hub id!", "neither a checkpoint folder nor a valid hub id"),
])
def test_a_model_that_cannot_load_is_refused_before_anything_heavy_is_imported(model, reason, library, tmp_path):
    """The refusal needs neither torch nor transformers (whose import takes seconds) and creates no index."""
    db = tmp_path / "index.db"
    proc = subprocess.run([sys.executable, "-c", REFUSE_WITHOUT_TORCH, "scan", str(library), "--model", model,
                           "--db", str(db)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("Error: ") and reason in line, line
    assert not db.exists()


def test_a_bad_label_map_is_refused_before_the_model_loads(library, tmp_path):
    labels = tmp_path / "labels.toml"
    labels.write_text("keep_unlisted = 3\n")
    proc = subprocess.run([sys.executable, "-c", REFUSE_WITHOUT_TORCH, "scan", str(library), "--labels", str(labels),
                           "--db", str(tmp_path / "index.db")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    assert str(labels) in proc.stderr.strip().splitlines()[-1]
