"""The package's layout is its architecture: the import rule between subpackages, and small modules."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mi_bridge"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 400
FLOORS = (
    ("errors",),
    ("config", "families", "seeds", "stats", "files"),
    ("runtime",),
    ("core",),
    ("models",),
    ("bridges", "report"),
    ("protocols",),
    ("analyses", "run", "sweep", "sweep_summary", "calibrate", "api", "cli", "cache", "grid", "run_folder"),
)
"""The package's floors, bottom first: a module imports from its own floor and the floors below, never
from one above (the commands and the analyses share the top floor). ``errors`` imports nothing."""
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}


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


def floor_of(module: str) -> int | None:
    parts = module.split(".")
    return FLOOR.get(parts[1]) if len(parts) > 1 else None


def test_every_subpackage_and_module_has_a_floor():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in MODULES}
    assert tops - {"__init__", "__main__"} <= set(FLOOR), sorted(tops - set(FLOOR))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_import_rule(path):
    name = module_name(path)
    imported = imports(path)
    if name.startswith("mi_bridge.protocols.split"):
        assert not any(i.startswith("mi_bridge.protocols.seed") for i in imported), imported
    if name.startswith("mi_bridge.protocols.seed"):
        assert not any(i.startswith("mi_bridge.protocols.split") for i in imported), imported
    if name == "mi_bridge.errors":
        assert not imported, f"errors is a leaf, yet imports {sorted(imported)}"
    own = floor_of(name)
    if own is None:
        return
    upward = {i for i in imported if (floor_of(i) or 0) > own}
    assert not upward, f"{name} (floor {own}) imports from a floor above: {sorted(upward)}"


def test_the_floors_catch_core_importing_models(tmp_path):
    bad = PACKAGE / "core" / "evaluate.py"
    found = imports(bad) | {"mi_bridge.models.loading"}
    assert any((floor_of(i) or 0) > floor_of("mi_bridge.core.evaluate") for i in found)
    assert floor_of("mi_bridge.models.backends") > floor_of("mi_bridge.core.capture")
    assert floor_of("mi_bridge.runtime.kv_cache") < floor_of("mi_bridge.core.capture")


def test_the_import_rule_catches_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mi_bridge.protocols.seed.experiment import CONDITIONS\n")
    assert "mi_bridge.protocols.seed.experiment" in imports(bad)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_small(path):
    n_lines = len(path.read_text().splitlines())
    assert n_lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {n_lines} lines (at most {MAX_LINES})"


def test_every_protocol_in_the_registry_implements_the_interface():
    from mi_bridge.config import PROTOCOLS
    from mi_bridge.protocols.base import Protocol, get_protocol

    for name in PROTOCOLS:
        protocol = get_protocol(name)
        assert isinstance(protocol, Protocol) and protocol.name == name
