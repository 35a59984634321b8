"""Cross-check written genres with a third reader: ExifTool (Debian: libimage-exiftool-perl).

    python bench/exiftool_check.py [--corpus ../shared/corpus/mutagen-data]

Writes two genres into a fresh file of every format genretag tags (and into every taggable file of the
mutagen corpus, if given), then asks ExifTool what genre it sees. Prints one line per file and the
totals; exits non-zero if ExifTool reports anything but the written genres.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tagger import tags  # noqa: E402
from tagger.errors import GenretagError  # noqa: E402
from tests.audio_fixtures import make_audio  # noqa: E402

FRESH = [("mp3-v23.mp3", {"id3_version": 3}), ("mp3-v24-v1.mp3", {"with_id3v1": True}), ("x.flac", {}),
         ("x.ogg", {}), ("x.opus", {}), ("x.oga", {}), ("x.spx", {}), ("x.m4a", {}),
         ("alac.m4a", {"codec": "alac"}), ("x.wav", {}), ("info.wav", {"tags": {"genre": "Old"}}),
         ("x.aiff", {}), ("x.wma", {}), ("x.wv", {})]
GENRES = ["Shoegaze", "Dream Pop"]


def exif_genre(path: Path) -> list[str] | None:
    """Every genre value ExifTool reads (duplicates included), or None if it reads no tags at all."""
    out = subprocess.run(["exiftool", "-a", "-G1", "-s", "-Genre", "-Title", str(path)],
                         capture_output=True, text=True, errors="surrogateescape").stdout
    lines = [line.split(":", 1) for line in out.splitlines() if ":" in line]
    genres = [value.strip() for key, value in lines if key.split()[-1] == "Genre"]
    return genres if genres or any(key.split()[-1] == "Title" for key, _ in lines) else None


def matches(seen: list[str]) -> bool:
    """ExifTool shows the new genres and nothing else: one field per value, or joined in one field (ExifTool
    joins with "/", genretag's ID3v2.3 with "; ", APEv2 separates values with NUL); an ID3v1 field, which
    holds one genre, shows the first."""
    pieces = {part.strip() for value in seen for part in value.replace("/", ";").replace("\0", ";").split(";")}
    return bool(seen) and pieces == set(GENRES)


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
            print(f"{'ok ' if ok else 'BAD'}  {path.name:45} exiftool: {seen}")
    print(f"{checked} files written and read back with ExifTool, {bad} disagreeing")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
