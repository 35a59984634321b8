"""Where the tests find the read-only data beside the checkout (``../shared``): real-format and broken
audio files, and real music clips. Tests that need them skip where they are absent. ``$GENRETAG_SHARED``
points elsewhere (a worktree, a copy); ``$GENRETAG_MUTAGEN_CORPUS`` and ``$GENRETAG_GTZAN_DEV`` name one
collection each."""
from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(os.environ.get("GENRETAG_SHARED") or Path(__file__).resolve().parents[2] / "shared")
MUTAGEN_CORPUS = Path(os.environ.get("GENRETAG_MUTAGEN_CORPUS") or SHARED / "corpus" / "mutagen-data")
"""mutagen's test files (GPL): 60 real-format and broken audio files, with a MANIFEST."""
GTZAN_DEV = Path(os.environ.get("GENRETAG_GTZAN_DEV") or SHARED / "gtzan-dev")
"""50 real GTZAN clips, 5 per genre, for judging models on music rather than synthetic tones."""
