"""Every default in one place.

The CLI reads its option defaults from :class:`ScanSettings`, and the library takes a ``ScanSettings``
too, so ``genretag scan`` and ``tag_folder()`` can never drift apart.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

WINDOW_SECONDS = 30.0
"""Length of one analysis window: GTZAN clips and the classic genre-tagging recipe use 30 s."""

MIN_DECODED_SECONDS = 0.5
"""Less decodable audio than this is too little to classify: the track fails with a reason."""

AUDIO_EXTENSIONS = frozenset(
    "mp3 flac ogg oga opus m4a m4b mp4 aac wav aiff aif wma ape wv mpc".split()
)
"""Suffixes (lower case, no dot) that discovery treats as audio."""

DEFAULT_MODEL = "builtin:musicnn-msd"

LEVELS = ("leaf", "top", "both")
"""Genre levels a label map ranks at (``--level``): its own genres, top-level genres, or both."""


def data_dir() -> Path:
    """Where the index and the trained-model registry live: ``$GENRETAG_HOME`` or the XDG data dir."""
    if home := os.environ.get("GENRETAG_HOME"):
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(xdg).expanduser() / "genretag"


def default_db_path() -> Path:
    """``$GENRETAG_DB`` or ``<data dir>/index.db``."""
    if db := os.environ.get("GENRETAG_DB"):
        return Path(db).expanduser()
    return data_dir() / "index.db"


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ScanSettings:
    """Options of one scan. Each field's ``help`` is the CLI's help text for the option of that name."""

    model: str | None = _opt(None, "Model: local checkpoint folder, hub id, or builtin:NAME. "
                                   "Default: $GENRETAG_MODEL, else the model chosen with `genretag models "
                                   "use`, else builtin:musicnn-msd.")
    labels: str | None = _opt(None, "Label map (TOML) that renames/drops model labels; "
                                    "default: the model's own map.")
    level: str = _opt("top", "Genre level the label map writes: leaf (the genres it names, e.g. "
                              "'Alternative Rock'), top (top-level genres only, e.g. 'Rock') or both "
                              "(the top-level genre, then its sub-genre where the model is sure of it).")
    write_tags: bool = _opt(False, "Write the predicted genres into the files' tags.")
    dry_run: bool = _opt(False, "Show the planned tag changes; never touch an audio file.")
    db: str | None = _opt(None, "SQLite index file (default: $GENRETAG_DB or ~/.local/share/genretag/index.db).")
    device: str = _opt("auto", "Where the model runs: auto (CUDA if available), cpu or cuda.")
    precision: str = _opt("auto", "Inference precision: auto, fp32, bf16 or fp16 (fp16 on CUDA only).")
    batch_size: int | None = _opt(None, "Windows per inference batch (default: 1 on CPU, 64 on CUDA).")
    max_windows: int = _opt(3, "Most 30 s windows analysed per track, spread over the track.")
    top_k: int = _opt(1, "Most genres written per track.")
    min_confidence: float | None = _opt(None, "Lowest score a genre needs; below it the track is "
                                              "'abstained'. Overrides the model's per-genre thresholds "
                                              "(default: the model's own, else 0.3).")
    workers: int | None = _opt(None, "Decoding threads running ahead of inference (default: 2 when the "
                                     "model runs on the CPU; with CUDA, one per usable CPU core but "
                                     "one, at most 32).")
    concurrent_batches: int | None = _opt(None, "Batches the model works on at once on CPU, each with "
                                                "an equal share of the cores; 1 gives every core to "
                                                "one batch (default: 2 with two or more cores).")
    decode_timeout: float = _opt(120.0, "Seconds one file may take to decode before it is given up "
                                        "as failed (a hung read, a stuck network share); "
                                        "unbounded with --workers 0.")
    rescan: bool = _opt(False, "Ignore the index cache and predict every track again.")
    mode: str = _opt("replace", "How tags are written: replace, merge (add to existing) or fill "
                                "(only files with no genre).")
    provenance: bool = _opt(False, "Also write the model id and score into a GENRETAG tag field.")
    keep_mtime: bool = _opt(False, "Keep each file's modification time when writing tags.")
    verify: bool = _opt(False, "Check that the decoded audio is unchanged after each tag write.")
    separator: str = _opt("; ", "Joins several genres in formats without multi-value fields (ID3v2.3).")
    engine: str = _opt("local", "Where decoding and inference run: local (this process) or ray (a Ray "
                                "cluster; the index and tag writes stay in this process).")
    ray_address: str | None = _opt(None, "Ray cluster for --engine ray: auto (the one `ray start` joined "
                                         "on this machine), HOST:PORT, ray://HOST:10001 or local; "
                                         "default: $RAY_ADDRESS, else auto, else a local cluster "
                                         "started for this scan.")
    num_gpus_per_worker: float = _opt(0.0, "GPUs each Ray inference worker reserves (1: one model per "
                                           "GPU, 0.5: two per GPU); 0 runs inference on CPU workers.")
    ray_inference_workers: int | None = _opt(None, "Ray inference workers, each loading the model once "
                                                   "(default: one per GPU of the cluster, else 1).")

    @classmethod
    def help_for(cls, name: str) -> str:
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)

    def db_path(self) -> Path:
        return Path(self.db).expanduser() if self.db else default_db_path()
