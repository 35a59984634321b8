"""Cross-check written genres with a third reader: ExifTool (Debian: libimage-exiftool-perl).

    python bench/exiftool_check.py [--corpus ../shared/corpus/mutagen-data]

Writes three genres into a fresh file of every format genretag tags (and into every taggable file of the
mutagen corpus, if given), then asks ExifTool which genres it sees, and in which order. Prints one line per
file and the totals; exits non-zero if ExifTool reports anything but the written genres in the written order.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tagger.tagging import tags  # noqa: E402
from tagger.errors import GenretagError  # noqa: E402
from tagger.tagging.formats import V1_GENRES, v1_code  # noqa: E402
from tests.audio_fixtures import make_audio  # noqa: E402

FRESH = [("mp3-v23.mp3", {"id3_version": 3}), ("mp3-v24-v1.mp3", {"with_id3v1": True}), ("x.flac", {}),
         ("x.ogg", {}), ("x.opus", {}), ("x.oga", {}), ("x.spx", {}), ("x.m4a", {}),
         ("alac.m4a", {"codec": "alac"}), ("x.wav", {}), ("info.wav", {"tags": {"genre": "Old"}}),
         ("x.aiff", {}), ("x.wma", {}), ("x.wv", {})]
GENRES = ["Shoegaze", "Dream Pop", "Ambient"]  # no name holds another or a separator


def exif_genre(path: Path) -> list[tuple[str, str]] | None:
    """Every (tag group, genre value) ExifTool reads, in its order, or None if it reads no tags at all."""
    out = subprocess.run(["exiftool", "-a", "-G1", "-s", "-Genre", "-Title", str(path)],
                         capture_output=True, text=True, errors="surrogateescape").stdout
    lines = [re.fullmatch(r"\[(\w+)\]\s+(\w+)\s*: (.*)", line) for line in out.splitlines()]
    lines = [m for m in lines if m]
    genres = [(m[1], m[3]) for m in lines if m[2] == "Genre"]
    return genres if genres or any(m[2] == "Title" for m in lines) else None


def shown(value: str) -> list[str] | None:
    """The written genres in the order ``value`` shows them, or None if it holds anything else. Values are
    one per field or joined in one (ExifTool joins ID3v2.4 values with "/", genretag's ID3v2.3 and RIFF
    INFO with "; "; ExifTool drops the NULs between APEv2 values)."""
    pattern = "|".join(re.escape(g) for g in sorted(GENRES, key=len, reverse=True))
    return re.findall(pattern, value) if re.sub(pattern, "", value).strip(" ;/\0") == "" else None


def matches(seen: list[tuple[str, str]]) -> bool:
    """Each tag ExifTool shows holds the new genres in the written order and nothing else; an ID3v1 tag,
    which holds one genre, holds the first one that has an ID3v1 code."""
    groups: dict[str, list[str]] = {}
    for group, value in seen:
        names = shown(value)
        if names is None:
            return False
        groups.setdefault(group, []).extend(names)
    v1 = [V1_GENRES[v1_code(GENRES)]]
    return bool(groups) and all(names == (v1 if group == "ID3v1" else GENRES) for group, names in groups.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared/corpus/mutagen-data")
    args = p.parse_args()
    if not shutil.which("exiftool"):
        sys.exit("exiftool not found: apt-get install libimage-exiftool-perl")
    bad = checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, options in FRESH:
            try:
                files.append(make_audio(Path(tmp) / name, **options))
            except RuntimeError as exc:
                print(f"skip {name}: {exc}")
        if args.corpus.is_dir():
            for src in sorted(args.corpus.iterdir()):
                if src.name not in ("MANIFEST.tsv", "README.md"):
                    copy = Path(shutil.copy(src, Path(tmp) / f"corpus-{src.name}"))
                    copy.chmod(0o644)  # the corpus is read-only; its copies must be writable
                    files.append(copy)
        for path in files:
            try:
                tags.write_genres(path, GENRES)
            except GenretagError as err:
                print(f"not taggable  {path.name}: {err.reason}")
                continue
            seen = exif_genre(path)
            if seen is None:
                print(f"unread by exiftool  {path.name}")
                continue
            checked += 1
            ok = matches(seen)
            bad += not ok
            print(f"{'ok ' if ok else 'BAD'}  {path.name:45} exiftool: {[f'{g}: {v}' for g, v in seen]}")
    print(f"{checked} files written and read back with ExifTool, {bad} disagreeing")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
