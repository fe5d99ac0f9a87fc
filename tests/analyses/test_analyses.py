"""Each analysis script's core function, by its properties, and every script end to end on a tiny run."""

import json

import pytest
import torch

from mi_bridge.analyses.runner import ORDER, load_script, main
from mi_bridge.core.capture import answer_logits
from mi_bridge.core.evaluate import Condition, evaluate_conditions
from mi_bridge.protocols.split.analysis import qualify_by_site
from mi_bridge.protocols.split.diagnosis import SITE_CLASSES
from mi_bridge.report.result import VERDICTS, Result
from mi_bridge.runtime.backend import residual_at
from tests.conftest import make_cfg, tl3_only


def test_direction_components_sum_to_v_and_split_cleanly():
    direction = load_script("direction_ablation")
    g = torch.Generator().manual_seed(0)
    v, s, states = (
        torch.randn(20, 16, generator=g),
        torch.randn(20, 16, generator=g),
        torch.randn(200, 16, generator=g) + 3,
    )
    parts = direction.components(v, s, states, k=4)
    for first, second in direction.PAIRS:
        torch.testing.assert_close(parts[first] + parts[second], v)
    torch.testing.assert_close((parts["orthogonal"] * s).sum(-1), torch.zeros(20), atol=1e-5, rtol=0)
    cos = torch.nn.functional.cosine_similarity(parts["parallel"], s)
    torch.testing.assert_close(cos.abs(), torch.ones(20))
    # the subspace part minus the mean lies in a 4-dimensional span
    assert torch.linalg.matrix_rank(parts["top-k subspace"] - states.mean(0), atol=1e-4) == 4


def test_a_norm_scale_of_one_equals_the_plain_condition(tiny_model):
    norm = load_script("norm_ablation")
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (6, 10))
    v, s = torch.randn(6, 32), torch.randn(6, 32)
    vectors = norm.ablation_vectors(v, s, (0.5, 1.0), seed=0) | {"plain": v}
    conditions = norm.conditions_for((0.5, 1.0)) + [
        Condition(f"plain {m}", vector="plain", mode=m, alpha=1.0) for m in ("add", "replace")
    ]
    candidates, gold = torch.randint(0, 50, (6, 3)), torch.zeros(6, dtype=torch.long)
    scores = evaluate_conditions(
        tiny_model,
        {"placeholder": tokens},
        candidates,
        gold,
        layer=1,
        position=4,
        vectors=vectors,
        conditions=conditions,
    )
    for mode in ("add", "replace"):
        torch.testing.assert_close(
            scores[f"translated x1 {mode}"].gold_logprob, scores[f"plain {mode}"].gold_logprob
        )
    torch.testing.assert_close(vectors["translated dir, self-patch norm"].norm(dim=-1), s.norm(dim=-1))
    torch.testing.assert_close(vectors["random x1"].norm(dim=-1), v.norm(dim=-1))


def test_the_logit_lens_of_the_last_residual_is_the_models_output(tiny_model):
    lens = load_script("logit_lens")
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (4, 9))
    final = residual_at(tiny_model, tokens, stop_at_layer=tiny_model.cfg.n_layers)[:, -1]
    torch.testing.assert_close(lens.direct_read(tiny_model, final), tiny_model(tokens)[:, -1])
    assert lens.ranks(torch.tensor([[0.1, 3.0, 2.0]]), torch.tensor([2])).item() == 1


@tl3_only
def test_the_usability_bridge_learns_and_only_the_map_gets_gradients():
    from transformer_lens import HookedTransformer

    from mi_bridge.bridges import usability
    from mi_bridge.bridges.ridge import LinearBridge

    receiver = HookedTransformer(make_cfg(n_layers=2)).train()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, receiver.cfg.d_vocab, (96, 8), generator=g)
    x = torch.randn(96, 12, generator=g)
    start = LinearBridge.fit(x, torch.randn(96, 32, generator=g))
    with torch.no_grad():  # an oracle the map can reach: logits of the model with a planted state at the site
        planted = answer_logits(
            receiver,
            receiver(tokens, stop_at_layer=1).index_put(
                (torch.arange(96), torch.full((96,), 5)), x @ torch.randn(12, 32, generator=g)
            ),
            start_at_layer=1,
        )
    trained, history = usability.train_usability_bridge(
        receiver,
        tokens,
        planted,
        x,
        start,
        layer=0,
        position=5,
        steps=120,
        lr=1e-2,
        batch_size=32,
        eval_every=20,
    )
    assert sum(history["train"][-10:]) / 10 < 0.5 * sum(history["train"][:10]) / 10
    assert all(p.grad is None for p in receiver.parameters())
    assert all(p.requires_grad for p in receiver.parameters())  # restored after training
    assert not torch.equal(trained.weight, start.weight)


def test_layer_grids_include_both_ends():
    sweep = load_script("layer_sweep")
    assert sweep.grid(4, None) == [0, 1, 2, 3]
    assert sweep.grid(24, None) == [0, 4, 8, 12, 16, 20, 23]
    assert sweep.grid(12, 5) == [0, 5, 10, 11]


def test_top_direction_share_sees_a_shared_offset():
    inflation = load_script("alignment_inflation")
    states = torch.randn(500, 16) * 0.01 + torch.linspace(1, 2, 16)
    share = inflation.top_direction_share(states)
    assert share["uncentered_top1"] > 0.99 and share["centered_top1"] < 0.3


@pytest.mark.slow
def test_every_script_runs_end_to_end_on_a_tiny_configuration(tmp_path):
    out = tmp_path / "all"
    argv = [
        "all",
        "--n-items",
        "60",
        "--seeds",
        "1",
        "--n-bootstrap",
        "200",
        "--alphas",
        "1",
        "--scales",
        "0.5,1,2",
        "--train-steps",
        "20",
        "--curve-sizes",
        "16,32",
        "--kv-epochs",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    combined = (out / "report.md").read_text()
    for name in ORDER:
        results = json.loads((out / name / "results.json").read_text())
        assert results["analysis"]["verdict"] in VERDICTS
        assert results["site"]["class"] in SITE_CLASSES  # every analysis carries its site diagnosis
        assert results["analysis"]["explanation"]
        assert (out / name / "figure.png").stat().st_size > 1000
        assert f"{name}/figure.png" in combined
    for name in ORDER:
        source = load_script(name).__file__
        first_lines = open(source).read().splitlines()[:4]
        assert any(
            f"python -m mi_bridge.analyses {name}" in line for line in first_lines
        )  # hypothesis and command on top


def test_an_unknown_analysis_is_one_clear_error(capsys):
    assert main(["no_such_analysis"]) == 2
    assert "no analysis script" in capsys.readouterr().err


@pytest.mark.parametrize("site_class", SITE_CLASSES)
def test_site_dependent_verdicts_are_withheld_off_a_pre_lookup_site(site_class):
    site = {
        "class": site_class,
        "context_free": {"mean": 0.0, "ci": [-0.01, 0.01]},
        "follow_rate": {"mean": 0.99, "ci": [0.98, 1.0]},
    }
    result = Result("norm_ablation", "h", "supported", "numbers.", [], {})
    dependent = qualify_by_site(load_script("norm_ablation"), result, site)
    independent = qualify_by_site(load_script("alignment_inflation"), result, site)
    assert independent.verdict == "supported"  # a claim about cosines does not depend on the site
    if site_class == "pre-lookup":
        assert dependent.verdict == "supported"
    else:
        assert dependent.verdict == "inconclusive"
        assert (
            site_class in dependent.explanation
            and "would otherwise read 'supported'" in dependent.explanation
        )
