"""Exactness invariants of injection: each would catch a hook at the wrong place or time."""

import pytest
import torch
from jaxtyping import TypeCheckError

from mi_bridge.core.capture import answer_logits, capture_resid_post
from mi_bridge.core.evaluate import (
    MATMUL_ROWS,
    Condition,
    SharedPrefix,
    condition_logits,
    evaluate_conditions,
    evaluate_layers,
    pass_sizes,
)
from mi_bridge.core.hook_names import resid_post_name
from mi_bridge.core.inject import MODES, apply_injection, inject_residual, rescale_to, run_with_injection
from tests.oracles import assert_evaluator_equals_hooked_runs

N, POS = 5, 12


@pytest.fixture
def tokens(tiny_model):
    return torch.randint(0, tiny_model.cfg.d_vocab, (N, POS))


def own_state(model, tokens, layer, position):
    return capture_resid_post(model, tokens, layers=[layer], positions=[position]).states[layer][:, 0]


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("position", [3, POS - 1])
def test_replacing_a_state_by_itself_changes_nothing(tiny_model, tokens, layer, position):
    clean = tiny_model(tokens)
    vector = own_state(tiny_model, tokens, layer, position)
    patched = run_with_injection(
        tiny_model, tokens, layer=layer, position=position, vector=vector, mode="replace"
    )
    torch.testing.assert_close(patched, clean, rtol=0, atol=1e-5)
    rescaled = run_with_injection(
        tiny_model, tokens, layer=layer, position=position, vector=vector, mode="rescale"
    )
    torch.testing.assert_close(rescaled, clean, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["add", "rescale-add"])
def test_alpha_zero_is_the_baseline(tiny_model, tokens, mode):
    vector = torch.randn(N, tiny_model.cfg.d_model) * 10
    patched = run_with_injection(tiny_model, tokens, layer=1, position=4, vector=vector, mode=mode, alpha=0.0)
    torch.testing.assert_close(patched, tiny_model(tokens), rtol=0, atol=0)


def test_a_hook_at_layer_L_leaves_earlier_activations_untouched(tiny_model, tokens):
    layer, position = 1, 6
    names = [resid_post_name(layer) for layer in range(tiny_model.cfg.n_layers)]
    _, clean = tiny_model.run_with_cache(tokens, names_filter=lambda n: n in names)
    vector = torch.randn(tiny_model.cfg.d_model) * 5
    hook = (resid_post_name(layer), lambda act, hook: inject_residual(act, position, vector, "add"))
    with tiny_model.hooks(fwd_hooks=[hook]):
        _, patched = tiny_model.run_with_cache(tokens, names_filter=lambda n: n in names)
    for other, name in enumerate(names):
        if other < layer:  # every position of earlier layers
            torch.testing.assert_close(patched[name], clean[name], rtol=0, atol=0)
        if other <= layer:  # other positions of the hooked layer
            others = [p for p in range(POS) if p != position]
            torch.testing.assert_close(patched[name][:, others], clean[name][:, others], rtol=0, atol=0)
        # causality: positions before the site never change, at any layer
        torch.testing.assert_close(patched[name][:, :position], clean[name][:, :position], rtol=0, atol=0)
    assert not torch.allclose(patched[names[-1]][:, position:], clean[names[-1]][:, position:])


@pytest.mark.parametrize("mode", MODES)
def test_prefix_reuse_gives_the_same_logits_as_a_full_hooked_run(tiny_model, tokens, mode):
    layer, position = 1, 7
    vector = torch.randn(N, tiny_model.cfg.d_model)
    full = run_with_injection(
        tiny_model, tokens, layer=layer, position=position, vector=vector, mode=mode, alpha=0.5
    )
    prefix = tiny_model(tokens, stop_at_layer=layer + 1)
    fast = answer_logits(
        tiny_model, inject_residual(prefix, position, vector, mode, 0.5), start_at_layer=layer + 1
    )
    torch.testing.assert_close(fast, full[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("position", [0, 5, POS - 1])  # 0: no cached prefix; POS - 1: a one-token tail
def test_the_evaluator_equals_the_slow_path_for_every_condition(tiny_model, tokens, layer, position):
    k = 3
    candidates = torch.randint(0, tiny_model.cfg.d_vocab, (N, k))
    gold = torch.randint(0, k, (N,))
    vector = torch.randn(N, tiny_model.cfg.d_model)
    assert_evaluator_equals_hooked_runs(
        tiny_model,
        tokens,
        candidates,
        gold,
        vector,
        layer=layer,
        position=position,
        atol=1e-5,
        rtol=1e-5,
        batch_size=2,
    )


@pytest.mark.parametrize("position", [0, 5])  # 0: no cached prefix
@pytest.mark.parametrize("per_pass", [1, 3, None])  # one condition per tail pass, uneven passes, all at once
def test_stacked_conditions_equal_one_full_hooked_run_each(tiny_model, tokens, position, per_pass):
    layer, batch_size = 1, 2
    relay = tokens.clone()
    relay[:, position] = (relay[:, position] + 1) % tiny_model.cfg.d_vocab  # same prefix: shares the cache
    other = torch.randint(0, tiny_model.cfg.d_vocab, (N, POS))  # another prefix
    prompts = {"placeholder": tokens, "relay": relay, "oracle": other}
    vectors = {"v": torch.randn(N, tiny_model.cfg.d_model), "w": torch.randn(N, tiny_model.cfg.d_model) * 5}
    conditions = [Condition(prompt, prompt=prompt) for prompt in prompts]
    conditions += [
        Condition(f"{prompt} {key} {mode}", prompt=prompt, vector=key, mode=mode, alpha=alpha)
        for prompt, (key, alpha) in zip(prompts, [("v", 0.5), ("w", 2.0), ("v", 1.5)], strict=True)
        for mode in MODES
    ]
    slow = {
        c.name: run_with_injection(
            tiny_model,
            prompts[c.prompt],
            layer=layer,
            position=position,
            vector=vectors[c.vector],
            mode=c.mode,
            alpha=c.alpha,
        )[:, -1]
        if c.is_injection
        else tiny_model(prompts[c.prompt])[:, -1]
        for c in conditions
    }
    shared = SharedPrefix(tiny_model, tokens, layer=layer, position=position)
    assert shared.shares_prefix(relay) == (position > 0) and not shared.shares_prefix(other)
    one = SharedPrefix(tiny_model, tokens[:batch_size], layer=layer, position=position).condition_bytes()
    seen = []
    for chunk, condition, logits in condition_logits(
        tiny_model,
        prompts,
        layer=layer,
        position=position,
        vectors=vectors,
        conditions=conditions,
        batch_size=batch_size,
        tail_budget_bytes=one * per_pass if per_pass else 1 << 40,
    ):
        seen.append((chunk.start, condition.name))
        torch.testing.assert_close(logits, slow[condition.name][chunk], rtol=0, atol=1e-4)
    assert sorted(seen) == sorted((start, c.name) for start in range(0, N, batch_size) for c in conditions)


MiB = 1 << 20


@pytest.mark.parametrize(
    ("n", "condition_mib", "rows", "budget_mib", "expected"),
    [
        (12, 29.2, 96, 1024, [12]),  # Pythia-410M arch, 32 items (the benchmark): one pass
        (71, 2.5, 128, 1024, [15, 14, 14, 14, 14]),  # toy receiver, 64 items: ~2,048 rows, not 71 in one
        (12, 58.4, 192, 1024, [6, 6]),  # 410M arch, 64 items: rows want 11, which would leave a pass of 1
        (10, 1, 683, 1024, [3, 3, 2, 2]),  # rows want 3: evenly, not 3, 3, 3, 1
        (12, 29.2, 96, 100, [3, 3, 3, 3]),  # the memory budget caps the pass
        (12, 29.2, 96, 1, [1] * 12),  # one condition per pass even when it alone exceeds the budget
        (0, 29.2, 96, 1024, []),
    ],
)
def test_pass_sizes_aim_at_the_matmul_rows_within_the_budget_evenly(
    n, condition_mib, rows, budget_mib, expected
):
    assert MATMUL_ROWS == 2048  # the cases assume it
    condition_bytes = int(condition_mib * MiB)
    sizes = pass_sizes(n, condition_bytes, rows, budget_mib * MiB)
    assert sizes == expected
    assert sum(sizes) == n
    assert all(size == 1 or size * condition_bytes <= budget_mib * MiB for size in sizes)
    assert not sizes or max(sizes) - min(sizes) <= 1


def test_hooks_are_removed_even_when_the_forward_pass_raises(tiny_model, tokens):
    wrong_shape = torch.randn(N, tiny_model.cfg.d_model + 1)
    # torch's RuntimeError, or jaxtyping's shape check first when runtime checks are on (they are under pytest)
    with pytest.raises((RuntimeError, TypeCheckError)):
        run_with_injection(tiny_model, tokens, layer=1, position=2, vector=wrong_shape, mode="add")
    assert all(not hp.fwd_hooks for hp in tiny_model.hook_dict.values())
    torch.testing.assert_close(tiny_model(tokens), tiny_model(tokens))


def test_injection_math():
    h, v = torch.randn(4, 8), torch.randn(4, 8)
    torch.testing.assert_close(rescale_to(v, h).norm(dim=-1), h.norm(dim=-1))
    cos = torch.nn.functional.cosine_similarity(rescale_to(v, h), v)
    torch.testing.assert_close(cos, torch.ones(4))
    torch.testing.assert_close(apply_injection(h, v, "add", 2.0), h + 2 * v)
    torch.testing.assert_close(apply_injection(h, v, "replace"), v)
    torch.testing.assert_close(apply_injection(h, v, "rescale-add", 1.0), h + rescale_to(v, h))
    with pytest.raises(ValueError):
        apply_injection(h, v, "multiply")


def test_one_vector_and_one_position_broadcast_to_every_item(tiny_model, tokens):
    vector = torch.randn(tiny_model.cfg.d_model)
    one = run_with_injection(tiny_model, tokens, layer=0, position=3, vector=vector, mode="add")
    many = run_with_injection(
        tiny_model, tokens, layer=0, position=torch.full((N,), 3), vector=vector.expand(N, -1), mode="add"
    )
    torch.testing.assert_close(one, many, rtol=0, atol=0)
    with pytest.raises(ValueError):
        run_with_injection(tiny_model, tokens, layer=9, position=3, vector=vector, mode="add")


@pytest.mark.parametrize("position", [0, 5])  # 0: no cached prefix
def test_one_prefix_for_every_layer_gives_each_layers_own_scores(tiny_model, tokens, position):
    """evaluate_layers shares the frozen prefix across layers; each layer's scores must be exactly those
    of evaluate_conditions at that layer alone (a cache built at the wrong layer or reused stale would
    show here)."""
    k, layers = 3, list(range(tiny_model.cfg.n_layers))
    candidates = torch.randint(0, tiny_model.cfg.d_vocab, (N, k))
    gold = torch.randint(0, k, (N,))
    vectors = {layer: {"v": torch.randn(N, tiny_model.cfg.d_model) * (layer + 1)} for layer in layers}
    conditions = [Condition("baseline"), Condition("v replace", vector="v", mode="replace")]
    conditions.append(Condition("v add", vector="v", mode="add", alpha=0.5))
    scanned = evaluate_layers(
        tiny_model,
        tokens,
        candidates,
        gold,
        layers=layers,
        position=position,
        vectors=vectors,
        conditions=conditions,
        batch_size=2,
    )
    for layer in layers:
        alone = evaluate_conditions(
            tiny_model,
            {"placeholder": tokens},
            candidates,
            gold,
            layer=layer,
            position=position,
            vectors=vectors[layer],
            conditions=conditions,
            batch_size=2,
        )
        for condition in conditions:
            assert torch.equal(
                scanned[layer][condition.name].gold_logprob, alone[condition.name].gold_logprob
            )
            assert torch.equal(scanned[layer][condition.name].choice, alone[condition.name].choice)
    # the injected layers differ, so a scan that ignored its layer would give equal scores
    assert not torch.equal(
        scanned[0]["v replace"].gold_logprob, scanned[layers[-1]]["v replace"].gold_logprob
    )
