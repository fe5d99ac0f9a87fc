"""``python -m mi_bridge.calibrate``: can this pair do the task at all, in which prompt form?

Before an expensive run, it measures for every template and k the two things a valid run needs: the
sender's hop-1 accuracy (B picked among the k in-context B's) and the receiver's oracle - baseline gap
(gold B in the slot against the neutral placeholder). Both on the same sampled items and prompts the run
uses, with exact (Clopper-Pearson) intervals for the rates and a paired bootstrap interval for the gap;
``valid`` applies the run's own rule (gap >= ``--min-oracle-gap`` with its CI above 0).

Examples:
    python -m mi_bridge.calibrate --pair smollm2                  # both templates, k = 2, 3, 4
    HF_HUB_OFFLINE=1 python -m mi_bridge.calibrate --pair pythia --k 4 --templates list
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from mi_bridge import cli
from mi_bridge.config import TEMPLATES, ExperimentConfig
from mi_bridge.core import progress
from mi_bridge.errors import UserError
from mi_bridge.files import write_text_atomic
from mi_bridge.stats import fmt_ci, paired_bootstrap_ci, task_valid


def exact_interval(successes: int, n: int) -> list[float]:
    """Clopper-Pearson 95% interval of a rate: never of zero width, also at 0/n and n/n."""
    from scipy.stats import binomtest

    interval = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="exact")
    return [float(interval.low), float(interval.high)]


def rate(correct: np.ndarray) -> dict:
    n, successes = int(correct.size), int(correct.sum())
    return {"mean": successes / n, "ci": exact_interval(successes, n), "n": n}


def candidate_correct(model, tokens, candidates, gold, batch_size: int) -> np.ndarray:
    """Per item, 1 if the next-token logit of the gold candidate is the highest of the k candidates."""
    from mi_bridge.core.capture import capture_resid_post

    logits = capture_resid_post(
        model, tokens, layers=[0], positions=[-1], with_answer_logits=True, batch_size=batch_size
    ).answer_logits
    return (logits.gather(1, candidates).argmax(-1) == gold).numpy().astype(np.float64)


def calibrate_language(
    pair,
    language,
    k: int,
    *,
    n_items: int,
    seed: int,
    batch_size: int,
    n_bootstrap: int,
    min_gap: float,
    sender_language=None,
) -> dict:
    """The calibration row of one prompt form and k (``sender_language``: the sender's, where the two
    tokenizers differ; the same items in its tokens)."""
    from mi_bridge.models.task import sample_items

    items = sample_items(language, k=k, n_items=n_items, seed=seed)
    on_sender = (
        items if sender_language is None else sample_items(sender_language, k=k, n_items=n_items, seed=seed)
    )
    sender = candidate_correct(
        pair.sender, on_sender.sender_tokens, on_sender.bridge_candidates, on_sender.gold_index, batch_size
    )
    oracle, baseline = (
        candidate_correct(pair.receiver, tokens, items.answer_candidates, items.gold_index, batch_size)
        for tokens in (items.oracle_tokens, items.placeholder_tokens)
    )
    gap = float((oracle - baseline).mean())
    gap_ci = list(paired_bootstrap_ci(oracle - baseline, n_resamples=n_bootstrap, seed=seed))
    return {
        "language": language.name,
        "k": k,
        "n": n_items,
        "chance": 1 / k,
        "sender_hop1": rate(sender),
        "receiver_oracle": rate(oracle),
        "receiver_baseline": rate(baseline),
        "oracle_minus_baseline": {"mean": gap, "ci": gap_ci},
        "valid": task_valid(gap, gap_ci, min_gap),
        "example": {
            "sender": (sender_language or language).decode(on_sender.sender_tokens[0].tolist()),
            "receiver": language.decode(items.oracle_tokens[0].tolist()),
        },
    }


def calibrate(config: ExperimentConfig, templates: list[str], ks: list[int], pair) -> list[dict]:
    """Rows for every template x k on ``config``'s loaded pair, without printing."""
    from mi_bridge.models.loading import pair_languages

    rows = []
    for template in progress.track(templates, "templates"):
        language, sender_language = (
            (pair.language, None)
            if not config.family.natural_language
            else pair_languages(
                pair.sender.tokenizer, pair.receiver.tokenizer, replace(config, template=template)
            )
        )
        for k in ks:
            if k > language.max_k():
                raise UserError(f"k={k} is larger than the entity pool allows (max k={language.max_k()})")
            row = calibrate_language(
                pair,
                language,
                k,
                n_items=config.n_items,
                seed=config.extra.get("seed", 0),
                batch_size=config.batch_size,
                n_bootstrap=config.n_bootstrap,
                min_gap=config.min_oracle_gap,
                sender_language=sender_language,
            )
            rows.append({"template": template, **row})
    return rows


def render(rows: list[dict], title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in (
        "template",
        "k",
        "chance",
        "sender hop-1 [95% CI]",
        "oracle",
        "baseline",
        "oracle - baseline [95% CI]",
        "valid",
        "n",
    ):
        table.add_column(column, justify="left" if column == "template" else "right")
    for r in rows:
        table.add_row(
            r["template"],
            str(r["k"]),
            f"{r['chance']:.3f}",
            f"{r['sender_hop1']['mean']:.3f} {fmt_ci(r['sender_hop1']['ci'])}",
            f"{r['receiver_oracle']['mean']:.3f}",
            f"{r['receiver_baseline']['mean']:.3f}",
            f"{r['oracle_minus_baseline']['mean']:+.3f} {fmt_ci(r['oracle_minus_baseline']['ci'])}",
            "yes" if r["valid"] else "no",
            str(r["n"]),
        )
    progress.console.print(table)


CONFIG_FLAGS = (
    "pair",
    "sender",
    "receiver",
    "sender_revision",
    "receiver_revision",
    "device",
    "dtype",
    "batch_size",
    "n_bootstrap",
    "min_oracle_gap",
)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(
        prog="python -m mi_bridge.calibrate",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_config_flags(parser, only=CONFIG_FLAGS)
    parser.set_defaults(config=None)  # cli.config_from_args reads no config file here
    parser.add_argument(
        "--templates",
        default=",".join(TEMPLATES),
        help=f"comma-separated prompt forms (default: {','.join(TEMPLATES)})",
    )
    parser.add_argument(
        "--k", dest="ks", default="2,3,4", help="comma-separated facts per hop (default: 2,3,4)"
    )
    parser.add_argument(
        "--n-items", dest="items", type=int, default=200, help="items per template and k (default: 200)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the items' seed (default: 0)")
    parser.add_argument(
        "--out", dest="json_out", type=Path, help="also write the rows as JSON to this file (never replaced)"
    )
    return parser


def parse_list(text: str, cast, what: str) -> list:
    try:
        values = [cast(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--{what} takes a comma-separated list (got {text!r})") from None
    if not values:
        raise UserError(f"--{what} must name at least one value")
    return values


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = build_parser().parse_args(argv)
        templates = parse_list(args.templates, str, "templates")
        ks = parse_list(args.ks, int, "k")
        if min(ks) < 2 or args.items < 16:
            raise UserError("calibration needs k >= 2 and --n-items >= 16")
        config = replace(cli.config_from_args(args), k=max(ks), n_items=args.items, extra={"seed": args.seed})
        if not config.family.natural_language:  # its own prompt form only
            templates = list(config.family.templates)
        elif bad := sorted(set(templates) - set(TEMPLATES)):
            raise UserError(f"unknown template {bad[0]!r}; choose from {', '.join(TEMPLATES)}")
        if args.json_out is not None and args.json_out.exists():
            raise UserError(
                f"{args.json_out} exists; calibration never replaces a file (choose another --out)"
            )
        if args.json_out is not None:
            cli.check_writable(args.json_out)
        from mi_bridge.models.loading import load_pair

        pair = load_pair(config)
        rows = calibrate(config, templates, ks, pair=pair)
        render(rows, f"Calibration: {config.sender_name} -> {config.receiver_name}, {args.items} items each")
        if args.json_out is not None:
            record = {
                "pair": [config.sender_name, config.receiver_name],
                "models": {"sender": pair.sender_identity, "receiver": pair.receiver_identity},
                "items_seed": args.seed,
                "versions": cli.versions(),
                "rows": rows,
            }
            write_text_atomic(args.json_out, json.dumps(record, indent=2) + "\n")
        return 0

    return cli.one_line_errors(body, "nothing was written")


if __name__ == "__main__":
    sys.exit(main())
