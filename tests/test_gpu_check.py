"""The one-call GPU check on a machine without a GPU: both shell scripts parse, the script's real
installation step installs a carried wheel and its results come back under $OUT, and its Python parts
run on the CPU at a tiny size (``benchmarks/gpu_check.sh --dry-run`` runs every step; it takes minutes)."""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks import gpu_bench
from tests.conftest import once_per_ci, tl3_only

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_wheels.sh"])
def test_the_scripts_parse(script):
    done = subprocess.run(
        ["bash", "-n", str(REPOSITORY / "benchmarks" / script)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_no_step_hands_a_shell_function_to_timeout():
    """`timeout` runs executables only: `step NAME LIMIT FIGURES SIZE install` would run coreutils'
    /usr/bin/install, not the script's function, and install nothing."""
    script = (REPOSITORY / "benchmarks" / "gpu_check.sh").read_text()
    functions = set(re.findall(r"^(\w+)\(\) \{", script, re.MULTILINE))
    assert "install_wheels" in functions and "install" not in functions
    calls = re.findall(r'^step (\S+) (\d+) ("[^"]*"|\S+) ("[^"]*"|\S+) (\S+)', script, re.MULTILINE)
    assert len(calls) >= 7
    for name, _, _, _, command in calls:
        assert command.strip('"') not in functions | {"install"}, f"step {name} runs {command}"
    assert 'step install 50 "" "" bash -c install_wheels' in script
    assert "export -f install_wheels" in script
    assert not re.search(r"^\s*(export )?OUT=", script, re.MULTILINE), "the tool's $OUT is reassigned"


def _probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, gpucheck_probe 0.0.1."""
    folder.mkdir(parents=True)
    wheel = folder / "gpucheck_probe-0.0.1-py3-none-any.whl"
    info = "gpucheck_probe-0.0.1.dist-info"
    files = {
        "gpucheck_probe/__init__.py": "VALUE = 42\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: gpucheck-probe\nVersion: 0.0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n")
    return wheel


def dry_run_check(tmp_path, *, wheels: str, only: str, timeout: int, **settings: str):
    """``gpu_check.sh --dry-run`` on the steps in ``only``, with $OUT, its work folder and its wheels folder
    under ``tmp_path``."""
    env = os.environ | {
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "GPU_CHECK_WHEELS": str(tmp_path / wheels),
        "GPU_CHECK_ONLY": only,
        **settings,
    }
    return subprocess.run(
        ["bash", str(REPOSITORY / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@once_per_ci
def test_the_real_install_step_installs_a_carried_wheel_and_the_results_come_back_in_out(tmp_path):
    """The dry run's install step is the GPU run's (the same line, the real function): one pip call for
    the missing wheels, the imports, `pip check`; results_gpu.json and the log bundle land in $OUT."""
    _probe_wheel(tmp_path / "wheels")
    out, work = tmp_path / "out", tmp_path / "work"
    done = dry_run_check(tmp_path, wheels="wheels", only="install", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (work / "logs" / "install.log").read_text()
    assert (work / "site" / "gpucheck_probe" / "__init__.py").is_file(), log
    assert "to install: 1" in log and "imports ok" in log and "pip check" in log
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check_logs.tar.gz",
        "results_gpu.json",
        "steps.jsonl",
        "summary.txt",
    ]
    results = json.loads((out / "results_gpu.json").read_text())
    assert results["dry_run"] is True and "gpu_name" in results
    assert [(s["name"], s["exit_code"]) for s in results["steps"]] == [("install", 0)]
    assert re.search(r"^install +0 +\d", done.stdout, re.MULTILINE), done.stdout  # the printed summary
    assert (out / "summary.txt").read_text() in done.stdout
    assert not (out / "hf").exists() and not (out / "cache").exists()  # caches stay outside $OUT


@pytest.mark.slow
@tl3_only  # the benchmark's Pythia architectures are HookedTransformers
def test_the_measurements_run_at_a_tiny_size_and_are_collected(tmp_path):
    assert gpu_bench.main(["caches", "--hf-home", str(tmp_path / "hf"), "--tiny"]) == 0
    for name in gpu_bench.PYTHIA_CONFIGS:
        assert (tmp_path / "hf" / "hub" / f"models--EleutherAI--{name}" / "refs" / "main").is_file()
    record = tmp_path / "kernels.json"
    assert gpu_bench.main(["kernels", "--device", "cpu", "--tiny", "--record", str(record)]) == 0
    figures = json.loads(record.read_text())
    assert figures["matmul_peak"]["flops"] > 0 and figures["condition_sweep"]["naive_s"] > 0
    assert figures["pythia_estimate"]["seconds_per_token_layer"]
    assert (
        figures["condition_sweep"]["max_abs_logit_diff"] < 1e-3
    )  # the sweep's logits equal the naive loop's
    steps = tmp_path / "steps.jsonl"
    steps.write_text(
        json.dumps({"name": "kernels", "wall_s": 1.5, "exit_code": 0, "figures": str(record)}) + "\n"
    )
    out = tmp_path / "results_gpu.json"
    assert gpu_bench.main(["collect", "--steps", str(steps), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) >= {"gpu_name", "steps"} and results["steps"][0]["figures"] == figures
    assert "kernels" in gpu_bench.summary(results)


def test_a_step_past_the_checks_budget_is_skipped_and_recorded(tmp_path):
    done = dry_run_check(
        tmp_path, wheels="no-wheels", only="install,seed_protocol", timeout=120, GPU_CHECK_BUDGET="0"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "out" / "results_gpu.json").read_text())
    steps = {s["name"]: s for s in results["steps"]}
    assert set(steps) == {"install", "seed_protocol"}
    assert all(s["exit_code"] is None for s in steps.values())
    assert steps["seed_protocol"]["size"].startswith("dry run: 3 of 396 items")
