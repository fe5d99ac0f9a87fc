"""The Python parts of the one-call GPU check (``benchmarks/gpu_check.sh``): every figure it records.

    python -m benchmarks.gpu_bench caches --hf-home DIR              # random-weight Pythia-160M/-410M
    python -m benchmarks.gpu_bench run --record FILE [--size NOTE] NAME -- ARGS  # mi_bridge.run, timed
    python -m benchmarks.gpu_bench kernels --record FILE             # matmul peak, sweep vs naive, rates
    python -m benchmarks.gpu_bench collect --steps FILE --out FILE [--meta JSON]  # results_gpu.json

``--device cpu --tiny`` runs the same code at a size that takes seconds, so the CPU tests check it; on a
GPU machine the check uses the real Pythia widths (random weights: speed does not depend on the values).
Nothing here reaches a network: the Hugging Face caches are built locally from the published configs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PYTHIA_CONFIGS = {  # EleutherAI's published config.json values that differ between the two models
    "pythia-160m": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
    },
    "pythia-410m": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
    },
}
TINY_SIZES = {"matmul": 256, "items": 8, "repeats": 1}
FULL_SIZES = {"matmul": 8192, "items": 64, "repeats": 3}


def gpu_memory() -> dict:
    """Peak GPU memory since the last reset, in GiB (None off CUDA)."""
    if not torch.cuda.is_available():
        return {"peak_gpu_memory_gib": None}
    return {"peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


def build_caches(hf_home: Path, tiny: bool) -> list[str]:
    """Hugging Face caches of EleutherAI/pythia-160m and -410m with random weights, the shipped GPT-NeoX
    tokenizer and the published configs (``tiny``: pythia-14m's config under both names)."""
    sys.path.insert(0, str(HERE.parent))
    from tests.hf_cache import PYTHIA_14M_CONFIG, build_pythia_cache

    tokenizer = HERE.parent / "tests" / "data" / "gpt-neox-20b-tokenizer.json"
    built = []
    for seed, (name, sizes) in enumerate(PYTHIA_CONFIGS.items()):
        config = PYTHIA_14M_CONFIG if tiny else PYTHIA_14M_CONFIG | sizes
        build_pythia_cache(hf_home, tokenizer, f"EleutherAI/{name}", weights_seed=seed, config=config)
        built.append(name)
    return built


def timed_run(argv: list[str]) -> dict:
    """``python -m mi_bridge.run argv`` in this process: exit code, wall seconds (model loading included)
    and peak GPU memory."""
    from mi_bridge.run import main

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    code = main(argv)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {"argv": argv, "exit_code": code, "in_process_s": time.perf_counter() - start, **gpu_memory()}


@torch.no_grad()
def kernels(device: str, tiny: bool) -> dict:
    """The bf16 matmul peak measured here, the condition sweep against the naive loop, a full forward's
    achieved FLOP/s as a fraction of that peak, and seconds per token-layer at the Pythia widths."""
    from benchmarks import bench
    from benchmarks.pythia_arch import pythia_architecture, pythia_items

    sizes = TINY_SIZES if tiny else FULL_SIZES
    peak_dtype = torch.bfloat16 if device != "cpu" else torch.float32  # bf16 matmul is slow on CPUs
    peak = bench.matmul_peak(sizes["repeats"] + 2, sizes["matmul"], peak_dtype, device)
    names = ("tiny", "tiny") if tiny else ("pythia-160m", "pythia-410m")
    sender, receiver = (pythia_architecture(name, device) for name in names)
    items = pythia_items(sizes["items"])
    repeats = sizes["repeats"]
    out = {"device": device, "matmul_peak": peak}
    out["condition_sweep"] = bench.condition_sweep(
        receiver, items.subset(torch.arange(sizes["items"] // 2)), peak["flops"], repeats
    )
    out["forward_efficiency"] = bench.forward_efficiency(receiver, items, peak["flops"], repeats)
    out["pythia_estimate"] = bench.pythia_estimate(sender, receiver, items, repeats)
    return out | gpu_memory()


def collect(steps: Path, meta: dict | None = None) -> dict:
    """results_gpu.json: the GPU's name, then each step's wall seconds and exit code (one JSON line per
    step, written by gpu_check.sh; null: skipped) with its size ("full" or what ran instead) and the
    figures that step recorded (a step that ended early has none: its figures entry stays a path)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    records = []
    for line in steps.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if line.strip():
                records.append({"name": "?", "unparsed": line})
    for record in records:
        figures = Path(record.get("figures") or "")
        if record.get("figures") and figures.is_file():
            try:
                record["figures"] = json.loads(figures.read_text())
            except json.JSONDecodeError:
                pass
    return {
        "gpu_name": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(meta or {}),
        "steps": records,
    }


def summary(results: dict) -> str:
    """A few lines for the end of the check's output: per step its exit code, wall seconds, in-process
    seconds and peak GPU memory where recorded, and its size where it is not the full one."""
    lines = [f"GPU: {results['gpu_name']}  torch {results['torch']}  CUDA {results['cuda']}"]
    lines.append(
        f"{'step':<26} {'exit':>5} {'wall s':>8} {'limit':>6} {'in-proc s':>9} {'peak GiB':>8}  size"
    )
    for step in results["steps"]:
        figures = step.get("figures") if isinstance(step.get("figures"), dict) else {}
        in_process = figures.get("in_process_s")
        peak = figures.get("peak_gpu_memory_gib")
        code = step.get("exit_code")
        lines.append(
            f"{step.get('name', '?'):<26} {'skip' if code is None else code:>5} "
            f"{step.get('wall_s', 0):>8.1f} {step.get('limit_s', 0):>6} "
            f"{'' if in_process is None else f'{in_process:.1f}':>9} {'' if peak is None else f'{peak:.2f}':>8}"
            f"  {'' if step.get('size', 'full') == 'full' else step['size']}"
        )
    kernel = next((s.get("figures") for s in results["steps"] if s.get("name") == "kernels"), None)
    if isinstance(kernel, dict):
        peak = kernel.get("matmul_peak", {}).get("flops")
        sweep = kernel.get("condition_sweep", {})
        rate = kernel.get("pythia_estimate", {}).get("seconds_per_token_layer")
        lines.append(
            f"kernels: matmul peak {peak} FLOP/s; sweep {sweep.get('fast_s')} s vs naive "
            f"{sweep.get('naive_s')} s; seconds per token-layer {rate}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    caches = commands.add_parser("caches")
    caches.add_argument("--hf-home", type=Path, required=True)
    caches.add_argument("--tiny", action="store_true")
    run = commands.add_parser("run")
    run.add_argument("name")
    run.add_argument("--record", type=Path, required=True)
    run.add_argument("--size", default="full", help="what size ran, when not the full one")
    run.add_argument("args", nargs=argparse.REMAINDER)
    kernel = commands.add_parser("kernels")
    kernel.add_argument("--record", type=Path, required=True)
    kernel.add_argument("--device", default="cuda")
    kernel.add_argument("--tiny", action="store_true")
    gather = commands.add_parser("collect")
    gather.add_argument("--steps", type=Path, required=True)
    gather.add_argument("--out", type=Path, required=True)
    gather.add_argument("--meta", type=json.loads, default={}, help="JSON object merged into the results")
    args = parser.parse_args(argv)
    if args.command == "caches":
        print(json.dumps(build_caches(args.hf_home, args.tiny)))
        return 0
    if args.command == "collect":
        results = collect(args.steps, args.meta)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(summary(results))
        return 0
    if args.command == "run":
        record = {"name": args.name, "size": args.size, **timed_run([a for a in args.args if a != "--"])}
    else:
        record = kernels(args.device, args.tiny)
    args.record.write_text(json.dumps(record, indent=2) + "\n")
    return int(record.get("exit_code", 0))


if __name__ == "__main__":
    sys.exit(main())
