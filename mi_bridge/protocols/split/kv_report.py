"""The KV channel's section of a run's report and figure (``--kv-channel``): its tables and its row of
three panels, drawn from results.json's ``kv_channel`` (``kv_summary`` computes it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mi_bridge.protocols.split.kv_channel import (
    CEILING,
    FUSER,
    PLAIN_PROMPTS,
    PREFIX,
    REFERENCES,
    SENDER_READING,
    kv_conditions,
)
from mi_bridge.protocols.split.kv_summary import PRIMARY, SHARED_ROWS, fmt_share
from mi_bridge.report.render import condition_table, seeds_text
from mi_bridge.report.result import Table
from mi_bridge.stats import error_bars, fmt_delta


def kv_tables(section: dict, extra_rows: Sequence[dict] = ()) -> list[Table]:
    """The full cache's conditions (with ``extra_rows`` beside them), the primary metric with per-seed
    estimates and shares of the ceiling, the sender against the prefix and its own shuffle, the sites, the
    attention mass and the training logs."""
    source = section.get("source", "prompt")
    kv, holm_p, names = section["conditions"], section["holm_p_versus_prefix"], kv_conditions(source)
    rows = [kv[name] for name in names if name in kv] + list(extra_rows)
    rows += [kv[name] for name in PLAIN_PROMPTS[source] if name in kv]
    shares = section.get("share_of_ceiling", {})
    tables = [
        condition_table(
            f"KV channel: {section['verdict']} (every layer reads the delivered cache; Δ vs baseline)", rows
        ),
        Table(
            "KV channel: the candidate logit difference (gold minus the other candidates' mean; the primary "
            "continuous metric), per seed, and each gain as a share of the ceiling's",
            (
                "condition",
                f"Δ{PRIMARY} [95% CI]",
                f"Δ{PRIMARY} per seed",
                "Δacc per seed",
                "share of ceiling (acc, logit diff)",
                "p (seeds combined)",
            ),
            [
                (
                    c["name"],
                    fmt_delta(c, PRIMARY),
                    seeds_text(c[f"delta_{PRIMARY}_per_seed"], signed=True),
                    seeds_text(c["delta_accuracy_per_seed"], signed=True),
                    ", ".join(fmt_share(v) for v in shares[c["name"]].values())
                    if c["name"] in shares
                    else "",
                    f"{c['delta_accuracy_p_seeds']:.2g}" if "delta_accuracy_p_seeds" in c else "",
                )
                for c in [kv[name] for name in (*names, *PLAIN_PROMPTS[source]) if name in kv]
            ],
        ),
        Table(
            "KV channel: the sender's cache against the adaptation control and its own shuffle (paired; p: "
            "per-seed one-sided sign tests combined, Holm over the two)",
            (
                "condition",
                "vs learned prefix",
                f"Δ{PRIMARY} vs prefix",
                f"Holm p (over {len(SENDER_READING)})",
                "vs own shuffled",
            ),
            [
                (
                    n,
                    fmt_delta(section["versus_prefix"][n]),
                    fmt_delta(section["versus_prefix"][n], PRIMARY),
                    f"{holm_p[n]:.2g}",
                    fmt_delta(section["versus_shuffled"][n]),
                )
                for n in SENDER_READING
            ],
        ),
    ]
    if section["sites"]:
        sites = list(section["sites"].items())
        site_rows = [
            (name, *(fmt_delta(s["conditions"][name]) for _, s in sites))
            for name in (CEILING[source], *SHARED_ROWS)
        ]
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
            "KV channel: attention of the answer position on the delivered positions after the first (a BOS, "
            "an attention sink; mean over layers, heads, items)",
            ("condition", "attention mass"),
            [(name, f"{np.mean(mass[name]):.3f}") for name in names],
            in_terminal=False,
        )
    )
    tables.append(
        Table(
            "KV channel: training (per seed; accuracy is k-way, the checkpoint the best held-out accuracy)",
            (
                "seed",
                "source",
                "trained numbers",
                "items (train/held out)",
                "loss",
                "epochs run",
                "best epoch",
                "train acc",
                "held-out acc: start → best",
                "held-out loss: start → best",
            ),
            [
                training_row(fit["seed"], name, log)
                for fit in section["fits"]
                for name, log in fit["training"].items()
            ],
            in_terminal=False,
        )
    )
    return tables


def training_row(seed: int, name: str, log: dict) -> tuple[str, ...]:
    """One trained source's line of the training table (records of old lack the accuracies)."""
    best = log["best_epoch"]
    accuracy = log.get("heldout_accuracy") or []
    return (
        str(seed),
        name,
        f"{log['n_trainable']:,}",
        f"{log.get('n_train', '?')}/{log.get('n_heldout', '?')}",
        log.get("loss", "vocabulary"),
        str(len(log["fit_loss"])),
        str(best),
        f"{log['train_accuracy']:.3f}" if "train_accuracy" in log else "",
        f"{accuracy[0]:.3f} → {accuracy[best]:.3f}" if accuracy else "",
        f"{log['heldout_loss'][0]:.3f} → {log['heldout_loss'][best]:.3f}",
    )


def kv_panels(axes, section: dict, extra_rows: Sequence[dict] = ()) -> None:
    """Three panels: Δ accuracy and Δ candidate logit difference per condition, and the attention mass on
    the delivered positions (after the first) per layer."""
    source = section.get("source", "prompt")
    conditions = [section["conditions"][n] for n in kv_conditions(source)] + list(extra_rows)
    names = [c["name"] for c in conditions]
    panels = ((axes[0], "accuracy", "Δ accuracy"), (axes[1], PRIMARY, "Δ candidate logit difference"))
    for ax, metric, label in panels:
        values = [c[f"delta_{metric}"] for c in conditions]
        errors = error_bars(values, [c[f"delta_{metric}_ci"] for c in conditions])
        ax.barh(range(len(names)), values, xerr=errors, color="tab:blue", alpha=0.7)
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [], fontsize=7)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_xlabel(f"KV channel: {label} vs baseline (95% CI)", fontsize=8)
    for name, mass in section["attention_mass"].items():
        if " " not in name or name in (*REFERENCES[source], PREFIX, f"{FUSER} shuffled"):
            axes[2].plot(mass, marker=".", label=name)
    axes[2].set_xlabel("receiver layer")
    axes[2].set_ylabel("attention on delivered positions", fontsize=8)
    axes[2].legend(fontsize=7)
