"""The KV channel over seeds: the statistics and verdict of the run's KV section
(``--kv-channel``, ``protocols.split.sections.kv``).

The verdict reads the full cache (every receiver layer reads the delivered positions: what the sources
were trained on): validity first, then the self-pair (under facts, the positive control; under prompt,
the trap), then the sender's gain beyond the learned constant prefix (Holm over the sender-reading
family, on p-values that take each seed as one unit) and beyond its own shuffled control, then the one
a-priori ceiling. Every Δ comes with its per-seed estimates; the candidate logit difference is the
primary continuous metric. Per
site, the same trained sources read only by the layers after the site stand beside the best residual
bridge there: what the cache does through the layers a residual injection at that site reaches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mi_bridge.core.evaluate import Condition, ItemScores
from mi_bridge.protocols.split.kv_channel import (
    CEILING,
    EXACT,
    FUSER,
    LINEAR,
    PLAIN_PROMPTS,
    PREFIX,
    READS_GOLD_PB,
    READS_OTHER_F,
    REFERENCES,
    SENDER_READING,
    UNTRAINED,
    SeedKV,
    after_site,
    kv_conditions,
)
from mi_bridge.protocols.split.summary import summarize_condition
from mi_bridge.stats import FAMILY_ALPHA, fmt_delta, helps, holm, seeds_combined_p, task_valid

KV_VERDICTS = ("transfer helps", "no transfer", "untestable here", "positive control")
"""The channel's verdicts: the run's transfer verdicts, and the self-pair's positive control under facts."""
SHARED_ROWS = (LINEAR, FUSER, f"{FUSER} shuffled", PREFIX)
"""The conditions the per-site table shows, after the source's ceiling."""
PRIMARY = "logit_diff"
"""The primary continuous metric: the gold answer's logit minus the mean of the other candidates'. Unlike
log p over the full vocabulary it does not move when a source teaches the answer's format alone."""
SHARE_OF = (UNTRAINED, LINEAR, FUSER, PREFIX)
"""The conditions whose gain the report gives as a share of the ceiling's."""


def kv_condition(name: str, source: str = "prompt") -> Condition:
    plain = PLAIN_PROMPTS[source]
    prompt = plain.get(name, "placeholder" if source == "prompt" else "query")
    return Condition(name, prompt=prompt, vector=None if name in plain else "kv", mode="prefix")


def versus(
    n_boot: int, seed_scores: list[dict[str, ItemScores]], name: str, source: str, reference: str
) -> dict:
    """``name`` against ``reference`` on the same items: the summary (two-level bootstrap CIs, per-seed
    estimates) and its seed-level p-values (``stats.seeds_combined_p``) in accuracy and the primary metric."""
    summary = summarize_condition(n_boot, seed_scores, kv_condition(name, source), baseline=reference)
    for metric, attribute in (("accuracy", "correct"), (PRIMARY, PRIMARY)):
        differences = [
            (getattr(s[name], attribute) - getattr(s[reference], attribute)).numpy() for s in seed_scores
        ]
        summary[f"delta_{metric}_p_seeds"] = seeds_combined_p(differences)
    return summary


def against(n_boot: int, seed_scores: list[dict[str, ItemScores]], source: str, plain: bool = True) -> dict:
    """Every KV condition vs the baseline, the sender-reading ones vs the learned prefix (Holm over them,
    on seed-level p-values) and vs their own shuffled control, on the same items (``plain``: with the
    receiver's other plain prompts)."""
    present = [n for n in PLAIN_PROMPTS[source] if plain and n != "baseline"] + list(kv_conditions(source))
    versus_prefix = {name: versus(n_boot, seed_scores, name, source, PREFIX) for name in SENDER_READING}
    p_values = [versus_prefix[n]["delta_accuracy_p_seeds"] for n in SENDER_READING]
    return {
        "conditions": {name: versus(n_boot, seed_scores, name, source, "baseline") for name in present},
        "versus_prefix": versus_prefix,
        "holm_p_versus_prefix": dict(zip(SENDER_READING, holm(p_values), strict=True)),
        "versus_shuffled": {
            name: versus(n_boot, seed_scores, name, source, f"{name} shuffled") for name in SENDER_READING
        },
    }


def share(part: dict, whole: dict, metric: str = "accuracy") -> float | None:
    """``part``'s gain as a share of ``whole``'s (None where ``whole`` gains nothing)."""
    gain = whole[f"delta_{metric}"]
    return None if gain <= 0 else part[f"delta_{metric}"] / gain


def kv_section(
    n_boot: int,
    min_oracle_gap: float,
    runs: Sequence[SeedKV],
    residual: dict[int, dict],
    same_model: bool,
) -> dict:
    """results.json's ``kv_channel``: the full cache's statistics and verdict, per site (receiver layer in
    ``residual``, with the best residual bridge there) the band after it, the shares of the ceiling,
    attention mass, fits, CPU time."""
    source = runs[0].source
    full = against(n_boot, [r.scores for r in runs], source)
    sites = {}
    for layer, best_residual in residual.items():
        if layer in runs[0].sites:
            band = against(n_boot, [r.scores | r.sites[layer] for r in runs], source, plain=False)
            sites[str(layer)] = band | {"band": after_site(layer), "residual": best_residual}
    no_band = [layer for layer in residual if layer not in runs[0].sites]
    first = runs[0].fit
    self_reference = same_model and all(s == j for j, s in enumerate(first["sender_layers"]))
    heldout = [r.fit["ridge_heldout"] for r in runs]
    kv, ceiling = full["conditions"], CEILING[source]
    section = full | {
        "source": source,
        "ceiling": ceiling,
        "layer_map": first["layer_map"],
        "self_reference": self_reference,
        "sites": sites,
        "sites_without_band": no_band,
        "share_of_ceiling": {
            name: {metric: share(kv[name], kv[ceiling], metric) for metric in ("accuracy", PRIMARY)}
            for name in SHARE_OF
        },
        "ceiling_share_of_oracle": {
            metric: share(kv[ceiling], kv["oracle"], metric) for metric in ("accuracy", PRIMARY)
        },
        "max_logit_difference": [r.fit.get("max_logit_difference", {}) for r in runs],
        "attention_mass": {
            name: np.mean([r.attention_mass[name] for r in runs], axis=0).tolist()
            for name in kv_conditions(source)
        },
        "fits": [r.fit for r in runs],
        "heldout_normalized_cosine": {
            part: float(np.mean([h[part]["normalized_cosine"] for h in heldout]))
            for part in ("keys", "values")
        },
        "cpu_minutes_per_seed": [r.cpu_seconds / 60 for r in runs],
        "wall_minutes_per_seed": [r.wall_seconds / 60 for r in runs],
    }
    verdict, explanation = judge(section, min_oracle_gap)
    return section | {"verdict": verdict, "explanation": explanation}


def fmt_share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def judge(section: dict, min_oracle_gap: float) -> tuple[str, str]:
    """The transfer verdict of the KV channel, and the numbers behind it in one paragraph."""
    kv, versus_prefix, holm_p = (
        section["conditions"],
        section["versus_prefix"],
        section["holm_p_versus_prefix"],
    )
    source = section.get("source", "prompt")
    versus_shuffled, oracle = section["versus_shuffled"], kv["oracle"]
    valid = task_valid(oracle["delta_accuracy"], oracle["delta_accuracy_ci"], min_oracle_gap)
    name, prefix = section.get("ceiling", CEILING[source]), kv[PREFIX]
    ceiling, other = kv[name], kv[REFERENCES[source][1]]
    shares = section.get("share_of_ceiling", {})
    best = max(SENDER_READING, key=lambda n: kv[n]["delta_accuracy"])
    delivered = "the receiver's facts F" if source == "facts" else "the sender's prompt P"
    numbers = (
        f"Task validity: oracle {fmt_delta(oracle)} over the baseline ({'valid' if valid else 'NOT valid'}; "
        f"n={oracle['n']}). The sender reads {delivered}; layer map {section['layer_map']}; every receiver "
        f"layer reads the delivered positions. The ceiling, '{name}' (a priori: it carries nothing the "
        f"channel could not): {fmt_delta(ceiling)}"
    )
    if source == "facts":
        oracle_share = section.get("ceiling_share_of_oracle", {}).get("accuracy")
        numbers += (
            f", {fmt_share(oracle_share)} of the oracle's gain (the same text as one prompt); the text "
            f"control, '{READS_OTHER_F}': {fmt_delta(other)}. "
        )
    else:
        numbers += f"; the upper reference '{READS_GOLD_PB}' (not a ceiling: it carries the gold hop-1 answer): {fmt_delta(other)}. "
    numbers += (
        f"{LINEAR}: {fmt_delta(kv[LINEAR])} ({fmt_share(shares.get(LINEAR, {}).get('accuracy'))} of the "
        f"ceiling's gain); {FUSER}: {fmt_delta(kv[FUSER])} ({fmt_share(shares.get(FUSER, {}).get('accuracy'))});"
        f" learned prefix (no sender input): {fmt_delta(prefix)}. Beyond the learned prefix on the same items: "
        f"{LINEAR} {fmt_delta(versus_prefix[LINEAR])} (Holm p over seeds = {holm_p[LINEAR]:.2g}), {FUSER} "
        f"{fmt_delta(versus_prefix[FUSER])} (Holm p = {holm_p[FUSER]:.2g}); beyond its own shuffled control: "
        f"{best} {fmt_delta(versus_shuffled[best])}; in the candidate logit difference, {best} beyond the "
        f"prefix {fmt_delta(versus_prefix[best], PRIMARY)}."
    )
    for layer, site in section["sites"].items():
        numbers += (
            f" Read only {site['band']}: {FUSER} {fmt_delta(site['conditions'][FUSER])}, beyond the prefix "
            f"{fmt_delta(site['versus_prefix'][FUSER])}; the best residual bridge at receiver layer {layer} "
            f"('{site['residual']['name']}'): {fmt_delta(site['residual'])}."
        )
    for layer in section.get("sites_without_band", ()):
        numbers += (
            f" Receiver layer {layer} is the last: no layer reads after it, so it has no per-site band."
        )
    cosine = section["heldout_normalized_cosine"]
    numbers += (
        f" The {LINEAR} map's fit on held-out items (normalized cosine, mean over layers and seeds): keys "
        f"{cosine['keys']:.3f}, values {cosine['values']:.3f}. CPU time per seed: "
        f"{', '.join(f'{m:.1f}' for m in section['cpu_minutes_per_seed'])} min."
    )
    if not valid:
        return "untestable here", numbers + " The task is not valid here: no channel could show a help."
    if section["self_reference"] and source == "facts":
        gaps = [g.get(f"{LINEAR} vs {name}", float("nan")) for g in section.get("max_logit_difference", ())]
        return "positive control", numbers + (
            f" Sender and receiver are one model under the identity layer map: {LINEAR} delivers the "
            f"receiver's own cache of F, and its logits equal the ceiling's (largest difference per seed: "
            f"{', '.join(f'{g:.1g}' for g in gaps)}; allowed {EXACT:g}). The same code that carries nothing "
            "elsewhere reaches the ceiling here. Rerun with --kv-layer-map shift:K for a test of translation."
        )
    if section["self_reference"]:
        return "untestable here", numbers + (
            f" Sender and receiver are one model and the layer map delivers each layer's own cache, so "
            f"{LINEAR} is the receiver reading P by construction: the reference, not a channel. Rerun with "
            "--kv-layer-map shift:K."
        )
    gains = [
        n
        for n in SENDER_READING
        if helps(versus_prefix[n]) and holm_p[n] < FAMILY_ALPHA and helps(versus_shuffled[n])
    ]
    if gains:
        return "transfer helps", numbers + (
            f" The sender's cache helps beyond adaptation ({', '.join(gains)}): more than the learned prefix "
            "and more than the same map fed another item's cache."
        )
    if not helps(ceiling):
        return "untestable here", numbers + (
            f" The ceiling, the receiver's own cache of the delivered text, does not help: no untrained map "
            f"of it could, whatever the map. The trained {FUSER} does not beat the learned prefix and its "
            "own shuffle either, so nothing here shows a message."
        )
    tail = " The sender's cache does not help beyond what the learned prefix gives"
    if helps(prefix):
        tail += ", which helps by itself: a gain of a trained channel here would be adaptation, not a message"
    return "no transfer", numbers + tail + "."
