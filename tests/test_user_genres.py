"""The user's genres (tagger.tagging.user_genres) against a real index filled by real scans, tag writes in
every mode, undos (exact and forced) and a write whose scan died mid-rename: the genres genretag wrote
are never the user's."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import mutagen
import pytest
from click.testing import CliRunner

from tagger.cli import cli
from tagger.index import Index, path_key
from tagger.tagging import tags
from tagger.tagging.journal import Journal
from tagger.tagging.user_genres import (BEFORE_GENRETAG, EDITED, TAGS, Write, indexed_user_genres,
                                        user_genres, with_writes)
from tests.audio_fixtures import ffmpeg_available, make_audio
from tests.index_rows import rows
from tests.models import make_tiny_wav2vec2

pytestmark = pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg and ffprobe on PATH")

OTHER_GENRES = ["Ambient", "Dub", "Folk", "Soul"]  # a second model: its writes differ from the first's


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    return make_tiny_wav2vec2(tmp_path_factory.mktemp("other"), genres=OTHER_GENRES, seed=1)


@pytest.fixture
def library(tmp_path) -> Path:
    """jazz.flac tagged Jazz by its owner, plain.flac with no genre."""
    folder = tmp_path / "lib"
    make_audio(folder / "jazz.flac", seconds=1.0, tags={"genre": "Jazz", "artist": "A"})
    make_audio(folder / "plain.flac", seconds=1.0, freq=220.0)
    return folder


def scan(folder: Path, db: Path, model: Path, *extra: str) -> None:
    out = CliRunner().invoke(cli, ["scan", str(folder), "--model", str(model), "--db", str(db),
                                   "--min-confidence", "0", *extra], catch_exceptions=False)
    assert out.exit_code == 0, out.output


def undo(db: Path, *extra: str) -> None:
    out = CliRunner().invoke(cli, ["undo", "--db", str(db), *extra], catch_exceptions=False)
    assert out.exit_code == 0, out.output


def user(db: Path, path: Path):
    conn = sqlite3.connect(db)
    try:
        found = {t.key: t.user for t in indexed_user_genres(conn)}
    finally:
        conn.close()
    return found[path_key(str(path))]


def edit_genre(path: Path, genres: list[str]) -> None:
    """Another tool (mutagen directly) sets the genre."""
    audio = mutagen.File(path)
    if genres:
        audio["genre"] = genres
    else:
        del audio["genre"]
    audio.save()


def runs_that_wrote(db: Path) -> list[int]:
    return [r["run_id"] for r in rows(db, "select distinct run_id from tag_writes order by run_id")]


# -- the rule on real indexes ---------------------------------------------------------------------------------
def test_a_track_genretag_never_wrote_keeps_the_genres_in_its_tags(library, tmp_path, tiny_wav2vec2):
    db = tmp_path / "index.db"
    scan(library, db, tiny_wav2vec2)
    jazz, plain = user(db, library / "jazz.flac"), user(db, library / "plain.flac")
    assert (jazz.genres, jazz.origin) == (("Jazz",), TAGS)
    assert (plain.genres, plain.origin) == ((), TAGS)


def test_genres_genretag_wrote_are_never_the_users_across_runs_models_and_undos(library, tmp_path,
                                                                                  tiny_wav2vec2, other_model):
    db = tmp_path / "index.db"
    jazz, plain = library / "jazz.flac", library / "plain.flac"
    scan(library, db, tiny_wav2vec2, "--write-tags")
    first = tags.read_genres(jazz)
    assert first and first != ["Jazz"]  # genretag replaced the user's genre
    assert user(db, jazz).genres == ("Jazz",) and user(db, jazz).origin == BEFORE_GENRETAG
    assert user(db, jazz).file_genres == tuple(first) and user(db, jazz).genretag_wrote_them
    assert user(db, plain).genres == ()  # it had none: unlabelled, not labelled with genretag's genre

    scan(library, db, other_model, "--write-tags")  # another model writes over genretag's own genre
    assert tags.read_genres(jazz)[0] in OTHER_GENRES
    assert user(db, jazz).genres == ("Jazz",) and user(db, plain).genres == ()

    undo(db)  # the second model's writes: the first model's genres are back
    assert tags.read_genres(jazz) == first
    assert user(db, jazz).genres == ("Jazz",) and user(db, jazz).origin == BEFORE_GENRETAG
    undo(db, "--run", str(runs_that_wrote(db)[0]))  # and the first's: the file is the user's again
    assert tags.read_genres(jazz) == ["Jazz"]
    assert (user(db, jazz).genres, user(db, jazz).origin) == (("Jazz",), TAGS)
    assert {r["state"] for r in rows(db, "select state from tag_writes")} == {"undone"}


def test_a_genre_edited_after_genretag_wrote_is_the_users(library, tmp_path, tiny_wav2vec2, other_model):
    db = tmp_path / "index.db"
    jazz, plain = library / "jazz.flac", library / "plain.flac"
    scan(library, db, tiny_wav2vec2, "--write-tags")
    edit_genre(jazz, ["Blues"])
    edit_genre(plain, [])  # the user removed genretag's genre: they want none
    assert user(db, jazz).genres == ("Jazz",)  # the index has not seen the edit yet
    scan(library, db, tiny_wav2vec2)  # a scan reads the edited tags
    assert (user(db, jazz).genres, user(db, jazz).origin) == (("Blues",), EDITED)
    assert (user(db, plain).genres, user(db, plain).origin) == ((), EDITED)

    scan(library, db, other_model, "--write-tags")  # genretag writes over the edit: the chain starts there
    assert tags.read_genres(jazz)[0] in OTHER_GENRES
    assert (user(db, jazz).genres, user(db, jazz).origin) == (("Blues",), BEFORE_GENRETAG)


def test_merge_keeps_only_the_users_part_and_fill_leaves_only_unlabelled_tracks(library, tmp_path,
                                                                                 tiny_wav2vec2):
    db = tmp_path / "index.db"
    jazz, plain = library / "jazz.flac", library / "plain.flac"
    scan(library, db, tiny_wav2vec2, "--write-tags", "--mode", "fill")
    assert tags.read_genres(jazz) == ["Jazz"] and tags.read_genres(plain)  # fill wrote the empty one only
    assert user(db, plain).genres == () and user(db, jazz).genres == ("Jazz",)
    undo(db)
    scan(library, db, tiny_wav2vec2, "--write-tags", "--mode", "merge", "--rescan")
    merged = tags.read_genres(jazz)
    assert merged[0] == "Jazz" and len(merged) == 2
    assert user(db, jazz).genres == ("Jazz",) and user(db, jazz).file_genres == tuple(merged)


def test_a_forced_undo_that_supersedes_a_later_write_gives_the_user_their_genre(library, tmp_path,
                                                                                 tiny_wav2vec2, other_model):
    db = tmp_path / "index.db"
    jazz = library / "jazz.flac"
    scan(library, db, tiny_wav2vec2, "--write-tags")
    scan(library, db, other_model, "--write-tags")
    undo(db, "--run", str(runs_that_wrote(db)[0]), "--force")  # the older run, over the newer one
    assert tags.read_genres(jazz) == ["Jazz"]
    states = [r["state"] for r in rows(db, "select state from tag_writes where path = ? order by seq",
                                       [path_key(str(jazz))])]
    assert states == ["undone", "superseded"]
    assert (user(db, jazz).genres, user(db, jazz).origin) == (("Jazz",), TAGS)


def test_a_write_whose_scan_died_while_replacing_the_file(library, tmp_path, tiny_wav2vec2):
    """The journal says ``replacing``: the index does not know whether the file holds the write. The
    write counts only once the file's genres, as a scan reads them, are its result."""
    db = tmp_path / "index.db"
    jazz = library / "jazz.flac"
    scan(library, db, tiny_wav2vec2, "--write-tags")
    first = tags.read_genres(jazz)
    with Index(db) as index:  # a scan that wrote "Noise" and died before recording it as written
        journal = Journal(index, index.start_run("scan"))
        entry = journal.begin(str(jazz), ["Noise"])
        tags.write_genres(jazz, ["Noise"], temp=entry.temp, before_replace=lambda r: journal.replacing(entry, r))
    assert tags.read_genres(jazz) == ["Noise"]
    assert rows(db, "select state from tag_writes order by seq desc limit 1")[0]["state"] == "replacing"
    assert user(db, jazz).file_genres == tuple(first) and user(db, jazz).genres == ("Jazz",)
    scan(library, db, tiny_wav2vec2)  # reads the file (its stat changed) but settles no write
    assert user(db, jazz).file_genres == ("Noise",)
    assert (user(db, jazz).genres, user(db, jazz).origin) == (("Jazz",), BEFORE_GENRETAG)


# -- the rule itself ---------------------------------------------------------------------------------------
def w(seq: int, old: list[str], new: list[str], state: str = "written") -> Write:
    return Write(seq, state, tuple(old), tuple(new))


@pytest.mark.parametrize("held, writes, expected", [
    (["Jazz"], [], (("Jazz",), TAGS)),
    (["Rock"], [w(1, ["Jazz"], ["Rock"])], (("Jazz",), BEFORE_GENRETAG)),
    (["Pop"], [w(2, ["Rock"], ["Pop"]), w(1, ["Jazz"], ["Rock"])], (("Jazz",), BEFORE_GENRETAG)),
    (["Pop"], [w(1, ["Jazz"], ["Rock"]), w(2, ["Blues"], ["Pop"])], (("Blues",), BEFORE_GENRETAG)),  # edit between
    (["Blues"], [w(1, ["Jazz"], ["Rock"])], (("Blues",), EDITED)),
    ([], [w(1, ["Jazz"], ["Rock"])], ((), EDITED)),
    (["Rock"], [w(1, [], ["Rock"])], ((), BEFORE_GENRETAG)),
    (["Jazz", "Rock"], [w(1, ["Jazz"], ["Jazz", "Rock"])], (("Jazz",), BEFORE_GENRETAG)),  # merge
    (["Rock"], [w(1, ["Rock"], ["Rock"])], (("Rock",), BEFORE_GENRETAG)),  # provenance only
    (["Jazz"], [w(1, ["Jazz"], ["Rock"], "undone")], (("Jazz",), TAGS)),
    (["Rock"], [w(1, ["Jazz"], ["Rock"]), w(2, ["Rock"], ["Pop"], "undone"), w(3, ["Rock"], ["Rock"], "abandoned")],
     (("Jazz",), BEFORE_GENRETAG)),
    (["Rock"], [w(1, ["Jazz"], ["Rock"]), w(2, ["Rock"], ["Pop"], "replacing")], (("Jazz",), BEFORE_GENRETAG)),
    (["Pop"], [w(1, ["Jazz"], ["Rock"]), w(2, ["Rock"], ["Pop"], "replacing")], (("Jazz",), BEFORE_GENRETAG)),
    (["Jazz"], [w(1, ["Jazz"], ["Rock"], "undone"), w(2, ["Rock"], ["Pop"], "superseded")], (("Jazz",), TAGS)),
])
def test_the_rule(held, writes, expected):
    got = user_genres(held, writes)
    assert (got.genres, got.origin) == expected and got.file_genres == tuple(held)


def test_tracks_and_writes_are_merged_in_sqlites_order_of_path_keys():
    """with_writes merges two queries ordered by SQLite; Python must compare the keys the same way."""
    keys = ["/m/Z", "/m/a", "/m/a b", "/m/a/b", "/m/\\xff", "/m/é", "/m/日本", "/m/😀", "/m/ａ"]
    conn = sqlite3.connect(":memory:")
    conn.execute("create table t (path text)")
    conn.executemany("insert into t values (?)", [(k,) for k in keys])
    assert [r[0] for r in conn.execute("select path from t order by path")] == sorted(keys)
    writes = [(k, w(1, ["Jazz"], [k])) for k in sorted(keys)[1::2]]
    merged = list(with_writes([(k,) for k in sorted(keys)], writes))
    assert [(row[0], [x.new_genres for x in mine]) for row, mine in merged] == [
        (k, [(k,)] if i % 2 else []) for i, k in enumerate(sorted(keys))]
