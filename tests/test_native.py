"""The native kernels of tagger.models.native (AMX and AVX512-BF16): their results against float64 products,
the operand checks, the build cache, the choice between them, and the torch path that musicnn falls
back to where no kernel can be built."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from tagger.models.native import KERNELS, banded_max, banded_max_kernel, kernel_isas, position_minor, to_vnni

needs_native = pytest.mark.skipif(not kernel_isas(), reason="the native kernels need AMX-BF16 or AVX512-BF16")
ISAS = [pytest.param(isa, marks=pytest.mark.skipif(isa not in kernel_isas(), reason=f"this CPU has no {isa}"))
        for isa in KERNELS]


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    """Each kernel version this CPU can run, chosen through GENRETAG_NATIVE."""
    monkeypatch.setenv("GENRETAG_NATIVE", request.param)
    assert banded_max_kernel().__name__ == KERNELS[request.param]
    return request.param


def _reference(a: torch.Tensor, b: torch.Tensor, positions: int, row_group: int) -> torch.Tensor:
    """The kernel's result from a float64 product; b's columns come in runs of 16, position within run."""
    product = a.double() @ b.double()
    rows, n = product.shape
    per_position = product.view(rows, n // positions // 16, positions, 16).amax(dim=2).reshape(rows, -1)
    return per_position.view(rows // row_group, row_group, -1).amax(dim=1).float()


@pytest.mark.parametrize("rows,k,n,positions,row_group", [
    (32, 32, 32, 1, 1), (64, 64, 64, 2, 1), (64, 32, 96, 3, 1), (1888, 288, 832, 4, 1), (1888, 512, 1248, 6, 1),
    (960, 160, 1632, 1, 96), (960, 64, 1632, 1, 96), (96, 32, 64, 1, 32)])
def test_kernel_folds_the_product_into_the_running_maxima(rows, k, n, positions, row_group, isa):
    """Shapes of musicnn's blocks and the smallest ones allowed. ``z``
    starts with values that win some of the maxima: the kernel updates it, it does not overwrite it."""
    g = torch.Generator().manual_seed(rows + k + n)
    a = torch.randn(rows, k, generator=g).bfloat16()
    b = torch.randn(k, n, generator=g).bfloat16()
    expected = _reference(a, b, positions, row_group)
    z = expected + torch.randn(expected.shape, generator=g) * expected.std()
    expected = torch.maximum(expected, z)
    banded_max(a, to_vnni(b), positions, row_group, z)
    # float32 accumulation against float64: summation order only
    torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_kernel_reads_rows_with_a_stride_in_place(isa):
    """Row stride larger than the depth (a window into longer series, as the temporal blocks use)."""
    g = torch.Generator().manual_seed(1)
    series = torch.randn(64, 100, generator=g).bfloat16()
    b = torch.randn(32, 64, generator=g).bfloat16()
    a = series[:, 7:39]
    z = torch.full((2, 64), float("-inf"))
    banded_max(a, to_vnni(b), 1, 32, z)
    torch.testing.assert_close(z, _reference(a, b, 1, 32), rtol=1e-5, atol=1e-4)


@needs_native
@pytest.mark.parametrize("change", ["rows", "depth", "columns", "group", "z rows", "dtype"])
def test_kernel_refuses_operands_it_cannot_read(change):
    """The kernel itself checks nothing: a wrong shape would read or write past a tensor."""
    rows, k, n, row_group, z_rows = 64, 64, 64, 32, 2
    a_dtype = torch.bfloat16
    if change == "rows":
        rows, z_rows = 48, 1
        row_group = 48
    elif change == "depth":
        k = 48
    elif change == "columns":
        n = 48
    elif change == "group":
        row_group, z_rows = 16, 4
    elif change == "z rows":
        z_rows = 1
    else:
        a_dtype = torch.float32
    a = torch.zeros(rows, k, dtype=a_dtype)
    z = torch.zeros(z_rows, n)
    with pytest.raises(ValueError, match="banded_max: unsupported operands"):
        banded_max(a, to_vnni(torch.zeros(k - k % 2, n)), 1, row_group, z)


def test_position_minor_puts_a_channel_run_at_every_position_before_the_next():
    weight = torch.arange(3 * 64).view(1, 3 * 64)  # 3 positions x 64 channels, position-major
    order = position_minor(weight, 3)[0].tolist()
    expected = [p * 64 + run * 16 + lane for run in range(4) for p in range(3) for lane in range(16)]
    assert order == expected


def test_vnni_layout_interleaves_pairs_of_rows():
    weight = torch.arange(4 * 3, dtype=torch.float32).view(4, 3)
    packed = to_vnni(weight)
    assert packed.shape == (2, 3, 2)
    for i in range(2):
        for j in range(3):
            assert packed[i, j].tolist() == [weight[2 * i, j].item(), weight[2 * i + 1, j].item()]


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


@needs_native
def test_kernel_is_built_once_into_the_cache_folder(tmp_path):
    code = """
        from tagger.models.native import banded_max_kernel, cache_folder
        assert banded_max_kernel() is not None
        print(sorted(p.name for p in cache_folder().iterdir()))
    """
    first = _python(code, {"XDG_CACHE_HOME": str(tmp_path)})
    assert first.returncode == 0, first.stderr
    built = sorted((tmp_path / "genretag" / "kernels").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    inode = built[0].stat().st_ino
    second = _python(code, {"XDG_CACHE_HOME": str(tmp_path)})
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout and built[0].stat().st_ino == inode  # not built again


DAY = 86400


@needs_native
def test_a_build_removes_stale_builds_and_keeps_those_in_use(tmp_path):
    """Builds of other sources or compilers go once unused for STALE_DAYS; a build still loaded by some
    install has its time refreshed on every load, so it stays."""
    from tagger.models.native import STALE_DAYS

    folder = tmp_path / "genretag" / "kernels"
    folder.mkdir(parents=True)
    stale, recent, unrelated = (folder / name for name in ("banded_max-avx512-0123.so",
                                                            "banded_max-amx-4567.so", "notes.txt"))
    for path, age in ((stale, STALE_DAYS + 1), (recent, STALE_DAYS - 1), (unrelated, STALE_DAYS + 1)):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - age * DAY,) * 2)
    code = """
        from tagger.models.native import banded_max_kernel
        assert banded_max_kernel() is not None
    """
    first = _python(code, {"XDG_CACHE_HOME": str(tmp_path)})
    assert first.returncode == 0, first.stderr
    left = {path.name for path in folder.iterdir()}
    assert stale.name not in left and {recent.name, unrelated.name} <= left and len(left) == 3
    (ours,) = left - {recent.name, unrelated.name}
    os.utime(folder / ours, (time.time() - (STALE_DAYS + 1) * DAY,) * 2)
    second = _python(code, {"XDG_CACHE_HOME": str(tmp_path)})
    assert second.returncode == 0, second.stderr
    assert time.time() - (folder / ours).stat().st_mtime < DAY  # loading it marked it as in use


@pytest.mark.skipif("avx512" not in kernel_isas(), reason="this CPU has no AVX512-BF16")
def test_a_compiler_without_amx_flags_still_builds_the_avx512_kernel(tmp_path):
    """gcc before 11 knows AVX512-BF16's flags but not AMX's: auto then takes the AVX512 version (on an
    AMX CPU too), and asking for amx gives no kernel."""
    compiler = tmp_path / "old-cc"
    compiler.write_text('#!/bin/sh\nfor flag; do case "$flag" in -mamx*) '
                        'echo "cc: error: unrecognized option $flag" >&2; exit 1;; esac; done\n'
                        'exec cc "$@"\n')
    compiler.chmod(0o755)
    code = """
        import os, torch
        from tagger.models.native import KERNELS, banded_max, banded_max_kernel, to_vnni
        kernel = banded_max_kernel()
        print(kernel.__name__ if kernel is not None else None)
        torch.manual_seed(0)
        a, b = torch.randn(32, 32).bfloat16(), torch.randn(32, 32).bfloat16()
        z = torch.full((32, 32), -torch.inf)
        banded_max(a, to_vnni(b), 1, 1, z)
        torch.testing.assert_close(z, a.double() @ b.double(), rtol=1e-5, atol=1e-4, check_dtype=False)
        os.environ["GENRETAG_NATIVE"] = "amx"
        print(banded_max_kernel())
    """
    out = _python(code, {"XDG_CACHE_HOME": str(tmp_path), "CC": str(compiler), "GENRETAG_NATIVE": "auto"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [KERNELS["avx512"], "None"]
    assert [path.name.split("-")[1] for path in (tmp_path / "genretag" / "kernels").glob("*.so")] == ["avx512"]


@pytest.mark.parametrize("env", [{"GENRETAG_NATIVE": "0"}, {"GENRETAG_NATIVE": "off"},
                                 {"CC": "no-such-compiler"}, {"CC": "false"}])
def test_without_the_kernel_musicnn_runs_its_torch_path(tmp_path, env):
    """Kernel switched off, no compiler, or a compiler that fails: the same model still predicts, on
    the torch products, and gives what the torch path gives in this process."""
    code = """
        import torch
        from tagger.models.musicnn import load_builtin
        from tagger.models.native import banded_max_kernel
        assert banded_max_kernel() is None
        torch.manual_seed(0)
        audio = torch.randn(1, 16000 * 6) * 0.1
        torch.set_num_threads(1)  # where the native path would be taken
        model = load_builtin("musicnn-msd", precision="bf16")
        probs = model.predict(audio)
        for block in (model.model.timbral74, model.model.temporal128):
            block.native_band = None  # the torch path, whatever this process would use
        assert torch.equal(probs, model.predict(audio)), "not the torch path"
        print("ok")
    """
    out = _python(code, {"XDG_CACHE_HOME": str(tmp_path), **env})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert not list(tmp_path.rglob("*.so"))


def test_with_the_kernel_musicnn_runs_it_in_one_thread_calls_only(isa):
    """Where it can, bf16 musicnn takes the native path in a one-thread call (its output differs from
    the torch path's), and torch's products in a call with several threads."""
    assert banded_max_kernel() is not None
    from tagger.models.musicnn import load_builtin

    torch.manual_seed(0)
    audio = torch.randn(1, 16000 * 6) * 0.1
    model = load_builtin("musicnn-msd", precision="bf16")
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        native = model.predict(audio)
        torch.set_num_threads(2)
        several = model.predict(audio)
        torch.set_num_threads(1)
        for name in ("timbral74", "timbral77", "temporal128", "temporal64", "temporal32"):
            getattr(model.model, name).native_band = None
        products = model.predict(audio)
    finally:
        torch.set_num_threads(saved)
    assert not torch.equal(native, products)
    torch.testing.assert_close(several, products, rtol=0, atol=1e-5)  # the same computation, on 2 threads


@pytest.mark.parametrize("choice", ["auto", "1", "yes", "amx", "avx512", "0", "OFF", "false"])
def test_genretag_native_chooses_a_version_this_cpu_has(choice, monkeypatch):
    """auto (and any unknown value) takes the first version this CPU has, AMX before AVX512-BF16; a
    version's name takes it only where the CPU has it; 0 / off / false take none."""
    monkeypatch.setenv("GENRETAG_NATIVE", choice)
    here = kernel_isas()
    if choice in KERNELS:
        expected = KERNELS[choice] if choice in here else None
    elif choice.lower() in ("0", "off", "false"):
        expected = None
    else:
        expected = KERNELS[here[0]] if here else None
    kernel = banded_max_kernel()
    assert (kernel.__name__ if kernel is not None else None) == expected
