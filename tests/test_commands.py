"""Nothing left behind: every command that the code or the docs tell a user to run exists and answers
``--help``, and every mi_bridge module that a docstring, comment or doc names exists."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import once_per_ci

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    *sorted((ROOT / "mi_bridge").rglob("*.py")),
    *sorted((ROOT / "docs").rglob("*.md")),
    ROOT / "README.md",
    *sorted((ROOT / "analyses").glob("*.py")),
    *sorted((ROOT / "benchmarks").glob("*.py")),
]
COMMAND = re.compile(r"python3? -m (mi_bridge(?:\.\w+)+)")
NAME = re.compile(r"\bmi_bridge(?:\.\w+)+")


def told_commands() -> list[str]:
    return sorted({m for path in TEXTS for m in COMMAND.findall(path.read_text())})


def resolves(dotted: str) -> bool:
    """Whether ``mi_bridge.a.b.c`` is a module, or a name defined at the top of the longest module prefix
    (read as text: nothing is imported)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                rest = parts[cut:]
                if not rest:
                    return True
                text = path.read_text()
                name = rest[0]  # defined at the top, imported there, or a lazy public name ("name": "module")
                top = rf"(?m)^(?:def|class) {name}\b|^{name}\b\s*[:=]|^from \S+ import .*\b{name}\b|^\s+\"{name}\":"
                return bool(re.search(top, text))
    return False


@once_per_ci
@pytest.mark.parametrize("module", told_commands())
def test_every_command_users_are_told_to_run_answers_help(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, f"python -m {module} --help: {done.stderr[-800:]}"
    assert "usage" in done.stdout.lower()


def test_every_module_a_text_names_exists():
    missing = {}
    for path in TEXTS:
        for name in set(NAME.findall(path.read_text())):
            if not resolves(name.rstrip(".")):
                missing.setdefault(name, str(path.relative_to(ROOT)))
    assert not missing, f"named but absent: {missing}"


def test_every_report_under_docs_is_current_or_says_which_version_made_it():
    for report in sorted((ROOT / "docs").rglob("report.md")):
        text = report.read_text()
        current = any(label in text for label in ("transfer helps", "no transfer", "untestable here"))
        # an analysis's report: its own verdict labels, beside the site diagnosis every analysis carries
        current |= "**Site: " in text and any(
            f"**Verdict: {label}" in text for label in ("supported", "not supported", "inconclusive")
        )
        assert current or text.startswith("> **Produced by"), report.relative_to(ROOT)
