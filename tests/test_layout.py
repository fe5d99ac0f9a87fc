"""The package's layout is its architecture: the import rule between subpackages, and small modules."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mi_bridge"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 400
LOWER_LAYERS = ("core", "models", "bridges", "report")
"""Subpackages below the protocols: they never import one (nor the analyses or the commands)."""
COMMANDS = ("run", "sweep", "sweep_summary", "calibrate", "api", "cli", "cache", "grid", "run_folder")
"""The command layer: the top-level modules other than config, stats and files."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every mi_bridge module ``path`` imports, at the top or inside a function (a lazy import is an
    import too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "mi_bridge"}


def test_the_layout_has_the_subpackages_the_readme_draws():
    for package in (
        "core",
        "models",
        "bridges",
        "protocols",
        "protocols/split",
        "protocols/seed",
        "report",
        "analyses",
    ):
        assert (PACKAGE / package / "__init__.py").is_file(), package


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_import_rule(path):
    name = module_name(path)
    imported = imports(path)
    if name.startswith("mi_bridge.protocols.split"):
        assert not any(i.startswith("mi_bridge.protocols.seed") for i in imported), imported
    if name.startswith("mi_bridge.protocols.seed"):
        assert not any(i.startswith("mi_bridge.protocols.split") for i in imported), imported
    if name.count(".") and name.split(".")[1] in LOWER_LAYERS:
        upward = {
            i
            for i in imported
            if i.startswith(("mi_bridge.protocols", "mi_bridge.analyses"))
            or i.split(".")[:2] in [["mi_bridge", name] for name in COMMANDS]
        }
        assert not upward, f"{name} imports upward: {sorted(upward)}"


def test_the_import_rule_catches_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mi_bridge.protocols.seed.experiment import CONDITIONS\n")
    assert "mi_bridge.protocols.seed.experiment" in imports(bad)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_small(path):
    n_lines = len(path.read_text().splitlines())
    assert n_lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {n_lines} lines (at most {MAX_LINES})"


def test_every_protocol_in_the_registry_implements_the_interface():
    from mi_bridge.protocols.base import PROTOCOLS, Protocol, get_protocol

    for name in PROTOCOLS:
        protocol = get_protocol(name)
        assert isinstance(protocol, Protocol) and protocol.name == name
