"""Project hygiene that a reviewer would check by hand: lint clean, and nothing that unpickles."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "mi_bridge").glob("*.py")) + sorted((ROOT / "analyses").glob("*.py"))


def test_ruff_finds_nothing():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


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
