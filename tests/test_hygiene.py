"""Project hygiene that a reviewer would check by hand: lint clean, and nothing that unpickles."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "mi_bridge").rglob("*.py")) + sorted((ROOT / "analyses").glob("*.py"))
"""Every module, in every subpackage (a one-level glob would silently stop checking them)."""


def test_ruff_finds_nothing():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_sources_include_every_subpackage():
    packages = {
        p.parent.relative_to(ROOT / "mi_bridge").as_posix() for p in SOURCES if "mi_bridge" in p.parts
    }
    assert {
        "core",
        "models",
        "bridges",
        "protocols/split",
        "protocols/seed",
        "report",
        "analyses",
    } <= packages


def test_nothing_unpickles():
    unsafe = re.compile(r"\bimport pickle\b|\bpickle\.loads?\(|torch\.load\((?![^)]*weights_only=True)")
    offenders = [
        f"{p.name}:{i}"
        for p in SOURCES
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if unsafe.search(line)
    ]
    assert not offenders, f"unpickling found: {offenders}"
    assert unsafe.search("state = torch.load(path)") and not unsafe.search(
        "torch.load(path, weights_only=True)"
    )


def test_the_transformer_lens_4_constraints_differ_only_in_transformer_lens():
    pins = lambda name: {
        line.split("==")[0]: line
        for line in (ROOT / name).read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    main, tl4 = pins("constraints.txt"), pins("constraints-tl4.txt")
    assert (
        main.pop("transformer-lens").endswith("==3.9.0")
        and tl4.pop("transformer-lens") == "transformer-lens==4.3.0"
    )
    assert main == tl4
