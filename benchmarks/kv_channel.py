"""Benchmark: KV-fuser training steps per second (issue 34), batched against a naive one-item loop.

    .venv/bin/python -m benchmarks.bench --kv           # the same as: python -m benchmarks.kv_channel
    .venv/bin/python -m benchmarks.bench --kv --pairs toy

One training step is what ``bridges.kv_training.train_kv_source`` does per batch: the sender's cache of
P (no gradients), the fuser's keys and values, the receiver's pass over the delivered prefix and over Q,
the answer's cross-entropy, backward into the fuser alone, one AdamW step. The naive implementation
trains on the same items one at a time (batch 1), as a per-example loop would. Both are measured in this
run, interleaved (batched, naive, batched, ...), medians of ``--repeats``; the ratio is items per second.
SmolLM2 is measured when it has been fetched (python -m mi_bridge.models fetch smollm2-135m). Writes
benchmarks/results_kv.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.bench import stamp
from mi_bridge.bridges.kv import KVLinearBridge, paired_caches
from mi_bridge.bridges.kv_fuser import KVFuser
from mi_bridge.bridges.kv_training import KVItems, answer_loss, frozen
from mi_bridge.config import ExperimentConfig
from mi_bridge.errors import UserError
from mi_bridge.files import write_text_atomic
from mi_bridge.models.loading import load_pair
from mi_bridge.models.task import sample_items
from mi_bridge.runtime.backend import BACKEND

HERE = Path(__file__).parent
BATCH = 16
"""Items per step of the batched loop (``KVOptions.train_batch``'s default)."""


def pair_items(pair_name: str, n_items: int):
    try:
        pair = load_pair(ExperimentConfig(pair=pair_name, device="cpu", n_items=max(n_items, 16)))
    except UserError as err:  # SmolLM2 not fetched: say so and measure the rest
        print(f"{pair_name}: skipped ({err})")
        return None, None
    items = sample_items(pair.language, k=4, n_items=n_items, seed=0)
    p, q = items.sender_tokens, items.placeholder_tokens
    return pair, KVItems(
        p, torch.ones_like(p), q, torch.ones_like(q), items.answer_ids, items.answer_candidates
    )


def steps_per_second(fuser, pair, items: KVItems, batch: int, n_steps: int) -> float:
    optimizer = torch.optim.AdamW(fuser.parameters(), lr=1e-4)
    with frozen(pair.receiver, pair.sender):
        start = time.perf_counter()
        for step in range(n_steps):
            rows = torch.arange(step * batch, (step + 1) * batch) % len(items)
            loss = answer_loss(fuser, pair.receiver, items.rows(rows), pair.sender)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return n_steps / (time.perf_counter() - start)


def measure(pair_name: str, n_items: int, n_steps: int, repeats: int) -> dict | None:
    pair, items = pair_items(pair_name, n_items)
    if pair is None:
        return None
    sender_kv, receiver_kv = paired_caches(pair.sender, pair.receiver, items.sender_tokens)
    bridge = KVLinearBridge.fit(sender_kv, receiver_kv)
    batched, naive = [], []
    before = os.getloadavg()[0]
    for _ in range(repeats):
        batched.append(steps_per_second(KVFuser.from_bridge(bridge), pair, items, BATCH, n_steps))
        naive.append(steps_per_second(KVFuser.from_bridge(bridge), pair, items, 1, n_steps * BATCH // 4))
    fuser = KVFuser.from_bridge(bridge)
    out = {
        "sender": pair.sender_name,
        "receiver": pair.receiver_name,
        "prompt_lengths": [items.sender_tokens.shape[1], items.receiver_tokens.shape[1]],
        "fuser_trained_numbers": fuser.n_trainable(),
        "batch": BATCH,
        "steps_per_s": statistics.median(batched),
        "items_per_s": statistics.median(batched) * BATCH,
        "naive_items_per_s": statistics.median(naive),
        "load_average": [before, os.getloadavg()[0]],
    }
    out["items_per_s_ratio"] = out["items_per_s"] / out["naive_items_per_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="toy,smollm2", help="comma-separated pairs (default: toy,smollm2)")
    parser.add_argument("--steps", type=int, default=8, help="batched steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results = stamp()
    results["machine"]["transformer_lens"] = BACKEND.version
    for name in args.pairs.split(","):
        measured = measure(name, 4 * BATCH, args.steps, args.repeats)
        if measured is not None:
            results[name] = measured
            print(
                f"{name}: {measured['steps_per_s']:.2f} fuser training steps/s at batch {BATCH} "
                f"({measured['items_per_s']:.1f} items/s; naive one-item loop {measured['naive_items_per_s']:.1f} "
                f"items/s, ratio {measured['items_per_s_ratio']:.2f}x; {measured['fuser_trained_numbers']:,} "
                f"trained numbers; load {measured['load_average'][0]:.1f} -> {measured['load_average'][1]:.1f})"
            )
    write_text_atomic(HERE / "results_kv.json", json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
