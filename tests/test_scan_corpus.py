"""`genretag scan --write-tags` over the real-format and broken files of the mutagen corpus."""
import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tagger.cli import EXIT_FILES_FAILED, cli
from tagger.discover import is_audio_name
from tests.shared_data import MUTAGEN_CORPUS

CORPUS = MUTAGEN_CORPUS
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"mutagen corpus not found at {CORPUS}")


def test_every_decodable_file_is_classified_and_every_broken_one_reported(tmp_path, tiny_wav2vec2):
    lib = Path(shutil.copytree(CORPUS, tmp_path / "corpus"))
    for path in lib.iterdir():
        path.chmod(0o644)
    manifest = {row["file"]: row for row in csv.DictReader(open(CORPUS / "MANIFEST.tsv"), delimiter="\t")}
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in lib.iterdir()}
    result = CliRunner().invoke(cli, ["scan", str(lib), "--model", str(tiny_wav2vec2), "--write-tags",
                                      "--min-confidence", "0", "--json", "--db", str(tmp_path / "i.db")])
    assert result.exit_code == EXIT_FILES_FAILED
    lines = {Path(x["path"]).name: x for x in map(json.loads, result.stdout.splitlines())}
    assert set(lines) == {name for name in manifest if is_audio_name(name)}
    for name, line in lines.items():
        row = manifest[name]
        decodes = not row["decodable"].startswith("no") and float(row["ffmpeg_decoded_s"] or 0) >= 0.5
        if decodes and row["taggable_mutagen"] == "yes":
            assert line["status"] == "ok", (name, line)
        else:  # undecodable, or classified but untaggable (raw AAC): reported, file left as it was
            assert line["status"] == "failed" and line["error"], (name, line)
            assert f"error: {lib / name}: " in result.stderr
            assert hashlib.sha256((lib / name).read_bytes()).hexdigest() == before[name], name
    for line in result.stderr.splitlines():
        assert ".cpp:" not in line  # no decoder-internal source locations in what users read
