"""Step 1: find the audio files under a folder.

The walk is deterministic (names sorted at every level), follows symbolic links but never enters the
same directory twice (so link loops end), and reports unreadable directories instead of failing. It
streams: each track is stat-ed and yielded as the walk comes to it, so its memory does not grow with
the library (:func:`count_audio_files` gives a progress bar its total in a cheaper pass of its own).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import UnreadableFile
from .records import Track
from .settings import AUDIO_EXTENSIONS


def is_audio_name(name: str) -> bool:
    """True for names whose suffix is a known audio extension, in any case."""
    _, dot, ext = name.rpartition(".")
    return bool(dot) and ext.lower() in AUDIO_EXTENSIONS


def discover(root: str | os.PathLike, on_error: Callable[[UnreadableFile], None] | None = None
             ) -> Iterator[Track]:
    """Yield every regular audio file under ``root`` (or ``root`` itself if it is a file).

    Special files (FIFOs, devices) with audio names are reported through ``on_error`` rather than opened:
    reading a FIFO would block the scan forever.
    """
    report = on_error or (lambda err: None)
    root = Path(root)
    if root.is_file() or (root.exists() and not root.is_dir()):
        track = _track_for(os.fspath(root), report, root.stat)
        if track:
            yield track
        return
    yield from _walk(root, report)


def count_audio_files(root: str | os.PathLike) -> int:
    """How many tracks, and errors, ``discover(root)`` will come to, found without stat-ing a file.

    A quick first pass over the same walk, so that a progress bar has its total while discovery itself
    streams: holding every discovered track in a list would cost about 330 MiB per million tracks.
    Errors are counted because each is reported as a failed result; a file added or removed between
    the two passes makes the total one off, no more."""
    root = Path(root)
    if root.is_file() or (root.exists() and not root.is_dir()):
        return 1
    errors = 0

    def count_error(err: UnreadableFile) -> None:
        nonlocal errors
        errors += 1

    return sum(1 for _ in _audio_entries(root, count_error)) + errors


def _walk(root: Path, report) -> Iterator[Track]:
    for entry in _audio_entries(root, report):
        track = _track_for(entry.path, report, entry.stat)  # plain strings: 100,000s of files
        if track:
            yield track


def _audio_entries(root: Path, report) -> Iterator[os.DirEntry]:
    """The entries with audio names under ``root``: depth-first, in name order, with an explicit stack
    of folders rather than recursion: a tree nested deeper than Python's recursion limit (a sync tool
    copying a folder into itself) must not stop the scan."""
    seen: set[tuple[int, int]] = set()
    stack = [iter(_entries(root, seen, report))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError:
            is_dir = False
        if is_dir:
            stack.append(iter(_entries(entry.path, seen, report)))
        elif is_audio_name(entry.name):
            yield entry


def _entries(folder: str | Path, seen: set[tuple[int, int]], report) -> list[os.DirEntry]:
    """The folder's entries sorted by name; none for a folder already walked (however it was reached)
    or one that cannot be read, which is reported."""
    try:
        st = os.stat(folder)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return []
        seen.add(key)
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        report(UnreadableFile(folder, f"cannot read directory ({exc.strerror or exc})"))
        return []


def _track_for(path: str, report, stat_of: Callable[[], os.stat_result]) -> Track | None:
    """The track at ``path``; ``stat_of`` follows symbolic links (``DirEntry.stat`` or ``Path.stat``)."""
    try:
        st = stat_of()
    except OSError as exc:
        report(UnreadableFile(path, f"cannot stat ({exc.strerror or exc})"))
        return None
    if not stat.S_ISREG(st.st_mode):
        report(UnreadableFile(path, "not a regular file (FIFO, device or socket)"))
        return None
    return Track(path, st.st_size, st.st_mtime_ns)
