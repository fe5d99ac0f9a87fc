"""A report a reviewer trusts: the run answers both questions (the requested site and a pre-lookup one),
its verdict ends in commands, its figure shows the lookup phase, and the norm ablation reads Δ log p
against matched controls."""

import json

import pytest

from mi_bridge.run import main

TINY = ["--n-items", "60", "--seeds", "2", "--alphas", "0.5,1", "--n-bootstrap", "200"]


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    """The toy pair's default receiver layer (1) is post-lookup and its layer 0 pre-lookup."""
    out = tmp_path_factory.mktemp("runs") / "two-sites"
    assert main([*TINY, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_a_post_lookup_run_also_evaluates_the_nearest_pre_lookup_layer(two_sites):
    results = json.loads((two_sites / "results.json").read_text())
    assert results["site"]["class"] == "post-lookup" and results["layers"]["receiver"] == 1
    second = results["second_site"]
    assert second["layer"] == 0 and second["site"]["class"] == "pre-lookup"
    assert second["label"] in ("transfer helps", "no transfer", "untestable here")
    names = {c["name"] for c in second["conditions"]}
    assert {"baseline", "translated replace", "random replace", "shuffled replace", "mean replace"} <= names
    assert "text relay" not in names  # the prompts do not depend on the layer
    for c in second["conditions"]:
        assert c["n"] == 60 and c["delta_accuracy_ci"][0] <= c["delta_accuracy"] <= c["delta_accuracy_ci"][1]
    # the second site agrees with the site scan's row for its layer
    assert second["site"]["class"] == results["site_scan"][0]["class"]
    assert (two_sites / "bridge" / "second-site-L0" / "seed0" / "bridge.json").exists()
    # the verdict in three parts, *next* with runnable commands at the pre-lookup layer
    parts = results["verdict_parts"]
    assert set(parts) >= {"result", "why", "next"}
    assert "receiver layer 0 (pre-lookup)" in parts["result"]
    assert parts["next"][0]["command"].startswith("python -m mi_bridge.run ")
    assert "--receiver-layer 0" in parts["next"][0]["command"]
    assert results["verdict"].startswith("Result: ") and "\nWhy: " in results["verdict"]
    report = (two_sites / "report.md").read_text()
    assert "## Both sites" in report and "receiver layer 0 (second site)" in report
    assert "- *Next*:" in report and "`python -m mi_bridge.run " in report
    assert " fails " not in report.replace("|", " ")  # later stages read "not testable here"


@pytest.mark.slow
def test_the_run_reports_exact_rates_and_two_level_intervals(two_sites):
    results = json.loads((two_sites / "results.json").read_text())
    oracle = results["validity"]["receiver_oracle_accuracy"]
    assert oracle["ci"][0] < oracle["mean"] <= oracle["ci"][1] and oracle["n"] == 60
    follow = results["site"]["follow_rate"]
    assert follow["ci"][1] - follow["ci"][0] > 0  # never of zero width, even at 1.000
    assert "two-level" in results["statistics"]["delta_ci"]
    translated = next(c for c in results["conditions"] if c["name"] == "translated replace")
    assert translated["vs_matched_control"]["control"] == "mean replace"
    assert len(translated["delta_accuracy_per_seed"]) == 2
    # one context-free ceiling: the decomposition's site stage is the site diagnosis' number
    site_stage = results["decomposition"]["stages"][1]
    assert site_stage["condition"] == "context-free self-patch replace"
    assert site_stage["value"] == results["site"]["context_free"]["mean"]


@pytest.mark.slow
def test_no_second_site_turns_it_off(tmp_path):
    out = tmp_path / "one-site"
    assert main([*TINY, "--no-second-site", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["site"]["class"] == "post-lookup"
    assert "second_site" not in results
    assert not (out / "bridge" / "second-site-L0").exists()
    # *next* still names the pre-lookup layer the scan found
    assert "--receiver-layer 0" in results["verdict_parts"]["next"][0]["command"]


@pytest.mark.slow
def test_the_figure_has_the_lookup_phase_panel(two_sites, tmp_path, monkeypatch):
    import contextlib

    from mi_bridge.protocols.split import figure
    from mi_bridge.report.render import saved_figure

    seen = {}

    @contextlib.contextmanager
    def keeping(path, *args, **kwargs):
        with saved_figure(path, *args, **kwargs) as (fig, axes):
            seen["fig"] = fig
            yield fig, axes
            seen["labels"] = [ax.get_xlabel() for ax in fig.axes]

    monkeypatch.setattr(figure, "saved_figure", keeping)
    results = json.loads((two_sites / "results.json").read_text())
    figure.conditions_figure(results, tmp_path / "figure.png")
    assert "receiver layer (lookup phase from the site scan)" in seen["labels"]
    assert (tmp_path / "figure.png").stat().st_size > 0


def delta(mean: float, low: float, high: float) -> dict:
    return {"delta_logprob": mean, "delta_logprob_ci": [low, high], "n": 100}


def norm_verdict(norm_fixed: dict, own_norm: dict, random_direction: dict) -> str:
    from mi_bridge.analyses.runner import load_script
    from mi_bridge.report.result import Table

    norm = load_script("norm_ablation")
    scales = (1.0,)
    summaries = {
        f"{kind} x1 {mode}": delta(0.0, -0.1, 0.1) for kind in norm.LINES for mode in ("add", "replace")
    }
    summaries |= {
        "translated x1 replace": delta(-1.0, -1.2, -0.8),
        "translated dir, self-patch norm replace": norm_fixed,
        "self-patch dir, translated norm replace": delta(-0.5, -0.6, -0.4),
    }
    matched = {"vs its own norm": own_norm, "vs random direction": random_direction}
    return norm.judged(summaries, matched, scales, "", Table("t", ("c",), [])).verdict


def test_the_norm_ablation_reads_the_rescue_against_matched_controls_not_against_zero():
    """log p rises under almost any perturbation: a rescue that clears 0 but does worse than a random
    direction of the same norm is no rescue, and one below 0 that matches it is."""
    above_zero, below_zero = delta(0.2, 0.1, 0.3), delta(-0.2, -0.3, -0.1)
    helps, null, hurts = delta(1.2, 1.0, 1.4), delta(0.0, -0.1, 0.1), delta(-0.3, -0.4, -0.2)
    assert norm_verdict(above_zero, helps, hurts) == "not supported"  # the direction is at fault
    assert norm_verdict(below_zero, helps, null) == "supported"  # as good as random at that norm
    assert norm_verdict(above_zero, null, null) == "not supported"  # the norm change does not help
