"""The project's own exceptions.

Every failure that concerns one file carries that file's path and a short reason, so the CLI can print
one line per bad file and the index can store the reason; the run then goes on with the other files.
"""
from __future__ import annotations

import os


class GenretagError(Exception):
    """Base class: anything genretag reports to the user as a one-line message."""


class FileError(GenretagError):
    """A problem with one audio file. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnreadableFile(FileError):
    """The file cannot be opened, parsed or decoded."""


class TagReadError(FileError):
    """The file's tags cannot be read."""


class TagWriteError(FileError):
    """The genre could not be written; the file is left exactly as it was."""


class UnsupportedFormat(TagWriteError):
    """The container has no tag format genretag can write (e.g. raw ADTS AAC)."""


class FileChanged(TagWriteError):
    """The file changed on disk between prediction and write; it was not written."""


class ModelError(GenretagError):
    """No model, a model that cannot be loaded, or a hub id that cannot be reached."""


class IndexUnusable(GenretagError):
    """The index file cannot be used: missing where it must exist, a folder, not SQLite, damaged,
    read-only or made by a newer genretag. ``str(err)`` is ``"<path>: <reason>"``; no audio file is
    touched once this is raised."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
