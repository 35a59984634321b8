"""Format-specific genre access for :mod:`tagger.tagging.tags` (policies are documented there).

One *handler* per tag system (ID3, Vorbis comments, MP4, ASF, APEv2) turns a file into a flat dict
of **fields**: ``{field name: raw value or None}``, where None means "field absent". Field values
are exactly what the file holds (lists of strings, the ID3v1 genre byte as int, a RIFF INFO value as
its bytes read as Latin-1), so a dict of fields is both the undo snapshot and the write plan:

- ``fields()``      the current raw state (only fields this file's structure can hold);
- ``genres(f)``     normalized genre names from a field dict;
- ``plan(f, ...)``  the field dict after writing some genres;
- ``apply(f)``      make the file (always a private temp copy) hold exactly ``f``.

Every mutagen call, and every byte-level patch, goes through :func:`call`, which turns any failure
into the project's own ``TagReadError`` / ``TagWriteError`` naming the user's file.
"""
from __future__ import annotations

import errno
import io
import os
import struct
from typing import Any, Callable

from mutagen.aac import AAC
from mutagen.ac3 import AC3
from mutagen.aiff import AIFF
from mutagen.aiff import delete as aiff_delete
from mutagen.apev2 import APENoHeaderError, APEv2, APEv2File, _APEv2Data
from mutagen.asf import ASF
from mutagen.asf._objects import ExtendedContentDescriptionObject, HeaderExtensionObject  # no public name
from mutagen.dsdiff import DSDIFF
from mutagen.dsf import DSF
from mutagen.flac import FLAC
from mutagen.id3 import ID3, TALB, TCON, TIT2, TPE1, TXXX, ID3FileType
from mutagen.id3 import delete as id3_delete
from mutagen.id3._id3v1 import find_id3v1
from mutagen.monkeysaudio import MonkeysAudio
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4, AtomDataType, MP4FreeForm
from mutagen.musepack import Musepack
from mutagen.oggflac import OggFLAC
from mutagen.oggopus import OggOpus
from mutagen.oggspeex import OggSpeex
from mutagen.oggtheora import OggTheora
from mutagen.oggvorbis import OggVorbis
from mutagen.optimfrog import OptimFROG
from mutagen.smf import SMF
from mutagen.tak import TAK
from mutagen.trueaudio import TrueAudio
from mutagen.wave import WAVE
from mutagen.wave import delete as wave_delete
from mutagen.wavpack import WavPack

from ..errors import FileError, TagReadError, TagWriteError, UnsupportedFormat

PROVENANCE = "GENRETAG"

_ID3 = {"tags": "id3", "genre": "TCON", "provenance": "TXXX:" + PROVENANCE}
_VORBIS = {"tags": "vorbis", "genre": "GENRE", "provenance": PROVENANCE}
_APE = {"tags": "apev2", "genre": "Genre", "provenance": PROVENANCE}

#: The per-format key table: mutagen class name -> tag system, genre key, provenance key.
#: Formats mutagen can parse but that are missing here (AAC/ADTS, AC3, SMF, DSF, ...) are read as
#: "no genres" and refused for writing with UnsupportedFormat.
GENRE_KEYS: dict[str, dict[str, str]] = {
    "MP3": _ID3, "WAVE": _ID3, "AIFF": _ID3,
    "FLAC": _VORBIS, "OggVorbis": _VORBIS, "OggOpus": _VORBIS, "OggFLAC": _VORBIS,
    "OggSpeex": _VORBIS, "OggTheora": _VORBIS,
    "MP4": {"tags": "mp4", "genre": "\xa9gen", "provenance": "----:com.genretag:" + PROVENANCE},
    "ASF": {"tags": "asf", "genre": "WM/Genre", "provenance": PROVENANCE},
    "WavPack": _APE, "MonkeysAudio": _APE, "Musepack": _APE,
}

# Same candidates, same order as mutagen.File (non-easy), so detection matches mutagen's.
_CANDIDATES = [MP3, TrueAudio, OggTheora, OggSpeex, OggVorbis, OggFLAC, FLAC, AIFF, APEv2File, MP4,
               ID3FileType, WavPack, Musepack, MonkeysAudio, OptimFROG, ASF, OggOpus, AAC, AC3, SMF,
               TAK, DSF, DSDIFF, WAVE]

# ID3v1 genre names (mutagen's list, incl. Winamp extensions); index = genre byte. 255 = no genre.
V1_GENRES: list[str] = list(TCON.GENRES)
V1_NONE = 255
_V1_CODES = {name.lower(): i for i, name in enumerate(V1_GENRES)}


def error_reason(exc: BaseException) -> str:
    """One line describing ``exc``; OS errors (possibly wrapped by mutagen) by their errno."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        inner = e.args[0] if getattr(e, "args", None) and isinstance(e.args[0], BaseException) else None
        if isinstance(e, OSError) and e.errno is not None:
            text = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                    errno.EROFS: "read-only file system", errno.ENOENT: "file not found"}.get(e.errno)
            if text:
                return text
        e = inner or e.__cause__
    msg = " ".join(str(exc).split()) or "no details"
    if len(msg) > 200:
        msg = msg[:197] + "..."
    return f"{type(exc).__name__}: {msg}"


def call(label: str, fn: Callable, *args, write: bool = False, what: str = "", **kwargs):
    """THE gateway: every mutagen call (and byte-level tag patch) in genretag runs through here.

    Returns ``fn(*args, **kwargs)``; any exception other than the project's own becomes a
    ``TagWriteError`` (``write=True``) or ``TagReadError`` carrying ``label`` (the user's path, even
    when ``fn`` works on a temp copy) and a one-line reason, prefixed by ``what`` if given.
    """
    try:
        return fn(*args, **kwargs)
    except FileError:
        raise
    except MemoryError:
        raise (TagWriteError if write else TagReadError)(label, f"{what}tag data too large") from None
    except Exception as exc:  # mutagen raises many types (MutagenError, struct.error, ValueError...)
        raise (TagWriteError if write else TagReadError)(label, what + error_reason(exc)) from exc


def clean_genres(values) -> list[str]:
    """Strip, drop empty, de-duplicate case-insensitively (first spelling wins), keep order."""
    out, seen = [], set()
    for v in values:
        v = str(v).strip()
        if v and v.lower() not in seen:
            seen.add(v.lower())
            out.append(v)
    return out


def separator_problem(separator) -> str | None:
    """Why ``separator`` cannot join genres in one text field, or None. "/" is part of genre names
    ("Drum/Bass"), and a separator without visible text would not survive the readers that strip."""
    if not isinstance(separator, str) or not separator.strip():
        return "it must hold visible text"
    if "/" in separator:
        return "'/' is part of genre names such as Drum/Bass"
    if any(c in separator for c in "\0\r\n"):
        return "it must be one line without NUL"
    return None


def split_joined(values: list[str], separator: str) -> list[str]:
    """Genre names joined in one value: split on ``separator`` exactly, so that a separator such as
    " - " or " & " keeps "Hip-Hop" and "R&B" whole. With a ";" separator a bare ";" splits too, as
    other taggers write "Rock;Pop"."""
    parts = [part for v in values for part in v.split(separator)]
    if separator.strip() == ";":
        parts = [p for part in parts for p in part.split(";")]
    return parts


def join_genres(label: str, genres: list[str], separator: str) -> str:
    """``genres`` joined by ``separator`` for a single-value field, refused (TagWriteError) when a name
    holds the separator: it would read back as two genres."""
    cut = [g for g in genres if split_joined([g], separator) != [g]]
    if cut:
        raise TagWriteError(label, f"genre {cut[0]!r} contains the separator {separator!r}, so it would "
                                   "read back as several genres; choose another --separator; not written")
    return separator.join(genres)


def v1_code(genres: list[str]) -> int:
    """ID3v1 byte for ``genres``: the first one that has a v1 code, else 255 ("no genre")."""
    for g in genres:
        if g.lower() in _V1_CODES:
            return _V1_CODES[g.lower()]
    return V1_NONE


# ---------------------------------------------------------------------------------------------
# Byte-level helpers (always used on genretag's own temp copy when writing)

def splice(f, offset: int, old_len: int, new: bytes) -> None:
    """Replace ``old_len`` bytes at ``offset`` with ``new``, moving the rest of the file."""
    f.seek(0, 2)
    size = f.tell()
    tail, delta, chunk = offset + old_len, len(new) - old_len, 1 << 20
    if delta > 0:
        pos = size
        while pos > tail:
            n = min(chunk, pos - tail)
            pos -= n
            f.seek(pos)
            buf = f.read(n)
            f.seek(pos + delta)
            f.write(buf)
    elif delta < 0:
        pos = tail
        while pos < size:
            f.seek(pos)
            buf = f.read(min(chunk, size - pos))
            f.seek(pos + delta)
            f.write(buf)
            pos += len(buf)
        f.truncate(size + delta)
    f.seek(offset)
    f.write(new)


def id3v1_genre(path: str) -> int | None:
    """Genre byte of an ID3v1 tag in the last 128 bytes, None if there is no such tag."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() < 128:
            return None
        f.seek(-128, 2)
        data = f.read(128)
    return data[127] if data[:3] == b"TAG" else None


def set_id3v1_genre(path: str, code: int) -> None:
    with open(path, "r+b") as f:
        f.seek(-128, 2)
        if f.read(3) == b"TAG":
            f.seek(-1, 2)
            f.write(bytes([code]))


def _id3v2_len(f) -> int:
    f.seek(0)
    head = f.read(10)
    if len(head) < 10 or head[:3] != b"ID3":
        return 0
    size = 0
    for b in head[6:10]:
        size = (size << 7) | (b & 0x7F)
    return 10 + size + (10 if head[5] & 0x10 else 0)


def save_id3_keep_tail(tags_owner, path: str, version: int) -> None:
    """``tags_owner.save(...)`` of an ID3v2 tag at the start of ``path`` that leaves the end of
    the file byte-identical. mutagen's ID3v1 handling looks for "TAG" anywhere in the last 133
    bytes and rewrites or truncates it there (``v1=1`` regenerates every v1 field and fails on odd
    frames; ``v1=0`` truncates): whatever it did to the end is undone here, and genretag patches
    only the v1 genre byte itself."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size0, v2_0 = f.tell(), _id3v2_len(f)
        n = min(256, size0 - v2_0)
        f.seek(size0 - n)
        tail = f.read(n)
    tags_owner.save(path, v1=0, v2_version=version, v23_sep=None)  # v1=0: no MakeID3v1()
    with open(path, "r+b") as f:
        end = size0 - v2_0 + _id3v2_len(f)
        f.seek(end - n)
        f.write(tail)
        f.truncate(end)


def _ape_data(f):
    data = _APEv2Data(f)
    return data if data.metadata is not None else None


def ape_tag(path: str) -> APEv2 | None:
    with open(path, "rb") as f:
        if _ape_data(f) is None:
            return None
    try:
        return APEv2(path)
    except APENoHeaderError:  # mutagen refuses a tag with no items; it is still a tag
        return APEv2()


def ape_values(tag: APEv2 | None, key: str) -> list[str] | None:
    if tag is None or key not in tag:
        return None
    value = tag[key]
    return list(value) if hasattr(value, "__iter__") and not isinstance(value, bytes) else [str(value)]


def ape_update(path: str, changes: dict[str, list[str] | None], keep_empty: bool) -> None:
    """Set/remove APEv2 items in place of the existing tag (or insert a new tag before a trailing
    ID3v1); a tag left without items is removed unless ``keep_empty``. Unlike ``APEv2.save``,
    anything after the tag (Lyrics3v2, ID3v1) stays where it is."""
    with open(path, "r+b") as f:
        data = _ape_data(f)
        try:
            tag = APEv2(f) if data is not None else APEv2()
        except APENoHeaderError:
            tag = APEv2()
        for key, value in changes.items():
            if value is None:
                if key in tag:
                    del tag[key]
            else:
                tag[key] = list(value)
        if data is None and not tag.keys():
            return
        rendered = b""
        if tag.keys() or keep_empty:
            buf = io.BytesIO(b"\0" * 160)  # mutagen renders the tag at the end of a dummy buffer
            tag.save(buf)
            rendered = buf.getvalue()[160:]
        if data is not None:
            splice(f, data.start, data.end - data.start, rendered)
        else:
            f.seek(0, 2)
            at = f.tell()
            if at >= 128:
                f.seek(-128, 2)
                if f.read(3) == b"TAG":
                    at -= 128
            splice(f, at, 0, rendered)


def riff_info(f) -> tuple[int, int, list[list[bytes]]] | None:
    """(offset, length incl. pad, [[id, value], ...]) of the first RIFF LIST/INFO chunk, or None."""
    f.seek(0, 2)
    size = f.tell()
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    end = min(size, 8 + struct.unpack("<I", head[4:8])[0])
    pos = 12
    while pos + 8 <= end:
        f.seek(pos)
        cid, csize = struct.unpack("<4sI", f.read(8))
        if cid == b"LIST" and csize >= 4 and f.read(4) == b"INFO":
            body, subs, p = f.read(csize - 4), [], 0
            while p + 8 <= len(body):
                sid, ssize = struct.unpack("<4sI", body[p:p + 8])
                subs.append([sid, body[p + 8:p + 8 + ssize]])
                p += 8 + ssize + (ssize & 1)
            return pos, 8 + csize + (csize & 1), subs
        pos += 8 + csize + (csize & 1)
    return None


def riff_overrun(path: str) -> str | None:
    """Why the RIFF chunks of a WAV file run past its end (a truncated download or recording), or
    None. A chunk appended to such a file lands inside the range its last chunk claims."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, csize = struct.unpack("<4sI", f.read(8))
            if pos + 8 + csize > size:
                name = cid.decode("latin-1").strip() or "unnamed"
                return (f"truncated WAV: its {name} chunk claims {csize:,} bytes, the file holds "
                        f"{size - pos - 8:,} of them")
            pos += 8 + csize + (csize & 1)
    return None


def riff_info_value(path: str, fourcc: bytes) -> tuple[bool, str | None]:
    """(has a LIST/INFO chunk, raw value of ``fourcc`` as Latin-1 text without trailing NULs)."""
    with open(path, "rb") as f:
        info = riff_info(f)
    if info is None:
        return False, None
    for sid, value in info[2]:
        if sid == fourcc:
            return True, value.rstrip(b"\0").decode("latin-1")
    return True, None


def riff_set_info(path: str, fourcc: bytes, raw: str | None) -> None:
    with open(path, "r+b") as f:
        info = riff_info(f)
        if info is None:
            return
        offset, old_len, subs = info
        new_subs, done = [], False
        for sid, value in subs:
            if sid != fourcc:
                new_subs.append([sid, value])
            elif raw is not None and not done:
                new_subs.append([sid, raw.encode("latin-1") + b"\0"])
                done = True
        if raw is not None and not done:
            new_subs.append([fourcc, raw.encode("latin-1") + b"\0"])
        body = b"INFO" + b"".join(sid + struct.pack("<I", len(v)) + v + b"\0" * (len(v) & 1)
                                  for sid, v in new_subs)
        chunk = b"LIST" + struct.pack("<I", len(body)) + body
        splice(f, offset, old_len, chunk)
        f.seek(4)
        riff_size = struct.unpack("<I", f.read(4))[0]
        f.seek(4)
        f.write(struct.pack("<I", riff_size + len(chunk) - old_len))


# ---------------------------------------------------------------------------------------------
# Handlers

class Handler:
    """Base: a format with no writable genre field (reads as "no genres")."""

    writable = False

    def __init__(self, kind: type, path: str, label: str, write: bool):
        self.kind, self.path, self.label, self.write = kind, path, label, write
        self.format = kind.__name__
        self.mf = self._load()

    def _load(self):
        return self._call(self.kind, self.path)

    def _call(self, fn, *args, **kwargs):
        return call(self.label, fn, *args, write=self.write, **kwargs)

    # Public interface: each runs the format's implementation through the gateway.
    def fields(self) -> dict[str, Any]:
        """Raw state of every genre-bearing field this file can hold (None = absent)."""
        return self._call(self._fields)

    def genres(self, fields: dict[str, Any], separator: str) -> list[str]:
        """Normalized genre names held by ``fields``."""
        return self._call(self._genres, fields, separator)

    def plan(self, fields: dict[str, Any], genres: list[str], separator: str, provenance: str | None) -> dict:
        """``fields`` after writing ``genres`` (and provenance) the genretag way."""
        return self._call(self._plan, fields, genres, separator, provenance)

    def apply(self, fields: dict[str, Any]) -> None:
        """Make the file hold exactly ``fields`` (only ever called on a temp copy)."""
        self._call(self._apply, fields)

    def summary(self) -> dict[str, str | None]:
        return self._call(self._summary)

    def restorable(self, current: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
        """``target`` (a snapshot to restore over ``current``) as this file can hold it."""
        return self._call(self._restorable, current, target)

    def _restorable(self, current, target) -> dict[str, Any]:
        return target

    def _fields(self) -> dict[str, Any]:
        return {}

    def _genres(self, fields: dict[str, Any], separator: str) -> list[str]:
        return []

    def _plan(self, fields, genres, separator, provenance) -> dict[str, Any]:
        raise UnsupportedFormat(self.label, f"{self.format} files have no tag format genretag can write")

    def _apply(self, fields: dict[str, Any]) -> None:
        self._plan(fields, [], "; ", None)

    def _summary(self) -> dict[str, str | None]:
        return {"artist": None, "album": None, "title": None}

    def _text(self, tags, key) -> str | None:
        try:
            values = tags[key] if tags is not None and key in tags else None
        except (KeyError, ValueError):
            values = None
        if not values:
            return None
        values = values if isinstance(values, list) else [values]
        return "; ".join(dict.fromkeys(str(v) for v in values)) or None  # ASF may store a value twice


class Id3Handler(Handler):
    """MP3, WAVE, AIFF: ID3v2 (+ ID3v1 and APEv2 in MP3, RIFF INFO in WAVE)."""

    writable = True

    def _load(self):
        # Untranslated: raw frames exactly as stored; no ID3v1 values merged into the v2 tag.
        mf = self._call(self.kind, self.path, translate=False, load_v1=False)
        self.v2 = tuple(mf.tags.version[:2]) if mf.tags is not None else None
        self.save_version = 4 if self.v2 in (None, (2, 4)) else 3
        self.is_mp3 = self.kind is MP3
        return mf

    def _frames(self, cls, desc=None) -> list[str] | None:
        tags = self.mf.tags
        frames = [] if tags is None else [f for f in tags.values()
                                          if isinstance(f, cls) and (desc is None or f.desc == desc)]
        return [str(t) for f in frames for t in f.text] if frames else None

    def _fields(self):
        # "ID3v2": whether the file has an ID3v2 tag at all, so that undoing the first genre of an
        # untagged or ID3v1-only file removes the tag that writing it created.
        out = {"ID3v2": True if self.mf.tags is not None else None,
               "TCON": self._frames(TCON), "TXXX:" + PROVENANCE: self._frames(TXXX, PROVENANCE)}
        if self.is_mp3:
            out["ID3v1:genre"] = self._call(id3v1_genre, self.path)
            ape = self._call(ape_tag, self.path)
            if ape is not None:
                out["APEv2:Genre"] = ape_values(ape, "Genre")
        if self.kind is WAVE:
            has_info, ignr = self._call(riff_info_value, self.path, b"IGNR")
            if has_info:
                out["INFO:IGNR"] = ignr
        return out

    def _genres(self, fields, separator):
        if fields.get("TCON"):
            g = TCON(encoding=3, text=fields["TCON"]).genres
            return clean_genres(split_joined(g, separator) if self.save_version == 3 else g)
        v1 = fields.get("ID3v1:genre")
        if v1 is not None and v1 < len(V1_GENRES):
            return [V1_GENRES[v1]]
        if fields.get("APEv2:Genre"):
            return clean_genres(fields["APEv2:Genre"])
        if fields.get("INFO:IGNR"):
            return clean_genres(split_joined([_latin1_to_text(fields["INFO:IGNR"])], separator))
        return []

    def _plan(self, fields, genres, separator, provenance):
        if self.kind is WAVE and (why := self._call(riff_overrun, self.path)):
            raise TagWriteError(self.label, f"{why}; a tag chunk after it would be unreadable, not written")
        new = dict(fields)
        new["ID3v2"] = True if genres or provenance else fields.get("ID3v2")
        new["TCON"] = ((list(genres) if self.save_version == 4 else [join_genres(self.label, genres, separator)])
                       if genres else None)
        new["TXXX:" + PROVENANCE] = [provenance] if provenance else None
        if fields.get("ID3v1:genre") is not None:
            new["ID3v1:genre"] = v1_code(genres)
        if "APEv2:Genre" in fields:
            new["APEv2:Genre"] = list(genres) or None
        if "INFO:IGNR" in fields:
            new["INFO:IGNR"] = (join_genres(self.label, genres, separator).encode("utf-8").decode("latin-1")
                                if genres else None)
        return new

    def _apply(self, target):
        cur = self.fields()
        keys = ("TCON", "TXXX:" + PROVENANCE)
        if cur.get("ID3v2") and "ID3v2" in target and target["ID3v2"] is None:
            self._delete_id3v2()
        elif any(target.get(k) != cur.get(k) for k in keys):
            if self.v2 is None:  # new tag: v2.4; an MP3's ID3v1 values are carried into it
                mf = self._call(self.kind, self.path, load_v1=self.is_mp3)
            elif self.v2 == (2, 2):  # mutagen cannot write v2.2: upgrade to v2.3
                mf = self._call(self.kind, self.path, translate=True, v2_version=3, load_v1=False)
            else:
                mf = self._call(self.kind, self.path, translate=False, load_v1=False)
            if mf.tags is None:
                self._call(mf.add_tags)
            tags = mf.tags
            tags.delall("TCON")
            tags.delall("TXXX:" + PROVENANCE)
            if target.get("TCON"):
                tags.add(TCON(encoding=3, text=list(target["TCON"])))
            if target.get("TXXX:" + PROVENANCE):
                tags.add(TXXX(encoding=3, desc=PROVENANCE, text=list(target["TXXX:" + PROVENANCE])))
            if self.is_mp3:
                self._call(save_id3_keep_tail, mf, self.path, self.save_version)
            else:
                self._call(mf.save, v2_version=self.save_version, v23_sep=None)
        if "APEv2:Genre" in cur and target.get("APEv2:Genre") != cur["APEv2:Genre"]:
            self._call(ape_update, self.path, {"Genre": target.get("APEv2:Genre")}, keep_empty=True)
        if "INFO:IGNR" in cur and target.get("INFO:IGNR") != cur["INFO:IGNR"]:
            self._call(riff_set_info, self.path, b"IGNR", target.get("INFO:IGNR"))
        if cur.get("ID3v1:genre") is not None and target.get("ID3v1:genre") not in (None, cur["ID3v1:genre"]):
            self._call(set_id3v1_genre, self.path, int(target["ID3v1:genre"]))

    def _delete_id3v2(self) -> None:
        """Remove the ID3v2 tag (an MP3's ID3v1 and APEv2 tags stay)."""
        if self.is_mp3:
            id3_delete(self.path, delete_v1=False, delete_v2=True)
        else:
            (wave_delete if self.kind is WAVE else aiff_delete)(self.path)

    def _restorable(self, current, target):
        """A tag genretag created is removed again only while it holds nothing else than what writing
        created: the genre, the provenance and the values carried over from an ID3v1 tag. Frames added
        since (cover art, lyrics) keep it, emptied of genres."""
        if not (current.get("ID3v2") and "ID3v2" in target and target["ID3v2"] is None):
            return target
        created = {f.HashKey: f.pprint() for f in self._v1_frames().values()}
        others = [f for f in self.mf.tags.values() if f.HashKey not in ("TCON", "TXXX:" + PROVENANCE)
                  and created.get(f.HashKey) != f.pprint()]
        if others:
            return {**target, "ID3v2": True, "TCON": None, "TXXX:" + PROVENANCE: None}
        return target

    def _v1_frames(self) -> dict:
        """The ID3v2 frames mutagen makes from the file's ID3v1 tag ({} without one)."""
        if not self.is_mp3:
            return {}
        with open(self.path, "rb") as f:
            frames, _ = find_id3v1(f, v2_version=4)
        return frames or {}

    def _summary(self):
        mf = self.mf
        if mf.tags is None and self.is_mp3 and id3v1_genre(self.path) is not None:
            mf = self._call(self.kind, self.path)  # ID3v1 only: let mutagen map its fields
        out = {}
        for name, cls in (("artist", TPE1), ("album", TALB), ("title", TIT2)):
            frames = [] if mf.tags is None else [f for f in mf.tags.values() if isinstance(f, cls)]
            out[name] = "; ".join(str(t) for f in frames for t in f.text) or None
        return out


def _latin1_to_text(raw: str) -> str:
    data = raw.encode("latin-1")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return raw


class VorbisHandler(Handler):
    """FLAC and Ogg (Vorbis, Opus, FLAC, Speex, Theora): Vorbis comments.

    FLAC extras: further VORBIS_COMMENT blocks ("VC2:GENRE", ...; emptied of genre fields on
    write) and an ID3v2 tag in front of the stream ("ID3v2:TCON"; kept in sync if it has one)."""

    writable = True

    def _extra_blocks(self, mf):
        if not isinstance(mf, FLAC) or mf.tags is None:
            return []
        return [b for b in mf.metadata_blocks if b.code == 4 and b is not mf.tags]

    @staticmethod
    def _get(vc, key):
        values = vc.get(key) if vc is not None else None
        return list(values) if values else None

    def _prefix_id3(self):
        if not isinstance(self.mf, FLAC):
            return None
        with open(self.path, "rb") as f:
            if f.read(3) != b"ID3":
                return None
        return self._call(ID3, self.path, translate=False, load_v1=False)

    def _fields(self):
        tags = self.mf.tags
        out = {"GENRE": self._get(tags, "GENRE"), PROVENANCE: self._get(tags, PROVENANCE)}
        for i, block in enumerate(self._extra_blocks(self.mf), start=2):
            out[f"VC{i}:GENRE"] = self._get(block, "GENRE")
            out[f"VC{i}:{PROVENANCE}"] = self._get(block, PROVENANCE)
        id3 = self._prefix_id3()
        if id3 is not None:
            frames = [f for f in id3.values() if isinstance(f, TCON)]
            out["ID3v2:TCON"] = [str(t) for f in frames for t in f.text] or None
        return out

    def _genres(self, fields, separator):
        if fields.get("GENRE"):
            return clean_genres(fields["GENRE"])
        if fields.get("ID3v2:TCON"):
            return clean_genres(TCON(encoding=3, text=fields["ID3v2:TCON"]).genres)
        return []

    def _plan(self, fields, genres, separator, provenance):
        # Further VORBIS_COMMENT blocks lose their genre fields: FFmpeg concatenates all blocks,
        # so mirroring would duplicate values and keeping them would leave stale ones.
        new = {key: (None if key.startswith("VC") else value) for key, value in fields.items()}
        new["GENRE"] = list(genres) or None
        new[PROVENANCE] = [provenance] if provenance else None
        if "ID3v2:TCON" in fields:
            v4 = self._prefix_id3().version[:2] == (2, 4)
            new["ID3v2:TCON"] = (list(genres) if v4 else [join_genres(self.label, genres, separator)]) if genres else None
        return new

    @staticmethod
    def _set(vc, key, values):
        if values:
            vc[key] = list(values)
        elif key in vc:
            del vc[key]

    def _apply(self, target):
        cur = self.fields()
        if any(target.get(k) != cur.get(k) for k in cur if k != "ID3v2:TCON"):
            mf = self._call(self.kind, self.path)
            if mf.tags is None:
                self._call(mf.add_tags)
            self._set(mf.tags, "GENRE", target.get("GENRE"))
            self._set(mf.tags, PROVENANCE, target.get(PROVENANCE))
            for i, block in enumerate(self._extra_blocks(mf), start=2):
                self._set(block, "GENRE", target.get(f"VC{i}:GENRE"))
                self._set(block, PROVENANCE, target.get(f"VC{i}:{PROVENANCE}"))
            self._call(mf.save)
        if "ID3v2:TCON" in cur and target.get("ID3v2:TCON") != cur["ID3v2:TCON"]:
            old = self._prefix_id3()
            version = 4 if old.version[:2] == (2, 4) else 3
            id3 = self._call(ID3, self.path, translate=old.version[:2] == (2, 2), v2_version=3, load_v1=False)
            id3.delall("TCON")
            if target["ID3v2:TCON"]:
                id3.add(TCON(encoding=3, text=list(target["ID3v2:TCON"])))
            self._call(save_id3_keep_tail, id3, self.path, version)

    def _summary(self):
        tags = self.mf.tags
        return {"artist": self._text(tags, "artist"), "album": self._text(tags, "album"),
                "title": self._text(tags, "title")}


class Mp4Handler(Handler):
    writable = True
    GENRE, PROV = GENRE_KEYS["MP4"]["genre"], GENRE_KEYS["MP4"]["provenance"]

    def _fields(self):
        tags = self.mf.tags
        genre = list(tags[self.GENRE]) if tags is not None and self.GENRE in tags else None
        prov = ([bytes(v).decode("utf-8", "surrogateescape") for v in tags[self.PROV]]
                if tags is not None and self.PROV in tags else None)
        return {self.GENRE: [str(g) for g in genre] if genre else None, self.PROV: prov or None}

    def _genres(self, fields, separator):
        return clean_genres(fields.get(self.GENRE) or [])

    def _plan(self, fields, genres, separator, provenance):
        return {**fields, self.GENRE: list(genres) or None, self.PROV: [provenance] if provenance else None}

    def _apply(self, target):
        mf = self._call(self.kind, self.path)
        if mf.tags is None:
            self._call(mf.add_tags)
        tags = mf.tags
        for key in (self.GENRE, self.PROV):
            tags.pop(key, None)
        if target.get(self.GENRE):
            tags[self.GENRE] = list(target[self.GENRE])
        if target.get(self.PROV):
            tags[self.PROV] = [MP4FreeForm(v.encode("utf-8", "surrogateescape"), dataformat=AtomDataType.UTF8)
                               for v in target[self.PROV]]
        self._call(mf.save)

    def _summary(self):
        tags = self.mf.tags
        return {"artist": self._text(tags, "\xa9ART"), "album": self._text(tags, "\xa9alb"),
                "title": self._text(tags, "\xa9nam")}


class AsfHandler(Handler):
    """WMA/ASF: repeated ``WM/Genre`` attributes.

    mutagen (like TagLib) stores the first value of an attribute in the Extended Content Description object
    and the others in the Metadata Library inside the Header Extension object. Files made by FFmpeg (and
    most WMA files seen) hold the Header Extension first, and TagLib and ExifTool list values in file order,
    so they showed the primary genre last. A write therefore moves the Extended Content Description in front
    of the Header Extension (real files hold the header objects in any order): every reader that lists
    several values then shows mutagen's order. FFmpeg keeps a single WM/Genre, the last one in the file, so
    it shows the last genre; no layout can put the primary first for FFmpeg and the others alike."""

    writable = True
    KEYS = (GENRE_KEYS["ASF"]["genre"], GENRE_KEYS["ASF"]["provenance"])

    def _fields(self):
        tags = self.mf.tags
        return {k: ([str(v) for v in tags[k]] if tags is not None and k in tags else None) or None
                for k in self.KEYS}

    def _genres(self, fields, separator):
        return clean_genres(fields.get(self.KEYS[0]) or [])

    def _plan(self, fields, genres, separator, provenance):
        return {**fields, self.KEYS[0]: list(genres) or None, self.KEYS[1]: [provenance] if provenance else None}

    def _apply(self, target):
        mf = self._call(self.kind, self.path)
        for key in self.KEYS:
            if key in mf.tags:
                del mf.tags[key]
            if target.get(key):
                mf.tags[key] = list(target[key])
        _content_description_first(mf)
        self._call(mf.save)

    def _summary(self):
        tags = self.mf.tags
        return {"artist": self._text(tags, "Author"), "album": self._text(tags, "WM/AlbumTitle"),
                "title": self._text(tags, "Title")}


def _content_description_first(mf: ASF) -> None:
    """Put the Extended Content Description object (added if missing: mutagen would append it last) in
    front of the Header Extension object, so that readers in file order meet each attribute's first value
    before its others (see :class:`AsfHandler`)."""
    objects = mf._header.objects
    extension = mf._header.get_child(HeaderExtensionObject.GUID)
    described = mf._header.get_child(ExtendedContentDescriptionObject.GUID)
    if described is None:
        described = ExtendedContentDescriptionObject()
        objects.append(described)
    if extension is not None and objects.index(extension) < objects.index(described):
        objects.remove(described)
        objects.insert(objects.index(extension), described)


class ApeHandler(Handler):
    """WavPack, Monkey's Audio, Musepack: APEv2 at the end of the file."""

    writable = True
    KEYS = (_APE["genre"], _APE["provenance"])

    def _fields(self):
        tag = self._call(ape_tag, self.path)
        return {k: ape_values(tag, k) for k in self.KEYS}

    def _genres(self, fields, separator):
        return clean_genres(fields.get(self.KEYS[0]) or [])

    def _plan(self, fields, genres, separator, provenance):
        return {**fields, self.KEYS[0]: list(genres) or None, self.KEYS[1]: [provenance] if provenance else None}

    def _apply(self, target):
        self._call(ape_update, self.path, {k: target.get(k) for k in self.KEYS}, keep_empty=False)

    def _summary(self):
        tag = self._call(ape_tag, self.path)
        return {"artist": self._text(tag, "Artist"), "album": self._text(tag, "Album"),
                "title": self._text(tag, "Title")}


_HANDLERS = {"id3": Id3Handler, "vorbis": VorbisHandler, "mp4": Mp4Handler, "asf": AsfHandler,
             "apev2": ApeHandler}


def _detect(path: str, name: str) -> type | None:
    """mutagen.File's choice of class, scoring the file name ``name`` (the user's file name also
    when ``path`` is a temp copy: some formats, e.g. MPEG-2.5 MP3, are only known by extension)."""
    with open(path, "rb") as f:
        header = f.read(128)
        scores = []
        for kind in _CANDIDATES:
            f.seek(0)
            by_name = kind.score(name, f, header)
            f.seek(0)
            scores.append(((by_name, kind.score("", f, header), kind.__name__), kind))
    # On a tie, what the bytes say wins over the extension (a FLAC stream named .mp3 scores 1 for
    # each); only then mutagen's own tie-break, the class name.
    scores.sort(key=lambda item: item[0])
    (score, _content, _name), kind = scores[-1]
    return kind if score > 0 else None


def open_handler(path: str, *, label: str | None = None, write: bool = False) -> Handler:
    """Parse ``path`` and return its handler. Raises TagReadError (``write=False``) or
    TagWriteError / UnsupportedFormat (``write=True``), naming ``label`` (default ``path``)."""
    label = label if label is not None else path
    err = TagWriteError if write else TagReadError
    if not os.path.isfile(path):
        raise err(label, "not a regular file" if os.path.exists(path) else "file not found")
    kind = call(label, _detect, path, os.path.basename(label), write=write)
    if kind is None:
        raise (UnsupportedFormat if write else TagReadError)(label, "not an audio format genretag (mutagen) recognises")
    entry = GENRE_KEYS.get(kind.__name__)
    handler = _HANDLERS[entry["tags"]] if entry else Handler
    h = handler(kind, path, label, write)
    if write and not h.writable:
        h._plan({}, [], "; ", None)  # raises UnsupportedFormat
    return h
