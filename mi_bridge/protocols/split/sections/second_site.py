"""The second site (``--second-site``, on by default): when the requested receiver layer is not
pre-lookup and the site scan found a pre-lookup layer, the translated conditions and controls again at
the pre-lookup layer nearest it (``diagnosis.SECOND_SITE_RULE``), with a bridge fitted to that layer.
results.json's ``second_site``, the ``second site`` rows of items.parquet, its bridges, the report's
side-by-side table and its conditions, and an orange series in each condition panel of the figure."""

from __future__ import annotations

from collections.abc import Sequence

from mi_bridge.core.evaluate import BASELINE, Condition
from mi_bridge.protocols.split import diagnosis
from mi_bridge.protocols.split.experiment import SITE_CONDITIONS, SeedData, run_site
from mi_bridge.protocols.split.items import layer_table
from mi_bridge.protocols.split.report import PER_KIND, delta_text, of_kind
from mi_bridge.protocols.split.sections.base import Section
from mi_bridge.protocols.split.sections.site_scan import summarize_site_scan
from mi_bridge.protocols.split.summary import bridge_section, summarize_effects
from mi_bridge.report.render import condition_marks, condition_table
from mi_bridge.report.result import Table
from mi_bridge.stats import fmt_delta, fmt_rate

VECTOR_ROWS = ("translated", *diagnosis.CONTROL_KINDS)


class SecondSite(Section):
    key = "second_site"
    after = "conditions"

    def enabled(self, options) -> bool:
        return options.second_site

    def evaluate(self, run) -> None:
        """Every seed again at the layer ``diagnosis.second_site_layer`` picks from the scan over all
        seeds (nothing without a scan, or when it finds the requested layer pre-lookup)."""
        if not run.seeds[0].sections.get("site_scan"):
            return
        scan = summarize_site_scan(run.config.n_bootstrap, run.seeds)
        layer = diagnosis.second_site_layer(scan, run.receiver_layer)
        if layer is None:
            return
        chosen = second_site_conditions(run.conditions)
        for ctx, seed in zip(run.contexts, run.seeds, strict=True):
            seed.sections[self.key] = run_site(ctx, run.sender_layer, layer, chosen)

    def item_rows(self, items, run, position):
        second = run.seeds[0].sections.get(self.key)
        if second is None:
            return []
        scores = [s.sections[self.key].scores for s in run.seeds]
        where = {"sender_layer": run.sender_layer, "position": position}
        return [
            layer_table(items, scores, second.conditions, part="second site", layer=second.layer, **where)
        ]

    def summarize(self, config, run, results):
        if not any(s.sections.get(self.key) for s in run.seeds):
            return None
        return summarize_second_site(
            config.n_bootstrap, run.seeds, results["validity"], results["sender_probe"], config.options.target
        )

    def artifacts(self, staging, run) -> None:
        for seed in run.seeds:  # its own bridge, fitted to its layer
            site = seed.sections.get(self.key)
            if site is not None:
                index = seed.bridge.metadata["seed"]
                site.bridge.save(staging / "bridge" / f"second-site-L{site.layer}" / f"seed{index}")

    def tables(self, results):
        second = results["second_site"]
        every = condition_table(
            f"All {len(second['conditions'])} conditions at receiver layer {second['layer']} (second site) {PER_KIND}",
            second["conditions"],
            in_terminal=False,
            family=diagnosis.family_of,
        )
        return [("sites", side_by_side(results)), ("conditions", every)]

    def series(self, results):
        return [(results["second_site"]["conditions"], "tab:orange", "second site")]


def second_site_conditions(conditions: Sequence[Condition]) -> list[Condition]:
    """What the second site evaluates: the baseline, the translated vectors and their controls in every
    mode, and the replace-mode site controls (its class). The prompts do not depend on the layer."""
    vectors = ("translated", *diagnosis.CONTROL_KINDS)
    chosen = [c for c in conditions if c.vector in vectors]
    return [BASELINE, *chosen, *SITE_CONDITIONS]


def side_by_side(results: dict) -> Table:
    """The requested site and the second site: class, label, ceiling, fit and, per vector kind, the
    condition the verdict reads, with Δ accuracy, its CI and its Holm mark (in its family, per site)."""
    second = results["second_site"]
    sites = [
        (results["site"], results["conditions"], results["bridge"]),
        (second["site"], second["conditions"], second["bridge"]),
    ]
    labels = [diagnosis.verdict_label(results), second["label"]]
    rows, marks = [], []
    rows.append(("site class", *(s["class"] for s, _, _ in sites)))
    rows.append(("label", *labels))
    rows.append(
        ("context-free ceiling (replace), Δacc", *(delta_text(s["context_free"]) for s, _, _ in sites))
    )
    rows.append(("follow rate", *(fmt_rate(s["follow_rate"]) for s, _, _ in sites)))
    rows.append(("bridge normalized cosine", *(f"{b['normalized_cosine']['mean']:.3f}" for _, _, b in sites)))
    marks += [(0, 0, 0)] * len(rows)
    site_marks = [condition_marks(conditions, diagnosis.family_of) for _, conditions, _ in sites]
    for kind in VECTOR_ROWS:
        picks = [of_kind(conditions, kind) for _, conditions, _ in sites]
        if None in picks:  # a family left out with --conditions
            continue
        rows.append((f"best {kind}", *(f"{fmt_delta(c)} '{c['name']}'" for c in picks)))
        marks.append((0, *(m[c["name"]][0] for m, c in zip(site_marks, picks, strict=True))))
    rows.append(("n (items, all seeds)", *(str(c[0]["n"]) for _, c, _ in sites)))
    marks.append((0, 0, 0))
    header = (
        "measure",
        f"receiver layer {results['site']['layer']} (requested)",
        f"receiver layer {second['layer']} (second site)",
    )
    title = f"Both sites (Δ accuracy vs baseline, 95% CI; second site: {second['rule']})"
    return Table(title, header, rows, marks)


def summarize_second_site(
    n_bootstrap: int, seeds: list[SeedData], validity: dict, probe: dict, target: str
) -> dict:
    """results.json's ``second_site``: the layer (chosen by ``diagnosis.SECOND_SITE_RULE``), its site
    section, label and decomposition (task and sender stages are the run's), its bridge fit and its
    conditions, summarized as the requested site's are."""
    runs = [s.sections["second_site"] for s in seeds]
    follow = [s.follow_index for s in seeds]
    conditions = summarize_effects(n_bootstrap, [r.scores for r in runs], runs[0].conditions, follow)
    site = diagnosis.site_section({c["name"]: c for c in conditions}, runs[0].layer)
    return {
        "layer": runs[0].layer,
        "rule": diagnosis.SECOND_SITE_RULE,
        "label": diagnosis.transfer_label(validity["valid"], conditions, site["class"]),
        "site": site,
        "decomposition": diagnosis.decomposition(validity, conditions, probe, site_class=site["class"]),
        "bridge": bridge_section(target, [r.fit for r in runs], [r.bridge for r in runs]),
        "conditions": conditions,
    }
