"""One-time conversion of the musicnn 0.1.0 TensorFlow checkpoints to genretag's built-in safetensors.

The PyPI wheel ``musicnn-0.1.0-py3-none-any.whl`` (ISC, Jordi Pons / MTG-UPF) ships TF 1.12 checkpoints
of MSD_musicnn and MTT_musicnn. This script reads them with TensorFlow, renames every variable to the
state-dict name of ``tagger.models.musicnn.Musicnn`` (converting the kernel layouts), and writes
``model.safetensors`` + ``config.json`` per model. TensorFlow is needed here only; genretag never
imports it. The script also avoids torch, so it runs in a throwaway TF-only venv:

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu tf_keras numpy safetensors
    pip download musicnn==0.1.0 --no-deps -d /tmp/musicnn_whl
    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python training/convert_musicnn.py \
        /tmp/musicnn_whl/musicnn-0.1.0-py3-none-any.whl tagger/builtin

The checkpoint prefix is ``<dir>/`` (files ``.index`` and ``.data-00000-of-00001``): the wheel's
``checkpoint`` file points at the author's machine, so the prefix is opened directly.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL_NAME = "musicnn-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
COMMAND = (
    "TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python training/convert_musicnn.py "
    "/tmp/musicnn_whl/musicnn-0.1.0-py3-none-any.whl tagger/builtin"
)

# Tag lists copied from the wheel's musicnn/configuration.py (output order of the final dense layer).
MSD_LABELS = [
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock",
    "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental",
    "punk", "oldies", "blues", "hard rock", "ambient", "acoustic", "experimental", "female vocalist",
    "guitar", "Hip-Hop", "70s", "party", "country", "easy listening", "sexy", "catchy", "funk",
    "electro", "heavy metal", "Progressive rock", "60s", "rnb", "indie pop", "sad", "House", "happy",
]
MTT_LABELS = [
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal",
    "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance",
    "male voice", "female vocal", "beats", "harp", "cello", "no voice", "weird", "country", "metal",
    "female voice", "choral",
]

# Chosen from measurements on real music, see tagger/builtin/PROVENANCE.md ("Default min-confidence").
DEFAULT_MIN_CONFIDENCE = {"musicnn-msd": 0.47, "musicnn-mtt": 0.81}
"""Measured on real music by bench/thresholds.py (see docs/labels.md); a regenerated config keeps them."""
MIN_CONFIDENCE_REASON = {
    "musicnn-msd": "Compared with the best genre's score: the mean sigmoid probability over the track's windows, a parent genre taking the highest of its sub-genres' (so the same at every --level). Picked by bench/thresholds.py on 50 real GTZAN clips (../shared/gtzan-dev) and 19 synthetic silence/noise clips: the lowest threshold that stays 0.02 above every silence/noise clip's best score (0.446: brown noise as Ambient) and keeps precision >= 0.80 from 0.02 below it up. At 0.47 with --top-k 1, 24% of the clips get a genre and 83% of those are right (10 of 12); every silence/noise clip abstains. The earlier 0.40 (set from synthetic signals only) gave 28% at 79% and tagged 3 of the 19 noise clips. Override with --min-confidence.",
    "musicnn-mtt": "Compared with the best genre's score: the mean sigmoid probability over the track's windows, a parent genre taking the highest of its sub-genres' (so the same at every --level). Picked by bench/thresholds.py on 50 real GTZAN clips (../shared/gtzan-dev) and 19 synthetic silence/noise clips, by the rule that gave musicnn-msd 0.47: the lowest threshold 0.02 above every silence/noise clip's best score (0.271) that keeps precision >= 0.80 from 0.02 below it up. MagnaTagATune has no blues, hip-hop, jazz or reggae label and answers such clips confidently wrong (jazz as Classical up to 0.75, metal as Rock up to 0.78), so precision stays between 0.29 and 0.62 at every threshold up to 0.78; at 0.81 only unmistakable classical music is tagged (1 of the 50 clips, right). --min-confidence 0.30, the lowest threshold at which noise abstains, tags 46% of the clips at 35% precision (39% with --level top).",
}

MODELS = {
    "musicnn-msd": ("musicnn/MSD_musicnn/", MSD_LABELS, "Million Song Dataset (last.fm top-50 tags)"),
    "musicnn-mtt": ("musicnn/MTT_musicnn/", MTT_LABELS, "MagnaTagATune (top-50 tags)"),
}

# TF variable scope -> tagger.models.musicnn.Musicnn module path, in the order the TF graph creates them.
CONVS = {
    "conv2d": "timbral74.conv",
    "conv2d_1": "timbral77.conv",
    "conv2d_2": "temporal128.conv",
    "conv2d_3": "temporal64.conv",
    "conv2d_4": "temporal32.conv",
    "conv2d_5": "mid1.conv",
    "conv2d_6": "mid2.conv",
    "conv2d_7": "mid3.conv",
}
BATCH_NORMS = {
    "batch_normalization": "input_bn",
    "batch_normalization_1": "timbral74.bn",
    "batch_normalization_2": "timbral77.bn",
    "batch_normalization_3": "temporal128.bn",
    "batch_normalization_4": "temporal64.bn",
    "batch_normalization_5": "temporal32.bn",
    "batch_normalization_6": "mid1.bn",
    "batch_normalization_7": "mid2.bn",
    "batch_normalization_8": "mid3.bn",
    "batch_normalization_9": "pool_bn",
    "batch_normalization_10": "dense_bn",
}
DENSES = {"dense": "dense", "dense_1": "classifier"}
BN_FIELDS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
MIDEND_CONVS = {"conv2d_5", "conv2d_6", "conv2d_7"}


def convert_variable(tf_name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """Map one TF variable to (torch state-dict key, array in torch layout)."""
    scope, field = tf_name.split("/")
    if scope in BATCH_NORMS:
        return f"{BATCH_NORMS[scope]}.{BN_FIELDS[field]}", value
    if scope in DENSES:
        # TF dense kernel is [in, out]; nn.Linear wants [out, in].
        return f"{DENSES[scope]}.{field.replace('kernel', 'weight')}", value.T if field == "kernel" else value
    if scope in CONVS:
        key = f"{CONVS[scope]}.{field.replace('kernel', 'weight')}"
        if field == "bias":
            return key, value
        if scope in MIDEND_CONVS:
            # TF treats the mid-end input as a 1-channel image [time, features, 1] with a kernel that
            # spans all features; that is a Conv1d over time with features as channels.
            return key, value[:, :, 0, :].transpose(2, 1, 0)  # [kt, in, out] -> [out, in, kt]
        return key, value.transpose(3, 2, 0, 1)  # [kh, kw, in, out] -> [out, in, kh, kw]
    raise KeyError(f"unexpected checkpoint variable {tf_name!r}")


def is_model_variable(name: str) -> bool:
    """Skip the optimizer state that the checkpoint also holds (Adam moments, beta powers)."""
    return not (name.endswith("/Adam") or name.endswith("/Adam_1") or name.startswith("beta"))


def read_checkpoint(prefix: str) -> dict[str, np.ndarray]:
    """Read every model variable of a TF1 checkpoint, converted to torch names and layouts."""
    import tensorflow as tf  # only here: the rest of the script (and genretag) stays TF-free

    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    names = sorted(n for n in reader.get_variable_to_shape_map() if is_model_variable(n))
    if len(names) != 64:
        raise SystemExit(f"{prefix}: expected 64 model variables, found {len(names)}")
    tensors = dict(convert_variable(n, reader.get_tensor(n)) for n in names)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}


def make_config(name: str, labels: list[str], dataset: str, wheel_sha256: str) -> dict:
    """config.json: everything tagger.models.musicnn needs besides the weights, plus provenance."""
    return {
        "format": "genretag-musicnn/1",
        "name": name,
        "architecture": {"type": "musicnn", "midend_filters": 64, "backend_units": 200,
                         "batchnorm_eps": 0.001},
        "labels": labels,
        "sample_rate": 16000,
        "multi_label": True,
        "mel": {
            "n_fft": 512, "hop_length": 256, "win_length": 512, "window": "hann (periodic)",
            "center": True, "pad_mode": "constant", "power": 2.0, "n_mels": 96, "fmin": 0.0,
            "fmax": 8000.0, "mel_scale": "slaney", "norm": "slaney",
            "log": "log10(10000 * x + 1), each step rounded to float16 where it fits float16",
        },
        "patch": {"frames": 187, "hop_frames": 187, "seconds": 3.0, "incomplete_tail": "dropped"},
        "default_min_confidence": DEFAULT_MIN_CONFIDENCE[name],
        "default_min_confidence_reason": MIN_CONFIDENCE_REASON[name],
        "provenance": {
            "source": f"PyPI wheel {WHEEL_NAME}, {MODELS[name][0]} (TF 1.12 checkpoint)",
            "trained_on": dataset,
            "author": "Jordi Pons, Music Technology Group, Universitat Pompeu Fabra",
            "licence": "ISC (see LICENSE-musicnn.txt)",
            "wheel_sha256": wheel_sha256,
            "conversion_command": COMMAND,
        },
    }


def extract_checkpoints(wheel: Path, dest: Path) -> None:
    """Unzip just the two checkpoint folders (and the licence) from the wheel."""
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if member.startswith(("musicnn/MSD_musicnn/", "musicnn/MTT_musicnn/")) or member.endswith(
                    "LICENSE.md"):
                zf.extract(member, dest)


def write_licence(src: Path, dest: Path) -> None:
    """The ISC licence asks for the notice to travel with copies of the weights."""
    header = (f"The files tagger/builtin/musicnn-msd/ and tagger/builtin/musicnn-mtt/ are converted from the\n"
              f"checkpoints in {WHEEL_NAME} (https://github.com/jordipons/musicnn).\n"
              "Its licence (ISC), copied verbatim from the wheel's musicnn-0.1.0.dist-info/LICENSE.md:\n\n")
    dest.write_text(header + src.read_text(encoding="utf-8").strip() + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help=f"path to {WHEEL_NAME}")
    parser.add_argument("out", type=Path, help="output folder, e.g. tagger/builtin")
    args = parser.parse_args(argv)

    from safetensors.numpy import save_file

    sha = hashlib.sha256(args.wheel.read_bytes()).hexdigest()
    if sha != WHEEL_SHA256:
        raise SystemExit(f"{args.wheel}: sha256 {sha} is not the expected {WHEEL_SHA256}")
    with tempfile.TemporaryDirectory() as tmp:
        extract_checkpoints(args.wheel, Path(tmp))
        for name, (ckpt_dir, labels, dataset) in MODELS.items():
            tensors = read_checkpoint(str(Path(tmp) / ckpt_dir) + "/")
            out = args.out / name
            out.mkdir(parents=True, exist_ok=True)
            # One metadata key only: safetensors writes several in random order, and the file's sha256
            # is the model fingerprint genretag stores with every prediction, so it must be reproducible.
            save_file(tensors, str(out / "model.safetensors"), metadata={"source": f"{WHEEL_NAME} sha256:{sha}"})
            (out / "model.safetensors").chmod(0o644)  # safetensors writes 0600; this is package data
            config = make_config(name, labels, dataset, sha)
            (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
            n_params = sum(v.size for v in tensors.values())
            print(f"{name}: {len(tensors)} tensors, {n_params} values -> {out}")
        write_licence(Path(tmp) / "musicnn-0.1.0.dist-info" / "LICENSE.md", args.out / "LICENSE-musicnn.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
