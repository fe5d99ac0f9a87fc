"""docs/performance.md, "Scaling out": its table is what benchmarks/scaling.py computes from
benchmarks/results.json, and its formula is the one benchmarks/bench.py prices cells with."""

import json
from pathlib import Path

import pytest

from benchmarks import scaling

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_scaling_table_is_recomputed_from_the_benchmarks_results():
    measured = json.loads(scaling.RESULTS.read_text())
    readme = (ROOT / "docs" / "performance.md").read_text()
    for name, cells, cpu, gpu, ray in scaling.table_rows(measured, gpu_speedup=50, workers=8):
        row = f"| {cells} | ≈ {cpu} | ≈ {gpu} | ≈ {ray} |"
        assert row in readme, f"README row of {name} should read {row}"


def readme_formula(S, N_s, L, N_r, p, T_s=29, T_r=24, n=1000, C=73):
    """The README's token-layers of one cell, written out as printed there."""
    t = T_r - p
    W_s = n * T_s * (S + 1 + N_s)
    W_r = 3 * n * T_r * (L + 1) + n // 2 * (p * N_r + 3 * t * (L + 1) + C * t * (N_r - L - 1))
    return W_s, W_r


@pytest.mark.parametrize("S, N_s, L, N_r, p", [(5, 12, 11, 24, 21), (0, 12, 23, 24, 23), (23, 24, 0, 24, 21)])
def test_the_readmes_formula_prices_a_cell_as_the_benchmark_does(S, N_s, L, N_r, p):
    assert (scaling.SENDER_TOKENS, scaling.RECEIVER_TOKENS, scaling.SLOT) == (29, 24, 21)  # as printed
    W_s, W_r = readme_formula(S, N_s, L, N_r, p)
    # one second per token-layer on one side, none on the other: the estimate counts token-layers
    assert scaling.cell_seconds({"sender": 1.0, "receiver": 0.0}, N_s, N_r, (S, L, p)) == 3 * W_s
    assert scaling.cell_seconds({"sender": 0.0, "receiver": 1.0}, N_s, N_r, (S, L, p)) == 3 * W_r
    if (S, L, p) == (5, 11, 21):  # the README's worked example
        assert (W_s, W_r) == (522_000, 2_484_000)


def test_the_stored_default_run_estimate_is_the_formulas_and_the_readme_quotes_it():
    """A formula changed without recomputing results.json (or the README) would fail here."""
    stored = json.loads(scaling.RESULTS.read_text())["pythia_estimate"]
    shape = {
        "sender_tokens": scaling.SENDER_TOKENS,
        "receiver_tokens": scaling.RECEIVER_TOKENS,
        "site": scaling.SLOT,
        "sender_layers": 12,
        "receiver_layers": 24,
    }
    rate = stored["seconds_per_token_layer"]
    estimate = scaling.default_run_estimate(rate, **shape)
    assert estimate["default_pythia_run_estimate_s"] == pytest.approx(stored["default_pythia_run_estimate_s"])
    assert estimate["site_scan_s"] == pytest.approx(stored["site_scan_s"])
    without_scan = scaling.default_run_estimate(rate, **shape, site_scan=False)[
        "default_pythia_run_estimate_s"
    ]
    minutes = lambda seconds: f"{seconds / 60:.0f} min"
    quoted = (
        f"≈ {minutes(estimate['default_pythia_run_estimate_s'])}, of which the site scan "
        f"{minutes(estimate['site_scan_s'])} (`--no-site-scan`: ≈ {minutes(without_scan)})"
    )
    assert quoted in (ROOT / "docs" / "performance.md").read_text()
