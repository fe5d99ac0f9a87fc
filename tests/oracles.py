"""Checks that more than one test file runs against a different model: the batched evaluator against one
plain hooked run per condition."""

import torch

from mi_bridge.core.evaluate import Condition, evaluate_conditions, score
from mi_bridge.core.inject import MODES, run_with_injection


def assert_evaluator_equals_hooked_runs(
    model, tokens, candidates, gold, vector, *, layer, position, atol, rtol, **options
):
    """Baseline and ``vector`` in every mode: the evaluator's scores equal those of one full
    ``run_with_injection`` (or plain forward pass) per condition, within ``atol``/``rtol`` in log p and
    exactly in correctness. ``options`` go to ``evaluate_conditions`` (e.g. ``batch_size``)."""
    conditions = [Condition("baseline")] + [
        Condition(f"v {mode}", vector="v", mode=mode, alpha=0.7) for mode in MODES
    ]
    fast = evaluate_conditions(
        model,
        {"placeholder": tokens},
        candidates,
        gold,
        layer=layer,
        position=position,
        vectors={"v": vector},
        conditions=conditions,
        **options,
    )
    with torch.no_grad():
        for condition in conditions:
            if condition.is_injection:
                logits = run_with_injection(
                    model,
                    tokens,
                    layer=layer,
                    position=position,
                    vector=vector,
                    mode=condition.mode,
                    alpha=condition.alpha,
                )[:, -1]
            else:
                logits = model(tokens)[:, -1]
            slow = score(logits, candidates, gold)
            got = fast[condition.name]
            torch.testing.assert_close(got.gold_logprob, slow.gold_logprob, rtol=rtol, atol=atol)
            torch.testing.assert_close(got.correct, slow.correct)
