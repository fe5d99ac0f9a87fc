"""logit_lens: "Translated vectors do not decode to the bridge entity in the receiver."

    python -m mi_bridge.analyses logit_lens --pair toy

Reads the translated vector, the self-patch state and the receiver's native placeholder state through
the receiver's final LayerNorm and unembedding (direct read: rank and probability of B and of C), and
again after the remaining receiver layers, with the vector replacing the state at the site.

Under ``--protocol seed`` (no bridge entity: both models read the same prompt) it reads the answer's
first token at the last prompt position, from the translated vector, the receiver's own state and
another item's own state, and after the remaining layers with every prompt position replaced.
"""

import sys

import numpy as np
import torch

from mi_bridge.analyses.common import run_script
from mi_bridge.core.capture import answer_logits, batches
from mi_bridge.core.controls import derangement
from mi_bridge.core.device import model_device
from mi_bridge.core.inject import inject_residual
from mi_bridge.protocols.seed.analysis import SeedProtocolContext, next_token_logits
from mi_bridge.protocols.split.analysis import AnalysisContext, translated_vectors
from mi_bridge.report.render import saved_figure
from mi_bridge.report.result import Result, Table
from mi_bridge.runtime.backend import residual_at
from mi_bridge.seeds import SeedOffset
from mi_bridge.stats import bootstrap_statistic

NAME = "logit_lens"
HYPOTHESIS = "Translated vectors do not decode to the bridge entity in the receiver."
SEED_HYPOTHESIS = (
    "Translated vectors do not decode to the answer in the receiver (seed protocol: no bridge entity)."
)
KINDS = ("translated", "self-patch", "native")
TOP = 10
SITE_DEPENDENT = True
"""Its cause can only be isolated at a pre-lookup site (the runner withholds the verdict elsewhere)."""


def ranks(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's token (0 = top-1)."""
    return (logits > logits.gather(1, ids[:, None])).sum(1)


@torch.no_grad()
def direct_read(model, vectors: torch.Tensor) -> torch.Tensor:
    """Logit lens: final LayerNorm and unembedding applied to a residual vector (on the model's device;
    the logits come back on the CPU)."""
    return model.unembed(model.ln_final(vectors.to(model_device(model))[:, None, :]))[:, 0].cpu()


@torch.no_grad()
def read_after_remaining_layers(
    model, tokens, layer: int, position: int, vectors, batch_size: int
) -> torch.Tensor:
    parts = []
    for chunk in batches(len(tokens), batch_size):
        prefix = residual_at(model, tokens[chunk].to(model_device(model)), stop_at_layer=layer + 1)
        injected = inject_residual(prefix, position, vectors[chunk], "replace")
        parts.append(answer_logits(model, injected, start_at_layer=layer + 1).cpu())
    return torch.cat(parts)


def analyze(ctx: AnalysisContext) -> Result:
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
    (gap, gap_ci), (lens_gap, lens_ci) = top_gaps(top, "native", ctx.config.n_bootstrap)
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
    verdict, tail = judged(lens_ci, gap_ci, "B", "the receiver's own oracle state", "the placeholder state")
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
    return Result(NAME, HYPOTHESIS, verdict, numbers + tail, tables, data)


SEED_KINDS = ("translated", "self-patch", "other item")
SEED_PANELS = (
    ("direct", "rank of the answer's first token, direct read"),
    ("after", "its rank after the remaining layers (every position replaced)"),
)


@torch.no_grad()
def analyze_seed(ctx: SeedProtocolContext) -> Result:
    """Under ``--protocol seed``: there is no bridge entity (both models read the same prompt), so the
    lens reads the answer's first token at the last prompt position, where the receiver starts to answer.
    The control is another item's own state: does the lens read this item's answer from its own state
    at all at this layer?"""
    model, layer, n_boot = ctx.pair.receiver, ctx.receiver_layer, ctx.config.n_bootstrap
    own, translated = ctx.run.receiver_states, ctx.translated()
    answer_ids = torch.tensor([answer[0] for answer in ctx.answers])
    donor = derangement(len(own), torch.Generator().manual_seed(SeedOffset.CONTROLS + ctx.bridge.seed))
    last = {
        "translated": torch.stack([v[-1] for v in translated]),
        "self-patch": torch.stack([h[-1] for h in own]),
    }
    last["other item"] = last["self-patch"][donor]
    after = {
        kind: ranks(
            next_token_logits(model, layer, ctx.run.tokens, ctx.config.batch_size, vectors, "replace"),
            answer_ids,
        )
        for kind, vectors in (("translated", translated), ("self-patch", own))
    }
    ranks_of, summary = {}, {}
    for kind in SEED_KINDS:
        direct = direct_read(model, last[kind]).float()
        ranks_of[kind] = {"direct": ranks(direct, answer_ids).numpy()}
        summary[kind] = {
            "lens rank answer": float(np.median(ranks_of[kind]["direct"])),
            f"lens answer top{TOP}": float(np.mean(ranks_of[kind]["direct"] < TOP)),
            "lens p(answer)": float(direct.softmax(-1).gather(1, answer_ids[:, None]).mean()),
        }
        if kind in after:
            ranks_of[kind]["after"] = after[kind].numpy()
            summary[kind]["output rank answer"] = float(np.median(ranks_of[kind]["after"]))
            summary[kind]["output answer top1"] = float(np.mean(ranks_of[kind]["after"] == 0))
    top = {kind: (ranks_of[kind]["direct"] < TOP).astype(float) for kind in SEED_KINDS}
    (gap, gap_ci), (lens_gap, lens_ci) = top_gaps(top, "other item", n_boot)
    n = len(own)
    rate = {kind: summary[kind][f"lens answer top{TOP}"] for kind in SEED_KINDS}
    numbers = (
        f"At the last prompt position the answer's first token is in the top {TOP} of the direct read for "
        f"{rate['translated']:.1%} of items with the translated vector, {rate['self-patch']:.1%} with the receiver's "
        f"own state and {rate['other item']:.1%} with another item's own state (own minus translated {gap:+.3f}, "
        f"95% CI [{gap_ci[0]:+.3f}, {gap_ci[1]:+.3f}]; own minus other item {lens_gap:+.3f} [{lens_ci[0]:+.3f}, "
        f"{lens_ci[1]:+.3f}]; n={n}). With every prompt position replaced, the answer's first token is the top-1 "
        f"output for {summary['translated']['output answer top1']:.1%} (translated) vs "
        f"{summary['self-patch']['output answer top1']:.1%} (own states, = no injection) of items."
    )
    verdict, tail = judged(lens_ci, gap_ci, "the answer", "an item's own state", "another item's")
    header = ("vector", *summary["translated"])
    rows = [
        (kind, *(f"{s[key]:.3g}" if key in s else "n/a" for key in header[1:])) for kind, s in summary.items()
    ]
    data = {
        "summary": summary,
        "top_gap": {"mean": gap, "ci": gap_ci},
        "n": n,
        "ranks": {kind: {k: v.tolist() for k, v in values.items()} for kind, values in ranks_of.items()},
        "panels": SEED_PANELS,
    }
    table = Table(
        "Logit lens at the last prompt position, and the output with every position replaced", header, rows
    )
    return Result(NAME, SEED_HYPOTHESIS, verdict, numbers + tail, [table], data)


def top_gaps(top: dict[str, np.ndarray], control: str, n_resamples: int):
    """Own minus translated, and own minus ``control``, in the top-k rate: each with its paired
    bootstrap 95% CI."""
    difference = lambda a, b: np.mean(a) - np.mean(b)
    gap = bootstrap_statistic([top["self-patch"], top["translated"]], difference, n_resamples=n_resamples)
    lens = bootstrap_statistic([top["self-patch"], top[control]], difference, n_resamples=n_resamples)
    return gap, lens


def judged(lens_ci, gap_ci, carried: str, own: str, control: str) -> tuple[str, str]:
    """The verdict (both protocols): the lens must first read ``carried`` from the receiver's own state
    better than from the control; then the gap own − translated decides."""
    if lens_ci[0] <= 0:
        return "inconclusive", (
            f" The logit lens does not read {carried} from {own} better than from {control} at this layer, so it "
            f"cannot tell whether the translated vector carries {carried}."
        )
    if gap_ci[0] > 0:
        return (
            "supported",
            f" The receiver's own state decodes to {carried} where the translated vector does not.",
        )
    return (
        "not supported",
        f" The translated vector decodes to {carried} about as well as the receiver's own state.",
    )


def plot(result: Result, path) -> None:
    panels = result.data.get(
        "panels", (("direct_B", "rank of B, direct read"), ("after_C", "rank of C, after remaining layers"))
    )
    with saved_figure(path, 1, 2, figsize=(9, 3.5), sharey=True) as (fig, axes):
        for ax, (key, title) in zip(axes, panels, strict=True):
            for kind, values in result.data["ranks"].items():
                if key not in values:
                    continue
                ax.hist(np.log10(np.asarray(values[key]) + 1), bins=30, histtype="step", label=kind)
            ax.set_xlabel("log10(rank + 1)")
            ax.set_title(title, fontsize=9)
        axes[0].set_ylabel("items")
        axes[0].legend(fontsize=8)


if __name__ == "__main__":
    sys.exit(run_script(sys.modules[__name__]))
