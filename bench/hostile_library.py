"""Build the hostile library and check that ``genretag scan --write-tags`` gets through it.

    python bench/hostile_library.py [--full] [--keep DIR]

The library and the checks live in :mod:`tests.hostile_library` (the test suite runs its quick variant);
this is its command-line entry, for the full 2,053-file variant.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.hostile_library import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
