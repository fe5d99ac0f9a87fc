"""What the analyses in ``analyses/`` get under ``--protocol seed``: the paper's run (both models read
the same prompt; the bridge's output replaces or is added to the receiver's state at every prompt
position), a teacher-forced score, and the site statement that replaces the split protocol's site
diagnosis.

Score. The paper scores greedy generations, and most of its conditions land at the floor, where a
0/1 metric on a few hundred items cannot separate them. The analyses score every condition by the
receiver's teacher-forced log-probability of the gold answer (`` {answer}`` after ``A:``), with the
injection on the prompt positions only: one forward pass per condition, continuous, paired per item.

Site. The split protocol's site classes ask whether a vector from the sender could carry something
the receiver lacks at one position. Under the seed protocol both models read the same prompt and the
injection rewrites every prompt position at the receiver layer, after which the receiver computes from
those states alone. The bridge is fitted to reproduce the receiver's own states, and those states are
no injection: a perfect fit reproduces the baseline. A bridge can still move the answer (any vector
can), and the sender may compute something from the same text that the receiver does not, but no
input reaches the sender that the receiver lacks. The classes pre-/post-lookup are not defined. The
site statement reports what is measurable instead: self-inject minus no injection (0 up to float
rounding when the hook is right; otherwise every verdict is withheld) and task validity (the oracle,
with the same gate as the run).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mi_bridge.config import ExperimentConfig
from mi_bridge.core import progress
from mi_bridge.core.hook_names import resid_post_name
from mi_bridge.errors import UserError
from mi_bridge.models.loading import ModelPair
from mi_bridge.protocols.seed import audit
from mi_bridge.protocols.seed.experiment import (
    BASELINE,
    ORACLE,
    PRIMARY_METRIC,
    SeedCondition,
    SeedRun,
    encode,
    injected_state,
    prepare_seed_run,
)
from mi_bridge.protocols.seed.fitting import FittedBridge, groups_by
from mi_bridge.protocols.seed.metrics import score
from mi_bridge.report.result import Result, withheld
from mi_bridge.stats import excludes_zero, fmt_estimate, mean_with_ci

HOOK_TOLERANCE = 1e-3
"""Largest |self-inject − no injection| in log p(answer) of any item that counts as float rounding (the
states are captured in other batches than they are re-injected in; float32 differs by ~1e-5)."""
NOT_APPLICABLE = "not applicable"
"""The site class under the seed protocol (see the module docstring)."""


@dataclass
class SeedProtocolContext:
    """What an analysis gets under ``--protocol seed``: the configuration, the models, the layers, the
    prepared run and the first seed's bridge of the configured kind."""

    config: ExperimentConfig
    pair: ModelPair
    sender_layer: int
    receiver_layer: int
    run: SeedRun
    bridge: FittedBridge
    fit: dict
    """results.json's ``bridge_fit`` section of the run the analysis starts from."""
    options: argparse.Namespace = field(default_factory=argparse.Namespace)
    _site: dict | None = field(default=None, repr=False)

    @cached_property
    def answers(self) -> list[list[int]]:
        """The gold answers' token ids as they follow ``A:`` (with the leading space)."""
        return encode(self.pair.receiver.tokenizer, [f" {item.answer}" for item in self.run.items])

    def translated(self) -> list[Float[Tensor, "pos d_receiver"]]:
        return self.run.vectors(SeedCondition("translated", "translated"), self.bridge, self.bridge.seed)

    def logprobs(self, vectors=None, mode: str | None = None, alpha: float = 1.0, prompts=None) -> np.ndarray:
        """Per item, the receiver's teacher-forced log p(answer) after ``prompts`` (default: the eval
        prompts), with ``vectors`` injected by ``mode`` on the prompt positions."""
        return answer_logprobs(
            self.pair.receiver,
            self.receiver_layer,
            self.run.tokens if prompts is None else prompts,
            self.answers,
            self.config.batch_size,
            vectors,
            mode,
            alpha,
        )

    def site(self) -> dict:
        if self._site is None:
            self._site = seed_site(self)
        return self._site


def prepare_seed_context(config: ExperimentConfig, options: argparse.Namespace) -> SeedProtocolContext:
    from mi_bridge.models.loading import load_pair, record_identities, resolve_layers

    pair = load_pair(config)
    if pair.sender_language is not pair.language:
        raise UserError(
            "the analyses under --protocol seed read translated states at every prompt position, which "
            "needs one tokenizer; these two models tokenize differently (python -m mi_bridge.run runs them)"
        )
    config = record_identities(config, pair)
    sender_layer, receiver_layer = resolve_layers(config, pair)
    # The analyses use one bridge: the first seed's, of the primary kind (the paper's under "both").
    kind = config.options.bridge_kinds[0]
    run, bridges, fit = prepare_seed_run(
        replace(config, seeds=1, options=replace(config.options, bridge=kind)),
        pair,
        sender_layer,
        receiver_layer,
    )
    first = bridges[kind][0]
    return SeedProtocolContext(config, pair, sender_layer, receiver_layer, run, first, fit, options)


def rewritten_logits(
    model, layer: int, tokens: Tensor, n_prompt: int, vectors: Tensor | None, mode: str | None, alpha: float
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of ``tokens`` with ``resid_post`` of ``layer`` rewritten by ``injected_state`` at the first
    ``n_prompt`` positions (the prompt); later positions (an answer) are left alone, as in generation."""
    if vectors is None:
        return model(tokens)

    def rewrite_prompt(act, hook):
        new = injected_state(act[:, :n_prompt], vectors.to(act.device), mode, alpha)
        return torch.cat([new, act[:, n_prompt:]], dim=1)

    return model.run_with_hooks(tokens, fwd_hooks=[(resid_post_name(layer), rewrite_prompt)])


@torch.no_grad()
def answer_logprobs(
    model,
    layer: int,
    prompts: list[list[int]],
    answers: list[list[int]],
    batch_size: int,
    vectors: list[Tensor] | None = None,
    mode: str | None = None,
    alpha: float = 1.0,
) -> np.ndarray:
    """Sum over the answer's tokens of log p(token | prompt, earlier answer tokens), per item, with
    ``vectors`` (one (prompt_pos, d) tensor per item) injected by ``mode`` on the prompt positions."""
    out = np.zeros(len(prompts))
    keys = [(len(p), len(a)) for p, a in zip(prompts, answers, strict=True)]
    for group in groups_by(keys, batch_size):  # no progress bar: callers track their conditions
        n_prompt = len(prompts[group[0]])
        tokens = torch.tensor([prompts[i] + answers[i] for i in group], device=model.cfg.device)
        batch = None if vectors is None else torch.stack([vectors[i] for i in group])
        logits = rewritten_logits(model, layer, tokens, n_prompt, batch, mode, alpha)
        logp = logits[:, n_prompt - 1 : -1].double().log_softmax(-1)
        out[group] = logp.gather(-1, tokens[:, n_prompt:, None]).squeeze(-1).sum(-1).cpu().numpy()
    return out


@torch.no_grad()
def next_token_logits(
    model, layer: int, prompts: list[list[int]], batch_size: int, vectors: list[Tensor], mode: str
) -> Float[Tensor, "n d_vocab"]:
    """The receiver's logits after each prompt, with ``vectors`` injected by ``mode`` at every position."""
    out = torch.zeros(len(prompts), model.cfg.d_vocab)
    for group in groups_by([len(p) for p in prompts], batch_size):
        tokens = torch.tensor([prompts[i] for i in group], device=model.cfg.device)
        batch = torch.stack([vectors[i] for i in group])
        out[group] = (
            rewritten_logits(model, layer, tokens, tokens.shape[1], batch, mode, 1.0)[:, -1].float().cpu()
        )
    return out


def seed_site(ctx: SeedProtocolContext) -> dict:
    """The site statement under the seed protocol: task validity with the run's gate (generation, the
    paper's primary metric, oracle vs no injection), the same gap in log p(answer), and self-inject
    minus no injection, which must be exactly 0."""
    run, config = ctx.run, ctx.config
    generated = {}
    for condition in progress.track((BASELINE, ORACLE), "seed protocol: task validity (generating)"):
        texts = run.generate(ctx.pair.receiver, run.prompts(condition), config.options.max_new_tokens)
        generated[condition.name] = np.array(
            [score(t, item.answer)[PRIMARY_METRIC] for t, item in zip(texts, run.items, strict=True)], float
        )
    validity = audit.task_validity(
        [generated[ORACLE.name]],
        [generated[BASELINE.name]],
        min_gap=config.min_oracle_gap,
        n_resamples=config.n_bootstrap,
    )
    baseline = ctx.logprobs()
    oracle = ctx.logprobs(prompts=run.prompts(ORACLE))
    own = ctx.logprobs(run.receiver_states, "replace")
    oracle_gap = mean_with_ci(oracle - baseline, n_resamples=config.n_bootstrap, seed=1)
    self_inject = mean_with_ci(own - baseline, n_resamples=config.n_bootstrap, seed=2)
    readable = (
        "Effects can be read." if validity["valid"] else "The task is not valid here: effects cannot be read."
    )
    explanation = (
        f"Under --protocol seed the injection rewrites every prompt position of receiver layer "
        f"{ctx.receiver_layer}, and the bridge is fitted to the receiver's own states there, which are no injection: "
        f"self-inject minus no injection is {self_inject['mean']:+.2e} in log p(answer) (n={self_inject['n']}; 0 "
        f"up to float rounding). A perfect fit reproduces the baseline; the sender reads no input the receiver "
        f"lacks, so what a bridge changes is not missing information. The split protocol's "
        f"site classes are not defined. Task validity ({PRIMARY_METRIC}, oracle minus no injection): "
        f"{validity['gap']:+.3f} [{validity['ci'][0]:+.3f}, {validity['ci'][1]:+.3f}], n={validity['n']}; "
        f"in log p(answer) {oracle_gap['mean']:+.2f} [{oracle_gap['ci'][0]:+.2f}, {oracle_gap['ci'][1]:+.2f}]. "
        + readable
    )
    return {
        "protocol": "seed",
        "class": NOT_APPLICABLE,
        "layer": ctx.receiver_layer,
        "validity": validity,
        "oracle_gap_logprob": oracle_gap,
        "self_inject_logprob": self_inject,
        "hook_exact": bool(np.abs(own - baseline).max() <= HOOK_TOLERANCE),
        "baseline_logprob": mean_with_ci(baseline, n_resamples=config.n_bootstrap, seed=3),
        "explanation": explanation,
        "summary": (
            f"Site: {NOT_APPLICABLE} under --protocol seed (receiver layer {ctx.receiver_layer}, every prompt "
            f"position); task validity {fmt_estimate(validity['gap'], validity['ci'])}, n={validity['n']}."
        ),
    }


def delta_summary(name: str, values: np.ndarray, baseline: np.ndarray, n_resamples: int, seed: int) -> dict:
    """One condition's mean log p(answer) and its paired Δ vs no injection with the 95% CI, in the key
    names the split protocol's summaries use (so ``stats.helps``/``hurts``/``fmt_delta`` read them)."""
    delta = mean_with_ci(values - baseline, n_resamples=n_resamples, seed=seed)
    return {
        "name": name,
        "logprob": float(values.mean()),
        "delta_logprob": delta["mean"],
        "delta_logprob_ci": delta["ci"],
        "n": delta["n"],
        "changes": excludes_zero(delta["ci"]),
    }


def qualify_by_validity(result: Result, site: dict) -> Result:
    """Under the seed protocol: where the injection hook fails its exactness check (self-inject must equal
    no injection), or the oracle does not beat the baseline (the run's gate), no effect can be read."""
    if not site["hook_exact"]:
        mean = site["self_inject_logprob"]["mean"]
        return withheld(
            result, f"Self-inject differs from no injection ({mean:+.2e} in log p): the hook is not exact"
        )
    if site["validity"]["valid"]:
        return result
    gap, (low, high) = site["validity"]["gap"], site["validity"]["ci"]
    return withheld(
        result,
        f"The task is not valid here (oracle minus no injection {gap:+.3f}, 95% CI [{low:+.3f}, {high:+.3f}]), "
        "so no effect can be read",
    )
