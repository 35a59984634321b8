"""A native kernel for musicnn's front end: a bf16 matrix product that is reduced to its maxima while it
is computed (``kernels/banded_max.c``), so that the product is never written. It has two versions: Intel
AMX tiles, and AVX512-BF16 dot products for CPUs without AMX (AMD Zen 4/5, Intel Cooper Lake).

The C source is compiled on first use with the host's C compiler (``$CC``, else ``cc``) into genretag's
cache folder, named by a hash of the source, the flags and the compiler's version, and loaded with
ctypes. Where the CPU has neither instruction set, there is no compiler, or the build fails,
:func:`banded_max_kernel` returns None and musicnn runs its torch path. ``GENRETAG_NATIVE`` chooses:
``auto`` (the default: AMX where the CPU has it, else AVX512-BF16), ``amx``, ``avx512`` (either only
where the CPU has it), or ``0`` / ``off`` (none).

The kernel runs on the calling thread. musicnn uses it only in calls that torch gives one thread, as a
CPU scan does by default (one batch per core): a call with several threads keeps torch's products,
which split across them. (Splitting the kernel over Python threads was slower: torch's OpenMP workers
keep spinning on the other cores for a while after each operator.)
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels") / "banded_max.c"
AVX512_FLAGS = ("-O3", "-shared", "-fPIC", "-mavx512f", "-mavx512bf16")
FLAGS = {"amx": AVX512_FLAGS + ("-mamx-tile", "-mamx-bf16"), "avx512": AVX512_FLAGS}
"""The compiler flags of each version's build. Each version is its own library, so a compiler that does not
know AMX's flags (gcc before 11) still builds the AVX512 one."""
BUILD_SECONDS = 120.0


def cache_folder() -> Path:
    """``$XDG_CACHE_HOME/genretag/kernels`` (``~/.cache/genretag/kernels``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "genretag" / "kernels"


KERNELS = {"amx": "genretag_banded_max", "avx512": "genretag_banded_max_avx512"}
"""The C entry point of each version, by ``GENRETAG_NATIVE`` name."""
OFF = ("0", "off", "false", "no")


def banded_max_kernel():
    """The loaded kernel function that ``GENRETAG_NATIVE`` and this CPU choose, or None."""
    return _kernel(os.environ.get("GENRETAG_NATIVE", "auto"))


def kernel_isas() -> list[str]:
    """The kernel versions this CPU can run, preferred first."""
    return [isa for isa, available in (("amx", cpu_has_amx_bf16), ("avx512", cpu_has_avx512_bf16))
            if available()]


@lru_cache(maxsize=None)
def _kernel(choice: str):
    """The kernel for one ``GENRETAG_NATIVE`` value: ``amx`` or ``avx512`` (that version, where this CPU
    has it), one of :data:`OFF`, or anything else (``auto``): the first of :func:`kernel_isas`."""
    isas = kernel_isas()
    if choice.lower() in OFF:
        isas = []
    elif choice in KERNELS:
        isas = [isa for isa in isas if isa == choice]
    for isa in isas:  # auto, 1, or anything else: the first that builds and loads
        kernel = _loaded(isa)
        if kernel is not None:
            return kernel
    return None


def _loaded(isa: str):
    """One version's kernel function, built and loaded; None where it does not build, load or (AMX) get
    the tile permission."""
    try:
        library = ctypes.CDLL(str(_built_library(isa)))
    except (OSError, subprocess.SubprocessError):
        return None
    if isa == "amx" and library.genretag_amx_enable() != 0:  # it would die on its first tile
        return None
    kernel = getattr(library, KERNELS[isa])
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    kernel.argtypes = [ptr, i64, i64, ptr, i64, i64, i64, i64, ptr, i64]
    kernel.restype = None
    return kernel


def banded_max(a: torch.Tensor, b_vnni: torch.Tensor, positions: int, row_group: int, z: torch.Tensor) -> None:
    """``z = max(z, maxima of a @ b)`` in place: ``z[g, q]`` takes the max over the rows of group ``g``
    (``row_group`` rows) and over ``positions`` columns of ``b``, which come in runs of 16, position
    within channel tile (:func:`position_minor`); see ``kernels/banded_max.c``.

    a: [rows, k] bf16, unit column stride, rows a multiple of 32 and k of 32. b_vnni: [k / 2, n, 2]
    bf16, contiguous. z: [rows / row_group, >= n / positions] float32, unit column stride.
    """
    kernel = banded_max_kernel()
    rows, k = a.shape
    half_k, n, _ = b_vnni.shape
    if not (a.dtype == b_vnni.dtype == torch.bfloat16 and z.dtype == torch.float32 and a.stride(1) == 1
            and z.stride(1) == 1 and b_vnni.is_contiguous() and half_k * 2 == k and k % 32 == 0
            and rows % 32 == 0 and n % 32 == 0 and n % (16 * positions) == 0
            and (row_group == 1 or row_group % 32 == 0) and z.shape[0] * row_group == rows
            and z.shape[1] >= n // positions):
        raise ValueError(f"banded_max: unsupported operands a{tuple(a.shape)} b{tuple(b_vnni.shape)} "
                         f"z{tuple(z.shape)} positions={positions} row_group={row_group}")
    kernel(a.data_ptr(), a.stride(0), rows, b_vnni.data_ptr(), k, n, positions, row_group,
           z.data_ptr(), z.stride(0))


def position_minor(weight: torch.Tensor, positions: int) -> torch.Tensor:
    """[k, positions * q] with position-major columns -> the kernel's order: runs of 16 channels, each
    run at every position before the next run (q a multiple of 16)."""
    k, n = weight.shape
    return weight.view(k, positions, n // positions // 16, 16).transpose(1, 2).reshape(k, n)


def to_vnni(weight: torch.Tensor) -> torch.Tensor:
    """[k, n] -> [k / 2, n, 2] bf16: rows 2i and 2i + 1 interleaved, the layout both kernels read B in."""
    k, n = weight.shape
    return weight.to(torch.bfloat16).view(k // 2, 2, n).transpose(1, 2).contiguous()


def cpu_has_avx512_bf16() -> bool:
    """Whether this CPU has AVX512-BF16's dot products (and the Linux kernel reports them)."""
    try:
        return torch.cpu._is_avx512_bf16_supported() and "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except (AttributeError, OSError):
        return False


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU (and the kernel that runs it: Linux) has AMX tiles and their bf16 products."""
    try:
        return (torch.cpu._is_amx_tile_supported() and torch.cpu._is_avx512_bf16_supported()
                and "amx_bf16" in Path("/proc/cpuinfo").read_text())
    except (AttributeError, OSError):
        return False


def _built_library(isa: str) -> Path:
    """One version's compiled kernel, built once per source, flags and compiler; written atomically, so
    that two processes building at once both end with a whole library."""
    compiler = os.environ.get("CC", "cc")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True,
                             timeout=BUILD_SECONDS).stdout
    flags = FLAGS[isa]
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode() + version.encode()).hexdigest()
    target = cache_folder() / f"banded_max-{isa}-{digest[:16]}.so"
    if target.exists():
        _mark_used(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built)], capture_output=True, check=True,
                       timeout=BUILD_SECONDS)
        os.replace(built, target)
    _remove_stale_builds(target)
    return target


STALE_DAYS = 30


def _mark_used(build: Path) -> None:
    """Set the build's time to now, so that :func:`_remove_stale_builds` keeps a build still in use."""
    try:
        os.utime(build)
    except OSError:  # a cache shared read-only: nothing will remove it either
        pass


def _remove_stale_builds(kept: Path) -> None:
    """Delete builds of older sources, flags or compilers, last used over :data:`STALE_DAYS` ago: an
    upgrade leaves its predecessor's build behind, while another install sharing the cache keeps using
    its own (each load refreshes its time)."""
    cutoff = time.time() - STALE_DAYS * 86400
    for old in kept.parent.glob("banded_max-*.so"):
        try:
            if old != kept and old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:  # another process removed it, or the cache is not ours to clean
            pass
