"""Benchmarks: how close mi_bridge gets to the least work the experiment needs.

    .venv/bin/python benchmarks/bench.py            # every section (about 10 minutes on 2 cores)
    .venv/bin/python benchmarks/bench.py --skip-cold  # without the cold toy run (toy training)

Every comparison is measured in this one process and run, against a naive implementation, with
several repetitions and medians. Pythia architectures use random weights (speed does not depend on
the values). Writes benchmarks/results.json next to this file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mi_bridge.bridge import LinearBridge, Standardizer, ridge_path
from mi_bridge.capture import capture_resid_post
from mi_bridge.evaluate import Condition, condition_logits
from mi_bridge.files import write_text_atomic
from mi_bridge.inject import run_with_injection
from mi_bridge.task import load_neox_tokenizer, pythia_language, sample_items, toy_language
from mi_bridge.toy import load_toy_model

HERE = Path(__file__).resolve().parent
TOKENIZER = HERE.parent.parent / "tests" / "data" / "gpt-neox-20b-tokenizer.json"
PYTHIA = {  # (n_layers, d_model, n_heads): the published Pythia architectures
    "pythia-160m": (12, 768, 12),
    "pythia-410m": (24, 1024, 16),
}
console = Console()


def pythia_architecture(name: str) -> HookedTransformer:
    n_layers, d_model, n_heads = PYTHIA[name]
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=64,
        d_mlp=4 * d_model,
        d_vocab=50304,
        n_ctx=2048,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=16,
        parallel_attn_mlp=True,
        seed=0,
    )
    return HookedTransformer(cfg).eval()


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def pythia_items(n: int):
    if not TOKENIZER.exists():
        raise SystemExit(f"the GPT-NeoX tokenizer is expected at {TOKENIZER}")
    return sample_items(pythia_language(load_neox_tokenizer(TOKENIZER)), k=4, n_items=n, seed=0)


# ---------------------------------------------------------------------------------------------------------


def twelve_conditions() -> list[Condition]:
    conditions = [Condition(f"add a={a:g}", vector="v", mode="add", alpha=a) for a in (0.25, 0.5, 1, 2)]
    conditions += [
        Condition("replace", vector="v", mode="replace"),
        Condition("rescale", vector="v", mode="rescale"),
    ]
    conditions += [
        Condition(f"rescale-add a={a:g}", vector="v", mode="rescale-add", alpha=a) for a in (0.25, 0.5, 1, 2)
    ]
    conditions += [
        Condition("random replace", vector="r", mode="replace"),
        Condition("self replace", vector="s", mode="replace"),
    ]
    return conditions


@torch.no_grad()
def condition_sweep(receiver: HookedTransformer, items, repeats: int) -> dict:
    """K = 12 injection conditions at a mid-depth layer: the evaluator vs one full hooked run each."""
    layer, position = receiver.cfg.n_layers // 2 - 1, items.slot_position
    tokens = items.placeholder_tokens
    d = receiver.cfg.d_model
    g = torch.Generator().manual_seed(0)
    vectors = {key: torch.randn(len(tokens), d, generator=g) * 20 for key in ("v", "r", "s")}
    conditions = twelve_conditions()

    def fast():
        out = {c.name: [] for c in conditions}
        for _, condition, logits in condition_logits(
            receiver,
            {"placeholder": tokens},
            layer=layer,
            position=position,
            vectors=vectors,
            conditions=conditions,
            batch_size=len(tokens),
        ):
            out[condition.name].append(logits)
        return {k: torch.cat(v) for k, v in out.items()}

    def naive():
        return {
            c.name: run_with_injection(
                receiver,
                tokens,
                layer=layer,
                position=position,
                vector=vectors[c.vector],
                mode=c.mode,
                alpha=c.alpha or 1.0,
            )[:, -1].clone()
            for c in conditions
        }

    fast_time, fast_logits = timed(fast, repeats)
    naive_time, naive_logits = timed(naive, repeats)
    max_diff = max(float((fast_logits[k] - naive_logits[k]).abs().max()) for k in fast_logits)
    return {
        "n_items": len(tokens),
        "prompt_tokens": tokens.shape[1],
        "layer": layer,
        "conditions": len(conditions),
        "fast_s": fast_time,
        "naive_s": naive_time,
        "ratio": naive_time / fast_time,
        "max_abs_logit_diff": max_diff,
    }


def matmul_flops(repeats: int = 5, size: int = 2048) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    seconds, _ = timed(lambda: torch.matmul(a, b), repeats)
    return 2 * size**3 / seconds


def forward_flops(model: HookedTransformer, n_tokens_per_row: int, rows: int, logits_rows: int) -> float:
    """Matmul FLOPs of a forward pass over ``rows`` x ``n_tokens_per_row`` tokens (dense layers and
    attention scores), plus the unembedding of ``logits_rows`` positions."""
    cfg = model.cfg
    per_token_layer = (
        2 * (4 * cfg.d_model**2 + 2 * cfg.d_model * cfg.d_mlp) + 4 * n_tokens_per_row * cfg.d_model
    )
    return (
        rows * n_tokens_per_row * cfg.n_layers * per_token_layer + logits_rows * 2 * cfg.d_model * cfg.d_vocab
    )


@torch.no_grad()
def flop_efficiency(receiver: HookedTransformer, items, peak: float, repeats: int) -> dict:
    """Achieved FLOP/s of the receiver's forward pass (the evaluator's building block), logits at the
    answer position only, against the machine's dense matmul FLOP/s."""
    tokens = items.placeholder_tokens
    n_layers = receiver.cfg.n_layers

    def forward():
        final = receiver(tokens, stop_at_layer=n_layers)
        return receiver.unembed(receiver.ln_final(final[:, -1:]))

    seconds, _ = timed(forward, repeats)
    flops = forward_flops(receiver, tokens.shape[1], len(tokens), len(tokens))
    return {
        "tokens": tokens.numel(),
        "seconds": seconds,
        "achieved_flops": flops / seconds,
        "peak_matmul_flops": peak,
        "efficiency": flops / seconds / peak,
    }


@torch.no_grad()
def capture_comparison(repeats: int) -> dict:
    """States for n = 2,000 toy items: mi_bridge's capture vs run_with_cache of every hook."""
    sender, receiver = load_toy_model("toy-sender"), load_toy_model("toy-receiver")
    items = sample_items(toy_language(), k=4, n_items=2000, seed=0)
    layer_s, layer_r = sender.cfg.n_layers - 1, (receiver.cfg.n_layers - 1) // 2

    def fast():
        s = capture_resid_post(sender, items.sender_tokens, layers=[layer_s], positions=[-1], batch_size=256)
        r = capture_resid_post(
            receiver, items.oracle_tokens, layers=[layer_r], positions=[items.slot_position], batch_size=256
        )
        return [s.states[layer_s], r.states[layer_r]]

    def naive():
        caches = []
        for model, tokens in ((sender, items.sender_tokens), (receiver, items.oracle_tokens)):
            for start in range(0, len(tokens), 256):
                caches.append(model.run_with_cache(tokens[start : start + 256])[1])
        return caches

    fast_time, states = timed(fast, repeats)
    fast_bytes = sum(t.numel() * t.element_size() for t in states)
    expected = 2000 * (sender.cfg.d_model + receiver.cfg.d_model) * 4
    naive_time, caches = timed(naive, repeats)
    naive_bytes = sum(t.numel() * t.element_size() for cache in caches for t in cache.values())
    return {
        "n_items": 2000,
        "fast_s": fast_time,
        "naive_s": naive_time,
        "ratio": naive_time / fast_time,
        "fast_bytes": fast_bytes,
        "expected_bytes_n_x_d": expected,
        "exact_n_x_d": fast_bytes == expected,
        "naive_bytes": naive_bytes,
        "bytes_ratio": naive_bytes / fast_bytes,
    }


def bridge_fit(repeats: int) -> dict:
    """Ridge with lambda selection, n = 10,000, 768 -> 1024 (the Pythia-160M -> 410M widths)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, 768, generator=g)
    y = x @ torch.randn(768, 1024, generator=g) / 30 + torch.randn(10_000, 1024, generator=g)
    seconds, bridge = timed(lambda: LinearBridge.fit(x, y), repeats)
    xs, ys = Standardizer.fit(x.double())(x.double()), Standardizer.fit(y.double())(y.double())
    ours = ridge_path(xs, ys, torch.tensor([0.0], dtype=torch.float64))[0]
    reference = torch.linalg.lstsq(xs, ys).solution
    return {
        "n": 10_000,
        "d_in": 768,
        "d_out": 1024,
        "seconds": seconds,
        "ridge_lambda": bridge.ridge_lambda,
        "max_abs_diff_vs_lstsq_at_lambda_0": float((ours - reference).abs().max()),
    }


def whole_runs(skip_cold: bool) -> dict:
    """The toy run cold (models trained) and warm, each a fresh process."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if not skip_cold:
            env["MI_BRIDGE_CACHE"] = str(Path(tmp) / "cache")
        for label in ["cold", "warm"] if not skip_cold else ["warm"]:
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "mi_bridge.run", "--out", str(Path(tmp) / label)],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            out[f"toy_{label}_s"] = time.perf_counter() - start
    return out


@torch.no_grad()
def pythia_estimate(sender, receiver, items, repeats: int) -> dict:
    """Seconds per token-layer at the real widths, and the default Pythia run's cost built from them."""
    rate = {}
    for name, model, tokens in (
        ("sender", sender, items.sender_tokens),
        ("receiver", receiver, items.oracle_tokens),
    ):
        seconds, _ = timed(lambda m=model, t=tokens: m(t, stop_at_layer=m.cfg.n_layers), repeats)
        rate[name] = seconds / (tokens.numel() * model.cfg.n_layers)
    n_items, seeds, n_test, conditions = 1000, 3, 500, 53
    t_s, t_r = items.sender_tokens.shape[1], items.oracle_tokens.shape[1]
    tail = t_r - items.slot_position
    ls, lr = 5, 11
    sender_work = n_items * t_s * (ls + 1 + sender.cfg.n_layers)  # state capture + greedy run
    receiver_work = n_items * t_r * (lr + 1)  # oracle states at the site
    # evaluation: per prompt (3) the shared prefix over all layers, then each condition's tail from L+1
    receiver_work += n_test * (
        3 * t_r * receiver.cfg.n_layers + conditions * tail * (receiver.cfg.n_layers - lr - 1)
    )
    seconds = seeds * (sender_work * rate["sender"] + receiver_work * rate["receiver"])
    return {
        "seconds_per_token_layer": rate,
        "default_pythia_run_estimate_s": seconds,
        "assumptions": f"{seeds} seeds x {n_items} items, {n_test} held out, {conditions} conditions, "
        f"sender L{ls}, receiver L{lr}, prompts {t_s}/{t_r} tokens, tail {tail}",
    }


PYTHIA_RUN_MEMORY = """
import resource, sys, torch
sys.path.insert(0, {here!r})
from bench import pythia_architecture, pythia_items
from mi_bridge.capture import capture_resid_post
from mi_bridge.evaluate import condition_logits, standard_conditions
sender, receiver = pythia_architecture("pythia-160m"), pythia_architecture("pythia-410m")
items = pythia_items(64)
sender_run = capture_resid_post(sender, items.sender_tokens, layers=[5], positions=[-1], with_answer_logits=True)
oracle = capture_resid_post(receiver, items.oracle_tokens, layers=[11], positions=[items.slot_position])
vectors = {{kind: oracle.states[11][:, 0] for kind in ("translated", "random", "shuffled", "mean", "self-patch")}}
prompts = {{"placeholder": items.placeholder_tokens, "relay": items.placeholder_tokens, "oracle": items.oracle_tokens}}
with torch.no_grad():
    for _ in condition_logits(receiver, prompts, layer=11, position=items.slot_position, vectors=vectors,
                              conditions=standard_conditions((0.25, 0.5, 1.0, 2.0)), batch_size=64):
        pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""


def pythia_run_memory() -> float:
    """Peak RSS (GiB) of mi_bridge's own path on the Pythia-160M -> 410M architectures, in a fresh
    process: both models, sender capture with answer logits, receiver states, and all 53 conditions
    on a batch of 64 items (the default batch size)."""
    code = PYTHIA_RUN_MEMORY.format(here=str(HERE))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold toy run (toy training)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }
    console.print("[bold]building random-weight Pythia-160M and -410M architectures[/]")
    sender, receiver = pythia_architecture("pythia-160m"), pythia_architecture("pythia-410m")
    items = pythia_items(64)
    console.print("condition sweep ...")
    results["condition_sweep"] = condition_sweep(receiver, items.subset(torch.arange(32)), args.repeats)
    console.print("FLOP efficiency ...")
    peak = matmul_flops()
    results["flop_efficiency"] = flop_efficiency(receiver, items, peak, args.repeats)
    console.print("Pythia run estimate ...")
    results["pythia_estimate"] = pythia_estimate(sender, receiver, items, args.repeats)
    results["peak_rss_gib_benchmark_process"] = peak_rss_gib()  # includes the naive path's full logits
    del sender, receiver
    console.print("memory of a Pythia-architecture run ...")
    results["peak_rss_gib_pythia_run"] = pythia_run_memory()
    console.print("capture ...")
    results["capture"] = capture_comparison(args.repeats)
    console.print("bridge fit ...")
    results["bridge_fit"] = bridge_fit(args.repeats)
    console.print("whole toy runs ...")
    results["whole_runs"] = whole_runs(args.skip_cold)
    write_text_atomic(HERE / "results.json", json.dumps(results, indent=2) + "\n")
    render(results)
    return 0


def render(r: dict) -> None:
    table = Table(
        title=f"mi_bridge benchmarks ({r['machine']['cpu_count']} cores, {r['machine']['torch_threads']} torch threads)"
    )
    for column in ("measure", "mi_bridge", "naive / reference", "ratio or check", "target"):
        table.add_column(column, justify="right")
    c = r["condition_sweep"]
    table.add_row(
        f"12 conditions, {c['n_items']} items, 410M arch, L{c['layer']}",
        f"{c['fast_s']:.2f} s",
        f"{c['naive_s']:.2f} s",
        f"{c['ratio']:.1f}x, max |Δlogit| {c['max_abs_logit_diff']:.1e}",
        ">= 3x, <= 1e-4",
    )
    f = r["flop_efficiency"]
    table.add_row(
        "410M forward FLOP/s",
        f"{f['achieved_flops'] / 1e9:.1f} GFLOP/s",
        f"{f['peak_matmul_flops'] / 1e9:.1f} GFLOP/s (matmul)",
        f"{f['efficiency']:.2f}",
        ">= 0.7",
    )
    cap = r["capture"]
    table.add_row(
        "capture, 2,000 toy items",
        f"{cap['fast_s']:.2f} s, {cap['fast_bytes'] / 2**20:.1f} MiB",
        f"{cap['naive_s']:.2f} s, {cap['naive_bytes'] / 2**20:.0f} MiB",
        f"{cap['ratio']:.1f}x time, {cap['bytes_ratio']:.0f}x bytes",
        f"n x d exactly: {cap['exact_n_x_d']}",
    )
    b = r["bridge_fit"]
    table.add_row(
        "bridge fit 10k x 768 -> 1024",
        f"{b['seconds']:.2f} s",
        "lstsq at λ=0",
        f"max diff {b['max_abs_diff_vs_lstsq_at_lambda_0']:.1e}",
        "<= 2 s",
    )
    w = r["whole_runs"]
    for key, value in w.items():
        table.add_row(
            key.replace("_s", "").replace("_", " "), f"{value:.1f} s", "", "", "cold <= 300 s, warm <= 60 s"
        )
    p = r["pythia_estimate"]
    table.add_row(
        "Pythia-160M -> 410M default run (estimate)",
        f"{p['default_pythia_run_estimate_s'] / 60:.0f} min",
        "",
        p["assumptions"],
        "",
    )
    table.add_row(
        "peak RSS, Pythia-160M -> 410M architecture run",
        f"{r['peak_rss_gib_pythia_run']:.2f} GiB",
        f"{r['peak_rss_gib_benchmark_process']:.2f} GiB (this process, naive included)",
        "",
        "< 6 GiB",
    )
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
