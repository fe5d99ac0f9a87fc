"""The seed protocol's results.json sections: every condition with its paper metrics, paired Δ vs no
injection, the published number beside it, and the audit."""

from __future__ import annotations

import zlib

from mi_bridge.config import ExperimentConfig
from mi_bridge.protocols.seed import audit
from mi_bridge.protocols.seed.experiment import (
    BASELINE,
    FLOORS,
    ORACLE,
    PRIMARY_METRIC,
    SeedRun,
)
from mi_bridge.protocols.seed.task import (
    load_published,
)
from mi_bridge.stats import mean_with_ci, sign_test_p

EVERY_POSITION = "every position (as released: the models share one tokenizer)"
LAST_TOKEN = (
    "last token (the models tokenize differently: the bridge is fitted on last-token pairs, each model's "
    "state after the whole text; 'additive' adds 0.01 × the translated last-token state at every prompt "
    "position, as the released code does; the conditions whose vector is the sender's translated state "
    "at each prompt position (the 0.3 blend, scale-corrected, replace, shuffled translation) need equal "
    "token ids and were not run)"
)
"""results.json's ``variant``: which of the seed protocol's two forms ran."""


def summarize(config: ExperimentConfig, outcomes, strengths, meta, run: SeedRun) -> dict:
    """Per condition (runs averaged per item, so n counts items): every metric's mean with CI, the paired
    Δ vs no injection with its sign-test p, the published number and the difference; and the audit."""
    published = load_published()
    baseline = outcomes[BASELINE.name]
    rows = []
    for key, by_metric in outcomes.items():
        name = meta[key]["condition"]
        paper = published["conditions"].get(name)
        row = {
            "name": key,
            "condition": name,
            "bridge": meta[key]["bridge"],
            "runs": len(by_metric[PRIMARY_METRIC]),
        }
        row["n"] = len(by_metric[PRIMARY_METRIC][0])  # items: runs are averaged per item
        for metric, runs in by_metric.items():
            diff = audit.paired_differences(runs, baseline[metric])
            seed = zlib.crc32(f"{key}/{metric}".encode())
            row[metric] = mean_with_ci(
                audit.per_item_mean(runs), n_resamples=config.n_bootstrap, seed=seed
            ) | {"per_run": [float(r.mean()) for r in runs]}
            row[f"delta_{metric}"] = mean_with_ci(diff, n_resamples=config.n_bootstrap, seed=seed + 1) | {
                "p": sign_test_p(diff)  # per item, over its runs' mean difference; for the Holm correction
            }
            if paper is not None and metric in paper:
                row.setdefault("published", {})[metric] = paper[metric]
                row.setdefault("difference", {})[metric] = row[metric]["mean"] - paper[metric]
        rows.append(row)
    primary = {key: by_metric[PRIMARY_METRIC] for key, by_metric in outcomes.items()}
    audit_section = {
        "metric": PRIMARY_METRIC,
        "information_asymmetry": audit.information_asymmetry(run.tokens, run.tokens)
        | {"note": "both models read the same prompt: the sender sees nothing the receiver lacks"},
        "injection_strength": {key: audit.strength_entry(norms) for key, norms in strengths.items()},
        "floor": audit.floor_equivalence(
            {k: v for k, v in primary.items() if k != ORACLE.name}, FLOORS, n_resamples=config.n_bootstrap
        ),
        "validity": audit.task_validity(
            primary[ORACLE.name],
            primary[BASELINE.name],
            min_gap=config.min_oracle_gap,
            n_resamples=config.n_bootstrap,
        )
        | {"oracle": ORACLE.name},
    }
    return {
        "protocol": "seed",
        "variant": LAST_TOKEN if run.two_tokenizers else EVERY_POSITION,
        "audit": audit_section,
        "conditions": rows,
        "published_source": published["source"],
    }
