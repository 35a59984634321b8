"""Read and write genre tags without ever damaging an audio file.

Formats and fields (``GENRE_KEYS`` in :mod:`tagger.tagging.formats` is the table):

=====================================  ======================  ==================================
format (mutagen class)                 genre field             provenance field
=====================================  ======================  ==================================
MP3, WAVE, AIFF (ID3v2; WAV/AIFF in    ``TCON``                ``TXXX:GENRETAG``
their ID3 chunk)
FLAC, Ogg Vorbis/Opus/FLAC/Speex/      ``GENRE`` (repeated)    ``GENRETAG``
Theora (Vorbis comments)
MP4/M4A/ALAC                           ``©gen`` (list)         ``----:com.genretag:GENRETAG``
WMA/ASF                                ``WM/Genre`` (repeated) ``GENRETAG``
WavPack, Monkey's Audio, Musepack      ``Genre`` (NUL-joined)  ``GENRETAG``
=====================================  ======================  ==================================

Other formats mutagen parses (raw ADTS AAC, AC3, ...) read as "no genres"; writing them raises
``UnsupportedFormat``. The provenance value is written as given (e.g.
``model=builtin:musicnn-msd;fp=abc123;score=0.81;labels=Rock,Pop``); writing without provenance
removes a previous one, since it would describe genres that are no longer there.

ID3 versions
    A v2.3 tag stays v2.3 (several genres joined with ``separator``, default ``"; "``, never
    ``"/"``, which is part of names like "Drum/Bass"); v2.4 stays v2.4 (one TCON value per genre).
    A v2.2 tag (mutagen cannot write 2.2) becomes **v2.3**: the most widely read version, and the
    software that wrote v2.2 (old iTunes, Winamp) reads 2.3 but not always 2.4; unknown v2.2
    frames are lost then (mutagen limitation), and undo restores the values, not the 2.2 framing.
    A file with no ID3v2 tag gets **v2.4** (native lists, UTF-8). Existing tags are loaded
    untranslated and saved in their own version, so other frames (TYER, unknown frames...) are
    kept as they are. Reading normalizes numeric genres with mutagen's ``TCON.genres``:
    ``"(17)"`` -> Rock, ``"35"`` -> House, ``"(9)(138)Viking Metal"`` -> Metal, Black Metal,
    Viking Metal.

Conflicting sources (checked against ffprobe 5.1 in tests/test_tags.py)
    The rule: the primary tag is authoritative for reading; a secondary tag that already exists
    gets the same genres on every write (its genre field is added if missing), so no reader that
    prefers it sees a stale value; genretag never creates or deletes a secondary tag.

    * ID3v1 (MP3): never created or removed; its genre byte follows the new genres: the first
      genre that has an ID3v1 code (case-insensitive), else 255 = "no genre". Never 12 "Other",
      which would be a claim of its own for readers that prefer v1. The other 127 bytes of the v1
      tag are left byte-for-byte (mutagen's own v1 rewrite is undone). Reading prefers ID3v2
      TCON; the v1 genre is used only when no TCON exists (e.g. a v1-only file). A v1-only file
      gets a new v2.4 tag that also carries the v1 title/artist/album (ffmpeg and many players
      ignore v1 once any v2 tag exists).
    * APEv2 in an MP3 (foobar2000 reads it instead of ID3v2): an existing APE tag gets
      ``Genre`` = the new genres (NUL-separated list). The tag is rewritten in place, so
      Lyrics3v2/ID3v1 after it stay (mutagen's ``APEv2.save`` would truncate them). ID3v2 tags
      at the *end* of a file (Audacious) are not seen by mutagen and are left alone.
    * WAV ``LIST/INFO``: when a file has one, ffprobe shows only the INFO values and ignores
      the ``id3 `` chunk, so an existing INFO list gets ``IGNR`` = genres joined by
      ``separator`` (removed for no genres). AIFF has no genre chunk besides ID3.
    * FLAC with several VORBIS_COMMENT blocks: the first one is authoritative; GENRE/GENRETAG are
      removed from the others (ffprobe concatenates the values of all blocks, so mirroring would
      report duplicates and leaving them a stale genre). An ID3v2 tag in front of a FLAC stream
      (non-standard; ffprobe ignores it once Vorbis comments exist) gets its TCON set to the
      same genres (a v2.2 one becomes v2.3). ID3v1 after FLAC audio is ignored (no common
      reader uses it).
    * MP4 legacy ``gnre`` (numeric) atoms: mutagen reads them as ``©gen`` and cannot write
      ``gnre``, so after a write only ``©gen`` remains (mutagen behaviour, not separately tested:
      no tool here writes ``gnre``).
    * Ogg: the comment header of the first logical stream mutagen picks (for Theora video, the
      Theora stream).

Write modes
    ``replace`` (default) sets exactly ``genres``; ``merge`` appends the new ones to the existing
    (case-insensitive de-duplication, existing spelling and order first); ``fill`` only writes to a
    file without any genre. A write that would not change any field writes nothing
    (``TagChange.written`` is False, the file and its mtime are untouched).

Safety
    * Atomic: the file is copied to ``.<name>.genretag-tmp-<12 hex>`` in the same folder, mutagen
      edits the copy, the copy is read back and must hold exactly the planned fields, then
      (``verify=True``) its decoded audio must hash like the original's, then it is fsynced,
      ``os.replace``-d onto the original and the folder is fsynced. A kill at any moment leaves
      the original as it was or fully written; a killed writer leaves at most one temp file,
      which :func:`cleanup_stale_temps` (or ``TEMP_RE``) recognises; the journal records each
      write's temp name, so the next scan or undo removes the ones its writers left. Its name has no audio
      extension, so extension-based scanners skip it (they should skip ``TEMP_RE`` names anyway).
    * The new file keeps the owner and group: the (empty) temp file is given them before anything
      is copied, and where the process may not (another user's file, a group it is not in, as a
      setgid folder would give), the write is refused with one line naming the owner or group —
      never a silent change of ownership. Mode bits and xattrs are copied; ``keep_mtime`` also
      restores atime/mtime. A symlink is followed: its target is rewritten, the link stays.
    * Refused with ``TagWriteError``, file untouched, no temp left: no write permission bit on
      the file (checked on the mode bits even as root, who could write anyway), a folder where
      the temp cannot be created, a full disk, and **hard-linked files** (``st_nlink > 1``):
      ``os.replace`` would detach this name from the other links, and rewriting the shared inode
      in place is not crash-safe, so genretag refuses rather than silently splitting or risking
      a half-written file.
    * ``expected=(size, mtime_ns)`` from an earlier ``os.stat``: if the file differs,
      ``FileChanged`` and no write. The file is also re-checked just before the replace.
    * One writer at a time per file: the writer holds an exclusive ``flock`` on the file it is
      about to replace from before the copy until after the replace. A second genretag process
      (another scan or an undo, on the same index or another one) waits for it — up to
      ``WRITE_LOCK_SECONDS``, then ``TagWriteError`` — and then finds the file replaced, so it
      raises ``FileChanged`` instead of overwriting the first writer's result with tags planned
      from the old file. :func:`file_lock` holds the same lock across several steps (undo compares
      the file with its journal and restores it under it; pass it on as ``lock=``). The lock is
      advisory: programs that do not take it are caught by the stat checks above.
    * Audio without a decodable stream cannot be verified: ``verify=True`` then refuses.
    * Every failure is a one-line ``TagReadError`` (reading) or ``TagWriteError`` /
      ``UnsupportedFormat`` / ``FileChanged`` (writing and restoring) naming the file.

Undo
    Exact: ``write_genres(..., record_undo=True)`` (or with ``before_replace``, the journal's hook)
    returns an :class:`UndoRecord` in ``TagChange.undo``: the sha256 of the whole file before and
    after, its size and times before, and undo data (:mod:`.delta`, a few kB) that rebuilds the
    original from the written file; the data is checked by rebuilding the original's hash before
    the rename, and a write whose data would pass ``undo_limit`` is refused. :func:`restore_exact`
    gives the original back byte for byte with its modification and access times, only while the
    file holds exactly what the write left, with the same atomic rules.

    Field-level: :func:`snapshot_genres` returns ``{"format": <mutagen class>, "fields": {...}}``
    with the raw value of every field genretag may touch in *this* file (``None`` = absent); e.g.
    MP3: ``TCON`` text list, ``TXXX:GENRETAG``, ``ID3v1:genre`` (byte, None = no v1 tag), and
    ``APEv2:Genre`` / WAV ``INFO:IGNR`` / FLAC ``VC2:GENRE``, ``ID3v2:TCON`` where those tags
    exist. :func:`restore_genres` writes it back with the same safety rules; a field that was
    absent (None) is removed again. The rest of the file is as mutagen writes it (padding, frame
    order), so this is what undo uses only when asked to (``--force``) or for journals without
    undo data. After ``restore_genres(p, change.before)``, ``snapshot_genres(p) == change.before``.
"""
from __future__ import annotations

import copy
import fcntl
import os
import re
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import FileChanged, FileError, TagWriteError, UnreadableFile
from . import delta
from .formats import GENRE_KEYS, call, clean_genres, error_reason, open_handler, separator_problem

__all__ = ["GENRE_KEYS", "MODES", "TEMP_RE", "TagChange", "UndoRecord", "read_genres", "read_tags_summary",
           "snapshot_genres", "write_genres", "restore_genres", "restore_exact", "file_sha256", "file_lock",
           "temp_path", "remove_temp", "audio_digest", "cleanup_stale_temps", "is_temp_name"]

MODES = ("replace", "merge", "fill")
TEMP_MARK = ".genretag-tmp-"
TEMP_RE = re.compile(r"\A\..*\.genretag-tmp-[0-9a-f]{12}\Z", re.DOTALL)
_EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
WRITE_LOCK_SECONDS = 30.0
"""How long a tag write waits for another process that is writing the same file."""
UNDO_LIMIT = 16 << 20
"""The most undo data one write may record (bytes). A tag write needs far less (measured: at most
2.3 kB on the bench library, 1.2 kB on mutagen's corpus, 20 kB for an hour-long Ogg whose pages were
all renumbered); a write that would need more is refused rather than made without an exact undo."""


@dataclass(frozen=True)
class UndoRecord:
    """What it takes to give a file back exactly as it was before a write: the sha256 of the whole file
    before and after, its size and times before (and after), and the undo data (:mod:`.delta`) that
    rebuilds the original from the file as written. The journal stores it; :func:`restore_exact` uses it."""

    before_sha256: str
    after_sha256: str
    before_size: int
    after_size: int
    before_mtime_ns: int
    before_atime_ns: int
    after_mtime_ns: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class TagChange:
    path: str
    old_genres: list[str]
    new_genres: list[str]
    before: dict = field(repr=False)   # snapshot before (what restore_genres needs for undo)
    after: dict = field(repr=False)    # snapshot after
    written: bool                      # False: nothing changed, file untouched
    undo: UndoRecord | None = field(default=None, repr=False)  # with record_undo / before_replace


def is_temp_name(name: str) -> bool:
    """True for genretag's temp-file names (``.<name>.genretag-tmp-<12 hex>``)."""
    return bool(TEMP_RE.match(name))


def read_genres(path, *, separator: str = "; ") -> list[str]:
    """Normalized genre names, [] if none. Raises TagReadError."""
    h = open_handler(os.fspath(path))
    return h.genres(h.fields(), separator)


def read_tags_summary(path) -> dict:
    """``{"genres", "artist", "album", "title", "format"}`` for the index. Raises TagReadError."""
    h = open_handler(os.fspath(path))
    return {"genres": h.genres(h.fields(), "; "), **h.summary(), "format": h.format}


def snapshot_genres(path) -> dict:
    """JSON-serializable raw state of every genre-bearing field (see module docs)."""
    h = open_handler(os.fspath(path))
    return {"format": h.format, "fields": h.fields()}


def _check_args(genres, mode, separator, provenance) -> list[str]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if why := separator_problem(separator):
        raise ValueError(f"separator {separator!r} cannot join genres: {why}")
    if isinstance(genres, str) or not all(isinstance(g, str) for g in genres):
        raise ValueError("genres must be a list of strings")
    from ..reporting.safe import escape_controls, unsafe_characters

    for text in list(genres) + ([provenance] if provenance is not None else []):
        if not isinstance(text, str) or unsafe_characters(text):
            raise ValueError(f"genre {escape_controls(str(text))!r} holds a line break or control character "
                             "(a model label or a label map's name?), which no tag should carry; not written")
    return clean_genres(genres)


def write_genres(path, genres: list[str], *, mode: str = "replace", separator: str = "; ",
                 provenance: str | None = None, keep_mtime: bool = False, verify: bool = False,
                 expected: tuple[int, int] | None = None, temp: str | None = None,
                 before_replace: Callable[[UndoRecord], None] | None = None, record_undo: bool = False,
                 undo_limit: int = UNDO_LIMIT, lock: FileLock | None = None) -> TagChange:
    """Write ``genres`` (see module docs). Raises TagWriteError, UnsupportedFormat, FileChanged;
    on any error the file is left exactly as it was.

    ``record_undo`` (implied by ``before_replace``): also compute the :class:`UndoRecord` that gives the
    original back byte for byte (``TagChange.undo``); a write whose undo data would pass ``undo_limit``
    bytes is refused. ``before_replace(record)`` is called once the written copy is synced, under the
    file's lock, just before it replaces the file: the journal records it there, and an exception from it
    leaves the file as it was. ``temp``: the temp file's path (:func:`temp_path`), when the caller
    journals it ahead. ``lock``: a :func:`file_lock` the caller already holds on ``path``."""
    new = _check_args(genres, mode, separator, provenance)
    label = os.fspath(path)
    st0 = _stat_for_write(label, expected)
    h = open_handler(label, write=True)
    before = h.fields()
    old = h.genres(before, separator)
    snap_before = {"format": h.format, "fields": copy.deepcopy(before)}
    if mode == "fill" and old:
        return TagChange(label, old, old, snap_before, snap_before, False)
    target = clean_genres(old + new) if mode == "merge" else new
    desired = h.plan(before, target, separator, provenance)
    if desired == before:
        return TagChange(label, old, h.genres(desired, separator), snap_before, snap_before, False)
    after, record = _rewrite(label, st0, h.format, desired, keep_mtime=keep_mtime, verify=verify, temp=temp,
                             before_replace=before_replace, undo_limit=undo_limit if (
                                 record_undo or before_replace is not None) else None, lock=lock)
    return TagChange(label, old, h.genres(after, separator), snap_before,
                     {"format": h.format, "fields": after}, True, record)


def restore_genres(path, snapshot: dict, *, keep_mtime: bool = False, verify: bool = False,
                   only_if: list[dict] | None = None, lock: FileLock | None = None) -> bool:
    """Write a :func:`snapshot_genres` snapshot back exactly (same atomic rules as writing; a
    field that was absent is removed). True if the file was rewritten, False if it already held
    the snapshot. Refuses (TagWriteError, nothing written) if the snapshot is for another format
    or holds a value for a tag the file no longer has (e.g. its ID3v1 tag was removed since).

    This is the *field-level* undo: the genre fields come back, the rest of the file is as mutagen
    writes it (padding, frame order). :func:`restore_exact` gives back the original bytes.

    ``only_if``: snapshots of which the file must hold one now (compared on their own fields), else
    ``FileChanged`` and nothing written. Undo passes what genretag wrote, so that genres someone set
    since (another program, a later run) are never overwritten with older ones."""
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("fields"), dict) or "format" not in snapshot:
        raise ValueError("snapshot must be a dict from snapshot_genres()")
    label = os.fspath(path)
    st0 = _stat_for_write(label, None)
    h = open_handler(label, write=True)
    if h.format != snapshot["format"]:
        raise TagWriteError(label, f"snapshot is for a {snapshot['format']} file, this is {h.format}; not restored")
    current = h.fields()
    if only_if is not None and not any(_holds(h.format, current, s) for s in only_if):
        now = ", ".join(h.genres(current, "; ")) or "none"
        raise FileChanged(label, f"its genre tags changed since genretag wrote them (now: {now}); not restored")
    target = dict(current)
    missing = []
    for key, value in snapshot["fields"].items():
        if key in current:
            target[key] = value
        elif value is not None:
            missing.append(key)
    if missing:
        raise TagWriteError(label, f"cannot restore {', '.join(missing)}: the file no longer has that tag; nothing restored")
    target = h.restorable(current, target)
    if target == current:
        return False
    _rewrite(label, st0, h.format, target, keep_mtime=keep_mtime, verify=verify, lock=lock)
    return True


def restore_exact(path, record: UndoRecord, *, lock: FileLock | None = None) -> None:
    """Give back the original file of a write, byte for byte, with its modification and access times,
    from the :class:`UndoRecord` the write returned. The file must hold exactly what that write left
    (its sha256), else ``FileChanged`` and nothing is written; the rebuilt copy must hash like the
    original, else ``TagWriteError``. Same atomic rules as a write (lock, temp copy, owner kept, fsync,
    rename, folder fsync)."""
    label = os.fspath(path)
    st0 = _stat_for_write(label, None)
    if st0.st_size != record.after_size:
        raise FileChanged(label, f"changed since genretag wrote it (now {st0.st_size:,} bytes, genretag left "
                                 f"{record.after_size:,}); not restored")

    def fill(real: str, tmp: str) -> None:
        with open(tmp, "wb") as out:
            seen, made = call(label, delta.rebuild, real, record.data, out, write=True,
                              what="rebuilding the original: ")
        if seen != record.after_sha256:
            raise FileChanged(label, "changed since genretag wrote it (its sha256 differs); not restored")
        if made != record.before_sha256:
            raise TagWriteError(label, "the journal's undo data does not rebuild the original (sha256 "
                                       "differs); not restored")

    _replace(label, st0, fill, times=(record.before_atime_ns, record.before_mtime_ns), lock=lock)


def file_sha256(path) -> str:
    """sha256 (hex) of the whole file: what the journal compares before an undo touches it."""
    label = os.fspath(path)
    return call(label, delta.file_sha256, label, write=True, what="reading: ")


def _holds(fmt: str, fields: dict, snapshot: dict) -> bool:
    """Whether a file of format ``fmt`` with these ``fields`` holds ``snapshot``. A snapshot taken by an
    older genretag may lack fields that are recorded now; those are not compared."""
    return snapshot.get("format") == fmt and all(fields.get(k) == v for k, v in snapshot["fields"].items())


def audio_digest(path) -> str:
    """MD5 (hex) of the first audio stream decoded by FFmpeg to 64-bit float PCM, so it only
    changes if the audio does. Raises UnreadableFile if nothing decodes."""
    label = os.fspath(path)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", "file:" + os.path.abspath(label),
           "-map", "0:a:0", "-c:a", "pcm_f64le", "-f", "md5", "-"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    except OSError as exc:
        raise UnreadableFile(label, f"cannot run ffmpeg: {exc.strerror or exc}") from None
    out = res.stdout.strip()
    if res.returncode != 0 or not out.startswith("MD5="):
        last = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise UnreadableFile(label, f"ffmpeg cannot decode the audio: {last[:200]}")
    if out[4:] == _EMPTY_MD5:
        raise UnreadableFile(label, "no decodable audio")
    return out[4:]


def cleanup_stale_temps(folder, *, older_than: float = 0.0, recursive: bool = False) -> list[str]:
    """Delete genretag temp files (``TEMP_RE``) left in ``folder`` by a killed writer; returns
    their paths. A temp file belongs to a write in progress for a few seconds at most: pass
    ``older_than`` (seconds since last change) when other genretag runs may be writing there
    (removing a live one only makes that write fail cleanly; its original stays intact)."""
    removed, now = [], time.time()
    for dirpath, dirnames, filenames in os.walk(os.fspath(folder)):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not is_temp_name(name):
                continue
            try:
                st = os.lstat(full)
                if stat.S_ISREG(st.st_mode) and now - max(st.st_mtime, st.st_ctime) >= older_than:
                    os.unlink(full)
                    removed.append(full)
            except FileNotFoundError:
                pass
        if not recursive:
            break
    return sorted(removed)


# ---------------------------------------------------------------------------------------------
# The atomic rewrite

def _stat_for_write(label: str, expected) -> os.stat_result:
    try:
        st = os.stat(label)
    except OSError as exc:
        raise TagWriteError(label, "file not found" if isinstance(exc, FileNotFoundError)
                            else f"cannot stat: {exc.strerror}") from None
    if expected is not None and (st.st_size, st.st_mtime_ns) != tuple(expected):
        raise FileChanged(label, f"changed on disk since it was read (size, mtime_ns {st.st_size}, "
                                 f"{st.st_mtime_ns} != expected {expected[0]}, {expected[1]}); not written")
    if not stat.S_ISREG(st.st_mode):
        raise TagWriteError(label, "not a regular file")
    if not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or (
            os.geteuid() != 0 and not os.access(label, os.W_OK)):
        raise TagWriteError(label, "file is read-only (no write permission); not written")
    if st.st_nlink > 1:
        raise TagWriteError(label, f"file has {st.st_nlink} hard links; replacing it would split them "
                                   "and an in-place rewrite is not crash-safe; not written")
    return st


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether two stats are of the same, unchanged file. The change time is compared too: a program
    may rewrite a file in place at its old size and then set its old modification time back (taggers
    with a "keep file times" option do), and no program can set the change time."""
    return ((a.st_ino, a.st_dev, a.st_size, a.st_mtime_ns, a.st_ctime_ns)
            == (b.st_ino, b.st_dev, b.st_size, b.st_mtime_ns, b.st_ctime_ns))


def temp_path(path) -> str:
    """A fresh temp-file path for a write to ``path``: ``.<name>.genretag-tmp-<12 hex>`` beside the file
    (its symlink followed). The journal records it before the write, so a killed writer's copy can be
    recognised and removed later."""
    return _temp_name(os.path.realpath(os.fspath(path)))


def remove_temp(path: str) -> bool:
    """Delete a temp file a killed writer left (only a genretag temp name); True if there was one.
    Call it holding the file's :func:`file_lock`: no live writer has a temp file then."""
    if not is_temp_name(os.path.basename(path)):
        raise ValueError(f"not a genretag temp file name: {path!r}")
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _temp_name(real: str) -> str:
    folder, name = os.path.split(real)
    raw = os.fsencode(name)[:200]  # keep within NAME_MAX (255 bytes)
    return os.path.join(folder, "." + os.fsdecode(raw) + TEMP_MARK + secrets.token_hex(6))


def _apply_checked(tmp: str, label: str, fmt: str, desired: dict) -> dict:
    h = open_handler(tmp, label=label, write=True)
    if h.format != fmt:
        raise FileChanged(label, f"file type changed while writing ({fmt} -> {h.format}); not written")
    h.apply(desired)
    got = open_handler(tmp, label=label, write=True).fields()
    if got != desired:
        diff = ", ".join(f"{k}: wanted {desired.get(k)!r}, got {got.get(k)!r}"
                         for k in sorted(set(got) | set(desired)) if got.get(k) != desired.get(k))
        raise TagWriteError(label, f"tags read back differently after writing ({diff[:300]}); not written")
    return got


def _rewrite(label: str, st0: os.stat_result, fmt: str, desired: dict, *, keep_mtime: bool, verify: bool,
             temp: str | None = None, before_replace: Callable[[UndoRecord], None] | None = None,
             undo_limit: int | None = None, lock: FileLock | None = None) -> tuple[dict, UndoRecord | None]:
    """Make the file hold ``desired``; with ``undo_limit``, also record how to undo it exactly."""
    digest0 = _digest_for_verify(os.path.realpath(label), label) if verify else None
    done: dict = {}

    def fill(real: str, tmp: str) -> None:
        call(label, shutil.copyfile, real, tmp, write=True, what="copying to a temporary file: ")
        if not _same_file(os.stat(real), st0):
            raise FileChanged(label, "changed on disk while genretag was reading it; not written")
        before_sha = call(label, delta.file_sha256, tmp, write=True, what="reading: ") if undo_limit else None
        done["after"] = _apply_checked(tmp, label, fmt, desired)
        if verify:
            digest1 = _digest_for_verify(tmp, label)
            if digest1 != digest0:
                raise TagWriteError(label, f"decoded audio would change ({digest0[:12]} -> {digest1[:12]}); not written")
        if undo_limit:
            done["undo"] = _undo_data(label, real, tmp, before_sha, undo_limit)

    def record(written: os.stat_result) -> None:
        if undo_limit:
            data, before_sha, after_sha = done["undo"]
            done["record"] = UndoRecord(before_sha, after_sha, st0.st_size, written.st_size, st0.st_mtime_ns,
                                        st0.st_atime_ns, written.st_mtime_ns, data)
            if before_replace is not None:
                before_replace(done["record"])

    times = (st0.st_atime_ns, st0.st_mtime_ns) if keep_mtime else None
    _replace(label, st0, fill, times=times, temp=temp, before_replace=record, lock=lock)
    return done["after"], done.get("record")


def _undo_data(label: str, real: str, tmp: str, before_sha: str, limit: int) -> tuple[bytes, str, str]:
    """(undo data, sha256 before, sha256 after) for the write of ``real`` as ``tmp``; the data is checked
    by rebuilding the original from it (hashed, not written) before the write may go on."""
    try:
        data = delta.make(real, tmp, limit)
    except OSError as exc:
        raise TagWriteError(label, f"recording the undo data: {error_reason(exc)}") from None
    except delta.UndoTooLarge as exc:
        raise TagWriteError(label, f"the data to undo this write exactly would take {exc.size / 1e6:.1f} MB "
                                   f"(limit {exc.limit / 1e6:.1f} MB); not written") from None
    after_sha, rebuilt_sha = call(label, delta.rebuild, tmp, data, write=True, what="checking the undo data: ")
    if rebuilt_sha != before_sha:
        raise TagWriteError(label, "the undo data does not rebuild the original (sha256 differs); not written")
    return data, before_sha, after_sha


def _replace(label: str, st0: os.stat_result, fill: Callable[[str, str], None], *,
             times: tuple[int, int] | None, temp: str | None = None,
             before_replace: Callable[[os.stat_result], None] | None = None, lock: FileLock | None = None) -> None:
    """The atomic replace that writing and undoing share: under the file's lock, a temp file beside it,
    given the file's owner and group first (refused where the process may not), filled by
    ``fill(real, tmp)``, given its mode bits and xattrs and ``times`` (atime_ns, mtime_ns; None: now),
    fsynced, checked against ``st0`` again, then renamed over the file, and the folder fsynced.
    ``before_replace(stat of the copy)`` runs last before the rename."""
    real = os.path.realpath(label)
    folder = os.path.dirname(real)
    tmp = temp or _temp_name(real)
    if os.path.dirname(tmp) != folder or not is_temp_name(os.path.basename(tmp)):
        raise ValueError(f"temp file {tmp!r} is not a genretag temp name beside {real!r}")
    with _locked(real, label, lock):
        try:
            _create_temp(tmp, label, folder, st0)
            fill(real, tmp)
            call(label, _copy_metadata, real, tmp, st0, times, write=True, what="copying permissions: ")
            call(label, _fsync_path, tmp, write=True, what="syncing: ")
            if not _same_file(os.stat(real), st0):
                raise FileChanged(label, "changed on disk while genretag was writing it; not written")
            if before_replace is not None:  # a rename keeps the size and the times
                before_replace(os.stat(tmp))
            call(label, os.replace, tmp, real, write=True, what="replacing the file: ")
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    try:
        _fsync_path(folder, directory=True)
    except OSError:
        pass  # the rename itself succeeded; some file systems refuse to fsync directories


def _create_temp(tmp: str, label: str, folder: str, st0: os.stat_result) -> None:
    """Create the (empty) temp file and give it the file's owner and group, before anything is copied:
    a replace must never change who owns a file. Where the process may not (another user's file, a
    group it is not in, as set by a setgid folder), the write is refused."""
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise TagWriteError(label, f"cannot create a temporary file in {folder}: {error_reason(exc)}") from None
    made = os.stat(tmp)
    if (made.st_uid, made.st_gid) == (st0.st_uid, st0.st_gid):
        return
    try:
        os.chown(tmp, st0.st_uid, st0.st_gid)
    except OSError:
        raise TagWriteError(label, _ownership_reason(st0, made)) from None


def _ownership_reason(st0: os.stat_result, made: os.stat_result) -> str:
    if made.st_uid != st0.st_uid:
        return (f"owned by {_user(st0.st_uid)}, and genretag (running as {_user(os.geteuid())}) may not give "
                "its rewritten copy that owner: replacing the file would change its owner; not written")
    return (f"its group is {_group(st0.st_gid)}, and genretag may not give its rewritten copy that group "
            f"(it would get {_group(made.st_gid)}): replacing the file would change its group; not written")


def _user(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    import grp

    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


@dataclass(frozen=True)
class FileLock:
    """genretag's lock on one file, held (see :func:`file_lock`)."""

    real: str


@contextmanager
def file_lock(path):
    """Hold genretag's exclusive per-file lock on ``path`` (see "One writer at a time") across several
    steps: undo holds it while it compares the file with the journal and restores it, so that no scan
    replaces the file in between. Waits up to ``WRITE_LOCK_SECONDS``; a file replaced while waiting is
    locked again under its name. Pass the lock as ``lock=`` to the functions here that write."""
    label = os.fspath(path)
    real = os.path.realpath(label)
    with _write_lock(real, label, follow=True):
        yield FileLock(real)


@contextmanager
def _locked(real: str, label: str, lock: FileLock | None):
    if lock is None:
        with _write_lock(real, label):
            yield
    elif lock.real != real:
        raise ValueError(f"the lock held is for {lock.real!r}, not {real!r}")
    else:
        yield


@contextmanager
def _write_lock(real: str, label: str, follow: bool = False):
    """Hold an exclusive ``flock`` on the file to be replaced (see "One writer at a time"). With
    ``follow``, a file replaced while this waited is locked again at its name (a writer instead finds
    it changed, by its stat)."""
    deadline = time.monotonic() + WRITE_LOCK_SECONDS
    while True:
        try:
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise TagWriteError(label, f"cannot open for writing: {error_reason(exc)}") from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TagWriteError(label, f"another process has been writing this file for "
                                                   f"{WRITE_LOCK_SECONDS:g} s (locked); not written") from None
                    time.sleep(0.05)
            if follow and not _same_inode(fd, real):
                continue
            yield
            return
        finally:
            os.close(fd)  # closing the last descriptor releases the lock


def _same_inode(fd: int, real: str) -> bool:
    held = os.fstat(fd)
    try:
        now = os.stat(real)
    except OSError:
        return True  # gone: the caller's own checks say so
    return (held.st_ino, held.st_dev) == (now.st_ino, now.st_dev)


def _digest_for_verify(path: str, label: str) -> str:
    try:
        return audio_digest(path)
    except FileError as exc:
        raise TagWriteError(label, f"cannot verify the audio ({exc.reason}); not written") from None


def _copy_metadata(real: str, tmp: str, st0: os.stat_result, times: tuple[int, int] | None) -> None:
    """Mode bits, xattrs (ACLs) and flags of the file on its replacement (the owner was given at
    creation), and ``times`` (atime_ns, mtime_ns) or now."""
    try:
        shutil.copystat(real, tmp)
    except OSError:
        pass
    os.chmod(tmp, stat.S_IMODE(st0.st_mode))
    if times is not None:
        os.utime(tmp, ns=times)
    else:
        os.utime(tmp)


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
