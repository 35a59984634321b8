"""The package's shape: sub-packages group the model back ends, the tag files and the reporting, and no
two modules import each other (lazy imports inside functions included), so each can be read and
tested from the modules it builds on."""
from __future__ import annotations

import ast
from pathlib import Path

import tagger

PACKAGE = Path(tagger.__file__).parent


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The tagger modules ``path`` imports anywhere in its body."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    packages = {module_name(p) for p in paths if p.name == "__init__.py"}
    # Importing a package's submodule is not an import of the package's own __init__ code.
    return {module_name(p): imported_modules(p, known) - packages for p in paths}


def test_no_two_modules_import_each_other():
    graph = import_graph()
    cycles = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a in graph.get(b, ())})
    assert cycles == []


def test_model_back_ends_tag_files_and_reporting_have_their_own_sub_packages():
    graph = import_graph()
    for name in ("infer", "musicnn", "attention", "feature_encoder", "fbank", "native", "identity"):
        assert f"tagger.models.{name}" in graph
    for name in ("tags", "formats", "journal"):
        assert f"tagger.tagging.{name}" in graph
    for name in ("report", "render", "views", "commands"):
        assert f"tagger.reporting.{name}" in graph
    top_level = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top_level) <= 16, top_level
    assert (PACKAGE / "models" / "kernels" / "banded_max.c").is_file()


def test_public_api_is_stable():
    from tagger import ScanSettings, Tagger, tag_folder

    assert callable(tag_folder) and isinstance(Tagger, type) and ScanSettings().top_k == 1
