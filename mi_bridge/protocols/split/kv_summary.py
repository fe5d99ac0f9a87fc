"""The KV channel over seeds: statistics, verdict, tables and figure panels of the run's KV section
(``--kv-channel``, ``protocols.split.sections.kv``).

The verdict reads the full cache (every receiver layer reads the delivered positions: what the sources
were trained on): validity first, then the self-pair trap, then the ceiling, then the sender's gain beyond
the learned constant prefix (Holm over the sender-reading family) and beyond its own shuffled control. Per
site, the same trained sources read only by the layers after the site stand beside the best residual
bridge there: what the cache does through the layers a residual injection at that site reaches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mi_bridge.core.evaluate import Condition, ItemScores
from mi_bridge.protocols.split.kv_channel import (
    CEILINGS,
    FUSER,
    KV_CONDITIONS,
    LINEAR,
    PLAIN_PROMPTS,
    PREFIX,
    READS_P,
    READS_PB,
    SENDER_READING,
    SeedKV,
    after_site,
)
from mi_bridge.protocols.split.summary import summarize_condition
from mi_bridge.report.render import condition_table
from mi_bridge.report.result import Table
from mi_bridge.stats import error_bars, fmt_delta, helps, holm, task_valid

SITE_ROWS = (READS_P, LINEAR, FUSER, f"{FUSER} shuffled", PREFIX)
"""The conditions the per-site table shows."""


def kv_condition(name: str) -> Condition:
    prompt = PLAIN_PROMPTS.get(name, "placeholder")
    return Condition(name, prompt=prompt, vector=None if name in PLAIN_PROMPTS else "kv", mode="prefix")


def against(n_boot: int, seed_scores: list[dict[str, ItemScores]], plain: bool = True) -> dict:
    """Every KV condition vs the baseline, the sender-reading ones vs the learned prefix (Holm over them)
    and vs their own shuffled control, on the same items (``plain``: with the text relay and oracle)."""
    summary = lambda name, baseline="baseline": summarize_condition(
        n_boot, seed_scores, kv_condition(name), baseline=baseline
    )
    present = [n for n in PLAIN_PROMPTS if plain and n != "baseline"] + list(KV_CONDITIONS)
    versus_prefix = {name: summary(name, PREFIX) for name in SENDER_READING}
    p_values = [versus_prefix[n]["delta_accuracy_p"] for n in SENDER_READING]
    return {
        "conditions": {name: summary(name) for name in present},
        "versus_prefix": versus_prefix,
        "holm_p_versus_prefix": dict(zip(SENDER_READING, holm(p_values), strict=True)),
        "versus_shuffled": {name: summary(name, f"{name} shuffled") for name in SENDER_READING},
    }


def kv_section(
    n_boot: int,
    min_oracle_gap: float,
    runs: Sequence[SeedKV],
    residual: dict[int, dict],
    same_model: bool,
) -> dict:
    """results.json's ``kv_channel``: the full cache's statistics and verdict, per site (receiver layer in
    ``residual``, with the best residual bridge there) the band after it, attention mass, fits, CPU time."""
    full = against(n_boot, [r.scores for r in runs])
    sites = {}
    for layer, best_residual in residual.items():
        if layer in runs[0].sites:
            band = against(n_boot, [r.scores | r.sites[layer] for r in runs], plain=False)
            sites[str(layer)] = band | {"band": after_site(layer), "residual": best_residual}
    no_band = [layer for layer in residual if layer not in runs[0].sites]
    first = runs[0].fit
    self_reference = same_model and all(s == j for j, s in enumerate(first["sender_layers"]))
    heldout = [r.fit["ridge_heldout"] for r in runs]
    section = full | {
        "layer_map": first["layer_map"],
        "self_reference": self_reference,
        "sites": sites,
        "sites_without_band": no_band,
        "attention_mass": {
            name: np.mean([r.attention_mass[name] for r in runs], axis=0).tolist() for name in KV_CONDITIONS
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


def judge(section: dict, min_oracle_gap: float) -> tuple[str, str]:
    """The transfer verdict of the KV channel, and the numbers behind it in one paragraph."""
    kv, versus_prefix, holm_p = (
        section["conditions"],
        section["versus_prefix"],
        section["holm_p_versus_prefix"],
    )
    versus_shuffled, oracle = section["versus_shuffled"], kv["oracle"]
    valid = task_valid(oracle["delta_accuracy"], oracle["delta_accuracy_ci"], min_oracle_gap)
    ceiling, prefix = max((kv[name] for name in CEILINGS), key=lambda s: s["delta_accuracy"]), kv[PREFIX]
    best = max(SENDER_READING, key=lambda n: kv[n]["delta_accuracy"])
    numbers = (
        f"Task validity: oracle {fmt_delta(oracle)} over the baseline ({'valid' if valid else 'NOT valid'}; "
        f"n={oracle['n']}). Layer map {section['layer_map']}; every receiver layer reads the delivered "
        f"positions. The ceilings, the receiver reading P itself: {fmt_delta(kv[READS_P])}, and P + B: "
        f"{fmt_delta(kv[READS_PB])}. {LINEAR}: {fmt_delta(kv[LINEAR])}; {FUSER}: {fmt_delta(kv[FUSER])}; "
        f"learned prefix (no sender input): {fmt_delta(prefix)}. Beyond the learned prefix on the same items: "
        f"{LINEAR} {fmt_delta(versus_prefix[LINEAR])} (Holm p = {holm_p[LINEAR]:.2g}), {FUSER} "
        f"{fmt_delta(versus_prefix[FUSER])} (Holm p = {holm_p[FUSER]:.2g}); beyond its own shuffled control: "
        f"{best} {fmt_delta(versus_shuffled[best])}."
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
    if section["self_reference"]:
        return "untestable here", numbers + (
            f" Sender and receiver are one model and the layer map delivers each layer's own cache, so "
            f"{LINEAR} is the receiver reading P by construction: the reference, not a channel. Rerun with "
            "--kv-layer-map shift:K."
        )
    if not helps(ceiling):
        return "untestable here", numbers + (
            " Even the receiver's own cache of P (or of P + B) does not help: no cache of P could, whatever "
            "the map."
        )
    gains = [
        n
        for n in SENDER_READING
        if helps(versus_prefix[n]) and holm_p[n] < 0.05 and helps(versus_shuffled[n])
    ]
    if gains:
        return "transfer helps", numbers + (
            f" The sender's cache helps beyond adaptation ({', '.join(gains)}): more than the learned prefix "
            "and more than the same map fed another item's cache."
        )
    tail = " The sender's cache does not help beyond what the learned prefix gives"
    if helps(prefix):
        tail += ", which helps by itself: a gain of a trained channel here would be adaptation, not a message"
    return "no transfer", numbers + tail + "."


def kv_tables(section: dict, extra_rows: Sequence[dict] = ()) -> list[Table]:
    """The full cache's conditions (with ``extra_rows`` beside them), the sender against the prefix and
    its own shuffle, the sites, the attention mass and the training logs."""
    kv, holm_p = section["conditions"], section["holm_p_versus_prefix"]
    rows = [kv[name] for name in KV_CONDITIONS] + list(extra_rows)
    rows += [kv[name] for name in PLAIN_PROMPTS if name in kv]
    tables = [
        condition_table(
            f"KV channel: {section['verdict']} (every layer reads the delivered cache; Δ vs baseline)", rows
        ),
        Table(
            "KV channel: the sender's cache against the adaptation control and its own shuffle (paired)",
            ("condition", "vs learned prefix", f"Holm p (over {len(SENDER_READING)})", "vs own shuffled"),
            [
                (
                    n,
                    fmt_delta(section["versus_prefix"][n]),
                    f"{holm_p[n]:.2g}",
                    fmt_delta(section["versus_shuffled"][n]),
                )
                for n in SENDER_READING
            ],
        ),
    ]
    if section["sites"]:
        sites = list(section["sites"].items())
        site_rows = [(name, *(fmt_delta(s["conditions"][name]) for _, s in sites)) for name in SITE_ROWS]
        site_rows.append(
            (f"{FUSER} − learned prefix", *(fmt_delta(s["versus_prefix"][FUSER]) for _, s in sites))
        )
        site_rows.append(
            (
                "best residual bridge",
                *(f"{fmt_delta(s['residual'])} '{s['residual']['name']}'" for _, s in sites),
            )
        )
        tables.append(
            Table(
                "KV channel per site: the same sources read only by the layers after the site, beside the "
                "best residual bridge there (Δ accuracy vs baseline, 95% CI)",
                ("condition", *(f"{s['band']} (site L{layer})" for layer, s in sites)),
                site_rows,
            )
        )
    mass = section["attention_mass"]
    tables.append(
        Table(
            "KV channel: attention of the answer position on the delivered positions (mean over layers, "
            "heads, items)",
            ("condition", "attention mass"),
            [(name, f"{np.mean(mass[name]):.3f}") for name in KV_CONDITIONS],
            in_terminal=False,
        )
    )
    tables.append(
        Table(
            "KV channel: training (per seed)",
            ("seed", "source", "trained numbers", "epochs run", "best epoch", "held-out loss: start → best"),
            [
                (
                    str(fit["seed"]),
                    name,
                    f"{log['n_trainable']:,}",
                    str(len(log["fit_loss"])),
                    str(log["best_epoch"]),
                    f"{log['heldout_loss'][0]:.3f} → {log['heldout_loss'][log['best_epoch']]:.3f}",
                )
                for fit in section["fits"]
                for name, log in fit["training"].items()
            ],
            in_terminal=False,
        )
    )
    return tables


def kv_panels(axes, section: dict, extra_rows: Sequence[dict] = ()) -> None:
    """Three panels: Δ accuracy and Δ log p(answer) per condition (a trained source can raise log p by
    adaptation alone: its shuffled control and the learned prefix show how much), and the attention mass
    on the delivered positions per layer."""
    conditions = [section["conditions"][n] for n in KV_CONDITIONS] + list(extra_rows)
    names = [c["name"] for c in conditions]
    for ax, metric, label in ((axes[0], "accuracy", "Δ accuracy"), (axes[1], "logprob", "Δ log p(answer)")):
        values = [c[f"delta_{metric}"] for c in conditions]
        errors = error_bars(values, [c[f"delta_{metric}_ci"] for c in conditions])
        ax.barh(range(len(names)), values, xerr=errors, color="tab:blue", alpha=0.7)
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [], fontsize=7)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_xlabel(f"KV channel: {label} vs baseline (95% CI)", fontsize=8)
    for name, mass in section["attention_mass"].items():
        if " " not in name or name in (*CEILINGS, PREFIX, f"{FUSER} shuffled"):
            axes[2].plot(mass, marker=".", label=name)
    axes[2].set_xlabel("receiver layer")
    axes[2].set_ylabel("attention on delivered positions", fontsize=8)
    axes[2].legend(fontsize=7)
