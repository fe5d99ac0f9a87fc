"""An ordinary (non-editable) install works: the wheel holds every subpackage, the analyses, the toy pair's
weights and the seed paper's data, and its commands run from a folder that is not the checkout."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import once_per_ci

ROOT = Path(__file__).resolve().parents[1]
pytestmark = once_per_ci
TINY = ["--n-items", "40", "--seeds", "1", "--n-bootstrap", "100", "--no-cache"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout, unpacked as site-packages would hold it."""
    build = tmp_path_factory.mktemp("wheel")
    source = build / "source"  # a copy: setuptools writes build/ and egg-info into the tree it builds
    ignore = shutil.ignore_patterns(".git", ".venv", "wheels", "runs", "build", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, source, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip, "-w", str(build)], check=True, cwd=build)
    (wheel,) = build.glob("mi_bridge-*.whl")
    site = build / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return site


def run_installed(site: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = os.environ | {
        "PYTHONPATH": str(site),
        "MI_BRIDGE_CACHE": str(cwd / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_the_wheel_holds_the_package_data_and_the_analyses(installed):
    package = installed / "mi_bridge"
    assert list((package / "models" / "toy_models").glob("*/model.safetensors"))
    assert (package / "data" / "seed_paper" / "LICENSE").is_file()
    assert (package / "analyses" / "layer_sweep.py").is_file()
    assert (package / "protocols" / "seed" / "experiment.py").is_file()


@pytest.mark.slow
def test_run_sweep_and_every_analysis_run_from_the_wheel(installed, tmp_path):
    where = run_installed(installed, tmp_path, "-c", "import mi_bridge; print(mi_bridge.__file__)")
    assert where.stdout.strip().startswith(str(installed)), where.stdout + where.stderr  # not the checkout
    run = run_installed(installed, tmp_path, "-m", "mi_bridge.run", *TINY, "--out", "run")
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "run" / "results.json").is_file()
    sweep = run_installed(
        installed,
        tmp_path,
        "-m",
        "mi_bridge.sweep",
        "--local",
        "--receiver-layer",
        "0-1",
        *TINY,
        "--out",
        "sweep",
    )
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    analyses = run_installed(
        installed,
        tmp_path,
        "-m",
        "mi_bridge.analyses",
        "all",
        *TINY,
        "--curve-sizes",
        "20,40",
        "--train-steps",
        "20",
        "--out",
        "an",
    )
    assert analyses.returncode == 0, analyses.stderr[-2000:]
    assert (tmp_path / "an" / "report.md").is_file()
