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
    assert floor_of("mi_bridge.models.sources.table") > floor_of("mi_bridge.core.capture")
    assert floor_of("mi_bridge.runtime.kv_cache") < floor_of("mi_bridge.core.capture")


def test_the_import_rule_catches_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mi_bridge.protocols.seed.experiment import CONDITIONS\n")
    assert "mi_bridge.protocols.seed.experiment" in imports(bad)


VERSION_NAMES = {"TL_MAJOR", "TL_VERSION", "HOOKED_TRANSFORMER", "TL3", "TL4"}
"""Names that hold or reveal the TransformerLens version (``runtime.backend`` once defined the first three;
``TL3``/``TL4`` are the backend classes, whose type is the version)."""
BACKEND_VERSION = {"major", "version"}
"""The backend object's attributes that are its version (tests read them for skip markers)."""
DISTRIBUTION = "transformer-lens"


def version_reads(source: str) -> list[str]:
    """Where a module reads the TransformerLens version: a version name or a backend class; the backend
    object's ``major``/``version``; ``transformer_lens.__version__`` under any alias or as an import; the
    ``runtime.tl3``/``tl4`` modules; ``importlib.metadata.version`` of it; or the distribution's name as
    metadata spells it (``transformer-lens``, which only a metadata query needs: through a variable too).
    The package's import name (``transformer_lens``) is not a version read."""
    tree = ast.parse(source)
    aliases = {"transformer_lens"} | {
        alias.asname
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "transformer_lens" and alias.asname
    }
    found = []
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Name) and node.id in VERSION_NAMES:
            found.append(f"{where}: {node.id}")
        elif isinstance(node, ast.alias) and (node.asname or node.name).split(".")[-1] in VERSION_NAMES:
            found.append(f"{where}: import {node.name}")
        elif isinstance(node, ast.Attribute) and node.attr in VERSION_NAMES:
            found.append(f"{where}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in BACKEND_VERSION
            and "BACKEND" in ast.unparse(node.value)
        ):
            found.append(f"{where}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "__version__"
            and ast.unparse(node.value) in aliases
        ):
            found.append(f"{where}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] == "transformer_lens" and "__version__" in {
                a.name for a in node.names
            }:
                found.append(f"{where}: from {node.module} import __version__")
            if node.module in ("mi_bridge.runtime.tl3", "mi_bridge.runtime.tl4") or (
                node.module == "mi_bridge.runtime" and {a.name for a in node.names} & {"tl3", "tl4"}
            ):
                found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.lower() == DISTRIBUTION:  # the distribution's own spelling: only metadata asks it
                found.append(f"{where}: {node.value!r}")
        elif isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in {
            "version",
            "distribution",
        }:
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if any(name.lower().replace("_", "-") == DISTRIBUTION for name in names):
                found.append(f"{where}: {ast.unparse(node)}")
    return found


PLANTED_READS = {
    "name": "from mi_bridge.runtime.backend import TL_MAJOR\n",
    "backend major": "from mi_bridge.runtime.backend import BACKEND\nif BACKEND.major >= 4:\n    pass\n",
    "backend version": "from mi_bridge.runtime import backend\nv = backend.BACKEND.version\n",
    "backend class": "from mi_bridge.runtime.tl4 import TL4\n",
    "isinstance": "import mi_bridge.runtime.backend as b\nok = isinstance(b.BACKEND, b.TL4)\n",
    "dunder": "import transformer_lens\nv = transformer_lens.__version__\n",
    "dunder alias": "import transformer_lens as tl\nv = tl.__version__\n",
    "dunder import": "from transformer_lens import __version__\n",
    "metadata": "from importlib import metadata\nv = metadata.version('transformer_lens')\n",
    "metadata variable": "from importlib import metadata\nTL = 'Transformer-Lens'\nv = metadata.version(TL)\n",
}


@pytest.mark.parametrize("form", PLANTED_READS)
def test_the_version_rule_catches_every_way_of_reading_it(form):
    assert version_reads(PLANTED_READS[form]), form


def test_the_version_rule_leaves_what_is_not_a_version_read_alone():
    fine = (
        "from mi_bridge import __version__\nfrom mi_bridge.runtime.backend import BACKEND\nBACKEND.from_hf\n"
    )
    assert not version_reads(fine)


@pytest.mark.parametrize(
    "path",
    [p for p in MODULES if "runtime" not in p.relative_to(PACKAGE).parts],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_only_runtime_reads_the_transformer_lens_version(path):
    """The version seam is ``runtime`` alone (``runtime.backend.BACKEND``): every other module asks that
    object's methods and never branches on the version itself."""
    assert not version_reads(path.read_text()), f"{path.relative_to(ROOT)} reads the TransformerLens version"


def test_the_version_rule_catches_what_it_forbids():
    planted = (
        "import importlib.metadata\n"
        "import transformer_lens\n"
        "from mi_bridge.runtime.backend import TL_MAJOR\n"
        "from mi_bridge.runtime import backend\n"
        "a = TL_MAJOR < 4\n"
        "b = backend.HOOKED_TRANSFORMER\n"
        "c = transformer_lens.__version__\n"
        "d = importlib.metadata.version('transformer_lens')\n"
        "e = torch.__version__\n"
    )
    assert {line.split(":")[0] for line in version_reads(planted)} == {f"line {n}" for n in (3, 5, 6, 7, 8)}
    assert version_reads((PACKAGE / "runtime" / "backend.py").read_text())  # where it is read, it is caught


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
