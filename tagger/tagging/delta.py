"""Undo data: what turns a file as genretag wrote it back into the original, byte for byte.

A tag write changes little of a file, but not always in one place: a grown ID3v2 tag shifts the audio
after it and the ID3v1 genre byte at the end changes too; a WAV gets a longer LIST/INFO chunk near the
start, a new ``id3 `` chunk at the end and a new RIFF size; mutagen's Ogg writer renumbers every later
page when the comment header's page count changes, so a sequence number and a CRC change in every page.
The original ``O`` is therefore described against the written file ``W`` as a series of **segments**
that tile both files in order:

* an **aligned** segment, ``O[x:y]`` against ``W[x+s:y+s]`` for one shift ``s``, is kept as the XOR of
  the two, run by run (zlib): nothing where they agree, a few bytes per page where only sequence numbers
  and CRCs differ. It grows block by block while fewer than one byte in ``SPARSE`` differs;
* a **rewritten** segment (the tag itself: frames reordered, padding resized, a picture moved) is
  compressed with zstd using its counterpart in ``W`` as the prefix, so whatever moved costs a reference.

The head (shift 0) and the tail (shift ``len(W) - len(O)``) are found first; what lies between is
split where a probe from its middle is found again in ``W`` (another shift), recursively, and the rest
is compressed. Files are read in ``BLOCK`` pieces; only a rewritten segment is held in memory, and one
over ``MIDDLE_LIMIT`` or undo data over the caller's limit raises :class:`UndoTooLarge`. Rebuilding reads
``W`` once, start to end, and hashes it on the way: the caller checks it is the file the data is for.

Layout: ``b"GTU2"``, three little-endian uint64 (``len(O)``, ``len(W)``, segment count), then per segment
a kind byte (0 aligned, 1 rewritten), three uint64 (length in ``O``, length in ``W``, payload length)
and the payload (aligned: zlib of runs, each a LEB128 gap, a LEB128 length and that many XOR bytes;
rewritten: a zstd frame, empty when the segment is empty in ``O``).
"""
from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterator

MAGIC = b"GTU2"
BLOCK = 1 << 16
SPARSE = 16
"""A block still lines up while at most one byte in this many differs (a renumbered Ogg page: 8 of 4,096)."""
GAP = 8
"""Differences closer than this are kept as one run (a gap costs less than a new run's header)."""
MIDDLE_LIMIT = 32 << 20
"""The largest rewritten segment kept (it is compressed in memory, with its prefix)."""
SPLIT_ABOVE = 1 << 20
"""A middle larger than this is searched for a part that lines up with another shift before compressing."""
MAX_DEPTH = 8
PROBE = 4096
ZSTD_LEVEL = 6
READ = 1 << 20
ALIGNED, REWRITTEN = 0, 1

_HEADER = struct.Struct("<4sQQQ")
_SEGMENT = struct.Struct("<BQQQ")


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
        a, head = _extend(fo, fw, 0, 0, min(lo, lw), forward=True)
        b, tail = _extend(fo, fw, lo, d, a + max(0, -d), forward=False)
        segments = [_aligned(0, a, head), *_split(fo, fw, a, b, a, b + d, limit, 0), _aligned(b, lo, tail)]
    finally:
        os.close(fo)
        os.close(fw)
    data = bytearray(_HEADER.pack(MAGIC, lo, lw, len(segments)))
    for kind, o_len, w_len, payload in segments:
        data += _SEGMENT.pack(kind, o_len, w_len, len(payload)) + payload
        if len(data) > limit:
            raise UndoTooLarge(len(data), limit)
    return bytes(data)


def rebuild(written: str, data: bytes, out=None) -> tuple[str, str]:
    """Read ``written`` once, start to end, and rebuild the original from it and ``data``, writing it to
    the binary file ``out`` (if given). Returns the sha256 hex digests of ``written`` and of the
    rebuilt original: the caller compares them with the journal's before deciding anything."""
    lo, lw, segments = _parse(data)
    seen, made = hashlib.sha256(), hashlib.sha256()

    def emit(chunk) -> None:
        made.update(chunk)
        if out is not None:
            out.write(chunk)

    fw = os.open(written, os.O_RDONLY)
    try:
        if os.fstat(fw).st_size != lw:
            return _sha256_fd(fw), ""
        at = 0
        for kind, o_len, w_len, payload in segments:
            if kind == ALIGNED:
                _xor_region(fw, at, o_len, _runs(zlib.decompress(payload)), seen, emit)
            else:
                prefix = _pread(fw, w_len, at)
                seen.update(prefix)
                if o_len:
                    emit(_decompress(payload, prefix))
            at += w_len
    finally:
        os.close(fw)
    return seen.hexdigest(), made.hexdigest()


def file_sha256(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _sha256_fd(fd)
    finally:
        os.close(fd)


# -- finding what lines up -------------------------------------------------------------------------------
def _extend(fo: int, fw: int, start: int, shift: int, bound: int, forward: bool) -> tuple[int, list]:
    """How far from ``start`` (towards ``bound``) ``O[i]`` lines up with ``W[i + shift]``, block by block
    while the blocks differ sparsely: the end reached, and the runs where they differ, as
    ``(position in O, xor bytes)`` in file order."""
    runs, pos = [], start
    while (pos < bound) if forward else (pos > bound):
        n = min(BLOCK, abs(bound - pos))
        at = pos if forward else pos - n
        o, w = _pread(fo, n, at), _pread(fw, n, at + shift)
        if o != w:
            x = _xor(o, w)
            nz = _nonzero(x)
            if len(nz) * SPARSE > n:  # no longer lined up: stop at its first (last) difference
                end = at + int(nz[0]) if forward else at + int(nz[-1]) + 1
                return end, runs if forward else runs[::-1]
            found = _block_runs(x, nz, at)
            runs += found if forward else found[::-1]
        pos = at + n if forward else at
    return pos, runs if forward else runs[::-1]


def _block_runs(x, nz, base: int) -> list[tuple[int, bytes]]:
    import numpy as np

    cut = np.flatnonzero(np.diff(nz) > GAP) + 1
    starts = nz[np.concatenate(([0], cut))].tolist()
    ends = (nz[np.concatenate((cut - 1, [len(nz) - 1]))] + 1).tolist()
    return [(base + s, x[s:e].tobytes()) for s, e in zip(starts, ends)]


def _split(fo: int, fw: int, o0: int, o1: int, w0: int, w1: int, limit: int, depth: int) -> list:
    """Segments for ``O[o0:o1]`` against ``W[w0:w1]``: a part found lined up with another shift (by a
    probe from the middle) is kept aligned and the two sides split again; the rest is rewritten."""
    if o1 - o0 <= SPLIT_ABOVE or depth >= MAX_DEPTH:
        return [_rewritten(fo, fw, o0, o1, w0, w1, limit)]
    m = o0 + (o1 - o0 - PROBE) // 2
    found = _find(fw, _pread(fo, PROBE, m), w0, w1)
    if found is None:
        return [_rewritten(fo, fw, o0, o1, w0, w1, limit)]
    shift = found - m
    y, after = _extend(fo, fw, m, shift, min(o1, w1 - shift), forward=True)
    x, before = _extend(fo, fw, m, shift, max(o0, w0 - shift), forward=False)
    return [*_split(fo, fw, o0, x, w0, x + shift, limit, depth + 1), _aligned(x, y, before + after),
            *_split(fo, fw, y, o1, y + shift, w1, limit, depth + 1)]


def _find(fw: int, probe: bytes, w0: int, w1: int) -> int | None:
    """Where ``probe`` occurs in ``W[w0:w1]``, or None (read in pieces)."""
    pos = w0
    while pos < w1:
        chunk = _pread(fw, min(8 * READ + len(probe), w1 - pos), pos)
        at = chunk.find(probe)
        if at >= 0:
            return pos + at
        pos += 8 * READ
    return None


def _aligned(o0: int, o1: int, runs: list) -> tuple:
    encoded, last = bytearray(), o0
    for at, x in runs:
        encoded += _varint(at - last) + _varint(len(x)) + x
        last = at + len(x)
    return ALIGNED, o1 - o0, o1 - o0, zlib.compress(bytes(encoded), 6)


def _rewritten(fo: int, fw: int, o0: int, o1: int, w0: int, w1: int, limit: int) -> tuple:
    if max(o1 - o0, w1 - w0) > MIDDLE_LIMIT:
        raise UndoTooLarge(o1 - o0, limit)
    frame = _compress(_pread(fo, o1 - o0, o0), _pread(fw, w1 - w0, w0)) if o1 > o0 else b""
    return REWRITTEN, o1 - o0, w1 - w0, frame


def _window_log(size: int) -> int:
    return min(27, max(10, size.bit_length()))


def _compress(o: bytes, w: bytes) -> bytes:
    import pyzstd

    option = {pyzstd.CParameter.compressionLevel: ZSTD_LEVEL,
              pyzstd.CParameter.windowLog: _window_log(len(o) + len(w)),
              pyzstd.CParameter.enableLongDistanceMatching: int(len(o) + len(w) > SPLIT_ABOVE)}
    prefix = pyzstd.ZstdDict(w, is_raw=True).as_prefix if w else None
    return pyzstd.compress(o, level_or_option=option, zstd_dict=prefix)


def _decompress(frame: bytes, w: bytes) -> bytes:
    import pyzstd

    prefix = pyzstd.ZstdDict(w, is_raw=True).as_prefix if w else None
    return pyzstd.decompress(frame, zstd_dict=prefix, option={pyzstd.DParameter.windowLogMax: 27})


# -- rebuilding ------------------------------------------------------------------------------------------
def _parse(data: bytes) -> tuple[int, int, list]:
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise ValueError("not genretag undo data")
    _magic, lo, lw, count = _HEADER.unpack_from(data)
    pos, segments = _HEADER.size, []
    for _ in range(count):
        kind, o_len, w_len, n = _SEGMENT.unpack_from(data, pos)
        pos += _SEGMENT.size
        segments.append((kind, o_len, w_len, data[pos:pos + n]))
        pos += n
    return lo, lw, segments


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
