"""logit_lens: "Translated vectors do not decode to the bridge entity in the receiver."

    python analyses/logit_lens.py --pair toy

Reads the translated vector, the self-patch state and the receiver's native placeholder state through
the receiver's final LayerNorm and unembedding (direct read: rank and probability of B and of C), and
again after the remaining receiver layers, with the vector replacing the state at the site.
"""

import sys

import numpy as np
import torch

from mi_bridge.analysis import (
    AnalysisContext,
    AnalysisResult,
    Table,
    run_script,
    translated_vectors,
)
from mi_bridge.capture import answer_logits, batches
from mi_bridge.inject import inject_residual
from mi_bridge.report import saved_figure
from mi_bridge.stats import bootstrap_statistic

NAME = "logit_lens"
HYPOTHESIS = "Translated vectors do not decode to the bridge entity in the receiver."
KINDS = ("translated", "self-patch", "native")
TOP = 10
SITE_DEPENDENT = True
"""Its cause can only be isolated at a pre-lookup site (the runner withholds the verdict elsewhere)."""


def ranks(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's token (0 = top-1)."""
    return (logits > logits.gather(1, ids[:, None])).sum(1)


@torch.no_grad()
def direct_read(model, vectors: torch.Tensor) -> torch.Tensor:
    """Logit lens: final LayerNorm and unembedding applied to a residual vector."""
    return model.unembed(model.ln_final(vectors[:, None, :]))[:, 0]


@torch.no_grad()
def read_after_remaining_layers(
    model, tokens, layer: int, position: int, vectors, batch_size: int
) -> torch.Tensor:
    parts = []
    for chunk in batches(len(tokens), batch_size):
        prefix = model(tokens[chunk], stop_at_layer=layer + 1)
        parts.append(
            answer_logits(
                model, inject_residual(prefix, position, vectors[chunk], "replace"), start_at_layer=layer + 1
            )
        )
    return torch.cat(parts)


def analyze(ctx: AnalysisContext) -> AnalysisResult:
    model, layer = ctx.pair.receiver, ctx.receiver_layer
    collected = {
        kind: {"direct_B": [], "direct_C": [], "after_B": [], "after_C": [], "p_B": [], "p_C": []}
        for kind in KINDS
    }
    examples = []
    for seed in ctx.seeds:
        test = seed.test
        vectors = {
            "translated": translated_vectors(seed, ctx.sender_layer, layer),
            "self-patch": seed.receiver_states([layer], "oracle")[layer][seed.test_idx],
            "native": seed.receiver_states([layer], "placeholder")[layer][seed.test_idx],
        }
        for kind, vector in vectors.items():
            direct = direct_read(model, vector)
            after = read_after_remaining_layers(
                model, test.placeholder_tokens, layer, seed.position(), vector, ctx.config.batch_size
            )
            probs = direct.softmax(-1)
            out = collected[kind]
            out["direct_B"].append(ranks(direct, test.bridge_ids).numpy())
            out["direct_C"].append(ranks(direct, test.answer_ids).numpy())
            out["after_B"].append(ranks(after, test.bridge_ids).numpy())
            out["after_C"].append(ranks(after, test.answer_ids).numpy())
            out["p_B"].append(probs.gather(1, test.bridge_ids[:, None])[:, 0].numpy())
            out["p_C"].append(probs.gather(1, test.answer_ids[:, None])[:, 0].numpy())
            if seed.seed == 0:
                decode = ctx.pair.language.decode
                for i in range(3):
                    top5 = [decode([t]) for t in direct[i].topk(5).indices.tolist()]
                    examples.append(
                        (
                            f"item {i}",
                            kind,
                            decode([int(test.bridge_ids[i])]),
                            decode([int(test.answer_ids[i])]),
                            " ".join(top5),
                        )
                    )
    pooled = {kind: {k: np.concatenate(v) for k, v in values.items()} for kind, values in collected.items()}
    summary = {
        kind: {
            "lens rank B": float(np.median(v["direct_B"])),
            "lens rank C": float(np.median(v["direct_C"])),
            f"lens B top{TOP}": float(np.mean(v["direct_B"] < TOP)),
            "lens p(B)": float(np.mean(v["p_B"])),
            "lens p(C)": float(np.mean(v["p_C"])),
            "output rank C": float(np.median(v["after_C"])),
            "output C top1": float(np.mean(v["after_C"] == 0)),
        }
        for kind, v in pooled.items()
    }
    top = {k: (pooled[k]["direct_B"] < TOP).astype(float) for k in KINDS}
    difference = lambda a, b: np.mean(a) - np.mean(b)
    n_boot = ctx.config.n_bootstrap
    gap, gap_ci = bootstrap_statistic([top["self-patch"], top["translated"]], difference, n_resamples=n_boot)
    lens_gap, lens_ci = bootstrap_statistic(
        [top["self-patch"], top["native"]], difference, n_resamples=n_boot
    )
    n = len(top["translated"])
    rate = {k: summary[k][f"lens B top{TOP}"] for k in KINDS}
    numbers = (
        f"B is in the top {TOP} of the direct read for {rate['translated']:.1%} of items with the translated vector, "
        f"{rate['self-patch']:.1%} with the self-patch state and {rate['native']:.1%} with the native placeholder state "
        f"(self-patch minus translated {gap:+.3f}, 95% CI [{gap_ci[0]:+.3f}, {gap_ci[1]:+.3f}]; self-patch minus native "
        f"{lens_gap:+.3f} [{lens_ci[0]:+.3f}, {lens_ci[1]:+.3f}]; n={n}). After the remaining layers, C is the top-1 "
        f"token for {summary['translated']['output C top1']:.1%} (translated) vs "
        f"{summary['self-patch']['output C top1']:.1%} (self-patch) of items."
    )
    if lens_ci[0] <= 0:
        verdict, tail = (
            "inconclusive",
            (
                " The logit lens does not read B from the receiver's own oracle state better than from the placeholder "
                "state at this layer, so it cannot tell whether the translated vector carries B."
            ),
        )
    elif gap_ci[0] > 0:
        verdict, tail = (
            "supported",
            " The receiver's own state decodes to B where the translated vector does not.",
        )
    else:
        verdict, tail = (
            "not supported",
            " The translated vector decodes to B about as well as the receiver's own state.",
        )
    rows = [(kind, *(f"{value:.3g}" for value in s.values())) for kind, s in summary.items()]
    tables = [
        Table(
            "Logit lens at the injection site, and the output after the remaining layers",
            ("vector", *summary["translated"]),
            rows,
        ),
        Table("Top-5 direct-read tokens (seed 0)", ("item", "vector", "B", "C", "top-5"), examples),
    ]
    data = {
        "summary": summary,
        "top_gap": {"mean": gap, "ci": gap_ci},
        "n": n,
        "ranks": {
            kind: {k: v.tolist() for k, v in values.items() if k.startswith(("direct", "after"))}
            for kind, values in pooled.items()
        },
    }
    return AnalysisResult(NAME, HYPOTHESIS, verdict, numbers + tail, tables, data)


def plot(result: AnalysisResult, path) -> None:
    with saved_figure(path, 1, 2, figsize=(9, 3.5), sharey=True) as (fig, axes):
        for ax, key, title in zip(
            axes,
            ("direct_B", "after_C"),
            ("rank of B, direct read", "rank of C, after remaining layers"),
            strict=True,
        ):
            for kind, values in result.data["ranks"].items():
                ax.hist(np.log10(np.asarray(values[key]) + 1), bins=30, histtype="step", label=kind)
            ax.set_xlabel("log10(rank + 1)")
            ax.set_title(title, fontsize=9)
        axes[0].set_ylabel("items")
        axes[0].legend(fontsize=8)


if __name__ == "__main__":
    sys.exit(run_script(sys.modules[__name__]))
