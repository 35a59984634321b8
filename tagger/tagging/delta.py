"""Undo data: what turns a file as genretag wrote it back into the original, byte for byte.

A tag write changes little of a file, but not always in one place: a grown ID3v2 tag shifts the audio
after it and the ID3v1 genre byte at the end changes too; a WAV gets a new chunk at the end and a new
RIFF size at the start; mutagen's Ogg writer renumbers every later page when the comment header's page
count changes, so a sequence number and a CRC change in every page of the file. The original ``O`` is
therefore described against the written file ``W`` (``d = len(W) - len(O)``) in three parts:

* the **head** ``O[0:a]`` lines up with ``W[0:a]``;
* the **tail** ``O[b:]`` lines up with the end of ``W``, ``W[b+d:]``;
* the **middle** ``O[a:b]``, where the tag itself was rewritten (frames reordered, padding resized,
  a picture moved), is compressed with zstd using ``W[a:b+d]`` as its prefix, so that whatever moved
  inside the tag costs a reference, not a copy.

Head and tail are kept as the XOR of the aligned bytes, run by run (zlib): nothing where they agree, a
few bytes per page where only sequence numbers and CRCs differ. Each extends from its end of the file
block by block while fewer than one byte in ``SPARSE`` differs, so a changed RIFF size or a renumbered
page does not stop it. Everything is read in ``BLOCK`` pieces; only the middle is held in memory, and
a middle over ``MIDDLE_LIMIT`` (never seen: it would mean a tag of that size rewritten differently) or
undo data over the caller's limit raises :class:`UndoTooLarge`.

Layout: ``b"GTU1"``, four little-endian uint64 (``len(O)``, ``len(W)``, ``a``, ``b``), then three
sections, each a uint64 length and its bytes: head runs, tail runs (zlib; each run a LEB128 gap, a
LEB128 length and that many XOR bytes), and the middle (a zstd frame, empty when ``a == b``).
"""
from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterator

MAGIC = b"GTU1"
BLOCK = 1 << 16
SPARSE = 16
"""A block still lines up while at most one byte in this many differs (a renumbered Ogg page: 8 of 4,096)."""
GAP = 8
"""Differences closer than this are kept as one run (a gap costs less than a new run's header)."""
MIDDLE_LIMIT = 32 << 20
"""The largest rewritten middle kept (it is compressed in memory, with its prefix)."""
ZSTD_LEVEL = 6
READ = 1 << 20

_HEADER = struct.Struct("<4sQQQQ")
_LEN = struct.Struct("<Q")


class UndoTooLarge(Exception):
    """The undo data for a write would pass the limit (``size`` bytes, or more)."""

    def __init__(self, size: int, limit: int):
        self.size, self.limit = size, limit
        super().__init__(f"undo data of {size:,} bytes would pass the limit of {limit:,}")


def make(original: str, written: str, limit: int) -> bytes:
    """The undo data that rebuilds ``original`` from ``written`` (both paths, neither changing)."""
    fo, fw = os.open(original, os.O_RDONLY), os.open(written, os.O_RDONLY)
    try:
        lo, lw = os.fstat(fo).st_size, os.fstat(fw).st_size
        d = lw - lo
        a, head = _aligned_head(fo, fw, min(lo, lw))
        b, tail = _aligned_tail(fo, fw, lo, lw, a + max(0, -d))
        if b - a > MIDDLE_LIMIT or b + d - a > MIDDLE_LIMIT:
            raise UndoTooLarge(max(b - a, b + d - a), limit)
        middle = _compress_middle(_pread(fo, b - a, a), _pread(fw, b + d - a, a))
    finally:
        os.close(fo)
        os.close(fw)
    sections = [zlib.compress(bytes(head), 6), zlib.compress(bytes(tail), 6), middle]
    data = _HEADER.pack(MAGIC, lo, lw, a, b) + b"".join(_LEN.pack(len(s)) + s for s in sections)
    if len(data) > limit:
        raise UndoTooLarge(len(data), limit)
    return data


def rebuild(written: str, data: bytes, out=None) -> tuple[str, str]:
    """Read ``written`` once, start to end, and rebuild the original from it and ``data``, writing it to
    the binary file ``out`` (if given). Returns the sha256 hex digests of ``written`` and of the
    rebuilt original: the caller compares them with the journal's before deciding anything."""
    lo, lw, a, b, head, tail, middle = _parse(data)
    d = lw - lo
    seen, made = hashlib.sha256(), hashlib.sha256()

    def emit(chunk) -> None:
        made.update(chunk)
        if out is not None:
            out.write(chunk)

    fw = os.open(written, os.O_RDONLY)
    try:
        if os.fstat(fw).st_size != lw:
            return _sha256_fd(fw), ""
        _xor_region(fw, 0, a, _runs(head), seen, emit)
        prefix = _pread(fw, b + d - a, a)
        seen.update(prefix)
        if b > a:
            emit(_decompress_middle(middle, prefix))
        _xor_region(fw, b + d, lo - b, _runs(tail), seen, emit)
    finally:
        os.close(fw)
    return seen.hexdigest(), made.hexdigest()


def file_sha256(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _sha256_fd(fd)
    finally:
        os.close(fd)


# -- finding the aligned ends ----------------------------------------------------------------------------
def _aligned_head(fo: int, fw: int, end: int) -> tuple[int, bytearray]:
    """How far ``O`` and ``W`` line up from the start, and the runs where they differ there."""
    runs, pos, last = bytearray(), 0, 0
    while pos < end:
        n = min(BLOCK, end - pos)
        o, w = _pread(fo, n, pos), _pread(fw, n, pos)
        if o != w:
            x = _xor(o, w)
            nz = _nonzero(x)
            if len(nz) * SPARSE > n:
                first = pos + int(nz[0])
                return first, runs
            last = _add_runs(runs, x, nz, pos, last)
        pos += n
    return end, runs


def _aligned_tail(fo: int, fw: int, lo: int, lw: int, low: int) -> tuple[int, bytearray]:
    """Where ``O`` starts lining up with the end of ``W`` (not below ``low``), and the runs where they
    differ after that point (offsets from it)."""
    d = lw - lo
    b, found = lo, []  # blocks found from the end, each (start in O, xor, nonzero)
    while b > low:
        n = min(BLOCK, b - low)
        start = b - n
        o, w = _pread(fo, n, start), _pread(fw, n, start + d)
        if o != w:
            x = _xor(o, w)
            nz = _nonzero(x)
            if len(nz) * SPARSE > n:
                return _tail_runs(found, start + int(nz[-1]) + 1)
            found.append((start, x, nz))
        b = start
    return _tail_runs(found, b)


def _tail_runs(found: list, b: int) -> tuple[int, bytearray]:
    runs, last = bytearray(), 0
    for start, x, nz in reversed(found):
        last = _add_runs(runs, x, nz, start - b, last)
    return b, runs


def _add_runs(runs: bytearray, x, nz, base: int, last: int) -> int:
    """Append the runs of ``x`` (a block at ``base``) whose differing bytes are ``nz``; ``last`` is where
    the previous run ended. Returns where the last one ends."""
    import numpy as np

    if not len(nz):
        return last
    cut = np.flatnonzero(np.diff(nz) > GAP) + 1
    starts = nz[np.concatenate(([0], cut))]
    ends = nz[np.concatenate((cut - 1, [len(nz) - 1]))] + 1
    for s, e in zip(starts.tolist(), ends.tolist()):
        runs += _varint(base + s - last) + _varint(e - s) + x[s:e].tobytes()
        last = base + e
    return last


# -- the middle ------------------------------------------------------------------------------------------
def _window_log(size: int) -> int:
    return min(27, max(10, size.bit_length()))


def _compress_middle(o: bytes, w: bytes) -> bytes:
    import pyzstd

    if not o:
        return b""
    option = {pyzstd.CParameter.compressionLevel: ZSTD_LEVEL,
              pyzstd.CParameter.windowLog: _window_log(len(o) + len(w))}
    prefix = pyzstd.ZstdDict(w, is_raw=True).as_prefix if w else None
    return pyzstd.compress(o, level_or_option=option, zstd_dict=prefix)


def _decompress_middle(frame: bytes, w: bytes) -> bytes:
    import pyzstd

    prefix = pyzstd.ZstdDict(w, is_raw=True).as_prefix if w else None
    return pyzstd.decompress(frame, zstd_dict=prefix, option={pyzstd.DParameter.windowLogMax: 27})


# -- rebuilding ------------------------------------------------------------------------------------------
def _parse(data: bytes):
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise ValueError("not genretag undo data")
    _magic, lo, lw, a, b = _HEADER.unpack_from(data)
    pos, sections = _HEADER.size, []
    for _ in range(3):
        (n,) = _LEN.unpack_from(data, pos)
        sections.append(data[pos + _LEN.size:pos + _LEN.size + n])
        pos += _LEN.size + n
    head, tail = zlib.decompress(sections[0]), zlib.decompress(sections[1])
    return lo, lw, a, b, head, tail, sections[2]


def _runs(encoded: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset, xor bytes) of each run, offsets from the start of its region."""
    pos, at = 0, 0
    while pos < len(encoded):
        gap, pos = _read_varint(encoded, pos)
        n, pos = _read_varint(encoded, pos)
        at += gap
        yield at, encoded[pos:pos + n]
        pos += n
        at += n


def _xor_region(fw: int, start: int, length: int, runs, seen, emit) -> None:
    """Emit ``W[start:start+length]`` with each run XORed in, hashing what is read into ``seen``."""
    pos = 0
    for at, x in runs:
        _copy(fw, start + pos, at - pos, seen, emit)
        w = _pread(fw, len(x), start + at)
        seen.update(w)
        emit(_xor(w, x).tobytes())
        pos = at + len(x)
    _copy(fw, start + pos, length - pos, seen, emit)


def _copy(fw: int, start: int, length: int, seen, emit) -> None:
    while length > 0:
        chunk = _pread(fw, min(READ, length), start)
        seen.update(chunk)
        emit(chunk)
        start += len(chunk)
        length -= len(chunk)


# -- small helpers ---------------------------------------------------------------------------------------
def _pread(fd: int, n: int, offset: int) -> bytes:
    if n <= 0:
        return b""
    parts, got = [], 0
    while got < n:
        chunk = os.pread(fd, n - got, offset + got)
        if not chunk:
            raise OSError(f"file shorter than expected ({offset + got:,} bytes)")
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _sha256_fd(fd: int) -> str:
    h, pos = hashlib.sha256(), 0
    while chunk := os.pread(fd, READ, pos):
        h.update(chunk)
        pos += len(chunk)
    return h.hexdigest()


def _xor(a: bytes, b: bytes):
    import numpy as np

    return np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8))


def _nonzero(x):
    import numpy as np

    return np.flatnonzero(x)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, pos
