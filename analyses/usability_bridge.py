"""usability_bridge: "A bridge trained for usability communicates where the alignment fit does not."

    python analyses/usability_bridge.py --pair toy

Beyond the paper: the same linear map, started from the alignment fit, is trained through the frozen
receiver (gradient only into the map) so that injecting its output reproduces the receiver's oracle-run
answer distribution (KL at the answer position). It is evaluated on held-out items with the full
condition set, next to the alignment fit, and its alignment cosine is reported too. This is the
positive control for the paper's conclusion that offline alignment is not sufficient.
"""

import contextlib
import sys
from dataclasses import replace as dataclass_replace

import numpy as np
import torch

from mi_bridge.analysis import (
    AnalysisContext,
    AnalysisResult,
    Table,
    condition_table,
    evaluate_on_test,
    fmt_delta,
    helps,
    run_script,
    summarize_all,
)
from mi_bridge.bridge import LinearBridge, Standardizer, fit_quality
from mi_bridge.capture import answer_logits, batches, capture_resid_post
from mi_bridge.evaluate import standard_conditions
from mi_bridge.experiment import site_vectors, summarize_condition
from mi_bridge.inject import inject_residual
from mi_bridge.report import saved_figure

NAME = "usability_bridge"
HYPOTHESIS = "A bridge trained for usability communicates where the alignment fit does not."
KINDS = ("alignment", "usability", "context-free self-patch")
"""The context-free self-patch is the ceiling: the receiver's own state for B without this item's answer."""


def add_arguments(parser) -> None:
    parser.add_argument(
        "--train-steps", type=int, default=300, help="optimizer steps of the usability bridge (default 300)"
    )
    parser.add_argument("--train-lr", type=float, default=3e-3, help="learning rate (default 3e-3)")
    parser.add_argument(
        "--train-mode",
        choices=("add", "replace", "rescale", "rescale-add"),
        default="replace",
        help="injection mode the bridge is trained for (default replace)",
    )


def train_usability_bridge(
    receiver,
    tokens,
    oracle_logits,
    sender_states,
    start: LinearBridge,
    *,
    layer: int,
    position: int,
    mode: str = "replace",
    steps: int = 300,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    validation_fraction: float = 0.2,
    eval_every: int = 25,
) -> tuple[LinearBridge, dict[str, list[float]]]:
    """Train (weight, output offset) of ``start`` so that injection reproduces the oracle answer distribution.

    The receiver stays frozen: its prefix up to ``layer`` is computed once without gradients, and the
    optimizer holds only the map's parameters. A held-out part of the items picks the step with the
    least validation KL (early stopping), so the map is not judged after it has memorized its items.
    """
    with torch.no_grad():
        prefix = torch.cat([receiver(tokens[c], stop_at_layer=layer + 1) for c in batches(len(tokens), 256)])
        target = oracle_logits.log_softmax(-1)
        inputs = start.x_norm(sender_states)
    generator = torch.Generator().manual_seed(40_000 + seed)
    order = torch.randperm(len(tokens), generator=generator)
    n_val = max(1, int(len(tokens) * validation_fraction))
    val, train = order[:n_val], order[n_val:]
    weight = start.weight.clone().requires_grad_(True)
    offset = torch.zeros(start.d_receiver, requires_grad=True)  # in standardized units
    optimizer = torch.optim.Adam([weight, offset], lr=lr)

    def kl(rows: torch.Tensor) -> torch.Tensor:
        vectors = (inputs[rows] @ weight + offset) * start.y_norm.std + start.y_norm.mean
        logits = answer_logits(
            receiver, inject_residual(prefix[rows], position, vectors, mode), start_at_layer=layer + 1
        )
        return torch.nn.functional.kl_div(
            logits.log_softmax(-1), target[rows], log_target=True, reduction="batchmean"
        )

    history = {"train": [], "validation": [], "validation_step": []}
    best = (float("inf"), weight.detach().clone(), offset.detach().clone())
    with frozen(receiver):
        for step in range(steps + 1):
            if step % eval_every == 0 or step == steps:
                with torch.no_grad():
                    value = kl(val).item()
                history["validation"].append(value)
                history["validation_step"].append(step)
                if value < best[0]:
                    best = (value, weight.detach().clone(), offset.detach().clone())
            if step == steps:
                break
            loss = kl(train[torch.randperm(len(train), generator=generator)[:batch_size]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history["train"].append(loss.item())
    _, best_weight, best_offset = best
    y_norm = Standardizer(start.y_norm.mean + best_offset * start.y_norm.std, start.y_norm.std)
    trained = dataclass_replace(
        start,
        weight=best_weight,
        y_norm=y_norm,
        metadata=start.metadata | {"trained_for": f"usability ({mode})"},
    )
    return trained, history


@contextlib.contextmanager
def frozen(model):
    """The model's parameters stop requiring gradients inside the block (restored after, even on error)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def analyze(ctx: AnalysisContext) -> AnalysisResult:
    options = ctx.options
    steps, lr = getattr(options, "train_steps", 300), getattr(options, "train_lr", 3e-3)
    mode = getattr(options, "train_mode", "replace")
    conditions = [c for c in standard_conditions(ctx.config.alphas, KINDS) if c.is_injection]
    seed_scores, curves, cosines = [], [], {"alignment": [], "usability": []}
    for seed in ctx.seeds:
        alignment = seed.fit_bridge(ctx.sender_layer, ctx.receiver_layer)
        x = seed.sender_states([ctx.sender_layer])[ctx.sender_layer]
        fit = seed.items.subset(seed.fit_idx)
        oracle = capture_resid_post(
            ctx.pair.receiver,
            fit.oracle_tokens,
            layers=[0],
            positions=[-1],
            with_answer_logits=True,
            batch_size=ctx.config.batch_size,
        ).answer_logits
        usability, history = train_usability_bridge(
            ctx.pair.receiver,
            fit.placeholder_tokens,
            oracle,
            x[seed.fit_idx],
            alignment,
            layer=ctx.receiver_layer,
            position=seed.position(),
            mode=mode,
            steps=steps,
            lr=lr,
            batch_size=ctx.config.batch_size,
            seed=seed.seed,
        )
        curves.append(history)
        target = seed.receiver_states([ctx.receiver_layer])[ctx.receiver_layer][seed.test_idx]
        vectors = {
            "alignment": alignment(x[seed.test_idx]),
            "usability": usability(x[seed.test_idx]),
            "context-free self-patch": site_vectors(seed, ctx.receiver_layer)["context-free self-patch"],
        }
        for name in cosines:
            cosines[name].append(fit_quality(vectors[name], target, alignment.y_norm)["normalized_cosine"])
        seed_scores.append(evaluate_on_test(ctx, seed, vectors, conditions))
    summaries = {s["name"]: s for s in summarize_all(ctx, seed_scores, conditions)}
    best = {
        kind: max((s for s in summaries.values() if s["vector"] == kind), key=lambda s: s["delta_accuracy"])
        for kind in KINDS
    }
    useful = {kind: helps(best[kind]) for kind in KINDS}
    cos = {name: float(np.mean(values)) for name, values in cosines.items()}
    numbers = (
        f"Best usability-bridge condition '{best['usability']['name']}': Δacc {fmt_delta(best['usability'])}; best "
        f"alignment-fit condition '{best['alignment']['name']}': {fmt_delta(best['alignment'])}; context-free ceiling "
        f"{fmt_delta(best['context-free self-patch'])} (n={best['usability']['n']}); the usability bridge closes "
        f"{gap_closed(best['usability'], best['context-free self-patch'])} of the gap between the baseline and that "
        "ceiling. Held-out normalized cosine to the receiver's "
        f"own state: usability bridge {cos['usability']:.3f}, alignment fit {cos['alignment']:.3f}. Validation KL "
        f"(fit items held out from training) went from {np.mean([c['validation'][0] for c in curves]):.3f} to "
        f"{np.mean([min(c['validation']) for c in curves]):.3f} at the selected step; training KL ended at "
        f"{np.mean([np.mean(c['train'][-20:]) for c in curves]):.3f}."
    )
    # Usability vs alignment head to head: the best condition of each, paired on the same items.
    head_to_head = summarize_condition(
        ctx.config,
        seed_scores,
        next(c for c in conditions if c.name == best["usability"]["name"]),
        baseline=best["alignment"]["name"],
    )
    numbers += f" Best usability minus best alignment condition: Δacc {fmt_delta(head_to_head)}."
    if useful["usability"] and not useful["alignment"]:
        verdict, tail = (
            "supported",
            (
                " The same linear map family communicates once trained for use: offline "
                "alignment, not linearity, is what falls short."
            ),
        )
    elif useful["usability"] and helps(head_to_head):
        verdict, tail = (
            "supported",
            " Both help, and training for use helps clearly more than the alignment fit.",
        )
    elif useful["usability"]:
        verdict, tail = (
            "inconclusive",
            " The alignment fit already helps here about as much as the trained map.",
        )
    else:
        verdict, tail = (
            "not supported",
            " Even trained for use, the linear map does not raise accuracy at this site.",
        )
    tables = [
        condition_table(
            "Alignment fit vs usability-trained bridge (Δ vs baseline)", list(summaries.values())
        ),
        Table(
            "Alignment of each bridge (held-out)",
            ("bridge", "normalized cosine"),
            [(k, f"{v:.3f}") for k, v in cos.items()],
        ),
    ]
    data = {
        "conditions": list(summaries.values()),
        "normalized_cosine": cos,
        "loss_curves": curves,
        "usability_minus_alignment": head_to_head,
        "train": {"steps": steps, "lr": lr, "mode": mode},
    }
    return AnalysisResult(NAME, HYPOTHESIS, verdict, numbers + tail, tables, data)


def gap_closed(summary: dict, ceiling: dict) -> str:
    """Share of the baseline-to-ceiling gap a condition closes (undefined when the ceiling is not above 0)."""
    if ceiling["delta_accuracy"] <= 0:
        return "an undefined share (the ceiling is not above the baseline)"
    return f"{summary['delta_accuracy'] / ceiling['delta_accuracy']:.0%}"


def plot(result: AnalysisResult, path) -> None:
    with saved_figure(path, 1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 2]}) as (fig, axes):
        for i, curve in enumerate(result.data["loss_curves"]):
            (line,) = axes[0].plot(curve["train"], linewidth=0.6, alpha=0.6, label=f"seed {i} train")
            axes[0].plot(
                curve["validation_step"],
                curve["validation"],
                marker="o",
                markersize=3,
                color=line.get_color(),
                label=f"seed {i} validation",
            )
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("KL(oracle || injected)")
        axes[0].set_yscale("log")
        axes[0].legend(fontsize=7)
        conditions = [c for c in result.data["conditions"] if c["vector"] in ("alignment", "usability")]
        names = sorted(
            {c["name"].split(" ", 1)[1] for c in conditions},
            key=[c["name"].split(" ", 1)[1] for c in conditions].index,
        )
        for offset, kind, color in ((-0.2, "alignment", "tab:gray"), (0.2, "usability", "tab:green")):
            rows = [next(c for c in conditions if c["name"] == f"{kind} {n}") for n in names]
            means = [c["delta_accuracy"] for c in rows]
            errors = np.array(
                [
                    [
                        c["delta_accuracy"] - c["delta_accuracy_ci"][0],
                        c["delta_accuracy_ci"][1] - c["delta_accuracy"],
                    ]
                    for c in rows
                ]
            ).T
            axes[1].bar(
                np.arange(len(names)) + offset, means, 0.4, yerr=errors, color=color, label=kind, capsize=2
            )
        axes[1].set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        axes[1].axhline(0, color="black", linewidth=0.8)
        axes[1].set_ylabel("Δ accuracy vs baseline (95% CI)")
        axes[1].legend(fontsize=8)


if __name__ == "__main__":
    sys.exit(run_script(sys.modules[__name__]))
