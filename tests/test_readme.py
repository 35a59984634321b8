"""The README's examples run as shown.

Every ``$ genretag …`` line of the README's ```console blocks runs, in the README's order, through a real
``genretag`` process and a shell (so ``~``, pipes and comments mean what they mean to a reader), in a
temporary folder that holds the quick start's ``demo`` library. The process has its own HOME (where
``~/models/mine`` is a tiny checkpoint from tests/models.py and ``~/Music`` a copy of the demo), its own
GENRETAG_HOME (index, model registry) and no network. Each line must exit 0, the README's exit code for
"every file processed". A line whose comment says ``# needs: WHAT`` needs what the suite cannot give
(a cluster, a GPU, a dataset, the network) and is skipped with that reason.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models import make_tiny_wav2vec2

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
NEEDS = re.compile(r"#\s*needs:\s*(?P<what>.+?)\s*$")
QUICK_START = [
    "bash .ci/setup && .venv/bin/genretag demo-library demo && .venv/bin/genretag scan demo --dry-run",
    "bash .ci/setup && .venv/bin/python -m pytest",
]


def console_lines(text: str) -> list[str]:
    """The ``$ …`` lines of the ```console blocks, without the prompt."""
    lines, fence = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
        elif fence == "console" and line.startswith("$ "):
            lines.append(line[2:])
    return lines


COMMANDS = [line for line in console_lines(README.read_text(encoding="utf-8")) if line.startswith("genretag ")]


def test_the_readme_has_examples_to_check():
    """A change to the README's layout that hid its examples from this test fails here, not silently."""
    assert len(COMMANDS) >= 8
    assert any(NEEDS.search(line) for line in COMMANDS)  # the skip marker is recognised


def test_the_quick_start_commands_are_the_ones_ci_runs():
    """The quick start's two commands stay as they are, and `.ci/run` ends with the second one."""
    assert console_lines(README.read_text(encoding="utf-8"))[:2] == QUICK_START
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == QUICK_START[1]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A reader's machine: a folder with the demo library, a home of its own, an empty index."""
    root = tmp_path_factory.mktemp("readme")
    work, home, bin_dir = root / "work", root / "home", root / "bin"
    for folder in (work, home, bin_dir):
        folder.mkdir()
    genretag = bin_dir / "genretag"  # the console script, for this interpreter and this checkout
    genretag.write_text(f"#!{sys.executable}\nimport sys\nfrom tagger.cli import main\nsys.exit(main())\n")
    genretag.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENRETAG_")}
    env.update(HOME=str(home), GENRETAG_HOME=str(root / "genretag-home"), HF_HUB_OFFLINE="1",
               PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    made = subprocess.run(["genretag", "demo-library", "demo"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    shutil.copytree(work / "demo", home / "Music")
    make_tiny_wav2vec2(home / "models" / "mine")
    return work, env


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{i:02d}" for i in range(len(COMMANDS))])
def test_readme_command_runs_as_shown(session, command):
    """The README's commands run in its order and share one index, as they would for a reader."""
    if needs := NEEDS.search(command):
        pytest.skip(f"needs {needs['what']}")
    work, env = session
    done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"$ {command}\nexit status {done.returncode}\n{done.stderr[-3000:]}"
