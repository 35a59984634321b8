"""The GPU checks' kit carries the torchcodec that genretag's install pins and its tests run on."""
from __future__ import annotations

from importlib.metadata import version

import pytest

from bench.device_kit import pinned_torchcodec


def test_kit_torchcodec_is_the_installed_pin():
    assert pinned_torchcodec() == version("torchcodec")


def test_a_project_without_the_pin_is_refused(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["torch==2.14.1", "torchcodec>=0.14"]\n')
    with pytest.raises(SystemExit, match="no torchcodec==VERSION"):
        pinned_torchcodec(pyproject)
