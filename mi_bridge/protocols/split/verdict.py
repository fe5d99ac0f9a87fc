"""The split run's verdict in three short parts: *result* (the label at each evaluated site, with the
numbers behind it), *why* (the first stage where the signal is lost, from the decomposition) and *next*
(commands to run, with the run's own flags). Pure functions over results.json's sections.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from mi_bridge.config import ExperimentConfig
from mi_bridge.families import family
from mi_bridge.protocols.split.diagnosis import (
    best_translated,
    ceiling,
    ceiling_survives,
    holm_p,
    of_vector,
    pre_lookup_layers,
    surviving_translated,
    verdict_label,
)
from mi_bridge.protocols.split.options import Options
from mi_bridge.stats import FAMILY_ALPHA, fmt_delta, fmt_estimate, fmt_rate

NOT_REPEATED = ("out", "extra")
"""Config fields a suggested command leaves out: a new run gets its own folder and notes."""
CALIBRATE_FLAGS = ("pair", "sender", "receiver", "sender_revision", "receiver_revision", "device", "dtype")
"""The run's flags that ``python -m mi_bridge.calibrate`` takes too."""


def command(entry: str, config: dict, layers: dict | None = None, **overrides) -> str:
    """A runnable command line: ``python -m <entry>`` with the run's own flags (the config fields that
    differ from the pair's defaults, and the resolved ``layers``), changed by ``overrides``."""
    resolved = (
        {} if layers is None else {"sender_layer": layers["sender"], "receiver_layer": layers["receiver"]}
    )
    values = {**Options.flat(config), **resolved, **overrides}
    # the pair's own defaults (its template), but the pair itself against the global default
    # (a family without default models, e.g. --pair hf: placeholders, so that its named models are
    # always repeated)
    names = {"sender": "-", "receiver": "-"} if None in family(values["pair"]).models else {}
    default = ExperimentConfig(pair=values["pair"], protocol=values.get("protocol", "split"), **names)
    resolved_defaults = {"sender": default.sender_name, "receiver": default.receiver_name}
    defaults = default.to_dict() | default.options.resolved().flags() | resolved_defaults
    defaults["pair"] = ExperimentConfig.pair
    words = ["python", "-m", *entry.split()]
    for name, value in values.items():
        if name in NOT_REPEATED or value is None or value == defaults.get(name):
            continue
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            words.append(f"--{flag}" if value else f"--no-{flag}")
        elif isinstance(value, list | tuple):
            words += [f"--{flag}", ",".join(f"{v:g}" for v in value)]
        else:
            words += [f"--{flag}", str(value)]
    return shlex.join(words)


def site_result(label: str, layer: int, site_class: str, conditions: Sequence[dict]) -> str:
    """One sentence: the label at a site, the best translated condition and the context-free ceiling."""
    translated, reference = best_translated(conditions), ceiling(conditions)
    n_total, n_surviving = len(of_vector(conditions, "translated")), len(surviving_translated(conditions))
    return (
        f"{label[0].upper()}{label[1:]} at receiver layer {layer} ({site_class}): {n_surviving} of {n_total} "
        f"translated conditions help after the Holm correction (family-wise α = {FAMILY_ALPHA}); the best"
        f"{' surviving' if n_surviving else ''}, '{translated['name']}', changes accuracy by "
        f"{fmt_delta(translated)} (Holm p = {holm_p(translated, conditions):.2g}), against a context-free "
        f"ceiling of {fmt_delta(reference)} ('{reference['name']}')."
    )


FIT_MARGIN = 0.2
"""A bridge *fits* when its held-out normalized cosine (mean over seeds) beats every trivial predictor's
by at least this much on the same held-out items: a bridge fitted on shuffled pairs (about 0.01 in the
committed runs) and the receiver's training-mean state (0 by construction in this metric). Bridges that
transfer sit above it (toy pair L2 -> L0: 0.652; SmolLM2 29 -> 14: 0.499; SmolLM2 <-> Gemma 3: 0.322,
0.412); SmolLM2 14 -> 14, where nothing transfers, below it (0.028 in docs/real_model)."""


def fit_grade(bridge: dict) -> tuple[bool, str]:
    """Whether the bridge fits, graded against its shuffled-pairs control and ``FIT_MARGIN``, and the
    numbers a reader needs to check it."""
    own, centered = bridge["normalized_cosine"]["mean"], bridge["centered_cosine"]["mean"]
    trivial = {name: m["normalized_cosine"]["mean"] for name, m in bridge["trivial_predictors"].items()}
    numbers = (
        f"held-out normalized cosine {own:.3f}, centered {centered:.3f}, against {trivial['shuffled_pairs']:.3f} "
        f"for a bridge fitted on shuffled pairs; a fit needs {FIT_MARGIN} above every trivial predictor"
    )
    return own - max(trivial.values()) >= FIT_MARGIN, numbers


SITE_REASONS = {
    "post-lookup": "the receiver's own state there carries the answer it looked up, not B (follow rate {follow}), "
    "so no vector from the sender can help",
    "inert": "nothing downstream reads it (self-patch {self_patch}), so no injected vector can help",
    "undetermined": "self-patch works there but neither B alone nor the answer explains it (follow rate {follow})",
    "pre-lookup": "B alone works there",
}


def why(
    decomposition: dict, site: dict, conditions: Sequence[dict], validity: dict, bridge: dict, layer: int
) -> str:
    """The first stage where the signal is lost at one site, in a sentence or two."""
    stages = {s["stage"]: s for s in decomposition["stages"]}
    lost, translated = decomposition["first_lost"], best_translated(conditions)
    helped = stages["translation"]["passed"]
    probe = fmt_estimate(stages["sender"]["value"], stages["sender"]["ci"], signed=False)
    if lost == "site":
        if helped:
            return (
                f"Layer {layer} is {site['class']} by its replace-mode test, yet '{translated['name']}' helps after "
                "the Holm correction: a sender vector reaches the answer in that mode here, so the class does not "
                "bound it."
            )
        reason = SITE_REASONS[site["class"]].format(
            follow=fmt_rate(site["follow_rate"]),
            self_patch=fmt_estimate(site["self_patch"]["mean"], site["self_patch"]["ci"]),
        )
        return f"Layer {layer} is {site['class']}: {reason}. The translation is not testable there."
    if lost == "sender":
        if helped:
            return (
                f"A linear probe reads B from the sender state at only {probe} (chance {validity['chance']:.3f}), "
                f"yet '{translated['name']}' helps: the bridge uses something the probe does not read."
            )
        return (
            f"The sender state lacks B: a linear probe reads it at only {probe} (chance "
            f"{validity['chance']:.3f}). Later stages are not testable."
        )
    if lost == "translation":
        power = (
            ""
            if ceiling_survives(conditions)
            else (
                f" The context-free ceiling itself would not survive the Holm correction over the "
                f"{len(of_vector(conditions, 'translated'))} translated conditions: this run lacks the power to show "
                "a help."
            )
        )
        fits, numbers = fit_grade(bridge)
        if not fits:
            return (
                f"The sender carries B (probe {probe}), but the bridge does not fit ({numbers}), and no "
                f"translated condition survives the Holm correction at layer {layer}: the signal is lost in "
                f"the translation, at the fit.{power}"
            )
        return (
            f"The sender carries B (probe {probe}) and the bridge fits ({numbers}), but no translated "
            f"condition survives the Holm correction at layer {layer}: the signal is lost in the "
            f"translation.{power}"
        )
    share = (
        stages["translation"]["value"] / stages["site"]["value"] if stages["site"]["value"] else float("nan")
    )
    return (
        f"The signal survives every stage measured at layer {layer}: the best translated condition closes "
        f"{share:.0%} of the gap between the baseline and the context-free ceiling."
    )


def next_steps(results: dict, config: dict, layers: dict) -> list[dict]:
    """Commands to run next, each with what it answers."""
    run = lambda **o: command("mi_bridge.run", config, layers, **o)
    # the residual analyses do not read the KV channel's options: their commands leave them out
    residual_only = {k: v for k, v in config.items() if k != "kv"}
    analyses = lambda names, **o: command(f"mi_bridge.analyses {names}", residual_only, layers, **o)
    if not results["validity"]["valid"]:
        calibrate = command("mi_bridge.calibrate", {k: config[k] for k in CALIBRATE_FLAGS})
        return [{"command": calibrate, "why": "find a template and k at which the receiver uses B"}]
    label, site_class = verdict_label(results), results["site"]["class"]
    second = results.get("second_site")
    n_items = config["n_items"]
    if site_class != "pre-lookup" and label != "transfer helps":
        known = pre_lookup_layers(results.get("site_scan", []))
        if second:
            layer = second["layer"]
            steps = [
                {"command": run(receiver_layer=layer), "why": f"the full report at pre-lookup layer {layer}"}
            ]
            at = {"receiver_layer": layer}
            return steps + after_pre_lookup(
                second["label"], second["decomposition"], run, analyses, at, n_items
            )
        if known:
            layer = min(known, key=lambda k: abs(k - layers["receiver"]))
            return [
                {
                    "command": run(receiver_layer=layer),
                    "why": f"test the translation at pre-lookup layer {layer}",
                }
            ]
        if not results.get("site_scan"):
            return [{"command": run(site_scan=True), "why": "find the receiver's pre-lookup layers"}]
        return [
            {
                "command": analyses("layer_sweep"),
                "why": "no receiver layer is pre-lookup here: try sender layers",
            }
        ]
    return after_pre_lookup(label, results["decomposition"], run, analyses, {}, n_items)


def after_pre_lookup(label: str, decomposition: dict, run, analyses, at: dict, n_items: int) -> list[dict]:
    """What to run after a site where the translation was testable (``at``: a second site's layer)."""
    if label == "transfer helps":
        return [
            {
                "command": analyses("all", **at),
                "why": "what the translated vector carries, and where it works",
            }
        ]
    if decomposition["first_lost"] == "sender":
        return [
            {"command": analyses("layer_sweep", **at), "why": "find a sender layer from which B is decodable"}
        ]
    if label == "untestable here":  # a pre-lookup site without the power to show a help
        return [
            {"command": run(**at, n_items=2 * n_items), "why": "twice the items: the power to show a help"},
            {"command": run(**at, alphas=[1.0]), "why": "fewer translated conditions: a smaller Holm family"},
        ]
    return [
        {
            "command": analyses("usability_bridge", **at),
            "why": "does a bridge trained through the receiver help?",
        },
        {
            "command": analyses("norm_ablation", **at),
            "why": "is the translated vector's norm or direction at fault?",
        },
    ]


def verdict_parts(results: dict, config: dict, layers: dict) -> dict:
    """``{"headline", "result", "why", "next"}``: the verdict in three parts (``next``: commands with
    their purpose); ``headline`` follows the label (the site it is about, and the second site's label)."""
    validity = results["validity"]
    if not validity["valid"]:
        gap = validity["oracle_gap"]
        return {
            "headline": "",
            "result": (
                f"Task not valid, no conclusion (untestable here): oracle − baseline "
                f"{fmt_estimate(gap['mean'], gap['ci'])}, required ≥ {validity['min_oracle_gap']} with its CI above 0."
            ),
            "why": "The receiver cannot use B even when it is written in the slot, so no injected state can be judged.",
            "next": next_steps(results, config, layers),
        }
    site, conditions = results["site"], results["conditions"]
    headline = f"at receiver layer {site['layer']}"
    result = [site_result(verdict_label(results), site["layer"], site["class"], conditions)]
    reasons = [why(results["decomposition"], site, conditions, validity, results["bridge"], site["layer"])]
    second = results.get("second_site")
    if second:
        s_site, s_conditions = second["site"], second["conditions"]
        result.append(site_result(second["label"], second["layer"], s_site["class"], s_conditions))
        headline += (
            f" (requested) · {second['label'].upper()} at receiver layer {second['layer']} (second site)"
        )
        reasons.append(
            why(second["decomposition"], s_site, s_conditions, validity, second["bridge"], second["layer"])
        )
    relay = next(c for c in conditions if c["name"] == "text relay")
    result.append(f"The text relay changes accuracy by {fmt_delta(relay)} (n={relay['n']}).")
    return {
        "headline": headline,
        "result": " ".join(result),
        "why": " ".join(reasons),
        "next": next_steps(results, config, layers),
    }


def verdict_text(parts: dict) -> str:
    """The three parts as plain text, one per line (results.json's ``verdict``)."""
    steps = "; ".join(f"{s['command']}  ({s['why']})" for s in parts["next"])
    return f"Result: {parts['result']}\nWhy: {parts['why']}\nNext: {steps}"
