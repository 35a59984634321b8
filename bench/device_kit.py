"""What a scan needs on a GPU machine that has PyTorch and transformers but no network, no FFmpeg and no
genretag dependencies: wheels and FFmpeg's shared libraries, built here, to carry there.

    python bench/device_kit.py [--out .whl] [--python 3.12] [--torchcodec VERSION] [--av 15.1.0]

Writes into ``--out``:

* the wheels genretag imports beyond PyTorch, torchaudio and transformers: torchcodec in the release
  pyproject.toml pins, mutagen, sqlite-utils and its two small dependencies. torchcodec 0.14 and later
  load beside an older torch (0.17 ran every check with torch 2.11), and only they seek in audio:
  0.11-0.13 decode every window from the start of the stream, which made a track's three windows
  cost 1.6x as much (213 against 131 ms per track on one Xeon core, 44.1 kHz stereo);
* ``ffmpeg-libs.tar.xz``: FFmpeg's shared libraries as a PyAV wheel ships them (PyAV 15.1: FFmpeg 7.1
  with lame, vorbis and opus, so the bench library can be encoded there too), with the plain names
  torchcodec asks the dynamic linker for (``libavcodec.so.61`` and so on) as links to PyAV's
  hash-named copies. About 31 MiB in all.

``bench/device_check.sh`` installs the kit there and runs the GPU checks.
"""
from __future__ import annotations

import argparse
import re
import tomllib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
PURE = ("mutagen==1.48.1", "sqlite-utils==4.2.1", "sqlite-fts4==1.0.3", "click-default-group==1.2.4")
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
FFMPEG_LIBRARIES = ("avcodec", "avdevice", "avfilter", "avformat", "avutil", "swresample", "swscale")


def pinned_torchcodec(pyproject: Path = PYPROJECT) -> str:
    """The torchcodec version genretag's own install pins, so that the GPU checks decode as users do."""
    for requirement in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        name, _, version = requirement.partition("==")
        if name.strip() == "torchcodec" and version:
            return version.strip()
    raise SystemExit(f"{pyproject}: no torchcodec==VERSION among the dependencies")


def download(requirements: list[str], python: str, into: Path) -> list[Path]:
    """Binary wheels for that Python and Linux x86-64, without their dependencies (the kit names each)."""
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", python, "--implementation", "cp", *platforms, "--dest", str(into),
                    *requirements], check=True)
    return sorted(into.glob("*.whl"))


def pack_ffmpeg_libraries(av_wheel: Path, target: Path) -> list[str]:
    """PyAV's ``av.libs/`` as ``lib/`` in a tar.xz, plus a link by soname for each FFmpeg library.

    auditwheel renamed the libraries (``libavcodec-7ee0753d.so.61.19.101``) and their references to
    each other, so they load one another from the same folder once it is on ``LD_LIBRARY_PATH``; only
    torchcodec's own references (``libavcodec.so.61``) need the links."""
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(av_wheel) as wheel:
        lib = Path(tmp) / "lib"
        lib.mkdir()
        members = [name for name in wheel.namelist() if name.startswith("av.libs/") and not name.endswith("/")]
        for name in members:
            (lib / Path(name).name).write_bytes(wheel.read(name))
        links = []
        for path in sorted(lib.iterdir()):
            match = re.fullmatch(r"lib(\w+)-[0-9a-f]{8}\.so\.(\d+)(\.\d+)*", path.name)
            if match and match.group(1) in FFMPEG_LIBRARIES:
                link = lib / f"lib{match.group(1)}.so.{match.group(2)}"
                link.symlink_to(path.name)
                links.append(f"{link.name} -> {path.name}")
        missing = set(FFMPEG_LIBRARIES) - {entry.split(".so")[0].removeprefix("lib") for entry in links}
        if missing:
            sys.exit(f"{av_wheel.name}: no FFmpeg library named {sorted(missing)}")
        with tarfile.open(target, "w:xz") as archive:
            archive.add(lib, arcname="lib")
    return links


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".whl"))
    parser.add_argument("--python", default="3.12", help="that machine's Python (major.minor)")
    parser.add_argument("--torchcodec", default=pinned_torchcodec(),
                        help="default: the version pyproject.toml pins")
    parser.add_argument("--av", default="15.1.0", help="the PyAV release whose FFmpeg torchcodec supports")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in [*args.out.glob("*.whl"), args.out / "ffmpeg-libs.tar.xz"]:
        stale.unlink(missing_ok=True)  # one version of each, or pip refuses the whole install there
    download([f"torchcodec=={args.torchcodec}", *PURE], args.python, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        (av_wheel,) = download([f"av=={args.av}"], args.python, Path(tmp))
        links = pack_ffmpeg_libraries(av_wheel, args.out / "ffmpeg-libs.tar.xz")
    for line in links:
        print(line)
    total = 0
    for path in sorted(args.out.iterdir()):
        total += path.stat().st_size
        print(f"{path.stat().st_size / 2**20:8.1f} MiB  {path.name}")
    print(f"{total / 2**20:8.1f} MiB in {args.out}")


if __name__ == "__main__":
    main()
