"""What a full layer-pair grid costs: the README's "Scaling out" table, recomputed from measured rates.

    python -m benchmarks.scaling                          # rates from benchmarks/results.json
    python -m benchmarks.scaling --gpu-speedup 50 --workers 8

Every cell is a default run of ``mi_bridge.sweep`` with ``--no-site-scan`` (each receiver layer is its
own cell), priced by ``bench.default_run_estimate`` at the seconds per token-layer that
``benchmarks/bench.py`` measured at the Pythia widths. The grid covers every (sender layer, receiver
layer) pair at both sites. Captures that the activation cache shares between cells are counted in every
cell, so the figures are upper bounds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.bench import default_run_estimate

RESULTS = Path(__file__).with_name("results.json")
# The split protocol's prompt shapes with the GPT-NeoX tokenizer (benchmarks/results.json, "assumptions").
SENDER_TOKENS, RECEIVER_TOKENS, SLOT = 29, 24, 21
# Assumed, not measured: Pythia-1.4B (d_model 2048) costs this many times the 410M rate per token-layer,
# because the weights grow with d_model² and a 24-token attention is small beside them.
WIDTH_FACTOR_1_4B = 4.0


def cell_seconds(rate: dict[str, float], sender_layers: int, receiver_layers: int, cell: tuple) -> float:
    """Seconds of one grid cell, ``cell`` = (sender layer, receiver layer, site position)."""
    sender_layer, receiver_layer, site = cell
    return default_run_estimate(
        rate,
        sender_tokens=SENDER_TOKENS,
        receiver_tokens=RECEIVER_TOKENS,
        site=site,
        sender_layers=sender_layers,
        receiver_layers=receiver_layers,
        sender_layer=sender_layer,
        receiver_layer=receiver_layer,
        site_scan=False,
    )["default_pythia_run_estimate_s"]


def grid_seconds(rate: dict[str, float], sender_layers: int, receiver_layers: int) -> tuple[float, int]:
    """Seconds of one worker on this machine for every layer pair at the slot and final sites."""
    cells = [
        (sender_layer, receiver_layer, site)
        for site in (SLOT, RECEIVER_TOKENS - 1)
        for sender_layer in range(sender_layers)
        for receiver_layer in range(receiver_layers)
    ]
    return sum(cell_seconds(rate, sender_layers, receiver_layers, cell) for cell in cells), len(cells)


def duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds / 3600:,.1f} h"


def table_rows(measured: dict, gpu_speedup: float, workers: int) -> list[tuple[str, str, str, str, str]]:
    """(grid, cells, this CPU, one GPU, ``workers`` GPUs) per model pair, from a benchmark's results."""
    rate = measured["pythia_estimate"]["seconds_per_token_layer"]
    pairs = (
        ("Pythia-160M → 410M", rate, 12, 24),
        (
            "Pythia-410M → 1.4B",
            {"sender": rate["receiver"], "receiver": WIDTH_FACTOR_1_4B * rate["receiver"]},
            24,
            24,
        ),
    )
    rows = []
    for name, pair_rate, sender_layers, receiver_layers in pairs:
        seconds, cells = grid_seconds(pair_rate, sender_layers, receiver_layers)
        gpu = seconds / gpu_speedup
        rows.append((name, f"{cells:,}", duration(seconds), duration(gpu), duration(gpu / workers)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="a results.json of benchmarks/bench.py")
    parser.add_argument(
        "--gpu-speedup", type=float, default=50.0, help="assumed speedup of one GPU over this CPU"
    )
    parser.add_argument("--workers", type=int, default=8, help="GPUs (Ray workers) in the last column")
    args = parser.parse_args(argv)
    measured = json.loads(args.results.read_text())
    rate = measured["pythia_estimate"]["seconds_per_token_layer"]
    table = Table(title=f"Full layer-pair grids, both sites, 3 seeds (rates of {measured['date']})")
    for column in (
        "grid",
        "cells",
        "this CPU (measured rate)",
        f"one GPU (×{args.gpu_speedup:g}, assumed)",
        f"{args.workers} GPUs through Ray",
    ):
        table.add_column(column)
    for row in table_rows(measured, args.gpu_speedup, args.workers):
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(
        f"seconds per token-layer: sender {rate['sender']:.3g}, receiver {rate['receiver']:.3g}; "
        f"1.4B = {WIDTH_FACTOR_1_4B:g} × the 410M rate (assumed); every capture counted in every cell"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
