"""The toy run gives the same answers under either TransformerLens backend (3: HookedTransformer, 4:
TransformerBridge in compatibility mode): the same site classes, verdict label and accuracies as the
reference recorded under TransformerLens 3.9. CI runs this file in both environments (README: Install)."""

import json
from pathlib import Path

from mi_bridge.run import main
from mi_bridge.runtime.backend import BACKEND

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "toy_tiny_reference.json"
TINY = ["--n-items", "40", "--seeds", "1", "--n-bootstrap", "200", "--no-cache"]


def answers(results: dict) -> dict:
    """What must not depend on the backend: the classes, the label and every accuracy."""
    return {
        "verdict_label": results["verdict_label"],
        "site_classes": [site["class"] for site in results["site_scan"]],
        "accuracy": {c["name"]: c["accuracy"] for c in results["conditions"]},
    }


def test_the_toy_run_answers_as_under_transformer_lens_3(tmp_path, monkeypatch):
    monkeypatch.setenv("MI_BRIDGE_CACHE", str(tmp_path / "cache"))
    assert main([*TINY, "--out", str(tmp_path / "run")]) == 0
    got = answers(json.loads((tmp_path / "run" / "results.json").read_text()))
    assert got == json.loads(REFERENCE.read_text()), f"under TransformerLens {BACKEND.major}"
