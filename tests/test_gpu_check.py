"""The one-call GPU check on a machine without a GPU: both shell scripts parse, and its Python parts run
on the CPU at a tiny size (``benchmarks/gpu_check.sh --dry-run`` runs every step; it takes minutes)."""

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks import gpu_bench

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_wheels.sh"])
def test_the_scripts_parse(script):
    done = subprocess.run(
        ["bash", "-n", str(REPOSITORY / "benchmarks" / script)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
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
