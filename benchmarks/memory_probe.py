"""Peak resident memory of mi_bridge's own path on the Pythia-160M -> 410M architectures.

    python -m benchmarks.memory_probe --batch-size 64     # from the repository root

Run in a fresh process (the benchmark starts one per batch size), so that the peak belongs to this
path alone: both random-weight models, the sender's state capture with answer logits, the receiver's
oracle states, and every standard condition (all vector kinds, modes and strengths) evaluated on one
batch of ``--batch-size`` items, with the evaluator's default memory budget. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource

import torch

from benchmarks.pythia_arch import pythia_architecture, pythia_items
from mi_bridge.core.capture import capture_resid_post
from mi_bridge.core.evaluate import condition_logits, standard_conditions

SENDER_LAYER, RECEIVER_LAYER = 5, 11  # the Pythia defaults (middle layers)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


@torch.no_grad()
def probe(batch_size: int) -> dict:
    sender, receiver = pythia_architecture("pythia-160m"), pythia_architecture("pythia-410m")
    items = pythia_items(batch_size)
    capture_resid_post(
        sender, items.sender_tokens, layers=[SENDER_LAYER], positions=[-1], with_answer_logits=True
    )
    oracle = capture_resid_post(
        receiver, items.oracle_tokens, layers=[RECEIVER_LAYER], positions=[items.slot_position]
    )
    conditions = standard_conditions((0.25, 0.5, 1.0, 2.0))
    state = oracle.states[RECEIVER_LAYER][:, 0]
    vectors = {c.vector: state for c in conditions if c.is_injection}
    prompts = {
        c.prompt: items.oracle_tokens if c.prompt == "oracle" else items.placeholder_tokens
        for c in conditions
    }
    for _ in condition_logits(
        receiver,
        prompts,
        layer=RECEIVER_LAYER,
        position=items.slot_position,
        vectors=vectors,
        conditions=conditions,
        batch_size=batch_size,
    ):
        pass
    return {"batch_size": batch_size, "conditions": len(conditions), "peak_rss_gib": peak_rss_gib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(probe(args.batch_size)))


if __name__ == "__main__":
    main()
