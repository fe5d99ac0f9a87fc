"""The default install's speed: TransformerLens 4 against 3.9, and batched, cached greedy decoding.

    .venv/bin/python -m benchmarks.decoding                 # every section, both environments
    .venv/bin/python -m benchmarks.decoding --sections toy throughput

Each environment is a Python with its own TransformerLens (``--tl3 .venv/bin/python``, ``--tl4
.venv-tl4/bin/python``: the README's two installs); every measurement runs in a fresh process of that
Python, back to back, so each ratio compares two numbers of this one run on this one machine.

- ``toy``: the default toy run (``python -m mi_bridge.run``, empty activation cache), wall seconds.
- ``seed``: ``--protocol seed`` on the released items (396 by default), every condition, with generation,
  on a random-weight Pythia-14m -> 31m Hugging Face cache built offline; wall seconds and the split
  between prefill, decoding, bridge fitting and the rest. Random weights never end an answer early, so
  every answer runs all ``max_new_tokens``. ``--baseline-rev`` also runs the code of that git revision
  (before batched decoding) on ``--baseline-items`` items, for the per-item ratio.
- ``throughput``: new tokens per second of ``greedy_generate`` against Hugging Face ``generate`` with the
  same processors (repetition penalty 1.3, 3-gram ban), batch and prompts (the released items' prompts,
  left-padded), on the same model (Pythia-31m architecture, random weights, unprocessed).

Writes ``benchmarks/results_decoding.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent
TOKENIZER_FILE = (
    REPOSITORY / "tests" / "data" / "gpt-neox-20b-tokenizer.json"
)  # never tests.conftest: it moves HF_HOME
PYTHIA_31M = dict(hidden_size=256, intermediate_size=1024, num_attention_heads=8)
"""EleutherAI/pythia-31m's architecture: pythia-14m's (``tests.hf_cache``) twice as wide."""


# ---------------------------------------------------------------------------------------------------------
# Workers: one measurement in this process, its numbers as JSON on the last line of stdout


def offline_cache(hf_home: Path) -> None:
    """Random-weight Pythia-14m and -31m snapshots with the real GPT-NeoX tokenizer, as the tests build."""
    from tests.hf_cache import PYTHIA_14M_CONFIG, build_pythia_cache

    build_pythia_cache(hf_home, TOKENIZER_FILE, "EleutherAI/pythia-14m")
    build_pythia_cache(
        hf_home, TOKENIZER_FILE, "EleutherAI/pythia-31m", config=PYTHIA_14M_CONFIG | PYTHIA_31M
    )


def seed_worker(n_items: int, max_new_tokens: int) -> dict:
    """The seed protocol in process, timed by stage (prefill and decoding inside generation, bridge
    fitting); works on the code of this commit and on that of earlier ones (names patched by module)."""
    import mi_bridge
    import mi_bridge.core.generate as generate
    import mi_bridge.protocols.seed.experiment as experiment

    seconds = {"generation": 0.0, "prefill": 0.0, "fitting": 0.0}

    def timed(module, name: str, key: str, count=lambda *a, **k: True) -> None:
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if count(*args, **kwargs):
                    seconds[key] += time.perf_counter() - start

        setattr(module, name, wrapper)

    timed(experiment, "greedy_generate", "generation")
    timed(experiment, "fit_bridges", "fitting")
    if hasattr(generate, "run_tokens"):  # batched decoding: a prefill is a call over more than one position
        timed(generate, "run_tokens", "prefill", count=lambda model, tokens, *a, **k: tokens.shape[1] > 1)
    start = time.perf_counter()
    result = mi_bridge.run_experiment(
        "pythia",
        protocol="seed",
        sender="pythia-14m",
        receiver="pythia-31m",
        n_items=n_items,
        seeds=1,
        max_new_tokens=max_new_tokens,
        device="cpu",
    )
    wall = time.perf_counter() - start
    n = next(c["n"] for c in result.results["conditions"] if c["name"] == "no injection")
    split = {  # an earlier revision has no separate prefill call: its generation is not split
        "prefill_s": seconds["prefill"] if hasattr(generate, "run_tokens") else None,
        "decoding_s": seconds["generation"] - seconds["prefill"] if hasattr(generate, "run_tokens") else None,
        "fitting_s": seconds["fitting"],
        "other_s": wall - seconds["generation"] - seconds["fitting"],
    }
    return {"wall_s": wall, "n_items": n, "generation_s": seconds["generation"], **split}


def throughput_worker(batch: int, new_tokens: int, repeats: int) -> dict:
    """New tokens per second: ``greedy_generate`` against Hugging Face ``generate``, same everything."""
    import torch
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    from mi_bridge.core.generate import greedy_generate, left_pad
    from mi_bridge.protocols.seed.experiment import encode
    from mi_bridge.protocols.seed.task import load_eval, prompt
    from mi_bridge.runtime.backend import BACKEND
    from tests.hf_cache import PYTHIA_14M_CONFIG, build_pythia_cache

    home = Path(os.environ["HF_HOME"])
    folder = build_pythia_cache(home, TOKENIZER_FILE, "bench/31m", config=PYTHIA_14M_CONFIG | PYTHIA_31M)
    hf = GPTNeoXForCausalLM.from_pretrained(folder).eval()  # HF's default attention, as a user gets it
    tokenizer = AutoTokenizer.from_pretrained(folder, add_bos_token=True)
    model = BACKEND.from_hf(copy.deepcopy(hf), tokenizer, name=str(folder), processing=False)
    prompts = encode(tokenizer, [prompt(item) for item in load_eval()[:batch]])
    tokens, mask = left_pad(prompts, pad_id=tokenizer.pad_token_id or 0)

    def ours():
        return greedy_generate(model, prompts, max_new_tokens=new_tokens, eos_token_id=None)

    def theirs():
        with torch.no_grad():
            out = hf.generate(
                tokens,
                attention_mask=mask.long(),
                do_sample=False,
                repetition_penalty=1.3,
                no_repeat_ngram_size=3,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=tokenizer.pad_token_id or 0,
            )
        return out[:, tokens.shape[1] :].tolist()

    times: dict[str, list[float]] = {"ours": [], "hf": []}
    outputs = {}
    for _ in range(repeats):  # interleaved, medians
        for name, fn in (("ours", ours), ("hf", theirs)):
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
    # HF penalises the padding token too (it is in input_ids); rows without padding must agree exactly
    full_rows = [row for row, p in enumerate(prompts) if len(p) == tokens.shape[1]]
    agree = all(outputs["ours"][row] == outputs["hf"][row] for row in full_rows)
    rate = {name: batch * new_tokens / statistics.median(t) for name, t in times.items()}
    return {
        "transformer_lens": BACKEND.version,
        "batch": batch,
        "new_tokens": new_tokens,
        "prompt_lengths": [min(map(len, prompts)), max(map(len, prompts))],
        "ours_tokens_per_s": rate["ours"],
        "hf_tokens_per_s": rate["hf"],
        "ratio": rate["ours"] / rate["hf"],
        "hf_attention": hf.config._attn_implementation,
        "unpadded_rows_agree": agree,
    }


def worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["seed", "throughput", "version"])
    parser.add_argument("--tree", type=Path, help="import mi_bridge from this source tree")
    parser.add_argument("--items", type=int, default=396)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.tree:
        sys.path.insert(0, str(args.tree))
    sys.path.insert(1 if args.tree else 0, str(REPOSITORY))  # tests.hf_cache
    hf_home = Path(os.environ["HF_HOME"])
    if args.kind == "seed":
        offline_cache(hf_home)
        out = seed_worker(args.items, args.max_new_tokens)
    elif args.kind == "throughput":
        out = throughput_worker(args.batch, args.max_new_tokens, args.repeats)
    else:
        from mi_bridge.runtime.backend import BACKEND

        out = {"transformer_lens": BACKEND.version}
    print(json.dumps(out))


# ---------------------------------------------------------------------------------------------------------
# The orchestrator: each measurement in a fresh process of each environment, back to back


def fresh(python: str, args: list[str], env: dict | None = None) -> tuple[float, str]:
    """Wall seconds of ``python args`` in a fresh process with an empty HF home and activation cache."""
    with tempfile.TemporaryDirectory() as tmp:
        environ = os.environ | {
            "HF_HOME": str(Path(tmp) / "hf"),
            "HF_HUB_OFFLINE": "1",
            "MI_BRIDGE_CACHE": str(Path(tmp) / "cache"),
            "TOKENIZERS_PARALLELISM": "false",
        }
        environ |= env or {}
        start = time.perf_counter()
        done = subprocess.run(
            [python, *[a.replace("{tmp}", tmp) for a in args]],
            cwd=REPOSITORY,
            env=environ,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{python} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def measure(python: str, kind: str, *extra: str, tree: Path | None = None) -> dict:
    args = [str(HERE / "decoding.py"), "worker", kind, *extra] + (["--tree", str(tree)] if tree else [])
    wall, stdout = fresh(python, args)
    return json.loads(stdout.strip().splitlines()[-1]) | {"process_s": wall}


def baseline_tree(rev: str, folder: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), rev], cwd=REPOSITORY, check=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        worker(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tl3", default=str(REPOSITORY / ".venv" / "bin" / "python"))
    parser.add_argument("--tl4", default=str(REPOSITORY / ".venv-tl4" / "bin" / "python"))
    parser.add_argument("--sections", nargs="+", default=["toy", "throughput", "seed"])
    parser.add_argument("--items", type=int, default=396, help="seed-protocol items (396: all released)")
    parser.add_argument("--baseline-rev", help="also run the seed protocol on this git revision's code")
    parser.add_argument("--baseline-items", type=int, default=12, help="items of the same-items comparison")
    parser.add_argument("--out", type=Path, default=HERE / "results_decoding.json")
    args = parser.parse_args(argv)
    envs = {name: python for name, python in (("tl3", args.tl3), ("tl4", args.tl4)) if Path(python).exists()}
    results: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_before": os.getloadavg()},
        "versions": {name: measure(python, "version")["transformer_lens"] for name, python in envs.items()},
    }
    if "toy" in args.sections:
        toy = {
            name: fresh(python, ["-m", "mi_bridge.run", "--out", "{tmp}/run"])[0]
            for name, python in envs.items()
        }
        results["toy_default_run"] = toy | _ratio(toy)
    if "throughput" in args.sections:
        results["decoding_throughput"] = {
            name: measure(python, "throughput") for name, python in envs.items()
        }
    if "seed" in args.sections:
        seed = {name: measure(python, "seed", "--items", str(args.items)) for name, python in envs.items()}
        results["seed_protocol"] = seed | _ratio({name: r["wall_s"] for name, r in seed.items()})
        if args.baseline_rev:  # the code before this change and this code, on the same items
            n = str(args.baseline_items)
            with tempfile.TemporaryDirectory() as tmp:
                tree = baseline_tree(args.baseline_rev, Path(tmp) / "tree")
                try:
                    before = measure(args.tl3, "seed", "--items", n, tree=tree)
                finally:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPOSITORY)
            after = measure(args.tl3, "seed", "--items", n)
            results["seed_protocol_same_items"] = {
                "revision": args.baseline_rev,
                "before": before,
                "after": after,
                "wall_speedup": before["wall_s"] / after["wall_s"],
                "generation_speedup": before["generation_s"] / after["generation_s"],
            }
            if "tl3" in seed:  # per item: the earlier code at n items, this code at all of them
                per_item = lambda r: r["wall_s"] / r["n_items"]
                results["seed_protocol"]["wall_per_item_speedup_tl3"] = per_item(before) / per_item(
                    seed["tl3"]
                )
    results["machine"]["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


def _ratio(by_env: dict[str, float]) -> dict:
    return {"tl4_over_tl3": by_env["tl4"] / by_env["tl3"]} if {"tl3", "tl4"} <= set(by_env) else {}


if __name__ == "__main__":
    sys.exit(main())
